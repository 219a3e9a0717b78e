//! `kubectl port-forward`: the kubelet's `/portForward/{namespace}/{pod}`,
//! two ways.
//!
//! - SPDY/3.1 (`portforward.k8s.io`, what the API server sends for
//!   kubectl): for every connection the client forwards it opens an error
//!   stream and a data stream, paired by their `requestid` header; the data
//!   stream's `port` is connected to on 127.0.0.1 inside the pod's network
//!   namespace and copied both ways. Many pairs come and go on one
//!   connection.
//! - A websocket (`v4.channel.k8s.io`, what kube-rs clients send, passed
//!   through by the API server): the ports are in the query, each with a
//!   data channel (2i) and an error channel (2i+1), connected once when the
//!   socket opens.
//!
//! A connection that fails is told on the error stream (or channel) as
//! text, the way the kubelet words it. A websocket on which the client
//! sends nothing for [`spdy::IDLE_TIMEOUT`] is closed, as a SPDY
//! connection is.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WebSocketRole;
use tokio_util::sync::CancellationToken;

use crate::kubelet::{
    Body, find_exact_pod_dir, header_values, on_upgrade, query_pairs, switching_protocols, text,
};
use crate::spdy::{self, Connection, Stream};

/// The SPDY port-forward protocol.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The websocket protocols spoken, by preference: binary channels.
const WEBSOCKET_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "channel.k8s.io"];
/// How long one stream of a pair waits for the other.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Pairs half-open at once on one connection.
const MAX_WAITING: usize = 256;
/// Ports on one websocket: each takes two channels of a one-byte number.
const MAX_PORTS: usize = 127;
/// How long connecting to a port in the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `/portForward/...`: SPDY (POST) or a websocket (GET).
pub fn handle(
    request: &mut Request<Incoming>,
    rest: &str,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, pod) = match parts.as_slice() {
        [ns, pod] | [ns, pod, _] if !ns.is_empty() && !pod.is_empty() => (ns.to_string(), pod.to_string()),
        _ => return text(StatusCode::BAD_REQUEST, "want /portForward/{namespace}/{pod}\n"),
    };
    let Some(pod_dir) = find_exact_pod_dir(state_dir, &namespace, &pod) else {
        return text(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} is not on this node\n"));
    };
    let target = match Target::of(&pod_dir, &namespace, &pod) {
        Ok(target) => target,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let headers = request.headers();
    if crate::kubelet::wants_upgrade(headers, "SPDY/3.1") {
        let offered = header_values(headers, "x-stream-protocol-version");
        if !offered.iter().any(|p| p == SPDY_PROTOCOL) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to negotiate protocol: the client offers {offered:?}, the local node speaks {SPDY_PROTOCOL}\n"
                ),
            );
        }
        on_upgrade(request, "port-forward", move |io| spdy_session(io, target, shutdown));
        return switching_protocols("SPDY/3.1", &[("x-stream-protocol-version", SPDY_PROTOCOL.to_string())]);
    }
    if crate::kubelet::wants_upgrade(headers, "websocket") {
        let ports = match websocket_ports(request.uri().query().unwrap_or("")) {
            Ok(ports) => ports,
            Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
        };
        let Some(key) = headers.get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
            return text(StatusCode::BAD_REQUEST, "a websocket upgrade needs Sec-WebSocket-Key\n");
        };
        let offered = header_values(headers, "sec-websocket-protocol");
        let protocol = match websocket_protocol(&offered) {
            Ok(protocol) => protocol,
            Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
        };
        let mut answer = vec![(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
        )];
        if let Some(protocol) = protocol {
            answer.push(("sec-websocket-protocol", protocol.to_string()));
        }
        on_upgrade(request, "port-forward", move |io| websocket_session(io, ports, target, shutdown));
        return switching_protocols("websocket", &answer);
    }
    text(
        StatusCode::BAD_REQUEST,
        "port-forward: ask for an upgrade to SPDY/3.1 (portforward.k8s.io) or to a websocket (v4.channel.k8s.io)\n",
    )
}

