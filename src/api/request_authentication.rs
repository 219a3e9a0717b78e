//! `RequestAuthentication` (security.istio.io/v1beta1, also served as v1):
//! which JSON Web Tokens the selected workloads' sidecars verify. A request
//! with a token that fails verification is refused (401); a request
//! without a token passes, with no end-user identity (authorization
//! decides). One in Istio's root namespace without a selector applies to
//! the whole mesh, one elsewhere without a selector to its namespace, one
//! with a selector to the pods it selects; every one that applies adds its
//! rules. Fields follow today's Istio
//! `security/v1beta1/request_authentication.proto`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::networking::WorkloadSelector;
use crate::api::status::ConfigStatus;

/// Versions RequestAuthentication is served under besides the stored v1beta1.
pub const EXTRA_VERSIONS: &[&str] = &["v1"];

/// The JWTs the selected workloads verify.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1beta1",
    kind = "RequestAuthentication",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "security-istio-io",
    shortname = "ra",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Request authentication: the JSON Web Tokens the selected workloads verify. An invalid token is refused (401); a request without one passes without an end-user identity. Without a selector it applies to its namespace, or to the whole mesh in the root namespace (istio-system)."
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// The pods this policy applies to, by their labels, in the policy's
    /// namespace, e.g. `{matchLabels: {app: productpage}}`. Without it, the
    /// policy applies to every pod of its namespace, or of the mesh when it
    /// is in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,

    /// The issuers whose tokens are accepted, each with its keys and where
    /// its tokens are found. A token is accepted when one rule verifies it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer of JSON Web Tokens and how its tokens are checked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// The issuer of the tokens (their `iss` claim), e.g.
    /// "https://accounts.example.com". Required.
    #[serde(default)]
    pub issuer: String,

    /// Accepted audiences (the `aud` claim), e.g. ["bookstore.example.com"];
    /// a token must name one of them. Empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// URL of the issuer's JSON Web Key Set, e.g.
    /// "https://accounts.example.com/.well-known/jwks.json". The mesh's
    /// controller fetches it and sends the keys to the sidecars, so they
    /// need no route to it. Use this or jwks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,

    /// The issuer's JSON Web Key Set inline, as JSON, e.g.
    /// "{\"keys\": [...]}". Wins over jwksUri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,

    /// Headers the token is read from, e.g. `[{name: x-jwt-assertion}]`.
    /// Default (with fromParams also empty): the Authorization header
    /// (prefix "Bearer ") and the access_token query parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,

    /// Query parameters the token is read from, e.g. ["my_token"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,

    /// A header to pass the verified token's payload to the application
    /// in, base64url-encoded, e.g. "x-jwt-payload".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,

    /// Pass the token on to the application; by default it is removed
    /// from the request once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
}

/// A header a token is read from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header's name, e.g. "x-jwt-assertion". Required.
    #[serde(default)]
    pub name: String,

    /// What precedes the token in the header's value, e.g. "Bearer "
    /// (with its space); the token is what follows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::Value;

    #[test]
    fn crd_is_namespaced_security_v1beta1() {
        let crd = RequestAuthentication::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("requestauthentications.security.istio.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["ra".to_string()]));
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert!(
            spec["jwtRules"]["items"]["properties"]["fromHeaders"]["items"]["properties"]["prefix"]
                .is_object()
        );
        assert!(spec["selector"]["properties"]["matchLabels"].is_object());
    }

    const FULL: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: foo
spec:
  selector:
    matchLabels: {app: httpbin}
  jwtRules:
  - issuer: "testing@secure.istio.io"
    audiences: ["httpbin"]
    jwksUri: "https://example.com/jwks.json"
    jwks: '{"keys": []}'
    fromHeaders:
    - name: x-jwt-assertion
      prefix: "Bearer "
    fromParams: ["my_token"]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let ra: RequestAuthentication = serde_yaml_ng::from_str(FULL).unwrap();
        let rule = &ra.spec.jwt_rules[0];
        assert_eq!(rule.issuer, "testing@secure.istio.io");
        assert_eq!(rule.from_headers[0].prefix.as_deref(), Some("Bearer "));
        assert_eq!(rule.forward_original_token, Some(true));
        assert_eq!(serde_json::to_value(&ra).unwrap(), doc);
    }
}
