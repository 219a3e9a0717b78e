//! A proxy's configuration at one moment: for each resource type, the named
//! resources, each with a content hash. Versions are content hashes, so
//! configuration that did not change keeps its version and is never
//! pushed again, and two replicas of the control plane give the same
//! content the same version.
//!
//! Built for sharing: a [`Resource`] is packed once into an `Arc` and
//! shared by every proxy that gets it; the [`Resources`] of one type are a
//! few shared, sorted [`ResourceSet`]s (say the outbound part of a scope,
//! shared by all of its proxies, and a small part of the proxy's own), so a
//! proxy's snapshot costs a handful of pointers, not a copy of the mesh.
//! A set's version is the wrapping sum of its members' hashes, so it does
//! not depend on how the set is split into parts.
//!
//! Listeners and routes may name the clusters they send traffic to
//! ([`Resource::depends_on`]): the stream state machines hold such a
//! resource back until those clusters, and their endpoints, are
//! acknowledged (make-before-break, [`super::order`]). Translation names
//! them as it packs; nothing here decodes a resource to find them.
//!
//! Snapshots are built once per push by a [`super::generator::Generator`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::resource_type::{ResourceType, Served};
use crate::translate;

/// One resource, packed for a discovery response: encoded once, as the
/// `resources` entry of a `DiscoveryResponse` (field 2, the `Any`), and
/// spliced as is into every response that carries it ([`super::wire`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Hash of the encoded resource.
    pub version: String,
    /// Key, length and the encoded `Any`: shared, never copied per proxy.
    entry: Bytes,
    /// Where the `Any` starts in `entry`.
    any_at: u8,
    /// Where the `Any`'s value (the resource's own bytes) starts in `entry`.
    value_at: u32,
    /// For listeners and routes: the clusters they send traffic to. Such a
    /// resource reaches a proxy only once those clusters (and their
    /// endpoints, when the snapshot has them) are acknowledged, and a
    /// cluster is removed only once nothing the proxy holds names it.
    pub depends_on: Vec<String>,
    /// Hash of name and version, the resource's share of a set's version.
    key: u64,
}

impl Resource {
    /// Packs `body` as `name`, hashing its bytes.
    pub fn new(name: impl Into<String>, body: Any) -> Self {
        Self::with_version(name.into(), hex(fnv1a(FNV_OFFSET, &body.value)), body)
    }

    /// A resource whose version is given (a proxy's report on reconnect).
    pub(crate) fn with_version(name: String, version: String, body: Any) -> Self {
        let mut key = fnv1a(FNV_OFFSET, name.as_bytes());
        key = fnv1a(key, &[0]);
        key = fnv1a(key, version.as_bytes());
        let any_len = body.encoded_len();
        let mut entry = Vec::with_capacity(any_len + 6);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut entry);
        prost::encoding::encode_varint(any_len as u64, &mut entry);
        let any_at = entry.len() as u8;
        body.encode_raw(&mut entry);
        let value_at = (entry.len() - body.value.len()) as u32;
        Self { name, version, entry: entry.into(), any_at, value_at, depends_on: Vec::new(), key }
    }

    /// The `DiscoveryResponse.resources` entry: key, length, encoded `Any`.
    pub fn entry(&self) -> &Bytes {
        &self.entry
    }

    /// The encoded `Any`.
    pub fn any(&self) -> &[u8] {
        &self.entry[self.any_at as usize..]
    }

    /// The encoded `Any`, shared.
    pub fn any_bytes(&self) -> Bytes {
        self.entry.slice(self.any_at as usize..)
    }

    /// The resource's own encoded bytes (the `Any`'s value).
    pub fn value(&self) -> &[u8] {
        &self.entry[self.value_at as usize..]
    }

    /// The resource as an `Any` (a copy: for tests and debugging).
    pub fn body(&self) -> Any {
        Any::decode(self.any()).expect("encoded by Resource::new")
    }

    /// Packs a message.
    pub fn of<M: Message + Name>(name: impl Into<String>, message: &M) -> Self {
        Self::new(name, translate::any(message))
    }

    /// Names the clusters this listener or route sends traffic to.
    pub fn depending_on(mut self, clusters: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.depends_on = clusters.into_iter().map(Into::into).collect();
        self.depends_on.sort();
        self.depends_on.dedup();
        self
    }
}

