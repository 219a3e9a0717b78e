//! The xDS server end to end, in process: the real ADS service over TLS
//! on 127.0.0.1, with a fake [`Authenticator`], and a real Envoy 1.40
//! connecting to it with the same bootstrap settings the injector writes
//! (google_grpc, the mesh root, the token as call credentials). Every
//! Envoy must ACK the configuration; a refused one must get none.
//!
//! The scripted tests at the top drive [`Ads::open`] with hand-made
//! requests and need no Envoy.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1 as core;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::auth::{Authenticator, Rejection, TokenIdentity};
use super::server::{Ads, ResponseStream, ServeError};
use super::{ResourceType, XdsMetrics};
use crate::ca::serving::ServingCert;
use crate::index::{Changes, ClusterSnapshot, Index, IndexMetrics, Pods, SharedIndex};
use crate::testing::{TempDir, envoy_binary, objects};

const NODE_ID: &str = "sidecar~10.1.2.3~productpage-v1-x.default~default.svc.cluster.local";
const TOKEN: &str = "productpage-token";

// ---- fakes ----

/// Accepts [`TOKEN`] as the productpage pod's; refuses anything else.
struct FakeAuthenticator {
    identity: TokenIdentity,
    reviews: AtomicUsize,
}

impl FakeAuthenticator {
    fn new() -> Arc<Self> {
        Arc::new(Self { identity: super::auth::tests::identity(), reviews: AtomicUsize::new(0) })
    }

    fn bound_to(pod: &str) -> Arc<Self> {
        let identity = TokenIdentity { pod_name: pod.into(), ..super::auth::tests::identity() };
        Arc::new(Self { identity, reviews: AtomicUsize::new(0) })
    }
}

impl Authenticator for FakeAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        let result = if token == TOKEN {
            Ok(self.identity.clone())
        } else {
            Err(Rejection::InvalidToken("the token is not one the fake knows".into()))
        };
        Box::pin(async move { result })
    }
}

fn pod(name: &str, uid: &str, ip: &str) -> core::Pod {
    objects::pod(name).uid(uid).ip(ip).service_account("bookinfo-productpage").build()
}

/// An index that knows the productpage pod.
fn index() -> SharedIndex {
    let mut index = Index::new(IndexMetrics::default());
    index.apply::<Pods>(&pod("productpage-v1-x", "uid-1", "10.1.2.3"));
    SharedIndex::new(index)
}

// ---- scripted streams (no Envoy) ----

struct Scripted {
    requests: mpsc::UnboundedSender<Result<DiscoveryRequest, Status>>,
    responses: ResponseStream,
}

impl Scripted {
    async fn open(ads: &Ads, authorization: Option<&str>, first: DiscoveryRequest) -> Result<Self, Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        requests.send(Ok(first)).expect("open channel");
        let inbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }).boxed();
        let responses = ads.open(authorization, inbound).await?;
        Ok(Self { requests, responses })
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, Status> {
        tokio::time::timeout(Duration::from_secs(5), self.responses.next())
            .await
            .expect("a response within 5s")
            .expect("the stream is open")
            .map(|response| response.to_proto())
    }

    fn send(&self, request: DiscoveryRequest) {
        self.requests.send(Ok(request)).expect("open channel");
    }
}

fn first_request(resource_type: ResourceType, node_id: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: resource_type.type_url().into(),
        node: Some(Node { id: node_id.into(), ..Default::default() }),
        ..Default::default()
    }
}

