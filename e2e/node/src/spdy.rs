//! SPDY/3.1, as much of it as the API server speaks to a kubelet for
//! `kubectl exec` and `kubectl port-forward`: the frames, the zlib header
//! blocks, and [`Connection`], which turns one upgraded connection into the
//! streams the peer opens, each with its headers, its data as a channel and
//! a writer for the answer. The kubelet handlers ([`crate::exec`],
//! [`crate::portforward`]) see streams only.
//!
//! The peer opens every stream (odd ids); this side answers each at once
//! with a SYN_REPLY, echoes PINGs and ignores flow control (WINDOW_UPDATE),
//! as the Go implementation the API server uses does. Bounds: control
//! frames of at most [`MAX_CONTROL_PAYLOAD`] and header blocks of at most
//! [`MAX_HEADER_BLOCK`] once inflated (else GOAWAY), at most
//! [`MAX_STREAMS`] streams open at once, a connection silent for
//! [`IDLE_TIMEOUT`] is dropped.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The zlib dictionary of SPDY/3 header blocks (draft 3, section 2.6.10.1):
/// protocol data, byte for byte.
#[rustfmt::skip]
pub const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\
    \x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\
    \x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\
    \x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\
    \x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\
    \x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\
    \x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\
    \x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
    203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Una\
    uthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service\
    \x20UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, \
    Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,applicat\
    ion/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf\
    -8charset=iso-8859-1,utf-,*,enq=0.\
";

