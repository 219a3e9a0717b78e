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
        // The sample's cluster-wide names carry the namespace, so two runs never share them.
        let (applied, ip) = addon(namespace, "prometheus", |yaml| {
            yaml.replace("names: [mesh-system]", &format!("names: [{namespace}]"))
                .replace("name: mesh-prometheus", &format!("name: {namespace}-prometheus"))
        });
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

/// Every call to ratings answered 503 by the caller's proxy (a fault abort).
const RATINGS_ABORT: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {percentage: {value: 100}, httpStatus: 503}
    route:
    - destination: {host: ratings}
";

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
    let mut versions: Vec<&str> = split
        .iter()
        .filter(|(_, rate)| *rate > 0.0)
        .map(|(l, _)| l["destination_version"].as_str())
        .collect();
    versions.sort();
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
    let _abort = Applied::new(ns, RATINGS_ABORT);
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

    // The controller's own: its webhooks' reviews, Bookinfo's pods injected.
    let reviews = controller_metric(&release.namespace, "mesh_webhook_reviews_total");
    let injected = reviews
        .iter()
        .filter(|(labels, _)| labels.contains("webhook=\"inject\"") && labels.contains("allowed=\"true\""));
    assert!(
        injected.map(|(_, v)| v).sum::<f64>() >= 6.0,
        "Bookinfo's six pods reviewed by the injector: {reviews:?}"
    );
    assert!(
        !controller_metric(&release.namespace, "mesh_webhook_review_duration_seconds_count").is_empty(),
        "the webhooks' latency"
    );

    // The access log, in Istio's default TEXT line: productpage's call to
    // reviews, as its Envoy routed it.
    let line =
        access_line(ns, |l| l.contains("\"GET /reviews/0 HTTP/1.1\" 200")).expect("a TEXT line for reviews");
    eprintln!("TEXT: {line}");
    // Nothing the mesh sends makes Envoy warn of a deprecated field.
    let whole = kubectl_ok(&["logs", "-n", ns, "deploy/productpage-v1", "-c", "istio-proxy"], None);
    // kubectl's other habits on the injected app: exec in its sidecar (as
    // the proxy's user) and the Service on a local port.
    let exec = ["exec", "-n", ns, "deploy/productpage-v1", "-c", "istio-proxy", "--", "id", "-u"];
    assert_eq!(kubectl_ok(&exec, None).trim(), "1337");
    let port = free_port();
    let _forward = Background::kubectl(
        Duration::from_secs(120),
        &["port-forward", "-n", ns, "svc/productpage", &format!("{port}:9080")],
    );
    let page = eventually("the product page through kubectl port-forward", Duration::from_secs(30), || {
        let (status, body) = http_get(&format!("http://127.0.0.1:{port}/productpage"), None);
        (status == 200).then_some(body)
    });
    assert!(page.contains("reviews-podname"), "{page}");
    let deprecated: Vec<&str> = whole.lines().filter(|l| l.contains("Deprecated field")).collect();
    assert!(deprecated.is_empty(), "{deprecated:?}");
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

/// An addon of samples/addons/ (`<app>.yaml`, its pod labelled `app: <app>`)
/// applied in `namespace` instead of mesh-system, with `adapt` for the rest
/// of it; the objects (deleted when dropped) and its Ready pod's address.
fn addon(namespace: &str, app: &str, adapt: impl Fn(String) -> String) -> (Applied, String) {
    let sample =
        std::fs::read_to_string(repo().join(format!("samples/addons/{app}.yaml"))).expect("the sample");
    let yaml = adapt(sample.replace("namespace: mesh-system", &format!("namespace: {namespace}")));
    let applied = Applied::new(namespace, &yaml);
    rollout(namespace);
    let pod = pod_named(namespace, &format!("app={app}"));
    kubectl_ok(
        &["wait", "-n", namespace, "--for", "condition=Ready", &format!("pod/{pod}"), "--timeout=120s"],
        None,
    );
    (applied, jsonpath(namespace, &format!("pod/{pod}"), "{.status.podIP}"))
}

/// Jaeger from samples/addons/jaeger.yaml in `namespace`; its query API's address.
fn jaeger(namespace: &str) -> (Applied, String) {
    let (applied, ip) = addon(namespace, "jaeger", |yaml| yaml);
    (applied, format!("{ip}:16686"))
}

