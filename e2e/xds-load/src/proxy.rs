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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Node, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Struct;
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
    endpoint: Endpoint,
    pub stop: CancellationToken,
    pub first_error: Mutex<Option<String>>,
    /// Whether proxies subscribe to the secrets their clusters name.
    pub secrets: bool,
}

impl Fleet {
    pub fn new(endpoint: Endpoint, proxies: usize, batch: usize, secrets: bool) -> Arc<Self> {
        Arc::new(Self {
            states: (0..proxies).map(|_| Mutex::new(ProxyState::default())).collect(),
            probes: RwLock::new(Vec::new()),
            counters: Counters::default(),
            admission: Arc::new(Semaphore::new(batch.max(1))),
            endpoint,
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
    let node = Node {
        id: identity.node_id.clone(),
        cluster: identity.cluster.clone(),
        metadata: identity.metadata.clone(),
        ..Default::default()
    };
    let mut requests = Requests { tx, node: Some(node) };
    let mut subs: [Subscription; 5] = Default::default();
    const CDS: usize = 0;
    const EDS: usize = 1;
    const LDS: usize = 2;
    const RDS: usize = 3;
    const SDS: usize = 4;
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
                let names = cluster_names(&response, fleet.secrets);
                if names.eds != subs[EDS].names {
                    subs[EDS].names = names.eds;
                    subs[EDS].requested = true;
                    subs[EDS].acked = false;
                    requests.send(urls[EDS], &subs[EDS]).await?;
                }
                // Envoy asks for a cluster's secrets while it warms the
                // cluster, before it ACKs the CDS response: all names of
                // the type in one request on an ADS stream.
                if names.sds != subs[SDS].names {
                    subs[SDS].names = names.sds;
                    subs[SDS].requested = true;
                    subs[SDS].acked = false;
                    requests.send(urls[SDS], &subs[SDS]).await?;
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
                if t == SDS && !response.resources.is_empty() {
                    let mut state = fleet.state(i);
                    if state.secret_acked_at.is_none() {
                        state.secret_acked_at = Some(Instant::now());
                    }
                }
            }
        }
        let complete = |s: &Subscription| s.names.is_empty() || s.acked;
        if subs[CDS].acked
            && subs[LDS].acked
            && complete(&subs[EDS])
            && complete(&subs[RDS])
            && complete(&subs[SDS])
        {
            let mut state = fleet.state(i);
            if state.ready_at.is_none() {
                state.ready_at = Some(Instant::now());
            }
        }
    }
}

/// What a CDS response makes Envoy subscribe to next, each sorted.
#[derive(Debug, Default, PartialEq)]
struct ClusterNames {
    /// The EDS names of its EDS clusters.
    eds: Vec<String>,
    /// The SDS secrets its clusters' TLS transport sockets name (only
    /// when `secrets` was asked for).
    sds: Vec<String>,
}

fn cluster_names(response: &DiscoveryResponse, secrets: bool) -> ClusterNames {
    let mut names = ClusterNames::default();
    for c in response.resources.iter().filter_map(|any| Cluster::decode(any.value.as_slice()).ok()) {
        if secrets {
            let sockets = c
                .transport_socket
                .iter()
                .chain(c.transport_socket_matches.iter().flat_map(|m| &m.transport_socket));
            for socket in sockets {
                secret_names(socket, &mut names.sds);
            }
        }
        if c.cluster_discovery_type
            == Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32))
        {
            names.eds.push(match c.eds_cluster_config {
                Some(eds) if !eds.service_name.is_empty() => eds.service_name,
                _ => c.name,
            });
        }
    }
    for list in [&mut names.eds, &mut names.sds] {
        list.sort();
        list.dedup();
    }
    names
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, SdsSecretConfig};
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

    fn response(clusters: &[Cluster]) -> DiscoveryResponse {
        DiscoveryResponse {
            type_url: probe::CLUSTER.into(),
            resources: clusters
                .iter()
                .map(|c| Any { type_url: probe::CLUSTER.into(), value: c.encode_to_vec() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_secrets_named_by_tls_transport_sockets_are_subscribed_once_each() {
        let plain = Cluster { name: "PassthroughCluster".into(), ..Default::default() };
        let response = response(&[auto_mtls("outbound|9080||a"), auto_mtls("outbound|9080||b"), plain]);
        let names = cluster_names(&response, true);
        assert_eq!(names.eds, ["outbound|9080||a", "outbound|9080||b"]);
        assert_eq!(names.sds, ["ROOTCA", "default"]);
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
