//! Generation, apart from the snapshot it produces: a [`Generator`] builds
//! proxies' [`Snapshot`]s once per push. [`Generator::prepare`] gets a
//! snapshot of the index's stores (taken under its lock in constant time)
//! and what changed since the last push, and makes a [`PushContext`]
//! without the lock; [`PushContext::generate`] then runs once per proxy
//! the change reaches ([`PushContext::affects`]), sharing work between
//! proxies through the context ([`ScopeCache`]).
//! [`super::mesh::MeshGenerator`] is the mesh's; [`Passthrough`] serves the
//! pass-through configuration alone.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use super::proxy::Proxy;
use super::snapshot::Snapshot;
use crate::index::{Changes, ClusterSnapshot};
use crate::translate;

/// Builds proxies' snapshots, once per push for all of them.
pub trait Generator: Send + Sync + 'static {
    /// Prepares a push from the cluster as it is and what changed since
    /// the last push ([`Changes::everything`] when nothing is known, as
    /// for the first): a generator may rebuild only what `changes` reach
    /// and reuse the rest from its last push.
    fn prepare(&self, cluster: &ClusterSnapshot, changes: &Changes) -> Arc<dyn PushContext>;

    /// What besides the index changes what this generator makes (fetched
    /// JWT keys): a push follows each move of the revision. None by default.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// What one push knows: a view of the index, and whatever generating
/// shares between proxies (resources of a scope, built once: see
/// [`ScopeCache`]). Called concurrently for different proxies.
pub trait PushContext: Send + Sync + 'static {
    fn generate(&self, proxy: &Proxy) -> Snapshot;

    /// Whether this push may change what `proxy` gets; a proxy it does
    /// not reach keeps its snapshot without one being generated.
    fn affects(&self, _proxy: &Proxy) -> bool {
        true
    }
}

impl<F> Generator for F
where
    F: Fn(&ClusterSnapshot) -> Arc<dyn PushContext> + Send + Sync + 'static,
{
    fn prepare(&self, cluster: &ClusterSnapshot, _changes: &Changes) -> Arc<dyn PushContext> {
        self(cluster)
    }
}

/// Values built once per key within a push, by whichever proxy needs the
/// key first; others wait for it and share it. Keys are scopes: proxies
/// that see the same outbound configuration share its resources.
pub struct ScopeCache<K, V> {
    entries: Mutex<HashMap<K, Arc<OnceLock<Arc<V>>>>>,
}

impl<K, V> Default for ScopeCache<K, V> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq, V> ScopeCache<K, V> {
    /// The value of `key`, built with `build` if it is the first asking.
    pub fn get_or_build(&self, key: K, build: impl FnOnce() -> V) -> Arc<V> {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.entry(key).or_default().clone()
        };
        cell.get_or_init(|| Arc::new(build())).clone()
    }

    /// How many keys were built.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The same pass-through configuration for every proxy (see
/// [`translate::passthrough`]), packed once.
pub struct Passthrough {
    snapshot: Snapshot,
}

impl Passthrough {
    pub fn new() -> Self {
        use translate::passthrough::{clusters, listeners};
        Self {
            snapshot: Snapshot::new()
                .with(clusters(), |c| c.name.clone())
                .with(listeners(), |l| l.name.clone()),
        }
    }
}

impl Default for Passthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl Generator for Passthrough {
    fn prepare(&self, _cluster: &ClusterSnapshot, _changes: &Changes) -> Arc<dyn PushContext> {
        Arc::new(PassthroughContext(self.snapshot.clone()))
    }
}

struct PassthroughContext(Snapshot);

impl PushContext for PassthroughContext {
    fn generate(&self, _proxy: &Proxy) -> Snapshot {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::resource_type::ResourceType;
    use super::*;

    #[test]
    fn the_scope_cache_builds_each_key_once() {
        let cache = ScopeCache::<&str, usize>::default();
        let mut built = 0;
        let a = cache.get_or_build("a", || {
            built += 1;
            1
        });
        let again = cache.get_or_build("a", || unreachable!("built once"));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!((built, cache.len()), (1, 1));
    }

    #[test]
    fn the_passthrough_snapshot_has_two_listeners_and_two_clusters() {
        let index = crate::index::Index::new(Default::default()).snapshot();
        let everything = Changes::everything();
        let proxy = Proxy {
            id: super::super::proxy::ProxyId::parse("sidecar~10.0.0.1~p.default~default.svc.cluster.local")
                .expect("valid"),
            identity: super::super::auth::tests::identity(),
        };
        let generator = Passthrough::new();
        let snapshot = generator.prepare(&index, &everything).generate(&proxy);
        let names = |t| snapshot.resources(t).iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(ResourceType::Listener), ["virtualInbound", "virtualOutbound"]);
        assert_eq!(names(ResourceType::Cluster), ["InboundPassthroughCluster", "PassthroughCluster"]);
        assert_eq!(snapshot, generator.prepare(&index, &everything).generate(&proxy), "deterministic");
        assert_eq!(snapshot.version(), generator.prepare(&index, &everything).generate(&proxy).version());
    }
}
