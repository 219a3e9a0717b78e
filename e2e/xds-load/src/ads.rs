//! A lean ADS client: gRPC over HTTP/2 and TLS, written for thousands of
//! streams in one process.
//!
//! A general gRPC client keeps, per stream, a receive buffer as large as
//! the largest message it ever read (a proxy's clusters: close to a
//! megabyte in a 1,000-Service mesh), and decodes every resource into an
//! owned copy. Here a stream lets go of its buffer after each message,
//! responses are read as [`Response`]s whose resources are slices of the
//! received bytes, and requests are written from parts the proxies share
//! (an EDS ACK repeats a thousand names: they are encoded once and sent as
//! the same [`Bytes`] by every proxy of a scope).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;

/// The two ADS methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// State of the world: `StreamAggregatedResources`.
    Sotw,
    /// Incremental: `DeltaAggregatedResources`.
    Delta,
}

impl Protocol {
    fn path(self) -> &'static str {
        match self {
            Protocol::Sotw => {
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            }
            Protocol::Delta => {
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
            }
        }
    }
}
/// The gRPC prefix: a compression flag and the length.
const PREFIX: usize = 5;

/// A `DiscoveryResponse` with its resources left encoded: each is an
/// `Any`, a slice of the received message.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// A `DeltaDiscoveryResponse`, its resources' `Any`s left encoded.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResponse {
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// A `Resource` of a Delta response.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResource {
    #[prost(string, tag = "3")]
    pub name: String,
    /// The `Any`, encoded.
    #[prost(bytes = "bytes", tag = "2")]
    pub resource: Bytes,
}

impl DeltaResponse {
    /// The encoded messages the resources wrap.
    pub fn values(&self) -> Vec<Bytes> {
        self.resources.iter().map(|r| any_value(&r.resource)).collect()
    }
}

/// The value of an encoded `Any`, without copying it.
#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

impl Response {
    /// The encoded messages the resources wrap.
    pub fn values(&self) -> Vec<Bytes> {
        self.resources.iter().map(any_value).collect()
    }
}

/// The encoded message an encoded `Any` wraps, without copying it (empty
/// when it is not an `Any`).
pub fn any_value(any: &Bytes) -> Bytes {
    AnyValue::decode(any.clone()).map(|a| a.value).unwrap_or_default()
}

/// Names encoded as the repeated `resource_names` field (3) of a
/// `DiscoveryRequest`, shared by every proxy that sends the same ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    encoded: Bytes,
    count: usize,
}

