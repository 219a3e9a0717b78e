//! Endpoints (EDS): one ClusterLoadAssignment per outbound EDS cluster.
//! A subset's assignment holds the endpoints whose pods carry all the
//! subset's labels. A cluster without endpoints still gets an (empty)
//! assignment, so Envoy does not wait for one and answers 503 at once.

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

use super::address;
use super::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL, istio_endpoint_metadata};
use crate::model::mesh::{EndpointView, Health, PortView, is_subset};

/// The assignment of cluster `name`: the port's endpoints, those whose pod
/// labels match `subset_labels` when it is a subset.
pub fn load_assignment(
    name: String,
    port: &PortView,
    subset_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = port
        .endpoints
        .iter()
        .filter(|e| subset_labels.is_none_or(|labels| is_subset(labels, &e.labels)))
        .map(lb_endpoint)
        .collect();
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }]
        },
        ..Default::default()
    }
}

fn lb_endpoint(endpoint: &EndpointView) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(address(&endpoint.address, u32::from(endpoint.port))),
            ..Default::default()
        })),
        health_status: health_status(endpoint.health).into(),
        // A pod with a sidecar is sent mutual TLS (auto mTLS, see super::tls).
        metadata: (endpoint.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO))
            .then(istio_endpoint_metadata),
        ..Default::default()
    }
}

fn health_status(health: Health) -> HealthStatus {
    match health {
        Health::Healthy => HealthStatus::Healthy,
        Health::Draining => HealthStatus::Draining,
        Health::Unhealthy => HealthStatus::Unhealthy,
    }
}
