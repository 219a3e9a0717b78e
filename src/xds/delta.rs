//! One ADS stream in the incremental (Delta) protocol, as a state machine
//! with no I/O, the sibling of [`super::stream`] over the same
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
//!   and asks for nothing new (the name is subscribed already).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;

use super::order::{self, Ledger};
use super::snapshot::{Resource, Resources, Snapshot};
use super::stream::{Event, Nack, ProtocolError, Step, TypeStatus};
use super::types;
use super::wire::DeltaResponse;

const WILDCARD: &str = "*";

/// The response of a type waiting for its ACK.
#[derive(Clone, Debug)]
struct InFlight {
    nonce: String,
    version: String,
    updated: Vec<Arc<Resource>>,
}

#[derive(Clone, Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Subscribed names told absent (in `removed_resources`) and not
    /// present since.
    absent: BTreeSet<String>,
    in_flight: Option<InFlight>,
    /// Something was held back for make-before-break.
    held: bool,
    sent_version: Option<String>,
    acked_version: Option<String>,
    nack: Option<Nack>,
}

/// The state of one Delta stream.
#[derive(Debug)]
pub struct DeltaStream {
    snapshot: Arc<Snapshot>,
    nonce: u64,
    types: BTreeMap<String, TypeState>,
    ledgers: BTreeMap<String, Ledger>,
}

