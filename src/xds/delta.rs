//! One ADS stream in the incremental (Delta) protocol, as a state machine
//! with no I/O, the sibling of [`super::sotw`] over the same
//! [`Snapshot`]: responses carry only resources that are new or changed
//! (by their content-hash versions) and the names of those that went away.
//!
//! The rules, per resource type on the stream:
//! - listeners and clusters are wildcard (the proxy gets all of its own);
//!   other types are subscribed to by name (`resource_names_subscribe`,
//!   `resource_names_unsubscribe`, `*` for all). A subscribed name the
//!   snapshot does not have is reported once in `removed_resources`, so
//!   the proxy stops waiting for it;
//! - the first request of a type is always answered. On a reconnect it
//!   carries `initial_resource_versions`, what the proxy still holds: only
//!   what differs is sent, and what is gone is removed;
//! - one response of a type in flight at a time: the next waits for the
//!   ACK or NACK of the previous, carrying its nonce; a request with
//!   another nonce is stale and its acknowledgement ignored (its
//!   subscription changes still count);
//! - a NACK marks the versions in that response as refused: they are not
//!   sent again, the proxy is taken to keep what it had before, and the
//!   next different version goes out;
//! - make-before-break as in SotW ([`super::order`]): a listener or route
//!   waits for the clusters it names to be acknowledged, a cluster stays
//!   while something the proxy holds names it;
//! - new or changed clusters have their endpoints sent again, unchanged,
//!   after them: Envoy warms such a cluster by waiting for its endpoints,
//!   and asks for nothing new (the name is subscribed already);
//! - a type URL the mesh does not serve is answered with no resources, its
//!   subscribed names listed as removed, and its ACKs ignored.
//!
//! A stream's subscribed names (and those it was told are absent) are
//! shared sets ([`super::names`]), as SotW's: the proxies of a scope that
//! subscribed to the same names hold one set, and one selection of their
//! snapshot's resources.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;

use super::names::NameSet;
use super::order::{self, Ledger};
use super::protocol::{Event, Machine, Nack, Protocol, ProtocolError, Pushed, Step, TypeStatus};
use super::resource_type::ResourceType;
use super::snapshot::{Resource, Resources, Snapshot};
use super::wire::{DeltaResponse, TypeUrl};

const WILDCARD: &str = "*";

/// The response of a type waiting for its ACK.
#[derive(Clone, Debug)]
struct InFlight {
    nonce: String,
    version: String,
    updated: Vec<Arc<Resource>>,
}

#[derive(Clone, Debug)]
struct TypeState {
    wildcard: bool,
    /// The names subscribed to, shared with the streams that asked for
    /// the same ones (and with them, the selection of the snapshot).
    names: Arc<NameSet>,
    /// Subscribed names told absent (in `removed_resources`) and not
    /// present since; shared too, and usually the empty set.
    absent: Arc<NameSet>,
    in_flight: Option<InFlight>,
    /// Something was held back for make-before-break.
    held: bool,
    sent_version: Option<String>,
    acked_version: Option<String>,
    nack: Option<Nack>,
}

impl TypeState {
    fn new() -> Self {
        Self {
            wildcard: false,
            names: NameSet::empty(),
            absent: NameSet::empty(),
            in_flight: None,
            held: false,
            sent_version: None,
            acked_version: None,
            nack: None,
        }
    }
}

/// The state of one Delta stream.
#[derive(Debug)]
pub struct DeltaStream {
    snapshot: Arc<Snapshot>,
    nonce: u64,
    types: BTreeMap<ResourceType, TypeState>,
    ledgers: BTreeMap<ResourceType, Ledger>,
    /// Type URLs the mesh does not serve that the proxy asked for, with
    /// the names it was told are absent (see [`DeltaStream::on_request`]).
    unserved: BTreeMap<String, BTreeSet<String>>,
}