/// Where the pod's ports are: its network namespace.
#[derive(Debug, Clone)]
struct Target {
    pod: String,
    netns: PathBuf,
}

impl Target {
    fn of(pod_dir: &Path, namespace: &str, pod: &str) -> Result<Self, String> {
        let not_ready = || format!("pod {namespace}/{pod} has no network yet");
        let text = std::fs::read_to_string(pod_dir.join("sandbox.json")).map_err(|_| not_ready())?;
        let spec: serde_json::Value = serde_json::from_str(&text).map_err(|_| not_ready())?;
        let netns = spec["netns"].as_str().ok_or_else(not_ready)?;
        Ok(Self { pod: format!("{namespace}/{pod}"), netns: netns.into() })
    }

    /// Connects to `port` on the pod's loopback, from inside its network namespace.
    async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let netns = self.netns.clone();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let connected = tokio::task::spawn_blocking(move || {
            crate::network::in_netns(&netns, move || {
                let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(stream)
            })
        })
        .await;
        let failed = |e: &dyn std::fmt::Display| {
            format!(
                "error forwarding port {port} to pod {}: failed to connect to localhost:{port} inside the pod: {e}",
                self.pod
            )
        };
        match connected {
            Ok(Ok(Ok(stream))) => TcpStream::from_std(stream).map_err(|e| failed(&e)),
            Ok(Ok(Err(e))) => Err(failed(&e)),
            Ok(Err(e)) => Err(failed(&e)),
            Err(e) => Err(failed(&e)),
        }
    }
}

/// Which of a pair a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Error,
    Data,
}

/// Streams waiting for the other of their pair, by request id.
pub struct Pairs<T> {
    waiting: HashMap<String, Waiting<T>>,
    timeout: Duration,
    limit: usize,
}

struct Waiting<T> {
    error: Option<T>,
    data: Option<T>,
    since: Instant,
}

/// Why a stream was not taken into a pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Duplicate,
    TooMany,
}

impl<T> Pairs<T> {
    pub fn new(timeout: Duration, limit: usize) -> Self {
        Self { waiting: HashMap::new(), timeout, limit }
    }

    /// Takes one stream; the pair (error, data) once both have come.
    pub fn offer(
        &mut self,
        request: &str,
        half: Half,
        stream: T,
        now: Instant,
    ) -> Result<Option<(T, T)>, (T, Refused)> {
        if !self.waiting.contains_key(request) && self.waiting.len() >= self.limit {
            return Err((stream, Refused::TooMany));
        }
        let entry = self.waiting.entry(request.to_string()).or_insert(Waiting {
            error: None,
            data: None,
            since: now,
        });
        let slot = match half {
            Half::Error => &mut entry.error,
            Half::Data => &mut entry.data,
        };
        if slot.is_some() {
            return Err((stream, Refused::Duplicate));
        }
        *slot = Some(stream);
        if entry.error.is_some() && entry.data.is_some() {
            let Waiting { error, data, .. } = self.waiting.remove(request).expect("just seen");
            return Ok(error.zip(data));
        }
        Ok(None)
    }

