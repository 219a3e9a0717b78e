//! The generator that serves the mesh's routed configuration: per push,
//! one [`MeshView`], built from the index's state; per scope (namespace,
//! and the few labels some rule selects on), the outbound clusters,
//! endpoints, routes and listener, packed once and shared by every proxy
//! of the scope; per proxy, only its inbound listener and clusters, with
//! each HTTP port's JWT filter (keys from [`Jwks`], read once per push).
//!
//! Every listener and route names the clusters it sends to, so the streams
//! send it only once those clusters (and their endpoints) are acknowledged:
//! a new subset is never routed to before the proxy knows it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::generator::{Generator, PushContext, ScopeCache};
use super::jwks::{FetchedKeys, Jwks};
use super::proxy::{Proxy, ProxyKind};
use super::resource_type::ResourceType;
use super::snapshot::{Resource, ResourceSet, Resources, Snapshot};
use crate::index::{
    Changes, ClusterRbacConfigs, ClusterSnapshot, DestinationRules, EndpointSlices, Kind as _, MeshPolicies,
    PeerAuthentications, Pods, Policies, RbacConfigs, RequestAuthentications, Secrets, ServiceRoleBindings,
    ServiceRoles, VirtualServices,
};
use crate::model::ObjectKey;
use crate::model::Workload;
use crate::model::credential::TlsCredential;
use crate::model::host::{self, service_fqdn};
use crate::model::jwt::JwtPolicies;
use crate::model::mesh::{MeshView, ProxyContext, ScopeKey, VirtualServiceView};
use crate::model::mtls::{MtlsMode, MtlsPolicies};
use crate::model::rbac::RbacPolicies;
use crate::translate;
use crate::translate::cluster::outbound_host;
use crate::translate::rbac::Destination;
use crate::translate::route::route_clusters;
use crate::translate::sidecar::{InboundPort, PortPolicy};

/// Translates the index into each proxy's configuration.
pub struct MeshGenerator {
    /// What the last push built, whose unchanged parts the next reuses.
    last: Arc<Mutex<Last>>,
    /// The trust domain of the mesh's SPIFFE identities.
    trust_domain: String,
    /// The JWT issuers' key sets the controller fetched.
    jwks: Arc<Jwks>,
}

impl Default for MeshGenerator {
    fn default() -> Self {
        Self::new(crate::model::mesh::DEFAULT_TRUST_DOMAIN)
    }
}

impl MeshGenerator {
    /// A generator for a mesh whose identities are in `trust_domain`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self { last: Arc::default(), trust_domain: trust_domain.into(), jwks: Arc::default() }
    }

    /// The same, with JWT keys from `jwks` (kept current by
    /// [`super::jwks::run`]); a change of keys makes a push.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = jwks;
        self
    }
}

/// The last push: the cluster and view it was built from, and its parts.
#[derive(Default)]
struct Last {
    /// Moves with every push: a late proxy of an older push (its first
    /// snapshot) must not put parts built from older state here.
    generation: u64,
    cluster: Option<ClusterSnapshot>,
    view: Option<Arc<MeshView>>,
    packing: Packing,
}

/// Packed parts, by scope (outbound) and by pod (inbound, gateways).
#[derive(Clone, Default)]
struct Packing {
    outbound: HashMap<ScopeKey, Arc<PackedOutbound>>,
    inbound: HashMap<ObjectKey, Arc<PackedInbound>>,
    gateways: HashMap<ObjectKey, Arc<PackedGateway>>,
    /// The SDS secrets of the TLS credentials in each namespace's Secrets.
    credentials: HashMap<String, Arc<ResourceSet>>,
}

/// The kinds whose changes a push follows object by object; a change of
/// any other kind but the [`INBOUND_POLICIES`] (a Service, a Sidecar)
/// translates everything again, reusing each resource whose content is
/// unchanged.
const FOLLOWED: &[&str] =
    &[EndpointSlices::NAME, VirtualServices::NAME, DestinationRules::NAME, Pods::NAME, Secrets::NAME];

/// The kinds only sidecars' inbound parts read (mutual TLS, JWT and RBAC
/// policies): a change of one translates every sidecar's inbound part
/// again, and nothing else.
const INBOUND_POLICIES: &[&str] = &[
    PeerAuthentications::NAME,
    RequestAuthentications::NAME,
    Policies::NAME,
    MeshPolicies::NAME,
    ServiceRoles::NAME,
    ServiceRoleBindings::NAME,
    ClusterRbacConfigs::NAME,
    RbacConfigs::NAME,
];

/// What a push must build again, from what changed since the last.
#[derive(Debug, Default, PartialEq)]
struct Reach {
    /// Everything (the first push, or a change not followed in detail).
    everything: bool,
    /// Services whose clusters and endpoints changed (their EndpointSlices,
    /// or the pods behind them: labels, ServiceAccount), by host name.
    endpoints: BTreeSet<String>,
    /// What VirtualServices changed: the route configurations of these
    /// hosts, and every scope's listener (TCP and TLS rules).
    routes: Option<RouteReach>,
    /// Pods whose own parts (inbound listener and clusters, or a gateway's
    /// listeners and routes) changed.
    pods: BTreeSet<ObjectKey>,
    /// Every sidecar's inbound part (a policy changed).
    inbound: bool,
    /// Every gateway's listeners and routes (they read VirtualServices and
    /// Secrets).
    gateways: bool,
    /// The Secrets' TLS credentials.
    credentials: bool,
}

#[derive(Debug, PartialEq)]
enum RouteReach {
    All,
    Hosts(BTreeSet<String>),
}

impl Reach {
    fn everything() -> Self {
        Self { everything: true, ..Self::default() }
    }

