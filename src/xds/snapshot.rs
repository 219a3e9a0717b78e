//! A proxy's configuration at one moment: for each resource type, the named
//! resources, each with a content hash, and a version for the whole type.
//! Versions are content hashes, so configuration that did not change keeps
//! its version and is never pushed again, and two replicas of the control
//! plane give the same content the same version.
//!
//! A [`Generator`] builds a proxy's snapshot from the index; the stream
//! state machines ([`super::stream`]) decide what to send. Per-resource
//! hashes are kept for the Delta protocol, which sends resources one by one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::proxy::Proxy;
use crate::index::Index;
use crate::translate;

/// One resource, packed for a discovery response.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Hash of the encoded resource.
    pub version: String,
    pub body: Any,
}

/// The resources of one type, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    version: String,
    items: BTreeMap<String, Resource>,
}

impl Default for Resources {
    /// None, with the version of none.
    fn default() -> Self {
        Self::new([])
    }
}

impl Resources {
    /// Hashes every resource and the set as a whole.
    pub fn new(items: impl IntoIterator<Item = (String, Any)>) -> Self {
        let items: BTreeMap<String, Resource> = items
            .into_iter()
            .map(|(name, body)| {
                let version = hex(fnv1a(FNV_OFFSET, &body.value));
                (name.clone(), Resource { name, version, body })
            })
            .collect();
        let version = version_of(items.values());
        Self { version, items }
    }

    /// The content hash of all the resources.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.items.get(name)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.items.values()
    }
}

/// The content hash of a set of resources: of their names and hashes, in
/// name order. The version of a type is this over all of its resources; a
/// response with a subset (named subscriptions) gets this over the subset.
pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> String {
    let mut hash = FNV_OFFSET;
    for resource in resources {
        hash = fnv1a(hash, resource.name.as_bytes());
        hash = fnv1a(hash, &[0]);
        hash = fnv1a(hash, resource.version.as_bytes());
        hash = fnv1a(hash, &[0]);
    }
    hex(hash)
}

/// Everything one proxy gets, by type URL.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<Resources>>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the resources of `type_url`, replacing what it had.
    pub fn with_resources(mut self, type_url: &str, resources: Resources) -> Self {
        self.types.insert(type_url.to_string(), Arc::new(resources));
        self
    }

    /// Sets the resources of the type of `M`, named by `name`.
    pub fn with<M: Message + Name>(
        self,
        resources: impl IntoIterator<Item = M>,
        name: impl Fn(&M) -> String,
    ) -> Self {
        let packed = Resources::new(resources.into_iter().map(|m| (name(&m), translate::any(&m))));
        self.with_resources(&M::type_url(), packed)
    }

    /// The resources of a type; a type the snapshot does not mention has none.
    pub fn resources(&self, type_url: &str) -> Arc<Resources> {
        self.types.get(type_url).cloned().unwrap_or_default()
    }

    /// The type URLs the snapshot holds, in URL order.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// Builds a proxy's snapshot from what the index holds. Called on stream
/// start and again whenever the index changes; it runs with the index
/// locked, so it must be quick and must not block.
pub trait Generator: Send + Sync + 'static {
    fn generate(&self, proxy: &Proxy, index: &Index) -> Snapshot;
}

impl<F> Generator for F
where
    F: Fn(&Proxy, &Index) -> Snapshot + Send + Sync + 'static,
{
    fn generate(&self, proxy: &Proxy, index: &Index) -> Snapshot {
        self(proxy, index)
    }
}

/// The same pass-through configuration for every proxy (see
/// [`translate::passthrough`]).
pub fn passthrough(_proxy: &Proxy, _index: &Index) -> Snapshot {
    use translate::passthrough::{clusters, listeners};
    Snapshot::new().with(clusters(), |c| c.name.clone()).with(listeners(), |l| l.name.clone())
}

// FNV-1a, 64 bits: tiny, stable across Rust releases and processes (std's
// hasher promises neither), and collisions only cost a skipped push of
// identical-looking content between two versions, which 64 bits make
// vanishingly rare. prost encodes map fields in hash-map order, so a
// resource with several map entries may hash differently when rebuilt:
// that costs one redundant push, never a missed one.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn hex(hash: u64) -> String {
    let mut s = String::with_capacity(16);
    let _ = write!(s, "{hash:016x}");
    s
}

#[cfg(test)]
mod tests {
    use super::super::types;
    use super::*;

    fn any(value: &[u8]) -> Any {
        Any { type_url: "t".into(), value: value.to_vec() }
    }

    #[test]
    fn versions_follow_content_only() {
        let a = Resources::new([("a".to_string(), any(b"1")), ("b".to_string(), any(b"2"))]);
        let same = Resources::new([("b".to_string(), any(b"2")), ("a".to_string(), any(b"1"))]);
        let changed = Resources::new([("a".to_string(), any(b"1")), ("b".to_string(), any(b"3"))]);
        let renamed = Resources::new([("a".to_string(), any(b"1")), ("c".to_string(), any(b"2"))]);
        assert_eq!(a.version(), same.version());
        assert_ne!(a.version(), changed.version());
        assert_ne!(a.version(), renamed.version());
        assert_eq!(a.get("a").map(|r| &r.version), same.get("a").map(|r| &r.version));
        assert_eq!(a.version().len(), 16);
        // The version of a type is the version of all its resources.
        assert_eq!(a.version(), version_of(a.iter()));
    }

    #[test]
    fn a_missing_type_has_no_resources() {
        let snapshot = Snapshot::new();
        assert!(snapshot.resources(types::ROUTE).is_empty());
        assert_eq!(snapshot.resources(types::ROUTE).version(), Resources::new([]).version());
    }

    #[test]
    fn the_passthrough_snapshot_has_two_listeners_and_two_clusters() {
        let index = Index::new(Default::default());
        let proxy = Proxy {
            id: super::super::proxy::ProxyId::parse("sidecar~10.0.0.1~p.default~default.svc.cluster.local")
                .expect("valid"),
            identity: super::super::auth::tests::identity(),
        };
        let snapshot = passthrough(&proxy, &index);
        let names = |t| snapshot.resources(t).iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(types::LISTENER), ["virtualInbound", "virtualOutbound"]);
        assert_eq!(names(types::CLUSTER), ["InboundPassthroughCluster", "PassthroughCluster"]);
        assert_eq!(snapshot, passthrough(&proxy, &index), "deterministic");
    }
}
