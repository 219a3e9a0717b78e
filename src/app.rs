//! `mesh controller`: the one place that knows every part, wires them and
//! hands their long-running tasks to one owner ([`crate::supervisor`]), so
//! the controller stops, to be restarted, when any of them stops.
//! Everything else is testable alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_lease_manager::{LeaseManager, LeaseManagerError};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ca;
use crate::ca::serving::ServingCert;
use crate::index::{self, Index, IndexMetrics, SharedIndex, kinds::Watched};
use crate::model::host::CLUSTER_DOMAIN;
use crate::monitoring;
use crate::readiness::{Readiness, ReadyGuard};
use crate::supervisor::Tasks;
use crate::webhook;
use crate::xds::Generator;

/// Settings of the controller, from flags or their environment variables.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Kubeconfig to use; without it, KUBECONFIG, ~/.kube/config or the
    /// in-cluster ServiceAccount, in that order.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of /healthz, /readyz, /metrics (open) and the /debug views
    /// (for callers the Kubernetes API authorizes).
    #[arg(long, env = "MESH_MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,

    /// The ClusterRole that grants the /debug views (the chart's): refusals
    /// name it as what to bind.
    #[arg(long, env = "MESH_DEBUG_CLUSTER_ROLE", default_value = monitoring::access::DEBUG_CLUSTER_ROLE)]
    pub debug_cluster_role: String,

    /// The mesh's own namespace: where the CA's Secret lives (`cacerts` to
    /// plug in your own CA, else the generated `mesh-ca`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    pub namespace: String,

    /// The SPIFFE trust domain of workload identities.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Istio's root namespace (MeshConfig `rootNamespace`): configuration
    /// here without a workload selector applies to the whole mesh, e.g. a
    /// PeerAuthentication.
    #[arg(long, env = "MESH_ROOT_NAMESPACE", default_value = crate::model::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// Istio's MeshConfig `outboundTrafficPolicy.mode`: ALLOW_ANY (traffic
    /// to destinations outside the registry passes through) or
    /// REGISTRY_ONLY (it goes to BlackHoleCluster; only Services and
    /// ServiceEntries are reached).
    #[arg(
        long,
        env = "MESH_OUTBOUND_TRAFFIC_POLICY",
        default_value = "ALLOW_ANY",
        value_parser = crate::model::OutboundTrafficPolicy::parse
    )]
    pub outbound_traffic_policy: crate::model::OutboundTrafficPolicy,

    /// Whether every proxy counts Istio's standard metrics
    /// (`istio_requests_total` and its histograms; docs/observe.md).
    #[arg(long, env = "MESH_PROXY_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_metrics: bool,

    /// Istio's MeshConfig `accessLogFile`: where every proxy writes a line
    /// per request (`/dev/stdout`: its container's log); empty: no log.
    #[arg(long, env = "MESH_ACCESS_LOG_FILE", default_value = "")]
    pub access_log_file: String,

    /// Istio's MeshConfig `accessLogEncoding`: TEXT or JSON.
    #[arg(
        long,
        env = "MESH_ACCESS_LOG_ENCODING",
        default_value = "TEXT",
        value_parser = crate::model::telemetry::AccessLogEncoding::parse
    )]
    pub access_log_encoding: crate::model::telemetry::AccessLogEncoding,

    /// Istio's MeshConfig `accessLogFormat`: Envoy's format string (TEXT)
    /// or a JSON object of them (JSON); empty: Istio's default format.
    #[arg(long, env = "MESH_ACCESS_LOG_FORMAT", default_value = "")]
    pub access_log_format: String,

    /// Istio's `defaultConfig.tracing.zipkin.address`: the Zipkin
    /// collector (host:port) every proxy sends its spans to; empty: no tracing.
    #[arg(long, env = "MESH_ZIPKIN_ADDRESS", default_value = "")]
    pub zipkin_address: String,

    /// Istio's `defaultConfig.tracing.sampling`: the percentage of requests
    /// traced (0 to 100) unless a pod's `proxy.istio.io/config` says otherwise.
    #[arg(long, env = "MESH_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,

    /// Address of the admission webhooks (HTTPS).
    #[arg(long, env = "MESH_WEBHOOK_ADDR", default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,

    /// Address of the xDS server (ADS, gRPC over TLS) the sidecars connect to.
    #[arg(long, env = "MESH_XDS_ADDR", default_value = "0.0.0.0:15012")]
    pub xds_addr: SocketAddr,

    /// The Service in front of the controller: its DNS names go in the
    /// webhook's serving certificate.
    #[arg(long, env = "MESH_SERVICE_NAME", default_value = "mesh")]
    pub service_name: String,

    /// The ValidatingWebhookConfiguration whose caBundle the controller keeps current.
    #[arg(long, env = "MESH_WEBHOOK_CONFIG", default_value = "mesh-validator")]
    pub webhook_config: String,

    /// The MutatingWebhookConfiguration (the sidecar injector) whose caBundle the controller keeps current.
    #[arg(long, env = "MESH_INJECTOR_CONFIG", default_value = "mesh-injector")]
    pub injector_config: String,

    /// How long the index must be still before configuration is pushed, in
    /// milliseconds (bursts of changes make one push); under constant
    /// change, a push still happens at least every max(100 ms, 10 x this):
    /// a second by default.
    #[arg(long, env = "MESH_DEBOUNCE_MS", default_value_t = crate::xds::push::DEFAULT_QUIET_MS)]
    pub debounce_ms: u64,

    /// Changes of endpoints alone (EndpointSlices, pods) are pushed this
    /// many milliseconds after the first of them, whether more come or
    /// not (a rollout never goes quiet).
    #[arg(long, env = "MESH_ENDPOINT_DEBOUNCE_MS", default_value_t = crate::xds::push::DEFAULT_ENDPOINTS_MS)]
    pub endpoint_debounce_ms: u64,

    /// After SIGTERM, how long the controller goes on serving before it ends
    /// its streams, in seconds. Kubernetes takes a terminating pod out of
    /// its Service at the same time, but every node's kube-proxy needs a
    /// moment to see that; a proxy that reconnected before then could be
    /// sent back here, fail, and wait out gRPC's growing back-off.
    #[arg(long, env = "MESH_SHUTDOWN_DELAY_SECONDS", default_value_t = 3)]
    pub shutdown_delay_seconds: u64,

    /// Lifetime of the serving certificate, in seconds; it is renewed at half.
    #[arg(long, env = "MESH_SERVING_CERT_SECONDS", default_value_t = 86400)]
    pub serving_cert_seconds: u64,

    /// Lifetime of workload certificates (Go duration: `24h`, `90s`), as
    /// Istio's DEFAULT_WORKLOAD_CERT_TTL; each is renewed at half its life.
    #[arg(long, env = "MESH_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = workload_ttl)]
    pub workload_cert_ttl: Duration,

    #[command(flatten)]
    pub inject: crate::inject::InjectArgs,
}

