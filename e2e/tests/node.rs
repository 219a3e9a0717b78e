//! The local node runs real pods: Bookinfo over Service names and
//! ClusterIPs, init containers and sidecars, every volume kind, tokens that
//! the API server issues and the node refreshes, probes that gate
//! EndpointSlices, graceful deletion, scaling and restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Background, TempNamespace, apply, conformance, enter, eventually, jsonpath, kubectl, kubectl_ok,
    pod_named, rollout,
};

/// A folder on the host for a test's output (mounted into pods by hostPath).
struct HostDir(PathBuf);

impl HostDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self(dir)
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(file)).ok()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod_json(ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl_ok(&["get", "pod", "-n", ns, name, "-o", "json"], None)).expect("pod JSON")
}

fn wait_ready(ns: &str, pod: &str) {
    kubectl_ok(&["wait", "-n", ns, "--for", "condition=Ready", &format!("pod/{pod}"), "--timeout=90s"], None);
}

#[test]
fn bookinfo_runs_and_every_reviews_version_answers() {
    let ns = TempNamespace::new("bookinfo");
    let file = conformance().join("platform/bookinfo.yaml");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", file.to_str().expect("utf-8")], None);
    rollout(&ns.name);

    // EndpointSlices list the pods' IPs.
    let pod_ips: Vec<String> =
        jsonpath(&ns.name, "pods", "{.items[*].status.podIP}").split_whitespace().map(String::from).collect();
    assert_eq!(pod_ips.len(), 6, "{pod_ips:?}");
    let slice_ips = eventually("EndpointSlices with every pod", Duration::from_secs(30), || {
        let ips = jsonpath(&ns.name, "endpointslices", "{.items[*].endpoints[*].addresses[*]}");
        let ips: Vec<String> = ips.split_whitespace().map(String::from).collect();
        (ips.len() == 6).then_some(ips)
    });
    for ip in &pod_ips {
        assert!(slice_ips.contains(ip), "{ip} not in {slice_ips:?}");
    }

    // From the productpage pod, by Service name: the page shows details and reviews.
    let productpage = pod_named(&ns.name, "app=productpage");
    // kube-proxy programs a new Service within a second or so, as on any cluster.
    let page = eventually("productpage answering by its Service name", Duration::from_secs(20), || {
        let page = enter(&ns.name, &productpage, "curl -sf -m 5 http://productpage:9080/productpage");
        page.ok.then_some(page)
    });
    assert!(page.stdout.contains(r#"id="details-publisher">PublisherA"#), "no details: {}", page.stdout);
    assert!(page.stdout.contains(r#"id="reviews-podname">reviews-v"#), "no reviews: {}", page.stdout);
    for name in [format!("productpage.{}", ns.name), format!("productpage.{}.svc.cluster.local", ns.name)] {
        let out = enter(
            &ns.name,
            &productpage,
            &format!("curl -s -o /dev/null -w '%{{http_code}}' http://{name}:9080/health"),
        );
        assert_eq!(out.stdout, "200", "{name}: {}", out.stderr);
    }

    // Over 300 requests, kube-proxy spreads reviews calls over all three versions.
    let script = "for i in $(seq 300); do curl -s -m 5 http://productpage:9080/productpage | grep -o 'reviews-v[123]'; done";
    let counts = enter(&ns.name, &productpage, script).stdout;
    for version in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        let n = counts.lines().filter(|l| *l == version).count();
        assert!(n > 0, "{version} never answered in 300 requests");
    }
    assert_eq!(counts.lines().count(), 300, "some requests failed");
}

#[test]
fn init_containers_run_in_order_and_native_sidecars_keep_running() {
    let ns = TempNamespace::new("init");
    apply(
        &ns.name,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
  - {name: first, image: busybox, command: [sh, -c, "sleep 1; echo first >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
  - {name: second, image: busybox, command: [sh, -c, "echo second >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
  - name: sidecar
    image: busybox
    restartPolicy: Always
    command: [sh, -c, "sleep 1; echo sidecar >> /work/order; exec sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
    startupProbe: {exec: {command: [grep, -qx, sidecar, /work/order]}, periodSeconds: 1, failureThreshold: 30}
  containers:
  - {name: app, image: busybox, command: [sh, -c, "echo app >> /work/order; exec sleep 3600"], volumeMounts: [{name: work, mountPath: /work}]}
"#,
    );
    // The sidecar sleeps before it writes, and its startup probe passes only
    // once it has: a node that started `app` without waiting for that probe
    // would have `app` written first.
    wait_ready(&ns.name, "ordered");
    // Ready says `app` runs, not that its shell has written yet (as on any
    // cluster): wait for its line, the last one, then check them all.
    let order = eventually("the app's line in /work/order", Duration::from_secs(30), || {
        let out = enter(&ns.name, "ordered", "cat /work/order");
        if !out.ok {
            eprintln!("reading /work/order: {}", out.stderr);
        }
        out.stdout.lines().any(|l| l == "app").then_some(out.stdout)
    });
    assert_eq!(order.lines().collect::<Vec<_>>(), ["first", "second", "sidecar", "app"]);
    let pod = pod_json(&ns.name, "ordered");
    let init = &pod["status"]["initContainerStatuses"];
    assert_eq!(init[0]["state"]["terminated"]["reason"], "Completed", "{init}");
    assert_eq!(init[1]["state"]["terminated"]["exitCode"], 0, "{init}");
    assert!(init[2]["state"]["running"].is_object(), "the sidecar stopped: {init}");
    assert_eq!(init[2]["started"], true);
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn every_volume_kind_is_mounted_and_tokens_are_real() {
    let ns = TempNamespace::new("volumes");
    apply(
        &ns.name,
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, other: ignored}
---
apiVersion: v1
kind: Secret
metadata: {name: credentials}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: volumes, labels: {app: volumes, tier: test}}
spec:
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: config, configMap: {name: settings, items: [{key: greeting, path: hello.txt}]}}
  - {name: secret, secret: {secretName: credentials}}
  - name: downward
    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}, {path: name, fieldRef: {fieldPath: metadata.name}}]}
  - name: projected
    projected:
      sources:
      - serviceAccountToken: {audience: mesh-ca, expirationSeconds: 600, path: token}
      - configMap: {name: settings, items: [{key: greeting, path: greeting}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "echo written > /scratch/file; exec sleep 3600"]
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: config, mountPath: /etc/mesh-e2e/config}
    - {name: secret, mountPath: /etc/mesh-e2e/secret, readOnly: true}
    - {name: downward, mountPath: /etc/mesh-e2e/downward}
    - {name: projected, mountPath: /var/run/secrets/mesh-e2e}
"#,
    );
    wait_ready(&ns.name, "volumes");
    let cat = |path: &str| {
        let out = enter(&ns.name, "volumes", &format!("cat {path}"));
        assert!(out.ok, "cat {path}: {}", out.stderr);
        out.stdout
    };
    // Ready does not mean the container's shell has run its first command.
    eventually("the container's write to its emptyDir", Duration::from_secs(30), || {
        (enter(&ns.name, "volumes", "cat /scratch/file").stdout == "written\n").then_some(())
    });
    assert_eq!(cat("/etc/mesh-e2e/config/hello.txt"), "hello");
    assert!(
        !enter(&ns.name, "volumes", "test -e /etc/mesh-e2e/config/other").ok,
        "items: only the listed key"
    );
    assert_eq!(cat("/etc/mesh-e2e/secret/password"), "s3cret");
    assert!(cat("/etc/mesh-e2e/downward/labels").contains("tier=\"test\""));
    assert_eq!(cat("/etc/mesh-e2e/downward/name"), "volumes");
    assert_eq!(cat("/var/run/secrets/mesh-e2e/greeting"), "hello");
    assert_eq!(cat("/var/run/secrets/mesh-e2e/namespace"), ns.name);
    // The node made nothing on the host's filesystem for these paths.
    assert!(!std::path::Path::new("/etc/mesh-e2e").exists());

    // The token is the API server's, for the audience asked, bound to this pod.
    let token = cat("/var/run/secrets/mesh-e2e/token");
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}","audiences":["mesh-ca"]}}}}"#
    );
    let out: Value = serde_json::from_str(&kubectl_ok(&["create", "-o", "json", "-f", "-"], Some(&review)))
        .expect("TokenReview");
    let status = &out["status"];
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["user"]["username"], format!("system:serviceaccount:{}:default", ns.name));
    assert_eq!(status["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "volumes", "{status}");

    // A configMap change reaches the running pod.
    kubectl_ok(
        &["patch", "-n", &ns.name, "configmap", "settings", "-p", r#"{"data":{"greeting":"bonjour"}}"#],
        None,
    );
    eventually("the new configMap value in the pod", Duration::from_secs(30), || {
        (enter(&ns.name, "volumes", "cat /etc/mesh-e2e/config/hello.txt").stdout == "bonjour").then_some(())
    });
}

#[test]
fn projected_tokens_are_replaced_before_they_expire() {
    // The e2e cluster's node replaces tokens after MESH_TOKEN_MAX_AGE seconds.
    let max_age: u64 = std::env::var("MESH_TOKEN_MAX_AGE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(max_age > 0 && max_age <= 60, "run with MESH_TOKEN_MAX_AGE set (make test-e2e does)");
    let ns = TempNamespace::new("token");
    apply(
        &ns.name,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: token}
spec:
  volumes:
  - name: token
    projected: {sources: [{serviceAccountToken: {audience: mesh-ca, expirationSeconds: 600, path: token}}]}
  containers:
  - {name: app, image: busybox, command: [sleep, "3600"], volumeMounts: [{name: token, mountPath: /var/run/secrets/tokens}]}
"#,
    );
    wait_ready(&ns.name, "token");
    // The first read is set-up, not the point of the test: a failed `enter`
    // (seen once, with empty output) is retried, and said.
    let first = eventually("the pod's first token", Duration::from_secs(30), || {
        let out = enter(&ns.name, "token", "cat /var/run/secrets/tokens/token");
        if !out.stdout.starts_with("ey") {
            eprintln!("reading the token: ok={} stdout={:?} stderr={:?}", out.ok, out.stdout, out.stderr);
        }
        out.stdout.starts_with("ey").then_some(out.stdout)
    });
    let replaced = eventually("a fresh token", Duration::from_secs(max_age + 30), || {
        let now = enter(&ns.name, "token", "cat /var/run/secrets/tokens/token").stdout;
        (now.starts_with("ey") && now != first).then_some(now)
    });
    assert_ne!(replaced, first);
}

#[test]
fn container_settings_env_user_workdir_and_capabilities() {
    let ns = TempNamespace::new("settings");
    let out = HostDir::new(&ns.name);
    apply(
        &ns.name,
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: cm}}
data: {{colour: blue}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sec}}
stringData: {{key: hush}}
---
apiVersion: v1
kind: Pod
metadata: {{name: settings, labels: {{app: settings}}}}
spec:
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  securityContext: {{runAsUser: 1234, runAsGroup: 2345}}
  containers:
  - name: app
    image: busybox
    workingDir: /tmp
    command: [sh, -c, "echo \"$(COMBINED)|$POD|$MEM|$COLOUR|$SECRET|$(id -u):$(id -g)|$(pwd)\" > /out/env; grep CapEff /proc/self/status > /out/caps; exec sleep 3600"]
    resources: {{limits: {{memory: 64Mi}}}}
    env:
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: MEM, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: COLOUR, valueFrom: {{configMapKeyRef: {{name: cm, key: colour}}}}}}
    - {{name: SECRET, valueFrom: {{secretKeyRef: {{name: sec, key: key}}}}}}
    - {{name: COMBINED, value: "$(POD)-$(COLOUR)"}}
    volumeMounts: [{{name: out, mountPath: /out}}]
    securityContext: {{capabilities: {{drop: [ALL], add: [NET_ADMIN]}}}}
