//! Real Envoys beside the simulated proxies (`--envoys N`). The simulated
//! proxies ACK at once and never warm a cluster, so they cannot show a
//! delay only Envoy has (a changed EDS cluster waiting for its
//! assignment). Each real Envoy is one more benchmark pod, with that pod's
//! node id and token, running the bootstrap the injector gives a pod
//! (`mesh::inject::bootstrap`), placed on this host: the controller at its
//! host address (its certificate still names the Service), the token and
//! root in files of its own, and its admin, health and Prometheus ports on
//! loopback.
//!
//! Convergence on an Envoy is the time from the start of the API call to
//! the first answer of its admin API whose configuration dump shows the
//! change: a route change (the VirtualService's weights), a cluster
//! change (the DestinationRule's connection limit, which changes every
//! cluster of `svc-0000`: Envoy warms each again and needs its endpoints
//! again) and an endpoint change (an EndpointSlice address replaced). Each
//! Envoy is asked every `--envoy-poll-ms` for a dump filtered by resource
//! type and name, so the figures are upper bounds by one poll.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mesh::inject::bootstrap::{self as injected, ADMIN_PORT, HEALTH_PORT, PROMETHEUS_PORT};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::cluster::{self, Endpoints, Layout};
use crate::probe::{self, Check, Probe};
use crate::proxy::Fleet;
use crate::report::{distribution, mib};

/// One line of the report.
pub type Row = (String, String);

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Real Envoy processes beside the simulated proxies: one more pod,
    /// token and node id each, with the bootstrap the injector gives a pod.
    #[arg(long = "envoys", default_value_t = 0)]
    pub count: usize,
    /// The Envoy binary (the pinned one: e2e/scripts/versions.sh).
    #[arg(long = "envoy-binary", default_value = "envoy")]
    pub binary: PathBuf,
    /// A folder per Envoy under this one: bootstrap, token, root, log, pid.
    #[arg(long = "envoy-dir", default_value = "/tmp/xds-load-envoys")]
    pub dir: PathBuf,
    /// Envoy k's admin API listens on 127.0.0.1:<this + 3k>, its health
    /// and Prometheus listeners on the two ports after it.
    #[arg(long = "envoy-first-port", default_value_t = 43000)]
    pub first_port: u16,
    /// Changes of each kind (route, cluster, endpoint) measured on them.
    #[arg(long = "envoy-changes", default_value_t = 3)]
    pub changes: usize,
    /// Seconds a change may take to reach every Envoy: longer than Envoy's
    /// 15 s initial fetch timeout, so a cluster left waiting shows.
    #[arg(long = "envoy-timeout", default_value_t = 30)]
    pub timeout: u64,
    /// How often each Envoy's admin API is asked, in ms (the resolution).
    #[arg(long = "envoy-poll-ms", default_value_t = 100)]
    pub poll_ms: u64,
    /// Envoy's log level (`debug` to see why a change waits).
    #[arg(long = "envoy-log-level", default_value = "info")]
    pub log_level: String,
}

/// One Envoy's ports on loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub admin: u16,
    pub health: u16,
    pub prometheus: u16,
}

impl Ports {
    fn of(first: u16, k: usize) -> anyhow::Result<Self> {
        let admin = u16::try_from(usize::from(first) + 3 * k)
            .ok()
            .filter(|p| p.checked_add(2).is_some())
            .with_context(|| format!("--envoy-first-port {first} leaves no ports for Envoy {k}"))?;
        Ok(Self { admin, health: admin + 1, prometheus: admin + 2 })
    }
}

/// The injected bootstrap for an Envoy on this host, reaching the
/// controller at `xds_addr` and checking its certificate for
/// `server_name` (the Service's name, as a pod dials it), reading its
/// token and root from the files given. Every socket the bootstrap binds
/// or dials moves to loopback and this Envoy's ports; one the benchmark
/// does not know is an error rather than a clash between Envoys.
pub fn host_bootstrap(
    xds_addr: &str,
    server_name: &str,
    token_file: &Path,
    root_file: &Path,
    ports: Ports,
) -> anyhow::Result<Value> {
    let mut bootstrap = injected::bootstrap(xds_addr);
    relocate(&mut bootstrap, ports)?;
    let grpc = &mut bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
    if !grpc.is_object() {
        bail!("the injected bootstrap has no google_grpc ADS service");
    }
    grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"] = json!(root_file);
    grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"] = json!(token_file);
    grpc["channel_args"] = json!({"args": {"grpc.ssl_target_name_override": {"string_value": server_name}}});
    Ok(bootstrap)
}

