//! Istio 1.1's role-based access control (`rbac.istio.io/v1alpha1`) on real
//! traffic: Istio's own Bookinfo RBAC samples, applied unmodified with
//! kubectl, do what Istio's "Authorization for HTTP services" and
//! "Authorization permissive mode" tasks say, seen in the pages the
//! stand-ins render and in Envoy's RBAC counters; a plain TCP service
//! (tcp-echo) answers only the ServiceAccount its binding names; and
//! policies applied and removed under steady load never deny a request that
//! both the old and the new policy allow, nor allow one that both deny.
//!
//! Where: the samples name namespace `default` (in service names, in
//! `cluster.local/ns/default/sa/...`, in `source.namespace`), so Bookinfo
//! runs in `default`, as in Istio's tasks, and the client is an injected
//! `sleep` pod there (Istio's tasks use the ingress gateway, which is in
//! `istio-system`, the namespace-policy's other subject). That is safe
//! because e2e.sh runs the tests one at a time (`--test-threads=1`) and no
//! other test puts pods in `default`; each test here removes what it put
//! there, and waits until its pods are gone. ClusterRbacConfig is a
//! cluster-wide singleton (`default`) for the same reason: only one test
//! holds it at a time, and each removes it. The TCP test needs no sample,
//! so it runs in a namespace of its own, with a ClusterRbacConfig that
//! includes only that namespace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{
    Release, TempNamespace, apply, conformance, enter, eventually, kubectl, kubectl_ok, repo,
};

/// Envoy's answer to a request its RBAC filter denies.
const DENIED_BODY: &str = "RBAC: access denied";

/// What the stand-ins render (e2e/bookinfo/src/productpage.rs).
const DETAILS_OK: &str = "<dd id=\"details-author\">William Shakespeare</dd>";
const DETAILS_ERROR: &str = "Error fetching product details!";
const REVIEWS_OK: &str = "<dd id=\"reviews-podname\">reviews-v";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Ratings service is currently unavailable";
const STAR: char = '★';

/// One of Istio's RBAC samples (`bookinfo/rbac/<file>`), applied as it is;
/// deleted on drop unless deleted before.
struct Sample {
    path: String,
    deleted: bool,
}

impl Sample {
    fn apply(file: &str) -> Self {
        let path = conformance().join("rbac").join(file);
        let path = path.to_str().expect("utf-8 path").to_string();
        kubectl_ok(&["apply", "-f", &path], None);
        Self { path, deleted: false }
    }

