//! Istio's kinds on a real API server: the generated CRDs install, users'
//! Bookinfo YAML applies unmodified and reads back whole, the controller's
//! index sees every object, and the schema gives kubectl what it needs.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Controller, TempNamespace, conformance, eventually, install_crds, kubectl, kubectl_ok, yaml_documents,
};

/// The kinds the mesh defines: kind, resource for kubectl, namespaced.
const KINDS: &[(&str, &str, bool)] = &[
    ("VirtualService", "virtualservices.networking.istio.io", true),
    ("DestinationRule", "destinationrules.networking.istio.io", true),
    ("Gateway", "gateways.networking.istio.io", true),
    ("ServiceEntry", "serviceentries.networking.istio.io", true),
    ("Sidecar", "sidecars.networking.istio.io", true),
    ("ServiceRole", "serviceroles.rbac.istio.io", true),
    ("ServiceRoleBinding", "servicerolebindings.rbac.istio.io", true),
    ("ClusterRbacConfig", "clusterrbacconfigs.rbac.istio.io", false),
    ("RbacConfig", "rbacconfigs.rbac.istio.io", true),
    ("PeerAuthentication", "peerauthentications.security.istio.io", true),
    ("RequestAuthentication", "requestauthentications.security.istio.io", true),
    ("Policy", "policies.authentication.istio.io", true),
    ("MeshPolicy", "meshpolicies.authentication.istio.io", false),
];

/// Objects the test made outside namespaces of its own (cluster-scoped, or
/// in a namespace a sample names that already existed): deleted on drop.
#[derive(Default)]
struct Leftovers(Vec<(String, String, String)>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (resource, namespace, name) in &self.0 {
            let mut args =
                vec!["delete", resource.as_str(), name.as_str(), "--ignore-not-found", "--wait=false"];
            if !namespace.is_empty() {
                args.extend(["-n", namespace.as_str()]);
            }
            let _ = kubectl(&args, None);
        }
    }
}

#[test]
fn bookinfo_samples_apply_unmodified_read_back_whole_and_reach_the_index() {
    install_crds();
    let controller = Controller::start();
    let ns = TempNamespace::new("conformance");
    let mut leftovers = Leftovers::default();

    let mut files: Vec<_> = ["networking", "rbac"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(conformance().join(dir)).expect("reading the conformance samples"))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();

    // Samples that name their own namespace (istio-system) get it made for them.
    let mut named_namespaces: Vec<TempNamespace> = Vec::new();
    let mut checked = 0;
    let mut kinds_seen = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable sample");
        for doc in yaml_documents(&text) {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let Some(&(_, resource, namespaced)) = KINDS.iter().find(|k| k.0 == kind) else {
                // Istio 1.1's Mixer kinds (handler, instance, rule) are not served.
                assert!(
                    ["handler", "instance", "rule"].contains(&kind),
                    "{}: kind {kind:?} is not one mesh serves",
                    file.display()
                );
                continue;
            };
            let name = doc["metadata"]["name"].as_str().expect("sample has a name").to_string();
            let where_ = format!("{kind} {name} from {}", file.display());

            let target = match doc["metadata"]["namespace"].as_str() {
                Some(named) if namespaced => {
                    let exists = kubectl(&["get", "namespace", named], None).ok;
                    if exists && !named_namespaces.iter().any(|n| n.name == named) {
                        leftovers.0.push((resource.into(), named.into(), name.clone()));
                    } else if !exists {
                        named_namespaces.push(TempNamespace::named(named));
                    }
                    named.to_string()
                }
                _ if !namespaced => {
                    leftovers.0.push((resource.into(), String::new(), name.clone()));
                    String::new()
                }
                _ => ns.name.clone(),
            };

            // Apply the document exactly as written.
            let yaml = serde_yaml_ng::to_string(&doc).expect("re-encode");
            let mut apply = vec!["apply", "-f", "-"];
            if namespaced {
                apply.extend(["-n", &target]);
            }
            kubectl_ok(&apply, Some(&yaml));

            // Read it back: nothing pruned, nothing changed.
            let mut get = vec!["get", resource, &name, "-o", "json"];
            if namespaced {
                get.extend(["-n", &target]);
            }
            let stored: Value = serde_json::from_str(&kubectl_ok(&get, None)).expect("JSON");
            pretty_assertions::assert_eq!(
                numbers_by_value(&stored["spec"]),
                numbers_by_value(&doc["spec"]),
                "{where_}: spec changed in the API server"
            );
            let generation = stored["metadata"]["generation"].as_i64().expect("generation");

            // The controller's index holds the same spec at that generation.
            let namespace = if namespaced { target.as_str() } else { "" };
            let indexed = eventually(&format!("{where_} in the index"), Duration::from_secs(10), || {
                let configz = controller.configz();
                configz[kind]
                    .as_array()?
                    .iter()
                    .find(|c| {
                        c["key"]["namespace"] == namespace
                            && c["key"]["name"] == name.as_str()
                            && c["generation"] == generation
                    })
                    .cloned()
            });
            // The index keeps Istio's JSON names; a sample may use the proto
            // names Istio also accepts (`enforcement_mode`).
            pretty_assertions::assert_eq!(
                numbers_by_value(&indexed["spec"]),
                numbers_by_value(&camel_case_keys(&doc["spec"])),
                "{where_}: the index parsed it differently"
            );
            checked += 1;
            kinds_seen.insert(kind.to_string());
        }
    }
    // Guard against a vacuous pass: the samples hold dozens of these objects.
    assert!(checked >= 30, "only {checked} objects checked");
    for kind in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "ServiceRole",
        "ServiceRoleBinding",
        "ClusterRbacConfig",
    ] {
        assert!(kinds_seen.contains(kind), "no {kind} sample was checked");
    }
}

