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

use super::generator::{Generator, PushContext, ScopeCache};
use super::jwks::{FetchedKeys, Jwks};
use super::proxy::{Proxy, ProxyKind};
use super::resource_type::ResourceType;
use super::snapshot::{Resource, ResourceSet, Resources, Snapshot};
use crate::index::Index;
use crate::model::ObjectKey;
use crate::model::Workload;
use crate::model::credential::TlsCredential;
use crate::model::jwt::JwtPolicies;
use crate::model::mesh::{MeshView, ProxyContext, ScopeKey};
use crate::model::mtls::{MtlsMode, MtlsPolicies};
use crate::model::rbac::RbacPolicies;
use crate::translate;
use crate::translate::rbac::Destination;
use crate::translate::route::route_clusters;
use crate::translate::sidecar::{InboundPort, PortPolicy};

/// Translates the index into each proxy's configuration.
pub struct MeshGenerator {
    /// What the last push packed, whose unchanged parts the next reuses.
    last: Arc<Mutex<Packing>>,
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

/// Packed parts, by scope (outbound) and by pod (inbound, gateways).
#[derive(Default)]
struct Packing {
    outbound: HashMap<ScopeKey, Arc<PackedOutbound>>,
    inbound: HashMap<ObjectKey, Arc<PackedInbound>>,
    gateways: HashMap<ObjectKey, Arc<PackedGateway>>,
    /// The SDS secrets of the TLS credentials in each namespace's Secrets.
    credentials: HashMap<String, Arc<ResourceSet>>,
}

impl Generator for MeshGenerator {
    fn prepare(&self, index: &Index) -> Arc<dyn PushContext> {
        let state = index.state();
        let view = MeshView::build(state).with_trust_domain(&self.trust_domain);
        let mtls = MtlsPolicies::build(state);
        let jwt = JwtPolicies::build(state);
        let rbac = RbacPolicies::build(state);
        let proxies = state
            .workloads
            .iter()
            .map(|(key, w)| (key.clone(), (ProxyContext::from_workload(w), w.clone())))
            .collect();
        let (previous, credentials) = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let previous = std::mem::take(&mut *last);
            let credentials = pack_credentials(state.credentials, &previous.credentials);
            last.credentials = credentials.clone();
            (previous, credentials)
        };
        Arc::new(MeshContext {
            credentials,
            view,
            mtls,
            jwt,
            keys: self.jwks.fetched(),
            rbac,
            proxies,
            outbound: ScopeCache::default(),
            previous,
            last: self.last.clone(),
        })
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.jwks.subscribe())
    }
}

