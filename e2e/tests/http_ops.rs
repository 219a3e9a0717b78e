//! What a VirtualService rule does to requests besides choosing where they
//! go, on real traffic: Istio's httpbin (the real go-httpbin, whose
//! `/anything` echoes the path, Host and headers it received) behind its
//! sidecar, and a curl pod whose Envoy applies the routes. Rewrites and
//! the request side of header operations are checked by what httpbin saw;
//! redirects, direct responses, CORS answers and the response side of
//! header operations by what curl saw; `statPrefix` by the client Envoy's
//! own counters. An Istio 1.1 VirtualService using `appendHeaders` and its
//! siblings applies unmodified and does what 1.1 did.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Applied, Release, TempNamespace, controller_metric, enter, eventually, kubectl_ok, pod_named, rollout,
};

/// Istio's `samples/httpbin/httpbin.yaml` and `samples/curl/curl.yaml`
/// (without the optional TLS secret volume).
const APPS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
    service: httpbin
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
  name: httpbin
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
      serviceAccountName: httpbin
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.26.0
        imagePullPolicy: IfNotPresent
        name: httpbin
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: curl
---
apiVersion: v1
kind: Service
metadata:
  name: curl
  labels:
    app: curl
    service: curl
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: curl
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
spec:
  replicas: 1
  selector:
    matchLabels:
      app: curl
  template:
    metadata:
      labels:
        app: curl
    spec:
      terminationGracePeriodSeconds: 0
      serviceAccountName: curl
      containers:
      - name: curl
        image: curlimages/curl
        command: ["/bin/sleep", "infinity"]
        imagePullPolicy: IfNotPresent
"#;

/// httpbin and curl injected in a namespace of their own, with the chart.
struct Apps {
    release: Release,
    ns: TempNamespace,
    client: String,
}

impl Apps {
    fn start(release_ns: &str) -> Self {
        let release = Release::install(release_ns, &[]);
        let ns = TempNamespace::new("http-ops");
        kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
        kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(APPS));
        rollout(&ns.name);
        kubectl_ok(
            &["wait", "-n", &ns.name, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
            None,
        );
        let client = pod_named(&ns.name, "app=curl");
        Self { release, ns, client }
    }

    /// One request from the curl pod, through its Envoy, never following
    /// redirects: `args` are curl's (headers, method), `path` is on httpbin.
    fn request(&self, args: &str, path: &str) -> Reply {
        let script = format!("curl -s -i -m 20 {args} 'http://httpbin:8000{path}'");
        let out = enter(&self.ns.name, &self.client, &script);
        Reply::parse(&out.stdout)
    }

    /// The client Envoy's counters whose names contain `part`.
    fn stats(&self, part: &str) -> BTreeMap<String, f64> {
        let out = enter(&self.ns.name, &self.client, "curl -sf -m 5 'http://127.0.0.1:15000/stats'");
        assert!(out.ok, "the curl pod's Envoy admin /stats: {}", out.stderr);
        out.stdout
            .lines()
            .filter(|l| l.contains(part))
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    fn no_nacks(&self) {
        let nacks: f64 = controller_metric(&self.release.namespace, "mesh_xds_nacks_total").values().sum();
        assert_eq!(nacks, 0.0, "Envoy refused some configuration");
    }
}

/// What curl saw: the status, the headers (names lowercased, in order,
/// repeated when sent twice) and the body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(out: &str) -> Self {
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply { status: status.unwrap_or(0), headers, body: body.to_string() }
    }

    /// Every value of a response header.
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// httpbin's echo of the request it received.
    fn echo(&self) -> Value {
        assert_eq!(self.status, 200, "httpbin should answer: {self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("httpbin's echo is JSON ({e}): {self:?}"))
    }
}

/// The values httpbin received for a request header.
fn seen(echo: &Value, header: &str) -> Vec<String> {
    let headers = echo["headers"].as_object().expect("httpbin echoes headers");
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(header))
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

