//! Routes (RDS), per outbound HTTP port:
//!
//! - one RouteConfiguration per Service with a ClusterIP, named
//!   `<host>:<port>` (`reviews.default.svc.cluster.local:9080`), holding
//!   the Service's virtual host and a catch-all `allow_any` host that
//!   passes other hosts through to the address the client connected to
//!   (as without the mesh). The listener's chain for that ClusterIP and
//!   port selects it, so one Service's route change re-sends only this
//!   small configuration;
//! - one named by the port (`"9080"`) for every other address (pod IPs,
//!   headless Services), holding the headless Services' virtual hosts and
//!   `allow_any`: it does not change when a Service with a ClusterIP does.
//!
//! Istio has one configuration per port holding every Service and routes by
//! Host alone; here the destination address picks the Service first, and
//! the Host chooses only between it and pass-through (docs/traffic.md).
//!
//! Gateway proxies build their virtual hosts' routes with the same code
//! ([`virtual_service_routes`] at a [`RouteSite`] naming the Gateway;
//! `super::gateway`).
//!
//! A Service bound to a VirtualService gets that VirtualService's `http`
//! rules, in order, one Envoy route per `match` entry; otherwise one
//! default route to `outbound|<port>||<host>`. Matches that cannot apply
//! to this proxy (another `port`, `sourceLabels` it lacks, another
//! `sourceNamespace`, a gateway other than `mesh`) are dropped at
//! translation time; a rule left with no match is dropped; a VirtualService
//! left with no rule falls back to the default route, as in Istio.
//!
//! A destination the mesh cannot serve (unknown host, port or subset) is
//! answered by Envoy with a 503 whose body says why: a direct response for
//! a route with one destination, and `BlackHoleCluster` (no endpoints,
//! 503) for its share of a weighted route, so the other shares still flow.
//! Istio would point at a cluster that does not exist; Envoy then 503s
//! with `NC` and nobody learns why.
//!
//! Routes have no timeout (Istio's default): Envoy's 15 s default would
//! cut long requests. What a rule does besides choosing a destination is
//! one function each over [`RouteFeatures`], applied in
//! [`route_for_rule`]: timeout, retries (Istio's default policy when a rule
//! sets none, and on the route of a Service without a VirtualService),
//! fault and mirrors are in [`resilience`]; rewrites, redirects, direct
//! responses, CORS, header operations, `statPrefix` and delegation in
//! [`ops`].

mod resilience;

use std::collections::BTreeSet;

mod ops;

pub use ops::{CORS_FILTER, cors_filter};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher, route, route_action,
    route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cluster::{BLACK_HOLE_CLUSTER, ClusterPolicy, TcpProxyTimeouts, outbound_name};
use super::passthrough::PASSTHROUGH_CLUSTER;
use super::{parse_duration, seconds, telemetry};
use crate::api::destination_rule::ConsistentHashLb;
use crate::api::virtual_service::{Delegate, Destination, HttpMatchRequest, HttpRoute, StringMatch};
use crate::model::gateway::names_gateway;
use crate::model::mesh::{MeshView, ScopeKey, ServiceView, VirtualServiceView, for_sidecars, is_subset};
use crate::model::{ObjectKey, OutboundTrafficPolicy};
pub use resilience::{FAULT_FILTER, fault_filter};

/// The virtual host that takes requests for hosts the mesh does not know.
pub const ALLOW_ANY: &str = "allow_any";
/// Istio's name for it under REGISTRY_ONLY, where it answers 502.
pub const BLOCK_ALL: &str = "block_all";

/// The RouteConfiguration of one Service's HTTP port for proxies of
/// `scope`, named `<host>:<port>`: the Service's virtual host, then
/// `allow_any`. The listener's chain for the Service's ClusterIP and port
/// selects it, so a change to this Service's routes re-sends only this.
pub fn service_route_configuration(
    view: &MeshView,
    scope: &ScopeKey,
    service: &ServiceView,
    port: u16,
) -> RouteConfiguration {
    RouteConfiguration {
        name: service_route_name(service, port),
        virtual_hosts: vec![virtual_host(view, scope, service, port), catch_all(view, scope)],
        // Clusters arrive by CDS; a route may briefly name one not yet warm.
        validate_clusters: Some(BoolValue { value: false }),
        request_headers_to_add: vec![telemetry::peer_header()],
        ..Default::default()
    }
}

