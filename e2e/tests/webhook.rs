//! Galley's part, installed as users install it (helm), running as a pod on
//! the node and called by the API server through its Service: Istio objects
//! are accepted, rejected with a message naming object and field, or let
//! through with kubectl's `Warning:`; a rejected object never reaches etcd.

use std::process::Command;
use std::time::Duration;

use crate::support::{Release, TempNamespace, eventually, install_crds, kubectl, kubectl_ok};

/// What kubectl apply warns for a field the mesh accepts but does not apply.
const NOT_APPLIED: &str = "accepted but not yet applied by mesh";

fn accepts(ns: &str, yaml: &str) -> String {
    let out = kubectl(&["apply", "-n", ns, "-f", "-"], Some(yaml));
    assert!(out.ok, "rejected: {}", out.stderr);
    out.stderr
}

fn rejects(ns: &str, yaml: &str, fragment: &str) {
    let out = kubectl(&["apply", "-n", ns, "-f", "-"], Some(yaml));
    assert!(!out.ok, "accepted, but should have been rejected for {fragment:?}");
    assert!(out.stderr.contains("admission webhook"), "not rejected by the webhook: {}", out.stderr);
    assert!(out.stderr.contains(fragment), "message lacks {fragment:?}: {}", out.stderr);
}

fn warns(ns: &str, yaml: &str, fragment: &str) {
    let stderr = accepts(ns, yaml);
    assert!(
        stderr.contains("Warning:") && stderr.contains(fragment),
        "no warning with {fragment:?}: {stderr}"
    );
}

#[test]
fn the_chart_installs_a_ready_controller_whose_webhook_judges_istio_objects() {
    install_crds();
    let release = Release::install("mesh-e2e-system", &["--set", "webhook.certificateSeconds=3600"]);
    // The controller keeps the webhook's caBundle current itself.
    eventually("the caBundle filled in", Duration::from_secs(30), || {
        let field = |path: &str| {
            kubectl_ok(
                &[
                    "get",
                    "validatingwebhookconfiguration",
                    "mesh-validator",
                    "-o",
                    &format!("jsonpath={path}"),
                ],
                None,
            )
        };
        let webhooks = field("{.webhooks[*].name}").split_whitespace().count();
        let bundles = field("{.webhooks[*].clientConfig.caBundle}").split_whitespace().count();
        (webhooks == 3 && bundles == webhooks).then_some(())
    });

    let ns = TempNamespace::new("webhook");
    kubectl_ok(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{name: http, port: 9080}]}\n",
        ),
    );
    // The first calls may come before the webhook's certificate is trusted everywhere.
    eventually("the webhook answering", Duration::from_secs(30), || {
        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(VS_OK));
        out.ok.then_some(())
    });
    accepts(&ns.name, VS_OK);
    rejects(
        &ns.name,
        &VS_OK.replace("route:", "timeout: \"10\"\n    route:").replace("name: reviews", "name: bad-timeout"),
        &format!("VirtualService {}/bad-timeout: spec.http[0].timeout", ns.name),
    );
    rejects(&ns.name, DR_BAD_INTERVAL, "spec.trafficPolicy.outlierDetection.interval");
    rejects(&ns.name, BINDING_NO_SUBJECTS, "spec.subjects");
    warns(
        &ns.name,
        &VS_OK.replace("subset: v1", "subset: v9").replace("name: reviews", "name: unknown-subset"),
        "v9",
    );
    warns(&ns.name, DR_NO_SERVICE, "ghost");
    // Rejected objects never reached etcd.
    let stored = kubectl_ok(&["get", "vs,dr,servicerolebindings", "-n", &ns.name, "-o", "name"], None);
    assert!(
        !stored.contains("bad-timeout") && !stored.contains("bad-interval") && !stored.contains("nobody"),
        "{stored}"
    );

    // Every Bookinfo sample of our kinds is accepted (warnings allowed); a dry run stores nothing.
    for dir in ["networking", "rbac"] {
        let path = crate::support::conformance().join(dir);
        for entry in std::fs::read_dir(&path).expect("samples") {
            let file = entry.expect("entry").path();
            let text = std::fs::read_to_string(&file).expect("sample");
            for doc in crate::support::yaml_documents(&text) {
                let kind = doc["kind"].as_str().unwrap_or_default();
                let ours = [
                    "VirtualService",
                    "DestinationRule",
                    "ServiceRole",
                    "ServiceRoleBinding",
                    "ClusterRbacConfig",
                ];
                if !ours.contains(&kind) {
                    continue;
                }
                let mut doc = doc.clone();
                doc["metadata"].as_object_mut().map(|m| m.remove("namespace"));
                let yaml = serde_yaml_ng::to_string(&doc).expect("yaml");
                let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&yaml));
                assert!(out.ok, "{} from {} rejected: {}", kind, file.display(), out.stderr);
            }
        }
    }

    // Uninstall removes what the chart made, except the CRDs.
    drop(release);
    for what in ["validatingwebhookconfiguration/mesh-validator", "clusterrole/mesh-mesh-e2e-system"] {
        eventually(&format!("{what} removed"), Duration::from_secs(30), || {
            (!kubectl(&["get", what], None).ok).then_some(())
        });
    }
    assert!(kubectl(&["get", "crd", "virtualservices.networking.istio.io"], None).ok, "the CRDs went too");
}

