//! One pod's life on this node, as one task: sandbox (network namespace,
//! volumes, /etc/hosts), init containers in order (native sidecars start
//! and keep running), then the app containers, restarted as restartPolicy
//! says with the kubelet's back-off; probes; status written back when it
//! changes; and on deletion SIGTERM, the grace period, SIGKILL, clean-up,
//! and the final delete that removes the object.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::environment::{self, ServiceLink};
use crate::images::Images;
use crate::network::{NodeNetwork, PodNetwork};
use crate::probes::{self, Kind, ProbeState};
use crate::volumes::Volumes;

/// What every pod worker shares.
pub struct Shared {
    pub client: Client,
    pub node_name: String,
    pub state_dir: PathBuf,
    pub net: Arc<NodeNetwork>,
    pub images: Images,
    pub self_exe: PathBuf,
    pub services: watch::Receiver<Arc<Vec<ServiceLink>>>,
    pub token_max_age: Option<u64>,
}

/// The capabilities a container runtime gives a container by default.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_millis(250);
const VOLUME_RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    Sidecar,
    App,
}

#[derive(Debug, Clone)]
struct Terminated {
    code: i32,
    reason: String,
    started: Timestamp,
    finished: Timestamp,
}

struct ContainerRun {
    spec: Container,
    role: Role,
    child: Option<tokio::process::Child>,
    started_at: Option<(Timestamp, Instant)>,
    restarts: i32,
    /// How the current run ended, while it is not running.
    ended: Option<Terminated>,
    /// How the run before the current one ended.
    last: Option<Terminated>,
    waiting: Option<(String, String)>,
    backoff: Duration,
    next_start: Instant,
    probes: Vec<ProbeState>,
    /// An init container that exited 0.
    completed: bool,
}

