//! What an HTTP rule does to a request besides choosing its destination,
//! as Istio translates it: rewrites, redirects, direct responses, CORS,
//! header operations (today's `headers` and Istio 1.1's `append*`/`remove*`
//! fields), `statPrefix`, and delegation to another VirtualService.
//!
//! Each feature is one method of [`RouteFeatures`] or one function over the
//! Envoy route; [`super::route_for_rule`] applies them.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source, header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction, Route, RouteAction, redirect_action, route, route_action, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{RouteFeatures, direct_response, safe_regex, string_matcher as envoy_string_match};
use crate::api::virtual_service::{
    CorsPolicy as IstioCors, HeaderOperations, Headers, HttpBody, HttpMatchRequest, HttpRedirect, HttpRoute,
    HttpRouteDestination, RedirectPortSelection, StringMatch, UnmatchedPreflights,
};
use crate::translate::{any, parse_duration};

/// The name of Envoy's CORS filter, which the outbound connection managers
/// run before the router and routes configure through
/// `typed_per_filter_config`.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The CORS filter for the outbound connection managers: it does nothing
/// unless the matched route carries a policy.
pub fn cors_filter() -> HttpFilter {
    HttpFilter {
        name: CORS_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Cors::default()))),
        ..Default::default()
    }
}

/// Header edits for one place (the route, or one weighted destination),
/// with the authority they set, which Envoy takes as a host rewrite.
#[derive(Default)]
pub(super) struct HeaderEdits {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
    authority: Option<String>,
}

/// Istio 1.1's header fields of a rule or destination, before `headers`
/// existed: each `append*` map appends, each `remove*` list removes.
pub(super) struct LegacyHeaders<'a> {
    append_request: Vec<&'a BTreeMap<String, String>>,
    remove_request: &'a [String],
    append_response: &'a BTreeMap<String, String>,
    remove_response: &'a [String],
}

impl<'a> LegacyHeaders<'a> {
    pub(super) fn of_rule(rule: &'a HttpRoute) -> Self {
        LegacyHeaders {
            // `appendHeaders` (1.0) is the older name of `appendRequestHeaders`.
            append_request: vec![&rule.append_headers, &rule.append_request_headers],
            remove_request: &rule.remove_request_headers,
            append_response: &rule.append_response_headers,
            remove_response: &rule.remove_response_headers,
        }
    }

    pub(super) fn of_destination(d: &'a HttpRouteDestination) -> Self {
        LegacyHeaders {
            append_request: vec![&d.append_request_headers],
            remove_request: &d.remove_request_headers,
            append_response: &d.append_response_headers,
            remove_response: &d.remove_response_headers,
        }
    }
}

impl HeaderEdits {
    /// Istio's translation: `set` overwrites (OVERWRITE_IF_EXISTS_OR_ADD),
    /// `add` and 1.1's `append*` append (APPEND_IF_EXISTS_OR_ADD), `remove`
    /// removes. Pseudo-headers and `host` are never edited: setting or
    /// adding `:authority`/`host` rewrites the authority (a `set` wins over
    /// an `add`).
    pub(super) fn of(headers: Option<&Headers>, legacy: &LegacyHeaders) -> Self {
        let request = headers.and_then(|h| h.request.as_ref());
        let response = headers.and_then(|h| h.response.as_ref());
        let mut edits = HeaderEdits::default();
        let none = HeaderOperations::default();
        let (request, response) = (request.unwrap_or(&none), response.unwrap_or(&none));

        let set_authority = authority_of(&request.set);
        let add_authority =
            authority_of(&request.add).or_else(|| legacy.append_request.iter().find_map(|m| authority_of(m)));
        edits.authority = set_authority.or(add_authority);

        edits.request_add = header_options(&request.set, Append::Overwrite);
        edits.request_add.extend(header_options(&request.add, Append::Append));
        for map in &legacy.append_request {
            edits.request_add.extend(header_options(map, Append::Append));
        }
        edits.request_remove = editable(request.remove.iter().chain(legacy.remove_request));

        edits.response_add = header_options(&response.set, Append::Overwrite);
        edits.response_add.extend(header_options(&response.add, Append::Append));
        edits.response_add.extend(header_options(legacy.append_response, Append::Append));
        edits.response_remove = editable(response.remove.iter().chain(legacy.remove_response));
        edits
    }

