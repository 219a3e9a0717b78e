//! The `mesh` binary: one program, one subcommand per role.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::config::{AuthInfo, ExecConfig, Kubeconfig};
use secrecy::ExposeSecret;
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
    /// the configuration it was sent (from the controller's /debug/syncz,
    /// which answers users the Kubernetes API allows to get /debug/*).
    ProxyStatus {
        #[command(flatten)]
        access: DebugAccess,
    },
    /// Show what a proxy holds, from the controller (same access as proxy-status).
    #[command(subcommand)]
    ProxyConfig(ProxyConfig),
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
        /// A Kubernetes token allowed to get the controllers' /debug/*
        /// (else the kubeconfig user's, if it has one), for the proxies' status.
        #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
    /// The workload certificate of a pod's proxy: SPIFFE ID, serial and
    /// validity (the key is never shown), and whether it acknowledged its secrets.
    Secret {
        /// The pod, as `namespace/name` or `name.namespace`.
        pod: String,
        #[command(flatten)]
        access: DebugAccess,
    },
    /// The authorization a pod's proxy enforces: per inbound port, the RBAC
    /// policies enforced and those only counted (shadow), or that RBAC is off.
    Authz {
        /// The pod, as `namespace/name` or `name.namespace`.
        pod: String,
        #[command(flatten)]
        access: DebugAccess,
    },
}

