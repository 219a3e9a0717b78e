//! Pilot's part, on real traffic: Bookinfo injected, Istio's own sample
//! files applied unmodified, and each one does what Istio's documentation
//! says, counted by which reviews version answered. Switching between them
//! under steady load costs no request, and real Envoy accepts every
//! configuration it is sent. A DestinationRule that changes existing
//! clusters reaches the client's Envoy, and its traffic, within a second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{
    DebugViewer, Release, TempNamespace, conformance, controller_config_dump, controller_metric, controllers,
    enter, eventually, injected_bookinfo, kubectl_ok, pod_named, run,
};

/// Bookinfo injected in a namespace of its own, with the chart installed.
struct Bookinfo {
    release: Release,
    ns: TempNamespace,
    /// The pod requests are sent from: its Envoy routes them.
    client: String,
}

impl Bookinfo {
    fn start(release_ns: &str) -> Self {
        let release = Release::install(release_ns, &[]);
        let ns = injected_bookinfo("routing");
        let client = pod_named(&ns.name, "app=productpage");
        Self { release, ns, client }
    }

    fn apply(&self, sample: &str) {
        let file = conformance().join("networking").join(sample);
        kubectl_ok(&["apply", "-n", &self.ns.name, "-f", file.to_str().expect("utf-8")], None);
    }

    /// Asks reviews `n` times (through the client pod's Envoy, one
    /// connection, each request routed on its own) and counts who answered.
    fn reviews(&self, n: usize, user: Option<&str>) -> BTreeMap<String, usize> {
        let header = user.map(|u| format!("-H 'end-user: {u}'")).unwrap_or_default();
        let script = format!(
            "curl -s -m 60 {header} 'http://reviews:9080/reviews/[1-{n}]' | grep -o 'reviews-v[123]'"
        );
        let out = enter(&self.ns.name, &self.client, &script);
        let mut counts = BTreeMap::new();
        for version in out.stdout.lines() {
            *counts.entry(version.to_string()).or_default() += 1;
        }
        counts
    }

    /// Who answers a signed-in user on the product page (the user travels
    /// from productpage to reviews as the `end-user` header).
    fn page(&self, n: usize, user: Option<&str>) -> BTreeMap<String, usize> {
        let cookie = user.map(|u| format!("-b 'user={u}'")).unwrap_or_default();
        let script = format!(
            "curl -s -m 60 {cookie} 'http://productpage:9080/productpage?r=[1-{n}]' | grep -o 'reviews-podname\">reviews-v[123]' | grep -o 'reviews-v[123]'"
        );
        let out = enter(&self.ns.name, &self.client, &script);
        let mut counts = BTreeMap::new();
        for version in out.stdout.lines() {
            *counts.entry(version.to_string()).or_default() += 1;
        }
        counts
    }

    /// Waits until a sample of answers has only the versions allowed.
    fn settle(&self, what: &str, user: Option<&str>, allowed: &[&str]) {
        eventually(what, Duration::from_secs(30), || {
            let counts = self.reviews(30, user);
            (counts.values().sum::<usize>() == 30 && counts.keys().all(|v| allowed.contains(&v.as_str())))
                .then_some(())
        });
    }
}

/// A metric family of the controller, summed over its labels.
fn total_metric(release_ns: &str, family: &str) -> f64 {
    controller_metric(release_ns, family).values().sum()
}

fn only(counts: &BTreeMap<String, usize>, version: &str, n: usize) {
    assert_eq!(counts.get(version).copied(), Some(n), "only {version} should answer: {counts:?}");
    assert_eq!(counts.len(), 1, "only {version} should answer: {counts:?}");
}

/// `share` percent of `n` answers from `version`, within ±5 points.
fn about(counts: &BTreeMap<String, usize>, version: &str, share: f64, n: usize) {
    let got = *counts.get(version).unwrap_or(&0) as f64 * 100.0 / n as f64;
    assert!((got - share).abs() <= 5.0, "{version}: {got:.1}% of {n}, expected {share}% ± 5: {counts:?}");
}

