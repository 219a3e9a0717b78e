//! The pass-through configuration: what a sidecar runs before the mesh
//! routes anything. Traffic goes where the application sent it, as if there
//! were no mesh, but through Envoy, so its statistics count every request
//! (`http.outbound.downstream_rq_total`, `http.inbound.downstream_rq_total`)
//! and every connection.
//!
//! Two listeners catch what the init container's iptables rules redirect:
//! `virtualOutbound` (port 15001, the application's outgoing connections)
//! and `virtualInbound` (port 15006, connections to the application). Each
//! restores the connection's original destination (`original_dst`) and
//! sniffs HTTP (`http_inspector`): HTTP/1.1 and prior-knowledge HTTP/2 go
//! through an HTTP connection manager with one catch-all route, everything
//! else through a TCP proxy. Both send to an ORIGINAL_DST cluster, which
//! connects to the address the connection was originally made to.
//!
//! The inbound cluster binds its connections to 127.0.0.6: the iptables
//! rules return traffic from that address untouched
//! (`-s 127.0.0.6/32 -o lo -j RETURN`), so Envoy's own connection to the
//! application is not captured again.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, Http1ProtocolOptions, Http2ProtocolOptions, TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::{BoolValue, Duration};
use prost::Name;

use super::cluster::BLACK_HOLE_CLUSTER;
use super::{address, any, seconds, socket_address};
use crate::model::OutboundTrafficPolicy;

/// The cluster for outbound traffic: to wherever the application connected.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The cluster for inbound traffic: to the application, from 127.0.0.6.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The listener iptables sends the application's outgoing connections to.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// The listener iptables sends incoming connections to.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Port of [`VIRTUAL_OUTBOUND`]; the iptables rules redirect here.
pub const OUTBOUND_PORT: u32 = 15001;
/// Port of [`VIRTUAL_INBOUND`]; the iptables rules redirect here.
pub const INBOUND_PORT: u32 = 15006;
/// The source address of Envoy's connections to its application; the
/// iptables rules let it through uncaptured.
pub const INBOUND_SOURCE_ADDRESS: &str = "127.0.0.6";

/// What `http_inspector` reports for traffic the HTTP chain takes.
pub const HTTP_PROTOCOLS: [&str; 2] = ["http/1.1", "h2c"];

const CONNECT_TIMEOUT_SECONDS: i64 = super::cluster::CONNECT_TIMEOUT_SECONDS;

/// How long the listener waits for the client's first bytes to tell HTTP
/// from other protocols. Protocols where the server speaks first (MySQL,
/// SMTP) send nothing until then, so this is the delay they see before
/// going through the TCP proxy; a short wait keeps them working. A slow
/// HTTP client that misses it still gets through, only uncounted as HTTP.
const PROTOCOL_DETECTION_TIMEOUT: Duration = Duration { seconds: 0, nanos: 100_000_000 };

pub(crate) const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub(crate) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub(crate) const ROUTER: &str = "envoy.filters.http.router";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";

/// The clusters of the pass-through configuration.
pub fn clusters() -> Vec<Cluster> {
    vec![outbound_cluster(), inbound_cluster()]
}

/// The listeners of the pass-through configuration.
pub fn listeners() -> Vec<Listener> {
    vec![virtual_outbound(), virtual_inbound()]
}

/// `PassthroughCluster`: connects to the connection's original destination.
pub fn outbound_cluster() -> Cluster {
    original_destination(PASSTHROUGH_CLUSTER)
}

/// `InboundPassthroughCluster`: connects to the application from
/// [`INBOUND_SOURCE_ADDRESS`], so that connection is not redirected again.
pub fn inbound_cluster() -> Cluster {
    Cluster {
        upstream_bind_config: Some(BindConfig {
            source_address: Some(socket_address(INBOUND_SOURCE_ADDRESS, 0)),
            ..Default::default()
        }),
        ..original_destination(INBOUND_PASSTHROUGH_CLUSTER)
    }
}

/// `virtualOutbound` on 0.0.0.0:15001.
pub fn virtual_outbound() -> Listener {
    listener(Direction::Outbound)
}

