//! Which `Sidecar` applies to a proxy, and which Services and
//! VirtualServices its egress listeners import: Istio's `SidecarScope`
//! (pilot/pkg/model/sidecar.go), for the parts the mesh applies.
//!
//! Which Sidecar applies to a proxy in namespace `ns` (Istio's
//! `getSidecarScope`): the oldest Sidecar of `ns` whose `workloadSelector`
//! selects the pod; else the oldest of `ns` without a selector; else the
//! oldest without a selector in the root namespace (MeshConfig
//! `rootNamespace`); else none, and the proxy sees every Service exported
//! to its namespace. "Oldest" is [`Config::age_order`].
//!
//! What an egress listener imports: its `hosts` are `namespace/host`;
//! `.` is the proxy's namespace (also for a Sidecar of the root
//! namespace, which Istio converts once per namespace it applies to), `*`
//! any namespace, `~` none. A Service of namespace `n` is imported when it
//! falls within (Istio's `SubsetOf`) a host listed for `n`, or, when no
//! host names `n`, one listed for `*`: Istio's `selectServices`. A
//! VirtualService of namespace `n` is imported when one of its hosts has
//! names in common (Istio's `Matches`) with a host listed for `n` or for
//! `*` (both, in Istio's `SelectVirtualServices`).
//! A Sidecar without egress imports like one listener `*/*`.
//!
//! An egress listener with a `port` imports Services on that port only;
//! a port is served by the first listener naming it, else by the one
//! without a port.
//!
//! Ingress listeners ([`IngressListener`]), when a Sidecar has any, are
//! the pod's inbound ports in place of those of the Services selecting it
//! (Istio's `buildInboundClustersFromSidecar`): each its port number and
//! protocol, and where its traffic goes (`defaultEndpoint`); its
//! `connectionPool` (else `inboundConnectionPool`, which also applies to the
//! Services' ports) limits its inbound cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::host;
use super::mesh::ServiceView;
use super::protocol::Protocol;
use super::{Config, ObjectKey, OutboundTrafficPolicy, Store};
use crate::api::destination_rule::ConnectionPoolSettings;
use crate::api::sidecar::{OutboundMode, SidecarSpec};

/// One egress host entry, `namespace/host`.
#[derive(Clone, Debug, PartialEq)]
struct EgressHost {
    /// `*`, `.`, `~` or a namespace name, as written.
    namespace: String,
    /// Lower case, without a trailing dot, not completed ([`host::normalize`]).
    host: String,
}

/// One egress listener of a Sidecar.
#[derive(Clone, Debug, PartialEq)]
struct EgressListener {
    /// The port it is for; None: every port no other listener names.
    port: Option<u16>,
    hosts: Vec<EgressHost>,
}

impl EgressListener {
    /// The hosts this listener lists for objects of `namespace`, for a
    /// proxy in `proxy_namespace`: those naming the namespace, else those
    /// for any namespace (Istio keys hosts by namespace and falls back to `*`).
    fn hosts_for<'a>(&'a self, namespace: &str, proxy_namespace: &str) -> Vec<&'a str> {
        let names = |h: &EgressHost| {
            let ns = if h.namespace == "." { proxy_namespace } else { h.namespace.as_str() };
            ns == namespace
        };
        let named: Vec<&str> = self.hosts.iter().filter(|h| names(h)).map(|h| h.host.as_str()).collect();
        if !named.is_empty() {
            return named;
        }
        self.hosts.iter().filter(|h| h.namespace == "*").map(|h| h.host.as_str()).collect()
    }

    /// Whether Service `hostname` of `namespace` is imported.
    fn imports_service(&self, namespace: &str, hostname: &str, proxy_namespace: &str) -> bool {
        self.hosts_for(namespace, proxy_namespace).iter().any(|h| host::subset_of(hostname, h))
    }
}

/// One inbound port a Sidecar declares for its workloads.
#[derive(Clone, Debug, PartialEq)]
pub struct IngressListener {
    pub port: u16,
    /// As `port.protocol` names it (TCP when it names none Istio knows).
    pub protocol: Protocol,
    /// Where its traffic goes; None: where it was sent (the pod's address
    /// and this port), as Istio's ORIGINAL_DST without a `defaultEndpoint`.
    pub endpoint: Option<DefaultEndpoint>,
    /// Its own `connectionPool`, else the Sidecar's `inboundConnectionPool`.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// A `defaultEndpoint`: the application's port on loopback or on the pod's
/// own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultEndpoint {
    /// `127.0.0.1:PORT` (`ipv6`: `[::1]:PORT`).
    Loopback { ipv6: bool, port: u16 },
    /// `0.0.0.0:PORT` (`ipv6`: `[::]:PORT`): the pod's address.
    Pod { ipv6: bool, port: u16 },
}

