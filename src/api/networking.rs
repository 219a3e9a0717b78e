//! Small messages of Istio's `networking.istio.io` API that VirtualService and
//! DestinationRule both use (Istio declares them in `virtual_service.proto`
//! and `type/v1beta1/selector.proto`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selects one port of a service by its number (Istio's `PortSelector`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number on the service, 1-65535, e.g. 9080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// A share of requests as a percentage between 0.0 and 100.0; fractions are
/// allowed, so 0.1 means one request in a thousand (Istio's `Percent`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    /// The percentage, from 0.0 to 100.0, e.g. 12.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// Picks workloads (pods or VMs) by their labels, in the namespace of the
/// object that carries the selector (Istio's `WorkloadSelector`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry to be selected, e.g. {app: reviews}.
    /// Empty selects every workload in the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Picks workloads by their labels, in the namespace of the object that
/// carries it: the `workloadSelector` of a Sidecar or a ServiceEntry
/// (Istio's `networking.v1alpha3.WorkloadSelector`, whose field is
/// `labels`, not `matchLabels`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadLabels {
    /// Labels a workload must all carry to be selected, e.g. {app: ratings}.
    /// At least one is required.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