"#,
            dir = out.0.display()
        ),
    );
    wait_ready(&ns.name, "settings");
    let env = eventually("the container's report", Duration::from_secs(10), || {
        out.read("env").filter(|e| e.ends_with('\n'))
    });
    assert_eq!(env.trim(), "settings-blue|settings|64|blue|hush|1234:2345|/tmp");
    // NET_ADMIN is bit 12 and nothing else.
    // The container writes this second: wait for it, not only for the first.
    let caps = eventually("the capabilities report", Duration::from_secs(10), || {
        out.read("caps").filter(|c| c.ends_with('\n'))
    });
    assert!(caps.trim().ends_with("0000000000001000"), "{caps}");
}

#[test]
fn readiness_probes_gate_endpoint_slice_readiness() {
    let ns = TempNamespace::new("readiness");
    apply(
        &ns.name,
        r#"
apiVersion: v1
kind: Service
metadata: {name: gated}
spec: {selector: {app: gated}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gated, labels: {app: gated}}
spec:
  volumes: [{name: flags, emptyDir: {}}]
  containers:
  - name: app
    image: istio/examples-bookinfo-details-v1:1.15.0
    ports: [{containerPort: 9080}]
    volumeMounts: [{name: flags, mountPath: /flags}]
    readinessProbe: {exec: {command: [test, -f, /flags/ready]}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {httpGet: {path: /health, port: 9080}, periodSeconds: 2}
"#,
    );
    let ready = |want: &str| {
        eventually(&format!("the endpoint ready={want}"), Duration::from_secs(30), || {
            let got = jsonpath(&ns.name, "endpointslices", "{.items[*].endpoints[*].conditions.ready}");
            (got == want).then_some(())
        })
    };
    ready("false");
    assert!(enter(&ns.name, "gated", "touch /flags/ready").ok);
    ready("true");
    assert!(enter(&ns.name, "gated", "rm /flags/ready").ok);
    ready("false");
    // The liveness probe over HTTP kept it alive all along.
    assert_eq!(jsonpath(&ns.name, "pod/gated", "{.status.containerStatuses[0].restartCount}"), "0");
}

#[test]
fn deletion_sends_sigterm_and_kills_after_the_grace_period() {
    let ns = TempNamespace::new("grace");
    let out = HostDir::new(&ns.name);
    let pod = |name: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 4\n  \
             volumes: [{{name: out, hostPath: {{path: {dir}}}}}]\n  containers:\n  - name: app\n    image: busybox\n    \
             command: [sh, -c, '{script}']\n    volumeMounts: [{{name: out, mountPath: /out}}]\n",
            dir = out.0.display()
        )
    };
    apply(
        &ns.name,
        &pod("polite", "trap \"echo term > /out/polite; exit 0\" TERM; while true; do sleep 0.2; done"),
    );
    apply(
        &ns.name,
        &pod("stubborn", "trap \"echo term > /out/stubborn\" TERM; while true; do sleep 0.2; done"),
    );
    wait_ready(&ns.name, "polite");
    wait_ready(&ns.name, "stubborn");

    let delete = |name: &str| {
        let start = Instant::now();
        kubectl_ok(&["delete", "pod", "-n", &ns.name, name, "--wait=true", "--timeout=30s"], None);
        start.elapsed()
    };
    let polite = delete("polite");
    assert_eq!(out.read("polite").as_deref(), Some("term\n"), "no SIGTERM");
    assert!(polite < Duration::from_secs(4), "a pod that exits on SIGTERM took {polite:?}");
    let stubborn = delete("stubborn");
    assert_eq!(out.read("stubborn").as_deref(), Some("term\n"), "no SIGTERM");
    assert!(stubborn >= Duration::from_secs(4), "killed before its grace period: {stubborn:?}");
    assert!(stubborn < Duration::from_secs(12), "not killed after its grace period: {stubborn:?}");
}

