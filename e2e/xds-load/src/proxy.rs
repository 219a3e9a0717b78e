//! A simulated sidecar: one TCP+TLS connection and one ADS stream (state of
//! the world) per proxy, authenticated like the injected Envoy (its pod's
//! token as `authorization: Bearer`, Istio's node id), subscribing the way
//! Envoy does: clusters (wildcard), then the endpoints of its EDS clusters,
//! then listeners (wildcard), then the route configurations its
//! listeners' HTTP connection managers name, and (unless the fleet is told
//! not to) the SDS secrets its clusters' TLS transport sockets name
//! (`default` and `ROOTCA` in this mesh), as Envoy asks for them while it
//! warms those clusters. Every response is ACKed with its version and
//! nonce; nothing is ever NACKed (nothing is applied).
//!
//! What a proxy saw goes into its [`ProxyState`]: when its current stream
//! started, when it had ACKed all of its initial configuration and its
//! secrets, and,
//! per [`Probe`], when a response carried the change. When the stream
//! breaks (the controller restarts), the proxy reconnects with a short
//! back-off, like Envoy, until the fleet is stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Node, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
};
use envoy_types::pb::google::protobuf::Struct;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ads::{self, Connector, DeltaResponse, Names, Protocol, Response};
use crate::probe::{self, Probe};

/// How long a connection with its stream, and then its first response,
/// may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream with nothing to say for this long is taken as dead (no run
/// lasts that long).
const IDLE_STREAM: Duration = Duration::from_secs(3600);
/// Probes older than this are no longer matched (every wait is shorter).
pub const PROBE_WINDOW: Duration = Duration::from_secs(30);
/// Responses may be large: a cluster per service port and subset.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Who a simulated proxy is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: String,
    pub cluster: String,
    pub token: String,
    /// The node metadata its first request carries.
    pub metadata: Option<Struct>,
}

/// When a proxy first saw a probe's change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub observed: Option<Instant>,
    pub verified: Option<Instant>,
}

/// What one proxy saw, read by the scenario.
#[derive(Debug, Default)]
pub struct ProxyState {
    /// Streams opened and answered.
    pub sessions: u32,
    /// When the current connection attempt started.
    pub attempt_started: Option<Instant>,
    /// When the current stream had ACKed all of its initial configuration
    /// (its secrets included, when it subscribes to them).
    pub ready_at: Option<Instant>,
    /// When the current stream first ACKed a response carrying secrets.
    pub secret_acked_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Per probe, by its index.
    pub seen: Vec<Seen>,
}

/// Responses received, by type, over the whole fleet.
#[derive(Debug, Default)]
pub struct Counters {
    /// By the slots of [`Counters::TYPES`], then one for any other type.
    pub by_type: [AtomicU64; 6],
    /// Resources in the latest response, by type.
    pub resources: [AtomicU64; 6],
}

impl Counters {
    fn slot(type_url: &str) -> usize {
        match type_url {
            probe::CLUSTER => 0,
            probe::ENDPOINT => 1,
            probe::LISTENER => 2,
            probe::ROUTE => 3,
            probe::SECRET => 4,
            _ => 5,
        }
    }