const REWRITES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - name: old-api
    match:
    - uri:
        prefix: /old
    rewrite:
      uri: /anything/new
      authority: rewritten.example
    route:
    - destination:
        host: httpbin
  - name: whole-path
    match:
    - uri:
        exact: /exact-path
    rewrite:
      uri: /anything/whole
    route:
    - destination:
        host: httpbin
  - name: by-regex
    match:
    - uri:
        regex: "^/svc/([^/]+)(/.*)$"
    rewrite:
      uriRegexRewrite:
        match: "^/svc/([^/]+)(/.*)$"
        rewrite: "/anything\\2/instance/\\1"
    route:
    - destination:
        host: httpbin
  - name: moved
    match:
    - uri:
        exact: /moved
    redirect:
      uri: /new-home
      authority: elsewhere.example
      derivePort: FROM_REQUEST_PORT
      redirectCode: 302
  - name: secure
    match:
    - uri:
        prefix: /secure
    redirect:
      scheme: https
      authority: secure.example
      port: 8443
  - name: secure-default-port
    match:
    - uri:
        prefix: /tls
    redirect:
      uri: /tls-home
      scheme: https
      derivePort: FROM_PROTOCOL_DEFAULT
      redirectCode: 308
  - name: down
    match:
    - uri:
        exact: /down
    directResponse:
      status: 503
      body:
        string: "down for maintenance"
  - name: blob
    match:
    - uri:
        exact: /blob
    directResponse:
      status: 200
      body:
        bytes: aGVsbG8gbWVzaAo=
  - name: team
    match:
    - uri:
        prefix: /team
    delegate:
      name: httpbin-team
      namespace: TEAM_NS
  - name: private
    match:
    - uri:
        prefix: /private
    delegate:
      name: httpbin-private
      namespace: TEAM_NS
  - name: rest
    route:
    - destination:
        host: httpbin
"#;

/// The delegates, in a namespace of their own: their destinations resolve
/// there, so they name httpbin by its full name.
const DELEGATES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-team
spec:
  exportTo:
  - "*"
  http:
  - name: a-team
    match:
    - uri:
        prefix: /team/a
    rewrite:
      uri: /anything/a-team
    route:
    - destination:
        host: httpbin.APPS_NS.svc.cluster.local
  - name: elsewhere
    match:
    - uri:
        prefix: /elsewhere
    directResponse:
      status: 500
      body:
        string: "outside the root's prefix"
  - name: team-default
    directResponse:
      status: 200
      body:
        string: "team default"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-private
spec:
  exportTo:
  - "."
  http:
  - directResponse:
      status: 200
      body:
        string: "not for other namespaces"
"#;

#[test]
fn rewrites_redirects_direct_responses_and_delegation_on_real_traffic() {
    let apps = Apps::start("mesh-e2e-http-ops");
    let team = TempNamespace::new("http-ops-team");
    let _delegates = Applied::new(&team.name, &DELEGATES.replace("APPS_NS", &apps.ns.name));
    let _vs = Applied::new(&apps.ns.name, &REWRITES.replace("TEAM_NS", &team.name));
    eventually("the VirtualService in effect", Duration::from_secs(30), || {
        let down = apps.request("", "/down");
        (down.status == 503 && down.body == "down for maintenance").then_some(())
    });

    // rewrite.uri replaces the matched prefix; rewrite.authority the Host.
    let echo = apps.request("", "/old/rest?q=1").echo();
    assert_eq!(echo["url"], "http://rewritten.example/anything/new/rest?q=1", "{echo}");
    assert_eq!(seen(&echo, "host"), ["rewritten.example"], "{echo}");
    // An exact match has its whole path replaced.
    let echo = apps.request("", "/exact-path?x=2").echo();
    assert_eq!(echo["url"], "http://httpbin:8000/anything/whole?x=2", "{echo}");
    // uriRegexRewrite substitutes RE2 capture groups.
    let echo = apps.request("", "/svc/abc/def").echo();
    assert_eq!(echo["url"], "http://httpbin:8000/anything/def/instance/abc", "{echo}");

    // Redirects: status and Location as the client sees them.
    let moved = apps.request("", "/moved?keep=1");
    assert_eq!(moved.status, 302, "{moved:?}");
    assert_eq!(moved.header("location"), ["http://elsewhere.example:8000/new-home?keep=1"], "{moved:?}");
    let secure = apps.request("", "/secure/page");
    assert_eq!(secure.status, 301, "the default code: {secure:?}");
    assert_eq!(secure.header("location"), ["https://secure.example:8443/secure/page"], "{secure:?}");
    // FROM_PROTOCOL_DEFAULT leaves the port to Envoy, as Istio does: none
    // for a Host without one (a Host naming a port keeps it).
    let tls = apps.request("-H 'Host: httpbin'", "/tls");
    assert_eq!(tls.status, 308, "{tls:?}");
    assert_eq!(tls.header("location"), ["https://httpbin/tls-home"], "{tls:?}");

    // Direct responses, text and base64 bytes.
    let blob = apps.request("", "/blob");
    assert_eq!((blob.status, blob.body.as_str()), (200, "hello mesh\n"), "{blob:?}");

    // Delegation to another namespace: the delegate's rules under the
    // root rule's prefix.
    let echo = apps.request("", "/team/a/x").echo();
    assert_eq!(echo["url"], "http://httpbin:8000/anything/a-team/x", "{echo}");
    let team = apps.request("", "/team/b");
    assert_eq!((team.status, team.body.as_str()), (200, "team default"), "{team:?}");
    // A delegate rule outside the root's prefix never applies: /elsewhere
    // reaches the root's last rule, and httpbin, which knows no such page.
    let elsewhere = apps.request("", "/elsewhere");
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");
    // A delegate not exported to the root's namespace is not used: the
    // root rule is dropped and /private reaches httpbin (404).
    let private = apps.request("", "/private");
    assert_eq!(private.status, 404, "{private:?}");

    // Without the VirtualService, the same paths reach httpbin unchanged.
    drop(_vs);
    eventually("the default route back", Duration::from_secs(30), || {
        (apps.request("", "/down").status == 404).then_some(())
    });
    assert_eq!(apps.request("", "/moved").status, 404);
    apps.no_nacks();
}

