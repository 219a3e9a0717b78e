//! `PeerAuthentication` (security.istio.io/v1beta1, also served as v1):
//! whether a workload's sidecar accepts mutual TLS, plaintext or both on
//! its inbound ports. One in Istio's root namespace without a selector is
//! mesh-wide, one elsewhere without a selector namespace-wide, one with a
//! selector applies to the pods it selects. Fields follow today's Istio
//! `security/v1beta1/peer_authentication.proto`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::networking::WorkloadSelector;
use crate::api::schema::field_doc_only;
use crate::api::status::ConfigStatus;

/// Versions PeerAuthentication is served under besides the stored v1beta1.
pub const EXTRA_VERSIONS: &[&str] = &["v1"];

/// The mutual TLS a workload's sidecar requires of incoming connections.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1beta1",
    kind = "PeerAuthentication",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "security-istio-io",
    shortname = "pa",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mtls.mode",
        description = "The mutual TLS mode: UNSET, DISABLE, PERMISSIVE or STRICT."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Peer authentication: whether the selected workloads accept mutual TLS, plaintext or both. Without a selector it applies to its namespace, or to the whole mesh in the root namespace (istio-system)."
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// The pods this policy applies to, by their labels, in the policy's
    /// namespace, e.g. `{matchLabels: {app: reviews}}`. Without it, the
    /// policy applies to every pod of its namespace, or of the mesh when it
    /// is in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,

    /// The mutual TLS mode of every inbound port, e.g. `{mode: STRICT}`.
    /// Unset (or mode UNSET) inherits the namespace's, then the mesh's
    /// setting; PERMISSIVE when nothing is set anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMutualTls>,

    /// Modes for single ports, by the port the workload listens on (the
    /// container port, not the Service port), e.g. `{"8080": {mode:
    /// DISABLE}}`; they win over `mtls` for that port. Only allowed with a
    /// selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PeerMutualTls>,
}

/// Mutual TLS settings of a workload or a port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerMutualTls {
    /// UNSET (inherit from the level above), DISABLE (plaintext only),
    /// PERMISSIVE (mutual TLS or plaintext) or STRICT (mutual TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PeerMtlsMode>,
}

/// What an inbound port accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(transform = field_doc_only)]
pub enum PeerMtlsMode {
    /// Inherit the mode of the level above (port from workload, workload
    /// from namespace, namespace from mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// Plaintext only: mutual TLS connections are refused.
    Disable,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_is_namespaced_security_v1beta1() {
        let crd = PeerAuthentication::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("peerauthentications.security.istio.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["pa".to_string()]));
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["mtls"]["properties"]["mode"]["enum"],
            json!(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])
        );
        assert_eq!(spec["portLevelMtls"]["type"], "object");
        assert!(spec["selector"]["properties"]["matchLabels"].is_object());
        let doc = spec["mtls"]["properties"]["mode"]["description"].as_str().unwrap();
        assert!(doc.starts_with("UNSET (inherit"), "{doc}");
    }

    const FULL: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: reviews
  namespace: default
spec:
  selector:
    matchLabels: {app: reviews}
  mtls: {mode: STRICT}
  portLevelMtls:
    "8080": {mode: DISABLE}
    "9080": {}
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let pa: PeerAuthentication = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(pa.spec.mtls.as_ref().and_then(|m| m.mode), Some(PeerMtlsMode::Strict));
        assert_eq!(pa.spec.port_level_mtls["8080"].mode, Some(PeerMtlsMode::Disable));
        assert_eq!(pa.spec.port_level_mtls["9080"].mode, None);
        assert_eq!(serde_json::to_value(&pa).unwrap(), doc);
    }

    /// portLevelMtls keys arrive as JSON object keys, strings, however the
    /// YAML wrote them (8080: or "8080":); validation checks they are ports.
    #[test]
    fn port_keys_are_strings() {
        let spec: PeerAuthenticationSpec =
            serde_json::from_value(json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}))
                .unwrap();
        assert_eq!(spec.port_level_mtls.keys().collect::<Vec<_>>(), ["8080"]);
    }
}
