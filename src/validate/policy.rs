//! authentication.istio.io Policy and MeshPolicy (Istio 1.1), as Istio's
//! `ValidateAuthenticationPolicy` checked them: the name rules (`default`
//! means the whole namespace or mesh and takes no targets), target names
//! and ports, and the JWTs of peers and origins; plus warnings for what
//! Istio silently ignores: peer entries after the first mtls one, peer
//! JWTs, and a second Policy for the same Service port, of which only the
//! first by name applies.

use std::collections::BTreeSet;

use crate::api::policy::{Jwt, PolicySpec, PortSelector};
use crate::model::mtls::MESH_POLICY_NAME;

use super::Context;
use super::common::*;

/// The rules both kinds share; `cluster_scoped` for MeshPolicy.
pub(super) fn check(spec: &PolicySpec, cluster_scoped: bool, out: &mut Out) {
    if cluster_scoped && !spec.targets.is_empty() {
        out.err(
            "spec.targets",
            "a MeshPolicy applies to the whole mesh and cannot have targets (Istio rejects it): remove \
             targets, or put them in a Policy in the Services' namespace",
        );
    }
    for (i, target) in spec.targets.iter().enumerate() {
        let p = format!("spec.targets[{i}]");
        if !is_dns1123_label(&target.name) {
            out.err(
                format!("{p}.name"),
                format!(
                    "target name {:?} is not a Service's short name: write the name of a Service in the \
                     policy's namespace, e.g. \"reviews\"",
                    target.name
                ),
            );
        }
        if !target.labels.is_empty() {
            out.warn(
                format!("{p}.labels"),
                "Istio never implemented target labels and ignores them: the target applies to every \
                 workload of the Service; remove labels",
            );
        }
        for (j, port) in target.ports.iter().enumerate() {
            check_port_selector(&format!("{p}.ports[{j}]"), port, out);
        }
    }

    let mut mtls_seen = false;
    for (i, peer) in spec.peers.iter().enumerate() {
        let p = format!("spec.peers[{i}]");
        if peer.mtls.is_some() && peer.jwt.is_some() {
            out.err(&p, "mtls and jwt are both set: a peer entry is one method, write two entries");
        }
        match (&peer.mtls, &peer.jwt) {
            (Some(_), _) if mtls_seen => out.warn(
                format!("{p}.mtls"),
                "only the first mtls entry of peers is used; this one is ignored: keep one mtls entry",
            ),
            (Some(_), _) => mtls_seen = true,
            (None, Some(_)) => out.warn(
                format!("{p}.jwt"),
                "Istio never made JWT available as a peer method and ignores it: authenticate end users \
                 with origins: [{jwt: ...}] instead",
            ),
            // What `- mtls:` (no value) becomes through a client-side
            // `kubectl apply`, which drops null values before sending.
            (None, None) => out.warn(
                p,
                "the peer entry sets no method and is ignored, so it asks for no mutual TLS (kubectl apply \
                 drops an `mtls:` written without a value): write `mtls: {}` for mutual TLS, or remove it",
            ),
        }
    }

    let mut issuers = BTreeSet::new();
    let jwts = spec
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.jwt.as_ref().map(|j| (format!("spec.peers[{i}].jwt"), j)))
        .chain(
            spec.origins
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.jwt.as_ref().map(|j| (format!("spec.origins[{i}].jwt"), j))),
        );
    for (p, jwt) in jwts {
        check_jwt(&p, jwt, out);
        let issuer = jwt.issuer.clone().unwrap_or_default();
        if !issuer.is_empty() && !issuers.insert(issuer.clone()) {
            out.err(
                format!("{p}.issuer"),
                format!(
                    "a JWT of issuer {issuer:?} is already defined in this policy: list each issuer once"
                ),
            );
        }
    }
    for (i, origin) in spec.origins.iter().enumerate() {
        let no_keys = |j: &Jwt| {
            j.jwks_uri.as_deref().unwrap_or_default().is_empty()
                && j.jwks.as_deref().unwrap_or_default().is_empty()
        };
        if origin.jwt.as_ref().is_some_and(no_keys) {
            out.warn(
                format!("spec.origins[{i}].jwt"),
                "the JWT has neither jwksUri nor jwks, so every token of its issuer is refused (401): mesh does \
                 not discover keys from the issuer's OpenID configuration as Istio does; set jwksUri",
            );
        }
        if origin.jwt.is_none() {
            out.err(
                format!("spec.origins[{i}]"),
                "the origin sets no jwt: give it one, e.g. {jwt: {issuer: \"https://example.com\", jwksUri: \
                 \"https://example.com/.well-known/jwks.json\"}}, or remove it",
            );
        }
    }
}

fn check_port_selector(p: &str, port: &PortSelector, out: &mut Out) {
    if port.number.is_some() && port.name.is_some() {
        out.err(p, "number and name are both set: select the Service port by one of them");
    }
    match (&port.number, &port.name) {
        (Some(n), _) => check_port(out, &format!("{p}.number"), i64::from(*n)),
        (None, Some(name)) if is_dns1123_label(name) => {}
        (None, Some(name)) => out.err(
            format!("{p}.name"),
            format!("port name {name:?} is not a valid name: write the Service port's name, e.g. \"http\""),
        ),
        (None, None) => out.err(
            p,
            "the port selector is empty: name the Service port by number ({number: 9080}) or name ({name: http})",
        ),
    }
}

