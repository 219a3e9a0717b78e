//! The tonic shell around the ADS state machine: TLS (the controller's
//! serving certificate, renewed in place), HTTP/2, and one task per stream.
//!
//! A stream is served only once it is authenticated and authorized: the
//! first request must arrive, carry the node id, and come with a bearer
//! token that proves the pod the node id names ([`super::auth`]). A
//! refusal ends the stream with a gRPC status saying why, a warning in the
//! log and a count in `mesh_xds_rejected_streams_total{reason}`.
//!
//! An authorized stream gets a snapshot from the [`Generator`], rebuilt
//! whenever the index moves; the [`SotwStream`] decides what to send.
//! On shutdown every stream ends with `Unavailable`, so proxies reconnect
//! to another replica, and connections are closed with a GOAWAY.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Authenticator, Refusal, Rejection};
use super::metrics::XdsMetrics;
use super::proxy::{Proxy, ProxyId};
use super::snapshot::{self, Generator, Snapshot};
use super::stream::{Event, SotwStream, Step};
use super::types;
use crate::index::SharedIndex;
use crate::model::ObjectKey;
use crate::webhook::server::ServingCert;

/// What a stream sends back: discovery responses, then a final status.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an authenticated proxy waits for the index to learn of its pod
/// (a sidecar can start before the pod's watch event arrives).
const POD_WAIT: Duration = Duration::from_secs(5);
/// Responses queued per stream before the stream stops reading.
const QUEUE: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find connections whose proxy vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to close before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The aggregated discovery service: authenticates streams and runs them.
#[derive(Clone)]
pub struct Ads {
    inner: Arc<Shared>,
}

struct Shared {
    authenticator: Arc<dyn Authenticator>,
    index: SharedIndex,
    generator: Arc<dyn Generator>,
    metrics: XdsMetrics,
    shutdown: CancellationToken,
    pod_wait: Duration,
}

impl Ads {
    /// A service that gives every authorized proxy the pass-through
    /// configuration; `shutdown` ends its streams.
    pub fn new(
        authenticator: Arc<dyn Authenticator>,
        index: SharedIndex,
        metrics: XdsMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_generator(authenticator, index, Arc::new(snapshot::passthrough), metrics, shutdown)
    }

    /// A service whose proxies get what `generator` builds for them.
    pub fn with_generator(
        authenticator: Arc<dyn Authenticator>,
        index: SharedIndex,
        generator: Arc<dyn Generator>,
        metrics: XdsMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                authenticator,
                index,
                generator,
                metrics,
                shutdown,
                pod_wait: POD_WAIT,
            }),
        }
    }

    /// Shortens the wait for an unknown pod, so tests need not sit through it.
    #[cfg(test)]
    pub(crate) fn with_pod_wait(mut self, wait: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.inner) {
            shared.pod_wait = wait;
        }
        self
    }

    /// Admits a stream and starts serving it. `authorization` is the
    /// value of the stream's `authorization` metadata; `inbound` the
    /// proxy's requests.
    pub async fn open<S>(&self, authorization: Option<&str>, mut inbound: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let shared = &self.inner;
        let (proxy, first) = match shared.admit(authorization, &mut inbound).await {
            Ok(admitted) => admitted,
            Err((rejection, node_id)) => {
                shared.metrics.rejected(rejection.reason());
                tracing::warn!(
                    node_id = node_id.as_deref().unwrap_or("<none>"),
                    reason = rejection.reason(),
                    error = %rejection,
                    "xDS stream refused"
                );
                return Err(status_of(&rejection));
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(Session::start(self.inner.clone(), proxy, first, inbound, tx));
        let responses =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Box::pin(responses))
    }
}

