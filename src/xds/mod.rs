//! The xDS server Envoy sidecars connect to (gRPC over TLS, port 15012),
//! in layers:
//!
//! - [`proxy`]: the node id a sidecar announces, parsed ([`ProxyId`]);
//! - [`auth`]: whether a stream may be served: the sidecar's token, turned
//!   into an identity by an [`Authenticator`] ([`tokenreview`] asks the API
//!   server), must be bound to the pod its node id names ([`authorize`],
//!   pure);
//! - [`resource_type`]: the resource types served ([`ResourceType`]): type
//!   URLs, wildcard or by name, push order, metric labels;
//! - [`snapshot`]: a proxy's configuration, with content-hash versions,
//!   resources shared between proxies, each listener and route naming the
//!   clusters it sends to; [`generator`]: a [`Generator`] builds them once
//!   per push: [`MeshGenerator`] ([`mesh`]) translates the mesh per scope
//!   and proxy; [`Passthrough`] serves the pass-through configuration
//!   alone (what `Ads::new` serves; the server's tests use it);
//! - [`sotw`] and [`delta`]: the ADS state-of-the-world and incremental
//!   protocols as state machines with no I/O (nonces, ACK, NACK, what to
//!   send when), both keeping [`order`] (make-before-break: clusters before
//!   the routes that name them, routes away before clusters go);
//!   [`protocol`]: what they share, and the trait the server drives both
//!   through;
//! - [`push`]: debounced pushes of new snapshots to every connected proxy,
//!   and the registry of connections; a push that panics ends the push
//!   loop, which the controller's supervisor treats as fatal;
//! - [`server`] and [`grpc`]: TLS, hyper's HTTP/2 and our own gRPC
//!   framing (each resource encoded once, [`wire`]), authentication at
//!   stream start, and one session loop that feeds requests and snapshots
//!   to either state machine; [`names`]: subscribed name sets, shared
//!   between streams;
//! - [`jwks`]: the key sets of JWT issuers named by `jwksUri`, fetched,
//!   refreshed and kept by the controller, sent to sidecars inline; a
//!   change of keys makes a push;
//! - [`sds`]: workload identity: a key and SPIFFE certificate per
//!   stream, for the identity its token proved, served as Istio's secrets
//!   `default` and `ROOTCA`; renewed at half life by the session
//!   (`issuance`, a test-only benchmark, measures how fast);
//! - [`debug`]: what /debug/syncz and /debug/config_dump show, and
//!   `mesh proxy-status`'s table of it;
//! - [`metrics`]: what the server counts, on /metrics.
//!
//! Only [`tokenreview`] knows Kubernetes; the rest sees the index (its
//! read API: `state()`, `get::<Pods>` and its revisions) and envoy-types
//! protos.

pub mod auth;
pub mod debug;
pub mod delta;
pub mod generator;
pub mod grpc;
#[cfg(test)]
mod issuance;
pub mod jwks;
pub mod mesh;
pub mod metrics;
pub mod names;
pub(crate) mod order;
pub mod protocol;
pub mod proxy;
pub mod push;
#[cfg(test)]
mod push_cost;
pub mod resource_type;
#[cfg(test)]
mod scale;
pub mod sds;
pub mod server;
pub mod snapshot;
pub mod sotw;
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
pub use resource_type::ResourceType;
pub use sds::WorkloadCa;
pub use server::{Ads, AdsSettings, serve};
pub use snapshot::{Resource, ResourceSet, Resources, Snapshot};
pub use tokenreview::KubeAuthenticator;
