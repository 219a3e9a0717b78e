//! HTTPS on the ingress gateway with certificates from Kubernetes Secrets
//! (`credentialName`), as Istio's "Secure Gateways" task sets it up: the
//! Secret in the gateway's namespace, a Gateway server on 443 with TLS
//! mode SIMPLE, and a VirtualService binding httpbin to it. The client is
//! outside the mesh (curl on the host, at the gateway Service's address)
//! and verifies the certificate against the CA that signed it.
//!
//! Then the Secret is replaced by one signed by another CA while requests
//! keep coming: the new certificate is served without restarting the
//! gateway or replacing its listener, and no request fails. And a MUTUAL
//! server: a client certificate signed by the Secret's `ca.crt` is needed.

use std::time::Duration;

use crate::support::{
    CertDir, Release, TempNamespace, apply, enter, eventually, httpbin, jsonpath, kubectl_ok, pod_named,
    rollout, run,
};

/// The ingress gateway the chart installs, as Istio's samples select it.
const GATEWAY_SERVICE: &str = "mesh-ingressgateway";
const GATEWAY_SELECTOR: &str = "istio=ingressgateway";

/// Creates or replaces the `kubernetes.io/tls` Secret `name` in `namespace`.
fn tls_secret(namespace: &str, name: &str, crt: &str, key: &str, ca: Option<&str>) {
    let mut args = vec!["create", "secret", "generic", name, "-n", namespace, "--type", "kubernetes.io/tls"];
    let (crt, key) = (format!("--from-file=tls.crt={crt}"), format!("--from-file=tls.key={key}"));
    args.extend([crt.as_str(), key.as_str()]);
    let ca = ca.map(|ca| format!("--from-file=ca.crt={ca}"));
    args.extend(ca.as_deref());
    args.extend(["--dry-run=client", "-o", "yaml"]);
    let yaml = kubectl_ok(&args, None);
    kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
}

/// What curl on the host got for `https://<host><path>` at the gateway:
/// the status code, or `000` when the connection or TLS failed.
fn https(gateway_ip: &str, host: &str, path: &str, client_args: &[&str]) -> String {
    let resolve = format!("{host}:443:{gateway_ip}");
    let url = format!("https://{host}{path}");
    let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "--resolve", &resolve];
    args.extend(client_args);
    args.push(&url);
    run("curl", &args, None).stdout.trim().to_string()
}

fn envoy_stat(namespace: &str, pod: &str, name: &str) -> f64 {
    let out = enter(namespace, pod, "curl -s localhost:15000/stats");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} among {pod}'s Envoy stats: {}", out.stderr))
}

/// Istio's task's Gateway and VirtualService, with a MUTUAL server beside.
fn secure_gateway(namespace: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts: [httpbin.example.com]
  - port: {{number: 443, name: https-mutual, protocol: HTTPS}}
    tls:
      mode: MUTUAL
      credentialName: mutual-credential
    hosts: [mutual.example.com]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin.example.com, mutual.example.com]
  gateways: [mygateway]
  http:
  - match: [{{uri: {{prefix: /status}}}}]
    route:
    - destination: {{port: {{number: 8000}}, host: httpbin.{namespace}.svc.cluster.local}}
"#
    )
}

