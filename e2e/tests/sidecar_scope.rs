//! Sidecar resources on real proxies: Bookinfo injected in one namespace,
//! its details Service in a second. Istio's documented Sidecar
//! (`egress: [{hosts: ["./*", "istio-system/*"]}]`) cuts what the
//! productpage Envoy holds to its namespace's Services, counted in the
//! Envoy's own /config_dump, while traffic inside the namespace still
//! flows; a Sidecar with a `workloadSelector` narrows only the pod it
//! selects; an egress listener for one port serves that port alone; an
//! ingress listener sends its port to the application's loopback address,
//! with its connection pool's limits.
//! Without a ServiceEntry or REGISTRY_ONLY, a call to a Service left out
//! still leaves the pod, unrouted, through `PassthroughCluster` (Istio's
//! ALLOW_ANY).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    Applied, Release, TempNamespace, conformance, enter, eventually, injected_bookinfo, kubectl_ok,
    pod_named, rollout,
};

/// Bookinfo's details (Service, ServiceAccount, Deployment), from Istio's
/// `bookinfo.yaml`, injected in a namespace of its own.
fn details_only(prefix: &str) -> TempNamespace {
    let ns = TempNamespace::new(prefix);
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
    let file = conformance().join("platform/bookinfo.yaml");
    let file = file.to_str().expect("utf-8");
    for selector in ["account=details", "app=details"] {
        kubectl_ok(&["apply", "-n", &ns.name, "-l", selector, "-f", file], None);
    }
    rollout(&ns.name);
    kubectl_ok(
        &["wait", "-n", &ns.name, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
        None,
    );
    ns
}

/// The names of the clusters a pod's Envoy has in use, from its /config_dump.
fn active_clusters(namespace: &str, pod: &str) -> BTreeSet<String> {
    let out = enter(
        namespace,
        pod,
        "curl -s -m 2 'http://127.0.0.1:15000/config_dump?resource=dynamic_active_clusters'",
    );
    let dump: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
        .collect()
}

fn outbound(clusters: &BTreeSet<String>) -> BTreeSet<String> {
    clusters.iter().filter(|c| c.starts_with("outbound|")).cloned().collect()
}

/// Bookinfo's four Services of `namespace`, as outbound cluster names.
fn bookinfo_clusters(namespace: &str) -> BTreeSet<String> {
    ["details", "productpage", "ratings", "reviews"]
        .iter()
        .map(|s| format!("outbound|9080||{s}.{namespace}.svc.cluster.local"))
        .collect()
}

/// Requests an Envoy sent out unrouted, to their original destination.
const PASSTHROUGH_REQUESTS: &str = "cluster.PassthroughCluster.upstream_rq_total";

/// The names of the route configurations a pod's Envoy has, from its /config_dump.
fn route_configs(namespace: &str, pod: &str) -> BTreeSet<String> {
    let out = enter(
        namespace,
        pod,
        "curl -s -m 2 'http://127.0.0.1:15000/config_dump?resource=dynamic_route_configs'",
    );
    let dump: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["route_config"]["name"].as_str().map(str::to_string))
        .collect()
}