struct MeshContext {
    view: MeshView,
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
    /// Each pod's proxy context, and the pod itself (policies select on it).
    proxies: HashMap<ObjectKey, (ProxyContext, Workload)>,
    outbound: ScopeCache<ScopeKey, PackedOutbound>,
    /// The previous push's packing, whose unchanged parts are reused.
    previous: Packing,
    /// Where this push's packing is kept for the next.
    last: Arc<Mutex<Packing>>,
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

/// A scope's outbound configuration, packed for sharing.
struct PackedOutbound {
    clusters: Arc<ResourceSet>,
    endpoints: Arc<ResourceSet>,
    routes: Arc<ResourceSet>,
    listener: Arc<ResourceSet>,
}

impl PackedOutbound {
    /// Packs the scope's outbound configuration, reusing what did not
    /// change since `previous`.
    fn new(view: &MeshView, scope: &ScopeKey, previous: Option<&PackedOutbound>) -> Self {
        let out = translate::sidecar::outbound(view, scope);
        Self {
            clusters: reuse(
                ResourceSet::of(out.clusters, |c: &Cluster| c.name.clone()),
                previous.map(|p| &p.clusters),
            ),
            endpoints: reuse(
                ResourceSet::of(out.endpoints, |e: &ClusterLoadAssignment| e.cluster_name.clone()),
                previous.map(|p| &p.endpoints),
            ),
            routes: reuse(
                ResourceSet::new(
                    out.routes
                        .iter()
                        .map(|r| Arc::new(Resource::of(r.name.clone(), r).depending_on(route_clusters(r)))),
                ),
                previous.map(|p| &p.routes),
            ),
            listener: reuse(
                listener_set(&out.listener, out.listener_clusters),
                previous.map(|p| &p.listener),
            ),
        }
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
            routes: reuse(
                ResourceSet::new(
                    config
                        .routes
                        .iter()
                        .map(|r| Arc::new(Resource::of(r.name.clone(), r).depending_on(route_clusters(r)))),
                ),
                previous.map(|p| &p.routes),
            ),
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
    fn generate(&self, proxy: &Proxy) -> Snapshot {
        let key = ObjectKey::new(&proxy.id.namespace, &proxy.id.pod);
        // Authorized streams have their pod in the index; a pod deleted
        // since gets the configuration of its namespace until its stream ends.
        let known = self.proxies.get(&key);
        let context = known.map(|(context, _)| context.clone()).unwrap_or_else(|| ProxyContext {
            namespace: proxy.id.namespace.clone(),
            pod: proxy.id.pod.clone(),
            ip: Some(proxy.id.ip.to_string()),
            ..ProxyContext::default()
        });
        // A pod gone from the index has no policies' say: Istio's default
        // (and no Service selects it, so it has no inbound ports).
        let policy = |port: &InboundPort| match known {
            Some((_, workload)) => self.port_policy(workload, port),
            None => PortPolicy { mtls: MtlsMode::Permissive, ..PortPolicy::default() },
        };
        let scope = self.view.scope(&context);
        let outbound = self.outbound.get_or_build(scope.clone(), || {
            PackedOutbound::new(&self.view, &scope, self.previous.outbound.get(&scope).map(|p| &**p))
        });
        if proxy.id.kind == ProxyKind::Router {
            // A gateway: the clusters of its namespace, its own listeners and
            // routes; no virtualOutbound, no virtualInbound.
            let gateway = Arc::new(PackedGateway::new(
                &self.view,
                &context,
                self.previous.gateways.get(&key).map(|p| &**p),
            ));
            {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                last.outbound.entry(scope).or_insert_with(|| outbound.clone());
                last.gateways.insert(key, gateway.clone());
            }
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
        let inbound = Arc::new(PackedInbound::new(
            &self.view,
            &context,
            policy,
            self.previous.inbound.get(&key).map(|p| &**p),
        ));
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            last.outbound.entry(scope).or_insert_with(|| outbound.clone());
            last.inbound.insert(key, inbound.clone());
        }

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
                (chain.name.clone(), manager.http_filters.iter().map(|f| f.name.clone()).collect(), jwt)
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
        let before = generator.prepare(&index).generate(&proxy);
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
        let unfetched = generator.prepare(&index).generate(&proxy);
        assert_eq!(keys_of(&unfetched), [translate::jwt::NO_KEYS, translate::jwt::NO_KEYS]);
        assert!(!changes.has_changed().unwrap());
        let keys = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#;
        jwks.store(uri, keys.to_string());
        assert!(changes.has_changed().unwrap(), "new keys make a push");
        changes.borrow_and_update();
        let fetched = generator.prepare(&index).generate(&proxy);
        assert_eq!(keys_of(&fetched), [keys, keys]);
        jwks.store(uri, keys.to_string());
        assert!(!changes.has_changed().unwrap(), "the same keys again push nothing");
        // With RBAC on, the JWT filter comes first: RBAC reads what it verified.
        let mut crc =
            config::<crate::api::ClusterRbacConfig>("", "default", serde_json::json!({"mode": "ON"}));
        crc.metadata.namespace = None;
        index.apply::<crate::index::ClusterRbacConfigs>(&crc);
        for (name, filters, _) in inbound_http_filters(&generator.prepare(&index).generate(&proxy)) {
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
        for (_, filters, _) in inbound_http_filters(&generator.prepare(&index).generate(&reviews)) {
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
        let first = generator.prepare(&index).generate(&proxy);
        let again = generator.prepare(&index).generate(&proxy);
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
        let changed = generator.prepare(&index).generate(&proxy);
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
            authz_table(&inbound_listener(&generator.prepare(index).generate(&sidecar(pod, ip))))
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
        let snapshot = generator.prepare(&index).generate(&router);
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
        let listeners = names(&generator.prepare(&index).generate(&sidecar), ResourceType::Listener);
        assert!(listeners.contains(&"virtualOutbound".to_string()), "{listeners:?}");
    }
}