#[test]
fn kubectl_explain_describes_fields_and_get_shows_printer_columns() {
    install_crds();
    let explain = kubectl_ok(&["explain", "virtualservice.spec.http.retries"], None);
    for field in ["attempts", "perTryTimeout", "retryOn"] {
        assert!(explain.contains(field), "explain lacks {field}:\n{explain}");
    }
    assert!(explain.contains("DESCRIPTION"), "explain has no description:\n{explain}");
    // Every field listed carries a description (kubectl prints "<empty>" otherwise).
    assert!(!explain.contains("<empty>"), "a field has no description:\n{explain}");

    let ns = TempNamespace::new("columns");
    let vs = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(vs));
    let table = kubectl_ok(&["get", "vs", "-n", &ns.name], None);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "GATEWAYS", "HOSTS", "AGE"] {
        assert!(header.contains(column), "no {column} column: {table}");
    }
    assert!(table.contains(r#"["mesh"]"#) && table.contains(r#"["reviews"]"#), "{table}");

    let dr = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n";
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(dr));
    let table = kubectl_ok(&["get", "dr", "-n", &ns.name], None);
    assert!(table.lines().next().unwrap_or_default().contains("HOST"), "{table}");
    // Served as v1beta1 and v1 too: the same object under every version.
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let got = kubectl_ok(
            &[
                "get",
                &format!("destinationrules.{version}.networking.istio.io"),
                "reviews",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.spec.host}",
            ],
            None,
        );
        assert_eq!(got, "reviews", "{version}");
    }

    // The kinds added with Gateway explain themselves the same way, and
    // are served under every version too.
    let explain = kubectl_ok(&["explain", "gateway.spec.servers.tls"], None);
    for field in ["credentialName", "httpsRedirect", "minProtocolVersion", "mode"] {
        assert!(explain.contains(field), "explain lacks {field}:\n{explain}");
    }
    assert!(!explain.contains("<empty>"), "a field has no description:\n{explain}");
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n";
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(se));
    let table = kubectl_ok(&["get", "se", "-n", &ns.name], None);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "HOSTS", "LOCATION", "RESOLUTION", "AGE"] {
        assert!(header.contains(column), "no {column} column: {table}");
    }
    assert!(table.contains("DNS") && table.contains(r#"["api.example.com"]"#), "{table}");
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let got = kubectl_ok(
            &[
                "get",
                &format!("serviceentries.{version}.networking.istio.io"),
                "api",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.spec.resolution}",
            ],
            None,
        );
        assert_eq!(got, "DNS", "{version}");
    }
}

