//! The parts of the kubelet's API that `kubectl logs`, `kubectl exec` and
//! `kubectl port-forward` reach, on the node's kubelet port (the Node's
//! `daemonEndpoints`), over TLS with the node's serving certificate. As a
//! kubelet with `--client-ca-file`, the node takes only client certificates
//! of the cluster's CA, and of those it serves only the API server's
//! kubelet client (`--kubelet-client-name`), on every path; a real kubelet
//! asks the API server (SubjectAccessReview) instead.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}`: `follow`,
//!   `previous`, `tailLines`, `limitBytes`. The node keeps no timestamps in
//!   its logs, so `timestamps`, `sinceSeconds` and `sinceTime` are refused
//!   with a message that says so.
//! - `POST /exec/{namespace}/{pod}/{container}`: upgraded to SPDY/3.1
//!   ([`crate::spdy`]); the command runs in the container's sandbox
//!   ([`crate::exec`]).
//! - `POST /portForward/{namespace}/{pod}`: SPDY/3.1, and `GET` upgraded
//!   to a websocket, as kube-rs clients send it ([`crate::portforward`]).
//!
//! Upgrades are HTTP/1.1 (the API server asks for no other).

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pod::find_pod_dir;

/// How the kubelet port is served.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeletArgs {
    /// The kubelet port (the Node's daemonEndpoints), on the node's address.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The node's serving certificate and key (PEM), with `--client-ca`;
    /// without them, no kubelet port.
    #[arg(long, requires_all = ["kubelet_key", "client_ca"])]
    pub kubelet_cert: Option<PathBuf>,
    #[arg(long)]
    pub kubelet_key: Option<PathBuf>,
    /// The CA whose client certificates are accepted (the cluster's).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// The common name of the API server's kubelet client certificate, the
    /// one identity served.
    #[arg(long, default_value = "kube-apiserver-kubelet-client")]
    pub kubelet_client_name: String,
}

/// How long a followed log is streamed at most.
const FOLLOW_LIMIT: Duration = Duration::from_secs(3600);
/// How often a followed log is read for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The TLS settings: the serving certificate, client certificates of `ca` required.
pub fn tls_config(args: &KubeletArgs) -> Result<Option<rustls::ServerConfig>> {
    let (Some(cert), Some(key), Some(ca)) = (&args.kubelet_cert, &args.kubelet_key, &args.client_ca) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(c.with_context(|| format!("reading {}", ca.display()))?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// Serves the kubelet port on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    client_name: String,
    state_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (client_name, state_dir) = (Arc::new(client_name), Arc::new(state_dir));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (acceptor, client_name, state_dir, shutdown) =
            (acceptor.clone(), client_name.clone(), state_dir.clone(), shutdown.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "kubelet port: TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "kubelet port: TLS handshake timed out"),
            };
            let allowed = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| common_name(cert))
                .is_some_and(|cn| cn == *client_name);
            let service = hyper::service::service_fn(move |request| {
                let (state_dir, shutdown) = (state_dir.clone(), shutdown.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(request, allowed, &state_dir, shutdown)) }
            });
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "kubelet port: connection ended");
            }
        });
    }
}

/// The subject's common name of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(message.into())).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn handle(
    mut request: Request<Incoming>,
    allowed: bool,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Response<Body> {
    if !allowed {
        return text(StatusCode::FORBIDDEN, "the local node serves only the API server's kubelet client\n");
    }
    let path = request.uri().path().to_string();
    let (kind, rest) = path.trim_start_matches('/').split_once('/').unwrap_or((path.as_str(), ""));
    match kind {
        "containerLogs" => container_logs(&request, rest, state_dir, shutdown),
        "exec" => crate::exec::handle(&mut request, rest, state_dir, shutdown),
        "portForward" => crate::portforward::handle(&mut request, rest, state_dir, shutdown),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("{path}: the local node serves only /containerLogs, /exec and /portForward\n"),
        ),
    }
}