fn check_jwt(p: &str, jwt: &Jwt, out: &mut Out) {
    if jwt.issuer.as_deref().unwrap_or_default().is_empty() {
        out.err(
            format!("{p}.issuer"),
            "the JWT has no issuer: set it to the tokens' iss claim, e.g. \"https://securetoken.google.com\"",
        );
    }
    for (i, audience) in jwt.audiences.iter().enumerate() {
        if audience.is_empty() {
            out.err(format!("{p}.audiences[{i}]"), "an audience is empty: write one, or remove the entry");
        }
    }
    if let Some(uri) = jwt.jwks_uri.as_deref().filter(|u| !u.is_empty()) {
        let host = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://")).unwrap_or_default();
        let host = host.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() {
            out.err(
                format!("{p}.jwksUri"),
                format!(
                    "{uri:?} is not an http(s) URL with a host: write e.g. \
                     \"https://example.com/.well-known/jwks.json\""
                ),
            );
        }
    }
    if let Some(jwks) = jwt.jwks.as_deref().filter(|j| !j.is_empty())
        && let Err(problem) = crate::model::jwt::check_key_set(jwks)
    {
        out.err(
            format!("{p}.jwks"),
            format!("the key set is not a JSON Web Key Set ({problem}): write {{\"keys\": [...]}}"),
        );
    }
    for (i, rule) in jwt.trigger_rules.iter().enumerate() {
        for (field, matches) in
            [("excludedPaths", &rule.excluded_paths), ("includedPaths", &rule.included_paths)]
        {
            for (j, m) in matches.iter().enumerate() {
                let kinds: Vec<&str> = [
                    (m.exact.is_some(), "exact"),
                    (m.prefix.is_some(), "prefix"),
                    (m.suffix.is_some(), "suffix"),
                    (m.regex.is_some(), "regex"),
                ]
                .into_iter()
                .filter_map(|(set, k)| set.then_some(k))
                .collect();
                if kinds.len() > 1 {
                    out.err(
                        format!("{p}.triggerRules[{i}].{field}[{j}]"),
                        format!(
                            "{} are {} set: use only one of exact, prefix, suffix and regex",
                            kinds.join(" and "),
                            if kinds.len() == 2 { "both" } else { "all" }
                        ),
                    );
                }
            }
        }
    }
    for (field, values, what) in
        [("jwtHeaders", &jwt.jwt_headers, "header"), ("jwtParams", &jwt.jwt_params, "query parameter")]
    {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                out.err(
                    format!("{p}.{field}[{i}]"),
                    format!("the {what} name is empty: write one, or remove it"),
                );
            }
        }
    }
}

/// The name rules of a namespaced Policy, which depend on its targets.
pub(super) fn check_policy_name(spec: &PolicySpec, name: &str, out: &mut Out) {
    if spec.targets.is_empty() && name != MESH_POLICY_NAME {
        out.err(
            "metadata.name",
            format!(
                "a Policy without targets applies to its whole namespace and must be named \"default\", not \
                 {name:?} (Istio rejects it): rename it, or add targets"
            ),
        );
    }
    if !spec.targets.is_empty() && name == MESH_POLICY_NAME {
        out.err(
            "spec.targets",
            "the Policy named \"default\" is the namespace-wide one and cannot have targets (Istio rejects it): \
             remove targets, or give this Policy another name",
        );
    }
}

/// The warning for a second Policy naming the same Service port: Istio 1.1
/// applies the first by name.
pub(super) fn check_siblings(spec: &PolicySpec, namespace: &str, name: &str, ctx: &Context, out: &mut Out) {
    let Some(others) = ctx.targeted_policies(namespace) else { return };
    for (i, target) in spec.targets.iter().enumerate() {
        let ports: Vec<String> = target.ports.iter().map(port_ref).collect();
        let overlapping: Vec<&str> = others
            .iter()
            .filter(|(other, _)| other != name)
            .filter(|(_, targets)| {
                targets.iter().any(|(service, other_ports)| {
                    *service == target.name
                        && (ports.is_empty()
                            || other_ports.is_empty()
                            || ports.iter().any(|p| other_ports.contains(p)))
                })
            })
            .map(|(other, _)| other.as_str())
            .collect();
        if overlapping.is_empty() {
            continue;
        }
        let mut all: Vec<&str> = overlapping.clone();
        all.push(name);
        all.sort();
        // Short: the API server cuts warnings at 256 characters, names included.
        let verdict = if all[0] == name {
            "this one applies, being first by name".to_string()
        } else {
            format!("Istio 1.1 applies only the first by name, {}, there", all[0])
        };
        out.warn(
            format!("spec.targets[{i}]"),
            format!(
                "Policy {} also targets Service {} on the same ports: {verdict}. Target each Service port \
                 from one Policy",
                overlapping.join(", "),
                target.name
            ),
        );
    }
}

/// A port selector as the context keeps it: `9080` or `name:http`.
pub(super) fn port_ref(p: &PortSelector) -> String {
    match (&p.number, &p.name) {
        (Some(n), _) => n.to_string(),
        (None, Some(name)) => format!("name:{name}"),
        (None, None) => String::new(),
    }
}