/// Istio 1.1's authentication YAML, as its documentation wrote it, and
/// today's PeerAuthentication under both its versions: each applies
/// unmodified, reads back as written, and reaches the index as mesh reads
/// it (`mtls:` with no value kept by the API server, read as `{}`, which
/// is STRICT).
#[test]
fn mutual_tls_policies_of_both_generations_apply_unmodified_and_reach_the_index() {
    install_crds();
    let controller = Controller::start();
    let ns = TempNamespace::new("mtls");
    let mut leftovers = Leftovers::default();
    leftovers.0.push(("meshpolicies.authentication.istio.io".into(), String::new(), "default".into()));

    let mesh_policy = r#"
apiVersion: "authentication.istio.io/v1alpha1"
kind: "MeshPolicy"
metadata: {name: "default"}
spec: {peers: [{mtls: {}}]}
"#;
    let namespace_policy = r#"
apiVersion: "authentication.istio.io/v1alpha1"
kind: "Policy"
metadata:
  name: "default"
spec:
  peers:
  - mtls:
"#;
    let targeted_policy = r#"
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata:
  name: reviews-permissive
spec:
  targets:
  - name: reviews
    ports:
    - number: 9080
    - name: http
  peers:
  - mtls:
      mode: PERMISSIVE
  peer_is_optional: true
"#;
    let peer_authentication = r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: reviews
spec:
  selector:
    matchLabels:
      app: reviews
  mtls:
    mode: STRICT
  portLevelMtls:
    9080:
      mode: DISABLE
"#;
    let peer_authentication_v1 = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: PERMISSIVE
"#;
    kubectl_ok(&["apply", "-f", "-"], Some(mesh_policy));
    for yaml in [targeted_policy, peer_authentication, peer_authentication_v1] {
        kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(yaml));
    }
    // A client-side `kubectl apply` drops null values before it sends the
    // object, so `mtls:` with no value only reaches the API server (and
    // mesh) through a server-side apply or a create; validation warns
    // about the empty entry a client-side apply leaves.
    kubectl_ok(&["apply", "--server-side", "-n", &ns.name, "-f", "-"], Some(namespace_policy));
    let client_side = TempNamespace::new("mtls-client-side");
    kubectl_ok(&["apply", "-n", &client_side.name, "-f", "-"], Some(namespace_policy));
    let stored: Value = serde_json::from_str(&kubectl_ok(
        &["get", "policies.authentication.istio.io", "default", "-n", &client_side.name, "-o", "json"],
        None,
    ))
    .expect("JSON");
    assert_eq!(stored["spec"], serde_json::json!({"peers": [{}]}), "kubectl apply kept the null after all");

    let get = |resource: &str, name: &str, namespaced: bool| -> Value {
        let mut args = vec!["get", resource, name, "-o", "json"];
        if namespaced {
            args.extend(["-n", &ns.name]);
        }
        serde_json::from_str(&kubectl_ok(&args, None)).expect("JSON")
    };
    // As written: `mtls:` with no value is kept as null, not pruned away.
    let stored = get("meshpolicies.authentication.istio.io", "default", false);
    assert_eq!(stored["spec"], serde_json::json!({"peers": [{"mtls": {}}]}));
    let stored = get("policies.authentication.istio.io", "default", true);
    assert_eq!(stored["spec"], serde_json::json!({"peers": [{"mtls": null}]}));
    let stored = get("policies.authentication.istio.io", "reviews-permissive", true);
    assert_eq!(
        stored["spec"],
        serde_json::json!({
            "targets": [{"name": "reviews", "ports": [{"number": 9080}, {"name": "http"}]}],
            "peers": [{"mtls": {"mode": "PERMISSIVE"}}],
            "peer_is_optional": true,
        })
    );
    let stored = get("peerauthentications.security.istio.io", "reviews", true);
    assert_eq!(stored["spec"]["portLevelMtls"], serde_json::json!({"9080": {"mode": "DISABLE"}}));
    // One object under both versions.
    for version in ["v1beta1", "v1"] {
        let mode = kubectl_ok(
            &[
                "get",
                &format!("peerauthentications.{version}.security.istio.io"),
                "default",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.spec.mtls.mode}",
            ],
            None,
        );
        assert_eq!(mode, "PERMISSIVE", "{version}");
    }

    // The index: each object, as mesh reads it.
    let indexed = |kind: &str, namespace: &str, name: &str| -> Option<Value> {
        controller.configz()[kind]
            .as_array()?
            .iter()
            .find(|c| c["key"]["namespace"] == namespace && c["key"]["name"] == name)
            .map(|c| c["spec"].clone())
    };
    let within = Duration::from_secs(10);
    let spec = eventually("the MeshPolicy in the index", within, || indexed("MeshPolicy", "", "default"));
    assert_eq!(spec, serde_json::json!({"peers": [{"mtls": {}}]}));
    let spec = eventually("the Policy in the index", within, || indexed("Policy", &ns.name, "default"));
    assert_eq!(spec, serde_json::json!({"peers": [{"mtls": {}}]}), "mtls with no value is read as {{}}");
    let spec = eventually("the targeted Policy in the index", within, || {
        indexed("Policy", &ns.name, "reviews-permissive")
    });
    assert_eq!(spec["peerIsOptional"], true, "{spec}");
    let spec = eventually("the PeerAuthentication in the index", within, || {
        indexed("PeerAuthentication", &ns.name, "reviews")
    });
    assert_eq!(spec["portLevelMtls"]["9080"]["mode"], "DISABLE", "{spec}");
    assert_eq!(controller.configz()["meshConfig"]["rootNamespace"], "istio-system");

    // kubectl explain reads the descriptions, and get shows the mode.
    let explain = kubectl_ok(&["explain", "peerauthentication.spec.mtls"], None);
    assert!(explain.contains("STRICT (mutual TLS only)") && !explain.contains("<empty>"), "{explain}");
    let explain = kubectl_ok(
        &["explain", "policy.spec.peers.mtls", "--api-version=authentication.istio.io/v1alpha1"],
        None,
    );
    assert!(explain.contains("PERMISSIVE") && !explain.contains("<empty>"), "{explain}");
    let table = kubectl_ok(&["get", "pa", "-n", &ns.name], None);
    assert!(table.lines().next().unwrap_or_default().contains("MODE"), "{table}");
    assert!(table.contains("STRICT") && table.contains("PERMISSIVE"), "{table}");
}

