//! `flaky`: a server that fails on purpose, for retry tests (no Bookinfo
//! image does this). `GET /fail/{n}/{key}` answers 503 to the first `n`
//! requests for `key` and 200 from then on, each body naming the attempt;
//! `GET /count/{key}` says how many requests for `key` arrived, so a test
//! learns how often a proxy retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// Requests seen per key.
type Attempts = Arc<Mutex<HashMap<String, u64>>>;

pub fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "Flaky is healthy"})) }))
        .route("/fail/{n}/{key}", get(fail))
        .route("/count/{key}", get(count))
        .with_state(Attempts::default())
}

async fn fail(State(attempts): State<Attempts>, Path((n, key)): Path<(u64, String)>) -> (StatusCode, String) {
    let attempt = {
        let mut seen = attempts.lock().unwrap_or_else(|e| e.into_inner());
        let count = seen.entry(key.clone()).or_default();
        *count += 1;
        *count
    };
    if attempt <= n {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{key}: attempt {attempt} fails\n"))
    } else {
        (StatusCode::OK, format!("{key}: attempt {attempt} succeeds\n"))
    }
}

async fn count(State(attempts): State<Attempts>, Path(key): Path<String>) -> String {
    let seen = attempts.lock().unwrap_or_else(|e| e.into_inner());
    format!("{}\n", seen.get(&key).copied().unwrap_or(0))
}