const HEADERS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - name: cors
    match:
    - uri:
        prefix: /anything/cors
    corsPolicy:
      allowOrigins:
      - exact: https://allowed.example
      - regex: "https://.*\\.allowed\\.example"
      allowMethods:
      - GET
      - POST
      allowHeaders:
      - x-custom
      exposeHeaders:
      - x-exposed
      maxAge: 24h
      allowCredentials: true
    route:
    - destination:
        host: httpbin
  - name: cors-strict
    match:
    - uri:
        prefix: /anything/strict
    corsPolicy:
      allowOrigins:
      - prefix: https://allowed
      allowMethods:
      - PUT
      unmatchedPreflights: IGNORE
    route:
    - destination:
        host: httpbin
  - name: ops
    match:
    - uri:
        prefix: /anything/ops
      statPrefix: ops-rule
    - uri:
        prefix: /response-headers
      statPrefix: ops-response
    headers:
      request:
        set:
          x-set: rule
        add:
          x-add: rule
        remove:
        - x-gone
      response:
        set:
          x-resp-set: rule
        add:
          x-resp-add: rule
        remove:
        - x-resp-gone
    route:
    - destination:
        host: httpbin
      headers:
        request:
          set:
            x-dest-set: destination
          add:
            x-dest-add: destination
          remove:
          - x-dest-gone
        response:
          set:
            x-dest-resp-set: destination
          add:
            x-dest-resp: destination
          remove:
          - x-dest-resp-gone
  - name: weighted
    match:
    - uri:
        prefix: /anything/weighted
    route:
    - destination:
        host: httpbin
      weight: 50
      headers:
        request:
          set:
            x-half: first
        response:
          set:
            x-half-resp: first
    - destination:
        host: httpbin
      weight: 50
      headers:
        request:
          set:
            x-half: second
        response:
          set:
            x-half-resp: second
  - route:
    - destination:
        host: httpbin
"#;

/// Istio 1.1's header fields, as a 1.1 user wrote them (HTTPRoute and
/// HTTPRouteDestination), with 1.1's CORS `allowOrigin`.
const ISTIO_1_1: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - match:
    - uri:
        prefix: /anything/legacy-cors
    corsPolicy:
      allowOrigin:
      - https://legacy.example
      allowMethods:
      - GET
      maxAge: 1m
    route:
    - destination:
        host: httpbin
  - appendHeaders:
      x-append: "1.0"
    appendRequestHeaders:
      x-append-request: "1.1"
    removeRequestHeaders:
    - x-remove-request
    appendResponseHeaders:
      x-append-response: "1.1"
    removeResponseHeaders:
    - x-remove-response
    route:
    - destination:
        host: httpbin
      appendRequestHeaders:
        x-dest-append: destination
      removeRequestHeaders:
      - x-dest-remove
      appendResponseHeaders:
        x-dest-append-response: destination
      removeResponseHeaders:
      - x-dest-remove-response