#[test]
fn istios_bookinfo_routing_samples_route_real_traffic() {
    let b = Bookinfo::start("mesh-e2e-routing");
    b.apply("destination-rule-all.yaml");

    // All traffic to v1.
    b.apply("virtual-service-all-v1.yaml");
    b.settle("only reviews-v1 answering", None, &["reviews-v1"]);
    only(&b.reviews(200, None), "reviews-v1", 200);
    only(&b.page(20, Some("jason")), "reviews-v1", 20);

    // jason gets v2; everybody else v1.
    b.apply("virtual-service-reviews-test-v2.yaml");
    b.settle("jason on reviews-v2", Some("jason"), &["reviews-v2"]);
    only(&b.reviews(100, Some("jason")), "reviews-v2", 100);
    only(&b.page(20, Some("jason")), "reviews-v2", 20);
    only(&b.reviews(100, None), "reviews-v1", 100);
    only(&b.page(20, Some("alice")), "reviews-v1", 20);

    // jason gets v2; everybody else v3.
    b.apply("virtual-service-reviews-jason-v2-v3.yaml");
    b.settle("others on reviews-v3", None, &["reviews-v3"]);
    only(&b.reviews(100, Some("jason")), "reviews-v2", 100);
    only(&b.reviews(100, None), "reviews-v3", 100);
    only(&b.page(20, None), "reviews-v3", 20);

    // Weighted splits, over 1,000 requests each.
    for (sample, split) in [
        ("virtual-service-reviews-80-20.yaml", [("reviews-v1", 80.0), ("reviews-v2", 20.0)]),
        ("virtual-service-reviews-90-10.yaml", [("reviews-v1", 90.0), ("reviews-v2", 10.0)]),
        ("virtual-service-reviews-50-v3.yaml", [("reviews-v1", 50.0), ("reviews-v3", 50.0)]),
    ] {
        b.apply(sample);
        let allowed: Vec<&str> = split.iter().map(|(v, _)| *v).collect();
        b.settle(&format!("{sample} in effect"), None, &allowed);
        let counts = b.reviews(1000, None);
        assert_eq!(counts.values().sum::<usize>(), 1000, "{sample}: some requests failed: {counts:?}");
        for (version, share) in split {
            about(&counts, version, share, 1000);
        }
        eprintln!("{sample}: {counts:?}");
    }

    // All to v3.
    b.apply("virtual-service-reviews-v3.yaml");
    b.settle("only reviews-v3 answering", None, &["reviews-v3"]);
    only(&b.reviews(200, None), "reviews-v3", 200);

    assert_eq!(
        total_metric(&b.release.namespace, "mesh_xds_nacks_total"),
        0.0,
        "Envoy refused some configuration"
    );
    assert!(
        total_metric(&b.release.namespace, "mesh_xds_acks_total") > 0.0,
        "no ACK counted: the metric's name is wrong"
    );

    // `mesh proxy-status` shows every Bookinfo proxy with all four types
    // applied; the controller's config dump of one proxy holds the subsets.
    // Both are read as a user bound to the chart's ClusterRole mesh-debug.
    let viewer = DebugViewer::bound_to("mesh-debug");
    let controllers = controllers(&b.release.namespace).join(",");
    let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
    let table = eventually("every proxy SYNCED in mesh proxy-status", Duration::from_secs(20), || {
        let out = run(&bin, &["proxy-status", "--controller", &controllers, "--token", &viewer.token], None);
        let rows: Vec<&str> =
            out.stdout.lines().filter(|l| l.contains(&format!(".{} ", b.ns.name))).collect();
        (out.ok && rows.len() == 6 && rows.iter().all(|r| r.matches("SYNCED").count() == 4))
            .then_some(out.stdout.clone())
    });
    eprintln!("{table}");
    let dump =
        controller_config_dump(&b.release.namespace, &format!("{}/{}", b.ns.name, b.client), &viewer.token);
    let subset = format!("outbound|9080|v3|reviews.{}.svc.cluster.local", b.ns.name);
    assert!(dump.contains(&subset), "no {subset} in the config dump");
}

