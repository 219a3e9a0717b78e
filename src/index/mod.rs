//! Watch events -> model. The index is a plain struct with synchronous
//! `apply`/`delete`/`reset`, so tests drive it without a cluster; the
//! watch loops in [`watch`] feed it from the API server.
//!
//! Every change that alters what the index holds bumps a revision published
//! on a `tokio::sync::watch` channel; consumers (the xDS layer, status
//! writers) wait on it and read the index again. An update that leaves the
//! model entry unchanged (a pod's resourceVersion moving, say) does not
//! bump it, so an idle cluster costs nothing downstream. A second revision
//! moves only for the kinds validation reads (Istio configuration and
//! Services), so status and the webhook's context are not rebuilt on every
//! Pod or EndpointSlice change.
//!
//! An object that cannot be parsed is logged, counted and skipped; when it
//! was an update, the last good version is kept, so one bad object never
//! takes working configuration away.
//!
//! Readers see the stores through a small read API: [`Index::state`] (every
//! store, by reference, as the model's [`ClusterState`]: the mesh view,
//! validation's context and status are built from it), [`Index::get`] and
//! [`Index::count`] per kind, and the revisions. Only `apply`, `delete` and
//! `reset` change what it holds.

pub mod kinds;
pub mod watch;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch as channel;

use crate::api::{
    cluster_rbac_config::ClusterRbacConfigSpec, destination_rule::DestinationRuleSpec, gateway::GatewaySpec,
    mesh_policy::MeshPolicySpec, peer_authentication::PeerAuthenticationSpec, policy::PolicySpec,
    rbac_config::RbacConfigSpec, request_authentication::RequestAuthenticationSpec,
    service_entry::ServiceEntrySpec, service_role::ServiceRoleSpec,
    service_role_binding::ServiceRoleBindingSpec, sidecar::SidecarSpec, virtual_service::VirtualServiceSpec,
};
pub use crate::model::Store;
use crate::model::credential::TlsCredential;
use crate::model::{
    ClusterState, Config, EndpointSlice, MeshConfig, Namespace, ObjectKey, Service, Workload,
};

pub use kinds::{
    ClusterRbacConfigs, DestinationRules, EndpointSlices, Gateways, MeshPolicies, Namespaces,
    PeerAuthentications, Pods, Policies, RbacConfigs, RequestAuthentications, Secrets, ServiceEntries,
    ServiceRoleBindings, ServiceRoles, Services, Sidecars, VirtualServices,
};

/// Why a watched object could not be turned into a model entry.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{kind} {key}: field `{path}`: {reason}")]
    Malformed { kind: &'static str, key: ObjectKey, path: String, reason: String },
    #[error("{kind} object has no name")]
    Unnamed { kind: &'static str },
}

/// One kind the index keeps: what is watched, what is stored, and how the
/// one becomes the other.
pub trait Kind: 'static {
    /// The object as the watch delivers it.
    type Object: kube::Resource + Clone + Send + Sync + std::fmt::Debug + 'static;
    /// The model entry kept for it.
    type Entry: Clone + PartialEq + Serialize;
    /// The kind's name, for logs and metric labels.
    const NAME: &'static str;
    /// Whether validating Istio configuration reads this kind (Services do,
    /// Pods do not): only such kinds move [`Index::config_revision`].
    const VALIDATION_INPUT: bool = true;

    fn key(obj: &Self::Object) -> Result<ObjectKey, ConvertError>;
    fn convert(obj: &Self::Object) -> Result<Self::Entry, ConvertError>;
    /// Whether an entry is worth keeping; an object whose entry is not
    /// (a Secret that holds nothing for TLS) is held as if it did not exist.
    fn kept(_entry: &Self::Entry) -> bool {
        true
    }
    fn store(cluster: &mut ClusterSnapshot) -> &mut Store<Self::Entry>;
    fn store_ref(cluster: &ClusterSnapshot) -> &Store<Self::Entry>;
}