const VS_OK: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"#;

const DR_BAD_INTERVAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: bad-interval}
spec:
  host: reviews
  trafficPolicy: {outlierDetection: {interval: "5"}}
"#;

const DR_NO_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ghost}
spec: {host: ghost}
"#;

const BINDING_NO_SUBJECTS: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: nobody}
spec:
  subjects: []
  roleRef: {kind: ServiceRole, name: viewer}
"#;

fn vs_json(ns: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(&["get", "vs", "-n", ns, name, "-o", "json"], None)).expect("JSON")
}

#[test]
fn status_says_what_the_mesh_made_of_each_object_and_survives_a_restart() {
    install_crds();
    let ns = TempNamespace::new("status");
    // Stored before the webhook existed, so it can be invalid.
    accepts(
        &ns.name,
        &VS_OK.replace("route:", "timeout: \"10\"\n    route:").replace("name: reviews", "name: bad"),
    );
    accepts(&ns.name, VS_OK);
    let _release = Release::install("mesh-e2e-status", &[]);

    let condition = |name: &str| -> Option<serde_json::Value> {
        let vs = vs_json(&ns.name, name);
        let c = vs["status"]["conditions"][0].clone();
        (c["type"] == "Accepted" && vs["status"]["observedGeneration"] == vs["metadata"]["generation"])
            .then_some(c)
    };
    let bad = eventually("status on the invalid object", Duration::from_secs(60), || condition("bad"));
    assert_eq!(bad["status"], "False", "{bad}");
    assert_eq!(bad["reason"], "Invalid");
    assert!(bad["message"].as_str().unwrap_or_default().contains("spec.http[0].timeout"), "{bad}");
    let good = eventually("status on the valid object", Duration::from_secs(30), || condition("reviews"));
    assert_eq!(good["status"], "True", "{good}");
    eventually("an Event about the invalid object", Duration::from_secs(30), || {
        let events = kubectl_ok(
            &[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "involvedObject.name=bad",
                "-o",
                "jsonpath={.items[*].reason}",
            ],
            None,
        );
        events.contains("InvalidConfiguration").then_some(())
    });

    // A restart loses nothing: the new leader keeps each verdict and its transition time.
    let before = vs_json(&ns.name, "reviews");
    kubectl_ok(
        &["delete", "pod", "-n", "mesh-e2e-status", "-l", "app.kubernetes.io/name=mesh", "--wait=true"],
        None,
    );
    kubectl_ok(&["rollout", "status", "-n", "mesh-e2e-status", "deployment/mesh", "--timeout=90s"], None);
    // The new replica must take the Lease over before it writes anything.
    let changed = kubectl_ok(
        &[
            "patch",
            "vs",
            "-n",
            &ns.name,
            "reviews",
            "--type=merge",
            "-p",
            r#"{"spec":{"gateways":["mesh"]}}"#,
        ],
        None,
    );
    assert!(changed.contains("patched"), "{changed}");
    let after_change = eventually("status following the new generation", Duration::from_secs(60), || {
        condition("reviews").map(|_| vs_json(&ns.name, "reviews"))
    });
    assert_eq!(
        after_change["status"]["conditions"][0]["lastTransitionTime"],
        before["status"]["conditions"][0]["lastTransitionTime"],
        "the Accepted transition time moved although the verdict did not"
    );
    let bad_after = vs_json(&ns.name, "bad");
    assert_eq!(bad_after["status"]["conditions"][0]["status"], "False", "status lost across the restart");
}