#[test]
fn switching_routes_under_load_loses_no_request() {
    let b = Bookinfo::start("mesh-e2e-switching");
    b.apply("destination-rule-all.yaml");
    b.apply("virtual-service-all-v1.yaml");
    b.settle("only reviews-v1 answering", None, &["reviews-v1"]);

    // Steady load from the client pod: pages, one after another, for a
    // fixed time (bounded in count too); every status code is kept.
    let seconds = 15;
    let (ns, client) = (b.ns.name.clone(), b.client.clone());
    let load = std::thread::spawn(move || {
        let script = format!(
            "end=$(($(date +%s) + {seconds})); i=0; \
             while [ $(date +%s) -lt $end ] && [ $i -lt 500 ]; do \
               curl -s -m 60 -o /dev/null -w '%{{http_code}}\\n' 'http://productpage:9080/productpage?r=[1-20]'; \
               i=$((i + 1)); \
             done"
        );
        let out = enter(&ns, &client, &script).stdout;
        (out, Instant::now())
    });
    std::thread::sleep(Duration::from_secs(1));
    let samples = [
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-reviews-80-20.yaml",
        "virtual-service-reviews-90-10.yaml",
        "virtual-service-reviews-50-v3.yaml",
        "virtual-service-reviews-v3.yaml",
        "virtual-service-all-v1.yaml",
    ];
    let started = Instant::now();
    for sample in samples {
        std::thread::sleep(Duration::from_millis(700));
        b.apply(sample);
    }
    let switched = started.elapsed();
    let (codes, load_ended) = load.join().expect("the load finished");
    // The load must have spanned every switch, or the test proves nothing.
    assert!(
        load_ended.duration_since(started) > switched,
        "the load ended {:?} after the first switch, before the last ({switched:?}): raise `seconds`",
        load_ended.duration_since(started)
    );
    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    for code in codes.lines() {
        *by_code.entry(code).or_default() += 1;
    }
    eprintln!("{} switches in {switched:?}; answers: {by_code:?}", samples.len());
    let total: usize = by_code.values().sum();
    assert!(total >= 200, "too few requests to prove anything: {by_code:?}");
    assert_eq!(by_code.get("200").copied(), Some(total), "every request answered 200: {by_code:?}");
    assert_eq!(
        total_metric(&b.release.namespace, "mesh_xds_nacks_total"),
        0.0,
        "Envoy refused some configuration"
    );
}

/// What the client's Envoy has of reviews' clusters (`outbound|9080|<subset>|reviews.<ns>...`):
/// the load balancer of each active one (Envoy's JSON leaves the default,
/// ROUND_ROBIN, out), and the names of those warming.
fn reviews_clusters(b: &Bookinfo) -> (BTreeMap<String, String>, Vec<String>) {
    let script = "curl -s -m 2 'http://127.0.0.1:15000/config_dump?resource=dynamic_active_clusters'; \
                  echo; echo '--- warming'; \
                  curl -s -m 2 'http://127.0.0.1:15000/config_dump?resource=dynamic_warming_clusters'";
    let out = enter(&b.ns.name, &b.client, script).stdout;
    let (active, warming) = out.split_once("\n--- warming\n").unwrap_or((&out, ""));
    let reviews = format!("|reviews.{}.", b.ns.name);
    let clusters = |text: &str| -> Vec<serde_json::Value> {
        let dump: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["cluster"].clone())
            .filter(|c| c["name"].as_str().is_some_and(|n| n.contains(&reviews)))
            .collect()
    };
    let active = clusters(active)
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            (name, c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN").to_string())
        })
        .collect();
    let warming =
        clusters(warming).iter().map(|c| c["name"].as_str().unwrap_or_default().to_string()).collect();
    (active, warming)
}

