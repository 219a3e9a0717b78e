//! Istio's v1alpha1 RBAC as Envoy's RBAC filters, as Istio 1.4's Pilot
//! generated them: `envoy.filters.http.rbac` on a workload's inbound HTTP
//! ports and `envoy.filters.network.rbac` on its TCP ports, from the
//! [`Authorization`] the model resolved for the Service behind the port.
//!
//! Per role: the rules whose `services` and destination constraints match
//! the service are the policy's permissions (any of them), its bindings'
//! subjects its principals (any of them); within a rule or a subject every
//! field must match. A role left with no permission or no principal is
//! dropped. On a TCP port, a rule or subject using an HTTP-only field
//! (hosts, paths, methods, request headers, groups, `request.*`
//! properties) is dropped, as Istio does, so it grants nothing there.
//!
//! Where Istio's own Envoy read the caller from its authentication
//! filter's metadata, stock Envoy reads the peer certificate: a subject's
//! `user`, `names` and `source.principal` match the caller's SPIFFE ID
//! (`spiffe://` + the value), `namespaces` its `/ns/<namespace>/` part;
//! a plaintext caller has none, so only `user: "*"` and address or header
//! subjects match it. `request.auth.*` reads the JWT payload the JWT
//! filter leaves in dynamic metadata ([`super::jwt`]).
//!
//! `paths` and `notPaths` match the whole `:path` header, query included,
//! as Istio 1.4 did (its v1alpha1 rules never used Envoy's `url_path`):
//! `/ratings` does not match `/ratings?id=1`, `/ratings*` does.
//!
//! Istio's wildcards: `*` alone matches anything (present, for headers),
//! `*x` a suffix, `x*` a prefix, anything else exactly.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission, Policy, Principal, Rbac, SourcedMetadata, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, RegexMatcher, StringMatcher, ValueMatcher, list_matcher, metadata_matcher,
    string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::any;
use super::jwt::{JWT_FILTER, JWT_PAYLOAD_METADATA};
use super::passthrough::network_filter;
use crate::api::service_role::AccessRule;
use crate::api::service_role_binding::Subject;
use crate::model::rbac::{Authorization, matches_any, rule_is_http_only, subject_is_http_only};

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The network filter's stats: `tcp.rbac.allowed`, `tcp.rbac.denied`, ….
pub const NETWORK_STAT_PREFIX: &str = "tcp.";

const SPIFFE_PREFIX: &str = "spiffe://";

/// The service a port serves, as rules and constraints see it.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// The Service's FQDN, which rules' `services` match.
    pub host: &'a str,
    /// `destination.name`: the Service's name.
    pub name: &'a str,
    /// `destination.namespace`.
    pub namespace: &'a str,
    /// `destination.user`: the pod's ServiceAccount.
    pub service_account: &'a str,
    /// `destination.labels[...]`: the pod's labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The HTTP filter for an HTTP port: before the router, denying with 403