/// The name of the route configuration of one Service port: `<host>:<port>`.
pub fn service_route_name(service: &ServiceView, port: u16) -> String {
    format!("{}:{port}", service.hostname)
}

/// The RouteConfiguration of outbound HTTP port `port` for every address
/// but the ClusterIPs (pod IPs, headless Services), named by the port
/// (`"9080"`): the virtual hosts of `headless`, the Services without a
/// ClusterIP (in host name order) known to speak HTTP on `port`, then
/// `allow_any`.
pub fn route_configuration_for(
    view: &MeshView,
    scope: &ScopeKey,
    port: u16,
    headless: &[&ServiceView],
) -> RouteConfiguration {
    // Envoy refuses a route configuration in which two virtual hosts share
    // a domain. Host names are unique (one service per name) and headless
    // Services have no address among their domains, but a ServiceEntry host
    // may be another name of a Service (`name.ns`): as Istio, the first
    // virtual host (by host name) keeps a domain, later ones go without it.
    let mut seen = std::collections::HashSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = headless
        .iter()
        .map(|service| {
            let mut host = virtual_host(view, scope, service, port);
            host.domains.retain(|d| seen.insert(d.clone()));
            host
        })
        .filter(|host| !host.domains.is_empty())
        .collect();
    virtual_hosts.push(catch_all(view, scope));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        request_headers_to_add: vec![telemetry::peer_header()],
        ..Default::default()
    }
}

/// The virtual host for any other Host, by the scope's
/// `outboundTrafficPolicy`: `allow_any` (ALLOW_ANY) passes the request
/// through to the address the client connected to; `block_all`
/// (REGISTRY_ONLY) answers 502, as Istio's.
fn catch_all(view: &MeshView, scope: &ScopeKey) -> VirtualHost {
    let (name, action) = match view.outbound_traffic_policy(scope) {
        OutboundTrafficPolicy::AllowAny => {
            (ALLOW_ANY, route::Action::Route(to_cluster(PASSTHROUGH_CLUSTER.to_string())))
        }
        OutboundTrafficPolicy::RegistryOnly => (BLOCK_ALL, direct_response(502, String::new())),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The virtual host of one Service on one port.
pub fn virtual_host(view: &MeshView, scope: &ScopeKey, service: &ServiceView, port: u16) -> VirtualHost {
    let mut routes = Vec::new();
    if let Some(vs) = view.virtual_service_for(scope, service) {
        routes = virtual_service_routes(
            view,
            &RouteSite { scope, routed: Some(service), port, gateway: None },
            vs,
        );
    }
    if routes.is_empty() {
        routes.push(default_route(view, scope, service, port));
    }
    VirtualHost {
        name: format!("{}:{port}", service.hostname),
        domains: domains(service, port, &scope.namespace),
        routes,
        ..Default::default()
    }
}

/// Where routes are built: for a sidecar, one Service's port (`routed`,
/// whose port a destination without one takes); for a gateway, the
/// server's port on the Gateway `gateway` (Istio: a destination without a
/// port takes its Service's only port, else the server's port number).
#[derive(Clone, Copy)]
pub struct RouteSite<'a> {
    pub scope: &'a ScopeKey,
    pub routed: Option<&'a ServiceView>,
    pub port: u16,
    /// The Gateway whose server it is; None for sidecars (`mesh`).
    pub gateway: Option<&'a ObjectKey>,
}

/// The Envoy routes of a VirtualService's `http` rules at `site`, in
/// order, delegates' rules in place of the rules that delegate to them.
pub fn virtual_service_routes(view: &MeshView, site: &RouteSite, vs: &VirtualServiceView) -> Vec<Route> {
    let mut routes = Vec::new();
    for rule in &vs.spec.http {
        match rule.delegate.as_ref().and_then(|d| delegate_of(view, vs, d)) {
            Some(delegate) => {
                for merged in ops::merge_delegate(rule, &delegate.spec.http) {
                    routes.extend(route_for_rule(view, site, delegate, &merged));
                }
            }
            // A rule whose delegate is missing is dropped, as in Istio.
            None if rule.delegate.is_some() => {}
            None => routes.extend(route_for_rule(view, site, vs, rule)),
        }
    }
    routes
}

/// The names a client may use for `service` on `port`: the FQDN, the
/// `name.ns.svc` and `name.ns` forms, the short name from the same
/// namespace, and the ClusterIP; each also with `:port`.
pub fn domains(service: &ServiceView, port: u16, proxy_namespace: &str) -> Vec<String> {
    if let Some(entry) = &service.entry {
        return super::service_entry::domains(service, entry, port);
    }
    let (name, ns) = (&service.key.name, &service.key.namespace);
    let mut hosts = vec![service.hostname.clone(), format!("{name}.{ns}.svc"), format!("{name}.{ns}")];
    if ns == proxy_namespace {
        hosts.push(name.clone());
    }
    let mut out = Vec::with_capacity(hosts.len() * 2 + 2);
    for host in hosts {
        out.push(format!("{host}:{port}"));
        out.push(host);
    }
    if let Some(ip) = &service.cluster_ip {
        if ip.contains(':') {
            out.push(format!("[{ip}]:{port}"));
            out.push(format!("[{ip}]"));
        } else {
            out.push(format!("{ip}:{port}"));
            out.push(ip.clone());
        }
    }
    out
}

/// The route of a Service without a VirtualService.
fn default_route(view: &MeshView, scope: &ScopeKey, service: &ServiceView, port: u16) -> Route {
    let mut action = to_cluster(outbound_name(port, "", &service.hostname));
    let rule = view.destination_rule_for(scope, service).map(|r| &r.spec);
    action.hash_policy = hash_policy(ClusterPolicy::resolve(rule, None, port).consistent_hash());
    action.retry_policy = Some(resilience::default_retry_policy(!action.hash_policy.is_empty()));
    Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    }
}