/// The serial of the certificate a new TLS handshake with the webhook gets.
fn served_serial(release_ns: &str) -> Option<String> {
    let ip =
        kubectl_ok(&["get", "service", "-n", release_ns, "mesh", "-o", "jsonpath={.spec.clusterIP}"], None);
    let script = format!(
        "openssl s_client -connect {ip}:443 -servername mesh.{release_ns}.svc </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = Command::new("sh").arg("-c").arg(script).output().ok()?;
    let serial = String::from_utf8_lossy(&out.stdout).trim().to_string();
    serial.starts_with("serial=").then_some(serial)
}

#[test]
fn the_webhook_keeps_answering_across_certificate_rotations() {
    install_crds();
    let release = "mesh-e2e-rotation";
    // A 6 s certificate: renewed every 3 s.
    let _release = Release::install(release, &["--set", "webhook.certificateSeconds=6"]);
    let ns = TempNamespace::new("rotation");
    let dry_run = || kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(VS_OK));
    eventually("the webhook answering", Duration::from_secs(30), || dry_run().ok.then_some(()));

    let mut serials = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let out = dry_run();
        assert!(out.ok, "the webhook failed during rotation after {answered} answers: {}", out.stderr);
        answered += 1;
        if answered % 5 == 0
            && let Some(serial) = served_serial(release)
        {
            serials.insert(serial);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 30, "only {answered} requests in 20 s");
    assert!(serials.len() >= 3, "the certificate was not rotated: {serials:?}");
}

/// One case of src/validate/cases.yaml (its header says what the
/// fields mean); the unit tests run the same cases through the validator.
struct RuleCase {
    name: String,
    kind: String,
    expect: String,
    fragment: String,
    object_name: String,
    schema: bool,
    spec: serde_json::Value,
}

fn rule_cases() -> Vec<RuleCase> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/validate/cases.yaml");
    let text = std::fs::read_to_string(path).expect("cases.yaml");
    let cases: Vec<serde_json::Value> = serde_yaml_ng::from_str(&text).expect("cases.yaml reads");
    let field = |case: &serde_json::Value, name: &str| case[name].as_str().unwrap_or_default().to_string();
    cases
        .iter()
        .map(|case| {
            let name = field(case, "name");
            let mut spec = case["spec"].clone();
            if let Some(n) = case["fill"].as_u64() {
                fill(&mut spec, &"x".repeat(n as usize));
            }
            RuleCase {
                object_name: case["objectName"].as_str().unwrap_or(&name).to_string(),
                kind: field(case, "kind"),
                expect: field(case, "expect"),
                fragment: field(case, "fragment"),
                schema: case["schema"].as_bool().unwrap_or(false),
                spec,
                name,
            }
        })
        .collect()
}

/// Replaces every string "FILL" in `v` by `with`.
fn fill(v: &mut serde_json::Value, with: &str) {
    match v {
        serde_json::Value::String(s) if s == "FILL" => *s = with.to_string(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| fill(i, with)),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(|f| fill(f, with)),
        _ => {}
    }
}

