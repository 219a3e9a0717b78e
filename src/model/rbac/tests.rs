//! Which switch decides, where RBAC is on, and what each binding grants,
//! from objects as the watches deliver them to the index.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::api;
use crate::index::{ClusterRbacConfigs, Index, RbacConfigs, ServiceRoleBindings, ServiceRoles};
use crate::testing::objects::config;

const RATINGS: &str = "ratings.default.svc.cluster.local";

fn created(mut obj: DynamicObject, at: &str) -> DynamicObject {
    obj.metadata.creation_timestamp = Some(Time(at.parse().expect("a timestamp")));
    obj
}

fn cluster_switch(index: &mut Index, name: &str, spec: Value) {
    let mut obj = config::<api::ClusterRbacConfig>("", name, spec);
    obj.metadata.namespace = None;
    index.apply::<ClusterRbacConfigs>(&obj);
}

fn namespaced_switch(index: &mut Index, namespace: &str, name: &str, at: &str, spec: Value) {
    index.apply::<RbacConfigs>(&created(config::<api::RbacConfig>(namespace, name, spec), at));
}

fn role(index: &mut Index, namespace: &str, name: &str, spec: Value) {
    index.apply::<ServiceRoles>(&config::<api::ServiceRole>(namespace, name, spec));
}

fn binding(index: &mut Index, namespace: &str, name: &str, spec: Value) {
    index.apply::<ServiceRoleBindings>(&config::<api::ServiceRoleBinding>(namespace, name, spec));
}

fn policies(index: &Index) -> RbacPolicies {
    RbacPolicies::build(index.state())
}

fn on() -> Value {
    json!({"mode": "ON"})
}

fn off() -> Value {
    json!({"mode": "OFF"})
}

fn all_services() -> Value {
    json!({"rules": [{"services": ["*"]}]})
}

fn subject(user: &str) -> Subject {
    Subject { user: Some(user.to_string()), ..Subject::default() }
}

#[test]
fn no_switch_leaves_every_service_open() {
    let mut index = Index::new(Default::default());
    role(&mut index, "default", "r", all_services());
    binding(
        &mut index,
        "default",
        "b",
        json!({"roleRef": {"kind": "ServiceRole", "name": "r"}, "subjects": [{"user": "*"}]}),
    );
    let p = policies(&index);
    assert!(!p.enabled(RATINGS, "default"));
    assert_eq!(p.authorization(RATINGS, "default"), None);
}

#[test]
fn the_cluster_switch_named_default_wins_over_the_namespaced_one() {
    let mut index = Index::new(Default::default());
    namespaced_switch(&mut index, "default", "default", "2026-01-01T00:00:00Z", on());
    assert!(policies(&index).enabled(RATINGS, "default"), "an RbacConfig alone switches RBAC on");
    cluster_switch(&mut index, "default", off());
    assert!(!policies(&index).enabled(RATINGS, "default"), "the ClusterRbacConfig decides");
}

#[test]
fn switches_with_other_names_are_ignored() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "strict", on());
    namespaced_switch(&mut index, "default", "custom", "2026-01-01T00:00:00Z", on());
    assert!(!policies(&index).enabled(RATINGS, "default"));
    // An RbacConfig named default in any namespace switches the mesh.
    namespaced_switch(&mut index, "istio-system", "default", "2026-01-01T00:00:00Z", on());
    assert!(policies(&index).enabled(RATINGS, "default"));
    assert!(policies(&index).enabled("details.prod.svc.cluster.local", "prod"));
}

#[test]
fn the_oldest_namespaced_switch_wins() {
    let mut index = Index::new(Default::default());
    namespaced_switch(&mut index, "b", "default", "2026-01-01T00:00:00Z", off());
    namespaced_switch(&mut index, "a", "default", "2026-01-02T00:00:00Z", on());
    assert!(!policies(&index).enabled(RATINGS, "default"), "the older one is OFF");
}

#[test]
fn inclusion_and_exclusion_list_namespaces_and_service_fqdns() {
    let cases = [
        (json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"namespaces": ["default"]}}), true),
        (json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"services": [RATINGS]}}), true),
        (json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"services": ["ratings"]}}), false),
        (json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"namespaces": ["prod"]}}), false),
        (json!({"mode": "ON_WITH_INCLUSION"}), false),
        (json!({"mode": "ON_WITH_EXCLUSION", "exclusion": {"namespaces": ["default"]}}), false),
        (json!({"mode": "ON_WITH_EXCLUSION", "exclusion": {"services": [RATINGS]}}), false),
        (json!({"mode": "ON_WITH_EXCLUSION", "exclusion": {"namespaces": ["prod"]}}), true),
        (json!({"mode": "ON_WITH_EXCLUSION"}), true),
        (json!({"mode": "ON"}), true),
        (json!({"mode": "OFF"}), false),
        (json!({}), false),
    ];
    for (spec, enabled) in cases {
        let mut index = Index::new(Default::default());
        cluster_switch(&mut index, "default", spec.clone());
        assert_eq!(policies(&index).enabled(RATINGS, "default"), enabled, "{spec}");
    }
}

