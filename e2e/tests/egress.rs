//! Traffic leaving the mesh, on real traffic: an "external" service (the
//! real go-httpbin, Istio's httpbin sample, on port 80) in a namespace
//! without injection and without a Kubernetes Service, so the mesh's
//! registry does not know it; a curl pod in an injected namespace reaches
//! it by a name its `/etc/hosts` gives (`hostAliases`, what DNS would give
//! on a real cluster) through its Envoy.
//!
//! - REGISTRY_ONLY (the chart's `meshConfig.outboundTrafficPolicy.mode`):
//!   without a ServiceEntry a request on port 80 (HTTP for the mesh) is
//!   answered 502 by the client's Envoy (`block_all`, as Istio's), by name
//!   and by IP, and a connection to port 8000 (no service's) is closed
//!   (`BlackHoleCluster`); with a ServiceEntry naming the host it gets
//!   through: resolution DNS (Envoy resolves the name; port 8000 to
//!   `targetPort` 80), STATIC (the pod's IP as the endpoint, its port from
//!   the endpoint's `ports`, with a subset a DestinationRule and a
//!   VirtualService route to), STATIC by `workloadSelector` (an entry in
//!   the external namespace selecting httpbin's pod) and NONE with the IP
//!   among the entry's `addresses`, each counted on its cluster in the client Envoy's
//!   statistics; a VirtualService on the entry's host adds a header
//!   httpbin sees and times out a slow request at 1 s (504); removing the
//!   entry blocks the host again.
//! - ALLOW_ANY (the default): the same request gets through without any
//!   ServiceEntry, by `PassthroughCluster`; a Sidecar whose
//!   `outboundTrafficPolicy` is REGISTRY_ONLY has the pods it selects get
//!   502 for it again, until it is deleted.
//! - TLS, as Istio's egress TLS origination task: an HTTPS-only httpbin
//!   (a certificate the test makes) reached by the client's own HTTPS
//!   through the entry's HTTPS port (by SNI, the client verifying the
//!   server), and by plain HTTP on the entry's port 80 (`targetPort` 443)
//!   once a DestinationRule's SIMPLE TLS has the client's Envoy originate
//!   TLS (before it, httpbin refuses the plaintext: 400).
//! - Endpoint weights: two httpbin pods as a STATIC entry's endpoints
//!   with weights 4 and 1 get 80% ±10 and the rest of 200 requests.
//!
//! - Through the egress gateway, as Istio's egress gateway task: a
//!   VirtualService sends the sidecars' requests for the external host to
//!   the chart's `mesh-egressgateway`, whose Envoy sends them out: each is
//!   counted on the client's cluster to the gateway and on the gateway's
//!   cluster to the host.
//!
//! Each mode is its own controller (a release per test): the mode is a
//! controller setting, as Istio's MeshConfig.

use std::time::{Duration, Instant};

use crate::support::{
    Applied, CertDir, Release, TempNamespace, apply, controller_metric, enter, eventually, jsonpath,
    kubectl_ok, pod_named, rollout,
};

/// The name the client knows the external service by.
const EXTERNAL_HOST: &str = "httpbin.external.test";

/// Istio's httpbin sample's Deployment with no Service, so nothing in the
/// registry names it: `replicas` go-httpbin pods with `args` (the port
/// among them), listening on `port`; `extra` is added to the pod spec's
/// container (and volumes) as written.
fn external(replicas: u32, args: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: httpbin}}
  template:
    metadata:
      labels: {{app: httpbin}}
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.26.0
        name: httpbin
        args: [{args}]
        ports:
        - containerPort: {port}
{extra}"#
    )
}