    pub const TYPES: [&'static str; 5] =
        [probe::CLUSTER, probe::ENDPOINT, probe::LISTENER, probe::ROUTE, probe::SECRET];

    pub fn responses(&self, type_url: &str) -> u64 {
        self.by_type[Self::slot(type_url)].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.by_type.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn last_size(&self, type_url: &str) -> u64 {
        self.resources[Self::slot(type_url)].load(Ordering::Relaxed)
    }
}

/// All simulated proxies, and what they share.
pub struct Fleet {
    pub states: Vec<Mutex<ProxyState>>,
    pub probes: RwLock<Vec<Arc<Probe>>>,
    pub counters: Counters,
    /// Connection attempts in flight (a permit lasts until the first
    /// response), so a reconnect storm reaches the API server's
    /// TokenReview in batches.
    admission: Arc<Semaphore>,
    connector: Connector,
    pub stop: CancellationToken,
    pub first_error: Mutex<Option<String>>,
    /// Whether proxies subscribe to the secrets their clusters name.
    pub secrets: bool,
}

impl Fleet {
    pub fn new(connector: Connector, proxies: usize, batch: usize, secrets: bool) -> Arc<Self> {
        Arc::new(Self {
            states: (0..proxies).map(|_| Mutex::new(ProxyState::default())).collect(),
            probes: RwLock::new(Vec::new()),
            counters: Counters::default(),
            admission: Arc::new(Semaphore::new(batch.max(1))),
            connector,
            stop: CancellationToken::new(),
            first_error: Mutex::new(None),
            secrets,
        })
    }

    pub fn state(&self, i: usize) -> std::sync::MutexGuard<'_, ProxyState> {
        self.states[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a probe; returns its index.
    pub fn probe(&self, probe: Probe) -> usize {
        let mut probes = self.probes.write().unwrap_or_else(|p| p.into_inner());
        probes.push(Arc::new(probe));
        probes.len() - 1
    }

    /// Proxies whose current stream has ACKed its initial configuration
    /// after `since`.
    /// Streams that got a first response, over all proxies.
    pub fn sessions(&self) -> u64 {
        (0..self.states.len()).map(|i| u64::from(self.state(i).sessions)).sum()
    }

    pub fn ready_since(&self, since: Instant) -> usize {
        (0..self.states.len()).filter(|&i| self.state(i).ready_at.is_some_and(|t| t >= since)).count()
    }

    /// Proxies that saw probe `id` verified.
    pub fn verified(&self, id: usize) -> usize {
        (0..self.states.len())
            .filter(|&i| self.state(i).seen.get(id).is_some_and(|s| s.verified.is_some()))
            .count()
    }

    fn note_error(&self, i: usize, error: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("proxy {i}: {error}"));
        }
        drop(first);
        self.state(i).last_error = Some(error);
    }

    /// Matches a response against the probes of the last [`PROBE_WINDOW`].
    /// `values` gives the response's encoded resources, only if a probe
    /// may need them.
    fn match_probes(&self, i: usize, type_url: &str, values: impl FnOnce() -> Vec<Bytes>, at: Instant) {
        let probes = self.probes.read().unwrap_or_else(|p| p.into_inner());
        if probes.is_empty() {
            return;
        }
        let oldest = at.checked_sub(PROBE_WINDOW).unwrap_or(at);
        let from = probes.partition_point(|p| p.since < oldest);
        let candidates: Vec<(usize, Arc<Probe>)> =
            probes.iter().enumerate().skip(from).map(|(id, p)| (id, p.clone())).collect();
        let count = probes.len();
        drop(probes);
        let mut findings = Vec::new();
        {
            let state = self.state(i);
            for (id, p) in candidates {
                let seen = state.seen.get(id).copied().unwrap_or_default();
                if seen.verified.is_some() {
                    continue;
                }
                findings.push((id, seen, p));
            }
        }
        if findings.is_empty() {
            return;
        }
        let values = values();
        let mut updates = Vec::new();
        for (id, seen, p) in findings {
            let finding = p.matches(type_url, &values, at);
            if finding.observed && seen.observed.is_none() || finding.verified {
                updates.push((id, finding));
            }
        }
        if updates.is_empty() {
            return;
        }
        let mut state = self.state(i);
        if state.seen.len() < count {
            state.seen.resize(count, Seen::default());
        }
        for (id, finding) in updates {
            let seen = &mut state.seen[id];
            if finding.observed && seen.observed.is_none() {
                seen.observed = Some(at);
            }
            if finding.verified && seen.verified.is_none() {
                seen.verified = Some(at);
            }
        }
    }
}

/// Runs proxy `i` until the fleet stops: connect, serve, reconnect.
pub async fn run(fleet: Arc<Fleet>, i: usize, identity: Identity) {
    let mut failures: u32 = 0;
    loop {
        let permit = tokio::select! {
            _ = fleet.stop.cancelled() => return,
            permit = fleet.admission.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let started = Instant::now();
        {
            let mut state = fleet.state(i);
            state.attempt_started = Some(started);
            state.ready_at = None;
            state.secret_acked_at = None;
        }
        match session(&fleet, i, &identity, permit).await {
            Ok(()) => return,
            Err(error) => {
                fleet.note_error(i, error);
                failures = failures.saturating_add(1);
            }
        }
        // Envoy's back-off: short, jittered, growing, capped.
        let base = Duration::from_millis(250u64.saturating_mul(1 << failures.min(4)));
        let jitter = Duration::from_millis((i as u64 * 7919 + u64::from(failures) * 104_729) % 500);
        tokio::select! {
            _ = fleet.stop.cancelled() => return,
            _ = tokio::time::sleep(base.min(Duration::from_secs(4)) + jitter) => {}
        }
    }
}

const CDS: usize = 0;
const EDS: usize = 1;
const LDS: usize = 2;
const RDS: usize = 3;
const SDS: usize = 4;
const URLS: [&str; 5] = Counters::TYPES;

/// One stream's messages as both protocols read them, with the waits
/// bounded.
struct Link<'a> {
    fleet: &'a Fleet,
    i: usize,
    stream: ads::Stream,
    /// Held until the first response (see [`Fleet::admission`]).
    permit: Option<OwnedSemaphorePermit>,
}

impl<'a> Link<'a> {
    /// Opens the stream with its `first` request.
    async fn open(
        fleet: &'a Fleet,
        i: usize,
        identity: &Identity,
        permit: OwnedSemaphorePermit,
        first: Vec<Bytes>,
    ) -> Result<Self, String> {
        let open = fleet.connector.open(&identity.token, first);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("no stream within {CONNECT_TIMEOUT:?}")),
        };
        Ok(Self { fleet, i, stream, permit: Some(permit) })
    }

    /// The next message and when it came; `None` once the fleet stops.
    async fn next(&mut self) -> Result<Option<(Bytes, Instant)>, String> {
        // The first response is awaited for a bounded time; later ones
        // come whenever the configuration changes.
        let wait = if self.permit.is_some() { FIRST_RESPONSE_TIMEOUT } else { IDLE_STREAM };
        let next = tokio::select! {
            _ = self.fleet.stop.cancelled() => return Ok(None),
            next = tokio::time::timeout(wait, self.stream.message(MAX_MESSAGE)) => match next {
                Ok(next) => next?,
                Err(_) => return Err(format!("no response within {wait:?}")),
            },
        };
        let Some(message) = next else { return Err("the control plane ended the stream".into()) };
        if self.permit.take().is_some() {
            self.fleet.state(self.i).sessions += 1;
        }
        Ok(Some((message, Instant::now())))
    }

    /// Counts a response and matches it against the probes; `held` is
    /// how many resources of the type the proxy now holds.
    fn received(&self, type_url: &str, held: usize, values: impl FnOnce() -> Vec<Bytes>, at: Instant) {
        let slot = Counters::slot(type_url);
        self.fleet.counters.by_type[slot].fetch_add(1, Ordering::Relaxed);
        self.fleet.counters.resources[slot].store(held as u64, Ordering::Relaxed);
        self.fleet.match_probes(self.i, type_url, values, at);
    }

    async fn send(&self, request: Vec<Bytes>) -> Result<(), String> {
        self.stream.requests.send(request).await
    }

    /// Notes the time the stream ACKed all of its initial configuration
    /// (first time only).
    fn ready(&self) {
        let mut state = self.fleet.state(self.i);
        if state.ready_at.is_none() {
            state.ready_at = Some(Instant::now());
        }
    }

    fn secrets_acked(&self) {
        let mut state = self.fleet.state(self.i);
        if state.secret_acked_at.is_none() {
            state.secret_acked_at = Some(Instant::now());
        }
    }
}