impl RuleCase {
    /// Applies the case with `kubectl apply --dry-run=server` (nothing is
    /// stored) in `ns`, and says why it did not hold, if it did not.
    fn problem(&self, ns: &str) -> Option<String> {
        let api_version = match self.kind.as_str() {
            "VirtualService" | "DestinationRule" | "Gateway" | "ServiceEntry" | "Sidecar" => {
                "networking.istio.io/v1alpha3"
            }
            "PeerAuthentication" | "RequestAuthentication" => "security.istio.io/v1beta1",
            "Policy" | "MeshPolicy" => "authentication.istio.io/v1alpha1",
            _ => "rbac.istio.io/v1alpha1",
        };
        let object = serde_json::json!({
            "apiVersion": api_version,
            "kind": self.kind,
            "metadata": {"name": self.object_name},
            "spec": self.spec,
        })
        .to_string();
        let mut args = vec!["apply", "--dry-run=server"];
        // Client-side apply copies the object into an annotation, and the
        // API server refuses annotations over 256 KiB before any webhook.
        if object.len() > 200_000 {
            args.push("--server-side");
        }
        if !matches!(self.kind.as_str(), "ClusterRbacConfig" | "MeshPolicy") {
            args.extend(["-n", ns]);
        }
        args.extend(["-f", "-"]);
        let out = kubectl(&args, Some(&object));
        let has = |s: &str| out.stderr.contains(s);
        // A clean case may still be told which of its fields mesh accepts
        // but does not apply yet; any other warning breaks it.
        let rule_warning = out.stderr.lines().any(|l| l.contains("Warning:") && !l.contains(NOT_APPLIED));
        let why = match self.expect.as_str() {
            // The API server refuses it by the CRD's schema (the webhook may not even see it).
            _ if self.schema => (out.ok).then_some("accepted, but the CRD schema should refuse it"),
            "reject" if out.ok => Some("accepted"),
            "reject" if !has("admission webhook") => Some("not refused by the webhook"),
            "reject" if !has(&self.fragment) => Some("refused, but not with the fragment"),
            "warn" if !out.ok => Some("refused"),
            "warn" if !has("Warning:") || !has(&self.fragment) => Some("accepted without the warning"),
            "accept" | "clean" if !out.ok => Some("refused"),
            "clean" if rule_warning => Some("accepted, but with a warning"),
            "reject" | "warn" | "accept" | "clean" => None,
            _ => Some("unknown expect"),
        }?;
        Some(format!(
            "{} ({} {:?}): {why}:\n      {}",
            self.name,
            self.expect,
            self.fragment,
            out.stderr.trim().replace('\n', "\n      ")
        ))
    }
}

/// The cluster every case assumes: Services (echo's port is TCP), a DestinationRule with subsets
/// v1-v3 and a ServiceRole, in namespace `cases`.
const CASES_CONTEXT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: details}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec: {ports: [{name: tcp, port: 9000}]}
"#;

const CASES_ISTIO_CONTEXT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer}
spec:
  rules: [{services: ["*"], methods: ["GET"]}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: reviews-mtls}
spec:
  targets: [{name: reviews, ports: [{number: 9080}]}]
  peers: [{mtls: {}}]
"#;

/// Warns that PeerAuthentication `default` applies instead, once the index
/// has it.
const CASES_PROBE_PEER_AUTHENTICATION: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: probe}
spec: {mtls: {mode: STRICT}}
"#;

/// Warns about Policy `reviews-mtls`, once the index has it.
const CASES_PROBE_POLICY: &str = r#"
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: probe}
spec:
  targets: [{name: reviews}]
  peers: [{mtls: {}}]
"#;

/// Warns about its mirror to `ghost` only once the index has the Services
/// and the subsets (and warns about nothing before the index has synced).
const CASES_PROBE_VS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: probe}
spec:
  hosts: [reviews]
  http:
  - mirror: {host: ghost}
    route:
    - {destination: {host: reviews, subset: v1}, weight: 25}
    - {destination: {host: ratings}, weight: 25}
    - {destination: {host: details}, weight: 25}
    - {destination: {host: productpage}, weight: 25}
