//! rbac.istio.io (v1alpha1), as Istio 1.4 validated it: ServiceRole,
//! ServiceRoleBinding and (Cluster)RbacConfig; plus warnings for keys Istio
//! silently ignores and for bindings to roles that do not exist.

use crate::api::rbac_config::{RbacConfigMode, RbacConfigSpec};
use crate::api::service_role::{AccessRule, ServiceRoleSpec};
use crate::api::service_role_binding::{ServiceRoleBindingSpec, Subject};

use super::Context;
use super::common::*;
use crate::model::rbac;

pub(super) fn check_service_role(spec: &ServiceRoleSpec, ctx: &Context, out: &mut Out) {
    if spec.rules.is_empty() {
        out.err(
            "spec.rules",
            "the ServiceRole has no rules, so it allows nothing: add a rule, e.g. {services: [\"*\"], methods: [\"GET\"]}",
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        check_access_rule(&p, rule, true, out);
        check_rule_services(&p, rule, ctx, out);
    }
}

/// What a rule's `services` reach: a name that is no Service's FQDN
/// grants nothing, and an HTTP-only rule grants nothing on TCP ports.
fn check_rule_services(p: &str, rule: &AccessRule, ctx: &Context, out: &mut Out) {
    if rule.services.is_empty() {
        return;
    }
    for (k, name) in rule.services.iter().enumerate() {
        let one = std::slice::from_ref(name);
        if name != "*" && ctx.services_named(one).is_some_and(|named| named.is_empty()) {
            let hint = if name.contains('.') || name.contains('*') {
                String::new()
            } else {
                format!(" (services are matched by FQDN: write \"{name}.<namespace>.svc.cluster.local\")")
            };
            out.warn(
                format!("{p}.services[{k}]"),
                format!("no Service is named {name:?}, so this rule grants nothing for it yet{hint}"),
            );
        }
    }
    if rbac::rule_is_http_only(rule) {
        let tcp = ctx.tcp_services_named(&rule.services);
        if let Some(first) = tcp.first() {
            let more = if tcp.len() > 1 { format!(" and {} more", tcp.len() - 1) } else { String::new() };
            out.warn(
                p,
                format!(
                    "the rule uses HTTP-only fields (hosts, paths, methods or request.headers), so on the TCP \
                     ports of {first}{more} it is dropped and grants nothing there, as in Istio: write a separate \
                     rule without them for TCP"
                ),
            );
        }
    }
}

/// Constraint keys Istio 1.4 understands; `[...]` marks keys that take a
/// name in brackets.
const CONSTRAINT_KEYS: &[&str] = &[
    "destination.ip",
    "destination.port",
    "destination.labels[",
    "destination.name",
    "destination.namespace",
    "destination.user",
    "request.headers[",
    "experimental.envoy.filters.",
];

/// Property keys Istio 1.4 understands.
const PROPERTY_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.user",
    "request.headers[",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
];

fn is_supported(keys: &[&str], key: &str) -> bool {
    keys.iter().any(|k| match k.strip_suffix('[') {
        Some(base) => key
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('['))
            .is_some_and(|r| r.len() > 1 && r.ends_with(']')),
        None if k.ends_with('.') => key.len() > k.len() && key.starts_with(k),
        None => key == *k,
    })
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

