//! `RbacConfig` (rbac.istio.io/v1alpha1, namespaced): the older name of the
//! mesh-wide switch for Istio RBAC, superseded by the cluster-scoped
//! `ClusterRbacConfig`. Both kinds share [`RbacConfigSpec`], defined here.
//! Fields follow Istio 1.4's `rbac/v1alpha1/rbac.proto`, including the ones
//! Istio hid from its documentation.

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::api::schema::{accept_proto_names, field_doc_only};
use crate::api::service_role_binding::EnforcementMode;
use crate::api::status::ConfigStatus;

/// Where Istio RBAC is enforced in the mesh. Only one such object should
/// exist, usually named "default" in the control plane's namespace
/// (istio-system).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "RbacConfig",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "rbac-istio-io",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Where Istio RBAC is enforced: OFF, ON, ON_WITH_INCLUSION or ON_WITH_EXCLUSION."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio RBAC (v1alpha1) mesh-wide switch, namespaced and deprecated: use ClusterRbacConfig, which has the same spec."
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rbac_config_proto_names)]
pub struct RbacConfigSpec {
    /// Which services Istio RBAC applies to: OFF (the default), ON,
    /// ON_WITH_INCLUSION or ON_WITH_EXCLUSION. Quote the value in YAML
    /// ('ON', 'OFF'): unquoted, YAML 1.1 parsers such as kubectl's read ON
    /// and OFF as booleans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RbacConfigMode>,

    /// The services and namespaces RBAC is enforced for when mode is
    /// ON_WITH_INCLUSION, e.g. `{namespaces: ["default"]}`. Ignored in other
    /// modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacConfigTarget>,

    /// The services and namespaces exempt from RBAC when mode is
    /// ON_WITH_EXCLUSION, e.g. `{namespaces: ["istio-system"]}`. Ignored in
    /// other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacConfigTarget>,

    /// ENFORCED (the default) applies RBAC; PERMISSIVE only evaluates and
    /// logs what RBAC would decide, without affecting requests, to try it
    /// out before turning it on.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "enforcement_mode")]
    pub enforcement_mode: Option<EnforcementMode>,
}

/// Which services Istio RBAC applies to. RBAC denies by default: once on for
/// a service, only requests some ServiceRoleBinding allows get through.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(transform = field_doc_only)]
pub enum RbacConfigMode {
    /// RBAC is off: no ServiceRole or ServiceRoleBinding is enforced. The default.
    #[default]
    Off,
    /// RBAC is on for every service in every namespace.
    On,
    /// RBAC is on only for the services and namespaces listed in `inclusion`.
    OnWithInclusion,
    /// RBAC is on for every service and namespace except those listed in `exclusion`.
    OnWithExclusion,
}

/// A set of services and namespaces; a service is in the set when it is
/// listed or its namespace is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RbacConfigTarget {
    /// Services by fully-qualified name, e.g. "ratings.default.svc.cluster.local".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,

    /// Whole namespaces, e.g. "default".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// The protobuf field names `RbacConfigSpec` also accepts, as
/// (JSON name, proto name).
pub(crate) const PROTO_NAMES: &[(&str, &str)] = &[("enforcementMode", "enforcement_mode")];

fn rbac_config_proto_names(schema: &mut Schema) {
    accept_proto_names(schema, PROTO_NAMES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::samples;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_is_namespaced_rbac_v1alpha1() {
        let crd = RbacConfig::crd();
        let v = serde_json::to_value(&crd).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("rbacconfigs.rbac.istio.io"));
        assert_eq!(crd.spec.group, "rbac.istio.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "RbacConfig");
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["mode"]["enum"], json!(["OFF", "ON", "ON_WITH_INCLUSION", "ON_WITH_EXCLUSION"]));
        assert_eq!(spec["enforcement_mode"]["enum"], json!(["ENFORCED", "PERMISSIVE"]));
        // The field's doc, not the enum type's, is what kubectl explain shows.
        let doc = spec["mode"]["description"].as_str().unwrap();
        assert!(doc.starts_with("Which services Istio RBAC applies to: OFF"), "{doc}");
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: RbacConfig"));
    }

    /// There are no RbacConfig samples in Bookinfo (it uses the cluster-scoped
    /// kind), so this also reads the ClusterRbacConfig samples' specs, which
    /// have the same shape. One of them writes `enforcement_mode`, the
    /// protobuf name, which reads back as `enforcementMode`.
    #[test]
    fn bookinfo_samples_round_trip() {
        let mut docs = samples::of_kind("RbacConfig");
        for (file, doc) in &docs {
            let config: RbacConfig =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut want = doc["spec"].clone();
            samples::to_json_names(&mut want, PROTO_NAMES);
            assert_eq!(serde_json::to_value(&config.spec).unwrap(), want, "{file}");
        }
        docs.extend(samples::of_kind("ClusterRbacConfig"));
        assert!(!docs.is_empty(), "no RbacConfig or ClusterRbacConfig samples");
        for (file, doc) in docs {
            let spec: RbacConfigSpec =
                serde_json::from_value(doc["spec"].clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut want = doc["spec"].clone();
            samples::to_json_names(&mut want, PROTO_NAMES);
            assert_eq!(serde_json::to_value(&spec).unwrap(), want, "{file}");
        }
    }

    const FULL: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata:
  name: default
  namespace: istio-system
spec:
  mode: ON_WITH_INCLUSION
  inclusion:
    services: ["ratings.default.svc.cluster.local"]
    namespaces: ["default"]
  exclusion:
    services: ["istio-ingressgateway.istio-system.svc.cluster.local"]
    namespaces: ["istio-system"]
  enforcementMode: PERMISSIVE
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let config: RbacConfig = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(config.spec.mode, Some(RbacConfigMode::OnWithInclusion));
        assert_eq!(config.spec.enforcement_mode, Some(EnforcementMode::Permissive));
        assert_eq!(serde_json::to_value(&config).unwrap(), doc);
    }

    #[test]
    fn modes_use_istio_names() {
        assert_eq!(RbacConfigMode::default(), RbacConfigMode::Off);
        for (mode, name) in [
            (RbacConfigMode::Off, "OFF"),
            (RbacConfigMode::On, "ON"),
            (RbacConfigMode::OnWithInclusion, "ON_WITH_INCLUSION"),
            (RbacConfigMode::OnWithExclusion, "ON_WITH_EXCLUSION"),
        ] {
            assert_eq!(serde_json::to_value(mode).unwrap(), name);
            assert_eq!(serde_json::from_value::<RbacConfigMode>(json!(name)).unwrap(), mode);
        }
    }
}
