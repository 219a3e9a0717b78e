//! Secrets (SDS) under Istio's resource names, so a sidecar's TLS contexts
//! name them as Istio's do: `default`, the workload's key and certificate
//! chain, and `ROOTCA`, the trust bundle its peers are verified against.
//! The PEM comes from the CA ([`crate::ca`]) through the caller; nothing
//! here knows who may have which secret (the xDS layer decides that from
//! the stream's token, never from the names a proxy asks for).
//!
//! Not served yet: the ADS stream does not deliver these (issue 11).

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

/// Istio's name of the workload's own key and certificate chain.
pub const WORKLOAD_SECRET: &str = "default";

/// Istio's name of the trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_string())),
        ..Default::default()
    })
}

/// `default`: the workload's chain (leaf first) and its private key.
pub fn workload_secret(chain_pem: &str, key_pem: &str) -> Secret {
    Secret {
        name: WORKLOAD_SECRET.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    }
}

/// `ROOTCA`: the roots a peer's chain must lead to.
pub fn root_secret(bundle_pem: &str) -> Secret {
    Secret {
        name: ROOT_SECRET.to_string(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(bundle_pem),
            ..Default::default()
        })),
    }
}