    fn delete(mut self) {
        kubectl_ok(&["delete", "-f", &self.path, "--ignore-not-found"], None);
        self.deleted = true;
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = kubectl(&["delete", "-f", &self.path, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

/// YAML of our own, applied as it is (cluster-scoped or naming its
/// namespace); deleted on drop.
struct Applied(String);

impl Applied {
    fn new(yaml: &str) -> Self {
        kubectl_ok(&["apply", "-f", "-"], Some(yaml));
        Self(yaml.to_string())
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", "-"], Some(&self.0));
    }
}

const SLEEP: &str = "apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, labels: {app: sleep}}
spec:
  serviceAccountName: sleep
  containers:
  - {name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}
";

/// Bookinfo, unmodified, injected in `default`, with an injected `sleep`
/// pod to call it from. On drop it is removed, its pods waited for, and
/// the namespace's injection label taken off again.
struct DefaultBookinfo {
    file: String,
}

/// An HTTP answer: status (0 when there was none) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn denied(&self) -> bool {
        self.status == 403 && self.body.trim() == DENIED_BODY
    }

    /// The product page with details and reviews, and no part unavailable.
    fn full(&self) -> bool {
        self.status == 200
            && self.body.contains(DETAILS_OK)
            && self.body.contains(REVIEWS_OK)
            && !self.body.contains(RATINGS_ERROR)
    }

    fn stars(&self) -> bool {
        self.body.contains(STAR)
    }

    /// A short account for a failure message.
    fn summary(&self) -> String {
        let has = |s: &str| if self.body.contains(s) { "yes" } else { "no" };
        format!(
            "status {}, details {}, details error {}, reviews {}, reviews error {}, stars {}, ratings error {}; body starts {:?}",
            self.status,
            has(DETAILS_OK),
            has(DETAILS_ERROR),
            has(REVIEWS_OK),
            has(REVIEWS_ERROR),
            if self.stars() { "yes" } else { "no" },
            has(RATINGS_ERROR),
            self.body.chars().take(120).collect::<String>()
        )
    }
}

impl DefaultBookinfo {
    fn deploy() -> Self {
        kubectl_ok(&["label", "namespace", "default", "istio-injection=enabled", "--overwrite"], None);
        let file = conformance().join("platform/bookinfo.yaml");
        let file = file.to_str().expect("utf-8 path").to_string();
        // From here on, drop cleans up whatever got created.
        let bookinfo = Self { file };
        kubectl_ok(&["apply", "-n", "default", "-f", &bookinfo.file], None);
        apply("default", SLEEP);
        kubectl_ok(&["rollout", "status", "deployment", "-n", "default", "--timeout=180s"], None);
        kubectl_ok(
            &["wait", "-n", "default", "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
            None,
        );
        bookinfo
    }

    /// GETs a path of productpage from the sleep pod, through its Envoy.
    fn get(&self, path: &str) -> Reply {
        curl("default", "sleep", &format!("'http://productpage:9080{path}'"))
    }

    fn page(&self) -> Reply {
        self.get("/productpage")
    }

    /// Waits for `n` pages in a row that `each` accepts, and returns them.
    /// A change reaches the connections Envoy already holds only as it
    /// drains them (`--drain-time-s` 45), so until then a request may still
    /// meet the old policy: the wait is longer than that, and how many
    /// pages met the old policy after the first met the new is logged.
    fn step(&self, what: &str, n: usize, each: impl Fn(&Reply) -> bool) -> Vec<Reply> {
        let started = Instant::now();
        let mut first_new: Option<Duration> = None;
        let mut old_after_new = 0;
        let mut run: Vec<Reply> = Vec::new();
        while run.len() < n {
            let page = self.page();
            if each(&page) {
                first_new.get_or_insert(started.elapsed());
                run.push(page);
                continue;
            }
            if first_new.is_some() {
                old_after_new += 1;
            }
            assert!(
                started.elapsed() < SETTLE,
                "{what}: not {n} pages in a row within {SETTLE:?}; the last page: {}",
                page.summary()
            );
            run.clear();
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "{what}: first page in {:?}, {n} in a row after {:?}; {old_after_new} pages not in the new state after the first that was",
            first_new.unwrap_or_default(),
            started.elapsed()
        );
        run
    }

    /// `n` pages, and how far each app's RBAC counters moved meanwhile.
    fn counted(&self, n: usize) -> (Vec<Reply>, BTreeMap<&'static str, RbacStats>) {
        let before = all_stats();
        let pages = (0..n).map(|_| self.page()).collect();
        (pages, deltas(&all_stats(), &before))
    }

    /// Batches of `n` pages, each of which must satisfy `each`, until the
    /// counters of one batch satisfy `settled` and no Bookinfo Envoy is
    /// still draining the filter chains a change replaced (a connection
    /// opened before the change still has the old ones, and counts there);
    /// returns that batch.
    fn counted_step(
        &self,
        what: &str,
        n: usize,
        each: impl Fn(&Reply) -> bool,
        settled: impl Fn(&BTreeMap<&'static str, RbacStats>) -> bool,
    ) -> (Vec<Reply>, BTreeMap<&'static str, RbacStats>) {
        let started = Instant::now();
        let mut counted_at = None;
        loop {
            let (pages, counted) = self.counted(n);
            for page in &pages {
                assert!(each(page), "{what}: {}", page.summary());
            }
            if settled(&counted) {
                counted_at.get_or_insert(started.elapsed());
                if draining() == 0.0 {
                    eprintln!(
                        "{what}: counted as expected after {:?}, no filter chain draining after {:?}",
                        counted_at.unwrap_or_default(),
                        started.elapsed()
                    );
                    return (pages, counted);
                }
            }
            assert!(
                started.elapsed() < SETTLE,
                "{what}: not counted, or still draining ({}), within {SETTLE:?}: {counted:?}",
                draining()
            );
        }
    }
}

/// Waits until no Bookinfo Envoy drains a filter chain a change replaced:
/// from then on every connection, pooled ones included, meets the change.
fn wait_drained(what: &str) {
    let started = Instant::now();
    while draining() > 0.0 {
        assert!(started.elapsed() < SETTLE, "{what}: still draining after {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The filter chains and listeners the Bookinfo pods' Envoys are draining.
fn draining() -> f64 {
    let names =
        kubectl_ok(&["get", "pods", "-n", "default", "-o", "jsonpath={.items[*].metadata.name}"], None);
    let mut total = 0.0;
    for pod in names.split_whitespace() {
        let out = enter("default", pod, "curl -sf -m 5 'http://127.0.0.1:15000/stats?filter=_draining$'");
        assert!(out.ok, "{pod}'s Envoy admin /stats: {}", out.stderr);
        let gauges: Vec<f64> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.starts_with("listener_manager.total_"))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .collect();
        // Envoy's own gauges: missing, the wait would prove nothing.
        assert!(!gauges.is_empty(), "{pod}'s Envoy has no listener_manager draining gauges: {}", out.stdout);
        total += gauges.iter().sum::<f64>();
    }
    total
}

/// How long a change may take to reach every connection: Envoy's drain
/// time (45 s) and some.
const SETTLE: Duration = Duration::from_secs(120);

/// Pages in a row that show a step is in effect.
const RUN: usize = 15;

fn is_v1(page: &Reply) -> bool {
    page.body.contains("reviews-podname\">reviews-v1")
}

impl Drop for DefaultBookinfo {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "-n", "default", "-f", "-", "--ignore-not-found"], Some(SLEEP));
        let _ = kubectl(&["delete", "-n", "default", "-f", &self.file, "--ignore-not-found"], None);
        let _ = kubectl(&["wait", "-n", "default", "--for=delete", "pods", "--all", "--timeout=120s"], None);
        let _ = kubectl(&["label", "namespace", "default", "istio-injection-"], None);
    }
}

/// curl with `args` in a pod (through its sidecar when it has one).
fn curl(namespace: &str, pod: &str, args: &str) -> Reply {
    let out = enter(namespace, pod, &format!("curl -s -m 20 -w '\\n%{{http_code}}' {args}"));
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    Reply { status: status.trim().parse().unwrap_or(0), body: body.to_string() }
}

/// A pod without a sidecar, in a namespace of its own.
struct PlainClient {
    ns: TempNamespace,
}

impl PlainClient {
    fn start() -> Self {
        let ns = TempNamespace::new("authz-plain");
        apply(
            &ns.name,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep}\nspec:\n  containers:\n  - {name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}\n",
        );
        kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/sleep", "--timeout=60s"], None);
        Self { ns }
    }

    fn page(&self) -> Reply {
        curl(&self.ns.name, "sleep", "http://productpage.default:9080/productpage")
    }
}

/// The RBAC filters' counters in a pod's Envoy (admin /stats), summed over
/// its listeners, whatever their stat prefixes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct RbacStats {
    allowed: f64,
    denied: f64,
    shadow_allowed: f64,
    shadow_denied: f64,
}

impl RbacStats {
    fn of(namespace: &str, pod: &str) -> Self {
        let out = enter(namespace, pod, "curl -sf -m 5 'http://127.0.0.1:15000/stats?filter=rbac'");
        assert!(out.ok, "{pod}'s Envoy admin /stats: {}", out.stderr);
        let mut stats = Self::default();
        for line in out.stdout.lines() {
            let Some((name, value)) = line.split_once(": ") else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            // `http.<prefix>.rbac.shadow_denied`, `<prefix>.rbac.denied`, and
            // with a rules prefix `...rbac.<prefix>shadow_denied`.
            let Some((_, counter)) = name.rsplit_once("rbac.") else { continue };
            if counter.ends_with("shadow_denied") {
                stats.shadow_denied += value;
            } else if counter.ends_with("shadow_allowed") {
                stats.shadow_allowed += value;
            } else if counter.ends_with("denied") {
                stats.denied += value;
            } else if counter.ends_with("allowed") {
                stats.allowed += value;
            }
        }
        stats
    }

