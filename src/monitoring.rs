//! The controller's own HTTP endpoints: /healthz (the process answers),
//! /readyz (every start-up task is done: caches synced; and no long-running
//! task has failed, else it names the task and why), /metrics
//! (Prometheus text), /debug/configz (what the index holds, as JSON),
//! /debug/syncz (every connected proxy and how far it is in sync, read by
//! `mesh proxy-status`) and /debug/config_dump?proxy=<node id or ns/pod>
//! (what one proxy holds, secrets redacted; see [`crate::xds::debug`]).
//!
//! The first three are open: the kubelet and Prometheus read them without
//! credentials. The /debug views answer only callers the Kubernetes API
//! authorizes ([`access`]).

pub mod access;
pub mod review;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::index::{self, SharedIndex};
use crate::readiness::Readiness;
use crate::xds::Connections;
use access::{DebugAccess, Decision};

#[derive(Clone)]
struct Monitoring {
    registry: Arc<Registry>,
    readiness: Readiness,
    index: SharedIndex,
    proxies: Connections,
    access: Arc<DebugAccess>,
}

/// Serves the monitoring endpoints on an already bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    index: SharedIndex,
    proxies: Connections,
    access: Arc<DebugAccess>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Monitoring { registry: Arc::new(registry), readiness, index, proxies, access };
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

fn router(state: Monitoring) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Open like /healthz: `mesh version` shows it to anyone who reaches the port.
        .route("/version", get(|| async { axum::Json(serde_json::json!({"version": crate::VERSION})) }))
        .merge(guarded(&state, "/debug/configz", get(configz)))
        .merge(guarded(&state, "/debug/syncz", get(syncz)))
        .merge(guarded(&state, "/debug/config_dump", get(config_dump)))
        .with_state(state)
}

/// A /debug view at `path`, behind [`authorized`].
fn guarded(state: &Monitoring, path: &'static str, view: MethodRouter<Monitoring>) -> Router<Monitoring> {
    let gate = Gate { monitoring: state.clone(), path };
    Router::new().route(path, view).route_layer(middleware::from_fn_with_state(gate, authorized))
}

/// What [`authorized`] checks a request against: the view's own route, as
/// the ClusterRole's rules name it, whatever encoding the request used to
/// reach it.
#[derive(Clone)]
struct Gate {
    monitoring: Monitoring,
    path: &'static str,
}

/// Lets a request for a /debug view through only if the API server
/// authorizes its caller for the view's path.
async fn authorized(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let (m, path) = (gate.monitoring, gate.path);
    // A header that is not text is no bearer token.
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
    let decision = m.access.check(authorization, path).await;
    if decision.is_allowed() {
        return next.run(request).await;
    }
    match &decision {
        Decision::Forbidden { user, path } => tracing::info!(%user, %path, "refused a debug view"),
        Decision::Unavailable(why) => tracing::warn!(%path, %why, "cannot check access to a debug view"),
        _ => tracing::debug!(%path, ?decision, "refused a debug view"),
    }
    let (status, message) = m.access.refusal(&decision);
    let mut response = (status, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for monitoring: {e} (is another mesh controller running? set --monitoring-addr)"))
}

async fn readyz(State(m): State<Monitoring>) -> Response {
    readiness_answer(&m.readiness).into_response()
}

/// The answer of /readyz: a failure first (the controller is exiting),
/// then whatever start-up still waits for.
fn readiness_answer(readiness: &Readiness) -> (StatusCode, String) {
    let failures = readiness.failures();
    if !failures.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {}\n", failures.join("; ")));
    }
    let pending = readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for: {}\n", pending.join(", ")))
    }
}

async fn metrics(State(m): State<Monitoring>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &m.registry) {
        Ok(()) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response(),
    }
}

/// The Istio configuration in the index, by kind, and counts of the rest.
async fn configz(State(m): State<Monitoring>) -> Response {
    let ix = m.index.lock();
    let state = ix.state();
    let body = json!({
        "revision": ix.revision(),
        "VirtualService": state.virtual_services.values().collect::<Vec<_>>(),
        "DestinationRule": state.destination_rules.values().collect::<Vec<_>>(),
        "Gateway": state.gateways.values().collect::<Vec<_>>(),
        "ServiceEntry": state.service_entries.values().collect::<Vec<_>>(),
        "Sidecar": state.sidecars.values().collect::<Vec<_>>(),
        "ServiceRole": state.service_roles.values().collect::<Vec<_>>(),
        "ServiceRoleBinding": state.service_role_bindings.values().collect::<Vec<_>>(),
        "ClusterRbacConfig": state.cluster_rbac_configs.values().collect::<Vec<_>>(),
        "RbacConfig": state.rbac_configs.values().collect::<Vec<_>>(),
        "PeerAuthentication": state.peer_authentications.values().collect::<Vec<_>>(),
        "RequestAuthentication": state.request_authentications.values().collect::<Vec<_>>(),
        "Policy": state.policies.values().collect::<Vec<_>>(),
        "MeshPolicy": state.mesh_policies.values().collect::<Vec<_>>(),
        "meshConfig": {
            "rootNamespace": state.mesh_config.root_namespace,
            "outboundTrafficPolicy": {"mode": state.mesh_config.outbound_traffic_policy.as_str()},
        },
        "counts": {
            "Service": ix.count::<index::Services>(),
            "EndpointSlice": ix.count::<index::EndpointSlices>(),
            "Pod": ix.count::<index::Pods>(),
            "Namespace": ix.count::<index::Namespaces>(),
        },
    });
    drop(ix);
    axum::Json(body).into_response()
}