/// A sorted set of shared resources with its version; the unit of sharing
/// between proxies.
#[derive(Debug, Default, PartialEq)]
pub struct ResourceSet {
    items: Vec<Arc<Resource>>,
    sum: u64,
}

impl ResourceSet {
    /// Sorts by name; of two resources with the same name, the last wins.
    pub fn new(items: impl IntoIterator<Item = Arc<Resource>>) -> Self {
        let mut items: Vec<Arc<Resource>> = items.into_iter().collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        // Keep the last of equal names: reverse, dedup keeps firsts, reverse.
        items.reverse();
        items.dedup_by(|a, b| a.name == b.name);
        items.reverse();
        Self::sorted(items)
    }

    /// Items already sorted by name, without duplicates.
    fn sorted(mut items: Vec<Arc<Resource>>) -> Self {
        debug_assert!(items.windows(2).all(|w| w[0].name < w[1].name));
        // A set lives as long as its proxies; `collect` from a `Vec` of
        // messages may have kept the messages' larger allocation.
        items.shrink_to_fit();
        let sum = items.iter().fold(0u64, |s, r| s.wrapping_add(r.key));
        Self { items, sum }
    }

    /// Packs messages, named by `name`.
    pub fn of<M: Message + Name>(messages: impl IntoIterator<Item = M>, name: impl Fn(&M) -> String) -> Self {
        Self::new(messages.into_iter().map(|m| Arc::new(Resource::of(name(&m), &m))))
    }

    /// These resources, each replaced by `old`'s when `old` has it with the
    /// same name, version and dependencies (so unchanged resources keep
    /// their identity from one push to the next).
    pub fn reusing(self, old: &ResourceSet) -> ResourceSet {
        let mut previous = old.items.iter().peekable();
        let items = self
            .items
            .into_iter()
            .map(|new| {
                while previous.next_if(|p| p.name < new.name).is_some() {}
                match previous.peek() {
                    Some(p)
                        if p.name == new.name
                            && p.version == new.version
                            && p.depends_on == new.depends_on =>
                    {
                        Arc::clone(p)
                    }
                    _ => new,
                }
            })
            .collect();
        ResourceSet { items, sum: self.sum }
    }

    /// These resources with `replacements` put in by name: each replaces
    /// the resource of its name, or joins the set.
    pub fn patched(&self, replacements: ResourceSet) -> ResourceSet {
        let mut items = Vec::with_capacity(self.items.len() + replacements.items.len());
        let mut old = self.items.iter().peekable();
        for new in replacements.items {
            while let Some(kept) = old.next_if(|o| o.name < new.name) {
                items.push(kept.clone());
            }
            old.next_if(|o| o.name == new.name);
            items.push(new);
        }
        items.extend(old.cloned());
        ResourceSet::sorted(items)
    }

    /// These resources less those `keep` refuses, with `replacements`
    /// put in by name.
    pub fn replacing(&self, keep: impl Fn(&str) -> bool, replacements: ResourceSet) -> ResourceSet {
        let kept = ResourceSet::sorted(self.items.iter().filter(|r| keep(&r.name)).cloned().collect());
        kept.patched(replacements)
    }

    /// The same names and versions (by their hashes' sum: see
    /// [`version_of`]).
    pub fn same_content(&self, other: &Self) -> bool {
        self.items.len() == other.items.len() && self.sum == other.sum
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        let i = self.items.binary_search_by(|r| r.name.as_str().cmp(name)).ok()?;
        Some(&self.items[i])
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.items.iter()
    }
}