fn check_access_rule(p: &str, rule: &AccessRule, services_required: bool, out: &mut Out) {
    if services_required && rule.services.is_empty() {
        out.err(
            format!("{p}.services"),
            "the rule names no services: list them, e.g. [\"reviews.default.svc.cluster.local\"], or [\"*\"] for \
             every service in the namespace",
        );
    }
    for (field, not_field, both) in [
        ("methods", "notMethods", !rule.methods.is_empty() && !rule.not_methods.is_empty()),
        ("ports", "notPorts", !rule.ports.is_empty() && !rule.not_ports.is_empty()),
    ] {
        if both {
            out.err(
                format!("{p}.{not_field}"),
                format!("{field} and {not_field} are both set, which Istio does not allow: keep one of them"),
            );
        }
    }
    for (field, ports) in [("ports", &rule.ports), ("notPorts", &rule.not_ports)] {
        for (k, port) in ports.iter().enumerate() {
            if !(0..=65535).contains(port) {
                out.err(format!("{p}.{field}[{k}]"), format!("port {port} is out of range: use 0 to 65535"));
            }
        }
    }
    for (field, methods) in [("methods", &rule.methods), ("notMethods", &rule.not_methods)] {
        for (k, m) in methods.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            if *m != upper && METHODS.contains(&upper.as_str()) {
                out.warn(
                    format!("{p}.{field}[{k}]"),
                    format!(
                        "methods are compared exactly, so {m:?} never matches a request: write {upper:?}"
                    ),
                );
            }
        }
    }
    for (j, c) in rule.constraints.iter().enumerate() {
        let cp = format!("{p}.constraints[{j}]");
        let key = c.key.as_deref().unwrap_or("");
        if key.is_empty() {
            out.err(
                format!("{cp}.key"),
                "the constraint has no key: set one, e.g. \"destination.labels[version]\"",
            );
        }
        if c.values.is_empty() {
            out.err(format!("{cp}.values"), "the constraint has no values: list at least one, e.g. [\"v1\"]");
        }
        let duplicate = match key {
            "destination.port" => (!rule.ports.is_empty()).then_some("ports"),
            "request.headers[:path]" => (!rule.paths.is_empty()).then_some("paths"),
            "request.headers[:method]" => (!rule.methods.is_empty()).then_some("methods"),
            "request.headers[:authority]" => (!rule.hosts.is_empty()).then_some("hosts"),
            _ => None,
        };
        if let Some(field) = duplicate {
            out.err(
                format!("{cp}.key"),
                format!("{key} repeats the rule's {field} field: put all the values in {field} and remove this constraint"),
            );
        }
        if !key.is_empty() && !is_supported(CONSTRAINT_KEYS, key) {
            out.warn(
                format!("{cp}.key"),
                format!(
                    "{key:?} is not a supported constraint key, and Istio ignores unsupported keys silently: use \
                     destination.ip, destination.port, destination.labels[<label>], destination.name, \
                     destination.namespace, destination.user or request.headers[<header>]"
                ),
            );
        }
        if key == "destination.port" {
            for (k, v) in c.values.iter().enumerate() {
                if !v.parse::<u32>().is_ok_and(|n| n <= 65535) {
                    out.warn(
                        format!("{cp}.values[{k}]"),
                        format!(
                            "{v:?} is not a port number, so it never matches: write a number from 0 to 65535"
                        ),
                    );
                }
            }
        }
    }
}