    /// Summed over the pods of a label selector in `default`.
    fn of_app(selector: &str) -> Self {
        let names = kubectl_ok(
            &["get", "pods", "-n", "default", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"],
            None,
        );
        let pods: Vec<&str> = names.split_whitespace().collect();
        assert!(!pods.is_empty(), "no pod {selector} in default");
        pods.iter().map(|pod| Self::of("default", pod)).fold(Self::default(), |a, b| Self {
            allowed: a.allowed + b.allowed,
            denied: a.denied + b.denied,
            shadow_allowed: a.shadow_allowed + b.shadow_allowed,
            shadow_denied: a.shadow_denied + b.shadow_denied,
        })
    }

    fn minus(self, before: Self) -> Self {
        Self {
            allowed: self.allowed - before.allowed,
            denied: self.denied - before.denied,
            shadow_allowed: self.shadow_allowed - before.shadow_allowed,
            shadow_denied: self.shadow_denied - before.shadow_denied,
        }
    }
}

/// The enforcing points of Bookinfo, by label selector.
const APPS: [&str; 4] = ["app=productpage", "app=details", "app=reviews", "app=ratings"];

fn all_stats() -> BTreeMap<&'static str, RbacStats> {
    APPS.iter().map(|app| (*app, RbacStats::of_app(app))).collect()
}

fn deltas(
    after: &BTreeMap<&'static str, RbacStats>,
    before: &BTreeMap<&'static str, RbacStats>,
) -> BTreeMap<&'static str, RbacStats> {
    after.iter().map(|(app, stats)| (*app, stats.minus(before[app]))).collect()
}

