//! TCP and TLS routes: a VirtualService's `tcp` and `tls` rules on the
//! outbound chains of a Service port that is not HTTP, at its ClusterIP.
//!
//! Which rules a port takes follows Istio's sidecar: `tls` rules on ports
//! whose protocol is TLS or HTTPS, routed by the SNI of the ClientHello
//! (the listener's TLS inspector reads it; each chain lists its names in
//! `server_names`); `tcp` rules on every other port that is not HTTP
//! (`tcp`, `mongo`, `redis`, `mysql`, and ports whose protocol is unknown,
//! which the mesh does not sniff). Each rule sends to a TCP proxy, with
//! `weighted_clusters` when it has several destinations.
//!
//! The chain of a port is for one Service at one ClusterIP, so all that
//! can be known when translating is decided then, as for HTTP routes
//! (route.rs): a match whose `port`, `sourceLabels`, `sourceNamespace` or
//! `gateways` (`mesh` is the sidecars) rule out this proxy is dropped, and
//! so is one whose `destinationSubnets` do not hold the ClusterIP, the
//! only destination this chain sees. What is left is decided by Envoy per
//! connection: the SNI (`tls`) and the client's address (`tcp`
//! `sourceSubnet`, as the chain's `source_prefix_ranges`; Istio ignores
//! this field).
//!
//! The first rule that matches wins, as the API says. Envoy prefers the
//! most specific name or address block over the order of the chains, so a
//! name or block that an earlier match already covers is left out.
//!
//! A TLS port with rules that apply here but whose SNI none names (or no
//! TLS at all) is closed, as in Istio, where no chain matches such a
//! connection: here a catch-all chain sends it to `BlackHoleCluster`, so it
//! does not fall through to pass-through. A TLS port with no rule that
//! applies, and a TCP port without a rule that matches every connection,
//! go to the Service as before (`outbound|<port>||<host>`).
//!
//! A destination that cannot be resolved (unknown host, port or subset)
//! goes to `BlackHoleCluster`, which closes the connection: for its share
//! only, when the rule has several destinations. Validation names it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::any;
use super::cluster::{BLACK_HOLE_CLUSTER, ClusterPolicy, TcpProxyTimeouts, outbound_name};
use super::passthrough::{TCP_PROXY, network_filter};
use super::route::{Target, resolve};
use super::telemetry::{self, Reporter, TcpLogs};
use crate::api::virtual_service::{L4MatchAttributes, RouteDestination, TlsMatchAttributes};
use crate::model::cidr::Cidr;
use crate::model::host;
use crate::model::mesh::{MeshView, ScopeKey, ServiceView, VirtualServiceView, for_sidecars, is_subset};
use crate::model::protocol::Protocol;

/// The chains of one Service port at its ClusterIP.
pub(super) struct PortChains {
    pub chains: Vec<FilterChain>,
    /// The clusters they send to.
    pub clusters: BTreeSet<String>,
    /// Some chain matches on the SNI: the listener needs its TLS inspector.
    pub by_sni: bool,
}

/// Whether `protocol` is routed by `tls` rules (Istio's `IsTLS`).
pub fn routed_by_sni(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Tls | Protocol::Https)
}

/// The chains of a Service's non-HTTP `port` at ClusterIP `ip` for
/// proxies of `scope`: the routes of its VirtualService, if any apply,
/// then a catch-all chain for what none of them takes.
pub(super) fn service_chains(
    view: &MeshView,
    scope: &ScopeKey,
    service: &ServiceView,
    port: u16,
    protocol: Protocol,
    ip: &str,
) -> PortChains {
    let routes = Routes { view, scope, service, port, ip, clusters: BTreeSet::new() };
    let vs = view.virtual_service_for(scope, service);
    if routed_by_sni(protocol) { routes.tls(vs) } else { routes.tcp(vs) }
}

/// What building one port's chains needs, and the clusters they name.
struct Routes<'a> {
    view: &'a MeshView,
    scope: &'a ScopeKey,
    service: &'a ServiceView,
    port: u16,
    ip: &'a str,
    clusters: BTreeSet<String>,
}

