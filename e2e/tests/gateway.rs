//! The ingress gateway on real traffic: the chart installs it (stock
//! Envoy injected with the gateway template), Istio's unmodified
//! `bookinfo-gateway.yaml` opens the product page to a client outside the
//! mesh (curl from the test process to the gateway Service's ClusterIP),
//! Istio's routing samples steer what that client sees, an HTTP server with
//! `httpsRedirect` answers 301, a TLS PASSTHROUGH server reaches an HTTPS
//! server in the mesh by SNI, and a SIMPLE HTTPS server terminates TLS
//! with Istio 1.1's file-based certificate (a Secret the chart mounts).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    CertDir, Release, apply, conformance, enter, eventually, injected_bookinfo, jsonpath, kubectl_ok,
    pod_named, rollout, run,
};

/// Deletes a namespace's Gateways, and waits for it, wherever the test
/// stops: a Gateway left behind while its namespace goes would configure
/// the next test's gateways (with certificate files they do not have).
struct GatewaysDeleted(String);

impl Drop for GatewaysDeleted {
    fn drop(&mut self) {
        let _ = crate::support::kubectl(&["delete", "gateways", "--all", "-n", &self.0, "--wait=true"], None);
    }
}

/// curl from the test process (outside the mesh): `(status, body)`;
/// status 0 when no answer came.
fn curl(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-m", "10", "-w", "\n%{http_code}"];
    all.extend(args);
    let out = run("curl", &all, None);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Which reviews version rendered each of `n` product pages fetched through the gateway.
fn pages(gateway: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = curl(&[&format!("http://{gateway}/productpage")]);
        let version = if status == 200 {
            body.split("reviews-podname\">")
                .nth(1)
                .and_then(|rest| rest.get(..10))
                .filter(|v| v.starts_with("reviews-v"))
                .unwrap_or("no reviews")
                .to_string()
        } else {
            format!("status {status}")
        };
        *counts.entry(version).or_default() += 1;
    }
    counts
}

/// go-httpbin serving HTTPS on 8443 in the mesh (its sidecar injected),
/// with a certificate for secure.example.com.
fn secure_backend(namespace: &str, crt: &str, key: &str) {
    kubectl_ok(
        &["create", "secret", "tls", "secure-cert", "-n", namespace, "--cert", crt, "--key", key],
        None,
    );
    apply(
        namespace,
        "apiVersion: v1\nkind: Service\nmetadata: {name: secure}\nspec:\n  selector: {app: secure}\n  \
         ports: [{name: https, port: 8443}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: secure}\nspec:\n  replicas: 1\n  \
         selector: {matchLabels: {app: secure}}\n  template:\n    metadata: {labels: {app: secure}}\n    spec:\n      \
         containers:\n      - name: httpbin\n        image: docker.io/mccutchen/go-httpbin:v2.15.0\n        \
         args: [-port, \"8443\", -https-cert-file, /etc/certs/tls.crt, -https-key-file, /etc/certs/tls.key, -use-real-hostname]\n        \
         ports: [{containerPort: 8443}]\n        volumeMounts: [{name: certs, mountPath: /etc/certs, readOnly: true}]\n      \
         volumes: [{name: certs, secret: {secretName: secure-cert}}]\n",
    );
}