fn container_logs(
    request: &Request<Incoming>,
    rest: &str,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, container] = parts.as_slice() else {
        return text(StatusCode::BAD_REQUEST, "want /containerLogs/{namespace}/{pod}/{container}\n");
    };
    let query = match LogQuery::parse(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let Some(pod_dir) = find_exact_pod_dir(state_dir, namespace, pod) else {
        return text(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} is not on this node\n"));
    };
    let logs = pod_dir.join("logs").join(container);
    let Some(file) = log_file(&logs, query.previous) else {
        let which = if query.previous { "a previous" } else { "a" };
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} of pod {namespace}/{pod} has no log of {which} run\n"),
        );
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || stream_log(&file, &logs, query, &tx, &shutdown));
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

/// Every value of a header, its comma-separated lists split, in order.
pub(crate) fn header_values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether the request asks to switch to `protocol` (`Upgrade`, any case).
pub(crate) fn wants_upgrade(headers: &http::HeaderMap, protocol: &str) -> bool {
    header_values(headers, "upgrade").iter().any(|p| p.eq_ignore_ascii_case(protocol))
}

/// `101 Switching Protocols` to `upgrade`, with `headers`.
pub(crate) fn switching_protocols(
    upgrade: &'static str,
    headers: &[(&'static str, String)],
) -> Response<Body> {
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = response.headers_mut();
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static(upgrade));
    for (name, value) in headers {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            h.insert(*name, value);
        }
    }
    response
}

/// A query string's pairs, decoded as a form (`+` is a space, `%XX` a byte).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                other => out.push(other),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// Runs an upgraded connection's session once hyper hands the connection
/// over (after the 101 is sent).
pub(crate) fn on_upgrade<F, Fut>(request: &mut Request<Incoming>, what: &'static str, session: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(10), upgrade).await {
            Ok(Ok(upgraded)) => session(TokioIo::new(upgraded)).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "kubelet port: {what}: upgrade failed"),
            Err(_) => tracing::debug!("kubelet port: {what}: upgrade timed out"),
        }
    });
}

/// The pod's folder, its name matched exactly.
pub(crate) fn find_exact_pod_dir(state_dir: &Path, namespace: &str, pod: &str) -> Option<PathBuf> {
    let dir = find_pod_dir(state_dir, namespace, pod)?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    name.starts_with(&format!("{namespace}_{pod}_")).then_some(dir)
}

/// The log of a container's current run (`N.log`, N its restarts), or of
/// the one before.
fn log_file(logs: &Path, previous: bool) -> Option<PathBuf> {
    let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(logs)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
        })
        .collect();
    runs.sort();
    let index = runs.len().checked_sub(if previous { 2 } else { 1 })?;
    runs.into_iter().nth(index).map(|(_, path)| path)
}

/// What `kubectl logs` asked for.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    follow: bool,
    previous: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<u64>,
}

