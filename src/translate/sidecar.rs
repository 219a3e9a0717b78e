//! A sidecar's routed configuration, in two halves.
//!
//! [`outbound`]: what the application's outgoing traffic meets. Clusters,
//! endpoints and routes for every Service the proxy may reach (exported to
//! its namespace and imported by its Sidecar: [`MeshView::egress`]), and the
//! `virtualOutbound` listener (port 15001) with one filter chain per
//! Service port at the Service's ClusterIP: HTTP ports go through an HTTP
//! connection manager whose routes come by RDS as `<host>:<port>`, other
//! ports through a TCP proxy to its cluster, or to where the Service's
//! `tcp` or `tls` rules send them ([`super::tcp`]); and per HTTP port, a chain
//! for any other address (pod IPs, headless Services) with the routes
//! `"<port>"`.
//! ServiceEntry hosts are services here too: those without addresses are
//! routed by Host on `"<port>"` (HTTP) or take a chain by port and SNI
//! ([`super::service_entry`]), those with addresses a chain per address.
//! Everything else keeps the pass-through chains ([`super::passthrough`]),
//! or, under REGISTRY_ONLY, goes to `BlackHoleCluster`.
//! It depends only on the proxy's [`ScopeKey`], so the xDS layer computes
//! it once per scope and shares it: equal ScopeKey ⇒ equal Outbound.
//!
//! [`inbound`]: what traffic to the application meets. The
//! `virtualInbound` listener (port 15006) with one chain per port of the
//! Services that select the pod (by target port), or per ingress listener
//! of its Sidecar, each to `inbound|<port>||`: an original-destination
//! cluster (a static one to a Sidecar's `defaultEndpoint`) whose connections
//! leave from 127.0.0.6, which the iptables rules let through uncaptured
//! (`-s 127.0.0.6/32 -o lo -j RETURN`); other ports keep the pass-through
//! chains. It depends on the pod itself.
//!
//! Statistics: the routed HTTP chains use Istio's prefixes,
//! `outbound_0.0.0.0_<port>` and `inbound_0.0.0.0_<port>`
//! (`http.outbound_0.0.0.0_9080.downstream_rq_total`); the pass-through
//! chains keep `outbound` and `inbound`. TCP chains count under their
//! cluster's name (`tcp.outbound|3306||mysql.db.svc.cluster.local.*`).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{BindConfig, CidrRange};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use prost::Name;

use super::cluster::{
    CONNECT_TIMEOUT_SECONDS, ClusterPolicy, ads_config_source, apply_connection_pool, black_hole_cluster,
    http2_options, inbound_name, outbound_name, service_port_clusters,
};
use super::endpoint::load_assignment;
use super::passthrough::{
    self, HTTP_CONNECTION_MANAGER, INBOUND_PASSTHROUGH_CLUSTER, INBOUND_SOURCE_ADDRESS, ROUTER, TCP_PROXY,
    network_filter,
};
use super::route::{
    cors_filter, fault_filter, route_configuration_for, service_route_configuration, service_route_name,
};
use super::telemetry::{self, Reporter};
use super::{any, seconds, socket_address};
use super::{service_entry, tcp, tls};
use crate::api::destination_rule::ConnectionPoolSettings;
use crate::model::cidr::Cidr;
use crate::model::mesh::{MeshView, PortView, ProxyContext, ScopeKey, ServiceView};
use crate::model::mtls::MtlsMode;
use crate::model::protocol::Protocol;
use crate::model::service_entry::Discovery;
use crate::model::sidecar_scope::IngressListener;
use crate::model::telemetry::Settings;

/// What a proxy's outgoing traffic needs; the same for every proxy of a scope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outbound {
    /// Service and subset clusters, `PassthroughCluster` and `BlackHoleCluster`, by name.
    pub clusters: Vec<Cluster>,
    /// One per EDS cluster, in cluster order.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// One per HTTP port of each Service with a ClusterIP (`<host>:<port>`)
    /// and one per HTTP port for other addresses (`"<port>"`), by name.
    pub routes: Vec<RouteConfiguration>,
    /// `virtualOutbound`.
    pub listener: Listener,
    /// The clusters `virtualOutbound` sends to itself (TCP ports and
    /// pass-through); HTTP ports send through their routes, which name their
    /// own ([`super::route::route_clusters`]). xDS holds the listener back
    /// until these are known to the proxy.
    pub listener_clusters: BTreeSet<String>,
}

