//! The controller's own HTTP endpoints: /healthz (the process answers),
//! /readyz (every start-up task is done: caches synced), /metrics
//! (Prometheus text) and /debug/configz (what the index holds, as JSON).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::index::{self, SharedIndex};
use crate::readiness::Readiness;

#[derive(Clone)]
struct Monitoring {
    registry: Arc<Registry>,
    readiness: Readiness,
    index: SharedIndex,
}

/// Serves the monitoring endpoints on an already bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    index: SharedIndex,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Monitoring { registry: Arc::new(registry), readiness, index };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/configz", get(configz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for monitoring: {e} (is another mesh controller running? set --monitoring-addr)"))
}

async fn readyz(State(m): State<Monitoring>) -> Response {
    let pending = m.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for: {}\n", pending.join(", "))).into_response()
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
    let body = json!({
        "revision": ix.revision(),
        "VirtualService": ix.virtual_services.values().collect::<Vec<_>>(),
        "DestinationRule": ix.destination_rules.values().collect::<Vec<_>>(),
        "ServiceRole": ix.service_roles.values().collect::<Vec<_>>(),
        "ServiceRoleBinding": ix.service_role_bindings.values().collect::<Vec<_>>(),
        "ClusterRbacConfig": ix.cluster_rbac_configs.values().collect::<Vec<_>>(),
        "RbacConfig": ix.rbac_configs.values().collect::<Vec<_>>(),
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
