//! What every end-to-end test needs: the real kubectl against the test
//! cluster, the real `mesh controller` as a child process, and namespaces
//! that are removed when the test ends, whatever its outcome.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The kubeconfig of the cluster `make test-e2e` brought up.
pub fn kubeconfig() -> String {
    std::env::var("MESH_E2E_KUBECONFIG")
        .expect("MESH_E2E_KUBECONFIG is not set: run the end-to-end tests with `make test-e2e`")
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The unit tests' reading of `MESH_CONFORMANCE_DIR`, so both find the
/// samples alike.
#[path = "../../src/testing/conformance.rs"]
mod conformance_dir;

/// Istio's Bookinfo samples, unmodified: `<MESH_CONFORMANCE_DIR>/bookinfo`
/// (default `../shared/conformance/bookinfo`). They are not part of the
/// repository, so a test that needs them says where to put them.
pub fn conformance() -> PathBuf {
    conformance_dir::bookinfo_dir()
}

/// The output of one kubectl call.
pub struct Output {
    pub ok: bool,
    /// The exit code; None when a signal ended the program.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Self {
        Output {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `program` with `args`, feeding `stdin` when given.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (make test-e2e puts the pinned tools on PATH): {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes()).expect("writing the program's stdin");
    }
    let out = child.wait_with_output().expect("the program ran");
    Output::from(out)
}

/// Runs kubectl against the test cluster.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let kubeconfig = kubeconfig();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    run("kubectl", &all, stdin)
}

/// Runs kubectl and fails the test when it fails.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(out.ok, "kubectl {} failed:\n{}", args.join(" "), out.stderr);
    out.stdout
}

/// Applies the CRDs from crds/ and waits until the API server serves them.
pub fn install_crds() {
    let dir = repo().join("crds");
    let dir = dir.to_str().expect("utf-8 path");
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", dir], None);
    kubectl_ok(&["wait", "--for", "condition=Established", "--timeout=60s", "-f", dir], None);
}

/// A namespace of its own for one test, deleted on drop.
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    pub fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        Self::named(&format!("{prefix}-{:x}{:x}", std::process::id(), nanos))
    }

    /// A namespace with a fixed name (a sample may name its own); it must not exist yet.
    pub fn named(name: &str) -> Self {
        kubectl_ok(&["create", "namespace", name], None);
        Self { name: name.to_string() }
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// A free port on loopback for a child process to listen on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A ServiceAccount that may read the controller's /debug views, with a
/// token for it; its namespace, binding (and role, when made here) are
/// removed on drop.
pub struct DebugViewer {
    pub token: String,
    /// `system:serviceaccount:<namespace>:viewer`.
    pub user: String,
    binding: String,
    own_role: Option<String>,
    _ns: TempNamespace,
}

impl DebugViewer {
    /// Bound to the ClusterRole `role` (the chart's `mesh-debug`).
    pub fn bound_to(role: &str) -> Self {
        Self::make(role, TempNamespace::new("debug-viewer"), false)
    }

    /// Bound to a ClusterRole of its own with the chart's rule (get on
    /// /debug/*), for a controller started without the chart.
    pub fn with_own_role() -> Self {
        let ns = TempNamespace::new("debug-viewer");
        let role = ns.name.clone();
        kubectl_ok(&["create", "clusterrole", &role, "--verb=get", "--non-resource-url=/debug/*"], None);
        Self::make(&role, ns, true)
    }

    fn make(role: &str, ns: TempNamespace, own: bool) -> Self {
        let own_role = own.then(|| role.to_string());
        kubectl_ok(&["create", "serviceaccount", "viewer", "-n", &ns.name], None);
        let binding = ns.name.clone();
        let subject = format!("--serviceaccount={}:viewer", ns.name);
        kubectl_ok(
            &["create", "clusterrolebinding", &binding, &format!("--clusterrole={role}"), &subject],
            None,
        );
        let user = format!("system:serviceaccount:{}:viewer", ns.name);
        // The API server's authorizer learns of a new binding a moment later;
        // the controller would remember an early refusal for 10 s.
        eventually(&format!("{user} allowed to get /debug/syncz"), Duration::from_secs(30), || {
            let out = kubectl(&["auth", "can-i", "get", "/debug/syncz", "--as", &user], None);
            (out.stdout.trim() == "yes").then_some(())
        });
        let token = kubectl_ok(&["create", "token", "viewer", "-n", &ns.name, "--duration", "1h"], None)
            .trim()
            .to_string();
        Self { token, user, binding, own_role, _ns: ns }
    }
}

impl Drop for DebugViewer {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "clusterrolebinding", &self.binding, "--ignore-not-found"], None);
        if let Some(role) = &self.own_role {
            let _ = kubectl(&["delete", "clusterrole", role, "--ignore-not-found"], None);
        }
    }
}