    /// What `changes`, between `before` and `now`, reach.
    fn of(
        changes: &Changes,
        before: (&ClusterSnapshot, &MeshView),
        now: (&ClusterSnapshot, &MeshView),
    ) -> Self {
        if changes.beyond(&[FOLLOWED, INBOUND_POLICIES].concat()) {
            return Self::everything();
        }
        let mut reach =
            Self { inbound: INBOUND_POLICIES.iter().any(|k| changes.touches(k)), ..Self::default() };
        let (Some(slices), Some(vss), Some(drs), Some(pods), Some(secrets)) = (
            changes.keys::<EndpointSlices>(),
            changes.keys::<VirtualServices>(),
            changes.keys::<DestinationRules>(),
            changes.keys::<Pods>(),
            changes.keys::<Secrets>(),
        ) else {
            return Self::everything();
        };
        // A DestinationRule reaches its host's clusters and endpoints (its
        // subsets, their policies), and the routes that send to that host
        // (subsets named, hash policies).
        let mut rule_hosts = BTreeSet::new();
        for key in drs {
            for view in [before.1, now.1] {
                let Some(rule) = view.destination_rule(&key.namespace, &key.name) else { continue };
                // A selector can split scopes; a wildcard reaches any host.
                if rule.spec.workload_selector.is_some() || host::is_wildcard(&rule.host) {
                    return Self::everything();
                }
                rule_hosts.insert(rule.host.clone());
            }
        }
        reach.endpoints.extend(rule_hosts.iter().cloned());
        for key in slices {
            for cluster in [before.0, now.0] {
                if let Some(service) = cluster.get::<EndpointSlices>(key).and_then(|s| s.service.as_ref()) {
                    reach.endpoints.insert(service_fqdn(service, &key.namespace));
                }
            }
        }
        reach.pods.extend(pods.cloned());
        // A ServiceEntry's workloadSelector makes pods its endpoints.
        if !reach.pods.is_empty()
            && now.0.state().service_entries.values().any(|e| e.spec.workload_selector.is_some())
        {
            return Self::everything();
        }
        // The pods behind changed endpoints (an inbound port's target may
        // be named), and the Services whose endpoints are changed pods.
        for view in [before.1, now.1] {
            for service in view.services() {
                for endpoint in service.ports.iter().flat_map(|p| &p.endpoints) {
                    let Some(pod) = &endpoint.pod else { continue };
                    if reach.endpoints.contains(&service.hostname) {
                        reach.pods.insert(pod.clone());
                    } else if reach.pods.contains(pod) {
                        reach.endpoints.insert(service.hostname.clone());
                    }
                }
            }
        }
        let mut route_hosts = BTreeSet::new();
        let mut all_routes = false;
        let mut any_vs = false;
        // A delegate (no hosts) or a wildcard reaches any route.
        let mut add_routes_of = |vs: &VirtualServiceView| {
            all_routes |= vs.hosts.is_empty() || vs.hosts.iter().any(|h| host::is_wildcard(h));
            route_hosts.extend(vs.hosts.iter().cloned());
        };
        for key in vss {
            any_vs = true;
            for view in [before.1, now.1] {
                if let Some(vs) = view.virtual_service(&key.namespace, &key.name) {
                    add_routes_of(vs);
                }
            }
        }
        if !rule_hosts.is_empty() {
            any_vs = true;
            for view in [before.1, now.1] {
                for vs in view.virtual_services() {
                    if view.destination_hosts(vs).iter().any(|h| rule_hosts.contains(h)) {
                        add_routes_of(vs);
                    }
                }
            }
            route_hosts.extend(rule_hosts);
        }
        if any_vs {
            reach.routes = Some(if all_routes { RouteReach::All } else { RouteReach::Hosts(route_hosts) });
            reach.gateways = true;
        }
        if secrets.count() > 0 {
            reach.credentials = true;
            reach.gateways = true;
        }
        reach
    }

    /// Whether every proxy's shared (outbound) parts may change.
    fn reaches_every_proxy(&self) -> bool {
        self.everything || !self.endpoints.is_empty() || self.routes.is_some()
    }
}

impl Generator for MeshGenerator {
    fn prepare(&self, cluster: &ClusterSnapshot, changes: &Changes) -> Arc<dyn PushContext> {
        let state = cluster.state();
        let view = Arc::new(MeshView::build(state).with_trust_domain(&self.trust_domain));
        let mtls = MtlsPolicies::build(state);
        let jwt = JwtPolicies::build(state);
        let rbac = RbacPolicies::build(state);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let reach = match (&last.cluster, &last.view) {
            (Some(before), Some(before_view)) => Reach::of(changes, (before, before_view), (cluster, &view)),
            _ => Reach::everything(),
        };
        let previous = std::mem::take(&mut last.packing);
        let credentials = if reach.everything || reach.credentials {
            pack_credentials(state.credentials, &previous.credentials)
        } else {
            previous.credentials.clone()
        };
        // A push that reaches every proxy packs every part again (dropping
        // those of scopes and pods gone); one that reaches a few keeps the
        // others' parts for the next.
        last.packing = if reach.reaches_every_proxy() {
            Packing { credentials: credentials.clone(), ..Packing::default() }
        } else {
            Packing { credentials: credentials.clone(), ..previous.clone() }
        };
        last.cluster = Some(cluster.clone());
        last.view = Some(view.clone());
        last.generation += 1;
        let generation = last.generation;
        drop(last);
        Arc::new(MeshContext {
            cluster: cluster.clone(),
            credentials,
            view,
            mtls,
            jwt,
            keys: self.jwks.fetched(),
            rbac,
            reach,
            outbound: ScopeCache::default(),
            previous,
            last: self.last.clone(),
            generation,
        })
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.jwks.subscribe())
    }
}

struct MeshContext {
    /// The cluster this push is built from.
    cluster: ClusterSnapshot,
    view: Arc<MeshView>,
    /// Which mutual TLS each workload's inbound ports accept.
    mtls: MtlsPolicies,
    /// Which JWTs each workload's inbound ports verify.
    jwt: JwtPolicies,
    /// The fetched key sets, as they were when the push began.
    keys: FetchedKeys,
    /// Who may call each workload's inbound ports.
    rbac: RbacPolicies,
    /// The SDS secrets of each namespace's TLS credentials.
    credentials: HashMap<String, Arc<ResourceSet>>,
    /// What this push builds again; the rest is the last push's.
    reach: Reach,
    outbound: ScopeCache<ScopeKey, PackedOutbound>,
    /// The previous push's packing, whose unchanged parts are reused.
    previous: Packing,
    /// Where this push's packing is kept for the next.
    last: Arc<Mutex<Last>>,
    /// This push's [`Last::generation`].
    generation: u64,
}

