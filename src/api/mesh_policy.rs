//! `MeshPolicy` (authentication.istio.io/v1alpha1, cluster-scoped): Istio
//! 1.1's mesh-wide authentication policy, read only when named `default`.
//! Its spec is exactly `Policy`'s ([`PolicySpec`]), without targets:
//! [`MeshPolicySpec`] is a transparent newtype around it, since the
//! CustomResource derive needs a struct of its own per kind, so the fields
//! and their documentation live in one place.

use std::ops::Deref;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::policy::PolicySpec;
use crate::api::status::ConfigStatus;

/// The authentication every workload of the mesh gets unless a Policy of
/// its namespace says otherwise; the same fields as Policy. Serialized
/// exactly as the wrapped [`PolicySpec`], which it derefs to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "authentication.istio.io",
    version = "v1alpha1",
    kind = "MeshPolicy",
    plural = "meshpolicies",
    status = "ConfigStatus",
    category = "istio-io",
    category = "authentication-istio-io",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio 1.1 mesh-wide authentication policy (v1alpha1): the Policy every workload gets unless its namespace has one. Create one, named \"default\", without targets. Superseded by a PeerAuthentication in the root namespace."
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct MeshPolicySpec(pub PolicySpec);

impl Deref for MeshPolicySpec {
    type Target = PolicySpec;

    fn deref(&self) -> &PolicySpec {
        &self.0
    }
}

impl From<PolicySpec> for MeshPolicySpec {
    fn from(spec: PolicySpec) -> Self {
        Self(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Policy;
    use crate::api::policy::MutualTlsMode;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::Value;

    fn spec_schema(crd: &Value) -> &Value {
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    }

    #[test]
    fn crd_is_cluster_scoped_with_policys_schema() {
        let crd = MeshPolicy::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("meshpolicies.authentication.istio.io"));
        assert_eq!(crd.spec.scope, "Cluster");
        let v = serde_json::to_value(&crd).unwrap();
        let namespaced = serde_json::to_value(Policy::crd()).unwrap();
        assert_eq!(spec_schema(&v)["properties"], spec_schema(&namespaced)["properties"]);
    }

    /// Istio 1.1's documented way to turn mutual TLS on for the whole mesh.
    #[test]
    fn istios_mesh_wide_mtls_reads_as_strict() {
        for yaml in [
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec: {peers: [{mtls: {}}]}",
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec:\n  peers:\n  - mtls:\n",
        ] {
            let policy: MeshPolicy = serde_yaml_ng::from_str(yaml).unwrap();
            assert!(policy.metadata.namespace.is_none());
            let mode = policy.spec.mutual_tls().map(|m| m.mode.unwrap_or_default());
            assert_eq!(mode, Some(MutualTlsMode::Strict), "{yaml}");
        }
    }
}