/// `mesh controller` running against the test cluster; killed on drop.
pub struct Controller {
    child: Child,
    pub monitoring: String,
    /// The mesh namespace made for it, when it was not given one.
    _home: Option<TempNamespace>,
    /// Its log so far, when it was started with [`Controller::spawn_logged`].
    log: Option<Arc<Mutex<String>>>,
    /// Who reads its /debug views, made on first use.
    viewer: OnceLock<DebugViewer>,
}

impl Controller {
    /// A controller with a mesh namespace of its own, once it is ready.
    pub fn start() -> Self {
        let home = TempNamespace::new("mesh-home");
        let mut controller = Self::spawn_in(&home.name);
        controller._home = Some(home);
        controller.wait_ready(Duration::from_secs(30));
        controller
    }

    /// A controller whose mesh namespace is `namespace`, once it is ready.
    pub fn start_in(namespace: &str) -> Self {
        let controller = Self::spawn_in(namespace);
        controller.wait_ready(Duration::from_secs(30));
        controller
    }

    /// A controller whose mesh namespace is `namespace`, not waiting for it.
    pub fn spawn_in(namespace: &str) -> Self {
        let (mut command, monitoring) = Self::command(namespace);
        let child = command.stderr(Stdio::inherit()).spawn().expect("starting mesh controller");
        Self { child, monitoring, _home: None, log: None, viewer: OnceLock::new() }
    }

    /// A controller with extra environment variables, whose log (stderr)
    /// is kept for [`Controller::log`] and echoed; not waiting for it.
    pub fn spawn_logged(namespace: &str, env: &[(&str, &str)]) -> Self {
        let (mut command, monitoring) = Self::command(namespace);
        let mut child = command
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mesh controller");
        let stderr = child.stderr.take().expect("stderr was piped");
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        // Ends when the controller closes its stderr (it exits).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut log = kept.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, monitoring, _home: None, log: Some(log), viewer: OnceLock::new() }
    }

    fn command(namespace: &str) -> (Command, String) {
        let bin = std::env::var("MESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh").to_string());
        let monitoring = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(bin);
        command
            .args(["controller", "--kubeconfig", &kubeconfig(), "--monitoring-addr", &monitoring])
            .args(["--namespace", namespace])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--xds-addr", &format!("127.0.0.1:{}", free_port())])
            .env("MESH_LOG", "info,mesh=debug")
            // No Service sends it proxies: nothing to wait for on SIGTERM.
            .env("MESH_SHUTDOWN_DELAY_SECONDS", "0")
            .stdout(Stdio::null());
        (command, monitoring)
    }

    /// What a controller from [`Controller::spawn_logged`] logged so far.
    pub fn log(&self) -> String {
        let log = self.log.as_ref().expect("the controller was started with spawn_logged");
        log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How the controller exited, if it did within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// GETs `path` without credentials, as the kubelet and Prometheus do.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://{}{path}", self.monitoring), None)
    }

    /// GETs a /debug view as a user allowed to read it.
    pub fn get_debug(&self, path: &str) -> (u16, String) {
        let viewer = self.viewer.get_or_init(DebugViewer::with_own_role);
        http_get(&format!("http://{}{path}", self.monitoring), Some(&viewer.token))
    }

    pub fn configz(&self) -> Value {
        let (status, body) = self.get_debug("/debug/configz");
        assert_eq!(status, 200, "/debug/configz: {body}");
        serde_json::from_str(&body).expect("/debug/configz is JSON")
    }

    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get("/readyz");
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "controller not ready after {within:?}: {status} {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the controller as Kubernetes would (SIGTERM) and returns whether it exited cleanly.
    pub fn terminate(mut self, within: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // A controller that already exited (a test stopped it) has nothing to read.
        let (status, metrics) = self.get("/metrics");
        let _ = self.child.kill();
        let _ = self.child.wait();
        if status == 200 {
            no_nacks(&format!("controller at {}", self.monitoring), &metric_family(&metrics, NACKS));
        }
    }
}

