//! High availability: the chart's two controller replicas, with Bookinfo
//! injected and steady load through its sidecars. One replica is killed
//! (SIGKILL, as a crash or an OOM kill), then both are replaced by a
//! rolling restart (`helm upgrade` changing a value). Through both, every
//! request is answered 200 by the version the routing names, every proxy
//! is connected again within 5 s, and each Envoy holds the same listeners,
//! clusters and routes as before (only its certificate is new: each
//! stream is issued one). Then the API server is killed for a minute:
//! the pages keep coming, the configuration applied before stays in force,
//! a change applied after it returns arrives, a pod created after is
//! injected and its Envoy configured (the pod Ready), and no controller
//! restarts. Last, one sidecar's Envoy is frozen (SIGSTOP) while a change
//! is made: the others serve on, the controller lets the frozen one go,
//! and once it continues it reconnects and holds the change
//! (docs/operations.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Release, conformance, container_log, controller_pods, controllers, enter, eventually, helm,
    injected_bookinfo, kubectl_ok, metric_family, pod_named, repo, run,
};

/// The proxies the replicas have connected, each replica's count read
/// from its own /metrics (one that does not answer counts none).
fn connected(release_ns: &str) -> BTreeMap<String, f64> {
    controllers(release_ns)
        .into_iter()
        .map(|controller| {
            let out = run("curl", &["-sf", "-m", "1", &format!("{controller}/metrics")], None);
            let count = metric_family(&out.stdout, "mesh_xds_connected_proxies").values().sum();
            (controller, count)
        })
        .collect()
}

/// Watches the replicas' connected proxies while `during` runs, and
/// returns the longest time fewer than `expected` were connected.
fn longest_gap(release_ns: &str, expected: f64, during: impl FnOnce() + Send) -> Duration {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut longest, mut short_since) = (Duration::ZERO, None::<Instant>);
            let mut settled_at = None::<Instant>;
            // Bounded: the run below, then until all are back (60 s at most).
            let limit = Instant::now() + Duration::from_secs(600);
            while Instant::now() < limit {
                let total: f64 = connected(release_ns).values().sum();
                let now = Instant::now();
                if total < expected {
                    let since = *short_since.get_or_insert(now);
                    longest = longest.max(now - since);
                    settled_at = None;
                } else {
                    short_since = None;
                    settled_at.get_or_insert(now);
                }
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                if finished && settled_at.is_some_and(|at| now - at > Duration::from_secs(2)) {
                    return longest;
                }
                if finished && short_since.is_some_and(|since| now - since > Duration::from_secs(60)) {
                    return longest;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            longest
        });
        during();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().expect("the watcher ends")
    })
}

/// Pages requested one after another from productpage's pod (through its
/// Envoy to productpage, and on through the sidecars of reviews, ratings
/// and details) until stopped; each answer's code and reviews version.
struct Load {
    flag: std::path::PathBuf,
    thread: std::thread::JoinHandle<String>,
}