/// Counters the index keeps about itself, exported on /metrics.
#[derive(Clone, Default)]
pub struct IndexMetrics {
    objects: Family<KindLabel, Gauge>,
    skipped: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl IndexMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("index_objects", "Objects held in the index, by kind", self.objects.clone());
        registry.register(
            "index_skipped_objects",
            "Watched objects skipped because they could not be parsed, by kind",
            self.skipped.clone(),
        );
    }

    pub fn skipped(&self, kind: &'static str) -> u64 {
        self.skipped.get_or_create(&KindLabel { kind }).get()
    }
}

/// Every store of the index at one moment. The stores are persistent
/// maps, so a snapshot costs a reference count per kind: the push loop
/// takes one under the index's lock and builds from it without the lock.
#[derive(Clone)]
pub struct ClusterSnapshot {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    workloads: Store<Workload>,
    namespaces: Store<Namespace>,
    virtual_services: Store<Config<VirtualServiceSpec>>,
    destination_rules: Store<Config<DestinationRuleSpec>>,
    gateways: Store<Config<GatewaySpec>>,
    credentials: Store<TlsCredential>,
    service_entries: Store<Config<ServiceEntrySpec>>,
    sidecars: Store<Config<SidecarSpec>>,
    service_roles: Store<Config<ServiceRoleSpec>>,
    service_role_bindings: Store<Config<ServiceRoleBindingSpec>>,
    cluster_rbac_configs: Store<Config<ClusterRbacConfigSpec>>,
    rbac_configs: Store<Config<RbacConfigSpec>>,
    peer_authentications: Store<Config<PeerAuthenticationSpec>>,
    request_authentications: Store<Config<RequestAuthenticationSpec>>,
    policies: Store<Config<PolicySpec>>,
    mesh_policies: Store<Config<MeshPolicySpec>>,
    mesh_config: MeshConfig,
}

impl ClusterSnapshot {
    fn new(mesh_config: MeshConfig) -> Self {
        Self {
            services: Store::new(),
            endpoint_slices: Store::new(),
            workloads: Store::new(),
            namespaces: Store::new(),
            virtual_services: Store::new(),
            destination_rules: Store::new(),
            gateways: Store::new(),
            credentials: Store::new(),
            service_entries: Store::new(),
            sidecars: Store::new(),
            service_roles: Store::new(),
            service_role_bindings: Store::new(),
            cluster_rbac_configs: Store::new(),
            rbac_configs: Store::new(),
            peer_authentications: Store::new(),
            request_authentications: Store::new(),
            policies: Store::new(),
            mesh_policies: Store::new(),
            mesh_config,
        }
    }

    /// Every store, by reference: what the layers above read.
    pub fn state(&self) -> ClusterState<'_> {
        ClusterState {
            services: &self.services,
            endpoint_slices: &self.endpoint_slices,
            workloads: &self.workloads,
            namespaces: &self.namespaces,
            virtual_services: &self.virtual_services,
            destination_rules: &self.destination_rules,
            gateways: &self.gateways,
            credentials: &self.credentials,
            service_entries: &self.service_entries,
            sidecars: &self.sidecars,
            service_roles: &self.service_roles,
            service_role_bindings: &self.service_role_bindings,
            cluster_rbac_configs: &self.cluster_rbac_configs,
            rbac_configs: &self.rbac_configs,
            peer_authentications: &self.peer_authentications,
            request_authentications: &self.request_authentications,
            policies: &self.policies,
            mesh_policies: &self.mesh_policies,
            mesh_config: &self.mesh_config,
        }
    }

    /// The entry of one object, by namespace (empty for cluster-scoped
    /// kinds) and name.
    pub fn get<K: Kind>(&self, key: &ObjectKey) -> Option<&K::Entry> {
        K::store_ref(self).get(key)
    }
}

/// Which objects changed since the push loop last asked
/// ([`Index::take_changes`]): by kind, the keys of the objects added,
/// updated or removed, or the whole kind after a relist. A push rebuilds
/// only what these reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have changed: nothing is known to be as it was.
    everything: bool,
    /// Kinds every object of which may have changed (a relist).
    kinds: BTreeSet<&'static str>,
    /// Objects that changed, by kind name.
    objects: BTreeSet<(&'static str, ObjectKey)>,
}