/// Where `virtualOutbound` sends what no chain of the mesh takes, by the
/// `outboundTrafficPolicy`: `PassthroughCluster` or `BlackHoleCluster`.
pub fn outbound_catch_all_cluster(policy: OutboundTrafficPolicy) -> &'static str {
    match policy {
        OutboundTrafficPolicy::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundTrafficPolicy::RegistryOnly => BLACK_HOLE_CLUSTER,
    }
}

/// `virtualOutbound` for an `outboundTrafficPolicy`: with ALLOW_ANY the
/// pass-through listener; with REGISTRY_ONLY, as Istio's, every
/// connection no chain of the mesh takes goes through a TCP proxy to
/// `BlackHoleCluster`, which has no endpoints and closes it (no HTTP is
/// sniffed there: a request to a port the mesh knows as HTTP meets that
/// port's routes and their `block_all` host instead, 502).
pub fn virtual_outbound_for(policy: OutboundTrafficPolicy) -> Listener {
    let mut listener = virtual_outbound();
    if policy == OutboundTrafficPolicy::RegistryOnly {
        listener.filter_chains.clear();
        let proxy = TcpProxy {
            stat_prefix: BLACK_HOLE_CLUSTER.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(BLACK_HOLE_CLUSTER.to_string())),
            ..Default::default()
        };
        listener.default_filter_chain = Some(FilterChain {
            name: format!("{VIRTUAL_OUTBOUND}-blackhole"),
            filters: vec![network_filter(TCP_PROXY, any(&proxy))],
            ..Default::default()
        });
    }
    listener
}

/// `virtualInbound` on 0.0.0.0:15006.
pub fn virtual_inbound() -> Listener {
    listener(Direction::Inbound)
}

/// Which way the traffic a listener catches goes.
#[derive(Clone, Copy)]
enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    fn listener_name(self) -> &'static str {
        match self {
            Direction::Outbound => VIRTUAL_OUTBOUND,
            Direction::Inbound => VIRTUAL_INBOUND,
        }
    }

    fn port(self) -> u32 {
        match self {
            Direction::Outbound => OUTBOUND_PORT,
            Direction::Inbound => INBOUND_PORT,
        }
    }

    fn cluster(self) -> &'static str {
        match self {
            Direction::Outbound => PASSTHROUGH_CLUSTER,
            Direction::Inbound => INBOUND_PASSTHROUGH_CLUSTER,
        }
    }

    /// Prefix of the HTTP statistics: `http.<prefix>.downstream_rq_total`.
    fn http_stat_prefix(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    fn traffic_direction(self) -> TrafficDirection {
        match self {
            Direction::Outbound => TrafficDirection::Outbound,
            Direction::Inbound => TrafficDirection::Inbound,
        }
    }
}

/// An ORIGINAL_DST cluster. HTTP requests keep the protocol they came in
/// with (HTTP/1.1 stays HTTP/1.1, h2c and gRPC stay HTTP/2): Envoy would
/// otherwise speak HTTP/1.1 upstream and break gRPC.
fn original_destination(name: &str) -> Cluster {
    let protocol = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst.into(),
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided.into(),
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECONDS)),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), any(&protocol))].into(),
        ..Default::default()
    }
}

/// A catch-all listener: HTTP through the connection manager, the rest
/// through the TCP proxy, both to the direction's pass-through cluster.
fn listener(direction: Direction) -> Listener {
    // The original destination is restored first, on both listeners.
    // `use_original_dst` alone restores it only after the other listener
    // filters, and not at all when protocol detection times out: a
    // server-first protocol would then reach the TCP proxy with nowhere to
    // go (verified with Envoy 1.40).
    let listener_filters = vec![
        listener_filter(ORIGINAL_DST, any(&OriginalDst {})),
        listener_filter(HTTP_INSPECTOR, any(&HttpInspector {})),
    ];
    let name = direction.listener_name();
    Listener {
        name: name.to_string(),
        address: Some(address("0.0.0.0", direction.port())),
        use_original_dst: matches!(direction, Direction::Outbound).then_some(BoolValue { value: true }),
        listener_filters,
        listener_filters_timeout: Some(PROTOCOL_DETECTION_TIMEOUT),
        continue_on_listener_filters_timeout: true,
        traffic_direction: direction.traffic_direction().into(),
        filter_chains: vec![http_chain(direction)],
        default_filter_chain: Some(tcp_chain(direction)),
        ..Default::default()
    }
}