impl Names {
    /// The shared encoding of `names` (already sorted and deduplicated).
    pub fn intern<S: AsRef<str>>(names: &[S]) -> Names {
        if names.is_empty() {
            return Names::default();
        }
        let mut buf = BytesMut::new();
        for name in names {
            put_string_always(3, name.as_ref(), &mut buf);
        }
        let encoded = buf.freeze();
        static SHARED: OnceLock<Mutex<HashSet<Bytes>>> = OnceLock::new();
        let mut shared = SHARED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        // A run makes a few sets per scope; the bound is only a guard.
        if shared.len() >= 10_000 {
            shared.clear();
        }
        let encoded = match shared.get(&encoded) {
            Some(existing) => existing.clone(),
            None => {
                shared.insert(encoded.clone());
                encoded
            }
        };
        Names { encoded, count: names.len() }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// How to reach the control plane.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    address: String,
    server_name: ServerName<'static>,
    uri: http::Uri,
    pub protocol: Protocol,
}

impl Connector {
    /// `address` is `host:port`; the server's certificate must chain to
    /// `root_pem` and name `server_name`.
    pub fn new(address: &str, server_name: &str, root_pem: &str, protocol: Protocol) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "the root certificate PEM holds no certificate");
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())?;
        let uri = format!("https://{}{}", server_name.to_str(), protocol.path()).parse()?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            address: address.to_string(),
            server_name,
            uri,
            protocol,
        })
    }

    /// Opens a connection and one ADS stream on it, sending `first`
    /// before waiting for the response headers.
    pub async fn open(&self, token: &str, first: Vec<Bytes>) -> Result<Stream, String> {
        let opened = self.open_with(token, first, http2::Builder::new(TokioExecutor::new())).await?;
        Ok(opened.stream)
    }

    /// Opens a stream as [`Connector::open`] does, on a connection whose
    /// flow-control windows are HTTP/2's initial 64 KiB (Envoy's gRPC
    /// clients raise them): a stream that is never read stops the
    /// server's sending once 64 KiB are on their way. The connection
    /// still answers pings.
    pub async fn open_small_window(&self, token: &str, first: Vec<Bytes>) -> Result<Opened, String> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.initial_stream_window_size(INITIAL_WINDOW).initial_connection_window_size(INITIAL_WINDOW);
        self.open_with(token, first, builder).await
    }

    async fn open_with(
        &self,
        token: &str,
        first: Vec<Bytes>,
        builder: http2::Builder<TokioExecutor>,
    ) -> Result<Opened, String> {
        let tcp = TcpStream::connect(&self.address).await.map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut sender, connection) =
            builder.handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let connection = tokio::spawn(async move {
            // Ends when the sender is dropped (the stream goes on), or the
            // server goes away; the stream sees that error itself.
            let _ = connection.await;
        });
        let (tx, rx) = mpsc::channel(16);
        let requests = Requests { tx };
        requests.send(first).await?;
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(StreamBody::new(ReceiverStream::new(rx)))
            .map_err(|e| format!("the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("the stream: {e}"))?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        // A refusal comes as a response with no body, its status in the headers.
        grpc_status(&parts.headers)?;
        Ok(Opened { stream: Stream { requests, body, buf: BytesMut::new() }, connection, sender })
    }
}

/// A stream with its connection.
pub struct Opened {
    pub stream: Stream,
    /// Ends when the connection does, while `sender` is held.
    pub connection: tokio::task::JoinHandle<()>,
    pub sender: Sender,
}

/// A connection's request sender.
pub type Sender = http2::SendRequest<RequestBody>;

/// The body of a stream's request: the messages the proxy sends.
type RequestBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// HTTP/2's initial flow-control window (RFC 9113, 6.9.2).
const INITIAL_WINDOW: u32 = 65_535;

/// The request side of a stream.
#[derive(Clone)]
pub struct Requests {
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
}

impl Requests {
    /// Sends one message given as its parts (see [`sotw_request`]).
    pub async fn send(&self, parts: Vec<Bytes>) -> Result<(), String> {
        for part in parts {
            self.tx.send(Ok(Frame::data(part))).await.map_err(|_| "the request stream closed".to_string())?;
        }
        Ok(())
    }
}

/// One ADS stream.
pub struct Stream {
    pub requests: Requests,
    body: Incoming,
    buf: BytesMut,
}

impl Stream {
    /// The next message, or `None` when the server ended the stream
    /// with status OK.
    pub async fn message(&mut self, max: usize) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(message) = take(&mut self.buf, max)? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None => return Err("the control plane ended the stream without a status".into()),
                Some(Err(e)) => return Err(format!("the stream broke: {e}")),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.put(data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            grpc_status(trailers)?;
                        }
                        return Ok(None);
                    }
                },
            }
        }
    }
}

/// A whole message from the buffer, if it holds one. The buffer is let go
/// with the message (what follows it is copied to a new one), so an idle
/// stream holds no more than the start of its next message.
fn take(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, String> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("a compressed message, which was not asked for".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(format!("a message of {len} bytes, over the limit of {max}"));
    }
    if buf.len() < PREFIX + len {
        buf.reserve(PREFIX + len - buf.len());
        return Ok(None);
    }
    let mut message = buf.split_to(PREFIX + len);
    message.advance(PREFIX);
    *buf = if buf.is_empty() { BytesMut::new() } else { BytesMut::from(&buf[..]) };
    Ok(Some(message.freeze()))
}