/// One stream, until it breaks (`Err`) or the fleet stops (`Ok`).
async fn session(
    fleet: &Fleet,
    i: usize,
    identity: &Identity,
    permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    match fleet.connector.protocol {
        Protocol::Sotw => sotw_session(fleet, i, identity, permit).await,
        Protocol::Delta => delta_session(fleet, i, identity, permit).await,
    }
}

/// A stream's first request, as Envoy's: clusters, with the node (like
/// Istio's bootstrap, the node goes only in the first request).
pub fn first_request(protocol: Protocol, identity: &Identity) -> Vec<Bytes> {
    let node = Node {
        id: identity.node_id.clone(),
        cluster: identity.cluster.clone(),
        metadata: identity.metadata.clone(),
        ..Default::default()
    };
    match protocol {
        Protocol::Sotw => ads::sotw_request("", Some(&node), &Names::default(), URLS[CDS], ""),
        Protocol::Delta => ads::delta_request(Some(&node), URLS[CDS], &[], &[], ""),
    }
}

/// What a SotW stream knows of one resource type.
#[derive(Default)]
struct Subscription {
    requested: bool,
    names: Names,
    version: String,
    nonce: String,
    /// A response to the current subscription has been ACKed.
    acked: bool,
}

impl Subscription {
    /// The request for `type_url` as it stands.
    fn request(&self, type_url: &str) -> Vec<Bytes> {
        ads::sotw_request(&self.version, None, &self.names, type_url, &self.nonce)
    }