fn workload_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::model::duration::parse(text).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(10) {
        return Err(format!("{text} is too short for a workload certificate: use at least 10s"));
    }
    Ok(ttl)
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

/// Runs the controller until SIGTERM or Ctrl-C (then `Ok`), or until one
/// of its long-running tasks stops (then the error naming it; see
/// [`crate::supervisor`]).
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let delay = Duration::from_secs(args.shutdown_delay_seconds);
    let stop = async move {
        signal.await;
        tracing::info!(?delay, "asked to stop: serving on while the pod leaves its Service, then stopping");
        tokio::time::sleep(delay).await;
    };
    let client = client(args.kubeconfig.as_ref()).await?;
    let shutdown = CancellationToken::new();
    let readiness = Readiness::new();
    let mut tasks = Tasks::new(readiness.clone(), shutdown.clone());
    let mut registry = Registry::with_prefix("mesh");

    let index_metrics = IndexMetrics::default();
    index_metrics.register(&mut registry);
    let xds_metrics = crate::xds::XdsMetrics::default();
    xds_metrics.register(&mut registry);
    let webhook_metrics = webhook::metrics::WebhookMetrics::default();
    webhook_metrics.register(&mut registry);
    let mesh_config = crate::model::MeshConfig {
        root_namespace: args.root_namespace.clone(),
        outbound_traffic_policy: args.outbound_traffic_policy,
        telemetry: crate::model::telemetry::Settings::new(
            args.proxy_metrics,
            &args.access_log_file,
            args.access_log_encoding,
            &args.access_log_format,
            crate::model::telemetry::Tracing::new(&args.zipkin_address, args.trace_sampling)
                .map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?,
    };
    let index = SharedIndex::new(Index::new(index_metrics).with_mesh_config(mesh_config));

    let watches = Watches { client: &client, index: &index, readiness: &readiness, shutdown: &shutdown };
    watches.spawn::<index::Namespaces>(&mut tasks);
    watches.spawn::<index::Services>(&mut tasks);
    watches.spawn::<index::EndpointSlices>(&mut tasks);
    watches.spawn::<index::Pods>(&mut tasks);
    watches.spawn::<index::VirtualServices>(&mut tasks);
    watches.spawn::<index::DestinationRules>(&mut tasks);
    watches.spawn::<index::Gateways>(&mut tasks);
    watches.spawn::<index::Secrets>(&mut tasks);
    watches.spawn::<index::ServiceEntries>(&mut tasks);
    watches.spawn::<index::Sidecars>(&mut tasks);
    watches.spawn::<index::ServiceRoles>(&mut tasks);
    watches.spawn::<index::ServiceRoleBindings>(&mut tasks);
    watches.spawn::<index::ClusterRbacConfigs>(&mut tasks);
    watches.spawn::<index::RbacConfigs>(&mut tasks);
    watches.spawn::<index::PeerAuthentications>(&mut tasks);
    watches.spawn::<index::RequestAuthentications>(&mut tasks);
    watches.spawn::<index::Policies>(&mut tasks);
    watches.spawn::<index::MeshPolicies>(&mut tasks);

    // One replica writes what all share (status, Events, the root in every
    // namespace, the webhooks' caBundle); every replica serves.
    let leader = match elect(client.clone(), &args).await {
        Some((leader, election)) => {
            tasks.adopt("leader election", election);
            Some(leader)
        }
        None => None,
    };

    let serving = Arc::new(ServingCert::default());
    let workload_ca =
        Arc::new(crate::xds::WorkloadCa::new(args.trust_domain.clone(), args.workload_cert_ttl));
    let ca_ready = readiness.register("certificate authority");
    tasks.spawn(
        "certificate authority",
        start_ca(
            client.clone(),
            args.clone(),
            serving.clone(),
            workload_ca.clone(),
            ca_ready,
            leader.clone(),
            shutdown.clone(),
        ),
    );

    let webhook_listener = tokio::net::TcpListener::bind(args.webhook_addr).await.with_context(|| {
        format!("listening on {} for the webhook (set --webhook-addr)", args.webhook_addr)
    })?;
    let synced = {
        let readiness = readiness.clone();
        Arc::new(move || readiness.is_ready()) as Arc<dyn Fn() -> bool + Send + Sync>
    };
    tasks.spawn(
        "webhook server",
        webhook::server::serve(
            webhook_listener,
            serving.clone(),
            index.clone(),
            synced,
            crate::inject::Injector::new(args.inject.clone(), args.namespace.clone()),
            webhook_metrics,
            shutdown.clone(),
        ),
    );

    let xds_listener = tokio::net::TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("listening on {} for xDS (set --xds-addr)", args.xds_addr))?;
    // Token reviews are cached briefly, so a reconnecting fleet does not flood the API server.
    let authenticator: Arc<dyn crate::xds::Authenticator> =
        Arc::new(crate::xds::TokenCache::new(Arc::new(crate::xds::KubeAuthenticator::new(client.clone()))));
    let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let settings = crate::xds::AdsSettings {
        debounce: crate::xds::Debounce::from_millis(args.debounce_ms)
            .with_endpoints_millis(args.endpoint_debounce_ms),
        instance: instance.clone(),
        workload_ca: Some(workload_ca),
        readiness: Some(readiness.clone()),
    };
    // JWT issuers' key sets, fetched here and sent inline, so sidecars need no route to issuers.
    let jwks_metrics = crate::xds::jwks::JwksMetrics::default();
    jwks_metrics.register(&mut registry);
    let jwks = Arc::new(crate::xds::jwks::Jwks::new(jwks_metrics));
    let fetch =
        crate::xds::jwks::HttpFetch::new().map_err(|e| anyhow::anyhow!("the JWT key set client: {e}"))?;
    tasks.spawn(
        "JWT key sets",
        crate::xds::jwks::run(
            jwks.clone(),
            index.clone(),
            Arc::new(fetch),
            crate::xds::jwks::Schedule::default(),
            shutdown.clone(),
        ),
    );
    // Services, endpoints, VirtualServices and DestinationRules, translated per scope and proxy.
    let generator: Arc<dyn Generator> =
        Arc::new(crate::xds::MeshGenerator::new(&args.trust_domain).with_jwks(jwks));
    #[cfg(feature = "e2e")]
    let generator = faults::inject(generator);
    let ads = crate::xds::Ads::with_settings(
        authenticator,
        index.clone(),
        generator,
        xds_metrics,
        settings,
        shutdown.clone(),
    );
    let proxies = ads.connections();
    tasks.spawn("xDS push loop", ads.push_loop());
    tasks.spawn("xDS server", crate::xds::serve(xds_listener, serving, ads, shutdown.clone()));
    tracing::info!(addr = %args.xds_addr, "serving ADS to the sidecars");

    let listener = monitoring::bind(args.monitoring_addr).await?;
    tracing::info!(
        addr = %args.monitoring_addr,
        "serving /healthz, /readyz, /metrics, and /debug/configz, /debug/syncz, /debug/config_dump to authorized callers"
    );
    let reviewer = Arc::new(monitoring::review::KubeReviewer::new(client.clone()));
    let access = Arc::new(monitoring::access::DebugAccess::new(reviewer, args.debug_cluster_role.clone()));
    tasks.spawn(
        "monitoring server",
        monitoring::serve(listener, registry, readiness, index.clone(), proxies, access, shutdown.clone()),
    );

    if let Some(leader) = leader {
        tasks.spawn(
            "status writer",
            crate::status::run(client.clone(), index.clone(), leader, instance, shutdown.clone()),
        );
    }

    tasks.run_until(stop).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Lease-based leader election among the replicas (Lease `mesh-controller`
/// in the mesh namespace). Only the leader writes to the cluster (status,
/// Events, the root ConfigMaps, the caBundles, replaced gateway pods);
/// every replica serves. The receiver says whether this replica leads now; the task
/// renews the Lease, and releases it once every receiver is dropped (the
/// status writer and the CA's writes stopped), so another replica takes
/// over at once.
async fn elect(
    client: Client,
    args: &ControllerArgs,
) -> Option<(tokio::sync::watch::Receiver<bool>, JoinHandle<Result<LeaseManager, LeaseManagerError>>)> {
    let identity =
        format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "mesh".into()), std::process::id());
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, "mesh-controller")
        .with_namespace(&args.namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await;
    match manager {
        Ok(manager) => Some(manager.watch().await),
        Err(e) => {
            // Without a Lease nobody writes status; serving goes on, and this
            // replica keeps the CA's root and caBundles as if it led.
            tracing::error!(error = %e, "leader election unavailable: status will not be written");
            None
        }
    }
}