/// One counter of the Envoy in `pod` (0 when it has none yet).
fn envoy_counter(namespace: &str, pod: &str, name: &str) -> f64 {
    let out = enter(namespace, pod, "curl -s -m 2 http://127.0.0.1:15000/stats");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// HTTP status codes of `n` requests from `pod` to `url`, one per line, counted.
fn codes(namespace: &str, pod: &str, url: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let script =
        format!("for i in $(seq 1 {n}); do curl -s -o /dev/null -m 5 -w '%{{http_code}}\\n' '{url}'; done");
    let out = enter(namespace, pod, &script);
    let mut counts = std::collections::BTreeMap::new();
    for code in out.stdout.lines() {
        *counts.entry(code.to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn a_sidecar_cuts_a_proxys_clusters_to_its_namespace_and_traffic_still_flows() {
    let _release = Release::install("mesh-e2e-sidecar", &[]);
    let a = injected_bookinfo("sidecar-a");
    let b = details_only("sidecar-b");
    let (a, b) = (a.name.as_str(), b.name.as_str());
    let productpage = pod_named(a, "app=productpage");
    let reviews = pod_named(a, "app=reviews,version=v1");
    let other_details = format!("outbound|9080||details.{b}.svc.cluster.local");

    // Before: every Service of the mesh, the other namespace's details too.
    let before =
        eventually("productpage's Envoy with both namespaces' Services", Duration::from_secs(60), || {
            let clusters = active_clusters(a, &productpage);
            clusters.contains(&other_details).then_some(clusters)
        });
    let before_outbound = outbound(&before);
    assert!(before_outbound.is_superset(&bookinfo_clusters(a)), "{before_outbound:?}");
    eprintln!(
        "before any Sidecar: {} clusters, {} outbound: {before_outbound:?}",
        before.len(),
        before_outbound.len()
    );

    // A Sidecar selecting productpage only.
    let selected = Applied::new(
        a,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: productpage}\nspec:\n  \
         workloadSelector: {labels: {app: productpage}}\n  egress:\n  - hosts: [\"./*\"]\n",
    );
    let narrowed =
        eventually("productpage's Envoy narrowed to its namespace", Duration::from_secs(60), || {
            let clusters = active_clusters(a, &productpage);
            (outbound(&clusters) == bookinfo_clusters(a)).then_some(clusters)
        });
    eprintln!("workloadSelector Sidecar: productpage {} clusters ({} outbound)", narrowed.len(), 4);
    // reviews-v1, not selected, keeps them all (checked after productpage changed, so the push is done).
    let unselected = active_clusters(a, &reviews);
    assert!(unselected.contains(&other_details), "reviews-v1 is not selected: {unselected:?}");
    assert_eq!(outbound(&unselected), before_outbound, "reviews-v1 unchanged");
    drop(selected);
    eventually("productpage's Envoy back to every Service", Duration::from_secs(60), || {
        active_clusters(a, &productpage).contains(&other_details).then_some(())
    });

    // Istio's documented example, for the whole namespace.
    let _namespace_wide = Applied::new(
        a,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: default}\nspec:\n  \
         egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n",
    );
    for pod in [&productpage, &reviews] {
        let after =
            eventually(&format!("{pod}'s Envoy narrowed to its namespace"), Duration::from_secs(60), || {
                let clusters = active_clusters(a, pod);
                (outbound(&clusters) == bookinfo_clusters(a)).then_some(clusters)
            });
        let rest: Vec<&String> = after.iter().filter(|c| !c.starts_with("outbound|")).collect();
        eprintln!("namespace-wide Sidecar: {pod} {} clusters, 4 outbound, and {rest:?}", after.len());
        assert!(after.contains("PassthroughCluster") && after.contains("BlackHoleCluster"), "{after:?}");
        assert!(after.len() < before.len(), "{} clusters, {} before", after.len(), before.len());
    }

    // Traffic inside the namespace still flows, through the routes.
    let rq = "cluster.outbound|9080||reviews.{a}.svc.cluster.local.upstream_rq_200".replace("{a}", a);
    let routed_before = envoy_counter(a, &productpage, &rq);
    let answers = codes(a, &productpage, "http://reviews:9080/reviews/1", 50);
    assert_eq!(answers.get("200"), Some(&50), "reviews from productpage: {answers:?}");
    let routed = envoy_counter(a, &productpage, &rq) - routed_before;
    assert!(routed >= 50.0, "reviews' cluster counted the requests: {routed}");

    // details of the other namespace is no longer routed: it leaves through PassthroughCluster.
    let passed_before = envoy_counter(a, &productpage, PASSTHROUGH_REQUESTS);
    let answers = codes(a, &productpage, &format!("http://details.{b}:9080/details/0"), 10);
    assert_eq!(answers.get("200"), Some(&10), "details of {b}, passed through: {answers:?}");
    let passed = envoy_counter(a, &productpage, PASSTHROUGH_REQUESTS) - passed_before;
    assert!(passed >= 10.0, "the requests left through PassthroughCluster: {passed}");

    // An egress listener for port 9080 that imports reviews only: the
    // other Services keep their clusters (the portless listener imports
    // them) but lose their routes on 9080.
    let _port = Applied::new(
        a,
        &format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {{name: default}}\nspec:\n  \
             egress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    captureMode: DEFAULT\n    \
             hosts: [\"./reviews.{a}.svc.cluster.local\"]\n  - hosts: [\"./*\"]\n"
        ),
    );
    let reviews_route = format!("reviews.{a}.svc.cluster.local:9080");
    let routes =
        eventually("productpage's Envoy with reviews' routes only on 9080", Duration::from_secs(60), || {
            let routes = route_configs(a, &productpage);
            (routes.iter().filter(|r| r.ends_with(":9080")).collect::<Vec<_>>() == [&reviews_route])
                .then_some(routes)
        });
    eprintln!("egress listener on 9080 for reviews: route configurations {routes:?}");
    assert_eq!(outbound(&active_clusters(a, &productpage)), bookinfo_clusters(a));
    let routed_before = envoy_counter(a, &productpage, &rq);
    let passed_before = envoy_counter(a, &productpage, PASSTHROUGH_REQUESTS);
    let answers = codes(a, &productpage, "http://reviews:9080/reviews/1", 20);
    assert_eq!(answers.get("200"), Some(&20), "reviews from productpage: {answers:?}");
    let answers = codes(a, &productpage, "http://ratings:9080/ratings/0", 20);
    assert_eq!(answers.get("200"), Some(&20), "ratings from productpage, passed through: {answers:?}");
    let routed = envoy_counter(a, &productpage, &rq) - routed_before;
    let passed = envoy_counter(a, &productpage, PASSTHROUGH_REQUESTS) - passed_before;
    eprintln!("reviews routed {routed}, ratings passed through {passed}");
    assert!(routed >= 20.0, "reviews' cluster counted its requests: {routed}");
    assert!(passed >= 20.0, "ratings' requests left through PassthroughCluster: {passed}");
    assert_eq!(envoy_counter(a, &productpage, "listener_manager.lds.update_rejected"), 0.0);
    assert_eq!(envoy_counter(a, &productpage, "cluster_manager.cds.update_rejected"), 0.0);
}

/// A fortio server that listens on loopback port 8080 only, behind a
/// Service on port 80 (target 80, where nothing listens), and a client.
const LOOPBACK_SERVER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: local-only, labels: {app: local-only}}
spec:
  ports:
  - {port: 80, name: http}
  selector: {app: local-only}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: local-only}
spec:
  replicas: 1
  selector:
    matchLabels: {app: local-only}
  template:
    metadata:
      labels: {app: local-only}
    spec:
      containers:
      - name: fortio
        image: fortio/fortio:latest_release
        args: [server, -http-port, "127.0.0.1:8080", -grpc-port, disabled, -redirect-port, disabled]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep}
