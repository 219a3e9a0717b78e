//! The precedence of the policies that switch mutual TLS, as tables over
//! Istio's Bookinfo (its Services on port 9080, one pod per Deployment in
//! `default`) plus what each case applies on top.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DynamicObject, ObjectMeta};
use serde_json::{Value, json};

use super::MtlsMode::{self, Disable, Permissive, Strict};
use super::*;
use crate::api;
use crate::index::{Index, MeshPolicies, PeerAuthentications, Pods, Policies, Services};
use crate::model::{MeshConfig, ObjectKey};
use crate::testing::bookinfo::bookinfo;
use crate::testing::objects::config;

/// One object a case applies: kind, namespace, name, creation time, spec.
#[derive(Clone, Copy)]
enum Obj {
    Pa(&'static str, &'static str, &'static str, fn() -> Value),
    Policy(&'static str, &'static str, fn() -> Value),
    MeshPolicy(&'static str, fn() -> Value),
}

fn created(mut obj: DynamicObject, at: &str) -> DynamicObject {
    obj.metadata.creation_timestamp = Some(Time(at.parse().expect("a timestamp")));
    obj
}

fn apply(index: &mut Index, obj: Obj) {
    match obj {
        Obj::Pa(ns, name, at, spec) => index
            .apply::<PeerAuthentications>(&created(config::<api::PeerAuthentication>(ns, name, spec()), at)),
        Obj::Policy(ns, name, spec) => {
            index.apply::<Policies>(&created(config::<api::Policy>(ns, name, spec()), "2026-01-01T00:00:00Z"))
        }
        Obj::MeshPolicy(name, spec) => {
            let mut obj = config::<api::MeshPolicy>("", name, spec());
            obj.metadata.namespace = None;
            index.apply::<MeshPolicies>(&obj)
        }
    }
}

fn mode_of(index: &Index, pod: &str, port: u16) -> MtlsMode {
    let state = index.state();
    let workload = state.workloads.get(&ObjectKey::new("default", pod)).expect("a Bookinfo pod");
    MtlsPolicies::build(state).inbound_mode(workload, port)
}

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-02T00:00:00Z";
const T2: &str = "2026-01-03T00:00:00Z";

fn strict() -> Value {
    json!({"mtls": {"mode": "STRICT"}})
}
fn permissive() -> Value {
    json!({"mtls": {"mode": "PERMISSIVE"}})
}
fn disable() -> Value {
    json!({"mtls": {"mode": "DISABLE"}})
}
fn unset() -> Value {
    json!({"mtls": {"mode": "UNSET"}})
}
fn no_mtls() -> Value {
    json!({})
}
fn reviews_strict() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"}})
}
fn reviews_disable() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "DISABLE"}})
}
fn reviews_v1_permissive() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews", "version": "v1"}}, "mtls": {"mode": "PERMISSIVE"}})
}
fn nobody_strict() -> Value {
    json!({"selector": {"matchLabels": {"app": "nobody"}}, "mtls": {"mode": "STRICT"}})
}
fn empty_selector_strict() -> Value {
    json!({"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}})
}
fn reviews_strict_9080_disable() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"},
           "portLevelMtls": {"9080": {"mode": "DISABLE"}}})
}
fn reviews_strict_9080_unset() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"},
           "portLevelMtls": {"9080": {"mode": "UNSET"}}})
}
fn reviews_unset_9080_unset() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "portLevelMtls": {"9080": {}}})
}
fn reviews_unset_9080_strict() -> Value {
    json!({"selector": {"matchLabels": {"app": "reviews"}}, "portLevelMtls": {"9080": {"mode": "STRICT"}}})
}
fn peers_mtls_null() -> Value {
    json!({"peers": [{"mtls": null}]})
}
fn peers_mtls_empty() -> Value {
    json!({"peers": [{"mtls": {}}]})
}
fn peers_permissive() -> Value {
    json!({"peers": [{"mtls": {"mode": "PERMISSIVE"}}]})
}
fn target_reviews_strict() -> Value {
    json!({"targets": [{"name": "reviews"}], "peers": [{"mtls": {}}]})
}
fn target_reviews_9080_strict() -> Value {
    json!({"targets": [{"name": "reviews", "ports": [{"number": 9080}]}], "peers": [{"mtls": {}}]})
}
fn target_reviews_9999_strict() -> Value {
    json!({"targets": [{"name": "reviews", "ports": [{"number": 9999}]}], "peers": [{"mtls": {}}]})
}
fn target_reviews_http_strict() -> Value {
    json!({"targets": [{"name": "reviews", "ports": [{"name": "http"}]}], "peers": [{"mtls": {}}]})
}
fn target_reviews_grpc_strict() -> Value {
    json!({"targets": [{"name": "reviews", "ports": [{"name": "grpc"}]}], "peers": [{"mtls": {}}]})
}
fn target_reviews_no_peers() -> Value {
    json!({"targets": [{"name": "reviews"}]})
}
fn target_reviews_permissive() -> Value {
    json!({"targets": [{"name": "reviews"}], "peers": [{"mtls": {"mode": "PERMISSIVE"}}]})
}
fn target_ghost_strict() -> Value {
    json!({"targets": [{"name": "ghost"}], "peers": [{"mtls": {}}]})
}
fn jwt_peer_only() -> Value {
    json!({"peers": [{"jwt": {"issuer": "https://example.com"}}]})
}

