//! `mesh dashboard`: a live service graph of the mesh in a web page, served
//! on the user's machine (as `istioctl dashboard` opens its tools). The
//! graph comes from Prometheus ([`graph`]): workloads and the calls between
//! them with requests per second, error rate and p99 latency, an edge red
//! when its calls fail. A click on a workload shows its proxies'
//! configuration status (from every controller replica's /debug/syncz,
//! found through the kubeconfig as `mesh proxy-status` finds them)
//! and its recent traces (from Jaeger, when given). docs/observe.md.

pub mod graph;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::xds::debug::SyncStatus;

/// The page: markup, style and the script that draws the graph.
const PAGE: &str = include_str!("page.html");

#[derive(clap::Args, Clone, Debug)]
pub struct DashboardArgs {
    /// Prometheus, where the proxies' Istio metrics are
    /// (samples/addons/prometheus.yaml; `make run` prints its address).
    #[arg(long, env = "MESH_PROMETHEUS", default_value = "http://127.0.0.1:9090")]
    pub prometheus: String,
    /// Jaeger's query service, for a workload's recent traces
    /// (samples/addons/jaeger.yaml, port 16686); without it none are shown.
    #[arg(long, env = "MESH_JAEGER")]
    pub jaeger: Option<String>,
    /// Where the controllers are, for the proxies' configuration status
    /// (found through the kubeconfig unless --controller is given).
    #[command(flatten)]
    pub access: crate::ctl::Access,
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:20001")]
    pub listen: SocketAddr,
    /// The window rates and latencies are computed over (PromQL duration).
    #[arg(long, default_value = "1m")]
    pub window: String,
}

struct Dashboard {
    args: DashboardArgs,
    /// The bearer token for the controllers' /debug views, and when it was
    /// made: a ServiceAccount's lives 10 minutes (crate::ctl::token).
    token: tokio::sync::Mutex<Option<(String, tokio::time::Instant)>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// How long a token is used before it is asked for again.
const TOKEN_REUSE: Duration = Duration::from_secs(300);

/// Serves the dashboard until Ctrl-C.
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.window.chars().all(|c| c.is_ascii_alphanumeric()) && !args.window.is_empty(),
        "--window {:?}: write a Prometheus duration such as 1m or 30s",
        args.window
    );
    let listen = args.listen;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let state = Arc::new(Dashboard { args, token: Default::default(), client });
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/api/graph", get(graph_json))
        .route("/api/workload", get(workload_json))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    eprintln!("mesh dashboard: open http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

impl Dashboard {
    /// GETs `url` and reads its JSON.
    async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let request = http::Request::get(url)
            .header("Accept", "application/json")
            .body(Empty::new())
            .with_context(|| format!("{url} is not a URL"))?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .with_context(|| format!("{url}: no answer within 10 s"))?
            .with_context(|| format!("{url}: cannot reach it"))?;
        let status = response.status();
        let body =
            response.into_body().collect().await.with_context(|| format!("{url}: reading"))?.to_bytes();
        anyhow::ensure!(status.is_success(), "{url}: {status}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON"))
    }

    /// The token for the /debug views, made again after [`TOKEN_REUSE`].
    async fn token(&self) -> anyhow::Result<String> {
        let mut held = self.token.lock().await;
        match &*held {
            Some((token, at)) if at.elapsed() < TOKEN_REUSE => Ok(token.clone()),
            _ => {
                let token = self.args.access.token().await?;
                *held = Some((token.clone(), tokio::time::Instant::now()));
                Ok(token)
            }
        }
    }

    /// Every controller replica's proxies; what failed, as notes.
    async fn sync_statuses(&self, notes: &mut Vec<String>) -> Vec<SyncStatus> {
        let token = match self.token().await {
            Ok(token) => token,
            Err(e) => {
                notes.push(format!("the proxies' status: {e:#}"));
                return Vec::new();
            }
        };
        let controllers = match self.args.access.controllers().await {
            Ok(controllers) => controllers,
            Err(e) => {
                notes.push(format!("the proxies' status: {e:#}"));
                return Vec::new();
            }
        };
        let (statuses, failures) = crate::ctl::commands::ask_syncz(&controllers, &token).await;
        notes.extend(failures.iter().map(|e| format!("{e:#}")));
        statuses
    }

    /// A PromQL instant query's answer.
    async fn query(&self, promql: &str) -> anyhow::Result<Value> {
        let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let base = self.args.prometheus.trim_end_matches('/');
        self.get_json(&format!("{base}/api/v1/query?query={encoded}")).await
    }
}

/// An error as the page shows it.
fn failed(e: anyhow::Error) -> Response {
    (http::StatusCode::BAD_GATEWAY, format!("{e:#}")).into_response()
}

async fn graph_json(State(state): State<Arc<Dashboard>>) -> Response {
    let queries = graph::Queries::over(&state.args.window);
    let (requests, p99) = tokio::join!(state.query(&queries.requests), state.query(&queries.p99));
    match (requests, p99) {
        (Ok(requests), Ok(p99)) => Json(graph::build(&requests, &p99)).into_response(),
        (Err(e), _) | (_, Err(e)) => failed(e),
    }
}

#[derive(Deserialize)]
struct WorkloadQuery {
    namespace: String,
    workload: String,
    /// Its `app` label, which names its proxy's spans.
    app: Option<String>,
}

