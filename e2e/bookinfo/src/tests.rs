//! In-process tests: each role is served on 127.0.0.1:0 and called over
//! HTTP; upstreams are either real roles or fakes that record what they got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::upstream::{Client, Reply, Service};
use crate::{details, flaky, productpage, ratings, reviews, tcp_echo};

async fn spawn(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn local(addr: SocketAddr) -> Service {
    Service::new("127.0.0.1", addr.port())
}

/// A port nothing listens on.
async fn closed_port() -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    local(addr)
}

type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// An upstream that answers every request with `status` and `body` and
/// records the path and headers it got.
async fn fake(status: StatusCode, body: Value) -> (Service, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let router = Router::new().fallback(move |request: Request<axum::body::Body>| {
        let record = record.clone();
        let body = body.clone();
        async move {
            record.lock().unwrap().push((request.uri().path().to_string(), request.headers().clone()));
            (status, Json(body)).into_response()
        }
    });
    (local(spawn(router).await), seen)
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    Client::new().get(&format!("http://{addr}{path}"), map, Duration::from_secs(10)).await.unwrap()
}

async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let reply = get(addr, path, &[]).await;
    (reply.status, reply.json().expect("JSON body"))
}

fn text(reply: &Reply) -> String {
    String::from_utf8(reply.body.to_vec()).unwrap()
}

fn reviews_config(version: reviews::Version, ratings: Service) -> reviews::Config {
    reviews::Config {
        version,
        podname: format!("reviews-{version:?}-test").to_lowercase(),
        clustername: "null".into(),
        ratings,
    }
}

async fn reviews_server(version: reviews::Version, ratings: Service) -> SocketAddr {
    spawn(reviews::router(reviews_config(version, ratings))).await
}

async fn ratings_server() -> Service {
    local(spawn(ratings::router()).await)
}

fn productpage_config(details: Service, reviews: Service) -> productpage::Config {
    productpage::Config { details, reviews, ratings: Service::new("127.0.0.1", 1) }
}

const TEXT1: &str = "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!";
const TEXT2: &str = "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.";

#[tokio::test]
async fn details_answers_like_the_real_one() {
    let addr = spawn(details::router()).await;
    let (status, body) = get_json(addr, "/details/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
               "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890",
               "ISBN-13": "123-1234567890"})
    );
    assert_eq!(get_json(addr, "/details/7").await.1["id"], 7);
    assert_eq!(get_json(addr, "/details/abc").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get_json(addr, "/health").await.1, json!({"status": "Details is healthy"}));
}

#[tokio::test]
async fn ratings_answers_like_the_real_one() {
    let addr = spawn(ratings::router()).await;
    let (status, body) = get_json(addr, "/ratings/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}));
    assert_eq!(get_json(addr, "/ratings/x").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get_json(addr, "/health").await.1, json!({"status": "Ratings is healthy"}));
}

#[tokio::test]
async fn reviews_v1_has_no_rating_and_does_not_call_ratings() {
    let (ratings, seen) = fake(StatusCode::OK, json!({})).await;
    let addr = reviews_server(reviews::Version::V1, ratings).await;
    let (status, body) = get_json(addr, "/reviews/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"id": "0", "podname": "reviews-v1-test", "clustername": "null", "reviews": [
            {"reviewer": "Reviewer1", "text": TEXT1},
            {"reviewer": "Reviewer2", "text": TEXT2},
        ]})
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(get_json(addr, "/health").await.1, json!({"status": "Reviews is healthy"}));
}

#[tokio::test]
async fn reviews_v2_black_and_v3_red_stars() {
    let ratings = ratings_server().await;
    for (version, color) in [(reviews::Version::V2, "black"), (reviews::Version::V3, "red")] {
        let addr = reviews_server(version, ratings.clone()).await;
        let (status, body) = get_json(addr, "/reviews/0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["reviews"][0]["rating"], json!({"stars": 5, "color": color}));
        assert_eq!(body["reviews"][1]["rating"], json!({"stars": 4, "color": color}));
        assert_eq!(body["reviews"][1]["text"], TEXT2);
    }
}

#[tokio::test]
async fn reviews_reports_ratings_down() {
    let addr = reviews_server(reviews::Version::V3, closed_port().await).await;
    let (status, body) = get_json(addr, "/reviews/0").await;
    assert_eq!(status, StatusCode::OK);
    for review in body["reviews"].as_array().unwrap() {
        assert_eq!(review["rating"], json!({"error": "Ratings service is currently unavailable"}));
    }
    // An error status from ratings counts as down too.
    let (failing, _) = fake(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "x"})).await;
    let addr = reviews_server(reviews::Version::V2, failing).await;
    let body = get_json(addr, "/reviews/0").await.1;
    assert_eq!(body["reviews"][0]["rating"]["error"], "Ratings service is currently unavailable");
}

