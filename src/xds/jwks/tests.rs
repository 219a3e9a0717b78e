//! Fetching key sets: a scripted fetcher on a short schedule (first
//! fetch, retry, refresh, keys kept on failure, keys dropped with their
//! policy), and the real HTTP client against a server on 127.0.0.1.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::api;
use crate::index::{Index, IndexMetrics, RequestAuthentications};
use crate::testing::objects::config;

const URI: &str = "https://issuer.example/jwks.json";
// Two public keys of RFC 7517 and RFC 7515's examples.
const KEYS_A: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;
const KEYS_B: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// Answers each fetch with the next scripted result (the last repeats),
/// and notes what the cache held and its revision when asked: the state
/// the earlier fetches left.
struct Scripted {
    answers: Mutex<VecDeque<Result<String, String>>>,
    jwks: Arc<Jwks>,
    seen: Mutex<Vec<(Option<String>, u64)>>,
}

impl Scripted {
    fn new(jwks: &Arc<Jwks>, answers: &[Result<&str, &str>]) -> Arc<Self> {
        let answers = answers.iter().map(|a| a.map(String::from).map_err(String::from)).collect();
        Arc::new(Self { answers: Mutex::new(answers), jwks: jwks.clone(), seen: Mutex::default() })
    }

    fn seen(&self) -> Vec<(Option<String>, u64)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Fetch for Scripted {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<String, String>> {
        let held = self.jwks.fetched().get(uri).cloned();
        self.seen.lock().unwrap().push((held, *self.jwks.subscribe().borrow()));
        let mut answers = self.answers.lock().unwrap();
        let answer = if answers.len() > 1 { answers.pop_front() } else { answers.front().cloned() };
        Box::pin(async move { answer.expect("a scripted answer") })
    }
}

fn request_authentication(uri: &str) -> kube::api::DynamicObject {
    config::<api::RequestAuthentication>(
        "default",
        "jwt",
        json!({"jwtRules": [{"issuer": "issuer.example", "jwksUri": uri}]}),
    )
}

const SCHEDULE: Schedule =
    Schedule { refresh: Duration::from_millis(400), retry: Duration::from_millis(100) };

/// Waits (at most 20 s) for `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keys_are_fetched_retried_refreshed_kept_on_failure_and_dropped_with_their_policy() {
    let index = SharedIndex::new(Index::new(IndexMetrics::default()));
    index.lock().apply::<RequestAuthentications>(&request_authentication(URI));
    let jwks = Arc::new(Jwks::default());
    let fetcher = Scripted::new(&jwks, &[Err("connection refused"), Ok(KEYS_A), Err("503"), Ok(KEYS_B)]);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(run(jwks.clone(), index.clone(), fetcher.clone(), SCHEDULE, shutdown.clone()));

    until("six fetches", || fetcher.seen().len() >= 6).await;
    let elapsed = started.elapsed();
    let a = Some(KEYS_A.to_string());
    let b = Some(KEYS_B.to_string());
    assert_eq!(
        fetcher.seen()[..6],
        [
            (None, 0),      // the first fetch (fails)
            (None, 0),      // retried: nothing held yet (gets A)
            (a.clone(), 1), // refreshed (fails): A is kept
            (a.clone(), 1), // retried (gets B): a new revision
            (b.clone(), 2), // refreshed: B again, so the revision stays
            (b.clone(), 2),
        ]
    );
    // Two retries, three refreshes at least.
    assert!(elapsed >= 2 * SCHEDULE.retry + 3 * SCHEDULE.refresh, "{elapsed:?}");
    assert!(jwks.metrics.count(true) >= 3 && jwks.metrics.count(false) == 2);

    let mut revisions = jwks.subscribe();
    revisions.borrow_and_update();
    index.lock().delete::<RequestAuthentications>(&request_authentication(URI));
    until("the keys to be dropped", || jwks.fetched().is_empty()).await;
    assert!(revisions.has_changed().unwrap(), "dropped keys make a push");
    shutdown.cancel();
    task.await.expect("the fetch loop ends at shutdown");
}

#[tokio::test]
async fn a_body_that_is_no_key_set_is_a_failed_fetch() {
    let index = SharedIndex::new(Index::new(IndexMetrics::default()));
    index.lock().apply::<RequestAuthentications>(&request_authentication(URI));
    let jwks = Arc::new(Jwks::default());
    let fetcher = Scripted::new(&jwks, &[Ok(KEYS_A), Ok("<html>moved</html>")]);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(jwks.clone(), index, fetcher.clone(), SCHEDULE, shutdown.clone()));
    until("three fetches", || fetcher.seen().len() >= 3).await;
    assert_eq!(fetcher.seen()[2], (Some(KEYS_A.to_string()), 1), "the last good keys stay");
    assert!(jwks.metrics.count(false) >= 1);
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn key_sets_are_checked() {
    assert!(check_key_set(KEYS_A).is_ok());
    assert!(check_key_set(r#"{"keys": []}"#).unwrap_err().contains("empty"));
    assert!(check_key_set("{}").unwrap_err().contains("keys"));
    assert!(check_key_set(r#"{"keys": [{"n": "x"}]}"#).unwrap_err().contains("kty"));
    assert!(check_key_set("not json").unwrap_err().contains("not JSON"));
    // What Envoy's JWT library would refuse, refusing the whole listener.
    let short = r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#;
    assert!(check_key_set(short).unwrap_err().contains("of 1 bytes, not 32"));
    assert!(check_key_set(r#"{"keys": [{"kty": "RSA", "e": "AQAB"}]}"#).unwrap_err().contains("\"n\""));
    assert!(check_key_set(r#"{"keys": [{"kty": "PQ"}]}"#).unwrap_err().contains("not RSA, EC, oct or OKP"));
}

#[tokio::test]
async fn the_http_client_fetches_from_a_server_and_reports_its_errors() {
    let app = axum::Router::new().route("/jwks.json", axum::routing::get(|| async { KEYS_A }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let fetch = HttpFetch::new().expect("a client");
    assert_eq!(fetch.fetch(&format!("http://{addr}/jwks.json")).await.as_deref(), Ok(KEYS_A));
    let missing = fetch.fetch(&format!("http://{addr}/missing")).await.unwrap_err();
    assert!(missing.contains("404"), "{missing}");
    let bad = fetch.fetch("http://127.0.0.1:1/jwks.json").await;
    assert!(bad.is_err(), "nothing listens on port 1: {bad:?}");
    server.abort();
}