fn relocate(value: &mut Value, ports: Ports) -> anyhow::Result<()> {
    match value {
        Value::Object(map) => {
            if let Some(socket) = map.get_mut("socket_address") {
                let port = socket["port_value"].as_u64().unwrap_or_default();
                let moved = match u16::try_from(port) {
                    Ok(ADMIN_PORT) => ports.admin,
                    Ok(HEALTH_PORT) => ports.health,
                    Ok(PROMETHEUS_PORT) => ports.prometheus,
                    _ => bail!(
                        "the injected bootstrap has a socket on port {port}, which xds-load does not place"
                    ),
                };
                *socket = json!({"address": "127.0.0.1", "port_value": moved});
            }
            map.values_mut().try_for_each(|v| relocate(v, ports))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| relocate(v, ports)),
        _ => Ok(()),
    }
}

/// A running Envoy.
struct RealEnvoy {
    pod: String,
    ports: Ports,
    pid: u32,
    dir: PathBuf,
    child: tokio::process::Child,
}

/// The running Envoys; dropping them kills them.
pub struct Envoys {
    list: Vec<RealEnvoy>,
    options: Options,
    /// A thread of its own for the watchers: on the load tool's runtime,
    /// 2,000 simulated proxies decoding a push would delay their polls
    /// (seen: polls timing out until the simulated push was over).
    watchers: Option<tokio::runtime::Runtime>,
}