#[test]
fn endpoint_slices_follow_a_deployment_scaled_up_and_down() {
    let ns = TempNamespace::new("scale");
    apply(
        &ns.name,
        r#"
apiVersion: v1
kind: Service
metadata: {name: details}
spec: {selector: {app: details}, ports: [{name: http, port: 9080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: details}
spec:
  replicas: 1
  selector: {matchLabels: {app: details}}
  template:
    metadata: {labels: {app: details}}
    spec:
      containers:
      - name: details
        image: docker.io/istio/examples-bookinfo-details-v1:1.15.0
        readinessProbe: {httpGet: {path: /health, port: 9080}, periodSeconds: 1}
"#,
    );
    for replicas in [1, 3, 1] {
        kubectl_ok(&["scale", "-n", &ns.name, "deployment/details", &format!("--replicas={replicas}")], None);
        rollout(&ns.name);
        eventually(&format!("{replicas} ready endpoints"), Duration::from_secs(60), || {
            let ready = jsonpath(&ns.name, "endpointslices", "{.items[*].endpoints[*].conditions.ready}");
            let pods = jsonpath(&ns.name, "pods", "{.items[*].status.podIP}");
            (ready.split_whitespace().filter(|r| *r == "true").count() == replicas
                && ready.split_whitespace().count() == replicas
                && pods.split_whitespace().count() == replicas)
                .then_some(())
        });
    }
}

#[test]
fn a_container_that_exits_is_restarted() {
    let ns = TempNamespace::new("restart");
    apply(
        &ns.name,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crasher}\nspec:\n  containers:\n  \
         - {name: app, image: busybox, command: [sh, -c, 'sleep 1; exit 3']}\n",
    );
    let status = eventually("a restart", Duration::from_secs(40), || {
        let pod = pod_json(&ns.name, "crasher");
        let status = pod["status"]["containerStatuses"][0].clone();
        (status["restartCount"].as_i64().unwrap_or(0) >= 1).then_some(status)
    });
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3, "{status}");
    let _ = kubectl(&["delete", "pod", "-n", &ns.name, "crasher", "--wait=false"], None);
}