/// `new`, or `old` if it has the same content: the streams then see that
/// it is the very same part and skip comparing it resource by resource.
/// In a changed part, each unchanged resource is `old`'s, which they also
/// recognise at once.
fn reuse(new: ResourceSet, old: Option<&Arc<ResourceSet>>) -> Arc<ResourceSet> {
    match old {
        Some(old) if old.same_content(&new) => old.clone(),
        Some(old) => Arc::new(new.reusing(old)),
        None => Arc::new(new),
    }
}

/// `old` with `replacements` put in by name (unchanged ones keep `old`'s).
fn patch(old: &Arc<ResourceSet>, replacements: ResourceSet) -> Arc<ResourceSet> {
    reuse(old.patched(replacements), Some(old))
}

/// A scope's outbound configuration, packed for sharing.
struct PackedOutbound {
    clusters: Arc<ResourceSet>,
    endpoints: Arc<ResourceSet>,
    routes: Arc<ResourceSet>,
    listener: Arc<ResourceSet>,
}

fn cluster_set(clusters: Vec<Cluster>) -> ResourceSet {
    ResourceSet::of(clusters, |c: &Cluster| c.name.clone())
}

fn endpoint_set(endpoints: Vec<ClusterLoadAssignment>) -> ResourceSet {
    ResourceSet::of(endpoints, |e: &ClusterLoadAssignment| e.cluster_name.clone())
}

fn route_set(routes: &[RouteConfiguration]) -> ResourceSet {
    ResourceSet::new(
        routes.iter().map(|r| Arc::new(Resource::of(r.name.clone(), r).depending_on(route_clusters(r)))),
    )
}

impl PackedOutbound {
    /// Packs the scope's outbound configuration, reusing what did not
    /// change since `previous`.
    fn new(view: &MeshView, scope: &ScopeKey, previous: Option<&PackedOutbound>) -> Self {
        let out = translate::sidecar::outbound(view, scope);
        Self {
            clusters: reuse(cluster_set(out.clusters), previous.map(|p| &p.clusters)),
            endpoints: reuse(endpoint_set(out.endpoints), previous.map(|p| &p.endpoints)),
            routes: reuse(route_set(&out.routes), previous.map(|p| &p.routes)),
            listener: reuse(
                listener_set(&out.listener, out.listener_clusters),
                previous.map(|p| &p.listener),
            ),
        }
    }

    /// `previous` with what `reach` reaches translated again: the clusters
    /// and endpoints of the Services whose endpoints changed, the route
    /// configurations of the hosts whose VirtualServices changed, and then
    /// the listener. Which resources exist does not change with these.
    fn update(view: &MeshView, scope: &ScopeKey, previous: &PackedOutbound, reach: &Reach) -> Self {
        use translate::sidecar::{host_clusters, host_endpoints, host_routes, outbound_listener_sending_to};
        // A Sidecar's imports follow its VirtualServices' destinations.
        if reach.everything || (reach.routes.is_some() && scope.sidecar.is_some()) {
            return Self::new(view, scope, Some(previous));
        }
        let (mut clusters, mut endpoints) = (previous.clusters.clone(), previous.endpoints.clone());
        if !reach.endpoints.is_empty() {
            // Every cluster of those hosts is replaced: a DestinationRule
            // may have added or removed subsets.
            let others = |name: &str| outbound_host(name).is_none_or(|h| !reach.endpoints.contains(h));
            let replaced =
                |old: &Arc<ResourceSet>, new: ResourceSet| reuse(old.replacing(others, new), Some(old));
            clusters = replaced(&clusters, cluster_set(host_clusters(view, scope, &reach.endpoints)));
            endpoints = replaced(&endpoints, endpoint_set(host_endpoints(view, scope, &reach.endpoints)));
        }
        let (routes, listener) = match &reach.routes {
            None => (previous.routes.clone(), previous.listener.clone()),
            Some(routes) => {
                let routes = match routes {
                    RouteReach::All => {
                        reuse(route_set(&translate::sidecar::routes(view, scope)), Some(&previous.routes))
                    }
                    RouteReach::Hosts(hosts) => {
                        patch(&previous.routes, route_set(&host_routes(view, scope, hosts)))
                    }
                };
                let (listener, sends_to) = outbound_listener_sending_to(view, scope);
                (routes, reuse(listener_set(&listener, sends_to), Some(&previous.listener)))
            }
        };
        Self { clusters, endpoints, routes, listener }
    }
}

/// A proxy's own inbound configuration.
struct PackedInbound {
    clusters: Arc<ResourceSet>,
    listener: Arc<ResourceSet>,
}

impl PackedInbound {
    fn new(
        view: &MeshView,
        proxy: &ProxyContext,
        policy: impl Fn(&InboundPort) -> PortPolicy,
        previous: Option<&PackedInbound>,
    ) -> Self {
        let inbound = translate::sidecar::inbound(view, proxy, policy);
        Self {
            clusters: reuse(
                ResourceSet::of(inbound.clusters, |c: &Cluster| c.name.clone()),
                previous.map(|p| &p.clusters),
            ),
            listener: reuse(
                listener_set(&inbound.listener, inbound.listener_clusters),
                previous.map(|p| &p.listener),
            ),
        }
    }
}

/// A gateway proxy's own listeners and routes.
struct PackedGateway {
    routes: Arc<ResourceSet>,
    listeners: Arc<ResourceSet>,
}

impl PackedGateway {
    fn new(view: &MeshView, proxy: &ProxyContext, previous: Option<&PackedGateway>) -> Self {
        let config = translate::gateway::gateway(view, proxy);
        Self {
            routes: reuse(route_set(&config.routes), previous.map(|p| &p.routes)),
            listeners: reuse(
                ResourceSet::new(config.listeners.iter().map(|(listener, sends_to)| {
                    Arc::new(Resource::of(listener.name.clone(), listener).depending_on(sends_to.clone()))
                })),
                previous.map(|p| &p.listeners),
            ),
        }
    }
}

