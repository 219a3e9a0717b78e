//! The sidecar injector, as Istio users use it: the chart installed with
//! helm, a namespace labelled istio-injection=enabled, Bookinfo applied
//! unmodified. Every pod gets `mesh iptables` and stock Envoy; Envoy opens an
//! authenticated ADS stream to the controller and carries the traffic.
//! Then a host Envoy posing as one pod shows that only that pod's own token
//! gets configuration.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::{
    Release, TempNamespace, controller_metric, enter, eventually, free_port, injected_bookinfo, jsonpath,
    kubectl, kubectl_ok, pod_named, run,
};

fn label_for_injection(ns: &str) {
    kubectl_ok(&["label", "namespace", ns, "istio-injection=enabled", "--overwrite"], None);
}

fn pod_json(ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(&["get", "pod", "-n", ns, name, "-o", "json"], None)).expect("pod JSON")
}

fn init_container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// Envoy's statistics, read inside the pod: the Prometheus samples
/// (`:15090/stats/prometheus`, what a scraper reads) and the plain counters
/// of the admin API on loopback (`127.0.0.1:15000/stats`, exact names).
fn envoy_stats(ns: &str, pod: &str) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let parse = |text: &str, separator: &str| -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(separator))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    };
    let prometheus = enter(ns, pod, "curl -sf -m 5 http://127.0.0.1:15090/stats/prometheus");
    assert!(prometheus.ok, "Envoy's Prometheus stats in {ns}/{pod}: {}", prometheus.stderr);
    let admin = enter(ns, pod, "curl -sf -m 5 http://127.0.0.1:15000/stats");
    assert!(admin.ok, "Envoy's stats in {ns}/{pod}: {}", admin.stderr);
    (parse(&prometheus.stdout, " "), parse(&admin.stdout, ": "))
}

/// Requests Envoy's HTTP connection managers of one direction saw:
/// `http.inbound.*`/`http.outbound.*` (pass-through) and
/// `http.inbound_0.0.0.0_<port>.*`/`http.outbound_0.0.0.0_<port>.*` (routed ports).
fn requests(stats: &BTreeMap<String, f64>, direction: &str) -> f64 {
    stats
        .iter()
        .filter_map(|(k, v)| {
            let prefix = k.strip_prefix("http.")?.strip_suffix(".downstream_rq_total")?;
            (prefix == direction || prefix.starts_with(&format!("{direction}_"))).then_some(*v)
        })
        .sum()
}

