//! DestinationRule traffic policies on real traffic, with the real
//! programs of Istio's tasks: go-httpbin (Istio's httpbin sample) behind
//! the mesh, fortio as the client, stock Envoy in every pod.
//!
//! - Circuit breaking, as Istio's task does it: `maxConnections: 1`,
//!   `http1MaxPendingRequests: 1`, `maxRequestsPerConnection: 1`; three
//!   concurrent fortio connections overflow with 503, and the client
//!   Envoy's `upstream_rq_pending_overflow` for the httpbin cluster rises.
//!   Without the rule the same load gets no 503.
//! - Outlier detection: a Service with two fortio servers, one answering
//!   every request 500 (fortio's `-echo-server-default-params`; not 503,
//!   which Istio's default retry policy would retry on the other endpoint
//!   and hide); half the answers fail until the rule ejects that endpoint,
//!   then none does, and the client Envoy counts the ejection.
//! - Consistent hash by `httpHeaderName`: three httpbin replicas telling
//!   their pod name (`/hostname`); each user's requests stick to one of
//!   them, where without the rule one user's requests spread.
//!
//! The Services and Deployments follow Istio's `samples/httpbin`
//! (`httpbin.yaml`, `sample-client/fortio-deploy.yaml`), which are not in
//! the conformance set: fortio gets `args: [server]`, the image's default
//! command, since the node runs programs, not images.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    Applied, Release, TempNamespace, controller_metric, enter, eventually, httpbin, kubectl_ok, pod_named,
    rollout,
};

/// The chart, and a namespace labelled for injection; both removed on drop.
struct Mesh {
    release: Release,
    ns: TempNamespace,
}

impl Mesh {
    fn start(release_ns: &str, prefix: &str) -> Self {
        let release = Release::install(release_ns, &[]);
        let ns = TempNamespace::new(prefix);
        kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
        Self { release, ns }
    }

    /// Every configuration the test caused was accepted by every Envoy.
    fn assert_no_nack(&self) {
        let nacks = controller_metric(&self.release.namespace, "mesh_xds_nacks_total");
        assert_eq!(nacks.values().sum::<f64>(), 0.0, "Envoy refused configuration: {nacks:?}");
        let acks: f64 = controller_metric(&self.release.namespace, "mesh_xds_acks_total").values().sum();
        assert!(acks > 0.0, "no ACK counted: the metric's name is wrong");
    }

    /// Applies workloads and waits until every pod, Envoy included, is Ready.
    fn run(&self, yaml: &str) {
        kubectl_ok(&["apply", "-n", &self.ns.name, "-f", "-"], Some(yaml));
        rollout(&self.ns.name);
        kubectl_ok(
            &["wait", "-n", &self.ns.name, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
            None,
        );
    }

    /// The client pod's Envoy's counter `cluster.<cluster>.<stat>` (0 when absent).
    fn client_stat(&self, client: &str, cluster: &str, stat: &str) -> u64 {
        let out = enter(&self.ns.name, client, "curl -sf -m 5 http://127.0.0.1:15000/stats");
        assert!(out.ok, "reading the client's Envoy stats: {}", out.stderr);
        let name = format!("cluster.{cluster}.{stat}: ");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A fortio server Deployment (Istio's `fortio-deploy.yaml` shape) with
/// the labels (besides `deployment: <name>`) and extra server flags given.
fn fortio(name: &str, labels: &str, flags: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{{labels}, deployment: {name}}}
  template:
    metadata:
      labels: {{{labels}, deployment: {name}}}
    spec:
      containers:
      - name: fortio
        image: fortio/fortio:latest_release
        args: [server{flags}]
        ports:
        - {{containerPort: 8080, name: http-fortio}}
        - {{containerPort: 8079, name: grpc-ping}}
"#
    )
}

const FORTIO_CLIENT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: fortio
  labels: {app: fortio, service: fortio}
spec:
  ports:
  - {port: 8080, name: http}
  selector: {app: fortio}
"#;

/// A shell command asking `url` `n` times over one connection, with no
/// query string (fortio's default parameters apply only without one).
fn same_url(n: usize, url: &str, curl_flags: &str) -> String {
    format!("yes '{url}' | head -n {n} | xargs curl -s -m 30 {curl_flags}")
}

/// One go-httpbin pod naming itself at `/hostname`, labelled `app: <app>`
/// and with Istio's `istio-locality` label.
fn httpbin_at(name: &str, app: &str, locality: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {app}, deployment: {name}}}
  template:
    metadata:
      labels: {{app: {app}, deployment: {name}, istio-locality: {locality}}}
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        name: httpbin
        args: [-use-real-hostname]
        ports:
        - containerPort: 8080
"#
    )
}