/// `grpc-status` (and `grpc-message`) as a result; no status is OK.
fn grpc_status(headers: &http::HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").map(|v| v.to_str().unwrap_or("?")) {
        None | Some("0") => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
            Err(format!("gRPC status {code}: {message}"))
        }
    }
}

/// A `DiscoveryRequest` as the parts of one gRPC message: the prefix
/// with the fields before the names, the shared names, the fields after.
pub fn sotw_request(
    version: &str,
    node: Option<&Node>,
    names: &Names,
    type_url: &str,
    nonce: &str,
) -> Vec<Bytes> {
    let mut head = BytesMut::new();
    put_string(1, version, &mut head);
    if let Some(node) = node {
        prost::encoding::message::encode(2, node, &mut head);
    }
    let mut tail = BytesMut::new();
    put_string(4, type_url, &mut tail);
    put_string(5, nonce, &mut tail);
    let len = head.len() + names.encoded.len() + tail.len();
    let mut first = BytesMut::with_capacity(PREFIX + head.len());
    first.put_u8(0);
    first.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    first.put(head);
    let mut parts = vec![first.freeze()];
    if !names.encoded.is_empty() {
        parts.push(names.encoded.clone());
    }
    if !tail.is_empty() {
        parts.push(tail.freeze());
    }
    parts
}

