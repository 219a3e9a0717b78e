//! The node: registers itself (Node object, Lease heartbeats), builds the
//! node network, forwards the API server into it, supervises kube-proxy
//! there, keeps the Service table that pods' /etc/hosts and environment
//! come from, and runs one worker per pod bound to it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::environment::ServiceLink;
use crate::images::Images;
use crate::kubelet::KubeletArgs;
use crate::network::{NetworkArgs, NodeNetwork, in_netns, netns_path};
use crate::pod::{Shared, Worker};

/// What the node reports it has; pods' resource limits default to it.
pub const CAPACITY_CPU: &str = "8";
pub const CAPACITY_MEMORY: &str = "16Gi";
const KUBERNETES_VERSION: &str = "v1.35.4";

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The Node's name.
    #[arg(long, default_value = "local-node")]
    pub name: String,
    /// Kubeconfig with the node's credentials (system:node:<name>).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Where pods' volumes, logs and sandboxes live.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The image -> program mapping (e2e/images.yaml).
    #[arg(long)]
    pub images: PathBuf,
    /// A program the mapping may name: NAME=PATH (e.g. envoy=/path/to/envoy).
    #[arg(long = "program", value_parser = parse_program)]
    pub programs: Vec<(String, String)>,
    /// The API server on the host, which the node forwards pods to.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub apiserver: String,
    /// kube-proxy binary, run inside the node's network namespace.
    #[arg(long)]
    pub kube_proxy: PathBuf,
    /// kube-proxy's kubeconfig (server: the node's forwarded API address).
    #[arg(long)]
    pub kube_proxy_kubeconfig: PathBuf,
    /// Replace projected ServiceAccount tokens after this many seconds even
    /// when 80% of their life has not passed (the kubelet's cap is 24 hours;
    /// tests shorten it to see refreshes happen).
    #[arg(long)]
    pub token_max_age: Option<u64>,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub kubelet: KubeletArgs,
}

fn parse_program(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: want NAME=PATH"))
}

pub async fn run(args: RunArgs) -> Result<()> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let programs: BTreeMap<String, String> = args.programs.iter().cloned().collect();
    let images = Images::load(&args.images, &programs)?;
    std::fs::create_dir_all(&args.state_dir)?;

    let network = args.network.clone();
    let net = Arc::new(tokio::task::spawn_blocking(move || NodeNetwork::setup(network)).await??);
    tracing::info!(netns = %net.node_netns, gateway = %net.gateway, "node network ready");

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(tls) = crate::kubelet::tls_config(&args.kubelet)? {
        let addr = std::net::SocketAddr::from((net.gateway, args.kubelet.kubelet_port));
        let listener = crate::kubelet::listen(&netns_path(&net.node_netns), addr)?;
        tracing::info!(%addr, "kubelet port (logs, exec, port-forward) ready");
        tasks.spawn(crate::kubelet::serve(
            listener,
            tls,
            args.kubelet.kubelet_client_name.clone(),
            args.state_dir.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(forward_apiserver(net.clone(), args.apiserver.clone(), shutdown.clone()));
    tasks.spawn(supervise_kube_proxy(args.clone(), net.clone(), shutdown.clone()));
    register(&client, &args, &net).await?;
    tasks.spawn(heartbeat(client.clone(), args.clone(), net.clone(), shutdown.clone()));

    let (services_tx, services_rx) = watch::channel(Arc::new(Vec::new()));
    tasks.spawn(watch_services(client.clone(), services_tx, shutdown.clone()));

    let shared = Arc::new(Shared {
        client: client.clone(),
        node_name: args.name.clone(),
        state_dir: args.state_dir.clone(),
        net: net.clone(),
        images,
        self_exe: std::env::current_exe()?,
        services: services_rx,
        token_max_age: args.token_max_age,
    });
    let pods = run_pods(shared, shutdown.clone());
    tokio::pin!(pods);
    tokio::select! {
        result = &mut pods => result?,
        _ = shutdown_signal() => {
            tracing::info!("stopping: pods, kube-proxy, network");
            shutdown.cancel();
            pods.await?;
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let prefix = net.args.prefix.clone();
    tokio::task::spawn_blocking(move || crate::network::teardown(&prefix)).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return futures::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Pods reach the API server at the bridge address and the API server's
/// port (the `kubernetes` Service's endpoint); the node relays those
/// connections to the host.
async fn forward_apiserver(net: Arc<NodeNetwork>, upstream: String, shutdown: CancellationToken) {
    // The `kubernetes` Service's endpoint carries the API server's own port.
    let port = upstream.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(6443);
    let addr = std::net::SocketAddr::from((net.gateway, port));
    let listener = match in_netns(&netns_path(&net.node_netns), move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    }) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::error!(%addr, error = %e, "cannot listen for the API server inside the node");
            return;
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot enter the node's network namespace");
            return;
        }
    };
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let Ok((mut inbound, _)) = accepted else { continue };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The real kube-proxy, in iptables mode, inside the node namespace;
/// restarted if it exits.
async fn supervise_kube_proxy(args: RunArgs, net: Arc<NodeNetwork>, shutdown: CancellationToken) {
    let log_path = args.state_dir.join("kube-proxy.log");
    loop {
        let Ok(log) = std::fs::OpenOptions::new().create(true).append(true).open(&log_path) else { return };
        let Ok(log2) = log.try_clone() else { return };
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &net.node_netns])
            .arg(&args.kube_proxy)
            .arg("--kubeconfig")
            .arg(&args.kube_proxy_kubeconfig)
            .args(["--hostname-override", &args.name, "--proxy-mode", "iptables"])
            .args(["--cluster-cidr", &net.args.cluster_cidr])
            // Global conntrack sysctls cannot be set from inside a namespace.
            .args(["--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0"])
            .args(["--conntrack-tcp-timeout-close-wait", "0"])
            .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"])
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start kube-proxy");
                return;
            }
        };
        tokio::select! {
            status = child.wait() => tracing::warn!(?status, "kube-proxy exited; restarting in 2s"),
            _ = shutdown.cancelled() => {
                let _ = child.kill().await;
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
            _ = shutdown.cancelled() => return,
        }
    }
}