/// One of them on port 80.
fn one_external() -> String {
    external(1, r#""-port", "80""#, 80, "")
}

/// Istio's curl sample (its Service has port 80 as HTTP, so the client's
/// Envoy routes port 80 by Host), with the external host in `/etc/hosts`.
fn client(external_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: curl
---
apiVersion: v1
kind: Service
metadata:
  name: curl
  labels: {{app: curl, service: curl}}
spec:
  ports:
  - {{port: 80, name: http}}
  selector: {{app: curl}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
spec:
  replicas: 1
  selector:
    matchLabels: {{app: curl}}
  template:
    metadata:
      labels: {{app: curl}}
    spec:
      terminationGracePeriodSeconds: 0
      serviceAccountName: curl
      hostAliases:
      - ip: "{external_ip}"
        hostnames: ["{EXTERNAL_HOST}"]
      containers:
      - name: curl
        image: curlimages/curl
        command: ["/bin/sleep", "infinity"]
"#
    )
}

/// The mesh with one outbound traffic policy, the external service and the client.
struct Egress {
    release: Release,
    client_ns: TempNamespace,
    external_ns: TempNamespace,
    client: String,
    external_ip: String,
}

impl Egress {
    fn start(release_ns: &str, mode: &str) -> Self {
        Self::start_with(release_ns, mode, |ns| apply(ns, &one_external()))
    }

    /// The same, with `external` putting the external service in the
    /// namespace it is given.
    fn start_with(release_ns: &str, mode: &str, external: impl FnOnce(&str)) -> Self {
        let release = Release::install(
            release_ns,
            &["--set", &format!("meshConfig.outboundTrafficPolicy.mode={mode}")],
        );
        let external_ns = TempNamespace::new("egress-external");
        external(&external_ns.name);
        ready(&external_ns.name);
        let external_ip = jsonpath(&external_ns.name, "pods", "{.items[0].status.podIP}");
        assert!(!external_ip.is_empty(), "the external httpbin has an IP");
        let client_ns = TempNamespace::new("egress");
        kubectl_ok(&["label", "namespace", &client_ns.name, "istio-injection=enabled", "--overwrite"], None);
        apply(&client_ns.name, &client(&external_ip));
        ready(&client_ns.name);
        let client = pod_named(&client_ns.name, "app=curl");
        Self { release, client_ns, external_ns, client, external_ip }
    }

    /// One request from the curl pod through its Envoy: (status, body, seconds taken).
    fn get(&self, host: &str, path: &str) -> (u16, String, f64) {
        self.request(&format!("http://{host}{path}"), "")
    }

    /// One request to `url` with curl's `args`: (status, body, seconds taken).
    fn request(&self, url: &str, args: &str) -> (u16, String, f64) {
        let script = format!("curl -s -m 10 {args} -w '\\n%{{http_code}}' '{url}'");
        let start = Instant::now();
        let out = enter(&self.client_ns.name, &self.client, &script);
        let elapsed = start.elapsed().as_secs_f64();
        let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
        (status.trim().parse().unwrap_or(0), body.to_string(), elapsed)
    }

    fn status(&self, host: &str) -> u16 {
        self.get(host, "/get").0
    }

    /// Waits until `n` requests in a row to `host` get `status`.
    fn settle(&self, host: &str, status: u16, n: usize) {
        eventually(&format!("{n} requests to {host} answered {status}"), Duration::from_secs(60), || {
            (0..n).all(|_| self.status(host) == status).then_some(())
        });
    }

    /// The client Envoy's counter `name` (0 when absent).
    fn stat(&self, name: &str) -> f64 {
        let out = enter(&self.client_ns.name, &self.client, "curl -sf -m 5 http://127.0.0.1:15000/stats");
        assert!(out.ok, "the client Envoy's /stats: {}", out.stderr);
        let prefix = format!("{name}: ");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn assert_no_nack(&self) {
        let nacks = controller_metric(&self.release.namespace, "mesh_xds_nacks_total");
        assert_eq!(nacks.values().sum::<f64>(), 0.0, "Envoy refused configuration: {nacks:?}");
        let acks: f64 = controller_metric(&self.release.namespace, "mesh_xds_acks_total").values().sum();
        assert!(acks > 0.0, "no ACK counted: the metric's name is wrong");
    }
}

fn ready(namespace: &str) {
    rollout(namespace);
    kubectl_ok(
        &["wait", "-n", namespace, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
        None,
    );
}

/// The entry's port: 8000 on the client's side, httpbin's 80 behind it.
const ENTRY_PORT: u16 = 8000;

/// Resolution DNS: Envoy resolves the host; `targetPort` is httpbin's port.
fn dns_entry() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: {ENTRY_PORT}, name: http, protocol: HTTP, targetPort: 80}}
  location: MESH_EXTERNAL
  resolution: DNS
"#
    )
}