    /// Puts the edits on a route, after those it already has.
    pub(super) fn apply_to_route(self, route: &mut Route) -> Option<String> {
        route.request_headers_to_add.extend(self.request_add);
        route.request_headers_to_remove.extend(self.request_remove);
        route.response_headers_to_add.extend(self.response_add);
        route.response_headers_to_remove.extend(self.response_remove);
        self.authority
    }

    /// Puts the edits on one weighted destination, with its own authority.
    pub(super) fn apply_to_weight(self, weight: &mut weighted_cluster::ClusterWeight) {
        weight.request_headers_to_add = self.request_add;
        weight.request_headers_to_remove = self.request_remove;
        weight.response_headers_to_add = self.response_add;
        weight.response_headers_to_remove = self.response_remove;
        weight.host_rewrite_specifier =
            self.authority.map(weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral);
    }
}

#[derive(Clone, Copy)]
enum Append {
    Overwrite,
    Append,
}

/// Envoy may not edit pseudo-headers, and `host` is the authority.
fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn authority_of(map: &BTreeMap<String, String>) -> Option<String> {
    map.iter().filter(|(k, _)| is_authority(k)).map(|(_, v)| v.clone()).next_back()
}

fn editable<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.filter(|n| !is_internal(n)).cloned().collect()
}

/// One option per header, in name order (the map's), as Istio sorts them.
fn header_options(map: &BTreeMap<String, String>, how: Append) -> Vec<HeaderValueOption> {
    use header_value_option::HeaderAppendAction;
    let action = match how {
        Append::Overwrite => HeaderAppendAction::OverwriteIfExistsOrAdd,
        Append::Append => HeaderAppendAction::AppendIfExistsOrAdd,
    };
    map.iter()
        .filter(|(name, _)| !is_internal(name))
        .map(|(name, value)| HeaderValueOption {
            header: Some(HeaderValue { key: name.clone(), value: value.clone(), ..Default::default() }),
            append_action: action.into(),
            ..Default::default()
        })
        .collect()
}

impl RouteFeatures<'_> {
    /// `rewrite`: `uri` replaces the matched prefix, which for an exact or
    /// regex match is the whole path (Envoy's `prefix_rewrite`, as Istio);
    /// `uriRegexRewrite` substitutes with RE2; `authority` replaces the
    /// Host, winning over a `headers` authority.
    pub(super) fn rewrite(&self, action: &mut RouteAction, header_authority: Option<String>) {
        let rewrite = self.rule.rewrite.as_ref();
        if let Some(regex) = rewrite.and_then(|r| r.uri_regex_rewrite.as_ref()) {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(safe_regex(regex.r#match.as_deref().unwrap_or_default())),
                substitution: regex.rewrite.clone().unwrap_or_default(),
            });
        } else if let Some(uri) = rewrite.and_then(|r| r.uri.as_deref()).filter(|u| !u.is_empty()) {
            action.prefix_rewrite = uri.to_string();
        }
        let authority = rewrite
            .and_then(|r| r.authority.clone())
            .filter(|a| !a.is_empty())
            .or(header_authority)
            .filter(|a| !a.is_empty());
        if let Some(authority) = authority {
            action.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(authority));
        }
    }

    /// `corsPolicy`, as the CORS filter's per-route policy.
    pub(super) fn cors(&self, route: &mut Route) {
        if let Some(policy) = &self.rule.cors_policy {
            route.typed_per_filter_config.insert(CORS_FILTER.to_string(), any(&cors_policy(policy)));
        }
    }
}

/// Istio's CORS translation: `allowOrigins` when given, else 1.1's
/// `allowOrigin` compared exactly ("*" allows any origin); lists joined with commas; `maxAge` in whole
/// seconds; preflights from other origins forwarded unless
/// `unmatchedPreflights: IGNORE`.
pub(super) fn cors_policy(policy: &IstioCors) -> CorsPolicy {
    let origins: Vec<StringMatcher> = if !policy.allow_origins.is_empty() {
        policy.allow_origins.iter().filter_map(envoy_string_match).collect()
    } else {
        policy.allow_origin.iter().map(|origin| exact_origin(origin)).collect()
    };
    CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: policy.allow_methods.join(","),
        allow_headers: policy.allow_headers.join(","),
        expose_headers: policy.expose_headers.join(","),
        max_age: policy
            .max_age
            .as_deref()
            .and_then(parse_duration)
            .map(|d| d.seconds.to_string())
            .unwrap_or_default(),
        allow_credentials: policy.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: fractional_percent::DenominatorType::Hundred.into(),
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: policy.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

/// Envoy's CORS filter also tries each matcher on "*", so an exact "*"
/// allows any origin, as 1.1 documented.
fn exact_origin(origin: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(origin.to_string())),
        ..Default::default()
    }
}

