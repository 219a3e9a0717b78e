//! A simulated sidecar: one TCP+TLS connection and one ADS stream (state of
//! the world) per proxy, authenticated like the injected Envoy (its pod's
//! token as `authorization: Bearer`, Istio's node id), subscribing the way
//! Envoy does: clusters (wildcard), then the endpoints of its EDS clusters,
//! then listeners (wildcard), then the route configurations its
//! listeners' HTTP connection managers name. Every response is ACKed with
//! its version and nonce; nothing is ever NACKed (nothing is applied).
//!
//! What a proxy saw goes into its [`ProxyState`]: when its current stream
//! started and when it had ACKed all of its initial configuration, and,
//! per [`Probe`], when a response carried the change. When the stream
//! breaks (the controller restarts), the proxy reconnects with a short
//! back-off, like Envoy, until the fleet is stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::probe::{self, Probe};

/// How long a connection and its first response may take.
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
    /// When the current stream had ACKed all of its initial configuration.
    pub ready_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Per probe, by its index.
    pub seen: Vec<Seen>,
}

/// Responses received, by type, over the whole fleet.
#[derive(Debug, Default)]
pub struct Counters {
    pub by_type: [AtomicU64; 5],
    /// Resources in the latest response, by type.
    pub resources: [AtomicU64; 5],
}

impl Counters {
    fn slot(type_url: &str) -> usize {
        match type_url {
            probe::CLUSTER => 0,
            probe::ENDPOINT => 1,
            probe::LISTENER => 2,
            probe::ROUTE => 3,
            _ => 4,
        }
    }

