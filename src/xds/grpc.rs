//! gRPC framing for the ADS streams, done here rather than by tonic's
//! codec, for memory: tonic encodes each message into a per-stream buffer
//! that then stays as large as the largest message the stream ever sent,
//! a megabyte or two per proxy in a large mesh, held for the life of the
//! stream. Here:
//!
//! - a response ([`Wire`]) writes itself into [`Frames`]: the gRPC prefix
//!   and its few per-stream fields are copied into small chunks, and every
//!   resource entry of at least [`SHARED_MIN`] bytes goes to HTTP/2 as the
//!   shared [`Bytes`] itself. Nothing outlives the response's sending;
//! - requests are gathered from the body's DATA frames and decoded with
//!   prost; the buffer is let go once it is empty, so a large request (a
//!   thousand EDS names) is not held for the life of the stream;
//! - the stream ends with the trailers `grpc-status` and `grpc-message`; a
//!   stream refused before any response is a trailers-only response.
//!
//! Requests must be uncompressed (Envoy does not compress xDS).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use http::HeaderMap;
use http_body::{Body, Frame};
use prost::Message;
use tonic::Status;

use super::wire::{Sink, Wire};

/// Entries at least this large are sent by reference; smaller ones are
/// copied into the current chunk (a DATA frame per tiny entry would cost
/// more than the copy).
pub const SHARED_MIN: usize = 1024;
/// Copied bytes are cut into chunks of about this size.
const CHUNK: usize = 16 * 1024;
/// The largest request accepted (tonic's default too).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// One response as the chunks HTTP/2 sends: copies of the small parts,
/// shared references to the large ones.
#[derive(Default)]
pub struct Frames {
    out: Vec<Bytes>,
    small: BytesMut,
}

impl Frames {
    /// A gRPC message: the 5-byte prefix (not compressed, length), then the
    /// message.
    pub fn message(response: &impl Wire) -> Vec<Bytes> {
        let mut frames = Frames::default();
        let len = u32::try_from(response.encoded_len()).unwrap_or(u32::MAX);
        frames.put_slice(&[0]);
        frames.put_slice(&len.to_be_bytes());
        response.encode(&mut frames);
        frames.flush();
        frames.out
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.out.push(self.small.split().freeze());
        }
    }
}

impl Sink for Frames {
    fn put_slice(&mut self, bytes: &[u8]) {
        if self.small.capacity() - self.small.len() < bytes.len() {
            self.flush();
            self.small.reserve(CHUNK.max(bytes.len()));
        }
        self.small.extend_from_slice(bytes);
    }

    fn put_shared(&mut self, bytes: &Bytes) {
        if bytes.len() < SHARED_MIN {
            self.put_slice(bytes);
        } else {
            self.flush();
            self.out.push(bytes.clone());
        }
    }
}

/// The responses of a stream, as chunks, then a final status.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Vec<Bytes>, Status>> + Send>>;

/// A streaming gRPC response body: the chunks of each response, then the
/// trailers with the status the stream ended with (OK when the responses
/// simply end).
#[derive(Default)]
pub struct ResponseBody {
    responses: Option<Chunks>,
    pending: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ResponseBody {
    pub fn new(responses: Chunks) -> Self {
        Self { responses: Some(responses), pending: VecDeque::new(), trailers: None }
    }
}

/// The trailers that carry `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that cannot be a header value fails: say less.
        let _ = Status::new(status.code(), "").add_header(&mut headers);
    }
    headers
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if let Some(trailers) = self.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            let Some(responses) = self.responses.as_mut() else { return Poll::Ready(None) };
            match responses.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // `pending` is drained: it takes the chunks' own room, so a
                // stream keeps the room of its last response, not its largest.
                Poll::Ready(Some(Ok(chunks))) => self.pending = chunks.into(),
                Poll::Ready(Some(Err(status))) => {
                    self.trailers = Some(trailers(&status));
                    self.responses = None;
                }
                Poll::Ready(None) => {
                    self.trailers = Some(trailers(&Status::ok("")));
                    self.responses = None;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.responses.is_none() && self.pending.is_empty() && self.trailers.is_none()
    }
}

/// The requests of a stream, decoded from its body.
pub struct Requests<B, T> {
    body: B,
    buf: BytesMut,
    /// The body ended, or a request could not be read: nothing more comes.
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<B, T> Requests<B, T> {
    pub fn new(body: B) -> Self {
        Self { body, buf: BytesMut::new(), ended: false, _message: PhantomData }
    }
}

impl<B, T: Message + Default> Requests<B, T> {
    /// The next whole request in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<T>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::resource_exhausted(format!(
                "a request of {len} bytes is over the limit of {MAX_REQUEST}"
            )));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len);
        if self.buf.is_empty() {
            // `buf` still points into the message's allocation: let both go
            // (a stream may sit idle for hours after a large request).
            self.buf = BytesMut::new();
        }
        T::decode(message)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
    }
}