impl MeshContext {
    /// Records parts this push built for the next, unless a newer push
    /// has begun.
    fn keep(&self, record: impl FnOnce(&mut Packing)) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.generation == self.generation {
            record(&mut last.packing);
        }
    }

    /// Which mutual TLS an inbound port of `workload` accepts, the JWT
    /// filter of an HTTP port whose policies verify end users' tokens, and
    /// then the RBAC filter of the Service behind it when RBAC is on for
    /// it (which reads what the JWT filter verified).
    fn port_policy(&self, workload: &Workload, port: &InboundPort) -> PortPolicy {
        let mut policy =
            PortPolicy { mtls: self.mtls.inbound_mode(workload, port.port), ..PortPolicy::default() };
        if port.protocol.is_http()
            && let Some(jwt) = self.jwt.inbound(&self.mtls, workload, port.port)
        {
            policy.http_filters.extend(translate::jwt::filter(&jwt, &self.keys));
        }
        // A Sidecar's ingress port that no Service exposes has no Service's RBAC.
        if let Some(service) = port.service
            && let Some(auth) = self.rbac.authorization(&service.hostname, &service.key.namespace)
        {
            let destination = Destination {
                host: &service.hostname,
                name: &service.key.name,
                namespace: &service.key.namespace,
                service_account: &workload.service_account,
                labels: &workload.labels,
            };
            if port.protocol.is_http() {
                policy.http_filters.push(translate::rbac::http_filter(&auth, &destination));
            } else {
                policy.network_filters.push(translate::rbac::network_rbac_filter(&auth, &destination));
            }
        }
        policy
    }
}

impl PushContext for MeshContext {
    fn affects(&self, proxy: &Proxy) -> bool {
        let reach = &self.reach;
        let router = proxy.id.kind == ProxyKind::Router;
        reach.reaches_every_proxy()
            || reach.pods.iter().any(|p| p.namespace == proxy.id.namespace && p.name == proxy.id.pod)
            || (router && (reach.gateways || reach.credentials))
            || (!router && reach.inbound)
    }

    fn generate(&self, proxy: &Proxy) -> Snapshot {
        let key = ObjectKey::new(&proxy.id.namespace, &proxy.id.pod);
        // Authorized streams have their pod in the index; a pod deleted
        // since gets the configuration of its namespace until its stream ends.
        let known = self.cluster.get::<Pods>(&key);
        let context = known.map(ProxyContext::from_workload).unwrap_or_else(|| ProxyContext {
            namespace: proxy.id.namespace.clone(),
            pod: proxy.id.pod.clone(),
            ip: Some(proxy.id.ip.to_string()),
            ..ProxyContext::default()
        });
        // A pod gone from the index has no policies' say: Istio's default
        // (and no Service selects it, so it has no inbound ports).
        let policy = |port: &InboundPort| match known {
            Some(workload) => self.port_policy(workload, port),
            None => PortPolicy { mtls: MtlsMode::Permissive, ..PortPolicy::default() },
        };
        let scope = self.view.scope(&context);
        let outbound =
            self.outbound.get_or_build(scope.clone(), || match self.previous.outbound.get(&scope) {
                Some(previous) => PackedOutbound::update(&self.view, &scope, previous, &self.reach),
                None => PackedOutbound::new(&self.view, &scope, None),
            });
        // The pod's own parts are the last push's unless this one reaches them.
        let own_changed = self.reach.everything || self.reach.pods.contains(&key);
        if proxy.id.kind == ProxyKind::Router {
            // A gateway: the clusters of its namespace, its own listeners and
            // routes; no virtualOutbound, no virtualInbound.
            let previous = self.previous.gateways.get(&key);
            let gateway = match previous {
                Some(previous) if !own_changed && !self.reach.gateways => previous.clone(),
                _ => Arc::new(PackedGateway::new(&self.view, &context, previous.map(|p| &**p))),
            };
            self.keep(|packing| {
                packing.outbound.insert(scope, outbound.clone());
                packing.gateways.insert(key, gateway.clone());
            });
            // Its servers' certificates: the TLS credentials of the Secrets
            // in its own namespace, sent only as its listeners ask for them.
            let credentials = self.credentials.get(&proxy.id.namespace).cloned();
            return Snapshot::new()
                .with_resources(ResourceType::Cluster, Resources::from_parts([outbound.clusters.clone()]))
                .with_resources(ResourceType::Endpoint, Resources::from_parts([outbound.endpoints.clone()]))
                .with_resources(ResourceType::Route, Resources::from_parts([gateway.routes.clone()]))
                .with_resources(ResourceType::Listener, Resources::from_parts([gateway.listeners.clone()]))
                .with_resources(ResourceType::Secret, Resources::from_parts(credentials));
        }
        let previous = self.previous.inbound.get(&key);
        let inbound = match previous {
            Some(previous) if !own_changed && !self.reach.inbound => previous.clone(),
            _ => Arc::new(PackedInbound::new(&self.view, &context, policy, previous.map(|p| &**p))),
        };
        self.keep(|packing| {
            packing.outbound.insert(scope, outbound.clone());
            packing.inbound.insert(key, inbound.clone());
        });

        Snapshot::new()
            .with_resources(
                ResourceType::Cluster,
                Resources::from_parts([outbound.clusters.clone(), inbound.clusters.clone()]),
            )
            .with_resources(ResourceType::Endpoint, Resources::from_parts([outbound.endpoints.clone()]))
            .with_resources(ResourceType::Route, Resources::from_parts([outbound.routes.clone()]))
            .with_resources(
                ResourceType::Listener,
                Resources::from_parts([outbound.listener.clone(), inbound.listener.clone()]),
            )
    }
}

