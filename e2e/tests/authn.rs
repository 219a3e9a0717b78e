//! End-user authentication on real traffic: Istio 1.1's Policy `origins`
//! and today's RequestAuthentication, applied with kubectl to injected
//! Bookinfo, enforced by productpage's Envoy. The issuer's key set is
//! served by an HTTP server the test starts on 127.0.0.1 inside the
//! controller's pod (its own loopback): the controller fetches it there
//! and sends the keys inline, and the sidecars, which could never reach
//! that address, verify tokens with them. Tokens are ES256, signed here.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    Applied, Release, TempNamespace, apply, controller_metric, controller_pods, enter, eventually, free_port,
    injected_bookinfo, kubectl_ok, repo,
};

#[path = "../../src/testing/jwt.rs"]
mod signer;

use signer::{Signer, claims};

const ISSUER: &str = "https://issuer.bookinfo.example";
const AUDIENCE: &str = "bookinfo";

/// `python3 -m http.server` on 127.0.0.1 in a pod's network namespace,
/// serving a folder; stopped (its process group) on drop.
struct KeyServer {
    children: Vec<Child>,
    dir: PathBuf,
    port: u16,
}

impl KeyServer {
    /// The key set served on 127.0.0.1 in each of the controller's pods, at
    /// one port: every replica fetches it (each serves its own proxies).
    fn start(namespace: &str, pods: &[String], jwks: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-jwks-{}-{namespace}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder for the key set");
        std::fs::write(dir.join("jwks.json"), jwks).expect("the key set written");
        let port = free_port();
        let state = std::env::var("LOCALNODE_STATE_DIR").expect("LOCALNODE_STATE_DIR (set by make test-e2e)");
        let mut server = Self { children: Vec::new(), dir: dir.clone(), port };
        for pod in pods {
            let log = std::fs::File::create(dir.join(format!("{pod}.log"))).expect("a log file");
            let child = Command::new(repo().join("target/debug/localnode"))
                .args(["enter", "--state-dir", &state, &format!("{namespace}/{pod}"), "--"])
                .args(["/usr/bin/python3", "-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--directory", dir.to_str().expect("utf-8")])
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("the key server starts");
            server.children.push(child);
        }
        let url = server.url();
        for pod in pods {
            eventually("the key server to answer in the controller's pod", Duration::from_secs(20), || {
                enter(namespace, pod, &format!("curl -sf -m 2 {url}")).ok.then_some(())
            });
        }
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill").args(["--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An uninjected pod to call productpage from: its requests meet only
/// productpage's inbound Envoy.
struct Client {
    ns: TempNamespace,
}

impl Client {
    fn start() -> Self {
        let ns = TempNamespace::new("authn-client");
        apply(
            &ns.name,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep}\nspec:\n  containers:\n  - {name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}\n",
        );
        kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/sleep", "--timeout=60s"], None);
        Self { ns }
    }

    /// The status of a GET of `url` with `token` as a bearer token.
    fn code(&self, url: &str, token: Option<&str>) -> String {
        let header = token.map(|t| format!("-H 'Authorization: Bearer {t}'")).unwrap_or_default();
        let script = format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' {header} {url}");
        enter(&self.ns.name, "sleep", &script).stdout.trim().to_string()
    }
}

/// Waits until `check` gives `want`, for at most 60 s.
fn settles(what: &str, want: &str, check: impl Fn() -> String) {
    eventually(what, Duration::from_secs(60), || {
        let got = check();
        (got == want).then_some(()).or_else(|| {
            eprintln!("{what}: {got}, waiting for {want}");
            None
        })
    });
}

#[test]
fn end_user_jwts_from_istio_1_1_origins_and_request_authentication_on_real_traffic() {
    let release = Release::install("mesh-e2e-authn", &[]);
    let ns = injected_bookinfo("authn");
    let client = Client::start();
    let controllers: Vec<String> = controller_pods(&release.namespace, "{.items[*].metadata.name}")
        .split_whitespace()
        .map(String::from)
        .collect();
    let signer = Signer::generate("bookinfo-2026");
    let forger = Signer::generate("bookinfo-2026");
    let keys = KeyServer::start(&release.namespace, &controllers, &signer.jwks());

    let url = |path: &str| format!("http://productpage.{}:9080{path}", ns.name);
    let valid = signer.token(&claims(ISSUER, AUDIENCE, "alice", false));
    let expired = signer.token(&claims(ISSUER, AUDIENCE, "alice", true));
    let forged = forger.token(&claims(ISSUER, AUDIENCE, "alice", false));
    let foreign = signer.token(&claims("https://evil.example", AUDIENCE, "alice", false));
    assert_eq!(client.code(&url("/productpage"), None), "200", "nothing applied yet");

    // Istio 1.1: origins on productpage, with the health check excluded.
    let policy = Applied::new(
        &ns.name,
        &format!(
            "apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"Policy\"\nmetadata:\n  name: \"productpage-jwt\"\n\
             spec:\n  targets:\n  - name: productpage\n  origins:\n  - jwt:\n      issuer: \"{ISSUER}\"\n      \
             audiences: [\"{AUDIENCE}\"]\n      jwksUri: \"{}\"\n      trigger_rules:\n      - excluded_paths:\n        \
             - exact: /health\n  principalBinding: USE_ORIGIN\n",
            keys.url()
        ),
    );
    settles("origins refuse a request without a token", "401", || client.code(&url("/productpage"), None));
    settles("a valid token passes once the keys are fetched", "200", || {
        client.code(&url("/productpage"), Some(&valid))
    });
    assert_eq!(client.code(&url("/health"), None), "200", "excluded by the trigger rule");
    assert_eq!(client.code(&url("/productpage"), Some(&expired)), "401", "expired");
    assert_eq!(client.code(&url("/productpage"), Some(&forged)), "401", "wrongly signed");
    assert_eq!(client.code(&url("/productpage"), Some(&foreign)), "401", "another issuer");
    assert_eq!(
        client.code(&format!("http://details.{}:9080/details/0", ns.name), None),
        "200",
        "details: no origins"
    );
    drop(policy);
    settles("no token needed once the Policy is gone", "200", || client.code(&url("/productpage"), None));

    // Today's RequestAuthentication: no token passes, a bad one does not.
    let request = Applied::new(
        &ns.name,
        &format!(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata:\n  name: productpage\n\
             spec:\n  selector:\n    matchLabels:\n      app: productpage\n  jwtRules:\n  - issuer: \"{ISSUER}\"\n    \
             jwksUri: \"{}\"\n",
            keys.url()
        ),
    );
    settles("RequestAuthentication refuses an expired token", "401", || {
        client.code(&url("/productpage"), Some(&expired))
    });
    assert_eq!(client.code(&url("/productpage"), None), "200", "no token: no end user, passes");
    assert_eq!(client.code(&url("/productpage"), Some(&valid)), "200", "valid");
    assert_eq!(client.code(&url("/productpage"), Some(&forged)), "401", "wrongly signed");
    assert_eq!(client.code(&url("/productpage"), Some(&foreign)), "401", "another issuer");
    drop(request);
    settles("an expired token is not checked once it is gone", "200", || {
        client.code(&url("/productpage"), Some(&expired))
    });

    // The controller fetched the keys, and said so on /metrics.
    let fetches = controller_metric(&release.namespace, "mesh_jwks_fetches_total");
    let ok = fetches.iter().find(|(k, _)| k.contains("result=\"ok\"")).map(|(_, v)| *v).unwrap_or_default();
    assert!(ok >= 1.0, "{fetches:?}");
    drop(keys);
}

/// The issue's point: a ServiceRoleBinding that requires a JWT claim
/// (`request.auth.claims[groups]`) lets a valid token carrying it reach
/// productpage; no token, or a valid one without the claim, is denied by
/// RBAC (403); an expired or wrongly signed one is refused before (401).
#[test]
fn a_binding_requiring_a_jwt_claim_admits_only_valid_tokens_that_carry_it() {
    let release = Release::install("mesh-e2e-authn-rbac", &[]);
    let ns = injected_bookinfo("authn-rbac");
    let client = Client::start();
    let controllers: Vec<String> = controller_pods(&release.namespace, "{.items[*].metadata.name}")
        .split_whitespace()
        .map(String::from)
        .collect();
    let signer = Signer::generate("bookinfo-2026");
    let forger = Signer::generate("bookinfo-2026");
    let keys = KeyServer::start(&release.namespace, &controllers, &signer.jwks());
    let url = format!("http://productpage.{}:9080/productpage", ns.name);

    let valid = signer.token(&claims(ISSUER, AUDIENCE, "alice", false));
    let mut other_group = claims(ISSUER, AUDIENCE, "bob", false);
    other_group["groups"] = serde_json::json!(["others"]);
    let other_group = signer.token(&other_group);
    let expired = signer.token(&claims(ISSUER, AUDIENCE, "alice", true));
    let forged = forger.token(&claims(ISSUER, AUDIENCE, "alice", false));

    let _request = Applied::new(
        &ns.name,
        &format!(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata:\n  name: productpage\n\
             spec:\n  selector:\n    matchLabels:\n      app: productpage\n  jwtRules:\n  - issuer: \"{ISSUER}\"\n    \
             jwksUri: \"{}\"\n",
            keys.url()
        ),
    );
    let _rbac = Applied::new(
        &ns.name,
        &format!(
            "apiVersion: \"rbac.istio.io/v1alpha1\"\nkind: ClusterRbacConfig\nmetadata:\n  name: default\nspec:\n  \
             mode: 'ON_WITH_INCLUSION'\n  inclusion:\n    namespaces: [\"{ns}\"]\n---\n\
             apiVersion: \"rbac.istio.io/v1alpha1\"\nkind: ServiceRole\nmetadata:\n  name: productpage-viewer\nspec:\n  \
             rules:\n  - services: [\"productpage.{ns}.svc.cluster.local\"]\n    methods: [\"GET\"]\n---\n\
             apiVersion: \"rbac.istio.io/v1alpha1\"\nkind: ServiceRoleBinding\nmetadata:\n  name: reviewers\nspec:\n  \
             subjects:\n  - properties:\n      request.auth.claims[groups]: \"reviewers\"\n  roleRef:\n    \
             kind: ServiceRole\n    name: \"productpage-viewer\"\n",
            ns = ns.name
        ),
    );
    settles("RBAC denies a request without a token", "403", || client.code(&url, None));
    settles("a valid token with the claim reaches productpage", "200", || client.code(&url, Some(&valid)));
    assert_eq!(client.code(&url, Some(&other_group)), "403", "valid, without the claim");
    assert_eq!(client.code(&url, Some(&expired)), "401", "expired");
    assert_eq!(client.code(&url, Some(&forged)), "401", "wrongly signed");
    drop(keys);
}