#[tokio::test]
async fn reviews_propagates_headers_to_ratings() {
    let (ratings, seen) =
        fake(StatusCode::OK, json!({"id": 0, "ratings": {"Reviewer1": 1, "Reviewer2": 2}})).await;
    let addr = reviews_server(reviews::Version::V2, ratings).await;
    let reply = get(
        addr,
        "/reviews/0",
        &[("x-request-id", "req-1"), ("end-user", "jason"), ("x-b3-traceid", "t1"), ("x-other", "no")],
    )
    .await;
    assert_eq!(reply.json().unwrap()["reviews"][0]["rating"]["stars"], 1);
    let seen = seen.lock().unwrap();
    let (path, headers) = &seen[0];
    assert_eq!(path, "/ratings/0");
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(headers["end-user"], "jason");
    assert_eq!(headers["x-b3-traceid"], "t1");
    assert!(headers.get("x-other").is_none());
}

#[tokio::test]
async fn productpage_shows_details_reviews_podname_and_stars() {
    let ratings = ratings_server().await;
    let details = local(spawn(details::router()).await);
    for (version, stars) in [
        (reviews::Version::V1, None),
        (reviews::Version::V2, Some("<font color=\"black\">★★★★★</font>")),
        (reviews::Version::V3, Some("<font color=\"red\">★★★★★</font>")),
    ] {
        let reviews = local(reviews_server(version, ratings.clone()).await);
        let addr = spawn(productpage::router(productpage_config(details.clone(), reviews))).await;
        let reply = get(addr, "/productpage", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_ref().unwrap().to_str().unwrap(), "text/html; charset=utf-8");
        let page = text(&reply);
        assert!(page.contains("The Comedy of Errors"));
        assert!(page.contains("<dd id=\"details-publisher\">PublisherA</dd>"), "{page}");
        assert!(page.contains("<dd id=\"details-isbn-13\">123-1234567890</dd>"));
        assert!(page.contains(TEXT1) && page.contains("Reviewer2"));
        let podname = format!("<dd id=\"reviews-podname\">reviews-{version:?}-test</dd>").to_lowercase();
        assert!(page.contains(&podname), "{page}");
        match stars {
            Some(stars) => assert!(page.contains(stars), "{page}"),
            None => assert!(!page.contains("<font") && !page.contains('★'), "{page}"),
        }
    }
}