/// A Service `name` on port 8000 for the pods labelled `app: <name>`.
fn service_on_8000(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  ports:
  - {{name: http, port: 8000, targetPort: 8080}}
  selector: {{app: {name}}}
"#
    )
}

/// Who answered `n` requests to `url` from `client`: the first of
/// `deployments` whose pod name the answer holds, else the status.
fn answers_from(
    ns: &str,
    client: &str,
    url: &str,
    n: usize,
    deployments: &[&str],
) -> BTreeMap<String, usize> {
    // httpbin's JSON spans lines: one answer per `;`.
    let script = same_url(n, url, "-w ' %{http_code};'") + " | tr -d '\\n'";
    let mut counts = BTreeMap::new();
    for answer in enter(ns, client, &script).stdout.split(';').filter(|a| !a.trim().is_empty()) {
        let who = deployments
            .iter()
            .find(|d| answer.contains(&format!("{d}-")))
            .map(|d| d.to_string())
            .unwrap_or_else(|| answer.split_whitespace().last().unwrap_or_default().to_string());
        *counts.entry(who).or_default() += 1;
    }
    counts
}

/// The `Code <status> : <count>` lines of a fortio load report.
fn fortio_codes(report: &str) -> BTreeMap<u16, u64> {
    report
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Code "))
        .filter_map(|l| {
            let (code, rest) = l.split_once(" : ")?;
            let count = rest.split_whitespace().next()?;
            Some((code.trim().parse().ok()?, count.parse().ok()?))
        })
        .collect()
}