"#;

#[test]
fn cors_and_header_operations_on_real_traffic() {
    let apps = Apps::start("mesh-e2e-http-headers");
    let vs = Applied::new(&apps.ns.name, HEADERS);
    eventually("the VirtualService in effect", Duration::from_secs(30), || {
        let echo = apps.request("", "/anything/ops");
        (echo.status == 200 && seen(&echo.echo(), "x-set") == ["rule"]).then_some(())
    });

    // A preflight from an allowed origin is answered by the client's Envoy
    // with the policy; from another origin it is forwarded to httpbin,
    // which answers with its own permissive CORS headers, not the policy's.
    let preflight = |origin: &str, path: &str| {
        apps.request(
            &format!(
                "-X OPTIONS -H 'Origin: {origin}' -H 'Access-Control-Request-Method: POST' \
                 -H 'Access-Control-Request-Headers: x-custom'"
            ),
            path,
        )
    };
    for origin in ["https://allowed.example", "https://www.allowed.example"] {
        let ok = preflight(origin, "/anything/cors");
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.header("access-control-allow-origin"), [origin], "{ok:?}");
        assert_eq!(ok.header("access-control-allow-methods"), ["GET,POST"], "{ok:?}");
        assert_eq!(ok.header("access-control-allow-headers"), ["x-custom"], "{ok:?}");
        assert_eq!(ok.header("access-control-max-age"), ["86400"], "{ok:?}");
        assert_eq!(ok.header("access-control-allow-credentials"), ["true"], "{ok:?}");
    }
    let other = preflight("https://evil.example", "/anything/cors");
    assert_ne!(other.header("access-control-allow-methods"), ["GET,POST"], "{other:?}");
    // httpbin's own answer (it allows any origin for an hour).
    assert_eq!(other.header("access-control-max-age"), ["3600"], "{other:?}");
    // The actual request from an allowed origin gets the exposed headers.
    let actual = apps.request("-H 'Origin: https://allowed.example'", "/anything/cors");
    assert_eq!(actual.header("access-control-expose-headers"), ["x-exposed"], "{actual:?}");
    // unmatchedPreflights: IGNORE answers other origins' preflights at
    // the client's Envoy (httpbin would allow any origin) without
    // Access-Control-Allow-Origin, so a browser refuses the request.
    let strict = preflight("https://allowed.example", "/anything/strict");
    assert_eq!(strict.header("access-control-allow-origin"), ["https://allowed.example"], "{strict:?}");
    assert_eq!(strict.header("access-control-allow-methods"), ["PUT"], "{strict:?}");
    let ignored = preflight("https://evil.example", "/anything/strict");
    assert_eq!(ignored.status, 200, "{ignored:?}");
    assert!(
        ignored.header("access-control-allow-origin").is_empty(),
        "answered by Envoy, allowing no origin: {ignored:?}"
    );

    // Header operations, rule and destination level, request side as
    // httpbin saw it.
    let echo = apps
        .request(
            "-H 'x-set: client' -H 'x-add: client' -H 'x-gone: client' -H 'x-dest-gone: client' \
             -H 'x-dest-add: client' -H 'x-kept: client'",
            "/anything/ops",
        )
        .echo();
    assert_eq!(seen(&echo, "x-set"), ["rule"], "set overwrites: {echo}");
    assert_eq!(seen(&echo, "x-add"), ["client", "rule"], "add appends: {echo}");
    assert!(seen(&echo, "x-gone").is_empty(), "remove removes: {echo}");
    assert_eq!(seen(&echo, "x-dest-set"), ["destination"], "{echo}");
    assert_eq!(seen(&echo, "x-dest-add"), ["client", "destination"], "{echo}");
    assert!(seen(&echo, "x-dest-gone").is_empty(), "{echo}");
    assert_eq!(seen(&echo, "x-kept"), ["client"], "{echo}");
    // Response side as curl saw it: httpbin sends the headers it is asked to.
    let reply = apps.request(
        "",
        "/response-headers?x-resp-set=server&x-resp-add=server&x-resp-gone=server&x-other=server\
         &x-dest-resp-set=server&x-dest-resp-gone=server",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-resp-set"), ["rule"], "{reply:?}");
    assert_eq!(reply.header("x-resp-add"), ["server", "rule"], "{reply:?}");
    assert!(reply.header("x-resp-gone").is_empty(), "{reply:?}");
    assert_eq!(reply.header("x-dest-resp"), ["destination"], "{reply:?}");
    assert_eq!(reply.header("x-dest-resp-set"), ["destination"], "{reply:?}");
    assert!(reply.header("x-dest-resp-gone").is_empty(), "{reply:?}");
    assert_eq!(reply.header("x-other"), ["server"], "{reply:?}");

    // Each weighted destination edits its own requests and responses.
    let mut pairs = BTreeMap::new();
    for _ in 0..40 {
        let reply = apps.request("", "/anything/weighted");
        let half_resp = reply.header("x-half-resp").join(",");
        let echo = reply.echo();
        *pairs.entry((seen(&echo, "x-half").join(","), half_resp)).or_insert(0) += 1;
    }
    let kinds: Vec<_> = pairs.keys().cloned().collect();
    assert_eq!(
        kinds,
        [("first".to_string(), "first".to_string()), ("second".into(), "second".into())],
        "both halves, each with its own headers: {pairs:?}"
    );

    // statPrefix: the client's Envoy counts each match's requests.
    let counted = apps.stats("route.ops-rule.");
    let total =
        counted.iter().find(|(k, _)| k.ends_with("route.ops-rule.upstream_rq_total")).map(|(_, v)| *v);
    assert!(total.is_some_and(|n| n >= 2.0), "the ops-rule route's counters: {counted:?}");
    assert!(
        apps.stats("route.ops-response.").keys().any(|k| k.ends_with("upstream_rq_total")),
        "the ops-response route's counters"
    );

    // Istio 1.1's VirtualService, unmodified, replaces it.
    drop(vs);
    let _legacy = Applied::new(&apps.ns.name, ISTIO_1_1);
    eventually("the 1.1 VirtualService in effect", Duration::from_secs(30), || {
        let reply = apps.request("", "/anything/legacy");
        (reply.status == 200 && seen(&reply.echo(), "x-append") == ["1.0"]).then_some(())
    });
    let reply = apps.request(
        "-H 'x-append-request: client' -H 'x-remove-request: client' -H 'x-dest-remove: client'",
        "/response-headers?x-remove-response=server&x-dest-remove-response=server&x-append-response=server",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-append-response"), ["server", "1.1"], "{reply:?}");
    assert_eq!(reply.header("x-dest-append-response"), ["destination"], "{reply:?}");
    assert!(reply.header("x-remove-response").is_empty(), "{reply:?}");
    assert!(reply.header("x-dest-remove-response").is_empty(), "{reply:?}");
    let echo = apps
        .request(
            "-H 'x-append-request: client' -H 'x-remove-request: client' -H 'x-dest-remove: client'",
            "/anything/legacy",
        )
        .echo();
    assert_eq!(seen(&echo, "x-append"), ["1.0"], "{echo}");
    assert_eq!(seen(&echo, "x-append-request"), ["client", "1.1"], "{echo}");
    assert_eq!(seen(&echo, "x-dest-append"), ["destination"], "{echo}");
    assert!(seen(&echo, "x-remove-request").is_empty(), "{echo}");
    assert!(seen(&echo, "x-dest-remove").is_empty(), "{echo}");
    let legacy_cors = apps.request(
        "-X OPTIONS -H 'Origin: https://legacy.example' -H 'Access-Control-Request-Method: GET'",
        "/anything/legacy-cors",
    );
    assert_eq!(
        legacy_cors.header("access-control-allow-origin"),
        ["https://legacy.example"],
        "{legacy_cors:?}"
    );
    assert_eq!(legacy_cors.header("access-control-max-age"), ["60"], "{legacy_cors:?}");
    apps.no_nacks();
}