fn ack(response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

fn ads(authenticator: Arc<dyn Authenticator>, index: SharedIndex) -> (Ads, XdsMetrics, CancellationToken) {
    let metrics = XdsMetrics::default();
    let shutdown = CancellationToken::new();
    let ads = Ads::new(authenticator, index, metrics.clone(), shutdown.clone());
    tokio::spawn(ads.push_loop());
    (ads, metrics, shutdown)
}

async fn refused(ads: &Ads, authorization: Option<&str>, node_id: &str) -> Status {
    match Scripted::open(ads, authorization, first_request(ResourceType::Cluster, node_id)).await {
        Ok(_) => panic!("the stream was accepted"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn an_authorized_stream_gets_the_passthrough_configuration() {
    let index = index();
    let (ads, metrics, shutdown) = ads(FakeAuthenticator::new(), index.clone());
    let bearer = format!("Bearer {TOKEN}");
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
        .await
        .expect("accepted");
    let clusters = stream.next().await.expect("clusters");
    assert_eq!(clusters.type_url, ResourceType::Cluster.type_url());
    assert_eq!(clusters.resources.len(), 2);
    assert_eq!(metrics.connected_proxies(), 1);

    stream.send(ack(&clusters));
    stream
        .send(DiscoveryRequest { type_url: ResourceType::Listener.type_url().into(), ..Default::default() });
    let listeners = stream.next().await.expect("listeners");
    assert_eq!(listeners.resources.len(), 2);
    stream.send(ack(&listeners));

    // An index change that does not change the configuration pushes nothing.
    index.lock().apply::<Pods>(&pod("details-v1-y", "uid-2", "10.1.2.4"));
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.responses.next()).await;
    assert!(quiet.is_err(), "nothing pushed: {quiet:?}");
    assert_eq!((metrics.acks(ResourceType::Cluster), metrics.acks(ResourceType::Listener)), (1, 1));
    assert_eq!(metrics.pushes(ResourceType::Listener), 1);

    // Shutdown ends the stream with Unavailable, so the proxy reconnects elsewhere.
    shutdown.cancel();
    let last = stream.next().await.expect_err("the stream ends");
    assert_eq!(last.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.connected_proxies() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the proxy is counted out");
}

#[tokio::test]
async fn streams_wait_for_every_cache_to_sync() {
    let readiness = crate::readiness::Readiness::new();
    let pods = readiness.register("Pod cache");
    let settings = super::AdsSettings { readiness: Some(readiness.clone()), ..Default::default() };
    let authenticator = FakeAuthenticator::new();
    let ads = Ads::with_settings(
        authenticator.clone(),
        index(),
        Arc::new(super::generator::Passthrough::new()),
        XdsMetrics::default(),
        settings,
        CancellationToken::new(),
    );
    tokio::spawn(ads.push_loop());
    let bearer = format!("Bearer {TOKEN}");
    let status = refused(&ads, Some(&bearer), NODE_ID).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("waiting for: Pod cache"), "{}", status.message());
    assert_eq!(authenticator.reviews.load(Ordering::SeqCst), 0, "no token review before the caches sync");

    pods.ready();
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
        .await
        .expect("accepted once synced");
    assert_eq!(stream.next().await.expect("clusters").resources.len(), 2);
}

/// A service that issues workload certificates of `ttl` from a fresh root.
fn ads_with_ca(index: SharedIndex, ttl: Duration) -> (Ads, XdsMetrics, CancellationToken) {
    let now = time::OffsetDateTime::now_utc();
    let root = crate::ca::Root::generate("cluster.local", now).expect("root");
    let authority = Arc::new(crate::ca::Authority::from_root(&root, now).expect("authority"));
    let settings = super::AdsSettings {
        debounce: super::Debounce::from_millis(10),
        instance: "test".into(),
        workload_ca: Some(Arc::new(super::WorkloadCa::with_authority(authority, "cluster.local", ttl))),
        ..Default::default()
    };
    let metrics = XdsMetrics::default();
    let shutdown = CancellationToken::new();
    let ads = Ads::with_settings(
        FakeAuthenticator::new(),
        index,
        Arc::new(super::Passthrough::new()),
        metrics.clone(),
        settings,
        shutdown.clone(),
    );
    tokio::spawn(ads.push_loop());
    (ads, metrics, shutdown)
}

/// The leaf of the `default` secret in a response: its URI SANs and serial.
fn leaf_of(response: &DiscoveryResponse) -> (Vec<String>, String) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message;
    let default = response
        .resources
        .iter()
        .map(|any| Secret::decode(any.value.as_slice()).expect("a secret"))
        .find(|s| s.name == "default")
        .expect("the default secret");
    let Some(secret::Type::TlsCertificate(tls)) = default.r#type else { panic!("not a certificate") };
    let Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(chain)) =
        tls.certificate_chain.and_then(|d| d.specifier)
    else {
        panic!("no inline chain")
    };
    let leaf = crate::ca::CertInfo::from_pem(&chain).expect("a certificate");
    (leaf.uris, leaf.serial)
}

#[tokio::test]
async fn a_proxy_gets_its_own_certificate_and_no_other_secret_and_it_is_renewed_at_half_life() {
    let (ads, metrics, _shutdown) = ads_with_ca(index(), Duration::from_secs(4));
    let bearer = format!("Bearer {TOKEN}");
    let mut request = first_request(ResourceType::Secret, NODE_ID);
    request.resource_names = vec![
        "default".into(),
        "ROOTCA".into(),
        // Another identity's, and a Kubernetes Secret's: never served.
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
        "kubernetes://reviews-credential".into(),
    ];
    let mut stream = Scripted::open(&ads, Some(&bearer), request.clone()).await.expect("accepted");
    let secrets = stream.next().await.expect("secrets");
    let mut names: Vec<_> = secrets
        .resources
        .iter()
        .map(|any| {
            use prost::Message;
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                any.value.as_slice(),
            )
            .expect("a secret")
            .name
        })
        .collect();
    names.sort();
    assert_eq!(names, ["ROOTCA", "default"]);
    let (uris, first_serial) = leaf_of(&secrets);
    assert_eq!(uris, ["spiffe://cluster.local/ns/default/sa/bookinfo-productpage"]);
    assert_eq!(metrics.secret_refusals(), 2);
    assert_eq!(metrics.certs_issued(), 1);
    assert!(metrics.nearest_cert_expiry() > 0);

    // The same names again (as Envoy repeats them with each ACK): refused, not counted twice.
    stream.send(DiscoveryRequest { resource_names: request.resource_names.clone(), ..ack(&secrets) });
    assert_eq!(metrics.secret_refusals(), 2);

    // At half of the 4 s life, a new certificate comes on the same stream.
    let renewed = stream.next().await.expect("renewed secrets");
    let (uris, serial) = leaf_of(&renewed);
    assert_eq!(uris, ["spiffe://cluster.local/ns/default/sa/bookinfo-productpage"]);
    assert_ne!(serial, first_serial);
    assert_eq!(metrics.certs_issued(), 2);
}

#[tokio::test]
async fn refusals_say_why_with_the_right_code_and_are_counted() {
    let (ads, metrics, _shutdown) = ads(FakeAuthenticator::new(), index());
    let bearer = format!("Bearer {TOKEN}");

    let status = refused(&ads, None, NODE_ID).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("authorization: Bearer"), "{}", status.message());

    let status = refused(&ads, Some("Bearer wrong"), NODE_ID).await;
    assert_eq!(status.code(), Code::PermissionDenied);

    let status = refused(&ads, Some(&bearer), "productpage").await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("sidecar|router~<pod-ip>~<pod-name>.<namespace>~"),
        "{}",
        status.message()
    );

    let other = "sidecar~10.1.2.4~details-v1-y.default~default.svc.cluster.local";
    let status = refused(&ads, Some(&bearer), other).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "token is bound to pod default/productpage-v1-x, but the node id names default/details-v1-y"
    );

    let wrong_ip = "sidecar~10.9.9.9~productpage-v1-x.default~default.svc.cluster.local";
    assert_eq!(refused(&ads, Some(&bearer), wrong_ip).await.code(), Code::PermissionDenied);

    for reason in ["missing_token", "invalid_token", "malformed_node_id", "pod_mismatch", "ip_mismatch"] {
        assert_eq!(metrics.rejected_streams(reason), 1, "{reason}");
    }
    assert_eq!(metrics.connected_proxies(), 0);
}

