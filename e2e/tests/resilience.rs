//! Route resilience on real traffic: VirtualService `fault`, `timeout`,
//! `retries` (and Istio's default retry policy) and mirroring, each seen
//! by a real client and counted by a real server, through the client
//! pod's Envoy.
//!
//! - Istio's fault-injection task with its Bookinfo samples unmodified:
//!   a 7 s delay on ratings for jason exceeds productpage's own timeout
//!   (3 s and one retry), so his page says reviews are unavailable after
//!   about 6 s; an abort (HTTP 500) shows him that ratings are unavailable;
//!   other users see the page as before.
//! - A route timeout shorter than a delay injected further down (Istio's
//!   request-timeouts task): 504 before the delay is over.
//! - Retries: `flaky` (a Bookinfo stand-in role) fails the first N
//!   requests per key and counts them, so the test sees how many attempts
//!   Envoy made under Istio's default policy, `attempts` over N, `attempts`
//!   under N, and `attempts: 0`.
//! - Mirroring (Istio's mirroring task shape, the real go-httpbin as v1
//!   and v2): every request is answered by v1 and a copy reaches v2, all
//!   of them at `mirrorPercentage: 100`, half (±5 points over 1,000) at 50,
//!   a quarter with `mirrors` at 25, as the servers' own logs count them.

use std::time::{Duration, Instant};

use crate::support::{
    Applied, Release, TempNamespace, conformance, container_log, enter, eventually, injected_bookinfo,
    kubectl_ok, pod_named, rollout,
};

/// Bookinfo injected in a namespace of its own, with the chart installed;
/// requests leave from the productpage pod, through its Envoy.
struct Mesh {
    _release: Release,
    ns: TempNamespace,
    client: String,
}

impl Mesh {
    fn start(release_ns: &str) -> Self {
        let release = Release::install(release_ns, &[]);
        let ns = injected_bookinfo("resilience");
        let client = pod_named(&ns.name, "app=productpage");
        Self { _release: release, ns, client }
    }

    fn sample(&self, name: &str) {
        let file = conformance().join("networking").join(name);
        kubectl_ok(&["apply", "-n", &self.ns.name, "-f", file.to_str().expect("utf-8")], None);
    }

    fn apply(&self, yaml: &str) -> Applied {
        Applied::new(&self.ns.name, yaml)
    }

    /// Runs a script in the client pod; its output.
    fn client(&self, script: &str) -> String {
        let out = enter(&self.ns.name, &self.client, script);
        assert!(out.ok, "{script}: {}", out.stderr);
        out.stdout
    }

    /// A GET from the client pod: status and seconds taken, as curl saw them.
    fn timed_get(&self, url: &str, args: &str) -> (u16, f64) {
        let out = self.client(&format!(
            "curl -s -m 30 {args} -o /dev/null -w '%{{http_code}} %{{time_total}}' '{url}'"
        ));
        let (code, secs) = out.trim().split_once(' ').unwrap_or(("0", "0"));
        (code.parse().unwrap_or(0), secs.parse().unwrap_or(0.0))
    }

    /// The product page as `user` sees it (signed in by the `user` cookie,
    /// which productpage passes on as `end-user`), and seconds it took.
    fn page(&self, user: Option<&str>) -> (String, f64) {
        let cookie = user.map(|u| format!("-b 'user={u}'")).unwrap_or_default();
        let start = Instant::now();
        let body = self.client(&format!("curl -s -m 30 {cookie} 'http://productpage:9080/productpage'"));
        (body, start.elapsed().as_secs_f64())
    }

    /// Workloads of our own in the namespace, Ready with their sidecars.
    fn deploy(&self, yaml: &str) {
        kubectl_ok(&["apply", "-n", &self.ns.name, "-f", "-"], Some(yaml));
        rollout(&self.ns.name);
        kubectl_ok(
            &["wait", "-n", &self.ns.name, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
            None,
        );
    }

    /// Waits until the client's Envoy holds a route configuration
    /// containing `text` (its /config_dump, from the admin port).
    fn envoy_routes_contain(&self, what: &str, text: &str) {
        eventually(what, Duration::from_secs(30), || {
            let dump =
                self.client("curl -s 'http://127.0.0.1:15000/config_dump?resource=dynamic_route_configs'");
            dump.contains(text).then_some(())
        });
    }
}

const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

fn answered_by(page: &str) -> Option<&'static str> {
    ["reviews-v1", "reviews-v2", "reviews-v3"]
        .into_iter()
        .find(|v| page.contains(&format!("reviews-podname\">{v}")))
}

