//! What the two ADS protocols, state of the world ([`super::sotw`]) and
//! incremental ([`super::delta`]), have in common: the [`Machine`] trait
//! the server drives both through, what a step of either gives back
//! ([`Step`], [`Event`]), where a type stands on a stream
//! ([`TypeStatus`], [`Nack`]), the one request neither allows
//! ([`ProtocolError`]) and which protocol a stream speaks ([`Protocol`]).
//!
//! The machines themselves share make-before-break ([`super::order`]) and
//! the [`Snapshot`] they serve from; each keeps its own bookkeeping of
//! nonces and acknowledgements, as the protocols differ there.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::resource_type::ResourceType;
use super::snapshot::{Resources, Snapshot};
use super::wire::{SotwResponse, TypeUrl, Wire};

/// Which protocol a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sotw => "SotW",
            Protocol::Delta => "Delta",
        }
    }
}

/// What happened on the stream besides responses, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The proxy applied `version`.
    Ack { resource_type: ResourceType, version: String },
    /// The proxy refused `version` (of the named resources), saying `error`.
    Nack { resource_type: ResourceType, version: String, resources: Vec<String>, error: String },
    /// A request answering an older response, ignored.
    StaleNonce { resource_type: ResourceType, nonce: String },
}

/// The output of one step of a machine: responses of the protocol's kind
/// (SotW's by default), and events.
#[derive(Debug, PartialEq)]
pub struct Step<R = SotwResponse> {
    /// To send, in order.
    pub responses: Vec<R>,
    pub events: Vec<Event>,
}

impl<R> Default for Step<R> {
    fn default() -> Self {
        Self { responses: Vec::new(), events: Vec::new() }
    }
}

/// A request the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("a request on the aggregated stream has no type_url")]
    NoTypeUrl,
}

/// A refused version and the proxy's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub error: String,
}

/// Where one type stands on a stream, for /debug/syncz.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The version of what the proxy was sent last.
    pub sent: Option<String>,
    /// The version it acknowledged last.
    pub acked: Option<String>,
    /// Its latest refusal, while it is the latest answer.
    pub nack: Option<Nack>,
    /// Resources sent and held by the proxy, by count.
    pub resources: usize,
}

/// A response, as the log and metrics see it.
pub(crate) struct Pushed<'a> {
    pub type_url: &'a TypeUrl,
    pub version: &'a str,
    pub resources: usize,
    pub removed: usize,
    pub nonce: &'a str,
}

/// A protocol's state machine, as the server's session drives it: one
/// request or one new snapshot in, a [`Step`] out; no I/O.
pub(crate) trait Machine: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Response: Wire + Sync + std::fmt::Debug;
    const PROTOCOL: Protocol;

    fn new(snapshot: Arc<Snapshot>) -> Self;
    fn node(request: &Self::Request) -> Option<&Node>;
    /// The type URL a request is for, and the names it subscribes to.
    fn subscribing(request: &Self::Request) -> (&str, &[String]);
    fn on_request(&mut self, request: &Self::Request) -> Result<Step<Self::Response>, ProtocolError>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Step<Self::Response>;
    fn status(&self) -> BTreeMap<ResourceType, TypeStatus>;
    fn holding(&self) -> BTreeMap<ResourceType, Resources>;
    fn describe(response: &Self::Response) -> Pushed<'_>;
}
