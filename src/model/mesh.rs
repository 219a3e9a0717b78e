//! The mesh as the translation layer reads it: Services by host name with
//! their ports' protocols and endpoints (with the labels of the pods behind
//! them), and the VirtualServices and DestinationRules bound to those
//! hosts, with Istio's visibility rules. Built once per index change from
//! the index's [`ClusterState`] ([`MeshView::build`]) and shared by every
//! proxy's translation. Host names resolve and match by [`super::host`].
//!
//! What a proxy sees depends only on its [`ScopeKey`]: its namespace, and
//! the few pod labels that some rule selects on (`sourceLabels` of a
//! VirtualService, `workloadSelector` of a DestinationRule). Proxies with
//! equal keys get equal outbound configuration, so it is computed once per
//! key, not once per proxy.
//!
//! Choices where Istio leaves room, or where the model lacks what Istio reads:
//! - Endpoint health: ready → HEALTHY; serving and terminating → DRAINING;
//!   anything else → UNHEALTHY. All are sent, so Envoy knows them, but only
//!   HEALTHY ones take new requests.
//! - Several DestinationRules for one host: the one in the proxy's
//!   namespace wins (one with a matching `workloadSelector` first), then the
//!   service's namespace, then any other namespace; within a namespace the
//!   most specific host, then name order (Istio takes the oldest; the model
//!   keeps no creation time).
//! - Several VirtualServices for one host: the same namespace order, exact
//!   host before wildcard, then name order. Istio merges them only for
//!   gateways; sidecars take one.
//! - A Service's `networking.istio.io/exportTo` annotation (a comma-separated
//!   list of the same entries as `exportTo`) limits the namespaces whose
//!   proxies get it; without it, every namespace does.
//!
//! ServiceEntries join the Services here, one service per host
//! ([`super::service_entry`]), so VirtualServices, DestinationRules and
//! visibility apply to their hosts as to Services'.
//! - The `Sidecar` that applies to a proxy ([`super::sidecar_scope`]) is
//!   part of its [`ScopeKey`] and narrows that further ([`MeshView::egress`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::gateway::{GatewayView, names_gateway};
use super::host::{self, service_fqdn};
use super::protocol::Protocol;
use super::service_entry::{self, Discovery, EntryView};
use super::sidecar_scope::{ScopeEgress, SidecarScopes};
use super::telemetry::{self, WorkloadLabels};
use super::visibility::ExportTo;
use super::{ClusterState, EndpointSlice, ObjectKey, OutboundTrafficPolicy, Workload};
use crate::api::destination_rule::DestinationRuleSpec;
use crate::api::virtual_service::VirtualServiceSpec;

/// The `gateways` entry that means "the sidecars" (also the default when empty).
pub const MESH_GATEWAY: &str = "mesh";

/// Whether a `gateways` list (of a VirtualService or of one match) takes in
/// the sidecars: empty, or naming [`MESH_GATEWAY`].
pub fn for_sidecars(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// The label Istio's injector puts on a pod with a sidecar, with the
/// value [`TLS_MODE_ISTIO`]: auto mTLS sends mutual TLS to endpoints that
/// carry it.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";

/// How Envoy should treat an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Health {
    Healthy,
    Draining,
    Unhealthy,
}

impl Health {
    /// From an EndpointSlice endpoint's conditions.
    pub fn of(ready: bool, serving: bool, terminating: bool) -> Health {
        if ready {
            Health::Healthy
        } else if serving && terminating {
            Health::Draining
        } else {
            Health::Unhealthy
        }
    }
}

/// One backend address of a Service port.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    pub address: String,
    /// The port the backend listens on (the Service's target port).
    pub port: u16,
    pub health: Health,
    pub pod: Option<ObjectKey>,
    /// The pod's labels (empty when the endpoint is no known pod); subsets select on them.
    pub labels: Arc<BTreeMap<String, String>>,
    /// What Istio's metrics call the pod's workload; None when the
    /// endpoint is no known pod.
    pub workload: Option<Arc<WorkloadLabels>>,
    /// Its share relative to the others (a ServiceEntry endpoint's
    /// `weight`); None: equal shares.
    pub weight: Option<u32>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct PortView {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// As the Service wrote it: a number, a container port name, or absent (= `port`).
    pub target_port: Option<String>,
    /// Sorted by address.
    pub endpoints: Vec<EndpointView>,
}