/// GETs `url`, with a bearer token when given: the status (0 when there
/// was no answer) and the body.
pub fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = ureq::get(url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    match request
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .call()
    {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `check` until it returns Some, or fails the test after `within`.
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The documents of a multi-document YAML file, as JSON values.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies YAML in a namespace.
pub fn apply(namespace: &str, yaml: &str) {
    kubectl_ok(&["apply", "-n", namespace, "-f", "-"], Some(yaml));
}

/// A JSONPath query over the controller's pods of a release (not its
/// gateways, which share the namespace), trimmed.
pub fn controller_pods(release_ns: &str, path: &str) -> String {
    kubectl_ok(
        &[
            "get",
            "pods",
            "-n",
            release_ns,
            "-l",
            "app.kubernetes.io/name=mesh",
            "-o",
            &format!("jsonpath={path}"),
        ],
        None,
    )
    .trim()
    .to_string()
}

/// A JSONPath query, trimmed.
pub fn jsonpath(namespace: &str, what: &str, path: &str) -> String {
    kubectl_ok(&["get", "-n", namespace, what, "-o", &format!("jsonpath={path}")], None).trim().to_string()
}

/// Waits for every Deployment in the namespace to finish rolling out.
pub fn rollout(namespace: &str) {
    kubectl_ok(&["rollout", "status", "deployment", "-n", namespace, "--timeout=180s"], None);
}

/// Runs a shell command inside a pod (its network namespace, /etc/hosts and volumes), as root.
pub fn enter(namespace: &str, pod: &str, script: &str) -> Output {
    let state = std::env::var("LOCALNODE_STATE_DIR").expect("LOCALNODE_STATE_DIR (set by make test-e2e)");
    let bin = repo().join("target/debug/localnode");
    let out = Command::new(bin)
        .args(["enter", "--state-dir", &state, &format!("{namespace}/{pod}"), "--", "sh", "-c", script])
        .output()
        .expect("localnode enter runs");
    Output::from(out)
}

/// The one pod of a namespace matching a label selector.
pub fn pod_named(namespace: &str, selector: &str) -> String {
    eventually(&format!("a pod {selector} in {namespace}"), Duration::from_secs(60), || {
        let name = kubectl(
            &["get", "pods", "-n", namespace, "-l", selector, "-o", "jsonpath={.items[0].metadata.name}"],
            None,
        );
        (name.ok && !name.stdout.trim().is_empty()).then(|| name.stdout.trim().to_string())
    })
}

/// The chart installed with helm into a namespace of its own; uninstalled on drop.
pub struct Release {
    pub namespace: String,
}

pub fn helm(args: &[&str]) -> Output {
    let kubeconfig = kubeconfig();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig.as_str()]);
    run("helm", &all, None)
}

impl Release {
    pub fn install(namespace: &str, extra: &[&str]) -> Self {
        let chart = repo().join("charts/mesh");
        let mut args =
            vec!["install", "mesh", chart.to_str().expect("utf-8"), "-n", namespace, "--create-namespace"];
        args.extend(["--wait", "--timeout", "120s"]);
        args.extend(extra);
        let out = helm(&args);
        assert!(out.ok, "helm install: {}", out.stderr);
        Self { namespace: namespace.to_string() }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let nacks = controller_metric(&self.namespace, NACKS);
        let _ = helm(&["uninstall", "mesh", "-n", &self.namespace, "--wait", "--timeout", "60s"]);
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"], None);
        no_nacks(&format!("release in {}", self.namespace), &nacks);
    }
}