/// Loads (or makes) the CA, retrying until it can; issues the webhook's
/// serving certificate and renews it at half its life; publishes the root
/// to every namespace and into the webhook configuration, until shutdown;
/// hands the CA to the xDS server for workload certificates. The writes
/// to the cluster run only while this replica leads (always, without an
/// election).
/// Each of these parts runs until shutdown; if one ends before, so does
/// the task, with an error naming the part.
async fn start_ca(
    client: Client,
    args: ControllerArgs,
    serving: Arc<ServingCert>,
    workload_ca: Arc<crate::xds::WorkloadCa>,
    ready: ReadyGuard,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let authority = loop {
        let now = time::OffsetDateTime::now_utc();
        match ca::store::load_or_create(&client, &args.namespace, &args.trust_domain, now).await {
            Ok(authority) => break authority,
            Err(e) => tracing::error!(error = %e, "certificate authority not ready; retrying in 5s"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {},
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    let mut renew_at =
        issue_serving(&authority, &args, &serving).context("issuing the webhook's serving certificate")?;
    let authority = Arc::new(authority);
    workload_ca.set_authority(authority.clone());
    ready.ready();
    let bundle = authority.trust_bundle_pem().to_string();
    let renewals = async {
        loop {
            // At least a second apart, whatever the certificate says.
            let wait = (renew_at - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
            let wait = wait.max(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = shutdown.cancelled() => return,
            }
            match issue_serving(&authority, &args, &serving) {
                Ok(at) => renew_at = at,
                Err(e) => {
                    tracing::error!(error = %e, "renewing the webhook's certificate; retrying in 10s");
                    renew_at = time::OffsetDateTime::now_utc() + Duration::from_secs(10);
                }
            }
        }
    };
    let writes = |stop| leader_writes(client.clone(), args.clone(), bundle.clone(), stop);
    let writes = async {
        match leader {
            Some(leader) => crate::supervisor::while_leading(leader, shutdown.clone(), writes).await,
            None => Some(writes(shutdown.clone()).await),
        }
    };
    let ended = tokio::select! {
        ended = writes => ended.unwrap_or("leader election"),
        _ = renewals => "renewing the serving certificate",
    };
    if shutdown.is_cancelled() { Ok(()) } else { anyhow::bail!("{ended} stopped before shutdown") }
}

/// What the leading replica writes for all of them, until `stop`; returns
/// the part that ended first.
async fn leader_writes(
    client: Client,
    args: ControllerArgs,
    bundle: String,
    stop: CancellationToken,
) -> &'static str {
    tokio::select! {
        _ = ca::store::publish_root(client.clone(), bundle.clone(), stop.clone()) => {
            "publishing the root certificate to every namespace"
        }
        _ = webhook::configuration::keep_ca_bundle::<ValidatingWebhookConfiguration>(
            client.clone(),
            args.webhook_config.clone(),
            bundle.clone(),
            stop.clone()
        ) => "keeping the caBundle of the ValidatingWebhookConfiguration",
        _ = webhook::gateways::replace_missed(client.clone(), args.namespace.clone(), stop.clone()) => {
            "replacing gateway pods the injector missed"
        }
        _ = webhook::configuration::keep_ca_bundle::<MutatingWebhookConfiguration>(
            client,
            args.injector_config.clone(),
            bundle,
            stop
        ) => "keeping the caBundle of the MutatingWebhookConfiguration",
    }
}

/// Issues and installs the serving certificate; returns when to renew it.
fn issue_serving(
    authority: &ca::Authority,
    args: &ControllerArgs,
    serving: &ServingCert,
) -> anyhow::Result<time::OffsetDateTime> {
    let now = time::OffsetDateTime::now_utc();
    let names = ca::service_dns_names(&args.service_name, &args.namespace, CLUSTER_DOMAIN);
    let lifetime = Duration::from_secs(args.serving_cert_seconds.max(2));
    let leaf = authority.issue_serving(&names, lifetime.try_into()?, now)?;
    serving.set(&leaf.cert_chain_pem, &leaf.key_pem)?;
    let renew_at = ca::RotationPolicy::default().renew_at(&leaf.cert);
    tracing::info!(names = ?names, not_after = %leaf.cert.not_after, %renew_at, "serving certificate issued (webhooks and xDS)");
    Ok(renew_at)
}

/// What every watch needs, to spawn one per kind.
struct Watches<'a> {
    client: &'a Client,
    index: &'a SharedIndex,
    readiness: &'a Readiness,
    shutdown: &'a CancellationToken,
}

impl Watches<'_> {
    /// Watches kind `K` into the index; the controller is not ready until
    /// its first list is in.
    fn spawn<K>(&self, tasks: &mut Tasks)
    where
        K: Watched,
        K::Object: DeserializeOwned,
    {
        let synced = self.readiness.register(format!("{} cache", K::NAME));
        tasks.spawn(
            format!("{} watch", K::NAME),
            index::watch::run::<K>(self.client.clone(), self.index.clone(), synced, self.shutdown.clone()),
        );
    }
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. The
/// handlers are installed when this is called, not when it is first
/// awaited: until then a SIGTERM would kill the process outright, without
/// a graceful stop, so `run` calls it before anything else.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                (term, interrupt) => {
                    let error = term.err().or(interrupt.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(%error, "cannot listen for SIGTERM and SIGINT; only Ctrl-C stops the controller");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Fault injection, compiled only into the end-to-end tests' build (feature
/// `e2e`), so a test can see what a bug in translation does to the real
/// controller.
#[cfg(feature = "e2e")]
mod faults {
    use std::sync::Arc;

    use crate::index::{Changes, ClusterSnapshot};
    use crate::xds::{Generator, PushContext};

    /// With MESH_TEST_PANIC_PUSH=<namespace>, every push made while that
    /// namespace exists panics; otherwise `generator` unchanged.
    pub fn inject(generator: Arc<dyn Generator>) -> Arc<dyn Generator> {
        match std::env::var("MESH_TEST_PANIC_PUSH") {
            Ok(namespace) if !namespace.is_empty() => {
                tracing::warn!(%namespace, "fault injected: pushes panic while this namespace exists");
                Arc::new(PanicWhileNamespaceExists { namespace, generator })
            }
            _ => generator,
        }
    }

    struct PanicWhileNamespaceExists {
        namespace: String,
        generator: Arc<dyn Generator>,
    }

    impl Generator for PanicWhileNamespaceExists {
        fn prepare(&self, cluster: &ClusterSnapshot, changes: &Changes) -> Arc<dyn PushContext> {
            if cluster.state().namespaces.values().any(|ns| ns.name == self.namespace) {
                panic!("injected fault: namespace {} exists (MESH_TEST_PANIC_PUSH)", self.namespace);
            }
            self.generator.prepare(cluster, changes)
        }

        fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            self.generator.changes()
        }
    }
}