/// The VirtualService a root rule delegates to: one without hosts (Istio
/// ignores a delegate that has them), exported to the root's namespace.
/// Its rules' destinations resolve in its own namespace.
fn delegate_of<'a>(
    view: &'a MeshView,
    root: &VirtualServiceView,
    delegate: &Delegate,
) -> Option<&'a VirtualServiceView> {
    let name = delegate.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = delegate.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&root.key.namespace);
    view.virtual_service(namespace, name)
        .filter(|d| d.spec.hosts.is_empty() && d.export_to.visible_to(&root.key.namespace))
}

/// What an Istio HTTPRoute does besides choosing a destination. Each
/// feature is translated by its own function onto the Envoy route.
struct RouteFeatures<'a> {
    rule: &'a HttpRoute,
}

/// The Envoy routes of one HTTPRoute: one per match that applies here.
fn route_for_rule(
    view: &MeshView,
    site: &RouteSite,
    vs: &VirtualServiceView,
    rule: &HttpRoute,
) -> Vec<Route> {
    let matches: Vec<(Option<&HttpMatchRequest>, RouteMatch)> = if rule.r#match.is_empty() {
        vec![(None, prefix_match("/"))]
    } else {
        rule.r#match
            .iter()
            .filter(|m| match_applies(m, site, &vs.key.namespace))
            .map(|m| (Some(m), route_match(m)))
            .collect()
    };
    if matches.is_empty() {
        return Vec::new();
    }
    let template = rule_route(view, site, vs, rule);
    matches
        .into_iter()
        .map(|(m, matched)| Route {
            name: match (rule.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
                (Some(rule), Some(m)) => format!("{rule}.{m}"),
                (Some(name), None) | (None, Some(name)) => name.to_string(),
                (None, None) => String::new(),
            },
            r#match: Some(matched),
            // Envoy counts the route's requests under `vhost.<host>.route.<statPrefix>.`.
            stat_prefix: m.and_then(|m| m.stat_prefix.clone()).unwrap_or_default(),
            ..template.clone()
        })
        .collect()
}