/// What traffic to the proxy's own pod needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inbound {
    /// `inbound|<port>||` per port, then `InboundPassthroughCluster`.
    pub clusters: Vec<Cluster>,
    /// `virtualInbound`.
    pub listener: Listener,
    /// The clusters `virtualInbound` sends to.
    pub listener_clusters: BTreeSet<String>,
}

/// The outbound configuration of every proxy of `scope`.
pub fn outbound(view: &MeshView, scope: &ScopeKey) -> Outbound {
    let (listener, listener_clusters) = outbound_listener_sending_to(view, scope);
    Outbound {
        clusters: clusters(view, scope),
        endpoints: endpoints(view, scope),
        routes: routes(view, scope),
        listener,
        listener_clusters,
    }
}

/// The Services' ports a proxy of `scope` has listener chains and routes
/// for: (service, port), in host name then port order.
fn outbound_ports<'a>(
    view: &'a MeshView,
    scope: &'a ScopeKey,
) -> impl Iterator<Item = (&'a ServiceView, &'a PortView)> {
    let egress = view.egress(scope);
    captured_ports(view).filter(move |(s, p)| egress.listens(s, p.port))
}

/// The Services' ports a proxy of `scope` has clusters for: those it has
/// chains for, and those the VirtualServices its Sidecar imports send to.
fn cluster_ports<'a>(
    view: &'a MeshView,
    scope: &'a ScopeKey,
) -> impl Iterator<Item = (&'a ServiceView, &'a PortView)> {
    let egress = view.egress(scope);
    captured_ports(view).filter(move |(s, p)| egress.has_clusters(s, p.port))
}

/// Every Service port the sidecar captures, in host name then port order.
fn captured_ports(view: &MeshView) -> impl Iterator<Item = (&ServiceView, &PortView)> {
    view.services()
        .flat_map(|s| s.ports.iter().filter(|p| p.protocol.is_captured() && p.port != 0).map(move |p| (s, p)))
}

/// The outbound clusters (CDS) of `scope`.
pub fn clusters(view: &MeshView, scope: &ScopeKey) -> Vec<Cluster> {
    let mut out = clusters_where(view, scope, |_| true);
    out.push(passthrough::outbound_cluster());
    out.push(black_hole_cluster());
    out.extend(telemetry::zipkin_cluster(view.telemetry()));
    out
}

/// The outbound clusters of `scope` of the Services named `hosts` alone:
/// what a change of their endpoints reaches (the ServiceAccounts their
/// clusters check come from the endpoints' pods).
pub fn host_clusters(view: &MeshView, scope: &ScopeKey, hosts: &BTreeSet<String>) -> Vec<Cluster> {
    clusters_where(view, scope, |s| hosts.contains(&s.hostname))
}

fn clusters_where(view: &MeshView, scope: &ScopeKey, wanted: impl Fn(&ServiceView) -> bool) -> Vec<Cluster> {
    let mut out = Vec::new();
    for (service, port) in cluster_ports(view, scope).filter(|(s, _)| wanted(s)) {
        out.extend(service_port_clusters(
            service,
            port,
            view.destination_rule_for(scope, service),
            view.trust_domain(),
        ));
    }
    out
}

/// The endpoints (EDS) of the outbound clusters of `scope`.
pub fn endpoints(view: &MeshView, scope: &ScopeKey) -> Vec<ClusterLoadAssignment> {
    endpoints_where(view, scope, |_| true)
}

/// The endpoints of `scope`'s clusters of the Services named `hosts`.
pub fn host_endpoints(
    view: &MeshView,
    scope: &ScopeKey,
    hosts: &BTreeSet<String>,
) -> Vec<ClusterLoadAssignment> {
    endpoints_where(view, scope, |s| hosts.contains(&s.hostname))
}