#[tokio::test]
async fn a_pod_the_index_learns_of_late_is_admitted_and_an_unknown_one_refused() {
    let index = SharedIndex::new(Index::new(IndexMetrics::default()));
    let (ads, metrics, _shutdown) = ads(FakeAuthenticator::new(), index.clone());
    let ads = ads.with_pod_wait(Duration::from_secs(2));
    let bearer = format!("Bearer {TOKEN}");

    // Never seen: refused after the wait.
    let status = refused(&ads, Some(&bearer), NODE_ID).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(metrics.rejected_streams("unknown_pod"), 1);

    // Seen a moment after the proxy connects: admitted.
    let later = index.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.lock().apply::<Pods>(&pod("productpage-v1-x", "uid-1", "10.1.2.3"));
    });
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
        .await
        .expect("accepted");
    assert_eq!(stream.next().await.expect("clusters").type_url, ResourceType::Cluster.type_url());
}

#[tokio::test]
async fn a_nack_is_counted_and_the_refused_version_not_resent() {
    let (ads, metrics, _shutdown) = ads(FakeAuthenticator::new(), index());
    let bearer = format!("Bearer {TOKEN}");
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Listener, NODE_ID))
        .await
        .expect("accepted");
    let listeners = stream.next().await.expect("listeners");
    stream.send(DiscoveryRequest {
        error_detail: Some(envoy_types::pb::google::rpc::Status {
            code: 13,
            message: "cannot bind".into(),
            details: vec![],
        }),
        version_info: String::new(),
        ..ack(&listeners)
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.nacks(ResourceType::Listener) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the NACK is counted");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.responses.next()).await;
    assert!(quiet.is_err(), "the NACKed version is not re-sent: {quiet:?}");
}

#[tokio::test]
async fn a_proxy_that_does_not_read_stops_its_stream_at_the_queue_bound_and_loses_nothing() {
    let (ads, metrics, _shutdown) = ads(FakeAuthenticator::new(), index());
    let bearer = format!("Bearer {TOKEN}");
    // The requests the server has taken from the stream, counted.
    let taken = Arc::new(AtomicUsize::new(0));
    let (requests, rx) = mpsc::unbounded_channel::<Result<DiscoveryRequest, Status>>();
    let counted = taken.clone();
    let inbound = futures::stream::unfold(rx, move |mut rx| {
        let counted = counted.clone();
        async move {
            let request = rx.recv().await?;
            counted.fetch_add(1, Ordering::SeqCst);
            Some((request, rx))
        }
    })
    .boxed();
    // Each request names a type the mesh does not serve: each gets its
    // own answer, with no ACK awaited, so a proxy that reads none of them
    // makes them pile up.
    const SENT: usize = 100;
    let unserved = |i: usize| DiscoveryRequest {
        type_url: format!("type.googleapis.com/test.Unserved{i}"),
        node: (i == 0).then(|| Node { id: NODE_ID.into(), ..Default::default() }),
        ..Default::default()
    };
    for i in 0..SENT {
        requests.send(Ok(unserved(i))).expect("open channel");
    }
    let mut responses = ads.open(Some(&bearer), inbound).await.expect("accepted");

    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.queue_full_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the full queue is counted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The queue, the response being sent, and the request that made it.
    let bound = super::server::QUEUE + 2;
    let stalled = taken.load(Ordering::SeqCst);
    assert!(
        stalled <= bound,
        "the stream took {stalled} requests from a proxy that read nothing (bound {bound})"
    );

    // Once the proxy reads, the stream goes on: every request answered, in order.
    let mut nonces = Vec::new();
    for _ in 0..SENT {
        let response = tokio::time::timeout(Duration::from_secs(5), responses.next())
            .await
            .expect("a response within 5 s")
            .expect("the stream is open")
            .expect("a response")
            .to_proto();
        nonces.push(response.nonce.parse::<u64>().expect("a counter"));
    }
    assert!(nonces.windows(2).all(|w| w[0] < w[1]), "{nonces:?}");
    assert_eq!(taken.load(Ordering::SeqCst), SENT);
}

#[tokio::test]
async fn a_proxy_that_takes_no_response_is_closed_after_the_stall_timeout_and_a_reading_one_is_not() {
    let (ads, metrics, _shutdown) = ads(FakeAuthenticator::new(), index());
    let ads = ads.with_stall_timeout(Duration::from_millis(400));
    let bearer = format!("Bearer {TOKEN}");
    // Takes each response as it comes, as HTTP/2 asks for the next one
    // once the last is on its way.
    let Scripted { requests: _reading_requests, responses: mut reading } =
        Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
            .await
            .expect("accepted");
    let (taken, mut got) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(response) = reading.next().await {
            if taken.send(response).is_err() {
                break;
            }
        }
    });
    let first =
        tokio::time::timeout(Duration::from_secs(5), got.recv()).await.expect("a response within 5 s");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    // Takes nothing: its first response waits.
    let mut stuck = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Listener, NODE_ID))
        .await
        .expect("accepted");
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.connected_proxies() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both sessions start");

    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.stalled_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stuck stream is closed and counted within 5 s");
    // Its session ended: what was queued, then the end of the stream.
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stuck.responses.by_ref().collect())
        .await
        .expect("the stuck stream ends");
    assert!(rest.len() <= 1 && rest.iter().all(Result::is_ok), "{rest:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metrics.stalled_count(), 1, "the reading stream is not closed");
    assert_eq!(metrics.connected_proxies(), 1);
}

/// The pass-through configuration, until the index holds a pod named
/// [`FAULTY_POD`]: then generating any proxy's snapshot panics, as a bug
/// in translation would.
struct FaultyGenerator(super::Passthrough);

const FAULTY_POD: &str = "faulty-v1-z";

struct FaultyContext {
    faulty: bool,
    inner: Arc<dyn super::PushContext>,
}

impl super::Generator for FaultyGenerator {
    fn prepare(&self, cluster: &ClusterSnapshot, changes: &Changes) -> Arc<dyn super::PushContext> {
        let faulty = cluster.state().workloads.keys().any(|key| key.name == FAULTY_POD);
        Arc::new(FaultyContext { faulty, inner: self.0.prepare(cluster, changes) })
    }
}

