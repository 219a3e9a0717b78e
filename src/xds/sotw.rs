//! One ADS stream in the state-of-the-world (SotW) protocol, as a state
//! machine with no I/O: requests and new snapshots go in, responses and
//! events (ACK, NACK, stale nonce) come out. The server
//! ([`super::server`]) feeds it, through [`Machine`] as it does Delta's,
//! and writes what it returns; tests drive it directly.
//!
//! The rules, per resource type on the stream:
//! - the first request of a type is always answered, with the current
//!   snapshot;
//! - after that, a request must carry the nonce of the latest response of
//!   its type; one with an older nonce is stale (Envoy sent it before it
//!   saw our latest response) and ignored;
//! - a request with the latest nonce acknowledges that response: an ACK
//!   without `error_detail`, a NACK with it. A NACKed version is
//!   remembered and not sent again; the next different version is;
//! - one response per request: once a type has been answered, the next
//!   response waits for the proxy's ACK or NACK, and then goes out only if
//!   the snapshot's version differs from the one last sent. Unchanged
//!   configuration is never re-pushed.
//!
//! Listeners and clusters are subscribed to as a whole (wildcard); other
//! types (endpoints, routes, secrets) by name, and a response carries only
//! the named resources. For these, Envoy takes a response as an update of
//! the resources it carries and keeps the others, so a push carries only
//! the named resources that changed since the proxy's last ACK; the first
//! response, one answering a new set of names, and one after a NACK carry
//! them all. Nonces are one counter for the whole stream.
//!
//! Make-before-break ([`super::order`]) holds back, within a response, a
//! listener or route whose clusters are not acknowledged yet (the proxy
//! keeps the version it has), and keeps a removed cluster in the response
//! while a listener or route the proxy holds still names it; both are planned again
//! after every ACK. A cluster response with new or changed clusters is
//! followed by their endpoints, sent again unchanged: Envoy warms such a
//! cluster by waiting for them, and its requests name nothing new.
//!
//! A type URL the mesh does not serve ([`ResourceType::from_type_url`]
//! knows none of it) is answered once, with no resources, and its later
//! requests ignored; nothing else of the stream depends on it.
//!
//! [`super::delta`] is the incremental sibling over the same [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::names::NameSet;
use super::order::{self, Ledger};
use super::protocol::{Event, Machine, Nack, Protocol, ProtocolError, Pushed, Step, TypeStatus};
use super::resource_type::ResourceType;
use super::snapshot::{Resources, Snapshot};
use super::wire::{SotwResponse, TypeUrl};

/// What a stream wants of one resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type.
    Wildcard,
    /// Only these (shared by the streams that ask for the same names).
    Names(Arc<NameSet>),
}

impl Subscription {
    /// The subscription `names` ask for; `current`'s set again when they
    /// are the same names.
    fn of(resource_type: ResourceType, names: &[String], current: Option<&Subscription>) -> Self {
        if resource_type.is_wildcard_only() || names.iter().any(|n| n == "*") {
            return Subscription::Wildcard;
        }
        match current {
            Some(Subscription::Names(set)) if set.matches(names) => Subscription::Names(set.clone()),
            _ => Subscription::Names(NameSet::intern(names.iter().map(String::as_str))),
        }
    }

    /// What the snapshot has of this subscription.
    pub(crate) fn select(&self, all: Resources) -> Resources {
        match self {
            Subscription::Wildcard => all,
            Subscription::Names(names) => names.select(&all),
        }
    }
}

/// The last response of a type.
#[derive(Clone, Debug)]
struct Sent {
    nonce: String,
    version: String,
}

#[derive(Clone, Debug)]
struct TypeState {
    subscription: Subscription,
    sent: Option<Sent>,
    acked: Option<String>,
    nacked: Option<Nack>,
    /// The proxy has asked (first request, ACK or NACK of our latest
    /// response) and has not been answered yet.
    waiting: bool,
    /// Something was held back for make-before-break.
    held: bool,
    /// The next response carries every subscribed resource, not only the
    /// changed ones (first response, new names, after a NACK).
    full: bool,
}