/// The SDS secrets of the TLS credentials Secrets hold, by namespace: a
/// gateway may have those of its own namespace. Unchanged namespaces keep
/// the last push's part.
fn pack_credentials(
    credentials: &crate::model::Store<TlsCredential>,
    previous: &HashMap<String, Arc<ResourceSet>>,
) -> HashMap<String, Arc<ResourceSet>> {
    let mut by_namespace: HashMap<&str, Vec<&TlsCredential>> = HashMap::new();
    for credential in credentials.values() {
        by_namespace.entry(credential.key.namespace.as_str()).or_default().push(credential);
    }
    by_namespace
        .into_iter()
        .map(|(namespace, credentials)| {
            let secrets =
                ResourceSet::of(translate::secret::credential_secrets(credentials), |s| s.name.clone());
            (namespace.to_string(), reuse(secrets, previous.get(namespace)))
        })
        .collect()
}

/// One listener, packed with the clusters it sends to (as translation says).
fn listener_set(listener: &Listener, sends_to: BTreeSet<String>) -> ResourceSet {
    ResourceSet::new([Arc::new(Resource::of(listener.name.clone(), listener).depending_on(sends_to))])
}

#[cfg(test)]
mod tests {
    use super::super::auth::tests::identity;
    use super::super::proxy::ProxyId;
    use super::*;
    use crate::index::Index;
    use crate::testing::bookinfo::{apply_networking, apply_rbac, bookinfo};
    use crate::xds::debug::authz_table;

    fn productpage() -> Proxy {
        let id = ProxyId::parse("sidecar~10.244.0.13~productpage-v1-0.default~default.svc.cluster.local")
            .expect("a node id");
        Proxy { id, identity: identity() }
    }

