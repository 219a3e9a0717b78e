//! Calling the other Bookinfo services: where they are (a Kubernetes Service
//! name and port, overridable by the same environment variables the real
//! images read), a plain-HTTP client that resolves names through the system
//! resolver, and the trace and user headers each hop copies onto its calls so
//! that Envoy can join the spans and route on `end-user`.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Request headers copied from an incoming request onto the calls it causes,
/// as the real productpage and reviews do.
pub const PROPAGATED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "end-user",
    "user-agent",
    "cookie",
];

/// The headers of `incoming` that are on [`PROPAGATED_HEADERS`], every value
/// kept; nothing is invented (Envoy adds `x-request-id` when it is missing).
pub fn propagate(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED_HEADERS {
        let name = HeaderName::from_static(name);
        for value in incoming.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Where one upstream service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    pub port: u16,
}

impl Service {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }

    /// Reads `<NAME>_HOSTNAME` (default `name`), `<NAME>_SERVICE_PORT`
    /// (default 9080) and `SERVICES_DOMAIN` (appended as `.<domain>` when set)
    /// through `lookup`, as the real productpage does.
    pub fn from_lookup(name: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let prefix = name.to_ascii_uppercase();
        let non_empty = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let mut host = non_empty(&format!("{prefix}_HOSTNAME")).unwrap_or_else(|| name.to_string());
        if let Some(domain) = non_empty("SERVICES_DOMAIN") {
            host = format!("{host}.{domain}");
        }
        let port_key = format!("{prefix}_SERVICE_PORT");
        let port = match non_empty(&port_key) {
            Some(v) => v.trim().parse().with_context(|| format!("{port_key}={v:?} is not a port number"))?,
            None => 9080,
        };
        Ok(Self::new(host, port))
    }

    /// Like [`Service::from_lookup`], reading the process environment.
    pub fn from_env(name: &str) -> anyhow::Result<Self> {
        Self::from_lookup(name, |k| std::env::var(k).ok())
    }

    /// `http://host:port` followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{path}", self.host, self.port)
        } else {
            format!("http://{}:{}{path}", self.host, self.port)
        }
    }
}

/// An upstream's answer: status, content type and the whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The most of an upstream body that is read; Bookinfo's are tiny.
const MAX_BODY: usize = 1 << 20;

/// A plain HTTP/1 client; names resolve through getaddrinfo.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        // No connection reuse: like the real apps (a new connection per
        // call), so kube-proxy spreads calls over a Service's endpoints.
        let inner = HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Self { inner }
    }

    /// GETs `url` with `headers`, reading the whole reply within `timeout`.
    pub async fn get(&self, url: &str, headers: HeaderMap, timeout: Duration) -> anyhow::Result<Reply> {
        let mut request =
            Request::get(url).body(Empty::new()).with_context(|| format!("bad upstream URL {url:?}"))?;
        *request.headers_mut() = headers;
        let call = async {
            let response = self.inner.request(request).await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!(e))?
                .to_bytes();
            anyhow::Ok(Reply { status, content_type, body })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply.with_context(|| format!("GET {url}")),
            Err(_) => bail!("GET {url}: no reply within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_defaults_and_overrides() {
        let none = Service::from_lookup("details", |_| None).unwrap();
        assert_eq!(none, Service::new("details", 9080));
        assert_eq!(none.url("/details/0"), "http://details:9080/details/0");

        let set = Service::from_lookup("reviews", |k| match k {
            "REVIEWS_HOSTNAME" => Some("reviews-canary".into()),
            "REVIEWS_SERVICE_PORT" => Some("9081".into()),
            "SERVICES_DOMAIN" => Some("default.svc.cluster.local".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.url("/x"), "http://reviews-canary.default.svc.cluster.local:9081/x");

        assert!(
            Service::from_lookup("ratings", |k| (k == "RATINGS_SERVICE_PORT").then(|| "tcp://x".into()))
                .is_err()
        );
        assert_eq!(Service::new("::1", 1).url("/"), "http://[::1]:1/");
    }

    #[test]
    fn propagate_keeps_listed_headers_only() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        incoming.insert("b3", HeaderValue::from_static("1-2-1"));
        incoming.insert("authorization", HeaderValue::from_static("secret"));
        incoming.insert("host", HeaderValue::from_static("productpage"));
        let out = propagate(&incoming);
        assert_eq!(out.len(), 2);
        assert_eq!(out["x-request-id"], "abc");
        assert_eq!(out["b3"], "1-2-1");
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out() {
        // Accepts connections but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = std::time::Instant::now();
        let reply = Client::new()
            .get(&format!("http://{addr}/details/0"), HeaderMap::new(), Duration::from_millis(200))
            .await;
        assert!(reply.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
