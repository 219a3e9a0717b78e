//! Pushes: from index changes to new snapshots for every connected proxy.
//!
//! Index changes come in bursts (a rollout moves many pods and endpoint
//! slices). [`run`] waits for the revision to stay still for the quiet
//! period of its [`Debounce`] (but never longer than its maximum delay, so
//! constant churn still pushes), then makes one push: under the index's
//! lock it takes a snapshot of the stores and the log of what changed
//! (both in constant time); without the lock, the [`Generator`] prepares
//! a [`PushContext`] that rebuilds only what those changes reach, and the
//! snapshot of every proxy the push reaches is generated from it (in
//! parallel, sharing work between proxies of a scope). A proxy whose
//! snapshot did not change is not woken.
//!
//! The same push ends the stream of a proxy whose pod left the index (or
//! was replaced by a pod of the same name): it reconnects and
//! authenticates again.
//!
//! A push that panics (a bug in a [`Generator`]) is logged with its
//! message and counted (`mesh_xds_push_panics_total`), never swallowed:
//! [`run`] ends with it, and since every proxy depends on this loop the
//! controller's supervisor stops the controller, to be restarted, rather
//! than serve configuration that no longer follows the cluster. A proxy's
//! first snapshot that panics is logged and counted too, and ends only
//! that proxy's stream.
//!
//! [`Connections`] is the registry of connected proxies behind
//! /debug/syncz and /debug/config_dump.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::generator::{Generator, PushContext};
use super::metrics::XdsMetrics;
use super::protocol::{Protocol, TypeStatus};
use super::proxy::Proxy;
use super::resource_type::ResourceType;
use super::sds::CertSummary;
use super::snapshot::{Resources, Snapshot};
use crate::index::{Changes, EndpointSlices, Kind, Pods, SharedIndex};
use crate::model::ObjectKey;
use crate::supervisor::panic_message;

/// How index changes are coalesced into pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// A push waits until the index has been still this long...
    pub quiet: Duration,
    /// ...but not longer than this after the first change.
    pub max_delay: Duration,
    /// Changes of endpoints alone (EndpointSlices, pods) are pushed this
    /// long after the first of them, still or not: they come steadily
    /// during a rollout, where a quiet period never comes and they would
    /// wait for `max_delay`, and a push of them is cheap.
    pub endpoints: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self::from_millis(DEFAULT_QUIET_MS).with_endpoints_millis(DEFAULT_ENDPOINTS_MS)
    }
}

/// The default quiet period: a fifth of Istio's (100 ms). It still gathers
/// what one `kubectl apply` sends, and a push is cheap now: it rebuilds
/// only what the changes reach (about 12 ms for a VirtualService in a mesh
/// of 1,000 Services and 2,000 proxies), and a Delta ACK names nothing. At
/// 20 ms a VirtualService change reached 2,000 proxies with p99 170 ms,
/// against 242 ms at 100 ms (docs/perf.md). Under constant change a push
/// still waits at most ten times this.
pub const DEFAULT_QUIET_MS: u64 = 20;

/// The default window for endpoint changes.
pub const DEFAULT_ENDPOINTS_MS: u64 = 100;

/// The kinds whose changes alone make an endpoint push.
const ENDPOINT_KINDS: [&str; 2] = [EndpointSlices::NAME, Pods::NAME];

impl Debounce {
    /// A quiet period of `quiet_ms` (0: push at once), at most ten times
    /// that (and at least 100 ms) under constant change. Endpoint changes
    /// alone wait the default window, or the quiet period if shorter.
    pub fn from_millis(quiet_ms: u64) -> Self {
        let quiet = Duration::from_millis(quiet_ms);
        let endpoints = Duration::from_millis(DEFAULT_ENDPOINTS_MS).min(quiet);
        Self { quiet, max_delay: (quiet * 10).max(Duration::from_millis(100)), endpoints }
    }

    /// With endpoint changes alone pushed `endpoints_ms` after the first.
    pub fn with_endpoints_millis(self, endpoints_ms: u64) -> Self {
        Self { endpoints: Duration::from_millis(endpoints_ms), ..self }
    }

