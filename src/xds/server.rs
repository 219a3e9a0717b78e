//! The server around the ADS state machines: TLS (the controller's
//! serving certificate, renewed in place), hyper's HTTP/2, the gRPC framing
//! of [`super::grpc`] (tonic supplies only `Status` and the service trait),
//! and one task per stream,
//! for both protocols (state of the world, [`SotwStream`], and Delta,
//! [`DeltaStream`]) over the same code path.
//!
//! A stream is served only once it is authenticated and authorized: the
//! first request must arrive, carry the node id, and come with a bearer
//! token that proves the pod the node id names ([`super::auth`]). A
//! refusal ends the stream with a gRPC status saying why, a warning in the
//! log and a count in `mesh_xds_rejected_streams_total{reason}`.
//!
//! An authorized stream is registered in [`Connections`] and gets its
//! snapshots from the [`Pusher`] (one debounced push for all proxies per
//! index change, [`super::push`]); the state machine decides what to send.
//! The stream ends with `Unavailable` when its pod leaves the index (the
//! proxy reconnects and authenticates again) and on shutdown (proxies
//! reconnect to another replica); connections close with a GOAWAY.
//!
//! With a CA ([`AdsSettings::workload_ca`]), an admitted stream also gets
//! its workload secrets ([`super::sds`]): issued at admission for the
//! identity its token proved, added to every snapshot the stream is
//! offered, renewed at half life. A request for any other secret name is
//! refused (warned once per name and stream, and counted). A stream ends
//! at nine tenths of its token's life ([`auth::stream_deadline`]), so the
//! proxy reconnects with the token the kubelet refreshed, and is reviewed
//! again: a deleted pod's proxy gets nothing new.
//!
//! What a stream holds for a slow proxy is bounded (docs/operations.md): a
//! queue of `QUEUE` responses, HTTP/2's send buffer, and places among
//! the large responses in flight; a proxy that takes none of its
//! responses for 30 s has its stream and connection closed
//! (`watch_stall`).
//!
//! The first ACK of each resource type on a stream is logged (info) with
//! the time since the stream was registered: how long a new sidecar waited
//! for its configuration and its secrets (`make bench-identity` reads it).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codegen::{BoxFuture, Context, Poll, http};

use super::auth::{self, Authenticator, Refusal, Rejection};
use super::delta::DeltaStream;
use super::generator::{Generator, Passthrough};
use super::grpc::{Chunks, Frames, Requests, ResponseBody};
use super::metrics::XdsMetrics;
use super::protocol::{Event, Machine, Step};
use super::proxy::{Proxy, ProxyId};
use super::push::{self, Connection, Connections, Debounce, NackRecord, PushError, Pusher, StreamReport};
use super::resource_type::ResourceType;
use super::sds::{IssuedSecrets, WorkloadCa, is_served_secret};
use super::snapshot::{Resources, Snapshot};
use super::sotw::SotwStream;
use super::wire::{DeltaResponse, SotwResponse, Wire};
use crate::ca::serving::{ServingCert, provider};
use crate::index::{Pods, SharedIndex};
use crate::model::ObjectKey;
use crate::readiness::Readiness;

/// What a stream sends back: discovery responses, then a final status.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<SotwResponse, Status>> + Send>>;
/// The same, for Delta streams.
pub type DeltaResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an authenticated proxy waits for the index to learn of its pod
/// (a sidecar can start before the pod's watch event arrives).
const POD_WAIT: Duration = Duration::from_secs(5);
/// Responses queued per stream before the stream stops reading.
pub(super) const QUEUE: usize = 16;
/// Large responses in flight at once, over all streams: from the moment
/// one is queued until HTTP/2 has let it go (the stream asks for its next
/// response only once all but [`SEND_BUFFER`] of the last one was taken by
/// the client's flow-control window), so the send buffers of slow clients
/// hold at most this many times [`SEND_BUFFER`] of copied chunks.
const LARGE_IN_FLIGHT: usize = 256;
/// A response at least this large (encoded) takes one of those places.
const LARGE: usize = 64 * 1024;
/// What HTTP/2 takes of a stream's response beyond what the client has
/// read (hyper's default is 400 KiB). Small, so that a stream asks for
/// its next response only when the last is nearly sent: the places above
/// then bound the bytes in flight, and 2,000 slow clients cannot pin
/// 400 KiB of copied chunks each.
const SEND_BUFFER: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find connections whose proxy vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to close before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream whose proxy takes none of its responses for this long is
/// closed with its connection ([`watch_stall`]). Its responses and its
/// place among the large ones in flight are held until then, so this
/// bounds how long stuck proxies can keep new ones from their first
/// configuration. A live proxy takes a megabyte in far less.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a stream's watchdog looks.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// How the service runs.
#[derive(Clone)]
pub struct AdsSettings {
    /// How index changes are coalesced into pushes.
    pub debounce: Debounce,
    /// The controller replica's name, shown by /debug/syncz.
    pub instance: String,
    /// Issues each stream's workload certificate; without it, streams get
    /// configuration only (no secrets).
    pub workload_ca: Option<Arc<WorkloadCa>>,
    /// Streams are refused (gRPC Unavailable, so proxies retry) until this
    /// is ready: every watch synced and the CA loaded. A controller that
    /// served before would send a partial view, and proxies would drop
    /// what the caches had not read yet. Without it, streams are served at
    /// once.
    pub readiness: Option<Readiness>,
}