/// Resolution STATIC: the pod's IP, its port by the endpoint's `ports`,
/// with a label a DestinationRule's subset selects and a VirtualService
/// routes to.
fn static_entry(ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: {ENTRY_PORT}, name: http, protocol: HTTP}}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: "{ip}"
    ports: {{http: 80}}
    labels: {{version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin-external
spec:
  host: {EXTERNAL_HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  http:
  - route:
    - destination: {{host: {EXTERNAL_HOST}, subset: v1}}
"#
    )
}

/// Resolution STATIC by `workloadSelector`, in the external service's own
/// namespace: its pods are the endpoints (not injected, so no mutual TLS
/// though the entry is MESH_INTERNAL).
fn selector_entry() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-pods
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: {ENTRY_PORT}, name: http, protocol: HTTP, targetPort: 80}}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: httpbin}}
"#
    )
}

/// Resolution NONE with the pod's IP as the entry's address: connections
/// to it on port 80 go to where they were going.
fn address_entry(ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  addresses: ["{ip}"]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  location: MESH_EXTERNAL
  resolution: NONE
"#
    )
}

/// A header httpbin sees, and a 1 s timeout, on the entry's host.
fn header_and_timeout() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  http:
  - timeout: 1s
    headers:
      request:
        set: {{x-egress: through-the-mesh}}
    route:
    - destination: {{host: {EXTERNAL_HOST}}}
"#
    )
}

/// Sends 10 requests to `host`, all of which must be answered 200, and
/// returns how many the client's Envoy counted on `cluster`.
fn ten_counted(mesh: &Egress, host: &str, cluster: &str) -> f64 {
    let stat = format!("cluster.{cluster}.upstream_rq_200");
    let before = mesh.stat(&stat);
    for i in 0..10 {
        let (status, body, _) = mesh.get(host, "/get");
        assert_eq!(status, 200, "request {i} to {host}: {body}");
    }
    mesh.stat(&stat) - before
}

#[test]
fn registry_only_reaches_an_external_service_only_through_a_service_entry() {
    let mesh = Egress::start("mesh-e2e-egress-registry", "REGISTRY_ONLY");
    let ns = mesh.client_ns.name.clone();
    let by_name = format!("{EXTERNAL_HOST}:{ENTRY_PORT}");
    let ip = mesh.external_ip.clone();

    // Unknown to the registry. On port 80, which the mesh routes as HTTP,
    // the client's Envoy answers 502 (`block_all`), by name and by IP; on
    // 8000, which no service has, BlackHoleCluster closes the connection.
    mesh.settle(EXTERNAL_HOST, 502, 5);
    let (status, body, _) = mesh.get(&ip, "/get");
    assert_eq!(status, 502, "by IP: {body}");
    assert!(!body.contains("origin"), "the request never reached httpbin: {body}");
    assert_eq!(mesh.status(&by_name), 0, "no answer at all on a port no service has");

    // DNS: Envoy resolves the name as the pod's /etc/hosts says, and
    // connects to the targetPort.
    {
        let _entry = Applied::new(&ns, &dns_entry());
        mesh.settle(&by_name, 200, 5);
        let cluster = format!("outbound|{ENTRY_PORT}||{EXTERNAL_HOST}");
        let counted = ten_counted(&mesh, &by_name, &cluster);
        assert!(counted >= 10.0, "{cluster} counted {counted} of 10 requests");
        println!("[egress] DNS entry: 10 of 10 answered 200, {counted} counted on {cluster}");
        // Only the entry's port is the entry's.
        assert_eq!(mesh.status(EXTERNAL_HOST), 502);

        // A VirtualService on the entry's host: a header httpbin sees, a timeout.
        let _vs = Applied::new(&ns, &header_and_timeout());
        let seen = eventually("httpbin to see the VirtualService's header", Duration::from_secs(30), || {
            let (status, body, _) = mesh.get(&by_name, "/headers");
            (status == 200 && body.contains("through-the-mesh")).then_some(body)
        });
        assert!(seen.to_ascii_lowercase().contains("x-egress"), "{seen}");
        let (status, _, took) = mesh.get(&by_name, "/delay/3");
        assert_eq!(status, 504, "a 3 s answer under a 1 s route timeout");
        assert!(took < 2.5, "the timeout cut it at about 1 s, not {took:.1} s");
        println!(
            "[egress] VirtualService on the entry: header seen by httpbin, /delay/3 answered 504 after {took:.1} s"
        );
    }
    // The entry removed: blocked again.
    mesh.settle(&by_name, 0, 3);

    // STATIC: the pod's IP as the endpoint (its port from the endpoint's
    // `ports`), routed to a subset by its label.
    {
        let _entry = Applied::new(&ns, &static_entry(&ip));
        mesh.settle(&by_name, 200, 5);
        let cluster = format!("outbound|{ENTRY_PORT}|v1|{EXTERNAL_HOST}");
        let counted = ten_counted(&mesh, &by_name, &cluster);
        assert!(counted >= 10.0, "{cluster} counted {counted} of 10 requests");
        println!("[egress] STATIC entry: 10 of 10 answered 200, {counted} counted on {cluster}");
    }
    mesh.settle(&by_name, 0, 3);

    // A workloadSelector: the external namespace's httpbin pod, by its labels.
    {
        let _entry = Applied::new(&mesh.external_ns.name, &selector_entry());
        mesh.settle(&by_name, 200, 5);
        let cluster = format!("outbound|{ENTRY_PORT}||{EXTERNAL_HOST}");
        let counted = ten_counted(&mesh, &by_name, &cluster);
        assert!(counted >= 10.0, "{cluster} counted {counted} of 10 requests");
        println!("[egress] workloadSelector entry: 10 of 10 answered 200, {counted} counted on {cluster}");
    }
    mesh.settle(&by_name, 0, 3);

    // NONE with the IP as the entry's address: to the original destination,
    // by IP and by name alike.
    {
        let _entry = Applied::new(&ns, &address_entry(&ip));
        mesh.settle(&ip, 200, 5);
        let cluster = format!("outbound|80||{EXTERNAL_HOST}");
        let counted = ten_counted(&mesh, &ip, &cluster) + ten_counted(&mesh, EXTERNAL_HOST, &cluster);
        assert!(counted >= 20.0, "{cluster} counted {counted} of 20 requests");
        println!("[egress] NONE entry at the address: 20 of 20 (by IP, by name) answered 200 on {cluster}");
    }
    mesh.settle(&ip, 502, 3);
    mesh.assert_no_nack();
}