impl DeltaStream {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            nonce: 0,
            types: BTreeMap::new(),
            ledgers: BTreeMap::new(),
            unserved: BTreeMap::new(),
        }
    }

    /// Handles one request from the proxy.
    ///
    /// A type the mesh does not serve is answered with no resources: its
    /// first request, and each that subscribes to names not answered yet,
    /// which are listed in `removed_resources` so the proxy stops waiting
    /// for them. Other requests of that type (ACKs) are ignored.
    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
    ) -> Result<Step<DeltaResponse>, ProtocolError> {
        if request.type_url.is_empty() {
            return Err(ProtocolError::NoTypeUrl);
        }
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            return Ok(self.unserved(request));
        };
        let mut step = Step::default();
        let first = !self.types.contains_key(&resource_type);
        let state = self.types.entry(resource_type).or_insert_with(TypeState::new);
        let ledger = self.ledgers.entry(resource_type).or_default();
        let changes_subscription =
            !request.resource_names_subscribe.is_empty() || !request.resource_names_unsubscribe.is_empty();

        let mut answered = false;
        if !request.response_nonce.is_empty() {
            match state.in_flight.take() {
                Some(sent) if sent.nonce == request.response_nonce => {
                    answered = true;
                    acknowledge(resource_type, state, ledger, sent, request, &mut step);
                }
                other => {
                    state.in_flight = other;
                    step.events
                        .push(Event::StaleNonce { resource_type, nonce: request.response_nonce.clone() });
                    if !changes_subscription {
                        return Ok(step);
                    }
                }
            }
        }

        if first {
            state.wildcard = resource_type.is_wildcard_only();
            // What the proxy kept from an earlier stream: taken as applied.
            let mut held: Vec<Arc<Resource>> = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| match self.snapshot.get(resource_type).and_then(|r| r.get(name)) {
                    Some(current) if current.version == *version => current.clone(),
                    _ => Arc::new(Resource::with_version(name.clone(), version.clone(), Any::default())),
                })
                .collect();
            held.sort_by(|a, b| a.name.cmp(&b.name));
            ledger.sent = Resources::from_sorted(held);
            ledger.acked = ledger.sent.clone();
        }
        let subscribed =
            || request.resource_names_subscribe.iter().map(String::as_str).filter(|n| *n != WILDCARD);
        let unsubscribed =
            || request.resource_names_unsubscribe.iter().map(String::as_str).filter(|n| *n != WILDCARD);
        if request.resource_names_subscribe.iter().any(|n| n == WILDCARD) {
            state.wildcard = true;
        }
        let mut dropped = BTreeSet::new();
        for name in &request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = resource_type.is_wildcard_only();
            } else if !state.wildcard {
                dropped.insert(name.as_str());
            }
        }
        if changes_subscription {
            // Copy on write: a new set, shared with every stream that asks
            // for the same names.
            state.names = state.names.with_changes(subscribed(), unsubscribed());
            // Subscribing again (or unsubscribing) ends "told absent".
            state.absent = state.absent.with_changes([], subscribed().chain(unsubscribed()));
        }
        if !dropped.is_empty() {
            // The proxy forgets what it unsubscribed from.
            ledger.sent = without(&ledger.sent, &dropped);
            ledger.acked = without(&ledger.acked, &dropped);
        }

        step.responses.extend(self.respond(resource_type, first));
        if answered || resource_type == ResourceType::Cluster {
            // An answer may release what waited on it, in other types; new
            // or changed clusters want their endpoints again.
            step.responses.extend(self.respond_held());
        }
        Ok(step)
    }

    /// Answers a request of a type the mesh does not serve: no resources,
    /// and the names subscribed to that it was not told of yet, as absent.
    fn unserved(&mut self, request: &DeltaDiscoveryRequest) -> Step<DeltaResponse> {
        let mut step = Step::default();
        let first = !self.unserved.contains_key(&request.type_url);
        let told = self.unserved.entry(request.type_url.clone()).or_default();
        for name in &request.resource_names_unsubscribe {
            told.remove(name);
        }
        let absent: BTreeSet<&String> = request
            .resource_names_subscribe
            .iter()
            .filter(|n| *n != WILDCARD && !told.contains(*n))
            .collect();
        if !first && absent.is_empty() {
            return step;
        }
        let removed_resources: Vec<String> = absent.into_iter().cloned().collect();
        told.extend(removed_resources.iter().cloned());
        self.nonce += 1;
        step.responses.push(DeltaResponse {
            system_version_info: Resources::default().version(),
            resources: Vec::new(),
            type_url: TypeUrl::Other(request.type_url.clone()),
            removed_resources,
            nonce: self.nonce.to_string(),
        });
        step
    }

    /// Takes a new snapshot and sends every type without a response in
    /// flight what changed, secrets and clusters first.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step<DeltaResponse> {
        self.snapshot = snapshot;
        let mut idle: Vec<ResourceType> =
            self.types.iter().filter(|(_, s)| s.in_flight.is_none()).map(|(t, _)| *t).collect();
        idle.sort_by_key(|t| t.push_rank());
        let mut step = Step::default();
        for resource_type in idle {
            step.responses.extend(self.respond(resource_type, false));
        }
        step
    }

    /// The snapshot the stream works from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The version (of the whole set the proxy holds) it acknowledged last.
    pub fn acked(&self, resource_type: ResourceType) -> Option<&str> {
        self.types.get(&resource_type)?.acked_version.as_deref()
    }

    /// The proxy's latest refusal of a type, while it is its latest answer.
    pub fn nacked(&self, resource_type: ResourceType) -> Option<&Nack> {
        self.types.get(&resource_type)?.nack.as_ref()
    }

    /// The resources of a type the proxy holds, with their versions.
    pub fn held(&self, resource_type: ResourceType) -> BTreeMap<String, String> {
        self.ledgers
            .get(&resource_type)
            .map(|l| l.sent.iter().map(|r| (r.name.clone(), r.version.clone())).collect())
            .unwrap_or_default()
    }

    /// Where each type the proxy asked for stands.
    pub fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        self.types
            .iter()
            .map(|(resource_type, state)| {
                let status = TypeStatus {
                    sent: state.sent_version.clone(),
                    acked: state.acked_version.clone(),
                    nack: state.nack.clone(),
                    resources: self.ledgers.get(resource_type).map_or(0, |l| l.sent.len()),
                };
                (*resource_type, status)
            })
            .collect()
    }

    /// What the proxy holds (or is being sent), by type.
    pub fn holding(&self) -> BTreeMap<ResourceType, Resources> {
        order::holding(&self.ledgers, &self.types)
    }

    /// Plans again the types that held something back, or have endpoints
    /// to send again for clusters sent anew.
    fn respond_held(&mut self) -> Vec<DeltaResponse> {
        let mut held: Vec<ResourceType> = self
            .types
            .iter()
            .filter(|(t, s)| s.in_flight.is_none() && (s.held || order::rewarm_pending(**t, &self.ledgers)))
            .map(|(t, _)| *t)
            .collect();
        held.sort_by_key(|t| t.push_rank());
        held.into_iter().filter_map(|t| self.respond(t, false)).collect()
    }

    /// Sends a type what changed, if anything did (always, with `force`).
    fn respond(&mut self, resource_type: ResourceType, force: bool) -> Option<DeltaResponse> {
        let state = self.types.get(&resource_type)?;
        if state.in_flight.is_some() {
            return None;
        }
        let all = self.snapshot.resources(resource_type);
        let desired = if state.wildcard {
            all.clone()
        } else {
            // Cached in the shared set: the snapshot's own when it names
            // every resource, else one selection for all of its streams.
            state.names.select(&all)
        };
        let plan = order::plan(resource_type, &desired, &self.ledgers, &self.snapshot, true);
        order::planned(resource_type, &mut self.ledgers);
        let state = self.types.get_mut(&resource_type)?;
        state.held = plan.held;
        // A subscribed name the snapshot lacks: only if some name was not
        // found. Not one removed already: Envoy refuses a response that
        // names a resource twice.
        let absent: Vec<String> = if state.wildcard || desired.len() == state.names.len() {
            Vec::new()
        } else {
            let removed: BTreeSet<&str> = plan.removed.iter().map(String::as_str).collect();
            state
                .names
                .iter()
                .filter(|n| {
                    !all.contains(n)
                        && !plan.next.contains(n)
                        && !state.absent.contains(n)
                        && !removed.contains(n)
                })
                .map(str::to_string)
                .collect()
        };
        let ledger = self.ledgers.entry(resource_type).or_default();
        if plan.updated.is_empty() && plan.removed.is_empty() && absent.is_empty() && !force {
            // The same content; keep the snapshot's own (shared) copy.
            ledger.sent = plan.next;
            return None;
        }
        let names = &state.names;
        state.absent = state.absent.with_changes(
            plan.removed.iter().chain(&absent).map(String::as_str).filter(|n| names.contains(n)),
            plan.updated.iter().map(|r| r.name.as_str()),
        );
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = plan.next.version();
        state.sent_version = Some(version.clone());
        state.in_flight =
            Some(InFlight { nonce: nonce.clone(), version: version.clone(), updated: plan.updated.clone() });
        ledger.sent = plan.next;
        order::sent(resource_type, &plan.updated, &mut self.ledgers);
        let mut removed_resources = plan.removed;
        removed_resources.extend(absent);
        Some(DeltaResponse {
            system_version_info: version,
            resources: plan.updated,
            type_url: resource_type.into(),
            removed_resources,
            nonce,
        })
    }
}

