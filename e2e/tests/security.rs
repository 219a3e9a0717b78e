//! Citadel's part, on real traffic: every injected pod's Envoy holds a
//! certificate for its own ServiceAccount, delivered by SDS and chained to
//! the mesh root, and with nothing configured every hop between sidecars
//! is mutual TLS, proven from the server side (its Envoy's TLS handshakes,
//! and the caller's SPIFFE ID the server's sidecar hands the application
//! in `x-forwarded-client-cert`, which the Bookinfo stand-ins log as
//! `peer=`). A pod without a sidecar still reaches Bookinfo in plaintext.

use std::time::Duration;

use crate::support::{
    Applied, DebugViewer, Release, TempNamespace, apply, container_log, controller_metric, enter, eventually,
    injected_bookinfo, kubectl_ok, pod_named,
};

/// An Envoy admin counter of a pod's sidecar (0 when absent).
fn envoy_counter(namespace: &str, pod: &str, name: &str) -> f64 {
    let out = enter(namespace, pod, &format!("curl -sf -m 5 'http://127.0.0.1:15000/stats?filter=^{name}$'"));
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The URI SANs and serial of the leaf a pod's Envoy holds (admin `/certs`),
/// and the serials of the CA certificates it trusts.
fn envoy_certs(namespace: &str, pod: &str) -> (Vec<String>, String, Vec<String>) {
    let out = enter(namespace, pod, "curl -sf -m 5 http://127.0.0.1:15000/certs");
    let certs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let mut uris = Vec::new();
    let mut serial = String::new();
    let mut roots = Vec::new();
    for entry in certs["certificates"].as_array().into_iter().flatten() {
        for chain in entry["cert_chain"].as_array().into_iter().flatten() {
            for san in chain["subject_alt_names"].as_array().into_iter().flatten() {
                if let Some(uri) = san["uri"].as_str() {
                    uris.push(uri.to_string());
                    serial = chain["serial_number"].as_str().unwrap_or_default().to_string();
                }
            }
        }
        for ca in entry["ca_cert"].as_array().into_iter().flatten() {
            roots.push(ca["serial_number"].as_str().unwrap_or_default().to_string());
        }
    }
    uris.sort();
    uris.dedup();
    roots.sort();
    roots.dedup();
    (uris, serial, roots)
}

/// The serial of the mesh root, as published to every namespace, written
/// as Envoy writes serials (lower-case hex, no separators).
fn mesh_root_serial(namespace: &str) -> String {
    let pem = kubectl_ok(
        &["get", "configmap", "mesh-ca-root-cert", "-n", namespace, "-o", "jsonpath={.data.root-cert\\.pem}"],
        None,
    );
    let root = mesh::ca::CertInfo::from_pem(&pem).expect("the published root is a certificate");
    root.serial.replace(':', "").to_lowercase()
}

#[test]
fn every_hop_between_sidecars_is_mutual_tls_with_each_pods_own_identity() {
    let release = Release::install("mesh-e2e-mtls", &[]);
    let ns = injected_bookinfo("mtls");
    let td = "cluster.local";
    let id = |sa: &str| format!("spiffe://{td}/ns/{}/sa/{sa}", ns.name);

    // Each pod's Envoy holds its own ServiceAccount's certificate, chained
    // to the mesh root.
    let root = mesh_root_serial(&ns.name);
    for (app, account) in [
        ("app=productpage", "bookinfo-productpage"),
        ("app=details", "bookinfo-details"),
        ("app=ratings", "bookinfo-ratings"),
        ("version=v1,app=reviews", "bookinfo-reviews"),
    ] {
        let pod = pod_named(&ns.name, app);
        let (uris, serial, roots) =
            eventually(&format!("{pod} holds its certificate"), Duration::from_secs(30), || {
                let certs = envoy_certs(&ns.name, &pod);
                (!certs.0.is_empty()).then_some(certs)
            });
        assert_eq!(uris, [id(account)], "{pod}: the leaf's SPIFFE ID");
        assert!(!serial.is_empty(), "{pod}: no serial");
        assert!(roots.contains(&root), "{pod}: trusts {roots:?}, not the mesh root {root}");
    }

    // The pages render, through every hop.
    let client = pod_named(&ns.name, "app=productpage");
    let page = enter(
        &ns.name,
        &client,
        "curl -s -m 30 -o /dev/null -w '%{http_code}\\n' 'http://productpage:9080/productpage?r=[1-20]'",
    );
    let codes: Vec<&str> = page.stdout.lines().collect();
    assert_eq!(codes, ["200"; 20], "{}", page.stderr);
    let body = enter(&ns.name, &client, "curl -s -m 10 http://productpage:9080/productpage");
    assert!(body.stdout.contains("reviews-v"), "the page shows reviews: {}", body.stdout);
    assert!(!body.stdout.contains("unavailable"), "some part is unavailable: {}", body.stdout);

    // From the server side: each callee's Envoy completed TLS handshakes on
    // its inbound listener, and its application saw the caller's identity.
    for (callee, caller) in [
        ("app=details", "bookinfo-productpage"),
        ("version=v2,app=reviews", "bookinfo-productpage"),
        ("app=ratings", "bookinfo-reviews"),
    ] {
        let pod = pod_named(&ns.name, callee);
        let handshakes = envoy_counter(&ns.name, &pod, "listener.0.0.0.0_15006.ssl.handshake");
        assert!(handshakes > 0.0, "{pod}: no TLS handshake on its inbound listener");
        let container = callee.rsplit('=').next().unwrap_or_default();
        let expected = format!("peer={}", id(caller));
        eventually(&format!("{pod} logs a request from {caller}"), Duration::from_secs(10), || {
            container_log(&ns.name, &pod, container).contains(&expected).then_some(())
        });
    }

    // A pod without a sidecar still reaches productpage, in plaintext.
    let outside = TempNamespace::new("plain");
    apply(
        &outside.name,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep}\nspec:\n  containers:\n  - {name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}\n",
    );
    kubectl_ok(
        &["wait", "-n", &outside.name, "--for", "condition=Ready", "pod/sleep", "--timeout=60s"],
        None,
    );
    let url = format!("http://productpage.{}:9080/productpage", ns.name);
    let plain =
        enter(&outside.name, "sleep", &format!("curl -s -m 10 -o /dev/null -w '%{{http_code}}' {url}"));
    assert_eq!(plain.stdout.trim(), "200", "an uninjected client: {}", plain.stderr);
    let productpage_log = container_log(&ns.name, &client, "productpage");
    assert!(
        productpage_log.lines().any(|l| l.contains("GET /productpage 200") && l.ends_with("peer=-")),
        "no plaintext request in productpage's log"
    );

    // The controller's view of a proxy shows its secrets without the key.
    let viewer = DebugViewer::bound_to("mesh-debug");
    let dump = crate::support::controller_config_dump(
        &release.namespace,
        &format!("{}/{client}", ns.name),
        &viewer.token,
    );
    assert!(dump.contains("BEGIN CERTIFICATE") && dump.contains("[redacted]"), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "a private key in the config dump");

    // `mesh proxy-config secret` shows the same certificate Envoy holds.
    let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
    let controllers = crate::support::controllers(&release.namespace).join(",");
    let pod_ref = format!("{}/{client}", ns.name);
    let table = crate::support::run(
        &bin,
        &["proxy-config", "secret", &pod_ref, "--controller", &controllers, "--token", &viewer.token],
        None,
    );
    assert!(table.ok, "{}", table.stderr);
    let (_, envoy_serial, _) = envoy_certs(&ns.name, &client);
    let row = table.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(row.contains(&id("bookinfo-productpage")), "{}", table.stdout);
    let shown = row.split_whitespace().nth(2).unwrap_or_default().replace(':', "").to_lowercase();
    assert_eq!(shown, envoy_serial, "the serial shown is the one Envoy holds:\n{}", table.stdout);

    // The controller counted what it issued.
    let issued: f64 =
        controller_metric(&release.namespace, "mesh_xds_workload_certs_issued_total").values().sum();
    assert!(issued >= 6.0, "certificates issued: {issued}");
    let refused: f64 = controller_metric(&release.namespace, "mesh_xds_secret_refusals_total").values().sum();
    assert_eq!(refused, 0.0, "our own sidecars ask only for their own secrets");
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    // 20 s certificates are renewed every 10 s: at least three rotations in the run.
    let _release = Release::install("mesh-e2e-rotation", &["--set", "workloadCertTTL=20s"]);
    let ns = injected_bookinfo("rotation");
    let client = pod_named(&ns.name, "app=productpage");
    let details = pod_named(&ns.name, "app=details");

    let seconds = 40;
    let (load_ns, load_client) = (ns.name.clone(), client.clone());
    let load = std::thread::spawn(move || {
        let script = format!(
            "end=$(($(date +%s) + {seconds})); i=0; \
             while [ $(date +%s) -lt $end ] && [ $i -lt 2000 ]; do \
               curl -s -m 30 -o /dev/null -w '%{{http_code}}\\n' 'http://productpage:9080/productpage?r=[1-10]'; \
               i=$((i + 1)); \
             done"
        );
        enter(&load_ns, &load_client, &script).stdout
    });
    // The serials the callee's Envoy holds while the load runs.
    let mut serials: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let (_, serial, _) = envoy_certs(&ns.name, &details);
        if !serial.is_empty() && serials.last() != Some(&serial) {
            serials.push(serial);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let codes = load.join().expect("the load finished");
    let mut by_code = std::collections::BTreeMap::<&str, usize>::new();
    for code in codes.lines() {
        *by_code.entry(code).or_default() += 1;
    }
    eprintln!("serials seen on {details}: {serials:?}; answers: {by_code:?}");
    assert!(serials.len() >= 4, "at least three rotations: {serials:?}");
    let total: usize = by_code.values().sum();
    assert!(total >= 200, "too few requests to prove anything: {by_code:?}");
    assert_eq!(by_code.get("200").copied(), Some(total), "every request answered 200: {by_code:?}");
    // Still mutual TLS after the rotations.
    let body = enter(&ns.name, &client, "curl -s -m 10 http://productpage:9080/productpage");
    assert!(body.stdout.contains("reviews-v"), "{}", body.stdout);
    let log = container_log(&ns.name, &details, "details");
    assert!(log.lines().last().is_some_and(|l| l.contains("peer=spiffe://")), "the last call was mTLS");
}

/// A pod without a sidecar, in a namespace of its own, to call from.
struct PlainClient {
    ns: TempNamespace,
}

impl PlainClient {
    fn start() -> Self {
        let ns = TempNamespace::new("plain");
        apply(
            &ns.name,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep}\nspec:\n  containers:\n  - {name: sleep, image: busybox, command: [sh, -c, 'sleep 3600']}\n",
        );
        kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/sleep", "--timeout=60s"], None);
        Self { ns }
    }

    /// The HTTP status of a GET, `000` when the connection failed.
    fn code(&self, url: &str) -> String {
        let out =
            enter(&self.ns.name, "sleep", &format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' {url}"));
        out.stdout.trim().to_string()
    }
}

/// The HTTP status of a GET from an injected pod (through its sidecar).
fn mesh_code(ns: &str, pod: &str, url: &str) -> String {
    enter(ns, pod, &format!("curl -s -m 10 -o /dev/null -w '%{{http_code}}' {url}")).stdout.trim().to_string()
}

/// Waits until `check` gives `want`, for at most 30 s.
fn settles(what: &str, want: &str, check: impl Fn() -> String) {
    eventually(what, Duration::from_secs(30), || (check() == want).then_some(()));
}

fn peer_authentication(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

#[test]
fn strict_by_peer_authentication_refuses_plaintext_at_each_level_and_loses_no_mesh_request() {
    let root = TempNamespace::new("root");
    let _release = Release::install("mesh-e2e-strict", &["--set", &format!("rootNamespace={}", root.name)]);
    let ns = injected_bookinfo("strict");
    let plain = PlainClient::start();
    let client = pod_named(&ns.name, "app=productpage");
    let url = |service: &str, path: &str| format!("http://{service}.{}:9080{path}", ns.name);
    assert_eq!(plain.code(&url("productpage", "/productpage")), "200", "PERMISSIVE by default");

    // Mesh-wide STRICT, switched on under steady load between injected pods:
    // not one request fails.
    let seconds = 12;
    let (load_ns, load_client) = (ns.name.clone(), client.clone());
    let load = std::thread::spawn(move || {
        let script = format!(
            "end=$(($(date +%s) + {seconds})); i=0; \
             while [ $(date +%s) -lt $end ] && [ $i -lt 1000 ]; do \
               curl -s -m 30 -o /dev/null -w '%{{http_code}}\\n' 'http://productpage:9080/productpage?r=[1-5]'; \
               i=$((i + 1)); \
             done"
        );
        enter(&load_ns, &load_client, &script).stdout
    });
    std::thread::sleep(Duration::from_secs(2));
    let mesh_strict = Applied::new(&root.name, &peer_authentication("default", "  mtls: {mode: STRICT}\n"));
    settles("plaintext refused mesh-wide", "000", || plain.code(&url("productpage", "/productpage")));
    let codes = load.join().expect("the load finished");
    let total = codes.lines().count();
    let ok = codes.lines().filter(|c| *c == "200").count();
    eprintln!("PERMISSIVE -> STRICT under load: {ok} of {total} answered 200");
    assert!(total >= 50, "too few requests to prove anything: {total}");
    assert_eq!(ok, total, "every request answered 200 while STRICT came in: {codes}");
    assert_eq!(mesh_code(&ns.name, &client, "http://productpage:9080/productpage"), "200");
    for service in ["details", "reviews", "ratings"] {
        assert_eq!(
            plain.code(&url(service, "/health")),
            "000",
            "{service} takes plaintext under mesh STRICT"
        );
    }

    // Istio's destination-rule-all-mtls.yaml with STRICT: still served.
    let all_mtls = std::fs::read_to_string(
        crate::support::conformance().join("networking/destination-rule-all-mtls.yaml"),
    )
    .expect("the sample");
    let rules = Applied::new(&ns.name, &all_mtls);
    std::thread::sleep(Duration::from_secs(2));
    let body = enter(&ns.name, &client, "curl -s -m 10 http://productpage:9080/productpage").stdout;
    assert!(body.contains("reviews-v") && !body.contains("unavailable"), "{body}");
    drop(rules);

    // A client told to send plaintext (DestinationRule tls DISABLE) to a
    // STRICT server fails, as in Istio.
    let disable = Applied::new(
        &ns.name,
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: details}\nspec:\n  host: details\n  trafficPolicy:\n    tls: {mode: DISABLE}\n",
    );
    settles("plaintext towards STRICT details fails", "503", || {
        mesh_code(&ns.name, &client, "http://details:9080/details/0")
    });
    drop(disable);
    settles("mTLS towards details again", "200", || {
        mesh_code(&ns.name, &client, "http://details:9080/details/0")
    });

    // A readiness probe keeps passing under STRICT: the kubelet's probe goes
    // to Envoy's own plaintext port, which checks the app on loopback.
    let probed = Applied::new(
        &ns.name,
        "apiVersion: v1\nkind: Service\nmetadata: {name: probed}\nspec:\n  selector: {app: probed}\n  ports: [{name: http, port: 9080}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: probed, labels: {app: probed}}\nspec:\n  containers:\n  - name: details\n    image: docker.io/istio/examples-bookinfo-details-v1:1.20.2\n    ports: [{containerPort: 9080}]\n    readinessProbe:\n      httpGet: {path: /health, port: 9080}\n      periodSeconds: 2\n",
    );
    kubectl_ok(&["wait", "-n", &ns.name, "--for", "condition=Ready", "pod/probed", "--timeout=90s"], None);
    assert_eq!(plain.code(&url("probed", "/health")), "000", "the probed port itself is STRICT");
    drop(probed);
    drop(mesh_strict);
    settles("PERMISSIVE again", "200", || plain.code(&url("productpage", "/productpage")));

    // Namespace-wide STRICT; a workload's own PERMISSIVE overrides it.
    let namespace_strict =
        Applied::new(&ns.name, &peer_authentication("default", "  mtls: {mode: STRICT}\n"));
    settles("plaintext refused in the namespace", "000", || plain.code(&url("productpage", "/productpage")));
    let details_permissive = Applied::new(
        &ns.name,
        &peer_authentication(
            "details",
            "  selector: {matchLabels: {app: details}}\n  mtls: {mode: PERMISSIVE}\n",
        ),
    );
    settles("details PERMISSIVE by its workload policy", "200", || plain.code(&url("details", "/health")));
    assert_eq!(plain.code(&url("ratings", "/health")), "000", "ratings still STRICT");
    drop(details_permissive);
    drop(namespace_strict);

    // Workload STRICT with a port-level exception, then without it.
    let ratings = peer_authentication(
        "ratings",
        "  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9080: {mode: PERMISSIVE}\n",
    );
    let ratings_policy = Applied::new(&ns.name, &ratings);
    settles("plain productpage after the namespace policy went", "200", || {
        plain.code(&url("productpage", "/productpage"))
    });
    assert_eq!(plain.code(&url("ratings", "/health")), "200", "port 9080 PERMISSIVE at port level");
    kubectl_ok(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&peer_authentication(
            "ratings",
            "  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: STRICT}\n",
        )),
    );
    settles("ratings STRICT without the port exception", "000", || plain.code(&url("ratings", "/health")));
    assert_eq!(plain.code(&url("details", "/health")), "200", "other workloads untouched");
    assert_eq!(mesh_code(&ns.name, &client, "http://productpage:9080/productpage"), "200");
    drop(ratings_policy);
}