/// A Service by its host name.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    pub key: ObjectKey,
    /// `<name>.<namespace>.svc.cluster.local`.
    pub hostname: String,
    pub cluster_ip: Option<String>,
    pub ports: Vec<PortView>,
    pub selector: BTreeMap<String, String>,
    pub export_to: ExportTo,
    /// The ServiceAccounts of the pods behind it: the identities a client
    /// expects the server's certificate to carry.
    pub service_accounts: BTreeSet<String>,
    /// Set for a host of a ServiceEntry ([`super::service_entry`]): how its
    /// endpoints are found, whether it is in the mesh, its addresses.
    pub entry: Option<EntryView>,
}

impl ServiceView {
    pub fn port(&self, number: u16) -> Option<&PortView> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Whether this Service's pods include one with `labels` (an empty
    /// selector selects nothing: such Services have manual endpoints).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && is_subset(&self.selector, labels)
    }

    /// The addresses connections to the service are made to: a Service's
    /// ClusterIP, a ServiceEntry's addresses (IPs or CIDR blocks). None:
    /// it is reached by name (headless Services, entries without addresses).
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        let entry = self.entry.iter().flat_map(|e| e.addresses.iter().map(String::as_str));
        self.cluster_ip.as_deref().into_iter().chain(entry)
    }

    /// How its clusters find their endpoints.
    pub fn discovery(&self) -> Discovery {
        Discovery::of(self.entry.as_ref())
    }
}

/// A VirtualService with its hosts resolved to FQDNs (or wildcards).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtualServiceView {
    pub key: ObjectKey,
    /// creationTimestamp: gateways merge VirtualServices oldest first.
    pub created: Option<String>,
    pub hosts: Vec<String>,
    pub export_to: ExportTo,
    pub spec: VirtualServiceSpec,
}

impl VirtualServiceView {
    /// Whether sidecars apply it (no `gateways`, or `mesh` among them).
    pub fn for_sidecars(&self) -> bool {
        for_sidecars(&self.spec.gateways)
    }
}

/// A DestinationRule with its host resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationRuleView {
    pub key: ObjectKey,
    pub host: String,
    pub export_to: ExportTo,
    pub spec: DestinationRuleSpec,
}

/// The proxy a configuration is for; the xDS layer makes it from the
/// index's Workload for the proxy's pod ([`ProxyContext::from_workload`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyContext {
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<String>,
    pub service_account: String,
}

impl ProxyContext {
    pub fn from_workload(workload: &Workload) -> Self {
        Self {
            namespace: workload.key.namespace.clone(),
            pod: workload.key.name.clone(),
            labels: workload.labels.clone(),
            ip: workload.ip.clone(),
            service_account: workload.service_account.clone(),
        }
    }
}

/// Everything outbound configuration depends on, for one proxy. Equal keys
/// get equal outbound configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ScopeKey {
    pub namespace: String,
    /// Only the proxy's labels whose keys some rule selects on; usually none.
    pub labels: BTreeMap<String, String>,
    /// The Sidecar that applies to the proxy, if any.
    pub sidecar: Option<ObjectKey>,
}