/// `RBAC: access denied`.
pub fn http_filter(auth: &Authorization, destination: &Destination) -> HttpFilter {
    let (rules, shadow_rules) = filter_rules(auth, destination, false);
    let config = HttpRbac { rules, shadow_rules, ..Default::default() };
    HttpFilter {
        name: HTTP_RBAC.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The network filter for a TCP port: before the TCP proxy, closing a
/// denied connection.
pub fn network_rbac_filter(auth: &Authorization, destination: &Destination) -> Filter {
    let (rules, shadow_rules) = filter_rules(auth, destination, true);
    let config = NetworkRbac {
        rules,
        shadow_rules,
        stat_prefix: NETWORK_STAT_PREFIX.to_string(),
        ..Default::default()
    };
    network_filter(NETWORK_RBAC, any(&config))
}

/// The enforced rules and the shadow rules: enforced policies from
/// enforced bindings (no policy at all denies everything), shadow ones
/// only when some binding is permissive; when the switch is permissive,
/// only shadow rules.
fn filter_rules(auth: &Authorization, destination: &Destination, tcp: bool) -> (Option<Rbac>, Option<Rbac>) {
    let allow = |policies: HashMap<String, Policy>| Rbac {
        action: rbac::Action::Allow.into(),
        policies,
        ..Default::default()
    };
    let mut enforced = HashMap::new();
    let mut shadow = HashMap::new();
    for (name, role) in &auth.policies {
        if let Some(p) = policy(&role.rules, &role.enforced, destination, tcp) {
            enforced.insert(name.clone(), p);
        }
        if let Some(p) = policy(&role.rules, &role.shadow, destination, tcp) {
            shadow.insert(name.clone(), p);
        }
    }
    if auth.shadow_only {
        (None, Some(allow(shadow)))
    } else {
        (Some(allow(enforced)), (!shadow.is_empty()).then(|| allow(shadow)))
    }
}

fn policy(
    rules: &[AccessRule],
    subjects: &[Subject],
    destination: &Destination,
    tcp: bool,
) -> Option<Policy> {
    if subjects.is_empty() {
        return None;
    }
    let permissions: Vec<Permission> =
        rules.iter().filter(|r| applies(r, destination)).filter_map(|r| rule_permission(r, tcp)).collect();
    if permissions.is_empty() {
        return None;
    }
    let principals: Vec<Principal> = subjects.iter().filter_map(|s| subject_principal(s, tcp)).collect();
    if principals.is_empty() {
        return None;
    }
    Some(Policy { permissions, principals, ..Default::default() })
}

/// Whether a rule is about this service: its `services`, and the
/// constraints decided when configuration is generated (the destination's
/// labels, name, namespace and ServiceAccount).
fn applies(rule: &AccessRule, destination: &Destination) -> bool {
    if !rule.services.is_empty() && !matches_any(destination.host, &rule.services) {
        return false;
    }
    rule.constraints.iter().all(|c| {
        let key = c.key.as_deref().unwrap_or("");
        let actual = if let Some(label) = bracketed(key, "destination.labels") {
            destination.labels.get(label).map(String::as_str)
        } else {
            match key {
                "destination.name" => Some(destination.name),
                "destination.namespace" => Some(destination.namespace),
                "destination.user" => Some(destination.service_account),
                // Decided by Envoy, per request.
                _ => return true,
            }
        };
        actual.is_some_and(|v| matches_any(v, &c.values))
    })
}

/// `name` from `<prefix>[name]`.
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']').filter(|n| !n.is_empty())
}

/// A rule as a permission: all of its fields (each any of its values);
/// None on a TCP port when it needs HTTP.
fn rule_permission(rule: &AccessRule, tcp: bool) -> Option<Permission> {
    if tcp && rule_is_http_only(rule) {
        return None;
    }
    let mut all = Vec::new();
    let header =
        |name: &str, values: &[String]| or_permissions(values.iter().map(|v| header_permission(name, v)));
    let ports = |values: &[i32]| {
        or_permissions(values.iter().filter_map(|p| u32::try_from(*p).ok()).map(port_permission))
    };
    for (values, negated, permission) in [
        (!rule.hosts.is_empty(), false, header(":authority", &rule.hosts)),
        (!rule.not_hosts.is_empty(), true, header(":authority", &rule.not_hosts)),
        (!rule.methods.is_empty(), false, header(":method", &rule.methods)),
        (!rule.not_methods.is_empty(), true, header(":method", &rule.not_methods)),
        // The whole `:path`, query included, as Istio 1.4 matched it.
        (!rule.paths.is_empty(), false, header(":path", &rule.paths)),
        (!rule.not_paths.is_empty(), true, header(":path", &rule.not_paths)),
        (!rule.ports.is_empty(), false, ports(&rule.ports)),
        (!rule.not_ports.is_empty(), true, ports(&rule.not_ports)),
    ] {
        if values {
            all.push(if negated { not_permission(permission) } else { permission });
        }
    }
    let mut constraints: Vec<_> = rule.constraints.iter().collect();
    constraints.sort_by(|a, b| a.key.cmp(&b.key));
    for c in constraints {
        if let Some(p) = constraint_permission(c.key.as_deref().unwrap_or(""), &c.values) {
            all.push(p);
        }
    }
    if all.is_empty() {
        all.push(any_permission());
    }
    Some(Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules: all })) })
}

