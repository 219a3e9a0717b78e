//! The controller's own HTTP endpoints: /healthz (the process answers),
//! /readyz (every start-up task is done: caches synced; and no long-running
//! task has failed, else it names the task and why), /metrics
//! (Prometheus text), /debug/configz (what the index holds, as JSON),
//! /debug/syncz (every connected proxy and how far it is in sync, read by
//! `mesh proxy-status`) and /debug/config_dump?proxy=<node id or ns/pod>
//! (what one proxy holds; see [`crate::xds::debug`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::index::{self, SharedIndex};
use crate::readiness::Readiness;
use crate::xds::Connections;

#[derive(Clone)]
struct Monitoring {
    registry: Arc<Registry>,
    readiness: Readiness,
    index: SharedIndex,
    proxies: Connections,
}

/// Serves the monitoring endpoints on an already bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    index: SharedIndex,
    proxies: Connections,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Monitoring { registry: Arc::new(registry), readiness, index, proxies };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/configz", get(configz))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
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
        "ServiceRole": state.service_roles.values().collect::<Vec<_>>(),
        "ServiceRoleBinding": state.service_role_bindings.values().collect::<Vec<_>>(),
        "ClusterRbacConfig": state.cluster_rbac_configs.values().collect::<Vec<_>>(),
        "RbacConfig": state.rbac_configs.values().collect::<Vec<_>>(),
        "PeerAuthentication": state.peer_authentications.values().collect::<Vec<_>>(),
        "Policy": state.policies.values().collect::<Vec<_>>(),
        "MeshPolicy": state.mesh_policies.values().collect::<Vec<_>>(),
        "meshConfig": {"rootNamespace": state.mesh_config.root_namespace},
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