    fn complete(&self) -> bool {
        self.names.is_empty() || self.acked
    }
}

async fn sotw_session(
    fleet: &Fleet,
    i: usize,
    identity: &Identity,
    permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    let mut subs: [Subscription; 5] = Default::default();
    subs[CDS].requested = true;
    let first = first_request(Protocol::Sotw, identity);
    let mut link = Link::open(fleet, i, identity, permit, first).await?;
    while let Some((message, at)) = link.next().await? {
        let response =
            Response::decode(message).map_err(|e| format!("a response that does not decode: {e}"))?;
        link.received(&response.type_url, response.resources.len(), || response.values(), at);
        let Some(t) = URLS.iter().position(|u| *u == response.type_url) else {
            // A type this proxy did not ask for: ACK it all the same.
            let sub =
                Subscription { version: response.version_info, nonce: response.nonce, ..Default::default() };
            link.send(sub.request(&response.type_url)).await?;
            continue;
        };
        subs[t].version = response.version_info.clone();
        subs[t].nonce = response.nonce.clone();
        // A changed name set is asked for at once, before the ACK.
        let resubscribe = |subs: &mut [Subscription; 5], t: usize, names: Names| {
            (names != subs[t].names).then(|| {
                subs[t] = Subscription { requested: true, names, ..std::mem::take(&mut subs[t]) };
                subs[t].acked = false;
                subs[t].request(URLS[t])
            })
        };
        match t {
            CDS => {
                let names = cluster_names(&response, fleet.secrets);
                if let Some(request) = resubscribe(&mut subs, EDS, names.eds) {
                    link.send(request).await?;
                }
                // Envoy asks for a cluster's secrets while it warms the
                // cluster, before it ACKs the CDS response: all names of
                // the type in one request on an ADS stream.
                if let Some(request) = resubscribe(&mut subs, SDS, names.sds) {
                    link.send(request).await?;
                }
            }
            LDS => {
                if let Some(request) = resubscribe(&mut subs, RDS, rds_names(&response)) {
                    link.send(request).await?;
                }
            }
            _ => {}
        }
        subs[t].acked = true;
        link.send(subs[t].request(URLS[t])).await?;
        if t == SDS && !response.resources.is_empty() {
            link.secrets_acked();
        }
        // Listeners come once the clusters are warm: after the endpoints,
        // or at once when no cluster needs any.
        if !subs[LDS].requested && (t == EDS || t == CDS && subs[EDS].names.is_empty()) {
            subs[LDS].requested = true;
            link.send(subs[LDS].request(URLS[LDS])).await?;
        }
        if subs[CDS].acked
            && subs[LDS].acked
            && subs[EDS].complete()
            && subs[RDS].complete()
            && subs[SDS].complete()
        {
            link.ready();
        }
    }
    Ok(())
}