/// A constraint Envoy checks per request; None for those decided at
/// generation ([`applies`]) and for keys Istio does not know (validation
/// warns about those).
fn constraint_permission(key: &str, values: &[String]) -> Option<Permission> {
    if key == "destination.ip" {
        return Some(or_permissions(
            values
                .iter()
                .filter_map(|v| cidr(v))
                .map(|range| Permission { rule: Some(permission::Rule::DestinationIp(range)) }),
        ));
    }
    if key == "destination.port" {
        return Some(or_permissions(
            values.iter().filter_map(|v| v.parse::<u16>().ok()).map(u32::from).map(port_permission),
        ));
    }
    if let Some(header) = bracketed(key, "request.headers") {
        return Some(or_permissions(values.iter().map(|v| header_permission(header, v))));
    }
    if let Some(rest) = key.strip_prefix("experimental.") {
        // experimental.envoy.filters.a.b[c]: metadata `c` of filter envoy.filters.a.b.
        let (filter, field) = rest.strip_suffix(']')?.split_once('[')?;
        if !filter.starts_with("envoy.filters.") || field.is_empty() {
            return None;
        }
        return Some(or_permissions(values.iter().map(|v| Permission {
            rule: Some(permission::Rule::SourcedMetadata(dynamic(experimental_metadata(filter, field, v)))),
        })));
    }
    None
}

/// Istio's experimental metadata constraint: `[v]` is a list containing
/// `v`, anything else a string.
fn experimental_metadata(filter: &str, field: &str, value: &str) -> MetadataMatcher {
    let matcher = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        Some(item) => list_value(item),
        None => string_value(string_match(value, "")),
    };
    metadata(filter, &[field], matcher)
}

/// A subject as a principal: all of its fields; None on a TCP port when
/// it needs HTTP.
fn subject_principal(subject: &Subject, tcp: bool) -> Option<Principal> {
    if tcp && subject_is_http_only(subject) {
        return None;
    }
    let mut all = Vec::new();
    let mut field = |values: Vec<Principal>, negated: bool| {
        if !values.is_empty() {
            let p = or_principals(values);
            all.push(if negated { not_principal(p) } else { p });
        }
    };
    if let Some(user) = subject.user.as_deref().filter(|u| !u.is_empty()) {
        field(vec![source_principal(user)], false);
    }
    field(subject.names.iter().map(|n| source_principal(n)).collect(), false);
    field(subject.not_names.iter().map(|n| source_principal(n)).collect(), true);
    if let Some(group) = subject.group.as_deref().filter(|g| !g.is_empty()) {
        field(vec![claim("groups", group)], false);
    }
    field(subject.groups.iter().map(|g| claim("groups", g)).collect(), false);
    field(subject.not_groups.iter().map(|g| claim("groups", g)).collect(), true);
    field(subject.namespaces.iter().map(|n| source_namespace(n)).collect(), false);
    field(subject.not_namespaces.iter().map(|n| source_namespace(n)).collect(), true);
    field(subject.ips.iter().map(|ip| source_ip(ip)).collect(), false);
    field(subject.not_ips.iter().map(|ip| source_ip(ip)).collect(), true);
    // BTreeMap: sorted by key, so the configuration is stable.
    for (key, value) in &subject.properties {
        field(vec![property(key, value)], false);
    }
    if all.is_empty() {
        // A subject with nothing set grants nobody (validation rejects it).
        all.push(not_principal(any_principal()));
    }
    Some(Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids: all })) })
}

