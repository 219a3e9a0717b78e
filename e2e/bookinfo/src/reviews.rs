//! The reviews service in its three versions, as the real
//! examples-bookinfo-reviews-v1/-v2/-v3 images answer: v1 gives the two
//! reviews without stars; v2 and v3 ask ratings (passing the trace and user
//! headers on) and add black (v2) or red (v3) stars. Every answer names the
//! pod that gave it, which is how tests tell the versions apart.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::upstream::{self, Client, Service};

/// Which of the three reviews images this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    V1,
    V2,
    V3,
}

impl Version {
    /// The star color, or `None` for v1, which does not call ratings.
    fn star_color(self) -> Option<&'static str> {
        match self {
            Version::V1 => None,
            Version::V2 => Some("black"),
            Version::V3 => Some("red"),
        }
    }

    /// How long to wait for ratings: the real reviews waits 10 s with black
    /// stars and 2.5 s with red ones (Istio's timeout tasks rely on this).
    fn ratings_timeout(self) -> Duration {
        match self {
            Version::V3 => Duration::from_millis(2500),
            _ => Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub version: Version,
    /// Reported as "podname" in every answer.
    pub podname: String,
    /// Reported as "clustername"; the real image prints "null" when unset.
    pub clustername: String,
    pub ratings: Service,
}

impl Config {
    /// Reads HOSTNAME (then POD_NAME, then the machine's hostname),
    /// CLUSTER_NAME, and RATINGS_HOSTNAME / RATINGS_SERVICE_PORT /
    /// SERVICES_DOMAIN.
    pub fn from_env(version: Version) -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let podname = var("HOSTNAME")
            .or_else(|| var("POD_NAME"))
            .or_else(machine_hostname)
            .unwrap_or_else(|| "unknown".into());
        Ok(Self {
            version,
            podname,
            clustername: var("CLUSTER_NAME").unwrap_or_else(|| "null".into()),
            ratings: Service::from_env("ratings")?,
        })
    }
}

fn machine_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

const REVIEWS: [(&str, &str); 2] = [
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

#[derive(Serialize)]
struct Answer<'a> {
    id: String,
    podname: &'a str,
    clustername: &'a str,
    reviews: Vec<Review>,
}

#[derive(Serialize)]
struct Review {
    reviewer: &'static str,
    text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<Rating>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Rating {
    Stars { stars: i64, color: &'static str },
    Error { error: &'static str },
}

struct AppState {
    config: Config,
    client: Client,
}

pub fn router(config: Config) -> Router {
    let state = Arc::new(AppState { config, client: Client::new() });
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "Reviews is healthy"})) }))
        .route("/reviews/{id}", get(reviews))
        .with_state(state)
}

async fn reviews(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "please provide numeric product id"})))
            .into_response();
    };
    let config = &state.config;
    let stars = match config.version.star_color() {
        None => None,
        Some(color) => Some((color, ratings(&state, id, &headers).await)),
    };
    let reviews = REVIEWS
        .iter()
        .map(|&(reviewer, text)| Review {
            reviewer,
            text,
            rating: stars.as_ref().map(|(color, ratings)| {
                match ratings.as_ref().and_then(|r| r.get(reviewer)).and_then(|s| s.as_i64()) {
                    Some(stars) => Rating::Stars { stars, color },
                    None => Rating::Error { error: "Ratings service is currently unavailable" },
                }
            }),
        })
        .collect();
    Json(Answer { id: id.to_string(), podname: &config.podname, clustername: &config.clustername, reviews })
        .into_response()
}

/// The `ratings` object of the ratings service's answer, or `None` when it
/// could not be had.
async fn ratings(state: &AppState, id: i64, headers: &HeaderMap) -> Option<serde_json::Value> {
    let url = state.config.ratings.url(&format!("/ratings/{id}"));
    let timeout = state.config.version.ratings_timeout();
    match state.client.get(&url, upstream::propagate(headers), timeout).await {
        Ok(reply) if reply.status == StatusCode::OK => {
            let ratings = reply.json().and_then(|mut v| v.get_mut("ratings").map(serde_json::Value::take));
            if ratings.is_none() {
                tracing::warn!("ratings answered without a ratings object");
            }
            ratings
        }
        Ok(reply) => {
            tracing::warn!(status = reply.status.as_u16(), "ratings answered with an error");
            None
        }
        Err(error) => {
            tracing::warn!("ratings unreachable: {error:#}");
            None
        }
    }
}
