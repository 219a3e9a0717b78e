//! VirtualService: Istio's `ValidateVirtualService` and the functions it
//! calls (routes, matches, destinations, weights, retries, faults, CORS,
//! rewrites, redirects, direct responses, mirrors, TLS and TCP rules),
//! Istio's unreachable-rule warnings, and the checks against the cluster.

use std::collections::{BTreeMap, HashMap};

use crate::api::virtual_service::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, L4MatchAttributes, RouteDestination,
    TlsMatchAttributes, VirtualServiceSpec,
};

use super::Context;
use super::common::*;
use crate::model::mesh::for_sidecars;
use crate::model::{host, status};

/// What the checks need to know about the VirtualService a rule is in.
struct Vs<'a> {
    spec: &'a VirtualServiceSpec,
    namespace: &'a str,
    ctx: &'a Context,
    /// No hosts: a delegate, whose rules another VirtualService uses.
    delegate: bool,
    /// Bound to gateways only (gateways set, `mesh` not among them).
    gateway_only: bool,
}

pub(super) fn check(spec: &VirtualServiceSpec, namespace: &str, ctx: &Context, out: &mut Out) {
    let gateway_only = !for_sidecars(&spec.gateways);
    let vs = Vs { spec, namespace, ctx, delegate: spec.hosts.is_empty(), gateway_only };

    if vs.delegate {
        if !spec.gateways.is_empty() {
            out.err(
                "spec.gateways",
                "a VirtualService without hosts is a delegate, which takes its gateways from the VirtualService \
                 that delegates to it: remove gateways, or add hosts",
            );
        }
        if !spec.tls.is_empty() {
            out.err(
                "spec.tls",
                "a delegate VirtualService (no hosts) can only hold http rules: remove tls, or add hosts",
            );
        }
        if !spec.tcp.is_empty() {
            out.err(
                "spec.tcp",
                "a delegate VirtualService (no hosts) can only hold http rules: remove tcp, or add hosts",
            );
        }
    }
    check_gateway_names(out, "spec.gateways", &spec.gateways);
    check_gateways_exist(&vs, out);
    check_hosts(&vs, out);

    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        out.err("spec", "the VirtualService has no rules: add at least one http, tls or tcp rule");
    }
    for (i, route) in spec.http.iter().enumerate() {
        check_http_route(&vs, &format!("spec.http[{i}]"), route, out);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        let p = format!("spec.tls[{i}]");
        if route.r#match.is_empty() {
            out.err(
                format!("{p}.match"),
                "a tls rule needs at least one match: add match: [{sniHosts: [<host>]}]",
            );
        }
        for (j, m) in route.r#match.iter().enumerate() {
            check_tls_match(&vs, &format!("{p}.match[{j}]"), m, out);
        }
        if route.route.is_empty() {
            out.err(format!("{p}.route"), "the tls rule has no route: add a route with a destination");
        }
        check_route_destinations(&vs, &format!("{p}.route"), &route.route, out);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        for (j, m) in route.r#match.iter().enumerate() {
            check_l4_match(&format!("{p}.match[{j}]"), m, out);
        }
        if route.route.is_empty() {
            out.err(format!("{p}.route"), "the tcp rule has no route: add a route with a destination");
        }
        check_route_destinations(&vs, &format!("{p}.route"), &route.route, out);
    }
    // A sidecar takes tcp and tls rules only on a Service's TCP and TLS
    // ports: on Services with HTTP ports alone they would do nothing.
    if !vs.gateway_only && ctx.only_http_services(&spec.hosts, namespace) == Some(true) {
        for (field, rules) in [("spec.tcp", spec.tcp.len()), ("spec.tls", spec.tls.len())] {
            if rules > 0 {
                out.warn(
                    field,
                    "every host is a Service whose ports are all HTTP, and sidecars apply tcp and tls rules only \
                     to TCP and TLS ports, so these rules are never used: route HTTP with http rules, or name \
                     the port's protocol (tcp-, tls-) in the Service",
                );
            }
        }
    }
    check_export_to(out, namespace, &spec.export_to, false);

    unreachable_rules(
        out,
        "spec.http",
        &spec.http.iter().map(|r| http_match_keys(&r.r#match)).collect::<Vec<_>>(),
    );
    unreachable_rules(out, "spec.tls", &spec.tls.iter().map(|r| json_keys(&r.r#match)).collect::<Vec<_>>());
    unreachable_rules(out, "spec.tcp", &spec.tcp.iter().map(|r| json_keys(&r.r#match)).collect::<Vec<_>>());
}

/// Istio's analyzer IST0101 (ReferencedResourceNotFound): a Gateway named
/// in `gateways` (or a match's) that the cluster does not hold configures
/// nothing.
fn check_gateways_exist(vs: &Vs, out: &mut Out) {
    let http = vs.spec.http.iter().enumerate().flat_map(|(i, r)| {
        r.r#match
            .iter()
            .enumerate()
            .map(move |(j, m)| (format!("spec.http[{i}].match[{j}].gateways"), &m.gateways))
    });
    let tls = vs.spec.tls.iter().enumerate().flat_map(|(i, r)| {
        r.r#match
            .iter()
            .enumerate()
            .map(move |(j, m)| (format!("spec.tls[{i}].match[{j}].gateways"), &m.gateways))
    });
    let tcp = vs.spec.tcp.iter().enumerate().flat_map(|(i, r)| {
        r.r#match
            .iter()
            .enumerate()
            .map(move |(j, m)| (format!("spec.tcp[{i}].match[{j}].gateways"), &m.gateways))
    });
    let lists =
        std::iter::once(("spec.gateways".to_string(), &vs.spec.gateways)).chain(http).chain(tls).chain(tcp);
    for (path, names) in lists {
        for (k, name) in names.iter().enumerate() {
            let Some(gateway) = crate::model::gateway::gateway_key(name, vs.namespace) else { continue };
            if vs.ctx.gateway_exists(&gateway) == Some(false) {
                out.warn(
                    format!("{path}[{k}]"),
                    format!(
                        "no Gateway {gateway} exists, so no gateway proxy applies these rules for {name:?}: \
                         create the Gateway, or fix the name (\"namespace/name\", or \"name\" in this namespace)"
                    ),
                );
            }
        }
    }
}

fn check_hosts(vs: &Vs, out: &mut Out) {
    let sni = vs.spec.tls.iter().any(|t| t.r#match.iter().any(|m| !m.sni_hosts.is_empty()));
    // A host a tls rule matches by SNI routes connections to the Services
    // the VirtualService names, so it needs no Service of its own.
    let sni_names: Vec<&str> = vs
        .spec
        .hosts
        .iter()
        .filter(|h| {
            vs.spec
                .tls
                .iter()
                .flat_map(|t| &t.r#match)
                .flat_map(|m| &m.sni_hosts)
                .any(|s| host::subset_of(s, h))
        })
        .map(String::as_str)
        .collect();
    let mut all_valid = true;
    for (i, host) in vs.spec.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        let result =
            if vs.gateway_only { check_gateway_vs_host(sni, host) } else { check_wildcard_domain(host) };
        if let Err(e) = result {
            if !is_ip(host) {
                out.err(p, format!("host {host:?} is not a valid host name ({e}): {HOST_FIX}"));
                all_valid = false;
            }
        } else if !vs.gateway_only && host == "*" {
            out.err(
                p,
                "host \"*\" is only allowed in a VirtualService bound to gateways only, not to the mesh's \
                 sidecars: list the hosts, or set gateways without \"mesh\"",
            );
            all_valid = false;
        } else if !vs.gateway_only
            && !host.starts_with('*')
            && !is_ip(host)
            && !sni_names.contains(&host.as_str())
        {
            let fqdn = vs.ctx.resolve_host(host, vs.namespace);
            if vs.ctx.service_exists(&fqdn) == Some(false) {
                out.warn(
                    p,
                    format!(
                        "no Service {fqdn} exists, so sidecars send no traffic for {host:?} through these rules: \
                         create the Service (or a ServiceEntry), or fix the host name"
                    ),
                );
            }
        }
    }
    if all_valid {
        let hosts = &vs.spec.hosts;
        for i in 0..hosts.len() {
            for j in i + 1..hosts.len() {
                if host::matches(&hosts[i], &hosts[j]) {
                    out.err(
                        format!("spec.hosts[{j}]"),
                        format!("{:?} overlaps {:?} (hosts[{i}]): list each host once", hosts[j], hosts[i]),
                    );
                }
            }
        }
    }
}

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: with
/// SNI rules, the auto-generated `outbound_.<port>_._.<host>` names are
/// allowed too.
fn check_gateway_vs_host(sni: bool, host: &str) -> Result<(), String> {
    if sni && host.starts_with("outbound_") {
        let parts: Vec<&str> = host.split('_').collect();
        let port = parts.get(1).map(|p| p.trim_matches('.')).unwrap_or("");
        let name = parts.get(3).map(|p| p.trim_matches('.')).unwrap_or("");
        let ok = parts.len() >= 4
            && port.bytes().any(|c| c.is_ascii_digit())
            && name.bytes().any(|c| c.is_ascii_alphabetic());
        return if ok {
            Ok(())
        } else {
            Err("it does not follow the outbound_.<PORT>_._.<HOSTNAME> format".into())
        };
    }
    check_wildcard_domain(host)
}

fn check_http_route(vs: &Vs, p: &str, r: &HttpRoute, out: &mut Out) {
    let root = !vs.delegate && r.delegate.is_some();
    if root {
        if r.redirect.is_some() {
            out.err(
                format!("{p}.redirect"),
                "a rule that delegates cannot also redirect: remove redirect, or remove delegate",
            );
        }
        if !r.route.is_empty() {
            out.err(
                format!("{p}.route"),
                "a rule that delegates takes its routes from the delegate: remove route, or remove delegate",
            );
        }
        if let Some(d) = &r.delegate
            && d.name.as_deref().unwrap_or("").is_empty()
        {
            out.warn(
                format!("{p}.delegate.name"),
                "the delegate has no name, so no VirtualService handles these requests: set delegate.name",
            );
        }
    } else {
        if vs.delegate && r.delegate.is_some() {
            out.err(
                format!("{p}.delegate"),
                "a delegate VirtualService cannot delegate again (delegation is one level deep): replace \
                 delegate with a route",
            );
        }
        if r.redirect.is_some() {
            for (set, field) in [
                (!r.route.is_empty(), "route"),
                (r.fault.is_some(), "fault"),
                (r.rewrite.is_some(), "rewrite"),
                (r.direct_response.is_some(), "directResponse"),
            ] {
                if set {
                    out.err(
                        format!("{p}.{field}"),
                        format!("a rule that redirects cannot also have {field}: remove one of redirect and {field}"),
                    );
                }
            }
        } else if r.direct_response.is_some() {
            for (set, field) in [
                (!r.route.is_empty(), "route"),
                (r.fault.is_some(), "fault"),
                (r.rewrite.is_some(), "rewrite"),
            ] {
                if set {
                    out.err(
                        format!("{p}.{field}"),
                        format!(
                            "a rule with directResponse cannot also have {field}: remove one of directResponse \
                             and {field}"
                        ),
                    );
                }
            }
        } else if r.route.is_empty() && r.delegate.is_none() {
            out.err(
                p,
                "the rule does not say where requests go: add a route (or a redirect, directResponse or delegate)",
            );
        }
        if r.mirror.is_some() && !r.mirrors.is_empty() {
            out.err(format!("{p}.mirror"), "mirror and mirrors are both set: move mirror into mirrors");
        }
    }

    for (j, m) in r.r#match.iter().enumerate() {
        check_http_match(vs, &format!("{p}.match[{j}]"), m, out);
    }
    if let Some(h) = &r.headers {
        check_headers(&format!("{p}.headers"), h, out);
    }
    if let Some(cors) = &r.cors_policy {
        check_cors(&format!("{p}.corsPolicy"), cors, out);
    }
    if let Some(fault) = &r.fault {
        check_fault(&format!("{p}.fault"), fault, out);
        if r.timeout.is_some() || r.retries.is_some() {
            out.warn(
                format!("{p}.fault"),
                "timeout and retries do not cover the faults this rule injects (Envoy injects them before \
                 routing: an injected delay is not cut by the timeout, an injected abort is not retried): \
                 inject the fault on the next hop to test them",
            );
        }
    }
    for (field, value) in
        [("mirrorPercent", r.mirror_percent), ("mirror_percent", r.mirror_percent_proto_name)]
    {
        if let Some(v) = value {
            if v > 100 {
                out.err(
                    format!("{p}.{field}"),
                    format!("{field} {v} is over 100: use 0-100 (or mirrorPercentage)"),
                );
            }
            out.warn(
                format!("{p}.{field}"),
                format!("{field} is deprecated: use mirrorPercentage: {{value: {v}}}"),
            );
        }
    }
    if let Some(v) = r.mirror_percentage.as_ref().and_then(|m| m.value)
        && !(0.0..=100.0).contains(&v)
    {
        out.err(
            format!("{p}.mirrorPercentage.value"),
            format!("mirror percentage {v} is out of range: use 0-100"),
        );
    }
    if let Some(m) = &r.mirror {
        check_destination(vs, &format!("{p}.mirror"), m, out);
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let mp = format!("{p}.mirrors[{k}]");
        check_destination(vs, &format!("{mp}.destination"), &m.destination, out);
        if let Some(v) = m.percentage.as_ref().and_then(|m| m.value)
            && !(0.0..=100.0).contains(&v)
        {
            out.err(
                format!("{mp}.percentage.value"),
                format!("mirror percentage {v} is out of range: use 0-100"),
            );
        }
    }
    if let Some(redirect) = &r.redirect {
        check_redirect(&format!("{p}.redirect"), redirect, out);
    }
    if let Some(dr) = &r.direct_response {
        check_direct_response(&format!("{p}.directResponse"), dr, out);
    }
    if let Some(retries) = &r.retries {
        check_retries(&format!("{p}.retries"), retries, out);
    }
    if let Some(rewrite) = &r.rewrite {
        check_rewrite(&format!("{p}.rewrite"), rewrite, out);
    }
    check_authority_rewrite(p, r, out);
    check_legacy_headers(
        p,
        &[("appendHeaders", &r.append_headers), ("appendRequestHeaders", &r.append_request_headers)],
        &r.remove_request_headers,
        &r.append_response_headers,
        &r.remove_response_headers,
        out,
    );
    for (k, d) in r.route.iter().enumerate() {
        let dp = format!("{p}.route[{k}]");
        if let Some(h) = &d.headers {
            check_headers(&format!("{dp}.headers"), h, out);
        }
        check_legacy_headers(
            &dp,
            &[("appendRequestHeaders", &d.append_request_headers)],
            &d.remove_request_headers,
            &d.append_response_headers,
            &d.remove_response_headers,
            out,
        );
    }
    let dests: Vec<(&Destination, Option<i32>)> =
        r.route.iter().map(|d| (&d.destination, d.weight)).collect();
    check_destinations_and_weights(vs, &format!("{p}.route"), &dests, out);
    if let Some(t) = &r.timeout {
        check_duration(out, &format!("{p}.timeout"), t);
    }
}

fn check_http_match(vs: &Vs, p: &str, m: &HttpMatchRequest, out: &mut Out) {
    for (name, sm) in &m.headers {
        let hp = key(&format!("{p}.headers"), name);
        check_match_header_name(out, &hp, name);
        check_jwt_claim_scope(vs, &hp, name, out);
        if matches!(name.as_str(), "uri" | "scheme" | "method" | "authority") {
            out.warn(
                &hp,
                format!(
                    "the header key {name:?} is ignored in headers: match it with the {name} field instead"
                ),
            );
        }
        check_string_match(out, &hp, sm, false);
    }
    for (name, sm) in &m.without_headers {
        let hp = key(&format!("{p}.withoutHeaders"), name);
        check_match_header_name(out, &hp, name);
        check_jwt_claim_scope(vs, &hp, name, out);
        // Istio reads the regex "*" as "header present", not as a regex.
        if sm.regex.as_deref() != Some("*") {
            check_string_match(out, &hp, sm, false);
        }
    }
    if let Some(uri) = &m.uri {
        check_string_match(out, &format!("{p}.uri"), uri, true);
    }
    for (field, sm) in [("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(sm) = sm {
            check_string_match(out, &format!("{p}.{field}"), sm, false);
        }
    }
    for (name, sm) in &m.query_params {
        check_string_match(out, &key(&format!("{p}.queryParams"), name), sm, false);
    }
    if let Some(port) = m.port {
        check_port(out, &format!("{p}.port"), port.into());
    }
    check_labels(out, &format!("{p}.sourceLabels"), &m.source_labels);
    check_gateway_names(out, &format!("{p}.gateways"), &m.gateways);
    if let Some(ns) = &m.source_namespace
        && !is_dns1123_label(ns)
    {
        out.err(
            format!("{p}.sourceNamespace"),
            format!("{ns:?} is not a namespace name: write a namespace, e.g. \"default\""),
        );
    }
    // Source conditions only mean something for sidecars.
    let gateways = if m.gateways.is_empty() { &vs.spec.gateways } else { &m.gateways };
    if !for_sidecars(gateways) && (!m.source_labels.is_empty() || m.source_namespace.is_some()) {
        out.warn(
            p,
            "sourceLabels and sourceNamespace only work for sidecars, and this match applies to gateways only, \
             so it never matches: add \"mesh\" to gateways, or remove them",
        );
    }
}

fn check_jwt_claim_scope(vs: &Vs, path: &str, name: &str, out: &mut Out) {
    if is_jwt_claim_route(name) && !vs.gateway_only {
        out.err(
            path,
            format!(
                "routing on a JWT claim ({name}) only works on gateways: bind the VirtualService to gateways \
                 only, or match a header instead"
            ),
        );
    }
}

fn check_headers(p: &str, h: &Headers, out: &mut Out) {
    if let Some(req) = &h.request {
        check_header_ops(&format!("{p}.request"), req, true, out);
    }
    if let Some(resp) = &h.response {
        check_header_ops(&format!("{p}.response"), resp, false, out);
    }
}

fn check_header_ops(p: &str, ops: &HeaderOperations, request: bool, out: &mut Out) {
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let hp = key(&format!("{p}.{field}"), name);
            if request {
                check_request_header_set_name(out, &hp, name);
            } else {
                check_header_operation_name(out, &hp, name);
            }
            check_header_value(out, &hp, value);
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        check_header_operation_name(out, &format!("{p}.remove[{i}]"), name);
    }
}

/// Istio 1.1's header fields, which `headers` replaced: checked like
/// `headers`' own, each with a warning naming its replacement.
fn check_legacy_headers(
    p: &str,
    append_request: &[(&str, &BTreeMap<String, String>)],
    remove_request: &[String],
    append_response: &BTreeMap<String, String>,
    remove_response: &[String],
    out: &mut Out,
) {
    let mut fields: Vec<(&str, &str, &BTreeMap<String, String>, bool)> =
        append_request.iter().map(|(f, m)| (*f, "headers.request.add", *m, true)).collect();
    fields.push(("appendResponseHeaders", "headers.response.add", append_response, false));
    for (field, replacement, map, request) in fields {
        for (name, value) in map {
            let hp = key(&format!("{p}.{field}"), name);
            if request {
                check_request_header_set_name(out, &hp, name);
            } else {
                check_header_operation_name(out, &hp, name);
            }
            check_header_value(out, &hp, value);
        }
        if !map.is_empty() {
            out.warn(format!("{p}.{field}"), format!("{field} is Istio 1.1's: use {replacement}"));
        }
    }
    for (field, replacement, names) in [
        ("removeRequestHeaders", "headers.request.remove", remove_request),
        ("removeResponseHeaders", "headers.response.remove", remove_response),
    ] {
        for (i, name) in names.iter().enumerate() {
            check_header_operation_name(out, &format!("{p}.{field}[{i}]"), name);
        }
        if !names.is_empty() {
            out.warn(format!("{p}.{field}"), format!("{field} is Istio 1.1's: use {replacement}"));
        }
    }
}

/// Istio's `validateAuthorityRewrite`: the authority is rewritten in one
/// place only.
fn check_authority_rewrite(p: &str, r: &HttpRoute, out: &mut Out) {
    let mut current = r.rewrite.as_ref().and_then(|rw| rw.authority.clone()).filter(|a| !a.is_empty());
    let req = r.headers.as_ref().and_then(|h| h.request.as_ref());
    for (field, map) in [("set", req.map(|r| &r.set)), ("add", req.map(|r| &r.add))] {
        for (name, value) in map.into_iter().flatten() {
            if !is_authority_header(name) {
                continue;
            }
            if let Some(have) = &current {
                out.err(
                    key(&format!("{p}.headers.request.{field}"), name),
                    format!(
                        "the authority is already rewritten to {have:?}, so it cannot also be set to {value:?}: \
                         rewrite it in one place only"
                    ),
                );
                return;
            }
            current = Some(value.clone());
        }
    }
}

const HTTP_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

fn check_cors(p: &str, c: &CorsPolicy, out: &mut Out) {
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let op = format!("{p}.allowOrigins[{i}]");
        let value = origin.exact.as_deref().or(origin.prefix.as_deref()).or(origin.regex.as_deref());
        if value.unwrap_or("").is_empty() {
            out.err(&op, "the origin match is empty: give exact, prefix or regex a value, e.g. exact: https://example.com");
        } else {
            check_string_match(out, &op, origin, false);
        }
    }
    if !c.allow_origin.is_empty() {
        out.warn(
            format!("{p}.allowOrigin"),
            "allowOrigin is deprecated: use allowOrigins, e.g. allowOrigins: [{exact: https://example.com}]",
        );
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&m.as_str()) {
            out.err(
                format!("{p}.allowMethods[{i}]"),
                format!("{m:?} is not an HTTP method: use one of {}", HTTP_METHODS.join(", ")),
            );
        }
    }
    for (i, h) in c.allow_headers.iter().enumerate() {
        check_cors_header_name(out, &format!("{p}.allowHeaders[{i}]"), h);
    }
    for (i, h) in c.expose_headers.iter().enumerate() {
        check_cors_header_name(out, &format!("{p}.exposeHeaders[{i}]"), h);
    }
    if let Some(max_age) = &c.max_age
        && let Some(d) = check_duration(out, &format!("{p}.maxAge"), max_age)
        && d.as_millis() >= 1
        && d.subsec_nanos() != 0
    {
        out.err(
            format!("{p}.maxAge"),
            format!("maxAge {max_age:?} is not whole seconds: round it, e.g. \"24h\" or \"600s\""),
        );
    }
}

fn check_fault(p: &str, f: &HttpFaultInjection, out: &mut Out) {
    if f.abort.is_none() && f.delay.is_none() {
        out.err(p, "the fault injects nothing: add an abort and/or a delay, or remove fault");
    }
    if let Some(a) = &f.abort {
        let ap = format!("{p}.abort");
        check_percentage(out, &format!("{ap}.percentage"), a.percentage.as_ref());
        let kinds: Vec<&str> = [
            (a.http_status.is_some(), "httpStatus"),
            (a.grpc_status.is_some(), "grpcStatus"),
            (a.http2_error.is_some(), "http2Error"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if kinds.len() > 1 {
            out.err(
                &ap,
                format!(
                    "{} are all set: use only one of httpStatus, grpcStatus and http2Error",
                    kinds.join(" and ")
                ),
            );
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            out.err(
                format!("{ap}.httpStatus"),
                format!("HTTP status {s} is out of range: use a status from 200 to 599"),
            );
        }
        if let Some(g) = &a.grpc_status {
            if status::grpc_status_code(g).is_none() {
                out.err(
                    format!("{ap}.grpcStatus"),
                    format!(
                        "{g:?} is not a gRPC status: use a name such as \"UNAVAILABLE\" or \"NOT_FOUND\""
                    ),
                );
            }
        }
        if a.http2_error.is_some() {
            // As Istio: Envoy's fault filter cannot reset a stream with an HTTP/2 error.
            out.err(
                format!("{ap}.http2Error"),
                "HTTP/2 error aborts are not supported yet (Envoy's fault filter answers with a status), as in \
                 Istio: use httpStatus or grpcStatus instead",
            );
        }
        if kinds.is_empty() {
            out.warn(&ap, "the abort has no error to return, so nothing is aborted: set httpStatus (e.g. 503) or grpcStatus");
        }
        // Istio 1.1 read `percent` when `percentage` was unset (today's
        // Istio has no such field); mesh reads it as 1.1 did.
        if let Some(pc) = a.percent {
            check_percent(out, &format!("{ap}.percent"), pc.into());
            if a.percentage.is_some() {
                out.warn(
                    format!("{ap}.percent"),
                    "percent is ignored because percentage is set: remove percent",
                );
            } else {
                out.warn(
                    format!("{ap}.percent"),
                    format!(
                        "percent is Istio 1.1's field, which today's Istio no longer has: write percentage: \
                         {{value: {pc}}} instead"
                    ),
                );
            }
        }
        if a.percentage.is_none() && a.percent.is_none() && !kinds.is_empty() {
            out.warn(
                &ap,
                "no percentage is set, so no request is aborted (as in Istio): set percentage, e.g. {value: 100} \
                 to abort every request",
            );
        }
    }
    if let Some(d) = &f.delay {
        let dp = format!("{p}.delay");
        check_percentage(out, &format!("{dp}.percentage"), d.percentage.as_ref());
        if let Some(pc) = d.percent {
            check_percent(out, &format!("{dp}.percent"), pc.into());
            if d.percentage.is_some() {
                out.warn(
                    format!("{dp}.percent"),
                    "percent is ignored because percentage is set: remove percent",
                );
            } else {
                out.warn(
                    format!("{dp}.percent"),
                    format!("percent is deprecated: write percentage: {{value: {pc}}}"),
                );
            }
        }
        if d.percentage.is_none() && d.percent.is_none() && d.fixed_delay.is_some() {
            out.warn(
                &dp,
                "no percentage is set, so no request is delayed (as in Istio): set percentage, e.g. {value: 100} \
                 to delay every request",
            );
        }
        if d.fixed_delay.is_some() && d.exponential_delay.is_some() {
            out.err(&dp, "fixedDelay and exponentialDelay are both set: use only fixedDelay");
        }
        if let Some(fd) = &d.fixed_delay {
            check_duration(out, &format!("{dp}.fixedDelay"), fd);
        }
        if let Some(ed) = &d.exponential_delay {
            check_duration(out, &format!("{dp}.exponentialDelay"), ed);
            // As Istio: Envoy's fault filter has no exponential delay.
            out.err(
                format!("{dp}.exponentialDelay"),
                "exponentialDelay is not supported yet (Envoy's fault filter has only fixed delays), as in Istio: \
                 use fixedDelay",
            );
        }
        if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
            out.warn(&dp, "the delay has no duration, so nothing is delayed: set fixedDelay, e.g. \"5s\"");
        }
    }
}

/// Envoy's `retryOn` policies that Istio accepts.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn check_retries(p: &str, r: &HttpRetry, out: &mut Out) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        out.err(
            format!("{p}.attempts"),
            format!("attempts {attempts} is negative: use 0 (no retries) or more"),
        );
    }
    if attempts == 0
        && (r.per_try_timeout.is_some() || r.retry_on.is_some() || r.retry_remote_localities.is_some())
    {
        out.err(
            format!("{p}.attempts"),
            "retry settings are given but attempts is 0 (retries disabled): set attempts, e.g. 3, or remove the \
             other settings",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        check_duration(out, &format!("{p}.perTryTimeout"), t);
    }
    if let Some(b) = &r.backoff {
        check_duration(out, &format!("{p}.backoff"), b);
    }
    if let Some(on) = &r.retry_on {
        for policy in on.split(',') {
            let status = policy.parse::<u32>().is_ok_and(status::is_http_status);
            if !status && !RETRY_ON.contains(&policy) {
                out.err(
                    format!("{p}.retryOn"),
                    format!(
                        "{policy:?} is not a retryOn policy: use a comma-separated list of policies such as \
                         \"5xx,connect-failure,refused-stream\" or HTTP status codes such as \"503\""
                    ),
                );
            }
        }
    }
}

fn check_redirect(p: &str, r: &HttpRedirect, out: &mut Out) {
    if r.uri.as_deref().unwrap_or("").is_empty()
        && r.authority.as_deref().unwrap_or("").is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.as_deref().unwrap_or("").is_empty()
    {
        out.err(p, "the redirect changes nothing: set uri, authority, scheme or port");
    }
    if let Some(code) = r.redirect_code
        && code != 0
        && !(300..=399).contains(&code)
    {
        out.err(
            format!("{p}.redirectCode"),
            format!("{code} is not a redirect code: use a 3xx code such as 301 or 302"),
        );
    } else if let Some(code) = r.redirect_code
        && !matches!(code, 0 | 301 | 302 | 303 | 307 | 308)
    {
        out.warn(
            format!("{p}.redirectCode"),
            format!(
                "Envoy cannot redirect with {code}, so matching requests get 503: use 301, 302, 303, 307 or 308"
            ),
        );
    }
    if let Some(s) = &r.scheme
        && !s.is_empty()
        && s != "http"
        && s != "https"
    {
        out.err(format!("{p}.scheme"), format!("scheme {s:?} is not allowed: use \"http\" or \"https\""));
    }
    if r.port.is_some() && r.derive_port.is_some() {
        out.err(p, "port and derivePort are both set: use only one");
    }
    if let Some(port) = r.port {
        check_port(out, &format!("{p}.port"), port.into());
    }
}

fn check_direct_response(p: &str, d: &HttpDirectResponse, out: &mut Out) {
    if !(200..=599).contains(&d.status) {
        out.err(
            format!("{p}.status"),
            format!("HTTP status {} is out of range: use a status from 200 to 599", d.status),
        );
    }
    let Some(body) = &d.body else { return };
    if body.string.is_some() && body.bytes.is_some() {
        out.err(format!("{p}.body"), "string and bytes are both set: use only one");
    }
    let mut size = body.string.as_ref().map_or(0, String::len);
    if let Some(b) = &body.bytes {
        match decoded_base64_len(b) {
            Some(n) => size = size.max(n),
            None => out.err(
                format!("{p}.body.bytes"),
                "bytes is not base64: encode the body, e.g. \"aGVsbG8=\" for \"hello\"",
            ),
        }
    }
    if size > 1024 * 1024 {
        out.err(format!("{p}.body"), format!("the body is {size} bytes: keep direct responses under 1MB"));
    } else if size > 100 * 1024 {
        out.warn(
            format!("{p}.body"),
            format!(
                "the body is {size} bytes; large direct responses slow the control plane: keep it under 100KB"
            ),
        );
    }
}

/// The decoded length of standard base64 text, or None when it is not.
fn decoded_base64_len(s: &str) -> Option<usize> {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let body = s.strip_suffix(b"==").or_else(|| s.strip_suffix(b"=")).unwrap_or(&s);
    let ok = body.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_'));
    let padded_ok = s.len() == body.len() || s.len() % 4 == 0;
    (ok && padded_ok && body.len() % 4 != 1).then_some(body.len() * 3 / 4)
}

fn check_rewrite(p: &str, r: &HttpRewrite, out: &mut Out) {
    let uri = r.uri.as_deref().unwrap_or("");
    if !uri.is_empty() && r.uri_regex_rewrite.is_some() {
        out.err(p, "uri and uriRegexRewrite are both set: use only one");
        return;
    }
    if uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.as_deref().unwrap_or("").is_empty() {
        out.err(p, "the rewrite changes nothing: set uri, uriRegexRewrite or authority, or remove rewrite");
        return;
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let rp = format!("{p}.uriRegexRewrite");
        let m = rr.r#match.as_deref().unwrap_or("");
        if m.is_empty() || rr.rewrite.as_deref().unwrap_or("").is_empty() {
            out.err(&rp, "uriRegexRewrite needs both match and rewrite: set both, e.g. match: \"^/old(/.*)$\", rewrite: \"/new\\\\1\"");
        } else {
            check_regex(out, &format!("{rp}.match"), m);
        }
    }
}

fn check_tls_match(vs: &Vs, p: &str, m: &TlsMatchAttributes, out: &mut Out) {
    if m.sni_hosts.is_empty() {
        out.err(format!("{p}.sniHosts"), "the tls match has no sniHosts: list the SNI names to match");
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let sp = format!("{p}.sniHosts[{i}]");
        let result =
            if vs.gateway_only { check_gateway_vs_host(true, sni) } else { check_wildcard_domain(sni) };
        if let Err(e) = result {
            if is_ip(sni) {
                out.warn(sp, format!("{sni:?} is an IP address, which SNI does not allow and most clients never send: match a host name"));
            } else {
                out.err(sp, format!("SNI host {sni:?} is not a valid host name ({e}): {HOST_FIX}"));
            }
            continue;
        }
        if !vs.spec.hosts.iter().any(|h| host::subset_of(sni, h)) {
            out.err(
                sp,
                format!(
                    "SNI host {sni:?} is not among the VirtualService's hosts [{}]: add it to hosts, or match a \
                     host listed there",
                    vs.spec.hosts.join(", ")
                ),
            );
        }
    }
    for (i, s) in m.destination_subnets.iter().enumerate() {
        if let Err(e) = check_ip_or_cidr(s) {
            out.err(format!("{p}.destinationSubnets[{i}]"), e);
        }
    }
    if let Some(port) = m.port {
        check_port(out, &format!("{p}.port"), port.into());
    }
    check_labels(out, &format!("{p}.sourceLabels"), &m.source_labels);
    check_gateway_names(out, &format!("{p}.gateways"), &m.gateways);
}

fn check_l4_match(p: &str, m: &L4MatchAttributes, out: &mut Out) {
    for (i, s) in m.destination_subnets.iter().enumerate() {
        if let Err(e) = check_ip_or_cidr(s) {
            out.err(format!("{p}.destinationSubnets[{i}]"), e);
        }
    }
    if let Some(s) = &m.source_subnet
        && let Err(e) = check_ip_or_cidr(s)
    {
        out.err(format!("{p}.sourceSubnet"), e);
    }
    if let Some(port) = m.port {
        check_port(out, &format!("{p}.port"), port.into());
    }
    check_labels(out, &format!("{p}.sourceLabels"), &m.source_labels);
    check_gateway_names(out, &format!("{p}.gateways"), &m.gateways);
}

fn check_route_destinations(vs: &Vs, p: &str, route: &[RouteDestination], out: &mut Out) {
    let dests: Vec<(&Destination, Option<i32>)> = route.iter().map(|d| (&d.destination, d.weight)).collect();
    check_destinations_and_weights(vs, p, &dests, out);
}

/// Istio's `validateRouteDestinations`: valid destinations, no negative
/// weight, and not all weights zero when there are several; plus a warning
/// when they do not add up to 100.
fn check_destinations_and_weights(vs: &Vs, p: &str, dests: &[(&Destination, Option<i32>)], out: &mut Out) {
    let mut total: i64 = 0;
    for (k, (d, weight)) in dests.iter().enumerate() {
        let dp = format!("{p}[{k}]");
        check_destination(vs, &format!("{dp}.destination"), d, out);
        let w = weight.unwrap_or(0);
        if w < 0 {
            out.err(format!("{dp}.weight"), format!("weight {w} is negative: use a weight from 0 to 100"));
        } else {
            total += i64::from(w);
        }
    }
    if dests.len() < 2 {
        return;
    }
    if total == 0 {
        out.err(
            p,
            "the destinations' weights add up to 0, so no destination gets traffic: give each a weight, adding \
             up to 100",
        );
        return;
    }
    if total != 100 {
        out.warn(
            p,
            format!(
                "weights add up to {total}, not 100: Istio shares traffic in proportion to them, so each \
                 destination gets weight/{total} of it; make them add up to 100"
            ),
        );
    }
    for (k, (_, weight)) in dests.iter().enumerate() {
        if weight.is_none() {
            out.warn(
                format!("{p}[{k}].weight"),
                "this destination has no weight while others do, so it gets no traffic: give it a weight",
            );
        }
    }
}

fn check_destination(vs: &Vs, p: &str, d: &Destination, out: &mut Out) {
    let host = d.host.as_str();
    let mut valid = true;
    if host == "*" {
        out.err(format!("{p}.host"), "\"*\" is not a destination: name one service, e.g. \"reviews\"");
        valid = false;
    } else if let Err(e) = check_wildcard_domain(host) {
        out.err(
            format!("{p}.host"),
            format!("destination host {host:?} is not a valid host name ({e}): {HOST_FIX}"),
        );
        valid = false;
    }
    if let Some(subset) = &d.subset {
        if subset.is_empty() {
            out.err(format!("{p}.subset"), "the subset name is empty: name a subset, or remove subset");
        } else if !is_dns1123_label(subset) {
            out.err(
                format!("{p}.subset"),
                format!(
                    "subset name {subset:?} is not a DNS label: use letters, digits and '-', e.g. \"v1\""
                ),
            );
        }
    }
    if let Some(port) = &d.port {
        check_port(out, &format!("{p}.port.number"), port.number.map_or(0, i64::from));
    }
    if !valid || host.starts_with('*') {
        return;
    }
    let fqdn = vs.ctx.resolve_host(host, vs.namespace);
    if vs.ctx.service_exists(&fqdn) == Some(false) {
        out.warn(
            format!("{p}.host"),
            format!(
                "no Service {fqdn} exists, so requests routed here fail (503): create the Service (or a \
                 ServiceEntry), or fix the host name"
            ),
        );
        return;
    }
    if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty())
        && vs.ctx.subset_exists(&fqdn, subset) == Some(false)
    {
        out.warn(
            format!("{p}.subset"),
            format!(
                "subset {subset} is not defined by any DestinationRule for {fqdn}: add it to a DestinationRule's \
                 subsets, or traffic to it gets 503"
            ),
        );
    }
}

// ------------------------------------------------------ unreachable rules

/// A rule's matches as comparable keys (the match name left out); an empty
/// list for a rule without matches, which takes everything.
fn http_match_keys(matches: &[HttpMatchRequest]) -> Vec<String> {
    matches
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.name = None;
            serde_json::to_string(&m).unwrap_or_default()
        })
        .collect()
}

