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
//! [`sidecar`] is the routed configuration, from a [`MeshView`] built once
//! per index change ([`mesh_view`]):
//!
//! ```text
//! let view = translate::mesh_view(&index);              // once per change
//! let proxy = ProxyContext::from_workload(workload);     // per proxy
//! let scope = view.scope(&proxy);                        // per proxy, cheap
//! let out = sidecar::outbound(&view, &scope);            // once per scope
//! let inb = sidecar::inbound(&view, &proxy);             // per proxy, small
//! ```
//!
//! [`cluster`], [`endpoint`] and [`route`] hold the pieces `sidecar` puts together.

pub mod cluster;
pub mod endpoint;
pub mod passthrough;
pub mod route;
pub mod sidecar;
#[cfg(test)]
pub(crate) mod tests;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::index::Index;
use crate::model::mesh::{MeshInputs, MeshView};

/// The mesh as translation reads it, from what the index holds now.
pub fn mesh_view(index: &Index) -> MeshView {
    MeshView::build(MeshInputs {
        services: &index.services,
        endpoint_slices: &index.endpoint_slices,
        workloads: &index.workloads,
        virtual_services: &index.virtual_services,
        destination_rules: &index.destination_rules,
    })
}

/// Packs a message into a `google.protobuf.Any` (the form of every
/// `typed_config` and of every resource in a discovery response).
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
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

/// An Istio duration (`1h`, `30m`, `2.5s`, `100ms`, `1m30s`; Go's units
/// `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`) as a protobuf Duration. None when
/// it does not parse or is negative.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: f64 = match unit {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        let value: f64 = number.parse().ok()?;
        nanos += (value * scale).round() as u128;
        rest = tail;
    }
    let seconds = i64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration { seconds, nanos: (nanos % 1_000_000_000) as i32 })
}
