//! Host names as Istio configuration writes them, and what they mean. One
//! grammar for every reader: validation (its warnings), status, the index's
//! mesh view and translation (what Envoy gets) all resolve and compare
//! hosts with these functions, so a warning cannot contradict the routes.
//!
//! Resolving a host written in an object of namespace `ns`:
//! - Case does not matter (DNS names are case-insensitive): `Reviews` is
//!   `reviews`. One trailing dot (an absolute name) is dropped:
//!   `reviews.prod.svc.cluster.local.` is `reviews.prod.svc.cluster.local`.
//! - A name without a dot is a Service of the object's namespace:
//!   `reviews` is `reviews.<ns>.svc.cluster.local` (as in Istio).
//! - `name.other.svc` is completed with the cluster domain:
//!   `reviews.prod.svc` is `reviews.prod.svc.cluster.local`.
//! - `name.other` is Service `name` of namespace `other` when that Service
//!   exists (the resolver is told which FQDNs are Services), and a DNS
//!   name as written otherwise: `reviews.prod` is
//!   `reviews.prod.svc.cluster.local` when Service `prod/reviews` exists,
//!   but `example.com` stays `example.com`. Istio itself completes only
//!   dotless names; `name.ns` is completed here because it is a name the
//!   Service answers to in the cluster's DNS.
//! - Wildcards (`*`, `*.example.com`), IP addresses and anything longer are
//!   kept as written (lower case).
//!
//! The cluster domain is [`CLUSTER_DOMAIN`]; Service names are
//! `<name>.<namespace>.svc.cluster.local` everywhere in the mesh.
//!
//! Comparing names ([`matches`], [`subset_of`]) follows Istio's
//! `host.Name`: a leading `*` matches any prefix, so `*.example.com` covers
//! `a.example.com` and `*` covers everything. They compare names as given:
//! resolve names first where Istio does.

use std::net::IpAddr;

/// The DNS suffix of Services (`<name>.<ns>.svc.<domain>`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The fully qualified name of Service `name` in `namespace`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Whether a host is a wildcard (`*` or `*.suffix`).
pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// Whether a host is an IP address rather than a name.
pub fn is_ip(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// A host as written, in lower case and without one trailing dot, but
/// not completed: where Istio compares names as written (a Sidecar's
/// egress hosts), a short name stays short.
pub fn normalize(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Resolves a host as written in an object of `namespace`, by the rules in
/// this module's documentation. `is_service` says whether an FQDN names a
/// known Service; it decides the `name.ns` form only.
pub fn resolve(host: &str, namespace: &str, is_service: impl Fn(&str) -> bool) -> String {
    let host = normalize(host);
    if host.is_empty() || is_wildcard(&host) || is_ip(&host) {
        return host;
    }
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] => service_fqdn(name, namespace),
        [_, _, "svc"] => format!("{host}.{CLUSTER_DOMAIN}"),
        [name, ns] => {
            let candidate = service_fqdn(name, ns);
            if is_service(&candidate) { candidate } else { host }
        }
        _ => host,
    }
}

/// Istio's `host.Name.Matches`: the two names (either may be a wildcard)
/// have hosts in common.
pub fn matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b) || b.ends_with(a),
        (Some(suffix), None) => b.ends_with(suffix),
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every host `a` names is named by `b`.
pub fn subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b),
        (Some(_), None) => false,
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_relative_to_the_namespace() {
        let known = |h: &str| h == "reviews.prod.svc.cluster.local";
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            ("Reviews", "default", "reviews.default.svc.cluster.local"),
            ("reviews.", "default", "reviews.default.svc.cluster.local"),
            ("reviews.prod", "default", "reviews.prod.svc.cluster.local"),
            ("Reviews.Prod.", "default", "reviews.prod.svc.cluster.local"),
            // No such Service: a DNS name as written.
            ("ratings.prod", "default", "ratings.prod"),
            ("example.com", "default", "example.com"),
            ("reviews.prod.svc", "default", "reviews.prod.svc.cluster.local"),
            ("ratings.prod.svc", "default", "ratings.prod.svc.cluster.local"),
            ("reviews.prod.svc.cluster.local.", "x", "reviews.prod.svc.cluster.local"),
            ("*.prod.svc.cluster.local", "x", "*.prod.svc.cluster.local"),
            ("*.Example.com", "x", "*.example.com"),
            ("*", "x", "*"),
            ("10.0.0.1", "x", "10.0.0.1"),
            ("::1", "x", "::1"),
            ("", "x", ""),
        ];
        for (written, namespace, resolved) in cases {
            assert_eq!(resolve(written, namespace, known), resolved, "{written:?} in {namespace}");
        }
    }

    #[test]
    fn wildcards_match_and_nest_as_in_istio() {
        assert!(matches("*", "a.b.svc.cluster.local"));
        assert!(matches("*.b.svc.cluster.local", "a.b.svc.cluster.local"));
        assert!(matches("a.b.svc.cluster.local", "*.b.svc.cluster.local"));
        assert!(!matches("*.b.svc.cluster.local", "a.c.svc.cluster.local"));
        assert!(matches("*.com", "*.example.com") && matches("*.example.com", "*.com"));
        assert!(matches("a.b", "a.b") && !matches("a.b", "a.bc"));
        assert!(!matches("a.example.com", "b.example.com"));

        assert!(subset_of("a.example.com", "*.example.com"));
        assert!(subset_of("*.a.example.com", "*.example.com"));
        assert!(!subset_of("*.example.com", "*.a.example.com"));
        assert!(!subset_of("*.example.com", "a.example.com"));
        assert!(subset_of("anything", "*"));
    }
}
