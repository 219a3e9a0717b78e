//! Sets of subscribed resource names, shared between streams.
//!
//! Envoy subscribes to endpoints and routes by name: one name per cluster
//! and per route configuration, a thousand or more each in a large mesh.
//! Proxies of one scope ask for the very same names, so a stream keeps its
//! set as an interned [`NameSet`]: the second stream that asks for a set
//! shares the first one's. What a set selects of a type's resources is
//! cached in the set, so the proxies of a scope also share the selection
//! (the same `Arc`ed parts), and with it the ledgers built from it.
//!
//! SotW streams intern the names each request lists; Delta streams change
//! theirs by subscribing and unsubscribing, and a change builds the new
//! set and interns it ([`NameSet::with_changes`]): a set is never changed
//! in place.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::snapshot::Resources;

/// A sorted set of resource names.
#[derive(Debug)]
pub struct NameSet {
    names: Box<[Box<str>]>,
    /// The last selection: what it was made from, and what it gave.
    selected: Mutex<Option<(Resources, Resources)>>,
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for NameSet {}

/// Every live set, by the hash of its names. Sets are weak here: a set
/// goes when its last stream does, and dead entries are swept as the
/// table grows.
struct Interner {
    sets: HashMap<u64, Vec<Weak<NameSet>>>,
    /// Sweep when the table holds this many entries.
    sweep_at: usize,
}

fn interner() -> &'static Mutex<Interner> {
    static INTERNER: OnceLock<Mutex<Interner>> = OnceLock::new();
    INTERNER.get_or_init(|| Mutex::new(Interner { sets: HashMap::new(), sweep_at: 64 }))
}