impl DeltaStream {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self { snapshot, nonce: 0, types: BTreeMap::new(), ledgers: BTreeMap::new() }
    }

    /// Handles one request from the proxy.
    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
    ) -> Result<Step<DeltaResponse>, ProtocolError> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            return Err(ProtocolError::NoTypeUrl);
        }
        let mut step = Step::default();
        let first = !self.types.contains_key(type_url);
        let state = self.types.entry(type_url.to_string()).or_default();
        let ledger = self.ledgers.entry(type_url.to_string()).or_default();
        let changes_subscription =
            !request.resource_names_subscribe.is_empty() || !request.resource_names_unsubscribe.is_empty();

        let mut answered = false;
        if !request.response_nonce.is_empty() {
            match state.in_flight.take() {
                Some(sent) if sent.nonce == request.response_nonce => {
                    answered = true;
                    acknowledge(type_url, state, ledger, sent, request, &mut step);
                }
                other => {
                    state.in_flight = other;
                    step.events.push(Event::StaleNonce {
                        type_url: type_url.to_string(),
                        nonce: request.response_nonce.clone(),
                    });
                    if !changes_subscription {
                        return Ok(step);
                    }
                }
            }
        }

        if first {
            state.wildcard = types::is_wildcard_only(type_url);
            // What the proxy kept from an earlier stream: taken as applied.
            let mut held: Vec<Arc<Resource>> = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| match self.snapshot.get(type_url).and_then(|r| r.get(name)) {
                    Some(current) if current.version == *version => current.clone(),
                    _ => Arc::new(Resource::with_version(name.clone(), version.clone(), Any::default())),
                })
                .collect();
            held.sort_by(|a, b| a.name.cmp(&b.name));
            ledger.sent = Resources::from_sorted(held);
            ledger.acked = ledger.sent.clone();
        }
        for name in &request.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                state.absent.remove(name);
            }
        }
        let mut dropped = BTreeSet::new();
        for name in &request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = types::is_wildcard_only(type_url);
            } else {
                state.names.remove(name);
                state.absent.remove(name);
                if !state.wildcard {
                    dropped.insert(name.as_str());
                }
            }
        }
        if !dropped.is_empty() {
            // The proxy forgets what it unsubscribed from.
            ledger.sent = without(&ledger.sent, &dropped);
            ledger.acked = without(&ledger.acked, &dropped);
        }

        let type_url = type_url.to_string();
        step.responses.extend(self.respond(&type_url, first));
        if answered || type_url == types::CLUSTER {
            // An answer may release what waited on it, in other types; new
            // or changed clusters want their endpoints again.
            step.responses.extend(self.respond_held());
        }
        Ok(step)
    }

    /// Takes a new snapshot and sends every type without a response in
    /// flight what changed, secrets and clusters first.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step<DeltaResponse> {
        self.snapshot = snapshot;
        let mut idle: Vec<String> =
            self.types.iter().filter(|(_, s)| s.in_flight.is_none()).map(|(t, _)| t.clone()).collect();
        idle.sort_by_key(|type_url| types::push_rank(type_url));
        let mut step = Step::default();
        for type_url in idle {
            step.responses.extend(self.respond(&type_url, false));
        }
        step
    }

    /// The snapshot the stream works from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The version (of the whole set the proxy holds) it acknowledged last.
    pub fn acked(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url)?.acked_version.as_deref()
    }

    /// The proxy's latest refusal of a type, while it is its latest answer.
    pub fn nacked(&self, type_url: &str) -> Option<&Nack> {
        self.types.get(type_url)?.nack.as_ref()
    }

    /// The resources of a type the proxy holds, with their versions.
    pub fn held(&self, type_url: &str) -> BTreeMap<String, String> {
        self.ledgers
            .get(type_url)
            .map(|l| l.sent.iter().map(|r| (r.name.clone(), r.version.clone())).collect())
            .unwrap_or_default()
    }

    /// Where each type the proxy asked for stands.
    pub fn status(&self) -> BTreeMap<String, TypeStatus> {
        self.types
            .iter()
            .map(|(type_url, state)| {
                let status = TypeStatus {
                    sent: state.sent_version.clone(),
                    acked: state.acked_version.clone(),
                    nack: state.nack.clone(),
                    resources: self.ledgers.get(type_url).map_or(0, |l| l.sent.len()),
                };
                (type_url.clone(), status)
            })
            .collect()
    }

    /// What the proxy holds (or is being sent), by type.
    pub fn holding(&self) -> BTreeMap<String, Resources> {
        // Of the types asked for: a cluster response opens the endpoints'
        // ledger before the proxy asks for them.
        self.ledgers
            .iter()
            .filter(|(t, _)| self.types.contains_key(*t))
            .map(|(t, l)| (t.clone(), l.sent.clone()))
            .collect()
    }

    /// Plans again the types that held something back, or have endpoints
    /// to send again for clusters sent anew.
    fn respond_held(&mut self) -> Vec<DeltaResponse> {
        let mut held: Vec<String> = self
            .types
            .iter()
            .filter(|(t, s)| s.in_flight.is_none() && (s.held || order::rewarm_pending(t, &self.ledgers)))
            .map(|(t, _)| t.clone())
            .collect();
        held.sort_by_key(|type_url| types::push_rank(type_url));
        held.iter().filter_map(|type_url| self.respond(type_url, false)).collect()
    }

    /// Sends a type what changed, if anything did (always, with `force`).
    fn respond(&mut self, type_url: &str, force: bool) -> Option<DeltaResponse> {
        let state = self.types.get(type_url)?;
        if state.in_flight.is_some() {
            return None;
        }
        let all = self.snapshot.resources(type_url);
        let desired = if state.wildcard
            || (state.names.len() == all.len()
                && state.names.iter().zip(all.iter()).all(|(n, r)| *n == r.name))
        {
            // Every resource of the type: the snapshot's own, shared.
            all.clone()
        } else {
            Resources::from_sorted(state.names.iter().filter_map(|n| all.get(n)).cloned().collect())
        };
        let plan = order::plan(type_url, &desired, &self.ledgers, &self.snapshot, true);
        order::planned(type_url, &mut self.ledgers);
        let state = self.types.get_mut(type_url)?;
        state.held = plan.held;
        // A subscribed name the snapshot lacks: only if some name was not found.
        let absent: Vec<String> = if state.wildcard || desired.len() == state.names.len() {
            Vec::new()
        } else {
            state
                .names
                .iter()
                .filter(|n| !all.contains(n) && !plan.next.contains(n) && !state.absent.contains(*n))
                .cloned()
                .collect()
        };
        let ledger = self.ledgers.entry(type_url.to_string()).or_default();
        if plan.updated.is_empty() && plan.removed.is_empty() && absent.is_empty() && !force {
            // The same content; keep the snapshot's own (shared) copy.
            ledger.sent = plan.next;
            return None;
        }
        for name in plan.removed.iter().chain(&absent) {
            if state.names.contains(name) {
                state.absent.insert(name.clone());
            }
        }
        for updated in &plan.updated {
            state.absent.remove(&updated.name);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = plan.next.version();
        state.sent_version = Some(version.clone());
        state.in_flight =
            Some(InFlight { nonce: nonce.clone(), version: version.clone(), updated: plan.updated.clone() });
        ledger.sent = plan.next;
        order::sent(type_url, &plan.updated, &mut self.ledgers);
        let mut removed_resources = plan.removed;
        removed_resources.extend(absent);
        Some(DeltaResponse {
            system_version_info: version,
            resources: plan.updated,
            type_url: type_url.to_string(),
            removed_resources,
            nonce,
        })
    }
}