/// The controller's count of configuration its proxies refused, by type.
const NACKS: &str = "mesh_xds_nacks_total";

/// Every controller of the run must end with no NACK: Envoy refusing what
/// the mesh sent is a translation bug, even when the traffic a test checks
/// still flows. The count is also written to `<cluster>/xds-nacks.txt`,
/// which `e2e.sh` adds up for the whole run (a test that already failed
/// does not fail again here).
fn no_nacks(controller: &str, nacks: &std::collections::BTreeMap<String, f64>) {
    let total: f64 = nacks.values().sum();
    if let Ok(dir) = std::env::var("MESH_CLUSTER_DIR") {
        let line = format!("{controller}\t{total}\t{nacks:?}\n");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(dir).join("xds-nacks.txt"));
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }
    if total > 0.0 && !std::thread::panicking() {
        panic!("{controller}: Envoy refused configuration ({NACKS}: {nacks:?}); its log says why");
    }
}

/// Bookinfo, unmodified, in a new namespace labelled for sidecar injection;
/// returns when every pod (with its Envoy) is Ready.
pub fn injected_bookinfo(prefix: &str) -> TempNamespace {
    let ns = TempNamespace::new(prefix);
    kubectl_ok(&["label", "namespace", &ns.name, "istio-injection=enabled", "--overwrite"], None);
    let file = conformance().join("platform/bookinfo.yaml");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", file.to_str().expect("utf-8")], None);
    rollout(&ns.name);
    kubectl_ok(
        &["wait", "-n", &ns.name, "--for", "condition=Ready", "pods", "--all", "--timeout=120s"],
        None,
    );
    ns
}

/// The samples of one metric family of the controllers a release runs,
/// by their label sets, added up over the replicas (each counts what its
/// own proxies did), read from their /metrics over the pod network.
pub fn controller_metric(release_ns: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    let mut total = std::collections::BTreeMap::new();
    for controller in controllers(release_ns) {
        let out = run("curl", &["-sf", "-m", "2", &format!("{controller}/metrics")], None);
        for (labels, value) in metric_family(&out.stdout, family) {
            *total.entry(labels).or_insert(0.0) += value;
        }
    }
    total
}

/// A proxy's configuration as the controller it is connected to holds it
/// (/debug/config_dump), asked of each replica until one knows the proxy.
pub fn controller_config_dump(release_ns: &str, proxy: &str, token: &str) -> String {
    let mut answers = Vec::new();
    for controller in controllers(release_ns) {
        let (status, dump) = http_get(&format!("{controller}/debug/config_dump?proxy={proxy}"), Some(token));
        if status == 200 {
            return dump;
        }
        answers.push(format!("{controller}: {status} {dump}"));
    }
    panic!("no controller of {release_ns} holds proxy {proxy}: {answers:?}");
}

/// The monitoring address (`http://ip:15014`) of each running controller
/// replica of a release; a proxy's state is known to the one it is
/// connected to, so the debug views are asked of all of them.
pub fn controllers(release_ns: &str) -> Vec<String> {
    let ips = controller_pods(release_ns, r#"{range .items[?(@.status.podIP)]}{.status.podIP}{"\n"}{end}"#);
    ips.lines().filter(|ip| !ip.is_empty()).map(|ip| format!("http://{ip}:15014")).collect()
}

/// The samples of one metric family in a Prometheus text exposition.
pub fn metric_family(text: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// The output of a container of a pod, as the node keeps it.
pub fn container_log(namespace: &str, pod: &str, container: &str) -> String {
    let state = std::env::var("LOCALNODE_STATE_DIR").expect("LOCALNODE_STATE_DIR (set by make test-e2e)");
    let pods = std::path::PathBuf::from(state).join("pods");
    let prefix = format!("{namespace}_{pod}_");
    let mut text = String::new();
    for entry in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let logs = entry.path().join("logs").join(container);
        for log in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            text.push_str(&std::fs::read_to_string(log.path()).unwrap_or_default());
        }
    }
    text
}