    /// When to push, for changes that began at `first`, the latest at
    /// `last`, and that are (so far) of endpoints alone or not.
    fn deadline(
        &self,
        first: tokio::time::Instant,
        last: tokio::time::Instant,
        endpoints_alone: bool,
    ) -> tokio::time::Instant {
        if endpoints_alone { first + self.endpoints } else { (last + self.quiet).min(first + self.max_delay) }
    }
}

/// A snapshot offered to a stream, from push `epoch`.
#[derive(Clone, Debug)]
pub(crate) struct Offer {
    epoch: u64,
    pub snapshot: Arc<Snapshot>,
    version: String,
    /// The first index change of the push that made it (none for a
    /// stream's first snapshot): where the proxy's convergence starts.
    pub changed_at: Option<tokio::time::Instant>,
}

/// A refusal, with when it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRecord {
    pub version: String,
    pub error: String,
    pub at: SystemTime,
}

/// What a stream reports about itself after every step.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub types: BTreeMap<ResourceType, TypeStatus>,
    /// The latest refusal of each type, kept after a later ACK.
    pub last_nack: BTreeMap<ResourceType, NackRecord>,
    /// What the proxy holds (or is being sent), by type.
    pub holding: BTreeMap<ResourceType, Resources>,
    /// The workload certificate last issued to the stream.
    pub certificate: Option<CertSummary>,
}

/// One connected proxy.
pub struct Connection {
    pub id: u64,
    pub proxy: Proxy,
    pub node_id: String,
    pub protocol: Protocol,
    pub connected_since: SystemTime,
    offers: watch::Sender<Offer>,
    ended: CancellationToken,
    report: Mutex<StreamReport>,
}

impl Connection {
    /// Offers a snapshot from push `epoch`; the stream wakes only if it is
    /// newer than what it has and differs from it.
    pub(crate) fn offer(
        &self,
        epoch: u64,
        snapshot: Snapshot,
        changed_at: Option<tokio::time::Instant>,
    ) -> bool {
        let version = snapshot.version();
        self.offers.send_if_modified(|current| {
            if current.epoch > epoch {
                return false;
            }
            let changed = current.version != version;
            if changed {
                *current = Offer { epoch, snapshot: Arc::new(snapshot), version, changed_at };
            } else {
                current.epoch = epoch;
            }
            changed
        })
    }

    pub(crate) fn offers(&self) -> watch::Receiver<Offer> {
        self.offers.subscribe()
    }

    /// Cancelled when the stream must end (its pod is gone).
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    pub(crate) fn update_report(&self, update: impl FnOnce(&mut StreamReport)) {
        update(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn certificate_expiry(&self) -> Option<time::OffsetDateTime> {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).certificate.as_ref().map(|c| c.not_after)
    }

    pub fn report(&self) -> StreamReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pod, as `namespace/name`.
    pub fn pod(&self) -> ObjectKey {
        ObjectKey::new(&self.proxy.id.namespace, &self.proxy.id.pod)
    }
}

/// The registry of connected proxies. Cloning shares it.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Registry>,
}

struct Registry {
    instance: String,
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Connection>>>,
    /// The expiry of each connected proxy's certificate, with its
    /// connection's id: the nearest is the first, without a walk over
    /// every connection at each issuance (10,000 of them at a reconnect).
    expiries: Mutex<BTreeSet<(time::OffsetDateTime, u64)>>,
}