impl super::PushContext for FaultyContext {
    fn generate(&self, proxy: &super::Proxy) -> super::Snapshot {
        if self.faulty {
            panic!("generating the listeners of {}: a bug", proxy.id);
        }
        self.inner.generate(proxy)
    }
}

#[tokio::test]
async fn a_push_that_panics_is_counted_and_stops_the_controller() {
    let index = index();
    let metrics = XdsMetrics::default();
    let shutdown = CancellationToken::new();
    let readiness = crate::readiness::Readiness::new();
    let settings = super::AdsSettings {
        debounce: super::Debounce::from_millis(10),
        instance: "test".into(),
        ..Default::default()
    };
    let ads = Ads::with_settings(
        FakeAuthenticator::new(),
        index.clone(),
        Arc::new(FaultyGenerator(super::Passthrough::new())),
        metrics.clone(),
        settings,
        shutdown.clone(),
    );
    let mut tasks = crate::supervisor::Tasks::new(readiness.clone(), shutdown.clone());
    tasks.spawn("xDS push loop", ads.push_loop());
    let controller = tokio::spawn(tasks.run_until(std::future::pending()));
    let bearer = format!("Bearer {TOKEN}");
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
        .await
        .expect("accepted");
    stream.next().await.expect("clusters, before the fault");
    assert!(readiness.is_ready());

    // The next push generates the connected proxy's snapshot, on a thread of its own, and panics.
    index.lock().apply::<Pods>(&pod(FAULTY_POD, "uid-9", "10.1.2.9"));
    let stopped =
        tokio::time::timeout(Duration::from_secs(5), controller).await.expect("the controller stops");
    let failed = stopped.expect("the supervisor ran").expect_err("a failure");

    assert_eq!(failed.task, "xDS push loop");
    assert_eq!(
        failed.to_string(),
        "xDS push loop failed: a push panicked: \
         generating the listeners of default/productpage-v1-x (10.1.2.3): a bug"
    );
    assert_eq!(metrics.push_panics(), 1);
    assert!(!readiness.is_ready());
    assert_eq!(readiness.failures(), vec![failed.to_string()]);
    // The controller is stopping: the proxy is told to go elsewhere.
    assert_eq!(stream.next().await.expect_err("the stream ends").code(), Code::Unavailable);
}

#[tokio::test]
async fn a_first_snapshot_that_panics_ends_that_stream_and_is_counted() {
    let index = index();
    index.lock().apply::<Pods>(&pod(FAULTY_POD, "uid-9", "10.1.2.9"));
    let metrics = XdsMetrics::default();
    let ads = Ads::with_generator(
        FakeAuthenticator::new(),
        index,
        Arc::new(FaultyGenerator(super::Passthrough::new())),
        metrics.clone(),
        CancellationToken::new(),
    );
    let bearer = format!("Bearer {TOKEN}");
    let mut stream = Scripted::open(&ads, Some(&bearer), first_request(ResourceType::Cluster, NODE_ID))
        .await
        .expect("admitted");
    let status = stream.next().await.expect_err("no configuration");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("a bug in the control plane"), "{}", status.message());
    assert_eq!(metrics.push_panics(), 1);
}

// ---- real Envoy ----

/// The xDS server on 127.0.0.1, with a certificate for `localhost` from a
/// fresh mesh CA.
struct ControlPlane {
    port: u16,
    root_pem: String,
    metrics: XdsMetrics,
    index: SharedIndex,
    connections: super::Connections,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl ControlPlane {
    async fn start(authenticator: Arc<dyn Authenticator>) -> Self {
        Self::start_with(authenticator, Arc::new(super::Passthrough::new())).await
    }

    /// A control plane whose proxies get what `generator` builds.
    async fn start_with(authenticator: Arc<dyn Authenticator>, generator: Arc<dyn super::Generator>) -> Self {
        Self::start_with_ca(authenticator, generator, None).await
    }

    /// The same, issuing workload certificates of `workload_ttl` when given.
    async fn start_with_ca(
        authenticator: Arc<dyn Authenticator>,
        generator: Arc<dyn super::Generator>,
        workload_ttl: Option<Duration>,
    ) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let root = crate::ca::Root::generate("cluster.local", now).expect("root");
        let authority = Arc::new(crate::ca::Authority::from_root(&root, now).expect("authority"));
        let leaf =
            authority.issue_serving(&["localhost"], time::Duration::hours(1), now).expect("serving cert");
        let cert = Arc::new(ServingCert::default());
        cert.set(&leaf.cert_chain_pem, &leaf.key_pem).expect("install cert");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let index = index();
        let metrics = XdsMetrics::default();
        let shutdown = CancellationToken::new();
        let settings = super::AdsSettings {
            workload_ca: workload_ttl.map(|ttl| {
                Arc::new(super::WorkloadCa::with_authority(authority.clone(), "cluster.local", ttl))
            }),
            ..Default::default()
        };
        let ads = Ads::with_settings(
            authenticator,
            index.clone(),
            generator,
            metrics.clone(),
            settings,
            shutdown.clone(),
        );
        tokio::spawn(ads.push_loop());
        let connections = ads.connections();
        let server = tokio::spawn(super::serve(listener, cert, ads, shutdown.clone()));
        Self {
            port,
            root_pem: authority.trust_bundle_pem().to_string(),
            metrics,
            index,
            connections,
            shutdown,
            server,
        }
    }
}

/// A running Envoy, killed when dropped.
struct Envoy {
    _process: tokio::process::Child,
    admin: String,
    dir: TempDir,
}

impl Envoy {
    /// An Envoy speaking what the injected bootstrap asks for.
    async fn start(control_plane: &ControlPlane, name: &str) -> Self {
        let injected = crate::inject::bootstrap::bootstrap("mesh.mesh-system.svc:15012");
        let api_type = injected["dynamic_resources"]["ads_config"]["api_type"].as_str().expect("api_type");
        Self::start_with(control_plane, name, api_type).await
    }