    pub const TYPES: [&'static str; 4] = [probe::CLUSTER, probe::ENDPOINT, probe::LISTENER, probe::ROUTE];

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
    endpoint: Endpoint,
    pub stop: CancellationToken,
    pub first_error: Mutex<Option<String>>,
}

impl Fleet {
    pub fn new(endpoint: Endpoint, proxies: usize, batch: usize) -> Arc<Self> {
        Arc::new(Self {
            states: (0..proxies).map(|_| Mutex::new(ProxyState::default())).collect(),
            probes: RwLock::new(Vec::new()),
            counters: Counters::default(),
            admission: Arc::new(Semaphore::new(batch.max(1))),
            endpoint,
            stop: CancellationToken::new(),
            first_error: Mutex::new(None),
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
    fn match_probes(&self, i: usize, response: &DiscoveryResponse, at: Instant) {
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
        let mut updates = Vec::new();
        for (id, seen, p) in findings {
            let finding = p.matches(&response.type_url, &response.resources, at);
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

/// What a stream knows of one resource type.
#[derive(Default)]
struct Subscription {
    requested: bool,
    names: Vec<String>,
    version: String,
    nonce: String,
    /// A response to the current subscription has been ACKed.
    acked: bool,
}

/// The requests a stream sends, in order.
struct Requests {
    tx: mpsc::Sender<DiscoveryRequest>,
    node: Option<Node>,
}

impl Requests {
    async fn send(&mut self, type_url: &str, sub: &Subscription) -> Result<(), String> {
        let request = DiscoveryRequest {
            version_info: sub.version.clone(),
            // Like Istio's bootstrap: the node goes only in the first request.
            node: self.node.take(),
            resource_names: sub.names.clone(),
            type_url: type_url.to_string(),
            response_nonce: sub.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(request).await.map_err(|_| "the request stream closed".to_string())
    }
}

/// One stream, until it breaks (`Err`) or the fleet stops (`Ok`).
async fn session(
    fleet: &Fleet,
    i: usize,
    identity: &Identity,
    permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    let mut permit = Some(permit);
    let channel: Channel = match tokio::time::timeout(CONNECT_TIMEOUT, fleet.endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return Err(format!("connect: {}", chain(&e))),
        Err(_) => return Err(format!("connect: no TLS connection within {CONNECT_TIMEOUT:?}")),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(16);
    let node = Node { id: identity.node_id.clone(), cluster: identity.cluster.clone(), ..Default::default() };
    let mut requests = Requests { tx, node: Some(node) };
    let mut subs: [Subscription; 4] = Default::default();
    const CDS: usize = 0;
    const EDS: usize = 1;
    const LDS: usize = 2;
    const RDS: usize = 3;
    let urls = Counters::TYPES;

    subs[CDS].requested = true;
    requests.send(urls[CDS], &subs[CDS]).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", identity.token)
        .parse()
        .map_err(|_| "the token is not a valid metadata value".to_string())?;
    request.metadata_mut().insert("authorization", bearer);
    let mut responses =
        match tokio::time::timeout(FIRST_RESPONSE_TIMEOUT, client.stream_aggregated_resources(request)).await
        {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(format!("gRPC {:?}: {}", status.code(), status.message())),
            Err(_) => return Err(format!("no answer to the stream within {FIRST_RESPONSE_TIMEOUT:?}")),
        };
    loop {
        // The first response is awaited for a bounded time; later ones
        // come whenever the configuration changes.
        let wait = if permit.is_some() { FIRST_RESPONSE_TIMEOUT } else { IDLE_STREAM };
        let next = tokio::select! {
            _ = fleet.stop.cancelled() => return Ok(()),
            next = tokio::time::timeout(wait, responses.message()) => match next {
                Ok(next) => next,
                Err(_) => return Err(format!("no response within {wait:?}")),
            },
        };
        let response = match next {
            Ok(Some(response)) => response,
            Ok(None) => return Err("the control plane ended the stream".into()),
            Err(status) => return Err(format!("gRPC {:?}: {}", status.code(), status.message())),
        };
        let at = Instant::now();
        if permit.take().is_some() {
            fleet.state(i).sessions += 1;
        }
        let slot = Counters::slot(&response.type_url);
        fleet.counters.by_type[slot].fetch_add(1, Ordering::Relaxed);
        fleet.counters.resources[slot].store(response.resources.len() as u64, Ordering::Relaxed);
        fleet.match_probes(i, &response, at);

        let Some(t) = urls.iter().position(|u| *u == response.type_url) else {
            // A type this proxy did not ask for: ACK it all the same.
            let sub =
                Subscription { version: response.version_info, nonce: response.nonce, ..Default::default() };
            requests.send(&response.type_url, &sub).await?;
            continue;
        };
        subs[t].version = response.version_info.clone();
        subs[t].nonce = response.nonce.clone();
        match t {
            CDS => {
                let eds = eds_names(&response);
                if eds != subs[EDS].names {
                    subs[EDS].names = eds;
                    subs[EDS].requested = true;
                    subs[EDS].acked = false;
                    requests.send(urls[EDS], &subs[EDS]).await?;
                }
                subs[CDS].acked = true;
                requests.send(urls[CDS], &subs[CDS]).await?;
                if !subs[LDS].requested && subs[EDS].names.is_empty() {
                    subs[LDS].requested = true;
                    requests.send(urls[LDS], &subs[LDS]).await?;
                }
            }
            EDS => {
                subs[EDS].acked = true;
                requests.send(urls[EDS], &subs[EDS]).await?;
                if !subs[LDS].requested {
                    subs[LDS].requested = true;
                    requests.send(urls[LDS], &subs[LDS]).await?;
                }
            }
            LDS => {
                let rds = rds_names(&response);
                if rds != subs[RDS].names {
                    subs[RDS].names = rds;
                    subs[RDS].requested = true;
                    subs[RDS].acked = false;
                    requests.send(urls[RDS], &subs[RDS]).await?;
                }
                subs[LDS].acked = true;
                requests.send(urls[LDS], &subs[LDS]).await?;
            }
            _ => {
                subs[t].acked = true;
                requests.send(urls[t], &subs[t]).await?;
            }
        }
        let complete = |s: &Subscription| s.names.is_empty() || s.acked;
        if subs[CDS].acked && subs[LDS].acked && complete(&subs[EDS]) && complete(&subs[RDS]) {
            let mut state = fleet.state(i);
            if state.ready_at.is_none() {
                state.ready_at = Some(Instant::now());
            }
        }
    }
}

/// The EDS names of a CDS response's EDS clusters, sorted.
fn eds_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .filter(|c| {
            c.cluster_discovery_type
                == Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32))
        })
        .map(|c| match c.eds_cluster_config {
            Some(eds) if !eds.service_name.is_empty() => eds.service_name,
            _ => c.name,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The RDS names of an LDS response's listeners, sorted.
fn rds_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
        .flat_map(|l| probe::rds_names(&l))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An error with its causes, on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