#[test]
fn kubectl_logs_reads_a_containers_output_through_the_nodes_kubelet_port() {
    let ns = TempNamespace::new("logs");
    apply(
        &ns.name,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  containers:\n  \
         - {name: say, image: busybox, command: [sh, -c, 'for i in 1 2 3; do echo line $i; done; \
         i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i + 1)); sleep 1; done']}\n",
    );
    wait_ready(&ns.name, "talker");
    let logs = eventually("three lines and a tick", Duration::from_secs(30), || {
        let out = kubectl(&["logs", "-n", &ns.name, "talker"], None);
        (out.ok && out.stdout.contains("tick 1")).then_some(out.stdout)
    });
    assert!(logs.starts_with("line 1\nline 2\nline 3\ntick 0\n"), "{logs}");
    let tail = kubectl_ok(&["logs", "-n", &ns.name, "talker", "-c", "say", "--tail", "1"], None);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");
    let limited = kubectl_ok(&["logs", "-n", &ns.name, "talker", "--limit-bytes", "7"], None);
    assert_eq!(limited, "line 1\n");
    // Followed: new lines keep coming until kubectl is stopped (3 s).
    let followed = crate::support::run(
        "timeout",
        &[
            "3",
            "kubectl",
            "--kubeconfig",
            &crate::support::kubeconfig(),
            "logs",
            "-f",
            "-n",
            &ns.name,
            "talker",
            "--tail",
            "1",
        ],
        None,
    );
    let ticks = followed.stdout.lines().filter(|l| l.starts_with("tick ")).count();
    assert!(ticks >= 2, "a followed log grows: {:?}", followed.stdout);
    // What the node cannot do is refused with the reason.
    let since = kubectl(&["logs", "-n", &ns.name, "talker", "--since", "10s"], None);
    assert!(!since.ok && since.stderr.contains("keeps no timestamps"), "{}", since.stderr);
    let previous = kubectl(&["logs", "-n", &ns.name, "talker", "--previous"], None);
    assert!(!previous.ok && previous.stderr.contains("no log of a previous run"), "{}", previous.stderr);
}