fn endpoints_where(
    view: &MeshView,
    scope: &ScopeKey,
    wanted: impl Fn(&ServiceView) -> bool,
) -> Vec<ClusterLoadAssignment> {
    let mut out = Vec::new();
    for (service, port) in cluster_ports(view, scope).filter(|(s, _)| wanted(s)) {
        let rule = view.destination_rule_for(scope, service).map(|r| &r.spec);
        // Clusters with PASSTHROUGH load balancing connect to the original destination: no EDS.
        // DNS and original-destination clusters (ServiceEntries) take none either.
        if service.discovery() != Discovery::Eds {
            continue;
        }
        let policy = ClusterPolicy::resolve(rule, None, port.port);
        if policy.uses_eds() {
            let name = outbound_name(port.port, "", &service.hostname);
            out.push(load_assignment(name, port, None, policy.failover(&scope.labels).as_ref()));
        }
        for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
            let policy = ClusterPolicy::resolve(rule, Some(subset), port.port);
            if policy.uses_eds() {
                let name = outbound_name(port.port, &subset.name, &service.hostname);
                out.push(load_assignment(
                    name,
                    port,
                    Some(&subset.labels),
                    policy.failover(&scope.labels).as_ref(),
                ));
            }
        }
    }
    out
}

/// The route configurations (RDS) of `scope`, by name: one per HTTP port
/// of every Service with a ClusterIP (`<host>:<port>`, the Service's
/// virtual host and `allow_any`), and one per HTTP port for every other
/// address (`"<port>"`, headless Services' virtual hosts and `allow_any`).
pub fn routes(view: &MeshView, scope: &ScopeKey) -> Vec<RouteConfiguration> {
    routes_where(view, scope, |_| true)
}

/// The route configurations of `scope` a change of the VirtualServices
/// for `hosts` reaches: each `<host>:<port>` of those Services, and every
/// `"<port>"` (headless Services' virtual hosts; few).
pub fn host_routes(view: &MeshView, scope: &ScopeKey, hosts: &BTreeSet<String>) -> Vec<RouteConfiguration> {
    routes_where(view, scope, |s| hosts.contains(&s.hostname))
}