#[test]
fn bookinfo_gets_envoy_in_every_pod_and_its_traffic_goes_through_envoy() {
    let release = Release::install("mesh-e2e-inject", &[]);
    let ns = injected_bookinfo("inject");

    // Every pod: our init container, then Envoy as a native sidecar; all ready.
    let pods: Vec<String> = jsonpath(&ns.name, "pods", "{.items[*].metadata.name}")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(pods.len(), 6, "{pods:?}");
    for pod in &pods {
        let json = pod_json(&ns.name, pod);
        assert_eq!(init_container_names(&json)[..2], ["istio-init", "istio-proxy"], "{pod}");
        assert!(json["metadata"]["annotations"]["sidecar.istio.io/status"].is_string(), "{pod}");
        let statuses = json["status"]["initContainerStatuses"].as_array().cloned().unwrap_or_default();
        let proxy = statuses.iter().find(|s| s["name"] == "istio-proxy").expect("istio-proxy status");
        assert_eq!(proxy["ready"], true, "{pod}: Envoy not ready: {proxy}");
        let init = statuses.iter().find(|s| s["name"] == "istio-init").expect("istio-init status");
        assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{pod}: {init}");
    }

    // Envoy's own log and the app's, as users read them: what the node
    // wrote for each container.
    let productpage_pod = pod_named(&ns.name, "app=productpage");
    for container in ["istio-proxy", "productpage"] {
        let logs = kubectl_ok(&["logs", "-n", &ns.name, "deploy/productpage-v1", "-c", container], None);
        assert_eq!(logs, crate::support::container_log(&ns.name, &productpage_pod, container), "{container}");
    }

    // The page still shows details and reviews, through every Envoy on the way.
    let productpage = pod_named(&ns.name, "app=productpage");
    let page = eventually("productpage through Envoy", Duration::from_secs(30), || {
        let page = enter(&ns.name, &productpage, "curl -sf -m 5 http://productpage:9080/productpage");
        page.ok.then_some(page)
    });
    assert!(page.stdout.contains(r#"id="details-publisher">PublisherA"#), "no details: {}", page.stdout);
    assert!(page.stdout.contains(r#"id="reviews-podname">reviews-v"#), "no reviews: {}", page.stdout);
    let script = "for i in $(seq 30); do curl -s -o /dev/null -w '%{http_code}\\n' -m 5 http://productpage:9080/productpage; done";
    let codes = enter(&ns.name, &productpage, script).stdout;
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 30, "{codes}");

    // Envoy counted what it carried, and the counts add up: every page
    // served by productpage's Envoy (inbound) made one call to details and
    // one to reviews (outbound, with the pages asked from inside the pod);
    // reviews v2 and v3 call ratings once per request. (Which reviews pods
    // are called is up to kube-proxy and Envoy's reuse of connections: in
    // pass-through, Envoy does not balance; routing comes with xDS routes.)
    let mut inbound = BTreeMap::new();
    let mut outbound = BTreeMap::new();
    for pod in &pods {
        let (prometheus, stats) = envoy_stats(&ns.name, pod);
        // A scraper sees the same traffic.
        let scraped: f64 = prometheus
            .iter()
            .filter(|(k, _)| {
                k.starts_with("envoy_http_downstream_rq_total{") || k.contains("_downstream_rq_total")
            })
            .filter(|(k, _)| k.contains("bound"))
            .map(|(_, v)| v)
            .sum();
        assert!(scraped > 0.0, "{pod}: no request counted on :15090/stats/prometheus");
        let app = pod.rsplitn(3, '-').last().expect("a Deployment's pod").to_string();
        eprintln!(
            "{pod}: inbound {}, outbound {}",
            requests(&stats, "inbound"),
            requests(&stats, "outbound")
        );
        inbound.insert(app.clone(), requests(&stats, "inbound"));
        outbound.insert(app, requests(&stats, "outbound"));
    }
    let pages = inbound["productpage-v1"];
    assert!(pages >= 31.0, "{inbound:?}");
    assert_eq!(inbound["details-v1"], pages, "{inbound:?}");
    let reviews = ["reviews-v1", "reviews-v2", "reviews-v3"];
    assert_eq!(reviews.iter().map(|r| inbound[*r]).sum::<f64>(), pages, "{inbound:?}");
    assert_eq!(
        outbound["productpage-v1"],
        3.0 * pages,
        "details + reviews + the curls from inside: {outbound:?}"
    );
    for r in ["reviews-v2", "reviews-v3"] {
        assert_eq!(outbound[r], inbound[r], "{r} calls ratings once per request: {outbound:?}");
    }
    assert_eq!(inbound["ratings-v1"], inbound["reviews-v2"] + inbound["reviews-v3"], "{inbound:?}");
    for quiet in ["details-v1", "ratings-v1", "reviews-v1"] {
        assert_eq!(outbound[quiet], 0.0, "{quiet} calls nobody");
    }

    // Every Envoy holds a stream to the controller and accepted all it was
    // sent: Bookinfo's six and the chart's two gateways.
    let connected = controller_metric(&release.namespace, "mesh_xds_connected_proxies");
    assert_eq!(total(&connected), 8.0, "{connected:?}");
    let acks = controller_metric(&release.namespace, "mesh_xds_acks_total");
    assert!(total(&acks) >= 12.0, "every proxy ACKs listeners and clusters: {acks:?}");
    let nacks = controller_metric(&release.namespace, "mesh_xds_nacks_total");
    assert_eq!(total(&nacks), 0.0, "{nacks:?}");
    eprintln!("controller: {connected:?} {acks:?} {nacks:?}");

    // The init container's rules, inside an injected pod.
    let rules = enter(&ns.name, &productpage, "iptables -t nat -S").stdout;
    for rule in [
        "-N ISTIO_INBOUND",
        "-N ISTIO_OUTPUT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    ] {
        assert!(rules.lines().any(|l| l == rule), "no {rule:?} in:\n{rules}");
    }

    // A pod that opts out is untouched: no sidecar, no rules.
    let opted_out = r#"
apiVersion: v1
kind: Pod
metadata:
  name: outsider
  labels: {sidecar.istio.io/inject: "false"}
spec:
  containers:
  - {name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(opted_out));
    kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/outsider", "--timeout=60s"], None);
    let json = pod_json(&ns.name, "outsider");
    assert!(init_container_names(&json).is_empty(), "{}", json["spec"]);
    assert!(json["metadata"]["annotations"]["sidecar.istio.io/status"].is_null());
    let rules = enter(&ns.name, "outsider", "iptables -t nat -S").stdout;
    assert!(!rules.contains("ISTIO"), "{rules}");
    // And it still reaches Bookinfo, past no Envoy of its own.
    let out = enter(
        &ns.name,
        "outsider",
        "curl -s -o /dev/null -w '%{http_code}' -m 5 http://productpage:9080/health",
    );
    assert_eq!(out.stdout, "200", "{}", out.stderr);
}

/// A bad annotation keeps the pod out, with a message naming it.
#[test]
fn a_bad_sidecar_annotation_is_refused_at_admission() {
    let _release = Release::install("mesh-e2e-inject-bad", &[]);
    let ns = TempNamespace::new("inject-bad");
    label_for_injection(&ns.name);
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: greedy
  annotations: {sidecar.istio.io/proxyMemory: "lots"}
spec:
  containers:
  - {name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}
"#;
    let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(pod));
    assert!(!out.ok, "accepted a pod with a bad annotation");
    for fragment in ["admission webhook", "sidecar.istio.io/proxyMemory", "\"lots\"", "greedy"] {
        assert!(out.stderr.contains(fragment), "message lacks {fragment:?}: {}", out.stderr);
    }
}

/// The app's probes, rewritten by the injector, reach the app through
/// Envoy's app-health listener on :15020: an httpGet probe on a named port
/// and a tcpSocket probe make their pods Ready; a tcpSocket probe of a port
/// nobody listens on, and an httpGet probe of a path the app answers 404,
/// keep theirs not Ready, though Envoy and the app run.
#[test]
fn rewritten_probes_reach_the_app_through_envoy() {
    let _release = Release::install("mesh-e2e-probes", &[]);
    let ns = TempNamespace::new("probes");
    label_for_injection(&ns.name);
    let pod = |name: &str, image: &str, probe: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: app\n    image: docker.io/istio/examples-bookinfo-{image}-v1:1.20.3\n    ports: [{{name: http, containerPort: 9080}}]\n    readinessProbe: {{{probe}, periodSeconds: 2, failureThreshold: 1}}\n"
        )
    };
    let pods = [
        pod("http-ready", "details", "httpGet: {path: /health, port: http}"),
        pod("tcp-ready", "ratings", "tcpSocket: {port: 9080}"),
        pod("tcp-nobody", "details", "tcpSocket: {port: 9999}"),
        pod("http-missing", "details", "httpGet: {path: /missing, port: 9080}"),
    ];
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(&pods.join("---\n")));

    // The pods' specs: each probe now asks Envoy, and the sidecar records the
    // original (as the API server defaulted it).
    for (name, path, original) in [
        (
            "http-ready",
            "/app-health/app/readyz",
            json!({"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"}, "timeoutSeconds": 1}),
        ),
        ("tcp-ready", "/app-health/app/readyz", json!({"tcpSocket": {"port": 9080}, "timeoutSeconds": 1})),
        ("tcp-nobody", "/app-health/app/readyz", json!({"tcpSocket": {"port": 9999}, "timeoutSeconds": 1})),
    ] {
        let json = pod_json(&ns.name, name);
        let probe = &json["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["httpGet"]["port"], 15020, "{name}: {probe}");
        assert_eq!(probe["httpGet"]["path"], path, "{name}: {probe}");
        assert!(probe.get("tcpSocket").is_none(), "{name}: {probe}");
        let proxy = json["spec"]["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "istio-proxy"))
            .cloned()
            .expect("istio-proxy");
        let env = proxy["env"].as_array().cloned().unwrap_or_default();
        let recorded =
            env.iter().find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS").expect("ISTIO_KUBE_APP_PROBERS");
        let recorded: Value =
            serde_json::from_str(recorded["value"].as_str().unwrap_or_default()).expect("JSON");
        assert_eq!(recorded, json!({path: original}), "{name}");
    }

    for name in ["http-ready", "tcp-ready"] {
        kubectl_ok(
            &["wait", "-n", &ns.name, "--for", "condition=Ready", &format!("pod/{name}"), "--timeout=120s"],
            None,
        );
    }
    // The others ran as long and are probed as often; give them a few more periods.
    for name in ["tcp-nobody", "http-missing"] {
        let json = eventually(&format!("{name}'s app and Envoy running"), Duration::from_secs(60), || {
            let json = pod_json(&ns.name, name);
            let running = json["status"]["containerStatuses"][0]["state"]["running"].is_object();
            running.then_some(json)
        });
        let proxy = json["status"]["initContainerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "istio-proxy"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(proxy["ready"], true, "{name}: Envoy not ready: {proxy}");
    }
    std::thread::sleep(Duration::from_secs(8));
    for name in ["tcp-nobody", "http-missing"] {
        let ready =
            jsonpath(&ns.name, &format!("pod/{name}"), "{.status.conditions[?(@.type==\"Ready\")].status}");
        assert_eq!(ready, "False", "{name} is Ready though its app does not answer its probe");
        // What the kubelet gets from Envoy (asked from the host, as the
        // kubelet asks), and that the app itself is up.
        let want = if name == "tcp-nobody" { "503" } else { "404" };
        assert_eq!(app_health(&ns.name, name), want, "{name}");
        let app =
            enter(&ns.name, name, "curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:9080/health");
        assert_eq!(app.stdout, "200", "{name}'s app: {}", app.stderr);
    }
    for name in ["http-ready", "tcp-ready"] {
        assert_eq!(app_health(&ns.name, name), "200", "{name}");
    }
}

/// The status Envoy's app-health listener answers for a pod's `app`
/// readiness probe, asked from the host at the pod's IP.
fn app_health(ns: &str, pod: &str) -> String {
    let ip = jsonpath(ns, &format!("pod/{pod}"), "{.status.podIP}");
    let url = format!("http://{ip}:15020/app-health/app/readyz");
    run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", &url], None).stdout
}

/// A standalone Envoy on the host with the sidecar's bootstrap, posing as
/// one pod, with a given token.
struct HostEnvoy {
    child: Child,
    admin: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl HostEnvoy {
    fn start(release_ns: &str, node_id: &str, token: &str, root_pem: &str) -> Self {
        Self::start_with(release_ns, node_id, token, root_pem, json!([]))
    }

    /// The same, with its clusters from a file holding `clusters` instead
    /// of from the control plane (static clusters cannot name ADS secrets).
    fn start_with(release_ns: &str, node_id: &str, token: &str, root_pem: &str, clusters: Value) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-envoy-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let token_file = dir.join("token");
        let root_file = dir.join("root.pem");
        // The kubelet writes tokens without a trailing newline; Envoy's
        // gRPC refuses a header value ending in one.
        std::fs::write(&token_file, token.trim()).expect("token file");
        std::fs::write(&root_file, root_pem).expect("root file");
        let service_ip = jsonpath(release_ns, "service/mesh", "{.spec.clusterIP}");
        let mut bootstrap = mesh::inject::bootstrap::bootstrap(&format!("{service_ip}:15012"));
        let admin = free_port();
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(admin);
        // Only the dynamic part matters here; the pod's fixed ports are the pods'.
        bootstrap["static_resources"]["listeners"] = json!([]);
        if clusters.as_array().is_some_and(|c| !c.is_empty()) {
            let resources: Vec<Value> = clusters
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut c = c.clone();
                    c["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
                    c
                })
                .collect();
            let cds = dir.join("cds.json");
            std::fs::write(&cds, json!({"version_info": "1", "resources": resources}).to_string())
                .expect("cds");
            bootstrap["dynamic_resources"]["cds_config"] =
                json!({"path_config_source": {"path": cds}, "resource_api_version": "V3"});
        }
        let grpc = &mut bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
        grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"] = json!(root_file);
        grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"] =
            json!(token_file);
        // Dialled by ClusterIP from the host; the certificate names the Service.
        grpc["channel_args"] = json!({"args": {"grpc.ssl_target_name_override": {"string_value": format!("mesh.{release_ns}.svc")}}});
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_string()).expect("bootstrap");
        let log = std::fs::File::create(dir.join("envoy.log")).expect("log file");
        let child = Command::new("envoy")
            .args([
                "-c",
                config.to_str().expect("utf-8"),
                "--service-node",
                node_id,
                "--service-cluster",
                "e2e",
            ])
            .args(["--disable-hot-restart", "--base-id-path", "/dev/null", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("envoy runs (make tools installs it)");
        Self { child, admin, _dir: tempdir::Dir(dir) }
    }

    fn stat(&self, name: &str) -> Option<f64> {
        let out = run(
            "curl",
            &["-sf", "-m", "2", &format!("http://127.0.0.1:{}/stats?filter=^{name}$", self.admin)],
            None,
        );
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for HostEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller's count of refused streams, by reason.
fn rejected(release_ns: &str) -> BTreeMap<String, f64> {
    controller_metric(release_ns, "mesh_xds_rejected_streams_total")
}

fn total(counts: &BTreeMap<String, f64>) -> f64 {
    counts.values().sum()
}

/// A token as the API server issues it, with its times moved into the past
/// and signed again with the cluster's own ServiceAccount key: a genuine
/// token, except that it has expired.
fn expired(token: &str) -> String {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url")).expect("claims");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let signed = format!("{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()));
    let key = format!(
        "{}/pki/sa.key",
        std::env::var("MESH_CLUSTER_DIR").expect("MESH_CLUSTER_DIR (set by make test-e2e)")
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    use std::io::Write;
    openssl.stdin.take().expect("stdin").write_all(signed.as_bytes()).expect("signing input");
    let out = openssl.wait_with_output().expect("openssl ran");
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

#[test]
fn only_the_pods_own_token_gets_configuration() {
    let release = Release::install("mesh-e2e-xds-auth", &[]);
    let ns = TempNamespace::new("xds-auth");
    label_for_injection(&ns.name);
    let pods = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: alpha}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: beta}
---
apiVersion: v1
kind: Pod
metadata: {name: alpha}
spec:
  serviceAccountName: alpha
  containers: [{name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: beta}
spec:
  serviceAccountName: beta
  containers: [{name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}]
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(pods));
    for pod in ["alpha", "beta"] {
        kubectl_ok(
            &["wait", "-n", &ns.name, "--for", "condition=Ready", &format!("pod/{pod}"), "--timeout=90s"],
            None,
        );
    }
    let ip = jsonpath(&ns.name, "pod/alpha", "{.status.podIP}");
    let node_id = mesh::inject::bootstrap::node_id(&ip, "alpha", &ns.name, "cluster.local");
    let root = jsonpath(&ns.name, "configmap/mesh-ca-root-cert", "{.data.root-cert\\.pem}");
    let token = |sa: &str, extra: &[&str]| {
        let mut args = vec!["create", "token", sa, "-n", ns.name.as_str(), "--duration", "1h"];
        args.extend(extra);
        kubectl_ok(&args, None).trim().to_string()
    };
    let right = token(
        "alpha",
        &["--audience", "mesh-ca", "--bound-object-kind", "Pod", "--bound-object-name", "alpha"],
    );
    let refused = [
        (
            "another pod's token",
            token(
                "beta",
                &["--audience", "mesh-ca", "--bound-object-kind", "Pod", "--bound-object-name", "beta"],
            ),
        ),
        ("another ServiceAccount's token", token("beta", &["--audience", "mesh-ca"])),
        (
            "a token for another audience",
            token(
                "alpha",
                &["--audience", "not-the-mesh", "--bound-object-kind", "Pod", "--bound-object-name", "alpha"],
            ),
        ),
        ("an expired token", expired(&right)),
    ];
    for (what, bad) in refused {
        let before = total(&rejected(&release.namespace));
        let envoy = HostEnvoy::start(&release.namespace, &node_id, &bad, &root);
        eventually(&format!("the controller refusing {what}"), Duration::from_secs(30), || {
            (total(&rejected(&release.namespace)) > before).then_some(())
        });
        // Give a wrongly accepted stream time to deliver before looking.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            envoy.stat("listener_manager.lds.update_success"),
            Some(0.0),
            "{what} got listeners:\n{}",
            envoy.log()
        );
        assert_eq!(envoy.stat("cluster_manager.cds.update_success"), Some(0.0), "{what} got clusters");
        eprintln!("{what}: refused ({:?})", rejected(&release.namespace));
    }

    let envoy = HostEnvoy::start(&release.namespace, &node_id, &right, &root);
    eventually(
        "Envoy with the pod's own token getting listeners and clusters",
        Duration::from_secs(30),
        || {
            (envoy.stat("listener_manager.lds.update_success")? >= 1.0
                && envoy.stat("cluster_manager.cds.update_success")? >= 1.0)
                .then_some(())
        },
    );
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), Some(0.0), "{}", envoy.log());
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected"), Some(0.0), "{}", envoy.log());
}