impl<B, T> Stream for Requests<B, T>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
    T: Message + Default,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(request)) => return Poll::Ready(Some(Ok(request))),
                Ok(None) => {}
                Err(status) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            this.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Status::unavailable(format!(
                        "the request stream broke: {e}"
                    )))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Err(Status::invalid_argument(
                            "the request stream ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::google::protobuf::Any;
    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::super::snapshot::Resource;
    use super::super::wire::{SotwResponse, TypeUrl};
    use super::*;

    fn response(sizes: &[usize]) -> SotwResponse {
        SotwResponse {
            version_info: "v1".into(),
            resources: sizes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Arc::new(Resource::new(format!("r{i}"), Any { type_url: "t".into(), value: vec![7; *n] }))
                })
                .collect(),
            type_url: TypeUrl::Other("t".into()),
            nonce: "1".into(),
        }
    }

    #[test]
    fn a_message_is_the_prefix_and_the_bytes_and_large_entries_are_shared() {
        let response = response(&[10, 5000, 20, 3000]);
        let chunks = Frames::message(&response);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let body = response.encode_to_vec();
        assert_eq!(joined[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(joined[1..5].try_into().unwrap()) as usize, body.len());
        assert_eq!(&joined[5..], body.as_slice());
        // The two large entries are the resources' own bytes, not copies.
        let shared: Vec<_> = chunks
            .iter()
            .filter(|c| response.resources.iter().any(|r| r.entry().as_ptr() == c.as_ptr()))
            .collect();
        assert_eq!(shared.len(), 2);
        assert_eq!(chunks.len(), 5, "prefix+v+small, large, small, large, type+nonce");
    }

    #[test]
    fn copied_parts_are_cut_into_chunks() {
        let response = response(&vec![900; 100]);
        let chunks = Frames::message(&response);
        assert!(chunks.len() > 1);
        assert!(
            chunks.iter().all(|c| c.len() <= CHUNK + 1000),
            "{:?}",
            chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&joined[5..], response.encode_to_vec().as_slice());
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    fn requests(
        chunks: Vec<Vec<u8>>,
    ) -> Requests<impl Body<Data = Bytes, Error: std::fmt::Display> + Unpin, DiscoveryRequest> {
        let frames = chunks.into_iter().map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
        Requests::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn request(names: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "t".into(),
            resource_names: (0..names)
                .map(|i| format!("outbound|9080||svc-{i}.default.svc.cluster.local"))
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_are_read_across_frames_and_a_large_buffer_is_let_go() {
        let (small, large) = (request(1), request(1000));
        let mut bytes = framed(&small);
        bytes.extend(framed(&large));
        bytes.extend(framed(&small));
        // Cut everywhere, even inside the prefix.
        let chunks: Vec<Vec<u8>> = bytes.chunks(7).map(<[u8]>::to_vec).collect();
        let mut stream = requests(chunks);
        assert_eq!(stream.next().await.map(Result::unwrap), Some(small.clone()));
        assert_eq!(stream.next().await.map(Result::unwrap), Some(large));
        assert_eq!(stream.next().await.map(Result::unwrap), Some(small));
        assert_eq!(stream.buf.capacity(), 0, "the large request's buffer went");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn bad_requests_end_the_stream_with_a_status() {
        let mut compressed = framed(&request(1));
        compressed[0] = 1;
        let mut stream = requests(vec![compressed]);
        assert_eq!(stream.next().await.map(|r| r.unwrap_err().code()), Some(tonic::Code::Unimplemented));
        assert!(stream.next().await.is_none());

        let cut = framed(&request(3));
        let mut stream = requests(vec![cut[..cut.len() - 1].to_vec()]);
        assert_eq!(stream.next().await.map(|r| r.unwrap_err().code()), Some(tonic::Code::InvalidArgument));

        let mut huge = vec![0];
        huge.extend((MAX_REQUEST as u32 + 1).to_be_bytes());
        let mut stream = requests(vec![huge]);
        assert_eq!(stream.next().await.map(|r| r.unwrap_err().code()), Some(tonic::Code::ResourceExhausted));
    }

    #[tokio::test]
    async fn the_body_sends_each_response_then_the_status_in_trailers() {
        let one = response(&[2000]);
        let responses: Chunks = Box::pin(futures::stream::iter([
            Ok(Frames::message(&one)),
            Err(Status::unavailable("the control plane is shutting down; reconnect")),
        ]));
        let collected = ResponseBody::new(responses).collect().await.expect("infallible");
        let trailers = collected.trailers().cloned().expect("trailers");
        let bytes = collected.to_bytes();
        let decoded = DiscoveryResponse::decode(&bytes[5..]).expect("one message");
        assert_eq!(decoded, one.to_proto());
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "the control plane is shutting down; reconnect");

        let ended: Chunks = Box::pin(futures::stream::empty());
        let collected = ResponseBody::new(ended).collect().await.expect("infallible");
        let status = Status::from_header_map(collected.trailers().expect("trailers")).expect("a status");
        assert_eq!(status.code(), tonic::Code::Ok);
    }
}