/// Past this many changed objects a push rebuilds everything anyway, and
/// the log stops growing.
const MAX_LOGGED_CHANGES: usize = 10_000;

impl Changes {
    /// Nothing known to be unchanged: a first push, or a change of an
    /// input outside the index (fetched JWT keys).
    pub fn everything() -> Self {
        Self { everything: true, ..Self::default() }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.kinds.is_empty() && self.objects.is_empty()
    }

    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Whether any object of a kind changed.
    pub fn touches(&self, kind: &str) -> bool {
        self.everything
            || self.kinds.contains(kind)
            || self.objects.range((kind, ObjectKey::default())..).next().is_some_and(|(k, _)| *k == kind)
    }

    /// Whether objects of kinds other than `kinds` changed.
    pub fn beyond(&self, kinds: &[&str]) -> bool {
        self.everything
            || self.kinds.iter().any(|k| !kinds.contains(k))
            || self.objects.iter().any(|(k, _)| !kinds.contains(k))
    }

    /// The keys of the objects of `K` that changed; `None` when any of
    /// them may have (a relist, or everything changed).
    pub fn keys<K: Kind>(&self) -> Option<impl Iterator<Item = &ObjectKey>> {
        if self.everything || self.kinds.contains(K::NAME) {
            return None;
        }
        let from = (K::NAME, ObjectKey::default());
        Some(self.objects.range(from..).take_while(|(k, _)| *k == K::NAME).map(|(_, key)| key))
    }

    /// Adds what `other` says changed.
    pub fn merge(&mut self, other: Changes) {
        self.everything |= other.everything;
        self.kinds.extend(other.kinds);
        self.objects.extend(other.objects);
        self.bound();
    }

    fn object(&mut self, kind: &'static str, key: ObjectKey) {
        if !self.everything && !self.kinds.contains(kind) {
            self.objects.insert((kind, key));
            self.bound();
        }
    }

    fn kind(&mut self, kind: &'static str) {
        self.kinds.insert(kind);
        self.objects.retain(|(k, _)| *k != kind);
    }

    fn bound(&mut self) {
        if self.objects.len() > MAX_LOGGED_CHANGES {
            *self = Self::everything();
        }
    }
}

/// Everything the controller knows about the cluster.
pub struct Index {
    cluster: ClusterSnapshot,
    /// What changed since the push loop last took it.
    changes: Changes,
    revision: channel::Sender<u64>,
    config_revision: channel::Sender<u64>,
    metrics: IndexMetrics,
}

/// The index shared between the watch loops and its readers.
#[derive(Clone)]
pub struct SharedIndex(Arc<Mutex<Index>>);

impl SharedIndex {
    pub fn new(index: Index) -> Self {
        Self(Arc::new(Mutex::new(index)))
    }

    /// Locks the index. A watch loop that panicked while holding the lock
    /// left a consistent map behind (every mutation is a single insert or
    /// remove), so a poisoned lock is taken over rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Index> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Index {
    pub fn new(metrics: IndexMetrics) -> Self {
        Self {
            cluster: ClusterSnapshot::new(MeshConfig::default()),
            // The first push builds everything.
            changes: Changes::everything(),
            revision: channel::Sender::new(0),
            config_revision: channel::Sender::new(0),
            metrics,
        }
    }

    /// The index with the mesh-wide settings its readers get in
    /// [`ClusterState::mesh_config`] (Istio's defaults otherwise).
    pub fn with_mesh_config(mut self, mesh_config: MeshConfig) -> Self {
        self.cluster.mesh_config = mesh_config;
        self
    }