impl NameSet {
    /// The shared set of `names` (any order, duplicates allowed).
    pub fn intern<'a>(names: impl IntoIterator<Item = &'a str>) -> Arc<NameSet> {
        let mut sorted: Vec<&str> = names.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let hash = hash(&sorted);
        let mut interner = interner().lock().unwrap_or_else(|p| p.into_inner());
        let bucket = interner.sets.entry(hash).or_default();
        for weak in bucket.iter() {
            if let Some(set) = weak.upgrade()
                && set.names.len() == sorted.len()
                && set.names.iter().zip(&sorted).all(|(a, b)| &**a == *b)
            {
                return set;
            }
        }
        let set = Arc::new(NameSet {
            names: sorted.into_iter().map(Box::from).collect(),
            selected: Mutex::new(None),
        });
        bucket.retain(|weak| weak.strong_count() > 0);
        bucket.push(Arc::downgrade(&set));
        let entries: usize = interner.sets.values().map(Vec::len).sum();
        if entries >= interner.sweep_at {
            interner.sets.retain(|_, bucket| {
                bucket.retain(|weak| weak.strong_count() > 0);
                !bucket.is_empty()
            });
            let live: usize = interner.sets.values().map(Vec::len).sum();
            interner.sweep_at = (live * 2).max(64);
        }
        set
    }

    /// The shared empty set.
    pub fn empty() -> Arc<NameSet> {
        NameSet::intern(std::iter::empty())
    }

    /// This set with `added` and without `removed` (a name in both goes),
    /// as the shared set of those names: copy on write, so streams that
    /// made the same changes to the same set share the result. This very
    /// set when nothing changes, without interning anything.
    pub fn with_changes<'a>(
        self: &Arc<Self>,
        added: impl IntoIterator<Item = &'a str>,
        removed: impl IntoIterator<Item = &'a str>,
    ) -> Arc<NameSet> {
        let added: Vec<&str> = added.into_iter().filter(|n| !self.contains(n)).collect();
        // A name both added and removed goes, so with names to add every
        // removed name counts; without, only those the set has.
        let removed: HashSet<&str> = if added.is_empty() {
            removed.into_iter().filter(|n| self.contains(n)).collect()
        } else {
            removed.into_iter().collect()
        };
        if added.is_empty() && removed.is_empty() {
            return self.clone();
        }
        NameSet::intern(self.iter().chain(added).filter(|n| !removed.contains(n)))
    }

    /// Whether `names` (any order) are exactly this set. Cheaper than
    /// interning them: proxies repeat their subscription in every ACK, a
    /// thousand names at a time, and it rarely changes.
    pub fn matches(&self, names: &[String]) -> bool {
        if names.len() != self.names.len() {
            return false;
        }
        if names.iter().zip(self.iter()).all(|(a, b)| a == b) {
            return true;
        }
        // Another order: each name found once, none twice.
        let mut seen = vec![false; names.len()];
        names.iter().all(|name| match self.names.binary_search_by(|n| (**n).cmp(name.as_str())) {
            Ok(i) => !std::mem::replace(&mut seen[i], true),
            Err(_) => false,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// The names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// What `all` has of these names. When the set names exactly what
    /// `all` holds (the usual case: Envoy asks for every cluster's
    /// endpoints), that is `all` itself, shared; otherwise the selection
    /// is built once per `all` and shared by the set's streams.
    pub fn select(&self, all: &Resources) -> Resources {
        let mut cached = self.selected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((from, selected)) = &*cached
            && from.same_parts(all)
        {
            return selected.clone();
        }
        let exact = all.len() == self.names.len() && all.iter().zip(self.iter()).all(|(r, n)| r.name == n);
        let selected = if exact {
            all.clone()
        } else {
            Resources::from_sorted(self.iter().filter_map(|name| all.get(name)).cloned().collect())
        };
        *cached = Some((all.clone(), selected.clone()));
        selected
    }
}

/// FNV-1a over the sorted names, each ended by a zero byte.
fn hash(names: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in names {
        for byte in name.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn resources(names: &[&str]) -> Resources {
        Resources::new(
            names.iter().map(|n| (n.to_string(), Any { type_url: "t".into(), value: n.as_bytes().into() })),
        )
    }

    #[test]
    fn equal_sets_are_one_set_whatever_the_order() {
        let a = NameSet::intern(["b", "a", "b"]);
        let b = NameSet::intern(["a", "b"]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.iter().collect::<Vec<_>>(), ["a", "b"]);
        let c = NameSet::intern(["a", "c"]);
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(c.contains("c") && !c.contains("b"));
    }

    #[test]
    fn a_request_matches_its_set_in_any_order_but_not_with_a_name_twice() {
        let set = NameSet::intern(["m1", "m2", "m3"]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(set.matches(&names(&["m1", "m2", "m3"])));
        assert!(set.matches(&names(&["m3", "m1", "m2"])));
        assert!(!set.matches(&names(&["m1", "m1", "m3"])));
        assert!(!set.matches(&names(&["m1", "m2"])));
        assert!(!set.matches(&names(&["m1", "m2", "m4"])));
    }

    #[test]
    fn a_set_goes_with_its_last_holder() {
        let weak = Arc::downgrade(&NameSet::intern(["only-here-once"]));
        assert!(weak.upgrade().is_none());
        // Interning the same names again makes a new set.
        let again = NameSet::intern(["only-here-once"]);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn a_changed_set_is_the_shared_set_of_its_new_names() {
        let start = NameSet::intern(["c1", "c2"]);
        let unchanged = start.with_changes(["c1"], ["c9"]);
        assert!(Arc::ptr_eq(&unchanged, &start), "nothing added or removed: the same set");

        let grown = start.with_changes(["c3", "c1"], []);
        assert_eq!(grown.iter().collect::<Vec<_>>(), ["c1", "c2", "c3"]);
        assert!(Arc::ptr_eq(&grown, &NameSet::intern(["c3", "c2", "c1"])), "interned");
        assert!(Arc::ptr_eq(&grown, &start.with_changes(["c3"], [])), "the same change, the same set");

        let shrunk = grown.with_changes([], ["c2"]);
        assert_eq!(shrunk.iter().collect::<Vec<_>>(), ["c1", "c3"]);
        assert!(!Arc::ptr_eq(&shrunk, &grown));
        assert_eq!(grown.len(), 3, "the old set is not changed");

        let both = start.with_changes(["c4"], ["c4", "c1"]);
        assert_eq!(both.iter().collect::<Vec<_>>(), ["c2"], "a name added and removed goes");
        assert!(Arc::ptr_eq(&both.with_changes([], ["c2"]), &NameSet::empty()));
    }

    #[test]
    fn selecting_every_resource_shares_them_and_a_subset_is_built_once() {
        let all = resources(&["x1", "x2", "x3"]);
        let every = NameSet::intern(["x3", "x2", "x1"]);
        assert!(every.select(&all).same_parts(&all));

        let some = NameSet::intern(["x1", "x3", "x9"]);
        let first = some.select(&all);
        assert_eq!(first.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["x1", "x3"]);
        assert!(some.select(&all).same_parts(&first), "cached for the same resources");
        let changed = resources(&["x1", "x3", "x9"]);
        assert_eq!(some.select(&changed).len(), 3, "other resources, a new selection");
    }
}