/// Whether a match can ever be true for this proxy on this port: on a
/// gateway, its `gateways` (if any) must name that gateway, resolved in
/// the VirtualService's namespace `vs_namespace`.
fn match_applies(m: &HttpMatchRequest, site: &RouteSite, vs_namespace: &str) -> bool {
    let scope = site.scope;
    let gateways = match site.gateway {
        None => for_sidecars(&m.gateways),
        Some(gateway) => m.gateways.is_empty() || names_gateway(&m.gateways, vs_namespace, gateway),
    };
    m.port.is_none_or(|p| p == u32::from(site.port))
        && is_subset(&m.source_labels, &scope.labels)
        && m.source_namespace.as_ref().is_none_or(|ns| *ns == scope.namespace)
        && gateways
}

/// The Envoy route of one rule, its match left out: the action (forward,
/// redirect or direct response) and the features that apply to every
/// action (header operations, CORS, fault), as Istio's `translateRoute`.
fn rule_route(view: &MeshView, site: &RouteSite, vs: &VirtualServiceView, rule: &HttpRoute) -> Route {
    let port = site.port;
    let features = RouteFeatures { rule };
    let mut out = Route::default();
    let header_authority = ops::HeaderEdits::of(rule.headers.as_ref(), &ops::LegacyHeaders::of_rule(rule))
        .apply_to_route(&mut out);
    out.action = Some(if let Some(redirect) = &rule.redirect {
        ops::redirect(redirect, port, &vs.key.to_string())
    } else if let Some(direct) = &rule.direct_response {
        route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body: ops::direct_body(direct.body.as_ref()),
            ..Default::default()
        })
    } else {
        rule_action(view, site, vs, rule, &mut out, header_authority)
    });
    features.cors(&mut out);
    features.fault(&mut out);
    out
}

/// Where a forwarding rule sends requests: its destinations, with their
/// own header operations, and the rule's features that act on forwarding.
fn rule_action(
    view: &MeshView,
    site: &RouteSite,
    vs: &VirtualServiceView,
    rule: &HttpRoute,
    out: &mut Route,
    header_authority: Option<String>,
) -> route::Action {
    let (scope, routed, port) = (site.scope, site.routed, site.port);
    if rule.route.is_empty() {
        return direct_response(
            503,
            format!("mesh: VirtualService {}: this rule has no route destination", vs.key),
        );
    }
    let destinations: Vec<(Result<Target, String>, u32)> = rule
        .route
        .iter()
        .map(|d| {
            (
                resolve(view, scope, &vs.key.namespace, &d.destination, routed, port),
                d.weight.unwrap_or(0).max(0) as u32,
            )
        })
        .collect();

    let mut header_authority = header_authority;
    let mut action = match destinations.as_slice() {
        [(Err(why), _)] => return direct_response(503, format!("mesh: VirtualService {}: {why}", vs.key)),
        [(Ok(target), _)] => {
            let mut action = to_cluster(target.cluster.clone());
            action.hash_policy = hash_policy(target.hash.as_ref());
            // One destination: its header operations join the rule's on the
            // route; its authority only when the rule sets none (Istio).
            let only = &rule.route[0];
            let authority =
                ops::HeaderEdits::of(only.headers.as_ref(), &ops::LegacyHeaders::of_destination(only))
                    .apply_to_route(out);
            header_authority = header_authority.or(authority);
            action
        }
        many => {
            // Validation keeps the weights to 100 in all; a sum past u32 is no panic.
            let total: u64 = many.iter().map(|(_, w)| u64::from(*w)).sum();
            let clusters = many
                .iter()
                .zip(&rule.route)
                // Istio drops zero-weight destinations; with no weights at all, shares are equal.
                .filter(|((_, w), _)| total == 0 || *w > 0)
                .map(|((target, w), destination)| {
                    let mut weight = weighted_cluster::ClusterWeight {
                        name: target.as_ref().map_or(BLACK_HOLE_CLUSTER.to_string(), |t| t.cluster.clone()),
                        weight: Some(UInt32Value { value: if total == 0 { 1 } else { *w } }),
                        ..Default::default()
                    };
                    ops::HeaderEdits::of(
                        destination.headers.as_ref(),
                        &ops::LegacyHeaders::of_destination(destination),
                    )
                    .apply_to_weight(&mut weight);
                    weight
                })
                .collect();
            // Consistent hashing only when every destination hashes the same way.
            let hashes: Vec<_> =
                many.iter().map(|(t, _)| t.as_ref().ok().and_then(|t| t.hash.as_ref())).collect();
            let same_hash = hashes.windows(2).all(|w| w[0] == w[1]);
            RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters,
                    ..Default::default()
                })),
                hash_policy: if same_hash { hash_policy(hashes[0]) } else { Vec::new() },
                ..Default::default()
            }
        }
    };
    let features = RouteFeatures { rule };
    features.timeout(&mut action);
    // Istio keeps the retried request on its endpoint only when the route
    // has one destination, hashed.
    let hashed = rule.route.len() == 1 && !action.hash_policy.is_empty();
    features.retries(&mut action, hashed);
    features.mirrors(&mut action, |mirror| {
        resolve(view, scope, &vs.key.namespace, mirror, routed, port).ok().map(|t| t.cluster)
    });
    features.rewrite(&mut action, header_authority);
    route::Action::Route(action)
}