impl DefaultEndpoint {
    /// Reads a `defaultEndpoint`; None for a `unix://` path (not applied)
    /// or anything validation refuses.
    pub fn parse(value: &str) -> Option<Self> {
        let (host, port) = value.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        match host {
            "127.0.0.1" => Some(Self::Loopback { ipv6: false, port }),
            "[::1]" => Some(Self::Loopback { ipv6: true, port }),
            "0.0.0.0" => Some(Self::Pod { ipv6: false, port }),
            "[::]" => Some(Self::Pod { ipv6: true, port }),
            _ => None,
        }
    }

    /// The address and port traffic goes to, for a pod at `pod_ip`: a pod
    /// without an address of the family asked for is reached on loopback,
    /// as in Istio.
    pub fn address(self, pod_ip: Option<&str>) -> (String, u16) {
        let is_v6 = |ip: &&str| ip.contains(':');
        match self {
            Self::Loopback { ipv6: false, port } => ("127.0.0.1".into(), port),
            Self::Loopback { ipv6: true, port } => ("::1".into(), port),
            Self::Pod { ipv6, port } => match pod_ip.filter(|ip| is_v6(ip) == ipv6) {
                Some(ip) => (ip.to_string(), port),
                None if ipv6 => ("::1".into(), port),
                None => ("127.0.0.1".into(), port),
            },
        }
    }
}

/// A Sidecar, as far as the mesh applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarView {
    pub key: ObjectKey,
    /// The pod labels it selects on; None: the whole namespace.
    selector: Option<BTreeMap<String, String>>,
    /// Never empty: a Sidecar without egress has one listener `*/*`.
    egress: Vec<EgressListener>,
    /// The pod's inbound ports, when set; a listener whose endpoint is a
    /// `unix://` path is left out (not applied: status says so).
    pub ingress: Vec<IngressListener>,
    /// `inboundConnectionPool`: the limits of every inbound port that has
    /// none of its own, the Services' ports included.
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// `outboundTrafficPolicy.mode`, replacing the mesh's for its proxies.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

impl SidecarView {
    fn of(config: &Config<SidecarSpec>) -> Self {
        let mut egress: Vec<EgressListener> = config
            .spec
            .egress
            .iter()
            .map(|listener| EgressListener {
                port: listener.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok()),
                // Validation rejects a host without a namespace; one that
                // got in anyway imports nothing, as Istio skips it.
                hosts: listener
                    .hosts
                    .iter()
                    .filter_map(|h| h.split_once('/'))
                    .map(|(ns, h)| EgressHost { namespace: ns.to_string(), host: host::normalize(h) })
                    .collect(),
            })
            .collect();
        if egress.is_empty() {
            egress.push(EgressListener {
                port: None,
                hosts: vec![EgressHost { namespace: "*".into(), host: "*".into() }],
            });
        }
        let ingress = config
            .spec
            .ingress
            .iter()
            .filter_map(|listener| {
                let port = listener.port.as_ref()?;
                let number = port.number.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0)?;
                let protocol = port.protocol.as_deref().and_then(Protocol::parse).unwrap_or(Protocol::Tcp);
                let endpoint = match listener.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
                    None => None,
                    Some(e) => Some(DefaultEndpoint::parse(e)?),
                };
                let connection_pool =
                    listener.connection_pool.clone().or_else(|| config.spec.inbound_connection_pool.clone());
                Some(IngressListener { port: number, protocol, endpoint, connection_pool })
            })
            .collect();
        Self {
            key: config.key.clone(),
            selector: config.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            egress,
            ingress,
            inbound_connection_pool: config.spec.inbound_connection_pool.clone(),
            outbound_traffic_policy: config.spec.outbound_traffic_policy.as_ref().and_then(|p| p.mode).map(
                |mode| match mode {
                    OutboundMode::AllowAny => OutboundTrafficPolicy::AllowAny,
                    OutboundMode::RegistryOnly => OutboundTrafficPolicy::RegistryOnly,
                },
            ),
        }
    }

    /// The egress listener that serves `port`: the first naming it, else
    /// the one without a port (None when there is neither).
    fn listener_for(&self, port: u16) -> Option<&EgressListener> {
        self.egress
            .iter()
            .find(|l| l.port == Some(port))
            .or_else(|| self.egress.iter().find(|l| l.port.is_none()))
    }

    /// Whether a proxy in `proxy_namespace` gets listener chains and routes
    /// for `port` of Service `hostname` (of `namespace`).
    pub fn listens(&self, proxy_namespace: &str, namespace: &str, hostname: &str, port: u16) -> bool {
        self.listener_for(port).is_some_and(|l| l.imports_service(namespace, hostname, proxy_namespace))
    }

    /// Whether some egress listener imports `port` of Service `hostname`
    /// (of `namespace`): the proxy gets its clusters.
    pub fn imports(&self, proxy_namespace: &str, namespace: &str, hostname: &str, port: u16) -> bool {
        self.egress
            .iter()
            .filter(|l| l.port.is_none_or(|p| p == port))
            .any(|l| l.imports_service(namespace, hostname, proxy_namespace))
    }

    /// Whether some egress listener imports a VirtualService of
    /// `namespace` with `hosts` (resolved): by the hosts listed for its
    /// namespace and, unlike a Service, also by those for any namespace
    /// (Istio's `SelectVirtualServices` checks both).
    pub fn imports_virtual_service(&self, proxy_namespace: &str, namespace: &str, hosts: &[String]) -> bool {
        self.egress.iter().any(|l| {
            let names = |h: &&EgressHost| {
                h.namespace == "*"
                    || (if h.namespace == "." { proxy_namespace } else { &h.namespace }) == namespace
            };
            let imported: Vec<&str> = l.hosts.iter().filter(names).map(|h| h.host.as_str()).collect();
            hosts.iter().any(|vh| imported.iter().any(|ih| host::matches(vh, ih)))
        })
    }
}

