//! Model -> Envoy configuration: pure functions that return `envoy-types`
//! protos (Listener, Cluster, later RouteConfiguration,
//! ClusterLoadAssignment and Secret). Nothing here does I/O or knows about
//! streams, versions or proxies' connections: the `xds` layer packs what
//! these functions return into per-proxy snapshots and serves them.
//!
//! [`passthrough`] is the configuration every sidecar gets before the mesh
//! routes anything: traffic flows as it would without the mesh, but Envoy
//! sees (and counts) it.

pub mod passthrough;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

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