#[test]
fn bindings_grant_by_role_ref_role_root_role_and_actions() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "default", on());
    role(&mut index, "default", "viewer", all_services());
    role(
        &mut index,
        "istio-system",
        "mesh-viewer",
        json!({"rules": [{"services": ["*"], "methods": ["GET"]}]}),
    );
    binding(
        &mut index,
        "default",
        "by-ref",
        json!({"roleRef": {"kind": "ServiceRole", "name": "viewer"}, "subjects": [{"user": "a"}]}),
    );
    binding(&mut index, "default", "by-name", json!({"role": "viewer", "subjects": [{"user": "b"}]}));
    binding(&mut index, "default", "by-root", json!({"role": "/mesh-viewer", "subjects": [{"user": "c"}]}));
    binding(
        &mut index,
        "default",
        "inline",
        json!({"actions": [{"services": ["*"], "paths": ["/x"]}], "subjects": [{"user": "d"}]}),
    );
    let auth = policies(&index).authorization(RATINGS, "default").expect("RBAC is on");
    assert!(!auth.shadow_only);
    let names: Vec<&str> = auth.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["/mesh-viewer", "binding/inline", "viewer"]);
    // Bindings in name order: by-name, then by-ref.
    assert_eq!(auth.policies["viewer"].enforced, [subject("b"), subject("a")]);
    assert_eq!(auth.policies["/mesh-viewer"].enforced, [subject("c")]);
    assert_eq!(auth.policies["/mesh-viewer"].rules[0].methods, ["GET"]);
    assert_eq!(auth.policies["binding/inline"].rules[0].paths, ["/x"]);
    assert!(auth.policies.values().all(|p| p.shadow.is_empty()));
}

#[test]
fn a_binding_to_a_missing_role_or_to_nothing_grants_nothing() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "default", on());
    role(&mut index, "default", "viewer", all_services());
    binding(
        &mut index,
        "default",
        "missing",
        json!({"roleRef": {"kind": "ServiceRole", "name": "gone"}, "subjects": [{"user": "a"}]}),
    );
    binding(&mut index, "default", "root-missing", json!({"role": "/viewer", "subjects": [{"user": "b"}]}));
    binding(&mut index, "default", "nothing", json!({"subjects": [{"user": "c"}]}));
    binding(&mut index, "default", "slash", json!({"role": "/", "subjects": [{"user": "d"}]}));
    let auth = policies(&index).authorization(RATINGS, "default").expect("RBAC is on");
    assert!(auth.policies.is_empty(), "{:?}", auth.policies);
}

#[test]
fn roles_and_bindings_apply_in_their_own_namespace() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "default", on());
    role(&mut index, "default", "viewer", all_services());
    role(&mut index, "prod", "viewer", all_services());
    binding(
        &mut index,
        "prod",
        "b",
        json!({"roleRef": {"kind": "ServiceRole", "name": "viewer"}, "subjects": [{"user": "*"}]}),
    );
    let p = policies(&index);
    assert!(p.authorization(RATINGS, "default").expect("on").policies.is_empty());
    let prod = p.authorization("ratings.prod.svc.cluster.local", "prod").expect("on");
    assert_eq!(prod.policies["viewer"].enforced, [subject("*")]);
}

#[test]
fn permissive_bindings_are_shadow_subjects() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "default", on());
    role(&mut index, "default", "viewer", all_services());
    binding(
        &mut index,
        "default",
        "enforced",
        json!({"roleRef": {"kind": "ServiceRole", "name": "viewer"}, "subjects": [{"user": "a"}]}),
    );
    binding(
        &mut index,
        "default",
        "trial",
        json!({"roleRef": {"kind": "ServiceRole", "name": "viewer"}, "mode": "PERMISSIVE", "subjects": [{"user": "b"}]}),
    );
    let auth = policies(&index).authorization(RATINGS, "default").expect("on");
    assert!(!auth.shadow_only);
    assert_eq!(auth.policies["viewer"].enforced, [subject("a")]);
    assert_eq!(auth.policies["viewer"].shadow, [subject("b")]);
}

#[test]
fn the_permissive_switch_makes_every_binding_a_shadow_one() {
    let mut index = Index::new(Default::default());
    cluster_switch(&mut index, "default", json!({"mode": "ON", "enforcementMode": "PERMISSIVE"}));
    role(&mut index, "default", "viewer", all_services());
    binding(
        &mut index,
        "default",
        "enforced",
        json!({"roleRef": {"kind": "ServiceRole", "name": "viewer"}, "subjects": [{"user": "a"}]}),
    );
    let auth = policies(&index).authorization(RATINGS, "default").expect("on");
    assert!(auth.shadow_only);
    assert!(auth.policies["viewer"].enforced.is_empty());
    assert_eq!(auth.policies["viewer"].shadow, [subject("a")]);
}

#[test]
fn istio_wildcards() {
    let patterns = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches_any("ratings.default", &patterns(&["*"])));
    assert!(matches_any("ratings.default", &patterns(&["ratings*"])));
    assert!(matches_any("ratings.default", &patterns(&["*.default"])));
    assert!(matches_any("ratings.default", &patterns(&["x", "ratings.default"])));
    assert!(!matches_any("ratings.default", &patterns(&["ratings"])));
    assert!(!matches_any("ratings.default", &patterns(&["*.prod"])));
    assert!(!matches_any("ratings.default", &patterns(&[])));
}