#[test]
fn istios_fault_injection_task_delays_and_aborts_only_jason() {
    let m = Mesh::start("mesh-e2e-fault");
    m.sample("destination-rule-all.yaml");
    m.sample("virtual-service-all-v1.yaml");
    m.sample("virtual-service-reviews-test-v2.yaml");
    eventually("jason's page from reviews-v2 with stars", Duration::from_secs(60), || {
        let (page, _) = m.page(Some("jason"));
        (answered_by(&page) == Some("reviews-v2") && page.contains('★')).then_some(())
    });

    // A 7 s delay on ratings, for jason only. Reviews waits for ratings up
    // to 10 s, but productpage gives reviews 3 s and one more try: after
    // about 6 s, the reviews section says it is unavailable.
    m.sample("virtual-service-ratings-test-delay.yaml");
    eventually("jason's reviews section failing", Duration::from_secs(90), || {
        m.page(Some("jason")).0.contains(REVIEWS_UNAVAILABLE).then_some(())
    });
    let (page, secs) = m.page(Some("jason"));
    assert!(page.contains(REVIEWS_UNAVAILABLE), "{page}");
    assert!(page.contains("The Comedy of Errors"), "the page itself still renders:\n{page}");
    assert!(
        (5.5..7.0).contains(&secs),
        "productpage gives up after its 3 s + 3 s, not the 7 s delay: {secs:.2} s"
    );
    for _ in 0..3 {
        let (page, secs) = m.page(None);
        assert_eq!(answered_by(&page), Some("reviews-v1"), "others are unaffected:\n{page}");
        assert!(!page.contains(REVIEWS_UNAVAILABLE), "{page}");
        assert!(secs < 3.0, "others are not delayed: {secs:.2} s");
    }

    // An HTTP 500 from ratings, for jason only: his reviews say ratings
    // are unavailable, at once.
    m.sample("virtual-service-ratings-test-abort.yaml");
    eventually("jason's ratings unavailable", Duration::from_secs(90), || {
        m.page(Some("jason")).0.contains(RATINGS_UNAVAILABLE).then_some(())
    });
    // The first such page may have met the delay on productpage's first
    // try of reviews: the ones after it meet only the abort.
    for _ in 0..3 {
        let (page, secs) = m.page(Some("jason"));
        assert!(page.contains(RATINGS_UNAVAILABLE), "{page}");
        assert_eq!(answered_by(&page), Some("reviews-v2"), "{page}");
        assert!(!page.contains(REVIEWS_UNAVAILABLE), "reviews itself answers:\n{page}");
        assert!(secs < 3.0, "an abort is immediate: {secs:.2} s");
    }
    for _ in 0..3 {
        let (page, _) = m.page(None);
        assert_eq!(answered_by(&page), Some("reviews-v1"), "others are unaffected:\n{page}");
        assert!(!page.contains(RATINGS_UNAVAILABLE) && !page.contains(REVIEWS_UNAVAILABLE), "{page}");
    }
}

/// Istio's request-timeouts task: ratings delayed 2 s, reviews v2 (which
/// calls ratings) given 0.5 s.
const RATINGS_DELAYED: &str = "
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
";

const REVIEWS_V2: &str = "
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
";