/// kubectl with a time limit: a hung session fails the test, not the run.
fn kubectl_within(seconds: u64, args: &[&str], stdin: Option<&str>) -> crate::support::Output {
    let kubeconfig = crate::support::kubeconfig();
    let limit = seconds.to_string();
    let mut all = vec![limit.as_str(), "kubectl", "--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    crate::support::run("timeout", &all, stdin)
}

/// GET `path` on a local port through a port-forward, once it answers.
fn curl_through(port: u16, path: &str) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    eventually(&format!("an answer on {url}"), Duration::from_secs(30), || {
        let out = crate::support::run("curl", &["-sS", "-m", "5", &url], None);
        out.ok.then_some(out.stdout)
    })
}

/// The websocket port-forward kube-rs clients use (`v4.channel.k8s.io`):
/// through `kubectl proxy` on `proxy` to the pod's `port`, sends `request`
/// on the port's data channel and returns what comes back on it until the
/// pod closes the connection.
fn websocket_port_forward(
    proxy: u16,
    namespace: &str,
    pod: &str,
    port: u16,
    request: &[u8],
) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut tcp = eventually("kubectl proxy", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", proxy)).ok()
    });
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let upgrade = format!(
        "GET /api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port} HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).expect("upgrade sent");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tcp.read(&mut chunk).expect("the upgrade's answer");
        assert!(n > 0, "no answer to the upgrade: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut reader = tcp.try_clone().expect("clone");
    // The server's frames (unmasked): (opcode, payload); None at the end.
    let mut next_frame = |buf: &mut Vec<u8>| -> Option<(u8, Vec<u8>)> {
        loop {
            if buf.len() >= 2 {
                let (opcode, short) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
                let (len, at) = match short {
                    126 => (buf.get(2..4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))), 4),
                    127 => {
                        (buf.get(2..10).map(|b| u64::from_be_bytes(b.try_into().expect("8")) as usize), 10)
                    }
                    n => (Some(n), 2),
                };
                if let Some(len) = len
                    && buf.len() >= at + len
                {
                    let payload = buf[at..at + len].to_vec();
                    buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let mut data = Vec::new();
    let mut sent = false;
    for _ in 0..1000 {
        let Some((opcode, payload)) = next_frame(&mut buf) else { break };
        match (opcode, payload.split_first()) {
            // Close.
            (8, _) => break,
            // Each channel first names its port; then the data channel carries the pod's bytes.
            (2, Some((0, rest))) if !sent => {
                assert_eq!(rest, port.to_le_bytes(), "the data channel names its port first");
                let mut message = vec![0u8];
                message.extend_from_slice(request);
                // A client's frame is masked; this mask is all zeros, which masks nothing.
                let mut frame = vec![0x82, 0x80 | 126];
                frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
                frame.extend_from_slice(&[0, 0, 0, 0]);
                frame.extend_from_slice(&message);
                tcp.write_all(&frame).expect("request sent");
                sent = true;
            }
            (2, Some((0, rest))) => data.extend_from_slice(rest),
            _ => {}
        }
    }
    (head, data)
}

#[test]
fn kubectl_exec_and_port_forward_reach_a_pods_processes_through_the_nodes_kubelet_port() {
    let ns = TempNamespace::new("exec");
    let n = ns.name.as_str();
    apply(
        n,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  securityContext: {runAsUser: 1234, runAsGroup: 2345}
  containers:
  - {name: app, image: busybox, command: [sh, -c, 'exec sleep 3600'], env: [{name: GREETING, value: hello}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: details
    image: docker.io/istio/examples-bookinfo-details-v1:1.15.0
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 9080}]}
"#,
    );
    wait_ready(n, "shell");
    wait_ready(n, "web");

    // Output, errors and the exit code come back apart.
    let run = kubectl_within(
        60,
        &["exec", "-n", n, "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert_eq!(run.stdout, "out\n");
    assert!(run.stderr.starts_with("err\n"), "{}", run.stderr);
    // Stdin reaches the command, and its end ends it.
    let cat = kubectl_within(60, &["exec", "-i", "-n", n, "shell", "--", "cat"], Some("hi\n"));
    assert!(cat.ok, "{}", cat.stderr);
    assert_eq!(cat.stdout, "hi\n");
    // As the container's user, with its environment, in its pod.
    let who = kubectl_within(
        60,
        &["exec", "-n", n, "shell", "-c", "app", "--", "sh", "-c", "id -u; id -g; echo $GREETING; hostname"],
        None,
    );
    assert!(who.ok, "{}", who.stderr);
    assert_eq!(who.stdout, "1234\n2345\nhello\nshell\n");
    // A command that is not there fails, and says why.
    let missing = kubectl_within(60, &["exec", "-n", n, "shell", "--", "no-such-program"], None);
    assert!(!missing.ok && missing.stderr.contains("no-such-program"), "{}", missing.stderr);

    // A terminal (`-t`) of the size of the client's, as the controlling terminal.
    let command = format!(
        "stty cols 123 rows 45; kubectl --kubeconfig {} exec -it -n {n} shell -- sh -c 'stty size; tty; exit 4'",
        crate::support::kubeconfig()
    );
    let tty = crate::support::run("timeout", &["60", "script", "-qec", &command, "/dev/null"], None);
    assert_eq!(tty.code, Some(4), "{} {}", tty.stdout, tty.stderr);
    assert!(tty.stdout.contains("45 123\r\n"), "{:?}", tty.stdout);
    assert!(tty.stdout.contains("/dev/pts/"), "{:?}", tty.stdout);

    // kubectl port-forward, to a pod and to a Service.
    let (pod_port, svc_port) = (crate::support::free_port(), crate::support::free_port());
    let _to_pod = Background::kubectl(
        Duration::from_secs(120),
        &["port-forward", "-n", n, "pod/web", &format!("{pod_port}:9080")],
    );
    let _to_svc = Background::kubectl(
        Duration::from_secs(120),
        &["port-forward", "-n", n, "svc/web", &format!("{svc_port}:80")],
    );
    assert_eq!(curl_through(pod_port, "/health"), r#"{"status":"Details is healthy"}"#);
    // Connection after connection over the same session.
    for _ in 0..3 {
        assert!(curl_through(pod_port, "/details/0").contains("William Shakespeare"));
    }
    assert_eq!(curl_through(svc_port, "/health"), r#"{"status":"Details is healthy"}"#);

    // The websocket port-forward of kube-rs clients, through kubectl proxy.
    let proxy = crate::support::free_port();
    let _proxy = Background::kubectl(Duration::from_secs(120), &["proxy", "--port", &proxy.to_string()]);
    let (head, data) = websocket_port_forward(proxy, n, "web", 9080, b"GET /health HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-protocol: v4.channel.k8s.io"), "{head}");
    let answer = String::from_utf8_lossy(&data);
    assert!(
        answer.starts_with("HTTP/1.0 200") && answer.ends_with(r#"{"status":"Details is healthy"}"#),
        "{answer}"
    );
}
