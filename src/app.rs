//! `mesh controller`: the one place that knows every part, wires them and
//! spawns them. Everything else is testable alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ca;
use crate::index::{self, Index, IndexMetrics, SharedIndex, kinds::Watched};
use crate::monitoring;
use crate::readiness::{Readiness, ReadyGuard};

/// Settings of the controller, from flags or their environment variables.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Kubeconfig to use; without it, KUBECONFIG, ~/.kube/config or the
    /// in-cluster ServiceAccount, in that order.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of /healthz, /readyz, /metrics and /debug/configz.
    #[arg(long, env = "MESH_MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,

    /// The mesh's own namespace: where the CA's Secret lives (`cacerts` to
    /// plug in your own CA, else the generated `mesh-ca`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    pub namespace: String,

    /// The SPIFFE trust domain of workload identities.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found: pass --kubeconfig, set KUBECONFIG, or run in a pod",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_ref()).await?;
    let shutdown = CancellationToken::new();
    let readiness = Readiness::new();
    let mut registry = Registry::with_prefix("mesh");

    let index_metrics = IndexMetrics::default();
    index_metrics.register(&mut registry);
    let index = SharedIndex::new(Index::new(index_metrics));

    let mut watches = JoinSet::new();
    spawn_watch::<index::Namespaces>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::Services>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::EndpointSlices>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::Pods>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::VirtualServices>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::DestinationRules>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::ServiceRoles>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::ServiceRoleBindings>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::ClusterRbacConfigs>(&mut watches, &client, &index, &readiness);
    spawn_watch::<index::RbacConfigs>(&mut watches, &client, &index, &readiness);

    let ca_ready = readiness.register("certificate authority");
    let authority = tokio::spawn(start_ca(client.clone(), args.clone(), ca_ready, shutdown.clone()));

    let listener = monitoring::bind(args.monitoring_addr).await?;
    tracing::info!(addr = %args.monitoring_addr, "serving /healthz, /readyz, /metrics, /debug/configz");
    let server =
        tokio::spawn(monitoring::serve(listener, registry, readiness, index.clone(), shutdown.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    watches.shutdown().await;
    let _ = authority.await;
    match server.await {
        Ok(result) => result.context("monitoring server")?,
        Err(e) => anyhow::bail!("monitoring server task failed: {e}"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads (or makes) the CA, retrying until it can, then publishes its root
/// to every namespace until shutdown.
async fn start_ca(client: Client, args: ControllerArgs, ready: ReadyGuard, shutdown: CancellationToken) {
    let authority = loop {
        let now = time::OffsetDateTime::now_utc();
        match ca::store::load_or_create(&client, &args.namespace, &args.trust_domain, now).await {
            Ok(authority) => break authority,
            Err(e) => tracing::error!(error = %e, "certificate authority not ready; retrying in 5s"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {},
            _ = shutdown.cancelled() => return,
        }
    };
    ready.ready();
    ca::store::publish_root(client, authority.trust_bundle_pem().to_string(), shutdown).await;
}

fn spawn_watch<K>(set: &mut JoinSet<()>, client: &Client, index: &SharedIndex, readiness: &Readiness)
where
    K: Watched,
    K::Object: DeserializeOwned,
{
    let guard = readiness.register(format!("{} cache", K::NAME));
    set.spawn(index::watch::run::<K>(client.clone(), index.clone(), guard));
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the controller");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
