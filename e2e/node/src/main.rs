//! `localnode`: a Kubernetes node for the local test cluster. It runs the
//! pods scheduled to it as local programs, each pod in network and mount
//! namespaces of its own (see docs/e2e.md).
//!
//! - `localnode run`: the node itself (started by e2e/scripts/cluster.sh);
//! - `localnode exec`: how a container process enters its pod (internal);
//! - `localnode enter NAMESPACE/POD -- CMD`: run a command inside a pod, as
//!   root, for debugging and tests (`make pod-exec`).

mod environment;
mod exec;
mod images;
mod kubelet;
mod network;
mod node;
mod pod;
mod portforward;
mod probes;
mod sandbox;
mod spdy;
mod volumes;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "localnode", about = "A Kubernetes node that runs pods as local programs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Run(Box<node::RunArgs>),
    /// Enter a pod's sandbox and exec a program (used by the node itself).
    Exec(sandbox::ExecArgs),
    /// Run a command inside a pod (network namespace, /etc/hosts, volumes), as root.
    Enter {
        /// The node's state folder.
        #[arg(long, env = "LOCALNODE_STATE_DIR")]
        state_dir: PathBuf,
        /// NAMESPACE/POD
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec(args) => sandbox::exec(args),
        Command::Enter { state_dir, pod, command } => enter(&state_dir, &pod, command),
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_ansi(false)
                .init();
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(node::run(*args)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("localnode: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Joins a running pod the way its containers did, as root with every capability.
fn enter(state_dir: &std::path::Path, pod: &str, command: Vec<String>) -> Result<()> {
    let (namespace, name) = pod.split_once('/').context("want NAMESPACE/POD")?;
    let dir = pod::find_pod_dir(state_dir, namespace, name)
        .with_context(|| format!("pod {pod} is not running on this node"))?;
    let text = std::fs::read_to_string(dir.join("sandbox.json"))
        .with_context(|| format!("pod {pod} has no sandbox yet"))?;
    let spec: serde_json::Value = serde_json::from_str(&text)?;
    let field = |k: &str| spec[k].as_str().map(str::to_string).with_context(|| format!("sandbox.json: {k}"));
    let args = sandbox::ExecArgs {
        netns: field("netns")?.into(),
        mounts: spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(String::from))
            .collect(),
        hostname: Some(field("hostname")?),
        scratch: field("scratch")?.into(),
        uid: None,
        gid: None,
        caps: "ALL".into(),
        workdir: None,
        tty: false,
        command,
    };
    sandbox::exec(args)
}