/// What a Delta stream knows of one resource type it subscribes to by
/// name.
#[derive(Default)]
struct Named {
    requested: bool,
    /// Sorted.
    names: Vec<Arc<str>>,
    acked: bool,
}

impl Named {
    /// Subscribes to `wanted` (sorted, deduplicated) instead: the request
    /// that says so, if anything changed.
    fn change_to(&mut self, type_url: &str, wanted: Vec<Arc<str>>) -> Option<Vec<Bytes>> {
        let added: Vec<&str> =
            wanted.iter().filter(|n| self.names.binary_search(n).is_err()).map(|n| &**n).collect();
        let gone: Vec<&str> =
            self.names.iter().filter(|n| wanted.binary_search(n).is_err()).map(|n| &**n).collect();
        if added.is_empty() && gone.is_empty() {
            return None;
        }
        let request = ads::delta_request(None, type_url, &added, &gone, "");
        if !added.is_empty() {
            // Answered with the new names' resources.
            self.requested = true;
            self.acked = false;
        }
        self.names = wanted;
        Some(request)
    }

    fn complete(&self) -> bool {
        self.names.is_empty() || self.acked
    }
}

/// Sorted and deduplicated.
fn sorted(mut names: Vec<Arc<str>>) -> Vec<Arc<str>> {
    names.sort_unstable();
    names.dedup();
    names
}

async fn delta_session(
    fleet: &Fleet,
    i: usize,
    identity: &Identity,
    permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    // Clusters and listeners are wildcard; the rest by name.
    let mut clusters: HashMap<Arc<str>, Arc<ClusterInfo>> = HashMap::new();
    let mut listeners: HashMap<String, Vec<Arc<str>>> = HashMap::new();
    let (mut cds_acked, mut lds_requested, mut lds_acked) = (false, false, false);
    let (mut eds, mut rds, mut sds) = (Named::default(), Named::default(), Named::default());
    let first = first_request(Protocol::Delta, identity);
    let mut link = Link::open(fleet, i, identity, permit, first).await?;
    while let Some((message, at)) = link.next().await? {
        let response =
            DeltaResponse::decode(message).map_err(|e| format!("a response that does not decode: {e}"))?;
        let t = URLS.iter().position(|u| *u == response.type_url);
        match t {
            Some(CDS) => {
                // Whether the names to subscribe to may have moved: a
                // changed cluster keeps them as a rule, and 1,000 clusters
                // are not walked again for it.
                let mut moved = false;
                for name in &response.removed_resources {
                    moved |= clusters.remove(name.as_str()).is_some();
                }
                let infos = cluster_infos(response.resources.iter().map(|r| &r.resource));
                for (resource, info) in response.resources.iter().zip(infos) {
                    if resource.name.as_str() != &*info.name {
                        return Err(format!("a cluster named {:?} sent as {:?}", info.name, resource.name));
                    }
                    let before = clusters.insert(info.name.clone(), info.clone());
                    moved |= before.is_none_or(|b| b.eds != info.eds || b.secrets != info.secrets);
                }
                if moved {
                    let wanted = sorted(clusters.values().filter_map(|c| c.eds.clone()).collect());
                    if let Some(request) = eds.change_to(URLS[EDS], wanted) {
                        link.send(request).await?;
                    }
                }
                if moved && fleet.secrets {
                    let wanted = sorted(clusters.values().flat_map(|c| c.secrets.iter().cloned()).collect());
                    if let Some(request) = sds.change_to(URLS[SDS], wanted) {
                        link.send(request).await?;
                    }
                }
            }
            Some(LDS) => {
                for name in &response.removed_resources {
                    listeners.remove(name);
                }
                for resource in &response.resources {
                    let names = Listener::decode(ads::any_value(&resource.resource))
                        .map(|l| probe::rds_names(&l).iter().map(|n| Arc::from(n.as_str())).collect())
                        .unwrap_or_default();
                    listeners.insert(resource.name.clone(), names);
                }
                let wanted = sorted(listeners.values().flatten().cloned().collect());
                if let Some(request) = rds.change_to(URLS[RDS], wanted) {
                    link.send(request).await?;
                }
            }
            _ => {}
        }
        let held = match t {
            Some(CDS) => clusters.len(),
            Some(EDS) => eds.names.len(),
            Some(LDS) => listeners.len(),
            Some(RDS) => rds.names.len(),
            Some(SDS) => sds.names.len(),
            _ => response.resources.len(),
        };
        link.received(&response.type_url, held, || response.values(), at);
        link.send(ads::delta_request(None, &response.type_url, &[], &[], &response.nonce)).await?;
        match t {
            Some(CDS) => cds_acked = true,
            Some(EDS) => eds.acked = true,
            Some(LDS) => lds_acked = true,
            Some(RDS) => rds.acked = true,
            Some(SDS) => {
                sds.acked = true;
                if !response.resources.is_empty() {
                    link.secrets_acked();
                }
            }
            _ => {}
        }
        if !lds_requested && (t == Some(EDS) || t == Some(CDS) && eds.names.is_empty()) {
            lds_requested = true;
            link.send(ads::delta_request(None, URLS[LDS], &[], &[], "")).await?;
        }
        if cds_acked && lds_acked && eds.complete() && rds.complete() && sds.complete() {
            link.ready();
        }
    }
    Ok(())
}

