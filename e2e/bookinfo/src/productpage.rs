//! The productpage service: the web page a person (or a test) asks for. It
//! calls details and reviews at once, passing the trace and user headers on,
//! and shows the book, its reviews with their stars, and which reviews pod
//! answered (`<dd id="reviews-podname">`). A signed-in user (cookie
//! `user=<name>`, set by POST /login) travels on as the `end-user` header,
//! which is what Istio's "jason" routing rules match. Upstream failures show
//! on the page, which still answers 200, as the real one does.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::upstream::{self, Client, Reply, Service};

#[derive(Clone, Debug)]
pub struct Config {
    pub details: Service,
    pub reviews: Service,
    pub ratings: Service,
}

impl Config {
    /// Reads DETAILS_/REVIEWS_/RATINGS_HOSTNAME, their _SERVICE_PORT, and
    /// SERVICES_DOMAIN.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            details: Service::from_env("details")?,
            reviews: Service::from_env("reviews")?,
            ratings: Service::from_env("ratings")?,
        })
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);
/// Reviews is asked up to twice, like the real productpage (whose extra try
/// Istio's fault-injection task shows off): 3 s + 3 s before giving up.
const REVIEWS_TRIES: usize = 2;

const TITLE: &str = "The Comedy of Errors";
const DESCRIPTION_HTML: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.";
const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Sorry, product ratings are currently unavailable for this book.";

struct AppState {
    config: Config,
    client: Client,
}

pub fn router(config: Config) -> Router {
    let state = Arc::new(AppState { config, client: Client::new() });
    Router::new()
        .route("/", get(index))
        .route("/health", get(|| async { Json(json!({"status": "Productpage is healthy"})) }))
        .route("/login", post(login))
        .route("/logout", get(logout))
        .route("/productpage", get(productpage))
        .route("/api/v1/products", get(products))
        .route("/api/v1/products/{id}", get(product_details))
        .route("/api/v1/products/{id}/reviews", get(product_reviews))
        .route("/api/v1/products/{id}/ratings", get(product_ratings))
        .with_state(state)
}

/// The signed-in user from the `user` cookie, if any.
fn cookie_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("user="))
        .map(|user| user.trim_matches('"'))
        .find(|user| !user.is_empty())
        .map(str::to_string)
}

/// The headers to send upstream: the propagated ones, with `end-user` set
/// from the `user` cookie when there is one.
fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = upstream::propagate(incoming);
    if let Some(value) = cookie_user(incoming).and_then(|u| HeaderValue::from_str(&u).ok()) {
        out.insert("end-user", value);
    }
    out
}

async fn fetch_details(state: &AppState, id: i64, headers: HeaderMap) -> anyhow::Result<Reply> {
    let url = state.config.details.url(&format!("/details/{id}"));
    state.client.get(&url, headers, TIMEOUT).await
}

async fn fetch_reviews(state: &AppState, id: i64, headers: HeaderMap) -> anyhow::Result<Reply> {
    let url = state.config.reviews.url(&format!("/reviews/{id}"));
    let mut last = None;
    for _ in 0..REVIEWS_TRIES {
        let reply = state.client.get(&url, headers.clone(), TIMEOUT).await;
        match &reply {
            Ok(r) if r.status == StatusCode::OK => return reply,
            Ok(r) => tracing::warn!(status = r.status.as_u16(), "reviews answered with an error"),
            Err(e) => tracing::warn!("reviews unreachable: {e:#}"),
        }
        last = Some(reply);
    }
    last.unwrap_or_else(|| Err(anyhow::anyhow!("reviews was not asked")))
}

/// A 200 reply's JSON, or `None`.
fn ok_json(reply: &anyhow::Result<Reply>) -> Option<Value> {
    match reply {
        Ok(r) if r.status == StatusCode::OK => r.json(),
        Ok(r) => {
            tracing::warn!(status = r.status.as_u16(), "upstream answered with an error");
            None
        }
        Err(e) => {
            tracing::warn!("upstream unreachable: {e:#}");
            None
        }
    }
}

/// The upstream's status and body unchanged, or 503 with `error` when it
/// could not be reached.
fn passthrough(reply: anyhow::Result<Reply>, error: &str) -> Response {
    match reply {
        Ok(r) => {
            let content_type = r.content_type.unwrap_or_else(|| HeaderValue::from_static("application/json"));
            (r.status, [(header::CONTENT_TYPE, content_type)], r.body).into_response()
        }
        Err(e) => {
            tracing::warn!("upstream unreachable: {e:#}");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": error}))).into_response()
        }
    }
}

fn bad_id() -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": "please provide numeric product id"}))).into_response()
}

async fn products() -> Json<Value> {
    Json(json!([{"id": 0, "title": TITLE, "descriptionHtml": DESCRIPTION_HTML}]))
}

async fn product_details(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse() else { return bad_id() };
    passthrough(fetch_details(&state, id, forward_headers(&headers)).await, DETAILS_ERROR)
}

async fn product_reviews(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse() else { return bad_id() };
    passthrough(fetch_reviews(&state, id, forward_headers(&headers)).await, REVIEWS_ERROR)
}

async fn product_ratings(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<i64>() else { return bad_id() };
    let url = state.config.ratings.url(&format!("/ratings/{id}"));
    passthrough(state.client.get(&url, forward_headers(&headers), TIMEOUT).await, RATINGS_ERROR)
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    username: String,
}