    /// An Envoy speaking `api_type` (`GRPC`: state of the world; `DELTA_GRPC`).
    async fn start_with(control_plane: &ControlPlane, name: &str, api_type: &str) -> Self {
        let dir = TempDir::new(name);
        let root = dir.write("root-cert.pem", &control_plane.root_pem);
        // No trailing newline: gRPC refuses a header value that ends in one.
        let token = dir.write("token", TOKEN);
        let bootstrap =
            dir.write("envoy.yaml", bootstrap(NODE_ID, control_plane.port, &root, &token, api_type));
        let admin_path = dir.0.join("admin-address");
        let log = std::fs::File::create(dir.0.join("envoy.log")).expect("log file");
        let process = tokio::process::Command::new(envoy_binary())
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--component-log-level", "config:debug", "--drain-time-s", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let mut envoy = Self { _process: process, admin: String::new(), dir };
        envoy.admin = envoy
            .wait_for("Envoy's admin address", || async {
                std::fs::read_to_string(&admin_path)
                    .ok()
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
            })
            .await;
        envoy
    }

    /// Polls `probe` until it gives a value, for at most 30 seconds.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        for _ in 0..300 {
            if let Some(value) = probe().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; Envoy's log:\n{}", self.log());
    }

    async fn get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.admin);
        tokio::task::spawn_blocking(move || {
            let mut response = ureq::get(&url).call().ok()?;
            response.body_mut().read_to_string().ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Counters and gauges by name.
    async fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        let text =
            self.get("/stats?filter=%5E(listener_manager%7Ccluster_manager%7Ccontrol_plane)%5C.").await;
        text.unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// The sidecar bootstrap's xDS part, as the injector writes it, in either
/// protocol.
fn bootstrap(node_id: &str, port: u16, root: &Path, token: &Path, api_type: &str) -> String {
    format!(
        r#"node:
  id: "{node_id}"
  cluster: productpage.default
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - google_grpc:
        target_uri: "localhost:{port}"
        stat_prefix: xds-grpc
        channel_credentials:
          ssl_credentials:
            root_certs: {{ filename: "{root}" }}
        credentials_factory_name: envoy.grpc_credentials.file_based_metadata
        call_credentials:
        - from_plugin:
            name: envoy.grpc_credentials.file_based_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig
              secret_data: {{ filename: "{token}" }}
              header_key: authorization
              header_prefix: "Bearer "
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
"#,
        root = root.display(),
        token = token.display(),
    )
}

/// Envoy's own JSON of what it applied: the listeners and clusters from
/// /config_dump, without versions and timestamps, sorted by name.
async fn applied_configuration(envoy: &Envoy) -> serde_json::Value {
    let dump = |resource: &'static str| async move {
        let text = envoy.get(&format!("/config_dump?resource={resource}")).await.unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()
    };
    let pick = |dump: serde_json::Value, path: &[&str]| {
        let mut items: Vec<serde_json::Value> = dump["configs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|entry| path.iter().fold(entry, |v, key| v[*key].clone()))
            .collect();
        items.sort_by_key(|item| item["name"].as_str().unwrap_or_default().to_string());
        serde_json::Value::Array(items)
    };
    serde_json::json!({
        "clusters": pick(dump("dynamic_active_clusters").await, &["cluster"]),
        "listeners": pick(dump("dynamic_listeners").await, &["active_state", "listener"]),
    })
}

const GOLDEN: &str = "src/translate/testdata/passthrough.json";

/// Waits for Envoy to apply the pass-through listeners and clusters, with
/// nothing refused, and for its ACKs to reach the control plane; returns
/// Envoy's stats.
async fn passthrough_applied_and_acked(
    envoy: &Envoy,
    control_plane: &ControlPlane,
) -> std::collections::BTreeMap<String, u64> {
    let stats = envoy
        .wait_for("Envoy to apply listeners and clusters", || async {
            let stats = envoy.stats().await;
            let applied = stats.get("listener_manager.lds.update_success").is_some_and(|n| *n >= 1)
                && stats.get("cluster_manager.cds.update_success").is_some_and(|n| *n >= 1)
                && stats.get("listener_manager.total_listeners_active").is_some_and(|n| *n == 2);
            applied.then_some(stats)
        })
        .await;
    assert_eq!(stats.get("listener_manager.lds.update_rejected"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("cluster_manager.cds.update_rejected"), Some(&0), "{stats:?}");
    // PassthroughCluster and InboundPassthroughCluster, nothing static.
    assert_eq!(stats.get("cluster_manager.active_clusters"), Some(&2), "{stats:?}");

    let metrics = &control_plane.metrics;
    envoy
        .wait_for("the ACKs to reach the control plane", || async {
            (metrics.acks(ResourceType::Listener) >= 1 && metrics.acks(ResourceType::Cluster) >= 1)
                .then_some(())
        })
        .await;
    assert_eq!((metrics.nacks(ResourceType::Listener), metrics.nacks(ResourceType::Cluster)), (0, 0));
    stats
}

/// Over SotW, which Envoys of other bootstraps may still speak; the Delta
/// test below holds Envoy's view to the same golden file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_the_passthrough_configuration() {
    let control_plane = ControlPlane::start(FakeAuthenticator::new()).await;
    let envoy = Envoy::start_with(&control_plane, "ack", "GRPC").await;

    let stats = passthrough_applied_and_acked(&envoy, &control_plane).await;
    assert_eq!(stats.get("control_plane.connected_state"), Some(&1), "{stats:?}");
    let metrics = &control_plane.metrics;
    assert_eq!(metrics.connected_proxies(), 1);

    // What Envoy shows is the golden file; MESH_UPDATE_GOLDEN=1 rewrites it.
    let applied = applied_configuration(&envoy).await;
    let pretty = serde_json::to_string_pretty(&applied).expect("json") + "\n";
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("MESH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &pretty).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    pretty_assertions::assert_eq!(
        pretty,
        expected,
        "Envoy's view of the pass-through configuration changed; if intended, rerun with MESH_UPDATE_GOLDEN=1"
    );

    // An index change that leaves the configuration alone pushes nothing.
    let pushes = metrics.pushes(ResourceType::Listener) + metrics.pushes(ResourceType::Cluster);
    control_plane.index.lock().apply::<Pods>(&pod("details-v1-y", "uid-2", "10.1.2.4"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metrics.pushes(ResourceType::Listener) + metrics.pushes(ResourceType::Cluster), pushes);

    // Shutdown closes the stream and the server returns.
    control_plane.shutdown.cancel();
    let served = tokio::time::timeout(Duration::from_secs(10), control_plane.server).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "the server stops cleanly: {served:?}");
    envoy
        .wait_for("Envoy to see the control plane go", || async {
            (envoy.stats().await.get("control_plane.connected_state") == Some(&0)).then_some(())
        })
        .await;
    assert_eq!(metrics.connected_proxies(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_envoy_gets_no_configuration() {
    // The token names another pod than the node id.
    let authenticator = FakeAuthenticator::bound_to("details-v1-y");
    let control_plane = ControlPlane::start(authenticator.clone()).await;
    let envoy = Envoy::start(&control_plane, "refused").await;

    let metrics = &control_plane.metrics;
    // Twice: Envoy retried, and was refused again.
    envoy
        .wait_for("two refused streams", || async {
            (metrics.rejected_streams("pod_mismatch") >= 2).then_some(())
        })
        .await;
    let stats = envoy.stats().await;
    assert_eq!(stats.get("listener_manager.lds.update_success"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("cluster_manager.cds.update_success"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("control_plane.connected_state"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("listener_manager.total_listeners_active"), Some(&0), "{stats:?}");
    assert_eq!(metrics.connected_proxies(), 0);
    assert_eq!(metrics.pushes(ResourceType::Listener) + metrics.pushes(ResourceType::Cluster), 0);
    assert!(authenticator.reviews.load(Ordering::SeqCst) >= 2);
    // Envoy got the reason.
    let log = envoy.log();
    assert!(
        log.contains(
            "token is bound to pod default/details-v1-y, but the node id names default/productpage-v1-x"
        ),
        "the refusal's message should be in Envoy's log:\n{log}"
    );
    control_plane.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_the_passthrough_configuration_over_delta() {
    let control_plane = ControlPlane::start(FakeAuthenticator::new()).await;
    let envoy = Envoy::start_with(&control_plane, "delta", "DELTA_GRPC").await;

    passthrough_applied_and_acked(&envoy, &control_plane).await;
    let metrics = &control_plane.metrics;

    // Envoy applied exactly what the SotW test's golden file shows.
    let applied = applied_configuration(&envoy).await;
    let pretty = serde_json::to_string_pretty(&applied).expect("json") + "\n";
    let golden =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN)).unwrap_or_default();
    pretty_assertions::assert_eq!(pretty, golden, "Delta and SotW give Envoy the same configuration");

    // syncz sees a Delta proxy in sync.
    let statuses = super::debug::syncz(&control_plane.connections);
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].protocol, "Delta");
    assert_eq!(statuses[0].pod, "default/productpage-v1-x");
    for label in ["cds", "lds"] {
        let cell = super::debug::cell(statuses[0].types.get(label));
        assert!(cell.starts_with("SYNCED"), "{label}: {cell}");
    }

    // An index change that leaves the configuration alone pushes nothing.
    let pushes = metrics.pushes(ResourceType::Listener) + metrics.pushes(ResourceType::Cluster);
    control_plane.index.lock().apply::<Pods>(&pod("details-v1-y", "uid-2", "10.1.2.4"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metrics.pushes(ResourceType::Listener) + metrics.pushes(ResourceType::Cluster), pushes);
    control_plane.shutdown.cancel();
}

#[tokio::test]
async fn a_delta_stream_is_authenticated_like_sotw_and_ends_when_its_pod_goes() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let index = index();
    let metrics = XdsMetrics::default();
    let shutdown = CancellationToken::new();
    let settings = super::AdsSettings {
        debounce: super::Debounce::from_millis(10),
        instance: "test".into(),
        ..Default::default()
    };
    let ads = Ads::with_settings(
        FakeAuthenticator::new(),
        index.clone(),
        Arc::new(super::Passthrough::new()),
        metrics.clone(),
        settings,
        shutdown.clone(),
    );
    tokio::spawn(ads.push_loop());
    let first = |node: &str| DeltaDiscoveryRequest {
        type_url: ResourceType::Cluster.type_url().into(),
        node: Some(Node { id: node.into(), ..Default::default() }),
        ..Default::default()
    };
    let open = |request: DeltaDiscoveryRequest, authorization: Option<String>| {
        let ads = ads.clone();
        async move {
            let (tx, rx) = mpsc::unbounded_channel::<Result<DeltaDiscoveryRequest, Status>>();
            tx.send(Ok(request)).expect("open");
            let inbound =
                futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }).boxed();
            ads.open_delta(authorization.as_deref(), inbound).await.map(|responses| (tx, responses))
        }
    };

    let refused = open(first(NODE_ID), None).await.err().expect("refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(metrics.rejected_streams("missing_token"), 1);

    let (_tx, mut responses) = open(first(NODE_ID), Some(format!("Bearer {TOKEN}"))).await.expect("accepted");
    let clusters = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("a response");
    assert_eq!(clusters.type_url.as_str(), ResourceType::Cluster.type_url());
    assert_eq!(clusters.resources.len(), 2);
    assert_eq!(ads.connections().len(), 1);

    // The pod is deleted: the stream ends, the proxy will reconnect and be refused.
    index.lock().delete::<Pods>(&pod("productpage-v1-x", "uid-1", "10.1.2.3"));
    let ended = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("in time")
        .expect("a final status");
    assert_eq!(ended.expect_err("the stream ends").code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !ads.connections().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("unregistered");
}

// ---- a changed cluster is re-warmed at once ----

const BACKEND: &str = "outbound|9080||backend.default.svc.cluster.local";

/// One EDS cluster, [`BACKEND`], with `policy`, and its endpoints.
fn backend(policy: envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy) -> super::Snapshot {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    let cluster = Cluster {
        name: BACKEND.into(),
        connect_timeout: Some(crate::translate::seconds(1)),
        lb_policy: policy.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds.into())),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(crate::translate::cluster::ads_config_source()),
            service_name: BACKEND.into(),
        }),
        ..Default::default()
    };
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(9)),
            ..Default::default()
        })),
    };
    let assignment = ClusterLoadAssignment {
        cluster_name: BACKEND.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    super::Snapshot::new().with([cluster], |c| c.name.clone()).with([assignment], |a| a.cluster_name.clone())
}