fn json_keys<T: serde::Serialize>(matches: &[T]) -> Vec<String> {
    matches.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect()
}

/// Istio's unreachable-rule analysis: a rule after one without matches
/// never applies, and neither does a match some earlier rule already has.
fn unreachable_rules(out: &mut Out, p: &str, rules: &[Vec<String>]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut catch_all: Option<usize> = None;
    for (i, matches) in rules.iter().enumerate() {
        if let Some(c) = catch_all {
            out.warn(
                format!("{p}[{i}]"),
                format!(
                    "this rule is never used: {p}[{c}] before it has no match and takes all traffic; move this rule \
                     above it, or give that rule a match"
                ),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut duplicates = Vec::new();
        for (j, m) in matches.iter().enumerate() {
            match seen.get(m.as_str()) {
                Some(&earlier) => duplicates.push((j, earlier)),
                None => {
                    seen.insert(m, i);
                }
            }
        }
        let earlier: Vec<_> = duplicates.iter().filter(|(_, e)| *e != i).collect();
        if duplicates.len() == matches.len() && !earlier.is_empty() {
            out.warn(
                format!("{p}[{i}]"),
                format!(
                    "this rule is never used: its matches are all in earlier rules ({p}[{}] first); remove it, or \
                     change its matches",
                    earlier[0].1
                ),
            );
            continue;
        }
        for (j, e) in earlier {
            out.warn(
                format!("{p}[{i}].match[{j}]"),
                format!("this match is never used: {p}[{e}] has the same match and comes first; remove it, or make it differ"),
            );
        }
    }
}
