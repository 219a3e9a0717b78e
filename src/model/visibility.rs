//! Who sees a piece of configuration, and what a host name in it means.
//!
//! `exportTo`, as Istio defines it: `"*"` exports to every namespace, `"."`
//! to the object's own, `"~"` to none, any other entry names a namespace.
//! No `exportTo` means every namespace (Istio's default mesh setting).
//!
//! Host names in VirtualServices and DestinationRules resolve relative to
//! the object's namespace: `reviews` is `reviews.<ns>.svc.cluster.local`.
//! Istio expands only names without a dot; here `reviews.prod` and
//! `reviews.prod.svc` are also completed when such a Service exists, since
//! those are the names a sidecar answers to anyway.

use std::collections::BTreeSet;

use serde::Serialize;

/// The DNS suffix of Services (`<name>.<ns>.svc.<domain>`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The namespaces a configuration object is visible to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportTo {
    all: bool,
    namespaces: BTreeSet<String>,
}

impl ExportTo {
    /// Reads an `exportTo` list of an object in `namespace`.
    pub fn parse(export_to: &[String], namespace: &str) -> Self {
        if export_to.is_empty() {
            return Self::everywhere();
        }
        let mut out = Self::default();
        for entry in export_to {
            match entry.as_str() {
                "*" => out.all = true,
                "." => {
                    out.namespaces.insert(namespace.to_string());
                }
                "~" => {}
                other => {
                    out.namespaces.insert(other.to_string());
                }
            }
        }
        out
    }

    pub fn everywhere() -> Self {
        Self { all: true, namespaces: BTreeSet::new() }
    }

    pub fn visible_to(&self, namespace: &str) -> bool {
        self.all || self.namespaces.contains(namespace)
    }
}

/// The fully qualified name of Service `name` in `namespace`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Resolves a host as written in an object of `namespace`. `is_service`
/// says whether an FQDN names a known Service, for the `name.ns` form.
/// Wildcards (`*`, `*.example.com`) are returned unchanged.
pub fn resolve_host(host: &str, namespace: &str, is_service: impl Fn(&str) -> bool) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.starts_with('*') {
        return host;
    }
    let dots = host.matches('.').count();
    if dots == 0 {
        return service_fqdn(&host, namespace);
    }
    if host.ends_with(".svc") && dots == 2 {
        return format!("{host}.{CLUSTER_DOMAIN}");
    }
    if dots == 1 {
        let candidate = format!("{host}.svc.{CLUSTER_DOMAIN}");
        if is_service(&candidate) {
            return candidate;
        }
    }
    host
}

/// Whether `pattern` (an FQDN or a `*.suffix` / `*` wildcard) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => suffix.is_empty() || (host.ends_with(suffix) && host.len() > suffix.len()),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_to_follows_istio() {
        let default = ExportTo::parse(&[], "a");
        assert!(default.visible_to("a") && default.visible_to("b"));
        let own = ExportTo::parse(&strings(&["."]), "a");
        assert!(own.visible_to("a") && !own.visible_to("b"));
        let listed = ExportTo::parse(&strings(&[".", "c"]), "a");
        assert!(listed.visible_to("a") && listed.visible_to("c") && !listed.visible_to("b"));
        let all = ExportTo::parse(&strings(&["*"]), "a");
        assert!(all.visible_to("z"));
        let none = ExportTo::parse(&strings(&["~"]), "a");
        assert!(!none.visible_to("a"));
    }

    #[test]
    fn hosts_resolve_relative_to_the_namespace() {
        let known = |h: &str| h == "reviews.prod.svc.cluster.local";
        assert_eq!(resolve_host("reviews", "default", known), "reviews.default.svc.cluster.local");
        assert_eq!(resolve_host("Reviews.prod", "default", known), "reviews.prod.svc.cluster.local");
        assert_eq!(resolve_host("reviews.prod.svc", "default", known), "reviews.prod.svc.cluster.local");
        assert_eq!(resolve_host("example.com", "default", known), "example.com");
        assert_eq!(
            resolve_host("reviews.prod.svc.cluster.local.", "x", known),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(resolve_host("*.prod.svc.cluster.local", "x", known), "*.prod.svc.cluster.local");
    }

    #[test]
    fn wildcards_cover_suffixes() {
        assert!(host_matches("*", "a.b.svc.cluster.local"));
        assert!(host_matches("*.b.svc.cluster.local", "a.b.svc.cluster.local"));
        assert!(!host_matches("*.b.svc.cluster.local", "a.c.svc.cluster.local"));
        assert!(host_matches("a.b", "a.b") && !host_matches("a.b", "a.bc"));
    }
}
