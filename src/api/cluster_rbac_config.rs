//! `ClusterRbacConfig` (rbac.istio.io/v1alpha1, cluster-scoped): the
//! mesh-wide switch for Istio RBAC. Its spec is exactly `RbacConfig`'s
//! ([`RbacConfigSpec`]): [`ClusterRbacConfigSpec`] is a transparent newtype
//! around it, since the CustomResource derive needs a struct of its own per
//! kind, so the fields and their documentation live in one place.

use std::ops::{Deref, DerefMut};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::rbac_config::RbacConfigSpec;
use crate::api::status::ConfigStatus;

/// Where Istio RBAC is enforced in the mesh; the same fields as RbacConfig.
/// Serialized exactly as the wrapped [`RbacConfigSpec`], which it derefs to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ClusterRbacConfig",
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
    doc = "Istio RBAC (v1alpha1) mesh-wide switch: turns RBAC off, on, or on for an included or excluded set of services and namespaces. Create one, named \"default\"."
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ClusterRbacConfigSpec(pub RbacConfigSpec);

impl Deref for ClusterRbacConfigSpec {
    type Target = RbacConfigSpec;

    fn deref(&self) -> &RbacConfigSpec {
        &self.0
    }
}

impl DerefMut for ClusterRbacConfigSpec {
    fn deref_mut(&mut self) -> &mut RbacConfigSpec {
        &mut self.0
    }
}

impl From<RbacConfigSpec> for ClusterRbacConfigSpec {
    fn from(spec: RbacConfigSpec) -> Self {
        Self(spec)
    }
}

impl From<ClusterRbacConfigSpec> for RbacConfigSpec {
    fn from(spec: ClusterRbacConfigSpec) -> Self {
        spec.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RbacConfig;
    use crate::api::rbac_config::{PROTO_NAMES, RbacConfigMode, RbacConfigTarget};
    use crate::api::samples;
    use crate::api::service_role_binding::EnforcementMode;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::Value;

    fn spec_schema(crd: &Value) -> &Value {
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    }

    #[test]
    fn crd_is_cluster_scoped_rbac_v1alpha1() {
        let crd = ClusterRbacConfig::crd();
        let v = serde_json::to_value(&crd).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("clusterrbacconfigs.rbac.istio.io"));
        assert_eq!(crd.spec.group, "rbac.istio.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "ClusterRbacConfig");
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
        assert_eq!(v["spec"]["versions"][0]["additionalPrinterColumns"][0]["jsonPath"], ".spec.mode");
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: ClusterRbacConfig"));
        // One schema for both kinds' specs.
        let namespaced = serde_json::to_value(RbacConfig::crd()).unwrap();
        assert_eq!(spec_schema(&v)["properties"], spec_schema(&namespaced)["properties"]);
        assert!(spec_schema(&v)["properties"]["inclusion"]["properties"]["namespaces"].is_object());
    }

    /// One sample writes `enforcement_mode`, the protobuf name; it reads back
    /// as `enforcementMode`.
    #[test]
    fn bookinfo_samples_round_trip() {
        let docs = samples::of_kind("ClusterRbacConfig");
        assert!(docs.len() >= 3, "found only {} ClusterRbacConfig samples", docs.len());
        for (file, doc) in docs {
            let config: ClusterRbacConfig =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(config.spec.mode, Some(RbacConfigMode::OnWithInclusion), "{file}");
            let mut want = doc["spec"].clone();
            samples::to_json_names(&mut want, PROTO_NAMES);
            assert_eq!(serde_json::to_value(&config.spec).unwrap(), want, "{file}");
        }
    }

    #[test]
    fn snake_case_enforcement_mode_is_kept() {
        let docs = samples::of_kind("ClusterRbacConfig");
        let (_, doc) = docs
            .iter()
            .find(|(file, _)| file == "rbac-config-on-permissive.yaml")
            .expect("rbac-config-on-permissive.yaml sample");
        let config: ClusterRbacConfig = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(config.spec.enforcement_mode, Some(EnforcementMode::Permissive));
    }

    const FULL: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata:
  name: default
spec:
  mode: ON_WITH_EXCLUSION
  inclusion:
    services: ["ratings.default.svc.cluster.local"]
    namespaces: ["default"]
  exclusion:
    services: ["istio-ingressgateway.istio-system.svc.cluster.local"]
    namespaces: ["istio-system", "kube-system"]
  enforcementMode: ENFORCED
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let config: ClusterRbacConfig = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(config.spec.mode, Some(RbacConfigMode::OnWithExclusion));
        assert_eq!(
            config.spec.exclusion,
            Some(RbacConfigTarget {
                services: vec!["istio-ingressgateway.istio-system.svc.cluster.local".into()],
                namespaces: vec!["istio-system".into(), "kube-system".into()],
            })
        );
        assert_eq!(serde_json::to_value(&config).unwrap(), doc);
        assert!(config.metadata.namespace.is_none());
    }
}