const VERSION: u16 = 3;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The sender's last frame on a stream (half-close).
pub const FLAG_FIN: u8 = 0x01;
/// A stream on which the receiver sends nothing back.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM and GOAWAY status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// The largest control frame taken: header blocks of a few names are far smaller.
pub const MAX_CONTROL_PAYLOAD: usize = 1 << 20;
/// The largest header block taken once inflated.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The most name/value pairs in one header block.
const MAX_HEADER_PAIRS: u32 = 256;
/// The most streams open at once on one connection.
pub const MAX_STREAMS: usize = 1024;
/// Data is sent in frames of at most this size.
const DATA_CHUNK: usize = 32 * 1024;
/// A connection on which nothing arrives for this long is dropped (the
/// API server pings every few seconds); the kubelet's default idle timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// A peer that takes no frame for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Data frames of one stream waiting for its reader.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY version {0}: only SPDY/3.1 is spoken here")]
    Version(u16),
    #[error("a control frame of {0} bytes: more than the {MAX_CONTROL_PAYLOAD} bytes taken")]
    TooLarge(usize),
    #[error("a malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// One frame, its header block (if any) still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        block: Bytes,
    },
    SynReply {
        stream: u32,
        flags: u8,
        block: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        block: Bytes,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this side does not know: ignored, as the spec says.
    Unknown(u16),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Takes one whole frame off the front of `buf`; None while it has not all arrived.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let first = be32(&buf[0..4]);
    let flags = buf[4];
    let len = be32(&[0, buf[5], buf[6], buf[7]]) as usize;
    let control = first & 0x8000_0000 != 0;
    if control && len > MAX_CONTROL_PAYLOAD {
        return Err(SpdyError::TooLarge(len));
    }
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(8 + len).freeze();
    frame.advance(8);
    let p = frame;
    if !control {
        return Ok(Some(Frame::Data { stream: first & 0x7fff_ffff, flags, data: p }));
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let need =
        |n: usize, what: &'static str| if p.len() < n { Err(SpdyError::Malformed(what)) } else { Ok(()) };
    let id = |at: usize| be32(&p[at..at + 4]) & 0x7fff_ffff;
    Ok(Some(match (first & 0xffff) as u16 {
        SYN_STREAM => {
            need(10, "SYN_STREAM")?;
            Frame::SynStream {
                stream: id(0),
                associated: id(4),
                priority: p[8] >> 5,
                flags,
                block: p.slice(10..),
            }
        }
        SYN_REPLY => {
            need(4, "SYN_REPLY")?;
            Frame::SynReply { stream: id(0), flags, block: p.slice(4..) }
        }
        RST_STREAM => {
            need(8, "RST_STREAM")?;
            Frame::RstStream { stream: id(0), status: be32(&p[4..8]) }
        }
        SETTINGS => Frame::Settings,
        PING => {
            need(4, "PING")?;
            Frame::Ping(be32(&p[0..4]))
        }
        GOAWAY => {
            need(4, "GOAWAY")?;
            let status = if p.len() >= 8 { be32(&p[4..8]) } else { 0 };
            Frame::GoAway { last_good: id(0), status }
        }
        HEADERS => {
            need(4, "HEADERS")?;
            Frame::Headers { stream: id(0), flags, block: p.slice(4..) }
        }
        WINDOW_UPDATE => {
            need(8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate { stream: id(0), delta: id(4) }
        }
        other => Frame::Unknown(other),
    }))
}

fn put_len(out: &mut BytesMut, flags: u8, len: usize) {
    debug_assert!(len < 1 << 24, "frames are made smaller than the length field");
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

fn put_control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    put_len(out, flags, payload.len());
    out.put_slice(payload);
}

/// Appends `frame` to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let mut p = BytesMut::new();
    match frame {
        Frame::SynStream { stream, associated, priority, flags, block } => {
            p.put_u32(stream & 0x7fff_ffff);
            p.put_u32(associated & 0x7fff_ffff);
            p.put_u8(priority << 5);
            p.put_u8(0);
            p.put_slice(block);
            put_control(out, SYN_STREAM, *flags, &p);
        }
        Frame::SynReply { stream, flags, block } => {
            p.put_u32(stream & 0x7fff_ffff);
            p.put_slice(block);
            put_control(out, SYN_REPLY, *flags, &p);
        }
        Frame::RstStream { stream, status } => {
            p.put_u32(stream & 0x7fff_ffff);
            p.put_u32(*status);
            put_control(out, RST_STREAM, 0, &p);
        }
        Frame::Settings => {
            p.put_u32(0);
            put_control(out, SETTINGS, 0, &p);
        }
        Frame::Ping(id) => put_control(out, PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            p.put_u32(last_good & 0x7fff_ffff);
            p.put_u32(*status);
            put_control(out, GOAWAY, 0, &p);
        }
        Frame::Headers { stream, flags, block } => {
            p.put_u32(stream & 0x7fff_ffff);
            p.put_slice(block);
            put_control(out, HEADERS, *flags, &p);
        }
        Frame::WindowUpdate { stream, delta } => {
            p.put_u32(stream & 0x7fff_ffff);
            p.put_u32(delta & 0x7fff_ffff);
            put_control(out, WINDOW_UPDATE, 0, &p);
        }
        Frame::Data { stream, flags, data } => {
            out.put_u32(stream & 0x7fff_ffff);
            put_len(out, *flags, data.len());
            out.put_slice(data);
        }
        Frame::Unknown(kind) => put_control(out, *kind, 0, &[]),
    }
}

/// A header block's pairs, names in lowercase, in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The uncompressed form: a count, then each name and value with its length.
fn encode_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.put_u32(headers.0.len() as u32);
    for (name, value) in &headers.0 {
        raw.put_u32(name.len() as u32);
        raw.put_slice(name.to_ascii_lowercase().as_bytes());
        raw.put_u32(value.len() as u32);
        raw.put_slice(value.as_bytes());
    }
    raw
}

fn decode_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |what: &str| SpdyError::HeaderBlock(what.to_string());
    let take = |raw: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
        if raw.len() < 4 {
            return Err(bad("cut short"));
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(bad("cut short"));
        }
        let (field, rest) = raw.split_at(len);
        *raw = rest;
        Ok(field.to_vec())
    };
    if raw.len() < 4 {
        return Err(bad("cut short"));
    }
    let count = raw.get_u32();
    if count > MAX_HEADER_PAIRS {
        return Err(SpdyError::HeaderBlock(format!("{count} pairs, more than the {MAX_HEADER_PAIRS} taken")));
    }
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(take(&mut raw)?).map_err(|_| bad("a name that is not UTF-8"))?;
        let value = take(&mut raw)?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SpdyError::HeaderBlock(format!("name {name:?}: names are lowercase and not empty")));
        }
        // Several values of one name travel NUL-separated.
        for v in value.split(|b| *b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    if !raw.is_empty() {
        return Err(bad("bytes after the last pair"));
    }
    Ok(Headers(headers))
}

