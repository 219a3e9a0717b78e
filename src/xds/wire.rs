//! Discovery responses as they go on the wire, without copying resources
//! per proxy.
//!
//! A [`Resource`] is encoded once, when it is built, as the `resources`
//! entry of a `DiscoveryResponse`. Protobuf fields concatenate, so a
//! response is its few per-stream fields (version, type URL, nonce),
//! encoded per stream, with the shared entries spliced in between, in field
//! order: the bytes are those prost would write for the same message. A
//! response holds its resources by `Arc`; the only copy is the one into
//! the gRPC frame as it is sent.
//!
//! [`AdsCodec`] is the tonic codec of the ADS service: it writes these
//! responses and decodes requests with prost.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::BufMut;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::snapshot::Resource;

/// A response that knows how to write itself.
pub trait Wire: Send + 'static {
    /// The exact length of [`Wire::encode`]'s output.
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut impl BufMut);

    /// The bytes, in a vector (tests, and sizes).
    fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// A state-of-the-world response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub nonce: String,
}

impl SotwResponse {
    /// The same response as prost's message (decoded from the wire bytes).
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse::decode(self.encode_to_vec().as_slice()).expect("valid encoding")
    }

    /// Bytes of resources carried.
    pub fn resource_bytes(&self) -> usize {
        self.resources.iter().map(|r| r.value().len()).sum()
    }
}

impl Wire for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self.resources.iter().map(|r| r.entry().len()).sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        // DiscoveryResponse: version_info = 1, resources = 2, type_url = 4,
        // nonce = 5.
        string(1, &self.version_info, buf);
        for resource in &self.resources {
            buf.put_slice(resource.entry());
        }
        string(4, &self.type_url, buf);
        string(5, &self.nonce, buf);
    }
}

/// A Delta response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: String,
    /// Sent as `Resource { version, resource, name }` wrappers.
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub nonce: String,
    pub removed_resources: Vec<String>,
}

impl DeltaResponse {
    /// The same response as prost's message (decoded from the wire bytes).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse::decode(self.encode_to_vec().as_slice()).expect("valid encoding")
    }

    /// Bytes of resources carried.
    pub fn resource_bytes(&self) -> usize {
        self.resources.iter().map(|r| r.value().len()).sum()
    }
}

/// The length of a Delta `Resource` wrapper's body: version = 1,
/// resource = 2 (the `Any`), name = 3.
fn wrapper_len(resource: &Resource) -> usize {
    let any = resource.any().len();
    string_len(1, &resource.version)
        + key_len(2)
        + encoded_len_varint(any as u64)
        + any
        + string_len(3, &resource.name)
}

impl Wire for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| {
                    let len = wrapper_len(r);
                    key_len(2) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
                .sum::<usize>()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        // DeltaDiscoveryResponse: system_version_info = 1, resources = 2,
        // type_url = 4, nonce = 5, removed_resources = 6.
        string(1, &self.system_version_info, buf);
        for resource in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(wrapper_len(resource) as u64, buf);
            string(1, &resource.version, buf);
            let any = resource.any();
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(any.len() as u64, buf);
            buf.put_slice(any);
            string(3, &resource.name, buf);
        }
        string(4, &self.type_url, buf);
        string(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            string_always(6, name, buf);
        }
    }
}

/// A proto3 string field: absent when empty.
fn string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        string_always(tag, value, buf);
    }
}

fn string_always(tag: u32, value: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(value.len() as u64) + value.len() }
}

/// The ADS codec: responses written by [`Wire`], requests decoded by prost.
pub struct AdsCodec<Resp, Req>(PhantomData<fn(Resp) -> Req>);

impl<Resp, Req> Default for AdsCodec<Resp, Req> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Resp, Req> Codec for AdsCodec<Resp, Req>
where
    Resp: Wire,
    Req: Message + Default + Send + 'static,
{
    type Encode = Resp;
    type Decode = Req;
    type Encoder = WireEncoder<Resp>;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

pub struct WireEncoder<T>(PhantomData<fn(T)>);

impl<T: Wire> Encoder for WireEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

pub struct ProstDecoder<T>(PhantomData<fn() -> T>);

impl<T: Message + Default> Decoder for ProstDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(buf).map(Some).map_err(|e| Status::internal(format!("undecodable request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn resource(name: &str, body: &[u8]) -> Arc<Resource> {
        Arc::new(Resource::new(name, Any { type_url: "type.example/T".into(), value: body.to_vec() }))
    }

    #[test]
    fn a_sotw_response_is_the_bytes_prost_writes() {
        let resources = vec![resource("a", b"one"), resource("b", &[7; 300]), resource("c", b"")];
        let response = SotwResponse {
            version_info: "v1".into(),
            resources: resources.clone(),
            type_url: "type.example/T".into(),
            nonce: "12".into(),
        };
        let proto = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| r.body()).collect(),
            type_url: "type.example/T".into(),
            nonce: "12".into(),
            ..Default::default()
        };
        assert_eq!(response.encode_to_vec(), proto.encode_to_vec());
        assert_eq!(response.encoded_len(), proto.encoded_len());
        assert_eq!(response.to_proto(), proto);
        let empty = SotwResponse::default();
        assert_eq!(empty.encode_to_vec(), DiscoveryResponse::default().encode_to_vec());
    }

    #[test]
    fn a_delta_response_is_the_bytes_prost_writes() {
        let resources = vec![resource("a", b"one"), resource("b", &[7; 300])];
        let response = DeltaResponse {
            system_version_info: "v2".into(),
            resources: resources.clone(),
            type_url: "type.example/T".into(),
            nonce: "3".into(),
            removed_resources: vec!["gone".into(), String::new()],
        };
        let proto = DeltaDiscoveryResponse {
            system_version_info: "v2".into(),
            resources: resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body()),
                    ..Default::default()
                })
                .collect(),
            type_url: "type.example/T".into(),
            nonce: "3".into(),
            removed_resources: vec!["gone".into(), String::new()],
            ..Default::default()
        };
        assert_eq!(response.encode_to_vec(), proto.encode_to_vec());
        assert_eq!(response.encoded_len(), proto.encoded_len());
        assert_eq!(response.to_proto(), proto);
    }
}
