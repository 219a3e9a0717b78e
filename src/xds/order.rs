//! Make-before-break, shared by both stream state machines: what a proxy
//! may be sent of one type now, given what it has acknowledged of the
//! others.
//!
//! - A listener or route that names clusters ([`Resource::depends_on`])
//!   goes out, in a new version, only once each of those clusters is
//!   acknowledged in the snapshot's version (and its endpoints too, when
//!   the snapshot has a ClusterLoadAssignment of the same name). Until
//!   then the proxy keeps the version it has, or does not get the
//!   resource yet. Envoy would otherwise route to a cluster it does not
//!   have (or has not warmed) and answer 503.
//! - A cluster (or its endpoints) that left the snapshot is removed only
//!   once no listener or route the proxy holds, or is being sent, names
//!   it: routes move away first, then the cluster goes.
//!
//! - A cluster sent anew (new or changed) has its endpoints sent again,
//!   even when they did not change ([`Ledger::rewarm`]). Envoy builds a
//!   changed cluster as a new one and warms it before it replaces the old
//!   one: an EDS cluster waits for its ClusterLoadAssignment. Its name is
//!   subscribed already, so Envoy's requests ask for nothing new, and a
//!   server that sends only what changed would leave the new cluster
//!   warming until Envoy's initial fetch timeout (15 s), the old one in
//!   use. The endpoints go out after the clusters on the same stream, so
//!   Envoy has the warming cluster by the time they arrive.
//!
//! A dependency the snapshot does not have at all is not waited for (it
//! would never come). A dependency whose current version the proxy
//! refused counts as ready if the proxy has some version of it: that is
//! what it will keep using.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::resource_type::ResourceType;
use super::snapshot::{Resource, Resources, Snapshot};

/// What a stream knows of one type at the proxy.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    /// What the proxy holds once it applies what was sent (SotW: the whole
    /// set the last response leaves it with, though a response of a named
    /// type carries only what changed; Delta: every resource the proxy was
    /// sent and still has).
    pub sent: Resources,
    /// What the proxy acknowledged.
    pub acked: Resources,
    /// Versions the proxy refused (a NACK), not to be sent again.
    pub refused: Resources,
    /// Of endpoints only: the clusters sent anew since endpoints were last
    /// planned, by name. Their endpoints go out again though the proxy
    /// holds them: Envoy warms a new or changed cluster by waiting for them.
    pub rewarm: Vec<Arc<Resource>>,
}

impl Ledger {
    fn rewarms(&self, name: &str) -> bool {
        self.rewarm.binary_search_by(|r| r.name.as_str().cmp(name)).is_ok()
    }
}

/// What to send of one type.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What the proxy will hold after this response.
    pub next: Resources,
    /// New resources and new versions, in name order.
    pub updated: Vec<Arc<Resource>>,
    /// Names the proxy has and should drop.
    pub removed: Vec<String>,
    /// Something waits on an acknowledgement of another type; plan again
    /// after the next ACK.
    pub held: bool,
}

/// What the proxy should hold of `resource_type`, moving from what it has
/// (`ledgers[resource_type].sent`) towards `desired` as far as the order
/// allows. With `skip_refused`, a resource in a version the proxy refused
/// is not sent again (Delta; SotW refuses whole responses and checks that
/// itself).
pub(crate) fn plan(
    resource_type: ResourceType,
    desired: &Resources,
    ledgers: &BTreeMap<ResourceType, Ledger>,
    snapshot: &Snapshot,
    skip_refused: bool,
) -> Plan {
    let empty = Ledger::default();
    let ledger = ledgers.get(&resource_type).unwrap_or(&empty);
    let current = &ledger.sent;
    if ledger.rewarm.is_empty()
        && (desired.same_parts(current)
            || (desired.len() == current.len() && desired.version() == current.version()))
    {
        return Plan { next: desired.clone(), updated: Vec::new(), removed: Vec::new(), held: false };
    }
    let dependent = resource_type.names_clusters();
    let removable_late = matches!(resource_type, ResourceType::Cluster | ResourceType::Endpoint);
    let mut referenced: Option<BTreeSet<&str>> = None;
    let mut next = Vec::with_capacity(desired.len());
    let mut updated = Vec::new();
    let mut removed = Vec::new();
    let mut held = false;
    // Whether `next` differs from `desired`: if not, the proxy's ledger
    // shares `desired`'s parts instead of a list of its own.
    let mut diverged = false;

    let mut wanted = desired.iter().peekable();
    let mut have = current.iter().peekable();
    loop {
        let (d, c) = match (wanted.peek(), have.peek()) {
            (None, None) => break,
            // The very same resource (kept from push to push): nothing to compare.
            (Some(d), Some(c)) if Arc::ptr_eq(d, c) => (wanted.next(), have.next()),
            (Some(d), Some(c)) if d.name == c.name => (wanted.next(), have.next()),
            (Some(d), Some(c)) if d.name < c.name => (wanted.next(), None),
            (Some(_), None) => (wanted.next(), None),
            _ => (None, have.next()),
        };
        match (d, c) {
            (Some(d), Some(c)) if d.version == c.version => {
                next.push(d.clone());
                let refused = ledger.refused.get(&d.name).is_some_and(|r| r.version == d.version);
                if ledger.rewarms(&d.name) && !refused {
                    updated.push(d.clone());
                }
            }
            (Some(d), c) => {
                let refused =
                    skip_refused && ledger.refused.get(&d.name).is_some_and(|r| r.version == d.version);
                let blocked = !refused && dependent && !ready(&d.depends_on, ledgers, snapshot);
                if refused || blocked {
                    held |= blocked;
                    diverged = true;
                    next.extend(c.cloned());
                } else {
                    next.push(d.clone());
                    updated.push(d.clone());
                }
            }
            (None, Some(c)) => {
                let still_named = removable_late
                    && referenced
                        .get_or_insert_with(|| referenced_clusters(ledgers))
                        .contains(c.name.as_str());
                if still_named {
                    held = true;
                    diverged = true;
                    next.push(c.clone());
                } else {
                    removed.push(c.name.clone());
                }
            }
            (None, None) => unreachable!("the loop ends when both are done"),
        }
    }
    let next = if diverged { Resources::from_sorted(next) } else { desired.clone() };
    Plan { next, updated, removed, held }
}

