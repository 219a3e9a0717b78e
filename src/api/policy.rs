//! `Policy` (authentication.istio.io/v1alpha1, namespaced): Istio 1.1's
//! authentication policy. The one named `default` without targets applies
//! to its namespace; others name the Services (and ports) whose workloads
//! they apply to. `peers` with an `mtls` entry switches mutual TLS on for
//! them. The cluster-scoped `MeshPolicy` has the same spec
//! ([`PolicySpec`], defined here). Fields follow Istio's
//! `authentication/v1alpha1/policy.proto`, including the ones Istio hid
//! from its documentation; Istio read it with protobuf's JSON parser, so
//! the protobuf field names (`peer_is_optional`, `trigger_rules`,
//! `excluded_paths`, as Istio's own JWT task wrote them) are accepted too.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::api::schema::{accept_proto_names, field_doc_only, one_of};
use crate::api::status::ConfigStatus;

/// Which workloads a policy applies to, and how their callers and the
/// requests' origins must authenticate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "authentication.istio.io",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    namespaced,
    status = "ConfigStatus",
    category = "istio-io",
    category = "authentication-istio-io",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio 1.1 authentication policy (v1alpha1): mutual TLS (peers) and end-user JWT (origins) for the workloads of the Services it targets, or of its whole namespace when it is named \"default\" and has no targets. Superseded by security.istio.io PeerAuthentication."
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = policy_proto_names)]
pub struct PolicySpec {
    /// The Services (by short name, in the policy's namespace) whose
    /// workloads the policy applies to, optionally only on some of their
    /// ports, e.g. `[{name: reviews, ports: [{number: 9080}]}]`. Empty: every
    /// workload of the namespace (then the policy must be named "default").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSelector>,

    /// How callers authenticate: `[{mtls: {}}]` (or `[{mtls: }]`) requires
    /// mutual TLS (mode STRICT), `[{mtls: {mode: PERMISSIVE}}]` accepts
    /// mutual TLS or plaintext. Empty: no peer authentication, i.e.
    /// plaintext only. The first mtls entry is the one used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAuthenticationMethod>,

    /// Accept a request even when no peer method succeeded, leaving the
    /// decision to authorization. Ignored when `peers` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "peer_is_optional")]
    pub peer_is_optional: Option<bool>,

    /// How the request's origin (the end user) authenticates: a list of
    /// JWT issuers, the first that validates sets the origin identity.
    /// Empty: no origin authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginAuthenticationMethod>,

    /// Accept a request even when no origin method succeeded. Ignored when
    /// `origins` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "origin_is_optional")]
    pub origin_is_optional: Option<bool>,

    /// Which identity becomes the request's principal: USE_PEER (the
    /// default) or USE_ORIGIN.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "principal_binding")]
    pub principal_binding: Option<PrincipalBinding>,
}

/// A Service whose workloads a policy applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// The Service's short name, in the policy's namespace, e.g. "reviews".
    /// Required.
    #[serde(default)]
    pub name: String,

    /// Workload labels; never implemented by Istio, which ignores it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// The Service's ports (its port, not the target port) the policy
    /// applies to, by number or name, e.g. `[{number: 9080}]`. Empty: every
    /// port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSelector>,
}

/// One port of a Service, by number or by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = port_selector_oneof)]
pub struct PortSelector {
    /// The Service port's number, 1-65535, e.g. 9080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,

    /// The Service port's name, e.g. "http".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn port_selector_oneof(s: &mut Schema) {
    one_of(s, &["number", "name"])
}

/// One way a caller may authenticate: mutual TLS, or (never available in
/// Istio) a JWT.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = peer_method_oneof)]
pub struct PeerAuthenticationMethod {
    /// Mutual TLS: `{}` or no value requires it (STRICT); `{mode:
    /// PERMISSIVE}` also accepts plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_is_strict")]
    pub mtls: Option<MutualTls>,

    /// A JWT as peer credential. Istio never made this available; use
    /// origins for JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

fn peer_method_oneof(s: &mut Schema) {
    one_of(s, &["mtls", "jwt"])
}

/// `mtls:` with no value is protobuf's empty message: mutual TLS with every
/// setting at its default, i.e. STRICT. serde would read null as "not set".
fn null_is_strict<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MutualTls>, D::Error> {
    Ok(Some(Option::<MutualTls>::deserialize(d)?.unwrap_or_default()))
}

/// Mutual TLS settings of Istio 1.1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = mutual_tls_proto_names)]
pub struct MutualTls {
    /// Deprecated: true also accepts TLS without a client certificate, as
    /// mode PERMISSIVE does.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "allow_tls")]
    pub allow_tls: Option<bool>,