#[test]
fn a_route_timeout_shorter_than_an_injected_delay_fails_fast() {
    let m = Mesh::start("mesh-e2e-timeout");
    m.sample("destination-rule-all.yaml");
    let _ratings = m.apply(RATINGS_DELAYED);
    let _reviews = m.apply(REVIEWS_V2);

    // No timeout: reviews v2 answers, after the 2 s ratings delay.
    let url = "http://reviews:9080/reviews/0";
    let secs = eventually("reviews v2 slowed by the ratings delay", Duration::from_secs(60), || {
        let (code, secs) = m.timed_get(url, "");
        (code == 200 && secs >= 2.0).then_some(secs)
    });
    assert!(secs < 4.0, "one delay of 2 s: {secs:.2} s");

    // Half a second for the whole request: 504 from the caller's Envoy,
    // well before the delay is over.
    let _timeout = m.apply(&format!("{REVIEWS_V2}    timeout: 0.5s\n"));
    eventually("the 0.5 s timeout", Duration::from_secs(60), || {
        (m.timed_get(url, "").0 == 504).then_some(())
    });
    for _ in 0..5 {
        let (code, secs) = m.timed_get(url, "");
        assert_eq!(code, 504);
        assert!((0.45..1.5).contains(&secs), "the timeout cuts the 2 s delay: {secs:.2} s");
    }
}

const FLAKY: &str = "
apiVersion: v1
kind: Service
metadata:
  name: flaky
  labels:
    app: flaky
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: flaky
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: flaky-v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: flaky
      version: v1
  template:
    metadata:
      labels:
        app: flaky
        version: v1
    spec:
      containers:
      - name: flaky
        image: docker.io/mesh-project/e2e-flaky:latest
        ports:
        - containerPort: 9080
";

fn flaky_retries(retries: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: flaky
spec:
  hosts:
  - flaky
  http:
  - route:
    - destination:
        host: flaky
    retries:
{retries}"
    )
}

impl Mesh {
    /// Asks flaky to fail the first `failures` requests for a fresh key;
    /// the status the client saw and the attempts flaky counted.
    fn flaky(&self, failures: u32, key: &str) -> (u16, u64) {
        let out = self.client(&format!(
            "curl -s -m 30 -o /dev/null -w '%{{http_code}}\\n' http://flaky:9080/fail/{failures}/{key}; \
             curl -s -m 10 http://flaky:9080/count/{key}"
        ));
        let mut lines = out.lines();
        let code = lines.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        let count = lines.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        (code, count)
    }

    /// Waits until fresh keys get `expected` (status, attempts), then
    /// checks five more.
    fn flaky_settles(&self, what: &str, failures: u32, expected: (u16, u64)) {
        let mut n = 0;
        eventually(what, Duration::from_secs(30), || {
            n += 1;
            (self.flaky(failures, &format!("{what}-{n}").replace(' ', "-")) == expected).then_some(())
        });
        for i in 0..5 {
            let key = format!("{what}-check-{i}").replace(' ', "-");
            assert_eq!(self.flaky(failures, &key), expected, "{what}: (status, attempts) for {key}");
        }
    }
}

#[test]
fn retries_hide_a_server_that_fails_its_first_attempts() {
    let m = Mesh::start("mesh-e2e-retries");
    m.deploy(FLAKY);

    // No VirtualService: Istio's default policy, 2 retries on 503.
    m.flaky_settles("default", 1, (200, 2));
    m.flaky_settles("default exhausted", 3, (503, 3));

    // 3 retries on the status code 503 (retryOn with a code, as Istio
    // allows): 3 failures are hidden, the 4th attempt answers.
    let _vs = m.apply(&flaky_retries("      attempts: 3\n      retryOn: \"503\"\n      perTryTimeout: 2s\n"));
    m.flaky_settles("three retries", 3, (200, 4));

    // Fewer retries than failures: the client sees the failure, after
    // attempts + 1 tries.
    let _vs = m.apply(&flaky_retries("      attempts: 1\n      retryOn: 5xx\n"));
    m.flaky_settles("one retry", 3, (503, 2));

    // attempts: 0 turns retries off, the default policy included.
    let _vs = m.apply(&flaky_retries("      attempts: 0\n"));
    m.flaky_settles("no retry", 1, (503, 1));
}

