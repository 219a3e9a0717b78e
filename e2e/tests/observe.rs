//! Observing the mesh: Istio's standard metrics, made by the proxies
//! themselves (src/translate/telemetry.rs), scraped by a real Prometheus
//! run as samples/addons/prometheus.yaml runs it, and read with the
//! queries Istio's users write.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Prometheus from samples/addons/prometheus.yaml, in the release's
/// namespace, deleted when dropped.
struct Prometheus {
    _applied: Applied,
    address: String,
}

impl Prometheus {
    fn start(namespace: &str) -> Self {
        let sample =
            std::fs::read_to_string(repo().join("samples/addons/prometheus.yaml")).expect("the sample");
        // The sample's cluster-wide names carry the namespace, so two runs never share them.
        let yaml = sample
            .replace("namespace: mesh-system", &format!("namespace: {namespace}"))
            .replace("names: [mesh-system]", &format!("names: [{namespace}]"))
            .replace("name: mesh-prometheus", &format!("name: {namespace}-prometheus"));
        let applied = Applied::new(namespace, &yaml);
        rollout(namespace);
        let pod = pod_named(namespace, "app=prometheus");
        kubectl_ok(
            &["wait", "-n", namespace, "--for", "condition=Ready", &format!("pod/{pod}"), "--timeout=120s"],
            None,
        );
        let ip = jsonpath(namespace, &format!("pod/{pod}"), "{.status.podIP}");
        Self { _applied: applied, address: format!("{ip}:9090") }
    }

    /// The instant vector `query` evaluates to: each series' labels and value.
    fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!("http://{}/api/v1/query", self.address);
        let mut response = ureq::get(&url)
            .query("query", query)
            .call()
            .unwrap_or_else(|e| panic!("Prometheus at {url}: {e}"));
        let body = response.body_mut().read_to_string().expect("a body");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["status"], "success", "{query}: {body}");
        answer["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = series["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a value");
                (labels, value)
            })
            .collect()
    }

    /// `query`'s values by the value of `label`.
    fn by(&self, query: &str, label: &str) -> BTreeMap<String, f64> {
        self.query(query)
            .into_iter()
            .map(|(labels, v)| (labels.get(label).cloned().unwrap_or_default(), v))
            .collect()
    }
}

/// Product pages asked for from productpage's pod (through its Envoy), and
/// which reviews version each showed; every page must show one.
fn pages(namespace: &str, client: &str, n: usize) -> BTreeMap<String, f64> {
    let counts = shown(namespace, client, n);
    assert_eq!(counts.values().sum::<f64>(), n as f64, "{n} pages: {counts:?}");
    counts
}

/// Which reviews version each of `n` product pages showed.
fn shown(namespace: &str, client: &str, n: usize) -> BTreeMap<String, f64> {
    let script = format!(
        "curl -s -m 60 'http://productpage:9080/productpage?r=[1-{n}]' | grep -o 'reviews-podname\">reviews-v[123]' | grep -o 'v[123]$'"
    );
    let out = enter(namespace, client, &script);
    let mut counts = BTreeMap::new();
    for version in out.stdout.lines() {
        *counts.entry(version.to_string()).or_default() += 1.0;
    }
    counts
}