/// The resources of one type, by name: one or more shared parts. Cloning
/// is cheap (a few reference counts).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    parts: Vec<Arc<ResourceSet>>,
    sum: u64,
    len: usize,
}

impl PartialEq for Resources {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Resources {
    /// Hashes and sorts `(name, body)` pairs into one part.
    pub fn new(items: impl IntoIterator<Item = (String, Any)>) -> Self {
        Self::from(ResourceSet::new(
            items.into_iter().map(|(name, body)| Arc::new(Resource::new(name, body))),
        ))
    }

    /// The union of shared parts. A name must be in one part only; if it
    /// is in several, lookups and iteration see the first part's.
    pub fn from_parts(parts: impl IntoIterator<Item = Arc<ResourceSet>>) -> Self {
        let parts: Vec<_> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let sum = parts.iter().fold(0u64, |s, p| s.wrapping_add(p.sum));
        let len = parts.iter().map(|p| p.len()).sum();
        Self { parts, sum, len }
    }

    /// Resources already sorted by name, without duplicates.
    pub(crate) fn from_sorted(items: Vec<Arc<Resource>>) -> Self {
        Self::from(ResourceSet::sorted(items))
    }

    /// The content hash of all the resources (see [`version_of`]).
    pub fn version(&self) -> String {
        hex(self.sum)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.parts.iter().find_map(|p| p.get(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every resource, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        Merge { parts: self.parts.iter().map(|p| p.items.iter().peekable()).collect() }
    }

    /// The shared parts.
    pub fn parts(&self) -> &[Arc<ResourceSet>] {
        &self.parts
    }

    /// Whether both are made of the very same parts (a cheap equality).
    pub(crate) fn same_parts(&self, other: &Self) -> bool {
        self.parts.len() == other.parts.len()
            && self.parts.iter().zip(&other.parts).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl From<ResourceSet> for Resources {
    fn from(set: ResourceSet) -> Self {
        Self::from_parts([Arc::new(set)])
    }
}

impl From<Arc<ResourceSet>> for Resources {
    fn from(set: Arc<ResourceSet>) -> Self {
        Self::from_parts([set])
    }
}

/// Name-ordered iteration over sorted parts (there are few of them).
struct Merge<'a> {
    parts: Vec<std::iter::Peekable<std::slice::Iter<'a, Arc<Resource>>>>,
}

impl<'a> Iterator for Merge<'a> {
    type Item = &'a Arc<Resource>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, &'a Arc<Resource>)> = None;
        for (i, part) in self.parts.iter_mut().enumerate() {
            if let Some(&r) = part.peek()
                && best.is_none_or(|(_, b)| r.name < b.name)
            {
                best = Some((i, r));
            }
        }
        let (i, r) = best?;
        self.parts[i].next();
        // A duplicate name in a later part is skipped.
        for part in &mut self.parts[i + 1..] {
            if part.peek().is_some_and(|other| other.name == r.name) {
                part.next();
            }
        }
        Some(r)
    }
}

/// The content hash of a set of resources: the wrapping sum of hashes of
/// their names and versions, so the same set has the same version however
/// it was assembled. The version of a type is this over all of its
/// resources; a response with a subset (named subscriptions) gets this
/// over the subset.
pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a Arc<Resource>>) -> String {
    hex(resources.into_iter().fold(0u64, |s, r| s.wrapping_add(r.key)))
}

/// Everything one proxy gets, by resource type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<ResourceType, Resources>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the resources of a type, replacing what it had.
    pub fn with_resources(mut self, resource_type: ResourceType, resources: impl Into<Resources>) -> Self {
        self.types.insert(resource_type, resources.into());
        self
    }

    /// Sets the resources of the type of `M`, named by `name`.
    pub fn with<M: Served>(
        self,
        resources: impl IntoIterator<Item = M>,
        name: impl Fn(&M) -> String,
    ) -> Self {
        self.with_resources(M::TYPE, ResourceSet::of(resources, name))
    }