/// Every Sidecar, arranged to find the one that applies to a proxy.
#[derive(Clone, Debug, Default)]
pub struct SidecarScopes {
    by_key: HashMap<ObjectKey, Arc<SidecarView>>,
    /// Per namespace, the Sidecars with a selector, oldest first.
    selecting: HashMap<String, Vec<Arc<SidecarView>>>,
    /// Per namespace, the oldest Sidecar without a selector.
    namespace_wide: HashMap<String, Arc<SidecarView>>,
    root_namespace: String,
}

impl SidecarScopes {
    pub fn build(sidecars: &Store<Config<SidecarSpec>>, root_namespace: &str) -> Self {
        let mut by_age: Vec<&Config<SidecarSpec>> = sidecars.values().collect();
        by_age.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
        let mut out = SidecarScopes { root_namespace: root_namespace.to_string(), ..Default::default() };
        for config in by_age {
            let view = Arc::new(SidecarView::of(config));
            let namespace = config.key.namespace.clone();
            if view.selector.is_some() {
                out.selecting.entry(namespace).or_default().push(view.clone());
            } else {
                // The oldest wins; validation warns about the others.
                out.namespace_wide.entry(namespace).or_insert_with(|| view.clone());
            }
            out.by_key.insert(config.key.clone(), view);
        }
        out
    }

    /// The Sidecar that applies to a pod with `labels` in `namespace`.
    pub fn applying(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<&SidecarView> {
        let selected =
            self.selecting.get(namespace).into_iter().flatten().find(|s| {
                s.selector.as_ref().is_some_and(|selector| super::mesh::is_subset(selector, labels))
            });
        selected
            .or_else(|| self.namespace_wide.get(namespace))
            .or_else(|| self.namespace_wide.get(&self.root_namespace))
            .map(Arc::as_ref)
    }

    /// A Sidecar by its key (as a [`super::mesh::ScopeKey`] names it).
    pub fn get(&self, key: &ObjectKey) -> Option<&SidecarView> {
        self.by_key.get(key).map(Arc::as_ref)
    }
}

/// What proxies of one scope are configured to reach ([`super::mesh::MeshView::egress`]).
#[derive(Debug)]
pub struct ScopeEgress<'a> {
    namespace: &'a str,
    sidecar: Option<&'a SidecarView>,
    /// The hosts the imported VirtualServices send to.
    destinations: BTreeSet<String>,
}

impl<'a> ScopeEgress<'a> {
    pub(super) fn new(
        namespace: &'a str,
        sidecar: Option<&'a SidecarView>,
        destinations: BTreeSet<String>,
    ) -> Self {
        Self { namespace, sidecar, destinations }
    }

    /// Whether the proxies get listener chains and routes for `port` of `service`.
    pub fn listens(&self, service: &ServiceView, port: u16) -> bool {
        service.export_to.visible_to(self.namespace)
            && self
                .sidecar
                .is_none_or(|s| s.listens(self.namespace, &service.key.namespace, &service.hostname, port))
    }