impl Default for AdsSettings {
    fn default() -> Self {
        Self { debounce: Debounce::default(), instance: "local".into(), workload_ca: None, readiness: None }
    }
}

/// The aggregated discovery service: authenticates streams and runs them.
#[derive(Clone)]
pub struct Ads {
    inner: Arc<Shared>,
}

struct Shared {
    authenticator: Arc<dyn Authenticator>,
    index: SharedIndex,
    pusher: Arc<Pusher>,
    metrics: XdsMetrics,
    debounce: Debounce,
    shutdown: CancellationToken,
    pod_wait: Duration,
    stall_timeout: Duration,
    large: Arc<Semaphore>,
    workload_ca: Option<Arc<WorkloadCa>>,
    readiness: Option<Readiness>,
}

impl Ads {
    /// A service that gives every authorized proxy the pass-through
    /// configuration; `shutdown` ends its streams. Proxies get new
    /// snapshots only while [`Ads::push_loop`] runs.
    pub fn new(
        authenticator: Arc<dyn Authenticator>,
        index: SharedIndex,
        metrics: XdsMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_generator(authenticator, index, Arc::new(Passthrough::new()), metrics, shutdown)
    }

    /// A service whose proxies get what `generator` builds for them.
    pub fn with_generator(
        authenticator: Arc<dyn Authenticator>,
        index: SharedIndex,
        generator: Arc<dyn Generator>,
        metrics: XdsMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_settings(authenticator, index, generator, metrics, AdsSettings::default(), shutdown)
    }

    /// The service with explicit settings.
    pub fn with_settings(
        authenticator: Arc<dyn Authenticator>,
        index: SharedIndex,
        generator: Arc<dyn Generator>,
        metrics: XdsMetrics,
        settings: AdsSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let connections = Connections::new(settings.instance);
        let pusher = Arc::new(Pusher::new(generator, index.clone(), connections, metrics.clone()));
        Self {
            inner: Arc::new(Shared {
                authenticator,
                index,
                pusher,
                metrics,
                debounce: settings.debounce,
                shutdown,
                pod_wait: POD_WAIT,
                stall_timeout: STALL_TIMEOUT,
                large: Arc::new(Semaphore::new(LARGE_IN_FLIGHT)),
                workload_ca: settings.workload_ca,
                readiness: settings.readiness,
            }),
        }
    }