#[test]
fn istio_1_1_authorization_for_http_services_step_by_step() {
    let release = Release::install("mesh-e2e-authz-http", &[]);
    let bookinfo = DefaultBookinfo::deploy();
    let plain = PlainClient::start();
    bookinfo.step("the page before authorization", 3, Reply::full);

    // Authorization on for `default`, and nothing allowed yet.
    let rbac_on = Sample::apply("rbac-config-ON.yaml");
    let pages = bookinfo.step("rbac-config-ON.yaml: productpage denied", RUN, Reply::denied);
    assert_eq!(pages[0].body, DENIED_BODY, "Envoy's denial, exactly");
    assert!(plain.page().denied(), "an uninjected client is denied too");

    // Everyone in `default` (and `istio-system`) may GET every service.
    let namespace = Sample::apply("namespace-policy.yaml");
    let pages = bookinfo.step("namespace-policy.yaml: the pages render", RUN, Reply::full);
    assert!(pages.iter().any(Reply::stars), "no page with stars in {RUN} (reviews v2 and v3 call ratings)");
    // The subject is a namespace, proven by mutual TLS: a caller without a
    // sidecar has none.
    wait_drained("the uninjected client's page");
    let outside = plain.page();
    assert!(outside.denied(), "an uninjected client under namespace-policy: {}", outside.summary());
    // Any other method is not in the role.
    let post = curl("default", "sleep", "-d username=jason http://productpage:9080/login");
    assert!(post.denied(), "POST under a GET-only role: {}", post.summary());
    namespace.delete();
    bookinfo.step("namespace-policy.yaml deleted: denied again", RUN, Reply::denied);

    // productpage alone: it renders, but cannot reach details or reviews.
    let productpage = Sample::apply("productpage-policy.yaml");
    let only_productpage =
        |p: &Reply| p.status == 200 && p.body.contains(DETAILS_ERROR) && p.body.contains(REVIEWS_ERROR);
    bookinfo.step("productpage-policy.yaml: details and reviews fail", RUN, only_productpage);
    // `user: "*"` is anyone, with or without an identity.
    wait_drained("the uninjected client's page");
    let outside = plain.page();
    assert!(only_productpage(&outside), "an uninjected client under user \"*\": {}", outside.summary());

    // productpage's ServiceAccount may GET details and reviews; ratings
    // still refuses reviews: v2 and v3 say so, v1 calls no ratings.
    let details_reviews = Sample::apply("details-reviews-policy.yaml");
    let no_ratings = |p: &Reply| {
        p.status == 200
            && p.body.contains(DETAILS_OK)
            && p.body.contains(REVIEWS_OK)
            && !p.stars()
            && p.body.contains(RATINGS_ERROR) != is_v1(p)
    };
    let pages = bookinfo.step("details-reviews-policy.yaml: ratings unavailable", RUN, no_ratings);
    assert!(pages.iter().any(|p| p.body.contains(RATINGS_ERROR)), "no page from reviews v2 or v3 in {RUN}");

    // reviews' ServiceAccount may GET ratings: the stars are back.
    let ratings = Sample::apply("ratings-policy.yaml");
    let stars = |p: &Reply| p.full() && p.stars() != is_v1(p);
    let pages = bookinfo.step("ratings-policy.yaml: the stars again", RUN, stars);
    assert!(pages.iter().any(Reply::stars), "no page with stars in {RUN}");

    // `mesh proxy-config authz` shows what details' sidecar enforces: the
    // role its binding grants, on both chains of its port.
    let viewer = crate::support::DebugViewer::bound_to("mesh-debug");
    let details = kubectl_ok(
        &["get", "pods", "-n", "default", "-l", "app=details", "-o", "jsonpath={.items[0].metadata.name}"],
        None,
    );
    let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
    let args = ["proxy-config", "authz", &format!("default/{}", details.trim()), "--controller"];
    let controllers = crate::support::controllers(&release.namespace).join(",");
    let table =
        crate::support::run(&bin, &[&args[..], &[&controllers, "--token", &viewer.token]].concat(), None);
    assert!(table.ok, "{}", table.stderr);
    let rows: Vec<&str> = table.stdout.lines().filter(|l| l.starts_with("9080 ")).collect();
    assert_eq!(rows.len(), 2, "mutual TLS and plaintext chains of 9080:\n{}", table.stdout);
    assert!(
        rows.iter().all(|r| r.contains("http") && r.contains("details-reviews-viewer")),
        "{}",
        table.stdout
    );

    // Every policy removed: denied; then authorization off: open again.
    ratings.delete();
    details_reviews.delete();
    productpage.delete();
    bookinfo.step("every policy deleted: denied", RUN, Reply::denied);
    rbac_on.delete();
    bookinfo.step("authorization off again", RUN, Reply::full);
    wait_drained("the uninjected client's page");
    let outside = plain.page();
    assert!(outside.full(), "an uninjected client once authorization is off: {}", outside.summary());
}