fn minus(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).unwrap_or(&0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The last line of productpage's Envoy log that `matches`, read with
/// `kubectl logs` as a user would.
fn access_line(namespace: &str, matches: impl Fn(&str) -> bool) -> Option<String> {
    let log = kubectl_ok(
        &["logs", "-n", namespace, "deploy/productpage-v1", "-c", "istio-proxy", "--tail", "200"],
        None,
    );
    log.lines().rev().find(|l| matches(l)).map(str::to_string)
}

#[test]
fn istios_request_metrics_reach_prometheus_with_istios_labels() {
    let release = Release::install("mesh-e2e-observe", &["--set", "meshConfig.accessLogFile=/dev/stdout"]);
    let bookinfo = injected_bookinfo("observe");
    let ns = bookinfo.name.as_str();
    let prometheus = Prometheus::start(&release.namespace);
    let client = pod_named(ns, "app=productpage");
    for sample in ["destination-rule-all.yaml", "virtual-service-reviews-50-v3.yaml"] {
        let file = conformance().join("networking").join(sample);
        kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().expect("utf-8")], None);
    }
    eventually("reviews v1 and v3 only", Duration::from_secs(60), || {
        let counts = shown(ns, &client, 10);
        (counts.values().sum::<f64>() == 10.0 && counts.keys().all(|v| v == "v1" || v == "v3")).then_some(())
    });

    // What productpage's proxy counted as the caller, by the version that
    // answered: exactly the pages each version rendered.
    let reviews_calls = format!(
        "sum by (destination_version) (istio_requests_total{{reporter=\"source\", source_workload=\"productpage-v1\", \
         destination_service_name=\"reviews\", destination_service_namespace=\"{ns}\", response_code=\"200\"}})"
    );
    // Prometheus scrapes every 5 s: a total is settled once it holds at
    // least `least` and stays the same over two scrape intervals.
    let settled = |least: f64| {
        eventually("Prometheus to scrape productpage's proxy", Duration::from_secs(90), || {
            let first = prometheus.by(&reviews_calls, "destination_version");
            std::thread::sleep(Duration::from_secs(11));
            let second = prometheus.by(&reviews_calls, "destination_version");
            (first == second && second.values().sum::<f64>() >= least).then_some(second)
        })
    };
    // The pages of the wait above are counted first: at least its last ten.
    let before = settled(10.0);
    let rendered = pages(ns, &client, 60);
    let after = settled(before.values().sum::<f64>() + 60.0);
    let counted = minus(&after, &before);
    eprintln!("pages by reviews version: {rendered:?}; istio_requests_total moved by {counted:?}");
    assert_eq!(
        counted, rendered,
        "the source reporter's count by destination_version is what the pages showed"
    );

    // The query of the issue, as Istio's users write it.
    let split = prometheus.query(&format!(
        "sum(rate(istio_requests_total{{destination_service=~\"reviews.*\", destination_service_namespace=\"{ns}\"}}[1m])) \
         by (destination_version, source_workload)"
    ));
    eprintln!("the split: {split:?}");
    // v2 answered before the routing sample applied: its series stays, at rate 0.
    let versions: Vec<&str> = split
        .iter()
        .filter(|(_, rate)| *rate > 0.0)
        .map(|(l, _)| l["destination_version"].as_str())
        .collect();
    assert_eq!(versions, ["v1", "v3"], "v1 and v3 only under reviews-50-v3: {split:?}");
    assert!(split.iter().all(|(l, _)| l["source_workload"] == "productpage-v1"), "{split:?}");

    // The callee's proxy names its caller from the verified peer's header.
    let destination = prometheus.query(&format!(
        "sum by (source_workload, source_principal, source_app, destination_workload, connection_security_policy) \
         (istio_requests_total{{reporter=\"destination\", destination_service_name=\"reviews\", \
         destination_workload_namespace=\"{ns}\", destination_version=\"v3\"}})"
    ));
    eprintln!("reviews-v3's own count: {destination:?}");
    let (labels, count) = destination.first().expect("reviews-v3 reported its requests");
    assert_eq!(destination.len(), 1, "{destination:?}");
    assert!(*count > 0.0);
    let principal = format!("spiffe://cluster.local/ns/{ns}/sa/bookinfo-productpage");
    let expected = [
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("source_principal", principal.as_str()),
        ("destination_workload", "reviews-v3"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (label, value) in expected {
        assert_eq!(labels.get(label).map(String::as_str), Some(value), "{label}: {labels:?}");
    }
    // The joined tags are split and gone; the cluster is named.
    let (labels, _) = prometheus
        .query(&format!("istio_requests_total{{destination_workload_namespace=\"{ns}\"}}"))
        .into_iter()
        .next()
        .expect("a series");
    for joined in ["source", "destination", "service"] {
        assert!(!labels.contains_key(joined), "{joined} left in {labels:?}");
    }
    assert_eq!(labels.get("source_cluster").map(String::as_str), Some("Kubernetes"), "{labels:?}");
    let durations = prometheus.query(&format!(
        "sum(istio_request_duration_milliseconds_count{{reporter=\"source\", destination_service_name=\"reviews\", \
         destination_service_namespace=\"{ns}\"}})"
    ));
    assert!(durations.first().is_some_and(|(_, v)| *v >= 60.0), "durations counted: {durations:?}");

    // A fault abort on ratings: 503s, flagged FI (fault injected) by the
    // caller's proxy, where the fault is injected.
    let abort = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {percentage: {value: 100}, httpStatus: 503}
    route:
    - destination: {host: ratings, subset: v1}
";
    let _abort = Applied::new(ns, abort);
    let aborted = format!(
        "sum(istio_requests_total{{reporter=\"source\", destination_service_name=\"ratings\", \
         destination_service_namespace=\"{ns}\", response_code=\"503\", response_flags=\"FI\"}}) or vector(0)"
    );
    let value = |q: &str| prometheus.query(q).first().map_or(0.0, |(_, v)| *v);
    let before = value(&aborted);
    eventually("ratings aborted for reviews-v3", Duration::from_secs(60), || {
        let out = enter(ns, &client, "curl -s -m 10 http://productpage:9080/productpage");
        out.stdout.contains("Ratings service is currently unavailable").then_some(())
    });
    pages(ns, &client, 20);
    let after = eventually("the 503s in Prometheus", Duration::from_secs(60), || {
        let now = value(&aborted);
        (now > before).then_some(now)
    });
    eprintln!("istio_requests_total{{response_code=\"503\"}} to ratings: {before} → {after}");

    // The access log, in Istio's default TEXT line: productpage's call to
    // reviews, as its Envoy routed it.
    let line =
        access_line(ns, |l| l.contains("\"GET /reviews/0 HTTP/1.1\" 200")).expect("a TEXT line for reviews");
    eprintln!("TEXT: {line}");
    assert!(line.starts_with('['), "{line}");
    assert!(
        line.contains(&format!("outbound|9080|v1|reviews.{ns}.svc.cluster.local"))
            || line.contains(&format!("outbound|9080|v3|reviews.{ns}.svc.cluster.local")),
        "{line}"
    );

    // JSON, with Istio's default keys, after a helm upgrade.
    let chart = repo().join("charts/mesh");
    let out = helm(&[
        "upgrade",
        "mesh",
        chart.to_str().expect("utf-8"),
        "-n",
        &release.namespace,
        "--reuse-values",
        "--set",
        "meshConfig.accessLogEncoding=JSON",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(out.ok, "helm upgrade: {}", out.stderr);
    kubectl_ok(&["rollout", "status", "deployment/mesh", "-n", &release.namespace, "--timeout=180s"], None);
    let entry = eventually("a JSON access log line", Duration::from_secs(90), || {
        shown(ns, &client, 1);
        let line = access_line(ns, |l| l.starts_with('{') && l.contains("/reviews/0"))?;
        serde_json::from_str::<Value>(&line).ok()
    });
    eprintln!("JSON: {entry}");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/reviews/0");
    assert!(entry["upstream_cluster"].as_str().is_some_and(|c| c.starts_with("outbound|9080|v")), "{entry}");
    assert!(entry["response_code"].is_number(), "{entry}");
}