    /// The HTTP filters of each inbound chain of port 9080, by name, with
    /// the JWT filter's configuration.
    fn inbound_http_filters(
        snapshot: &Snapshot,
    ) -> Vec<(
        String,
        Vec<String>,
        Option<envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication>,
    )> {
        use envoy_types::pb::envoy::config::listener::v3::filter;
        use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_filter,
        };
        use prost::Message;
        let listeners = snapshot.resources(ResourceType::Listener);
        let inbound = listeners.get("virtualInbound").expect("the inbound listener");
        let listener = Listener::decode(inbound.value()).expect("a listener");
        listener
            .filter_chains
            .iter()
            .filter(|c| c.name.starts_with("inbound|9080||"))
            .map(|chain| {
                let Some(filter::ConfigType::TypedConfig(config)) = &chain.filters[0].config_type else {
                    panic!("a typed config")
                };
                let manager = HttpConnectionManager::decode(config.value.as_slice()).expect("a manager");
                let jwt = manager.http_filters.iter().find_map(|f| match &f.config_type {
                    Some(http_filter::ConfigType::TypedConfig(c)) if f.name == translate::jwt::JWT_FILTER => {
                        Some(JwtAuthentication::decode(c.value.as_slice()).expect("a JWT config"))
                    }
                    _ => None,
                });
                // The metrics' peer filter is on every mutual TLS chain whatever the policies.
                let policy_filters =
                    manager.http_filters.iter().filter(|f| f.name != translate::telemetry::PEER_FILTER);
                (chain.name.clone(), policy_filters.map(|f| f.name.clone()).collect(), jwt)
            })
            .collect()
    }

    #[test]
    fn the_selected_workloads_inbound_http_ports_verify_jwts_with_the_fetched_keys_and_new_keys_push() {
        use crate::index::RequestAuthentications;
        use crate::testing::objects::config;
        let jwks = Arc::new(Jwks::default());
        let generator = MeshGenerator::default().with_jwks(jwks.clone());
        let mut changes = generator.changes().expect("fetched keys are an input");
        let mut index = bookinfo();
        let proxy = productpage();
        let before = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        for (_, filters, _) in inbound_http_filters(&before) {
            assert_eq!(filters, ["envoy.filters.http.router"], "nothing applied: no JWT filter");
        }
        let uri = "https://issuer.example/jwks.json";
        index.apply::<RequestAuthentications>(&config::<crate::api::RequestAuthentication>(
            "default",
            "productpage",
            serde_json::json!({"selector": {"matchLabels": {"app": "productpage"}},
                               "jwtRules": [{"issuer": "issuer.example", "jwksUri": uri}]}),
        ));
        let keys_of = |snapshot: &Snapshot| -> Vec<String> {
            use envoy_types::pb::envoy::config::core::v3::data_source;
            use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider;
            let chains = inbound_http_filters(snapshot);
            assert_eq!(chains.len(), 2, "PERMISSIVE: a mutual TLS and a plaintext chain");
            chains
                .into_iter()
                .map(|(name, filters, jwt)| {
                    assert_eq!(filters, [translate::jwt::JWT_FILTER, "envoy.filters.http.router"], "{name}");
                    let jwt = jwt.expect("the JWT filter's configuration");
                    match &jwt.providers["origins-0"].jwks_source_specifier {
                        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier
                        {
                            Some(data_source::Specifier::InlineString(keys)) => keys.clone(),
                            other => panic!("{other:?}"),
                        },
                        other => panic!("{other:?}"),
                    }
                })
                .collect()
        };
        let unfetched = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        assert_eq!(keys_of(&unfetched), [translate::jwt::NO_KEYS, translate::jwt::NO_KEYS]);
        assert!(!changes.has_changed().unwrap());
        let keys = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#;
        jwks.store(uri, keys.to_string());
        assert!(changes.has_changed().unwrap(), "new keys make a push");
        changes.borrow_and_update();
        let fetched = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        assert_eq!(keys_of(&fetched), [keys, keys]);
        jwks.store(uri, keys.to_string());
        assert!(!changes.has_changed().unwrap(), "the same keys again push nothing");
        // With RBAC on, the JWT filter comes first: RBAC reads what it verified.
        let mut crc =
            config::<crate::api::ClusterRbacConfig>("", "default", serde_json::json!({"mode": "ON"}));
        crc.metadata.namespace = None;
        index.apply::<crate::index::ClusterRbacConfigs>(&crc);
        for (name, filters, _) in inbound_http_filters(
            &generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy),
        ) {
            assert_eq!(
                filters,
                [translate::jwt::JWT_FILTER, translate::rbac::HTTP_RBAC, "envoy.filters.http.router"],
                "{name}"
            );
        }
        index.delete::<crate::index::ClusterRbacConfigs>(&crc);
        // Other workloads are not selected.
        let reviews = Proxy {
            id: ProxyId::parse("sidecar~10.244.0.20~reviews-v1-0.default~default.svc.cluster.local")
                .expect("an id"),
            identity: identity(),
        };
        for (_, filters, _) in inbound_http_filters(
            &generator.prepare(&index.snapshot(), &Changes::everything()).generate(&reviews),
        ) {
            assert_eq!(filters, ["envoy.filters.http.router"]);
        }
    }

    #[test]
    fn a_push_reuses_the_parts_that_did_not_change() {
        let generator = MeshGenerator::default();
        let mut index = bookinfo();
        apply_networking(&mut index, "destination-rule-all.yaml");
        apply_networking(&mut index, "virtual-service-all-v1.yaml");
        let proxy = productpage();
        let first = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        let again = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        assert_eq!(first, again);
        // The outbound part is the first part of each type.
        let outbound_same = |a: &Snapshot, b: &Snapshot, t: ResourceType| {
            Arc::ptr_eq(&a.resources(t).parts()[0], &b.resources(t).parts()[0])
        };
        for t in [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Route, ResourceType::Listener]
        {
            assert!(outbound_same(&first, &again, t), "{t}: nothing changed, the same part");
        }

        apply_networking(&mut index, "virtual-service-reviews-50-v3.yaml");
        let changed = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&proxy);
        assert!(!outbound_same(&again, &changed, ResourceType::Route), "the routes changed");
        for t in [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener] {
            assert!(outbound_same(&again, &changed, t), "{t}: unchanged by a VirtualService, the same part");
        }
        // The proxy's own (inbound) parts are kept too.
        for t in [ResourceType::Cluster, ResourceType::Listener] {
            assert!(Arc::ptr_eq(&again.resources(t).parts()[1], &changed.resources(t).parts()[1]), "{t}");
        }
        // In the changed routes, only the reviews route configuration is new.
        let (before, after) = (again.resources(ResourceType::Route), changed.resources(ResourceType::Route));
        let new: Vec<_> = after
            .iter()
            .filter(|r| before.get(&r.name).is_none_or(|b| !Arc::ptr_eq(b, r)))
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(new, ["reviews.default.svc.cluster.local:9080"]);
    }

    /// The inbound listener in `snapshot`, decoded.
    fn inbound_listener(snapshot: &Snapshot) -> Listener {
        let resources = snapshot.resources(ResourceType::Listener);
        let inbound = resources.get("virtualInbound").expect("an inbound listener");
        prost::Message::decode(inbound.value()).expect("a listener")
    }

    fn sidecar(pod: &str, ip: &str) -> Proxy {
        let id = ProxyId::parse(&format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"))
            .expect("a node id");
        Proxy { id, identity: identity() }
    }

    #[test]
    fn each_inbound_port_enforces_the_rbac_policies_of_its_service() {
        let generator = MeshGenerator::default();
        let mut index = bookinfo();
        let table = |index: &Index, pod: &str, ip: &str| {
            authz_table(&inbound_listener(
                &generator.prepare(&index.snapshot(), &Changes::everything()).generate(&sidecar(pod, ip)),
            ))
        };
        let productpage_ip = productpage().id.ip.to_string();
        // No switch: RBAC is off, every port open.
        assert!(table(&index, "productpage-v1-0", &productpage_ip).contains("RBAC off: open"));

        apply_rbac(&mut index, "rbac-config-ON.yaml");
        let on = table(&index, "productpage-v1-0", &productpage_ip);
        assert!(on.contains("(none: every request denied)"), "{on}");
        assert!(!on.contains("RBAC off"), "{on}");

        apply_rbac(&mut index, "productpage-policy.yaml");
        let granted = table(&index, "productpage-v1-0", &productpage_ip);
        // Both chains of the PERMISSIVE port, mutual TLS and plaintext.
        let rows: Vec<&str> = granted.lines().filter(|l| l.contains("productpage-viewer")).collect();
        assert_eq!(rows.len(), 2, "{granted}");
        assert!(rows.iter().any(|r| r.contains("mtls")) && rows.iter().any(|r| r.contains("plaintext")));

        // The role names productpage only: details still denies everything.
        let details =
            index.state().workloads.keys().find(|k| k.name.starts_with("details")).cloned().expect("details");
        let details_ip = index.state().workloads[&details].ip.clone().expect("an IP");
        let denied = table(&index, &details.name, &details_ip);
        assert!(
            denied.contains("(none: every request denied)") && !denied.contains("productpage-viewer"),
            "{denied}"
        );

        apply_rbac(&mut index, "details-reviews-policy-permissive.yaml");
        let shadow = table(&index, &details.name, &details_ip);
        let row = shadow.lines().find(|l| l.contains("details-reviews-viewer")).expect(&shadow);
        assert!(row.contains("(none: every request denied)"), "enforced: none, shadow: the role; {shadow}");
    }
}

#[cfg(test)]
mod gateway_tests {
    use super::super::auth::tests::identity;
    use super::super::proxy::ProxyId;
    use super::*;
    use crate::index::Pods;
    use crate::testing::bookinfo::{apply_networking, bookinfo};