#[test]
fn allow_any_reaches_an_external_service_without_a_service_entry() {
    let mesh = Egress::start("mesh-e2e-egress-allow", "ALLOW_ANY");
    let passthrough = "cluster.PassthroughCluster.upstream_rq_200";
    mesh.settle(EXTERNAL_HOST, 200, 5);
    let before = mesh.stat(passthrough);
    for _ in 0..10 {
        assert_eq!(mesh.status(EXTERNAL_HOST), 200);
    }
    assert_eq!(mesh.status(&mesh.external_ip), 200);
    let counted = mesh.stat(passthrough) - before;
    assert!(counted >= 11.0, "PassthroughCluster counted {counted} of 11 requests");
    println!(
        "[egress] ALLOW_ANY: 11 of 11 answered 200 without an entry, {counted} through PassthroughCluster"
    );
    // A Sidecar's REGISTRY_ONLY replaces the mesh's ALLOW_ANY for the pods
    // it selects: the same host is refused by their Envoy, until it goes.
    let sidecar = Applied::new(
        &mesh.client_ns.name,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata: {name: registry-only}\nspec:\n  \
         workloadSelector: {labels: {app: curl}}\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    mesh.settle(EXTERNAL_HOST, 502, 5);
    drop(sidecar);
    mesh.settle(EXTERNAL_HOST, 200, 5);
    mesh.assert_no_nack();
}

/// go-httpbin serving only HTTPS on 443, with a certificate for the
/// external host that `certs` holds (self-signed: its own CA).
fn https_external(namespace: &str, certs: &CertDir) {
    let (crt, key) = certs.self_signed("tls", &[EXTERNAL_HOST]);
    kubectl_ok(
        &["create", "secret", "tls", "httpbin-cert", "-n", namespace, "--cert", &crt, "--key", &key],
        None,
    );
    let args = r#""-port", "443", "-https-cert-file", "/etc/certs/tls.crt", "-https-key-file", "/etc/certs/tls.key""#;
    let certs = "        volumeMounts: [{name: certs, mountPath: /etc/certs, readOnly: true}]\n      \
                 volumes: [{name: certs, secret: {secretName: httpbin-cert}}]\n";
    apply(namespace, &external(1, args, 443, certs));
}

/// Istio's egress TLS origination shape: the host's HTTPS port, and an
/// HTTP port 80 whose target is the server's 443.
fn tls_entry() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: 443, name: https, protocol: HTTPS}}
  - {{number: 80, name: http, protocol: HTTP, targetPort: 443}}
  location: MESH_EXTERNAL
  resolution: DNS
