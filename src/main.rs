//! The `mesh` binary: one program, one subcommand per role.

use std::io::{IsTerminal, Write};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "A service-mesh control plane that speaks Istio's APIs and drives stock Envoy"
)]
struct Cli {
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,mesh::index=debug`).
    #[arg(long, global = true, env = "MESH_LOG", default_value = "info")]
    log: String,

    /// Log line format.
    #[arg(long, global = true, env = "MESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CrdFormat {
    Yaml,
    Markdown,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: watch the cluster and Istio configuration.
    Controller(Box<mesh::app::ControllerArgs>),
    /// Redirect the pod's TCP traffic through Envoy (the injected init container).
    Iptables(mesh::iptables::IptablesArgs),
    /// Inject the sidecar into the pods and pod templates of a YAML file, without the webhook.
    KubeInject(mesh::inject::offline::KubeInjectArgs),
    /// Show, for every proxy connected to the controller, whether it applied
    /// the configuration it was sent (from each replica's /debug/syncz,
    /// which answers users the Kubernetes API allows to get /debug/*).
    ProxyStatus {
        #[command(flatten)]
        access: mesh::ctl::Access,
    },
    /// Show what a proxy holds: from its Envoy (cluster, listener, route,
    /// endpoint, all) or from the controller (secret, authz).
    #[command(subcommand)]
    ProxyConfig(ProxyConfig),
    /// Print this binary's version and each controller replica's.
    Version {
        /// Ask the controller replicas too.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        remote: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = mesh::ctl::commands::Output::Short)]
        output: mesh::ctl::commands::Output,
        #[command(flatten)]
        access: mesh::ctl::Access,
    },
    /// Find problems in Istio configuration (files, the live cluster, or
    /// both), with Istio's analyzer codes; exits 79 when a finding reaches
    /// --failure-threshold.
    Analyze(mesh::analyze::cli::AnalyzeArgs),
    /// Serve a live service graph of the mesh on this machine, from
    /// Prometheus: workloads, the calls between them (requests per second,
    /// errors, p99 latency), each workload's proxies and recent traces.
    Dashboard {
        #[command(flatten)]
        args: mesh::dashboard::DashboardArgs,
    },
    /// Print the CustomResourceDefinitions of every supported Istio kind.
    Crds {
        /// yaml: the CRDs to apply; markdown: the field reference (docs/api.md).
        #[arg(long, value_enum, default_value_t = CrdFormat::Yaml)]
        format: CrdFormat,
    },
}

#[derive(Subcommand)]
enum ProxyConfig {
    /// The clusters the pod's Envoy holds (from its config dump).
    #[command(alias = "clusters")]
    Cluster(EnvoyView),
    /// The listeners, one row per filter chain: what it matches, where it sends.
    #[command(alias = "listeners")]
    Listener(EnvoyView),
    /// The routes of every route configuration and virtual host.
    #[command(alias = "routes")]
    Route(EnvoyView),
    /// The endpoints of every cluster, with the health the proxy holds.
    #[command(alias = "endpoints")]
    Endpoint(EnvoyView),
    /// Clusters, listeners, routes and endpoints.
    All(EnvoyView),
    /// The workload certificate of a pod's proxy: SPIFFE ID, serial and
    /// validity (the key is never shown), and whether it acknowledged its
    /// secrets (from the controller).
    Secret(PodArgs),
    /// The authorization a pod's proxy enforces: per inbound port, the RBAC
    /// policies enforced and those only counted (shadow), or that RBAC is
    /// off (from the controller).
    Authz(PodArgs),
}

/// A pod, and how to reach the cluster.
#[derive(Args)]
struct PodArgs {
    /// The pod: name[.namespace], namespace/name, or deploy/name[.namespace]
    /// (the Deployment's first running pod).
    pod: String,
    /// The pod's namespace where the name gives none (default: the
    /// kubeconfig context's, else default).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    access: mesh::ctl::Access,
}

/// A view of a pod's Envoy: reached through the API server (port-forward
/// to its admin port, loopback in the pod), as istioctl does.
#[derive(Args)]
struct EnvoyView {
    #[command(flatten)]
    pod: PodArgs,
    /// short: a table; json: the resources as the config dump holds them.
    #[arg(short = 'o', long, value_enum, default_value_t = mesh::ctl::commands::Output::Short)]
    output: mesh::ctl::commands::Output,
}

/// Runs `future` on a runtime of its own.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(future))
}

/// `mesh proxy-config`.
async fn proxy_config(command: ProxyConfig) -> anyhow::Result<()> {
    use mesh::ctl::commands;
    use mesh::ctl::envoy::Kind;
    let (kinds, view): (&[Kind], EnvoyView) = match command {
        ProxyConfig::Secret(p) => {
            return commands::proxy_secret(&p.access, &p.pod, p.namespace.as_deref()).await;
        }
        ProxyConfig::Authz(p) => {
            return commands::proxy_authz(&p.access, &p.pod, p.namespace.as_deref()).await;
        }
        ProxyConfig::Cluster(v) => (&[Kind::Cluster], v),
        ProxyConfig::Listener(v) => (&[Kind::Listener], v),
        ProxyConfig::Route(v) => (&[Kind::Route], v),
        ProxyConfig::Endpoint(v) => (&[Kind::Endpoint], v),
        ProxyConfig::All(v) => (&Kind::ALL, v),
    };
    let p = view.pod;
    commands::proxy_config(&p.access, kinds, &p.pod, p.namespace.as_deref(), view.output).await
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Crds { format } => print_crds(format),
        Command::Iptables(args) => mesh::iptables::run(args),
        Command::KubeInject(args) => mesh::inject::offline::run(args),
        Command::ProxyStatus { access } => block_on(mesh::ctl::commands::proxy_status(&access)),
        Command::ProxyConfig(command) => block_on(proxy_config(command)),
        Command::Version { remote, output, access } => {
            block_on(mesh::ctl::commands::version(&access, remote, output))
        }
        Command::Analyze(args) => {
            let found = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(mesh::analyze::cli::run(args)));
            match found {
                Ok(true) => return std::process::ExitCode::from(mesh::analyze::cli::FOUND_ISSUES),
                other => other.map(|_| ()),
            }
        }
        Command::Dashboard { args } => block_on(mesh::dashboard::run(args)),
        Command::Controller(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(mesh::app::run(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_crds(format: CrdFormat) -> anyhow::Result<()> {
    let text = match format {
        CrdFormat::Yaml => mesh::api::crds_yaml()?,
        CrdFormat::Markdown => mesh::api::reference_markdown(),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("mesh: ignoring invalid --log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

// jemalloc: faster than glibc's on many threads (the webhook's small JSON
// values, the xDS streams' buffers), and unlike mimalloc it gives memory
// back. Freed pages go back to the kernel after a second (jemalloc's
// default is ten), so a burst (the initial push to every proxy) does not
// stay in the RSS: 218 MiB with 2,000 proxies, against 351 MiB with
// mimalloc (docs/perf.md).
// `_RJEM_MALLOC_CONF` in the environment still overrides these. The
// feature `system-allocator` keeps glibc's, for heap profilers that hook
// malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(not(feature = "system-allocator"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