/// Where the controller's debug views are, and who asks.
#[derive(Args)]
struct DebugAccess {
    /// The controller's monitoring address; with several replicas, each of
    /// them (repeat the flag, or separate with commas): every proxy is
    /// connected to one replica, which alone knows its state.
    #[arg(long, env = "MESH_CONTROLLER", default_value = "http://127.0.0.1:15014", value_delimiter = ',')]
    controller: Vec<String>,
    /// A Kubernetes bearer token of a user allowed to get /debug/*
    /// (ClusterRole mesh-debug, or cluster-admin). Without it, the
    /// current kubeconfig user's token (its token, tokenFile or exec plugin).
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The kubeconfig whose current user's token is sent when --token is
    /// not given (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

impl DebugAccess {
    /// The bearer token to send.
    fn token(&self) -> anyhow::Result<String> {
        debug_token(self.token.clone(), self.kubeconfig.as_ref()).and_then(|token| bearer(&token))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Crds { format } => print_crds(format),
        Command::Iptables(args) => mesh::iptables::run(args),
        Command::KubeInject(args) => mesh::inject::offline::run(args),
        Command::ProxyStatus { access } => {
            access.token().and_then(|token| proxy_status(&access.controller, &token))
        }
        Command::ProxyConfig(ProxyConfig::Secret { pod, access }) => {
            access.token().and_then(|token| proxy_secret(&access.controller, &token, &pod))
        }
        Command::ProxyConfig(ProxyConfig::Authz { pod, access }) => {
            access.token().and_then(|token| proxy_authz(&access.controller, &token, &pod))
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
        Command::Dashboard { args, token } => {
            // The proxies' status needs a token; the graph does not.
            let token = if args.controller.is_empty() { None } else { debug_token(token, None).ok() };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(mesh::dashboard::run(args, token)))
        }
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

/// The proxies connected to each of the controllers, from their
/// /debug/syncz. A replica that does not answer is reported on stderr and
/// left out, so the others' proxies still show; none answering is an error.
fn sync_statuses(controllers: &[String], token: &str) -> anyhow::Result<Vec<mesh::xds::debug::SyncStatus>> {
    let mut statuses = Vec::new();
    let mut failures = Vec::new();
    for controller in controllers {
        let answer = http_get(controller, "/debug/syncz", token).and_then(|body| {
            serde_json::from_str::<Vec<mesh::xds::debug::SyncStatus>>(&body)
                .with_context(|| format!("{controller}/debug/syncz is not a list of proxies"))
        });
        match answer {
            Ok(mut more) => statuses.append(&mut more),
            Err(e) => failures.push(e),
        }
    }
    if failures.len() == controllers.len() {
        return Err(failures.into_iter().next().unwrap_or_else(|| anyhow::anyhow!("no --controller given")));
    }
    for failure in failures {
        eprintln!("mesh: warning: {failure:#} (its proxies are not shown)");
    }
    Ok(statuses)
}

/// Prints the table of the controllers' /debug/syncz.
fn proxy_status(controllers: &[String], token: &str) -> anyhow::Result<()> {
    let statuses = sync_statuses(controllers, token)?;
    std::io::stdout().lock().write_all(mesh::xds::debug::status_table(&statuses).as_bytes())?;
    Ok(())
}

/// Prints the certificate of `pod`'s proxy, from /debug/syncz.
fn proxy_secret(controllers: &[String], token: &str, pod: &str) -> anyhow::Result<()> {
    let statuses = sync_statuses(controllers, token)?;
    let table = mesh::xds::debug::secret_table(&statuses, pod).with_context(|| {
        format!("no proxy of pod {pod} is connected to {} (see `mesh proxy-status`)", controllers.join(", "))
    })?;
    std::io::stdout().lock().write_all(table.as_bytes())?;
    Ok(())
}

/// Prints the RBAC policies of `pod`'s inbound listener, from the
/// /debug/config_dump of the controller the proxy is connected to.
fn proxy_authz(controllers: &[String], token: &str, pod: &str) -> anyhow::Result<()> {
    // A pod's name and namespace are DNS labels, and `/` may stand in a query.
    anyhow::ensure!(
        pod.bytes().all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b)),
        "{pod:?} is not a pod: write namespace/name or name.namespace"
    );
    let mut last = None;
    for controller in controllers {
        let dump = http_get(controller, &format!("/debug/config_dump?proxy={pod}"), token).and_then(|body| {
            serde_json::from_str::<serde_json::Value>(&body)
                .with_context(|| format!("{controller}/debug/config_dump is not JSON"))
        });
        match dump {
            Ok(dump) => {
                let listener = mesh::xds::debug::inbound_listener(&dump).with_context(|| {
                    format!("the proxy of pod {pod} holds no inbound listener yet (see `mesh proxy-status`)")
                })?;
                std::io::stdout().lock().write_all(mesh::xds::debug::authz_table(&listener).as_bytes())?;
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --controller given")))
}

/// What to do when there is no token to send.
const TOKEN_HINT: &str = "pass --token (or set MESH_TOKEN) with a Kubernetes token of a user allowed to get /debug/*: \
bind ClusterRole mesh-debug to a ServiceAccount (`kubectl create clusterrolebinding <name> --clusterrole=mesh-debug \
--serviceaccount=<namespace>:<name>`) and use `--token \"$(kubectl create token <name> -n <namespace>)\"`";

/// `token` if it can be a bearer token: one word of visible ASCII (so it
/// cannot end the header it is sent in).
fn bearer(token: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
        "the token is not a bearer token (one word of visible ASCII characters): {TOKEN_HINT}"
    );
    Ok(token.to_string())
}

/// The bearer token to show the controller: `--token`/MESH_TOKEN, else the
/// current kubeconfig user's.
fn debug_token(given: Option<String>, kubeconfig: Option<&PathBuf>) -> anyhow::Result<String> {
    if let Some(token) = given {
        let token = token.trim();
        anyhow::ensure!(!token.is_empty(), "--token (or MESH_TOKEN) is empty: {TOKEN_HINT}");
        return Ok(token.to_string());
    }
    let config = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| anyhow::anyhow!("no --token, and no kubeconfig to take one from ({e}): {TOKEN_HINT}"))?;
    kubeconfig_token(&config)
}

/// The token of the kubeconfig's current user: inline, from its tokenFile,
/// or printed by its exec plugin (as kubectl runs it, non-interactively).
fn kubeconfig_token(config: &Kubeconfig) -> anyhow::Result<String> {
    let context_name = config.current_context.as_deref().unwrap_or_default();
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| {
            format!("the kubeconfig's current context {context_name:?} is not in it: {TOKEN_HINT}")
        })?;
    let user_name = context.user.as_deref().unwrap_or_default();
    let user: Option<&AuthInfo> =
        config.auth_infos.iter().find(|u| u.name == user_name).and_then(|u| u.auth_info.as_ref());
    let Some(user) = user else {
        anyhow::bail!("the kubeconfig's current user {user_name:?} is not in it: {TOKEN_HINT}");
    };
    if let Some(token) = &user.token {
        return Ok(token.expose_secret().trim().to_string());
    }
    if let Some(file) = &user.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the kubeconfig user's tokenFile {file}"))?;
        return Ok(token.trim().to_string());
    }
    if let Some(exec) = &user.exec {
        return exec_token(exec);
    }
    let how = if user.client_certificate.is_some() || user.client_certificate_data.is_some() {
        "a client certificate, which the controller's plain HTTP port cannot check"
    } else {
        "no token"
    };
    anyhow::bail!("the kubeconfig's current user {user_name:?} has {how}: {TOKEN_HINT}")
}