    fn names(snapshot: &Snapshot, t: ResourceType) -> Vec<String> {
        snapshot.resources(t).iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn a_router_gets_its_gateways_listeners_and_routes_and_its_namespaces_clusters() {
        let mut index = bookinfo();
        apply_networking(&mut index, "bookinfo-gateway.yaml");
        let mut pod = crate::testing::objects::pod("ingress-0")
            .labels(&[("istio", "ingressgateway")])
            .ip("10.244.0.50")
            .build();
        pod.metadata.namespace = Some("istio-system".into());
        index.apply::<Pods>(&pod);
        let generator = MeshGenerator::default();
        let router = Proxy {
            id: ProxyId::parse("router~10.244.0.50~ingress-0.istio-system~istio-system.svc.cluster.local")
                .expect("a node id"),
            identity: identity(),
        };
        let snapshot = generator.prepare(&index.snapshot(), &Changes::everything()).generate(&router);
        assert_eq!(
            names(&snapshot, ResourceType::Listener),
            ["0.0.0.0_80"],
            "no virtualOutbound or virtualInbound"
        );
        assert_eq!(names(&snapshot, ResourceType::Route), ["http.80"]);
        let clusters = names(&snapshot, ResourceType::Cluster);
        assert!(clusters.contains(&"outbound|9080||productpage.default.svc.cluster.local".to_string()));
        assert!(!clusters.iter().any(|c| c.starts_with("inbound|")), "{clusters:?}");
        let routes = snapshot.resources(ResourceType::Route);
        let http = routes.get("http.80").expect("the routes");
        assert!(http.depends_on.iter().any(|c| c == "outbound|9080||productpage.default.svc.cluster.local"));

        // The same pod announcing itself as a sidecar gets a sidecar's listeners.
        let sidecar = Proxy {
            id: ProxyId::parse("sidecar~10.244.0.50~ingress-0.istio-system~istio-system.svc.cluster.local")
                .expect("a node id"),
            identity: identity(),
        };
        let listeners = names(
            &generator.prepare(&index.snapshot(), &Changes::everything()).generate(&sidecar),
            ResourceType::Listener,
        );
        assert!(listeners.contains(&"virtualOutbound".to_string()), "{listeners:?}");
    }
}

/// A push built from the index's log of changes must give every proxy what
/// a push built from nothing gives it.
#[cfg(test)]
mod incremental_tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1 as core;

    use super::super::auth::tests::identity;
    use super::super::proxy::ProxyId;
    use super::*;
    use crate::index::{Index, Pods};
    use crate::testing::bookinfo::{apply_networking, bookinfo};
    use crate::testing::objects::{self, from_yaml};