/// What a CDS response makes Envoy subscribe to next.
#[derive(Debug, Default, PartialEq)]
struct ClusterNames {
    /// The EDS names of its EDS clusters.
    eds: Names,
    /// The SDS secrets its clusters' TLS transport sockets name (only
    /// when `secrets` was asked for).
    sds: Names,
}

/// What one cluster makes Envoy subscribe to.
#[derive(Debug, Default)]
struct ClusterInfo {
    name: Arc<str>,
    eds: Option<Arc<str>>,
    secrets: Vec<Arc<str>>,
}

impl ClusterInfo {
    fn of(cluster: Cluster) -> Self {
        let mut secrets = Vec::new();
        let sockets = cluster
            .transport_socket
            .iter()
            .chain(cluster.transport_socket_matches.iter().flat_map(|m| &m.transport_socket));
        for socket in sockets {
            secret_names(socket, &mut secrets);
        }
        let eds = (cluster.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)))
        .then(|| match &cluster.eds_cluster_config {
            Some(eds) if !eds.service_name.is_empty() => Arc::from(eds.service_name.as_str()),
            _ => Arc::from(cluster.name.as_str()),
        });
        Self { name: Arc::from(cluster.name), eds, secrets: secrets.into_iter().map(Arc::from).collect() }
    }
}

/// What each of `clusters` (encoded `Any`s) makes Envoy subscribe to.
/// Every proxy of a scope gets the very same clusters, so each distinct
/// one is decoded once, not once per proxy.
fn cluster_infos<'a>(clusters: impl Iterator<Item = &'a Bytes>) -> Vec<Arc<ClusterInfo>> {
    static CACHE: OnceLock<Mutex<HashMap<Bytes, Arc<ClusterInfo>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    // A guard: a run has a few thousand distinct clusters.
    if cache.len() > 200_000 {
        cache.clear();
    }
    clusters
        .map(|any| match cache.get(any) {
            Some(info) => info.clone(),
            None => {
                let info = Arc::new(match Cluster::decode(ads::any_value(any)) {
                    Ok(cluster) => ClusterInfo::of(cluster),
                    Err(_) => ClusterInfo::default(),
                });
                // A copy: the key must not hold on to the whole response.
                cache.insert(Bytes::copy_from_slice(any), info.clone());
                info
            }
        })
        .collect()
}