#[test]
fn circuit_breaking_overflows_concurrent_requests_with_503() {
    let mesh = Mesh::start("mesh-e2e-dr-pool", "dr-pool");
    let ns = &mesh.ns.name;
    mesh.run(&format!(
        "{}---{FORTIO_CLIENT}---{}",
        httpbin(1, ""),
        fortio("fortio-deploy", "app: fortio", "")
    ));
    let client = pod_named(ns, "app=fortio");
    let cluster = format!("outbound|8000||httpbin.{ns}.svc.cluster.local");
    let load = || {
        let out = enter(
            ns,
            &client,
            "fortio load -c 3 -qps 0 -n 30 -loglevel Warning http://httpbin:8000/get 2>&1",
        );
        let codes = fortio_codes(&out.stdout);
        assert_eq!(codes.values().sum::<u64>(), 30, "fortio ran 30 requests: {}{}", out.stdout, out.stderr);
        codes
    };

    // Without limits, three connections at once all get through.
    eventually("httpbin answering through the mesh", Duration::from_secs(30), || {
        (load().get(&200) == Some(&30)).then_some(())
    });
    let before = mesh.client_stat(&client, &cluster, "upstream_rq_pending_overflow");

    // Istio's task's rule, as written there.
    let _rule = Applied::new(
        ns,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    let codes = eventually("requests overflowing the pool", Duration::from_secs(30), || {
        let codes = load();
        codes.contains_key(&503).then_some(codes)
    });
    eprintln!("fortio -c 3 -n 30 under the pool: {codes:?}");
    assert!(codes.get(&200).is_some_and(|n| *n > 0), "some requests still get through: {codes:?}");
    assert_eq!(codes.keys().copied().collect::<Vec<_>>(), [200, 503], "only 200 and 503: {codes:?}");
    let after = mesh.client_stat(&client, &cluster, "upstream_rq_pending_overflow");
    assert!(after > before, "upstream_rq_pending_overflow rose from {before} to {after}");
    // The overflow is the client's own: httpbin's endpoint stays in the pool.
    let ejected = mesh.client_stat(&client, &cluster, "outlier_detection.ejections_enforced_total");
    assert_eq!(ejected, 0, "an overflow is no endpoint failure");
    mesh.assert_no_nack();
}

#[test]
fn an_endpoint_that_only_fails_is_ejected() {
    let mesh = Mesh::start("mesh-e2e-dr-outlier", "dr-outlier");
    let ns = &mesh.ns.name;
    let service = r#"
apiVersion: v1
kind: Service
metadata:
  name: flaky
spec:
  ports:
  - {port: 8080, name: http}
  selector: {app: flaky}
"#;
    mesh.run(&format!(
        "{service}---{}---{}---{}",
        fortio("flaky-good", "app: flaky", ""),
        fortio("flaky-bad", "app: flaky", ", -echo-server-default-params, status=500"),
        fortio("client", "app: client", ""),
    ));
    let client = pod_named(ns, "app=client");
    let cluster = format!("outbound|8080||flaky.{ns}.svc.cluster.local");
    let statuses = |n: usize| -> BTreeMap<String, usize> {
        let script = same_url(n, "http://flaky:8080/echo", "-o /dev/null -w '%{http_code}\\n'");
        let mut counts = BTreeMap::new();
        for code in enter(ns, &client, &script).stdout.lines() {
            *counts.entry(code.to_string()).or_default() += 1;
        }
        counts
    };

    // Both endpoints are in the pool: about half the answers are 500.
    let counts = eventually("both endpoints answering", Duration::from_secs(30), || {
        let counts = statuses(40);
        (counts.get("200").is_some_and(|n| *n >= 5) && counts.get("500").is_some_and(|n| *n >= 5))
            .then_some(counts)
    });
    eprintln!("without outlier detection: {counts:?}");

    let _rule = Applied::new(
        ns,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: flaky
spec:
  host: flaky
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    eventually("the failing endpoint ejected", Duration::from_secs(30), || {
        (mesh.client_stat(&client, &cluster, "outlier_detection.ejections_enforced_consecutive_5xx") >= 1)
            .then_some(())
            .or_else(|| {
                statuses(5);
                None
            })
    });
    let counts = statuses(200);
    eprintln!("after the ejection: {counts:?}");
    assert_eq!(counts.get("200"), Some(&200), "the ejected endpoint's share is zero: {counts:?}");
    assert_eq!(mesh.client_stat(&client, &cluster, "outlier_detection.ejections_active"), 1);
    mesh.assert_no_nack();
}

#[test]
fn consistent_hash_by_header_sticks_to_one_endpoint() {
    let mesh = Mesh::start("mesh-e2e-dr-hash", "dr-hash");
    let ns = &mesh.ns.name;
    mesh.run(&format!(
        "{}---{FORTIO_CLIENT}---{}",
        httpbin(3, "-use-real-hostname"),
        fortio("fortio-deploy", "app: fortio", "")
    ));
    let client = pod_named(ns, "app=fortio");
    // Which httpbin pod answered each of `n` requests carrying `user`.
    let answers = |user: &str, n: usize| -> BTreeMap<String, usize> {
        let script = format!(
            "curl -s -m 30 -H 'x-user: {user}' 'http://httpbin:8000/hostname?r=[1-{n}]' | grep -o 'httpbin-[a-z0-9-]*'"
        );
        let mut counts = BTreeMap::new();
        for pod in enter(ns, &client, &script).stdout.lines() {
            *counts.entry(pod.to_string()).or_default() += 1;
        }
        counts
    };

    // Without the rule one user's requests go to several pods.
    let spread = eventually("one user's requests spread over the pods", Duration::from_secs(30), || {
        let counts = answers("alice", 30);
        (counts.values().sum::<usize>() == 30 && counts.len() >= 2).then_some(counts)
    });
    eprintln!("alice without the rule: {spread:?}");

    let _rule = Applied::new(
        ns,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
"#,
    );
    eventually("alice sticking to one pod", Duration::from_secs(30), || {
        let counts = answers("alice", 20);
        (counts.len() == 1 && counts.values().sum::<usize>() == 20).then_some(())
    });
    let mut pods = BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let counts = answers(user, 25);
        assert_eq!(counts.values().sum::<usize>(), 25, "{user}: every request answered: {counts:?}");
        assert_eq!(counts.len(), 1, "{user}'s requests stick to one pod: {counts:?}");
        let pod = counts.into_keys().next().unwrap_or_default();
        *pods.entry(pod).or_insert(0) += 1;
    }
    eprintln!("users per pod: {pods:?}");
    assert!(pods.len() >= 2, "different users land on different pods: {pods:?}");
    mesh.assert_no_nack();
}

#[test]
fn locality_failover_prefers_the_clients_zone_then_its_region() {
    let mesh = Mesh::start("mesh-e2e-dr-locality", "dr-locality");
    let ns = &mesh.ns.name;
    // Three localities: the client's zone (a server that only answers
    // 500, which no default retry hides), another zone of its region, and
    // another region.
    let service = service_on_8000("local");
    let failing = fortio(
        "near",
        "app: local, istio-locality: region1.zone1",
        ", -echo-server-default-params, status=500",
    );
    let client = fortio("client", "app: client, istio-locality: region1.zone1", "");
    mesh.run(&format!(
        "{service}---{failing}---{}---{}---{client}",
        httpbin_at("zone2", "local", "region1.zone2"),
        httpbin_at("region2", "local", "region2.zone1"),
    ));
    let client = pod_named(ns, "app=client");
    let answers =
        |n: usize| answers_from(ns, &client, "http://local:8000/hostname", n, &["zone2", "region2"]);

    // Without the rule all three answer.
    let counts = eventually("all three localities answering", Duration::from_secs(30), || {
        let counts = answers(60);
        (counts.len() == 3).then_some(counts)
    });
    eprintln!("without the rule: {counts:?}");

    // Istio's locality failover: on by default, effective with outlier detection.
    let _rule = Applied::new(
        ns,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: local
spec:
  host: local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    let cluster = format!("outbound|8000||local.{ns}.svc.cluster.local");
    eventually("the client's zone ejected", Duration::from_secs(30), || {
        if mesh.client_stat(&client, &cluster, "outlier_detection.ejections_enforced_consecutive_5xx") >= 1 {
            return Some(());
        }
        answers(5);
        None
    });
    let counts = answers(200);
    eprintln!("after the client's zone failed: {counts:?}");
    assert_eq!(
        counts.get("zone2"),
        Some(&200),
        "every request fails over to the client's region's other zone, none to the other region: {counts:?}"
    );
    mesh.assert_no_nack();
}

#[test]
fn locality_weights_split_traffic_as_distribute_says() {
    let mesh = Mesh::start("mesh-e2e-dr-weights", "dr-weights");
    let ns = &mesh.ns.name;
    let client = fortio("client", "app: client, istio-locality: region1.zone1", "");
    mesh.run(&format!(
        "{}---{}---{}---{client}",
        service_on_8000("weighted"),
        httpbin_at("zone1", "weighted", "region1.zone1"),
        httpbin_at("zone2", "weighted", "region1.zone2"),
    ));
    let client = pod_named(ns, "app=client");
    let answers =
        |n: usize| answers_from(ns, &client, "http://weighted:8000/hostname", n, &["zone1", "zone2"]);
    let share = |counts: &BTreeMap<String, usize>, who: &str| {
        *counts.get(who).unwrap_or(&0) as f64 * 100.0 / counts.values().sum::<usize>().max(1) as f64
    };
    let counts = eventually("both zones answering", Duration::from_secs(30), || {
        let counts = answers(40);
        (counts.len() == 2 && counts.contains_key("zone1") && counts.contains_key("zone2")).then_some(counts)
    });
    eprintln!("without the rule: {counts:?}");

    let _rule = Applied::new(
        ns,
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: weighted
spec:
  host: weighted
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute:
        - from: region1/zone1/*
          to:
            "region1/zone1/*": 80
            "region1/zone2/*": 20
"#,
    );
    // Without weights the two split about evenly; wait for 80/20.
    eventually("the weights in effect", Duration::from_secs(30), || {
        let counts = answers(100);
        (share(&counts, "zone1") >= 70.0).then_some(())
    });
    let counts = answers(1000);
    eprintln!("with distribute 80/20: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 1000, "every request answered: {counts:?}");
    assert_eq!(counts.len(), 2, "only the two zones answer: {counts:?}");
    for (zone, expected) in [("zone1", 80.0), ("zone2", 20.0)] {
        let got = share(&counts, zone);
        assert!((got - expected).abs() <= 5.0, "{zone}: {got:.1}%, expected {expected}% ± 5: {counts:?}");
    }
    mesh.assert_no_nack();
}