impl Connections {
    /// A registry of this controller instance (its pod name, say).
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Registry {
                instance: instance.into(),
                next: AtomicU64::new(1),
                map: Mutex::new(BTreeMap::new()),
                expiries: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// Which controller replica this is.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Every connected proxy, oldest first.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The connections of a proxy, by node id or `namespace/pod`.
    pub fn find(&self, proxy: &str) -> Vec<Arc<Connection>> {
        self.list()
            .into_iter()
            .filter(|c| {
                c.node_id == proxy
                    || c.pod().to_string() == proxy
                    || format!("{}.{}", c.proxy.id.pod, c.proxy.id.namespace) == proxy
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest expiry among the certificates connected proxies hold.
    pub fn nearest_cert_expiry(&self) -> Option<time::OffsetDateTime> {
        self.inner.expiries.lock().unwrap_or_else(|p| p.into_inner()).first().map(|(at, _)| *at)
    }

    /// Records the certificate a connected stream was last issued (a
    /// stream already gone is left as it is).
    pub(crate) fn set_certificate(&self, connection: &Connection, certificate: Option<CertSummary>) {
        let mut expiries = self.inner.expiries.lock().unwrap_or_else(|p| p.into_inner());
        if !self.inner.map.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&connection.id) {
            return;
        }
        connection.update_report(|report| {
            if let Some(old) = &report.certificate {
                expiries.remove(&(old.not_after, connection.id));
            }
            if let Some(new) = &certificate {
                expiries.insert((new.not_after, connection.id));
            }
            report.certificate = certificate;
        });
    }

    /// Adds a stream; it leaves the registry when the guard drops.
    pub(crate) fn register(&self, proxy: Proxy, node_id: String, protocol: Protocol) -> Registered {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let empty = Snapshot::new();
        let version = empty.version();
        let (offers, _) =
            watch::channel(Offer { epoch: 0, snapshot: Arc::new(empty), version, changed_at: None });
        let connection = Arc::new(Connection {
            id,
            proxy,
            node_id,
            protocol,
            connected_since: SystemTime::now(),
            offers,
            ended: CancellationToken::new(),
            report: Mutex::new(StreamReport::default()),
        });
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, connection.clone());
        Registered { connections: self.clone(), connection }
    }
}

/// A registered stream; dropping it unregisters.
pub(crate) struct Registered {
    connections: Connections,
    pub connection: Arc<Connection>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let registry = &self.connections.inner;
        registry.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.connection.id);
        // After the map: a certificate recorded from now on is not kept.
        let mut expiries = registry.expiries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = self.connection.certificate_expiry() {
            expiries.remove(&(at, self.connection.id));
        }
    }
}

/// Builds snapshots for every connected proxy, one push at a time.
pub struct Pusher {
    generator: Arc<dyn Generator>,
    index: SharedIndex,
    connections: Connections,
    metrics: XdsMetrics,
    current: Mutex<Option<(u64, Arc<dyn PushContext>)>>,
    epoch: AtomicU64,
    /// One push at a time.
    pushing: tokio::sync::Mutex<()>,
    /// The generator's inputs beyond the index moved (fetched JWT keys):
    /// the next push rebuilds everything.
    others_moved: std::sync::atomic::AtomicBool,
}

/// Why a push (or a proxy's first snapshot) made nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Generating configuration panicked: a bug, with the panic's message.
    #[error("a push panicked: {0}")]
    Panicked(String),
    /// The runtime is shutting down.
    #[error("a push was cancelled: the runtime is shutting down")]
    Cancelled,
}

/// What one push did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushSummary {
    pub proxies: usize,
    pub changed: usize,
    pub ended: usize,
}