impl Load {
    fn start(ns: &str, pod: &str) -> Self {
        let flag = std::env::temp_dir().join(format!("mesh-e2e-ha-{}-{ns}-stop", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        // Bounded in time (300 s) and count (20,000) whatever happens.
        let script = format!(
            "end=$(($(date +%s) + 300)); i=0; \
             while [ ! -e {flag} ] && [ $(date +%s) -lt $end ] && [ $i -lt 20000 ]; do \
               page=$(curl -s -m 10 -w '\\n%{{http_code}}' http://productpage:9080/productpage); \
               echo \"$(echo \"$page\" | tail -n 1) $(echo \"$page\" | grep -o 'reviews-v[123]' | head -n 1)\"; \
               i=$((i + 1)); \
             done",
            flag = flag.display()
        );
        let (ns, pod) = (ns.to_string(), pod.to_string());
        let thread = std::thread::spawn(move || enter(&ns, &pod, &script).stdout);
        Self { flag, thread }
    }

    /// Stops the load; the count of each answer (`<code> <version>`).
    fn stop(self) -> BTreeMap<String, usize> {
        std::fs::write(&self.flag, "").expect("the stop flag");
        let out = self.thread.join().expect("the load ends");
        let _ = std::fs::remove_file(&self.flag);
        let mut answers = BTreeMap::new();
        for line in out.lines() {
            *answers.entry(line.trim().to_string()).or_default() += 1;
        }
        answers
    }
}

/// What an Envoy holds that the controller sent, without what changes on
/// every new stream: listeners, clusters and routes, their versions and
/// update times left out, and not its secrets (a new stream is issued a
/// new certificate).
fn envoy_config(ns: &str, pod: &str) -> Value {
    let out = enter(ns, pod, "curl -s -m 5 http://127.0.0.1:15000/config_dump");
    let mut dump: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{pod}'s config dump: {e}"));
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("last_updated");
                map.remove("version_info");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut dump);
    let kept: Vec<Value> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            let kind = c["@type"].as_str().unwrap_or_default();
            [".ListenersConfigDump", ".ClustersConfigDump", ".RoutesConfigDump"]
                .iter()
                .any(|k| kind.ends_with(k))
        })
        .cloned()
        .collect();
    assert_eq!(kept.len(), 3, "{pod}: listeners, clusters and routes in {}", out.stdout);
    Value::Array(kept)
}

/// What each Envoy logged of its xDS stream (closed, and why), so a slow
/// reconnection can be read in the test's output.
fn print_stream_log(ns: &str, pods: &[String]) {
    for pod in pods {
        let log = container_log(ns, pod, "istio-proxy");
        for line in log.lines().filter(|l| l.contains("config stream") || l.contains("xds-grpc")) {
            eprintln!("{pod}: {line}");
        }
    }
}

fn envoy_configs(ns: &str, pods: &[String]) -> BTreeMap<String, Value> {
    pods.iter().map(|pod| (pod.clone(), envoy_config(ns, pod))).collect()
}

/// Every answer 200 from reviews-v3 (the routing applied), and enough of
/// them to have spanned the fault.
fn assert_all_served(what: &str, answers: &BTreeMap<String, usize>) {
    let total: usize = answers.values().sum();
    eprintln!("{what}: {total} pages, answers {answers:?}");
    assert!(total >= 50, "{what}: too few pages to prove anything: {answers:?}");
    assert_eq!(
        answers.get("200 reviews-v3").copied(),
        Some(total),
        "{what}: every page 200 from v3: {answers:?}"
    );
}

