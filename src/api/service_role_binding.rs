//! `ServiceRoleBinding` (rbac.istio.io/v1alpha1): grants a `ServiceRole` to
//! a list of subjects (identities, namespaces, IP ranges or request
//! properties). Fields follow Istio 1.4's `rbac/v1alpha1/rbac.proto`,
//! including the ones Istio hid from its documentation.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::api::schema::{accept_proto_names, field_doc_only};
use crate::api::service_role::AccessRule;
use crate::api::status::ConfigStatus;

/// Who is granted which role: every subject listed gets the permissions of
/// the role named in `roleRef`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRoleBinding",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "rbac-istio-io",
    printcolumn(
        name = "Reference",
        type_ = "string",
        json_path = ".spec.roleRef.name",
        description = "The ServiceRole this binding grants."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio RBAC (v1alpha1) binding: grants the permissions of a ServiceRole in the same namespace to a list of subjects."
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoleBindingSpec {
    /// The identities granted the role; a request matching any one of them
    /// gets the role's permissions. Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,

    /// The ServiceRole granted, which must be in the binding's namespace,
    /// e.g. `{kind: ServiceRole, name: details-reviews-viewer}`. Required
    /// unless the role is given by `role` or inline in `actions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_ref: Option<RoleRef>,

    /// ENFORCED (the default) applies the binding; PERMISSIVE only evaluates
    /// and logs what it would have decided, to try a policy out before
    /// enforcing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcementMode>,

    /// Permissions defined inline instead of in a separate ServiceRole, for
    /// a role no other binding needs. Use either this or a role reference in
    /// one binding, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<AccessRule>,

    /// The name of the ServiceRole granted, as an alternative to `roleRef`:
    /// "details-viewer" names a role in the binding's namespace, and a
    /// leading slash, "/details-viewer", a mesh-wide role in Istio's root
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// One identity, or set of identities, that a binding grants its role to.
/// Every field that is set must match the request; within a list, any one
/// entry matching is enough, and a request matching any `not*` entry does
/// not match. Names may use a prefix or suffix `*`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = subject_proto_names)]
pub struct Subject {
    /// The authenticated identity of the caller: with mutual TLS, its
    /// principal, e.g. "cluster.local/ns/default/sa/bookinfo-productpage";
    /// "*" matches any caller, authenticated or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,

    /// Caller principals (the source.principal attribute) that match, e.g.
    /// ["cluster.local/ns/default/sa/bookinfo-reviews"]; "*" matches any
    /// authenticated caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,

    /// Caller principals that must not match, e.g.
    /// ["cluster.local/ns/test/sa/sleep"].
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_names")]
    pub not_names: Vec<String>,

    /// A single group the caller must belong to, from the request's JWT
    /// groups claim. Deprecated: use `groups` and `notGroups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,

    /// Groups (the request.auth.claims[groups] attribute) that match, e.g.
    /// ["admins"]. Unset means any group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,

    /// Groups that must not match, e.g. ["contractors"].
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_groups")]
    pub not_groups: Vec<String>,

    /// Namespaces of the calling workload (the source.namespace attribute)
    /// that match, e.g. ["default", "istio-system"]. Unset means any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// Caller namespaces that must not match, e.g. ["test"].
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_namespaces")]
    pub not_namespaces: Vec<String>,

    /// Caller IP addresses or CIDR ranges that match, e.g. ["10.1.0.0/16",
    /// "192.168.100.2"]. Unset means any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,

    /// Caller IP addresses or CIDR ranges that must not match, e.g.
    /// ["10.1.2.0/24"].
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_ips")]
    pub not_ips: Vec<String>,

    /// Other attributes the caller must have, keyed by Istio's supported
    /// property names, e.g. `source.namespace: "default"` or
    /// `request.auth.claims[iss]: "https://accounts.example.com"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Names the role a binding grants.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// The kind of role referenced; "ServiceRole" is the only one supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,

    /// The name of the ServiceRole, which must be in the binding's
    /// namespace, e.g. "productpage-viewer".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Whether an RBAC policy is enforced or only tried out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(transform = field_doc_only)]
pub enum EnforcementMode {
    /// The policy allows and denies requests. The default.
    #[default]
    Enforced,
    /// The policy is evaluated and its decision logged, but requests are not
    /// affected: a way to check a new policy before enforcing it.
    Permissive,
}

fn subject_proto_names(schema: &mut Schema) {
    accept_proto_names(
        schema,
        &[
            ("notNames", "not_names"),
            ("notGroups", "not_groups"),
            ("notNamespaces", "not_namespaces"),
            ("notIps", "not_ips"),
        ],
    );
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
        let crd = ServiceRoleBinding::crd();
        let v = serde_json::to_value(&crd).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("servicerolebindings.rbac.istio.io"));
        assert_eq!(crd.spec.group, "rbac.istio.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ServiceRoleBinding");
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["additionalPrinterColumns"][0]["jsonPath"], ".spec.roleRef.name");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["mode"]["enum"], json!(["ENFORCED", "PERMISSIVE"]));
        let doc = spec["mode"]["description"].as_str().unwrap();
        assert!(doc.starts_with("ENFORCED (the default) applies the binding"), "{doc}");
        assert_eq!(
            spec["subjects"]["items"]["properties"]["properties"]["additionalProperties"]["type"],
            "string"
        );
        assert!(spec["subjects"]["items"]["properties"]["not_ips"].is_object(), "proto name kept in schema");
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: ServiceRoleBinding"));
    }

    #[test]
    fn bookinfo_samples_round_trip() {
        let docs = samples::of_kind("ServiceRoleBinding");
        assert!(docs.len() >= 6, "found only {} ServiceRoleBinding samples", docs.len());
        for (file, doc) in docs {
            let binding: ServiceRoleBinding =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(serde_json::to_value(&binding.spec).unwrap(), doc["spec"], "{file}");
        }
    }

    const FULL: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: bind-reviewers
  namespace: default