/// Objects applied to a namespace from YAML, deleted when dropped,
/// wherever the test stops.
pub struct Applied {
    namespace: String,
    yaml: String,
}

impl Applied {
    pub fn new(namespace: &str, yaml: &str) -> Self {
        kubectl_ok(&["apply", "-n", namespace, "-f", "-"], Some(yaml));
        Self { namespace: namespace.to_string(), yaml: yaml.to_string() }
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = kubectl(
            &["delete", "-n", &self.namespace, "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&self.yaml),
        );
    }
}

/// Istio's `samples/httpbin/httpbin.yaml`, with `replicas` pods.
pub fn httpbin(replicas: u32, args: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels: {{app: httpbin, service: httpbin}}
spec:
  ports:
  - {{name: http, port: 8000, targetPort: 8080}}
  selector: {{app: httpbin}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: httpbin, version: v1}}
  template:
    metadata:
      labels: {{app: httpbin, version: v1}}
    spec:
      serviceAccountName: httpbin
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        imagePullPolicy: IfNotPresent
        name: httpbin
        args: [{args}]
        ports:
        - containerPort: 8080
"#
    )
}

/// A folder for a test's keys and certificates, made with openssl (P-256,
/// valid for a day); removed when dropped.
pub struct CertDir(PathBuf);

impl CertDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        Self(dir)
    }

    /// The path of `file` in the folder.
    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().expect("utf-8").to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = run("openssl", args, None);
        assert!(out.ok, "openssl {args:?}: {}", out.stderr);
    }

    /// A self-signed `<name>.crt` and `<name>.key` (their paths) for the
    /// DNS names `hosts`, the first also its common name; with no hosts, a
    /// CA named `<name>` to sign others with ([`CertDir::signed`]).
    pub fn self_signed(&self, name: &str, hosts: &[&str]) -> (String, String) {
        let (crt, key) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        let subject = format!("/CN={}", hosts.first().unwrap_or(&name));
        let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        args.extend(["-nodes", "-days", "1", "-subj", &subject]);
        let names = hosts.iter().map(|h| format!("DNS:{h}")).collect::<Vec<_>>().join(",");
        let san = format!("subjectAltName={names}");
        if !hosts.is_empty() {
            args.extend(["-addext", &san]);
        }
        args.extend(["-keyout", &key, "-out", &crt]);
        self.openssl(&args);
        (crt, key)
    }

    /// `<name>.crt` and `<name>.key` (their paths) for the DNS name `host`,
    /// signed by the CA `ca` made with [`CertDir::self_signed`].
    pub fn signed(&self, name: &str, host: &str, ca: &str) -> (String, String) {
        let (crt, key, csr) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.csr")),
        );
        let subject = format!("/CN={host}");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(&ext, format!("subjectAltName=DNS:{host}\n")).expect("an extension file");
        let (ca_crt, ca_key) = (self.path(&format!("{ca}.crt")), self.path(&format!("{ca}.key")));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        (crt, key)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A program the test started (kubectl port-forward, kubectl proxy),
/// killed when the test ends, whatever its outcome.
pub struct Background(std::process::Child);

impl Background {
    /// Runs kubectl against the test cluster for at most `limit`.
    pub fn kubectl(limit: Duration, args: &[&str]) -> Self {
        let kubeconfig = kubeconfig();
        let limit = limit.as_secs().to_string();
        let child = std::process::Command::new("timeout")
            .args([limit.as_str(), "kubectl", "--kubeconfig", &kubeconfig])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl starts");
        Self(child)
    }
}

impl Drop for Background {
    /// SIGTERM, which `timeout` passes on to kubectl, so neither outlives the test.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        if self.0.wait().is_err() {
            let _ = self.0.kill();
        }
    }
}