#[test]
fn killing_a_replica_and_a_rolling_restart_fail_no_request_and_change_no_config() {
    let release = Release::install("mesh-e2e-ha", &[]);
    let replicas = controller_pods(&release.namespace, "{.items[*].metadata.name}");
    assert_eq!(replicas.split_whitespace().count(), 2, "the chart runs two replicas: {replicas}");
    let ns = injected_bookinfo("ha");
    for sample in ["destination-rule-all.yaml", "virtual-service-reviews-v3.yaml"] {
        let file = conformance().join("networking").join(sample);
        kubectl_ok(&["apply", "-n", &ns.name, "-f", file.to_str().expect("utf-8")], None);
    }
    let client = pod_named(&ns.name, "app=productpage");
    let pods: Vec<String> =
        kubectl_ok(&["get", "pods", "-n", &ns.name, "-o", "jsonpath={.items[*].metadata.name}"], None)
            .split_whitespace()
            .map(String::from)
            .collect();
    eventually("pages from reviews-v3 only", Duration::from_secs(30), || {
        let out = enter(
            &ns.name,
            &client,
            "for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -m 5 http://productpage:9080/productpage | grep -o 'reviews-v[123]' | head -n 1; done",
        );
        (out.stdout.lines().count() == 10 && out.stdout.lines().all(|l| l == "reviews-v3")).then_some(())
    });
    // Bookinfo's six proxies and the chart's two gateways, spread over both replicas.
    let expected = eventually("every proxy connected", Duration::from_secs(30), || {
        let total: f64 = connected(&release.namespace).values().sum();
        (total >= 8.0).then_some(total)
    });
    let before = envoy_configs(&ns.name, &pods);

    // 1. The replica with the most proxies is killed.
    let by_replica = connected(&release.namespace);
    eprintln!("connected proxies by replica: {by_replica:?}");
    let (victim, victims) = by_replica
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(c, n)| (c.clone(), *n))
        .expect("two replicas");
    assert!(victims > 0.0, "no proxy on either replica: {by_replica:?}");
    let victim_ip = victim.trim_start_matches("http://").trim_end_matches(":15014").to_string();
    let victim_pod = kubectl_ok(
        &[
            "get",
            "pods",
            "-n",
            &release.namespace,
            "--field-selector",
            &format!("status.podIP={victim_ip}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
        None,
    );
    let load = Load::start(&ns.name, &client);
    std::thread::sleep(Duration::from_secs(3));
    let gap = longest_gap(&release.namespace, expected, || {
        kill_controller(&release.namespace, victim_pod.trim());
        std::thread::sleep(Duration::from_secs(8));
    });
    std::thread::sleep(Duration::from_secs(2));
    let answers = load.stop();
    eprintln!(
        "killed {} ({victims} proxies): all {expected} connected again after at most {gap:?}",
        victim_pod.trim()
    );
    assert_all_served("a replica killed", &answers);
    assert!(gap <= Duration::from_secs(5), "proxies were away {gap:?} after the kill (goal 5 s)");
    let after = envoy_configs(&ns.name, &pods);
    for pod in &pods {
        assert!(before[pod] == after[pod], "{pod}'s Envoy holds other configuration after the kill");
    }
    // The killed container comes back (the node's back-off), and serves.
    kubectl_ok(
        &[
            "wait",
            "-n",
            &release.namespace,
            "--for",
            "condition=Ready",
            "pods",
            "-l",
            "app.kubernetes.io/name=mesh",
            "--timeout=120s",
        ],
        None,
    );

    // 2. A rolling restart: a value changed by helm upgrade replaces both.
    let chart = repo().join("charts/mesh");
    let load = Load::start(&ns.name, &client);
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let gap = longest_gap(&release.namespace, expected, || {
        let out = helm(&[
            "upgrade",
            "mesh",
            chart.to_str().expect("utf-8"),
            "-n",
            &release.namespace,
            "--reuse-values",
            "--set-string",
            &format!("podAnnotations.restartedAt={}", std::process::id()),
            "--wait",
            "--timeout",
            "180s",
        ]);
        assert!(out.ok, "helm upgrade: {}", out.stderr);
        kubectl_ok(
            &["rollout", "status", "deployment/mesh", "-n", &release.namespace, "--timeout=180s"],
            None,
        );
        // The rollout is done once the old replicas are terminating; each
        // still holds its proxies for its shutdown delay. Watch until both
        // are gone.
        eventually("the old replicas gone", Duration::from_secs(60), || {
            let now = controller_pods(&release.namespace, "{.items[*].metadata.name}");
            (!replicas.split_whitespace().any(|old| now.split_whitespace().any(|new| new == old)))
                .then_some(())
        });
    });
    let rolled = started.elapsed();
    print_stream_log(&ns.name, &pods);
    std::thread::sleep(Duration::from_secs(2));
    let answers = load.stop();
    let now = controller_pods(&release.namespace, "{.items[*].metadata.name}");
    eprintln!("rolling restart in {rolled:?} ({replicas} → {now}): proxies away at most {gap:?}");
    assert!(
        replicas.split_whitespace().all(|old| !now.split_whitespace().any(|new| new == old)),
        "both replicas replaced: {replicas} → {now}"
    );
    let on_new: f64 = connected(&release.namespace).values().sum();
    assert_eq!(on_new, expected, "every proxy on the new replicas");
    assert_all_served("a rolling restart", &answers);
    assert!(gap <= Duration::from_secs(5), "proxies were away {gap:?} during the rolling restart (goal 5 s)");
    let after = envoy_configs(&ns.name, &pods);
    for pod in &pods {
        assert!(before[pod] == after[pod], "{pod}'s Envoy holds other configuration after the restart");
    }
}

/// SIGKILL to the controller process of a pod, found by the pod's network
/// namespace (every replica runs the same command line).
fn kill_controller(namespace: &str, pod: &str) {
    let pids = processes_in_pod(namespace, pod, "mesh");
    assert_eq!(pids.len(), 1, "one controller process in {namespace}/{pod}: {pids:?}");
    assert!(run("kill", &["-KILL", &pids[0]], None).ok, "kill {}", pids[0]);
}

/// The pids of the processes named `comm` in the pod (found by its network
/// namespace).
fn processes_in_pod(namespace: &str, pod: &str, comm: &str) -> Vec<String> {
    let suffix = format!("-{namespace}.{pod}");
    let list = run("ip", &["netns", "list"], None).stdout;
    let netns = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|name| name.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no network namespace for {namespace}/{pod} in {list}"))
        .to_string();
    let pids = run("ip", &["netns", "pids", &netns], None).stdout;
    pids.split_whitespace()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() == comm)
        .map(str::to_string)
        .collect()
}