/// This side's header blocks: one zlib stream for the whole connection,
/// each block ended by a sync flush so the peer can read it at once.
pub struct HeaderCompressor(Compress);

impl HeaderCompressor {
    pub fn new() -> Result<Self, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(DICTIONARY).map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
        Ok(Self(deflate))
    }

    pub fn compress(&mut self, headers: &Headers) -> Result<Bytes, SpdyError> {
        let raw = encode_block(headers);
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        // Each round either takes input or fills the room it was given.
        for _ in 0..1024 {
            let taken = (self.0.total_in() - start) as usize;
            out.reserve(256);
            self.0
                .compress_vec(&raw[taken..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            // All taken and room to spare: the flush is complete.
            if (self.0.total_in() - start) as usize == raw.len() && out.len() < out.capacity() {
                return Ok(Bytes::from(out));
            }
        }
        Err(SpdyError::HeaderBlock("compressing did not finish".into()))
    }
}

/// The peer's header blocks: one zlib stream for the whole connection,
/// starting with the SPDY dictionary.
pub struct HeaderDecompressor(Decompress);

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl HeaderDecompressor {
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let failed = |e: flate2::DecompressError| SpdyError::HeaderBlock(e.to_string());
        let start = self.0.total_in();
        let mut out = Vec::new();
        loop {
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock(format!("more than {MAX_HEADER_BLOCK} bytes inflated")));
            }
            let taken = (self.0.total_in() - start) as usize;
            let (in_before, out_before) = (self.0.total_in(), out.len());
            out.reserve(4096);
            match self.0.decompress_vec(&block[taken..], &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(failed)?;
                    continue;
                }
                Err(e) => return Err(failed(e)),
            }
            if (self.0.total_in() - start) as usize == block.len() && out.len() < out.capacity() {
                return decode_block(&out);
            }
            if self.0.total_in() == in_before && out.len() == out_before {
                return Err(SpdyError::HeaderBlock("cut short".into()));
            }
        }
    }
}

/// What the writer task sends.
#[derive(Debug)]
enum Outgoing {
    Reply(u32),
    Frame(Frame),
}

/// One stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The peer's data; ends at its FIN, a reset, or the connection's end.
    pub incoming: mpsc::Receiver<Bytes>,
    /// Cancelled when the peer resets the stream or the connection ends.
    pub reset: CancellationToken,
    pub out: StreamWriter,
}

/// The gone peer: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub struct Closed;

/// Sends on one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Outgoing>,
}

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(DATA_CHUNK) {
            let frame = Frame::Data { stream: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) };
            self.frames.send(Outgoing::Frame(frame)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream: this side sends nothing more.
    pub async fn finish(&self) -> Result<(), Closed> {
        let frame = Frame::Data { stream: self.id, flags: FLAG_FIN, data: Bytes::new() };
        self.frames.send(Outgoing::Frame(frame)).await.map_err(|_| Closed)
    }

    /// Ends the stream both ways.
    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        let frame = Frame::RstStream { stream: self.id, status };
        self.frames.send(Outgoing::Frame(frame)).await.map_err(|_| Closed)
    }

    /// Sends what `reader` yields until its end (or error), then FIN;
    /// stops early if the peer is gone.
    pub async fn send_from(&self, mut reader: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = self.finish().await;
    }
}