impl Pusher {
    pub fn new(
        generator: Arc<dyn Generator>,
        index: SharedIndex,
        connections: Connections,
        metrics: XdsMetrics,
    ) -> Self {
        Self {
            generator,
            index,
            connections,
            metrics,
            current: Mutex::new(None),
            epoch: AtomicU64::new(0),
            pushing: tokio::sync::Mutex::new(()),
            others_moved: Default::default(),
        }
    }

    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// The context of the latest push, made now if there was none.
    fn context(&self) -> (u64, Arc<dyn PushContext>) {
        if let Some(current) = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return current;
        }
        // The index's log of changes is left for the push loop: this
        // context starts from nothing known, and the next push's changes
        // cover all that happened since.
        let cluster = self.index.lock().snapshot();
        let context = self.generator.prepare(&cluster, &Changes::everything());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.get_or_insert_with(|| (self.epoch.fetch_add(1, Ordering::SeqCst) + 1, context)).clone()
    }

    /// Gives a just registered stream its first snapshot (unless a push
    /// already gave it a newer one) and returns what it has.
    pub(crate) async fn first_offer(
        self: &Arc<Self>,
        connection: Arc<Connection>,
    ) -> Result<Offer, PushError> {
        let this = self.clone();
        let proxy = connection.proxy.id.to_string();
        tokio::task::spawn_blocking(move || {
            let (epoch, context) = this.context();
            connection.offer(epoch, context.generate(&connection.proxy), None);
            connection.offers.borrow().clone()
        })
        .await
        .map_err(|e| self.failed(e, &format!("the first snapshot of {proxy}")))
    }

    /// One push: a fresh context from the index, a snapshot for every
    /// proxy, and an end to streams whose pod is gone. The changes began at
    /// `changed_at`, where the proxies' convergence is measured from.
    pub async fn push(self: &Arc<Self>, changed_at: tokio::time::Instant) -> Result<PushSummary, PushError> {
        let _one = self.pushing.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.push_blocking(changed_at))
            .await
            .map_err(|e| self.failed(e, "a push"))
    }

    /// Logs and counts a panic of `what`.
    fn failed(&self, error: JoinError, what: &str) -> PushError {
        match error.try_into_panic() {
            Ok(panic) => {
                let message = panic_message(&*panic);
                self.metrics.push_panicked();
                tracing::error!(panic = %message, "{what} panicked");
                PushError::Panicked(message)
            }
            Err(_) => PushError::Cancelled,
        }
    }

    fn push_blocking(&self, changed_at: tokio::time::Instant) -> PushSummary {
        let started = Instant::now();
        let connections = self.connections.list();
        let (cluster, mut changes) = {
            let mut index = self.index.lock();
            (index.snapshot(), index.take_changes())
        };
        if self.others_moved.swap(false, Ordering::SeqCst) {
            changes.merge(Changes::everything());
        }
        let context = self.generator.prepare(&cluster, &changes);
        let gone: Vec<_> = connections
            .iter()
            .filter(|c| cluster.get::<Pods>(&c.pod()).is_none_or(|w| w.uid != c.proxy.identity.pod_uid))
            .cloned()
            .collect();
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((epoch, context.clone()));
        for connection in &gone {
            tracing::info!(proxy = %connection.proxy.id, "pod gone from the index; ending its stream");
            connection.ended.cancel();
        }
        let live: Vec<_> = connections.into_iter().filter(|c| !c.ended.is_cancelled()).collect();
        let reached: Vec<_> = live.iter().filter(|c| context.affects(&c.proxy)).cloned().collect();
        let changed = AtomicU64::new(0);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(reached.len().max(1));
        let chunk = reached.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let parts: Vec<_> = reached
                .chunks(chunk)
                .map(|part| {
                    let (context, changed) = (&context, &changed);
                    scope.spawn(move || {
                        for connection in part {
                            if connection.offer(epoch, context.generate(&connection.proxy), Some(changed_at))
                            {
                                changed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            // A part's panic is re-raised with its own message (the scope
            // would raise one that says only that a thread panicked), for
            // `push` to report.
            for part in parts {
                if let Err(panic) = part.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        let summary =
            PushSummary { proxies: live.len(), changed: changed.into_inner() as usize, ended: gone.len() };
        let elapsed = started.elapsed();
        self.metrics.push_done(elapsed, summary.changed as u64);
        tracing::debug!(
            epoch,
            proxies = summary.proxies,
            changed = summary.changed,
            ended = summary.ended,
            ?elapsed,
            "push"
        );
        summary
    }
}

/// Pushes after every (debounced) change of the index, until `shutdown`;
/// ends early with a push's panic (see the module's documentation).
pub async fn run(
    pusher: Arc<Pusher>,
    debounce: Debounce,
    shutdown: CancellationToken,
) -> Result<(), PushError> {
    let mut revisions = pusher.index.lock().subscribe();
    let mut others = pusher.generator.changes();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = revisions.changed() => if changed.is_err() { return Ok(()) },
            () = other_change(&mut others) => pusher.others_moved.store(true, Ordering::SeqCst),
        }
        let first = tokio::time::Instant::now();
        let mut last = first;
        loop {
            let endpoints_alone = !pusher.others_moved.load(Ordering::SeqCst)
                && !pusher.index.lock().pending_changes().beyond(&ENDPOINT_KINDS);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(debounce.deadline(first, last, endpoints_alone)) => break,
                changed = revisions.changed() => {
                    if changed.is_err() { return Ok(()) }
                    last = tokio::time::Instant::now();
                }
                () = other_change(&mut others) => {
                    pusher.others_moved.store(true, Ordering::SeqCst);
                    last = tokio::time::Instant::now();
                }
            }
        }
        revisions.borrow_and_update();
        if let Some(others) = &mut others {
            others.borrow_and_update();
        }
        pusher.push(first).await?;
    }
}

/// The next move of the generator's other inputs; never, when it has none
/// or their sender is gone.
async fn other_change(others: &mut Option<watch::Receiver<u64>>) {
    let Some(rx) = others else { return std::future::pending().await };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::auth::tests::identity;
    use crate::xds::{ProxyId, sds::CertSummary};

    fn register(connections: &Connections, pod: &str) -> Registered {
        let node_id = format!("sidecar~10.1.2.3~{pod}.default~default.svc.cluster.local");
        let proxy = Proxy { id: ProxyId::parse(&node_id).expect("valid"), identity: identity() };
        connections.register(proxy, node_id, Protocol::Sotw)
    }

    fn expiring_in(hours: i64) -> Option<CertSummary> {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a time");
        let not_after = now + time::Duration::hours(hours);
        Some(CertSummary { spiffe_id: String::new(), serial: String::new(), not_before: now, not_after })
    }

    #[test]
    fn the_nearest_certificate_expiry_follows_issuance_renewal_and_disconnection() {
        let connections = Connections::new("mesh-0");
        assert_eq!(connections.nearest_cert_expiry(), None);
        let (a, b) = (register(&connections, "a"), register(&connections, "b"));
        connections.set_certificate(&a.connection, expiring_in(2));
        connections.set_certificate(&b.connection, expiring_in(5));
        let at = |c: Option<CertSummary>| c.map(|c| c.not_after);
        assert_eq!(connections.nearest_cert_expiry(), at(expiring_in(2)));
        // Renewed: its old certificate no longer counts.
        connections.set_certificate(&a.connection, expiring_in(9));
        assert_eq!(connections.nearest_cert_expiry(), at(expiring_in(5)));
        let gone = b.connection.clone();
        drop(b);
        assert_eq!(connections.nearest_cert_expiry(), at(expiring_in(9)));
        // A late issuance to a stream already gone is not kept.
        connections.set_certificate(&gone, expiring_in(1));
        assert_eq!(connections.nearest_cert_expiry(), at(expiring_in(9)));
        drop(a);
        assert_eq!(connections.nearest_cert_expiry(), None);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn endpoint_changes_alone_are_pushed_a_window_after_the_first_however_many_follow() {
        let d = Debounce::from_millis(100).with_endpoints_millis(30);
        assert_eq!((d.quiet, d.max_delay, d.endpoints), (ms(100), ms(1000), ms(30)));
        let t0 = tokio::time::Instant::now();
        let at = |n| t0 + ms(n);
        // A rollout: a change every 20 ms never lets the index go quiet.
        assert_eq!(d.deadline(t0, at(20), true), at(30));
        assert_eq!(d.deadline(t0, at(980), true), at(30));
        // Anything else waits for quiet, at most the maximum delay.
        assert_eq!(d.deadline(t0, at(20), false), at(120));
        assert_eq!(d.deadline(t0, at(980), false), at(1000));
    }

    #[test]
    fn the_endpoint_window_is_never_longer_than_the_quiet_period() {
        assert_eq!(Debounce::default().endpoints, ms(DEFAULT_ENDPOINTS_MS));
        assert_eq!(Debounce::from_millis(10).endpoints, ms(10));
        let t0 = tokio::time::Instant::now();
        assert_eq!(Debounce::from_millis(0).deadline(t0, t0, true), t0, "0: at once");
    }
}