/// `redirect`, as Istio's: the path and host replaced when given; the port
/// from `port`, or with `derivePort: FROM_REQUEST_PORT` the Service port
/// the request came in on (every route is built for one), leaving out the
/// scheme's default port; 301 unless `redirectCode` says 302, 303, 307 or
/// 308. Envoy can send no other code: such a rule answers 503 saying so
/// (Istio would drop the route).
pub(super) fn redirect(redirect: &HttpRedirect, port: u16, vs: &str) -> route::Action {
    use redirect_action::RedirectResponseCode as Code;
    let code = match redirect.redirect_code.unwrap_or(0) {
        0 | 301 => Code::MovedPermanently,
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        other => {
            return direct_response(
                503,
                format!(
                    "mesh: VirtualService {vs}: Envoy cannot redirect with status {other}: use 301, 302, 303, \
                     307 or 308"
                ),
            );
        }
    };
    let scheme = redirect.scheme.clone().filter(|s| !s.is_empty());
    let mut port_redirect = match (redirect.port, redirect.derive_port) {
        (Some(port), _) => port,
        (None, Some(RedirectPortSelection::FromRequestPort)) => u32::from(port),
        // FROM_PROTOCOL_DEFAULT is what Envoy does without a port.
        (None, _) => 0,
    };
    // Sidecars' outbound HTTP is plain text, so no scheme means http.
    match scheme.as_deref().unwrap_or("http") {
        "http" if port_redirect == 80 => port_redirect = 0,
        "https" if port_redirect == 443 => port_redirect = 0,
        _ => {}
    }
    route::Action::Redirect(RedirectAction {
        host_redirect: redirect.authority.clone().unwrap_or_default(),
        port_redirect,
        response_code: code.into(),
        scheme_rewrite_specifier: scheme.map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: redirect
            .uri
            .clone()
            .filter(|u| !u.is_empty())
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    })
}

/// The body of a direct response: text as it is, `bytes` decoded from
/// base64 (standard or URL-safe, padded or not, as protobuf JSON reads it).
pub(super) fn direct_body(body: Option<&HttpBody>) -> Option<DataSource> {
    let body = body?;
    let specifier = if let Some(text) = &body.string {
        data_source::Specifier::InlineString(text.clone())
    } else {
        let encoded: String = body.bytes.as_deref()?.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(&encoded).ok())?;
        data_source::Specifier::InlineBytes(bytes)
    };
    Some(DataSource { specifier: Some(specifier), ..Default::default() })
}

// ------------------------------------------------------------- delegation

/// The rules a root rule delegates to, merged as Istio merges them
/// (`mergeHTTPRoute`): each delegate match is combined with every root
/// match it does not contradict, and a delegate rule with a match that
/// contradicts all of the root's is dropped. A side without matches takes
/// the other's. The merged rule is named `<root>-<delegate>`, and takes
/// the root's rewrite, timeout, retries, fault, mirror, CORS policy and
/// headers where it sets none of its own.
pub(super) fn merge_delegate(root: &HttpRoute, delegate: &[HttpRoute]) -> Vec<HttpRoute> {
    delegate.iter().filter_map(|rule| merge_rule(root, rule)).collect()
}

fn merge_rule(root: &HttpRoute, rule: &HttpRoute) -> Option<HttpRoute> {
    let matches = if root.r#match.is_empty() {
        rule.r#match.clone()
    } else if rule.r#match.is_empty() {
        root.r#match.clone()
    } else {
        let mut out = Vec::new();
        for leaf in &rule.r#match {
            let merged: Vec<HttpMatchRequest> =
                root.r#match.iter().filter(|r| !conflicts(r, leaf)).map(|r| merge_match(r, leaf)).collect();
            if merged.is_empty() {
                return None;
            }
            out.extend(merged);
        }
        out
    };
    let mut merged = rule.clone();
    merged.r#match = matches;
    merged.delegate = None;
    merged.name = match (&root.name, &rule.name) {
        (Some(r), Some(d)) if !r.is_empty() && !d.is_empty() => Some(format!("{r}-{d}")),
        (r, d) => d.clone().filter(|d| !d.is_empty()).or_else(|| r.clone()),
    };
    merged.rewrite = merged.rewrite.or_else(|| root.rewrite.clone());
    merged.timeout = merged.timeout.or_else(|| root.timeout.clone());
    merged.retries = merged.retries.or_else(|| root.retries.clone());
    merged.fault = merged.fault.or_else(|| root.fault.clone());
    merged.mirror = merged.mirror.or_else(|| root.mirror.clone());
    merged.mirror_percent = merged.mirror_percent.or(root.mirror_percent);
    merged.mirror_percentage = merged.mirror_percentage.or_else(|| root.mirror_percentage.clone());
    merged.cors_policy = merged.cors_policy.or_else(|| root.cors_policy.clone());
    merged.headers = merged.headers.or_else(|| root.headers.clone());
    Some(merged)
}

