//! The key sets (JWKS) of the JWT issuers that policies name by
//! `jwksUri`, fetched by the controller and sent to sidecars inline, so a
//! sidecar needs no route to an issuer (as Istio's Pilot did).
//!
//! [`Jwks`] holds the last good key set of every URL; the generator reads
//! a snapshot of it per push ([`Jwks::fetched`]), and a change of keys
//! moves its revision, which the push loop treats as a change of the mesh
//! ([`super::Generator::changes`]). [`run`] keeps it current: it fetches
//! the key sets the index's policies name ([`crate::model::jwt::jwks_uris`])
//! when first named, then every refresh interval (Istio: 20 minutes);
//! a failed fetch is logged and counted, retried sooner, and the last good
//! keys stay. Keys of a URL no policy names any more are dropped. A key
//! set never fetched is never sent: translation then refuses the issuer's
//! tokens ([`crate::translate::jwt::NO_KEYS`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::model::jwt::check_key_set;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::index::SharedIndex;
use crate::model::jwt::jwks_uris;

/// Istio's refresh interval of fetched key sets.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);

/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// A fetch that takes longer is a failure.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Larger key sets are refused (a JWKS is a few kilobytes).
const MAX_BODY: usize = 1 << 20;

/// The fetched key sets, by URL: the last good one of each.
pub type FetchedKeys = Arc<BTreeMap<String, String>>;

/// The key sets and their revision.
pub struct Jwks {
    keys: watch::Sender<FetchedKeys>,
    revision: watch::Sender<u64>,
    metrics: JwksMetrics,
}

impl Default for Jwks {
    fn default() -> Self {
        Self::new(JwksMetrics::default())
    }
}

impl Jwks {
    pub fn new(metrics: JwksMetrics) -> Self {
        Self { keys: watch::Sender::new(Arc::default()), revision: watch::Sender::new(0), metrics }
    }

    /// The key sets as they are now.
    pub fn fetched(&self) -> FetchedKeys {
        self.keys.borrow().clone()
    }

    /// A receiver that sees the revision move whenever a key set changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Keeps `keys` for `uri`; the revision moves only when they differ.
    pub fn store(&self, uri: &str, keys: String) {
        let changed = self.keys.send_if_modified(|all| {
            if all.get(uri) == Some(&keys) {
                return false;
            }
            Arc::make_mut(all).insert(uri.to_string(), keys);
            true
        });
        if changed {
            tracing::info!(%uri, "JWT issuer's key set changed");
            self.bump();
        }
    }

    /// Drops the key sets of URLs no longer `wanted`.
    fn retain(&self, wanted: &BTreeSet<String>) {
        let changed = self.keys.send_if_modified(|all| {
            if all.keys().all(|k| wanted.contains(k)) {
                return false;
            }
            Arc::make_mut(all).retain(|k, _| wanted.contains(k));
            true
        });
        if changed {
            self.bump();
        }
    }

    fn bump(&self) {
        self.metrics.key_sets.set(self.keys.borrow().len() as i64);
        self.revision.send_modify(|r| *r += 1);
    }
}

/// Fetches a key set's body from its URL.
pub trait Fetch: Send + Sync + 'static {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<String, String>>;
}

/// HTTP(S) with the system's trust roots, through the client kube uses.
pub struct HttpFetch {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
}

impl HttpFetch {
    /// A client trusting the system's roots (none readable: only http://
    /// URLs can be fetched, and https:// ones fail, logged).
    pub fn new() -> Result<Self, String> {
        let native = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                errors = ?native.errors,
                "no trust roots found on this system: JWT key sets can be fetched only from http:// URLs"
            );
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS settings: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
        Ok(Self { client })
    }
}

impl Fetch for HttpFetch {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let url: http::Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
            let request = http::Request::get(url)
                .header(http::header::ACCEPT, "application/json")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let response = self.client.request(request).await.map_err(|e| format!("{e:#}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("the server answered {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_string())
        })
    }
}

/// How often to fetch.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub refresh: Duration,
    pub retry: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { refresh: REFRESH, retry: RETRY }
    }
}

/// Keeps `jwks` holding the key sets the index's policies name, until
/// `shutdown`.
pub async fn run(
    jwks: Arc<Jwks>,
    index: SharedIndex,
    fetcher: Arc<dyn Fetch>,
    schedule: Schedule,
    shutdown: CancellationToken,
) {
    let mut config = index.lock().subscribe_config();
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        config.borrow_and_update();
        let wanted = jwks_uris(index.lock().state());
        due.retain(|uri, _| wanted.contains(uri));
        jwks.retain(&wanted);
        let now = Instant::now();
        for uri in &wanted {
            if due.get(uri).is_some_and(|at| *at > now) {
                continue;
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(FETCH_TIMEOUT, fetcher.fetch(uri)) => {
                    r.unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
                }
            };
            match result.and_then(|body| check_key_set(&body).map(|()| body)) {
                Ok(body) => {
                    jwks.metrics.fetched(true);
                    jwks.store(uri, body);
                    due.insert(uri.clone(), Instant::now() + schedule.refresh);
                }
                Err(error) => {
                    jwks.metrics.fetched(false);
                    let kept = jwks.fetched().contains_key(uri);
                    tracing::warn!(
                        %uri,
                        %error,
                        kept_last_good_keys = kept,
                        retry_in = ?schedule.retry,
                        "fetching a JWT issuer's key set failed{}",
                        if kept { "" } else { ": its tokens are refused until it succeeds" }
                    );
                    due.insert(uri.clone(), Instant::now() + schedule.retry);
                }
            }
        }
        let next = due.values().min().copied().unwrap_or_else(|| Instant::now() + schedule.refresh);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

/// What fetching counts, on /metrics with the `mesh_` prefix.
#[derive(Clone, Default)]
pub struct JwksMetrics {
    fetches: Family<ResultLabel, Counter>,
    key_sets: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl JwksMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwks_fetches",
            "Fetches of JWT issuers' key sets (jwksUri), by result: ok, or error (the last good keys stay)",
            self.fetches.clone(),
        );
        registry.register("jwks_key_sets", "Key sets held for the sidecars, by URL", self.key_sets.clone());
    }

    fn fetched(&self, ok: bool) {
        self.fetches.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Fetches by result, for tests.
    pub fn count(&self, ok: bool) -> u64 {
        self.fetches.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).get()
    }
}

#[cfg(test)]
mod tests;