#[test]
fn the_api_server_rejects_wrong_types_and_unknown_fields_naming_the_field() {
    install_crds();
    let ns = TempNamespace::new("schema");
    let wrong_type = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: wrong-type}
spec:
  hosts: [reviews]
  http: [{retries: {attempts: "three"}, route: [{destination: {host: reviews}}]}]
"#;
    let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(wrong_type));
    assert!(!out.ok, "a string for an integer was accepted");
    assert!(
        out.stderr.contains("spec.http[0].retries.attempts"),
        "message does not name the field: {}",
        out.stderr
    );

    let unknown = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: unknown-field}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subsett: v1}}]}]
"#;
    let out = kubectl(&["apply", "--validate=strict", "-n", &ns.name, "-f", "-"], Some(unknown));
    assert!(!out.ok, "an unknown field was accepted under strict validation");
    assert!(out.stderr.contains("subsett"), "message does not name the field: {}", out.stderr);

    let bad_enum = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: bad-enum}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBBIN}}}
"#;
    let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(bad_enum));
    assert!(!out.ok, "an unknown enum value was accepted");
    assert!(out.stderr.contains("spec.trafficPolicy.loadBalancer.simple"), "{}", out.stderr);

    // None of them reached etcd.
    let list = kubectl_ok(&["get", "vs,dr", "-n", &ns.name, "-o", "name"], None);
    assert!(list.trim().is_empty(), "rejected objects were stored: {list}");
}