/// The mesh, indexed for translation. Cheap to share (`Arc<MeshView>`).
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    /// By host name, in name order.
    services: BTreeMap<String, Arc<ServiceView>>,
    /// In namespace/name order.
    virtual_services: Vec<Arc<VirtualServiceView>>,
    vs_by_host: HashMap<String, Vec<usize>>,
    wildcard_vs: Vec<usize>,
    destination_rules: Vec<Arc<DestinationRuleView>>,
    dr_by_host: HashMap<String, Vec<usize>>,
    wildcard_dr: Vec<usize>,
    /// Gateways, oldest first (Istio merges their servers in that order).
    gateways: Vec<Arc<GatewayView>>,
    /// Label keys some `sourceLabels`, `workloadSelector` or locality failover reads.
    selected_label_keys: BTreeSet<String>,
    /// The SPIFFE trust domain of the mesh's identities.
    trust_domain: String,
    /// The mesh-wide `outboundTrafficPolicy` ([`MeshView::outbound_traffic_policy`]).
    outbound_traffic_policy: OutboundTrafficPolicy,
    /// What every proxy reports.
    telemetry: Arc<telemetry::Settings>,
    /// The Sidecars, to find the one that applies to a proxy.
    sidecars: SidecarScopes,
}

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl MeshView {
    pub fn build(inputs: ClusterState<'_>) -> Self {
        let pods: HashMap<&ObjectKey, PodLabels> = inputs
            .workloads
            .iter()
            .map(|(key, w)| {
                let telemetry = WorkloadLabels::new(&w.workload_name, &key.namespace, &w.labels);
                (key, (Arc::new(w.labels.clone()), Some(Arc::new(telemetry))))
            })
            .collect();
        let unknown_pod = (Arc::new(BTreeMap::new()), None);

        // Slices by the Service they belong to.
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in inputs.endpoint_slices.values() {
            if slice.address_type == "FQDN" {
                continue;
            }
            if let Some(service) = &slice.service {
                slices.entry((slice.key.namespace.as_str(), service.as_str())).or_default().push(slice);
            }
        }

        let mut services = BTreeMap::new();
        for service in inputs.services.values() {
            let service_slices =
                slices.get(&(service.key.namespace.as_str(), service.key.name.as_str())).map(Vec::as_slice);
            let ports = service
                .ports
                .iter()
                .map(|port| PortView {
                    name: port.name.clone(),
                    port: port.port,
                    protocol: Protocol::infer(&port.name, port.app_protocol.as_deref(), &port.protocol),
                    target_port: port.target_port.clone(),
                    endpoints: endpoints_of(
                        &port.name,
                        service_slices.unwrap_or_default(),
                        &pods,
                        &unknown_pod,
                    ),
                })
                .collect::<Vec<PortView>>();
            let service_accounts = ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .filter_map(|e| e.pod.as_ref().and_then(|pod| inputs.workloads.get(pod)))
                .map(|w| w.service_account.clone())
                .filter(|sa| !sa.is_empty())
                .collect();
            let hostname = service_fqdn(&service.key.name, &service.key.namespace);
            let view = ServiceView {
                key: service.key.clone(),
                hostname: hostname.clone(),
                cluster_ip: service.cluster_ip.clone(),
                ports,
                selector: service.selector.clone(),
                export_to: ExportTo::parse(&service.export_to, &service.key.namespace),
                service_accounts,
                entry: None,
            };
            services.insert(hostname, Arc::new(view));
        }
        for view in service_entry::services(inputs, |host| services.contains_key(host)) {
            services.insert(view.hostname.clone(), Arc::new(view));
        }

        let is_service = |host: &str| services.contains_key(host);
        let mut selected_label_keys = BTreeSet::new();

        let mut view = MeshView::default();
        for config in inputs.virtual_services.values() {
            let ns = &config.key.namespace;
            let spec = &config.spec;
            let http = spec.http.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            let tls = spec.tls.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            let tcp = spec.tcp.iter().flat_map(|r| &r.r#match).map(|m| &m.source_labels);
            for labels in http.chain(tls).chain(tcp) {
                selected_label_keys.extend(labels.keys().cloned());
            }
            let index = view.virtual_services.len();
            let hosts: Vec<String> =
                config.spec.hosts.iter().map(|h| host::resolve(h, ns, is_service)).collect();
            for host in &hosts {
                if host::is_wildcard(host) {
                    view.wildcard_vs.push(index);
                } else {
                    view.vs_by_host.entry(host.clone()).or_default().push(index);
                }
            }
            view.virtual_services.push(Arc::new(VirtualServiceView {
                key: config.key.clone(),
                created: config.created.clone(),
                hosts,
                export_to: ExportTo::parse(&config.spec.export_to, ns),
                spec: config.spec.clone(),
            }));
        }
        view.wildcard_vs.dedup();

        for config in inputs.destination_rules.values() {
            let ns = &config.key.namespace;
            if let Some(selector) = &config.spec.workload_selector {
                selected_label_keys.extend(selector.match_labels.keys().cloned());
            }
            // Locality failover orders endpoints by the proxy's own labels.
            selected_label_keys.extend(super::locality::failover_label_keys(&config.spec));
            let index = view.destination_rules.len();
            let host = host::resolve(&config.spec.host, ns, is_service);
            if host::is_wildcard(&host) {
                view.wildcard_dr.push(index);
            } else {
                view.dr_by_host.entry(host.clone()).or_default().push(index);
            }
            view.destination_rules.push(Arc::new(DestinationRuleView {
                key: config.key.clone(),
                host,
                export_to: ExportTo::parse(&config.spec.export_to, ns),
                spec: config.spec.clone(),
            }));
        }

        let mut gateways: Vec<_> = inputs.gateways.values().collect();
        gateways.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
        view.gateways = gateways.into_iter().map(|g| Arc::new(GatewayView::of(g))).collect();

        view.services = services;
        view.selected_label_keys = selected_label_keys;
        view.sidecars = SidecarScopes::build(inputs.sidecars, &inputs.mesh_config.root_namespace);
        view.trust_domain = DEFAULT_TRUST_DOMAIN.to_string();
        view.outbound_traffic_policy = inputs.mesh_config.outbound_traffic_policy;
        view.telemetry = Arc::new(inputs.mesh_config.telemetry.clone());
        view
    }

    /// The view, for a mesh whose identities are in `trust_domain`.
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = trust_domain.into();
        self
    }

    /// The SPIFFE trust domain of the mesh's identities.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Where proxies of `scope` send traffic to destinations outside the
    /// registry: the applying Sidecar's `outboundTrafficPolicy.mode` when it
    /// sets one, else the mesh's. The one place the translation reads it.
    /// What every proxy reports: metrics, access logs.
    pub fn telemetry(&self) -> &telemetry::Settings {
        &self.telemetry
    }

    pub fn outbound_traffic_policy(&self, scope: &ScopeKey) -> OutboundTrafficPolicy {
        scope
            .sidecar
            .as_ref()
            .and_then(|key| self.sidecars.get(key))
            .and_then(|sidecar| sidecar.outbound_traffic_policy)
            .unwrap_or(self.outbound_traffic_policy)
    }

    /// The scope of a proxy: what its outbound configuration depends on.
    pub fn scope(&self, proxy: &ProxyContext) -> ScopeKey {
        let labels = if self.selected_label_keys.is_empty() {
            BTreeMap::new()
        } else {
            proxy
                .labels
                .iter()
                .filter(|(k, _)| self.selected_label_keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let sidecar = self.sidecars.applying(&proxy.namespace, &proxy.labels).map(|s| s.key.clone());
        ScopeKey { namespace: proxy.namespace.clone(), labels, sidecar }
    }

    /// The Sidecar that applies to `proxy`, if any.
    pub fn sidecar_for(&self, proxy: &ProxyContext) -> Option<&super::sidecar_scope::SidecarView> {
        self.sidecars.applying(&proxy.namespace, &proxy.labels)
    }

    /// What proxies of `scope` are configured to reach: the Services
    /// exported to their namespace, narrowed by their Sidecar's egress
    /// listeners; with the Services the VirtualServices it imports send
    /// to, whose clusters come along (Istio's `ConvertToSidecarScope`).
    pub fn egress<'a>(&'a self, scope: &'a ScopeKey) -> ScopeEgress<'a> {
        let sidecar = scope.sidecar.as_ref().and_then(|key| self.sidecars.get(key));
        let mut destinations = BTreeSet::new();
        if sidecar.is_some() {
            let imported = self.virtual_services.iter().filter(|vs| self.imports_virtual_service(scope, vs));
            for vs in imported {
                destinations.extend(self.destination_hosts(vs));
                let delegates = vs.spec.http.iter().filter_map(|r| r.delegate.as_ref());
                for delegate in delegates {
                    let namespace = delegate.namespace.as_deref().filter(|n| !n.is_empty());
                    let name = delegate.name.as_deref().unwrap_or_default();
                    if let Some(d) = self.virtual_service(namespace.unwrap_or(&vs.key.namespace), name) {
                        destinations.extend(self.destination_hosts(d));
                    }
                }
            }
        }
        ScopeEgress::new(&scope.namespace, sidecar, destinations)
    }

    /// Whether proxies of `scope` apply `vs`: sidecar rules exported to
    /// their namespace, and imported by their Sidecar if they have one.
    fn imports_virtual_service(&self, scope: &ScopeKey, vs: &VirtualServiceView) -> bool {
        vs.for_sidecars()
            && vs.export_to.visible_to(&scope.namespace)
            && scope.sidecar.as_ref().and_then(|key| self.sidecars.get(key)).is_none_or(|sidecar| {
                sidecar.imports_virtual_service(&scope.namespace, &vs.key.namespace, &vs.hosts)
            })
    }

    /// The hosts a VirtualService's rules send to (mirrors too), resolved in its namespace.
    pub fn destination_hosts(&self, vs: &VirtualServiceView) -> Vec<String> {
        let spec = &vs.spec;
        let http = spec.http.iter().flat_map(|r| {
            let routes = r.route.iter().map(|d| &d.destination);
            routes.chain(r.mirror.iter()).chain(r.mirrors.iter().map(|m| &m.destination))
        });
        let tcp = spec.tcp.iter().flat_map(|r| &r.route).map(|d| &d.destination);
        let tls = spec.tls.iter().flat_map(|r| &r.route).map(|d| &d.destination);
        http.chain(tcp).chain(tls).map(|d| self.resolve_host(&d.host, &vs.key.namespace)).collect()
    }

    /// A Service by host name.
    pub fn service(&self, hostname: &str) -> Option<&ServiceView> {
        self.services.get(hostname).map(Arc::as_ref)
    }

    /// Every Service, in host name order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceView> {
        self.services.values().map(Arc::as_ref)
    }

    /// The Services a proxy in `namespace` may reach, in host name order.
    pub fn visible_services<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a ServiceView> + 'a {
        self.services().filter(move |s| s.export_to.visible_to(namespace))
    }

    /// Resolves a host written in a configuration of `namespace`
    /// ([`host::resolve`], knowing this view's Services).
    pub fn resolve_host(&self, host: &str, namespace: &str) -> String {
        host::resolve(host, namespace, |h| self.services.contains_key(h))
    }

    /// The VirtualService that routes `service` for proxies of `scope`.
    pub fn virtual_service_for(
        &self,
        scope: &ScopeKey,
        service: &ServiceView,
    ) -> Option<&VirtualServiceView> {
        let exact = self.vs_by_host.get(&service.hostname).into_iter().flatten();
        let candidates = exact.chain(self.wildcard_vs.iter()).map(|&i| &self.virtual_services[i]);
        candidates
            .filter(|vs| self.imports_virtual_service(scope, vs))
            .filter_map(|vs| {
                let pattern = vs
                    .hosts
                    .iter()
                    .filter(|h| host::matches(h, &service.hostname))
                    .min_by_key(|h| specificity(h))?;
                let rank = (namespace_rank(&vs.key.namespace, scope, service), specificity(pattern), &vs.key);
                Some((rank, vs))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, vs)| vs.as_ref())
    }

    /// The Gateways that configure a gateway proxy whose pod has `labels`, oldest first.
    pub fn gateways_for(&self, labels: &BTreeMap<String, String>) -> Vec<&GatewayView> {
        self.gateways.iter().map(Arc::as_ref).filter(|g| g.selects(labels)).collect()
    }

    /// The VirtualServices (with hosts) bound to `gateway` by their
    /// `gateways` and exported to the gateway proxy's namespace, oldest
    /// first, as Istio merges them on a gateway.
    pub fn virtual_services_for_gateway(
        &self,
        gateway: &ObjectKey,
        proxy_namespace: &str,
    ) -> Vec<&VirtualServiceView> {
        let mut bound: Vec<&VirtualServiceView> = self
            .virtual_services
            .iter()
            .map(Arc::as_ref)
            .filter(|vs| {
                !vs.hosts.is_empty()
                    && names_gateway(&vs.spec.gateways, &vs.key.namespace, gateway)
                    && vs.export_to.visible_to(proxy_namespace)
            })
            .collect();
        bound.sort_by(|a, b| {
            (a.created.is_none(), &a.created, &a.key.name, &a.key.namespace).cmp(&(
                b.created.is_none(),
                &b.created,
                &b.key.name,
                &b.key.namespace,
            ))
        });
        bound
    }

    /// The VirtualService `namespace/name`, as a root rule's `delegate`
    /// names it.
    pub fn virtual_service(&self, namespace: &str, name: &str) -> Option<&VirtualServiceView> {
        // In namespace/name order.
        self.virtual_services
            .binary_search_by(|vs| (vs.key.namespace.as_str(), vs.key.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| self.virtual_services[i].as_ref())
    }

    /// Every VirtualService, in namespace/name order.
    pub fn virtual_services(&self) -> impl Iterator<Item = &VirtualServiceView> {
        self.virtual_services.iter().map(Arc::as_ref)
    }

    /// A DestinationRule by namespace and name.
    pub fn destination_rule(&self, namespace: &str, name: &str) -> Option<&DestinationRuleView> {
        self.destination_rules
            .iter()
            .find(|r| r.key.namespace == namespace && r.key.name == name)
            .map(Arc::as_ref)
    }

    /// The DestinationRule that applies to `service` for proxies of `scope`.
    pub fn destination_rule_for(
        &self,
        scope: &ScopeKey,
        service: &ServiceView,
    ) -> Option<&DestinationRuleView> {
        let exact = self.dr_by_host.get(&service.hostname).into_iter().flatten();
        let candidates = exact.chain(self.wildcard_dr.iter()).map(|&i| &self.destination_rules[i]);
        candidates
            .filter(|dr| host::matches(&dr.host, &service.hostname))
            .filter_map(|dr| {
                let selected = match &dr.spec.workload_selector {
                    // Istio: a rule with a selector applies only in its own
                    // namespace, whatever its exportTo says.
                    Some(selector) => {
                        if dr.key.namespace != scope.namespace
                            || !is_subset(&selector.match_labels, &scope.labels)
                        {
                            return None;
                        }
                        0
                    }
                    None if dr.export_to.visible_to(&scope.namespace) => 1,
                    None => return None,
                };
                let rank = (
                    namespace_rank(&dr.key.namespace, scope, service),
                    selected,
                    specificity(&dr.host),
                    &dr.key,
                );
                Some((rank, dr))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, dr)| dr.as_ref())
    }

    /// The Services in the proxy's namespace that select its pod.
    pub fn services_of(&self, proxy: &ProxyContext) -> impl Iterator<Item = &ServiceView> {
        self.services().filter(|s| s.key.namespace == proxy.namespace && s.selects(&proxy.labels))
    }
}

/// Proxy's namespace first, then the service's, then the rest.
fn namespace_rank(namespace: &str, scope: &ScopeKey, service: &ServiceView) -> u8 {
    if namespace == scope.namespace {
        0
    } else if namespace == service.key.namespace {
        1
    } else {
        2
    }
}

/// Smaller is more specific: an exact host, then longer wildcards.
fn specificity(pattern: &str) -> (bool, std::cmp::Reverse<usize>) {
    (host::is_wildcard(pattern), std::cmp::Reverse(pattern.len()))
}

/// Whether every entry of `selector` is in `labels`.
pub fn is_subset(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pod's labels, and what Istio's metrics call its workload.
type PodLabels = (Arc<BTreeMap<String, String>>, Option<Arc<WorkloadLabels>>);

/// The endpoints of the Service port named `port_name`, from its slices.
fn endpoints_of(
    port_name: &str,
    slices: &[&EndpointSlice],
    pods: &HashMap<&ObjectKey, PodLabels>,
    unknown_pod: &PodLabels,
) -> Vec<EndpointView> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().find(|p| p.name == port_name) else { continue };
        if port.port == 0 {
            continue;
        }
        for endpoint in &slice.endpoints {
            let pod = endpoint.pod.as_ref().map(|p| {
                let namespace = if p.namespace.is_empty() { &slice.key.namespace } else { &p.namespace };
                ObjectKey::new(namespace.clone(), p.name.clone())
            });
            let (labels, workload) = pod.as_ref().and_then(|p| pods.get(p)).unwrap_or(unknown_pod);
            for address in &endpoint.addresses {
                out.push(EndpointView {
                    address: address.clone(),
                    port: port.port,
                    health: Health::of(endpoint.ready, endpoint.serving, endpoint.terminating),
                    pod: pod.clone(),
                    labels: labels.clone(),
                    workload: workload.clone(),
                    weight: None,
                });
            }
        }
    }
    // Slices may overlap while the endpoint controller moves endpoints.
    out.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_conditions_become_health() {
        assert_eq!(Health::of(true, true, false), Health::Healthy);
        // Terminating but still serving: finish what it has, take nothing new.
        assert_eq!(Health::of(false, true, true), Health::Draining);
        assert_eq!(Health::of(false, false, true), Health::Unhealthy);
        assert_eq!(Health::of(false, false, false), Health::Unhealthy);
    }

    #[test]
    fn an_empty_selector_selects_no_pod() {
        let service = ServiceView {
            key: ObjectKey::new("a", "s"),
            hostname: service_fqdn("s", "a"),
            cluster_ip: None,
            ports: Vec::new(),
            selector: BTreeMap::new(),
            export_to: ExportTo::everywhere(),
            service_accounts: BTreeSet::new(),
            entry: None,
        };
        assert!(!service.selects(&BTreeMap::from([("app".to_string(), "x".to_string())])));
    }
}