impl LogQuery {
    fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = LogQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            let number = || value.parse::<u64>().map_err(|_| format!("{key}={value}: want a whole number"));
            match key {
                "follow" => parsed.follow = value == "true",
                "previous" => parsed.previous = value == "true",
                "tailLines" => parsed.tail_lines = Some(usize::try_from(number()?).unwrap_or(usize::MAX)),
                "limitBytes" => parsed.limit_bytes = Some(number()?),
                "timestamps" if value != "true" => {}
                "timestamps" | "sinceSeconds" | "sinceTime" => {
                    return Err(format!(
                        "{key}: the local node keeps no timestamps in its logs; ask without --timestamps, --since or --since-time"
                    ));
                }
                // insecureSkipTLSVerifyBackend and the like: nothing to do here.
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Sends the log (its last `tail_lines`, at most `limit_bytes`), then,
/// when following, what is written to it until the container runs again
/// (a newer log appears), the client goes, or [`FOLLOW_LIMIT`].
fn stream_log(
    file: &Path,
    logs: &Path,
    query: LogQuery,
    tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    shutdown: &CancellationToken,
) {
    let send = |bytes: Vec<u8>| tx.blocking_send(Ok(Frame::data(Bytes::from(bytes)))).is_ok();
    let Ok(mut f) = std::fs::File::open(file) else { return };
    let mut start = 0;
    if let Some(lines) = query.tail_lines {
        let mut all = Vec::new();
        if f.read_to_end(&mut all).is_err() {
            return;
        }
        start = tail_start(&all, lines) as u64;
    }
    if f.seek(SeekFrom::Start(start)).is_err() {
        return;
    }
    let mut left = query.limit_bytes.unwrap_or(u64::MAX);
    let started = Instant::now();
    loop {
        let mut chunk = Vec::new();
        let read = (&mut f).take(left.min(64 * 1024)).read_to_end(&mut chunk).unwrap_or(0);
        if read > 0 {
            left -= read as u64;
            if !send(chunk) || left == 0 {
                return;
            }
            continue;
        }
        if !query.follow || tx.is_closed() || shutdown.is_cancelled() || started.elapsed() > FOLLOW_LIMIT {
            return;
        }
        // A newer run's log: this one is finished.
        if log_file(logs, false).is_some_and(|current| current != file) {
            return;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Where the last `lines` lines of `text` start.
fn tail_start(text: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return text.len();
    }
    // A final newline ends the last line; it does not start another.
    let end = if text.ends_with(b"\n") { text.len() - 1 } else { text.len() };
    let mut seen = 0;
    for (i, byte) in text[..end].iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

/// Binds the kubelet port at `addr` inside the node's network namespace.
pub fn listen(netns: &Path, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = crate::network::in_netns(netns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .context("entering the node's network namespace")?
    .with_context(|| format!("listening on {addr}"))?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_at_the_right_line() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(&text[tail_start(text, 1)..], b"three\n");
        assert_eq!(&text[tail_start(text, 2)..], b"two\nthree\n");
        assert_eq!(&text[tail_start(text, 9)..], text);
        assert_eq!(tail_start(text, 0), text.len());
        let unfinished = b"one\ntwo";
        assert_eq!(&unfinished[tail_start(unfinished, 1)..], b"two");
    }

    #[test]
    fn queries_are_read_and_timestamps_refused_with_a_reason() {
        assert_eq!(
            LogQuery::parse("follow=true&tailLines=10&limitBytes=500"),
            Ok(LogQuery { follow: true, previous: false, tail_lines: Some(10), limit_bytes: Some(500) })
        );
        assert_eq!(LogQuery::parse("previous=true").map(|q| q.previous), Ok(true));
        let refused = LogQuery::parse("sinceSeconds=60").expect_err("refused");
        assert!(refused.contains("no timestamps"), "{refused}");
        assert!(LogQuery::parse("tailLines=x").is_err());
    }

    #[test]
    fn queries_decode_as_forms_and_never_panic() {
        assert_eq!(
            query_pairs("command=sh&command=echo+a%3Bb&tty=1&flag"),
            [("command", "sh"), ("command", "echo a;b"), ("tty", "1"), ("flag", "")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // Broken escapes stay as written; a cut multi-byte escape is replaced, not a panic.
        assert_eq!(query_pairs("a=%zz%4")[0].1, "%zz%4");
        assert_eq!(query_pairs("a=%E2%82")[0].1, "\u{fffd}");
        assert_eq!(query_pairs("a=é%")[0].1, "é%");
    }

    #[test]
    fn header_lists_are_split_across_and_within_headers() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-stream-protocol-version", http::HeaderValue::from_static("v4.channel.k8s.io"));
        headers.append(
            "x-stream-protocol-version",
            http::HeaderValue::from_static("v3.channel.k8s.io, channel.k8s.io"),
        );
        headers.append("upgrade", http::HeaderValue::from_static("spdy/3.1"));
        assert_eq!(
            header_values(&headers, "x-stream-protocol-version"),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert!(wants_upgrade(&headers, "SPDY/3.1"));
        assert!(!wants_upgrade(&headers, "websocket"));
    }

    #[test]
    fn the_current_and_the_previous_run_are_the_newest_logs() {
        let dir = std::env::temp_dir().join(format!("localnode-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for n in [0, 1, 10] {
            std::fs::write(dir.join(format!("{n}.log")), n.to_string()).expect("log");
        }
        assert_eq!(log_file(&dir, false), Some(dir.join("10.log")));
        assert_eq!(log_file(&dir, true), Some(dir.join("1.log")));
        std::fs::remove_dir_all(&dir).expect("clean");
        assert_eq!(log_file(&dir, false), None);
    }
}