    /// The streams whose other half has not come in time, taken out.
    pub fn expired(&mut self, now: Instant) -> Vec<(Half, T)> {
        let timeout = self.timeout;
        let late: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in late {
            if let Some(w) = self.waiting.remove(&key) {
                out.extend(w.error.map(|s| (Half::Error, s)));
                out.extend(w.data.map(|s| (Half::Data, s)));
            }
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// A stream's place in a pair: its half and its request id. Clients that
/// send no `requestid` pair an error stream with the data stream opened
/// right after it (the next odd id), as the kubelet assumes.
pub fn pair_key(headers: &spdy::Headers, stream_id: u32) -> Result<(Half, String), String> {
    let half = match headers.get("streamtype") {
        Some("error") => Half::Error,
        Some("data") => Half::Data,
        other => return Err(format!("stream type {other:?}: want error or data")),
    };
    let key = match headers.get("requestid") {
        Some(id) => id.to_string(),
        None if half == Half::Data => stream_id.saturating_sub(2).to_string(),
        None => stream_id.to_string(),
    };
    Ok((half, key))
}

async fn spdy_session<IO>(io: IO, target: Target, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = Connection::start(io);
    let mut pairs = Pairs::new(PAIR_TIMEOUT, MAX_WAITING);
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.next_stream() => {
                let Some(stream) = stream else { break };
                let (half, key) = match pair_key(&stream.headers, stream.id) {
                    Ok(place) => place,
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward: a stream that is no pair's");
                        let _ = stream.out.reset(spdy::PROTOCOL_ERROR).await;
                        continue;
                    }
                };
                match pairs.offer(&key, half, stream, Instant::now()) {
                    Ok(Some((error, data))) => {
                        forwards.spawn(forward(error, data, target.clone()));
                    }
                    Ok(None) => {}
                    Err((stream, why)) => {
                        tracing::debug!(request = %key, ?why, "port-forward: stream refused");
                        let _ = stream.out.reset(spdy::REFUSED_STREAM).await;
                    }
                }
            }
            _ = sweep.tick() => {
                for (half, stream) in pairs.expired(Instant::now()) {
                    if half == Half::Error {
                        let message = "timed out waiting for the data stream of this connection";
                        let _ = stream.out.write(message.as_bytes()).await;
                        let _ = stream.out.finish().await;
                    } else {
                        let _ = stream.out.reset(spdy::CANCEL).await;
                    }
                }
                while forwards.try_join_next().is_some() {}
            }
            _ = shutdown.cancelled() => break,
        }
    }
    forwards.abort_all();
    conn.close().await;
}

/// One forwarded connection: the pod's port and the client, both ways.
async fn forward(error: Stream, data: Stream, target: Target) {
    let port = data.headers.get("port").or(error.headers.get("port")).unwrap_or("");
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            let message = format!("invalid port {port:?} in the data stream's headers");
            let _ = error.out.write(message.as_bytes()).await;
            let _ = error.out.finish().await;
            let _ = data.out.finish().await;
            return;
        }
    };
    let connected = tokio::select! {
        c = target.connect(port) => c,
        _ = data.reset.cancelled() => return,
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(message) => {
            tracing::info!(pod = %target.pod, port, error = %message, "port-forward");
            let _ = error.out.write(message.as_bytes()).await;
            let _ = error.out.finish().await;
            let _ = data.out.finish().await;
            return;
        }
    };
    let Stream { mut incoming, out, reset, .. } = data;
    let (mut from_pod, mut to_pod) = tcp.into_split();
    // The client done sending: so is the connection to the pod, and back.
    let upstream = spdy::receive_into(&mut incoming, &mut to_pod);
    let downstream = out.send_from(&mut from_pod);
    tokio::select! {
        _ = futures::future::join(upstream, downstream) => {}
        _ = reset.cancelled() => return,
    }
    let _ = error.out.finish().await;
}

/// The ports a websocket forwards (`port=P`, repeated).
fn websocket_ports(query: &str) -> Result<Vec<u16>, String> {
    let ports: Vec<u16> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == "port")
        .map(|(_, v)| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("port {v:?}: want a number from 1 to 65535")),
        })
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err("no port: give it as port=P".into());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!("{} ports: at most {MAX_PORTS} on one connection", ports.len()));
    }
    Ok(ports)
}

/// The websocket subprotocol answered: the first offered that is spoken
/// here; None (binary channels, no header) when the client offers none.
fn websocket_protocol(offered: &[String]) -> Result<Option<&'static str>, String> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered.iter().find_map(|p| WEBSOCKET_PROTOCOLS.iter().find(|s| *s == p).copied()).map(Some).ok_or_else(
        || format!("websocket protocols {offered:?}: the local node speaks {WEBSOCKET_PROTOCOLS:?}"),
    )
}