"#;

/// Warns about nothing once the index has the ServiceRole.
const CASES_PROBE_BINDING: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: probe}
spec:
  subjects: [{user: "*"}]
  roleRef: {kind: ServiceRole, name: viewer}
"#;

#[test]
fn every_validation_rule_at_kubectl_apply() {
    install_crds();
    let _release = Release::install("mesh-e2e-rules", &[]);
    // The cases name their namespace (in exportTo, in messages).
    let ns = TempNamespace::named("cases");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(CASES_CONTEXT));
    let dry_run = |yaml: &str| kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(yaml));
    eventually("the webhook answering", Duration::from_secs(30), || dry_run(VS_OK).ok.then_some(()));
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(CASES_ISTIO_CONTEXT));
    eventually("the index holding the cases' context", Duration::from_secs(60), || {
        let vs = dry_run(CASES_PROBE_VS);
        let binding = dry_run(CASES_PROBE_BINDING);
        // Fields the mesh does not apply yet are warned about from the start.
        let rule_warnings = |stderr: &str| {
            stderr.lines().filter(|l| l.contains("Warning:") && !l.contains(NOT_APPLIED)).count()
        };
        let vs_ready = vs.ok
            && rule_warnings(&vs.stderr) == 1
            && vs.stderr.contains("spec.http[0].mirror.host: no Service ghost");
        let peer = dry_run(CASES_PROBE_PEER_AUTHENTICATION);
        let policy = dry_run(CASES_PROBE_POLICY);
        let mtls_ready = peer.stderr.contains("PeerAuthentication default also has no selector")
            && policy.stderr.contains("Policy reviews-mtls also targets");
        (vs_ready && binding.ok && rule_warnings(&binding.stderr) == 0 && mtls_ready).then_some(())
    });

    let cases = rule_cases();
    assert!(cases.len() >= 100, "only {} cases in cases.yaml", cases.len());
    // Several kubectl at a time: each call waits mostly on the API server.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let problems = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Some(problem) = case.problem(&ns.name) {
                        problems.lock().unwrap_or_else(|p| p.into_inner()).push((i, problem));
                    }
                }
            });
        }
    });
    let mut problems = problems.into_inner().unwrap_or_else(|p| p.into_inner());
    problems.sort();
    assert!(
        problems.is_empty(),
        "{} of {} cases did not hold at kubectl apply:\n  {}",
        problems.len(),
        cases.len(),
        problems.into_iter().map(|(_, p)| p).collect::<Vec<_>>().join("\n  ")
    );
}