spec:
  subjects:
  - user: cluster.local/ns/default/sa/bookinfo-productpage
    names: ["cluster.local/ns/default/sa/bookinfo-reviews"]
    notNames: ["cluster.local/ns/test/sa/sleep"]
    group: admins
    groups: ["admins", "ops"]
    notGroups: ["contractors"]
    namespaces: ["default"]
    notNamespaces: ["test"]
    ips: ["10.1.0.0/16", "192.168.100.2"]
    notIps: ["10.1.2.0/24"]
    properties:
      source.namespace: default
      request.auth.claims[iss]: https://accounts.example.com
  - user: "*"
  roleRef:
    kind: ServiceRole
    name: reviews-reader
  mode: PERMISSIVE
  actions:
  - services: ["reviews.default.svc.cluster.local"]
    methods: ["GET"]
    notPorts: [15090]
  role: /reviews-reader
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let binding: ServiceRoleBinding = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(binding.spec.mode, Some(EnforcementMode::Permissive));
        assert_eq!(binding.spec.subjects[0].not_ips, ["10.1.2.0/24"]);
        assert_eq!(serde_json::to_value(&binding).unwrap(), doc);
    }

    #[test]
    fn enforcement_mode_defaults_to_enforced() {
        assert_eq!(EnforcementMode::default(), EnforcementMode::Enforced);
        assert_eq!(serde_json::to_value(EnforcementMode::Permissive).unwrap(), "PERMISSIVE");
        let binding: ServiceRoleBindingSpec =
            serde_json::from_value(json!({"subjects": [{"not_ips": ["1.2.3.4"]}]})).unwrap();
        assert_eq!(binding.mode, None);
        assert_eq!(serde_json::to_value(&binding).unwrap(), json!({"subjects": [{"notIps": ["1.2.3.4"]}]}));
    }
}
