//! VirtualService `tcp` and `tls` routes on real connections: Istio's TCP
//! traffic shifting task (tcp-echo v1 and v2 from Istio's
//! `tcp-echo-services.yaml`, shifted 80/20 and then wholly to v2) through
//! the client's sidecar, a `sourceSubnet` match, and TLS routing by SNI to
//! two go-httpbin deployments serving HTTPS with a certificate of their
//! own, which the client checks: the mesh routes the client's TLS by its
//! SNI without terminating it (and wraps it in its own mutual TLS between
//! the sidecars, as Istio does).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    Applied, CertDir, Release, TempNamespace, apply, container_log, enter, eventually, jsonpath, kubectl_ok,
    pod_named,
};

/// Istio's `samples/tcp-echo/tcp-echo-services.yaml`: one Service on
/// 9000 and 9001 in front of v1 (prefix "one") and v2 (prefix "two").
const TCP_ECHO_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  labels:
    app: tcp-echo
    service: tcp-echo
spec:
  ports:
  - name: tcp
    port: 9000
  - name: tcp-other
    port: 9001
  # Port 9002 is omitted intentionally for testing the pass through filter chain.
  selector:
    app: tcp-echo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-v1
  labels:
    app: tcp-echo
    version: v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tcp-echo
      version: v1
  template:
    metadata:
      labels:
        app: tcp-echo
        version: v1
    spec:
      containers:
      - name: tcp-echo
        image: docker.io/istio/tcp-echo-server:1.3
        imagePullPolicy: IfNotPresent
        args: [ "9000,9001,9002", "one" ]
        ports:
        - containerPort: 9000
        - containerPort: 9001
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-v2
  labels:
    app: tcp-echo
    version: v2
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tcp-echo
      version: v2
  template:
    metadata:
      labels:
        app: tcp-echo
        version: v2
    spec:
      containers:
      - name: tcp-echo
        image: docker.io/istio/tcp-echo-server:1.3
        imagePullPolicy: IfNotPresent
        args: [ "9000,9001,9002", "two" ]
        ports:
        - containerPort: 9000
        - containerPort: 9001
"#;

/// The subsets of Istio's `tcp-echo-all-v1.yaml`.
const TCP_ECHO_DESTINATION: &str = "
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// Istio's tcp-echo VirtualService for sidecars (the task's own binds it to
/// its ingress gateway's port 31400): `weights` of v1 and v2 on port 9000.
fn tcp_echo_route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: {v1}
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: {v2}
"
    )
}

/// An injected pod that only sleeps, to send from; `volumes` may mount more.
fn sleeper(name: &str, mounts: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  \
         containers:\n  - name: sleep\n    image: busybox\n    command: [sh, -c, 'sleep 3600']\n{mounts}{volumes}"
    )
}

/// A namespace labelled for injection, with the chart installed.
fn injected(release_ns: &str, prefix: &str) -> (Release, TempNamespace) {
    let release = Release::install(release_ns, &[]);
    let ns = TempNamespace::new(prefix);
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
    (release, ns)
}