fn node_status(args: &RunArgs, net: &NodeNetwork) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources =
        json!({"cpu": CAPACITY_CPU, "memory": CAPACITY_MEMORY, "pods": "110", "ephemeral-storage": "100Gi"});
    json!({"status": {
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "local node has sufficient memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "local node has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "local node has sufficient PID"),
            condition("Ready", "True", "KubeletReady", "local node is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": net.gateway.to_string()}, {"type": "Hostname", "address": args.name}],
        "capacity": resources, "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": args.kubelet.kubelet_port}},
        "nodeInfo": {
            "machineID": "local", "systemUUID": "local", "bootID": "local",
            "kernelVersion": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "osImage": "local", "containerRuntimeVersion": "local://0.1.0",
            "kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": KUBERNETES_VERSION,
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }})
}

/// Creates the Node (or takes over the one left by an earlier run) and reports it Ready.
async fn register(client: &Client, args: &RunArgs, net: &NodeNetwork) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&args.name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": args.name, "labels": {
                "kubernetes.io/hostname": args.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            }},
            "spec": {"podCIDR": net.args.pod_cidr, "podCIDRs": [net.args.pod_cidr]},
        }))?;
        nodes.create(&PostParams::default(), &node).await.context("registering the Node")?;
    }
    nodes
        .patch_status(&args.name, &PatchParams::default(), &Patch::Merge(node_status(args, net)))
        .await
        .context("reporting the Node ready")?;
    tracing::info!(node = %args.name, "registered");
    Ok(())
}

/// Lease renewals every 10 s (the node controller's liveness signal) and a
/// status report every minute.
async fn heartbeat(client: Client, args: RunArgs, net: Arc<NodeNetwork>, shutdown: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = 0u32;
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": args.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": args.name, "leaseDurationSeconds": 40,
                     "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
        });
        let params = PatchParams::apply("localnode").force();
        if let Err(e) = leases.patch(&args.name, &params, &Patch::Apply(&lease)).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        if tick % 6 == 5 {
            let _ = nodes
                .patch_status(&args.name, &PatchParams::default(), &Patch::Merge(node_status(&args, &net)))
                .await;
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {},
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn watch_services(
    client: Client,
    tx: watch::Sender<Arc<Vec<ServiceLink>>>,
    shutdown: CancellationToken,
) {
    let mut table: BTreeMap<(String, String), ServiceLink> = BTreeMap::new();
    let mut listing = BTreeMap::new();
    let stream = watcher::watcher(Api::<Service>::all(client), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        let link = |svc: &Service| {
            let spec = svc.spec.clone().unwrap_or_default();
            ServiceLink {
                namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                name: svc.metadata.name.clone().unwrap_or_default(),
                cluster_ip: spec.cluster_ip.unwrap_or_default(),
                ports: spec
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| (p.name.unwrap_or_default(), p.port, p.protocol.unwrap_or_else(|| "TCP".into())))
                    .collect(),
            }
        };
        match event {
            Ok(Event::Apply(svc)) => {
                let l = link(&svc);
                table.insert((l.namespace.clone(), l.name.clone()), l);
            }
            Ok(Event::Delete(svc)) => {
                let l = link(&svc);
                table.remove(&(l.namespace, l.name));
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(svc)) => {
                let l = link(&svc);
                listing.insert((l.namespace.clone(), l.name.clone()), l);
            }
            Ok(Event::InitDone) => table = std::mem::take(&mut listing),
            Err(e) => {
                tracing::warn!(error = %e, "watching services");
                continue;
            }
        }
        let _ = tx.send(Arc::new(table.values().cloned().collect()));
    }
}

/// Watches the pods bound to this node and gives each its worker.
async fn run_pods(shared: Arc<Shared>, shutdown: CancellationToken) -> Result<()> {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut workers: HashMap<String, mpsc::Sender<Option<Pod>>> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut listed = Vec::new();
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => break,
        };
        let Some(event) = event else { break };
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                listed.push(pod.metadata.uid.clone().unwrap_or_default());
                dispatch(&shared, &mut workers, &mut running, pod).await;
            }
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = workers.remove(&pod.metadata.uid.clone().unwrap_or_default()) {
                    let _ = tx.send(None).await;
                }
            }
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitDone) => {
                // Pods that went away while the watch was down.
                let gone: Vec<String> = workers.keys().filter(|uid| !listed.contains(uid)).cloned().collect();
                for uid in gone {
                    if let Some(tx) = workers.remove(&uid) {
                        let _ = tx.send(None).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching pods"),
        }
        workers.retain(|_, tx| !tx.is_closed());
    }
    // Node shutdown: every pod stops now.
    for (_, tx) in workers.drain() {
        let _ = tx.send(None).await;
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

async fn dispatch(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, mpsc::Sender<Option<Pod>>>,
    running: &mut tokio::task::JoinSet<()>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(tx) = workers.get(&uid) {
        let _ = tx.send(Some(pod)).await;
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_none() && matches!(phase.as_str(), "Succeeded" | "Failed") {
        return; // finished before this node started; nothing to run
    }
    // A pod being deleted gets a worker too: it finishes the deletion.
    let (tx, rx) = mpsc::channel(16);
    workers.insert(uid, tx);
    running.spawn(Worker::new(shared.clone(), pod).run(rx));
}