impl Routes<'_> {
    /// `tls` rules: one chain per match that applies, by SNI.
    fn tls(mut self, vs: Option<&VirtualServiceView>) -> PortChains {
        let mut chains = Vec::new();
        let mut taken: Vec<String> = Vec::new();
        // The rule every remaining connection takes: none yet.
        let mut rest: Option<Filter> = None;
        let mut any_applies = false;
        let rules =
            vs.into_iter().flat_map(|vs| vs.spec.tls.iter().enumerate().map(move |(i, r)| (vs, i, r)));
        'rules: for (vs, i, rule) in rules {
            for (j, m) in rule.r#match.iter().enumerate() {
                if !self.tls_match_applies(m) {
                    continue;
                }
                any_applies = true;
                let names: Vec<String> = m.sni_hosts.iter().map(|n| n.to_ascii_lowercase()).collect();
                if names.is_empty() || names.iter().any(|n| n == "*") {
                    // Every name (or no SNI condition): what the earlier rules leave, this one takes.
                    rest = Some(self.proxy(vs, &rule.route));
                    break 'rules;
                }
                let mut fresh = Vec::new();
                for name in names {
                    if !taken.iter().chain(&fresh).any(|t| host::subset_of(&name, t)) {
                        fresh.push(name);
                    }
                }
                if fresh.is_empty() {
                    continue;
                }
                taken.extend(fresh.iter().cloned());
                let filter = self.proxy(vs, &rule.route);
                chains.push(self.chain(format!(";tls[{i}].match[{j}]"), fresh, None, filter));
            }
        }
        let rest = match rest {
            Some(filter) => filter,
            None if any_applies => {
                let specifier = self.single(BLACK_HOLE_CLUSTER);
                tcp_proxy(
                    BLACK_HOLE_CLUSTER.to_string(),
                    specifier,
                    &TcpProxyTimeouts::default(),
                    &self.tcp_logs(),
                )
            }
            None => self.default_proxy(),
        };
        chains.push(self.chain(String::new(), Vec::new(), None, rest));
        PortChains { by_sni: !taken.is_empty(), chains, clusters: self.clusters }
    }

    /// `tcp` rules: the first that matches every connection is the port's
    /// catch-all; matches before it with a `sourceSubnet` get a chain each.
    fn tcp(mut self, vs: Option<&VirtualServiceView>) -> PortChains {
        let mut chains = Vec::new();
        let mut sources: Vec<Cidr> = Vec::new();
        let mut rest: Option<Filter> = None;
        let rules =
            vs.into_iter().flat_map(|vs| vs.spec.tcp.iter().enumerate().map(move |(i, r)| (vs, i, r)));
        'rules: for (vs, i, rule) in rules {
            if rule.r#match.is_empty() {
                rest = Some(self.proxy(vs, &rule.route));
                break;
            }
            for (j, m) in rule.r#match.iter().enumerate() {
                if !self.l4_match_applies(m) {
                    continue;
                }
                let Some(subnet) = &m.source_subnet else {
                    rest = Some(self.proxy(vs, &rule.route));
                    break 'rules;
                };
                // A block validation refuses never matches.
                let Some(block) = Cidr::parse(subnet).map(|c| c.network()) else { continue };
                if sources.iter().any(|earlier| earlier.contains(&block)) {
                    continue;
                }
                sources.push(block);
                let filter = self.proxy(vs, &rule.route);
                chains.push(self.chain(format!(";tcp[{i}].match[{j}]"), Vec::new(), Some(block), filter));
            }
        }
        let rest = rest.unwrap_or_else(|| self.default_proxy());
        chains.push(self.chain(String::new(), Vec::new(), None, rest));
        PortChains { by_sni: false, chains, clusters: self.clusters }
    }

    /// Istio's `matchTLS`, plus the ClusterIP against `destinationSubnets`.
    fn tls_match_applies(&self, m: &TlsMatchAttributes) -> bool {
        self.applies(
            m.port,
            &m.source_labels,
            m.source_namespace.as_deref(),
            &m.gateways,
            &m.destination_subnets,
        )
    }

    /// Istio's `matchTCP`, plus the ClusterIP against `destinationSubnets`.
    fn l4_match_applies(&self, m: &L4MatchAttributes) -> bool {
        self.applies(
            m.port,
            &m.source_labels,
            m.source_namespace.as_deref(),
            &m.gateways,
            &m.destination_subnets,
        )
    }

    fn applies(
        &self,
        port: Option<u32>,
        labels: &std::collections::BTreeMap<String, String>,
        namespace: Option<&str>,
        gateways: &[String],
        subnets: &[String],
    ) -> bool {
        let ip: Option<IpAddr> = self.ip.parse().ok();
        port.is_none_or(|p| p == u32::from(self.port))
            && is_subset(labels, &self.scope.labels)
            && namespace.is_none_or(|ns| ns == self.scope.namespace)
            && for_sidecars(gateways)
            && (subnets.is_empty()
                || subnets
                    .iter()
                    .filter_map(|s| Cidr::parse(s))
                    .any(|s| ip.is_some_and(|ip| s.contains_ip(ip))))
    }

    /// A TCP proxy to a rule's destinations, with their weights. As in
    /// Istio, a proxy to one destination takes that cluster's idle timeout
    /// and connection duration from its DestinationRule; a split does not.
    fn proxy(&mut self, vs: &VirtualServiceView, route: &[RouteDestination]) -> Filter {
        let targets: Vec<(Target, u32)> = route
            .iter()
            .map(|d| {
                let target = resolve(
                    self.view,
                    self.scope,
                    &vs.key.namespace,
                    &d.destination,
                    Some(self.service),
                    self.port,
                )
                .unwrap_or_else(|_| Target { cluster: BLACK_HOLE_CLUSTER.to_string(), ..Default::default() });
                (target, d.weight.unwrap_or(0).max(0) as u32)
            })
            .collect();
        // Counted under the Service's own cluster name, whichever way it is split.
        let stat_prefix = outbound_name(self.port, "", &self.service.hostname);
        match targets.as_slice() {
            [] => tcp_proxy(
                stat_prefix,
                self.single(BLACK_HOLE_CLUSTER),
                &TcpProxyTimeouts::default(),
                &self.tcp_logs(),
            ),
            [(target, _)] => {
                tcp_proxy(stat_prefix, self.single(&target.cluster), &target.tcp, &self.tcp_logs())
            }
            many => {
                let total: u64 = many.iter().map(|(_, w)| u64::from(*w)).sum();
                let clusters = many
                    .iter()
                    // Istio drops zero-weight destinations; with no weights at all, shares are equal.
                    .filter(|(_, w)| total == 0 || *w > 0)
                    .map(|(target, w)| {
                        self.clusters.insert(target.cluster.clone());
                        tcp_proxy::weighted_cluster::ClusterWeight {
                            name: target.cluster.clone(),
                            weight: if total == 0 { 1 } else { *w },
                            ..Default::default()
                        }
                    })
                    .collect();
                let specifier =
                    tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster { clusters });
                tcp_proxy(stat_prefix, specifier, &TcpProxyTimeouts::default(), &self.tcp_logs())
            }
        }
    }

    /// The Service itself, as without a VirtualService.
    fn default_proxy(&mut self) -> Filter {
        let cluster = outbound_name(self.port, "", &self.service.hostname);
        let rule = self.view.destination_rule_for(self.scope, self.service).map(|r| &r.spec);
        let timeouts = ClusterPolicy::resolve(rule, None, self.port).tcp_proxy_timeouts();
        let specifier = self.single(&cluster);
        tcp_proxy(cluster, specifier, &timeouts, &self.tcp_logs())
    }

    /// What the outbound TCP proxies log: the caller's side.
    fn tcp_logs(&self) -> TcpLogs {
        telemetry::tcp_logs(self.view.telemetry(), Reporter::Source, None)
    }

    fn single(&mut self, cluster: &str) -> tcp_proxy::ClusterSpecifier {
        self.clusters.insert(cluster.to_string());
        tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())
    }

    /// A chain at the ClusterIP and port, named `<ip>_<port>` and the
    /// match it comes from.
    fn chain(
        &self,
        suffix: String,
        server_names: Vec<String>,
        source: Option<Cidr>,
        filter: Filter,
    ) -> FilterChain {
        FilterChain {
            name: format!("{}_{}{suffix}", self.ip, self.port),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: u32::from(self.port) }),
                prefix_ranges: vec![range(
                    Cidr::parse(self.ip)
                        .map_or((self.ip.to_string(), 32), |c| (c.addr.to_string(), u32::from(c.len))),
                )],
                server_names,
                source_prefix_ranges: source
                    .map(|s| range((s.addr.to_string(), u32::from(s.len))))
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        }
    }
}

fn range((address_prefix, len): (String, u32)) -> CidrRange {
    CidrRange { address_prefix, prefix_len: Some(UInt32Value { value: len }) }
}

pub(super) fn tcp_proxy(
    stat_prefix: String,
    specifier: tcp_proxy::ClusterSpecifier,
    timeouts: &TcpProxyTimeouts,
    logs: &TcpLogs,
) -> Filter {
    let mut proxy = TcpProxy {
        stat_prefix,
        cluster_specifier: Some(specifier),
        idle_timeout: timeouts.idle,
        max_downstream_connection_duration: timeouts.max_connection_duration,
        ..Default::default()
    };
    logs.apply(&mut proxy);
    network_filter(TCP_PROXY, any(&proxy))
}