/// Records the proxy's answer to the response in flight.
fn acknowledge(
    type_url: &str,
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
                type_url: type_url.to_string(),
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
            step.events.push(Event::Ack { type_url: type_url.to_string(), version: sent.version.clone() });
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
                .with_resources(types::CLUSTER, set(clusters))
                .with_resources(types::ROUTE, set(routes)),
        )
    }

    fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
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
        let first = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
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
        assert_eq!(stream.held(types::CLUSTER).len(), 2);
    }

    #[test]
    fn a_reconnect_gets_only_what_differs() {
        let current = snapshot(&[("a", "1"), ("b", "2")], &[]);
        let version = |name: &str| current.resources(types::CLUSTER).get(name).unwrap().version.clone();
        let mut stream = DeltaStream::new(current.clone());
        let request = DeltaDiscoveryRequest {
            initial_resource_versions: [
                ("a".to_string(), version("a")),
                ("b".to_string(), "old".to_string()),
                ("gone".to_string(), "x".to_string()),
            ]
            .into(),
            ..subscribe(types::CLUSTER, &[])
        };
        let response = one(stream.on_request(&request).unwrap());
        assert_eq!(names(&response), ["b"]);
        assert_eq!(response.removed_resources, ["gone"]);

        // Nothing differs: still answered, empty, so the proxy knows.
        let mut stream = DeltaStream::new(current.clone());
        let request = DeltaDiscoveryRequest {
            initial_resource_versions: [("a".to_string(), version("a")), ("b".to_string(), version("b"))]
                .into(),
            ..subscribe(types::CLUSTER, &[])
        };
        let response = one(stream.on_request(&request).unwrap());
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
    }

    #[test]
    fn named_subscriptions_come_and_go() {
        let mut stream = DeltaStream::new(snapshot(&[], &[("r1", "1"), ("r2", "1")]));
        let first = one(stream.on_request(&subscribe(types::ROUTE, &["r1", "missing"])).unwrap());
        assert_eq!(names(&first), ["r1"]);
        assert_eq!(first.removed_resources, ["missing"], "told it does not exist");
        stream.on_request(&ack(&first)).unwrap();

        // Subscribing to more with the ACK of nothing in flight: sent at once.
        let more = one(stream.on_request(&subscribe(types::ROUTE, &["r2"])).unwrap());
        assert_eq!(names(&more), ["r2"]);
        stream.on_request(&ack(&more)).unwrap();

        // Unsubscribed: forgotten, and a change to it is not sent.
        let unsubscribe = DeltaDiscoveryRequest {
            type_url: types::ROUTE.into(),
            resource_names_unsubscribe: vec!["r1".into()],
            ..Default::default()
        };
        assert!(stream.on_request(&unsubscribe).unwrap().responses.is_empty());
        assert_eq!(stream.on_snapshot(snapshot(&[], &[("r1", "2"), ("r2", "1")])), Step::default());
        // "missing" appears: sent.
        let appeared = one(stream.on_snapshot(snapshot(&[], &[("r1", "2"), ("r2", "1"), ("missing", "1")])));
        assert_eq!(names(&appeared), ["missing"]);
    }

    #[test]
    fn one_response_in_flight_per_type_and_stale_nonces_are_ignored() {
        let mut stream = DeltaStream::new(snapshot(&[("a", "1")], &[]));
        let first = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
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
            snapshot(&[("a", "3")], &[]).resources(types::CLUSTER).get("a").unwrap().version.clone();
        assert_eq!(latest.resources[0].version, expected);
        assert_eq!(stream.acked(types::CLUSTER), Some(first.system_version_info.as_str()));
    }

    #[test]
    fn a_nacked_version_is_not_sent_again() {
        let mut stream = DeltaStream::new(snapshot(&[("a", "1"), ("b", "1")], &[]));
        let first = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
        stream.on_request(&ack(&first)).unwrap();
        let bad = one(stream.on_snapshot(snapshot(&[("a", "bad"), ("b", "1")], &[])));
        let step = stream.on_request(&nack(&bad, "cluster a: bad lb policy")).unwrap();
        assert!(step.responses.is_empty(), "the refused version is not re-sent");
        assert_eq!(
            step.events,
            [Event::Nack {
                type_url: types::CLUSTER.into(),
                version: bad.system_version_info.clone(),
                resources: vec!["a".into()],
                error: "cluster a: bad lb policy".into(),
            }]
        );
        assert_eq!(stream.nacked(types::CLUSTER).map(|n| n.error.as_str()), Some("cluster a: bad lb policy"));
        // The proxy keeps the old a.
        let old = snapshot(&[("a", "1")], &[]).resources(types::CLUSTER).get("a").unwrap().version.clone();
        assert_eq!(stream.held(types::CLUSTER).get("a"), Some(&old));
        // Another change elsewhere does not bring the bad a back.
        let other = one(stream.on_snapshot(snapshot(&[("a", "bad"), ("b", "2")], &[])));
        assert_eq!(names(&other), ["b"]);
        stream.on_request(&ack(&other)).unwrap();
        assert_eq!(stream.nacked(types::CLUSTER), None);
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
                .with_resources(types::CLUSTER, set(&[("reviews|v1", "c1")]))
                .with_resources(types::ENDPOINT, set(&[("reviews|v1", "e1")]))
                .with_resources(types::ROUTE, set(&[("9080", "to v1")]))
                .with_dependencies(types::ROUTE, "9080", ["reviews|v1"]),
        );
        let mut stream = DeltaStream::new(v1);
        let c = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let e = one(stream.on_request(&subscribe(types::ENDPOINT, &["reviews|v1"])).unwrap());
        stream.on_request(&ack(&e)).unwrap();
        let r = one(stream.on_request(&subscribe(types::ROUTE, &["9080"])).unwrap());
        stream.on_request(&ack(&r)).unwrap();

        // A subset v2 and a route to it, in one snapshot.
        let v2 = Arc::new(
            Snapshot::new()
                .with_resources(types::CLUSTER, set(&[("reviews|v1", "c1"), ("reviews|v2", "c2")]))
                .with_resources(types::ENDPOINT, set(&[("reviews|v1", "e1"), ("reviews|v2", "e2")]))
                .with_resources(types::ROUTE, set(&[("9080", "to v2")]))
                .with_dependencies(types::ROUTE, "9080", ["reviews|v2"]),
        );
        let cds = one(stream.on_snapshot(v2));
        assert_eq!(cds.type_url, types::CLUSTER, "the cluster first, the route held back");
        assert_eq!(names(&cds), ["reviews|v2"]);
        // The cluster's ACK: the proxy now asks for its endpoints; the route still waits.
        assert!(stream.on_request(&ack(&cds)).unwrap().responses.is_empty());
        let eds = one(stream.on_request(&subscribe(types::ENDPOINT, &["reviews|v2"])).unwrap());
        assert_eq!(names(&eds), ["reviews|v2"]);
        // The endpoints' ACK releases the route.
        let rds = one(stream.on_request(&ack(&eds)).unwrap());
        assert_eq!(rds.type_url, types::ROUTE);
        assert_eq!(names(&rds), ["9080"]);
    }

    /// Clusters `a` and `b` (`a` with `a_body`) and their endpoints.
    fn two_clusters(a_body: &str) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::new()
                .with_resources(types::CLUSTER, set(&[("a", a_body), ("b", "cb")]))
                .with_resources(types::ENDPOINT, set(&[("a", "ea"), ("b", "eb")])),
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
        let c = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let e = one(stream.on_request(&subscribe(types::ENDPOINT, &["a", "b"])).unwrap());
        stream.on_request(&ack(&e)).unwrap();

        let step = stream.on_snapshot(two_clusters("ca2"));
        assert_eq!(types_of(&step), [types::CLUSTER, types::ENDPOINT]);
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
        assert_eq!((again.type_url.as_str(), names(&again)), (types::ENDPOINT, vec!["a"]));
    }

    /// On a reconnect, a cluster that changed while the proxy was away is
    /// warmed again too: its endpoints go though the proxy holds them.
    #[test]
    fn a_reconnect_with_a_changed_cluster_gets_its_endpoints() {
        let old = two_clusters("ca");
        let current = two_clusters("ca2");
        let held = |snapshot: &Snapshot, type_url: &str| {
            snapshot.resources(type_url).iter().map(|r| (r.name.clone(), r.version.clone())).collect()
        };
        let mut stream = DeltaStream::new(current);
        let clusters = DeltaDiscoveryRequest {
            initial_resource_versions: held(&old, types::CLUSTER),
            ..subscribe(types::CLUSTER, &[])
        };
        let cds = one(stream.on_request(&clusters).unwrap());
        assert_eq!(names(&cds), ["a"]);
        let endpoints = DeltaDiscoveryRequest {
            initial_resource_versions: held(&old, types::ENDPOINT),
            ..subscribe(types::ENDPOINT, &["a", "b"])
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
                .with_resources(types::CLUSTER, set(&[("v1", "c1"), ("v2", "c2")]))
                .with_resources(types::ROUTE, set(&[("9080", "to v2")]))
                .with_dependencies(types::ROUTE, "9080", ["v2"]),
        );
        let mut stream = DeltaStream::new(both);
        let c = one(stream.on_request(&subscribe(types::CLUSTER, &[])).unwrap());
        stream.on_request(&ack(&c)).unwrap();
        let r = one(stream.on_request(&subscribe(types::ROUTE, &["9080"])).unwrap());
        stream.on_request(&ack(&r)).unwrap();

        let only_v1 = Arc::new(
            Snapshot::new()
                .with_resources(types::CLUSTER, set(&[("v1", "c1")]))
                .with_resources(types::ROUTE, set(&[("9080", "to v1")]))
                .with_dependencies(types::ROUTE, "9080", ["v1"]),
        );
        let step = stream.on_snapshot(only_v1);
        let order: Vec<_> = step.responses.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [types::ROUTE], "v2 stays while the proxy's route names it");
        let rds = step.responses.into_iter().next().unwrap().to_proto();
        let cds = one(stream.on_request(&ack(&rds)).unwrap());
        assert_eq!(cds.type_url, types::CLUSTER);
        assert_eq!(cds.removed_resources, ["v2"]);
    }
}