fn routes_where(
    view: &MeshView,
    scope: &ScopeKey,
    wanted: impl Fn(&ServiceView) -> bool,
) -> Vec<RouteConfiguration> {
    let mut out: Vec<RouteConfiguration> = http_ports(view, scope)
        .into_iter()
        .map(|(port, headless)| route_configuration_for(view, scope, port, &headless))
        .collect();
    for ((port, _), (service, kind)) in address_ports(view, scope) {
        if kind.is_http() && wanted(service) {
            out.push(service_route_configuration(view, scope, service, port));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The ports on which some reachable Service speaks HTTP, each with the
/// headless Services (no ClusterIP) and ServiceEntry hosts without
/// addresses that do, in host name order: they are routed by Host alone.
fn http_ports<'a>(view: &'a MeshView, scope: &'a ScopeKey) -> BTreeMap<u16, Vec<&'a ServiceView>> {
    let mut by_port: BTreeMap<u16, Vec<&ServiceView>> = BTreeMap::new();
    for (service, port) in outbound_ports(view, scope).filter(|(_, p)| p.protocol.is_http()) {
        let headless = by_port.entry(port.port).or_default();
        // A Service listing the same port twice gets one virtual host.
        let by_name = service.addresses().next().is_none();
        if by_name && headless.last().is_none_or(|s| s.hostname != service.hostname) {
            headless.push(service);
        }
    }
    by_port
}

/// The Service ports reached at a ClusterIP (or a ServiceEntry's address
/// or address block), by (port, address): each
/// pair gets one filter chain, as Envoy refuses two chains with the same
/// match. Two Services share an address only while the index catches up
/// with one that was recreated; the first by host name keeps it (its
/// first listing of the port, should it list the port twice).
fn address_ports<'a>(
    view: &'a MeshView,
    scope: &'a ScopeKey,
) -> BTreeMap<(u16, &'a str), (&'a ServiceView, Protocol)> {
    let mut out = BTreeMap::new();
    for (service, port) in outbound_ports(view, scope) {
        for address in service.addresses() {
            out.entry((port.port, address)).or_insert((service, port.protocol));
        }
    }
    out
}

/// `virtualOutbound`: the pass-through listener with, in front, a chain per
/// Service port at its ClusterIP (HTTP: routes by RDS `<host>:<port>`;
/// other protocols: a TCP proxy to the Service) and a chain per HTTP port
/// for every other address (routes by RDS `"<port>"`).
///
/// Envoy picks a chain by destination port first, then by the longest
/// matching destination prefix: a connection to a ClusterIP takes that
/// Service's `/32` (`/128`) chain, one to a pod IP or a headless Service on
/// an HTTP port the port's catch-all, and one to a port no chain names the
/// pass-through chains. Matches are unique: one catch-all per port, one
/// chain per (port, ClusterIP) ([`address_ports`]).
pub fn outbound_listener(view: &MeshView, scope: &ScopeKey) -> Listener {
    outbound_listener_sending_to(view, scope).0
}

/// `virtualOutbound`, and the clusters its chains send to themselves.
pub fn outbound_listener_sending_to(view: &MeshView, scope: &ScopeKey) -> (Listener, BTreeSet<String>) {
    let policy = view.outbound_traffic_policy(scope);
    let mut sends_to = BTreeSet::from([passthrough::outbound_catch_all_cluster(policy).to_string()]);
    // The HTTP connection managers trace to the collector's cluster.
    sends_to.extend(telemetry::zipkin_cluster(view.telemetry()).map(|c| c.name));
    let http_ports: BTreeSet<u16> = http_ports(view, scope).into_keys().collect();
    let mut chains: Vec<FilterChain> =
        http_ports.iter().map(|&port| outbound_http_chain(view, port, Protocol::Http, None)).collect();
    // ServiceEntries' TCP and TLS ports without addresses: by port (and SNI) on any address.
    let (mut port_wide, port_wide_clusters, mut by_sni) = service_entry::port_wide_chains(
        outbound_ports(view, scope),
        &http_ports,
        &telemetry::tcp_logs(view.telemetry(), Reporter::Source, None),
    );
    chains.append(&mut port_wide);
    sends_to.extend(port_wide_clusters);
    for ((port, ip), (service, protocol)) in address_ports(view, scope) {
        if protocol.is_http() {
            chains.push(outbound_http_chain(view, port, protocol, Some((service, ip))));
        } else {
            let mut routed = tcp::service_chains(view, scope, service, port, protocol, ip);
            sends_to.append(&mut routed.clusters);
            by_sni |= routed.by_sni;
            chains.append(&mut routed.chains);
        }
    }
    let mut listener = passthrough::virtual_outbound_for(policy);
    if by_sni {
        // TLS routes need the SNI, which only the TLS inspector reads.
        listener.listener_filters.insert(1, passthrough::tls_inspector());
    }
    chains.append(&mut listener.filter_chains);
    listener.filter_chains = chains;
    (listener, sends_to)
}

/// An HTTP chain on `port`: at one Service's ClusterIP, with that
/// Service's routes, or at any other address, with the port's; `protocol`
/// is what the metrics call its requests.
fn outbound_http_chain(
    view: &MeshView,
    port: u16,
    protocol: Protocol,
    service: Option<(&ServiceView, &str)>,
) -> FilterChain {
    let (name, routes, prefix_ranges) = match service {
        Some((service, ip)) => {
            (format!("{ip}_{port}"), service_route_name(service, port), vec![host_range(ip)])
        }
        None => (format!("0.0.0.0_{port}"), port.to_string(), Vec::new()),
    };
    let mut manager = HttpConnectionManager {
        // One prefix for the port whatever the address, as Istio's.
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: routes,
        })),
        ..http_connection_manager()
    };
    manager.access_log = telemetry::http_logs(view.telemetry(), Reporter::Source, protocol, None);
    manager.tracing = telemetry::tracing(view.telemetry());
    // Faults are injected on the client's side, by the routes that set
    // them; CORS before them, as Istio orders its outbound filters.
    manager.http_filters.insert(0, fault_filter());
    manager.http_filters.insert(0, cors_filter());
    FilterChain {
        name,
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: u32::from(port) }),
            prefix_ranges,
            ..Default::default()
        }),
        filters: vec![network_filter(HTTP_CONNECTION_MANAGER, any(&manager))],
        ..Default::default()
    }
}