#[tokio::test]
async fn productpage_reports_upstream_failures_with_200() {
    let addr = spawn(productpage::router(productpage_config(closed_port().await, closed_port().await))).await;
    let reply = get(addr, "/productpage", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let page = text(&reply);
    assert!(page.contains("Error fetching product details!"));
    assert!(page.contains("Sorry, product reviews are currently unavailable for this book."));
    assert!(!page.contains("reviews-podname"));

    // Ratings down behind a working reviews: stars replaced by the error.
    let reviews = local(reviews_server(reviews::Version::V2, closed_port().await).await);
    let details = local(spawn(details::router()).await);
    let addr = spawn(productpage::router(productpage_config(details, reviews))).await;
    let page = text(&get(addr, "/productpage", &[]).await);
    assert!(page.contains("Ratings service is currently unavailable"));
    assert!(page.contains("reviews-v2-test"));
}

#[tokio::test]
async fn productpage_propagates_headers_and_turns_the_user_cookie_into_end_user() {
    let (details, details_seen) = fake(StatusCode::OK, json!({"id": 0})).await;
    let (reviews, reviews_seen) =
        fake(StatusCode::OK, json!({"id": "0", "podname": "p", "reviews": []})).await;
    let addr = spawn(productpage::router(productpage_config(details, reviews))).await;
    let reply = get(
        addr,
        "/productpage",
        &[
            ("x-request-id", "req-42"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("user-agent", "test-agent"),
            ("cookie", "session=abc; user=jason"),
            ("x-not-propagated", "nope"),
            ("authorization", "Bearer secret"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(text(&reply).contains("Signed in as <b>jason</b>"));
    for (want_path, seen) in [("/details/0", details_seen), ("/reviews/0", reviews_seen)] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (path, h) = &seen[0];
        assert_eq!(path, want_path);
        assert_eq!(h["x-request-id"], "req-42");
        assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["b3"], "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
        assert_eq!(h["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(h["user-agent"], "test-agent");
        assert_eq!(h["cookie"], "session=abc; user=jason");
        assert_eq!(h["end-user"], "jason");
        assert!(h.get("x-not-propagated").is_none());
        assert!(h.get("authorization").is_none());
    }
}

#[tokio::test]
async fn productpage_invents_no_request_id_and_passes_end_user_on() {
    let (details, details_seen) = fake(StatusCode::OK, json!({"id": 0})).await;
    let (reviews, reviews_seen) = fake(StatusCode::OK, json!({"id": "0", "reviews": []})).await;
    let addr = spawn(productpage::router(productpage_config(details, reviews))).await;
    get(addr, "/productpage", &[]).await;
    get(addr, "/api/v1/products/0/reviews", &[("end-user", "jason")]).await;
    let details_seen = details_seen.lock().unwrap();
    assert!(details_seen[0].1.get("x-request-id").is_none());
    assert!(details_seen[0].1.get("end-user").is_none());
    let reviews_seen = reviews_seen.lock().unwrap();
    assert_eq!(reviews_seen.len(), 2);
    assert!(reviews_seen[0].1.get("x-request-id").is_none());
    assert_eq!(reviews_seen[1].1["end-user"], "jason");
}

#[tokio::test]
async fn productpage_api_passes_upstream_status_and_body_through() {
    let (reviews, _) = fake(StatusCode::IM_A_TEAPOT, json!({"error": "teapot"})).await;
    let (details, _) = fake(StatusCode::OK, json!({"id": 0, "author": "someone"})).await;
    let addr = spawn(productpage::router(productpage_config(details, reviews))).await;
    assert_eq!(
        get_json(addr, "/api/v1/products/0/reviews").await,
        (StatusCode::IM_A_TEAPOT, json!({"error": "teapot"}))
    );
    assert_eq!(
        get_json(addr, "/api/v1/products/0").await,
        (StatusCode::OK, json!({"id": 0, "author": "someone"}))
    );
    assert_eq!(get_json(addr, "/api/v1/products/x/reviews").await.0, StatusCode::BAD_REQUEST);

    let ratings = ratings_server().await;
    let config =
        productpage::Config { ratings, ..productpage_config(closed_port().await, closed_port().await) };
    let addr = spawn(productpage::router(config)).await;
    let (status, body) = get_json(addr, "/api/v1/products/0/reviews").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "Sorry, product reviews are currently unavailable for this book.");
    assert_eq!(
        get_json(addr, "/api/v1/products/0/ratings").await,
        (StatusCode::OK, json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}))
    );
    let (status, body) = get_json(addr, "/api/v1/products").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["id"], 0);
    assert_eq!(body[0]["title"], "The Comedy of Errors");
    assert_eq!(get_json(addr, "/health").await.1, json!({"status": "Productpage is healthy"}));
    assert!(text(&get(addr, "/", &[]).await).contains("/productpage"));
}

#[tokio::test]
async fn login_sets_and_logout_clears_the_user_cookie() {
    let addr = spawn(productpage::router(productpage_config(closed_port().await, closed_port().await))).await;
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(format!("http://{addr}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"username=jason&passwd=x")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()["location"], "/productpage");
    assert_eq!(response.headers()["set-cookie"], "user=jason; Path=/");
    response.into_body().collect().await.unwrap();

    let reply = get(addr, "/logout", &[("cookie", "user=jason")]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let response = client
        .request(Request::get(format!("http://{addr}/logout")).body(Full::default()).unwrap())
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("user=;") && cookie.contains("Max-Age=0"), "{cookie}");
}

/// A tcp-echo on a port of its own, answering with `prefix`.
async fn tcp_echo_server(prefix: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tcp_echo::accept_loop(listener, prefix.into()));
    addr
}

/// Everything the server sends until it closes, or what came within `wait`.
async fn read_all(stream: &mut tokio::net::TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(wait, stream.read_to_end(&mut got)).await.is_ok();
    (got, closed)
}

#[tokio::test]
async fn tcp_echo_answers_each_line_with_the_prefix() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = tcp_echo_server("hello").await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"world\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello world"));
    // Two lines in one write, and one split over two writes: a reply per line.
    write.write_all(b"one\ntw").await.unwrap();
    write.write_all(b"o\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello one"));
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello two"));
    // An empty line is a line too.
    write.write_all(b"\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello "));
    // The client closes: so does the server.
    write.shutdown().await.unwrap();
    assert_eq!(lines.next_line().await.unwrap(), None);
}