/// The condition of type `type_` on an object, once status has caught up
/// with its generation.
fn condition_of(resource: &str, ns: Option<&str>, name: &str, type_: &str) -> Option<serde_json::Value> {
    let mut args = vec!["get", resource, name, "-o", "json"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let object: serde_json::Value = serde_json::from_str(&kubectl_ok(&args, None)).ok()?;
    if object["status"]["observedGeneration"] != object["metadata"]["generation"] {
        return None;
    }
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

/// A DestinationRule with a field mesh does not apply yet.
const HTTPBIN_WITH_PROXY_PROTOCOL: &str = "
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    proxyProtocol:
      version: V1
";

#[test]
fn samples_with_fields_mesh_does_not_apply_warn_at_apply_and_say_so_in_status() {
    install_crds();
    let _release = Release::install("mesh-e2e-inventory", &[]);
    let ns = TempNamespace::new("inventory");
    eventually("the webhook answering", Duration::from_secs(30), || {
        kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(VS_OK)).ok.then_some(())
    });
    let samples = crate::support::conformance();
    // Each sample as written, but in the test's namespace when it names one.
    let apply = |file: &str| {
        let text = std::fs::read_to_string(samples.join(file)).expect("a sample");
        let mut stderr = String::new();
        for mut doc in crate::support::yaml_documents(&text) {
            doc["metadata"].as_object_mut().map(|m| m.remove("namespace"));
            let yaml = serde_yaml_ng::to_string(&doc).expect("yaml");
            let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
            assert!(out.ok, "{file} refused: {}", out.stderr);
            stderr.push_str(&out.stderr);
        }
        stderr
    };
    let not_applied = |stderr: &str| -> Vec<String> {
        stderr.lines().filter(|l| l.contains(NOT_APPLIED)).map(|l| l.trim().to_string()).collect()
    };

    // The PROXY protocol is not applied yet: the warning names the object
    // and the field. (No Bookinfo sample sets a field mesh does not apply
    // any more: every VirtualService field is applied.)
    let proxy = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(HTTPBIN_WITH_PROXY_PROTOCOL));
    assert!(proxy.ok, "{}", proxy.stderr);
    let warned = not_applied(&proxy.stderr);
    assert_eq!(warned.len(), 1, "{}", proxy.stderr);
    assert!(
        warned[0].contains(&format!(
            "DestinationRule {}/httpbin: spec.trafficPolicy.proxyProtocol: {NOT_APPLIED}",
            ns.name
        )),
        "{}",
        proxy.stderr
    );
    // Fault injection is applied: nothing to warn about.
    let faults = apply("networking/fault-injection-details-v1.yaml");
    assert!(not_applied(&faults).is_empty(), "{faults}");
    // Mutual TLS by DestinationRule is applied: nothing to warn about.
    let mtls = apply("networking/destination-rule-all-mtls.yaml");
    assert!(not_applied(&mtls).is_empty(), "{mtls}");
    // Routing by match and weight is applied: nothing to warn about.
    let routing = apply("networking/virtual-service-reviews-jason-v2-v3.yaml");
    assert!(not_applied(&routing).is_empty(), "{routing}");
    // Authorization is enforced: nothing to warn about. (The switch, a
    // cluster-wide singleton, is left to authz.rs.)
    let policy = apply("rbac/productpage-policy.yaml");
    assert!(not_applied(&policy).is_empty(), "{policy}");

    // Bookinfo's Gateway and its VirtualService are applied (gateway.rs):
    // nothing to warn about.
    let gateway = apply("networking/bookinfo-gateway.yaml");
    assert!(not_applied(&gateway).is_empty(), "{gateway}");
    // ServiceEntries are applied: Istio's egress sample (with its
    // VirtualService and TLS-originating DestinationRule) warns of nothing.
    let entry = apply("networking/egress-rule-google-apis.yaml");
    assert!(not_applied(&entry).is_empty(), "{entry}");

    // Status says the same: Reconciled False with the fields, or True when all is applied.
    let reconciled = |resource: &str, ns: Option<&str>, name: &str| {
        eventually(&format!("Reconciled on {resource} {name}"), Duration::from_secs(60), || {
            condition_of(resource, ns, name, "Reconciled")
        })
    };
    let httpbin = reconciled("dr", Some(&ns.name), "httpbin");
    assert_eq!(
        (httpbin["status"].as_str(), httpbin["reason"].as_str()),
        (Some("False"), Some("Unsupported"))
    );
    assert!(
        httpbin["message"].as_str().unwrap_or_default().contains("spec.trafficPolicy.proxyProtocol"),
        "{httpbin}"
    );
    let reviews_rule = reconciled("dr", Some(&ns.name), "reviews");
    assert_eq!(
        (reviews_rule["status"].as_str(), reviews_rule["reason"].as_str()),
        (Some("True"), Some("Applied")),
        "{reviews_rule}"
    );
    let reviews_route = reconciled("vs", Some(&ns.name), "reviews");
    assert_eq!(
        (reviews_route["status"].as_str(), reviews_route["reason"].as_str()),
        (Some("True"), Some("Applied"))
    );
    for (resource, name) in [
        ("servicerole", "productpage-viewer"),
        ("servicerolebinding", "bind-productpage-viewer"),
        ("gateway", "bookinfo-gateway"),
        ("vs", "bookinfo"),
        ("serviceentry", "googleapis"),
    ] {
        let condition = reconciled(resource, Some(&ns.name), name);
        assert_eq!(
            (condition["status"].as_str(), condition["reason"].as_str()),
            (Some("True"), Some("Applied")),
            "{resource} {name}: {condition}"
        );
    }
    // And Accepted still says the objects are valid.
    let accepted = condition_of("dr", Some(&ns.name), "httpbin", "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True", "{accepted}");
}