/// What the page shows of one workload.
#[derive(Serialize)]
struct WorkloadDetails {
    proxies: Vec<ProxyLine>,
    traces: Vec<TraceLine>,
    /// What could not be read, and why.
    notes: Vec<String>,
}

#[derive(Serialize)]
struct ProxyLine {
    pod: String,
    /// `in sync`, or which types are waiting or refused.
    status: String,
}

#[derive(Serialize)]
struct TraceLine {
    id: String,
    spans: usize,
    duration_ms: f64,
}

async fn workload_json(State(state): State<Arc<Dashboard>>, Query(query): Query<WorkloadQuery>) -> Response {
    let mut details = WorkloadDetails { proxies: Vec::new(), traces: Vec::new(), notes: Vec::new() };
    let statuses = state.sync_statuses(&mut details.notes).await;
    details.proxies.extend(proxies_of(&statuses, &query.namespace, &query.workload));
    if let Some(jaeger) = &state.args.jaeger {
        // A proxy's spans are named after its `--service-cluster`: `<app>.<namespace>`.
        let app = query.app.as_deref().filter(|a| *a != "unknown").unwrap_or(&query.workload);
        let service: String =
            form_urlencoded::byte_serialize(format!("{app}.{}", query.namespace).as_bytes()).collect();
        let url =
            format!("{}/api/traces?service={service}&limit=5&lookback=1h", jaeger.trim_end_matches('/'));
        match state.get_json(&url).await {
            Ok(answer) => details.traces = traces(&answer),
            Err(e) => details.notes.push(format!("{e:#}")),
        }
    }
    Json(details).into_response()
}

/// The proxies of a workload's pods (named `<workload>-…`), and whether each
/// holds what it was last sent.
fn proxies_of(statuses: &[SyncStatus], namespace: &str, workload: &str) -> Vec<ProxyLine> {
    let prefix = format!("{workload}-");
    statuses
        .iter()
        .filter(|s| s.namespace == namespace && (s.name == workload || s.name.starts_with(&prefix)))
        .map(|s| {
            let behind: Vec<String> = s
                .types
                .iter()
                .filter_map(|(t, sync)| match (&sync.nack, sync.sent == sync.acked) {
                    (Some(_), _) => Some(format!("{t} refused")),
                    (None, false) => Some(format!("{t} waiting")),
                    (None, true) => None,
                })
                .collect();
            let status = if behind.is_empty() { "in sync".to_string() } else { behind.join(", ") };
            ProxyLine { pod: s.name.clone(), status }
        })
        .collect()
}

/// Jaeger's traces, newest first as it answers.
fn traces(answer: &Value) -> Vec<TraceLine> {
    answer["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|trace| {
            let spans = trace["spans"].as_array().map(Vec::as_slice).unwrap_or_default();
            let start = spans.iter().filter_map(|s| s["startTime"].as_f64()).fold(f64::INFINITY, f64::min);
            let end = spans
                .iter()
                .filter_map(|s| Some(s["startTime"].as_f64()? + s["duration"].as_f64()?))
                .fold(0.0, f64::max);
            TraceLine {
                id: trace["traceID"].as_str().unwrap_or_default().to_string(),
                spans: spans.len(),
                duration_ms: if end > start { (end - start) / 1000.0 } else { 0.0 },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_workloads_proxies_are_its_pods_and_say_what_they_wait_for() {
        let status = |name: &str, sent: &str, acked: &str, nack: bool| -> SyncStatus {
            serde_json::from_value(json!({
                "proxy": format!("sidecar~10.0.0.1~{name}.default~default.svc.cluster.local"),
                "pod": format!("default/{name}"), "namespace": "default", "name": name,
                "controller": "mesh-0", "protocol": "Delta", "connected_since": "2026-12-06T09:00:00Z",
                "types": {"lds": {
                    "type_url": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "sent": sent, "acked": acked, "resources": 2,
                    "nack": if nack { json!({"version": sent, "error": "bad", "at": "2026-12-06T09:00:01Z"}) } else { Value::Null },
                    "last_nack": null,
                }},
            }))
            .expect("a status")
        };
        let statuses = [
            status("reviews-v1-7d4b9c-x2", "a", "a", false),
            status("reviews-v1-7d4b9c-y3", "b", "a", false),
            status("reviews-v10-5f6-z1", "a", "a", false),
            status("ratings-v1-1-a", "a", "a", false),
        ];
        let lines = proxies_of(&statuses, "default", "reviews-v1");
        let shown: Vec<(&str, &str)> = lines.iter().map(|l| (l.pod.as_str(), l.status.as_str())).collect();
        // reviews-v10's pods are another workload's.
        assert_eq!(shown, [("reviews-v1-7d4b9c-x2", "in sync"), ("reviews-v1-7d4b9c-y3", "lds waiting")]);
        let refused = proxies_of(&[status("ratings-v1-1-a", "b", "a", true)], "default", "ratings-v1");
        assert_eq!(refused[0].status, "lds refused");
    }

    #[test]
    fn a_traces_duration_runs_from_its_first_span_to_the_end_of_its_last() {
        let answer = json!({"data": [{"traceID": "abc", "spans": [
            {"startTime": 1_000_000.0, "duration": 500.0},
            {"startTime": 1_000_100.0, "duration": 2_000.0},
        ]}]});
        let lines = traces(&answer);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].id.as_str(), lines[0].spans), ("abc", 2));
        assert!((lines[0].duration_ms - 2.1).abs() < 1e-9);
        assert!(traces(&json!({"errors": ["no"]})).is_empty());
    }
}
