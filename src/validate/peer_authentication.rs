//! security.istio.io PeerAuthentication, as today's Istio validates it
//! (selector keys, port-level settings only with a selector, ports 1-65535),
//! plus warnings for what Istio silently ignores: an empty selector, a
//! selector in the root namespace, and a second policy for the same
//! namespace (or the mesh), of which only the oldest applies.

use crate::api::peer_authentication::PeerAuthenticationSpec;

use super::Context;
use super::common::*;

pub(super) fn check(spec: &PeerAuthenticationSpec, namespace: &str, ctx: &Context, out: &mut Out) {
    let root = ctx.root_namespace.as_deref();
    let in_root = root == Some(namespace);
    let has_labels = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    if let Some(selector) = &spec.selector {
        check_selector_labels(&selector.match_labels, in_root, out);
        if in_root && !selector.match_labels.is_empty() {
            out.warn(
                "spec.selector",
                format!(
                    "Istio ignores a PeerAuthentication with a selector in the root namespace {namespace}: \
                     move it to the namespace of the workloads it selects, or remove the selector to make \
                     it mesh-wide"
                ),
            );
        }
    }
    if !spec.port_level_mtls.is_empty() && !has_labels {
        out.err(
            "spec.portLevelMtls",
            "portLevelMtls needs a selector with matchLabels: a namespace-wide or mesh-wide policy cannot \
             set ports (Istio rejects it); add spec.selector.matchLabels, or move the ports to a policy \
             that selects the workloads",
        );
    }
    for port in spec.port_level_mtls.keys() {
        let field = key("spec.portLevelMtls", port);
        match port.parse::<u64>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            Ok(n) => out.err(field, format!("port {n} is out of range: use a port number from 1 to 65535")),
            Err(_) => out.err(
                field,
                format!(
                    "{port:?} is not a port number: key portLevelMtls by the workload's port, e.g. \"8080\""
                ),
            ),
        }
    }
}

/// The warning for a second PeerAuthentication without a selector in one
/// namespace: Istio applies the oldest only.
pub(super) fn check_siblings(
    spec: &PeerAuthenticationSpec,
    namespace: &str,
    name: &str,
    ctx: &Context,
    out: &mut Out,
) {
    let has_labels = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    if has_labels {
        return;
    }
    let Some(others) = ctx.namespace_wide_peer_authentications(namespace) else { return };
    // This object's own age, if the cluster holds it (an update); a new one is the newest.
    let own = others.iter().find(|(n, _)| n == name).map(|(_, created)| created.clone()).unwrap_or(None);
    let order = |n: &str, created: &Option<String>| (created.is_none(), created.clone(), n.to_string());
    let mut all: Vec<(String, Option<String>)> = others.iter().filter(|(n, _)| n != name).cloned().collect();
    if all.is_empty() {
        return;
    }
    all.push((name.to_string(), own));
    all.sort_by_key(|(n, created)| order(n, created));
    let winner = &all[0].0;
    // Short: the API server cuts warnings at 256 characters, names included.
    let scope = if ctx.root_namespace.as_deref() == Some(namespace) {
        "the root namespace (mesh-wide)"
    } else {
        "this namespace"
    };
    let others: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).filter(|n| *n != name).collect();
    let others = others.join(", ");
    let verdict = if winner == name {
        format!("this one applies, being the oldest; Istio ignores {others}")
    } else {
        format!("Istio applies only the oldest, {winner}, and ignores this one")
    };
    out.warn(
        "spec",
        format!(
            "PeerAuthentication {others} also has no selector in {scope}: {verdict}. Keep one per \
             namespace: delete or merge the others"
        ),
    );
}
