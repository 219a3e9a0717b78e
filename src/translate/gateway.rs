//! A gateway proxy's listeners and routes, as Istio's
//! `pilot/pkg/networking/core/gateway.go` builds them. A gateway proxy
//! (node id `router~…`) gets the servers of every Gateway whose `selector`
//! its pod's labels hold, merged by port ([`servers_by_port`]); per port one
//! listener `0.0.0.0_<port>` on every address of the pod, on the server's
//! own port number:
//!
//! - plain HTTP servers (HTTP, HTTP2, GRPC) share one HTTP connection
//!   manager with the routes `http.<port>` by RDS;
//! - each HTTPS server whose TLS is terminated (SIMPLE, MUTUAL,
//!   ISTIO_MUTUAL, OPTIONAL_MUTUAL) gets a chain matching its hosts by SNI
//!   (`server_names`; none for `*`) with its certificate
//!   ([`tls::gateway_server_tls`]) and its own routes
//!   `https.<port>.<port name>.<gateway>.<namespace>`, Istio's names;
//! - TLS PASSTHROUGH servers: the `tls` rules of the VirtualServices bound
//!   to the Gateway, a TCP proxy chain per SNI the server admits;
//! - TCP servers: the first `tcp` rule that applies, a TCP proxy.
//!
//! The virtual hosts of a route configuration come from the VirtualServices
//! bound to the server's Gateway: for each VirtualService host a server
//! host admits ([`ServerHost::admits`]), a virtual host `<host>:<port>`
//! with domains `<host>` and `<host>:<port>` (`*` alone for `*`); several
//! VirtualServices for one host have their routes appended, oldest first,
//! as Istio merges them on gateways. Routes are built by [`super::route`]
//! with the Gateway as the site (`match.gateways` must name it; a
//! destination without a port takes its Service's only port, else the
//! server's port number). A host no VirtualService binds has no virtual
//! host: Envoy answers 404. `tls.httpsRedirect` makes the server's virtual
//! hosts require TLS (Envoy redirects plain requests with a 301), and
//! gives its hosts without routes a virtual host that only redirects.
//!
//! Clusters and endpoints are those of a sidecar in the gateway's
//! namespace; a gateway has neither `virtualOutbound` nor `virtualInbound`.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, virtual_host};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use envoy_types::pb::google::protobuf::BoolValue;

use super::cluster::{BLACK_HOLE_CLUSTER, TcpProxyTimeouts, ads_config_source};
use super::passthrough::{HTTP_CONNECTION_MANAGER, network_filter, tls_inspector};
use super::route::{RouteSite, Target, cors_filter, fault_filter, resolve, virtual_service_routes};
use super::sidecar::http_connection_manager;
use super::tcp::tcp_proxy;
use super::telemetry::{self, Reporter};
use super::{address, any, tls};
use crate::api::virtual_service::RouteDestination;
use crate::model::gateway::{BoundServer, PortKind, ServerHost, servers_by_port};
use crate::model::mesh::{MeshView, ProxyContext, ScopeKey, VirtualServiceView};
use crate::model::protocol::Protocol;

/// A gateway proxy's own configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayConfig {
    /// One per port, in port order, each with the clusters its chains send
    /// to themselves (TCP proxies); HTTP chains send through their routes.
    pub listeners: Vec<(Listener, BTreeSet<String>)>,
    /// The route configurations the listeners name, by name.
    pub routes: Vec<RouteConfiguration>,
}

/// The name of a port's shared plain HTTP routes: `http.<port>`.
pub fn http_routes_name(port: u16) -> String {
    format!("http.{port}")
}

/// The name of an HTTPS server's routes, as Istio's `gatewayRDSRouteName`:
/// `https.<port>.<port name>.<gateway>.<namespace>`.
pub fn https_routes_name(port: u16, server: &BoundServer) -> String {
    let gateway = &server.gateway.key;
    format!("https.{port}.{}.{}.{}", server.port_name(), gateway.name, gateway.namespace)
}

/// The listeners and routes of the gateway proxy `proxy`.
pub fn gateway(view: &MeshView, proxy: &ProxyContext) -> GatewayConfig {
    let scope = view.scope(proxy);
    let gateways = view.gateways_for(&proxy.labels);
    let mut out = GatewayConfig::default();
    for (port, servers) in servers_by_port(&gateways) {
        let builder = PortBuilder { view, scope: &scope, port };
        let (listener, mut clusters, routes) = match servers[0].kind {
            PortKind::Http => builder.http(&servers),
            PortKind::Terminated | PortKind::Passthrough => builder.tls(&servers),
            PortKind::Tcp => builder.tcp(&servers),
        };
        // Envoy refuses a listener without chains (a TLS port whose servers
        // have no route yet): Istio leaves such a port out too.
        if listener.filter_chains.is_empty() {
            continue;
        }
        // Its HTTP connection managers trace to the collector's cluster.
        clusters.extend(telemetry::zipkin_cluster(view.telemetry()).map(|c| c.name));
        out.listeners.push((listener, clusters));
        out.routes.extend(routes);
    }
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Builds the listener of one port of the gateway.
struct PortBuilder<'a> {
    view: &'a MeshView,
    scope: &'a ScopeKey,
    port: u16,
}