impl ContainerRun {
    fn new(spec: Container, role: Role) -> Self {
        Self {
            spec,
            role,
            child: None,
            started_at: None,
            restarts: 0,
            ended: None,
            last: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            backoff: BACKOFF_START,
            next_start: Instant::now(),
            probes: Vec::new(),
            completed: false,
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn probe(&self, kind: Kind) -> Option<&ProbeState> {
        self.probes.iter().find(|p| p.kind == kind)
    }

    /// Started: running, and past its startup probe if it has one.
    fn started(&self) -> bool {
        self.running() && self.probe(Kind::Startup).is_none_or(|p| p.result == Some(true))
    }

    fn ready(&self) -> bool {
        self.started() && self.probe(Kind::Readiness).is_none_or(|p| p.result == Some(true))
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }
}

pub struct Worker {
    sh: Arc<Shared>,
    pod: Pod,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    net: Option<PodNetwork>,
    volumes: Volumes,
    containers: Vec<ContainerRun>,
    services: watch::Receiver<Arc<Vec<ServiceLink>>>,
    last_volume_sync: Option<Instant>,
    start_time: Timestamp,
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
    last_status: Option<Value>,
    sandbox_error: Option<String>,
    torn_down: bool,
}

impl Worker {
    pub fn new(sh: Arc<Shared>, pod: Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = sh.state_dir.join("pods").join(format!("{namespace}_{name}_{uid}"));
        let spec = pod.spec.clone().unwrap_or_default();
        let mut containers: Vec<ContainerRun> = spec
            .init_containers
            .into_iter()
            .flatten()
            .map(|c| {
                let role =
                    if c.restart_policy.as_deref() == Some("Always") { Role::Sidecar } else { Role::Init };
                ContainerRun::new(c, role)
            })
            .collect();
        containers.extend(spec.containers.into_iter().map(|c| ContainerRun::new(c, Role::App)));
        Self {
            services: sh.services.clone(),
            volumes: Volumes::new(dir.join("volumes"), sh.token_max_age),
            sh,
            pod,
            namespace,
            name,
            uid,
            dir,
            net: None,
            containers,
            last_volume_sync: None,
            start_time: Timestamp::now(),
            transitions: BTreeMap::new(),
            last_status: None,
            sandbox_error: None,
            torn_down: false,
        }
    }

    /// Runs the pod until it is deleted. `updates` carries new versions of
    /// the pod, and None once the API server no longer has it.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Option<Pod>>) {
        tracing::info!(pod = %self.key(), "starting");
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(Some(pod)) => self.pod = pod,
                    // Gone from the API server (force-deleted): stop at once.
                    Some(None) | None => {
                        self.stop_all(Duration::ZERO).await;
                        self.clean_up().await;
                        return;
                    }
                },
                _ = tokio::time::sleep(TICK) => {}
            }
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate().await;
                self.clean_up().await;
                self.final_delete().await;
                return;
            }
            if let Err(e) = self.step().await {
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "pod not ready to run");
                self.sandbox_error = Some(format!("{e:#}"));
            }
            if let Err(e) = self.report().await {
                tracing::warn!(pod = %self.key(), error = %e, "writing pod status");
            }
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn pod_ip(&self) -> Option<String> {
        if self.host_network() {
            return Some(self.sh.net.args.link_ip.to_string());
        }
        self.net.as_ref().map(|n| n.ip.to_string())
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
    }

    fn netns_path(&self) -> PathBuf {
        match &self.net {
            Some(n) => n.netns_path(),
            None => PathBuf::from("/proc/1/ns/net"),
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    /// One pass over the pod: make what is missing, reap what exited, start
    /// what is due, probe what is running.
    async fn step(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.ensure_sandbox().await?;
        self.sandbox_error = None;
        self.reap();
        self.start_due().await;
        self.run_probes().await;
        if matches!(self.phase(), "Succeeded" | "Failed") {
            // A finished pod keeps its status, not its processes or network.
            self.stop_all(Duration::from_secs(2)).await;
            self.tear_down_network().await;
            self.torn_down = true;
        }
        Ok(())
    }

    async fn ensure_sandbox(&mut self) -> Result<()> {
        if self.net.is_none() && !self.host_network() {
            let net = self.sh.net.clone();
            let (ns, name) = (self.namespace.clone(), self.name.clone());
            let sysctls: Vec<(String, String)> = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|c| c.sysctls.as_ref())
                .into_iter()
                .flatten()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect();
            let pod_net = tokio::task::spawn_blocking(move || net.add_pod(&ns, &name, &sysctls)).await??;
            tracing::info!(pod = %self.key(), ip = %pod_net.ip, netns = %pod_net.netns, "sandbox ready");
            self.net = Some(pod_net);
        }
        // Status carries the IP before the volumes (downward API podIP) are written.
        if let (Some(ip), Some(status)) = (self.pod_ip(), self.pod.status.as_mut()) {
            status.pod_ip = Some(ip);
        }
        let due = self.last_volume_sync.is_none_or(|t| t.elapsed() >= VOLUME_RESYNC);
        if due {
            let host_ip = self.sh.net.gateway.to_string();
            self.volumes.sync(&self.sh.client, &self.pod, &host_ip).await?;
            self.last_volume_sync = Some(Instant::now());
        }
        if self.services.has_changed().unwrap_or(false) || !self.dir.join("etc/hosts").exists() {
            self.write_etc()?;
        }
        // Before any container starts, so before any status says Ready:
        // `enter` on a Ready pod must find it. (Written after the status
        // patch, a test that saw Ready could find no pod.)
        self.write_sandbox_file()?;
        Ok(())
    }

    /// /etc/hosts (every Service by its cluster names, the way cluster DNS
    /// answers, then the pod's `hostAliases`) and /etc/resolv.conf for the
    /// pod's containers.
    fn write_etc(&mut self) -> Result<()> {
        let links = self.services.borrow_and_update().clone();
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file (local node): Services by their cluster DNS names.\n\
             127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if let Some(ip) = self.pod_ip() {
            hosts.push_str(&format!("{ip}\t{}\n", self.name));
        }
        for svc in links.iter().filter(|s| !s.cluster_ip.is_empty() && s.cluster_ip != "None") {
            let (n, ns) = (&svc.name, &svc.namespace);
            let short = if *ns == self.namespace { format!(" {n}") } else { String::new() };
            hosts.push_str(&format!(
                "{}\t{n}.{ns}.svc.cluster.local {n}.{ns}.svc {n}.{ns}{short}\n",
                svc.cluster_ip
            ));
        }
        // The pod's own `hostAliases`, after the rest, as the kubelet writes them:
        // names outside the cluster a pod resolves without DNS.
        let aliases = self.pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
        if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
            hosts.push_str("\n# Entries added by HostAliases.\n");
            for alias in aliases {
                let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
                hosts.push_str(&format!("{}\t{names}\n", alias.ip));
            }
        }
        // Written in place: the file itself is bind-mounted, a rename would not show.
        rewrite_in_place(&etc.join("hosts"), hosts.as_bytes())?;
        let ns = &self.namespace;
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "search {ns}.svc.cluster.local svc.cluster.local cluster.local\n\
                 nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"
            ),
        )?;
        Ok(())
    }

    /// Collects exited containers and decides what happens to them.
    fn reap(&mut self) {
        let policy = self.restart_policy().to_string();
        let key = self.key();
        for c in &mut self.containers {
            let Some(child) = c.child.as_mut() else { continue };
            let Ok(Some(status)) = child.try_wait() else { continue };
            let code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(9)
            });
            let started = c.started_at.map(|s| s.0).unwrap_or_else(Timestamp::now);
            let reason = if code == 0 { "Completed" } else { "Error" };
            tracing::info!(pod = %key, container = %c.spec.name, code, "container exited");
            crate::exec::ContainerEntry::remove(&self.dir, &c.spec.name);
            c.child = None;
            c.probes.clear();
            c.ended = Some(Terminated { code, reason: reason.into(), started, finished: Timestamp::now() });
            let restart = match c.role {
                Role::Sidecar => true,
                Role::Init => code != 0 && policy != "Never",
                Role::App => policy == "Always" || (policy == "OnFailure" && code != 0),
            };
            if c.role == Role::Init && code == 0 {
                c.completed = true;
            }
            if restart {
                // Ran fine for 10 minutes: the back-off starts over, as in the kubelet.
                if c.started_at.is_some_and(|s| s.1.elapsed() > Duration::from_secs(600)) {
                    c.backoff = BACKOFF_START;
                }
                c.next_start = Instant::now() + c.backoff;
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!("back-off {:?} restarting failed container={} pod={key}", c.backoff, c.spec.name),
                ));
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            } else {
                c.waiting = None;
            }
        }
    }

    /// Whether a stopped container will run again.
    fn will_restart(&self, c: &ContainerRun) -> bool {
        !c.running() && c.waiting.is_some()
    }

    async fn start_due(&mut self) {
        // Init containers strictly in order; each must finish (or, for a
        // sidecar, have started) before the next.
        let mut index = 0;
        while index < self.containers.len() {
            let c = &self.containers[index];
            match c.role {
                Role::Init if c.completed => {}
                Role::Init | Role::Sidecar => {
                    if !c.running() && self.will_restart(c) && Instant::now() >= c.next_start {
                        self.start(index).await;
                    }
                    let c = &self.containers[index];
                    if !(c.role == Role::Sidecar && c.started()) {
                        return;
                    }
                }
                Role::App => {
                    if !c.running() && self.will_restart(c) && Instant::now() >= c.next_start {
                        self.start(index).await;
                    }
                }
            }
            index += 1;
        }
    }

    /// The `localnode exec` command line that puts a process in this
    /// container's sandbox, and the container's environment.
    async fn sandbox_command(&self, c: &Container) -> Result<(Vec<String>, BTreeMap<String, String>)> {
        let links = self.services.borrow().clone();
        let host_ip = self.sh.net.gateway.to_string();
        let env = environment::build(&self.sh.client, &self.pod, c, &links, &host_ip).await?;
        let mut cmd = vec![
            self.sh.self_exe.display().to_string(),
            "exec".into(),
            "--netns".into(),
            self.netns_path().display().to_string(),
            "--hostname".into(),
            self.name.clone(),
            "--scratch".into(),
            self.dir.join("scratch").join(&c.name).display().to_string(),
        ];
        let etc = self.dir.join("etc");
        for (file, target) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
            cmd.extend(["--mount".into(), format!("{}:{target}", etc.join(file).display())]);
        }
        for m in c.volume_mounts.iter().flatten() {
            let mut source = self.volumes.path(&m.name);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            let ro = if m.read_only == Some(true) { ":ro" } else { "" };
            cmd.extend(["--mount".into(), format!("{}:{}{ro}", source.display(), m.mount_path)]);
        }
        let pod_sc = self.pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        if let Some(uid) = sc.run_as_user.or(pod_sc.run_as_user) {
            cmd.extend(["--uid".into(), uid.to_string()]);
        }
        if let Some(gid) = sc.run_as_group.or(pod_sc.run_as_group) {
            cmd.extend(["--gid".into(), gid.to_string()]);
        }
        let caps = if sc.privileged == Some(true) {
            "ALL".to_string()
        } else {
            let caps = sc.capabilities.clone().unwrap_or_default();
            let drop: Vec<String> = caps.drop.iter().flatten().map(|c| c.to_uppercase()).collect();
            let mut keep: Vec<String> = if drop.iter().any(|d| d == "ALL") {
                Vec::new()
            } else {
                DEFAULT_CAPS.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect()
            };
            keep.extend(caps.add.iter().flatten().map(|c| c.to_uppercase()));
            keep.join(",")
        };
        cmd.extend(["--caps".into(), caps]);
        if let Some(dir) = c.working_dir.as_deref().filter(|d| !d.is_empty()) {
            cmd.extend(["--workdir".into(), dir.to_string()]);
        }
        cmd.push("--".into());
        Ok((cmd, env))
    }

    async fn start(&mut self, index: usize) {
        match self.spawn(index).await {
            Ok(child) => {
                let now = (Timestamp::now(), Instant::now());
                let c = &mut self.containers[index];
                tracing::info!(pod = %format!("{}/{}", self.namespace, self.name), container = %c.spec.name, pid = child.id(), "container started");
                if c.started_at.is_some() {
                    c.restarts += 1;
                }
                c.last = c.ended.take().or(c.last.take());
                c.child = Some(child);
                c.started_at = Some(now);
                c.waiting = None;
                c.probes = [
                    (Kind::Startup, c.spec.startup_probe.clone()),
                    (Kind::Liveness, c.spec.liveness_probe.clone()),
                    (Kind::Readiness, c.spec.readiness_probe.clone()),
                ]
                .into_iter()
                .filter_map(|(kind, spec)| spec.map(|s| ProbeState::new(kind, s, now.1)))
                .collect();
            }
            Err(e) => {
                let c = &mut self.containers[index];
                tracing::warn!(container = %c.spec.name, error = %format!("{e:#}"), "container cannot start");
                crate::exec::ContainerEntry::remove(&self.dir, &c.spec.name);
                c.waiting = Some(("CreateContainerError".into(), format!("{e:#}")));
                c.next_start = Instant::now() + c.backoff;
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    async fn spawn(&self, index: usize) -> Result<tokio::process::Child> {
        let c = &self.containers[index].spec;
        let (mut argv, env) = self.sandbox_command(c).await?;
        // `kubectl exec` runs its commands the way this run was started.
        let entry = crate::exec::ContainerEntry { launcher: argv.clone(), env: env.clone() };
        entry.save(&self.dir, &c.name)?;
        let expand =
            |v: &Vec<String>| -> Vec<String> { v.iter().map(|a| environment::expand(a, &env)).collect() };
        let image = c.image.clone().unwrap_or_default();
        argv.extend(self.sh.images.argv(
            &image,
            &expand(&c.command.clone().unwrap_or_default()),
            &expand(&c.args.clone().unwrap_or_default()),
        )?);
        let logs = self.dir.join("logs").join(&c.name);
        std::fs::create_dir_all(&logs)?;
        let restarts =
            self.containers[index].restarts + i32::from(self.containers[index].started_at.is_some());
        let log = OpenOptions::new().create(true).append(true).open(logs.join(format!("{restarts}.log")))?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, so signals reach everything it starts.
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn().with_context(|| format!("starting {}", argv.join(" ")))
    }

    async fn run_probes(&mut self) {
        let Some(pod_ip) = self.pod_ip() else { return };
        let now = Instant::now();
        for index in 0..self.containers.len() {
            if !self.containers[index].running() {
                continue;
            }
            let due: Vec<usize> = self.containers[index]
                .probes
                .iter()
                .enumerate()
                .filter(|(_, p)| p.due(now))
                .filter(|(_, p)| p.kind == Kind::Startup || self.containers[index].started())
                .map(|(i, _)| i)
                .collect();
            for i in due {
                let spec = self.containers[index].probes[i].spec.clone();
                let target = match self.sandbox_command(&self.containers[index].spec).await {
                    Ok((prefix, env)) => probes::Target {
                        node_netns: crate::network::netns_path(&self.sh.net.node_netns),
                        pod_ip: pod_ip.clone(),
                        container: self.containers[index].spec.clone(),
                        exec_prefix: prefix,
                        exec_env: env.into_iter().collect(),
                    },
                    Err(_) => continue,
                };
                let result = probes::attempt(&spec, &target).await;
                let c = &mut self.containers[index];
                let probe = &mut c.probes[i];
                let changed =
                    probe.record(result.is_ok(), result.clone().err().unwrap_or_default(), Instant::now());
                if changed {
                    tracing::info!(container = %c.spec.name, probe = ?probe.kind, verdict = ?probe.result, message = %probe.last_message, "probe");
                }
                if probe.result == Some(false) && matches!(probe.kind, Kind::Liveness | Kind::Startup) {
                    tracing::info!(container = %c.spec.name, probe = ?probe.kind, "probe failed: restarting the container");
                    let grace = self.grace();
                    self.stop(index, grace).await;
                    self.reap();
                    break;
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// SIGTERM to the container's process group, SIGKILL after `grace`.
    async fn stop(&mut self, index: usize, grace: Duration) {
        let Some(pid) = self.containers[index].pid() else { return };
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(child) = self.containers[index].child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                // Leave the exit for reap(); take the group's stragglers down.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = killpg(group, Signal::SIGKILL);
        if let Some(child) = self.containers[index].child.as_mut() {
            let _ = child.wait().await;
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        for index in (0..self.containers.len()).rev() {
            self.stop(index, grace).await;
        }
        self.reap();
        for c in &mut self.containers {
            c.waiting = None;
        }
    }

    /// Graceful deletion: app containers first, then sidecars in reverse
    /// order, all within the grace period; SIGKILL for what remains.
    async fn terminate(&mut self) {
        let grace = self.grace();
        let deadline = Instant::now() + grace;
        tracing::info!(pod = %self.key(), ?grace, "terminating");
        for c in self.containers.iter().filter(|c| c.role == Role::App) {
            if let Some(pid) = c.pid() {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let apps: Vec<usize> =
            (0..self.containers.len()).filter(|&i| self.containers[i].role == Role::App).collect();
        for i in apps {
            self.stop(i, deadline.saturating_duration_since(Instant::now())).await;
        }
        let sidecars: Vec<usize> =
            (0..self.containers.len()).rev().filter(|&i| self.containers[i].role != Role::App).collect();
        for i in sidecars {
            self.stop(i, deadline.saturating_duration_since(Instant::now())).await;
        }
        self.stop_all(Duration::ZERO).await;
    }

    async fn tear_down_network(&mut self) {
        if let Some(pod_net) = self.net.take() {
            let net = self.sh.net.clone();
            let _ = tokio::task::spawn_blocking(move || net.remove_pod(&pod_net)).await;
        }
    }

    async fn clean_up(&mut self) {
        self.tear_down_network().await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        tracing::info!(pod = %self.key(), "cleaned up");
    }

    /// The kubelet's last word: delete with no grace, only this very pod.
    async fn final_delete(&self) {
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&self.name, &params).await {
            tracing::debug!(pod = %self.key(), error = %e, "final delete");
        }
    }

    fn phase(&self) -> &'static str {
        let policy = self.restart_policy();
        let init_failed = self
            .containers
            .iter()
            .any(|c| c.role == Role::Init && !c.completed && c.ended.is_some() && !self.will_restart(c));
        if init_failed && policy == "Never" {
            return "Failed";
        }
        let init_done = self.containers.iter().all(|c| match c.role {
            Role::Init => c.completed,
            Role::Sidecar => c.started() || c.ended.is_some(),
            Role::App => true,
        });
        let apps: Vec<&ContainerRun> = self.containers.iter().filter(|c| c.role == Role::App).collect();
        if !init_done || apps.iter().all(|c| c.started_at.is_none()) {
            return "Pending";
        }
        if apps.iter().any(|c| c.running() || self.will_restart(c)) {
            return "Running";
        }
        if apps.iter().all(|c| c.ended.as_ref().is_some_and(|e| e.code == 0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    }

    fn container_status(&self, c: &ContainerRun) -> Value {
        let terminated = |t: &Terminated| {
            json!({"terminated": {
                "exitCode": t.code, "reason": t.reason,
                "startedAt": t.started.to_string(), "finishedAt": t.finished.to_string(),
            }})
        };
        let state = if let Some((started, _)) = c.started_at.filter(|_| c.running()) {
            json!({"running": {"startedAt": started.to_string()}})
        } else if let Some((reason, message)) = &c.waiting {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            if let Some(err) = &self.sandbox_error {
                w["message"] = json!(err);
            }
            json!({"waiting": w})
        } else if let Some(t) = &c.ended {
            terminated(t)
        } else {
            json!({"waiting": {"reason": "PodInitializing"}})
        };
        // The run before the current state: in a restart back-off that is
        // the run that just ended.
        let last_state = if !c.running() && c.waiting.is_some() {
            c.ended.as_ref().or(c.last.as_ref())
        } else {
            c.last.as_ref()
        };
        let image = c.spec.image.clone().unwrap_or_default();
        json!({
            "name": c.spec.name,
            "image": image,
            "imageID": format!("local://{}", crate::images::normalize(&image)),
            "containerID": format!("local://{}/{}/{}", self.uid, c.spec.name, c.restarts),
            "ready": c.ready(),
            "started": c.started(),
            "restartCount": c.restarts,
            "state": state,
            "lastState": last_state.map(terminated).unwrap_or(json!({})),
        })
    }

    fn condition(
        &mut self,
        kind: &'static str,
        ok: bool,
        reason: Option<String>,
        message: Option<String>,
    ) -> Value {
        let now = Timestamp::now();
        let entry = self.transitions.entry(kind).or_insert((ok, now));
        if entry.0 != ok {
            *entry = (ok, now);
        }
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1.to_string(),
        });
        if !ok {
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
        }
        c
    }

    async fn report(&mut self) -> Result<()> {
        let phase = self.phase();
        let sandbox = self.net.is_some() || self.host_network();
        let initialized = self.containers.iter().all(|c| match c.role {
            Role::Init => c.completed,
            Role::Sidecar => c.started(),
            Role::App => true,
        });
        let unready: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.role != Role::Init && !c.ready())
            .map(|c| c.spec.name.clone())
            .collect();
        let done = matches!(phase, "Succeeded" | "Failed");
        let ready = unready.is_empty() && !done;
        let (reason, message) = if done {
            (Some("PodCompleted".to_string()), None)
        } else {
            (
                Some("ContainersNotReady".into()),
                Some(format!("containers with unready status: [{}]", unready.join(" "))),
            )
        };
        let conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox || done, None, None),
            self.condition(
                "Initialized",
                initialized || done,
                Some("ContainersNotInitialized".into()),
                Some("containers with incomplete status".into()),
            ),
            self.condition("ContainersReady", ready, reason.clone(), message.clone()),
            self.condition("Ready", ready, reason, message),
        ];
        let init: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.role != Role::App)
            .map(|c| self.container_status(c))
            .collect();
        let apps: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.role == Role::App)
            .map(|c| self.container_status(c))
            .collect();
        let host_ip = self.sh.net.gateway.to_string();
        let mut status = json!({
            "phase": phase,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time.to_string(),
            "conditions": conditions,
            "initContainerStatuses": init,
            "containerStatuses": apps,
        });
        if let Some(ip) = self.pod_ip() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        // Unchanged here, and the API server holds it: nothing to write.
        // Compared with the server's too, as the kubelet does: the node
        // lifecycle controller marks every pod of a node it thought was
        // down not Ready, and only the node can say they are again (else
        // they stay out of their Services' endpoints for good).
        let server_ready = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        if self.last_status.as_ref() == Some(&status) && server_ready == Some(ready) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), &self.namespace);
        let patch = json!({"status": status});
        self.pod = api.patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
        self.last_status = Some(status);
        Ok(())
    }

    /// `<pod dir>/sandbox.json`: how `localnode enter` joins this pod.
    fn write_sandbox_file(&self) -> Result<()> {
        let Some(first) = self.containers.iter().find(|c| c.role == Role::App) else { return Ok(()) };
        let etc = self.dir.join("etc");
        let mut mounts = vec![
            format!("{}:/etc/hosts", etc.join("hosts").display()),
            format!("{}:/etc/resolv.conf", etc.join("resolv.conf").display()),
        ];
        for m in first.spec.volume_mounts.iter().flatten() {
            mounts.push(format!("{}:{}", self.volumes.path(&m.name).display(), m.mount_path));
        }
        let file = json!({
            "netns": self.netns_path(),
            "hostname": self.name,
            "scratch": self.dir.join("scratch").join("enter"),
            "mounts": mounts,
        });
        // Atomically, and only when it changes: `enter` may be reading it.
        let path = self.dir.join("sandbox.json");
        let text = file.to_string();
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let tmp = self.dir.join("sandbox.json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// The folder of a pod's state, for `localnode enter`.
/// `name` may be the start of a pod name (`productpage` finds `productpage-v1-…`).
pub fn find_pod_dir(state_dir: &std::path::Path, namespace: &str, name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state_dir.join("pods"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("sandbox.json").exists())
        .collect();
    dirs.sort();
    let exact = format!("{namespace}_{name}_");
    let prefix = format!("{namespace}_{name}");
    let file_name = |p: &PathBuf| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    dirs.iter()
        .find(|p| file_name(p).starts_with(&exact))
        .or_else(|| dirs.iter().find(|p| file_name(p).starts_with(&prefix)))
        .cloned()
}

/// Replaces a bind-mounted file's content without the empty moment of
/// truncate-then-write, in which a program resolving a name from
/// /etc/hosts would find none: the new content goes over the old from the
/// start, then the file is cut to its length.
fn rewrite_in_place(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    file.write_all(content)?;
    file.set_len(content.len() as u64)
}
