//! The `mesh` binary: one program, one subcommand per role.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::Context;

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
    Controller(Box<mesh::app::ControllerArgs>),
    /// Redirect the pod's TCP traffic through Envoy (the injected init container).
    Iptables(mesh::iptables::IptablesArgs),
    /// Inject the sidecar into the pods and pod templates of a YAML file, without the webhook.
    KubeInject(mesh::inject::offline::KubeInjectArgs),
    /// Show, for every proxy connected to the controller, whether it applied
    /// the configuration it was sent (from the controller's /debug/syncz).
    ProxyStatus {
        /// The controller's monitoring address.
        #[arg(long, env = "MESH_CONTROLLER", default_value = "http://127.0.0.1:15014")]
        controller: String,
    },
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
        Command::ProxyStatus { controller } => proxy_status(&controller),
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

/// Prints the table of the controller's /debug/syncz.
fn proxy_status(controller: &str) -> anyhow::Result<()> {
    let body = http_get(controller, "/debug/syncz")?;
    let statuses: Vec<mesh::xds::debug::SyncStatus> = serde_json::from_str(&body)
        .with_context(|| format!("{controller}/debug/syncz is not a list of proxies"))?;
    std::io::stdout().lock().write_all(mesh::xds::debug::status_table(&statuses).as_bytes())?;
    Ok(())
}

/// A plain HTTP/1.1 GET of `path` on `base` (`http://host:port`), for the
/// controller's monitoring port; the body of a 200 answer.
fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    let authority = base
        .strip_prefix("http://")
        .context("--controller must be an http:// address, like http://127.0.0.1:15014")?
        .trim_end_matches('/');
    let authority = authority.split('/').next().unwrap_or(authority);
    let address = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let fail =
        || format!("cannot reach the controller at {base} (is it running? port-forward its port 15014)");
    let addr =
        std::net::ToSocketAddrs::to_socket_addrs(&address).with_context(fail)?.next().with_context(fail)?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(fail)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).with_context(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("the controller's answer is not HTTP")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        anyhow::bail!("{base}{path} answered `{status}`: {}", body.trim());
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked { dechunk(body)? } else { body.to_string() })
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a malformed chunked answer")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .context("a malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("a truncated chunk")?);
        body = rest.get(size + 2..).unwrap_or_default();
    }
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
// small JSON values per request on several threads. The feature
// `system-allocator` keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