/// Istio's mirroring task: httpbin v1 and v2 (the real go-httpbin) behind
/// one Service.
const HTTPBIN: &str = "
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
spec:
  ports:
  - name: http
    port: 8000
    targetPort: 8080
  selector:
    app: httpbin
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v1
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        name: httpbin
        args: [\"-port\", \"8080\", \"-max-duration\", \"600s\"]
        ports:
        - containerPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin-v2
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v2
  template:
    metadata:
      labels:
        app: httpbin
        version: v2
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        name: httpbin
        args: [\"-port\", \"8080\", \"-max-duration\", \"600s\"]
        ports:
        - containerPort: 8080
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

fn httpbin_mirrored(percentage: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: {percentage}
"
    )
}

impl Mesh {
    /// How many requests for paths starting `/anything/<tag>-` a pod's
    /// httpbin logged.
    fn logged(&self, pod: &str, tag: &str) -> usize {
        let needle = format!("uri=/anything/{tag}-");
        container_log(&self.ns.name, pod, "httpbin").lines().filter(|l| l.contains(&needle)).count()
    }

    /// Sends `n` GETs for `/anything/<tag>-<i>` from the client; every
    /// status code, in order.
    fn send(&self, tag: &str, n: usize) -> Vec<String> {
        let out = self.client(&format!(
            "curl -s -m 120 -o /dev/null -w '%{{http_code}}\\n' 'http://httpbin:8000/anything/{tag}-[1-{n}]'"
        ));
        out.lines().map(str::to_string).collect()
    }

    /// The count `logged` settles at: unchanged for a second, within 20 s.
    fn settled(&self, pod: &str, tag: &str) -> usize {
        let mut last = usize::MAX;
        eventually(&format!("{pod}'s count of {tag} to settle"), Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(900));
            let now = self.logged(pod, tag);
            let done = now == last;
            last = now;
            done.then_some(now)
        })
    }
}

#[test]
fn mirroring_copies_requests_to_v2_while_v1_answers() {
    let m = Mesh::start("mesh-e2e-mirror");
    m.deploy(HTTPBIN);
    let v1 = pod_named(&m.ns.name, "app=httpbin,version=v1");
    let v2 = pod_named(&m.ns.name, "app=httpbin,version=v2");

    // Istio's task: everything to v1, all of it mirrored to v2.
    let _vs = m.apply(&httpbin_mirrored("100.0"));
    let mut probe = 0;
    eventually("a first copy at v2", Duration::from_secs(60), || {
        probe += 1;
        let tag = format!("probe{probe}");
        m.send(&tag, 1);
        std::thread::sleep(Duration::from_millis(200));
        (m.logged(&v2, &tag) == 1).then_some(())
    });
    let codes = m.send("all", 100);
    assert_eq!(codes.len(), 100);
    assert!(codes.iter().all(|c| c == "200"), "every request answered: {codes:?}");
    assert_eq!(m.settled(&v1, "all"), 100, "v1 answers every request");
    assert_eq!(m.settled(&v2, "all"), 100, "v2 gets a copy of each");

    const REQUESTS: usize = 1000;
    // Half of them: 50% ±5 points over 1,000 requests (the share is drawn
    // per request: over 400 a 5-point miss would come once in 20 runs).
    let _vs = m.apply(&httpbin_mirrored("50"));
    m.envoy_routes_contain("the 50% mirror in the client's Envoy", "\"numerator\": 500000");
    let codes = m.send("half", REQUESTS);
    assert!(codes.len() == REQUESTS && codes.iter().all(|c| c == "200"), "every request answered: {codes:?}");
    assert_eq!(m.settled(&v1, "half"), REQUESTS, "v1 answers every request");
    let copies = m.settled(&v2, "half");
    assert!((450..=550).contains(&copies), "50% ±5 points of {REQUESTS} copied to v2: {copies}");

    // `mirrors`, each with its own share: a quarter to v2.
    let _vs = m.apply(&format!(
        "{}    mirrors:\n    - destination:\n        host: httpbin\n        subset: v2\n      percentage:\n        value: 25\n",
        httpbin_mirrored("50").split("    mirror:").next().expect("the route")
    ));
    m.envoy_routes_contain("the 25% mirror in the client's Envoy", "\"numerator\": 250000");
    let codes = m.send("quarter", REQUESTS);
    assert!(codes.len() == REQUESTS && codes.iter().all(|c| c == "200"), "every request answered: {codes:?}");
    assert_eq!(m.settled(&v1, "quarter"), REQUESTS, "v1 answers every request");
    let copies = m.settled(&v2, "quarter");
    assert!((200..=300).contains(&copies), "25% ±5 points of {REQUESTS} copied to v2: {copies}");
}