#[test]
fn https_with_a_credential_secret_verifies_rotates_without_a_drop_and_can_require_client_certificates() {
    let release = Release::install("mesh-e2e-gw-tls", &[]);
    let r = release.namespace.as_str();
    let ns = TempNamespace::new("gw-tls");
    let n = ns.name.as_str();
    kubectl_ok(&["label", "namespace", n, "istio-injection=enabled", "--overwrite"], None);
    apply(n, &httpbin(1, ""));
    rollout(n);
    rollout(r);

    let certs = CertDir::new(n);
    for ca in ["first-ca", "second-ca", "client-ca"] {
        certs.self_signed(ca, &[]);
    }
    certs.signed("httpbin", "httpbin.example.com", "first-ca");
    certs.signed("httpbin-rotated", "httpbin.example.com", "second-ca");
    certs.signed("mutual", "mutual.example.com", "first-ca");
    certs.signed("client", "client.example.com", "client-ca");
    let file = |name: &str| certs.path(name);
    tls_secret(r, "httpbin-credential", &file("httpbin.crt"), &file("httpbin.key"), None);
    tls_secret(
        r,
        "mutual-credential",
        &file("mutual.crt"),
        &file("mutual.key"),
        Some(&file("client-ca.crt")),
    );
    apply(n, &secure_gateway(n));

    let ip = jsonpath(r, &format!("service/{GATEWAY_SERVICE}"), "{.spec.clusterIP}");
    let first = file("first-ca.crt");
    let second = file("second-ca.crt");
    eventually("httpbin.example.com served over HTTPS at the gateway", Duration::from_secs(90), || {
        (https(&ip, "httpbin.example.com", "/status/418", &["--cacert", &first]) == "418").then_some(())
    });
    // The client really checks: another CA's trust fails the handshake.
    assert_eq!(https(&ip, "httpbin.example.com", "/status/418", &["--cacert", &second]), "000");

    // Rotation, under load: every request from before until after trusts both CAs.
    let gateway = pod_named(r, GATEWAY_SELECTOR);
    let restarts = || jsonpath(r, &format!("pod/{gateway}"), "{.status.containerStatuses[*].restartCount}");
    let restarts_before = restarts();
    let modified = envoy_stat(r, &gateway, "listener_manager.listener_modified");
    let both = file("both-cas.crt");
    let pems = [first.as_str(), second.as_str()].map(|f| std::fs::read_to_string(f).expect("a CA"));
    std::fs::write(&both, pems.concat()).expect("a bundle");
    let stop = file("stop");
    let script = format!(
        "for i in $(seq 1 1200); do [ -e {stop} ] && break; \
           curl -s -o /dev/null -w '%{{http_code}}\\n' -m 5 --cacert {both} \
             --resolve httpbin.example.com:443:{ip} https://httpbin.example.com/status/200; \
           sleep 0.05; done"
    );
    let load = std::thread::spawn(move || run("sh", &["-c", &script], None));
    std::thread::sleep(Duration::from_secs(2));
    tls_secret(r, "httpbin-credential", &file("httpbin-rotated.crt"), &file("httpbin-rotated.key"), None);
    eventually("the rotated certificate served", Duration::from_secs(60), || {
        (https(&ip, "httpbin.example.com", "/status/200", &["--cacert", &second]) == "200").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").expect("stop file");
    let codes = load.join().expect("the load loop").stdout;
    let codes: Vec<&str> = codes.lines().collect();
    eprintln!("requests during rotation: {}", codes.len());
    assert!(codes.len() >= 20, "the load ran across the rotation: {codes:?}");
    assert!(codes.iter().all(|c| *c == "200"), "every request during rotation succeeded: {codes:?}");
    assert_eq!(
        https(&ip, "httpbin.example.com", "/status/200", &["--cacert", &first]),
        "000",
        "old certificate gone"
    );
    assert_eq!(restarts(), restarts_before, "the gateway did not restart");
    assert_eq!(pod_named(r, GATEWAY_SELECTOR), gateway, "the same gateway pod");
    assert_eq!(
        envoy_stat(r, &gateway, "listener_manager.listener_modified"),
        modified,
        "the listener was not replaced: only its secret changed"
    );

    // MUTUAL: the Secret's ca.crt decides which client certificates pass.
    let mutual = |client: &[&str]| {
        let mut args = vec!["--cacert", first.as_str()];
        args.extend(client);
        https(&ip, "mutual.example.com", "/status/200", &args)
    };
    let (client_crt, client_key) = (file("client.crt"), file("client.key"));
    eventually("mutual.example.com with a client certificate", Duration::from_secs(60), || {
        (mutual(&["--cert", &client_crt, "--key", &client_key]) == "200").then_some(())
    });
    assert_eq!(mutual(&[]), "000", "no client certificate, no request");
    let (wrong_crt, wrong_key) = (file("httpbin.crt"), file("httpbin.key"));
    assert_eq!(
        mutual(&["--cert", &wrong_crt, "--key", &wrong_key]),
        "000",
        "a client certificate of another CA"
    );

    assert_eq!(envoy_stat(r, &gateway, "listener_manager.lds.update_rejected"), 0.0);
}