fn all_ready(namespace: &str) {
    kubectl_ok(&["rollout", "status", "deployment", "-n", namespace, "--timeout=180s"], None);
    kubectl_ok(
        &["wait", "-n", namespace, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
        None,
    );
}

/// Opens `n` connections to tcp-echo:9000 from `pod`, one after another,
/// sends a line on each and counts the first word of the answers ("one",
/// "two"; "closed" when none came within 5 s, "refused" when the
/// connection failed).
fn echoes(namespace: &str, pod: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "bash -c 'for i in $(seq 1 {n}); do \
           exec 3<>/dev/tcp/tcp-echo/9000 || {{ echo refused; continue; }}; \
           echo hello >&3; \
           if read -t 5 word rest <&3; then echo \"$word\"; else echo closed; fi; \
           exec 3<&-; \
         done'"
    );
    let out = enter(namespace, pod, &script);
    let mut counts = BTreeMap::new();
    for word in out.stdout.lines() {
        *counts.entry(word.to_string()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{n} connections: {counts:?} {}", out.stderr);
    counts
}

/// Waits until `n` connections in a row are all answered by `prefix`.
fn settle(namespace: &str, pod: &str, prefix: &str, n: usize) {
    eventually(&format!("{n} connections answered by {prefix}"), Duration::from_secs(60), || {
        (echoes(namespace, pod, n).get(prefix) == Some(&n)).then_some(())
    });
}

/// The counters of the Envoy in `pod`, from its admin port, by name.
fn envoy_stats(namespace: &str, pod: &str) -> BTreeMap<String, f64> {
    let out = enter(namespace, pod, "curl -s http://127.0.0.1:15000/stats");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn envoy_stat(namespace: &str, pod: &str, name: &str) -> f64 {
    let stats = envoy_stats(namespace, pod);
    stats
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("{name} among {pod}'s Envoy stats ({} read)", stats.len()))
}

fn share(counts: &BTreeMap<String, usize>, word: &str, n: usize) -> f64 {
    *counts.get(word).unwrap_or(&0) as f64 * 100.0 / n as f64
}

#[test]
fn istios_tcp_traffic_shifting_moves_a_fifth_then_every_connection_to_v2() {
    let _release = Release::install("mesh-e2e-l4-tcp", &["--set", "meshConfig.accessLogFile=/dev/stdout"]);
    let ns = TempNamespace::new("l4-tcp");
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
    let n = ns.name.as_str();
    apply(n, TCP_ECHO_SERVICES);
    apply(n, &sleeper("sleep", "", ""));
    all_ready(n);
    let client = pod_named(n, "app=sleep");

    // Without routes, both versions answer.
    let before = eventually("both versions answering", Duration::from_secs(60), || {
        let counts = echoes(n, &client, 40);
        (counts.contains_key("one") && counts.contains_key("two")).then_some(counts)
    });
    assert_eq!(before.values().sum::<usize>(), 40, "{before:?}");

    apply(n, TCP_ECHO_DESTINATION);
    apply(n, &tcp_echo_route(100, 0));
    settle(n, &client, "one", 40);

    // 80/20 over 1,000 connections.
    apply(n, &tcp_echo_route(80, 20));
    eventually("v2 answering some connections", Duration::from_secs(60), || {
        echoes(n, &client, 40).contains_key("two").then_some(())
    });
    let counts = echoes(n, &client, 1000);
    let (one, two) = (share(&counts, "one", 1000), share(&counts, "two", 1000));
    eprintln!("80/20 over 1,000 connections: {counts:?}");
    assert!(
        (two - 20.0).abs() <= 5.0 && one + two == 100.0,
        "v2 {two:.1}% (20 ± 5), v1 {one:.1}%: {counts:?}"
    );

    // Then everything to v2.
    apply(n, &tcp_echo_route(0, 100));
    settle(n, &client, "two", 40);
    let counts = echoes(n, &client, 200);
    assert_eq!(counts.get("two"), Some(&200), "{counts:?}");

    // v2's cluster counted the connections it took (the last 200 at least),
    // and the Envoy took every listener it was sent.
    let cluster = format!("outbound|9000|v2|tcp-echo.{n}.svc.cluster.local");
    assert!(
        envoy_stat(n, &client, &format!("cluster.{cluster}.upstream_cx_total")) >= 200.0,
        "v2's cluster counted its connections"
    );
    assert_eq!(envoy_stat(n, &client, "listener_manager.lds.update_rejected"), 0.0);

    // Istio's TCP metrics, from both ends: the client's proxy counted
    // (reporter source) and v2's proxy counted (reporter destination, the
    // caller's SPIFFE ID, mutual TLS) at least the last 200 connections,
    // each closed, with the bytes each way ("hello\n" in, the echo out).
    let service = format!("tcp-echo.{n}.svc.cluster.local;tcp-echo;{n}");
    let caller = format!("spiffe://cluster.local/ns/{n}/sa/default");
    let server = pod_named(n, "app=tcp-echo,version=v2");
    for (pod, labels) in [
        (client.as_str(), vec!["reporter=\"source\"".to_string(), format!("destination=\"tcp-echo-v2;{n};")]),
        (
            server.as_str(),
            vec![
                "reporter=\"destination\"".to_string(),
                format!("source_principal=\"{caller}\""),
                "connection_security_policy=\"mutual_tls\"".to_string(),
            ],
        ),
    ] {
        let text = enter(n, pod, "curl -s http://127.0.0.1:15000/stats/prometheus").stdout;
        let total = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("envoy_istio_{name}{{")))
                .filter(|l| {
                    l.contains(&format!("service=\"{service}\"")) && l.contains("request_protocol=\"tcp\"")
                })
                .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        let (opened, closed) = (total("tcp_connections_opened_total"), total("tcp_connections_closed_total"));
        let (received, sent) = (total("tcp_received_bytes_total"), total("tcp_sent_bytes_total"));
        eprintln!("{pod}: opened {opened}, closed {closed}, received {received} B, sent {sent} B");
        assert!(opened >= 200.0 && closed >= 200.0, "{pod}: {opened} opened, {closed} closed");
        assert!(received >= 6.0 * 200.0 && sent >= 4.0 * 200.0, "{pod}: {received} B in, {sent} B out");
    }
    // Each connection is one line of the access log when it ends, in
    // Istio's TEXT format: no request ("- - -"), the bytes, the cluster.
    let log = container_log(n, &client, "istio-proxy");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(&format!("outbound|9000|v2|tcp-echo.{n}.svc.cluster.local")))
        .unwrap_or_else(|| panic!("no access line for v2 in:\n{}", &log[log.len().saturating_sub(3000)..]));
    eprintln!("TCP access line: {line}");
    assert!(line.starts_with('[') && line.contains("\"- - -\" 0 ") && line.contains("\" 6 "), "{line}");
}