/// A `DeltaDiscoveryRequest` as one gRPC message.
pub fn delta_request(
    node: Option<&Node>,
    type_url: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> Vec<Bytes> {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(0);
    if let Some(node) = node {
        prost::encoding::message::encode(1, node, &mut body);
    }
    put_string(2, type_url, &mut body);
    for name in subscribe {
        put_string_always(3, name, &mut body);
    }
    for name in unsubscribe {
        put_string_always(4, name, &mut body);
    }
    put_string(6, nonce, &mut body);
    let len = u32::try_from(body.len() - PREFIX).unwrap_or(u32::MAX);
    body[1..PREFIX].copy_from_slice(&len.to_be_bytes());
    vec![body.freeze()]
}

/// A string field, left out when empty (proto3).
fn put_string(tag: u32, value: &str, buf: &mut BytesMut) {
    if !value.is_empty() {
        put_string_always(tag, value, buf);
    }
}

/// A string field, even empty (an element of a repeated field).
fn put_string_always(tag: u32, value: &str, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn joined(parts: &[Bytes]) -> Bytes {
        let mut all = BytesMut::new();
        for p in parts {
            all.put_slice(p);
        }
        all.freeze()
    }

    #[test]
    fn a_request_from_parts_is_the_message_prost_would_write() {
        let node = Node { id: "sidecar~10.0.0.1~a.b~b.svc.cluster.local".into(), ..Default::default() };
        let names = ["outbound|9080||a", "outbound|9080||b"];
        for (node, names) in [(Some(&node), &names[..]), (None, &names[..]), (None, &[][..])] {
            let parts = sotw_request("v1", node, &Names::intern(names), "type.googleapis.com/x", "7");
            let bytes = joined(&parts);
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert_eq!((bytes[0], len), (0, bytes.len() - PREFIX));
            let expected = DiscoveryRequest {
                version_info: "v1".into(),
                node: node.cloned(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                type_url: "type.googleapis.com/x".into(),
                response_nonce: "7".into(),
                ..Default::default()
            };
            assert_eq!(bytes.slice(PREFIX..), Bytes::from(expected.encode_to_vec()));
        }
    }

    #[test]
    fn a_delta_request_is_the_message_prost_would_write() {
        let node = Node { id: "sidecar~10.0.0.1~a.b~b.svc.cluster.local".into(), ..Default::default() };
        let parts = delta_request(Some(&node), "type.googleapis.com/x", &["a", ""], &["b"], "4");
        let bytes = joined(&parts);
        let expected = DeltaDiscoveryRequest {
            node: Some(node),
            type_url: "type.googleapis.com/x".into(),
            resource_names_subscribe: vec!["a".into(), "".into()],
            resource_names_unsubscribe: vec!["b".into()],
            response_nonce: "4".into(),
            ..Default::default()
        };
        assert_eq!(bytes.slice(PREFIX..), Bytes::from(expected.encode_to_vec()));
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - PREFIX);
    }

    #[test]
    fn a_delta_response_is_read_with_its_resources_as_they_came() {
        let full = DeltaDiscoveryResponse {
            system_version_info: "ignored".into(),
            resources: vec![envoy_types::pb::envoy::service::discovery::v3::Resource {
                name: "outbound|9080||a".into(),
                version: "v1".into(),
                resource: Some(Any { type_url: "type.googleapis.com/t".into(), value: b"cla".to_vec() }),
                ..Default::default()
            }],
            type_url: "type.googleapis.com/t".into(),
            removed_resources: vec!["outbound|9080||b".into()],
            nonce: "2".into(),
            ..Default::default()
        };
        let lean = DeltaResponse::decode(Bytes::from(full.encode_to_vec())).expect("decodes");
        assert_eq!((lean.type_url.as_str(), lean.nonce.as_str()), ("type.googleapis.com/t", "2"));
        assert_eq!(lean.resources[0].name, "outbound|9080||a");
        assert_eq!(lean.values(), [&b"cla"[..]]);
        assert_eq!(lean.removed_resources, ["outbound|9080||b"]);
    }

    #[test]
    fn proxies_asking_for_the_same_names_share_their_encoding() {
        let a = Names::intern(&["x", "y"]);
        let b = Names::intern(&[String::from("x"), String::from("y")]);
        assert_eq!(a.encoded.as_ptr(), b.encoded.as_ptr());
        assert_ne!(Names::intern(&["x"]), a);
        assert_eq!((a.count, Names::intern::<&str>(&[]).is_empty()), (2, true));
    }

    #[test]
    fn a_response_is_read_with_its_resources_as_they_came() {
        let any = |v: &[u8]| Any { type_url: "type.googleapis.com/t".into(), value: v.to_vec() };
        let full = DiscoveryResponse {
            version_info: "3".into(),
            resources: vec![any(b"one"), any(b""), any(b"three")],
            type_url: "type.googleapis.com/t".into(),
            nonce: "9".into(),
            ..Default::default()
        };
        let lean = Response::decode(Bytes::from(full.encode_to_vec())).expect("decodes");
        assert_eq!((lean.version_info.as_str(), lean.nonce.as_str()), ("3", "9"));
        assert_eq!(lean.type_url, full.type_url);
        let values: Vec<Bytes> = lean.values();
        assert_eq!(values, [&b"one"[..], b"", b"three"]);
    }

    #[test]
    fn messages_split_over_frames_are_put_together_and_the_buffer_let_go() {
        let mut stream_buf = BytesMut::new();
        let message = |body: &[u8]| {
            let mut m = BytesMut::new();
            m.put_u8(0);
            m.put_u32(body.len() as u32);
            m.put_slice(body);
            m.freeze()
        };
        let two = joined(&[message(&[7u8; 40_000]), message(b"next")]);
        let mut out = Vec::new();
        for chunk in two.chunks(16_384) {
            stream_buf.put_slice(chunk);
            while let Some(m) = take(&mut stream_buf, 1 << 20).expect("valid") {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].len(), &out[1][..]), (40_000, &b"next"[..]));
        assert_eq!(stream_buf.capacity(), 0, "nothing kept once every message is out");
        let mut too_big = BytesMut::from(&message(&[0u8; 100])[..]);
        assert!(take(&mut too_big, 99).unwrap_err().contains("over the limit"));
    }
}