#[test]
fn permissive_mode_lets_requests_through_and_counts_what_would_be_denied() {
    let _release = Release::install("mesh-e2e-authz-permissive", &[]);
    let bookinfo = DefaultBookinfo::deploy();
    bookinfo.step("the page before authorization", 3, Reply::full);
    const PAGES: usize = 10;
    let n = PAGES as f64;

    // Istio's "Test enabling authorization globally": with the global
    // config PERMISSIVE every request goes through (while it comes in,
    // too), and each one that enforcement would deny (all: no policy
    // yet) is counted by every service's Envoy.
    let config = Sample::apply("rbac-config-on-permissive.yaml");
    let all_shadow_denied = |c: &BTreeMap<&'static str, RbacStats>| {
        ["app=productpage", "app=details", "app=reviews"].iter().all(|app| c[app].shadow_denied >= n)
    };
    bookinfo.counted_step("rbac-config-on-permissive.yaml", PAGES, Reply::full, all_shadow_denied);
    let (pages, counted) = bookinfo.counted(PAGES);
    for page in &pages {
        assert!(page.full(), "a request under global PERMISSIVE: {}", page.summary());
    }
    assert!(pages.iter().any(Reply::stars), "no page with stars in {PAGES}");
    let with_stars = pages.iter().filter(|p| p.stars()).count() as f64;
    for (app, at_least) in
        [("app=productpage", n), ("app=details", n), ("app=reviews", n), ("app=ratings", with_stars)]
    {
        let c = counted[app];
        assert!(
            c.shadow_denied >= at_least,
            "{app}: shadow_denied rose by {}, want >= {at_least}: {counted:?}",
            c.shadow_denied
        );
        assert_eq!((c.denied, c.allowed), (0.0, 0.0), "{app}: nothing is enforced: {counted:?}");
        assert_eq!(c.shadow_allowed, 0.0, "{app}: no policy allows anything: {counted:?}");
    }

    // productpage-policy.yaml under global PERMISSIVE: productpage's
    // requests would now be allowed; details' still would not.
    let productpage = Sample::apply("productpage-policy.yaml");
    let productpage_shadow_allowed = |c: &BTreeMap<&'static str, RbacStats>| {
        c["app=productpage"].shadow_allowed >= n && c["app=productpage"].shadow_denied == 0.0
    };
    bookinfo.counted_step(
        "productpage-policy.yaml, PERMISSIVE",
        PAGES,
        Reply::full,
        productpage_shadow_allowed,
    );
    let (pages, counted) = bookinfo.counted(PAGES);
    for page in &pages {
        assert!(page.full(), "a request under global PERMISSIVE: {}", page.summary());
    }
    let (pp, details) = (counted["app=productpage"], counted["app=details"]);
    assert!(
        pp.shadow_allowed >= n && pp.shadow_denied == 0.0 && pp.denied == 0.0,
        "productpage: {counted:?}"
    );
    assert!(details.shadow_denied >= n && details.denied == 0.0, "details: {counted:?}");
    productpage.delete();
    config.delete();

    // Istio's "Test adding authorization policy": enforcement ON and
    // productpage allowed; the binding for details and reviews is
    // PERMISSIVE, so they still refuse productpage (the page says so, as
    // Istio's task says it will) while counting that the policy would
    // allow it.
    let rbac_on = Sample::apply("rbac-config-ON.yaml");
    let productpage = Sample::apply("productpage-policy.yaml");
    let only_productpage =
        |p: &Reply| p.status == 200 && p.body.contains(DETAILS_ERROR) && p.body.contains(REVIEWS_ERROR);
    bookinfo.step("productpage-policy.yaml enforced", RUN, only_productpage);
    let permissive = Sample::apply("details-reviews-policy-permissive.yaml");
    let shadow_allowed = |c: &BTreeMap<&'static str, RbacStats>| {
        ["app=details", "app=reviews"].iter().all(|app| c[app].shadow_allowed >= n)
    };
    bookinfo.counted_step("details-reviews-policy-permissive.yaml", PAGES, only_productpage, shadow_allowed);
    let (pages, counted) = bookinfo.counted(PAGES);
    for page in &pages {
        assert!(
            only_productpage(page),
            "details-reviews-policy-permissive.yaml enforces nothing: {}",
            page.summary()
        );
    }
    for app in ["app=details", "app=reviews"] {
        let c = counted[app];
        assert!(c.denied >= n && c.shadow_allowed >= n, "{app}: denied and shadow-allowed: {counted:?}");
        assert_eq!(c.allowed, 0.0, "{app}: {counted:?}");
    }
    assert!(counted["app=productpage"].allowed >= n, "productpage enforced and allowed: {counted:?}");
    permissive.delete();
    productpage.delete();
    bookinfo.step("every policy deleted: denied", RUN, Reply::denied);
    rbac_on.delete();
    bookinfo.step("authorization off again", RUN, Reply::full);
}