/// A destination, resolved to a cluster.
#[derive(Default)]
pub(super) struct Target {
    pub(super) cluster: String,
    pub(super) hash: Option<ConsistentHashLb>,
    /// For a TCP proxy that sends only to this cluster.
    pub(super) tcp: TcpProxyTimeouts,
}

/// Finds the cluster of a VirtualService destination, or says why there is none.
pub(super) fn resolve(
    view: &MeshView,
    scope: &ScopeKey,
    vs_namespace: &str,
    destination: &Destination,
    routed: Option<&ServiceView>,
    port: u16,
) -> Result<Target, String> {
    let host = view.resolve_host(&destination.host, vs_namespace);
    let service = view
        .service(&host)
        .filter(|s| s.export_to.visible_to(&scope.namespace))
        .ok_or_else(|| format!("destination host {host} is no Service this proxy can reach"))?;
    let number = match destination.port.as_ref().and_then(|p| p.number) {
        Some(n) => u16::try_from(n).ok(),
        None if service.ports.len() == 1 => Some(service.ports[0].port),
        // Istio: without a port, the port the request came in on.
        None if routed.is_some_and(|r| r.hostname == service.hostname) || service.port(port).is_some() => {
            Some(port)
        }
        None => None,
    };
    let Some(port) = number.filter(|n| service.port(*n).is_some()) else {
        return Err(match destination.port.as_ref().and_then(|p| p.number) {
            Some(n) => format!("destination {host} has no port {n}"),
            None => format!("destination {host} has several ports and names none"),
        });
    };
    let rule = view.destination_rule_for(scope, service);
    let subset = match destination.subset.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => {
            Some(rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == name)).ok_or_else(|| {
                format!("subset {name} of {host} is defined by no DestinationRule this proxy sees")
            })?)
        }
    };
    let policy = ClusterPolicy::resolve(rule.map(|r| &r.spec), subset, port);
    Ok(Target {
        cluster: outbound_name(port, subset.map_or("", |s| s.name.as_str()), &host),
        hash: policy.consistent_hash().cloned(),
        tcp: policy.tcp_proxy_timeouts(),
    })
}

/// Istio's consistent hash key, as the route's hash policy.
fn hash_policy(hash: Option<&ConsistentHashLb>) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter};
    let Some(hash) = hash else { return Vec::new() };
    let specifier = if let Some(name) = &hash.http_header_name {
        PolicySpecifier::Header(Header { header_name: name.to_ascii_lowercase(), ..Default::default() })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone().unwrap_or_default(),
            ttl: cookie.ttl.as_deref().and_then(parse_duration),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| route_action::hash_policy::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(name) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![route_action::HashPolicy { policy_specifier: Some(specifier), ..Default::default() }]
}