/// Records the proxy's answer to the response in flight.
fn acknowledge(
    resource_type: ResourceType,
    state: &mut TypeState,
    ledger: &mut Ledger,
    sent: InFlight,
    request: &DeltaDiscoveryRequest,
    step: &mut Step<DeltaResponse>,
) {
    let names = || sent.updated.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    match &request.error_detail {
        Some(error) => {
            step.events.push(Event::Nack {
                resource_type,
                version: sent.version.clone(),
                resources: names(),
                error: error.message.clone(),
            });
            state.nack = Some(Nack { version: sent.version.clone(), error: error.message.clone() });
            // Not sent again; the proxy keeps what it had.
            let mut refused: BTreeMap<String, Arc<Resource>> =
                ledger.refused.iter().map(|r| (r.name.clone(), r.clone())).collect();
            refused.extend(sent.updated.iter().map(|r| (r.name.clone(), r.clone())));
            ledger.refused = Resources::from_sorted(refused.into_values().collect());
            ledger.sent = ledger.acked.clone();
        }
        None => {
            step.events.push(Event::Ack { resource_type, version: sent.version.clone() });
            state.acked_version = Some(sent.version.clone());
            state.nack = None;
            ledger.acked = ledger.sent.clone();
            if !ledger.refused.is_empty() {
                let accepted: BTreeSet<&str> = sent.updated.iter().map(|r| r.name.as_str()).collect();
                ledger.refused = without(&ledger.refused, &accepted);
            }
        }
    }
}