"#
    )
}

/// TLS from the client's Envoy on the entry's port 80, verified against
/// the server's CA.
fn originate_tls(ca: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls
spec:
  host: {EXTERNAL_HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
        mode: SIMPLE
        sni: {EXTERNAL_HOST}
        caCertificates: {ca}
"#
    )
}

#[test]
fn an_external_https_host_is_reached_by_sni_and_a_destination_rule_originates_tls_to_it() {
    // The local node runs Envoy as a host program, so the client's Envoy
    // reads the CA file by its host path (on a real cluster it would be
    // mounted into the sidecar).
    let certs = CertDir::new("egress-tls");
    let mesh = Egress::start_with("mesh-e2e-egress-tls", "REGISTRY_ONLY", |ns| https_external(ns, &certs));
    let ns = mesh.client_ns.name.clone();
    let https = format!("https://{EXTERNAL_HOST}/get");
    let verified = format!("--cacert {}", certs.path("tls.crt"));

    // Unknown to the registry: the client's own TLS connection is closed.
    let (status, body, _) = mesh.request(&https, &verified);
    assert_eq!(status, 0, "no answer without an entry: {body}");

    let _entry = Applied::new(&ns, &tls_entry());
    // The HTTPS port: the client's TLS goes through by its SNI, whole (curl verifies httpbin's certificate).
    eventually("HTTPS through the entry's SNI chain", Duration::from_secs(60), || {
        (mesh.request(&https, &verified).0 == 200).then_some(())
    });
    let cluster = format!("cluster.outbound|443||{EXTERNAL_HOST}.upstream_cx_total");
    let before = mesh.stat(&cluster);
    for i in 0..5 {
        let (status, body, _) = mesh.request(&https, &verified);
        assert_eq!(status, 200, "HTTPS request {i}: {body}");
    }
    let connections = mesh.stat(&cluster) - before;
    assert!(connections >= 5.0, "{cluster}: {connections} connections for 5 requests");
    println!(
        "[egress] HTTPS by SNI: 5 of 5 answered 200, {connections} connections on outbound|443||{EXTERNAL_HOST}"
    );

    // Port 80 to the server's 443 in plaintext: httpbin refuses it.
    let plain = format!("http://{EXTERNAL_HOST}/get");
    eventually("plaintext to the HTTPS port refused", Duration::from_secs(60), || {
        (mesh.request(&plain, "").0 == 400).then_some(())
    });
    // The DestinationRule's SIMPLE TLS: the client's Envoy speaks TLS, checking the certificate.
    let _rule = Applied::new(&ns, &originate_tls(&certs.path("tls.crt")));
    eventually("TLS originated by the client's Envoy", Duration::from_secs(60), || {
        (mesh.request(&plain, "").0 == 200).then_some(())
    });
    let handshakes = format!("cluster.outbound|80||{EXTERNAL_HOST}.ssl.handshake");
    let before = mesh.stat(&handshakes);
    let mut answered = 0;
    for _ in 0..5 {
        let (status, body, _) = mesh.request(&plain, "-H 'Connection: close'");
        assert_eq!(status, 200, "{body}");
        answered += 1;
    }
    let counted = mesh.stat(&handshakes) - before;
    assert!(counted >= 1.0, "the client's Envoy made TLS handshakes to httpbin: {counted}");
    println!(
        "[egress] TLS origination: {answered} of 5 plain requests answered 200 over TLS, {counted} handshakes on outbound|80||{EXTERNAL_HOST}"
    );
    mesh.assert_no_nack();
}

/// STATIC endpoints with weights 4 and 1.
fn weighted_entry(heavy: &str, light: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: {ENTRY_PORT}, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - {{address: "{heavy}", ports: {{http: 80}}, weight: 4}}
  - {{address: "{light}", ports: {{http: 80}}, weight: 1}}
"#
    )
}