/// Istio's `hasConflict`: whether a delegate match can never hold together
/// with a root match, or asks for what the root's does not allow.
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [(&root.uri, &leaf.uri), (&root.scheme, &leaf.scheme), (&root.method, &leaf.method)];
    if pairs.into_iter().chain([(&root.authority, &leaf.authority)]).any(|(r, l)| string_conflict(r, l)) {
        return true;
    }
    let keyed = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    for (roots, leaves) in keyed {
        if leaves.iter().any(|(k, l)| string_conflict(&roots.get(k).cloned(), &Some(l.clone()))) {
            return true;
        }
    }
    // Source conditions and gateways are not compared (Istio).
    root.ignore_uri_case.unwrap_or(false) != leaf.ignore_uri_case.unwrap_or(false)
        || matches!((root.port, leaf.port), (Some(r), Some(l)) if r != 0 && l != 0 && r != l)
}

/// Istio's `stringMatchConflict`: none when either side is unset; a regex
/// on either side always; under an exact root only the same exact; under a
/// prefix root a prefix or exact path starting with it.
fn string_conflict(root: &Option<StringMatch>, leaf: &Option<StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    if root.regex.is_some() || leaf.regex.is_some() {
        return true;
    }
    if let Some(exact) = &root.exact {
        return leaf.exact.as_ref() != Some(exact);
    }
    if let Some(prefix) = &root.prefix {
        return !leaf.prefix.as_ref().or(leaf.exact.as_ref()).is_some_and(|l| l.starts_with(prefix.as_str()));
    }
    true
}

/// Istio's `mergeHTTPMatchRequest`: the delegate's match, with the root's
/// request conditions where it sets none (header and query conditions are
/// the union); source conditions, gateways and `statPrefix` stay the
/// delegate's own.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = match (&root.name, &leaf.name) {
        (Some(r), Some(l)) if !r.is_empty() && !l.is_empty() => Some(format!("{r}-{l}")),
        (r, l) => l.clone().filter(|l| !l.is_empty()).or_else(|| r.clone()),
    };
    for (mine, theirs) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if mine.is_none() {
            mine.clone_from(theirs);
        }
    }
    union(&mut out.headers, &root.headers);
    union(&mut out.without_headers, &root.without_headers);
    union(&mut out.query_params, &root.query_params);
    if out.port.unwrap_or(0) == 0 {
        out.port = root.port;
    }
    out
}