#[test]
fn the_ingress_gateway_serves_bookinfo_redirects_passes_tls_through_and_terminates_it() {
    let release_ns = "mesh-e2e-gateway";
    let _release = Release::install(release_ns, &[]);
    // The chart's gateways come up with it, injected as routers.
    for name in ["mesh-ingressgateway", "mesh-egressgateway"] {
        kubectl_ok(&["rollout", "status", "deployment", name, "-n", release_ns, "--timeout=120s"], None);
    }
    // A gateway pod the injector never saw (made before the webhook
    // configuration, as Helm may; here created unlabelled, then labelled)
    // is replaced by its ReplicaSet: the controller deletes it.
    kubectl_ok(
        &["apply", "-n", release_ns, "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: missed-gateway\n  \
             annotations: {inject.istio.io/templates: gateway}\nspec:\n  \
             containers: [{name: istio-proxy, image: auto}]\n",
        ),
    );
    kubectl_ok(&["label", "pod", "missed-gateway", "-n", release_ns, "sidecar.istio.io/inject=true"], None);
    eventually("the uninjected gateway pod deleted", Duration::from_secs(30), || {
        let left = crate::support::kubectl(
            &[
                "get",
                "pod",
                "missed-gateway",
                "-n",
                release_ns,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
            None,
        );
        let gone = !left.ok && left.stderr.contains("NotFound");
        (gone || !left.stdout.trim().is_empty()).then_some(())
    });
    eprintln!("an uninjected gateway pod was deleted by the controller");

    let gateway_pod = pod_named(release_ns, "istio=ingressgateway");
    let args = jsonpath(release_ns, &format!("pod/{gateway_pod}"), "{.spec.containers[0].args}");
    assert!(args.contains("router~"), "the gateway announces itself as a router: {args}");
    let ip = jsonpath(release_ns, "service/mesh-ingressgateway", "{.spec.clusterIP}");

    let ns = injected_bookinfo("gateway");
    let n = ns.name.as_str();
    let _gateways = GatewaysDeleted(n.to_string());
    let sample = |file: &str| {
        let path = conformance().join("networking").join(file);
        kubectl_ok(&["apply", "-n", n, "-f", path.to_str().expect("utf-8")], None);
    };

    // Before any Gateway, nothing listens on the gateway's port 80.
    let (status, _) = curl(&[&format!("http://{ip}/productpage")]);
    assert_eq!(status, 0, "no Gateway yet: no listener");

    // Istio's Bookinfo guide: the product page through the ingress gateway.
    // The Gateway and its VirtualService come in one file: no warning.
    let path = conformance().join("networking/bookinfo-gateway.yaml");
    let applied = crate::support::kubectl(&["apply", "-n", n, "-f", path.to_str().expect("utf-8")], None);
    assert!(applied.ok && !applied.stderr.contains("Warning"), "{}", applied.stderr);
    eventually("/productpage through the ingress gateway", Duration::from_secs(60), || {
        (curl(&[&format!("http://{ip}/productpage")]).0 == 200).then_some(())
    });
    let served = (0..20).filter(|_| curl(&[&format!("http://{ip}/productpage")]).0 == 200).count();
    assert_eq!(served, 20, "every page through the gateway");
    eprintln!("bookinfo-gateway.yaml: {served} of 20 pages 200 through {ip}:80");
    // Paths the VirtualService does not route, and hosts nothing binds, are 404.
    assert_eq!(curl(&[&format!("http://{ip}/not-routed")]).0, 404);
    // A VirtualService naming a Gateway that does not exist: its status says so.
    apply(
        n,
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: nowhere}\nspec:\n  \
         hosts: [nowhere.example.com]\n  gateways: [no-such-gateway]\n  \
         http: [{route: [{destination: {host: productpage}}]}]\n",
    );
    let accepted = eventually("the missing Gateway in status", Duration::from_secs(30), || {
        let message = jsonpath(n, "vs/nowhere", "{.status.conditions[?(@.type==\"Accepted\")].message}");
        message.contains("no Gateway").then_some(message)
    });
    eprintln!("status of a VirtualService naming a missing Gateway: {accepted}");

    // The routing samples steer what the outside client sees: productpage's
    // own calls to reviews follow them (its sidecar applies them).
    sample("destination-rule-all.yaml");
    sample("virtual-service-all-v1.yaml");
    eventually("every page from reviews-v1", Duration::from_secs(60), || {
        let counts = pages(&ip, 10);
        (counts.get("reviews-v1") == Some(&10)).then_some(())
    });
    let v1 = pages(&ip, 30);
    assert_eq!(v1.get("reviews-v1"), Some(&30), "{v1:?}");
    eprintln!("virtual-service-all-v1.yaml: pages through the gateway {v1:?}");
    sample("virtual-service-reviews-v3.yaml");
    eventually("every page from reviews-v3", Duration::from_secs(60), || {
        let counts = pages(&ip, 10);
        (counts.get("reviews-v3") == Some(&10)).then_some(())
    });
    let v3 = pages(&ip, 30);
    assert_eq!(v3.get("reviews-v3"), Some(&30), "{v3:?}");
    eprintln!("virtual-service-reviews-v3.yaml: pages through the gateway {v3:?}");

    // A TLS server in the mesh, a certificate for the gateway's own HTTPS.
    let dir = CertDir::new(n);
    let (secure_crt, secure_key) = dir.self_signed("secure", &["secure.example.com"]);
    secure_backend(n, &secure_crt, &secure_key);
    let (web_crt, web_key) = dir.self_signed("web", &["bookinfo.example.com"]);
    kubectl_ok(
        &[
            "create",
            "secret",
            "tls",
            "istio-ingressgateway-certs",
            "-n",
            release_ns,
            "--cert",
            &web_crt,
            "--key",
            &web_key,
        ],
        None,
    );
    rollout(n);
    eventually("the certificate files in the gateway pod", Duration::from_secs(30), || {
        enter(release_ns, &gateway_pod, "test -s /etc/istio/ingressgateway-certs/tls.key").ok.then_some(())
    });

    apply(
        n,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  \
         selector: {istio: ingressgateway}\n  servers:\n  \
         - port: {number: 80, name: http-redirect, protocol: HTTP}\n    hosts: [redirect.example.com]\n    \
           tls: {httpsRedirect: true}\n  \
         - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [secure.example.com]\n    tls: {mode: PASSTHROUGH}\n  \
         - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n    \
           tls:\n      mode: SIMPLE\n      serverCertificate: /etc/istio/ingressgateway-certs/tls.crt\n      \
         privateKey: /etc/istio/ingressgateway-certs/tls.key\n\
         ---\n\
         apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: edge-web}\nspec:\n  \
         hosts: [bookinfo.example.com, redirect.example.com]\n  gateways: [edge]\n  \
         http:\n  - route: [{destination: {host: productpage, port: {number: 9080}}}]\n\
         ---\n\
         apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: edge-secure}\nspec:\n  \
         hosts: [secure.example.com]\n  gateways: [edge]\n  \
         tls:\n  - match: [{port: 443, sniHosts: [secure.example.com]}]\n    \
           route: [{destination: {host: secure, port: {number: 8443}}}]\n",
    );

    // httpsRedirect: 301 to https, for its host only.
    let (status, _) = eventually("a 301 for redirect.example.com", Duration::from_secs(60), || {
        let answer = curl(&["-H", "Host: redirect.example.com", &format!("http://{ip}/productpage")]);
        (answer.0 == 301).then_some(answer)
    });
    assert_eq!(status, 301);
    let headers = run(
        "curl",
        &[
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Host: redirect.example.com",
            &format!("http://{ip}/productpage"),
        ],
        None,
    );
    assert!(
        headers.stdout.to_ascii_lowercase().contains("location: https://redirect.example.com/productpage"),
        "{}",
        headers.stdout
    );
    eprintln!("httpsRedirect: {}", headers.stdout.lines().next().unwrap_or_default().trim());
    assert_eq!(curl(&[&format!("http://{ip}/productpage")]).0, 200, "other hosts are not redirected");

    // TLS PASSTHROUGH by SNI: the client verifies the backend's own certificate.
    let through_gateway = |host: &str| format!("{host}:443:{ip}:443");
    let (status, body) =
        eventually("secure.example.com through the gateway", Duration::from_secs(60), || {
            let answer = curl(&[
                "--cacert",
                &secure_crt,
                "--connect-to",
                &through_gateway("secure.example.com"),
                "https://secure.example.com/hostname",
            ]);
            (answer.0 == 200).then_some(answer)
        });
    assert_eq!(status, 200);
    assert!(body.contains("secure-"), "the backend named itself: {body}");
    eprintln!("PASSTHROUGH secure.example.com: {status} {}", body.trim());

    // SIMPLE: the gateway terminates TLS with the mounted certificate.
    let (status, body) = eventually("bookinfo.example.com over HTTPS", Duration::from_secs(60), || {
        let answer = curl(&[
            "--cacert",
            &web_crt,
            "--connect-to",
            &through_gateway("bookinfo.example.com"),
            "https://bookinfo.example.com/productpage",
        ]);
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(status, 200);
    assert!(body.contains("reviews-v3"), "the routed page, over TLS");
    eprintln!("SIMPLE bookinfo.example.com: {status}, {} bytes", body.len());
    // A name no server lists gets no TLS handshake.
    let (status, _) =
        curl(&["-k", "--connect-to", &through_gateway("other.example.com"), "https://other.example.com/"]);
    assert_eq!(status, 0, "no chain for other.example.com");

    // The gateway's Envoy counts what it served.
    let stats = enter(release_ns, &gateway_pod, "curl -s localhost:15000/stats");
    let served = |stat: &str| {
        stats
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{stat}: ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(served("http.outbound_0.0.0.0_80.downstream_rq_2xx") >= 50.0, "{}", stats.stdout.len());
    assert!(served("http.outbound_0.0.0.0_443.downstream_rq_2xx") >= 1.0);
    assert_eq!(served("listener_manager.lds.update_rejected"), 0.0);
    eprintln!(
        "gateway Envoy: port 80 2xx {}, port 443 2xx {}",
        served("http.outbound_0.0.0.0_80.downstream_rq_2xx"),
        served("http.outbound_0.0.0.0_443.downstream_rq_2xx")
    );
}