#[test]
fn istio_1_1_mesh_policy_and_policies_switch_mutual_tls_unmodified() {
    let _release = Release::install("mesh-e2e-policy", &[]);
    let ns = injected_bookinfo("policy");
    let plain = PlainClient::start();
    let client = pod_named(&ns.name, "app=productpage");
    let url = |service: &str| format!("http://{service}.{}:9080/health", ns.name);

    // Istio 1.1's mesh-wide STRICT, as its documentation writes it.
    let mesh = Applied::new(
        "default",
        "apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"MeshPolicy\"\nmetadata:\n  name: \"default\"\nspec:\n  peers:\n  - mtls: {}\n",
    );
    settles("MeshPolicy STRICT refuses plaintext", "000", || plain.code(&url("productpage")));
    assert_eq!(mesh_code(&ns.name, &client, "http://productpage:9080/productpage"), "200");

    // The namespace's Policy `default` makes it PERMISSIVE again.
    let namespace = Applied::new(
        &ns.name,
        "apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"Policy\"\nmetadata:\n  name: \"default\"\nspec:\n  peers:\n  - mtls:\n      mode: PERMISSIVE\n",
    );
    settles("the namespace's Policy PERMISSIVE", "200", || plain.code(&url("productpage")));

    // A Policy targeting one Service makes its pods STRICT.
    let targeted = Applied::new(
        &ns.name,
        "apiVersion: \"authentication.istio.io/v1alpha1\"\nkind: \"Policy\"\nmetadata:\n  name: \"details-strict\"\nspec:\n  targets:\n  - name: details\n    ports:\n    - number: 9080\n  peers:\n  - mtls: {}\n",
    );
    settles("details STRICT by its targeted Policy", "000", || plain.code(&url("details")));
    assert_eq!(plain.code(&url("reviews")), "200", "reviews still PERMISSIVE");
    assert_eq!(mesh_code(&ns.name, &client, "http://details:9080/details/0"), "200");
    drop(targeted);
    drop(namespace);
    drop(mesh);
    settles("PERMISSIVE once the policies are gone", "200", || plain.code(&url("details")));
}