/// The pages' reviews versions, ten in a row from productpage's pod.
fn versions(ns: &str, client: &str) -> Vec<String> {
    let out = enter(
        ns,
        client,
        "for i in 1 2 3 4 5 6 7 8 9 10; do \
           curl -s -m 5 http://productpage:9080/productpage | grep -o 'reviews-v[123]' | head -n 1; \
         done",
    );
    out.stdout.lines().map(str::to_string).collect()
}

fn only(version: &str) -> impl Fn(&[String]) -> bool + '_ {
    move |seen: &[String]| seen.len() == 10 && seen.iter().all(|v| v == version)
}

fn apply_sample(ns: &str, sample: &str) {
    let file = conformance().join("networking").join(sample);
    kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")], None);
}

/// The test cluster's API server, killed (SIGKILL: it closes its port at
/// once on SIGTERM, but its process lingers for its own drain, and the
/// cluster script would not start another meanwhile) until [`Outage::end`],
/// or until dropped, so a failing test does not leave the cluster without it.
struct Outage {
    ended: bool,
}

impl Outage {
    fn start() -> Self {
        let dir = std::env::var("MESH_CLUSTER_DIR").expect("MESH_CLUSTER_DIR (set by make test-e2e)");
        let pid = std::fs::read_to_string(std::path::Path::new(&dir).join("pids/kube-apiserver"))
            .expect("the API server's pid file")
            .trim()
            .to_string();
        assert!(run("kill", &["-KILL", &pid], None).ok, "stopping the API server ({pid})");
        // Gone, or exited and not reaped yet (a zombie: state Z).
        eventually("the API server stopped", Duration::from_secs(30), || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            (stat.is_empty() || state == Some('Z')).then_some(())
        });
        Self { ended: false }
    }

    /// Starts it again (the cluster script starts what is not running).
    fn end(mut self) {
        self.ended = true;
        let up = run(repo().join("e2e/scripts/cluster.sh").to_str().expect("utf-8"), &["up"], None);
        assert!(up.ok, "starting the API server again: {}", up.stderr);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            let _ = run(repo().join("e2e/scripts/cluster.sh").to_str().expect("utf-8"), &["up"], None);
        }
    }
}

/// Restarts of the release's controller containers so far.
fn controller_restarts(release_ns: &str) -> u64 {
    controller_pods(release_ns, "{.items[*].status.containerStatuses[0].restartCount}")
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0))
        .sum()
}

