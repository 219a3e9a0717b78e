//! The status every Istio configuration kind carries: what the mesh made of
//! the object. Written by the controller only (the status subresource), so
//! users' `kubectl apply` never clobbers it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the mesh observed about this object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// The latest observations of the object's state, one per condition type
    /// (for example Accepted and Reconciled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConfigCondition>,
    /// The metadata.generation the controller last processed; when it is
    /// older than the object's generation, the status is not yet up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One observation of the object's state, in the shape Kubernetes uses for
/// conditions everywhere.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigCondition {
    /// The kind of observation, for example Accepted or Reconciled.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A one-word CamelCase cause of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation of the condition, naming the field at fault when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition last changed from one status to another (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