#[test]
fn the_controller_serves_health_and_metrics_and_stops_on_sigterm() {
    install_crds();
    let controller = Controller::start();
    assert_eq!(controller.get("/healthz").0, 200);
    let (status, metrics) = controller.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("mesh_index_objects{kind=\"Namespace\"}"), "{metrics}");
    // The debug views are not open like those (e2e/tests/debug.rs has more).
    assert_eq!(controller.get("/debug/configz").0, 401);
    // The namespaces the API server makes itself are already indexed.
    let configz = controller.configz();
    assert!(configz["counts"]["Namespace"].as_u64().unwrap_or(0) >= 4, "{configz}");
    assert!(controller.terminate(Duration::from_secs(10)), "the controller did not exit cleanly on SIGTERM");
}

/// Every proxy depends on the push loop, so a push that panics (a bug in
/// translation; here a fault compiled only into the e2e build makes every
/// push panic while a given namespace exists) must not leave the
/// controller serving stale configuration: it exits non-zero, naming the
/// task and the panic, for Kubernetes to restart it.
#[test]
fn a_push_that_panics_stops_the_controller_and_says_why() {
    install_crds();
    let home = TempNamespace::new("mesh-home");
    let trigger = format!("{}-fault", home.name);
    let mut controller = Controller::spawn_logged(&home.name, &[("MESH_TEST_PANIC_PUSH", &trigger)]);
    controller.wait_ready(Duration::from_secs(30));
    assert_eq!(
        controller.wait_exit(Duration::from_millis(500)),
        None,
        "the controller exited before the fault"
    );

    let _trigger = TempNamespace::named(&trigger);
    let status =
        controller.wait_exit(Duration::from_secs(30)).expect("the controller exits after the push panicked");
    assert!(!status.success(), "a failed controller must exit non-zero, not {status}");
    let log = controller.log();
    let panic = format!("injected fault: namespace {trigger} exists (MESH_TEST_PANIC_PUSH)");
    assert!(
        log.contains(&format!("a push panicked panic={panic}")),
        "the push's panic is not logged:\n{log}"
    );
    assert!(
        log.contains("shutting down, to be restarted task=xDS push loop reason=failed: a push panicked"),
        "the failed task is not logged:\n{log}"
    );
    assert!(
        log.contains(&format!("mesh: error: xDS push loop failed: a push panicked: {panic}")),
        "the controller does not say why it exits:\n{log}"
    );
}

/// `enforcement_mode` -> `enforcementMode`, at every depth.
fn camel_case_keys(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let mut key = String::new();
                    let mut upper = false;
                    for c in k.chars() {
                        match c {
                            '_' => upper = true,
                            c if upper => {
                                key.extend(c.to_uppercase());
                                upper = false;
                            }
                            c => key.push(c),
                        }
                    }
                    (key, camel_case_keys(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(camel_case_keys).collect()),
        other => other.clone(),
    }
}

/// JSON does not tell 100 from 100.0 (YAML does): compare numbers by value.
fn numbers_by_value(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or_else(|| v.clone()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers_by_value(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(numbers_by_value).collect()),
        other => other.clone(),
    }
}
