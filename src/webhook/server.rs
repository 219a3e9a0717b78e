//! The webhooks' HTTPS server: /validate (Istio configuration) and
//! /inject (the sidecar injector). Its certificate is the controller's
//! [`ServingCert`], which each TLS handshake asks, so a renewed certificate
//! is used by the next connection without a restart or a dropped request.
//! The validation context (what Services, DestinationRules and ServiceRoles
//! exist) is built from the index's state once per change of what
//! validation reads (the index's config revision), not per request and not
//! per Pod change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use tokio_util::sync::CancellationToken;

use super::metrics::WebhookMetrics;
use super::{admission, injection};
use crate::ca::serving::{ServingCert, provider};
use crate::index::{Namespaces, SharedIndex};
use crate::inject::Injector;
use crate::model::ObjectKey;
use crate::validate::Context;

/// The TLS settings of the webhook: TLS 1.2+, HTTP/2 or HTTP/1.1.
pub fn tls_config(cert: Arc<ServingCert>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The last context built, and the config revision it was built from.
type ContextCache = Arc<Mutex<Option<(u64, Arc<Context>)>>>;

#[derive(Clone)]
struct Webhook {
    index: SharedIndex,
    /// Whether the index has synced: until then, warnings that need the
    /// cluster's contents are not given (Context::default()).
    synced: Arc<dyn Fn() -> bool + Send + Sync>,
    cache: ContextCache,
    injector: Arc<Injector>,
    metrics: WebhookMetrics,
}

impl Webhook {
    fn context(&self) -> Arc<Context> {
        if !(self.synced)() {
            return Arc::new(Context::default());
        }
        let index = self.index.lock();
        let revision = index.config_revision();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, ctx)) = cache.as_ref()
            && *seen == revision
        {
            return ctx.clone();
        }
        // A Gateway applied in the same `kubectl apply` as the VirtualService
        // that names it (Istio's bookinfo-gateway.yaml) is not indexed yet
        // when the VirtualService is reviewed: whether it exists is said by
        // status, as Istio leaves it to `istioctl analyze`.
        let ctx = Arc::new(Context::of(index.state()).without_gateways());
        *cache = Some((revision, ctx.clone()));
        ctx
    }
}

async fn validate(
    State(webhook): State<Webhook>,
    axum::Json(review): axum::Json<AdmissionReview<DynamicObject>>,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let answer = admission::review(review, &webhook.context());
    let allowed = answer.response.as_ref().is_some_and(|r| r.allowed);
    webhook.metrics.reviewed("validate", allowed, started.elapsed().as_secs_f64());
    axum::Json(answer)
}

async fn inject(
    State(webhook): State<Webhook>,
    axum::Json(review): axum::Json<AdmissionReview<Pod>>,
) -> axum::Json<injection::Answer> {
    let labels = |namespace: &str| {
        if !(webhook.synced)() {
            return None;
        }
        webhook.index.lock().get::<Namespaces>(&ObjectKey::new("", namespace)).map(|n| n.labels.clone())
    };
    let started = Instant::now();
    let answer = injection::review(review, labels, &webhook.injector);
    webhook.metrics.reviewed("inject", answer.allowed(), started.elapsed().as_secs_f64());
    axum::Json(answer)
}

/// Serves /validate and /inject on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: Arc<ServingCert>,
    index: SharedIndex,
    synced: Arc<dyn Fn() -> bool + Send + Sync>,
    injector: Injector,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> Result<(), rustls::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert)?));
    let webhook =
        Webhook { index, synced, cache: Arc::new(Mutex::new(None)), injector: Arc::new(injector), metrics };
    // The API server accepts objects up to 3 MiB; all of them must reach
    // the rules (a too-large body gets their message, not a transport error).
    let app = Router::new()
        .route("/validate", post(validate))
        .route("/inject", post(inject))
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(webhook);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        // Small request, small answer: do not let Nagle hold the answer's last segment.
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}
