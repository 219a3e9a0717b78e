//! The service graph from Istio's metrics: workloads as nodes, the calls
//! between them as edges with requests per second, error rate and p99
//! latency. Pure: it reads Prometheus' answers (instant vectors) to the
//! queries below and builds the graph the page draws.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Labels that name an edge's two ends.
const ENDS: &str = "source_workload, source_workload_namespace, source_app, \
                    destination_workload, destination_workload_namespace, destination_app";

/// Labels that name the Service called.
const SERVICE: &str = "destination_service_name, destination_service_namespace";

/// A share of failed requests from which an edge is drawn red.
pub const RED: f64 = 0.05;

/// The PromQL queries the graph is built from, over `window` (`1m`).
pub struct Queries {
    /// Requests per second by ends and response code, as the callers'
    /// proxies counted them, and as the callees' counted those from
    /// callers without a sidecar (no `source` report exists for them).
    pub requests: String,
    /// The p99 latency in milliseconds by ends, as the callers saw it.
    pub p99: String,
}

impl Queries {
    pub fn over(window: &str) -> Self {
        Self {
            requests: format!(
                "sum by ({ENDS}, {SERVICE}, response_code) \
                 (rate(istio_requests_total{{reporter=\"source\"}}[{window}])) \
                 or sum by ({ENDS}, {SERVICE}, response_code) \
                 (rate(istio_requests_total{{reporter=\"destination\", source_workload=\"unknown\"}}[{window}]))"
            ),
            p99: format!(
                "histogram_quantile(0.99, sum by (le, {ENDS}) \
                 (rate(istio_request_duration_milliseconds_bucket{{reporter=\"source\"}}[{window}])))"
            ),
        }
    }
}

/// A workload; or a Service, when requests to it reached no workload (a
/// fault the caller's proxy injected, no endpoint); or the callers the
/// mesh cannot name (`unknown`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    /// `namespace/workload`, or `namespace/service:<name>` for a Service.
    pub id: String,
    /// `workload`, `service` or `unknown`.
    pub kind: &'static str,
    pub namespace: String,
    pub workload: String,
    /// Its `app` label (`unknown` without one): its proxy's spans are
    /// `<app>.<namespace>`.
    pub app: String,
}

/// Calls from one workload to another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    pub source: String,
    pub destination: String,
    /// The Services called (by name), in name order.
    pub services: Vec<String>,
    pub rps: f64,
    /// The share of requests answered 5xx or not at all (code 0).
    pub error_rate: f64,
    /// None when no request was timed in the window.
    pub p99_ms: Option<f64>,
    /// Drawn red: `error_rate` at or above [`RED`].
    pub failing: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One sample of an instant vector: its labels and value.
fn samples(answer: &Value) -> impl Iterator<Item = (&serde_json::Map<String, Value>, f64)> {
    answer["data"]["result"].as_array().into_iter().flatten().filter_map(|series| {
        let labels = series["metric"].as_object()?;
        let value = series["value"][1].as_str()?.parse::<f64>().ok()?;
        Some((labels, value))
    })
}

fn label<'a>(labels: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    labels.get(name).and_then(Value::as_str).filter(|v| !v.is_empty()).unwrap_or("unknown")
}

fn end(labels: &serde_json::Map<String, Value>, side: &str) -> Node {
    let namespace = label(labels, &format!("{side}_workload_namespace")).to_string();
    let workload = label(labels, &format!("{side}_workload")).to_string();
    let app = label(labels, &format!("{side}_app")).to_string();
    let service = label(labels, "destination_service_name");
    if side == "destination" && workload == "unknown" && service != "unknown" {
        let namespace = label(labels, "destination_service_namespace").to_string();
        return Node {
            id: format!("{namespace}/service:{service}"),
            kind: "service",
            namespace,
            workload: service.to_string(),
            app: service.to_string(),
        };
    }
    let kind = if workload == "unknown" { "unknown" } else { "workload" };
    Node { id: format!("{namespace}/{workload}"), kind, namespace, workload, app }
}