/// The issue this guards: Envoy builds a changed EDS cluster anew and
/// warms it by waiting for its endpoints; a server that sends only
/// changed endpoints leaves it warming for Envoy's initial fetch timeout
/// (15 s). Here reviews' four clusters (the service's and its subsets')
/// switch load balancer, RANDOM -> consistent hash on a header -> RANDOM,
/// three rounds, and each time the client's Envoy must have all four
/// active with the new policy, none warming, within a second of
/// `kubectl apply`; and its traffic must follow: 30 requests with one
/// header value all reach one reviews version under the hash, more than
/// one under RANDOM (the chance that RANDOM picks one version 30 times out
/// of three is 3^-29).
#[test]
fn a_changed_cluster_reaches_envoy_and_its_traffic_within_a_second() {
    let b = Bookinfo::start("mesh-e2e-warming");
    let random = std::fs::read_to_string(conformance().join("networking/destination-rule-reviews.yaml"))
        .expect("Istio's destination-rule-reviews.yaml");
    assert!(random.contains("simple: RANDOM"), "the sample changed:\n{random}");
    let hashed = random.replace("simple: RANDOM", "consistentHash:\n        httpHeaderName: x-user");

    // Versions that answered 30 requests carrying the same x-user.
    let sample = || {
        let script = "curl -s -m 10 -H 'x-user: jason' 'http://reviews:9080/reviews/[1-30]' \
                      | grep -o 'reviews-v[123]'";
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for version in enter(&b.ns.name, &b.client, script).stdout.lines() {
            *counts.entry(version.to_string()).or_default() += 1;
        }
        counts
    };
    let follows = |counts: &BTreeMap<String, usize>, policy: &str| {
        counts.values().sum::<usize>() == 30 && (counts.len() == 1) == (policy == "RING_HASH")
    };
    let applied = |policy: &str| {
        let (active, warming) = reviews_clusters(&b);
        (active.len() == 4 && active.values().all(|p| p == policy) && warming.is_empty())
            .then_some((active, warming))
    };

    // Server-side: a client-side apply of a custom resource first reads
    // the API server's whole OpenAPI v2 document (1.3 s here), which would
    // be measured as the mesh's time.
    let apply = |yaml: &str| {
        kubectl_ok(
            &["apply", "--server-side", "--field-manager=e2e", "-n", &b.ns.name, "-f", "-"],
            Some(yaml),
        );
    };
    apply(&random);
    eventually("reviews' clusters RANDOM in the client's Envoy", Duration::from_secs(30), || {
        applied("RANDOM")
    });
    eventually("traffic spread over reviews' versions", Duration::from_secs(30), || {
        follows(&sample(), "RANDOM").then_some(())
    });

    let mut slowest = Duration::ZERO;
    for round in 1..=3 {
        for (yaml, policy) in [(&hashed, "RING_HASH"), (&random, "RANDOM")] {
            let started = Instant::now();
            apply(yaml);
            let stored = started.elapsed();
            let (active, _) = eventually(
                &format!("round {round}: reviews' clusters {policy} and active"),
                Duration::from_secs(30),
                || applied(policy),
            );
            let config = started.elapsed();
            let counts = eventually(
                &format!("round {round}: traffic following {policy}"),
                Duration::from_secs(30),
                || Some(sample()).filter(|c| follows(c, policy)),
            );
            let traffic = started.elapsed();
            eprintln!(
                "round {round}: {policy}: applied in {stored:?}, config dump after {config:?}, \
                 traffic after {traffic:?} ({counts:?}); clusters {:?}",
                active.keys().collect::<Vec<_>>()
            );
            slowest = slowest.max(config).max(traffic);
            assert!(config < Duration::from_secs(1), "round {round}: {policy} took {config:?} to be active");
            assert!(
                traffic < Duration::from_secs(1),
                "round {round}: traffic took {traffic:?} to follow {policy}"
            );
        }
    }
    eprintln!("slowest: {slowest:?}");
    assert_eq!(
        total_metric(&b.release.namespace, "mesh_xds_nacks_total"),
        0.0,
        "Envoy refused some configuration"
    );
}