#[test]
fn a_tcp_route_by_source_subnet_takes_only_connections_from_that_subnet() {
    let (_release, ns) = injected("mesh-e2e-l4-source", "l4-source");
    let n = ns.name.as_str();
    apply(n, TCP_ECHO_SERVICES);
    apply(n, TCP_ECHO_DESTINATION);
    apply(n, &sleeper("sleep", "", ""));
    all_ready(n);
    let client = pod_named(n, "app=sleep");
    let ip = jsonpath(n, "pod/sleep", "{.status.podIP}");
    let route = |subnet: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: tcp-echo}}\nspec:\n  \
             hosts: [tcp-echo]\n  tcp:\n  - match: [{{sourceSubnet: \"{subnet}\"}}]\n    \
             route: [{{destination: {{host: tcp-echo, subset: v2}}}}]\n  \
             - route: [{{destination: {{host: tcp-echo, subset: v1}}}}]\n"
        )
    };
    // The client's own address: v2.
    let _vs = Applied::new(n, &route(&format!("{ip}/32")));
    settle(n, &client, "two", 40);
    assert_eq!(echoes(n, &client, 100).get("two"), Some(&100));
    // A block the client is not in: the next rule, v1.
    apply(n, &route("192.0.2.0/24"));
    settle(n, &client, "one", 40);
    assert_eq!(echoes(n, &client, 100).get("one"), Some(&100));
    assert_eq!(envoy_stat(n, &client, "listener_manager.lds.update_rejected"), 0.0);
}

/// Two HTTPS servers (go-httpbin v1 and v2) behind one Service port
/// named `https`, both with a certificate the test makes for
/// one.example.com, two.example.com and three.example.com (which no rule
/// will name: only routing refuses it).
fn secure_backends(namespace: &str, certs: &CertDir) {
    let (crt, key) = certs.self_signed("tls", &["one.example.com", "two.example.com", "three.example.com"]);
    kubectl_ok(
        &["create", "secret", "tls", "secure-cert", "-n", namespace, "--cert", &crt, "--key", &key],
        None,
    );
    let deployment = |version: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: secure-{version}}}\nspec:\n  replicas: 1\n  \
             selector: {{matchLabels: {{app: secure, version: {version}}}}}\n  template:\n    \
             metadata: {{labels: {{app: secure, version: {version}}}}}\n    spec:\n      containers:\n      \
             - name: httpbin\n        image: docker.io/mccutchen/go-httpbin:v2.15.0\n        \
             args: [-port, \"8443\", -https-cert-file, /etc/certs/tls.crt, -https-key-file, /etc/certs/tls.key, -use-real-hostname]\n        \
             ports: [{{containerPort: 8443}}]\n        volumeMounts: [{{name: certs, mountPath: /etc/certs, readOnly: true}}]\n      \
             volumes: [{{name: certs, secret: {{secretName: secure-cert}}}}]\n---\n"
        )
    };
    apply(
        namespace,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: secure}}\nspec:\n  selector: {{app: secure}}\n  \
             ports: [{{name: https, port: 8443}}]\n---\n{}{}",
            deployment("v1"),
            deployment("v2")
        ),
    );
}