/// Sets `user=<name>` and goes back to the product page. Only characters
/// that are safe in both a cookie and a header are kept.
async fn login(Form(form): Form<Login>) -> Response {
    let user: String = form
        .username
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\'))
        .collect();
    let mut response = (StatusCode::FOUND, [(header::LOCATION, "/productpage")]).into_response();
    let cookie = Some(user)
        .filter(|u| !u.is_empty())
        .and_then(|u| HeaderValue::from_str(&format!("user={u}; Path=/")).ok());
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout() -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "/productpage"), (header::SET_COOKIE, "user=; Path=/; Max-Age=0")],
    )
        .into_response()
}

async fn index() -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head>\n\
         <body>\n<h1>Hello! This is a simple bookstore application consisting of three services as shown below</h1>\n\
         <p>productpage calls details and reviews; reviews v2 and v3 call ratings.</p>\n\
         <p><a href=\"/productpage\">Product page</a></p>\n\
         <p>Also: <a href=\"/api/v1/products\">/api/v1/products</a>, <a href=\"/health\">/health</a>. Book: {}</p>\n\
         </body></html>\n",
        escape(TITLE)
    ))
}

async fn productpage(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Html<String> {
    let forward = forward_headers(&headers);
    let (details, reviews) =
        tokio::join!(fetch_details(&state, 0, forward.clone()), fetch_reviews(&state, 0, forward));
    Html(render_page(
        cookie_user(&headers).as_deref(),
        ok_json(&details).as_ref(),
        ok_json(&reviews).as_ref(),
    ))
}

/// HTML-escapes text for element content and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON scalar as escaped text ("" for anything else).
fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => escape(s),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => String::new(),
    }
}

fn render_page(user: Option<&str>, details: Option<&Value>, reviews: Option<&Value>) -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head>\n<body>\n",
    );
    match user {
        Some(user) => {
            let _ = writeln!(
                page,
                "<nav><span id=\"user\">Signed in as <b>{}</b></span> <a href=\"/logout\">Sign out</a></nav>",
                escape(user)
            );
        }
        None => page.push_str(
            "<nav><form method=\"post\" action=\"/login\">\
             <input type=\"text\" name=\"username\" placeholder=\"User name\"> \
             <input type=\"password\" name=\"passwd\" placeholder=\"Password\"> \
             <button type=\"submit\">Sign in</button></form></nav>\n",
        ),
    }
    let _ = writeln!(
        page,
        "<h1 id=\"product-title\">{}</h1>\n<p id=\"product-description\">{DESCRIPTION_HTML}</p>",
        escape(TITLE)
    );

    page.push_str("<section id=\"details\">\n<h2>Book Details</h2>\n");
    match details {
        Some(d) => {
            page.push_str("<dl>\n");
            for (label, key, id) in [
                ("Author", "author", "author"),
                ("Year", "year", "year"),
                ("Type", "type", "type"),
                ("Pages", "pages", "pages"),
                ("Publisher", "publisher", "publisher"),
                ("Language", "language", "language"),
                ("ISBN-10", "ISBN-10", "isbn-10"),
                ("ISBN-13", "ISBN-13", "isbn-13"),
            ] {
                let _ = writeln!(page, "<dt>{label}:</dt><dd id=\"details-{id}\">{}</dd>", field(d, key));
            }
            page.push_str("</dl>\n");
        }
        None => page.push_str("<h4 class=\"error\">Error fetching product details!</h4>\n"),
    }
    page.push_str("</section>\n");

    page.push_str("<section id=\"reviews\">\n<h2>Book Reviews</h2>\n");
    match reviews.filter(|r| r.get("reviews").is_some()) {
        Some(r) => {
            for review in r["reviews"].as_array().into_iter().flatten() {
                render_review(&mut page, review);
            }
            let _ = writeln!(
                page,
                "<dl><dt>Reviews served by:</dt><dd id=\"reviews-podname\">{}</dd>\n\
                 <dt>Cluster:</dt><dd id=\"reviews-clustername\">{}</dd></dl>",
                field(r, "podname"),
                field(r, "clustername")
            );
        }
        None => {
            let _ = writeln!(page, "<h4 class=\"error\">{REVIEWS_ERROR}</h4>");
        }
    }
    page.push_str("</section>\n</body></html>\n");
    page
}

fn render_review(page: &mut String, review: &Value) {
    let _ = write!(
        page,
        "<blockquote class=\"review\">\n<p>{}</p>\n<small>{}</small>\n",
        field(review, "text"),
        field(review, "reviewer")
    );
    if let Some(rating) = review.get("rating") {
        if let Some(stars) = rating.get("stars").and_then(Value::as_i64) {
            let full = stars.clamp(0, 5) as usize;
            let _ = writeln!(
                page,
                "<font color=\"{}\">{}{}</font>",
                field(rating, "color"),
                "★".repeat(full),
                "☆".repeat(5 - full)
            );
        } else if rating.get("error").is_some() {
            let _ = writeln!(page, "<p class=\"rating-error\"><i>{}</i></p>", field(rating, "error"));
        }
    }
    page.push_str("</blockquote>\n");
}