/// The traces Jaeger holds that `service` took part in: each as the set of
/// services its spans came from, and its number of spans.
fn traces(jaeger: &str, service: &str) -> Vec<(std::collections::BTreeSet<String>, usize)> {
    let url = format!("http://{jaeger}/api/traces");
    let Ok(mut response) =
        ureq::get(&url).query("service", service).query("limit", "100").query("lookback", "1h").call()
    else {
        return Vec::new();
    };
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default();
    body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|trace| {
            let services = trace["processes"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, p)| p["serviceName"].as_str().map(str::to_string))
                .collect();
            (services, trace["spans"].as_array().map_or(0, Vec::len))
        })
        .collect()
}

#[test]
fn a_product_page_is_one_trace_in_jaeger_with_spans_from_each_sidecar_on_its_path() {
    let namespace = "mesh-e2e-tracing";
    // Nothing is sampled mesh-wide; productpage's pod will ask for every request.
    let zipkin = format!("meshConfig.defaultConfig.tracing.zipkin.address=zipkin.{namespace}:9411");
    let release = Release::install(
        namespace,
        &["--set", &zipkin, "--set", "meshConfig.defaultConfig.tracing.sampling=0"],
    );
    let (_jaeger, jaeger) = jaeger(&release.namespace);
    let bookinfo = injected_bookinfo("tracing");
    let ns = bookinfo.name.as_str();
    let service = |app: &str| format!("{app}.{ns}");
    let client = pod_named(ns, "app=productpage");
    pages(ns, &client, 10);
    std::thread::sleep(Duration::from_secs(8));
    let unsampled = traces(&jaeger, &service("productpage"));
    assert!(unsampled.is_empty(), "sampling 0: no trace, found {unsampled:?}");

    // proxy.istio.io/config on productpage's pods: every request it starts is traced.
    let patch = r#"{"spec":{"template":{"metadata":{"annotations":{"proxy.istio.io/config":"tracing:\n  sampling: 100\n"}}}}}"#;
    kubectl_ok(&["patch", "deployment", "productpage-v1", "-n", ns, "--type", "merge", "-p", patch], None);
    kubectl_ok(&["rollout", "status", "deployment/productpage-v1", "-n", ns, "--timeout=180s"], None);
    eventually("the old productpage pod gone", Duration::from_secs(60), || {
        (kubectl_ok(&["get", "pods", "-n", ns, "-l", "app=productpage", "-o", "name"], None).lines().count()
            == 1)
            .then_some(())
    });
    let client = pod_named(ns, "app=productpage");
    kubectl_ok(
        &["wait", "-n", ns, "--for", "condition=Ready", &format!("pod/{client}"), "--timeout=120s"],
        None,
    );
    let whole = [service("productpage"), service("details"), service("reviews"), service("ratings")];
    // Each hop is a span at the caller's sidecar and one at the callee's:
    // the client's call into productpage, then details, reviews and ratings
    // (each proxy sends its spans every few seconds: a trace fills up).
    let found = eventually("a trace with both spans of every hop", Duration::from_secs(90), || {
        pages(ns, &client, 6);
        let all = traces(&jaeger, &service("productpage"));
        all.into_iter().find(|(services, spans)| whole.iter().all(|s| services.contains(s)) && *spans >= 8)
    });
    eprintln!("a trace: {} spans from {:?}", found.1, found.0);
}

/// `mesh dashboard` on a free port of this machine, stopped when dropped.
struct DashboardProcess {
    child: std::process::Child,
    url: String,
}

