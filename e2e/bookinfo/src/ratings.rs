//! The ratings service: the stars each reviewer gave, as the real
//! examples-bookinfo-ratings-v1 image answers them (fixed, 5 and 4).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "Ratings is healthy"})) }))
        .route("/ratings/{id}", get(ratings))
}

async fn ratings(Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "please provide numeric product ID"})))
            .into_response();
    };
    Json(json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})).into_response()
}
