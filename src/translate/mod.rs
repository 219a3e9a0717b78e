//! Model -> Envoy configuration: pure functions that return `envoy-types`
//! protos (Listener, Cluster, RouteConfiguration, ClusterLoadAssignment,
//! later Secret). Nothing here does I/O or knows about streams, versions or
//! proxies' connections: the `xds` layer packs what these functions return
//! into per-proxy snapshots and serves them.
//!
//! [`passthrough`] is the configuration every sidecar gets before the mesh
//! routes anything: traffic flows as it would without the mesh, but Envoy
//! sees (and counts) it.
//!
//! [`sidecar`] is the routed configuration, from a
//! [`MeshView`](crate::model::mesh::MeshView) the caller builds once per
//! index change from the index's state; nothing here reads the index:
//!
//! ```text
//! let view = MeshView::build(index.state());             // once per change
//! let proxy = ProxyContext::from_workload(workload);     // per proxy
//! let scope = view.scope(&proxy);                        // per proxy, cheap
//! let out = sidecar::outbound(&view, &scope);            // once per scope
//! let inb = sidecar::inbound(&view, &proxy);             // per proxy, small
//! ```
//!
//! [`cluster`], [`endpoint`] and [`route`] hold the pieces `sidecar` puts
//! together; [`service_entry`] what a ServiceEntry's hosts get besides.
//!
//! [`gateway`] is a gateway proxy's own part (`router~…`): the listeners
//! and routes of the Gateways that select its pod, per proxy
//! (`gateway::gateway(&view, &proxy)`), beside the outbound clusters and
//! endpoints of its namespace's scope.
//!
//! Host names and durations are read by the model's grammar
//! ([`crate::model::host`], [`crate::model::duration`]), the same one
//! validation uses, so what the webhook says of an object is what Envoy gets.

pub mod cluster;
pub mod endpoint;
pub mod gateway;
pub mod jwt;
pub mod passthrough;
pub mod rbac;
pub mod route;
pub mod secret;
pub mod service_entry;
pub mod sidecar;
pub mod tcp;
pub mod telemetry;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::LazyLock;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::model::duration;

/// Packs a message into a `google.protobuf.Any` (the form of every
/// `typed_config` and of every resource in a discovery response).
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

/// A protobuf map (a `Struct`'s fields, a `Metadata`'s namespaces) that
/// prost encodes in the same order each time it is built in this process.
/// prost writes a map in its iteration order, and xDS versions are hashes
/// of the encoded bytes: a map of two entries built with its own random
/// hasher would make an unchanged resource look changed, and be pushed
/// again. One hasher for all, entries inserted in key order, the same
/// capacity: the same layout.
pub(crate) fn proto_map<V>(entries: impl IntoIterator<Item = (String, V)>) -> HashMap<String, V> {
    static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut entries: Vec<(String, V)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = HashMap::with_capacity_and_hasher(entries.len(), HASHER.clone());
    map.extend(entries);
    map
}

/// A whole number of seconds as a protobuf Duration.
pub(crate) fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

/// A TCP socket address.
pub(crate) fn socket_address(ip: &str, port: u32) -> SocketAddress {
    SocketAddress {
        address: ip.to_string(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
        ..Default::default()
    }
}

/// A TCP socket address wrapped as the `Address` listeners take.
pub(crate) fn address(ip: &str, port: u32) -> Address {
    Address { address: Some(address::Address::SocketAddress(socket_address(ip, port))) }
}

/// An Istio duration (by [`duration::parse`]) as a protobuf Duration;
/// None when it does not parse or is negative, which leaves the field unset.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let d = duration::parse(text).ok()?;
    // At most i64::MAX nanoseconds, so the seconds fit an i64.
    Some(Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}
