//! The `mesh` binary: one program, one subcommand per role.

use std::io::{IsTerminal, Write};

use clap::{Parser, Subcommand, ValueEnum};
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
    Controller(mesh::app::ControllerArgs),
    /// Redirect the pod's TCP traffic through Envoy (the injected init container).
    Iptables(mesh::iptables::IptablesArgs),
    /// Inject the sidecar into the pods and pod templates of a YAML file, without the webhook.
    KubeInject(mesh::inject::offline::KubeInjectArgs),
    /// Print the CustomResourceDefinitions of every supported Istio kind.
    Crds {
        /// yaml: the CRDs to apply; markdown: the field reference (docs/api.md).
        #[arg(long, value_enum, default_value_t = CrdFormat::Yaml)]
        format: CrdFormat,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Crds { format } => print_crds(format),
        Command::Iptables(args) => mesh::iptables::run(args),
        Command::KubeInject(args) => mesh::inject::offline::run(args),
        Command::Controller(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(mesh::app::run(args))),
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

// A faster allocator than glibc's for a server that builds and drops many
// small JSON values per request on several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