/// Exactly one address, or a ServiceEntry's address block (`10.1.0.0/16`).
fn host_range(ip: &str) -> CidrRange {
    let (address_prefix, prefix_len) = match Cidr::parse(ip) {
        Some(block) => (block.network().addr.to_string(), u32::from(block.len)),
        None => (ip.to_string(), if ip.contains(':') { 128 } else { 32 }),
    };
    CidrRange { address_prefix, prefix_len: Some(UInt32Value { value: prefix_len }) }
}

pub(super) fn tcp_proxy_filter(
    cluster: String,
    logs: &telemetry::TcpLogs,
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    let mut proxy = TcpProxy {
        stat_prefix: cluster.clone(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)),
        ..Default::default()
    };
    logs.apply(&mut proxy);
    network_filter(TCP_PROXY, any(&proxy))
}

/// The connection manager settings both directions (and gateways) share.
pub(super) fn http_connection_manager() -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto.into(),
        http_filters: vec![HttpFilter {
            name: ROUTER.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        normalize_path: Some(BoolValue { value: true }),
        use_remote_address: Some(BoolValue { value: false }),
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        // The application's own `server` header, as without the mesh.
        server_header_transformation: http_connection_manager::ServerHeaderTransformation::PassThrough.into(),
        ..Default::default()
    }
}

/// One port the pod serves, as some Service that selects it exposes it,
/// or as its Sidecar's ingress listener declares it.
#[derive(Clone, Debug)]
pub struct InboundPort<'a> {
    /// The container port.
    pub port: u16,
    pub protocol: Protocol,
    /// The Service that exposes it: when several do, the first by host
    /// name, whose protocol and policies the port gets. A Sidecar's
    /// ingress port may have none (Istio then names the Sidecar instead).
    pub service: Option<&'a ServiceView>,
    /// Where its traffic goes, from a Sidecar's `defaultEndpoint`; None:
    /// the address it was sent to.
    pub endpoint: Option<(String, u16)>,
    /// The Sidecar's limits on the port's inbound connections, if any.
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
}

/// What an inbound port enforces before it hands a request or connection
/// to the application.
#[derive(Clone, Debug, Default)]
pub struct PortPolicy {
    pub mtls: MtlsMode,
    /// On an HTTP port, before the router, in this order.
    pub http_filters: Vec<HttpFilter>,
    /// On a TCP port, before the TCP proxy, in this order.
    pub network_filters: Vec<Filter>,
}

/// The ports of `proxy`'s pod that Services expose, by target port: when
/// two Services disagree on a port's protocol, the first by host name wins.
fn inbound_ports<'a>(view: &'a MeshView, proxy: &ProxyContext) -> Vec<InboundPort<'a>> {
    let connection_pool = view.sidecar_for(proxy).and_then(|s| s.inbound_connection_pool.as_ref());
    let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for service in view.services_of(proxy) {
        for port in service.ports.iter().filter(|p| p.protocol.is_captured()) {
            if let Some(target) = target_port(port, proxy) {
                ports.entry(target).or_insert(InboundPort {
                    port: target,
                    protocol: port.protocol,
                    service: Some(service),
                    endpoint: None,
                    connection_pool,
                });
            }
        }
    }
    ports.into_values().collect()
}

/// The ports a Sidecar's ingress listeners declare, in their order (the
/// first of two on one port): each with the Service that selects the pod
/// on that target port, if one does (Istio's `findOrCreateServiceInstance`).
fn ingress_ports<'a>(
    view: &'a MeshView,
    proxy: &ProxyContext,
    listeners: &'a [IngressListener],
) -> Vec<InboundPort<'a>> {
    let mut ports: Vec<InboundPort> = Vec::new();
    for listener in listeners {
        if ports.iter().any(|p| p.port == listener.port) {
            continue;
        }
        let service = view.services_of(proxy).find(|s| {
            s.ports.iter().any(|p| p.protocol.is_captured() && target_port(p, proxy) == Some(listener.port))
        });
        ports.push(InboundPort {
            port: listener.port,
            protocol: listener.protocol,
            service,
            endpoint: listener.endpoint.map(|e| e.address(proxy.ip.as_deref())),
            connection_pool: listener.connection_pool.as_ref(),
        });
    }
    ports
}