/// The state of one SotW stream.
#[derive(Debug)]
pub struct SotwStream {
    snapshot: Arc<Snapshot>,
    nonce: u64,
    types: BTreeMap<ResourceType, TypeState>,
    ledgers: BTreeMap<ResourceType, Ledger>,
    /// Type URLs the mesh does not serve that the proxy asked for, each
    /// answered once (see [`SotwStream::on_request`]).
    unserved: BTreeSet<String>,
}

impl SotwStream {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            nonce: 0,
            types: BTreeMap::new(),
            ledgers: BTreeMap::new(),
            unserved: BTreeSet::new(),
        }
    }

    /// Handles one request from the proxy.
    ///
    /// A type the mesh does not serve is answered once, with no resources,
    /// so a proxy that asks for it does not wait; its later requests
    /// (ACKs of that answer) are ignored.
    pub fn on_request(&mut self, request: &DiscoveryRequest) -> Result<Step, ProtocolError> {
        if request.type_url.is_empty() {
            return Err(ProtocolError::NoTypeUrl);
        }
        let Some(resource_type) = ResourceType::from_type_url(&request.type_url) else {
            return Ok(self.unserved(&request.type_url));
        };
        let mut step = Step::default();
        let current = self.types.get(&resource_type).map(|state| &state.subscription);
        let subscription = Subscription::of(resource_type, &request.resource_names, current);
        let state = self.types.entry(resource_type).or_insert_with(|| TypeState {
            subscription: subscription.clone(),
            sent: None,
            acked: None,
            nacked: None,
            waiting: false,
            held: false,
            full: true,
        });
        let ledger = self.ledgers.entry(resource_type).or_default();
        let mut answered = false;
        if let Some(sent) = &state.sent {
            if request.response_nonce != sent.nonce {
                step.events.push(Event::StaleNonce { resource_type, nonce: request.response_nonce.clone() });
                return Ok(step);
            }
            answered = true;
            // The version is the one we sent with this nonce: in a NACK,
            // `version_info` is the proxy's previous, still applied one.
            let version = sent.version.clone();
            match &request.error_detail {
                Some(error) => {
                    step.events.push(Event::Nack {
                        resource_type,
                        version: version.clone(),
                        resources: ledger.sent.iter().map(|r| r.name.clone()).collect(),
                        error: error.message.clone(),
                    });
                    state.nacked = Some(Nack { version, error: error.message.clone() });
                    state.full = true;
                    ledger.refused = ledger.sent.clone();
                }
                None => {
                    step.events.push(Event::Ack { resource_type, version: version.clone() });
                    state.acked = Some(version);
                    state.nacked = None;
                    ledger.acked = ledger.sent.clone();
                    ledger.refused = Resources::default();
                }
            }
        }
        if state.subscription != subscription {
            state.full = true;
        }
        state.subscription = subscription;
        state.waiting = true;
        step.responses.extend(self.respond(resource_type));
        if answered || resource_type == ResourceType::Cluster {
            // An answer may release what waited on it, in other types; new
            // or changed clusters want their endpoints again.
            step.responses.extend(self.respond_held());
        }
        Ok(step)
    }

    /// The one answer to a type the mesh does not serve: empty, with the
    /// version of nothing.
    fn unserved(&mut self, type_url: &str) -> Step {
        let mut step = Step::default();
        if self.unserved.insert(type_url.to_string()) {
            self.nonce += 1;
            step.responses.push(SotwResponse {
                version_info: Resources::default().version(),
                resources: Vec::new(),
                type_url: TypeUrl::Other(type_url.to_string()),
                nonce: self.nonce.to_string(),
            });
        }
        step
    }

    /// Takes a new snapshot and answers every waiting type whose content
    /// changed, in an order that lets Envoy use each response at once:
    /// secrets and clusters before the listeners and routes that name them.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step {
        self.snapshot = snapshot;
        let mut waiting: Vec<ResourceType> =
            self.types.iter().filter(|(_, state)| state.waiting).map(|(t, _)| *t).collect();
        waiting.sort_by_key(|t| t.push_rank());
        let mut step = Step::default();
        for resource_type in waiting {
            step.responses.extend(self.respond(resource_type));
        }
        step
    }

    /// The snapshot the stream works from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The version the proxy last acknowledged for a type.
    pub fn acked(&self, resource_type: ResourceType) -> Option<&str> {
        self.types.get(&resource_type)?.acked.as_deref()
    }

    /// The version the proxy refused last for a type, if its latest answer
    /// was a refusal.
    pub fn nacked(&self, resource_type: ResourceType) -> Option<&Nack> {
        self.types.get(&resource_type)?.nacked.as_ref()
    }

    /// Where each type the proxy asked for stands.
    pub fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        self.types
            .iter()
            .map(|(resource_type, state)| {
                let status = TypeStatus {
                    sent: state.sent.as_ref().map(|s| s.version.clone()),
                    acked: state.acked.clone(),
                    nack: state.nacked.clone(),
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
    fn respond_held(&mut self) -> Vec<SotwResponse> {
        let mut held: Vec<ResourceType> = self
            .types
            .iter()
            .filter(|(t, s)| s.waiting && (s.held || order::rewarm_pending(**t, &self.ledgers)))
            .map(|(t, _)| *t)
            .collect();
        held.sort_by_key(|t| t.push_rank());
        held.into_iter().filter_map(|t| self.respond(t)).collect()
    }

    /// Answers a waiting type if the snapshot has something it has not
    /// been sent.
    fn respond(&mut self, resource_type: ResourceType) -> Option<SotwResponse> {
        let state = self.types.get(&resource_type)?;
        if !state.waiting {
            return None;
        }
        let desired = state.subscription.select(self.snapshot.resources(resource_type));
        let plan = order::plan(resource_type, &desired, &self.ledgers, &self.snapshot, false);
        order::planned(resource_type, &mut self.ledgers);
        let state = self.types.get_mut(&resource_type)?;
        state.held = plan.held;
        let version = plan.next.version();
        if plan.updated.is_empty() && state.sent.as_ref().is_some_and(|sent| sent.version == version) {
            // Either what the proxy holds, or what it refused; nothing to
            // send again for a re-warming cluster.
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sent = Some(Sent { nonce: nonce.clone(), version: version.clone() });
        state.waiting = false;
        order::sent(resource_type, &plan.updated, &mut self.ledgers);
        let resources = match (&state.subscription, state.full) {
            // Only what changed since the proxy's last ACK: outside `full`,
            // the proxy acknowledged what it was sent, and the plan's
            // updates are what differs from that.
            (Subscription::Names(_), false) => plan.updated,
            _ => plan.next.iter().cloned().collect(),
        };
        state.full = false;
        self.ledgers.entry(resource_type).or_default().sent = plan.next;
        Some(SotwResponse { version_info: version, resources, type_url: resource_type.into(), nonce })
    }
}

impl Machine for SotwStream {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn new(snapshot: Arc<Snapshot>) -> Self {
        SotwStream::new(snapshot)
    }
    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn subscribing(request: &DiscoveryRequest) -> (&str, &[String]) {
        (&request.type_url, &request.resource_names)
    }
    fn on_request(&mut self, request: &DiscoveryRequest) -> Result<Step, ProtocolError> {
        SotwStream::on_request(self, request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        SotwStream::status(self)
    }
    fn holding(&self) -> BTreeMap<ResourceType, Resources> {
        SotwStream::holding(self)
    }
    fn describe(response: &SotwResponse) -> Pushed<'_> {
        Pushed {
            type_url: &response.type_url,
            version: &response.version_info,
            resources: response.resources.len(),
            removed: 0,
            nonce: &response.nonce,
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    use super::super::snapshot::Resources;
    use super::*;

    fn resources(items: &[(&str, &str)]) -> Resources {
        Resources::new(items.iter().map(|(name, body)| {
            (name.to_string(), Any { type_url: "t".into(), value: body.as_bytes().into() })
        }))
    }

    fn snapshot(listener_body: &str) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Listener, resources(&[("virtualOutbound", listener_body)]))
                .with_resources(ResourceType::Cluster, resources(&[("PassthroughCluster", "c")]))
                .with_resources(ResourceType::Route, resources(&[("a", "ra"), ("b", "rb")])),
        )
    }

    fn request(resource_type: ResourceType, version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: resource_type.type_url().into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(resource_type: ResourceType, version: &str, nonce: &str, error: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status { code: 3, message: error.into(), details: vec![] }),
            ..request(resource_type, version, nonce)
        }
    }

    fn one(step: Step) -> DiscoveryResponse {
        assert_eq!(step.responses.len(), 1, "{step:?}");
        step.responses.into_iter().next().expect("one response").to_proto()
    }

    #[test]
    fn the_first_request_gets_the_snapshot_and_an_ack_is_recorded() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let response = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        assert_eq!(response.type_url, ResourceType::Listener.type_url());
        assert_eq!(response.resources.len(), 1);
        assert_eq!(response.nonce, "1");

        let step = stream.on_request(&request(ResourceType::Listener, &response.version_info, "1")).unwrap();
        assert!(step.responses.is_empty(), "unchanged: nothing to send");
        assert_eq!(
            step.events,
            [Event::Ack { resource_type: ResourceType::Listener, version: response.version_info.clone() }]
        );
        assert_eq!(stream.acked(ResourceType::Listener), Some(response.version_info.as_str()));
    }

    #[test]
    fn nonces_grow_across_types() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let clusters = one(stream.on_request(&request(ResourceType::Cluster, "", "")).unwrap());
        let listeners = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        assert_eq!((clusters.nonce.as_str(), listeners.nonce.as_str()), ("1", "2"));
    }

    #[test]
    fn an_unchanged_snapshot_is_not_pushed_and_a_changed_one_is() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let first = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Listener, &first.version_info, &first.nonce)).unwrap();

        assert_eq!(stream.on_snapshot(snapshot("l1")), Step::default());
        let pushed = one(stream.on_snapshot(snapshot("l2")));
        assert_ne!(pushed.version_info, first.version_info);
        assert_eq!(pushed.nonce, "2");
    }

    #[test]
    fn no_push_while_a_response_is_unacknowledged_then_the_latest_goes() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let first = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        // Two changes before the proxy answers: nothing yet.
        assert!(stream.on_snapshot(snapshot("l2")).responses.is_empty());
        assert!(stream.on_snapshot(snapshot("l3")).responses.is_empty());
        // The ACK of the first response brings the newest content at once.
        let step =
            stream.on_request(&request(ResourceType::Listener, &first.version_info, &first.nonce)).unwrap();
        let latest = one(step);
        assert_eq!(latest.version_info, snapshot("l3").resources(ResourceType::Listener).version());
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let first = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Listener, &first.version_info, &first.nonce)).unwrap();
        let second = one(stream.on_snapshot(snapshot("l2")));

        // A request that answered the first response arrives late.
        let step =
            stream.on_request(&request(ResourceType::Listener, &first.version_info, &first.nonce)).unwrap();
        assert!(step.responses.is_empty());
        assert_eq!(
            step.events,
            [Event::StaleNonce { resource_type: ResourceType::Listener, nonce: first.nonce.clone() }]
        );
        assert_eq!(
            stream.acked(ResourceType::Listener),
            Some(first.version_info.as_str()),
            "not an ACK of the second"
        );

        let step =
            stream.on_request(&request(ResourceType::Listener, &second.version_info, &second.nonce)).unwrap();
        assert!(matches!(step.events[..], [Event::Ack { .. }]));
        assert_eq!(stream.acked(ResourceType::Listener), Some(second.version_info.as_str()));
    }

    #[test]
    fn a_nacked_version_is_remembered_and_not_sent_again() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let first = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Listener, &first.version_info, &first.nonce)).unwrap();
        let bad = one(stream.on_snapshot(snapshot("bad")));

        // A NACK carries the previous version; the refused one is ours.
        let step = stream
            .on_request(&nack(
                ResourceType::Listener,
                &first.version_info,
                &bad.nonce,
                "cannot bind 0.0.0.0:15001",
            ))
            .unwrap();
        assert!(step.responses.is_empty(), "the refused version is not re-sent");
        assert_eq!(
            step.events,
            [Event::Nack {
                resource_type: ResourceType::Listener,
                version: bad.version_info.clone(),
                resources: vec!["virtualOutbound".into()],
                error: "cannot bind 0.0.0.0:15001".into(),
            }]
        );
        assert_eq!(stream.acked(ResourceType::Listener), Some(first.version_info.as_str()));
        assert_eq!(
            stream.nacked(ResourceType::Listener).map(|n| n.version.as_str()),
            Some(bad.version_info.as_str())
        );

        // The same bad content again: still nothing.
        assert!(stream.on_snapshot(snapshot("bad")).responses.is_empty());
        // A fix goes out, and its ACK clears the NACK.
        let fixed = one(stream.on_snapshot(snapshot("fixed")));
        stream.on_request(&request(ResourceType::Listener, &fixed.version_info, &fixed.nonce)).unwrap();
        assert_eq!(stream.nacked(ResourceType::Listener), None);
    }

    #[test]
    fn named_types_get_only_what_they_ask_for() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let asked = DiscoveryRequest {
            resource_names: vec!["b".into(), "missing".into()],
            ..request(ResourceType::Route, "", "")
        };
        let response = one(stream.on_request(&asked).unwrap());
        assert_eq!(response.resources.len(), 1);
        let routes = snapshot("l1").resources(ResourceType::Route);
        assert_eq!(response.resources[0], routes.get("b").unwrap().body());
        assert_ne!(response.version_info, routes.version(), "the version is of what was sent");

        // Asking for more in the ACK brings a response with both.
        let more = DiscoveryRequest {
            resource_names: vec!["a".into(), "b".into()],
            ..request(ResourceType::Route, &response.version_info, &response.nonce)
        };
        let both = one(stream.on_request(&more).unwrap());
        assert_eq!(both.resources.len(), 2);
        assert_eq!(both.version_info, routes.version());
    }

    #[test]
    fn a_push_of_named_types_carries_only_what_changed() {
        let with = |a: &str| {
            Arc::new(Snapshot::new().with_resources(ResourceType::Route, resources(&[("a", a), ("b", "rb")])))
        };
        let mut stream = SotwStream::new(with("ra"));
        let asked = |version: &str, nonce: &str| DiscoveryRequest {
            resource_names: vec!["a".into(), "b".into()],
            ..request(ResourceType::Route, version, nonce)
        };
        let first = one(stream.on_request(&asked("", "")).unwrap());
        assert_eq!(first.resources.len(), 2);
        stream.on_request(&asked(&first.version_info, &first.nonce)).unwrap();

        let pushed = one(stream.on_snapshot(with("ra2")));
        assert_eq!(pushed.resources, [with("ra2").resources(ResourceType::Route).get("a").unwrap().body()]);
        assert_eq!(
            pushed.version_info,
            with("ra2").resources(ResourceType::Route).version(),
            "the version is the whole set's"
        );
        // Refused: the next response carries everything again.
        let refused = DiscoveryRequest {
            error_detail: Some(Status { code: 3, message: "no".into(), details: vec![] }),
            ..asked(&first.version_info, &pushed.nonce)
        };
        stream.on_request(&refused).unwrap();
        let fixed = one(stream.on_snapshot(with("ra3")));
        assert_eq!(fixed.resources.len(), 2);
    }

    #[test]
    fn listeners_and_clusters_are_always_wildcard() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let asked = DiscoveryRequest {
            resource_names: vec!["other".into()],
            ..request(ResourceType::Cluster, "", "")
        };
        assert_eq!(one(stream.on_request(&asked).unwrap()).resources.len(), 1);
    }

    #[test]
    fn a_reconnecting_proxy_is_answered_even_with_an_old_nonce_and_the_same_version() {
        // Envoy keeps its configuration across reconnects; the first answer
        // on the new stream completes its initialization.
        let version = snapshot("l1").resources(ResourceType::Listener).version().to_string();
        let mut stream = SotwStream::new(snapshot("l1"));
        let response = one(stream.on_request(&request(ResourceType::Listener, &version, "41")).unwrap());
        assert_eq!(response.version_info, version);
    }

    #[test]
    fn types_are_answered_in_push_order_on_a_new_snapshot() {
        let mut stream = SotwStream::new(snapshot("l1"));
        for type_url in [ResourceType::Listener, ResourceType::Cluster] {
            let r = one(stream.on_request(&request(type_url, "", "")).unwrap());
            stream.on_request(&request(type_url, &r.version_info, &r.nonce)).unwrap();
        }
        let changed = Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Listener, resources(&[("virtualOutbound", "l2")]))
                .with_resources(ResourceType::Cluster, resources(&[("PassthroughCluster", "c2")])),
        );
        let step = stream.on_snapshot(changed);
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [ResourceType::Cluster.type_url(), ResourceType::Listener.type_url()]);
    }

    /// A route to a new subset cluster reaches the proxy only after the
    /// proxy acknowledged the cluster and its endpoints; until then the
    /// route response keeps the version the proxy has.
    #[test]
    fn a_route_to_a_new_cluster_waits_for_the_clusters_ack() {
        let with = |clusters: &[(&str, &str)], route: &str, to: &str| {
            Arc::new(
                Snapshot::new()
                    .with_resources(ResourceType::Cluster, resources(clusters))
                    .with_resources(ResourceType::Endpoint, resources(clusters))
                    .with_resources(ResourceType::Route, resources(&[("9080", route)]))
                    .with_dependencies(ResourceType::Route, "9080", [to]),
            )
        };
        let mut stream = SotwStream::new(with(&[("reviews|v1", "1")], "to v1", "reviews|v1"));
        let named =
            |resource_type: ResourceType, names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                ..request(resource_type, version, nonce)
            };
        let c = one(stream.on_request(&request(ResourceType::Cluster, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Cluster, &c.version_info, &c.nonce)).unwrap();
        let e = one(stream.on_request(&named(ResourceType::Endpoint, &["reviews|v1"], "", "")).unwrap());
        stream
            .on_request(&named(ResourceType::Endpoint, &["reviews|v1"], &e.version_info, &e.nonce))
            .unwrap();
        let r = one(stream.on_request(&named(ResourceType::Route, &["9080"], "", "")).unwrap());
        stream.on_request(&named(ResourceType::Route, &["9080"], &r.version_info, &r.nonce)).unwrap();

        let v2 = with(&[("reviews|v1", "1"), ("reviews|v2", "2")], "to v2", "reviews|v2");
        let cds = one(stream.on_snapshot(v2.clone()));
        assert_eq!(cds.type_url, ResourceType::Cluster.type_url(), "only the cluster: the route waits");
        assert_eq!(cds.resources.len(), 2);
        // CDS ACKed; Envoy now asks for the new cluster's endpoints. The route still waits.
        let step = stream.on_request(&request(ResourceType::Cluster, &cds.version_info, &cds.nonce)).unwrap();
        assert!(step.responses.is_empty(), "{step:?}");
        let eds = one(stream
            .on_request(&named(
                ResourceType::Endpoint,
                &["reviews|v1", "reviews|v2"],
                &e.version_info,
                &e.nonce,
            ))
            .unwrap());
        assert_eq!(eds.resources.len(), 2, "new names: all of them");
        let rds = one(stream
            .on_request(&named(
                ResourceType::Endpoint,
                &["reviews|v1", "reviews|v2"],
                &eds.version_info,
                &eds.nonce,
            ))
            .unwrap());
        assert_eq!(rds.type_url, ResourceType::Route.type_url());
        assert_eq!(rds.resources[0], v2.resources(ResourceType::Route).get("9080").unwrap().body());
    }

    /// A cluster that left the snapshot stays in CDS responses while the
    /// route the proxy holds names it, and goes once the new route is ACKed.
    #[test]
    fn a_cluster_goes_only_after_no_route_names_it() {
        let with = |clusters: &[(&str, &str)], to: &str| {
            Arc::new(
                Snapshot::new()
                    .with_resources(ResourceType::Cluster, resources(clusters))
                    .with_resources(ResourceType::Route, resources(&[("9080", to)]))
                    .with_dependencies(ResourceType::Route, "9080", [to]),
            )
        };
        let mut stream = SotwStream::new(with(&[("v1", "1"), ("v2", "2")], "v2"));
        let c = one(stream.on_request(&request(ResourceType::Cluster, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Cluster, &c.version_info, &c.nonce)).unwrap();
        let routes = |version: &str, nonce: &str| DiscoveryRequest {
            resource_names: vec!["9080".into()],
            ..request(ResourceType::Route, version, nonce)
        };
        let r = one(stream.on_request(&routes("", "")).unwrap());
        stream.on_request(&routes(&r.version_info, &r.nonce)).unwrap();

        let step = stream.on_snapshot(with(&[("v1", "1")], "v1"));
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            order,
            [ResourceType::Route.type_url()],
            "CDS unchanged: v2 stays while the route names it"
        );
        let rds = &step.responses[0];
        let cds = one(stream.on_request(&routes(&rds.version_info, &rds.nonce)).unwrap());
        assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
        assert_eq!(cds.resources.len(), 1, "v2 removed after the route's ACK");
    }

    /// Clusters `a` and `b` (`a` with `a_body`) and their endpoints.
    fn two_clusters(a_body: &str) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::new()
                .with_resources(ResourceType::Cluster, resources(&[("a", a_body), ("b", "cb")]))
                .with_resources(ResourceType::Endpoint, resources(&[("a", "ea"), ("b", "eb")])),
        )
    }

    fn endpoints(version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: vec!["a".into(), "b".into()],
            ..request(ResourceType::Endpoint, version, nonce)
        }
    }

    /// Envoy warms a changed cluster as a new one, waiting for its
    /// endpoints: they follow the cluster response though they did not
    /// change; an unchanged cluster's do not.
    #[test]
    fn a_changed_cluster_gets_its_unchanged_endpoints_again() {
        let mut stream = SotwStream::new(two_clusters("ca"));
        let c = one(stream.on_request(&request(ResourceType::Cluster, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Cluster, &c.version_info, &c.nonce)).unwrap();
        let e = one(stream.on_request(&endpoints("", "")).unwrap());
        stream.on_request(&endpoints(&e.version_info, &e.nonce)).unwrap();

        let changed = two_clusters("ca2");
        let step = stream.on_snapshot(changed.clone());
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [ResourceType::Cluster.type_url(), ResourceType::Endpoint.type_url()]);
        let (cds, eds) = (step.responses[0].to_proto(), step.responses[1].to_proto());
        assert_eq!(
            eds.resources,
            [changed.resources(ResourceType::Endpoint).get("a").unwrap().body()],
            "a's only"
        );
        assert_eq!(eds.version_info, e.version_info, "the endpoints did not change");

        // A request Envoy sent before it saw these: stale, nothing more.
        let step = stream.on_request(&endpoints(&e.version_info, &e.nonce)).unwrap();
        assert!(step.responses.is_empty() && matches!(step.events[..], [Event::StaleNonce { .. }]));
        assert!(
            stream
                .on_request(&request(ResourceType::Cluster, &cds.version_info, &cds.nonce))
                .unwrap()
                .responses
                .is_empty()
        );
        assert!(stream.on_request(&endpoints(&eds.version_info, &eds.nonce)).unwrap().responses.is_empty());
        // Nothing changed: nothing sent, endpoints included.
        assert_eq!(stream.on_snapshot(two_clusters("ca2")), Step::default());
    }

    /// Endpoints Envoy had not acknowledged when a cluster changed reached
    /// it before the new cluster: their ACK brings them again. A cluster
    /// response that waited for its own ACK brings them at once.
    #[test]
    fn endpoints_go_again_once_both_types_may_be_answered() {
        let mut stream = SotwStream::new(two_clusters("ca"));
        let c = one(stream.on_request(&request(ResourceType::Cluster, "", "")).unwrap());
        stream.on_request(&request(ResourceType::Cluster, &c.version_info, &c.nonce)).unwrap();
        let e = one(stream.on_request(&endpoints("", "")).unwrap());

        // Endpoints in flight: the clusters go alone.
        let cds = one(stream.on_snapshot(two_clusters("ca2")));
        assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
        let eds = one(stream.on_request(&endpoints(&e.version_info, &e.nonce)).unwrap());
        assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
        assert_eq!(
            eds.resources,
            [two_clusters("ca").resources(ResourceType::Endpoint).get("a").unwrap().body()]
        );
        stream.on_request(&endpoints(&eds.version_info, &eds.nonce)).unwrap();

        // Clusters in flight: their ACK brings the next clusters, then the endpoints.
        let step = stream.on_snapshot(two_clusters("ca3"));
        assert!(step.responses.is_empty(), "{step:?}");
        let step = stream.on_request(&request(ResourceType::Cluster, &cds.version_info, &cds.nonce)).unwrap();
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [ResourceType::Cluster.type_url(), ResourceType::Endpoint.type_url()]);
    }

    /// A type the mesh does not serve is answered once, empty, so the
    /// proxy does not wait; its ACK and later requests are ignored, and
    /// the served types are not disturbed.
    #[test]
    fn a_type_the_mesh_does_not_serve_is_answered_once_with_nothing() {
        let runtime = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
        let mut stream = SotwStream::new(snapshot("l1"));
        let asked = DiscoveryRequest { type_url: runtime.into(), ..Default::default() };
        let answer = one(stream.on_request(&asked).unwrap());
        assert_eq!(answer.type_url, runtime);
        assert!(answer.resources.is_empty());
        assert_eq!(answer.version_info, Resources::default().version());
        let acked = DiscoveryRequest {
            version_info: answer.version_info.clone(),
            response_nonce: answer.nonce.clone(),
            ..asked.clone()
        };
        assert_eq!(stream.on_request(&acked).unwrap(), Step::default());
        assert_eq!(stream.on_request(&asked).unwrap(), Step::default());
        assert!(stream.status().is_empty(), "nothing recorded for it");
        // The shared nonce counter moved on.
        let listeners = one(stream.on_request(&request(ResourceType::Listener, "", "")).unwrap());
        assert_eq!(listeners.nonce, "2");
    }

    #[test]
    fn a_request_without_a_type_is_a_protocol_error() {
        let mut stream = SotwStream::new(snapshot("l1"));
        let untyped = DiscoveryRequest::default();
        assert_eq!(stream.on_request(&untyped), Err(ProtocolError::NoTypeUrl));
    }
}
