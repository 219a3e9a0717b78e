//! Translation tests: Bookinfo as the index would hold it
//! ([`crate::testing::bookinfo`]) with Istio's sample routing applied,
//! translated for the productpage sidecar.
//!
//! The golden files under `testdata/bookinfo/` are Envoy's own view of
//! the translation (its /config_dump), so reviewers read exactly the
//! configuration a proxy runs; [`envoy`] loads it into a real Envoy 1.40.
//! `MESH_UPDATE_GOLDEN=1` rewrites them.

mod envoy;
mod focused;
mod fuzz_corpus;
mod gateway;
mod jwt;
mod l4;
mod ops;
mod policy;
mod random;
mod service_entry;
mod sidecar_scope;

use crate::index::{Index, Pods, Services};
pub(super) use crate::testing::bookinfo::{
    NAMESPACE, apply_networking, bookinfo, endpoint_slice, mesh_view, productpage,
};

/// The scenarios with a golden file each: the DestinationRules of
/// `destination-rule-all.yaml` plus one routing sample, or plus
/// ServiceEntries under REGISTRY_ONLY ([`service_entry::SERVICE_ENTRIES`]).
pub(super) const SCENARIOS: [&str; 11] = [
    "no-virtual-service",
    "virtual-service-all-v1",
    "virtual-service-reviews-test-v2",
    "virtual-service-reviews-jason-v2-v3",
    "virtual-service-reviews-80-20",
    "virtual-service-reviews-90-10",
    "virtual-service-reviews-50-v3",
    "virtual-service-reviews-v3",
    "virtual-service-ratings-test-delay",
    "virtual-service-ratings-test-abort",
    service_entry::SERVICE_ENTRIES,
];

/// Bookinfo with the DestinationRules and the scenario's VirtualServices.
pub(super) fn scenario(name: &str) -> Index {
    if name == service_entry::SERVICE_ENTRIES {
        return service_entry::index(crate::model::OutboundTrafficPolicy::RegistryOnly);
    }
    let mut index = bookinfo();
    apply_networking(&mut index, "destination-rule-all.yaml");
    if name != "no-virtual-service" {
        apply_networking(&mut index, &format!("{name}.yaml"));
    }
    index
}

#[test]
fn bookinfo_is_indexed_with_a_pod_behind_every_endpoint() {
    let index = bookinfo();
    assert_eq!(index.count::<Services>(), 4);
    assert_eq!(index.count::<Pods>(), 6);
    let view = mesh_view(&index);
    let reviews = view.service("reviews.default.svc.cluster.local").expect("reviews");
    let port = reviews.port(9080).expect("9080");
    assert_eq!(port.endpoints.len(), 3);
    let versions: Vec<_> =
        port.endpoints.iter().map(|e| e.labels.get("version").cloned().unwrap_or_default()).collect();
    assert_eq!(versions, ["v1", "v2", "v3"]);
}

/// No policy switches mutual TLS: every port is PERMISSIVE, Istio's default.
pub(super) fn permissive(
    _port: &crate::translate::sidecar::InboundPort,
) -> crate::translate::sidecar::PortPolicy {
    crate::translate::sidecar::PortPolicy::default()
}