fn property(key: &str, value: &str) -> Principal {
    match key {
        "source.ip" => source_ip(value),
        "source.namespace" => source_namespace(value),
        "source.principal" | "source.user" => source_principal(value),
        "request.auth.principal" => request_principal(value),
        "request.auth.audiences" => claim("aud", value),
        "request.auth.presenter" => claim("azp", value),
        _ => {
            if let Some(header) = bracketed(key, "request.headers") {
                Principal { identifier: Some(principal::Identifier::Header(header_matcher(header, value))) }
            } else if let Some(name) = bracketed(key, "request.auth.claims") {
                claim(name, value)
            } else {
                // A key Istio does not know matched nothing there either.
                not_principal(any_principal())
            }
        }
    }
}

/// The caller's SPIFFE ID from its certificate; `*` (and Istio's
/// `allUsers`) is anyone, even without one; `allAuthenticatedUsers`
/// anyone with one.
fn source_principal(value: &str) -> Principal {
    let matcher = match value {
        "*" | "allUsers" => return any_principal(),
        "allAuthenticatedUsers" => regex(".+"),
        v => string_match(v, SPIFFE_PREFIX),
    };
    authenticated(matcher)
}

/// A caller from `namespace` (`*` as a wildcard), read from its SPIFFE ID.
fn source_namespace(namespace: &str) -> Principal {
    let pattern = namespace.split('*').map(regex_syntax::escape).collect::<Vec<_>>().join(".*");
    authenticated(regex(&format!(".*/ns/{pattern}/.*")))
}

fn source_ip(value: &str) -> Principal {
    match cidr(value) {
        Some(range) => Principal { identifier: Some(principal::Identifier::DirectRemoteIp(range)) },
        // Validation rejects it; an address that does not parse matches no one.
        None => not_principal(any_principal()),
    }
}

fn authenticated(name: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(name),
        })),
    }
}

/// `request.auth.principal`, Istio's `<iss>/<sub>` of the verified JWT.
/// The payload holds the two apart, so each way of splitting the value at
/// a `/` is a candidate.
fn request_principal(value: &str) -> Principal {
    let claim_is = |name: &str, m: StringMatcher| jwt_principal(&[name], string_value(m));
    let present = |name: &str| {
        jwt_principal(
            &[name],
            ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)) },
        )
    };
    let splits = |v: &str| {
        v.match_indices('/').map(|(i, _)| (v[..i].to_string(), v[i + 1..].to_string())).collect::<Vec<_>>()
    };
    let and = |ids: Vec<Principal>| Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    };
    let mut any_of = Vec::new();
    if value == "*" {
        return present("iss");
    } else if let Some(prefix) = value.strip_suffix('*') {
        // iss/sub starts with `prefix`: iss does, or iss is the part
        // before some `/` of it and sub starts with the rest.
        any_of.push(claim_is("iss", prefixed(prefix)));
        for (iss, sub) in splits(prefix).into_iter().filter(|(iss, _)| !iss.is_empty()) {
            let sub = if sub.is_empty() { present("sub") } else { claim_is("sub", prefixed(&sub)) };
            any_of.push(and(vec![claim_is("iss", exact(&iss)), sub]));
        }
    } else if let Some(suffix) = value.strip_prefix('*') {
        any_of.push(claim_is("sub", suffixed(suffix)));
        for (iss, sub) in splits(suffix).into_iter().filter(|(_, sub)| !sub.is_empty()) {
            let iss = if iss.is_empty() { present("iss") } else { claim_is("iss", suffixed(&iss)) };
            any_of.push(and(vec![iss, claim_is("sub", exact(&sub))]));
        }
    } else {
        for (iss, sub) in splits(value).into_iter().filter(|(iss, sub)| !iss.is_empty() && !sub.is_empty()) {
            any_of.push(and(vec![claim_is("iss", exact(&iss)), claim_is("sub", exact(&sub))]));
        }
    }
    if any_of.is_empty() {
        return not_principal(any_principal());
    }
    or_principals(any_of)
}