/// What a TCP client got from tcp-echo.
#[derive(Debug, PartialEq)]
enum Echo {
    /// The line came back with the prefix.
    Answered,
    /// The connection was closed with nothing sent back.
    Closed,
    /// Anything else (no connection, no answer in time, another answer).
    Other(String),
}

/// Sends `world` to tcp-echo from a pod (through its sidecar) and reads
/// the first line back, for at most 5 s.
fn echo(namespace: &str, pod: &str) -> Echo {
    let script = "bash -c 'exec 3<>/dev/tcp/tcp-echo/9000 || { echo no-connection; exit; }; \
                  echo world >&3; timeout 5 head -n 1 <&3; echo \"rc=$?\"'";
    let out = enter(namespace, pod, script);
    match out.stdout.as_str() {
        "hello world\nrc=0\n" => Echo::Answered,
        "rc=0\n" => Echo::Closed,
        other => Echo::Other(format!("{other:?} {}", out.stderr.trim())),
    }
}

#[test]
fn a_tcp_service_answers_only_the_service_account_its_binding_names() {
    let _release = Release::install("mesh-e2e-authz-tcp", &[]);
    let ns = TempNamespace::new("authz-tcp");
    let n = ns.name.as_str();
    kubectl_ok(&["label", "namespace", n, "istio-injection=enabled", "--overwrite"], None);
    let client = |sa: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {sa}, labels: {{app: {sa}}}}}\nspec:\n  serviceAccountName: {sa}\n  \
             containers:\n  - {{name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}}\n"
        )
    };
    apply(
        n,
        "apiVersion: v1\nkind: Service\nmetadata: {name: tcp-echo, labels: {app: tcp-echo}}\nspec:\n  \
         selector: {app: tcp-echo}\n  ports:\n  - {name: tcp, port: 9000}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: tcp-echo}\nspec:\n  replicas: 1\n  \
         selector: {matchLabels: {app: tcp-echo, version: v1}}\n  template:\n    metadata: {labels: {app: tcp-echo, version: v1}}\n    \
         spec:\n      containers:\n      - name: tcp-echo\n        image: docker.io/istio/tcp-echo-server:1.2\n        \
         args: [\"9000\", \"hello\"]\n        ports: [{containerPort: 9000}]\n",
    );
    apply(n, &client("client-a"));
    apply(n, &client("client-b"));
    kubectl_ok(&["rollout", "status", "deployment", "-n", n, "--timeout=180s"], None);
    kubectl_ok(&["wait", "-n", n, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"], None);

    // Open before authorization: both get their echo.
    for pod in ["client-a", "client-b"] {
        eventually(&format!("{pod} echoed before authorization"), Duration::from_secs(60), || {
            (echo(n, pod) == Echo::Answered).then_some(())
        });
    }

    // Authorization on for this namespace only, nothing allowed yet.
    let _config = Applied::new(&format!(
        "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {{name: default}}\nspec:\n  \
         mode: ON_WITH_INCLUSION\n  inclusion:\n    namespaces: [\"{n}\"]\n"
    ));
    for pod in ["client-a", "client-b"] {
        eventually(&format!("{pod} closed with no binding"), Duration::from_secs(60), || {
            (echo(n, pod) == Echo::Closed).then_some(())
        });
    }

    // client-a's ServiceAccount is bound to a role for tcp-echo. client-b's
    // is bound to one whose rule names a method: HTTP only, so on a TCP
    // port the rule is ignored, as Istio documents, and grants nothing.
    let service = format!("tcp-echo.{n}.svc.cluster.local");
    let role = |name: &str, extra: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {{name: {name}, namespace: {n}}}\nspec:\n  \
             rules:\n  - services: [\"{service}\"]\n{extra}"
        )
    };
    let binding = |name: &str, role: &str, sa: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {{name: {name}, namespace: {n}}}\nspec:\n  \
             subjects:\n  - user: \"cluster.local/ns/{n}/sa/{sa}\"\n  roleRef: {{kind: ServiceRole, name: {role}}}\n"
        )
    };
    kubectl_ok(&["apply", "-f", "-"], Some(&role("tcp-echo-user", "")));
    kubectl_ok(&["apply", "-f", "-"], Some(&binding("bind-client-a", "tcp-echo-user", "client-a")));
    kubectl_ok(&["apply", "-f", "-"], Some(&role("tcp-echo-http-only", "    methods: [\"GET\"]\n")));
    kubectl_ok(&["apply", "-f", "-"], Some(&binding("bind-client-b", "tcp-echo-http-only", "client-b")));
    eventually("client-a echoed once bound", Duration::from_secs(60), || {
        (echo(n, "client-a") == Echo::Answered).then_some(())
    });
    for attempt in 1..=5 {
        assert_eq!(echo(n, "client-b"), Echo::Closed, "client-b, attempt {attempt}");
        assert_eq!(echo(n, "client-a"), Echo::Answered, "client-a, attempt {attempt}");
    }
    let stats = RbacStats::of(n, &crate::support::pod_named(n, "app=tcp-echo"));
    assert!(stats.denied >= 5.0 && stats.allowed >= 5.0, "tcp-echo's Envoy counted its decisions: {stats:?}");

    // The binding names client-b too: now it gets its echo.
    kubectl_ok(&["apply", "-f", "-"], Some(&binding("bind-client-b", "tcp-echo-user", "client-b")));
    eventually("client-b echoed once bound to the TCP role", Duration::from_secs(60), || {
        (echo(n, "client-b") == Echo::Answered).then_some(())
    });
}