#[test]
fn endpoint_weights_share_an_entrys_traffic() {
    let mesh = Egress::start_with("mesh-e2e-egress-weight", "REGISTRY_ONLY", |ns| {
        // Two pods telling their pod name (`/hostname`).
        apply(ns, &external(2, r#""-port", "80", "-use-real-hostname""#, 80, ""))
    });
    let listing = jsonpath(
        &mesh.external_ns.name,
        "pods",
        r#"{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}"#,
    );
    let pods: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(pods.len(), 2, "two external pods: {listing}");
    let (heavy, light) = (pods[0], pods[1]);
    let _entry = Applied::new(&mesh.client_ns.name, &weighted_entry(heavy.1, light.1));
    let by_name = format!("{EXTERNAL_HOST}:{ENTRY_PORT}");
    mesh.settle(&by_name, 200, 5);

    let n = 200;
    let script = format!(
        "for i in $(seq 1 {n}); do curl -s -m 5 'http://{by_name}/hostname' || echo failed; echo; done"
    );
    let out = enter(&mesh.client_ns.name, &mesh.client, &script);
    let count = |pod: &str| out.stdout.lines().filter(|l| l.contains(pod)).count();
    let (to_heavy, to_light) = (count(heavy.0), count(light.0));
    assert_eq!(to_heavy + to_light, n, "every request answered by one of the pods: {}", out.stdout);
    let share = to_heavy as f64 * 100.0 / n as f64;
    println!(
        "[egress] weights 4:1 over {n} requests: {to_heavy} to the heavy endpoint, {to_light} to the light ({share:.0}%)"
    );
    assert!((70.0..=90.0).contains(&share), "80% ±10 to the weight-4 endpoint, got {share:.0}%");
    mesh.assert_no_nack();
}

/// Istio's egress gateway task, on the external httpbin: a STATIC entry
/// for the host on port 80, the chart's egress gateway admitting it, and
/// one VirtualService with two rules: from the sidecars (`mesh`) to the
/// egress gateway, and from the gateway out to the host.
fn through_egress_gateway(release_ns: &str, external_ip: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-external
spec:
  hosts: [{EXTERNAL_HOST}]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: "{external_ip}"
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{EXTERNAL_HOST}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: egressgateway-for-httpbin
spec:
  host: mesh-egressgateway.{release_ns}.svc.cluster.local
  subsets:
  - name: httpbin
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: direct-httpbin-through-egress-gateway
spec:
  hosts: [{EXTERNAL_HOST}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: mesh-egressgateway.{release_ns}.svc.cluster.local
        subset: httpbin
        port: {{number: 80}}
      weight: 100
  - match:
    - gateways: [istio-egressgateway]
      port: 80
    route:
    - destination:
        host: {EXTERNAL_HOST}
        port: {{number: 80}}
      weight: 100
"#
    )
}

#[test]
fn egress_through_the_egress_gateway_is_counted_by_the_gateways_envoy() {
    let mesh = Egress::start("mesh-e2e-egress-gateway", "REGISTRY_ONLY");
    let r = mesh.release.namespace.clone();
    let n = mesh.client_ns.name.clone();
    // Blocked until the entry names the host.
    mesh.settle(EXTERNAL_HOST, 502, 3);
    let _routes = Applied::new(&n, &through_egress_gateway(&r, &mesh.external_ip));
    mesh.settle(EXTERNAL_HOST, 200, 5);

    let gateway = pod_named(&r, "istio=egressgateway");
    let gateway_stat = |name: &str| -> f64 {
        let out = enter(&r, &gateway, "curl -sf -m 5 http://127.0.0.1:15000/stats");
        assert!(out.ok, "the egress gateway's /stats: {}", out.stderr);
        let prefix = format!("{name}: ");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let out_cluster = format!("cluster.outbound|80||{EXTERNAL_HOST}.upstream_rq_200");
    let via_cluster =
        format!("cluster.outbound|80|httpbin|mesh-egressgateway.{r}.svc.cluster.local.upstream_rq_200");
    let (gateway_before, client_before) = (gateway_stat(&out_cluster), mesh.stat(&via_cluster));
    for _ in 0..20 {
        let (status, body, _) = mesh.get(EXTERNAL_HOST, "/headers");
        assert_eq!(status, 200, "{body}");
    }
    let (gateway_after, client_after) = (gateway_stat(&out_cluster), mesh.stat(&via_cluster));
    eprintln!(
        "20 requests: the client's Envoy sent {} to the egress gateway, the gateway's Envoy {} to {EXTERNAL_HOST}",
        client_after - client_before,
        gateway_after - gateway_before
    );
    assert!(client_after - client_before >= 20.0, "the client's Envoy sent them to the egress gateway");
    assert!(gateway_after - gateway_before >= 20.0, "the egress gateway sent them out");
    mesh.assert_no_nack();
}