/// A claim of the verified JWT: a string equal to the value, or a list
/// holding it (`aud`, `groups` and the like are either).
fn claim(name: &str, value: &str) -> Principal {
    let m = string_match(value, "");
    or_principals(vec![
        jwt_principal(&[name], string_value(m.clone())),
        jwt_principal(&[name], list_value_of(m)),
    ])
}

fn jwt_principal(path: &[&str], value: ValueMatcher) -> Principal {
    let mut full = vec![JWT_PAYLOAD_METADATA];
    full.extend_from_slice(path);
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(dynamic(metadata(JWT_FILTER, &full, value)))),
    }
}

/// A match on the request's dynamic metadata (what filters before this
/// one left).
fn dynamic(matcher: MetadataMatcher) -> SourcedMetadata {
    SourcedMetadata { metadata_matcher: Some(matcher), metadata_source: MetadataSource::Dynamic.into() }
}

fn metadata(filter: &str, path: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.to_string(),
        path: path
            .iter()
            .map(|k| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(value),
        ..Default::default()
    }
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)) }
}

fn list_value(item: &str) -> ValueMatcher {
    list_value_of(string_match(item, ""))
}

fn list_value_of(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string_value(m)))),
        }))),
    }
}

/// Istio's wildcard for a value, with `prefix` before an exact or
/// prefix-matched value (`*` alone is any non-empty value).
fn string_match(value: &str, prefix: &str) -> StringMatcher {
    if value == "*" {
        regex(".+")
    } else if let Some(suffix) = value.strip_prefix('*') {
        suffixed(suffix)
    } else if let Some(start) = value.strip_suffix('*') {
        prefixed(&format!("{prefix}{start}"))
    } else {
        exact(&format!("{prefix}{value}"))
    }
}

fn exact(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(v.to_string())),
        ..Default::default()
    }
}

fn prefixed(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(v.to_string())),
        ..Default::default()
    }
}

fn suffixed(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Suffix(v.to_string())),
        ..Default::default()
    }
}

fn regex(pattern: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: pattern.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio's header match: `*` is presence, else the wildcard string match.
fn header_matcher(name: &str, value: &str) -> HeaderMatcher {
    let specifier = if value == "*" {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        header_matcher::HeaderMatchSpecifier::StringMatch(string_match(value, ""))
    };
    HeaderMatcher { name: name.to_string(), header_match_specifier: Some(specifier), ..Default::default() }
}

fn header_permission(name: &str, value: &str) -> Permission {
    Permission { rule: Some(permission::Rule::Header(header_matcher(name, value))) }
}

fn port_permission(port: u32) -> Permission {
    Permission { rule: Some(permission::Rule::DestinationPort(port)) }
}

/// An address or CIDR block; None when it is neither.
fn cidr(value: &str) -> Option<CidrRange> {
    let (ip, len) = match value.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u32>().ok()?)),
        None => (value, None),
    };
    let addr: std::net::IpAddr = ip.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max)
        .then(|| CidrRange { address_prefix: addr.to_string(), prefix_len: Some(UInt32Value { value: len }) })
}

/// Any of `permissions`; none at all matches nothing (every value failed
/// to parse, which validation reports).
fn or_permissions(permissions: impl Iterator<Item = Permission>) -> Permission {
    let rules: Vec<Permission> = permissions.collect();
    if rules.is_empty() {
        return not_permission(any_permission());
    }
    Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules })) }
}

fn or_principals(ids: Vec<Principal>) -> Principal {
    Principal { identifier: Some(principal::Identifier::OrIds(principal::Set { ids })) }
}

fn any_permission() -> Permission {
    Permission { rule: Some(permission::Rule::Any(true)) }
}

fn not_permission(p: Permission) -> Permission {
    Permission { rule: Some(permission::Rule::NotRule(Box::new(p))) }
}

fn any_principal() -> Principal {
    Principal { identifier: Some(principal::Identifier::Any(true)) }
}

fn not_principal(p: Principal) -> Principal {
    Principal { identifier: Some(principal::Identifier::NotId(Box::new(p))) }
}

#[cfg(test)]
mod tests;
