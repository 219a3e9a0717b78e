//! The translation fuzz target's corpus in a real Envoy: every input the
//! corpus and the regressions hold (objects applied on top of Bookinfo,
//! see [`crate::fuzzing::translation`]) gives the productpage sidecar a
//! configuration `envoy --mode validate` accepts.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context, secret,
};
use prost::Name;

use super::envoy::{assert_envoy_accepts, productpage_secrets};
use crate::translate::any;
use crate::translate::sidecar::{Inbound, Outbound};
use crate::xds::{ResourceType, Snapshot};

fn decoded<M: Message + Default>(snapshot: &Snapshot, resource_type: ResourceType) -> Vec<M> {
    let resources = snapshot.resources(resource_type);
    resources.iter().map(|r| M::decode(r.value()).expect("a resource decodes")).collect()
}

/// The sidecar's snapshot as the outbound and inbound halves the Envoy
/// check takes: which half a cluster belongs to does not matter to it.
fn halves(snapshot: &Snapshot) -> (Outbound, Inbound) {
    let mut listeners: Vec<Listener> = decoded(snapshot, ResourceType::Listener);
    let mut take = |name: &str| {
        let at = listeners.iter().position(|l| l.name == name);
        listeners.remove(at.unwrap_or_else(|| panic!("no {name} listener")))
    };
    let (outbound, inbound) = (take("virtualOutbound"), take("virtualInbound"));
    let out = Outbound {
        clusters: decoded::<Cluster>(snapshot, ResourceType::Cluster),
        endpoints: decoded::<ClusterLoadAssignment>(snapshot, ResourceType::Endpoint),
        routes: decoded::<RouteConfiguration>(snapshot, ResourceType::Route),
        listener: outbound,
        ..Outbound::default()
    };
    (out, Inbound { listener: inbound, ..Inbound::default() })
}

/// Certificates a DestinationRule names by file (`/etc/certs/...`), which
/// `--mode validate` reads, replaced by a real certificate, key and CA.
fn with_certificates_inline(clusters: &mut [Cluster]) {
    let secrets = productpage_secrets();
    let (mut chain, mut key, mut ca) = (None, None, None);
    for secret in &secrets {
        match &secret.r#type {
            Some(secret::Type::TlsCertificate(tls)) => {
                (chain, key) = (tls.certificate_chain.clone(), tls.private_key.clone());
            }
            Some(secret::Type::ValidationContext(validation)) => ca = validation.trusted_ca.clone(),
            _ => {}
        }
    }
    let inline = |source: &mut Option<DataSource>, with: &Option<DataSource>| {
        if let Some(DataSource { specifier: Some(data_source::Specifier::Filename(_)), .. }) = source {
            *source = with.clone();
        }
    };
    for cluster in clusters {
        let Some(socket) = &mut cluster.transport_socket else { continue };
        let Some(transport_socket::ConfigType::TypedConfig(config)) = &mut socket.config_type else {
            continue;
        };
        if config.type_url != UpstreamTlsContext::type_url() {
            continue;
        }
        let mut context = UpstreamTlsContext::decode(config.value.as_slice()).expect("decodes");
        let Some(common) = &mut context.common_tls_context else { continue };
        for certificate in &mut common.tls_certificates {
            inline(&mut certificate.certificate_chain, &chain);
            inline(&mut certificate.private_key, &key);
        }
        match &mut common.validation_context_type {
            Some(common_tls_context::ValidationContextType::ValidationContext(validation)) => {
                inline(&mut validation.trusted_ca, &ca);
            }
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) => {
                if let Some(validation) = &mut combined.default_validation_context {
                    inline(&mut validation.trusted_ca, &ca);
                }
            }
            _ => {}
        }
        *config = any(&context);
    }
}

#[test]
fn envoy_accepts_the_translation_of_every_corpus_input() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut checked = 0;
    for dir in [root.join("corpus/translation"), root.join("regressions/translation")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("an entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("a corpus file");
            let Some(snapshot) = crate::fuzzing::translation(&data) else { continue };
            let (mut out, inb) = halves(&snapshot);
            with_certificates_inline(&mut out.clusters);
            assert_envoy_accepts(&path.display().to_string(), &out, &inb);
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} corpus inputs translated");
}