/// A policy state of the load test, and what it does to each kind of
/// request: `true` allowed, `false` denied.
#[derive(Clone, Copy, Debug)]
struct State {
    name: &'static str,
    page: bool,
    health: bool,
    login: bool,
}

impl State {
    fn allows(&self, kind: &str) -> bool {
        match kind {
            "page" => self.page,
            "health" => self.health,
            "login" => self.login,
            other => panic!("unknown request kind {other}"),
        }
    }
}

/// Authorization off.
const OPEN: State = State { name: "authorization off", page: true, health: true, login: true };
/// rbac-config-ON.yaml with productpage-policy.yaml: GET anything.
const GET_ANY: State = State { name: "productpage-policy (GET)", page: true, health: true, login: false };
/// rbac-config-ON.yaml with productpage-viewer narrowed to GET /health.
const GET_HEALTH: State = State { name: "GET /health only", page: false, health: true, login: false };

/// productpage-policy.yaml's role, narrowed to one path.
const HEALTH_ONLY_ROLE: &str = "apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: productpage-viewer
  namespace: default
spec:
  rules:
  - services: [\"productpage.default.svc.cluster.local\"]
    methods: [\"GET\"]
    paths: [\"/health\"]
";

/// One request of the load: when it started and ended (ns since the
/// epoch), its kind, its status and the end of its body.
#[derive(Debug, Clone)]
struct Sent {
    start: u128,
    end: u128,
    kind: String,
    status: u16,
    tail: String,
}

impl Sent {
    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.splitn(4, ' ');
        let start = parts.next()?.parse().ok()?;
        let end = parts.next()?.parse().ok()?;
        let kind = parts.next()?.to_string();
        let rest = parts.next().unwrap_or_default();
        let (tail, status) = rest.rsplit_once(' ').unwrap_or(("", rest));
        Some(Self { start, end, kind, status: status.trim().parse().unwrap_or(0), tail: tail.to_string() })
    }

    /// Some(true) allowed, Some(false) denied by RBAC, None anything else.
    fn outcome(&self) -> Option<bool> {
        match self.status {
            200 | 302 => Some(true),
            403 if self.tail.ends_with(DENIED_BODY) => Some(false),
            _ => None,
        }
    }
}

/// A load from the sleep pod, read line by line as it runs; stopped on drop.
struct Load {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// GET /productpage, GET /health and POST /login, in turn, for at most
    /// `seconds` and `rounds`.
    fn start(seconds: u64, rounds: u64) -> Self {
        let script = format!(
            "end=$(($(date +%s) + {seconds})); i=0; \
             while [ $(date +%s) -lt $end ] && [ $i -lt {rounds} ]; do \
               for kind in page health login; do \
                 case $kind in \
                   page) args=http://productpage:9080/productpage;; \
                   health) args=http://productpage:9080/health;; \
                   login) args='-d username=jason http://productpage:9080/login';; \
                 esac; \
                 t0=$(date +%s%N); \
                 out=$(curl -s -m 10 -w ' %{{http_code}}' $args | tail -c 40 | tr -d '\\n'); \
                 echo \"$t0 $(date +%s%N) $kind $out\"; \
               done; \
               i=$((i + 1)); \
             done"
        );
        let state = std::env::var("LOCALNODE_STATE_DIR").expect("LOCALNODE_STATE_DIR (set by make test-e2e)");
        let mut child = Command::new(repo().join("target/debug/localnode"))
            .args(["enter", "--state-dir", &state, "default/sleep", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so that stopping it stops its curl too.
            .process_group(0)
            .spawn()
            .expect("localnode enter runs");
        let stdout = child.stdout.take().expect("stdout was piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        // Ends when the load's stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Self { child, lines }
    }

    fn sent(&self) -> Vec<Sent> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(|l| Sent::parse(l)).collect()
    }

    /// Waits until the last `n` requests of `kind` started after `since`
    /// all had `allowed`; fails after 60 s, or when the load ended.
    fn settle(&mut self, what: &str, since: u128, kind: &str, allowed: bool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sent = self.sent();
            let recent: Vec<&Sent> = sent.iter().filter(|s| s.kind == kind && s.start > since).collect();
            if recent.len() >= n && recent[recent.len() - n..].iter().all(|s| s.outcome() == Some(allowed)) {
                return;
            }
            let ended = matches!(self.child.try_wait(), Ok(Some(_)));
            assert!(
                !ended && Instant::now() < deadline,
                "{what}: not in effect for {n} {kind} requests in a row {}; the load's log:\n{}",
                if ended { "before the load ended" } else { "within 60 s" },
                self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the load and returns every request it sent.
    fn stop(mut self) -> Vec<Sent> {
        self.kill();
        // The reader thread gets the rest once the pipe closes.
        std::thread::sleep(Duration::from_millis(200));
        self.sent()
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.kill();
    }
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

#[test]
fn policies_applied_and_removed_under_load_never_decide_against_both_old_and_new() {
    let _release = Release::install("mesh-e2e-authz-load", &[]);
    let bookinfo = DefaultBookinfo::deploy();
    // Inert until authorization is on.
    let productpage = Sample::apply("productpage-policy.yaml");
    bookinfo.step("the page before authorization", 3, Reply::full);

    let mut load = Load::start(240, 3000);
    let started = now_ns();
    load.settle("the load", started, "login", true, 20);

    // Each change: when it was made, the state it leads to, and a request
    // kind that tells the new state from the old, to wait for.
    let mut changes: Vec<(u128, State)> = vec![(0, OPEN)];
    let mut change = |load: &mut Load, to: State, kind: &str, apply: &dyn Fn()| {
        let at = now_ns();
        apply();
        changes.push((at, to));
        load.settle(to.name, at, kind, to.allows(kind), 20);
        // Steady load in the new state before the next change.
        std::thread::sleep(Duration::from_secs(2));
    };
    let rbac_on = conformance().join("rbac/rbac-config-ON.yaml");
    let rbac_on = rbac_on.to_str().expect("utf-8 path").to_string();
    let policy = conformance().join("rbac/productpage-policy.yaml");
    let policy = policy.to_str().expect("utf-8 path").to_string();
    let _rbac_cleanup = Applied(std::fs::read_to_string(&rbac_on).expect("the sample"));
    change(&mut load, GET_ANY, "login", &|| {
        kubectl_ok(&["apply", "-f", &rbac_on], None);
    });
    change(&mut load, GET_HEALTH, "page", &|| {
        kubectl_ok(&["apply", "-f", "-"], Some(HEALTH_ONLY_ROLE));
    });
    change(&mut load, GET_ANY, "page", &|| {
        kubectl_ok(&["apply", "-f", &policy], None);
    });
    change(&mut load, OPEN, "login", &|| {
        kubectl_ok(&["delete", "-f", &rbac_on], None);
    });
    let sent = load.stop();
    productpage.delete();

    // Each request may have met the state before or after each change made
    // while it was under way, or before it started and not yet in effect.
    let mut wrong = Vec::new();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &sent {
        // The last change made before it started, and those during it.
        let first = changes.iter().rposition(|(at, _)| *at <= s.start).unwrap_or(0);
        let last = changes.iter().rposition(|(at, _)| *at <= s.end).unwrap_or(0);
        let mut possible: Vec<State> = changes[first..=last].iter().map(|(_, st)| *st).collect();
        if first > 0 {
            possible.push(changes[first - 1].1);
        }
        let ok = match s.outcome() {
            Some(allowed) => possible.iter().any(|st| st.allows(&s.kind) == allowed),
            None => false,
        };
        if !ok {
            let names: Vec<&str> = possible.iter().map(|st| st.name).collect();
            wrong.push(format!(
                "{} {} at +{} ms: status {} ({:?}), under {names:?}",
                s.kind,
                match s.outcome() {
                    Some(true) => "allowed",
                    Some(false) => "denied",
                    None => "failed",
                },
                s.start.saturating_sub(started) / 1_000_000,
                s.status,
                s.tail
            ));
        }
        *by_state.entry(changes[last].1.name).or_default() += 1;
    }
    let log: Vec<String> = sent
        .iter()
        .map(|s| {
            format!(
                "+{:>6} ms {:>4} ms {:<6} {} {}",
                (s.start.saturating_sub(started)) / 1_000_000,
                (s.end - s.start) / 1_000_000,
                s.kind,
                s.status,
                s.tail
            )
        })
        .collect();
    eprintln!("{} requests under load, by the last state applied: {by_state:?}", sent.len());
    assert!(sent.len() >= 300, "too few requests to prove anything:\n{}", log.join("\n"));
    assert!(
        wrong.is_empty(),
        "{} requests decided against both the old and the new policy:\n{}\n\nevery request (start, duration, kind, status, end of body):\n{}",
        wrong.len(),
        wrong.join("\n"),
        log.join("\n")
    );
}