/// What Envoy has of [`BACKEND`]: the load balancer of the active
/// cluster (Envoy's JSON leaves the default, ROUND_ROBIN, out), and
/// whether a new version of it is warming.
async fn backend_state(envoy: &Envoy) -> (Option<String>, bool) {
    let dump = |resource: &'static str| async move {
        let text = envoy.get(&format!("/config_dump?resource={resource}")).await.unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()
    };
    let named = |dump: &serde_json::Value| {
        dump["configs"].as_array().into_iter().flatten().find(|c| c["cluster"]["name"] == BACKEND).cloned()
    };
    let active = named(&dump("dynamic_active_clusters").await)
        .map(|c| c["cluster"]["lb_policy"].as_str().unwrap_or("ROUND_ROBIN").to_string());
    let warming = named(&dump("dynamic_warming_clusters").await).is_some();
    (active, warming)
}

/// Changes the load balancer of an EDS cluster Envoy holds, several times
/// in a row, and waits each time for Envoy to have the new cluster active
/// (warmed). Envoy warms an updated EDS cluster again: it waits for the
/// cluster's ClusterLoadAssignment, which did not change; if the server
/// does not send it again, the new cluster waits for Envoy's initial
/// fetch timeout (15 s) before it replaces the old one.
async fn a_changed_cluster_is_active_at_once(api_type: &str) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    const POLICIES: [LbPolicy; 4] =
        [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::RingHash, LbPolicy::Random];
    let current = Arc::new(AtomicUsize::new(0));
    let generator = {
        let current = current.clone();
        move |_: &ClusterSnapshot| -> Arc<dyn super::PushContext> {
            Arc::new(Fixed(backend(POLICIES[current.load(Ordering::SeqCst)])))
        }
    };
    let control_plane = ControlPlane::start_with(FakeAuthenticator::new(), Arc::new(generator)).await;
    let envoy = Envoy::start_with(&control_plane, &format!("rewarm-{api_type}"), api_type).await;
    envoy
        .wait_for("the backend cluster active", || async {
            (backend_state(&envoy).await == (Some("ROUND_ROBIN".into()), false)).then_some(())
        })
        .await;

    for (i, policy) in POLICIES.iter().enumerate().skip(1) {
        let wanted = policy.as_str_name().to_string();
        let started = std::time::Instant::now();
        current.store(i, Ordering::SeqCst);
        // Any index change makes a push; the generator reads `current`.
        control_plane.index.lock().apply::<Pods>(&pod(
            &format!("details-v1-{i}"),
            &format!("uid-d{i}"),
            "10.1.2.9",
        ));
        let state = envoy
            .wait_for(&format!("{BACKEND} active with {wanted}"), || async {
                let state = backend_state(&envoy).await;
                (state.0.as_deref() == Some(wanted.as_str()) && !state.1).then_some(state)
            })
            .await;
        let took = started.elapsed();
        eprintln!("{api_type}: {wanted} active and not warming after {took:?}: {state:?}");
        assert!(
            took < Duration::from_secs(1),
            "{api_type}: the changed cluster took {took:?} to become active (Envoy waited for its endpoints)"
        );
    }
    let stats = envoy.stats().await;
    assert_eq!(stats.get("cluster_manager.cds.update_rejected"), Some(&0), "{stats:?}");
    assert_eq!(stats.get("cluster_manager.warming_clusters"), Some(&0), "{stats:?}");
    assert_eq!(control_plane.metrics.nacks(ResourceType::Endpoint), 0);
    // Each change converged: pushed, and everything it sent acknowledged.
    let mut registry = prometheus_client::registry::Registry::default();
    control_plane.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics text");
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    let (count, sum) =
        (value("xds_proxy_convergence_seconds_count"), value("xds_proxy_convergence_seconds_sum"));
    assert!(count >= 3.0, "{api_type}: {count} convergences for 3 changes:\n{text}");
    assert!(sum / count < 1.0, "{api_type}: {:.3} s on average", sum / count);
    control_plane.shutdown.cancel();
}