#[test]
fn an_api_server_outage_of_a_minute_fails_no_request_and_loses_no_change() {
    let release = Release::install("mesh-e2e-outage", &[]);
    let ns = injected_bookinfo("outage");
    let client = pod_named(&ns.name, "app=productpage");
    apply_sample(&ns.name, "destination-rule-all.yaml");
    apply_sample(&ns.name, "virtual-service-all-v1.yaml");
    eventually("pages from reviews-v1 only", Duration::from_secs(30), || {
        only("reviews-v1")(&versions(&ns.name, &client)).then_some(())
    });
    let restarts = controller_restarts(&release.namespace);
    let load = Load::start(&ns.name, &client);

    // A VirtualService applied just before the stop, in force at the stop.
    apply_sample(&ns.name, "virtual-service-reviews-v3.yaml");
    eventually("pages from reviews-v3 only", Duration::from_secs(30), || {
        only("reviews-v3")(&versions(&ns.name, &client)).then_some(())
    });
    let outage = Outage::start();
    let stopped = Instant::now();
    assert!(
        !run(
            "kubectl",
            &["--kubeconfig", &crate::support::kubeconfig(), "get", "ns", "--request-timeout=2s"],
            None
        )
        .ok
    );

    // A minute without it: the pages keep coming from v3.
    let mut during = Vec::new();
    while stopped.elapsed() < Duration::from_secs(60) {
        during.extend(versions(&ns.name, &client));
        std::thread::sleep(Duration::from_secs(5));
    }
    outage.end();
    let outage = stopped.elapsed();
    let restarted = Instant::now();

    // A change right after the restart arrives; a pod created after is
    // injected.
    apply_sample(&ns.name, "virtual-service-reviews-jason-v2-v3.yaml");
    let arrived = eventually(
        "jason's pages from reviews-v2 after the restart",
        Duration::from_secs(60),
        || {
            // jason-v2-v3 sends everyone but jason to v3, as before: jason's
            // pages (his sign-in cookie) tell the change.
            let out = enter(
                &ns.name,
                &client,
                "for i in 1 2 3 4 5 6 7 8 9 10; do \
               curl -s -m 5 -b user=jason http://productpage:9080/productpage | grep -o 'reviews-v[123]' | head -n 1; \
             done",
            );
            let seen: Vec<String> = out.stdout.lines().map(str::to_string).collect();
            only("reviews-v2")(&seen).then(|| restarted.elapsed())
        },
    );
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: after-outage, labels: {app: after-outage}}
spec:
  containers: [{name: sleep, image: busybox, command: [sh, -c, "sleep 3600"]}]
"#;
    kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(pod));
    // Envoy is a native sidecar: an init container that keeps running.
    let containers = crate::support::jsonpath(
        &ns.name,
        "pod/after-outage",
        "{.spec.initContainers[*].name} {.spec.containers[*].name}",
    );
    assert!(containers.split_whitespace().any(|c| c == "istio-proxy"), "not injected: {containers}");
    // Ready once its Envoy is configured (the sidecar's readiness). The
    // node lifecycle controller marked every pod not Ready while the node
    // could not report; the node must say they are again, or the Services
    // (the controller's among them) keep no endpoint and a new Envoy cannot
    // connect. Scheduling waits for the node to be Ready again, too, and
    // a pod found unschedulable meanwhile waits for the scheduler's retry:
    // minutes on a loaded machine, none of it the mesh's.
    let configured = eventually("the pod created after the outage Ready", Duration::from_secs(300), || {
        let ready = crate::support::jsonpath(
            &ns.name,
            "pod/after-outage",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        );
        (ready == "True").then(|| restarted.elapsed())
    });
    let conditions = crate::support::jsonpath(
        &ns.name,
        "pod/after-outage",
        "{range .status.conditions[*]}{.type}={.lastTransitionTime} {end}",
    );
    eprintln!("the new pod's conditions, by when they last changed: {conditions}");
    let answers = load.stop();

    eprintln!(
        "API server down {outage:?}; {} pages checked during it; jason's change arrived {arrived:?} after the restart; \
         the new pod Ready {configured:?} after it",
        during.len()
    );
    assert!(
        !during.is_empty() && during.iter().all(|v| v == "reviews-v3"),
        "pages during the outage: {during:?}"
    );
    let total: usize = answers.values().sum();
    let ok: usize = answers.iter().filter(|(k, _)| k.starts_with("200 ")).map(|(_, n)| n).sum();
    eprintln!("{total} pages under load: {answers:?}");
    assert!(total >= 100, "too few pages to prove anything: {answers:?}");
    assert_eq!(ok, total, "every page 200 through the outage: {answers:?}");
    assert_eq!(controller_restarts(&release.namespace), restarts, "a controller restarted during the outage");
}