fn without(resources: &Resources, names: &BTreeSet<&str>) -> Resources {
    Resources::from_sorted(resources.iter().filter(|r| !names.contains(r.name.as_str())).cloned().collect())
}

impl Machine for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn new(snapshot: Arc<Snapshot>) -> Self {
        DeltaStream::new(snapshot)
    }
    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn subscribing(request: &DeltaDiscoveryRequest) -> (&str, &[String]) {
        (&request.type_url, &request.resource_names_subscribe)
    }
    fn on_request(&mut self, request: &DeltaDiscoveryRequest) -> Result<Step<DeltaResponse>, ProtocolError> {
        DeltaStream::on_request(self, request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step<DeltaResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        DeltaStream::status(self)
    }
    fn holding(&self) -> BTreeMap<ResourceType, Resources> {
        DeltaStream::holding(self)
    }
    fn describe(response: &DeltaResponse) -> Pushed<'_> {
        Pushed {
            type_url: &response.type_url,
            version: &response.system_version_info,
            resources: response.resources.len(),
            removed: response.removed_resources.len(),
            nonce: &response.nonce,
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    use super::super::snapshot::{Resource, ResourceSet};
    use super::*;

    fn set(items: &[(&str, &str)]) -> ResourceSet {
        ResourceSet::new(items.iter().map(|(name, body)| {
            Arc::new(Resource::new(*name, Any { type_url: "t".into(), value: body.as_bytes().into() }))
        }))
    }

    fn snapshot(clusters: &[(&str, &str)], routes: &[(&str, &str)]) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(clusters))
                .with_resources(ResourceType::Route, set(routes)),
        )
    }

    fn subscribe(resource_type: ResourceType, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: resource_type.type_url().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        }
    }

    fn nack(response: &DeltaDiscoveryResponse, error: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            error_detail: Some(Status { code: 3, message: error.into(), details: vec![] }),
            ..ack(response)
        }
    }

    fn one(step: Step<DeltaResponse>) -> DeltaDiscoveryResponse {
        assert_eq!(step.responses.len(), 1, "{step:?}");
        step.responses.into_iter().next().expect("one response").to_proto()
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn the_first_wildcard_request_gets_everything_then_only_changes() {
        let mut stream = DeltaStream::new(snapshot(&[("a", "1"), ("b", "1")], &[]));
        let first = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        assert_eq!(names(&first), ["a", "b"]);
        assert!(first.resources.iter().all(|r| r.version.len() == 16 && r.resource.is_some()));
        let step = stream.on_request(&ack(&first)).unwrap();
        assert!(step.responses.is_empty());
        assert!(matches!(step.events[..], [Event::Ack { .. }]));

        // b changes, c comes, a goes.
        let changed = one(stream.on_snapshot(snapshot(&[("b", "2"), ("c", "1")], &[])));
        assert_eq!(names(&changed), ["b", "c"]);
        assert_eq!(changed.removed_resources, ["a"]);
        // The same again: nothing.
        stream.on_request(&ack(&changed)).unwrap();
        assert_eq!(stream.on_snapshot(snapshot(&[("b", "2"), ("c", "1")], &[])), Step::default());
        assert_eq!(stream.held(ResourceType::Cluster).len(), 2);
    }

    #[test]
    fn a_reconnect_gets_only_what_differs() {
        let current = snapshot(&[("a", "1"), ("b", "2")], &[]);
        let version =
            |name: &str| current.resources(ResourceType::Cluster).get(name).unwrap().version.clone();
        let mut stream = DeltaStream::new(current.clone());
        let request = DeltaDiscoveryRequest {
            initial_resource_versions: [
                ("a".to_string(), version("a")),
                ("b".to_string(), "old".to_string()),
                ("gone".to_string(), "x".to_string()),
            ]
            .into(),
            ..subscribe(ResourceType::Cluster, &[])
        };
        let response = one(stream.on_request(&request).unwrap());
        assert_eq!(names(&response), ["b"]);
        assert_eq!(response.removed_resources, ["gone"]);

        // Nothing differs: still answered, empty, so the proxy knows.
        let mut stream = DeltaStream::new(current.clone());
        let request = DeltaDiscoveryRequest {
            initial_resource_versions: [("a".to_string(), version("a")), ("b".to_string(), version("b"))]
                .into(),
            ..subscribe(ResourceType::Cluster, &[])
        };
        let response = one(stream.on_request(&request).unwrap());
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
    }

    #[test]
    fn named_subscriptions_come_and_go() {
        let mut stream = DeltaStream::new(snapshot(&[], &[("r1", "1"), ("r2", "1")]));
        let first = one(stream.on_request(&subscribe(ResourceType::Route, &["r1", "missing"])).unwrap());
        assert_eq!(names(&first), ["r1"]);
        assert_eq!(first.removed_resources, ["missing"], "told it does not exist");
        stream.on_request(&ack(&first)).unwrap();

        // Subscribing to more with the ACK of nothing in flight: sent at once.
        let more = one(stream.on_request(&subscribe(ResourceType::Route, &["r2"])).unwrap());
        assert_eq!(names(&more), ["r2"]);
        stream.on_request(&ack(&more)).unwrap();

        // Unsubscribed: forgotten, and a change to it is not sent.
        let unsubscribe = DeltaDiscoveryRequest {
            type_url: ResourceType::Route.type_url().into(),
            resource_names_unsubscribe: vec!["r1".into()],
            ..Default::default()
        };
        assert!(stream.on_request(&unsubscribe).unwrap().responses.is_empty());
        assert_eq!(stream.on_snapshot(snapshot(&[], &[("r1", "2"), ("r2", "1")])), Step::default());
        // "missing" appears: sent.
        let appeared = one(stream.on_snapshot(snapshot(&[], &[("r1", "2"), ("r2", "1"), ("missing", "1")])));
        assert_eq!(names(&appeared), ["missing"]);
    }

    /// Streams that subscribe to the same names (in any order, in one
    /// request or several) hold one shared set, and one selection of a
    /// shared snapshot; what they are sent does not depend on it.
    #[test]
    fn streams_subscribing_to_the_same_names_share_one_set() {
        let routes = snapshot(&[], &[("shared-r1", "1"), ("shared-r2", "1"), ("shared-r3", "1")]);
        let subscribed = |stream: &DeltaStream| stream.types[&ResourceType::Route].names.clone();
        let absent = |stream: &DeltaStream| stream.types[&ResourceType::Route].absent.clone();

        let mut a = DeltaStream::new(routes.clone());
        let mut b = DeltaStream::new(routes.clone());
        let to_a = one(a.on_request(&subscribe(ResourceType::Route, &["shared-r2", "shared-r1"])).unwrap());
        let to_b = one(b.on_request(&subscribe(ResourceType::Route, &["shared-r1"])).unwrap());
        b.on_request(&ack(&to_b)).unwrap();
        let more_to_b = one(b.on_request(&subscribe(ResourceType::Route, &["shared-r2"])).unwrap());
        assert!(Arc::ptr_eq(&subscribed(&a), &subscribed(&b)), "one set for the same names");
        assert_eq!(subscribed(&a).iter().collect::<Vec<_>>(), ["shared-r1", "shared-r2"]);
        assert!(Arc::ptr_eq(&absent(&a), &NameSet::empty()) && Arc::ptr_eq(&absent(&b), &NameSet::empty()));
        a.on_request(&ack(&to_a)).unwrap();
        b.on_request(&ack(&more_to_b)).unwrap();
        // The same resources, in the same versions; the selection is one.
        assert_eq!(names(&to_a), ["shared-r1", "shared-r2"]);
        assert_eq!([names(&to_b), names(&more_to_b)].concat(), names(&to_a));
        assert_eq!(a.held(ResourceType::Route), b.held(ResourceType::Route));
        assert!(a.holding()[&ResourceType::Route].same_parts(&b.holding()[&ResourceType::Route]));

        // An unsubscription makes another set; the other stream keeps its.
        let before = subscribed(&a);
        let unsubscribe = DeltaDiscoveryRequest {
            type_url: ResourceType::Route.type_url().into(),
            resource_names_unsubscribe: vec!["shared-r1".into()],
            ..Default::default()
        };
        assert!(a.on_request(&unsubscribe).unwrap().responses.is_empty());
        assert!(!Arc::ptr_eq(&subscribed(&a), &before));
        assert_eq!(subscribed(&a).iter().collect::<Vec<_>>(), ["shared-r2"]);
        assert!(Arc::ptr_eq(&subscribed(&b), &before));
        assert_eq!(b.held(ResourceType::Route).len(), 2);
        assert_eq!(a.held(ResourceType::Route).keys().collect::<Vec<_>>(), ["shared-r2"]);

        // A change reaches each stream as its names say.
        let changed = snapshot(&[], &[("shared-r1", "2"), ("shared-r2", "2"), ("shared-r3", "1")]);
        assert_eq!(names(&one(a.on_snapshot(changed.clone()))), ["shared-r2"]);
        assert_eq!(names(&one(b.on_snapshot(changed))), ["shared-r1", "shared-r2"]);
    }

    /// A subscribed resource that leaves the snapshot is named once in
    /// `removed_resources`: Envoy refuses a response that names a
    /// resource twice.
    #[test]
    fn a_subscribed_resource_that_goes_is_removed_once() {
        let both = snapshot(&[], &[("once-r1", "1"), ("once-r2", "1")]);
        let mut stream = DeltaStream::new(both);
        let first = one(stream.on_request(&subscribe(ResourceType::Route, &["once-r1", "once-r2"])).unwrap());
        stream.on_request(&ack(&first)).unwrap();
        let gone = one(stream.on_snapshot(snapshot(&[], &[("once-r1", "1")])));
        assert!(gone.resources.is_empty());
        assert_eq!(gone.removed_resources, ["once-r2"]);
        stream.on_request(&ack(&gone)).unwrap();
        // Back again: sent.
        let back = one(stream.on_snapshot(snapshot(&[], &[("once-r1", "1"), ("once-r2", "2")])));
        assert_eq!(names(&back), ["once-r2"]);
    }

    /// Names told absent are a shared set too, empty again once they
    /// appear.
    #[test]
    fn names_told_absent_are_shared_and_forgotten_when_they_appear() {
        let without = snapshot(&[], &[("absent-r1", "1")]);
        let absent = |stream: &DeltaStream| stream.types[&ResourceType::Route].absent.clone();
        let mut a = DeltaStream::new(without.clone());
        let mut b = DeltaStream::new(without);
        for stream in [&mut a, &mut b] {
            let first =
                one(stream.on_request(&subscribe(ResourceType::Route, &["absent-r1", "absent-r2"])).unwrap());
            assert_eq!(
                (names(&first), first.removed_resources.clone()),
                (vec!["absent-r1"], vec!["absent-r2".into()])
            );
            stream.on_request(&ack(&first)).unwrap();
        }
        assert!(Arc::ptr_eq(&absent(&a), &absent(&b)));
        assert_eq!(absent(&a).iter().collect::<Vec<_>>(), ["absent-r2"]);

        let with = snapshot(&[], &[("absent-r1", "1"), ("absent-r2", "1")]);
        assert_eq!(names(&one(a.on_snapshot(with))), ["absent-r2"]);
        assert!(Arc::ptr_eq(&absent(&a), &NameSet::empty()));
    }

    #[test]
    fn one_response_in_flight_per_type_and_stale_nonces_are_ignored() {
        let mut stream = DeltaStream::new(snapshot(&[("a", "1")], &[]));
        let first = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        // Changes while unacknowledged wait.
        assert!(stream.on_snapshot(snapshot(&[("a", "2")], &[])).responses.is_empty());
        assert!(stream.on_snapshot(snapshot(&[("a", "3")], &[])).responses.is_empty());
        let stale = DeltaDiscoveryRequest { response_nonce: "99".into(), ..ack(&first) };
        let step = stream.on_request(&stale).unwrap();
        assert!(step.responses.is_empty());
        assert!(matches!(step.events[..], [Event::StaleNonce { .. }]));
        // The ACK brings the latest.
        let latest = one(stream.on_request(&ack(&first)).unwrap());
        let expected =
            snapshot(&[("a", "3")], &[]).resources(ResourceType::Cluster).get("a").unwrap().version.clone();
        assert_eq!(latest.resources[0].version, expected);
        assert_eq!(stream.acked(ResourceType::Cluster), Some(first.system_version_info.as_str()));
    }

    #[test]
    fn a_nacked_version_is_not_sent_again() {
        let mut stream = DeltaStream::new(snapshot(&[("a", "1"), ("b", "1")], &[]));
        let first = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        stream.on_request(&ack(&first)).unwrap();
        let bad = one(stream.on_snapshot(snapshot(&[("a", "bad"), ("b", "1")], &[])));
        let step = stream.on_request(&nack(&bad, "cluster a: bad lb policy")).unwrap();
        assert!(step.responses.is_empty(), "the refused version is not re-sent");
        assert_eq!(
            step.events,
            [Event::Nack {
                resource_type: ResourceType::Cluster,
                version: bad.system_version_info.clone(),
                resources: vec!["a".into()],
                error: "cluster a: bad lb policy".into(),
            }]
        );
        assert_eq!(
            stream.nacked(ResourceType::Cluster).map(|n| n.error.as_str()),
            Some("cluster a: bad lb policy")
        );
        // The proxy keeps the old a.
        let old =
            snapshot(&[("a", "1")], &[]).resources(ResourceType::Cluster).get("a").unwrap().version.clone();
        assert_eq!(stream.held(ResourceType::Cluster).get("a"), Some(&old));
        // Another change elsewhere does not bring the bad a back.
        let other = one(stream.on_snapshot(snapshot(&[("a", "bad"), ("b", "2")], &[])));
        assert_eq!(names(&other), ["b"]);
        stream.on_request(&ack(&other)).unwrap();
        assert_eq!(stream.nacked(ResourceType::Cluster), None);
        // A fix goes out.
        let fixed = one(stream.on_snapshot(snapshot(&[("a", "fixed"), ("b", "2")], &[])));
        assert_eq!(names(&fixed), ["a"]);
    }

    /// A route to a new subset cluster reaches the proxy only after the
    /// proxy acknowledged the cluster (and its endpoints).
    #[test]
    fn a_route_to_a_new_cluster_waits_for_the_clusters_ack() {
        let v1 = Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(&[("reviews|v1", "c1")]))
                .with_resources(ResourceType::Endpoint, set(&[("reviews|v1", "e1")]))
                .with_resources(ResourceType::Route, set(&[("9080", "to v1")]))
                .with_dependencies(ResourceType::Route, "9080", ["reviews|v1"]),
        );
        let mut stream = DeltaStream::new(v1);
        let c = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let e = one(stream.on_request(&subscribe(ResourceType::Endpoint, &["reviews|v1"])).unwrap());
        stream.on_request(&ack(&e)).unwrap();
        let r = one(stream.on_request(&subscribe(ResourceType::Route, &["9080"])).unwrap());
        stream.on_request(&ack(&r)).unwrap();

        // A subset v2 and a route to it, in one snapshot.
        let v2 = Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(&[("reviews|v1", "c1"), ("reviews|v2", "c2")]))
                .with_resources(ResourceType::Endpoint, set(&[("reviews|v1", "e1"), ("reviews|v2", "e2")]))
                .with_resources(ResourceType::Route, set(&[("9080", "to v2")]))
                .with_dependencies(ResourceType::Route, "9080", ["reviews|v2"]),
        );
        let cds = one(stream.on_snapshot(v2));
        assert_eq!(cds.type_url, ResourceType::Cluster.type_url(), "the cluster first, the route held back");
        assert_eq!(names(&cds), ["reviews|v2"]);
        // The cluster's ACK: the proxy now asks for its endpoints; the route still waits.
        assert!(stream.on_request(&ack(&cds)).unwrap().responses.is_empty());
        let eds = one(stream.on_request(&subscribe(ResourceType::Endpoint, &["reviews|v2"])).unwrap());
        assert_eq!(names(&eds), ["reviews|v2"]);
        // The endpoints' ACK releases the route.
        let rds = one(stream.on_request(&ack(&eds)).unwrap());
        assert_eq!(rds.type_url, ResourceType::Route.type_url());
        assert_eq!(names(&rds), ["9080"]);
    }

    /// Clusters `a` and `b` (`a` with `a_body`) and their endpoints.
    fn two_clusters(a_body: &str) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(&[("a", a_body), ("b", "cb")]))
                .with_resources(ResourceType::Endpoint, set(&[("a", "ea"), ("b", "eb")])),
        )
    }

    fn types_of(step: &Step<DeltaResponse>) -> Vec<&str> {
        step.responses.iter().map(|r| r.type_url.as_str()).collect()
    }

    /// Envoy warms a changed cluster as a new one, waiting for its
    /// endpoints, and asks for nothing new (it subscribes to them already):
    /// they follow the cluster though they did not change; an unchanged
    /// cluster's do not. Endpoints in flight when the cluster changed
    /// reached Envoy before it: they go again after their ACK.
    #[test]
    fn a_changed_cluster_gets_its_unchanged_endpoints_again() {
        let mut stream = DeltaStream::new(two_clusters("ca"));
        let c = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let e = one(stream.on_request(&subscribe(ResourceType::Endpoint, &["a", "b"])).unwrap());
        stream.on_request(&ack(&e)).unwrap();

        let step = stream.on_snapshot(two_clusters("ca2"));
        assert_eq!(types_of(&step), [ResourceType::Cluster.type_url(), ResourceType::Endpoint.type_url()]);
        let (cds, eds) = (step.responses[0].to_proto(), step.responses[1].to_proto());
        assert_eq!(names(&cds), ["a"]);
        assert_eq!(names(&eds), ["a"], "a's endpoints only");
        assert_eq!(eds.resources[0].version, e.resources[0].version, "unchanged");
        assert!(stream.on_request(&ack(&cds)).unwrap().responses.is_empty());
        assert!(stream.on_request(&ack(&eds)).unwrap().responses.is_empty());
        assert_eq!(stream.on_snapshot(two_clusters("ca2")), Step::default());

        // Endpoints in flight: the cluster goes alone, the ACK brings them.
        let step = stream.on_snapshot(two_clusters("ca3"));
        let (cds, eds) = (step.responses[0].to_proto(), step.responses[1].to_proto());
        stream.on_request(&ack(&cds)).unwrap();
        let cds = one(stream.on_snapshot(two_clusters("ca4")));
        assert_eq!(names(&cds), ["a"]);
        let again = one(stream.on_request(&ack(&eds)).unwrap());
        assert_eq!((again.type_url.as_str(), names(&again)), (ResourceType::Endpoint.type_url(), vec!["a"]));
    }

    /// On a reconnect, a cluster that changed while the proxy was away is
    /// warmed again too: its endpoints go though the proxy holds them.
    #[test]
    fn a_reconnect_with_a_changed_cluster_gets_its_endpoints() {
        let old = two_clusters("ca");
        let current = two_clusters("ca2");
        let held = |snapshot: &Snapshot, resource_type: ResourceType| {
            snapshot.resources(resource_type).iter().map(|r| (r.name.clone(), r.version.clone())).collect()
        };
        let mut stream = DeltaStream::new(current);
        let clusters = DeltaDiscoveryRequest {
            initial_resource_versions: held(&old, ResourceType::Cluster),
            ..subscribe(ResourceType::Cluster, &[])
        };
        let cds = one(stream.on_request(&clusters).unwrap());
        assert_eq!(names(&cds), ["a"]);
        let endpoints = DeltaDiscoveryRequest {
            initial_resource_versions: held(&old, ResourceType::Endpoint),
            ..subscribe(ResourceType::Endpoint, &["a", "b"])
        };
        let eds = one(stream.on_request(&endpoints).unwrap());
        assert_eq!(names(&eds), ["a"], "b's cluster did not change");
    }

    /// The other way: the route leaves the cluster first, then the
    /// cluster goes.
    #[test]
    fn a_cluster_goes_only_after_no_route_names_it() {
        let both = Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(&[("v1", "c1"), ("v2", "c2")]))
                .with_resources(ResourceType::Route, set(&[("9080", "to v2")]))
                .with_dependencies(ResourceType::Route, "9080", ["v2"]),
        );
        let mut stream = DeltaStream::new(both);
        let c = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let r = one(stream.on_request(&subscribe(ResourceType::Route, &["9080"])).unwrap());
        stream.on_request(&ack(&r)).unwrap();

        let only_v1 = Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, set(&[("v1", "c1")]))
                .with_resources(ResourceType::Route, set(&[("9080", "to v1")]))
                .with_dependencies(ResourceType::Route, "9080", ["v1"]),
        );
        let step = stream.on_snapshot(only_v1);
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [ResourceType::Route.type_url()], "v2 stays while the proxy's route names it");
        let rds = step.responses.into_iter().next().unwrap().to_proto();
        let cds = one(stream.on_request(&ack(&rds)).unwrap());
        assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
        assert_eq!(cds.removed_resources, ["v2"]);
    }

    /// A type the mesh does not serve: the first request is answered with
    /// nothing, naming the subscribed names as absent; a later request is
    /// answered only for names it was not told of.
    #[test]
    fn a_type_the_mesh_does_not_serve_is_answered_with_its_names_absent() {
        let runtime = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
        let mut stream = DeltaStream::new(snapshot(&[("a", "1")], &[]));
        let asked = |names: &[&str]| DeltaDiscoveryRequest {
            type_url: runtime.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        let first = one(stream.on_request(&asked(&["b", "a"])).unwrap());
        assert_eq!(first.type_url, runtime);
        assert!(first.resources.is_empty());
        assert_eq!(first.removed_resources, ["a", "b"]);
        assert_eq!(stream.on_request(&ack(&first)).unwrap(), Step::default(), "its ACK is ignored");
        assert_eq!(stream.on_request(&asked(&["a"])).unwrap(), Step::default(), "told already");
        let more = one(stream.on_request(&asked(&["a", "c"])).unwrap());
        assert_eq!(more.removed_resources, ["c"]);
        assert!(stream.status().is_empty(), "nothing recorded for it");
        // The served types are not disturbed; the nonce counter is shared.
        let clusters = one(stream.on_request(&subscribe(ResourceType::Cluster, &[])).unwrap());
        assert_eq!((names(&clusters), clusters.nonce.as_str()), (vec!["a"], "3"));
    }

    #[test]
    fn a_request_without_a_type_is_a_protocol_error() {
        let mut stream = DeltaStream::new(snapshot(&[], &[]));
        let untyped = DeltaDiscoveryRequest::default();
        assert_eq!(stream.on_request(&untyped), Err(ProtocolError::NoTypeUrl));
    }
}