#[test]
fn workload_certificates_from_a_plugged_in_intermediate_verify_to_its_root() {
    let home = TempNamespace::new("mesh-plugged");
    let dir = std::env::temp_dir().join(format!("mesh-e2e-plugged-{}", home.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    crate::ca::make_cacerts(&dir);
    let file = |name: &str| format!("--from-file={name}={}", dir.join(name).display());
    kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "cacerts",
            "-n",
            &home.name,
            &file("ca-cert.pem"),
            &file("ca-key.pem"),
            &file("root-cert.pem"),
            &file("cert-chain.pem"),
        ],
        None,
    );
    let _release = Release::install(&home.name, &[]);
    let ns = injected_bookinfo("plugged");
    let pod = pod_named(&ns.name, "app=details");

    // The chain the pod's Envoy holds (its `default` secret; Envoy's dump
    // shows the certificates and hides the key).
    let chain = eventually("the pod's Envoy holding its secret", Duration::from_secs(30), || {
        let out = enter(
            &ns.name,
            &pod,
            "curl -sf -m 5 'http://127.0.0.1:15000/config_dump?resource=dynamic_active_secrets'",
        );
        let dump: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        dump["configs"].as_array()?.iter().find_map(|c| {
            (c["name"] == "default").then(|| {
                c["secret"]["tls_certificate"]["certificate_chain"]["inline_string"]
                    .as_str()
                    .map(str::to_string)
            })?
        })
    });
    let blocks: Vec<&str> = chain.split_inclusive("-----END CERTIFICATE-----\n").collect();
    assert!(blocks.len() >= 2, "the leaf and the intermediate: {chain}");
    std::fs::write(dir.join("leaf.pem"), blocks[0]).expect("leaf");
    std::fs::write(dir.join("intermediates.pem"), blocks[1..].concat()).expect("intermediates");
    let leaf = mesh::ca::CertInfo::from_pem(blocks[0]).expect("a certificate");
    assert_eq!(leaf.uris, [format!("spiffe://cluster.local/ns/{}/sa/bookinfo-details", ns.name)]);
    assert!(
        leaf.issuer.contains("Example Intermediate CA"),
        "signed by the plugged-in intermediate: {}",
        leaf.issuer
    );
    let verify = crate::support::run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            dir.join("root-cert.pem").to_str().expect("utf-8"),
            "-untrusted",
            dir.join("intermediates.pem").to_str().expect("utf-8"),
            dir.join("leaf.pem").to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(verify.ok && verify.stdout.contains(": OK"), "{}{}", verify.stdout, verify.stderr);
    // And traffic flows over mutual TLS with these certificates.
    let client = pod_named(&ns.name, "app=productpage");
    assert_eq!(mesh_code(&ns.name, &client, "http://details:9080/details/0"), "200");
    let expected = format!("peer=spiffe://cluster.local/ns/{}/sa/bookinfo-productpage", ns.name);
    eventually("details logging a call from productpage", Duration::from_secs(10), || {
        container_log(&ns.name, &pod, "details").contains(&expected).then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}