/// Writes the peer's data on a stream into `writer` until the peer's FIN,
/// then shuts `writer` down; stops early if `writer` fails.
pub async fn receive_into(incoming: &mut mpsc::Receiver<Bytes>, mut writer: impl AsyncWrite + Unpin) {
    while let Some(data) = incoming.recv().await {
        if writer.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// A SPDY/3.1 connection, server side: the peer's streams as they open.
pub struct Connection {
    streams: mpsc::Receiver<Stream>,
    closed: CancellationToken,
    close: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Starts reading and writing frames on `io` (an upgraded connection).
    pub fn start<IO>(io: IO) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (frames_tx, frames_rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(32);
        let (closed, close) = (CancellationToken::new(), CancellationToken::new());
        let writer = tokio::spawn(write_frames(write, frames_rx, close.clone(), closed.clone()));
        tokio::spawn(read_frames(read, frames_tx, streams_tx, closed.clone()));
        Self { streams, closed, close, writer }
    }

    /// The next stream the peer opens; None once the connection has ended.
    pub async fn next_stream(&mut self) -> Option<Stream> {
        tokio::select! {
            stream = self.streams.recv() => stream,
            _ = self.closed.cancelled() => None,
        }
    }

    /// Cancelled when the peer has gone (or the connection failed).
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Refuses every stream opened from now on (RST_STREAM REFUSED_STREAM).
    pub fn refuse_further_streams(&mut self) {
        let (_, empty) = mpsc::channel(1);
        let mut streams = std::mem::replace(&mut self.streams, empty);
        tokio::spawn(async move {
            while let Some(stream) = streams.recv().await {
                let _ = stream.out.reset(REFUSED_STREAM).await;
            }
        });
    }

    /// Sends what is queued, then closes the connection.
    pub async fn close(self) {
        self.close.cancel();
        let _ = self.writer.await;
    }
}

async fn write_frames<W: AsyncWrite>(
    write: W,
    mut frames: mpsc::Receiver<Outgoing>,
    close: CancellationToken,
    closed: CancellationToken,
) {
    let mut write = std::pin::pin!(write);
    let mut compressor = match HeaderCompressor::new() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "SPDY: no header compressor");
            closed.cancel();
            return;
        }
    };
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::select! {
            biased;
            next = frames.recv() => next,
            _ = close.cancelled() => frames.try_recv().ok(),
        };
        let Some(next) = next else { break };
        buf.clear();
        let frame = match next {
            Outgoing::Reply(stream) => match compressor.compress(&Headers::default()) {
                Ok(block) => Frame::SynReply { stream, flags: 0, block },
                Err(e) => {
                    tracing::warn!(error = %e, "SPDY: compressing a reply");
                    break;
                }
            },
            Outgoing::Frame(frame) => frame,
        };
        encode_frame(&frame, &mut buf);
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "SPDY: writing");
                break;
            }
            Err(_) => {
                tracing::debug!("SPDY: the peer took no data for {WRITE_TIMEOUT:?}");
                break;
            }
        }
        if let Frame::GoAway { .. } = frame {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), write.shutdown()).await;
    closed.cancel();
}

/// A stream the reader still delivers to.
struct Open {
    data: Option<mpsc::Sender<Bytes>>,
    reset: CancellationToken,
}