    /// The push loop: a push after every (debounced) index change, until
    /// shutdown; it ends early with a push's panic. The caller runs it (the
    /// controller, among its supervised tasks).
    pub fn push_loop(&self) -> impl Future<Output = Result<(), PushError>> + Send + 'static {
        push::run(self.inner.pusher.clone(), self.inner.debounce, self.inner.shutdown.clone())
    }

    /// The connected proxies (for /debug/syncz and /debug/config_dump).
    pub fn connections(&self) -> Connections {
        self.inner.pusher.connections().clone()
    }

    /// Shortens the wait for an unknown pod, so tests need not sit through it.
    #[cfg(test)]
    pub(crate) fn with_pod_wait(mut self, wait: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.inner) {
            shared.pod_wait = wait;
        }
        self
    }

    /// Shortens the time a stream may take none of its responses.
    #[cfg(test)]
    pub(crate) fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.inner) {
            shared.stall_timeout = timeout;
        }
        self
    }

    /// Admits a SotW stream and starts serving it. `authorization` is the
    /// value of the stream's `authorization` metadata; `inbound` the
    /// proxy's requests.
    pub async fn open<S>(&self, authorization: Option<&str>, inbound: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        self.open_with::<SotwStream, S>(authorization, inbound, CancellationToken::new()).await
    }

    /// Admits a Delta stream and starts serving it.
    pub async fn open_delta<S>(
        &self,
        authorization: Option<&str>,
        inbound: S,
    ) -> Result<DeltaResponseStream, Status>
    where
        S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        self.open_with::<DeltaStream, S>(authorization, inbound, CancellationToken::new()).await
    }

    /// Admits a stream of protocol `M` and starts serving it; `close` is
    /// cancelled, and the stream ended, if the proxy stops taking its
    /// responses (the server then closes the connection).
    async fn open_with<M, S>(
        &self,
        authorization: Option<&str>,
        mut inbound: S,
        close: CancellationToken,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<M::Response, Status>> + Send>>, Status>
    where
        M: Machine,
        S: Stream<Item = Result<M::Request, Status>> + Send + Unpin + 'static,
    {
        let shared = &self.inner;
        let (admitted, node_id, first) = match shared.admit::<M, S>(authorization, &mut inbound).await {
            Ok(admitted) => admitted,
            Err((rejection, node_id)) => {
                shared.metrics.rejected(rejection.reason());
                tracing::warn!(
                    node_id = node_id.as_deref().unwrap_or("<none>"),
                    protocol = M::PROTOCOL.name(),
                    reason = rejection.reason(),
                    error = %rejection,
                    "xDS stream refused"
                );
                return Err(status_of(&rejection));
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let delivery = Arc::new(Delivery::default());
        let outgoing = Outgoing { rx, permit: None, delivery: delivery.clone(), handed: false };
        let sender = Sender { tx, delivery, close };
        tokio::spawn(Session::<M>::start(
            self.inner.clone(),
            admitted,
            node_id,
            Box::new(first),
            inbound,
            sender,
        ));
        Ok(Box::pin(outgoing))
    }
}

impl Shared {
    /// Reads the first request and checks who sent it. On refusal, the node
    /// id (if one came) goes with the reason into the log.
    async fn admit<M, S>(
        &self,
        authorization: Option<&str>,
        inbound: &mut S,
    ) -> Result<(Admitted, String, M::Request), (Rejection, Option<String>)>
    where
        M: Machine,
        S: Stream<Item = Result<M::Request, Status>> + Unpin,
    {
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(request))) => request,
            _ => return Err((Rejection::NoRequest, None)),
        };
        let Some(node_id) = M::node(&first).map(|n| n.id.clone()).filter(|id| !id.is_empty()) else {
            return Err((Rejection::NoNode, None));
        };
        let fail = |rejection| (rejection, Some(node_id.clone()));
        if let Some(readiness) = self.readiness.as_ref().filter(|r| !r.is_ready()) {
            return Err(fail(Rejection::NotSynced(readiness.pending().join(", "))));
        }
        let token = auth::bearer_token(authorization).map_err(fail)?;
        let id = ProxyId::parse(&node_id).map_err(|e| fail(e.into()))?;
        let identity = self.authenticator.authenticate(token).await.map_err(fail)?;
        self.authorize(&id, &identity).await.map_err(fail)?;
        let secrets = self.issue(&identity).map_err(|e| fail(Rejection::NoCertificate(e.to_string())))?;
        let deadline = auth::stream_deadline(token, SystemTime::now()).map(instant_of);
        Ok((Admitted { proxy: Proxy { id, identity }, secrets, deadline }, node_id, first))
    }

    /// The stream's secrets, when the server hands out certificates.
    fn issue(&self, identity: &auth::TokenIdentity) -> Result<Option<IssuedSecrets>, super::sds::IssueError> {
        let Some(ca) = &self.workload_ca else { return Ok(None) };
        match ca.issue(identity, time::OffsetDateTime::now_utc()) {
            Ok(issued) => {
                self.metrics.cert_issued();
                Ok(Some(issued))
            }
            Err(e) => {
                self.metrics.cert_failed();
                Err(e)
            }
        }
    }

    /// Sets the nearest-expiry gauge from what the connected proxies hold.
    fn note_cert_expiry(&self) {
        let nearest = self.pusher.connections().nearest_cert_expiry();
        self.metrics.set_nearest_cert_expiry(nearest.map_or(0, |t| t.unix_timestamp()));
    }

    /// [`auth::authorize`] against the index, giving the index a moment to
    /// learn of a pod it does not know yet.
    async fn authorize(&self, id: &ProxyId, identity: &auth::TokenIdentity) -> Result<(), Rejection> {
        let key = ObjectKey::new(&id.namespace, &id.pod);
        let mut revisions = self.index.lock().subscribe();
        let deadline = tokio::time::Instant::now() + self.pod_wait;
        loop {
            let verdict = auth::authorize(id, identity, self.index.lock().get::<Pods>(&key));
            match verdict {
                Err(Rejection::UnknownPod(_)) => {
                    match tokio::time::timeout_at(deadline, revisions.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => return verdict,
                    }
                }
                other => return other,
            }
        }
    }
}