    /// Whether the proxies get the clusters (and endpoints) of `port` of
    /// `service`: its egress listeners import it, or an imported
    /// VirtualService sends to it (Istio adds those Services whole).
    pub fn has_clusters(&self, service: &ServiceView, port: u16) -> bool {
        service.export_to.visible_to(self.namespace)
            && self.sidecar.is_none_or(|s| {
                s.imports(self.namespace, &service.key.namespace, &service.hostname, port)
                    || self.destinations.contains(&service.hostname)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::networking::WorkloadLabels;
    use crate::api::sidecar::{IstioEgressListener, SidecarPort};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sidecar(
        namespace: &str,
        name: &str,
        created: &str,
        selector: Option<&[(&str, &str)]>,
        egress: &[(Option<u32>, &[&str])],
    ) -> Config<SidecarSpec> {
        Config {
            key: ObjectKey::new(namespace, name),
            generation: 1,
            created: Some(created.to_string()),
            spec: SidecarSpec {
                workload_selector: selector.map(|s| WorkloadLabels { labels: labels(s) }),
                egress: egress
                    .iter()
                    .map(|(port, hosts)| IstioEgressListener {
                        port: port.map(|n| SidecarPort { number: Some(n), ..Default::default() }),
                        hosts: hosts.iter().map(|h| h.to_string()).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn scopes(configs: Vec<Config<SidecarSpec>>) -> SidecarScopes {
        let store: Store<Config<SidecarSpec>> = configs.into_iter().map(|c| (c.key.clone(), c)).collect();
        SidecarScopes::build(&store, "istio-system")
    }

    fn applying(scopes: &SidecarScopes, namespace: &str, pod: &[(&str, &str)]) -> Option<String> {
        scopes.applying(namespace, &labels(pod)).map(|s| s.key.to_string())
    }

    #[test]
    fn the_selecting_sidecar_then_the_namespace_s_then_the_root_s() {
        let all: &[(Option<u32>, &[&str])] = &[(None, &["*/*"])];
        let scopes = scopes(vec![
            sidecar("a", "ratings-new", "2026-01-02T00:00:00Z", Some(&[("app", "ratings")]), all),
            sidecar("a", "ratings-old", "2026-01-01T00:00:00Z", Some(&[("app", "ratings")]), all),
            sidecar("a", "whole", "2026-01-01T00:00:00Z", None, all),
            sidecar("a", "whole-newer", "2026-01-03T00:00:00Z", None, all),
            sidecar("istio-system", "mesh", "2026-01-01T00:00:00Z", None, all),
            sidecar("istio-system", "gateways", "2026-01-01T00:00:00Z", Some(&[("istio", "gw")]), all),
            sidecar("c", "only-some", "2026-01-01T00:00:00Z", Some(&[("app", "x")]), all),
        ]);
        // The oldest of the Sidecars selecting the pod.
        assert_eq!(
            applying(&scopes, "a", &[("app", "ratings"), ("v", "1")]).as_deref(),
            Some("a/ratings-old")
        );
        // The oldest without a selector.
        assert_eq!(applying(&scopes, "a", &[("app", "reviews")]).as_deref(), Some("a/whole"));
        // The root namespace's, for a namespace without one of its own
        // (its selecting Sidecars apply only to its own pods).
        assert_eq!(applying(&scopes, "b", &[("istio", "gw")]).as_deref(), Some("istio-system/mesh"));
        assert_eq!(applying(&scopes, "c", &[("app", "y")]).as_deref(), Some("istio-system/mesh"));
        assert_eq!(applying(&scopes, "c", &[("app", "x")]).as_deref(), Some("c/only-some"));
        assert_eq!(
            applying(&scopes, "istio-system", &[("istio", "gw")]).as_deref(),
            Some("istio-system/gateways")
        );
        // No Sidecar at all: none applies.
        assert_eq!(applying(&super::SidecarScopes::default(), "a", &[]), None);
    }

    #[test]
    fn egress_hosts_import_by_namespace_then_any_namespace() {
        let scopes = scopes(vec![sidecar(
            "a",
            "s",
            "2026-01-01T00:00:00Z",
            None,
            &[(None, &["./*", "istio-system/*", "b/ratings.b.svc.cluster.local", "*/*.c.svc.cluster.local"])],
        )]);
        let s = scopes.get(&ObjectKey::new("a", "s")).unwrap();
        let imports = |ns: &str, name: &str| s.imports("a", ns, &host::service_fqdn(name, ns), 9080);
        assert!(imports("a", "reviews"));
        assert!(imports("istio-system", "istiod"));
        assert!(imports("b", "ratings"));
        // Namespace b is named, so `*/...` does not apply to it.
        assert!(!imports("b", "details"));
        assert!(imports("c", "details"));
        assert!(!imports("d", "details"));
        // A Sidecar of the root namespace: "." is the proxy's namespace.
        let root = scopes_root();
        let s = root.get(&ObjectKey::new("istio-system", "default")).unwrap();
        assert!(s.imports("d", "d", &host::service_fqdn("x", "d"), 80));
        assert!(!s.imports("d", "e", &host::service_fqdn("x", "e"), 80));
    }

    fn scopes_root() -> SidecarScopes {
        scopes(vec![sidecar("istio-system", "default", "2026-01-01T00:00:00Z", None, &[(None, &["./*"])])])
    }

    #[test]
    fn default_endpoints_name_loopback_or_the_pod() {
        let pod = Some("10.244.0.7");
        let at = |e: &str, ip: Option<&str>| DefaultEndpoint::parse(e).map(|e| e.address(ip));
        assert_eq!(at("127.0.0.1:8080", pod), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(at("0.0.0.0:8080", pod), Some(("10.244.0.7".into(), 8080)));
        assert_eq!(at("0.0.0.0:8080", None), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(at("[::1]:8080", pod), Some(("::1".into(), 8080)));
        assert_eq!(at("[::]:8080", pod), Some(("::1".into(), 8080)), "no IPv6 address: loopback");
        assert_eq!(at("[::]:8080", Some("fd00::7")), Some(("fd00::7".into(), 8080)));
        assert_eq!(at("unix:///var/run/app.sock", pod), None);
        assert_eq!(at("127.0.0.1:0", pod), None);
        assert_eq!(at("10.0.0.1:80", pod), None);
    }

    #[test]
    fn a_port_is_served_by_the_listener_naming_it() {
        let scopes = scopes(vec![sidecar(
            "a",
            "s",
            "2026-01-01T00:00:00Z",
            None,
            &[(Some(9080), &["b/*"]), (None, &["./*", "~/*"])],
        )]);
        let s = scopes.get(&ObjectKey::new("a", "s")).unwrap();
        let b = host::service_fqdn("ratings", "b");
        let a = host::service_fqdn("reviews", "a");
        assert!(s.listens("a", "b", &b, 9080));
        assert!(!s.listens("a", "b", &b, 8080));
        // Port 9080 is the first listener's: Services it does not import get no chain there...
        assert!(!s.listens("a", "a", &a, 9080));
        assert!(s.listens("a", "a", &a, 8080));
        // ...but still the clusters the catch-all imports them with.
        assert!(s.imports("a", "a", &a, 9080));
        assert!(!s.imports("a", "b", &b, 8080));
    }

    #[test]
    fn virtual_services_import_by_their_namespace_and_hosts() {
        let scopes = scopes(vec![sidecar(
            "a",
            "s",
            "2026-01-01T00:00:00Z",
            None,
            &[(None, &["./*", "*/*.example.com", "b/ratings.b.svc.cluster.local"])],
        )]);
        let s = scopes.get(&ObjectKey::new("a", "s")).unwrap();
        let hosts = |h: &[&str]| h.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert!(s.imports_virtual_service("a", "a", &hosts(&["reviews.a.svc.cluster.local"])));
        assert!(!s.imports_virtual_service("a", "b", &hosts(&["reviews.a.svc.cluster.local"])));
        assert!(s.imports_virtual_service("a", "b", &hosts(&["www.example.com"])));
        // Namespace b is named, and the `*/` hosts still apply to its rules (not to its Services).
        assert!(s.imports_virtual_service("a", "b", &hosts(&["ratings.b.svc.cluster.local"])));
        assert!(s.imports_virtual_service("a", "b", &hosts(&["api.example.com"])));
        assert!(!s.imports_virtual_service("a", "b", &hosts(&["details.b.svc.cluster.local"])));
        assert!(!s.imports("a", "b", "api.b.svc.cluster.local", 80));
        // No egress at all imports everything.
        let open = scopes_of_empty();
        let s = open.get(&ObjectKey::new("a", "open")).unwrap();
        assert!(s.imports_virtual_service("a", "z", &hosts(&["x.z.svc.cluster.local"])));
        assert!(s.listens("a", "z", "x.z.svc.cluster.local", 1));
    }

    fn scopes_of_empty() -> SidecarScopes {
        scopes(vec![sidecar("a", "open", "2026-01-01T00:00:00Z", None, &[])])
    }
}