/// The container port behind a Service port: a number, or a named port
/// resolved through the endpoints (of this pod if it is among them).
fn target_port(port: &PortView, proxy: &ProxyContext) -> Option<u16> {
    match port.target_port.as_deref() {
        None | Some("") => Some(port.port),
        Some(target) => match target.parse::<u16>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                let own = port.endpoints.iter().find(|e| {
                    e.pod.as_ref().is_some_and(|p| p.name == proxy.pod && p.namespace == proxy.namespace)
                });
                own.or(port.endpoints.first()).map(|e| e.port)
            }
        },
    }
}

/// The inbound half of `proxy`'s configuration; `policy` says what each
/// port (the application's, as the pod serves it) accepts and enforces.
pub fn inbound(
    view: &MeshView,
    proxy: &ProxyContext,
    policy: impl Fn(&InboundPort) -> PortPolicy,
) -> Inbound {
    // A Sidecar's ingress listeners replace the Services' ports, as in Istio.
    let ports = match view.sidecar_for(proxy).filter(|s| !s.ingress.is_empty()) {
        Some(sidecar) => ingress_ports(view, proxy, &sidecar.ingress),
        None => inbound_ports(view, proxy),
    };
    let mut clusters: Vec<Cluster> = ports.iter().map(inbound_cluster).collect();
    clusters.push(passthrough::inbound_cluster());
    let mut chains: Vec<FilterChain> =
        ports.iter().flat_map(|p| inbound_chains(view.telemetry(), p, &policy(p))).collect();
    let mut listener = passthrough::virtual_inbound();
    // TLS is recognised (and its ALPN read) before HTTP is sniffed.
    listener.listener_filters.insert(1, passthrough::tls_inspector());
    chains.append(&mut listener.filter_chains);
    listener.filter_chains = chains;
    // Each port's chain sends to its own cluster, the rest passes through.
    let zipkin = telemetry::zipkin_cluster(view.telemetry()).map(|c| c.name);
    let listener_clusters = ports
        .iter()
        .map(|p| inbound_name(p.port))
        .chain([INBOUND_PASSTHROUGH_CLUSTER.to_string()])
        .chain(zipkin)
        .collect();
    Inbound { clusters, listener, listener_clusters }
}

/// `inbound|<port>||`: to the application, at the address the connection
/// was made to (or the Sidecar's `defaultEndpoint`: a static cluster), from
/// 127.0.0.6, which the iptables rules let through uncaptured (but to
/// loopback, which they never capture).
fn inbound_cluster(port: &InboundPort) -> Cluster {
    let name = inbound_name(port.port);
    let mut cluster = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst.into(),
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided.into(),
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECONDS)),
        upstream_bind_config: Some(BindConfig {
            source_address: Some(socket_address(INBOUND_SOURCE_ADDRESS, 0)),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some((ip, number)) = &port.endpoint {
        cluster.cluster_discovery_type =
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static.into()));
        cluster.lb_policy = cluster::LbPolicy::RoundRobin.into();
        cluster.load_assignment = Some(super::endpoint::single(name, ip, *number));
        // Loopback is never captured, so it needs no 127.0.0.6 (Istio binds
        // only for other addresses); nor can 127.0.0.6 reach IPv6.
        if ip == "127.0.0.1" || ip.contains(':') {
            cluster.upstream_bind_config = None;
        }
    }
    if port.protocol.is_http2() {
        cluster.typed_extension_protocol_options =
            [(HttpProtocolOptions::full_name(), any(&http2_options()))].into();
    }
    if let Some(pool) = port.connection_pool {
        // As Istio's inbound cluster builder: the outbound pool's translation.
        apply_connection_pool(&mut cluster, Some(pool), port.protocol);
    }
    cluster
}

