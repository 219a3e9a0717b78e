//! The xDS server Envoy sidecars connect to (gRPC over TLS, port 15012),
//! in layers:
//!
//! - [`proxy`]: the node id a sidecar announces, parsed ([`ProxyId`]);
//! - [`auth`]: whether a stream may be served: the sidecar's token, turned
//!   into an identity by an [`Authenticator`] ([`tokenreview`] asks the API
//!   server), must be bound to the pod its node id names ([`authorize`],
//!   pure);
//! - [`snapshot`]: a proxy's configuration, with content-hash versions,
//!   resources shared between proxies; [`generator`]: a [`Generator`]
//!   builds them once per push: [`MeshGenerator`] ([`mesh`]) translates the mesh per scope and
//!   proxy; [`Passthrough`] serves the pass-through configuration alone
//!   (what `Ads::new` serves; the server's tests use it);
//! - [`stream`] and [`delta`]: the ADS state-of-the-world and incremental
//!   protocols as state machines with no I/O (nonces, ACK, NACK, what to
//!   send when), both keeping [`order`] (make-before-break: clusters before
//!   the routes that name them, routes away before clusters go);
//! - [`push`]: debounced pushes of new snapshots to every connected proxy,
//!   and the registry of connections;
//! - [`server`] and [`grpc`]: TLS, hyper's HTTP/2 and our own gRPC
//!   framing (each resource encoded once, [`wire`]), authentication at
//!   stream start, and the loop that feeds requests and snapshots to the
//!   state machine;
//! - [`debug`]: what /debug/syncz and /debug/config_dump show, and
//!   `mesh proxy-status`'s table of it;
//! - [`metrics`]: what the server counts, on /metrics.
//!
//! Only [`tokenreview`] knows Kubernetes; the rest sees the index and
//! envoy-types protos.

pub mod auth;
pub mod debug;
pub mod delta;
pub mod generator;
pub mod grpc;
pub mod mesh;
pub mod metrics;
pub mod names;
pub(crate) mod order;
pub mod proxy;
pub mod push;
#[cfg(test)]
mod scale;
pub mod server;
pub mod snapshot;
pub mod stream;
#[cfg(test)]
mod tests;
pub mod tokenreview;
pub mod wire;

pub use auth::{Authenticator, Rejection, TokenCache, TokenIdentity, authorize};
pub use generator::{Generator, Passthrough, PushContext, ScopeCache};
pub use mesh::MeshGenerator;
pub use metrics::XdsMetrics;
pub use proxy::{Proxy, ProxyId};
pub use push::{Connections, Debounce, PushError};
pub use server::{Ads, AdsSettings, serve};
pub use snapshot::{Resource, ResourceSet, Resources, Snapshot};
pub use tokenreview::KubeAuthenticator;

/// The resource types the mesh serves, by type URL, and how each is
/// subscribed to and ordered.
pub mod types {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Listeners and clusters are always sent whole: a proxy gets all of
    /// its listeners and clusters, whatever names it asks for.
    pub fn is_wildcard_only(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }

    /// Where a type goes when several are pushed at once: what is referred
    /// to before what refers to it (secrets, clusters, endpoints, then
    /// listeners and routes), so Envoy never waits on a missing piece.
    pub fn push_rank(type_url: &str) -> usize {
        [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE].iter().position(|t| *t == type_url).unwrap_or(usize::MAX)
    }

    /// A short, bounded metric label for a type URL.
    pub fn label(type_url: &str) -> &'static str {
        match type_url {
            LISTENER => "lds",
            CLUSTER => "cds",
            ENDPOINT => "eds",
            ROUTE => "rds",
            SECRET => "sds",
            _ => "other",
        }
    }

    #[cfg(test)]
    mod tests {
        use envoy_types::pb::envoy::config::{
            cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
            route::v3::RouteConfiguration,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
        use prost::Name;

        #[test]
        fn type_urls_are_the_protos_own() {
            assert_eq!(super::LISTENER, Listener::type_url());
            assert_eq!(super::CLUSTER, Cluster::type_url());
            assert_eq!(super::ENDPOINT, ClusterLoadAssignment::type_url());
            assert_eq!(super::ROUTE, RouteConfiguration::type_url());
            assert_eq!(super::SECRET, Secret::type_url());
        }
    }
}
