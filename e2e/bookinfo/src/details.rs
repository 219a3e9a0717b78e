//! The details service: the book's publishing facts, as the real
//! examples-bookinfo-details-v1 image answers them (always the same book).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

#[derive(Serialize)]
struct Details {
    id: i64,
    author: &'static str,
    year: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    pages: u32,
    publisher: &'static str,
    language: &'static str,
    #[serde(rename = "ISBN-10")]
    isbn_10: &'static str,
    #[serde(rename = "ISBN-13")]
    isbn_13: &'static str,
}

pub fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "Details is healthy"})) }))
        .route("/details/{id}", get(details))
}

async fn details(Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "please provide numeric product id"})))
            .into_response();
    };
    Json(Details {
        id,
        author: "William Shakespeare",
        year: 1595,
        kind: "paperback",
        pages: 200,
        publisher: "PublisherA",
        language: "English",
        isbn_10: "1234567890",
        isbn_13: "123-1234567890",
    })
    .into_response()
}