/// The graph from Prometheus' answers to [`Queries::requests`] and
/// [`Queries::p99`]; edges without traffic in the window are left out.
pub fn build(requests: &Value, p99: &Value) -> Graph {
    #[derive(Default)]
    struct Sums {
        rps: f64,
        failed: f64,
        services: Vec<String>,
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), Sums> = BTreeMap::new();
    for (labels, rate) in samples(requests) {
        let (source, destination) = (end(labels, "source"), end(labels, "destination"));
        let sums = edges.entry((source.id.clone(), destination.id.clone())).or_default();
        sums.rps += rate;
        let code = label(labels, "response_code");
        if code == "0" || code.starts_with('5') {
            sums.failed += rate;
        }
        let service = label(labels, "destination_service_name").to_string();
        if !sums.services.contains(&service) {
            sums.services.push(service);
        }
        nodes.entry(source.id.clone()).or_insert(source);
        nodes.entry(destination.id.clone()).or_insert(destination);
    }
    let mut latency: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (labels, ms) in samples(p99).filter(|(_, ms)| ms.is_finite()) {
        latency.insert((end(labels, "source").id, end(labels, "destination").id), ms);
    }
    let edges = edges
        .into_iter()
        .filter(|(_, sums)| sums.rps > 0.0)
        .map(|((source, destination), mut sums)| {
            sums.services.sort();
            let error_rate = sums.failed / sums.rps;
            Edge {
                p99_ms: latency.get(&(source.clone(), destination.clone())).copied(),
                source,
                destination,
                services: sums.services,
                rps: sums.rps,
                error_rate,
                failing: error_rate >= RED,
            }
        })
        .collect::<Vec<_>>();
    // Only the workloads some edge with traffic touches.
    nodes.retain(|id, _| edges.iter().any(|e| &e.source == id || &e.destination == id));
    Graph { nodes: nodes.into_values().collect(), edges }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn series(src: &str, dst: &str, service: &str, code: &str, value: f64) -> Value {
        let namespace = |workload: &str| if workload == "unknown" { "unknown" } else { "default" };
        json!({
            "metric": {
                "source_workload": src, "source_workload_namespace": namespace(src),
                "destination_workload": dst, "destination_workload_namespace": "default",
                "destination_service_name": service, "destination_service_namespace": "default",
                "response_code": code,
            },
            "value": [0, value.to_string()],
        })
    }

    fn vector(series: Vec<Value>) -> Value {
        json!({"status": "success", "data": {"resultType": "vector", "result": series}})
    }

    #[test]
    fn calls_add_up_per_pair_of_workloads_and_failures_turn_an_edge_red() {
        let requests = vector(vec![
            series("productpage-v1", "reviews-v1", "reviews", "200", 1.0),
            series("productpage-v1", "reviews-v3", "reviews", "200", 1.5),
            series("reviews-v3", "ratings-v1", "ratings", "200", 0.5),
            series("reviews-v3", "ratings-v1", "ratings", "503", 1.0),
            series("unknown", "productpage-v1", "productpage", "200", 2.0),
            // Aborted by the caller's proxy: no workload answered.
            series("reviews-v2", "unknown", "ratings", "503", 0.25),
            // No traffic in the window: no edge, and no node for it alone.
            series("productpage-v1", "reviews-v2", "reviews", "200", 0.0),
        ]);
        let p99 = vector(vec![json!({
            "metric": {
                "source_workload": "reviews-v3", "source_workload_namespace": "default",
                "destination_workload": "ratings-v1", "destination_workload_namespace": "default",
            },
            "value": [0, "12.5"],
        })]);
        let graph = build(&requests, &p99);
        let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "default/productpage-v1",
                "default/ratings-v1",
                "default/reviews-v1",
                "default/reviews-v2",
                "default/reviews-v3",
                "default/service:ratings",
                "unknown/unknown"
            ]
        );
        let service = graph.nodes.iter().find(|n| n.id == "default/service:ratings").expect("the Service");
        assert_eq!(service.kind, "service");
        let edge = |s: &str, d: &str| {
            graph.edges.iter().find(|e| e.source.ends_with(s) && e.destination.ends_with(d)).expect("an edge")
        };
        let ratings = edge("reviews-v3", "ratings-v1");
        assert_eq!(ratings.rps, 1.5);
        assert!((ratings.error_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!(ratings.failing);
        assert_eq!(ratings.p99_ms, Some(12.5));
        let reviews = edge("productpage-v1", "reviews-v3");
        assert!(!reviews.failing);
        assert_eq!(reviews.p99_ms, None);
        assert_eq!(reviews.services, ["reviews"]);
        let aborted = edge("reviews-v2", "service:ratings");
        assert!(aborted.failing && aborted.error_rate == 1.0, "{aborted:?}");
        assert_eq!(graph.edges.len(), 5, "{:?}", graph.edges);
        assert!(graph.edges.iter().all(|e| !e.destination.ends_with("reviews-v2")));
    }

    #[test]
    fn an_empty_or_failed_answer_is_an_empty_graph() {
        assert_eq!(build(&json!({}), &json!({})), Graph::default());
        assert_eq!(build(&json!({"status": "error"}), &vector(vec![])), Graph::default());
    }
}