    /// The index holding what `cluster` holds, for fixtures built once and
    /// reused (fuzz targets start every input from Bookinfo).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn with_cluster(mut self, cluster: ClusterSnapshot) -> Self {
        self.cluster = cluster;
        self
    }

    /// A receiver that sees the revision move on every change.
    pub fn subscribe(&self) -> channel::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// A receiver that moves only when something validation reads changed
    /// (Istio configuration, Services), not on every Pod or EndpointSlice.
    pub fn subscribe_config(&self) -> channel::Receiver<u64> {
        self.config_revision.subscribe()
    }

    pub fn config_revision(&self) -> u64 {
        *self.config_revision.borrow()
    }

    /// Adds an object of any kind the index keeps, as JSON (from a file, a
    /// fuzzer), by its `kind`; false for a kind the index does not keep or
    /// an object that does not decode as one.
    pub fn apply_value(&mut self, object: serde_json::Value) -> bool {
        fn apply<K: Kind>(index: &mut Index, object: serde_json::Value) -> bool
        where
            K::Object: serde::de::DeserializeOwned,
        {
            let Ok(object) = serde_json::from_value::<K::Object>(object) else { return false };
            index.apply::<K>(&object);
            true
        }
        let kind = object.get("kind").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => apply::<Namespaces>(self, object),
            "Service" => apply::<Services>(self, object),
            "EndpointSlice" => apply::<EndpointSlices>(self, object),
            "Pod" => apply::<Pods>(self, object),
            "Secret" => apply::<Secrets>(self, object),
            "VirtualService" => apply::<VirtualServices>(self, object),
            "DestinationRule" => apply::<DestinationRules>(self, object),
            "Gateway" => apply::<Gateways>(self, object),
            "ServiceEntry" => apply::<ServiceEntries>(self, object),
            "Sidecar" => apply::<Sidecars>(self, object),
            "ServiceRole" => apply::<ServiceRoles>(self, object),
            "ServiceRoleBinding" => apply::<ServiceRoleBindings>(self, object),
            "ClusterRbacConfig" => apply::<ClusterRbacConfigs>(self, object),
            "RbacConfig" => apply::<RbacConfigs>(self, object),
            "PeerAuthentication" => apply::<PeerAuthentications>(self, object),
            "RequestAuthentication" => apply::<RequestAuthentications>(self, object),
            "Policy" => apply::<Policies>(self, object),
            "MeshPolicy" => apply::<MeshPolicies>(self, object),
            _ => false,
        }
    }

    /// Adds or updates one object. A malformed object is logged, counted and
    /// skipped, and whatever was stored for it before stays.
    pub fn apply<K: Kind>(&mut self, obj: &K::Object) {
        let converted = K::key(obj).and_then(|key| Ok((key, K::convert(obj)?)));
        let (key, entry) = match converted {
            Ok(pair) => pair,
            Err(error) => return self.skip::<K>(error),
        };
        let store = K::store(&mut self.cluster);
        if !K::kept(&entry) {
            if store.remove(&key).is_some() {
                self.changed::<K>(Some(key));
            }
            return;
        }
        if store.get(&key) == Some(&entry) {
            return;
        }
        store.insert(key.clone(), entry);
        self.changed::<K>(Some(key));
    }

    /// Removes one object.
    pub fn delete<K: Kind>(&mut self, obj: &K::Object) {
        let Ok(key) = K::key(obj) else { return };
        if K::store(&mut self.cluster).remove(&key).is_some() {
            self.changed::<K>(Some(key));
        }
    }

    /// Replaces every entry of a kind after a (re)list: objects that went
    /// away while the watch was down are dropped. A malformed object keeps
    /// its previous entry, as in [`Index::apply`].
    pub fn reset<K: Kind>(&mut self, objs: &[K::Object]) {
        let mut fresh = Store::new();
        for obj in objs {
            let key = match K::key(obj) {
                Ok(key) => key,
                Err(error) => {
                    self.skip::<K>(error);
                    continue;
                }
            };
            match K::convert(obj) {
                Ok(entry) if !K::kept(&entry) => {}
                Ok(entry) => {
                    fresh.insert(key, entry);
                }
                Err(error) => {
                    if let Some(old) = K::store(&mut self.cluster).get(&key) {
                        fresh.insert(key, old.clone());
                    }
                    self.skip::<K>(error);
                }
            }
        }
        let store = K::store(&mut self.cluster);
        if *store != fresh {
            *store = fresh;
            self.changed::<K>(None);
        } else {
            // The gauge still needs setting on the first list of an empty kind.
            self.update_gauge::<K>();
        }
    }

    /// Every store, by reference: what the layers above read.
    pub fn state(&self) -> ClusterState<'_> {
        self.cluster.state()
    }

    /// Every store as it is now, to read without the lock.
    pub fn snapshot(&self) -> ClusterSnapshot {
        self.cluster.clone()
    }

    /// What changed since the last [`Index::take_changes`], left in place.
    pub fn pending_changes(&self) -> &Changes {
        &self.changes
    }

    /// What changed since the last call (everything, before the first),
    /// and forgets it: for the one push loop.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The entry of one object, by namespace (empty for cluster-scoped
    /// kinds) and name.
    pub fn get<K: Kind>(&self, key: &ObjectKey) -> Option<&K::Entry> {
        self.cluster.get::<K>(key)
    }

    /// How many objects of a kind the index holds.
    pub fn count<K: Kind>(&self) -> usize {
        K::store_ref(&self.cluster).len()
    }

    fn skip<K: Kind>(&self, error: ConvertError) {
        tracing::warn!(kind = K::NAME, %error, "skipping an object the index cannot parse");
        self.metrics.skipped.get_or_create(&KindLabel { kind: K::NAME }).inc();
    }

    /// Records a change of one object, or of the whole kind (`None`).
    fn changed<K: Kind>(&mut self, key: Option<ObjectKey>) {
        match key {
            Some(key) => self.changes.object(K::NAME, key),
            None => self.changes.kind(K::NAME),
        }
        self.update_gauge::<K>();
        self.revision.send_modify(|r| *r += 1);
        if K::VALIDATION_INPUT {
            self.config_revision.send_modify(|r| *r += 1);
        }
    }

    fn update_gauge<K: Kind>(&self) {
        let n = K::store_ref(&self.cluster).len() as i64;
        self.metrics.objects.get_or_create(&KindLabel { kind: K::NAME }).set(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::{ApiResource, DynamicObject, ObjectMeta};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn vs(name: &str, generation: i64, spec: serde_json::Value) -> DynamicObject {
        let ar = ApiResource::erase::<crate::api::VirtualService>(&());
        let mut obj = DynamicObject::new(name, &ar).within("default");
        obj.metadata.generation = Some(generation);
        obj.data = json!({ "spec": spec });
        obj
    }

    fn index() -> Index {
        Index::new(IndexMetrics::default())
    }

    #[test]
    fn applies_a_virtual_service_and_publishes_a_revision() {
        let mut ix = index();
        let rx = ix.subscribe();
        ix.apply::<VirtualServices>(&vs("reviews", 1, json!({"hosts": ["reviews"]})));
        let key = ObjectKey::new("default", "reviews");
        let entry = ix.get::<VirtualServices>(&key).expect("indexed");
        assert_eq!(entry.spec.hosts, vec!["reviews".to_string()]);
        assert_eq!(entry.generation, 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(ix.revision(), 1);
    }

    #[test]
    fn an_unchanged_update_does_not_bump_the_revision() {
        let mut ix = index();
        ix.apply::<VirtualServices>(&vs("reviews", 1, json!({"hosts": ["reviews"]})));
        ix.apply::<VirtualServices>(&vs("reviews", 1, json!({"hosts": ["reviews"]})));
        assert_eq!(ix.revision(), 1);
    }

    #[test]
    fn pods_move_the_revision_but_not_the_config_revision() {
        let mut ix = index();
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        ix.apply::<Pods>(&pod);
        assert_eq!((ix.revision(), ix.config_revision()), (1, 0));
        ix.apply::<VirtualServices>(&vs("reviews", 1, json!({"hosts": ["reviews"]})));
        assert_eq!((ix.revision(), ix.config_revision()), (2, 1));
    }

    #[test]
    fn skips_and_counts_a_malformed_object() {
        let metrics = IndexMetrics::default();
        let mut ix = Index::new(metrics.clone());
        ix.apply::<VirtualServices>(&vs("bad", 1, json!({"hosts": "not-a-list"})));
        assert_eq!(ix.count::<VirtualServices>(), 0);
        assert_eq!(ix.revision(), 0);
        assert_eq!(metrics.skipped("VirtualService"), 1);
    }

    #[test]
    fn a_malformed_update_keeps_the_last_good_version() {
        let metrics = IndexMetrics::default();
        let mut ix = Index::new(metrics.clone());
        ix.apply::<VirtualServices>(&vs("reviews", 1, json!({"hosts": ["reviews"]})));
        ix.apply::<VirtualServices>(&vs("reviews", 2, json!({"http": [{"route": 7}]})));
        let kept = ix.get::<VirtualServices>(&ObjectKey::new("default", "reviews")).expect("kept");
        assert_eq!(kept.generation, 1);
        assert_eq!(metrics.skipped("VirtualService"), 1);
        // Also through a relist.
        ix.reset::<VirtualServices>(&[vs("reviews", 3, json!({"hosts": 1}))]);
        assert_eq!(
            ix.get::<VirtualServices>(&ObjectKey::new("default", "reviews")).map(|c| c.generation),
            Some(1)
        );
    }

    /// Gateways, ServiceEntries and Sidecars are held like the other Istio
    /// kinds (for validation, status and /debug/configz), and a malformed
    /// one is skipped with its field named.
    #[test]
    fn gateways_service_entries_and_sidecars_reach_the_index() {
        fn object<R: kube::Resource<DynamicType = ()>>(name: &str, spec: serde_json::Value) -> DynamicObject {
            let mut obj = DynamicObject::new(name, &ApiResource::erase::<R>(&())).within("default");
            obj.metadata.generation = Some(1);
            obj.data = json!({ "spec": spec });
            obj
        }
        let mut ix = index();
        let gateway = json!({"selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        ix.apply::<Gateways>(&object::<crate::api::Gateway>("edge", gateway));
        let entry = json!({"hosts": ["www.googleapis.com"], "resolution": "DNS",
            "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}]});
        ix.apply::<ServiceEntries>(&object::<crate::api::ServiceEntry>("googleapis", entry));
        let sidecar = json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]});
        ix.apply::<Sidecars>(&object::<crate::api::Sidecar>("default", sidecar));
        let state = ix.state();
        assert_eq!(state.gateways.len(), 1);
        assert_eq!(
            ix.get::<Gateways>(&ObjectKey::new("default", "edge")).expect("indexed").spec.servers.len(),
            1
        );
        assert_eq!(state.service_entries.len(), 1);
        assert_eq!(state.sidecars.len(), 1);
        assert_eq!(ix.config_revision(), 3);

        let bad = object::<crate::api::ServiceEntry>("bad", json!({"resolution": "SOMETIMES"}));
        let err = ServiceEntries::convert(&bad).expect_err("malformed");
        assert!(err.to_string().contains("default/bad") && err.to_string().contains("resolution"), "{err}");
        ix.apply::<ServiceEntries>(&bad);
        assert_eq!(ix.count::<ServiceEntries>(), 1);
    }

    /// Secrets are held only for their TLS data: a Secret without any is
    /// not kept, and one that loses it is dropped (a change that moves the
    /// revision, so gateways stop being served the old credential).
    #[test]
    fn secrets_are_kept_only_while_they_hold_a_tls_credential() {
        let secret =
            |name: &str, data: &[(&str, &str)]| crate::testing::objects::secret("istio-system", name, data);
        let mut ix = index();
        ix.apply::<Secrets>(&secret("registry", &[(".dockerconfigjson", "{}")]));
        assert_eq!((ix.count::<Secrets>(), ix.revision()), (0, 0));
        ix.apply::<Secrets>(&secret("bookinfo", &[("tls.crt", "C"), ("tls.key", "K")]));
        let key = ObjectKey::new("istio-system", "bookinfo");
        assert!(ix.get::<Secrets>(&key).is_some_and(|c| c.has_certificate()));
        assert_eq!(ix.revision(), 1);
        assert_eq!(ix.config_revision(), 0, "validation does not read Secrets");
        ix.apply::<Secrets>(&secret("bookinfo", &[("note", "emptied")]));
        assert_eq!((ix.count::<Secrets>(), ix.revision()), (0, 2));
        ix.reset::<Secrets>(&[secret("registry", &[]), secret("bookinfo", &[("cert", "C"), ("key", "K")])]);
        assert_eq!(ix.count::<Secrets>(), 1);
    }

    #[test]
    fn the_malformed_field_is_named() {
        let err = VirtualServices::convert(&vs("bad", 1, json!({"http": [{"retries": {"attempts": "x"}}]})))
            .expect_err("malformed");
        let text = err.to_string();
        assert!(text.contains("default/bad"), "{text}");
        assert!(text.contains("http[0].retries.attempts"), "{text}");
    }

    #[test]
    fn a_relist_drops_objects_deleted_meanwhile() {
        let mut ix = index();
        ix.apply::<VirtualServices>(&vs("a", 1, json!({})));
        ix.apply::<VirtualServices>(&vs("b", 1, json!({})));
        ix.reset::<VirtualServices>(&[vs("b", 1, json!({}))]);
        assert_eq!(ix.count::<VirtualServices>(), 1);
        assert!(ix.get::<VirtualServices>(&ObjectKey::new("default", "b")).is_some());
        ix.delete::<VirtualServices>(&vs("b", 1, json!({})));
        assert_eq!(ix.count::<VirtualServices>(), 0);
    }

    #[test]
    fn a_pod_becomes_a_workload() {
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some("reviews-v1-abc".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                labels: Some([("app".to_string(), "reviews".to_string())].into()),
                ..Default::default()
            },
            spec: Some(core::PodSpec {
                service_account_name: Some("bookinfo-reviews".into()),
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                pod_ip: Some("10.244.0.7".into()),
                conditions: Some(vec![core::PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let mut ix = index();
        ix.apply::<Pods>(&pod);
        let w = ix.get::<Pods>(&ObjectKey::new("default", "reviews-v1-abc")).expect("indexed");
        assert_eq!(w.service_account, "bookinfo-reviews");
        assert_eq!(w.ip.as_deref(), Some("10.244.0.7"));
        assert!(w.ready);
        assert_eq!(w.labels.get("app").map(String::as_str), Some("reviews"));
        assert_eq!(w.workload_name, "reviews-v1-abc", "no owner: the pod's own name");
    }

    #[test]
    fn a_pods_workload_is_named_after_its_deployment_cronjob_or_owner() {
        let owned = |name: &str, kind: &str, owner: &str, hash: Option<&str>| {
            let mut labels = BTreeMap::new();
            if let Some(hash) = hash {
                labels.insert("pod-template-hash".to_string(), hash.to_string());
            }
            core::Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("default".into()),
                    labels: Some(labels),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: kind.into(),
                        name: owner.into(),
                        uid: "u".into(),
                        controller: Some(true),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            }
        };
        let cases = [
            (owned("reviews-v1-7d9f-x2", "ReplicaSet", "reviews-v1-7d9f", Some("7d9f")), "reviews-v1"),
            // A ReplicaSet of its own: its name does not end in the hash.
            (owned("web-abcde", "ReplicaSet", "web", Some("7d9f")), "web"),
            (owned("backup-28990320-q", "Job", "backup-28990320", None), "backup"),
            (owned("migrate-q", "Job", "migrate", None), "migrate"),
            (owned("db-0", "StatefulSet", "db", None), "db"),
            (owned("agent-x", "DaemonSet", "agent", None), "agent"),
        ];
        for (pod, expected) in cases {
            let mut ix = index();
            ix.apply::<Pods>(&pod);
            let name = pod.metadata.name.clone().expect("named");
            let w = ix.get::<Pods>(&ObjectKey::new("default", &name)).expect("indexed");
            assert_eq!(w.workload_name, expected, "{name}");
        }
    }
}
