//! Discovery responses as they go on the wire, without copying resources
//! per proxy.
//!
//! A [`Resource`] is encoded once, when it is built, as the `resources`
//! entry of a `DiscoveryResponse`. Protobuf fields concatenate, so a
//! response is its few per-stream fields (version, type URL, nonce),
//! encoded per stream, with the shared entries spliced in between, in field
//! order: the bytes are those prost would write for the same message. A
//! Delta response wraps each resource in its own `Resource` message
//! (version, the `Any`, name): the wrapper is written per stream around
//! the same shared `Any` bytes. A response holds its resources by `Arc`, and [`super::grpc`] hands the
//! larger entries to HTTP/2 by reference: they are copied only into TLS
//! records as they are sent.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::resource_type::ResourceType;
use super::snapshot::Resource;

/// Where a response writes itself: bytes to copy, and shared bytes that a
/// sink may keep by reference ([`super::grpc::Frames`]) instead of copying.
pub trait Sink {
    fn put_slice(&mut self, bytes: &[u8]);
    fn put_shared(&mut self, bytes: &Bytes);
}

impl Sink for Vec<u8> {
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_shared(&mut self, bytes: &Bytes) {
        self.extend_from_slice(bytes);
    }
}

/// A response that knows how to write itself.
pub trait Wire: Send + 'static {
    /// The exact length of [`Wire::encode`]'s output.
    fn encoded_len(&self) -> usize;
    fn encode(&self, out: &mut impl Sink);

    /// The bytes, in a vector (tests, and sizes).
    fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// The type URL a response carries: of a type the mesh serves, or the one
/// a proxy asked for that the mesh does not serve (answered with nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeUrl {
    Served(ResourceType),
    Other(String),
}

impl TypeUrl {
    pub fn as_str(&self) -> &str {
        match self {
            TypeUrl::Served(resource_type) => resource_type.type_url(),
            TypeUrl::Other(type_url) => type_url,
        }
    }

    /// The type, if the mesh serves it.
    pub fn served(&self) -> Option<ResourceType> {
        match self {
            TypeUrl::Served(resource_type) => Some(*resource_type),
            TypeUrl::Other(_) => None,
        }
    }
}

impl Default for TypeUrl {
    /// No type URL (absent on the wire).
    fn default() -> Self {
        TypeUrl::Other(String::new())
    }
}

impl From<ResourceType> for TypeUrl {
    fn from(resource_type: ResourceType) -> Self {
        TypeUrl::Served(resource_type)
    }
}

/// A state-of-the-world response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: TypeUrl,
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
            + string_len(4, self.type_url.as_str())
            + string_len(5, &self.nonce)
    }

    fn encode(&self, buf: &mut impl Sink) {
        // DiscoveryResponse: version_info = 1, resources = 2, type_url = 4,
        // nonce = 5.
        string(1, &self.version_info, buf);
        for resource in &self.resources {
            buf.put_shared(resource.entry());
        }
        string(4, self.type_url.as_str(), buf);
        string(5, &self.nonce, buf);
    }
}

/// A Delta response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: String,
    /// Sent as `Resource { version, resource, name }` wrappers.
    pub resources: Vec<Arc<Resource>>,
    pub type_url: TypeUrl,
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
            + string_len(4, self.type_url.as_str())
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| key_len(6) + encoded_len_varint(n.len() as u64) + n.len())
                .sum::<usize>()
    }

    fn encode(&self, buf: &mut impl Sink) {
        // DeltaDiscoveryResponse: system_version_info = 1, resources = 2,
        // type_url = 4, nonce = 5, removed_resources = 6.
        string(1, &self.system_version_info, buf);
        for resource in &self.resources {
            key(2, buf);
            varint(wrapper_len(resource) as u64, buf);
            string(1, &resource.version, buf);
            let any = resource.any_bytes();
            key(2, buf);
            varint(any.len() as u64, buf);
            buf.put_shared(&any);
            string(3, &resource.name, buf);
        }
        string(4, self.type_url.as_str(), buf);
        string(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            string_always(6, name, buf);
        }
    }
}

/// A proto3 string field: absent when empty.
fn string(tag: u32, value: &str, buf: &mut impl Sink) {
    if !value.is_empty() {
        string_always(tag, value, buf);
    }
}

fn string_always(tag: u32, value: &str, buf: &mut impl Sink) {
    key(tag, buf);
    varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

/// The key of a length-delimited field.
fn key(tag: u32, buf: &mut impl Sink) {
    let mut bytes = [0u8; 10];
    let mut at = &mut bytes[..];
    encode_key(tag, WireType::LengthDelimited, &mut at);
    let written = 10 - at.len();
    buf.put_slice(&bytes[..written]);
}

fn varint(value: u64, buf: &mut impl Sink) {
    let mut bytes = [0u8; 10];
    let mut at = &mut bytes[..];
    encode_varint(value, &mut at);
    let written = 10 - at.len();
    buf.put_slice(&bytes[..written]);
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(value.len() as u64) + value.len() }
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
            type_url: TypeUrl::Other("type.example/T".into()),
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
        let served = SotwResponse { type_url: ResourceType::Cluster.into(), ..Default::default() };
        assert_eq!(served.to_proto().type_url, ResourceType::Cluster.type_url());
    }

    #[test]
    fn a_delta_response_is_the_bytes_prost_writes() {
        let resources = vec![resource("a", b"one"), resource("b", &[7; 300])];
        let response = DeltaResponse {
            system_version_info: "v2".into(),
            resources: resources.clone(),
            type_url: TypeUrl::Other("type.example/T".into()),
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