    /// STRICT (the default: mutual TLS only) or PERMISSIVE (mutual TLS or
    /// plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MutualTlsMode>,
}

/// Istio 1.1's mutual TLS modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(transform = field_doc_only)]
pub enum MutualTlsMode {
    /// Mutual TLS only: the caller must present a client certificate. The default.
    #[default]
    Strict,
    /// Mutual TLS or plaintext.
    Permissive,
}

/// End-user authentication: a JWT.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginAuthenticationMethod {
    /// The JWT the request must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

/// A JSON Web Token issuer and how to find and check its tokens.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = jwt_proto_names)]
pub struct Jwt {
    /// The issuer of the tokens (their `iss` claim), e.g.
    /// "https://securetoken.google.com". Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,

    /// Audiences accepted (the `aud` claim); empty: the service's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// URL of the issuer's public key set, e.g.
    /// "https://www.googleapis.com/oauth2/v1/certs". Use this or jwks.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "jwks_uri")]
    pub jwks_uri: Option<String>,

    /// The issuer's public key set inline, as JSON. Use this or jwksUri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,

    /// Request headers the token may be in, e.g. "x-goog-iap-jwt-assertion";
    /// default: the Authorization header (Bearer).
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "jwt_headers")]
    pub jwt_headers: Vec<String>,

    /// Query parameters the token may be in; default: access_token.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "jwt_params")]
    pub jwt_params: Vec<String>,

    /// When to check the token: it is checked if any rule matches the
    /// request's path; empty: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "trigger_rules")]
    pub trigger_rules: Vec<TriggerRule>,
}

/// Paths a JWT is checked on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = trigger_rule_proto_names)]
pub struct TriggerRule {
    /// Paths the rule does not match, e.g. `[{exact: /health_check}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "excluded_paths")]
    pub excluded_paths: Vec<StringMatch>,

    /// Paths the rule matches, e.g. `[{prefix: /admin}]`; empty: every path
    /// not excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "included_paths")]
    pub included_paths: Vec<StringMatch>,
}