/// A message on channel `channel`.
fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(Bytes::from(bytes))
}

async fn websocket_session<IO>(io: IO, ports: Vec<u16>, target: Target, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, WebSocketRole::Server, None).await;
    serve_websocket(ws, ports, shutdown, move |port| {
        let target = target.clone();
        async move { target.connect(port).await }
    })
    .await;
}

/// The channels of a websocket port-forward, `connect` reaching each port.
async fn serve_websocket<IO, C, F>(
    ws: WebSocketStream<IO>,
    ports: Vec<u16>,
    shutdown: CancellationToken,
    connect: C,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn(u16) -> F,
    F: std::future::Future<Output = Result<TcpStream, String>>,
{
    let (mut sink, mut messages) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    // One writer: the pods' output and the errors go out in order.
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut to_pods: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut pumps = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        // The first message of each channel names its port.
        for channel in [data, error] {
            let _ = out_tx.send(channel_message(channel, &port.to_le_bytes())).await;
        }
        match connect(*port).await {
            Err(message) => {
                let _ = out_tx.send(channel_message(error, message.as_bytes())).await;
                to_pods.push(None);
            }
            Ok(tcp) => {
                let (tx, rx) = mpsc::channel::<Bytes>(64);
                to_pods.push(Some(tx));
                pumps.spawn(pump_port(tcp, data, rx, out_tx.clone()));
            }
        }
    }
    loop {
        if pumps.is_empty() {
            break;
        }
        tokio::select! {
            message = tokio::time::timeout(spdy::IDLE_TIMEOUT, messages.next()) => match message.ok().flatten() {
                Some(Ok(Message::Binary(bytes))) => {
                    let Some((&channel, payload)) = bytes.split_first() else { continue };
                    let index = usize::from(channel / 2);
                    // Only data channels carry anything to a pod.
                    if channel % 2 == 0
                        && !payload.is_empty()
                        && let Some(Some(tx)) = to_pods.get(index)
                        && tx.send(bytes.slice(1..)).await.is_err()
                    {
                        to_pods[index] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = pumps.join_next() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    pumps.abort_all();
    let _ = out_tx.send(Message::Close(None)).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// One port of a websocket: the client's data into it, its output onto `channel`.
async fn pump_port(
    tcp: TcpStream,
    channel: u8,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
) {
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let upstream = async {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(channel_message(channel, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    // The pod closing its end ends the port's forwarding, as in the kubelet.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> spdy::Headers {
        spdy::Headers(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn streams_pair_by_request_id_in_either_order() {
        let now = Instant::now();
        let mut pairs = Pairs::new(Duration::from_secs(30), 2);
        assert_eq!(pairs.offer("0", Half::Error, "e0", now).ok(), Some(None));
        assert_eq!(pairs.offer("1", Half::Data, "d1", now).ok(), Some(None));
        assert_eq!(pairs.offer("0", Half::Data, "d0", now).ok(), Some(Some(("e0", "d0"))));
        assert_eq!(pairs.offer("1", Half::Error, "e1", now).ok(), Some(Some(("e1", "d1"))));
        assert_eq!(pairs.len(), 0);
        // The same half twice is refused; so is a pair past the limit.
        assert_eq!(pairs.offer("2", Half::Error, "e2", now).ok(), Some(None));
        assert_eq!(pairs.offer("2", Half::Error, "again", now).err(), Some(("again", Refused::Duplicate)));
        assert_eq!(pairs.offer("3", Half::Error, "e3", now).ok(), Some(None));
        assert_eq!(pairs.offer("4", Half::Error, "e4", now).err(), Some(("e4", Refused::TooMany)));
    }

    #[test]
    fn a_half_alone_too_long_is_taken_out() {
        let start = Instant::now();
        let mut pairs = Pairs::new(Duration::from_secs(30), 10);
        let _ = pairs.offer("a", Half::Data, "da", start);
        let _ = pairs.offer("b", Half::Error, "eb", start + Duration::from_secs(20));
        assert!(pairs.expired(start + Duration::from_secs(29)).is_empty());
        assert_eq!(pairs.expired(start + Duration::from_secs(30)), [(Half::Data, "da")]);
        assert_eq!(pairs.expired(start + Duration::from_secs(60)), [(Half::Error, "eb")]);
        assert_eq!(pairs.len(), 0);
    }

    #[test]
    fn pair_keys_come_from_the_request_id_or_the_stream_ids() {
        let error = headers(&[("streamtype", "error"), ("port", "80"), ("requestid", "7")]);
        assert_eq!(pair_key(&error, 1), Ok((Half::Error, "7".into())));
        let data = headers(&[("streamtype", "data"), ("port", "80"), ("requestid", "7")]);
        assert_eq!(pair_key(&data, 3), Ok((Half::Data, "7".into())));
        // Without request ids: the error stream and the next one.
        assert_eq!(pair_key(&headers(&[("streamtype", "error")]), 5), Ok((Half::Error, "5".into())));
        assert_eq!(pair_key(&headers(&[("streamtype", "data")]), 7), Ok((Half::Data, "5".into())));
        assert!(pair_key(&headers(&[("streamtype", "stdin")]), 1).is_err());
    }

    #[test]
    fn websocket_ports_and_protocols() {
        assert_eq!(websocket_ports("port=8080&port=9090"), Ok(vec![8080, 9090]));
        assert!(websocket_ports("").is_err());
        assert!(websocket_ports("port=0").is_err());
        assert!(websocket_ports("port=http").is_err());
        let offered = vec!["v5.channel.k8s.io".to_string(), "v4.channel.k8s.io".to_string()];
        assert_eq!(websocket_protocol(&offered), Ok(Some("v4.channel.k8s.io")));
        assert_eq!(websocket_protocol(&[]), Ok(None));
        assert!(websocket_protocol(&["v4.base64.channel.k8s.io".to_string()]).is_err());
    }

    /// A pod's port that answers every line with it in capitals, and says hello first.
    async fn upper_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = tcp.write_all(b"hello\n").await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 || tcp.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    async fn next_binary<S>(client: &mut S) -> Vec<u8>
    where
        S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), client.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .expect("a good message");
            if let Message::Binary(bytes) = message {
                return bytes.to_vec();
            }
        }
    }

    #[tokio::test]
    async fn a_websocket_forwards_each_port_on_its_channels() {
        let open = upper_server().await;
        // A port nothing listens on: its error channel says so.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, WebSocketRole::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, WebSocketRole::Client, None).await;
        let shutdown = CancellationToken::new();
        let session =
            tokio::spawn(serve_websocket(server, vec![open, closed], shutdown.clone(), |port| async move {
                TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("port {port}: {e}"))
            }));
        // Each channel's port, the open port's greeting, the closed port's error: in any order.
        let mut all = Vec::new();
        for _ in 0..6 {
            all.push(next_binary(&mut client).await);
        }
        for (channel, port) in [(0u8, open), (1, open), (2, closed), (3, closed)] {
            let named = [&[channel][..], &port.to_le_bytes()].concat();
            assert!(all.contains(&named), "channel {channel} names port {port}: {all:?}");
        }
        assert!(all.iter().any(|m| m.as_slice() == b"\x00hello\n"), "{all:?}");
        let refused = all.iter().find(|m| m[0] == 3 && m.len() > 3).expect("an error on channel 3");
        assert!(String::from_utf8_lossy(&refused[1..]).contains(&format!("port {closed}")), "{all:?}");
        client.send(channel_message(0, b"shout\n")).await.expect("sent");
        assert_eq!(next_binary(&mut client).await, b"\x00SHOUT\n");
        // The client's close ends the session.
        client.close(None).await.expect("closed");
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends")
            .expect("no panic");
    }
}
