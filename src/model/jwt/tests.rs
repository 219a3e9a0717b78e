//! Which JWT rules a Bookinfo workload's inbound port gets, from
//! RequestAuthentications at each level and Istio 1.1's origins.

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::api;
use crate::index::{Index, MeshPolicies, Policies, RequestAuthentications};
use crate::model::ObjectKey;
use crate::testing::bookinfo::bookinfo;
use crate::testing::objects::config;

fn request_authentication(index: &mut Index, ns: &str, name: &str, spec: Value) {
    index.apply::<RequestAuthentications>(&config::<api::RequestAuthentication>(ns, name, spec));
}

fn policy(index: &mut Index, ns: &str, name: &str, spec: Value) {
    index.apply::<Policies>(&config::<api::Policy>(ns, name, spec));
}

fn mesh_policy(index: &mut Index, spec: Value) {
    let mut obj: DynamicObject = config::<api::MeshPolicy>("", "default", spec);
    obj.metadata.namespace = None;
    index.apply::<MeshPolicies>(&obj);
}

fn policy_of(index: &Index, pod: &str, port: u16) -> Option<JwtPolicy> {
    let state = index.state();
    let workload = state.workloads.get(&ObjectKey::new("default", pod)).expect("a Bookinfo pod");
    JwtPolicies::build(state).inbound(&MtlsPolicies::build(state), workload, port)
}

fn issuers(policy: &Option<JwtPolicy>) -> Vec<&str> {
    policy.iter().flat_map(|p| &p.providers).map(|p| p.issuer.as_str()).collect()
}

fn rule(issuer: &str) -> Value {
    json!({"issuer": issuer, "jwksUri": format!("https://{issuer}/jwks.json")})
}

const PRODUCTPAGE: &str = "productpage-v1-0";
const REVIEWS_V1: &str = "reviews-v1-0";

#[test]
fn nothing_applied_verifies_nothing() {
    let index = bookinfo();
    assert_eq!(policy_of(&index, PRODUCTPAGE, 9080), None);
}

#[test]
fn request_authentications_of_the_mesh_namespace_and_workload_add_up_sorted_by_issuer() {
    let mut index = bookinfo();
    request_authentication(&mut index, "istio-system", "mesh", json!({"jwtRules": [rule("c.example")]}));
    request_authentication(&mut index, "default", "ns", json!({"jwtRules": [rule("b.example")]}));
    request_authentication(
        &mut index,
        "default",
        "pp",
        json!({"selector": {"matchLabels": {"app": "productpage"}}, "jwtRules": [rule("a.example")]}),
    );
    // Another namespace's applies to its own workloads only.
    request_authentication(&mut index, "other", "ns", json!({"jwtRules": [rule("z.example")]}));
    let pp = policy_of(&index, PRODUCTPAGE, 9080);
    assert_eq!(issuers(&pp), ["a.example", "b.example", "c.example"]);
    assert_eq!(pp.as_ref().map(|p| p.requirement), Some(Requirement::AllowMissing));
    assert_eq!(issuers(&policy_of(&index, REVIEWS_V1, 9080)), ["b.example", "c.example"]);
    let provider = &pp.unwrap().providers[0];
    assert_eq!(provider.keys, Keys::Uri("https://a.example/jwks.json".into()));
    assert!(!provider.forward, "RequestAuthentication removes the token unless forwardOriginalToken");
}

#[test]
fn a_root_namespace_policy_with_a_selector_selects_in_every_namespace() {
    let mut index = bookinfo();
    request_authentication(
        &mut index,
        "istio-system",
        "reviews",
        json!({"selector": {"matchLabels": {"app": "reviews"}}, "jwtRules": [rule("a.example")]}),
    );
    assert_eq!(issuers(&policy_of(&index, REVIEWS_V1, 9080)), ["a.example"]);
    assert_eq!(policy_of(&index, PRODUCTPAGE, 9080), None);
}

#[test]
fn request_rules_fields_reach_the_provider() {
    let mut index = bookinfo();
    request_authentication(
        &mut index,
        "default",
        "full",
        json!({"jwtRules": [{
            "issuer": "a.example", "audiences": ["bookinfo"], "jwks": "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\", \"y\": \"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\"}]}",
            "jwksUri": "https://a.example/ignored", "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
            "fromParams": ["t"], "outputPayloadToHeader": "x-payload", "forwardOriginalToken": true,
        }]}),
    );
    let provider = policy_of(&index, PRODUCTPAGE, 9080).unwrap().providers.remove(0);
    assert_eq!(
        provider,
        JwtProvider {
            issuer: "a.example".into(),
            audiences: vec!["bookinfo".into()],
            keys: Keys::Inline("{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\", \"y\": \"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\"}]}".into()),
            from_headers: vec![("x-jwt".into(), "Token ".into())],
            from_params: vec!["t".into()],
            forward: true,
            payload_header: Some("x-payload".into()),
            trigger_rules: vec![],
        }
    );
}