type PortConfig = (Listener, BTreeSet<String>, Vec<RouteConfiguration>);

impl PortBuilder<'_> {
    /// What the gateway's TCP proxies log: the caller's side, as its HTTP.
    fn tcp_logs(&self) -> telemetry::TcpLogs {
        telemetry::tcp_logs(self.view.telemetry(), Reporter::Source, None)
    }

    fn listener(&self, chains: Vec<FilterChain>, by_sni: bool) -> Listener {
        Listener {
            name: format!("0.0.0.0_{}", self.port),
            address: Some(address("0.0.0.0", u32::from(self.port))),
            listener_filters: if by_sni { vec![tls_inspector()] } else { Vec::new() },
            filter_chains: chains,
            ..Default::default()
        }
    }

    /// Plain HTTP servers: one chain, the routes `http.<port>`.
    fn http(&self, servers: &[BoundServer]) -> PortConfig {
        let name = http_routes_name(self.port);
        let chain = FilterChain {
            name: name.clone(),
            filters: vec![self.connection_manager(&name)],
            ..Default::default()
        };
        let routes = self.route_configuration(name, servers);
        (self.listener(vec![chain], false), BTreeSet::new(), vec![routes])
    }

    /// HTTPS and TLS servers: a chain per server (terminated) or per SNI
    /// name (passed through), told apart by SNI. A name an earlier chain
    /// already matches is left out: Envoy refuses two chains with the same match.
    fn tls(&self, servers: &[BoundServer]) -> PortConfig {
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut catch_all_taken = false;
        let mut chains = Vec::new();
        let mut clusters = BTreeSet::new();
        // Servers whose routes share a name share one configuration (Istio's `ServersByRouteName`).
        let mut routed: Vec<(String, Vec<BoundServer>)> = Vec::new();
        for server in servers {
            match server.kind {
                PortKind::Terminated => {
                    let socket = server
                        .server
                        .tls
                        .as_ref()
                        .and_then(|t| tls::gateway_server_tls(t, &["h2", "http/1.1"]));
                    let Some(socket) = socket else { continue };
                    let names = sni_names(server.hosts().map(|h| h.host));
                    let Some(names) = claim(&mut taken, &mut catch_all_taken, names) else { continue };
                    let name = https_routes_name(self.port, server);
                    // Chain names are unique; servers may share their routes' name.
                    let sni = if names.is_empty() { "*".to_string() } else { names.join(",") };
                    chains.push(FilterChain {
                        name: format!("{name}|{sni}"),
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: names,
                            ..Default::default()
                        }),
                        filters: vec![self.connection_manager(&name)],
                        transport_socket: Some(socket),
                        ..Default::default()
                    });
                    match routed.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, sharing)) => sharing.push(*server),
                        None => routed.push((name, vec![*server])),
                    }
                }
                _ => {
                    for (i, (names, filter)) in
                        self.passthrough_routes(server, &mut clusters).into_iter().enumerate()
                    {
                        let Some(names) = claim(&mut taken, &mut catch_all_taken, names) else { continue };
                        chains.push(FilterChain {
                            name: format!(
                                "{}.{}.{}.tls[{i}]",
                                self.port, server.gateway.key.namespace, server.gateway.key.name
                            ),
                            filter_chain_match: Some(FilterChainMatch {
                                server_names: names,
                                ..Default::default()
                            }),
                            filters: vec![filter],
                            ..Default::default()
                        });
                    }
                }
            }
        }
        let routes =
            routed.into_iter().map(|(name, servers)| self.route_configuration(name, &servers)).collect();
        (self.listener(chains, true), clusters, routes)
    }

    /// TCP servers: the first `tcp` rule that applies, of the
    /// VirtualServices bound to the servers' Gateways whose hosts they
    /// admit; a port no rule claims closes its connections.
    fn tcp(&self, servers: &[BoundServer]) -> PortConfig {
        let mut clusters = BTreeSet::new();
        let filter = servers
            .iter()
            .flat_map(|server| self.bound(server).into_iter().map(move |(vs, _)| (server, vs)))
            .find_map(|(server, vs)| {
                let rule = vs.spec.tcp.iter().find(|rule| {
                    rule.r#match.is_empty()
                        || rule.r#match.iter().any(|m| {
                            self.l4_applies(m.port, m.source_namespace.as_deref(), &m.gateways, vs, server)
                                && m.source_subnet.is_none()
                        })
                })?;
                Some(self.proxy(vs, &rule.route, &mut clusters))
            })
            .unwrap_or_else(|| {
                clusters.insert(BLACK_HOLE_CLUSTER.to_string());
                tcp_proxy(
                    BLACK_HOLE_CLUSTER.to_string(),
                    tcp_proxy::ClusterSpecifier::Cluster(BLACK_HOLE_CLUSTER.to_string()),
                    &TcpProxyTimeouts::default(),
                    &self.tcp_logs(),
                )
            });
        let chain = FilterChain {
            name: format!("0.0.0.0_{}", self.port),
            filters: vec![filter],
            ..Default::default()
        };
        (self.listener(vec![chain], false), clusters, Vec::new())
    }

    /// The VirtualServices bound to the server's Gateway, each with the
    /// hosts the server admits of it (none: left out).
    fn bound<'v>(&self, server: &BoundServer) -> Vec<(&'v VirtualServiceView, Vec<String>)>
    where
        Self: 'v,
    {
        let server_hosts: Vec<ServerHost> = server.hosts().collect();
        self.view
            .virtual_services_for_gateway(&server.gateway.key, &self.scope.namespace)
            .into_iter()
            .filter_map(|vs| {
                let mut hosts: Vec<String> = Vec::new();
                for vs_host in &vs.hosts {
                    for server_host in &server_hosts {
                        if let Some(h) = server_host.admits(&vs.key.namespace, vs_host)
                            && !hosts.contains(&h)
                        {
                            hosts.push(h);
                        }
                    }
                }
                (!hosts.is_empty()).then_some((vs, hosts))
            })
            .collect()
    }

    /// The `tls` rules of the server's VirtualServices: per match that
    /// applies, the SNI names the server admits and a TCP proxy to the
    /// rule's destinations.
    fn passthrough_routes(
        &self,
        server: &BoundServer,
        clusters: &mut BTreeSet<String>,
    ) -> Vec<(Vec<String>, Filter)> {
        let server_hosts: Vec<ServerHost> = server.hosts().collect();
        let mut out = Vec::new();
        for (vs, _) in self.bound(server) {
            for rule in &vs.spec.tls {
                for m in &rule.r#match {
                    if !self.l4_applies(m.port, m.source_namespace.as_deref(), &m.gateways, vs, server) {
                        continue;
                    }
                    // The names both the match and the server admit.
                    let names: Vec<String> = m
                        .sni_hosts
                        .iter()
                        .flat_map(|sni| {
                            let sni = sni.to_ascii_lowercase();
                            server_hosts.iter().filter_map(move |h| h.admits(&vs.key.namespace, &sni))
                        })
                        .collect();
                    if names.is_empty() {
                        continue;
                    }
                    out.push((sni_names(names.into_iter()), self.proxy(vs, &rule.route, clusters)));
                }
            }
        }
        out
    }

    /// Whether an L4 match of a VirtualService applies on this port of
    /// this server's Gateway (Istio's `matchTLS`/`matchTCP` for gateways).
    fn l4_applies(
        &self,
        port: Option<u32>,
        namespace: Option<&str>,
        gateways: &[String],
        vs: &VirtualServiceView,
        server: &BoundServer,
    ) -> bool {
        port.is_none_or(|p| p == u32::from(self.port))
            && namespace.is_none_or(|ns| ns == self.scope.namespace)
            && (gateways.is_empty()
                || crate::model::gateway::names_gateway(gateways, &vs.key.namespace, &server.gateway.key))
    }

    /// A TCP proxy to a rule's destinations (an unresolvable one closes
    /// its share of connections), counted under the first destination's cluster.
    fn proxy(
        &self,
        vs: &VirtualServiceView,
        route: &[RouteDestination],
        clusters: &mut BTreeSet<String>,
    ) -> Filter {
        let targets: Vec<(Target, u32)> = route
            .iter()
            .map(|d| {
                let target =
                    resolve(self.view, self.scope, &vs.key.namespace, &d.destination, None, self.port)
                        .unwrap_or_else(|_| Target {
                            cluster: BLACK_HOLE_CLUSTER.to_string(),
                            ..Default::default()
                        });
                (target, d.weight.unwrap_or(0).max(0) as u32)
            })
            .collect();
        clusters.extend(targets.iter().map(|(t, _)| t.cluster.clone()));
        match targets.as_slice() {
            [] => {
                clusters.insert(BLACK_HOLE_CLUSTER.to_string());
                tcp_proxy(
                    BLACK_HOLE_CLUSTER.to_string(),
                    tcp_proxy::ClusterSpecifier::Cluster(BLACK_HOLE_CLUSTER.to_string()),
                    &TcpProxyTimeouts::default(),
                    &self.tcp_logs(),
                )
            }
            [(target, _)] => tcp_proxy(
                target.cluster.clone(),
                tcp_proxy::ClusterSpecifier::Cluster(target.cluster.clone()),
                &target.tcp,
                &self.tcp_logs(),
            ),
            many => {
                let total: u64 = many.iter().map(|(_, w)| u64::from(*w)).sum();
                let weighted = many
                    .iter()
                    .filter(|(_, w)| total == 0 || *w > 0)
                    .map(|(target, w)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: target.cluster.clone(),
                        weight: if total == 0 { 1 } else { *w },
                        ..Default::default()
                    })
                    .collect();
                tcp_proxy(
                    many[0].0.cluster.clone(),
                    tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                        clusters: weighted,
                    }),
                    &TcpProxyTimeouts::default(),
                    &self.tcp_logs(),
                )
            }
        }
    }

    /// The gateway's HTTP connection manager, with routes `routes` by RDS.
    /// As Istio's gateways, it trusts no client's `x-forwarded-for`: the
    /// client's address is the connection's.
    fn connection_manager(&self, routes: &str) -> Filter {
        let mut manager = HttpConnectionManager {
            stat_prefix: format!("outbound_0.0.0.0_{}", self.port),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads_config_source()),
                route_config_name: routes.to_string(),
            })),
            ..http_connection_manager()
        };
        manager.use_remote_address = Some(BoolValue { value: true });
        manager.access_log =
            telemetry::http_logs(self.view.telemetry(), Reporter::Source, Protocol::Http, None);
        manager.http_filters.insert(0, fault_filter());
        manager.http_filters.insert(0, cors_filter());
        network_filter(HTTP_CONNECTION_MANAGER, any(&manager))
    }

    /// The route configuration `name` of `servers`: a virtual host per host
    /// a server admits of its bound VirtualServices, their routes merged.
    fn route_configuration(&self, name: String, servers: &[BoundServer]) -> RouteConfiguration {
        // (host, routes, requires TLS).
        let mut hosts: Vec<(String, Vec<_>, bool)> = Vec::new();
        for server in servers {
            let redirect = server.server.tls.as_ref().is_some_and(|t| t.https_redirect == Some(true));
            let site = RouteSite {
                scope: self.scope,
                routed: None,
                port: self.port,
                gateway: Some(&server.gateway.key),
            };
            for (vs, admitted) in self.bound(server) {
                let routes = virtual_service_routes(self.view, &site, vs);
                if routes.is_empty() {
                    continue;
                }
                for host in admitted {
                    match hosts.iter_mut().find(|(h, _, _)| *h == host) {
                        Some((_, existing, tls)) => {
                            existing.extend(routes.iter().cloned());
                            *tls |= redirect;
                        }
                        None => hosts.push((host, routes.clone(), redirect)),
                    }
                }
            }
            // A redirecting server's hosts redirect even without routes (Istio).
            if redirect {
                for server_host in server.hosts() {
                    match hosts.iter_mut().find(|(h, _, _)| *h == server_host.host) {
                        Some((_, _, tls)) => *tls = true,
                        None => hosts.push((server_host.host, Vec::new(), true)),
                    }
                }
            }
        }
        // In name order, as Istio sorts them.
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        let virtual_hosts = hosts
            .into_iter()
            .map(|(host, routes, requires_tls)| VirtualHost {
                name: format!("{host}:{}", self.port),
                domains: if host == "*" {
                    vec![host]
                } else {
                    vec![host.clone(), format!("{host}:{}", self.port)]
                },
                routes,
                require_tls: if requires_tls {
                    virtual_host::TlsRequirementType::All
                } else {
                    virtual_host::TlsRequirementType::None
                }
                .into(),
                ..Default::default()
            })
            .collect();
        RouteConfiguration {
            name,
            virtual_hosts,
            validate_clusters: Some(BoolValue { value: false }),
            request_headers_to_add: vec![telemetry::peer_header()],
            ..Default::default()
        }
    }
}

/// SNI names for a chain: `*` (any name, or none) is no condition.
fn sni_names(hosts: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = hosts.collect();
    if names.iter().any(|h| h == "*") {
        return Vec::new();
    }
    names.sort();
    names.dedup();
    names
}

/// The names of a new chain that no earlier chain matches (None when
/// nothing is left): Envoy refuses two chains with the same match.
fn claim(
    taken: &mut BTreeSet<String>,
    catch_all_taken: &mut bool,
    names: Vec<String>,
) -> Option<Vec<String>> {
    if names.is_empty() {
        if *catch_all_taken {
            return None;
        }
        *catch_all_taken = true;
        return Some(names);
    }
    let fresh: Vec<String> = names.into_iter().filter(|n| !taken.contains(n)).collect();
    if fresh.is_empty() {
        return None;
    }
    taken.extend(fresh.iter().cloned());
    Some(fresh)
}