/// Runs a kubeconfig exec plugin and reads the token of the ExecCredential it prints.
fn exec_token(exec: &ExecConfig) -> anyhow::Result<String> {
    let program = exec.command.as_deref().context("the kubeconfig user's exec plugin names no command")?;
    let api_version = exec.api_version.as_deref().unwrap_or("client.authentication.k8s.io/v1");
    let info = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    let mut command = std::process::Command::new(program);
    command.args(exec.args.iter().flatten()).env("KUBERNETES_EXEC_INFO", info.to_string());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            command.env(name, value);
        }
    }
    let out = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the kubeconfig user's exec plugin {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "the kubeconfig user's exec plugin {program} failed ({}): {TOKEN_HINT}",
        out.status
    );
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the exec plugin {program} did not print an ExecCredential"))?;
    credential["status"]["token"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .with_context(|| {
            format!("the exec plugin {program} gave no token (a client certificate?): {TOKEN_HINT}")
        })
}

/// A plain HTTP/1.1 GET of `path` on `base` (`http://host:port`), for the
/// controller's monitoring port, with a bearer token; the body of a 200
/// answer.
fn http_get(base: &str, path: &str, token: &str) -> anyhow::Result<String> {
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
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: here\n\
             contexts: [{{name: here, context: {{cluster: c, user: me}}}}]\n\
             clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443'}}}}]\n\
             users: [{{name: me, user: {user}}}]\n"
        );
        Kubeconfig::from_yaml(&yaml).expect("a kubeconfig")
    }

    #[test]
    fn the_kubeconfig_users_token_is_sent_from_wherever_it_keeps_it() {
        assert_eq!(kubeconfig_token(&kubeconfig("{token: abc.def}")).expect("inline"), "abc.def");

        let file = std::env::temp_dir().join(format!("mesh-token-{}", std::process::id()));
        std::fs::write(&file, "from-file\n").expect("a token file");
        let config = kubeconfig(&format!("{{tokenFile: {}}}", file.display()));
        assert_eq!(kubeconfig_token(&config).expect("from the file"), "from-file");
        std::fs::remove_file(&file).expect("removed");

        // An exec plugin, run as kubectl runs it: it prints an ExecCredential.
        let plugin = r#"{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: [-c, 'test -n "$KUBERNETES_EXEC_INFO" && echo "{\"status\": {\"token\": \"$WHO\"}}"'], env: [{name: WHO, value: from-exec}]}}"#;
        assert_eq!(kubeconfig_token(&kubeconfig(plugin)).expect("from the plugin"), "from-exec");
    }

    #[test]
    fn without_a_token_the_error_says_what_to_pass() {
        let cert = kubeconfig("{client-certificate: /pki/admin.crt, client-key: /pki/admin.key}");
        let err = kubeconfig_token(&cert).expect_err("no token").to_string();
        assert!(err.contains("\"me\" has a client certificate"), "{err}");
        assert!(err.contains("--token") && err.contains("kubectl create token"), "{err}");

        let failing = kubeconfig("{exec: {apiVersion: client.authentication.k8s.io/v1, command: 'false'}}");
        let err = kubeconfig_token(&failing).expect_err("the plugin failed").to_string();
        assert!(err.contains("exec plugin false failed"), "{err}");

        let err = debug_token(Some("  ".into()), None).expect_err("empty").to_string();
        assert!(err.contains("--token (or MESH_TOKEN) is empty"), "{err}");
        assert_eq!(debug_token(Some(" t0k ".into()), None).expect("given"), "t0k");
        assert!(bearer("a\r\nX-Other: 1").is_err(), "a token cannot add a header");
        assert!(bearer("eyJhbGciOi.abc-_~+/=").is_ok());
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