impl Drop for Envoys {
    fn drop(&mut self) {
        // A runtime may not be dropped from within another one.
        if let Some(runtime) = self.watchers.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where the Envoys find the controller.
pub struct Target<'a> {
    pub xds_addr: &'a str,
    pub server_name: &'a str,
    pub root_pem: &'a str,
}

/// Starts one Envoy per token (pods `first_pod`, `first_pod + 1`, …) and
/// waits until each says it is ready (/ready: its first configuration is
/// in), at most `within`.
pub async fn start(
    options: &Options,
    layout: &Layout,
    first_pod: usize,
    tokens: Vec<String>,
    target: Target<'_>,
    within: Duration,
) -> anyhow::Result<(Envoys, Vec<Row>)> {
    let watchers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("envoy-watchers")
        .enable_all()
        .build()
        .context("starting the Envoy watchers' runtime")?;
    let mut envoys = Envoys { list: Vec::new(), options: options.clone(), watchers: Some(watchers) };
    std::fs::create_dir_all(&options.dir).with_context(|| format!("creating {}", options.dir.display()))?;
    let started = Instant::now();
    for (k, token) in tokens.into_iter().enumerate() {
        let i = first_pod + k;
        let ports = Ports::of(options.first_port, k)?;
        let dir = options.dir.join(layout.pod(i));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (token_file, root_file, config) =
            (dir.join("token"), dir.join("root.pem"), dir.join("envoy.json"));
        // The kubelet writes tokens without a trailing newline; Envoy's
        // gRPC refuses a header value ending in one.
        std::fs::write(&token_file, token.trim())?;
        std::fs::write(&root_file, target.root_pem)?;
        let bootstrap = host_bootstrap(target.xds_addr, target.server_name, &token_file, &root_file, ports)?;
        std::fs::write(&config, bootstrap.to_string())?;
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        // The injector's arguments (template.rs), and what a shared host
        // needs: one worker thread, a base id and a log file of its own.
        let child = tokio::process::Command::new(&options.binary)
            .arg("-c")
            .arg(&config)
            .args(["--service-node", &layout.node_id(i)])
            .args(["--service-cluster", &format!("{}.{}", layout.pod(i), layout.namespace)])
            .args(["--log-level", &options.log_level])
            .args(["--disable-hot-restart", "--drain-time-s", "45", "--local-address-ip-version", "v4"])
            .args(["--concurrency", "1", "--base-id", &ports.admin.to_string()])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (ENVOY: the pinned Envoy)", options.binary.display()))?;
        let pid = child.id().context("Envoy exited at once")?;
        std::fs::write(dir.join("pid"), pid.to_string())?;
        envoys.list.push(RealEnvoy { pod: layout.pod(i), ports, pid, dir, child });
    }

    let mut waits = JoinSet::new();
    for (k, e) in envoys.list.iter().enumerate() {
        let (admin, pid, dir) = (e.ports.admin, e.pid, e.dir.clone());
        waits.spawn(async move { (k, ready(admin, pid, &dir, started + within).await) });
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(done) = waits.join_next().await {
        match done.context("a readiness wait panicked")? {
            (_, Ok(at)) => times.push(at.duration_since(started)),
            (k, Err(e)) => failures.push(format!("{}: {e:#}", envoys.list[k].pod)),
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} Envoys not ready: {}", failures.len(), envoys.list.len(), failures.join("; "));
    }
    let all = times.iter().max().copied().unwrap_or_default();
    let rows = vec![
        (
            "real Envoys".to_string(),
            format!(
                "{} processes ({}..{}, --concurrency 1, the injected bootstrap), all ready (/ready) {:.2} s after the first started",
                envoys.list.len(),
                layout.pod(first_pod),
                layout.pod(first_pod + envoys.list.len().saturating_sub(1)),
                all.as_secs_f64()
            ),
        ),
        ("  start to ready".to_string(), distribution(times)),
    ];
    Ok((envoys, rows))
}

/// Waits for the Envoy's /ready, or its exit, or the deadline.
async fn ready(admin: u16, pid: u32, dir: &Path, deadline: Instant) -> anyhow::Result<Instant> {
    loop {
        if !alive(pid) {
            bail!("exited: {}", tail(&dir.join("stderr.log"), &dir.join("envoy.log")));
        }
        if let Ok((200, _)) = get(admin, "/ready").await {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("not ready by the deadline: {}", tail(&dir.join("stderr.log"), &dir.join("envoy.log")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|at| s.get(at + 2..at + 3)).map(|state| state != "Z"))
        .unwrap_or(false)
}

/// The last lines of a log, for an error.
fn tail(first: &Path, second: &Path) -> String {
    let text = [first, second].iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect::<String>();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// GET on an Envoy's admin API: the status and the body.
async fn get(port: u16, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request =
            hyper::Request::get(path_and_query).header("host", "127.0.0.1").body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("127.0.0.1:{port}{path_and_query} took over 5 s"))?
}

/// A GET whose body must be JSON with status 200.
async fn get_json(port: u16, path_and_query: &str) -> anyhow::Result<Value> {
    let (status, body) = get(port, path_and_query).await?;
    if status != 200 {
        bail!("127.0.0.1:{port}{path_and_query}: status {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("127.0.0.1:{port}{path_and_query}: not JSON"))
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A regex matching exactly `name` (RE2 syntax, as Envoy's `name_regex`).
fn exactly(name: &str) -> String {
    let mut out = String::from("^");
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

/// Every value under `key`, at any depth.
fn find_all<'a>(value: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    out.push(v);
                }
                find_all(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_all(v, key, out)),
        _ => {}
    }
}

fn values<'a>(value: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    find_all(value, key, &mut out);
    out
}

/// A change and what an Envoy's configuration dump must show of it.
#[derive(Clone, Debug)]
pub enum Change {
    /// A route gives `weight` to the cluster named `cluster`.
    RouteWeight { host: String, cluster: String, weight: u64 },
    /// Every cluster of `host` (all ports and subsets) is active with a
    /// connection limit of `max_connections`, none left warming.
    ClusterLimit { host: String, max_connections: u64 },
    /// The assignment of cluster `cluster` holds `address`.
    EndpointAddress { cluster: String, address: String },
}

/// What one dump shows of a change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The new version is there but not in use yet (a cluster warming).
    pub warming: bool,
    pub done: bool,
}

impl Change {
    /// The admin queries whose answers hold the change: one resource
    /// type each, the changed resources by name; the answers' lists go
    /// under the resource's name in the dump [`Change::assess`] reads.
    pub fn queries(&self) -> Vec<(&'static str, String)> {
        let resource = |name: &'static str, query: String| (name, query);
        match self {
            Change::RouteWeight { host, .. } => vec![resource(
                "dynamic_route_configs",
                format!(
                    "/config_dump?resource=dynamic_route_configs&name_regex={}",
                    encode(&format!(".*{}.*", exactly(host).trim_matches(['^', '$'])))
                ),
            )],
            Change::ClusterLimit { host, .. } => {
                let names = encode(&format!(
                    r"^outbound\|[0-9]+\|[^|]*\|{}$",
                    exactly(host).trim_matches(['^', '$'])
                ));
                ["dynamic_active_clusters", "dynamic_warming_clusters"]
                    .into_iter()
                    .map(|name| resource(name, format!("/config_dump?resource={name}&name_regex={names}")))
                    .collect()
            }
            Change::EndpointAddress { cluster, .. } => vec![resource(
                "dynamic_endpoint_configs",
                format!(
                    "/config_dump?resource=dynamic_endpoint_configs&include_eds&name_regex={}",
                    encode(&exactly(cluster))
                ),
            )],
        }
    }

    pub fn assess(&self, dump: &Value) -> Progress {
        match self {
            Change::RouteWeight { cluster, weight, .. } => {
                let done = values(dump, "weighted_clusters").iter().any(|w| {
                    values(w, "clusters").iter().flat_map(|c| c.as_array().into_iter().flatten()).any(|c| {
                        c["name"].as_str() == Some(cluster.as_str()) && c["weight"].as_u64() == Some(*weight)
                    })
                });
                Progress { warming: false, done }
            }
            Change::ClusterLimit { max_connections, .. } => {
                let limited = |c: &&Value| {
                    values(c, "max_connections").iter().any(|m| m.as_u64() == Some(*max_connections))
                };
                let listed = |key: &str| -> Vec<&Value> {
                    values(dump, key).into_iter().flat_map(|a| a.as_array().into_iter().flatten()).collect()
                };
                let (active, warming) =
                    (listed("dynamic_active_clusters"), listed("dynamic_warming_clusters"));
                Progress {
                    warming: warming.iter().any(limited),
                    done: !active.is_empty() && warming.is_empty() && active.iter().all(limited),
                }
            }
            Change::EndpointAddress { address, .. } => {
                let done = values(dump, "address").iter().any(|a| a.as_str() == Some(address.as_str()));
                Progress { warming: false, done }
            }
        }
    }
}

/// When one Envoy showed a change.
#[derive(Clone, Copy, Debug, Default)]
struct Reached {
    warming: Option<Instant>,
    done: Option<Instant>,
    /// Envoy's own time of the update that brought it: the latest
    /// `last_updated` of the resources in the dump that showed it.
    applied: Option<SystemTime>,
    /// What the last dump showed (at the deadline, if never done).
    last: Progress,
    errors: u32,
}

/// Polls one Envoy until the change shows or the deadline passes.
async fn watch(admin: u16, change: Change, deadline: Instant, every: Duration) -> Reached {
    let queries = change.queries();
    let mut reached = Reached::default();
    loop {
        let mut answers = Vec::with_capacity(queries.len());
        for (name, query) in &queries {
            // With `resource=`, the dump is a flat list under `configs`.
            answers.push(get_json(admin, query).await.map(|mut a| (name.to_string(), a["configs"].take())));
        }
        match answers.into_iter().collect::<anyhow::Result<serde_json::Map<String, Value>>>() {
            Ok(answers) => {
                let dump = Value::Object(answers);
                let now = Instant::now();
                let progress = change.assess(&dump);
                reached.last = progress;
                if progress.warming && reached.warming.is_none() {
                    reached.warming = Some(now);
                }
                if progress.done {
                    reached.done = Some(now);
                    reached.applied =
                        values(&dump, "last_updated").iter().filter_map(|t| timestamp(t.as_str()?)).max();
                    return reached;
                }
            }
            Err(_) => reached.errors += 1,
        }
        if Instant::now() >= deadline {
            return reached;
        }
        tokio::time::sleep(every).await;
    }
}

impl Envoys {
    fn admin_ports(&self) -> Vec<u16> {
        self.list.iter().map(|e| e.ports.admin).collect()
    }

    /// Makes the API call `call` and watches every Envoy until `change`
    /// shows in its dump, and the simulated proxies with `simulated` for
    /// the same change; returns when the call started, what each Envoy
    /// showed, and when each simulated proxy received the change (when
    /// `verified`, a response holding it; else any response of the
    /// probe's types about the service).
    async fn converge<F>(
        &self,
        change: Change,
        fleet: &Fleet,
        mut simulated: Probe,
        verified: bool,
        call: F,
    ) -> anyhow::Result<(Since, Vec<Reached>, Vec<Duration>)>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let since = Instant::now();
        let wall = SystemTime::now();
        simulated.since = since;
        let id = fleet.probe(simulated);
        println!("xds-load: Envoys: {change:?} requested at {} UTC", utc(wall));
        let deadline = since + Duration::from_secs(self.options.timeout);
        let every = Duration::from_millis(self.options.poll_ms.max(10));
        let runtime = self.watchers.as_ref().context("the Envoys were stopped")?.handle().clone();
        let mut watchers = JoinSet::new();
        for (k, admin) in self.admin_ports().into_iter().enumerate() {
            let change = change.clone();
            watchers.spawn_on(async move { (k, watch(admin, change, deadline, every).await) }, &runtime);
        }
        let called = call.await;
        if called.is_err() {
            watchers.abort_all();
        }
        called?;
        let mut out = vec![Reached::default(); self.list.len()];
        while let Some(done) = watchers.join_next().await {
            let (k, reached) = done.context("a watcher panicked")?;
            out[k] = reached;
        }
        // The simulated proxies may still be taking the push in: their
        // figures are complete only once every one has it (or the deadline).
        let arrived = |i: usize| {
            let seen = fleet.state(i).seen.get(id).copied().unwrap_or_default();
            if verified { seen.verified.is_some() } else { seen.observed.is_some() }
        };
        while Instant::now() < deadline && !(0..fleet.states.len()).all(arrived) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fleet_times = (0..fleet.states.len())
            .filter_map(|i| {
                let seen = fleet.state(i).seen.get(id).copied().unwrap_or_default();
                Some(if verified { seen.verified } else { seen.observed }?.duration_since(since))
            })
            .collect();
        Ok((Since { at: since, wall }, out, fleet_times))
    }

    /// The route, cluster and endpoint changes, `--envoy-changes` of each.
    pub async fn measure(
        &self,
        client: &kube::Client,
        layout: &Layout,
        endpoints: &mut Endpoints,
        fleet: &Fleet,
    ) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let changes = self.options.changes;
        let host = layout.host(0);

        // Weights never set before (the simulated proxies' switches use
        // 80/20), each different from the last.
        let mut route = Tally::default();
        for c in 0..changes {
            let v2 = 30 + 10 * (c as u32 % 4);
            let change = Change::RouteWeight {
                host: host.clone(),
                cluster: format!("outbound|{}|v2|{host}", cluster::PORT),
                weight: v2.into(),
            };
            let call = async { cluster::set_weights(client, layout, (100 - v2, v2)).await.map(|_| ()) };
            let check = Check::RouteWeight { cluster: format!("|v2|{host}"), weight: v2 };
            let probe = Probe {
                since: Instant::now(),
                types: &[probe::ROUTE, probe::LISTENER],
                mention: host.clone(),
                check,
            };
            let (since, reached, simulated) = self.converge(change, fleet, probe, true, call).await?;
            route.add(since, &reached, simulated, fleet.states.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        rows.push((
            "Envoys: route change".into(),
            format!(
                "{changes} weight changes of {} (70/30, 60/40, …), each awaited up to {} s",
                layout.service(0),
                self.options.timeout
            ),
        ));
        rows.extend(route.rows(self.list.len(), "RDS", "a response holding the new weight"));

        // A new connection limit on every cluster of svc-0000: Envoy
        // replaces each, warms it and needs its endpoints again.
        let mut clusters = Tally::default();
        // (Envoy, change) pairs: with all the endpoints, with fewer, unknown.
        let mut holding = (0usize, Vec::new(), 0usize);
        let plain = format!("outbound|{}||{host}", cluster::PORT);
        for c in 0..changes {
            let limit = 1001 + c as u64;
            let change = Change::ClusterLimit { host: host.clone(), max_connections: limit };
            let call = cluster::set_max_connections(client, layout, limit);
            // Any CDS response after the change: SotW sends every cluster,
            // Delta (the injected bootstrap's) the changed ones.
            let check = Check::Address("no address: the CDS response's arrival is the figure".into());
            let probe =
                Probe { since: Instant::now(), types: &[probe::CLUSTER], mention: host.clone(), check };
            let (since, reached, simulated) = self.converge(change, fleet, probe, false, call).await?;
            clusters.add(since, &reached, simulated, fleet.states.len());
            for e in &self.list {
                match self.membership(e.ports.admin, &plain).await {
                    Some(n) if n == layout.endpoints as u64 => holding.0 += 1,
                    Some(n) => holding.1.push(n),
                    None => holding.2 += 1,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        rows.push((
            "Envoys: cluster change".into(),
            format!(
                "{changes} DestinationRule changes of {} (connectionPool.tcp.maxConnections 1001, 1002, …: each of its clusters replaced), each awaited up to {} s",
                layout.service(0),
                self.options.timeout
            ),
        ));
        rows.extend(clusters.rows(
            self.list.len(),
            "the new clusters active (warmed), none warming",
            "any CDS response after the change (not checked)",
        ));
        rows.push((
            format!("  {plain} holding its {} endpoints once converged", layout.endpoints),
            format!(
                "{} of {} (Envoy, change) pairs (membership_total); fewer: {:?}; stats unreadable: {}",
                holding.0,
                holding.0 + holding.1.len() + holding.2,
                holding.1,
                holding.2
            ),
        ));

        // An address replaced in one Service's EndpointSlice.
        let mut eds = Tally::default();
        for c in 0..changes {
            let s = (1 + c) % layout.services;
            let (fresh, list) = endpoints.replace_one(s);
            let change = Change::EndpointAddress {
                cluster: format!("outbound|{}||{}", cluster::PORT, layout.host(s)),
                address: fresh.clone(),
            };
            let check = Check::Address(fresh.clone());
            let probe = Probe {
                since: Instant::now(),
                types: &[probe::ENDPOINT, probe::CLUSTER],
                mention: layout.host(s),
                check,
            };
            let call = cluster::set_endpoints(client, layout, s, &list);
            let (since, reached, simulated) = self.converge(change, fleet, probe, true, call).await?;
            eds.add(since, &reached, simulated, fleet.states.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        rows.push((
            "Envoys: endpoint change".into(),
            format!(
                "{changes} EndpointSlice updates (svc-0001, …: one address replaced), each awaited up to {} s",
                self.options.timeout
            ),
        ));
        rows.extend(eds.rows(self.list.len(), "EDS", "a response holding the new address"));
        Ok(rows)
    }

    /// A cluster's `membership_total`, from the Envoy's stats.
    async fn membership(&self, admin: u16, cluster: &str) -> Option<u64> {
        let name = format!("cluster.{cluster}.membership_total");
        let (_, body) = get(admin, &format!("/stats?filter={}", encode(&exactly(&name)))).await.ok()?;
        stat_lines(&body).find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every Envoy's RSS, and one Envoy's memory in detail with what it
    /// holds.
    pub async fn memory(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        // The binary's pages (RssFile) are shared by every Envoy on the
        // host; what each holds of its own is RssAnon.
        for key in ["VmRSS:", "RssAnon:"] {
            let mut kib: Vec<u64> = self.list.iter().filter_map(|e| status_kib(e.pid, key)).collect();
            kib.sort_unstable();
            if let (Some(min), Some(max)) = (kib.first(), kib.last()) {
                rows.push((
                    format!("Envoys: {}", key.trim_end_matches(':')),
                    format!(
                        "min {}, p50 {}, max {} ({} Envoys, /proc)",
                        mib(*min),
                        mib(kib[kib.len() / 2]),
                        mib(*max),
                        kib.len()
                    ),
                ));
            }
        }
        let Some(first) = self.list.first() else { return rows };
        let admin = first.ports.admin;
        let kib = |key| {
            status_kib(first.pid, key).map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        };
        let pss = |key| {
            rollup_kib(first.pid, key).map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        };
        rows.push((
            format!("  {} (/proc)", first.pod),
            format!(
                "VmRSS {}, VmHWM {}, RssAnon {}, RssFile {}; Pss {} (Pss_Anon {}, Pss_File {})",
                kib("VmRSS:"),
                kib("VmHWM:"),
                kib("RssAnon:"),
                kib("RssFile:"),
                pss("Pss:"),
                pss("Pss_Anon:"),
                pss("Pss_File:")
            ),
        ));
        if let Ok(memory) = get_json(admin, "/memory").await {
            let field = |k: &str| {
                memory[k]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .map_or("n/a".into(), |b| format!("{:.1} MiB", b / 1048576.0))
            };
            rows.push((
                format!("  {} (/memory)", first.pod),
                format!(
                    "allocated {}, heap_size {}, pageheap_free {}, pageheap_unmapped {}, total_thread_cache {}, total_physical_bytes {}",
                    field("allocated"),
                    field("heap_size"),
                    field("pageheap_free"),
                    field("pageheap_unmapped"),
                    field("total_thread_cache"),
                    field("total_physical_bytes")
                ),
            ));
        }
        let gauges = "^(server\\.memory_.*|cluster_manager\\.(active|warming)_clusters|listener_manager\\.total_listeners_active)$";
        if let Ok((_, body)) = get(admin, &format!("/stats?filter={}", encode(gauges))).await {
            let text: Vec<String> = stat_lines(&body).map(|(n, v)| format!("{n} {v}")).collect();
            rows.push((format!("  {} (/stats)", first.pod), text.join(", ")));
        }
        let count = |query: &'static str| async move {
            get_json(admin, query).await.ok().map(|d| {
                values(&d, "configs").iter().filter_map(|c| c.as_array()).map(Vec::len).sum::<usize>()
            })
        };
        let routes = count("/config_dump?resource=dynamic_route_configs&mask=version_info").await;
        let assignments =
            count("/config_dump?resource=dynamic_endpoint_configs&include_eds&mask=version_info").await;
        let listeners = count("/config_dump?resource=dynamic_listeners&mask=name").await;
        let stats = get(admin, "/stats").await.ok().map(|(_, body)| body.lines().count());
        // Kept beside its log, for a look at what the memory holds.
        if let Ok((200, dump)) = get(admin, "/config_dump?include_eds").await {
            let _ = std::fs::write(first.dir.join("config_dump.json"), dump);
        }
        let shown = |n: Option<usize>| n.map_or("n/a".into(), |n| n.to_string());
        rows.push((
            format!("  {} holds", first.pod),
            format!(
                "{} dynamic listeners, {} route configurations, {} ClusterLoadAssignments, {} stats",
                shown(listeners),
                shown(routes),
                shown(assignments),
                shown(stats)
            ),
        ));
        rows
    }

    /// NACKs, initial fetch timeouts and anything left warming, summed over
    /// every Envoy, and the log lines that say a configuration was rejected.
    pub async fn health(&self) -> Vec<Row> {
        let suffixes =
            ["update_rejected", "init_fetch_timeout", "warming_clusters", "total_listeners_warming"];
        let mut sums = [0u64; 4];
        let mut connected = 0;
        let mut unreadable = 0;
        let filter = encode(
            "(update_rejected|init_fetch_timeout|warming_clusters|total_listeners_warming|control_plane\\.connected_state)$",
        );
        for e in &self.list {
            let Ok((200, body)) = get(e.ports.admin, &format!("/stats?filter={filter}")).await else {
                unreadable += 1;
                continue;
            };
            for (name, value) in stat_lines(&body) {
                if name == "control_plane.connected_state" && value == 1 {
                    connected += 1;
                }
                if let Some(k) = suffixes.iter().position(|s| name.ends_with(s)) {
                    sums[k] += value;
                }
            }
        }
        let mut rejected = 0usize;
        let mut first_rejected = None;
        for e in &self.list {
            let log = std::fs::read_to_string(e.dir.join("envoy.log")).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("rejected")) {
                rejected += 1;
                first_rejected.get_or_insert_with(|| line.chars().take(300).collect::<String>());
            }
        }
        let mut rows = vec![(
            "Envoys: xDS health at the end".into(),
            format!(
                "{connected} of {} connected; summed: update_rejected (NACKs) {}, init_fetch_timeout {}, clusters warming {}, listeners warming {}{}",
                self.list.len(),
                sums[0],
                sums[1],
                sums[2],
                sums[3],
                if unreadable > 0 {
                    format!(" ({unreadable} Envoys' stats unreadable)")
                } else {
                    String::new()
                }
            ),
        )];
        rows.push((
            "  log lines saying \"rejected\"".into(),
            match first_rejected {
                Some(line) => format!("{rejected}, the first: {line}"),
                None => "0".into(),
            },
        ));
        rows
    }

    /// Stops every Envoy (their folders and logs stay).
    pub async fn stop(mut self) {
        for e in &mut self.list {
            let _ = e.child.start_kill();
        }
        for e in &mut self.list {
            let _ = tokio::time::timeout(Duration::from_secs(5), e.child.wait()).await;
            let _ = std::fs::remove_file(e.dir.join("pid"));
        }
    }
}

/// `name: value` lines of Envoy's text stats with an integer value.
fn stat_lines(body: &str) -> impl Iterator<Item = (&str, u64)> {
    body.lines().filter_map(|l| {
        let (name, value) = l.rsplit_once(": ")?;
        Some((name, value.trim().parse().ok()?))
    })
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

/// A `kB` field of /proc/<pid>/smaps_rollup (proportional set sizes).
fn rollup_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?, key)
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// When an API call started, on both clocks: Envoy stamps what it
/// applies with the wall clock.
#[derive(Clone, Copy)]
struct Since {
    at: Instant,
    wall: SystemTime,
}

/// A wall-clock time as `2026-12-04 23:00:39.175`, UTC.
fn utc(at: SystemTime) -> String {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// A protobuf JSON timestamp (`2026-12-04T23:00:39.175Z`, UTC).
fn timestamp(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse::<u32>().ok()?
    };
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// What every Envoy showed of the changes of one kind.
#[derive(Default)]
struct Tally {
    /// Envoy's `last_updated` of what showed the change, from the call's
    /// start (no polling in it; the wall clock of one host).
    applied: Vec<Duration>,
    done: Vec<Duration>,
    warming: Vec<Duration>,
    /// Per change that reached every Envoy: its start to the last one.
    last: Vec<Duration>,
    expected: usize,
    errors: u32,
    /// Envoys not done at the deadline: with the change warming, without it.
    left_warming: usize,
    left_without: usize,
    /// The simulated proxies, the same changes.
    simulated: Vec<Duration>,
    simulated_expected: usize,
    simulated_proxies: usize,
}

impl Tally {
    fn add(&mut self, start: Since, reached: &[Reached], simulated: Vec<Duration>, proxies: usize) {
        self.simulated_proxies = proxies;
        let since = start.at;
        self.expected += reached.len();
        self.simulated_expected += 1;
        self.simulated.extend(simulated);
        for r in reached.iter().filter(|r| r.done.is_none()) {
            if r.last.warming {
                self.left_warming += 1;
            } else {
                self.left_without += 1;
            }
        }
        self.applied.extend(reached.iter().filter_map(|r| r.applied?.duration_since(start.wall).ok()));
        let done: Vec<Duration> =
            reached.iter().filter_map(|r| Some(r.done?.duration_since(since))).collect();
        if done.len() == reached.len()
            && let Some(last) = done.iter().max()
        {
            self.last.push(*last);
        }
        self.done.extend(done);
        self.warming.extend(reached.iter().filter_map(|r| Some(r.warming?.duration_since(since))));
        self.errors += reached.iter().map(|r| r.errors).sum::<u32>();
    }

    fn rows(&self, envoys: usize, what: &str, simulated: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        if !self.warming.is_empty() {
            rows.push(("  seen warming, from request start".into(), distribution(self.warming.clone())));
        }
        rows.push((format!("  convergence from request start ({what})"), distribution(self.done.clone())));
        rows.push((
            "  the same by Envoy's last_updated (no poll in it)".into(),
            distribution(self.applied.clone()),
        ));
        rows.push((
            "  Envoys reached".into(),
            format!("{} of {} ({} Envoys per change)", self.done.len(), self.expected, envoys),
        ));
        if !self.last.is_empty() {
            rows.push(("  change to last Envoy".into(), distribution(self.last.clone())));
        }
        if self.left_warming + self.left_without > 0 {
            rows.push((
                "  Envoys not there at the deadline".into(),
                format!("{} with the change warming, {} without it", self.left_warming, self.left_without),
            ));
        }
        if self.errors > 0 {
            rows.push(("  admin API errors while polling".into(), self.errors.to_string()));
        }
        rows.push((
            format!("  simulated proxies, same changes ({simulated})"),
            format!(
                "{} ({} changes × {} proxies)",
                distribution(self.simulated.clone()),
                self.simulated_expected,
                self.simulated_proxies
            ),
        ));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "svc-0000.bench.svc.cluster.local";

    #[test]
    fn the_host_bootstrap_is_the_injected_one_on_loopback_ports() {
        let ports = Ports::of(43000, 2).unwrap();
        assert_eq!(ports, Ports { admin: 43006, health: 43007, prometheus: 43008 });
        let b = host_bootstrap(
            "127.0.0.1:55012",
            "mesh.mesh-system.svc",
            Path::new("/x/token"),
            Path::new("/x/root.pem"),
            ports,
        )
        .unwrap();
        let grpc = &b["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
        assert_eq!(grpc["target_uri"], "127.0.0.1:55012");
        assert_eq!(
            grpc["channel_args"]["args"]["grpc.ssl_target_name_override"]["string_value"],
            "mesh.mesh-system.svc"
        );
        assert_eq!(
            grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"],
            "/x/token"
        );
        assert_eq!(grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"], "/x/root.pem");
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 43006);
        let mut sockets = Vec::new();
        find_all(&b, "socket_address", &mut sockets);
        let mut ports: Vec<u64> = sockets.iter().map(|s| s["port_value"].as_u64().unwrap()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports, [43006, 43007, 43008]);
        assert!(sockets.iter().all(|s| s["address"] == "127.0.0.1"));
        // Everything else is what the injector writes.
        let injected = injected::bootstrap("127.0.0.1:55012");
        assert_eq!(b["dynamic_resources"]["cds_config"], injected["dynamic_resources"]["cds_config"]);
        assert_eq!(b["node"], injected["node"]);
    }

    #[test]
    fn a_route_weight_counts_only_for_its_cluster() {
        let v2 = format!("outbound|9080|v2|{HOST}");
        let dump = json!({"configs": [{"dynamic_route_configs": [{"route_config": {"virtual_hosts": [{"routes": [{
            "route": {"weighted_clusters": {"clusters": [
                {"name": format!("outbound|9080|v1|{HOST}"), "weight": 30},
                {"name": v2, "weight": 70},
            ]}}
        }]}]}}]}]});
        let change = |weight| Change::RouteWeight { host: HOST.into(), cluster: v2.clone(), weight };
        assert!(change(70).assess(&dump).done);
        assert!(!change(30).assess(&dump).done);
        assert!(
            change(70).queries()[0].1.starts_with("/config_dump?resource=dynamic_route_configs&name_regex=")
        );
    }

    #[test]
    fn a_cluster_change_is_done_when_every_cluster_is_active_with_it() {
        let cluster = |subset: &str, limit: u64| {
            json!({"cluster": {"name": format!("outbound|9080|{subset}|{HOST}"),
                "circuit_breakers": {"thresholds": [{"max_connections": limit}]}}})
        };
        let change = Change::ClusterLimit { host: HOST.into(), max_connections: 1001 };
        let dump = |active: Vec<Value>, warming: Vec<Value>| json!({"configs": [{"dynamic_active_clusters": active, "dynamic_warming_clusters": warming}]});
        let old = dump(vec![cluster("", 1000), cluster("v1", 1000)], vec![]);
        assert_eq!(change.assess(&old), Progress { warming: false, done: false });
        let warming = dump(vec![cluster("", 1000), cluster("v1", 1001)], vec![cluster("", 1001)]);
        assert_eq!(change.assess(&warming), Progress { warming: true, done: false });
        let done = dump(vec![cluster("", 1001), cluster("v1", 1001)], vec![]);
        assert_eq!(change.assess(&done), Progress { warming: false, done: true });
        assert!(!change.assess(&dump(vec![], vec![])).done, "no cluster at all is not a change");
    }

    #[test]
    fn an_endpoint_address_matches_whole() {
        let dump = json!({"configs": [{"endpoint_config": {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.200.0.12", "port_value": 9080}}}}
        ]}]}}]});
        let change = |a: &str| Change::EndpointAddress {
            cluster: format!("outbound|9080||{HOST}"),
            address: a.into(),
        };
        assert!(change("10.200.0.12").assess(&dump).done);
        assert!(!change("10.200.0.1").assess(&dump).done);
    }

    #[test]
    fn envoy_timestamps_are_read_as_utc() {
        let at = |t| timestamp(t).unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(at("1970-01-01T00:00:00Z"), Duration::ZERO);
        assert_eq!(at("2026-12-04T23:00:39.175Z"), Duration::new(1_796_425_239, 175_000_000));
        assert_eq!(at("2000-02-29T12:00:00.000001Z"), Duration::new(951_825_600, 1_000));
        assert_eq!(timestamp("2026-12-04 23:00:39"), None);
        let back = timestamp("2026-12-04T23:00:39.175Z").unwrap();
        assert_eq!(utc(back), "2026-12-04 23:00:39.175");
        assert_eq!(utc(timestamp("2000-02-29T12:00:00Z").unwrap()), "2000-02-29 12:00:00.000");
    }

    #[test]
    fn names_become_exact_regexes_and_encoded_queries() {
        assert_eq!(exactly("outbound|9080||a.b"), r"^outbound\|9080\|\|a\.b$");
        assert_eq!(encode(r"^a\|b.c$"), "%5Ea%5C%7Cb%2Ec%24");
        let stats = "cluster.x.membership_total: 3\nserver.version: 1.40.0\nh: P0(nan,1)";
        assert_eq!(stat_lines(stats).collect::<Vec<_>>(), [("cluster.x.membership_total", 3)]);
    }
}