/// Reads a TLS ClientHello (SNI, ALPN) for filter chain matching.
pub(crate) fn tls_inspector() -> ListenerFilter {
    listener_filter(TLS_INSPECTOR, any(&TlsInspector::default()))
}

fn listener_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

pub(crate) fn network_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter { name: name.to_string(), config_type: Some(filter::ConfigType::TypedConfig(config)) }
}

/// The chain for sniffed HTTP: a connection manager with one route, any
/// host, any path, to the pass-through cluster, without a timeout (the
/// application had none).
fn http_chain(direction: Direction) -> FilterChain {
    let route = Route {
        name: "passthrough".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(direction.cluster().to_string())),
            timeout: Some(seconds(0)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: direction.http_stat_prefix().to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "passthrough".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: direction.http_stat_prefix().to_string(),
        codec_type: http_connection_manager::CodecType::Auto.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: ROUTER.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        // Without these Envoy would refuse WebSocket upgrades and rewrite
        // the application's `server` header: not what "no mesh" looks like.
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        server_header_transformation: http_connection_manager::ServerHeaderTransformation::PassThrough.into(),
        ..Default::default()
    };
    FilterChain {
        name: format!("{}-http", direction.listener_name()),
        filter_chain_match: Some(FilterChainMatch {
            application_protocols: HTTP_PROTOCOLS.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![network_filter(HTTP_CONNECTION_MANAGER, any(&manager))],
        ..Default::default()
    }
}

/// The chain for everything else: bytes in, bytes out. Its statistics are
/// named after the cluster (`tcp.PassthroughCluster.*`), as in Istio.
fn tcp_chain(direction: Direction) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: direction.cluster().to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(direction.cluster().to_string())),
        ..Default::default()
    };
    FilterChain {
        name: format!("{}-tcp", direction.listener_name()),
        filters: vec![network_filter(TCP_PROXY, any(&proxy))],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn unpack<M: Message + Name + Default>(any: &Any) -> M {
        assert_eq!(any.type_url, M::type_url());
        M::decode(any.value.as_slice()).expect("decodes")
    }

    fn filter_config(filter: &Filter) -> &Any {
        match &filter.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => any,
            other => panic!("{} has no typed_config: {other:?}", filter.name),
        }
    }

    fn port(listener: &Listener) -> (String, u32) {
        match listener.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => (sa.address.clone(), p),
                ref other => panic!("no port: {other:?}"),
            },
            other => panic!("not a socket address: {other:?}"),
        }
    }

    fn manager(chain: &FilterChain) -> HttpConnectionManager {
        assert_eq!(chain.filters.len(), 1);
        assert_eq!(chain.filters[0].name, HTTP_CONNECTION_MANAGER);
        unpack(filter_config(&chain.filters[0]))
    }

    fn tcp(chain: &FilterChain) -> TcpProxy {
        assert_eq!(chain.filters.len(), 1);
        assert_eq!(chain.filters[0].name, TCP_PROXY);
        unpack(filter_config(&chain.filters[0]))
    }

    fn route_cluster(manager: &HttpConnectionManager) -> (String, Option<Duration>) {
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) = &manager.route_specifier
        else {
            panic!("inline routes expected");
        };
        let host = &routes.virtual_hosts[0];
        assert_eq!(host.domains, ["*"]);
        let route = &host.routes[0];
        assert_eq!(
            route.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        match &route.action {
            Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
                timeout,
                ..
            })) => (c.clone(), *timeout),
            other => panic!("route to a cluster expected: {other:?}"),
        }
    }

    fn listener_filter_names(listener: &Listener) -> Vec<&str> {
        listener.listener_filters.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn clusters_connect_to_the_original_destination() {
        for cluster in clusters() {
            assert_eq!(
                cluster.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst.into())),
                "{}",
                cluster.name
            );
            assert_eq!(cluster.lb_policy, i32::from(cluster::LbPolicy::ClusterProvided));
            assert_eq!(cluster.connect_timeout, Some(seconds(10)));
            let options = &cluster.typed_extension_protocol_options[&HttpProtocolOptions::full_name()];
            let options: HttpProtocolOptions = unpack(options);
            assert!(matches!(
                options.upstream_protocol_options,
                Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
            ));
        }
        assert_eq!(
            clusters().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["PassthroughCluster", "InboundPassthroughCluster"]
        );
    }

    #[test]
    fn only_the_inbound_cluster_binds_to_the_uncaptured_address() {
        assert_eq!(outbound_cluster().upstream_bind_config, None);
        let bind =
            inbound_cluster().upstream_bind_config.and_then(|b| b.source_address).expect("bind address");
        assert_eq!(bind.address, "127.0.0.6");
        assert_eq!(bind.port_specifier, Some(socket_address::PortSpecifier::PortValue(0)));
    }

    #[test]
    fn virtual_outbound_sniffs_http_and_passes_everything_through() {
        let l = virtual_outbound();
        assert_eq!(l.name, "virtualOutbound");
        assert_eq!(port(&l), ("0.0.0.0".into(), 15001));
        assert_eq!(l.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(
            listener_filter_names(&l),
            ["envoy.filters.listener.original_dst", "envoy.filters.listener.http_inspector"]
        );
        assert!(l.continue_on_listener_filters_timeout);
        assert_eq!(l.traffic_direction, i32::from(TrafficDirection::Outbound));

        assert_eq!(l.filter_chains.len(), 1);
        let http = &l.filter_chains[0];
        let matched = http.filter_chain_match.as_ref().expect("a match");
        assert_eq!(matched.application_protocols, ["http/1.1", "h2c"]);
        let hcm = manager(http);
        assert_eq!(hcm.stat_prefix, "outbound");
        assert_eq!(hcm.codec_type, i32::from(http_connection_manager::CodecType::Auto));
        assert_eq!(route_cluster(&hcm), ("PassthroughCluster".into(), Some(seconds(0))));
        assert_eq!(hcm.http_filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), [ROUTER]);

        let tcp = tcp(l.default_filter_chain.as_ref().expect("a default chain"));
        assert_eq!(tcp.stat_prefix, "PassthroughCluster");
        assert_eq!(
            tcp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster("PassthroughCluster".into()))
        );
    }

    #[test]
    fn virtual_inbound_restores_the_destination_and_sends_to_the_application() {
        let l = virtual_inbound();
        assert_eq!(l.name, "virtualInbound");
        assert_eq!(port(&l), ("0.0.0.0".into(), 15006));
        assert_eq!(l.use_original_dst, None);
        assert_eq!(
            listener_filter_names(&l),
            ["envoy.filters.listener.original_dst", "envoy.filters.listener.http_inspector"]
        );
        assert!(l.continue_on_listener_filters_timeout);
        let hcm = manager(&l.filter_chains[0]);
        assert_eq!(hcm.stat_prefix, "inbound");
        assert_eq!(route_cluster(&hcm).0, "InboundPassthroughCluster");
        let tcp = tcp(l.default_filter_chain.as_ref().expect("a default chain"));
        assert_eq!(tcp.stat_prefix, "InboundPassthroughCluster");
    }

    #[test]
    fn typed_configs_carry_their_type_urls() {
        let l = virtual_outbound();
        let hcm = filter_config(&l.filter_chains[0].filters[0]);
        assert_eq!(
            hcm.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        let tcp = filter_config(&l.default_filter_chain.as_ref().expect("default").filters[0]);
        assert_eq!(
            tcp.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        let Some(listener_filter::ConfigType::TypedConfig(inspector)) = &l.listener_filters[1].config_type
        else {
            panic!("typed config expected");
        };
        assert_eq!(
            inspector.type_url,
            "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
        );
    }

    #[test]
    fn the_configuration_is_deterministic() {
        // Versions are content hashes: the same input must encode the same.
        let encode = || {
            let mut bytes = Vec::new();
            for l in listeners() {
                bytes.extend(l.encode_to_vec());
            }
            for c in clusters() {
                bytes.extend(c.encode_to_vec());
            }
            bytes
        };
        assert_eq!(encode(), encode());
    }
}