    /// Says that resource `name` of `resource_type` (a listener or a route)
    /// sends traffic to `clusters`. Copies the resource; translation that
    /// knows the clusters when packing should use
    /// [`Resource::depending_on`] instead.
    pub fn with_dependencies(
        mut self,
        resource_type: ResourceType,
        name: &str,
        clusters: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let Some(resources) = self.types.get(&resource_type) else { return self };
        let Some(found) = resources.get(name) else { return self };
        let changed = Arc::new(Resource::clone(found).depending_on(clusters));
        let items = resources.iter().map(|r| if r.name == name { changed.clone() } else { r.clone() });
        let rebuilt = Resources::from_sorted(items.collect());
        self.types.insert(resource_type, rebuilt);
        self
    }

    /// The resources of a type; a type the snapshot does not mention has none.
    pub fn resources(&self, resource_type: ResourceType) -> Resources {
        self.types.get(&resource_type).cloned().unwrap_or_default()
    }

    /// The resources of a type, borrowed; `None` when it has none.
    pub fn get(&self, resource_type: ResourceType) -> Option<&Resources> {
        self.types.get(&resource_type)
    }

    /// The types the snapshot holds.
    pub fn resource_types(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.types.keys().copied()
    }

    /// The content hash of everything: equal snapshots have equal versions.
    pub fn version(&self) -> String {
        let mut hash = FNV_OFFSET;
        for (resource_type, resources) in &self.types {
            hash = fnv1a(hash, resource_type.type_url().as_bytes());
            hash = fnv1a(hash, &resources.sum.to_le_bytes());
            hash = fnv1a(hash, &(resources.len as u64).to_le_bytes());
        }
        hex(hash)
    }
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
    use super::*;

    fn any(value: &[u8]) -> Any {
        Any { type_url: "t".into(), value: value.to_vec() }
    }

    fn shared(items: &[(&str, &[u8])]) -> Arc<ResourceSet> {
        Arc::new(ResourceSet::new(items.iter().map(|(n, b)| Arc::new(Resource::new(*n, any(b))))))
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
    fn parts_are_one_set_whatever_the_split() {
        let whole = Resources::from(shared(&[("a", b"1"), ("b", b"2"), ("c", b"3")]));
        let split = Resources::from_parts([shared(&[("b", b"2")]), shared(&[("a", b"1"), ("c", b"3")])]);
        assert_eq!(whole.version(), split.version());
        assert_eq!(whole, split);
        let names: Vec<_> = split.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(split.len(), 3);
        assert_eq!(split.get("c").map(|r| r.value().to_vec()), Some(b"3".to_vec()));
        assert!(!split.contains("d"));
    }

    #[test]
    fn dependencies_are_kept_sorted_and_do_not_change_the_version() {
        let plain = Resource::new("r", any(b"1"));
        let with = Resource::new("r", any(b"1")).depending_on(["b", "a", "b"]);
        assert_eq!(with.depends_on, ["a", "b"]);
        assert_eq!(plain.version, with.version);
        let snapshot = Snapshot::new()
            .with_resources(ResourceType::Route, shared(&[("r", b"1"), ("s", b"2")]))
            .with_dependencies(ResourceType::Route, "r", ["c1"]);
        assert_eq!(
            snapshot.resources(ResourceType::Route).get("r").map(|r| r.depends_on.clone()),
            Some(vec!["c1".into()])
        );
        assert_eq!(snapshot.resources(ResourceType::Route).len(), 2);
    }

    #[test]
    fn a_missing_type_has_no_resources() {
        let snapshot = Snapshot::new();
        assert!(snapshot.resources(ResourceType::Route).is_empty());
        assert_eq!(snapshot.resources(ResourceType::Route).version(), Resources::new([]).version());
    }
}