/// An admitted stream: its proxy, its first secrets, and when it must end
/// for its token's sake.
struct Admitted {
    proxy: Proxy,
    secrets: Option<IssuedSecrets>,
    deadline: Option<tokio::time::Instant>,
}

/// A wall-clock time as a timer instant (now, if it has passed).
fn instant_of(at: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The timer instant of a certificate time.
fn instant_of_cert_time(at: time::OffsetDateTime) -> tokio::time::Instant {
    let wait = at - time::OffsetDateTime::now_utc();
    tokio::time::Instant::now() + Duration::try_from(wait).unwrap_or_default()
}

/// How long a failed renewal waits before the next try.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// The gRPC status a refusal ends the stream with.
fn status_of(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match rejection.refusal() {
        Refusal::Unauthenticated => Status::unauthenticated(message),
        Refusal::InvalidArgument => Status::invalid_argument(message),
        Refusal::PermissionDenied => Status::permission_denied(message),
        Refusal::Unavailable => Status::unavailable(message),
    }
}

/// One authorized stream: its state machine, its proxy, and where its
/// responses go.
struct Session<M: Machine> {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    machine: M,
    tx: Sender<M::Response>,
    /// The latest configuration offered, before the secrets join it.
    base: Arc<Snapshot>,
    secrets: Option<IssuedSecrets>,
    /// Secret names refused on this stream (each is warned about once).
    refused: std::collections::BTreeSet<String>,
    /// The types the proxy has ACKed on this stream: the first ACK of each
    /// is logged with the time since the stream was admitted (how long a
    /// new sidecar waits for its configuration and its certificate).
    acked_types: std::collections::BTreeSet<ResourceType>,
    /// The earliest configuration change offered and not yet acknowledged
    /// in full: the start of the proxy's convergence.
    converging: Option<tokio::time::Instant>,
}

// A session's task lives as long as its stream, and an async fn keeps room
// for every future it awaits and every value held across an await: so the
// requests are boxed, and so are the futures awaited only now and then
// (the first offer, a request's handling, a send). That took a stream's
// task from about 7 KiB to under 3 KiB.
impl<M: Machine> Session<M> {
    async fn start<S>(
        shared: Arc<Shared>,
        admitted: Admitted,
        node_id: String,
        first: Box<M::Request>,
        inbound: S,
        tx: Sender<M::Response>,
    ) where
        S: Stream<Item = Result<M::Request, Status>> + Send + Unpin + 'static,
    {
        let _connected = shared.metrics.connected();
        let Admitted { proxy, secrets, deadline } = admitted;
        // Registered before the first snapshot, so no push is missed.
        let registered = shared.pusher.connections().register(proxy, node_id, M::PROTOCOL);
        let connection = registered.connection.clone();
        let mut offers = connection.offers();
        let offer = match Box::pin(shared.pusher.first_offer(connection.clone())).await {
            Ok(offer) => offer,
            // The pusher logged and counted a panic; the proxy retries.
            Err(e) => {
                let status = match e {
                    PushError::Panicked(_) => Status::internal(
                        "generating this proxy's configuration failed: a bug in the control plane (see its log)",
                    ),
                    PushError::Cancelled => Status::unavailable("control plane shutdown"),
                };
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        offers.borrow_and_update();
        let base = offer.snapshot;
        let machine = M::new(with_secrets(&base, secrets.as_ref()));
        let proxy = &connection.proxy;
        tracing::info!(
            proxy = %proxy.id,
            service_account = %proxy.identity.service_account,
            protocol = M::PROTOCOL.name(),
            certificate = secrets.as_ref().map_or("none", |s| s.summary.serial.as_str()),
            "proxy connected"
        );
        let mut session = Session {
            shared: shared.clone(),
            connection: connection.clone(),
            machine,
            tx,
            base,
            secrets,
            refused: Default::default(),
            acked_types: Default::default(),
            converging: None,
        };
        session.note_certificate();
        let watching = CancellationToken::new();
        tokio::spawn(watch_stall(
            session.tx.delivery.clone(),
            session.tx.close.clone(),
            watching.clone(),
            shared.stall_timeout,
            shared.metrics.clone(),
            connection.proxy.id.clone(),
        ));
        let _stop_watching = watching.drop_guard();
        let ended = Box::pin(session.run(first, inbound, offers, deadline)).await;
        tracing::info!(proxy = %connection.proxy.id, reason = ended, "proxy disconnected");
        drop(registered);
        shared.note_cert_expiry();
    }

    /// Serves the stream until it ends; returns why, for the log.
    async fn run<S>(
        &mut self,
        first: Box<M::Request>,
        mut inbound: S,
        mut offers: tokio::sync::watch::Receiver<push::Offer>,
        deadline: Option<tokio::time::Instant>,
    ) -> &'static str
    where
        S: Stream<Item = Result<M::Request, Status>> + Unpin,
    {
        let answered = Box::pin(self.on_request(&first)).await;
        // The first request carries the node, with Envoy's list of
        // extensions: tens of KB per proxy, not to be kept for the stream's life.
        drop(first);
        if let Err(ended) = answered {
            return ended;
        }
        let shutdown = self.shared.shutdown.clone();
        let pod_gone = self.connection.ended().clone();
        let stalled = self.tx.close.clone();
        let token_deadline = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(token_deadline);
        let mut renew_at = self.secrets.as_ref().map(|s| instant_of_cert_time(s.renew_at));
        loop {
            let renewal = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    Box::pin(self.end(Status::unavailable("the control plane is shutting down; reconnect"))).await;
                    return "control plane shutdown";
                }
                _ = stalled.cancelled() => return STALLED,
                _ = pod_gone.cancelled() => {
                    Box::pin(self.end(Status::unavailable("the pod is gone from the control plane's view; reconnect"))).await;
                    return "pod deleted";
                }
                _ = &mut token_deadline => {
                    Box::pin(self.end(Status::unavailable(
                        "the stream's token is near its expiry; reconnect with the refreshed token",
                    )))
                    .await;
                    return "token near expiry";
                }
                _ = renewal => {
                    renew_at = Some(self.renew());
                    let step = self.machine.on_snapshot(with_secrets(&self.base, self.secrets.as_ref()));
                    if let Err(ended) = Box::pin(self.send(step)).await {
                        return ended;
                    }
                }
                _ = self.tx.tx.closed() => return "proxy went away",
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        let request = Box::new(request);
                        if let Err(ended) = Box::pin(self.on_request(&request)).await {
                            return ended;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(proxy = %self.connection.proxy.id, %status, "ADS stream broke");
                        return "stream error";
                    }
                    None => return "proxy closed the stream",
                },
                changed = offers.changed() => {
                    if changed.is_err() {
                        Box::pin(self.end(Status::unavailable("the control plane stopped pushing; reconnect"))).await;
                        return "pushes ended";
                    }
                    let offer = offers.borrow_and_update().clone();
                    self.base = offer.snapshot;
                    if let Some(at) = offer.changed_at {
                        self.converging = Some(self.converging.map_or(at, |earlier| earlier.min(at)));
                    }
                    let step = self.machine.on_snapshot(with_secrets(&self.base, self.secrets.as_ref()));
                    if let Err(ended) = Box::pin(self.send(step)).await {
                        return ended;
                    }
                }
            }
        }
    }

    /// Issues the stream's next certificate; returns when to renew it
    /// (soon again if it failed: the proxy keeps the one it has).
    fn renew(&mut self) -> tokio::time::Instant {
        match self.shared.issue(&self.connection.proxy.identity) {
            Ok(Some(issued)) => {
                tracing::info!(
                    proxy = %self.connection.proxy.id,
                    serial = %issued.summary.serial,
                    not_after = %issued.summary.not_after,
                    "workload certificate renewed"
                );
                let at = instant_of_cert_time(issued.renew_at);
                self.secrets = Some(issued);
                self.note_certificate();
                at
            }
            Ok(None) => tokio::time::Instant::now() + Duration::from_secs(24 * 3600),
            Err(e) => {
                tracing::error!(proxy = %self.connection.proxy.id, error = %e, "renewing the workload certificate failed; retrying");
                tokio::time::Instant::now() + RENEW_RETRY
            }
        }
    }

    /// Records the stream's certificate for debug views and metrics.
    fn note_certificate(&self) {
        let summary = self.secrets.as_ref().map(|s| s.summary.clone());
        self.shared.pusher.connections().set_certificate(&self.connection, summary);
        self.shared.note_cert_expiry();
    }

    /// Refuses secret names other than the proxy's own and the credentials
    /// its configuration holds (a gateway's, from Secrets of its namespace):
    /// they are never sent; each is warned about once per stream, and
    /// counted. A credential whose Secret appears later is sent then.
    fn refuse_foreign_secrets(&mut self, request: &M::Request) {
        let (type_url, names) = M::subscribing(request);
        if type_url != ResourceType::Secret.type_url() {
            return;
        }
        let held = self.base.get(ResourceType::Secret);
        for name in names.iter().filter(|n| !is_served_secret(n) && !held.is_some_and(|h| h.contains(n))) {
            if self.refused.insert(name.clone()) {
                self.shared.metrics.secret_refused();
                tracing::warn!(
                    proxy = %self.connection.proxy.id,
                    identity = %format!("{}/{}", self.connection.proxy.identity.namespace, self.connection.proxy.identity.service_account),
                    secret = %name,
                    "secret request refused: a proxy gets its own `default` and `ROOTCA`, and a gateway the TLS credentials of Secrets in its namespace"
                );
            }
        }
    }

    async fn on_request(&mut self, request: &M::Request) -> Result<(), &'static str> {
        self.refuse_foreign_secrets(request);
        match self.machine.on_request(request) {
            Ok(step) => self.send(step).await,
            Err(error) => {
                tracing::warn!(proxy = %self.connection.proxy.id, %error, "ADS protocol error");
                self.end(Status::invalid_argument(error.to_string())).await;
                Err("protocol error")
            }
        }
    }

    /// Ends the stream with `status`, if the proxy is still there to hear it.
    async fn end(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    /// Logs and counts what happened, records it for /debug/syncz, then
    /// sends the responses.
    async fn send(&mut self, step: Step<M::Response>) -> Result<(), &'static str> {
        let metrics = &self.shared.metrics;
        let proxy = &self.connection.proxy.id;
        let mut nacks = Vec::new();
        for event in step.events {
            match event {
                Event::Ack { resource_type, version } => {
                    metrics.acked(resource_type);
                    if self.acked_types.insert(resource_type) {
                        let since = self.connection.connected_since.elapsed().unwrap_or_default();
                        tracing::info!(
                            %proxy,
                            r#type = %resource_type,
                            %version,
                            since_connected_ms = since.as_millis() as u64,
                            "first ACK of this type on the stream"
                        );
                    } else {
                        tracing::debug!(%proxy, r#type = %resource_type, %version, "ACK");
                    }
                }
                Event::Nack { resource_type, version, resources, error } => {
                    metrics.nacked(resource_type);
                    tracing::warn!(
                        %proxy,
                        r#type = %resource_type,
                        %version,
                        resources = %names(&resources),
                        %error,
                        "proxy refused configuration (NACK)"
                    );
                    nacks.push((resource_type, NackRecord { version, error, at: SystemTime::now() }));
                }
                Event::StaleNonce { resource_type, nonce } => {
                    tracing::debug!(%proxy, r#type = %resource_type, %nonce, "stale nonce ignored");
                }
            }
        }
        let (status, holding) = (self.machine.status(), self.machine.holding());
        // Converged: nothing more to send, everything sent acknowledged. A
        // refusal ends the measure (the NACK is counted instead).
        if !nacks.is_empty() {
            self.converging = None;
        } else if step.responses.is_empty()
            && status.values().all(|t| t.sent == t.acked && t.nack.is_none())
            && let Some(since) = self.converging.take()
        {
            metrics.converged(since.elapsed());
        }
        self.connection.update_report(|report: &mut StreamReport| {
            report.types = status;
            report.holding = holding;
            report.last_nack.extend(nacks);
        });
        for response in step.responses {
            let pushed = M::describe(&response);
            // The answer to a type the mesh does not serve is not counted:
            // it carries nothing.
            let served = pushed.type_url.served();
            if let Some(resource_type) = served {
                metrics.pushed(resource_type);
            }
            tracing::debug!(
                %proxy,
                r#type = served.map_or(pushed.type_url.as_str(), |t| t.label()),
                version = %pushed.version,
                resources = pushed.resources,
                removed = pushed.removed,
                nonce = %pushed.nonce,
                "push"
            );
            let permit = if response.encoded_len() >= LARGE {
                let started = std::time::Instant::now();
                let permit = tokio::select! {
                    permit = self.shared.large.clone().acquire_owned() => permit,
                    _ = self.tx.close.cancelled() => return Err(STALLED),
                };
                let Ok(permit) = permit else {
                    return Err("control plane shutdown");
                };
                let waited = started.elapsed();
                if waited > Duration::from_millis(100) {
                    tracing::debug!(%proxy, ?waited, "waited for a place among the large responses in flight");
                }
                Some(permit)
            } else {
                None
            };
            // A proxy that does not read fills the queue; the stream then
            // waits here, reading none of its requests, so what it holds
            // stays within QUEUE responses.
            if self.tx.tx.capacity() == 0 {
                metrics.queue_full();
                tracing::debug!(%proxy, "stream queue full: waiting for the proxy to read");
            }
            self.tx.send(Ok(Queued { response, permit })).await?;
        }
        Ok(())
    }
}

/// The configuration offered, with the stream's own secrets added beside
/// the credentials the configuration holds (a gateway's).
fn with_secrets(base: &Arc<Snapshot>, secrets: Option<&IssuedSecrets>) -> Arc<Snapshot> {
    match secrets {
        Some(issued) => {
            let mut parts = base.get(ResourceType::Secret).map(|r| r.parts().to_vec()).unwrap_or_default();
            parts.push(issued.secrets.clone());
            Arc::new(Snapshot::clone(base).with_resources(ResourceType::Secret, Resources::from_parts(parts)))
        }
        None => base.clone(),
    }
}

/// Resource names for a log line: the first few and how many in all.
fn names(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(",");
    if names.len() > SHOWN {
        text.push_str(&format!(" (and {} more)", names.len() - SHOWN));
    }
    text
}

/// A response on its way to the stream, with its place among the large
/// responses in flight, if it needs one.
struct Queued<R> {
    response: R,
    permit: Option<OwnedSemaphorePermit>,
}

/// What a session hands its response body: boxed, as the channel keeps
/// room for 32 of them per stream whether or not they are used.
type Sending<R> = Box<Result<Queued<R>, Status>>;

/// Why a session ended when its proxy stopped taking responses.
const STALLED: &str = "proxy stopped reading";

/// How far a stream's responses have gone: queued by its session, and
/// taken by HTTP/2 (all but [`SEND_BUFFER`] of them on their way to the
/// proxy). [`watch_stall`] compares the two.
#[derive(Default)]
struct Delivery {
    queued: AtomicU64,
    taken: AtomicU64,
}

/// A session's end of its response queue.
struct Sender<R> {
    tx: mpsc::Sender<Sending<R>>,
    delivery: Arc<Delivery>,
    /// Cancelled when the proxy stopped taking responses: the session
    /// ends, and the server closes the connection.
    close: CancellationToken,
}

impl<R> Sender<R> {
    /// Queues `item`, waiting for room; fails once the proxy went away or
    /// stopped reading.
    async fn send(&self, item: Result<Queued<R>, Status>) -> Result<(), &'static str> {
        tokio::select! {
            sent = self.tx.send(Box::new(item)) => sent.map_err(|_| "proxy went away")?,
            _ = self.close.cancelled() => return Err(STALLED),
        }
        self.delivery.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Watches one stream until `done`: once responses are queued and the
/// proxy has taken none of them for `timeout`, cancels `close`. A stream
/// that waits for a proxy that reads nothing would otherwise hold its
/// responses, and its places among the large ones in flight, for as long
/// as the connection lives: HTTP/2 pings do not find such a proxy when its
/// connection is still read (Envoy's gRPC library answers them on its own
/// threads).
async fn watch_stall(
    delivery: Arc<Delivery>,
    close: CancellationToken,
    done: CancellationToken,
    timeout: Duration,
    metrics: XdsMetrics,
    proxy: ProxyId,
) {
    let check = STALL_CHECK.min(timeout / 2);
    let mut taken = delivery.taken.load(Ordering::Relaxed);
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(check) => {}
        }
        let (queued, now_taken) =
            (delivery.queued.load(Ordering::Relaxed), delivery.taken.load(Ordering::Relaxed));
        if now_taken != taken || now_taken >= queued {
            taken = now_taken;
            waiting_since = None;
            continue;
        }
        let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() + check >= timeout {
            metrics.stream_stalled();
            tracing::warn!(
                %proxy,
                waiting = queued - now_taken,
                "the proxy took none of its responses for {timeout:?}: closing its connection (it reconnects if it is alive)"
            );
            close.cancel();
            return;
        }
    }
}