/// The root's entries, then the delegate's over them.
fn union<V: Clone>(mine: &mut BTreeMap<String, V>, root: &BTreeMap<String, V>) {
    for (k, v) in root {
        mine.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(value: serde_json::Value) -> HttpRoute {
        serde_json::from_value(value).expect("an HTTPRoute")
    }

    #[test]
    fn delegate_matches_narrow_the_roots() {
        let root = rule(json!({"name": "root", "timeout": "3s", "delegate": {"name": "api"},
                               "match": [{"uri": {"prefix": "/api"}, "headers": {"x-team": {"exact": "a"}}}]}));
        let delegate = [
            rule(json!({"name": "v1", "match": [{"uri": {"prefix": "/api/v1"}}, {"uri": {"exact": "/api"}}],
                        "route": [{"destination": {"host": "v1"}}]})),
            rule(json!({"match": [{"uri": {"prefix": "/api/v2"}}, {"uri": {"prefix": "/v2"}}],
                        "route": [{"destination": {"host": "v2"}}]})),
            rule(
                json!({"match": [{"uri": {"prefix": "/other"}}], "route": [{"destination": {"host": "x"}}]}),
            ),
            rule(json!({"match": [{"headers": {"x-team": {"exact": "b"}}}],
                        "route": [{"destination": {"host": "b"}}]})),
            rule(json!({"route": [{"destination": {"host": "rest"}}]})),
        ];
        let merged = merge_delegate(&root, &delegate);
        let hosts: Vec<&str> = merged.iter().map(|r| r.route[0].destination.host.as_str()).collect();
        assert_eq!(
            hosts,
            ["v1", "rest"],
            "a rule with a path outside /api, or a contradicting header, is dropped"
        );
        assert_eq!(merged[0].name.as_deref(), Some("root-v1"));
        assert_eq!(merged[0].r#match.len(), 2);
        assert_eq!(
            merged[0].timeout.as_deref(),
            Some("3s"),
            "the root's timeout where the delegate has none"
        );
        let first = &merged[0].r#match[0];
        assert_eq!(first.uri.as_ref().and_then(|u| u.prefix.as_deref()), Some("/api/v1"));
        assert_eq!(first.headers["x-team"].exact.as_deref(), Some("a"), "the root's condition is kept");
        assert_eq!(merged[1].r#match, root.r#match, "a rule without matches takes the root's");
        assert!(merged.iter().all(|r| r.delegate.is_none()));
    }

    #[test]
    fn header_edits_follow_istio() {
        let headers: Headers = serde_json::from_value(json!({
            "request": {"set": {"x-set": "1", "host": "set.example"}, "add": {"x-add": "2", ":authority": "add.example"},
                        "remove": ["x-gone", ":path"]},
            "response": {"set": {"x-r": "3"}, "remove": ["server"]}
        }))
        .unwrap();
        let r = rule(json!({"appendHeaders": {"x-old": "0"}, "appendResponseHeaders": {"x-resp": "4"},
                            "removeResponseHeaders": ["x-secret"]}));
        let edits = HeaderEdits::of(Some(&headers), &LegacyHeaders::of_rule(&r));
        let names = |v: &[HeaderValueOption]| -> Vec<(String, i32)> {
            v.iter().map(|o| (o.header.as_ref().unwrap().key.clone(), o.append_action)).collect()
        };
        use header_value_option::HeaderAppendAction::*;
        assert_eq!(
            names(&edits.request_add),
            [
                ("x-set".to_string(), OverwriteIfExistsOrAdd as i32),
                ("x-add".into(), AppendIfExistsOrAdd as i32),
                ("x-old".into(), AppendIfExistsOrAdd as i32)
            ]
        );
        assert_eq!(edits.request_remove, ["x-gone"]);
        assert_eq!(edits.authority.as_deref(), Some("set.example"), "set wins over add");
        assert_eq!(
            names(&edits.response_add),
            [
                ("x-r".to_string(), OverwriteIfExistsOrAdd as i32),
                ("x-resp".into(), AppendIfExistsOrAdd as i32)
            ]
        );
        assert_eq!(edits.response_remove, ["server", "x-secret"]);
    }

    #[test]
    fn redirects_follow_istio() {
        let r = |v: serde_json::Value| redirect(&serde_json::from_value(v).unwrap(), 8000, "ns/vs");
        let Some(route::Action::Redirect(a)) =
            Some(r(json!({"uri": "/new", "derivePort": "FROM_REQUEST_PORT"})))
        else {
            panic!()
        };
        assert_eq!(a.port_redirect, 8000);
        assert_eq!(a.response_code, redirect_action::RedirectResponseCode::MovedPermanently as i32);
        let route::Action::Redirect(a) = r(json!({"port": 443, "scheme": "https", "redirectCode": 308}))
        else {
            panic!()
        };
        assert_eq!(a.port_redirect, 0, "no :443 for https");
        assert_eq!(a.response_code, redirect_action::RedirectResponseCode::PermanentRedirect as i32);
        let route::Action::Redirect(a) = r(json!({"port": 80})) else { panic!() };
        assert_eq!(a.port_redirect, 0, "no :80 for http");
        let route::Action::DirectResponse(d) = r(json!({"uri": "/x", "redirectCode": 300})) else { panic!() };
        assert_eq!(d.status, 503);
    }

    #[test]
    fn bytes_bodies_are_decoded() {
        let body = |v: serde_json::Value| direct_body(Some(&serde_json::from_value(v).unwrap()));
        let bytes = |d: Option<DataSource>| match d.and_then(|d| d.specifier) {
            Some(data_source::Specifier::InlineBytes(b)) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(bytes(body(json!({"bytes": "aGVsbG8="}))), b"hello");
        assert_eq!(bytes(body(json!({"bytes": "aGVsbG8"}))), b"hello");
        assert_eq!(bytes(body(json!({"bytes": "_-8="}))), [0xff, 0xef]);
    }
}