/// Asks secure:8443 `n` times for `sni` (a connection each, the client
/// checking the servers' certificate) and counts what answered: the
/// backend the server names (`secure-v1`, `secure-v2`), or `failed <curl's
/// exit code>`.
fn answers(namespace: &str, pod: &str, sni: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "for i in $(seq 1 {n}); do \
           out=$(curl -s -m 5 --cacert /etc/certs/tls.crt --connect-to {sni}:8443:secure:8443 \
                 https://{sni}:8443/hostname); rc=$?; \
           if [ $rc -eq 0 ]; then echo \"$out\" | grep -o 'secure-v[12]' | head -n 1; else echo \"failed $rc\"; fi; \
         done"
    );
    let out = enter(namespace, pod, &script);
    let mut counts = BTreeMap::new();
    for line in out.stdout.lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{n} requests for {sni}: {counts:?} {}", out.stderr);
    counts
}

#[test]
fn tls_routes_send_each_sni_to_its_own_backend_without_terminating_the_clients_tls() {
    let (_release, ns) = injected("mesh-e2e-l4-tls", "l4-tls");
    let n = ns.name.as_str();
    let certs = CertDir::new(n);
    secure_backends(n, &certs);
    let mounts = "    volumeMounts: [{name: certs, mountPath: /etc/certs, readOnly: true}]\n";
    let volumes = "  volumes: [{name: certs, secret: {secretName: secure-cert}}]\n";
    apply(n, &sleeper("sleep", mounts, volumes));
    all_ready(n);
    let client = pod_named(n, "app=sleep");

    // Without routes, either backend answers whatever the SNI; the client
    // verifies the servers' own certificate, so its TLS reaches them whole.
    let before = eventually("both backends answering", Duration::from_secs(60), || {
        let counts = answers(n, &client, "one.example.com", 16);
        (counts.contains_key("secure-v1") && counts.contains_key("secure-v2")).then_some(counts)
    });
    assert_eq!(before.values().sum::<usize>(), 16, "{before:?}");
    let three = answers(n, &client, "three.example.com", 4);
    assert!(three.keys().all(|k| k.starts_with("secure-v")), "three.example.com before routing: {three:?}");

    let _routes = Applied::new(
        n,
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: secure}\nspec:\n  \
         host: secure\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n\
         apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: secure}\nspec:\n  \
         hosts: [secure, one.example.com, two.example.com]\n  tls:\n  \
         - match: [{sniHosts: [one.example.com]}]\n    route: [{destination: {host: secure, subset: v1}}]\n  \
         - match: [{sniHosts: [two.example.com]}]\n    route: [{destination: {host: secure, subset: v2}}]\n",
    );
    eventually("one.example.com on v1 and two.example.com on v2", Duration::from_secs(60), || {
        let one = answers(n, &client, "one.example.com", 8);
        let two = answers(n, &client, "two.example.com", 8);
        (one.get("secure-v1") == Some(&8) && two.get("secure-v2") == Some(&8)).then_some(())
    });
    let one = answers(n, &client, "one.example.com", 20);
    assert_eq!(one.get("secure-v1"), Some(&20), "one.example.com: {one:?}");
    let two = answers(n, &client, "two.example.com", 20);
    assert_eq!(two.get("secure-v2"), Some(&20), "two.example.com: {two:?}");
    // A name no rule lists is closed, as Istio closes it.
    let three = answers(n, &client, "three.example.com", 5);
    assert!(three.keys().all(|k| k.starts_with("failed")), "three.example.com: {three:?}");

    // Between the sidecars, the client's TLS travelled inside the mesh's
    // mutual TLS (auto mTLS: the backends have sidecars).
    let cluster = format!("outbound|8443|v1|secure.{n}.svc.cluster.local");
    let handshakes = envoy_stat(n, &client, &format!("cluster.{cluster}.ssl.handshake"));
    assert!(handshakes >= 20.0, "{cluster}: {handshakes} mutual TLS handshakes");
    assert_eq!(envoy_stat(n, &client, "listener_manager.lds.update_rejected"), 0.0);
}