/// A case-sensitive match of a string: one of exact, prefix, suffix or regex.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = string_match_oneof)]
pub struct StringMatch {
    /// The whole string, e.g. "/health_check".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A prefix, e.g. "/status/".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A suffix, e.g. ".png".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// An ECMAScript regular expression, e.g. "^/pets/(.*?)?".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

fn string_match_oneof(s: &mut Schema) {
    one_of(s, &["exact", "prefix", "suffix", "regex"])
}

/// Which identity becomes the request's principal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(transform = field_doc_only)]
pub enum PrincipalBinding {
    /// The peer's (the caller's) identity. The default.
    #[default]
    UsePeer,
    /// The origin's (the end user's) identity.
    UseOrigin,
}

/// The protobuf field names each message also accepts, as (JSON name,
/// proto name).
pub(crate) const POLICY_PROTO_NAMES: &[(&str, &str)] = &[
    ("peerIsOptional", "peer_is_optional"),
    ("originIsOptional", "origin_is_optional"),
    ("principalBinding", "principal_binding"),
];
const MUTUAL_TLS_PROTO_NAMES: &[(&str, &str)] = &[("allowTls", "allow_tls")];
const JWT_PROTO_NAMES: &[(&str, &str)] = &[
    ("jwksUri", "jwks_uri"),
    ("jwtHeaders", "jwt_headers"),
    ("jwtParams", "jwt_params"),
    ("triggerRules", "trigger_rules"),
];
const TRIGGER_RULE_PROTO_NAMES: &[(&str, &str)] =
    &[("excludedPaths", "excluded_paths"), ("includedPaths", "included_paths")];

fn policy_proto_names(schema: &mut Schema) {
    accept_proto_names(schema, POLICY_PROTO_NAMES);
}

fn mutual_tls_proto_names(schema: &mut Schema) {
    accept_proto_names(schema, MUTUAL_TLS_PROTO_NAMES);
}

fn jwt_proto_names(schema: &mut Schema) {
    accept_proto_names(schema, JWT_PROTO_NAMES);
}

fn trigger_rule_proto_names(schema: &mut Schema) {
    accept_proto_names(schema, TRIGGER_RULE_PROTO_NAMES);
}

impl PolicySpec {
    /// The mutual TLS this policy asks of callers: the first `mtls` entry
    /// of `peers`, or `None` when there is none (Istio 1.1 then sets up no
    /// TLS at all: plaintext only).
    pub fn mutual_tls(&self) -> Option<&MutualTls> {
        self.peers.iter().find_map(|p| p.mtls.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_is_namespaced_authentication_v1alpha1() {
        let crd = Policy::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("policies.authentication.istio.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let peer = &spec["peers"]["items"];
        assert_eq!(peer["properties"]["mtls"]["nullable"], true, "mtls: with no value must reach mesh");
        assert_eq!(peer["properties"]["mtls"]["properties"]["mode"]["enum"], json!(["STRICT", "PERMISSIVE"]));
        assert!(peer["oneOf"].is_array());
        assert!(spec["peer_is_optional"].is_object(), "the protobuf name is kept by the API server");
        assert!(spec["origins"]["items"]["properties"]["jwt"]["properties"]["jwks_uri"].is_object());
    }

    /// Istio's own documentation writes `mtls:` with no value, and `{}`.
    #[test]
    fn mtls_without_a_value_is_strict_and_absent_mtls_is_none() {
        for peers in [json!([{"mtls": null}]), json!([{"mtls": {}}])] {
            let spec: PolicySpec = serde_json::from_value(json!({ "peers": peers })).unwrap();
            let mtls = spec.mutual_tls().expect("an mtls peer");
            assert_eq!(mtls.mode.unwrap_or_default(), MutualTlsMode::Strict);
        }
        let spec: PolicySpec = serde_json::from_value(json!({"peers": [{"jwt": {"issuer": "x"}}]})).unwrap();
        assert!(spec.mutual_tls().is_none());
        let spec: PolicySpec = serde_json::from_value(json!({})).unwrap();
        assert!(spec.mutual_tls().is_none());
        let yaml: PolicySpec = serde_yaml_ng::from_str("peers:\n- mtls:\n").unwrap();
        assert!(yaml.mutual_tls().is_some());
    }

    const FULL: &str = r#"
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: productpage-mtls-with-jwt
  namespace: frod
spec:
  targets:
  - name: productpage
    ports:
    - number: 9000
    - name: http
  peers:
  - mtls: {mode: PERMISSIVE, allowTls: true}
  peerIsOptional: false
  origins:
  - jwt:
      issuer: "https://securetoken.google.com"
      audiences: ["productpage"]
      jwksUri: "https://www.googleapis.com/oauth2/v1/certs"
      jwtHeaders: ["x-goog-iap-jwt-assertion"]
      jwtParams: ["token"]
      triggerRules:
      - excludedPaths: [{exact: /health_check}]
        includedPaths: [{prefix: /api}]
  originIsOptional: true
  principalBinding: USE_ORIGIN
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let policy: Policy = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(policy.spec.principal_binding, Some(PrincipalBinding::UseOrigin));
        assert_eq!(policy.spec.targets[0].ports[1].name.as_deref(), Some("http"));
        assert_eq!(serde_json::to_value(&policy).unwrap(), doc);
    }

    #[test]
    fn protobuf_names_read_as_json_names() {
        let spec: PolicySpec = serde_json::from_value(json!({
            "peers": [{"mtls": {"allow_tls": true}}],
            "peer_is_optional": true,
            "principal_binding": "USE_PEER",
            "origins": [{"jwt": {"jwks_uri": "https://x/keys", "jwt_headers": ["x-jwt"],
                                 "trigger_rules": [{"excluded_paths": [{"exact": "/health"}], "included_paths": [{"prefix": "/"}]}]}}],
        }))
        .unwrap();
        assert_eq!(spec.peer_is_optional, Some(true));
        assert_eq!(spec.mutual_tls().and_then(|m| m.allow_tls), Some(true));
        let jwt = spec.origins[0].jwt.as_ref().unwrap();
        assert_eq!(jwt.jwks_uri.as_deref(), Some("https://x/keys"));
        assert_eq!(jwt.jwt_headers, ["x-jwt"]);
        assert_eq!(jwt.trigger_rules[0].excluded_paths[0].exact.as_deref(), Some("/health"));
        assert_eq!(jwt.trigger_rules[0].included_paths[0].prefix.as_deref(), Some("/"));
    }
}