/// A port's chains: PERMISSIVE takes mutual TLS with Istio's ALPN on one
/// chain and anything else (plaintext, the application's own TLS) on
/// another; STRICT has only the mutual TLS chain, which also catches
/// plaintext to the port, so it fails the handshake instead of passing
/// through; DISABLE has only plaintext.
fn inbound_chains(reporting: &Settings, port: &InboundPort, policy: &PortPolicy) -> Vec<FilterChain> {
    let chain = |mtls| inbound_chain(reporting, port, policy, mtls);
    match policy.mtls {
        MtlsMode::Disable => vec![chain(None)],
        MtlsMode::Permissive => vec![chain(Some(&tls::MESH_ALPN)), chain(None)],
        MtlsMode::Strict => vec![chain(Some(&[]))],
    }
}

/// A port's chain: plaintext (`mtls` None), or mutual TLS for clients
/// offering one of the ALPN values `mtls` lists (empty: for any
/// connection to the port).
fn inbound_chain(
    reporting: &Settings,
    port: &InboundPort,
    policy: &PortPolicy,
    mtls: Option<&[&str]>,
) -> FilterChain {
    let cluster = inbound_name(port.port);
    let filters = if port.protocol.is_http() {
        let routes = RouteConfiguration {
            name: cluster.clone(),
            virtual_hosts: vec![VirtualHost {
                name: format!("inbound|http|{}", port.port),
                domains: vec!["*".to_string()],
                routes: vec![Route {
                    name: "default".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
                        timeout: Some(seconds(0)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            // The caller's workload is for the metrics, not the application.
            request_headers_to_remove: vec![telemetry::PEER_HEADER.to_string()],
            ..Default::default()
        };
        let mut manager = HttpConnectionManager {
            stat_prefix: format!("inbound_0.0.0.0_{}", port.port),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
            // The application learns its peer's identity from the header
            // `x-forwarded-client-cert` (`By=<own>;URI=<peer's SPIFFE ID>`),
            // set only from a verified certificate: a client's own value
            // is never passed on.
            forward_client_cert_details: if mtls.is_some() {
                http_connection_manager::ForwardClientCertDetails::SanitizeSet
            } else {
                http_connection_manager::ForwardClientCertDetails::Sanitize
            }
            .into(),
            set_current_client_cert_details: mtls.map(|_| {
                http_connection_manager::SetCurrentClientCertDetails { uri: true, ..Default::default() }
            }),
            ..http_connection_manager()
        };
        let reporter = Reporter::Destination { mutual_tls: mtls.is_some() };
        manager.access_log = telemetry::http_logs(reporting, reporter, port.protocol, port.service);
        manager.tracing = telemetry::tracing(reporting);
        let router = std::mem::take(&mut manager.http_filters);
        // Only a verified peer's header names the caller (super::telemetry).
        let peer = mtls.map(|_| telemetry::peer_filter());
        manager.http_filters =
            peer.into_iter().chain(policy.http_filters.iter().cloned()).chain(router).collect();
        vec![network_filter(HTTP_CONNECTION_MANAGER, any(&manager))]
    } else {
        let reporter = Reporter::Destination { mutual_tls: mtls.is_some() };
        let logs = telemetry::tcp_logs(reporting, reporter, port.service);
        policy.network_filters.iter().cloned().chain([tcp_proxy_filter(cluster, &logs)]).collect()
    };
    let destination_port = Some(UInt32Value { value: u32::from(port.port) });
    match mtls {
        None => FilterChain {
            name: inbound_name(port.port),
            filter_chain_match: Some(FilterChainMatch { destination_port, ..Default::default() }),
            filters,
            ..Default::default()
        },
        Some(alpn) => FilterChain {
            name: format!("{};mtls", inbound_name(port.port)),
            filter_chain_match: Some(FilterChainMatch {
                destination_port,
                transport_protocol: if alpn.is_empty() { String::new() } else { "tls".to_string() },
                application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            filters,
            transport_socket: Some(tls::inbound_mtls(if port.protocol.is_http() {
                &["h2", "http/1.1"]
            } else {
                &[]
            })),
            ..Default::default()
        },
    }
}