#[tokio::test]
async fn tcp_echo_drops_a_last_line_without_newline_and_closes() {
    use tokio::io::AsyncWriteExt;
    let addr = tcp_echo_server("hi").await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"a\nunfinished").await.unwrap();
    stream.shutdown().await.unwrap();
    let (got, closed) = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the server closes once the client has");
    assert_eq!(String::from_utf8(got).unwrap(), "hi a\n");
}

#[tokio::test]
async fn tcp_echo_closes_on_a_line_too_long() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = tcp_echo_server("hello").await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(b"short\n").await.unwrap();
    let mut reply = [0u8; 12];
    read.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"hello short\n");
    // Written from a task: the server stops reading part-way.
    let long = vec![b'x'; tcp_echo::MAX_LINE + 10];
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&long).await;
        write
    });
    // The server closes: end of stream, or a reset for what it left unread.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the server closed the connection");
    assert!(rest.is_empty(), "no reply to the long line: {} bytes", rest.len());
    drop(writer.await);
}

#[tokio::test]
async fn tcp_echo_serves_every_port_given_and_stops_on_shutdown() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // Two ports nothing listens on (they may be taken again meanwhile; rare).
    let ports: Vec<u16> = {
        let a = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let b = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        vec![a.local_addr().unwrap().port(), b.local_addr().unwrap().port()]
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let ports = ports.clone();
        async move {
            tcp_echo::serve(&ports, "hey", async {
                let _ = stopped.await;
            })
            .await
        }
    });
    for port in &ports {
        let stream = connect_retrying(*port).await;
        let (read, mut write) = stream.into_split();
        write.write_all(b"there\n").await.unwrap();
        let mut lines = BufReader::new(read).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hey there"), "port {port}");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.is_err(), "stopped listening");
}

/// Connects to a port on loopback that a server is about to listen on.
async fn connect_retrying(port: u16) -> tokio::net::TcpStream {
    for _ in 0..100 {
        if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

#[tokio::test]
async fn tcp_echo_refuses_a_port_in_use_and_bad_port_lists() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = tcp_echo::serve(&[port], "hello", std::future::pending()).await.unwrap_err();
    assert!(format!("{err:#}").contains(&format!("cannot listen on 0.0.0.0:{port}")), "{err:#}");

    assert_eq!(tcp_echo::parse_ports("9000,9001,9002").unwrap(), [9000, 9001, 9002]);
    assert_eq!(tcp_echo::parse_ports(" 9000 , 9000").unwrap(), [9000]);
    for bad in ["", "9000,", "x", "70000", "0", "9000;9001"] {
        let err = tcp_echo::parse_ports(bad).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("{bad:?}")), "{bad:?}: {err:#}");
    }
}

#[tokio::test]
async fn flaky_fails_the_first_n_requests_per_key_and_counts_them() {
    let addr = spawn(flaky::router()).await;
    let status = |reply: Reply| reply.status;
    assert_eq!(status(get(addr, "/fail/2/a", &[]).await), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        status(get(addr, "/fail/2/b", &[]).await),
        StatusCode::SERVICE_UNAVAILABLE,
        "keys count apart"
    );
    assert_eq!(status(get(addr, "/fail/2/a", &[]).await), StatusCode::SERVICE_UNAVAILABLE);
    let third = get(addr, "/fail/2/a", &[]).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&third.body), "a: attempt 3 succeeds\n");
    let count = get(addr, "/count/a", &[]).await;
    assert_eq!(
        (count.status, String::from_utf8_lossy(&count.body).into_owned()),
        (StatusCode::OK, "3\n".into())
    );
    assert_eq!(String::from_utf8_lossy(&get(addr, "/count/none", &[]).await.body), "0\n");
}