spec:
  replicas: 1
  selector:
    matchLabels: {app: sleep}
  template:
    metadata:
      labels: {app: sleep}
    spec:
      containers:
      - name: sleep
        image: busybox
        command: [sh, -c, 'sleep 3600']
"#;

#[test]
fn an_ingress_listener_sends_a_port_to_its_default_endpoint() {
    let _release = Release::install("mesh-e2e-sidecar-in", &[]);
    let ns = TempNamespace::new("sidecar-in");
    let n = ns.name.as_str();
    kubectl_ok(&["label", "namespace", n, "istio-injection=enabled", "--overwrite"], None);
    crate::support::apply(n, LOOPBACK_SERVER);
    rollout(n);
    kubectl_ok(&["wait", "-n", n, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"], None);
    let client = pod_named(n, "app=sleep");
    let server = pod_named(n, "app=local-only");
    let url = "http://local-only/echo";

    // Without a Sidecar, the port goes where it was sent: nothing listens on the pod's port 80.
    let before =
        eventually("the server's sidecar answering for its empty port", Duration::from_secs(60), || {
            let answers = codes(n, &client, url, 5);
            (answers.get("503") == Some(&5)).then_some(answers)
        });
    eprintln!("without a Sidecar: {before:?}");

    // The Sidecar's ingress listener sends port 80 to the application on loopback.
    let _sidecar = Applied::new(
        n,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: local-only}\nspec:\n  \
         workloadSelector: {labels: {app: local-only}}\n  ingress:\n  \
         - port: {number: 80, protocol: HTTP}\n    defaultEndpoint: 127.0.0.1:8080\n    captureMode: IPTABLES\n",
    );
    eventually("the application answering through the ingress listener", Duration::from_secs(60), || {
        (codes(n, &client, url, 5).get("200") == Some(&5)).then_some(())
    });
    // As HTTP, through the port's connection manager, to the static cluster.
    let http = "http.inbound_0.0.0.0_80.downstream_rq_total";
    let cluster = "cluster.inbound|80||.upstream_rq_200";
    let (http_before, cluster_before) = (envoy_counter(n, &server, http), envoy_counter(n, &server, cluster));
    let answers = codes(n, &client, url, 50);
    assert_eq!(answers.get("200"), Some(&50), "{answers:?}");
    let (http_seen, cluster_seen) =
        (envoy_counter(n, &server, http) - http_before, envoy_counter(n, &server, cluster) - cluster_before);
    eprintln!(
        "with the ingress listener: 50 × 200; the server's Envoy counted {http_seen} HTTP requests, {cluster_seen} answered 200 by inbound|80||"
    );
    assert!(http_seen >= 50.0 && cluster_seen >= 50.0, "{http_seen} {cluster_seen}");
    assert_eq!(envoy_counter(n, &server, "listener_manager.lds.update_rejected"), 0.0);
    assert_eq!(envoy_counter(n, &server, "cluster_manager.cds.update_rejected"), 0.0);
    // Every field it sets is applied, and its status says so.
    eventually("the Sidecar Reconciled", Duration::from_secs(30), || {
        let reconciled = crate::support::jsonpath(
            n,
            "sidecar/local-only",
            "{.status.conditions[?(@.type==\"Reconciled\")].status}",
        );
        (reconciled == "True").then_some(())
    });

    // Ten requests at once, each held a second by the server: without a
    // pool, the inbound cluster takes them all.
    let overflow = "cluster.inbound|80||.upstream_rq_pending_overflow";
    let burst = || {
        let before = envoy_counter(n, &server, overflow);
        let answers = concurrent_codes(n, &client, "http://local-only/echo?delay=1s", 10);
        (answers, envoy_counter(n, &server, overflow) - before)
    };
    let (answers, overflowed) = burst();
    eprintln!("10 at once, no pool: {answers:?}, {overflowed} overflowed");
    assert_eq!((answers.get("200"), overflowed), (Some(&10), 0.0), "{answers:?}");

    // The Sidecar's inboundConnectionPool: one connection, one waiting; the rest overflow.
    let sidecar = |pools: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {{name: local-only}}\nspec:\n  \
             workloadSelector: {{labels: {{app: local-only}}}}\n  ingress:\n  \
             - port: {{number: 80, protocol: HTTP}}\n    defaultEndpoint: 127.0.0.1:8080\n{pools}"
        )
    };
    let strict = "  inboundConnectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\n";
    let _pool = Applied::new(n, &sidecar(strict));
    let (answers, overflowed) =
        eventually("the server's Envoy refusing what overflows", Duration::from_secs(60), || {
            let (answers, overflowed) = burst();
            (overflowed > 0.0).then_some((answers, overflowed))
        });
    eprintln!(
        "10 at once, inboundConnectionPool 1 + 1 pending: {answers:?}, {overflowed} overflowed at the server"
    );
    assert!(answers.get("200").is_some_and(|n| *n >= 2), "the first requests are served: {answers:?}");

    // The listener's own connectionPool replaces it on its port.
    let generous = format!("    connectionPool: {{tcp: {{maxConnections: 100}}}}\n{strict}");
    let _pool = Applied::new(n, &sidecar(&generous));
    let answers = eventually("the listener's pool in force", Duration::from_secs(60), || {
        let (answers, overflowed) = burst();
        (overflowed == 0.0 && answers.get("200") == Some(&10)).then_some(answers)
    });
    eprintln!("10 at once, the listener's connectionPool of 100: {answers:?}, none overflowed");
}

/// HTTP status codes of `n` requests sent at once from `pod` to `url`, counted.
fn concurrent_codes(
    namespace: &str,
    pod: &str,
    url: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let script = format!(
        "for i in $(seq 1 {n}); do curl -s -o /dev/null -m 20 -w '%{{http_code}}\\n' '{url}' & done; wait"
    );
    let out = enter(namespace, pod, &script);
    let mut counts = std::collections::BTreeMap::new();
    for code in out.stdout.lines() {
        *counts.entry(code.to_string()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{n} answers: {counts:?} {}", out.stderr);
    counts
}