/// A pod's Envoy stopped (SIGSTOP: it reads nothing, answers nothing)
/// until [`Frozen::thaw`], or until dropped.
struct Frozen {
    pid: String,
    thawed: bool,
}

impl Frozen {
    fn new(namespace: &str, pod: &str) -> Self {
        let pids = processes_in_pod(namespace, pod, "envoy");
        assert_eq!(pids.len(), 1, "one Envoy in {namespace}/{pod}: {pids:?}");
        assert!(run("kill", &["-STOP", &pids[0]], None).ok, "stopping Envoy {}", pids[0]);
        Self { pid: pids[0].clone(), thawed: false }
    }

    fn thaw(mut self) {
        self.thawed = true;
        assert!(run("kill", &["-CONT", &self.pid], None).ok, "continuing Envoy {}", self.pid);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = run("kill", &["-CONT", &self.pid], None);
        }
    }
}

#[test]
fn a_frozen_sidecar_is_let_go_and_gets_what_changed_when_it_thaws_while_the_others_serve_on() {
    let release = Release::install("mesh-e2e-frozen", &[]);
    let ns = injected_bookinfo("frozen");
    let client = pod_named(&ns.name, "app=productpage");
    apply_sample(&ns.name, "destination-rule-all.yaml");
    apply_sample(&ns.name, "virtual-service-all-v1.yaml");
    eventually("pages from reviews-v1 only", Duration::from_secs(30), || {
        only("reviews-v1")(&versions(&ns.name, &client)).then_some(())
    });
    let total = || connected(&release.namespace).values().sum::<f64>();
    let before = total();
    // reviews-v2 takes no traffic while everything goes to v1, then v3.
    let frozen_pod = pod_named(&ns.name, "app=reviews,version=v2");
    let load = Load::start(&ns.name, &client);
    let frozen = Frozen::new(&ns.name, &frozen_pod);
    let stopped = Instant::now();

    // A change while it is frozen: every other sidecar takes it.
    apply_sample(&ns.name, "virtual-service-reviews-v3.yaml");
    eventually("pages from reviews-v3 only", Duration::from_secs(30), || {
        only("reviews-v3")(&versions(&ns.name, &client)).then_some(())
    });
    // HTTP/2 pings (every 30 s, 10 s to answer) find it; the controller
    // ends its stream.
    let let_go = eventually("the frozen proxy's stream ended", Duration::from_secs(90), || {
        (total() < before).then(|| stopped.elapsed())
    });
    frozen.thaw();
    let thawed = Instant::now();
    let back = eventually("the thawed proxy connected again", Duration::from_secs(60), || {
        (total() >= before).then(|| thawed.elapsed())
    });
    // It holds the change made while it was frozen.
    let routes = eventually("the thawed Envoy routes reviews to v3", Duration::from_secs(30), || {
        let out = enter(
            &ns.name,
            &frozen_pod,
            "curl -s -m 5 'http://127.0.0.1:15000/config_dump?resource=dynamic_route_configs'",
        );
        let reviews = format!("reviews.{}.svc.cluster.local", ns.name);
        (out.stdout.contains(&format!("outbound|9080|v3|{reviews}"))
            && !out.stdout.contains(&format!("outbound|9080|v1|{reviews}")))
        .then_some(out.stdout.len())
    });
    let answers = load.stop();
    eprintln!(
        "frozen Envoy let go {let_go:?} after it stopped, connected again {back:?} after it continued \
         ({routes} bytes of routes); pages under load: {answers:?}"
    );
    let pages: usize = answers.values().sum();
    let ok: usize = answers.iter().filter(|(k, _)| k.starts_with("200 ")).map(|(_, n)| n).sum();
    assert!(pages >= 50, "too few pages to prove anything: {answers:?}");
    assert_eq!(ok, pages, "every page 200 while a sidecar was frozen: {answers:?}");
}