/// Every connected proxy: per resource type, what it was sent, what it
/// acknowledged, its latest refusal.
async fn syncz(State(m): State<Monitoring>) -> Response {
    axum::Json(crate::xds::debug::syncz(&m.proxies)).into_response()
}

#[derive(serde::Deserialize)]
struct ProxyQuery {
    proxy: Option<String>,
}

/// What one proxy holds, by type.
async fn config_dump(State(m): State<Monitoring>, Query(query): Query<ProxyQuery>) -> Response {
    let Some(proxy) = query.proxy.filter(|p| !p.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "name a proxy: ?proxy=<node id>, <namespace>/<pod> or <pod>.<namespace>\n",
        )
            .into_response();
    };
    match crate::xds::debug::config_dump(&m.proxies, &proxy) {
        Some(dump) => axum::Json(dump).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no proxy {proxy} is connected to this controller (see /debug/syncz)\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, IndexMetrics};
    use access::tests::FixedReviewer;

    /// GETs `path` from the server at `addr` with an optional bearer
    /// token: the status, the WWW-Authenticate header and the body.
    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Option<String>, String) {
        let url = format!("http://{addr}{path}");
        let token = token.map(|t| format!("Bearer {t}"));
        tokio::task::spawn_blocking(move || {
            let mut request = ureq::get(&url);
            if let Some(token) = &token {
                request = request.header("Authorization", token);
            }
            let mut response =
                request.config().http_status_as_error(false).build().call().expect("the server answers");
            let challenge =
                response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
            (response.status().as_u16(), challenge, response.body_mut().read_to_string().unwrap_or_default())
        })
        .await
        .expect("the request ran")
    }

    #[tokio::test]
    async fn health_and_metrics_stay_open_and_debug_views_answer_only_authorized_callers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let reviewer = Arc::new(FixedReviewer::default());
        let access = Arc::new(DebugAccess::new(reviewer.clone(), access::DEBUG_CLUSTER_ROLE));
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Registry::default(),
            readiness,
            SharedIndex::new(Index::new(IndexMetrics::default())),
            Connections::new("mesh-0"),
            access,
            shutdown.clone(),
        ));

        for path in ["/healthz", "/readyz", "/metrics"] {
            let (status, _, body) = get(addr, path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
        assert_eq!(reviewer.calls(), 0, "the open endpoints ask no one");

        for path in ["/debug/configz", "/debug/syncz", "/debug/config_dump?proxy=default/p"] {
            let (status, challenge, body) = get(addr, path, None).await;
            assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")), "{path}: {body}");
            assert!(body.contains("Authorization: Bearer <token>"), "{body}");

            let (status, _, body) = get(addr, path, Some("forged")).await;
            assert_eq!(status, 401, "{path}: {body}");

            let (status, _, body) = get(addr, path, Some("nobody")).await;
            assert_eq!(status, 403, "{path}: {body}");
            let bare = path.split('?').next().unwrap_or(path);
            assert!(body.contains(&format!("may not get {bare}:")), "the refusal names the path: {body}");
            assert!(body.contains("system:serviceaccount:tools:nobody"), "{body}");
        }

        let (status, _, body) = get(addr, "/debug/configz", Some("admin")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"revision\""), "{body}");
        let (status, _, body) = get(addr, "/debug/syncz", Some("admin")).await;
        assert_eq!((status, body.as_str()), (200, "[]"));
        // Authorized, the view answers as it would: no such proxy here.
        let (status, _, body) = get(addr, "/debug/config_dump?proxy=default/p", Some("admin")).await;
        assert_eq!(status, 404, "{body}");
        // A token allowed one view is refused another.
        assert_eq!(get(addr, "/debug/syncz", Some("viewer")).await.0, 200);
        assert_eq!(get(addr, "/debug/configz", Some("viewer")).await.0, 403);
        // The API server cannot be asked: 503, and the view is not shown.
        let (status, _, body) = get(addr, "/debug/syncz", Some("down")).await;
        assert_eq!(status, 503, "{body}");

        shutdown.cancel();
        server.await.expect("the server task").expect("the server stops cleanly");
    }

    #[test]
    fn readyz_waits_for_start_up_and_names_a_failed_task() {
        let readiness = Readiness::new();
        let cache = readiness.register("Pod cache");
        assert_eq!(
            readiness_answer(&readiness),
            (StatusCode::SERVICE_UNAVAILABLE, "waiting for: Pod cache\n".into())
        );
        cache.ready();
        assert_eq!(readiness_answer(&readiness), (StatusCode::OK, "ok\n".into()));
        readiness.fail("the xDS push loop panicked: boom");
        assert_eq!(
            readiness_answer(&readiness),
            (StatusCode::SERVICE_UNAVAILABLE, "failed: the xDS push loop panicked: boom\n".into())
        );
    }
}