use Obj::{MeshPolicy as Mp, Pa, Policy as Po};

/// (what the case shows, objects applied in order, pod, port, mode).
const CASES: &[(&str, &[Obj], &str, u16, MtlsMode)] = &[
    ("nothing set: PERMISSIVE", &[], "reviews-v1-0", 9080, Permissive),
    // --- PeerAuthentication levels
    ("mesh-wide STRICT", &[Pa("istio-system", "default", T0, strict)], "reviews-v1-0", 9080, Strict),
    ("mesh-wide DISABLE", &[Pa("istio-system", "default", T0, disable)], "ratings-v1-0", 9080, Disable),
    (
        "namespace overrides mesh",
        &[Pa("istio-system", "default", T0, strict), Pa("default", "default", T0, disable)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "namespace UNSET inherits the mesh",
        &[Pa("istio-system", "default", T0, strict), Pa("default", "default", T0, unset)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "namespace without mtls inherits the mesh",
        &[Pa("istio-system", "default", T0, strict), Pa("default", "default", T0, no_mtls)],
        "details-v1-0",
        9080,
        Strict,
    ),
    (
        "UNSET everywhere: PERMISSIVE",
        &[Pa("istio-system", "default", T0, unset), Pa("default", "default", T0, unset)],
        "details-v1-0",
        9080,
        Permissive,
    ),
    (
        "workload overrides namespace",
        &[Pa("default", "default", T0, permissive), Pa("default", "reviews", T0, reviews_strict)],
        "reviews-v2-0",
        9080,
        Strict,
    ),
    (
        "a workload policy leaves other workloads alone",
        &[Pa("default", "default", T0, permissive), Pa("default", "reviews", T0, reviews_strict)],
        "productpage-v1-0",
        9080,
        Permissive,
    ),
    (
        "a selector that matches no pod changes nothing",
        &[Pa("istio-system", "default", T0, disable), Pa("default", "nobody", T0, nobody_strict)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "a selector in the root namespace is ignored",
        &[Pa("istio-system", "reviews", T0, reviews_strict)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "an empty matchLabels is namespace-wide",
        &[Pa("default", "all", T0, empty_selector_strict)],
        "ratings-v1-0",
        9080,
        Strict,
    ),
    (
        "a policy in another namespace does not apply",
        &[Pa("other", "default", T0, strict)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    // --- ports
    (
        "port-level wins over the workload's mtls",
        &[Pa("default", "reviews", T0, reviews_strict_9080_disable)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "another port keeps the workload's mtls",
        &[Pa("default", "reviews", T0, reviews_strict_9080_disable)],
        "reviews-v1-0",
        9443,
        Strict,
    ),
    (
        "port-level UNSET inherits the workload",
        &[Pa("default", "reviews", T0, reviews_strict_9080_unset)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "port-level and workload UNSET inherit the namespace",
        &[Pa("default", "default", T0, disable), Pa("default", "reviews", T0, reviews_unset_9080_unset)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "port-level STRICT over an UNSET workload and a DISABLE mesh",
        &[
            Pa("istio-system", "default", T0, disable),
            Pa("default", "reviews", T0, reviews_unset_9080_strict),
        ],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    // --- the oldest wins at each level
    (
        "of two mesh-wide policies the oldest wins",
        &[Pa("istio-system", "b-new", T1, disable), Pa("istio-system", "a-old", T0, strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "the oldest wins even when its name sorts last",
        &[Pa("istio-system", "a-new", T1, disable), Pa("istio-system", "z-old", T0, strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "same age: the first name wins",
        &[Pa("default", "b", T0, disable), Pa("default", "a", T0, strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "of two matching workload policies the oldest wins",
        &[
            Pa("default", "reviews-v1", T2, reviews_v1_permissive),
            Pa("default", "reviews", T1, reviews_disable),
        ],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "the newer workload policy still applies where the older does not match",
        &[
            Pa("default", "reviews-v1", T0, reviews_v1_permissive),
            Pa("default", "reviews", T1, reviews_disable),
        ],
        "reviews-v2-0",
        9080,
        Disable,
    ),
    // --- Istio 1.1
    (
        "MeshPolicy mtls with no value: STRICT",
        &[Mp("default", peers_mtls_null)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    ("MeshPolicy mtls {}: STRICT", &[Mp("default", peers_mtls_empty)], "reviews-v1-0", 9080, Strict),
    ("MeshPolicy PERMISSIVE", &[Mp("default", peers_permissive)], "reviews-v1-0", 9080, Permissive),
    ("MeshPolicy without peers: plaintext only", &[Mp("default", no_mtls)], "reviews-v1-0", 9080, Disable),
    (
        "MeshPolicy with a JWT peer only: no mTLS",
        &[Mp("default", jwt_peer_only)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "a MeshPolicy not named default is ignored",
        &[Mp("mesh", peers_mtls_empty)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "namespace Policy overrides MeshPolicy",
        &[Mp("default", peers_mtls_empty), Po("default", "default", peers_permissive)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "a targeted Policy overrides the namespace's",
        &[Po("default", "default", no_mtls), Po("default", "reviews", target_reviews_strict)],
        "reviews-v3-0",
        9080,
        Strict,
    ),
    (
        "a targeted Policy leaves other Services' pods alone",
        &[Po("default", "default", peers_permissive), Po("default", "reviews", target_reviews_strict)],
        "ratings-v1-0",
        9080,
        Permissive,
    ),
    (
        "a target port by number",
        &[Mp("default", no_mtls), Po("default", "reviews", target_reviews_9080_strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "a target port the Service does not have",
        &[Mp("default", no_mtls), Po("default", "reviews", target_reviews_9999_strict)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "a target port by name",
        &[Mp("default", no_mtls), Po("default", "reviews", target_reviews_http_strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
    (
        "a target port name the Service does not have",
        &[Mp("default", peers_permissive), Po("default", "reviews", target_reviews_grpc_strict)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "a port no Service of the target serves",
        &[Mp("default", no_mtls), Po("default", "reviews", target_reviews_strict)],
        "reviews-v1-0",
        15000,
        Disable,
    ),
    (
        "a targeted Policy without peers: plaintext only",
        &[Mp("default", peers_mtls_empty), Po("default", "reviews", target_reviews_no_peers)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "a target naming no Service",
        &[Mp("default", peers_permissive), Po("default", "ghost", target_ghost_strict)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "of two targeted Policies the first by name wins",
        &[Po("default", "b", target_reviews_strict), Po("default", "a", target_reviews_permissive)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    // --- both generations
    (
        "a namespace PeerAuthentication wins over a MeshPolicy",
        &[Mp("default", peers_mtls_empty), Pa("default", "default", T0, permissive)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "a mesh-wide PeerAuthentication wins over a targeted Policy",
        &[Po("default", "reviews", target_reviews_strict), Pa("istio-system", "default", T0, disable)],
        "reviews-v1-0",
        9080,
        Disable,
    ),
    (
        "a mesh-wide PeerAuthentication UNSET still displaces the 1.1 policies",
        &[Mp("default", peers_mtls_empty), Pa("istio-system", "default", T0, unset)],
        "reviews-v1-0",
        9080,
        Permissive,
    ),
    (
        "a PeerAuthentication for other pods leaves the 1.1 policies in charge",
        &[Po("default", "reviews", target_reviews_strict), Pa("default", "nobody", T0, nobody_strict)],
        "reviews-v1-0",
        9080,
        Strict,
    ),
];

#[test]
fn precedence_table() {
    let mut failures = Vec::new();
    for (what, objects, pod, port, want) in CASES {
        let mut index = bookinfo();
        for obj in *objects {
            apply(&mut index, *obj);
        }
        let got = mode_of(&index, pod, *port);
        if got != *want {
            failures.push(format!("{what}: {pod}:{port} is {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn a_deleted_policy_no_longer_applies() {
    let mut index = bookinfo();
    let strict_mesh = created(config::<api::PeerAuthentication>("istio-system", "default", strict()), T0);
    index.apply::<PeerAuthentications>(&strict_mesh);
    assert_eq!(mode_of(&index, "reviews-v1-0", 9080), Strict);
    index.delete::<PeerAuthentications>(&strict_mesh);
    assert_eq!(mode_of(&index, "reviews-v1-0", 9080), Permissive);

    let mut mesh_policy = config::<api::MeshPolicy>("", "default", peers_mtls_empty());
    mesh_policy.metadata.namespace = None;
    index.apply::<MeshPolicies>(&mesh_policy);
    assert_eq!(mode_of(&index, "reviews-v1-0", 9080), Strict);
    index.delete::<MeshPolicies>(&mesh_policy);
    assert_eq!(mode_of(&index, "reviews-v1-0", 9080), Permissive);
}

#[test]
fn the_root_namespace_is_the_mesh_configs() {
    let mut index = Index::new(Default::default())
        .with_mesh_config(MeshConfig { root_namespace: "mesh-root".into(), ..MeshConfig::default() });
    index.apply::<Pods>(&pod_with_named_port("reviews-v1-0", &[("app", "reviews")], "web", 8080));
    index.apply::<PeerAuthentications>(&created(
        config::<api::PeerAuthentication>("istio-system", "default", strict()),
        T0,
    ));
    assert_eq!(mode_of(&index, "reviews-v1-0", 8080), Permissive, "istio-system is no root namespace here");
    index.apply::<PeerAuthentications>(&created(
        config::<api::PeerAuthentication>("mesh-root", "default", disable()),
        T0,
    ));
    assert_eq!(mode_of(&index, "reviews-v1-0", 8080), Disable);
}

fn pod_with_named_port(name: &str, labels: &[(&str, &str)], port_name: &str, port: i32) -> core::Pod {
    core::Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: "app".into(),
                ports: Some(vec![core::ContainerPort {
                    name: Some(port_name.into()),
                    container_port: port,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Service port whose targetPort is a container port's name: the policy
/// names the Service port (80), the sidecar serves the pod's port (8080).
#[test]
fn a_named_target_port_maps_the_service_port_to_the_pods() {
    let mut index = Index::new(Default::default());
    index.apply::<Pods>(&pod_with_named_port("web-0", &[("app", "web")], "http-web", 8080));
    index.apply::<Services>(&web_service());
    for (ports, port, want) in [
        (json!([{"number": 80}]), 8080, Strict),
        (json!([{"name": "http"}]), 8080, Strict),
        // The policy names the Service port, not the pod's.
        (json!([{"number": 8080}]), 8080, Permissive),
        (json!([{"number": 80}]), 80, Permissive),
    ] {
        let mut index = Index::new(Default::default());
        index.apply::<Pods>(&pod_with_named_port("web-0", &[("app", "web")], "http-web", 8080));
        index.apply::<Services>(&web_service());
        index.apply::<Policies>(&config::<api::Policy>(
            "default",
            "web",
            json!({"targets": [{"name": "web", "ports": ports}], "peers": [{"mtls": {}}]}),
        ));
        assert_eq!(mode_of(&index, "web-0", port), want, "ports {ports} on {port}");
    }
    let w = index.state().workloads.get(&ObjectKey::new("default", "web-0")).cloned().expect("pod");
    assert_eq!(w.named_ports.get("http-web"), Some(&8080));
}

fn web_service() -> core::Service {
    core::Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http-web".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A targetPort name the pod does not declare serves no port.
#[test]
fn an_unknown_target_port_name_matches_nothing() {
    let mut index = Index::new(Default::default());
    index.apply::<Pods>(&pod_with_named_port("web-0", &[("app", "web")], "other", 8080));
    index.apply::<Services>(&web_service());
    index.apply::<Policies>(&config::<api::Policy>(
        "default",
        "web",
        json!({"targets": [{"name": "web"}], "peers": [{"mtls": {}}]}),
    ));
    assert_eq!(mode_of(&index, "web-0", 8080), Permissive);
}

/// The modes Istio's samples ask for, read end to end from YAML as users
/// write it (`mtls:` with no value).
#[test]
fn istio_1_1_yaml_as_written() {
    let mut index = bookinfo();
    let doc: DynamicObject = serde_yaml_ng::from_str(
        "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default, namespace: default}\nspec:\n  peers:\n  - mtls:\n",
    )
    .expect("YAML");
    index.apply::<Policies>(&doc);
    assert_eq!(mode_of(&index, "details-v1-0", 9080), Strict);
}