    fn slice(
        service: &str,
        name: &str,
        endpoints: &[(&str, Option<&str>)],
    ) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        objects::endpoint_slice("default", service, name, 9080, endpoints)
    }

    /// Pushes as the push loop does (the index's changes since the last
    /// push) and checks each proxy's snapshot against a fresh generator's.
    /// Proxies the push does not reach keep what they had. Returns how many
    /// it reached.
    struct Fleet {
        generator: MeshGenerator,
        held: BTreeMap<String, Snapshot>,
    }

    impl Fleet {
        fn new() -> Self {
            Self { generator: MeshGenerator::default(), held: BTreeMap::new() }
        }

        fn push(&mut self, index: &mut Index, step: &str) -> usize {
            let changes = index.take_changes();
            let cluster = index.snapshot();
            let context = self.generator.prepare(&cluster, &changes);
            let fresh = MeshGenerator::default().prepare(&cluster, &Changes::everything());
            let mut reached = 0;
            for proxy in proxies(index) {
                let name = proxy.id.to_string();
                let snapshot = match self.held.get(&name) {
                    Some(held) if !context.affects(&proxy) => held.clone(),
                    _ => {
                        reached += 1;
                        context.generate(&proxy)
                    }
                };
                let expected = fresh.generate(&proxy);
                for t in ResourceType::ALL {
                    let (got, want) = (snapshot.resources(t), expected.resources(t));
                    let names = |r: &Resources| {
                        r.iter().map(|r| (r.name.clone(), r.version.clone())).collect::<Vec<_>>()
                    };
                    assert_eq!(names(&got), names(&want), "{step}: {name}: {t}");
                }
                assert_eq!(snapshot, expected, "{step}: {name}");
                self.held.insert(name, snapshot);
            }
            reached
        }
    }

    /// A proxy for every pod: routers for those labelled as gateways.
    fn proxies(index: &Index) -> Vec<Proxy> {
        index
            .state()
            .workloads
            .values()
            .map(|w| {
                let kind = if w.labels.contains_key("istio") { "router" } else { "sidecar" };
                let ip = w.ip.clone().unwrap_or_else(|| "10.0.0.1".into());
                let ns = &w.key.namespace;
                let id = format!("{kind}~{ip}~{}.{ns}~{ns}.svc.cluster.local", w.key.name);
                Proxy { id: ProxyId::parse(&id).expect("a node id"), identity: identity() }
            })
            .collect()
    }

    fn secret(name: &str, cert: &str) -> core::Secret {
        objects::secret("istio-system", name, &[("tls.crt", cert), ("tls.key", "K")])
    }

    #[test]
    fn a_push_from_the_changes_gives_every_proxy_what_a_push_from_nothing_does() {
        let mut index = bookinfo();
        let mut ingress =
            objects::pod("ingress-0").labels(&[("istio", "ingressgateway")]).ip("10.244.0.50").build();
        ingress.metadata.namespace = Some("istio-system".into());
        index.apply::<Pods>(&ingress);
        let mut fleet = Fleet::new();
        let all = proxies(&index).len();
        assert_eq!(fleet.push(&mut index, "first push"), all);
        assert_eq!(fleet.push(&mut index, "nothing changed"), 0, "no change reaches no proxy");

        apply_networking(&mut index, "destination-rule-all.yaml");
        assert_eq!(fleet.push(&mut index, "DestinationRules"), all);
        apply_networking(&mut index, "virtual-service-all-v1.yaml");
        fleet.push(&mut index, "VirtualServices for every host");
        apply_networking(&mut index, "virtual-service-reviews-50-v3.yaml");
        fleet.push(&mut index, "the reviews VirtualService changed");
        apply_networking(&mut index, "bookinfo-gateway.yaml");
        fleet.push(&mut index, "a Gateway and its VirtualService");

        // Endpoints: a slice that drops a pod, one of addresses no pod has.
        index.apply::<EndpointSlices>(&slice(
            "reviews",
            "reviews-abcde",
            &[("10.244.0.15", Some("reviews-v2-0"))],
        ));
        fleet.push(&mut index, "reviews lost two endpoints");
        index.apply::<EndpointSlices>(&slice("details", "details-extra", &[("10.200.0.1", None)]));
        fleet.push(&mut index, "details got a second slice");
        index.delete::<EndpointSlices>(&slice("details", "details-extra", &[]));
        fleet.push(&mut index, "the second slice went");

        // Pods: a new one, then in a slice, then relabelled (its subset moves).
        let pod = |version: &str| {
            objects::pod("reviews-v9-0")
                .labels(&[("app", "reviews"), ("version", version), ("security.istio.io/tlsMode", "istio")])
                .ip("10.244.0.99")
                .service_account("bookinfo-reviews")
                .build()
        };
        index.apply::<Pods>(&pod("v2"));
        assert_eq!(fleet.push(&mut index, "a new pod"), 1, "only the new pod's proxy");
        index.apply::<EndpointSlices>(&slice(
            "reviews",
            "reviews-abcde",
            &[("10.244.0.15", Some("reviews-v2-0")), ("10.244.0.99", Some("reviews-v9-0"))],
        ));
        fleet.push(&mut index, "the new pod is an endpoint");
        index.apply::<Pods>(&pod("v3"));
        fleet.push(&mut index, "the endpoint's pod moved to v3");
        index.apply::<Pods>(
            &objects::pod("reviews-v9-0")
                .labels(&[("app", "reviews"), ("version", "v3")])
                .ip("10.244.0.99")
                .service_account("other")
                .build(),
        );
        fleet.push(&mut index, "the endpoint's pod has another ServiceAccount");

        // DestinationRules: a subset gone (a route still names it), a hash
        // policy, the subset back, a rule deleted; a rule with a wildcard
        // host or a workload selector reaches everything.
        let rule = |name: &str, spec: &str| {
            from_yaml(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
            ))
        };
        let reviews = |subsets: &str| {
            rule(
                "reviews",
                &format!(
                    "{{host: reviews, trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}, subsets: [{subsets}]}}"
                ),
            )
        };
        let v1_v2 = "{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}";
        index.apply::<DestinationRules>(&reviews(v1_v2));
        fleet.push(&mut index, "reviews lost subset v3 and hashes by header");
        index.apply::<DestinationRules>(&reviews(&format!("{v1_v2}, {{name: v3, labels: {{version: v3}}}}")));
        fleet.push(&mut index, "reviews has v3 again");
        // details' VirtualService sends to a subset of ratings: the rule
        // of ratings reaches details' routes too.
        index.apply::<VirtualServices>(&from_yaml(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: details, namespace: default}\n\
             spec:\n  hosts: [details]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v1}\n",
        ));
        fleet.push(&mut index, "details routed to ratings v1");
        index.delete::<DestinationRules>(&rule("ratings", "{host: ratings}"));
        fleet.push(&mut index, "the ratings DestinationRule went");
        let wide =
            rule("wide", "{host: '*.default.svc.cluster.local', trafficPolicy: {tls: {mode: DISABLE}}}");
        index.apply::<DestinationRules>(&wide);
        assert_eq!(fleet.push(&mut index, "a DestinationRule for every host"), proxies(&index).len());
        index.delete::<DestinationRules>(&wide);
        fleet.push(&mut index, "it went");
        let selecting = rule(
            "selecting",
            "{host: details, workloadSelector: {matchLabels: {app: productpage}}, subsets: []}",
        );
        index.apply::<DestinationRules>(&selecting);
        fleet.push(&mut index, "a DestinationRule for productpage's proxies");
        index.delete::<DestinationRules>(&selecting);
        fleet.push(&mut index, "it went too");

        // A wildcard VirtualService reaches every route; deleting one too.
        let wildcard = from_yaml(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: wild, namespace: default}\n\
             spec:\n  hosts: ['*.default.svc.cluster.local']\n  http:\n  - route:\n    - destination: {host: ratings}\n",
        );
        index.apply::<VirtualServices>(&wildcard);
        fleet.push(&mut index, "a wildcard VirtualService");
        index.delete::<VirtualServices>(&wildcard);
        fleet.push(&mut index, "the wildcard VirtualService went");

        // Secrets reach the gateway alone.
        index.apply::<Secrets>(&secret("bookinfo-credential", "C1"));
        assert_eq!(fleet.push(&mut index, "a TLS Secret"), 1, "the gateway alone");
        index.apply::<Secrets>(&secret("bookinfo-credential", "C2"));
        assert_eq!(fleet.push(&mut index, "the Secret's certificate changed"), 1);

        // Policies reach every sidecar's inbound part, not the gateway.
        let sidecars = proxies(&index).iter().filter(|p| p.id.kind == ProxyKind::Sidecar).count();
        let strict = from_yaml(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\n\
             spec: {mtls: {mode: STRICT}}\n",
        );
        index.apply::<PeerAuthentications>(&strict);
        assert_eq!(fleet.push(&mut index, "STRICT mutual TLS"), sidecars);
        crate::testing::bookinfo::apply_rbac(&mut index, "rbac-config-ON.yaml");
        crate::testing::bookinfo::apply_rbac(&mut index, "productpage-policy.yaml");
        assert_eq!(fleet.push(&mut index, "RBAC on, a role and its binding"), sidecars);
        index.delete::<PeerAuthentications>(&strict);
        fleet.push(&mut index, "PERMISSIVE again");

        // A pod gone; a Service's change is not followed in detail.
        index.delete::<Pods>(&pod("v3"));
        fleet.push(&mut index, "the pod went");
        let mut service = objects::service("extra").port("http", 9080).cluster_ip("10.96.0.99").build();
        service.metadata.namespace = Some("default".into());
        index.apply::<crate::index::Services>(&service);
        assert_eq!(fleet.push(&mut index, "a new Service"), proxies(&index).len());

        // Pods a ServiceEntry selects are its endpoints: a pod's change then reaches everyone.
        index.apply::<crate::index::ServiceEntries>(&from_yaml(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm, namespace: default}\n\
             spec:\n  hosts: [vm.example.com]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n\
             \x20 resolution: STATIC\n  workloadSelector: {labels: {app: vm}}\n",
        ));
        fleet.push(&mut index, "a ServiceEntry selecting pods");
        index.apply::<Pods>(&objects::pod("vm-0").labels(&[("app", "vm")]).ip("10.244.0.77").build());
        assert_eq!(fleet.push(&mut index, "a pod the ServiceEntry selects"), proxies(&index).len());
    }
}