impl Shared {
    /// Reads the first request and checks who sent it. On refusal, the node
    /// id (if one came) goes with the reason into the log.
    async fn admit<S>(
        &self,
        authorization: Option<&str>,
        inbound: &mut S,
    ) -> Result<(Proxy, DiscoveryRequest), (Rejection, Option<String>)>
    where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
    {
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(request))) => request,
            _ => return Err((Rejection::NoRequest, None)),
        };
        let Some(node_id) = first.node.as_ref().map(|n| n.id.clone()).filter(|id| !id.is_empty()) else {
            return Err((Rejection::NoNode, None));
        };
        let fail = |rejection| (rejection, Some(node_id.clone()));
        let token = auth::bearer_token(authorization).map_err(fail)?;
        let id = ProxyId::parse(&node_id).map_err(|e| fail(e.into()))?;
        let identity = self.authenticator.authenticate(token).await.map_err(fail)?;
        self.authorize(&id, &identity).await.map_err(fail)?;
        Ok((Proxy { id, identity }, first))
    }

    /// [`auth::authorize`] against the index, giving the index a moment to
    /// learn of a pod it does not know yet.
    async fn authorize(&self, id: &ProxyId, identity: &auth::TokenIdentity) -> Result<(), Rejection> {
        let key = ObjectKey::new(&id.namespace, &id.pod);
        let mut revisions = self.index.lock().subscribe();
        let deadline = tokio::time::Instant::now() + self.pod_wait;
        loop {
            let verdict = auth::authorize(id, identity, self.index.lock().workloads.get(&key));
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

    fn snapshot(&self, proxy: &Proxy) -> Arc<Snapshot> {
        let index = self.index.lock();
        Arc::new(self.generator.generate(proxy, &index))
    }
}

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
struct Session {
    shared: Arc<Shared>,
    proxy: Proxy,
    machine: SotwStream,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Session {
    async fn start<S>(
        shared: Arc<Shared>,
        proxy: Proxy,
        first: DiscoveryRequest,
        inbound: S,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let _connected = shared.metrics.connected();
        // Subscribe before building, so a change in between is not missed.
        let revisions = shared.index.lock().subscribe();
        let machine = SotwStream::new(shared.snapshot(&proxy));
        let account = &proxy.identity.service_account;
        tracing::info!(proxy = %proxy.id, service_account = %account, "proxy connected");
        let mut session = Session { shared, proxy, machine, tx };
        let ended = session.run(first, inbound, revisions).await;
        tracing::info!(proxy = %session.proxy.id, reason = ended, "proxy disconnected");
    }

    /// Serves the stream until it ends; returns why, for the log.
    async fn run<S>(
        &mut self,
        first: DiscoveryRequest,
        mut inbound: S,
        mut revisions: watch::Receiver<u64>,
    ) -> &'static str
    where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
    {
        if let Err(ended) = self.on_request(&first).await {
            return ended;
        }
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.end(Status::unavailable("the control plane is shutting down; reconnect")).await;
                    return "control plane shutdown";
                }
                _ = self.tx.closed() => return "proxy went away",
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if let Err(ended) = self.on_request(&request).await {
                            return ended;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(proxy = %self.proxy.id, %status, "ADS stream broke");
                        return "stream error";
                    }
                    None => return "proxy closed the stream",
                },
                changed = revisions.changed() => {
                    if changed.is_err() {
                        self.end(Status::unavailable("the control plane lost its index; reconnect")).await;
                        return "index gone";
                    }
                    let snapshot = self.shared.snapshot(&self.proxy);
                    let step = self.machine.on_snapshot(snapshot);
                    if let Err(ended) = self.send(step).await {
                        return ended;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, request: &DiscoveryRequest) -> Result<(), &'static str> {
        match self.machine.on_request(request) {
            Ok(step) => self.send(step).await,
            Err(error) => {
                tracing::warn!(proxy = %self.proxy.id, %error, "ADS protocol error");
                self.end(Status::invalid_argument(error.to_string())).await;
                Err("protocol error")
            }
        }
    }

    /// Ends the stream with `status`, if the proxy is still there to hear it.
    async fn end(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    /// Logs and counts what happened, then sends the responses.
    async fn send(&mut self, step: Step) -> Result<(), &'static str> {
        let metrics = &self.shared.metrics;
        let proxy = &self.proxy.id;
        for event in step.events {
            match event {
                Event::Ack { type_url, version } => {
                    metrics.acked(&type_url);
                    tracing::debug!(%proxy, r#type = types::label(&type_url), %version, "ACK");
                }
                Event::Nack { type_url, version, error } => {
                    metrics.nacked(&type_url);
                    tracing::warn!(%proxy, %type_url, %version, %error, "proxy refused configuration (NACK)");
                }
                Event::StaleNonce { type_url, nonce } => {
                    tracing::debug!(%proxy, r#type = types::label(&type_url), %nonce, "stale nonce ignored");
                }
            }
        }
        for response in step.responses {
            metrics.pushed(&response.type_url);
            tracing::debug!(
                %proxy,
                r#type = types::label(&response.type_url),
                version = %response.version_info,
                resources = response.resources.len(),
                nonce = %response.nonce,
                "push"
            );
            if self.tx.send(Ok(response)).await.is_err() {
                return Err("proxy went away");
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let authorization =
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let responses = self.open(authorization.as_deref(), request.into_inner()).await?;
        Ok(Response::new(responses))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponseStream>, Status> {
        Err(Status::unimplemented(
            "incremental (Delta) xDS is not served yet: set the bootstrap's ads_config api_type to GRPC",
        ))
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
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
    let service = AggregatedDiscoveryServiceServer::new(ads);
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
        let (acceptor, service, shutdown) = (acceptor.clone(), service.clone(), shutdown.clone());
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
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
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