async fn read_frames<R: AsyncRead>(
    read: R,
    frames: mpsc::Sender<Outgoing>,
    streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
) {
    let mut read = std::pin::pin!(read);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut headers = HeaderDecompressor::default();
    let mut open: HashMap<u32, Open> = HashMap::new();
    let mut last_id = 0u32;
    let goaway = |status| Outgoing::Frame(Frame::GoAway { last_good: 0, status });
    'read: loop {
        loop {
            let frame = match parse_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY: refusing the connection");
                    let _ = frames.send(goaway(PROTOCOL_ERROR)).await;
                    break 'read;
                }
            };
            match frame {
                Frame::SynStream { stream, flags, block, .. } => {
                    // Every header block moves the zlib stream on, even a refused one.
                    let parsed = match headers.decompress(&block) {
                        Ok(parsed) => parsed,
                        Err(e) => {
                            tracing::debug!(error = %e, "SPDY: bad header block");
                            let _ = frames.send(goaway(PROTOCOL_ERROR)).await;
                            break 'read;
                        }
                    };
                    let refuse = |status| Outgoing::Frame(Frame::RstStream { stream, status });
                    if stream == 0 || stream % 2 == 0 || stream <= last_id {
                        let _ = frames.send(refuse(PROTOCOL_ERROR)).await;
                        continue;
                    }
                    last_id = stream;
                    // Streams the peer finished, or whose reader went, need no more delivery.
                    open.retain(|_, s| {
                        s.data.as_ref().is_some_and(|d| !d.is_closed()) && !s.reset.is_cancelled()
                    });
                    if open.len() >= MAX_STREAMS {
                        let _ = frames.send(refuse(REFUSED_STREAM)).await;
                        continue;
                    }
                    if flags & FLAG_UNIDIRECTIONAL == 0 && frames.send(Outgoing::Reply(stream)).await.is_err()
                    {
                        break 'read;
                    }
                    let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
                    let reset = closed.child_token();
                    let data = (flags & FLAG_FIN == 0).then_some(data_tx);
                    open.insert(stream, Open { data, reset: reset.clone() });
                    let writer = StreamWriter { id: stream, frames: frames.clone() };
                    let new = Stream { id: stream, headers: parsed, incoming: data_rx, reset, out: writer };
                    if streams.send(new).await.is_err() {
                        let _ = frames.send(refuse(REFUSED_STREAM)).await;
                    }
                }
                Frame::SynReply { block, .. } | Frame::Headers { block, .. } => {
                    if let Err(e) = headers.decompress(&block) {
                        tracing::debug!(error = %e, "SPDY: bad header block");
                        let _ = frames.send(goaway(PROTOCOL_ERROR)).await;
                        break 'read;
                    }
                }
                Frame::Data { stream, flags, data } => {
                    let Some(s) = open.get_mut(&stream) else { continue };
                    if let Some(tx) = &s.data
                        && !data.is_empty()
                    {
                        tokio::select! {
                            // A reader that went away just drops the data.
                            _ = tx.send(data) => {}
                            _ = closed.cancelled() => break 'read,
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        s.data = None;
                    }
                }
                Frame::RstStream { stream, .. } => {
                    if let Some(s) = open.remove(&stream) {
                        s.reset.cancel();
                    }
                }
                Frame::Ping(id) => {
                    if frames.send(Outgoing::Frame(Frame::Ping(id))).await.is_err() {
                        break 'read;
                    }
                }
                Frame::GoAway { .. } => {
                    tracing::debug!("SPDY: the peer opens no more streams");
                }
                Frame::Settings | Frame::WindowUpdate { .. } | Frame::Unknown(_) => {}
            }
        }
        let read_more = read.read_buf(&mut buf);
        tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, read_more) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!("SPDY: the connection was idle for {IDLE_TIMEOUT:?}");
                    break;
                }
            },
            _ = closed.cancelled() => break,
        }
    }
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_dictionary_is_the_one_of_the_spec() {
        assert_eq!(DICTIONARY.len(), 1423);
        // Its Adler-32 is what a peer's zlib stream names as the dictionary it needs.
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(deflate.set_dictionary(DICTIONARY).expect("dictionary"), 0xe3c6_a7c2);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 2,
                flags: FLAG_FIN,
                block: Bytes::from_static(b"hb"),
            },
            Frame::SynReply { stream: 3, flags: 0, block: Bytes::from_static(b"reply") },
            Frame::RstStream { stream: 5, status: CANCEL },
            Frame::Settings,
            Frame::Ping(7),
            Frame::GoAway { last_good: 9, status: PROTOCOL_ERROR },
            Frame::Headers { stream: 11, flags: 0, block: Bytes::from_static(b"h") },
            Frame::WindowUpdate { stream: 13, delta: 65536 },
            Frame::Data { stream: 15, flags: FLAG_FIN, data: Bytes::from_static(b"payload") },
            Frame::Data { stream: 17, flags: 0, data: Bytes::new() },
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode_frame(frame, &mut wire);
        }
        // Arriving a byte at a time changes nothing.
        let mut buf = BytesMut::new();
        let mut parsed = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = parse_frame(&mut buf).expect("valid") {
                parsed.push(frame);
            }
        }
        assert_eq!(parsed, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn the_wire_format_is_the_specs() {
        let mut wire = BytesMut::new();
        encode_frame(&Frame::Ping(0x0102_0304), &mut wire);
        assert_eq!(&wire[..], b"\x80\x03\x00\x06\x00\x00\x00\x04\x01\x02\x03\x04");
        wire.clear();
        encode_frame(&Frame::Data { stream: 3, flags: FLAG_FIN, data: Bytes::from_static(b"ab") }, &mut wire);
        assert_eq!(&wire[..], b"\x00\x00\x00\x03\x01\x00\x00\x02ab");
    }

    #[test]
    fn bad_frames_are_refused_not_panicked_on() {
        // SPDY/2.
        let mut v2 = BytesMut::from(&b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"[..]);
        assert!(matches!(parse_frame(&mut v2), Err(SpdyError::Version(2))));
        // A control frame over the limit is refused from its header alone.
        let mut huge = BytesMut::from(&b"\x80\x03\x00\x01\x00\xff\xff\xff"[..]);
        assert!(matches!(parse_frame(&mut huge), Err(SpdyError::TooLarge(_))));
        // A SYN_STREAM too short for its fields.
        let mut short = BytesMut::from(&b"\x80\x03\x00\x01\x00\x00\x00\x02\x00\x01"[..]);
        assert!(matches!(parse_frame(&mut short), Err(SpdyError::Malformed("SYN_STREAM"))));
        // An unknown control type is skipped.
        let mut unknown = BytesMut::from(&b"\x80\x03\x00\x63\x00\x00\x00\x01\x00"[..]);
        assert_eq!(parse_frame(&mut unknown).expect("skipped"), Some(Frame::Unknown(0x63)));
        // Header blocks that lie about their lengths.
        for raw in [
            &b"\x00\x00\x00\x01\x00\x00\x00\x09ab"[..],
            b"\x00\x00",
            b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00",
        ] {
            assert!(decode_block(raw).is_err(), "{raw:?}");
        }
        let mut garbage = HeaderDecompressor::default();
        assert!(garbage.decompress(b"\x78\x9c\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn header_blocks_round_trip_through_one_zlib_stream_per_direction() {
        let mut compressor = HeaderCompressor::new().expect("compressor");
        let mut decompressor = HeaderDecompressor::default();
        let blocks = [
            headers(&[("streamtype", "error"), ("port", "8080"), ("requestid", "0")]),
            headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            Headers::default(),
            headers(&[("x", &"long ".repeat(5000))]),
        ];
        for block in &blocks {
            let compressed = compressor.compress(block).expect("compressed");
            assert_eq!(&decompressor.decompress(&compressed).expect("decompressed"), block);
        }
    }

    #[test]
    fn a_block_compressed_with_the_dictionary_is_read() {
        // As the peer makes them: zlib with the SPDY dictionary, a sync flush per block.
        let mut peer = Compress::new(Compression::best(), true);
        peer.set_dictionary(DICTIONARY).expect("dictionary");
        let mut decompressor = HeaderDecompressor::default();
        for (i, block) in
            [headers(&[("streamtype", "stdout")]), headers(&[("streamtype", "stderr"), ("a", "1\u{0}2")])]
                .iter()
                .enumerate()
        {
            let raw = encode_block(block);
            let mut out = Vec::with_capacity(raw.len() + 128);
            peer.compress_vec(&raw, &mut out, FlushCompress::Sync).expect("compressed");
            if i == 0 {
                // The zlib header announces a preset dictionary (FDICT).
                assert_eq!(out[1] & 0x20, 0x20);
            }
            let decoded = decompressor.decompress(&out).expect("decompressed");
            assert_eq!(decoded.get("streamtype"), block.get("streamtype"));
            if i == 1 {
                // NUL-separated values are several values of one name.
                assert_eq!(decoded.0.iter().filter(|(n, _)| n == "a").count(), 2);
            }
        }
    }

    /// The client's side of a connection, frame by frame.
    struct Peer {
        io: tokio::io::DuplexStream,
        compressor: HeaderCompressor,
        decompressor: HeaderDecompressor,
        buf: BytesMut,
    }

    impl Peer {
        fn new(io: tokio::io::DuplexStream) -> Self {
            Self {
                io,
                compressor: HeaderCompressor::new().expect("compressor"),
                decompressor: HeaderDecompressor::default(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut wire = BytesMut::new();
            encode_frame(&frame, &mut wire);
            self.io.write_all(&wire).await.expect("sent");
        }

        async fn open(&mut self, stream: u32, flags: u8, pairs: &[(&str, &str)]) {
            let block = self.compressor.compress(&headers(pairs)).expect("compressed");
            self.send(Frame::SynStream { stream, associated: 0, priority: 0, flags, block }).await;
        }

        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = parse_frame(&mut self.buf).expect("valid frames") {
                    if let Frame::SynReply { block, .. } = &frame {
                        self.decompressor.decompress(block).expect("a reply's header block");
                    }
                    return Some(frame);
                }
                let read = tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf));
                if read.await.expect("a frame in time").expect("read") == 0 {
                    return None;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_connection_answers_streams_and_pings_and_carries_data_both_ways() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::start(ours);
        let mut peer = Peer::new(theirs);
        peer.open(1, 0, &[("streamtype", "stdin")]).await;
        assert!(matches!(peer.next().await, Some(Frame::SynReply { stream: 1, .. })));
        let mut stream = conn.next_stream().await.expect("a stream");
        assert_eq!(stream.headers.get("streamtype"), Some("stdin"));

        peer.send(Frame::Ping(41)).await;
        assert_eq!(peer.next().await, Some(Frame::Ping(41)));

        peer.send(Frame::Data { stream: 1, flags: 0, data: Bytes::from_static(b"hi") }).await;
        peer.send(Frame::Data { stream: 1, flags: FLAG_FIN, data: Bytes::new() }).await;
        assert_eq!(stream.incoming.recv().await.as_deref(), Some(&b"hi"[..]));
        assert_eq!(stream.incoming.recv().await, None, "FIN ends the stream's data");

        stream.out.write(b"back").await.expect("written");
        stream.out.finish().await.expect("finished");
        assert_eq!(
            peer.next().await,
            Some(Frame::Data { stream: 1, flags: 0, data: Bytes::from_static(b"back") })
        );
        assert_eq!(peer.next().await, Some(Frame::Data { stream: 1, flags: FLAG_FIN, data: Bytes::new() }));

        // A second stream, then reset by the peer.
        peer.open(3, 0, &[("streamtype", "data")]).await;
        assert!(matches!(peer.next().await, Some(Frame::SynReply { stream: 3, .. })));
        let second = conn.next_stream().await.expect("a stream");
        peer.send(Frame::RstStream { stream: 3, status: CANCEL }).await;
        tokio::time::timeout(Duration::from_secs(5), second.reset.cancelled()).await.expect("reset seen");

        // A stream id that goes backwards is refused.
        peer.open(3, 0, &[("streamtype", "data")]).await;
        assert_eq!(peer.next().await, Some(Frame::RstStream { stream: 3, status: PROTOCOL_ERROR }));

        conn.close().await;
        assert_eq!(peer.next().await, None, "closed");
    }

    #[tokio::test]
    async fn an_oversized_frame_gets_a_goaway() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::start(ours);
        let mut peer = Peer::new(theirs);
        peer.io.write_all(b"\x80\x03\x00\x01\x00\xff\xff\xff").await.expect("sent");
        assert_eq!(peer.next().await, Some(Frame::GoAway { last_good: 0, status: PROTOCOL_ERROR }));
        assert!(conn.next_stream().await.is_none());
        conn.close().await;
    }
}