/// Every proxy gets the same snapshot.
struct Fixed(super::Snapshot);

impl super::PushContext for Fixed {
    fn generate(&self, _proxy: &super::Proxy) -> super::Snapshot {
        self.0.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cluster_is_active_at_once_over_sotw() {
    a_changed_cluster_is_active_at_once("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cluster_is_active_at_once_over_delta() {
    a_changed_cluster_is_active_at_once("DELTA_GRPC").await;
}

// ---- streams are recycled before their token expires ----

/// Accepts JWT-shaped tokens (`<header>.<claims>.<sig>`) until their `exp`,
/// as the productpage pod's; an expired token is refused, as the API
/// server refuses it.
struct ExpiringTokens {
    reviews: AtomicUsize,
}

impl Authenticator for ExpiringTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenIdentity, Rejection>> {
        use base64::Engine;
        self.reviews.fetch_add(1, Ordering::SeqCst);
        let exp = token
            .split('.')
            .nth(1)
            .and_then(|claims| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|claims| claims["exp"].as_u64());
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let result = match exp {
            Some(exp) if exp > now => Ok(super::auth::tests::identity()),
            _ => Err(Rejection::InvalidToken("expired".into())),
        };
        Box::pin(async move { result })
    }
}

/// A token issued now that expires in `seconds`.
fn short_token(seconds: u64) -> String {
    use base64::Engine;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = format!("{{\"iat\":{now},\"exp\":{}}}", now + seconds);
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", encode("{}"), encode(&claims))
}

/// One cluster whose client TLS names the proxy's secrets, so Envoy asks
/// for them (the pass-through configuration names none).
struct SecretUser;

impl super::Generator for SecretUser {
    fn prepare(&self, _cluster: &ClusterSnapshot, _changes: &Changes) -> Arc<dyn super::PushContext> {
        Arc::new(SecretUser)
    }
}

impl super::PushContext for SecretUser {
    fn generate(&self, _proxy: &super::Proxy) -> super::Snapshot {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
        let settings: crate::api::destination_rule::ClientTlsSettings =
            serde_json::from_value(serde_json::json!({"mode": "ISTIO_MUTUAL"})).expect("tls settings");
        let cluster = Cluster {
            name: "mtls-peer".into(),
            connect_timeout: Some(crate::translate::seconds(1)),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static.into(),
            )),
            transport_socket: crate::translate::tls::client_transport_socket(&settings, "peer", &[]),
            ..Default::default()
        };
        super::Snapshot::new().with([cluster], |c| c.name.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_before_its_token_expires_and_envoy_comes_back_with_the_renewed_token() {
    let authenticator = Arc::new(ExpiringTokens { reviews: AtomicUsize::new(0) });
    let control_plane = ControlPlane::start_with_ca(
        authenticator.clone(),
        Arc::new(SecretUser),
        Some(Duration::from_secs(3600)),
    )
    .await;
    let envoy = Envoy::start(&control_plane, "recycle").await;
    // A token for 8 s: its stream must end by 7.2 s, before it expires.
    let token_path = envoy.dir.0.join("token");
    std::fs::write(&token_path, short_token(8)).expect("token");
    let serial = |certs: String| -> Option<String> {
        let certs: serde_json::Value = serde_json::from_str(&certs).ok()?;
        certs["certificates"].as_array()?.iter().find_map(|c| {
            let leaf = c["cert_chain"].as_array()?.first()?;
            leaf["subject_alt_names"].as_array()?.first()?["uri"].as_str()?;
            leaf["serial_number"].as_str().map(str::to_string)
        })
    };
    let first = envoy
        .wait_for("Envoy to hold its certificate", || async { serial(envoy.get("/certs").await?) })
        .await;
    // (Envoy::start wrote a token that is no JWT: its first tries were refused.)
    let refused_before = control_plane.metrics.rejected_streams("invalid_token");
    let reviews_before = authenticator.reviews.load(Ordering::SeqCst);
    // The kubelet renews the token well before it expires (at 80%).
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::write(&token_path, short_token(600)).expect("token");
    // The first stream ends at 90% of its token's life; Envoy reconnects
    // with the renewed token and gets a new certificate on the new stream.
    let second = envoy
        .wait_for("a new certificate on a new stream", || async {
            serial(envoy.get("/certs").await?).filter(|s| s != &first)
        })
        .await;
    assert_ne!(first, second);
    assert!(
        authenticator.reviews.load(Ordering::SeqCst) > reviews_before,
        "the new stream was reviewed again"
    );
    assert_eq!(
        control_plane.metrics.rejected_streams("invalid_token"),
        refused_before,
        "Envoy never had to present an expired token"
    );
    assert!(control_plane.metrics.certs_issued() >= 2);
    assert_eq!(control_plane.metrics.connected_proxies(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_asking_for_another_identitys_secret_gets_nothing_and_is_counted() {
    let control_plane = ControlPlane::start_with_ca(
        FakeAuthenticator::new(),
        Arc::new(super::Passthrough::new()),
        Some(Duration::from_secs(3600)),
    )
    .await;
    let dir = TempDir::new("foreign-secret");
    let root = dir.write("root-cert.pem", &control_plane.root_pem);
    let token = dir.write("token", TOKEN);
    // Clusters from a file (static clusters cannot name ADS secrets), whose
    // client TLS asks the control plane for another identity's secret and
    // for the proxy's own.
    let cds = dir.write(
        "cds.yaml",
        r#"version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: wants-another-identity
  type: STATIC
  connect_timeout: 1s
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context:
        tls_certificate_sds_secret_configs:
        - name: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
          sds_config: { ads: {}, resource_api_version: V3 }
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: wants-its-own
  type: STATIC
  connect_timeout: 1s
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context:
        tls_certificate_sds_secret_configs:
        - name: default
          sds_config: { ads: {}, resource_api_version: V3 }
"#,
    );
    let yaml = bootstrap(NODE_ID, control_plane.port, &root, &token, "GRPC").replace(
        "cds_config: { ads: {}, resource_api_version: V3 }",
        &format!(
            "cds_config: {{ path_config_source: {{ path: \"{}\" }}, resource_api_version: V3 }}",
            cds.display()
        ),
    );
    let config = dir.write("envoy.yaml", &yaml);
    let admin_path = dir.0.join("admin-address");
    let log = std::fs::File::create(dir.0.join("envoy.log")).expect("log file");
    let _process = tokio::process::Command::new(envoy_binary())
        .arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--component-log-level", "config:debug"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start envoy");
    for _ in 0..300 {
        if control_plane.metrics.secret_refusals() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.0.join("envoy.log")).unwrap_or_default();
    assert_eq!(control_plane.metrics.secret_refusals(), 1, "{log}");
    // Its own certificate came; the other identity's never does.
    let admin = std::fs::read_to_string(&admin_path).unwrap_or_default().trim().to_string();
    let mut certs = String::new();
    for _ in 0..100 {
        let url = format!("http://{admin}/certs");
        certs = tokio::task::spawn_blocking(move || {
            ureq::get(&url).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok())
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
        if certs.contains("spiffe://") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(certs.contains("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"), "{certs}");
    assert!(!certs.contains("bookinfo-reviews"), "{certs}");
}