/// Records what a response of `resource_type` sent anew: for clusters,
/// their endpoints are to be sent again ([`Ledger::rewarm`]).
pub(crate) fn sent(
    resource_type: ResourceType,
    updated: &[Arc<Resource>],
    ledgers: &mut BTreeMap<ResourceType, Ledger>,
) {
    if resource_type != ResourceType::Cluster || updated.is_empty() {
        return;
    }
    let endpoints = ledgers.entry(ResourceType::Endpoint).or_default();
    if endpoints.rewarm.is_empty() {
        endpoints.rewarm = updated.to_vec();
    } else {
        // Clusters sent again before endpoints were planned: both, once.
        let mut merged: BTreeMap<&str, Arc<Resource>> =
            endpoints.rewarm.iter().map(|r| (r.name.as_str(), r.clone())).collect();
        merged.extend(updated.iter().map(|r| (r.name.as_str(), r.clone())));
        endpoints.rewarm = merged.into_values().collect();
    }
}

/// Marks `resource_type` as planned: the clusters waiting for their
/// endpoints to be sent again have them in the plan just made (or the
/// proxy does not subscribe to them, and gets them in full when it does).
pub(crate) fn planned(resource_type: ResourceType, ledgers: &mut BTreeMap<ResourceType, Ledger>) {
    if let Some(ledger) = ledgers.get_mut(&resource_type) {
        // Not `clear`: a stream holds its ledgers for hours, and a full
        // cluster push leaves room for every cluster.
        ledger.rewarm = Vec::new();
    }
}

/// Whether `resource_type` has endpoints to send again for clusters sent
/// anew.
pub(crate) fn rewarm_pending(resource_type: ResourceType, ledgers: &BTreeMap<ResourceType, Ledger>) -> bool {
    ledgers.get(&resource_type).is_some_and(|l| !l.rewarm.is_empty())
}

/// What a proxy holds (or is being sent), of the types it asked for
/// (`asked`): a cluster response opens the endpoints' ledger before the
/// proxy asks for endpoints.
pub(crate) fn holding<S>(
    ledgers: &BTreeMap<ResourceType, Ledger>,
    asked: &BTreeMap<ResourceType, S>,
) -> BTreeMap<ResourceType, Resources> {
    ledgers.iter().filter(|(t, _)| asked.contains_key(*t)).map(|(t, l)| (*t, l.sent.clone())).collect()
}

/// Whether every cluster in `clusters` is acknowledged in its current
/// version, with its endpoints.
fn ready(clusters: &[String], ledgers: &BTreeMap<ResourceType, Ledger>, snapshot: &Snapshot) -> bool {
    clusters.iter().all(|cluster| {
        settled(ResourceType::Cluster, cluster, ledgers, snapshot)
            && settled(ResourceType::Endpoint, cluster, ledgers, snapshot)
    })
}

/// Whether the proxy has `name` of `resource_type` as the snapshot has it
/// (or the snapshot does not have it, or the proxy refused it and keeps an
/// older one).
fn settled(
    resource_type: ResourceType,
    name: &str,
    ledgers: &BTreeMap<ResourceType, Ledger>,
    snapshot: &Snapshot,
) -> bool {
    let Some(current) = snapshot.get(resource_type).and_then(|r| r.get(name)) else { return true };
    let Some(ledger) = ledgers.get(&resource_type) else { return false };
    match ledger.acked.get(name) {
        Some(acked) if acked.version == current.version => true,
        Some(_) => ledger.refused.get(name).is_some_and(|r| r.version == current.version),
        None => false,
    }
}

/// Clusters named by a listener or route the proxy holds or was sent.
fn referenced_clusters(ledgers: &BTreeMap<ResourceType, Ledger>) -> BTreeSet<&str> {
    [ResourceType::Listener, ResourceType::Route]
        .iter()
        .filter_map(|t| ledgers.get(t))
        .flat_map(|l| l.sent.iter().chain(l.acked.iter()))
        .flat_map(|r| r.depends_on.iter().map(String::as_str))
        .collect()
}
