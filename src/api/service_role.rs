//! `ServiceRole` (rbac.istio.io/v1alpha1): a named set of permissions, each
//! an [`AccessRule`] over services, paths, methods, ports and custom
//! constraints. A role grants nothing until a `ServiceRoleBinding` assigns
//! it to subjects. Fields follow Istio 1.4's `rbac/v1alpha1/rbac.proto`,
//! including the ones Istio hid from its documentation.

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::api::schema::accept_proto_names;
use crate::api::status::ConfigStatus;

/// The permissions a role grants: a request is allowed by the role when any
/// one of its rules matches it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRole",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "rbac-istio-io",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio RBAC (v1alpha1) role: a list of access rules that ServiceRoleBindings grant to subjects in the same namespace."
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoleSpec {
    /// The access rules of the role. A request is allowed when it matches at
    /// least one rule; a role without rules allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRule>,
}

/// One permission: which services may be called, and optionally on which
/// hosts, paths, methods and ports, under which extra constraints. Every
/// field that is set must match; within a list, any one entry matching is
/// enough. String entries match exactly, by prefix (`"/books/*"`) or by
/// suffix (`"*/review"`), and `"*"` matches anything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = access_rule_proto_names)]
pub struct AccessRule {
    /// The services the rule covers, by fully-qualified name, e.g.
    /// "reviews.default.svc.cluster.local", "reviews*" or "*.default.svc.cluster.local";
    /// ["*"] covers every service in the role's namespace. Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,

    /// HTTP hosts (the Host/:authority header) the rule covers, e.g.
    /// "bookinfo.example.com" or "*.example.com". Unset means any host. Do not
    /// set it for TCP services: the rule would be ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// HTTP hosts the rule excludes: a request whose host matches one of them
    /// does not match the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_hosts")]
    pub not_hosts: Vec<String>,

    /// HTTP paths the rule covers, e.g. "/books/review", "/books/*" or
    /// "*/review"; for gRPC, the full method name such as
    /// "/bookinfo.Ratings/GetRating" (case-sensitive). Unset means any path.
    /// Do not set it for TCP services: the rule would be ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,

    /// HTTP paths (or gRPC methods) the rule excludes, e.g. "/admin/*".
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_paths")]
    pub not_paths: Vec<String>,

    /// HTTP methods the rule covers, e.g. ["GET", "HEAD"]; unset or ["*"]
    /// means any method. gRPC calls are always POST, so other methods deny
    /// them. Do not set it for TCP services: the rule would be ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,

    /// HTTP methods the rule excludes, e.g. ["DELETE"]. Setting both methods
    /// and notMethods is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_methods")]
    pub not_methods: Vec<String>,

    /// Destination ports the rule covers, e.g. [9080]. Unset means any port.
    /// Setting both ports and notPorts is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,

    /// Destination ports the rule excludes, e.g. [15090]. Setting both ports
    /// and notPorts is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "not_ports")]
    pub not_ports: Vec<i32>,

    /// Extra conditions on request attributes that must all hold, such as a
    /// destination label or a request header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// A condition on one request attribute: the attribute named by `key` must
/// equal one of `values`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    /// The attribute to test, from Istio's list of supported constraint keys,
    /// e.g. "destination.labels[version]", "destination.port" or
    /// "request.headers[User-Agent]".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,

    /// The values that satisfy the constraint, matched exactly, by prefix
    /// ("v1*") or by suffix ("*-canary"), e.g. ["v1", "v2"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

fn access_rule_proto_names(schema: &mut Schema) {
    accept_proto_names(
        schema,
        &[
            ("notHosts", "not_hosts"),
            ("notPaths", "not_paths"),
            ("notMethods", "not_methods"),
            ("notPorts", "not_ports"),
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
        let crd = ServiceRole::crd();
        let v = serde_json::to_value(&crd).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("serviceroles.rbac.istio.io"));
        assert_eq!(crd.spec.group, "rbac.istio.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ServiceRole");
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["istio-io".to_string(), "rbac-istio-io".to_string()])
        );
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
        assert_eq!(v["spec"]["versions"][0]["subresources"]["status"], json!({}));
        let rule = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["rules"]["items"];
        assert_eq!(rule["properties"]["ports"]["items"]["format"], "int32");
        assert!(rule["properties"]["not_paths"].is_object(), "proto name kept in schema");
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: ServiceRole"));
    }

    #[test]
    fn bookinfo_samples_round_trip() {
        let docs = samples::of_kind("ServiceRole");
        assert!(docs.len() >= 6, "found only {} ServiceRole samples", docs.len());
        for (file, doc) in docs {
            let role: ServiceRole =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(serde_json::to_value(&role.spec).unwrap(), doc["spec"], "{file}");
        }
    }

    const FULL: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: reviews-reader
  namespace: default
spec:
  rules:
  - services: ["reviews.default.svc.cluster.local", "ratings*"]
    hosts: ["bookinfo.example.com", "*.example.com"]
    notHosts: ["admin.example.com"]
    paths: ["/reviews/*", "/health"]
    notPaths: ["/reviews/admin/*"]
    methods: ["GET", "HEAD"]
    notMethods: ["DELETE"]
    ports: [9080, 8080]
    notPorts: [15090]
    constraints:
    - key: destination.labels[version]
      values: ["v1", "v2"]
  - services: ["*"]
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let role: ServiceRole = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(role.spec.rules[0].not_ports, [15090]);
        assert_eq!(role.spec.rules[0].constraints[0].key.as_deref(), Some("destination.labels[version]"));
        assert_eq!(serde_json::to_value(&role).unwrap(), doc);
    }

    #[test]
    fn proto_field_names_are_accepted() {
        let rule: AccessRule = serde_json::from_value(json!({
            "services": ["a"], "not_hosts": ["h"], "not_paths": ["/p"], "not_methods": ["PUT"], "not_ports": [1]
        }))
        .unwrap();
        let back = serde_json::to_value(&rule).unwrap();
        assert_eq!(
            back,
            json!({"services": ["a"], "notHosts": ["h"], "notPaths": ["/p"], "notMethods": ["PUT"], "notPorts": [1]})
        );
    }
}
