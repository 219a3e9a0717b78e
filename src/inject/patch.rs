//! The sidecar's JSON patch (RFC 6902), kept typed: the webhook writes it
//! straight to bytes, without first turning every container into a
//! `serde_json::Value` (that detour was most of an injection's cost), and
//! `mesh kube-inject` and the tests read it back as a `json_patch::Patch`.
//! It adds, and replaces nothing but the app's rewritten probes.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Container, Probe, Volume};
use serde::Serialize;

use super::InjectError;

/// One operation: `add`, or `replace` for a probe. Injection never removes
/// anything the pod has.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Operation {
    op: &'static str,
    path: PointerBuf,
    value: Addition,
}

/// What one operation writes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Addition {
    /// An app container's probe, rewritten to Envoy's app-health listener.
    Probe(Box<Probe>),
    Containers(Vec<Container>),
    Container(Box<Container>),
    Volumes(Vec<Volume>),
    Volume(Box<Volume>),
    Annotations(BTreeMap<String, String>),
    Annotation(String),
    Labels(BTreeMap<String, String>),
    Label(String),
}

/// The patch that injects one pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SidecarPatch(Vec<Operation>);

impl SidecarPatch {
    /// Adds `value` at the path made of these keys (escaped as JSON-pointer tokens).
    pub fn add(&mut self, path: &[&str], value: Addition) {
        self.0.push(Operation { op: "add", path: PointerBuf::from_tokens(path.iter().copied()), value });
    }

    /// Replaces what is at the path made of these keys with `value`.
    pub fn replace(&mut self, path: &[&str], value: Addition) {
        self.0.push(Operation { op: "replace", path: PointerBuf::from_tokens(path.iter().copied()), value });
    }

    /// The patch as the webhook sends it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, InjectError> {
        serde_json::to_vec(self).map_err(|e| InjectError::Invalid(format!("encoding the patch: {e}")))
    }

    /// The patch as `json_patch` applies it.
    pub fn to_json_patch(&self) -> Result<json_patch::Patch, InjectError> {
        serde_json::from_slice(&self.to_bytes()?)
            .map_err(|e| InjectError::Invalid(format!("reading back the patch: {e}")))
    }
}