#[test]
fn istio_1_1_origins_come_from_the_policy_that_applies_to_the_port() {
    let mut index = bookinfo();
    mesh_policy(&mut index, json!({"origins": [{"jwt": rule("mesh.example")}]}));
    assert_eq!(issuers(&policy_of(&index, PRODUCTPAGE, 9080)), ["mesh.example"]);
    policy(
        &mut index,
        "default",
        "default",
        json!({"origins": [{"jwt": rule("ns.example")}], "originIsOptional": true}),
    );
    let ns = policy_of(&index, PRODUCTPAGE, 9080);
    assert_eq!(issuers(&ns), ["ns.example"]);
    assert_eq!(ns.unwrap().requirement, Requirement::Optional);
    policy(
        &mut index,
        "default",
        "pp",
        json!({"targets": [{"name": "productpage", "ports": [{"number": 9080}]}],
               "origins": [{"jwt": {"issuer": "pp.example", "jwtHeaders": ["x-goog-iap-jwt-assertion"],
                                    "triggerRules": [{"excludedPaths": [{"exact": "/health"}]}]}}]}),
    );
    let pp = policy_of(&index, PRODUCTPAGE, 9080).unwrap();
    assert_eq!(pp.requirement, Requirement::Required);
    let provider = &pp.providers[0];
    assert_eq!(provider.issuer, "pp.example");
    assert_eq!(provider.keys, Keys::None);
    assert_eq!(provider.from_headers, [("x-goog-iap-jwt-assertion".to_string(), String::new())]);
    assert!(provider.forward, "Istio 1.1 kept the token");
    assert_eq!(provider.trigger_rules.len(), 1);
    // Inline keys win over a URL.
    policy(
        &mut index,
        "default",
        "default",
        json!({"origins": [{"jwt": {"issuer": "ns.example", "jwks": "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\", \"y\": \"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\"}]}", "jwksUri": "https://x/k"}}]}),
    );
    assert_eq!(
        policy_of(&index, REVIEWS_V1, 9080).unwrap().providers[0].keys,
        Keys::Inline("{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4\", \"y\": \"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM\"}]}".into())
    );
    // A policy without origins that applies means no JWT, even under a MeshPolicy with some.
    policy(
        &mut index,
        "default",
        "pp",
        json!({"targets": [{"name": "productpage"}], "peers": [{"mtls": {}}]}),
    );
    assert_eq!(policy_of(&index, PRODUCTPAGE, 9080), None);
    assert_eq!(issuers(&policy_of(&index, REVIEWS_V1, 9080)), ["ns.example"]);
}

#[test]
fn request_authentication_wins_over_istio_1_1_origins() {
    let mut index = bookinfo();
    mesh_policy(&mut index, json!({"origins": [{"jwt": rule("mesh.example")}]}));
    request_authentication(
        &mut index,
        "default",
        "pp",
        json!({"selector": {"matchLabels": {"app": "productpage"}}, "jwtRules": [rule("ra.example")]}),
    );
    assert_eq!(issuers(&policy_of(&index, PRODUCTPAGE, 9080)), ["ra.example"]);
    assert_eq!(issuers(&policy_of(&index, REVIEWS_V1, 9080)), ["mesh.example"]);
    // One without rules does not hide the origins.
    request_authentication(&mut index, "default", "empty", json!({}));
    assert_eq!(issuers(&policy_of(&index, REVIEWS_V1, 9080)), ["mesh.example"]);
}

#[test]
fn the_controller_fetches_every_named_key_set_that_inline_keys_do_not_replace() {
    let mut index = bookinfo();
    mesh_policy(&mut index, json!({"origins": [{"jwt": rule("mesh.example")}]}));
    request_authentication(
        &mut index,
        "default",
        "ra",
        json!({"jwtRules": [rule("ra.example"), {"issuer": "inline.example", "jwks": "{}", "jwksUri": "https://inline.example/x"}]}),
    );
    let uris: Vec<String> = jwks_uris(index.state()).into_iter().collect();
    assert_eq!(uris, ["https://mesh.example/jwks.json", "https://ra.example/jwks.json"]);
}