fn to_cluster(cluster: String) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        timeout: Some(seconds(0)),
        ..Default::default()
    }
}

fn direct_response(status: u32, body: String) -> route::Action {
    route::Action::DirectResponse(DirectResponseAction {
        status,
        body: (!body.is_empty()).then(|| DataSource {
            specifier: Some(data_source::Specifier::InlineString(body)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// One Istio HTTPMatchRequest as an Envoy RouteMatch (the parts that
/// depend on the proxy were checked by [`match_applies`]).
pub fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(uri_match(m.uri.as_ref())),
        case_sensitive: m.ignore_uri_case.filter(|i| *i).map(|_| BoolValue { value: false }),
        ..Default::default()
    };
    let pseudo = [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)];
    for (name, value) in pseudo {
        if let Some(value) = value {
            out.headers.push(header_match(name, value, false));
        }
    }
    out.headers.extend(m.headers.iter().map(|(name, value)| header_match(name, value, false)));
    out.headers.extend(m.without_headers.iter().map(|(name, value)| header_match(name, value, true)));
    out.query_parameters = m.query_params.iter().map(|(name, value)| query_match(name, value)).collect();
    out
}

fn uri_match(uri: Option<&StringMatch>) -> route_match::PathSpecifier {
    use route_match::PathSpecifier;
    match uri {
        Some(StringMatch { exact: Some(path), .. }) => PathSpecifier::Path(path.clone()),
        Some(StringMatch { prefix: Some(prefix), .. }) => PathSpecifier::Prefix(prefix.clone()),
        Some(StringMatch { regex: Some(regex), .. }) => PathSpecifier::SafeRegex(safe_regex(regex)),
        _ => PathSpecifier::Prefix("/".to_string()),
    }
}

/// A header condition; an empty StringMatch means "present" (Istio).
/// `invert` makes it a `withoutHeaders` condition.
fn header_match(name: &str, value: &StringMatch, invert: bool) -> HeaderMatcher {
    // In withoutHeaders Istio reads the regex "*" as "present" (validation
    // allows it there), which no RE2 engine would compile.
    let present = invert && value.regex.as_deref() == Some("*");
    let specifier = match string_matcher(value).filter(|_| !present) {
        Some(matcher) => header_matcher::HeaderMatchSpecifier::StringMatch(matcher),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// A query parameter condition; an empty value means "present" (Istio).
fn query_match(name: &str, value: &StringMatch) -> QueryParameterMatcher {
    let specifier = match string_matcher(value)
        .filter(|m| m.match_pattern != Some(string_matcher::MatchPattern::Exact(String::new())))
    {
        Some(matcher) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(matcher),
        None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
    };
    QueryParameterMatcher { name: name.to_string(), query_parameter_match_specifier: Some(specifier) }
}

fn string_matcher(value: &StringMatch) -> Option<StringMatcher> {
    use string_matcher::MatchPattern;
    let pattern = match value {
        StringMatch { exact: Some(exact), .. } => MatchPattern::Exact(exact.clone()),
        StringMatch { prefix: Some(prefix), .. } => MatchPattern::Prefix(prefix.clone()),
        StringMatch { regex: Some(regex), .. } => MatchPattern::SafeRegex(safe_regex(regex)),
        _ => return None,
    };
    Some(StringMatcher { match_pattern: Some(pattern), ..Default::default() })
}

/// An RE2 regular expression (Envoy's default engine).
fn safe_regex(regex: &str) -> RegexMatcher {
    RegexMatcher { regex: regex.to_string(), ..Default::default() }
}

/// The clusters a route configuration's routes send to.
pub fn route_clusters(config: &RouteConfiguration) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for route in config.virtual_hosts.iter().flat_map(|v| &v.routes) {
        let Some(route::Action::Route(action)) = &route.action else { continue };
        match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(name)) => {
                names.insert(name.clone());
            }
            Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                names.extend(weighted.clusters.iter().map(|c| c.name.clone()));
            }
            _ => {}
        }
        names.extend(action.request_mirror_policies.iter().map(|m| m.cluster.clone()));
    }
    names
}