/// A cluster whose client TLS asks the control plane (over ADS) for the
/// secret `name`: what a proxy would do to get another identity's key.
fn cluster_asking_for_secret(n: usize, name: &str) -> Value {
    json!({
        "name": format!("wants-secret-{n}"),
        "type": "STATIC",
        "connect_timeout": "1s",
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                    ]
                }
            }
        }
    })
}

#[test]
fn a_proxy_gets_only_its_own_identity_whatever_secret_it_asks_for() {
    let release = Release::install("mesh-e2e-sds-auth", &[]);
    let ns = TempNamespace::new("sds-auth");
    label_for_injection(&ns.name);
    let pod = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: alpha}
---
apiVersion: v1
kind: Pod
metadata: {name: alpha}
spec:
  serviceAccountName: alpha
  containers: [{name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}]
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(pod));
    kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/alpha", "--timeout=90s"], None);
    let ip = jsonpath(&ns.name, "pod/alpha", "{.status.podIP}");
    let node_id = mesh::inject::bootstrap::node_id(&ip, "alpha", &ns.name, "cluster.local");
    let root = jsonpath(&ns.name, "configmap/mesh-ca-root-cert", "{.data.root-cert\\.pem}");
    let token = kubectl_ok(
        &[
            "create",
            "token",
            "alpha",
            "-n",
            &ns.name,
            "--duration",
            "1h",
            "--audience",
            "mesh-ca",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "alpha",
        ],
        None,
    );
    // Pod A's token, asking for B's identity (same namespace and another
    // namespace's), a Kubernetes Secret's name and a name nobody uses.
    let wanted = [
        format!("spiffe://cluster.local/ns/{}/sa/beta", ns.name),
        "spiffe://cluster.local/ns/kube-system/sa/default".to_string(),
        "kubernetes://beta-credential".to_string(),
        "no-such-secret".to_string(),
    ];
    let clusters: Vec<Value> =
        wanted.iter().enumerate().map(|(n, name)| cluster_asking_for_secret(n, name)).collect();
    let refusals =
        || -> f64 { controller_metric(&release.namespace, "mesh_xds_secret_refusals_total").values().sum() };
    let before = refusals();
    let envoy = HostEnvoy::start_with(&release.namespace, &node_id, token.trim(), &root, json!(clusters));
    eventually("the controller refusing the four names", Duration::from_secs(30), || {
        (refusals() >= before + 4.0).then_some(())
    });
    // Envoy got nothing and holds no certificate of another identity. Over
    // Delta, the injected bootstrap's protocol, each name it subscribed to
    // is answered as absent (`removed_resources`), so its clusters finish
    // warming at once; over SotW its initial fetch of each timed out (15 s).
    const TIMED_OUT: &str =
        "initial fetch timed out for type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    const INITIALIZED: &str = "cm init: all clusters initialized";
    eventually("Envoy's clusters initialized without the secrets", Duration::from_secs(30), || {
        envoy.log().contains(INITIALIZED).then_some(())
    });
    assert_eq!(envoy.log().matches(TIMED_OUT).count(), 0, "{}", envoy.log());
    let certs =
        run("curl", &["-sf", "-m", "2", &format!("http://127.0.0.1:{}/certs", envoy.admin)], None).stdout;
    assert!(!certs.contains("/sa/beta") && !certs.contains("kube-system"), "{certs}");
    // Each name is one Envoy still waits for, none one it holds. (Not
    // `sds.<name>.update_success`: Envoy ACKs and counts a Delta answer
    // that a name is absent, and writes a name with `:` otherwise.)
    let dump =
        run("curl", &["-sf", "-m", "2", &format!("http://127.0.0.1:{}/config_dump", envoy.admin)], None)
            .stdout;
    let dump: Value = serde_json::from_str(&dump).expect("Envoy's config dump");
    let secrets = dump["configs"]
        .as_array()
        .and_then(|configs| {
            configs.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("SecretsConfigDump")))
        })
        .expect("the config dump has Envoy's secrets");
    let names = |list: &str| -> Vec<String> {
        secrets[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect()
    };
    let (active, warming) = (names("dynamic_active_secrets"), names("dynamic_warming_secrets"));
    for name in &wanted {
        assert!(!active.contains(name), "{name} was delivered: {secrets}");
        assert!(warming.contains(name), "{name} is not awaited: {secrets}");
    }
    // And the controller it reached said so, naming the proxy and the secret.
    let replicas = crate::support::controller_pods(&release.namespace, "{.items[*].metadata.name}");
    let log = eventually("the refusals in the controller's log", Duration::from_secs(10), || {
        let log: String = replicas
            .split_whitespace()
            .map(|pod| crate::support::container_log(&release.namespace, pod, "controller"))
            .collect();
        wanted.iter().all(|name| log.contains(name.as_str())).then_some(log)
    });
    assert!(log.contains("secret request refused"), "no warning in the controller's log");
}