fn cluster_names(response: &Response, secrets: bool) -> ClusterNames {
    let infos = cluster_infos(response.resources.iter());
    let mut eds: Vec<&str> = infos.iter().filter_map(|i| i.eds.as_deref()).collect();
    let mut sds: Vec<&str> = if secrets {
        infos.iter().flat_map(|i| i.secrets.iter().map(|s| &**s)).collect()
    } else {
        Vec::new()
    };
    for list in [&mut eds, &mut sds] {
        list.sort_unstable();
        list.dedup();
    }
    ClusterNames { eds: Names::intern(&eds), sds: Names::intern(&sds) }
}

/// The SDS secret names an upstream TLS transport socket refers to: its
/// certificates and its validation context (alone or combined with inline
/// checks). Other sockets (plaintext) name none.
fn secret_names(socket: &TransportSocket, out: &mut Vec<String>) {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { return };
    if !any.type_url.ends_with(".UpstreamTlsContext") {
        return;
    }
    let Some(common) =
        UpstreamTlsContext::decode(any.value.as_slice()).ok().and_then(|t| t.common_tls_context)
    else {
        return;
    };
    out.extend(common.tls_certificate_sds_secret_configs.into_iter().map(|s| s.name));
    match common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => out.push(s.name),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            out.extend(c.validation_context_sds_secret_config.map(|s| s.name))
        }
        _ => {}
    }
    out.retain(|n| !n.is_empty());
}

/// The RDS names of an LDS response's listeners.
fn rds_names(response: &Response) -> Names {
    let mut names: Vec<String> = response
        .values()
        .into_iter()
        .filter_map(|value| Listener::decode(value).ok())
        .flat_map(|l| probe::rds_names(&l))
        .collect();
    names.sort_unstable();
    names.dedup();
    Names::intern(&names)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, SdsSecretConfig};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn sds(name: &str) -> SdsSecretConfig {
        SdsSecretConfig { name: name.into(), ..Default::default() }
    }

    /// The client side of the mesh's auto mTLS: a TLS socket for endpoints
    /// with a sidecar, plaintext for the rest.
    fn auto_mtls(name: &str) -> Cluster {
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("default")],
                validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        validation_context_sds_secret_config: Some(sds("ROOTCA")),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let socket = |type_url: &str, value: Vec<u8>| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                type_url: type_url.into(),
                value,
            })),
        };
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            transport_socket_matches: vec![
                TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    transport_socket: Some(socket(
                        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        tls.encode_to_vec(),
                    )),
                    ..Default::default()
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    transport_socket: Some(socket(
                        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                        Vec::new(),
                    )),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn response(clusters: &[Cluster]) -> Response {
        let full = DiscoveryResponse {
            type_url: probe::CLUSTER.into(),
            resources: clusters
                .iter()
                .map(|c| Any { type_url: probe::CLUSTER.into(), value: c.encode_to_vec() })
                .collect(),
            ..Default::default()
        };
        Response::decode(Bytes::from(full.encode_to_vec())).expect("decodes")
    }

    #[test]
    fn the_secrets_named_by_tls_transport_sockets_are_subscribed_once_each() {
        let plain = Cluster { name: "PassthroughCluster".into(), ..Default::default() };
        let response = response(&[auto_mtls("outbound|9080||a"), auto_mtls("outbound|9080||b"), plain]);
        let names = cluster_names(&response, true);
        assert_eq!(names.eds, Names::intern(&["outbound|9080||a", "outbound|9080||b"]));
        assert_eq!(names.sds, Names::intern(&["ROOTCA", "default"]));
        let without = cluster_names(&response, false);
        assert_eq!(without.eds, names.eds);
        assert!(without.sds.is_empty(), "no secrets asked for when told not to");
    }

    #[test]
    fn plaintext_clusters_name_no_secret() {
        let plain = Cluster { name: "BlackHoleCluster".into(), ..Default::default() };
        assert_eq!(cluster_names(&response(&[plain]), true), ClusterNames::default());
    }
}