pub(super) fn check_binding(spec: &ServiceRoleBindingSpec, namespace: &str, ctx: &Context, out: &mut Out) {
    if spec.subjects.is_empty() {
        out.err(
            "spec.subjects",
            "the binding has no subjects, so it grants the role to no one: add one, e.g. {user: \"*\"}",
        );
    }
    for (i, s) in spec.subjects.iter().enumerate() {
        check_subject(&format!("spec.subjects[{i}]"), s, out);
        if let Some(field) =
            needs_peer_identity(s).filter(|_| ctx.plaintext_namespace(namespace) == Some(true))
        {
            out.warn(
                format!("spec.subjects[{i}].{field}"),
                format!(
                    "mutual TLS is DISABLE in namespace {namespace}, so callers have no certificate and {field} \
                     (read from it) never matches: enable mutual TLS (PERMISSIVE or STRICT), or use ips"
                ),
            );
        }
    }

    let role = spec.role.as_deref().filter(|r| !r.is_empty());
    let given: Vec<&str> = [
        (spec.role_ref.is_some(), "roleRef"),
        (role.is_some(), "role"),
        (!spec.actions.is_empty(), "actions"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if given.is_empty() {
        out.err(
            "spec.roleRef",
            "the binding names no role: set roleRef: {kind: ServiceRole, name: <role>} (or role, or inline actions)",
        );
    } else if given.len() > 1 {
        out.err("spec", format!("{} are all set: give the role one way only", given.join(" and ")));
    }
    if let Some(r) = &spec.role_ref {
        let kind = r.kind.as_deref().unwrap_or("");
        if kind != "ServiceRole" {
            out.err(
                "spec.roleRef.kind",
                format!(
                    "roleRef.kind is {kind:?}, but only \"ServiceRole\" is supported: write kind: ServiceRole"
                ),
            );
        }
        match r.name.as_deref().unwrap_or("") {
            "" => out.err("spec.roleRef.name", "roleRef has no name: name the ServiceRole to grant"),
            name => missing_role(ctx, namespace, name, "spec.roleRef.name", out),
        }
    }
    if let Some(role) = role {
        match role.strip_prefix('/') {
            Some("") => {
                out.err("spec.role", "role \"/\" names no ServiceRole: write \"/<name>\" or \"<name>\"")
            }
            // A mesh-wide role in the root namespace, which the context does not track.
            Some(_) => {}
            None => missing_role(ctx, namespace, role, "spec.role", out),
        }
    }
    for (i, rule) in spec.actions.iter().enumerate() {
        check_access_rule(&format!("spec.actions[{i}]"), rule, false, out);
    }
}

fn missing_role(ctx: &Context, namespace: &str, name: &str, path: &str, out: &mut Out) {
    if ctx.service_role_exists(namespace, name) == Some(false) {
        out.warn(
            path,
            format!(
                "ServiceRole {namespace}/{name} does not exist, so this binding grants nothing: create it in \
                 namespace {namespace}, or fix the name"
            ),
        );
    }
}

/// The first field of a subject that only a caller with a certificate
/// can match (`user: "*"` matches anyone).
fn needs_peer_identity(s: &Subject) -> Option<String> {
    let user = s.user.as_deref().filter(|u| !u.is_empty() && *u != "*" && *u != "allUsers");
    if user.is_some() {
        return Some("user".to_string());
    }
    if !s.names.is_empty() {
        return Some("names".to_string());
    }
    if !s.namespaces.is_empty() {
        return Some("namespaces".to_string());
    }
    ["source.principal", "source.namespace"]
        .into_iter()
        .find(|k| s.properties.get(*k).is_some_and(|v| v != "*"))
        .map(|k| key("properties", k))
}

fn check_subject(p: &str, s: &Subject, out: &mut Out) {
    let empty = s.user.as_deref().unwrap_or("").is_empty()
        && s.group.as_deref().unwrap_or("").is_empty()
        && s.properties.is_empty()
        && s.names.is_empty()
        && s.not_names.is_empty()
        && s.groups.is_empty()
        && s.not_groups.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty()
        && s.ips.is_empty()
        && s.not_ips.is_empty();
    if empty {
        out.err(p, "the subject is empty: set user, names, namespaces, groups, ips or properties (user: \"*\" for anyone)");
    }
    for (field, names) in [("names", &s.names), ("notNames", &s.not_names)] {
        if let Some(k) = names.iter().position(|n| n == "*") {
            out.err(
                format!("{p}.{field}[{k}]"),
                format!("\"*\" is not allowed in {field}: to grant every caller, write user: \"*\" instead"),
            );
        }
    }
    for key_name in s.properties.keys() {
        let kp = key(&format!("{p}.properties"), key_name);
        let duplicate = match key_name.as_str() {
            "source.principal" => (!s.names.is_empty()).then_some("names"),
            "request.auth.claims[groups]" => (!s.groups.is_empty()).then_some("groups"),
            "source.namespace" => (!s.namespaces.is_empty()).then_some("namespaces"),
            "source.ip" => (!s.ips.is_empty()).then_some("ips"),
            _ => None,
        };
        if let Some(field) = duplicate {
            out.err(
                &kp,
                format!("{key_name} repeats the subject's {field} field: put the value in {field} and remove this property"),
            );
        }
        if !is_supported(PROPERTY_KEYS, key_name) {
            out.warn(
                kp,
                format!(
                    "{key_name:?} is not a supported property key, and Istio ignores unsupported keys silently: use \
                     source.ip, source.namespace, source.principal, request.headers[<header>], \
                     request.auth.principal, request.auth.audiences, request.auth.presenter or \
                     request.auth.claims[<claim>]"
                ),
            );
        }
    }
}

pub(super) fn check_rbac_config(spec: &RbacConfigSpec, out: &mut Out) {
    let mode = spec.mode.unwrap_or_default();
    if mode == RbacConfigMode::OnWithInclusion && spec.inclusion.is_none() {
        out.err(
            "spec.inclusion",
            "mode ON_WITH_INCLUSION needs inclusion: list the services or namespaces to enforce RBAC for, e.g. \
             inclusion: {namespaces: [\"default\"]} (inclusion: {} for none)",
        );
    }
    if mode == RbacConfigMode::OnWithExclusion && spec.exclusion.is_none() {
        out.err(
            "spec.exclusion",
            "mode ON_WITH_EXCLUSION needs exclusion: list the services or namespaces to exempt, e.g. exclusion: \
             {namespaces: [\"istio-system\"]} (exclusion: {} for none)",
        );
    }
    if let Some(inc) = &spec.inclusion {
        if mode != RbacConfigMode::OnWithInclusion {
            out.warn(
                "spec.inclusion",
                "inclusion is ignored unless mode is ON_WITH_INCLUSION: set that mode, or remove inclusion",
            );
        } else if inc.services.is_empty() && inc.namespaces.is_empty() {
            out.warn(
                "spec.inclusion",
                "inclusion lists no services or namespaces, so RBAC is enforced nowhere: list some, or set mode OFF",
            );
        }
    }
    if spec.exclusion.is_some() && mode != RbacConfigMode::OnWithExclusion {
        out.warn(
            "spec.exclusion",
            "exclusion is ignored unless mode is ON_WITH_EXCLUSION: set that mode, or remove exclusion",
        );
    }
}