/// The responses of one stream, as the response body pulls them: a
/// response's place among the large ones in flight is given back when the
/// next one is asked for. The body hands a response's frames to HTTP/2 at
/// once, and HTTP/2 asks for more only once the client's flow-control
/// window has taken them, so the place is held while the bytes wait.
struct Outgoing<R> {
    rx: mpsc::Receiver<Sending<R>>,
    permit: Option<OwnedSemaphorePermit>,
    delivery: Arc<Delivery>,
    /// A response was handed to HTTP/2 and it has not asked for the next.
    handed: bool,
}

impl<R> Stream for Outgoing<R> {
    type Item = Result<R, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.permit = None;
        if std::mem::take(&mut self.handed) {
            self.delivery.taken.fetch_add(1, Ordering::Relaxed);
        }
        let next = self.rx.poll_recv(cx).map(|sent| sent.map(|boxed| *boxed));
        self.handed = matches!(next, Poll::Ready(Some(_)));
        match next {
            Poll::Ready(Some(Ok(queued))) => {
                self.permit = queued.permit;
                Poll::Ready(Some(Ok(queued.response)))
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The gRPC path of the state-of-the-world stream.
pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The gRPC path of the Delta stream.
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS service over HTTP/2, with our own gRPC framing
/// ([`super::grpc`]): responses go out as the shared bytes of their
/// resources, and no per-stream buffer grows with them.
#[derive(Clone)]
pub struct AdsService {
    ads: Ads,
    /// The connection's: cancelled when one of its streams' proxy stops
    /// reading; the server then closes the connection.
    close: CancellationToken,
}

impl AdsService {
    pub fn new(ads: Ads) -> Self {
        Self { ads, close: CancellationToken::new() }
    }

    /// The service for one connection, which is closed when `close` is
    /// cancelled.
    fn for_connection(&self, close: CancellationToken) -> Self {
        Self { ads: self.ads.clone(), close }
    }
}

fn authorization<B>(request: &http::Request<B>) -> Option<String> {
    request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A streaming response: gRPC headers, then the body.
fn streaming(chunks: Chunks) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(ResponseBody::new(chunks));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// Each response as its gRPC chunks.
fn chunked<R: Wire>(responses: impl Stream<Item = Result<R, Status>> + Send + 'static) -> Chunks {
    Box::pin(responses.map(|r| r.map(|r| Frames::message(&r))))
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display + Send,
{
    type Response = http::Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (ads, close) = (self.ads.clone(), self.close.clone());
        let authorization = authorization(&request);
        let compressed = request.headers().get("grpc-encoding").is_some_and(|e| e.as_bytes() != b"identity");
        let path = request.uri().path().to_owned();
        let body = request.into_body();
        Box::pin(async move {
            if compressed {
                return Ok(Status::unimplemented("compressed requests are not supported").into_http());
            }
            let opened = match path.as_str() {
                SOTW_PATH => ads
                    .open_with::<SotwStream, _>(
                        authorization.as_deref(),
                        Requests::<B, DiscoveryRequest>::new(body),
                        close,
                    )
                    .await
                    .map(chunked),
                DELTA_PATH => ads
                    .open_with::<DeltaStream, _>(
                        authorization.as_deref(),
                        Requests::<B, DeltaDiscoveryRequest>::new(body),
                        close,
                    )
                    .await
                    .map(chunked),
                _ => Err(Status::unimplemented(format!("no method {path} here"))),
            };
            Ok(match opened {
                Ok(chunks) => streaming(chunks),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("xDS TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS settings of the xDS server: TLS 1.2+, HTTP/2 only (gRPC).
/// Proxies authenticate with their token, not with a client certificate.
pub fn tls_config(cert: Arc<ServingCert>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Serves ADS on `listener` until `shutdown`, then closes every stream and
/// connection (waiting at most a few seconds for them).
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: Arc<ServingCert>,
    ads: Ads,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert)?));
    let service = AdsService::new(ads);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "xDS accept failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let close = CancellationToken::new();
        let (acceptor, service, shutdown) =
            (acceptor.clone(), service.for_connection(close.clone()), shutdown.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "xDS TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "xDS TLS handshake timed out"),
            };
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .max_send_buf_size(SEND_BUFFER)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // A proxy that stopped reading would hold a graceful close
                // open: the connection is dropped.
                _ = close.cancelled() => return tracing::debug!(%peer, "xDS connection closed: its proxy stopped reading"),
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "xDS connection ended");
            }
        });
    }
    let drained =
        tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "xDS connections still open after {DRAIN_TIMEOUT:?}; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_responses_place_is_held_until_the_next_one_is_asked_for() {
        let large = Arc::new(Semaphore::new(1));
        let (tx, rx) = mpsc::channel(4);
        let mut outgoing = Outgoing { rx, permit: None, delivery: Arc::default(), handed: false };
        let permit = large.clone().acquire_owned().await.expect("open");
        tx.send(Box::new(Ok(Queued { response: 1, permit: Some(permit) }))).await.expect("open");
        tx.send(Box::new(Ok(Queued { response: 2, permit: None }))).await.expect("open");
        assert_eq!(outgoing.next().await.map(|r| r.ok()), Some(Some(1)));
        assert_eq!(large.available_permits(), 0, "held while HTTP/2 holds the bytes");
        assert_eq!(outgoing.next().await.map(|r| r.ok()), Some(Some(2)));
        assert_eq!(large.available_permits(), 1, "given back when the next is asked for");
    }
}