/// A cluster-scoped object a test made, deleted on drop.
struct ClusterScoped(&'static str);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", self.0, "--ignore-not-found", "--wait=false"], None);
    }
}

/// Istio's policies that switch mutual TLS, both generations, through the
/// chart's controller: accepted (a second namespace-wide PeerAuthentication
/// is told which one applies), with no "not applied" warning since mesh
/// applies them (e2e/tests/security.rs shows what they do), and status says
/// the same.
#[test]
fn mutual_tls_policies_are_validated_and_reconciled() {
    install_crds();
    let _release = Release::install("mesh-e2e-mtls", &[]);
    let ns = TempNamespace::new("mtls-status");
    eventually("the webhook answering", Duration::from_secs(30), || {
        kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(VS_OK)).ok.then_some(())
    });
    let apply = |namespaced: bool, yaml: &str| -> String {
        let mut args = vec!["apply", "-f", "-"];
        if namespaced {
            args.extend(["-n", &ns.name]);
        }
        let out = kubectl(&args, Some(yaml));
        assert!(out.ok, "refused: {}\n{yaml}", out.stderr);
        out.stderr
    };

    // Istio 1.1's mesh-wide mutual TLS, exactly as its documentation wrote it.
    let _cleanup = ClusterScoped("meshpolicies.authentication.istio.io/default");
    let mesh = apply(
        false,
        "apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"MeshPolicy\"\nmetadata: {name: \"default\"}\nspec: {peers: [{mtls: {}}]}\n",
    );
    assert!(!mesh.contains(NOT_APPLIED), "{mesh}");
    // `mtls:` with no value, through a client-side apply: the user learns it was dropped.
    let dropped = apply(
        true,
        "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  peers:\n  - mtls:\n",
    );
    assert!(dropped.contains("spec.peers[0]: the peer entry sets no method and is ignored"), "{dropped}");
    let first = apply(
        true,
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n",
    );
    assert!(!first.contains(NOT_APPLIED), "{first}");
    // A new one is the newest, so the one above applies, and this one is told.
    let second = eventually(
        "the index holding the first PeerAuthentication",
        Duration::from_secs(30),
        || {
            let out = kubectl(
                &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
                Some(
                    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: second}\nspec: {mtls: {mode: DISABLE}}\n",
                ),
            );
            out.stderr.contains("also has no selector").then_some(out.stderr)
        },
    );
    assert!(second.contains("Istio applies only the oldest, default, and ignores this one"), "{second}");
    // Rejected as Istio rejects it, naming the field.
    let out = kubectl(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: ports}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        ),
    );
    assert!(
        !out.ok && out.stderr.contains("spec.portLevelMtls: portLevelMtls needs a selector"),
        "{}",
        out.stderr
    );

    // Status: valid, and applied.
    let reconciled = |resource: &str, ns: Option<&str>, name: &str| {
        eventually(&format!("Reconciled on {resource} {name}"), Duration::from_secs(60), || {
            condition_of(resource, ns, name, "Reconciled")
        })
    };
    for (resource, namespace, name) in [
        ("meshpolicies.authentication.istio.io", None, "default"),
        ("policies.authentication.istio.io", Some(ns.name.as_str()), "default"),
        ("peerauthentications.security.istio.io", Some(ns.name.as_str()), "default"),
    ] {
        let c = reconciled(resource, namespace, name);
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("Applied")), "{c}");
        let accepted = condition_of(resource, namespace, name, "Accepted").expect("Accepted");
        assert_eq!(accepted["status"], "True", "{resource} {name}: {accepted}");
    }
}