impl DashboardProcess {
    /// The dashboard as a user runs it: the controllers of `release_ns`
    /// found through the kubeconfig (the cluster's admin, whose client
    /// certificate gets a token of the chart's ServiceAccount mesh-debug).
    fn start(prometheus: &str, jaeger: Option<&str>, release_ns: &str) -> Self {
        let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
        let port = free_port();
        let mut command = std::process::Command::new(bin);
        command
            .args(["dashboard", "--prometheus", &format!("http://{prometheus}"), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--kubeconfig", &kubeconfig(), "--mesh-namespace", release_ns])
            .env_remove("MESH_TOKEN")
            .env_remove("MESH_CONTROLLER")
            .stderr(std::process::Stdio::null());
        if let Some(jaeger) = jaeger {
            command.args(["--jaeger", &format!("http://{jaeger}")]);
        }
        let child = command.spawn().expect("mesh dashboard");
        let url = format!("http://127.0.0.1:{port}/");
        eventually("the dashboard to serve", Duration::from_secs(20), || {
            (http_get(&url, None).0 == 200).then_some(())
        });
        Self { child, url }
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium (Debian's) on `url`, with time for the page's script
/// to fetch and draw: the DOM it ends with, or a screenshot at `png`.
fn chromium(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = std::env::temp_dir().join(format!("mesh-e2e-chromium-{}", std::process::id()));
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--hide-scrollbars".to_string(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1400,700".to_string(),
        "--virtual-time-budget=10000".to_string(),
    ];
    match screenshot {
        Some(path) => args.push(format!("--screenshot={}", path.display())),
        None => args.push("--dump-dom".to_string()),
    }
    args.push(url.to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("chromium", &argv, None);
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.ok, "chromium: {}", out.stderr);
    out.stdout
}

/// The edges the page drew: (source, destination, failing).
fn drawn_edges(dom: &str) -> Vec<(String, String, bool)> {
    let edge =
        regex::Regex::new(r#"<g class="edge( failing)?" data-source="([^"]+)" data-destination="([^"]+)""#)
            .expect("a regex");
    edge.captures_iter(dom).map(|c| (c[2].to_string(), c[3].to_string(), c.get(1).is_some())).collect()
}

/// How many pixels of a PNG are the page's red (#e0241b, give or take).
fn red_pixels(png: &std::path::Path) -> usize {
    let decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).expect("the screenshot")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let channels = info.color_type.samples();
    pixels[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p.len() >= 3 && p[0] > 190 && p[1] < 90 && p[2] < 90)
        .count()
}

#[test]
fn the_service_graph_shows_bookinfo_in_a_browser_and_turns_an_edge_red_under_an_abort() {
    let release = Release::install("mesh-e2e-graph", &[]);
    let bookinfo = injected_bookinfo("graph");
    let ns = bookinfo.name.as_str();
    let prometheus = Prometheus::start(&release.namespace);
    let dashboard = DashboardProcess::start(&prometheus.address, None, &release.namespace);
    let client = pod_named(ns, "app=productpage");
    let id = |workload: &str| format!("{ns}/{workload}");

    // Round robin over the three reviews versions: an edge to each, and
    // from v2 and v3 to ratings. Each proxy's counts arrive with its own
    // scrape: wait for all of them.
    let edges = eventually("the Bookinfo graph in the page", Duration::from_secs(120), || {
        pages(ns, &client, 10);
        let edges = drawn_edges(&chromium(&dashboard.url, None));
        let edge = |s: &str, d: &str| edges.iter().any(|(src, dst, _)| *src == id(s) && *dst == id(d));
        let from_productpage = ["reviews-v1", "reviews-v2", "reviews-v3", "details-v1"]
            .iter()
            .all(|d| edge("productpage-v1", d));
        let to_ratings = ["reviews-v2", "reviews-v3"].iter().all(|s| edge(s, "ratings-v1"));
        (from_productpage && to_ratings).then_some(edges)
    });
    eprintln!("drawn: {edges:?}");
    assert!(edges.iter().all(|(_, _, failing)| !failing), "nothing fails yet: {edges:?}");
    // A click on a workload: its proxy, in sync, from the controllers.
    let (status, details) =
        http_get(&format!("{}api/workload?namespace={ns}&workload=productpage-v1", dashboard.url), None);
    let details: serde_json::Value = serde_json::from_str(&details).expect("JSON");
    assert_eq!(status, 200, "{details}");
    assert_eq!(
        details["proxies"][0]["pod"].as_str().map(|p| p.starts_with("productpage-v1-")),
        Some(true),
        "{details}"
    );
    assert_eq!(details["proxies"][0]["status"], "in sync", "{details}");

    // Ratings aborted by the callers' proxies: their edges to it turn red.
    let _abort = Applied::new(ns, RATINGS_ABORT);
    let ratings = format!("{ns}/service:ratings");
    let edges = eventually("a red edge to ratings", Duration::from_secs(120), || {
        pages(ns, &client, 10);
        let edges = drawn_edges(&chromium(&dashboard.url, None));
        edges
            .iter()
            .any(|(s, d, failing)| *failing && *d == ratings && s.starts_with(&id("reviews-v")))
            .then_some(edges)
    });
    eprintln!("drawn under the abort: {edges:?}");
    assert!(
        edges.iter().filter(|(_, _, failing)| *failing).all(|(_, d, _)| *d == ratings),
        "only the calls to ratings fail: {edges:?}"
    );

    // The screenshot docs/observe.md shows, checked for the red edge.
    let dir = repo().join("target/e2e");
    std::fs::create_dir_all(&dir).expect("target/e2e");
    let png = dir.join("service-graph.png");
    chromium(&dashboard.url, Some(&png));
    let red = red_pixels(&png);
    eprintln!("screenshot {} with {red} red pixels", png.display());
    assert!(red > 200, "the failing edge is red in the screenshot: {red} red pixels");
}
