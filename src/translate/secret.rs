//! Secrets (SDS) under Istio's resource names, so a sidecar's TLS contexts
//! name them as Istio's do: `default`, the workload's key and certificate
//! chain, and `ROOTCA`, the trust bundle its peers are verified against.
//! The PEM comes from the CA ([`crate::ca`]) through the caller; nothing
//! here knows who may have which secret (the xDS layer decides that from
//! the stream's token, never from the names a proxy asks for).
//!
//! Gateways' server certificates come from Kubernetes Secrets by Istio's
//! names too ([`credential_secrets`]): `kubernetes://<name>`, the key and
//! chain of the Secret `<name>`, and `kubernetes://<name>-cacert`, the CA
//! that client certificates of a MUTUAL server are verified against.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};

use crate::model::credential::{CA_SUFFIX, TlsCredential};
use std::collections::BTreeMap;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

/// Istio's name of the workload's own key and certificate chain.
pub const WORKLOAD_SECRET: &str = "default";

/// Istio's name of the trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";

/// The prefix of Istio's SDS names for credentials held in Kubernetes Secrets.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";

fn inline_bytes(pem: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.to_vec())),
        ..Default::default()
    })
}

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

/// The SDS secrets of one namespace's TLS credentials, by Istio's names:
/// `kubernetes://<name>` for each Secret with a chain and key, and
/// `kubernetes://<name>-cacert` for each CA, taken from the Secret
/// `<name>-cacert` when there is one, else from `<name>` itself (Istio's
/// `GetCaCert`). In name order.
pub fn credential_secrets<'a>(credentials: impl IntoIterator<Item = &'a TlsCredential>) -> Vec<Secret> {
    let by_name: BTreeMap<&str, &TlsCredential> =
        credentials.into_iter().map(|c| (c.key.name.as_str(), c)).collect();
    let mut out = BTreeMap::new();
    for (name, credential) in &by_name {
        if let (Some(chain), Some(key)) = (&credential.cert_chain, &credential.private_key) {
            let name = format!("{CREDENTIAL_PREFIX}{name}");
            let certificate = TlsCertificate {
                certificate_chain: inline_bytes(chain),
                private_key: inline_bytes(key),
                ..Default::default()
            };
            out.insert(
                name.clone(),
                Secret { name, r#type: Some(secret::Type::TlsCertificate(certificate)) },
            );
        }
        let Some(ca) = &credential.ca_cert else { continue };
        // `<name>-cacert` is the Secret's own name, or the name of the CA of `<name>`.
        let ca_name = if name.ends_with(CA_SUFFIX) { name.to_string() } else { format!("{name}{CA_SUFFIX}") };
        let own = *name == ca_name;
        if !own && by_name.contains_key(ca_name.as_str()) {
            continue;
        }
        let name = format!("{CREDENTIAL_PREFIX}{ca_name}");
        let validation = CertificateValidationContext {
            trusted_ca: inline_bytes(ca),
            crl: credential.ca_crl.as_deref().and_then(inline_bytes),
            ..Default::default()
        };
        // A `-cacert` Secret's CA wins over the CA of the Secret it belongs to.
        if own || !out.contains_key(&name) {
            out.insert(
                name.clone(),
                Secret { name, r#type: Some(secret::Type::ValidationContext(validation)) },
            );
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectKey;

    fn credential(name: &str, cert: bool, ca: Option<&str>) -> TlsCredential {
        TlsCredential {
            key: ObjectKey::new("istio-system", name),
            cert_chain: cert.then(|| format!("chain of {name}").into_bytes()),
            private_key: cert.then(|| format!("key of {name}").into_bytes()),
            ca_cert: ca.map(|c| c.as_bytes().to_vec()),
            ca_crl: None,
        }
    }

    fn described(secrets: &[Secret]) -> Vec<(String, String)> {
        secrets
            .iter()
            .map(|s| {
                let what = match &s.r#type {
                    Some(secret::Type::TlsCertificate(c)) => match &c.certificate_chain {
                        Some(DataSource {
                            specifier: Some(data_source::Specifier::InlineBytes(b)), ..
                        }) => String::from_utf8_lossy(b).into_owned(),
                        other => format!("{other:?}"),
                    },
                    Some(secret::Type::ValidationContext(v)) => match &v.trusted_ca {
                        Some(DataSource {
                            specifier: Some(data_source::Specifier::InlineBytes(b)), ..
                        }) => {
                            format!("ca {}", String::from_utf8_lossy(b))
                        }
                        other => format!("{other:?}"),
                    },
                    other => format!("{other:?}"),
                };
                (s.name.clone(), what)
            })
            .collect()
    }

    #[test]
    fn credentials_are_served_under_istios_names_with_a_cacert_secret_winning() {
        let plain = credential("bookinfo", true, None);
        let with_ca = credential("mutual", true, Some("A"));
        let separate = credential("split", true, Some("inner"));
        let split_ca = credential("split-cacert", false, Some("outer"));
        let secrets = credential_secrets([&plain, &with_ca, &separate, &split_ca]);
        assert_eq!(
            described(&secrets),
            [
                ("kubernetes://bookinfo", "chain of bookinfo"),
                ("kubernetes://mutual", "chain of mutual"),
                ("kubernetes://mutual-cacert", "ca A"),
                ("kubernetes://split", "chain of split"),
                ("kubernetes://split-cacert", "ca outer"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
