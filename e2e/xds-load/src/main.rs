//! `xds-load`: the control plane's scale benchmark (`make bench-xds`,
//! docs/perf.md). It fills a cluster with Services, EndpointSlices and
//! pods, takes a real token for every pod, opens one ADS stream per pod
//! over TLS to the real controller, like an injected Envoy, and measures:
//!
//! - the initial push (all proxies connected and their configuration
//!   ACKed), and the same after a controller restart;
//! - the workload secrets: how many proxies hold theirs (an SDS response
//!   ACKed), and the time from connect to that ACK (`--no-secrets`: the
//!   proxies do not ask for them, for the figures without);
//! - the controller's CPU when nothing changes;
//! - convergence after a VirtualService change and under endpoint churn:
//!   from the start of the API call to each proxy's receipt of a response
//!   that carries the change ([`probe`]);
//! - the controller's RSS and CPU (from /proc) at each phase.
//! - with `--envoys N`, the same on real Envoy processes ([`envoy`]):
//!   route, cluster and endpoint changes until each one's config dump
//!   shows them, its memory, and its NACKs;
//! - with `--stalled N`, what the controller holds for N proxies that
//!   never read their stream ([`stalled`]), and whether new proxies and
//!   a change are still served meanwhile.
//!
//! Every wait is bounded; a change that brings no push is reported as
//! such, never as a figure.

mod ads;
mod cluster;
mod compare;
mod envoy;
mod probe;
mod proxy;
mod report;
mod stalled;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::task::JoinSet;

use cluster::{Endpoints, Layout};
use compare::Figures;
use probe::{Check, Probe};
use proxy::{Fleet, Identity};
use report::{Process, Sample, distribution, mib};
use target::Target;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Simulated sidecars against the mesh controller's ADS server: push times, convergence, RSS, CPU"
)]
struct Args {
    /// Namespace holding the benchmark's objects (created).
    #[arg(long, default_value = "bench-xds")]
    namespace: String,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Simulated proxies: one pod, one token and one ADS stream each.
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// ServiceAccounts the pods are spread over.
    #[arg(long, default_value_t = 4)]
    accounts: usize,
    /// Endpoint addresses per Service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// The control plane under test: its token audience, root ConfigMap,
    /// server name and node metadata.
    #[arg(long, value_enum, default_value = "mesh")]
    target: Target,
    /// The controller's xDS address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    xds_addr: String,
    /// The name the xDS server's certificate is checked against (TLS SNI
    /// and HTTP/2 authority); the target's by default.
    #[arg(long)]
    server_name: Option<String>,
    /// Writes the figures as JSON to this file, for `--compare`.
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Prints two runs' figures files side by side with their ratio
    /// (first ÷ second), and does nothing else.
    #[arg(long, num_args = 2, value_names = ["FIRST", "SECOND"])]
    compare: Option<Vec<PathBuf>>,
    /// The ADS protocol the simulated proxies speak: the injected
    /// bootstrap's (Delta) unless told otherwise.
    #[arg(long, value_enum, default_value = "delta")]
    protocol: ads::Protocol,
    /// Connections being opened at once (until their first response).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds all proxies may take to connect and ACK their configuration.
    #[arg(long, default_value_t = 300)]
    connect_timeout: u64,
    /// Seconds a change may take to reach every proxy.
    #[arg(long, default_value_t = 10)]
    push_timeout: u64,
    /// VirtualService changes measured one after the other.
    #[arg(long, default_value_t = 3)]
    vs_changes: usize,
    /// EndpointSlice updates per second during churn (each replaces one
    /// endpoint address of one Service: a pod gone, a pod come).
    #[arg(long, default_value_t = 30)]
    churn_rate: u32,
    #[arg(long, default_value_t = 20)]
    churn_seconds: u64,
    /// Seconds of no change over which idle CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// File holding the controller's pid, for RSS and CPU from /proc.
    #[arg(long)]
    controller_pid_file: Option<PathBuf>,
    /// Shell command that restarts the controller and returns once it is
    /// ready again (rewriting the pid file); without it, no restart.
    #[arg(long)]
    restart_command: Option<String>,
    /// Skip the restart even if a restart command is given.
    #[arg(long)]
    no_restart: bool,
    /// VirtualService changes per second (over 20 Services' objects) made
    /// from 2 s before the restart until 5 s after every proxy is back (0:
    /// none); the run then checks that every proxy converges to a last change.
    #[arg(long, default_value_t = 200)]
    restart_changes_per_second: u32,
    /// Seconds the restart command may take.
    #[arg(long, default_value_t = 120)]
    restart_timeout: u64,
    /// Proxies that never read their stream ([`stalled`]), opened after
    /// the endpoint churn and held `--stalled-seconds` while
    /// `--late-proxies` connect and a VirtualService change is made; the
    /// controller's RSS is sampled meanwhile (0: none).
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    #[arg(long, default_value_t = 90)]
    stalled_seconds: u64,
    /// Proxies that connect (and must get their whole configuration)
    /// while the stalled ones hold their streams.
    #[arg(long, default_value_t = 20)]
    late_proxies: usize,
    /// Do not subscribe to the SDS secrets the clusters name (the
    /// controller still issues a certificate per stream at admission).
    #[arg(long)]
    no_secrets: bool,
    #[command(flatten)]
    envoy: envoy::Options,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(files) = &args.compare {
        return match (Figures::read(&files[0]), Figures::read(&files[1])) {
            (Ok(first), Ok(second)) => {
                print!("{}", compare::table(&first, &second));
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("xds-load: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xds-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xds-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: impl AsRef<str>) {
    println!("xds-load: {}", line.as_ref());
}

/// The figures, printed as one block at the end, and as numbers for
/// `--figures`.
struct Summary {
    rows: Vec<(String, String)>,
    figures: Figures,
}

impl Summary {
    fn add(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        say(format!("{key}: {value}"));
        self.rows.push((key, value));
    }

    fn print(&self) {
        println!();
        println!("== xDS at scale: summary ==");
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            println!("{k:width$}  {v}");
        }
    }
}

/// Controller figures between two samples.
fn controller(process: &Process, before: Option<Sample>, after: Option<Sample>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => {
            let cpu = match (process.cpu_percent(&b, &a), process.cpu_seconds(&b, &a)) {
                (Some(pct), Some(secs)) => format!("CPU {pct:.1}% of one core ({secs:.2} s)"),
                _ => "CPU n/a (the controller restarted in between)".into(),
            };
            format!("{cpu}, RSS {} (peak {})", mib(a.rss_kib), mib(a.hwm_kib))
        }
        (_, Some(a)) => format!("RSS {} (peak {})", mib(a.rss_kib), mib(a.hwm_kib)),
        _ => "n/a (no --controller-pid-file, or the process is gone)".into(),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut summary = Summary { rows: Vec::new(), figures: Figures::new(args.target.name()) };
    let process = Process::new(args.controller_pid_file.clone());
    let client = kube::Client::try_default().await.context("connecting to the API server (KUBECONFIG)")?;
    let layout = Arc::new(Layout {
        namespace: args.namespace.clone(),
        services: args.services.max(1),
        proxies: args.proxies,
        accounts: args.accounts.max(1),
        endpoints: args.endpoints.max(1),
    });

    // --- objects and tokens ---------------------------------------------------
    let t = Instant::now();
    let mut endpoints = Endpoints::initial(&layout);
    // The real Envoys' pods follow the simulated proxies' ones, then the
    // stalled proxies' and the late ones'.
    let late_proxies = if args.stalled > 0 { args.late_proxies } else { 0 };
    let pods = Arc::new(Layout {
        proxies: layout.proxies + args.envoy.count + args.stalled + late_proxies,
        ..(*layout).clone()
    });
    let uids = cluster::setup(&client, &pods, &endpoints).await?;
    cluster::setup_routing(&client, &layout).await?;
    let counts = cluster::counts(&client, &layout.namespace).await?;
    summary.add(
        "cluster",
        format!(
            "{} Services, {} EndpointSlices ({} addresses each), {} pods (never scheduled), 1 VirtualService + DestinationRule, in namespace {} (set up in {:.1} s)",
            counts["Service"],
            counts["EndpointSlice"],
            layout.endpoints,
            counts["Pod"],
            layout.namespace,
            t.elapsed().as_secs_f64()
        ),
    );
    let t = Instant::now();
    let target = args.target;
    let mut tokens = cluster::tokens(&client, &pods, &uids, target.audience()).await?;
    let mut envoy_tokens = tokens.split_off(layout.proxies);
    let mut stalled_tokens = envoy_tokens.split_off(args.envoy.count);
    let late_tokens = stalled_tokens.split_off(args.stalled);
    let identity = |i: usize, token: String| Identity {
        node_id: layout.node_id(i),
        cluster: format!("{}.{}", layout.service(i % layout.services), layout.namespace),
        token,
        metadata: target.node_metadata(&layout, i),
    };
    let first_stalled = layout.proxies + args.envoy.count;
    let stalled_identities: Vec<Identity> =
        stalled_tokens.into_iter().enumerate().map(|(k, t)| identity(first_stalled + k, t)).collect();
    let late_identities: Vec<Identity> = late_tokens
        .into_iter()
        .enumerate()
        .map(|(k, t)| identity(first_stalled + args.stalled + k, t))
        .collect();
    say(format!(
        "{} tokens (audience {}, bound to their pods, 1 h) in {:.1} s",
        tokens.len(),
        target.audience(),
        t.elapsed().as_secs_f64()
    ));
    let root =
        cluster::root_cert(&client, &layout.namespace, target.root_config_map(), Duration::from_secs(60))
            .await?;
    // Let the controller's watches take in what was just created before
    // the first figures.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let server_name = args.server_name.clone().unwrap_or_else(|| target.server_name().to_string());
    let connector = ads::Connector::new(&args.xds_addr, &server_name, &root, args.protocol)
        .context("--xds-addr, --server-name")?;
    let subscribe_secrets = !args.no_secrets && target.serves_secrets();
    let fleet = Fleet::new(connector.clone(), layout.proxies, args.batch, subscribe_secrets);
    let before_proxies = process.sample();
    let own_before = process.own();
    summary
        .add("control plane", format!("{} on {} (server name {server_name})", target.name(), args.xds_addr));
    summary.add("controller before proxies", controller(&process, None, before_proxies));
    summary.figures.mib("RSS before proxies", before_proxies.map(|s| s.rss_kib));

    // --- initial connection -------------------------------------------------------
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        tasks.spawn(proxy::run(fleet.clone(), i, identity(i, token)));
    }
    let connect_timeout = Duration::from_secs(args.connect_timeout);
    let all = wait_ready(&fleet, start, connect_timeout).await;
    let connected = Instant::now();
    if !all {
        let ready = fleet.ready_since(start);
        let first = fleet.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        fleet.stop.cancel();
        bail!(
            "only {ready} of {} proxies connected and ACKed their configuration within {connect_timeout:?}; first error: {}",
            layout.proxies,
            first.unwrap_or_else(|| "none (the streams are open but incomplete)".into())
        );
    }
    let after_connect = process.sample();
    let own_after = process.own();
    let per_proxy: Vec<Duration> = (0..layout.proxies)
        .filter_map(|i| {
            let s = fleet.state(i);
            Some(s.ready_at?.duration_since(s.attempt_started?))
        })
        .collect();
    summary.add(
        "initial push",
        format!(
            "{} proxies connected and ACKed in {:.2} s (first connect to last ACK, {} at a time)",
            layout.proxies,
            connected.duration_since(start).as_secs_f64(),
            args.batch
        ),
    );
    summary.figures.seconds("initial push (all ACKed)", Some(connected.duration_since(start)));
    summary.figures.latencies("per proxy connect→ACK", &per_proxy);
    summary.add("  per proxy, connect to ACK", distribution(per_proxy));
    summary.add("  config per proxy", config_sizes(&fleet));
    for t in proxy::Counters::TYPES {
        if fleet.counters.responses(t) > 0 {
            summary.figures.add(
                format!("{} resources per proxy", probe::label(t)),
                "",
                Some(fleet.counters.last_size(t) as f64),
            );
        }
    }
    summary.add("  secrets", secrets(&fleet, None));
    summary.add("  controller", controller(&process, before_proxies, after_connect));
    summary.figures.add("CPU, initial push", "s", cpu_seconds(&process, before_proxies, after_connect));
    summary.figures.mib("RSS, all connected", after_connect.map(|s| s.rss_kib));
    summary.figures.mib("peak RSS, initial push", after_connect.map(|s| s.hwm_kib));
    // The load tool shares the cores: what it spent decoding and answering.
    summary.add("  xds-load itself", controller(&process, own_before, own_after));
    summary.figures.add("xds-load CPU, initial push", "s", cpu_seconds(&process, own_before, own_after));
    let retries: u32 = (0..layout.proxies).map(|i| fleet.state(i).sessions.saturating_sub(1)).sum();
    if retries > 0 {
        summary.add("  reconnects during the initial push", retries.to_string());
    }

    // --- idle -------------------------------------------------------------------
    tokio::time::sleep(Duration::from_secs(2)).await;
    let what = format!("idle, {} proxies connected", layout.proxies);
    idle(&fleet, &process, &mut summary, args.idle_seconds, &what, "idle").await;

    // --- real Envoys, beside the simulated proxies until the restart -----------------
    let envoys = if envoy_tokens.is_empty() {
        None
    } else {
        anyhow::ensure!(
            target == target::Target::Mesh,
            "--envoys: the real Envoys run the mesh's injected bootstrap, so they measure the mesh only (not --target {})",
            target.name()
        );
        let target = envoy::Target { xds_addr: &args.xds_addr, server_name: &server_name, root_pem: &root };
        let (envoys, rows) =
            envoy::start(&args.envoy, &layout, layout.proxies, envoy_tokens, target, connect_timeout).await?;
        rows.into_iter().for_each(|(k, v)| summary.add(k, v));
        // Their endpoints come after their clusters: let them all arrive.
        tokio::time::sleep(Duration::from_secs(5)).await;
        envoys.memory().await.into_iter().for_each(|(k, v)| summary.add(k, v));
        Some(envoys)
    };

    // --- one VirtualService change ---------------------------------------------------
    let push_timeout = Duration::from_secs(args.push_timeout);
    let mut weights = cluster::WEIGHTS;
    let (mut from_start, mut from_return, mut observed, mut fulls) = (vec![], vec![], vec![], vec![]);
    let (mut verified_proxies, mut observed_proxies) = (0, 0);
    let vs_before = process.sample();
    for _ in 0..args.vs_changes {
        weights = (weights.1, weights.0);
        let (id, started, returned) =
            change(&fleet, weight_probe(&layout, weights), cluster::set_weights(&client, &layout, weights))
                .await?;
        wait_verified(&fleet, id, push_timeout).await;
        let c = collect(&fleet, id, started, returned);
        from_start.extend(c.verified_from_start);
        from_return.extend(c.verified_from_return);
        observed.extend(c.observed_from_start);
        verified_proxies += c.verified;
        observed_proxies += c.observed;
        if c.verified == layout.proxies
            && let Some(last) = c.last_verified
        {
            fulls.push(last.duration_since(started));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let vs_after = process.sample();
    let expected = args.vs_changes * layout.proxies;
    summary.add(
        "VirtualService change",
        format!(
            "{} weight switches of {} (80/20 <-> 20/80), each awaited up to {push_timeout:?}",
            args.vs_changes,
            layout.service(0)
        ),
    );
    if verified_proxies == 0 {
        summary.add(
            "  convergence",
            format!(
                "no push observed within {push_timeout:?} (RDS/LDS responses carrying the new weight: 0 of {expected}; responses of those types mentioning the service at all: {observed_proxies})"
            ),
        );
    } else {
        summary.figures.latencies("VirtualService convergence", &from_start);
        summary.add("  convergence from request start", distribution(from_start));
        summary.add("  convergence from call return", distribution(from_return));
        summary.add("  proxies reached", format!("{verified_proxies} of {expected}"));
        if !fulls.is_empty() {
            summary.figures.latencies("VirtualService change to last proxy", &fulls);
            summary.add("  full push (change to last proxy)", distribution(fulls));
        }
    }
    summary.figures.add("VirtualService (proxy, change) pairs reached", "", Some(verified_proxies as f64));
    if observed_proxies > verified_proxies {
        summary.add("  pushes mentioning the service (content not checked)", distribution(observed));
    }
    summary.add("  controller", controller(&process, vs_before, vs_after));
    summary.figures.add("CPU, VirtualService changes", "s", cpu_seconds(&process, vs_before, vs_after));

    // --- endpoint churn ------------------------------------------------------------
    churn(&client, &layout, &fleet, &process, &mut endpoints, &args, &mut summary).await?;

    if let Some(envoys) = envoys {
        envoys
            .measure(&client, &layout, &mut endpoints, &fleet)
            .await?
            .into_iter()
            .for_each(|(k, v)| summary.add(k, v));
        envoys.health().await.into_iter().for_each(|(k, v)| summary.add(k, v));
        envoys.stop().await;
    }

    // --- proxies that never read -----------------------------------------------------
    if !stalled_identities.is_empty() {
        let late = Fleet::new(connector.clone(), late_identities.len(), args.batch, subscribe_secrets);
        let phase = StalledPhase {
            connector: &connector,
            fleet: &fleet,
            late: &late,
            layout: &layout,
            process: &process,
        };
        phase.run(&client, stalled_identities, late_identities, &args, &mut summary).await?;
    }

    // --- controller restart ---------------------------------------------------------
    if let Some(command) = args.restart_command.as_ref().filter(|_| !args.no_restart) {
        if args.restart_changes_per_second > 0 {
            for service in 1..CHANGED_SERVICES.min(layout.services) {
                cluster::setup_routing_of(&client, &layout, service).await?;
            }
        }
        let before = process.sample();
        let stop_changes = tokio_util::sync::CancellationToken::new();
        let changing = peak_rss_while(
            &process,
            changes_at(&client, &layout, args.restart_changes_per_second, stop_changes.clone()),
        );
        tokio::pin!(changing);
        if args.restart_changes_per_second > 0 {
            // The changes are flowing before the controller stops.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut changing).await;
        }
        let killed = Instant::now();
        let restart = async {
            let status = tokio::time::timeout(
                Duration::from_secs(args.restart_timeout),
                tokio::process::Command::new("bash").arg("-c").arg(command).kill_on_drop(true).status(),
            )
            .await
            .with_context(|| format!("the restart command took over {} s", args.restart_timeout))?
            .context("running the restart command")?;
            if !status.success() {
                bail!("the restart command failed ({status}): {command}");
            }
            let restarted = Instant::now();
            let all = wait_ready(&fleet, killed, connect_timeout).await;
            let done = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop_changes.cancel();
            anyhow::Ok((restarted, all, done))
        };
        let (restarted, all, done, (churned, peak_rss_kib)) = match tokio::join!(restart, &mut changing) {
            (Ok((restarted, all, done)), changes) => (restarted, all, done, changes),
            (Err(e), _) => return Err(e),
        };
        let ready = fleet.ready_since(killed);
        let after = process.sample();
        summary.figures.seconds("restart: stop + start + ready", Some(restarted.duration_since(killed)));
        summary
            .figures
            .seconds("restart: all ACKed after ready", all.then(|| done.duration_since(restarted)));
        summary.add(
            "controller restart",
            format!(
                "stop + start + /readyz took {:.2} s; previous controller: {}",
                restarted.duration_since(killed).as_secs_f64(),
                controller(&process, before_proxies, before)
            ),
        );
        if all {
            summary.add(
                "  full push after restart",
                format!(
                    "all {} proxies reconnected and ACKed {:.2} s after the new controller was ready ({:.2} s after the stop)",
                    layout.proxies,
                    done.duration_since(restarted).as_secs_f64(),
                    done.duration_since(killed).as_secs_f64()
                ),
            );
        } else {
            let first = fleet.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            summary.add(
                "  full push after restart",
                format!(
                    "only {ready} of {} proxies back within {connect_timeout:?}; an error seen: {}",
                    layout.proxies,
                    first.unwrap_or_default()
                ),
            );
        }
        let per_proxy: Vec<Duration> = (0..layout.proxies)
            .filter_map(|i| {
                let s = fleet.state(i);
                Some(s.ready_at?.duration_since(s.attempt_started?.max(restarted)))
            })
            .collect();
        summary.figures.latencies("restart: per proxy attempt→ACK", &per_proxy);
        summary.add("  per proxy, last attempt (not before readiness) to ACK", distribution(per_proxy));
        summary.add("  secrets", secrets(&fleet, Some(restarted)));
        summary.add("  new controller", controller(&process, None, after));
        summary.figures.mib("RSS after restart, all connected", after.map(|s| s.rss_kib));
        if args.restart_changes_per_second > 0 {
            let seconds = churned.seconds.max(0.001);
            summary.add(
                "  VirtualService changes during the restart",
                format!(
                    "{} made in {:.1} s ({:.0}/s, {} failed: the API server's answers); controller RSS at most {} while they came",
                    churned.made,
                    seconds,
                    churned.made as f64 / seconds,
                    churned.failed,
                    peak_rss_kib.map_or("n/a".to_string(), mib)
                ),
            );
            summary.figures.add(
                "restart: changes per second made",
                "/s",
                Some(churned.made as f64 / seconds),
            );
            summary.figures.mib("restart: RSS peak under changes", peak_rss_kib);
            // The last word: one more change, which every proxy must show.
            let probe = weight_probe(&layout, FINAL_WEIGHTS);
            let (id, started, returned) =
                change(&fleet, probe, cluster::set_weights(&client, &layout, FINAL_WEIGHTS)).await?;
            wait_verified(&fleet, id, push_timeout).await;
            let c = collect(&fleet, id, started, returned);
            summary.add(
                "  the final change",
                format!(
                    "{} of {} proxies hold it; last {:.2} s after the call",
                    c.verified,
                    layout.proxies,
                    c.last_verified.map_or(f64::NAN, |at| at.duration_since(started).as_secs_f64())
                ),
            );
            summary.figures.add(
                "restart: proxies converged to the final change",
                "",
                Some(c.verified as f64),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let what = "idle after restart";
        idle(&fleet, &process, &mut summary, args.idle_seconds, what, what).await;
    } else {
        summary.figures.missing("restart: all ACKed after ready", "s", "no restart in this run");
    }

    if let Some(own) = process.own() {
        summary.add("xds-load itself", format!("RSS {} (peak {})", mib(own.rss_kib), mib(own.hwm_kib)));
    }
    fleet.stop.cancel();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
            .await;
    summary.print();
    if let Some(path) = &args.figures {
        summary.figures.write(path)?;
    }
    Ok(())
}

/// What proxies show once service 0's VirtualService has `weights`: its
/// v2 subset's route weight.
fn weight_probe(layout: &Layout, weights: (u32, u32)) -> Probe {
    Probe {
        since: Instant::now(),
        types: &[probe::ROUTE, probe::LISTENER],
        mention: layout.host(0),
        check: Check::RouteWeight { cluster: format!("|v2|{}", layout.host(0)), weight: weights.1 },
    }
}

/// The weights of the last change after the restart: none of those made
/// during it ([`changes_at`]) has them.
const FINAL_WEIGHTS: (u32, u32) = (37, 63);

/// What [`changes_at`] did.
struct Churned {
    made: u64,
    failed: u64,
    seconds: f64,
}

impl Churned {
    fn count<T>(&mut self, call: &anyhow::Result<T>) {
        match call {
            Ok(_) => self.made += 1,
            Err(_) => self.failed += 1,
        }
    }
}

/// VirtualServices the changes during the restart go round: one object
/// takes its writes one at a time (etcd serializes them, and concurrent
/// patches conflict and retry), so one alone cannot take 200 a second.
const CHANGED_SERVICES: usize = 20;

/// Changes the weights of the VirtualServices of services
/// 0..[`CHANGED_SERVICES`] in turn, `rate` times a second (at most 32 calls
/// in flight; a tick with 32 waiting is skipped) until `stop`.
async fn changes_at(
    client: &kube::Client,
    layout: &Layout,
    rate: u32,
    stop: tokio_util::sync::CancellationToken,
) -> Churned {
    let started = Instant::now();
    let mut churned = Churned { made: 0, failed: 0, seconds: 0.0 };
    if rate == 0 {
        return churned;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut calls = futures::stream::FuturesUnordered::new();
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick(), if calls.len() < 32 => {
                // 1..=98, never the final change's weight.
                n = n.wrapping_add(1);
                let v1 = 1 + n % 98;
                let v1 = if v1 == FINAL_WEIGHTS.0 { v1 + 1 } else { v1 };
                let service = n as usize % CHANGED_SERVICES;
                calls.push(cluster::set_weights_of(client, layout, service, (v1, 100 - v1)));
            }
            Some(result) = futures::StreamExt::next(&mut calls) => churned.count(&result),
        }
    }
    while let Some(result) = futures::StreamExt::next(&mut calls).await {
        churned.count(&result);
    }
    churned.seconds = started.elapsed().as_secs_f64();
    churned
}

/// CPU seconds between two samples of the same process.
fn cpu_seconds(process: &Process, before: Option<Sample>, after: Option<Sample>) -> Option<f64> {
    process.cpu_seconds(&before?, &after?)
}

/// Waits until every proxy has ACKed a configuration on a stream opened
/// after `since`; false at the deadline.
async fn wait_ready(fleet: &Fleet, since: Instant, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let total = fleet.states.len();
    let mut last_report = Instant::now();
    loop {
        let ready = fleet.ready_since(since);
        if ready == total {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            say(format!("{ready} of {total} proxies ready after {:.0} s", since.elapsed().as_secs_f64()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every proxy saw probe `id` verified, or `within` passed.
async fn wait_verified(fleet: &Fleet, id: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while fleet.verified(id) < fleet.states.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets `probe` just before the API call `call` starts, makes it, and
/// returns the probe's id with when the call started and returned.
async fn change<F>(fleet: &Fleet, mut probe: Probe, call: F) -> anyhow::Result<(usize, Instant, Instant)>
where
    F: std::future::Future<Output = anyhow::Result<(Instant, Instant)>>,
{
    let since = Instant::now();
    probe.since = since;
    let id = fleet.probe(probe);
    let (_, returned) = call.await?;
    Ok((id, since, returned))
}

/// What the proxies saw of one probe.
#[derive(Default)]
struct Collected {
    verified: usize,
    observed: usize,
    verified_from_start: Vec<Duration>,
    verified_from_return: Vec<Duration>,
    observed_from_start: Vec<Duration>,
    last_verified: Option<Instant>,
}

fn collect(fleet: &Fleet, id: usize, started: Instant, returned: Instant) -> Collected {
    let mut c = Collected::default();
    for i in 0..fleet.states.len() {
        let seen = fleet.state(i).seen.get(id).copied().unwrap_or_default();
        if let Some(at) = seen.verified {
            c.verified += 1;
            c.verified_from_start.push(at.duration_since(started));
            c.verified_from_return.push(at.saturating_duration_since(returned));
            c.last_verified = c.last_verified.max(Some(at));
        }
        if let Some(at) = seen.observed {
            c.observed += 1;
            c.observed_from_start.push(at.duration_since(started));
        }
    }
    c
}

/// The controller's CPU, and the responses sent, over `seconds` of no
/// change; `figure` names the figures.
async fn idle(
    fleet: &Fleet,
    process: &Process,
    summary: &mut Summary,
    seconds: u64,
    what: &str,
    figure: &str,
) {
    let before = process.sample();
    let responses = fleet.counters.total();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = process.sample();
    let pushed = fleet.counters.total() - responses;
    let percent = before.zip(after).and_then(|(b, a)| process.cpu_percent(&b, &a));
    summary.figures.add(format!("{figure}: CPU"), "% of a core", percent);
    summary.figures.mib(format!("{figure}: RSS"), after.map(|s| s.rss_kib));
    summary.figures.add(format!("{figure}: responses received"), "", Some(pushed as f64));
    summary.add(
        format!("{what} ({seconds} s)"),
        format!("{}; {pushed} responses received", controller(process, before, after)),
    );
}

/// How many proxies hold their secrets on their current stream, and how
/// long after the stream's connection attempt (not before `floor`) they
/// ACKed the first SDS response.
fn secrets(fleet: &Fleet, floor: Option<Instant>) -> String {
    if !fleet.secrets {
        return "not subscribed (--no-secrets)".into();
    }
    let times: Vec<Duration> = (0..fleet.states.len())
        .filter_map(|i| {
            let s = fleet.state(i);
            let started = s.attempt_started?;
            Some(s.secret_acked_at?.duration_since(floor.map_or(started, |f| started.max(f))))
        })
        .collect();
    format!(
        "{} of {} proxies hold their secrets ({} SDS responses received in all); connect to the secrets' ACK: {}",
        times.len(),
        fleet.states.len(),
        fleet.counters.responses(probe::SECRET),
        distribution(times)
    )
}

/// Resource counts of the latest response of each type.
fn config_sizes(fleet: &Fleet) -> String {
    proxy::Counters::TYPES
        .iter()
        .map(|t| {
            let n = fleet.counters.responses(t);
            if n == 0 {
                format!("{} not sent", probe::label(t))
            } else {
                format!("{} {} resources", probe::label(t), fleet.counters.last_size(t))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The weights of the change made while stalled proxies hold their
/// streams: no other change has them.
const STALLED_WEIGHTS: (u32, u32) = (41, 59);

/// How long the late proxies may take to get their configuration.
const LATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Proxies that never read: what the controller holds for them, and
/// whether everyone else is still served while they hold their streams.
struct StalledPhase<'a> {
    connector: &'a ads::Connector,
    fleet: &'a Fleet,
    late: &'a Arc<Fleet>,
    layout: &'a Layout,
    process: &'a Process,
}

impl StalledPhase<'_> {
    async fn run(
        &self,
        client: &kube::Client,
        stalled: Vec<Identity>,
        late: Vec<Identity>,
        args: &Args,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let before = self.process.sample();
        let sessions_before = self.fleet.sessions();
        let opened_at = Instant::now();
        let hold = Duration::from_secs(args.stalled_seconds);
        let asked = stalled.len();
        let (result, peak) = peak_rss_while(self.process, async {
            let stalled = stalled::Stalled::open(self.connector, stalled).await;
            let opened_in = opened_at.elapsed();
            // Their first responses stop in their windows.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let held = self.process.sample();
            let late = self.connect_late(late).await;
            let change = self.change(client, Duration::from_secs(args.push_timeout)).await?;
            tokio::time::sleep(hold.saturating_sub(opened_at.elapsed())).await;
            anyhow::Ok((stalled, opened_in, held, late, change))
        })
        .await;
        let (stalled, opened_in, held, late, change) = result?;
        let reconnects = self.fleet.sessions() - sessions_before;
        self.late.stop.cancel();
        let closed = stalled.closed_after();
        let (count, refused) = (stalled.len(), stalled.refused.clone());
        drop(stalled);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = self.process.sample();

        summary.add(
            "stalled proxies",
            format!(
                "{count} of {asked} streams opened in {:.1} s, each with its first request, then never read (HTTP/2 windows of 64 KiB, pings answered); held {} s",
                opened_in.as_secs_f64(),
                args.stalled_seconds
            ),
        );
        if let Some(first) = refused.first() {
            summary.add("  streams refused", format!("{}; the first: {first}", refused.len()));
        }
        let rss = |s: Option<Sample>| s.map_or("n/a".to_string(), |s| mib(s.rss_kib));
        summary.add(
            "  controller RSS",
            format!(
                "{} before them, {} 3 s after they opened, at most {} while held, {} 2 s after they went",
                rss(before),
                rss(held),
                peak.map_or("n/a".to_string(), mib),
                rss(after)
            ),
        );
        summary.figures.mib("stalled: RSS before", before.map(|s| s.rss_kib));
        summary.figures.mib("stalled: RSS peak while held", peak);
        summary.add(
            "  closed by the controller",
            if closed.is_empty() {
                format!("none of {count} within {} s", args.stalled_seconds)
            } else {
                format!("{} of {count}, after {}", closed.len(), distribution(closed.clone()))
            },
        );
        summary.figures.add("stalled: streams closed by the controller", "", Some(closed.len() as f64));
        summary.add("  new proxies meanwhile", late);
        summary.add("  a VirtualService change meanwhile", change);
        summary.add("  reconnections of the other proxies meanwhile", reconnects.to_string());
        Ok(())
    }

    /// Connects the late proxies; says how many got their whole
    /// configuration and how fast.
    async fn connect_late(&self, identities: Vec<Identity>) -> String {
        let total = identities.len();
        let started = Instant::now();
        for (j, identity) in identities.into_iter().enumerate() {
            tokio::spawn(proxy::run(self.late.clone(), j, identity));
        }
        if wait_ready(self.late, started, LATE_TIMEOUT).await {
            format!(
                "all {total} connected and ACKed their configuration in {:.2} s",
                started.elapsed().as_secs_f64()
            )
        } else {
            let first = self.late.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            format!(
                "only {} of {total} connected and ACKed their configuration within {LATE_TIMEOUT:?}; an error seen: {}",
                self.late.ready_since(started),
                first.unwrap_or_else(|| "none (their streams are open but incomplete)".into())
            )
        }
    }

    /// Makes one VirtualService change every proxy, old and late, must show.
    async fn change(&self, client: &kube::Client, within: Duration) -> anyhow::Result<String> {
        let probe = weight_probe(self.layout, STALLED_WEIGHTS);
        let late_id = self.late.probe(probe.clone());
        let (id, started, returned) =
            change(self.fleet, probe, cluster::set_weights(client, self.layout, STALLED_WEIGHTS)).await?;
        wait_verified(self.fleet, id, within).await;
        wait_verified(self.late, late_id, within).await;
        let c = collect(self.fleet, id, started, returned);
        let late = collect(self.late, late_id, started, returned);
        let last = c.last_verified.max(late.last_verified).map(|at| at.duration_since(started));
        Ok(format!(
            "{} of {} proxies and {} of {} late ones hold it within {within:?}{}",
            c.verified,
            self.fleet.states.len(),
            late.verified,
            self.late.states.len(),
            last.map_or(String::new(), |d| format!("; the last {:.2} s after the call", d.as_secs_f64()))
        ))
    }
}

/// Runs `work`, sampling the controller's RSS every 250 ms; returns its
/// output and the highest RSS seen (KiB).
async fn peak_rss_while<T>(
    process: &Process,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<u64>) {
    tokio::pin!(work);
    let mut peak = None;
    let mut sample = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            out = &mut work => return (out, peak),
            _ = sample.tick() => peak = peak.max(process.sample().map(|s| s.rss_kib)),
        }
    }
}

/// EndpointSlice updates at `--churn-rate` for `--churn-seconds`, each
/// replacing one address of the next Service; convergence per update and
/// proxy is the receipt of an EDS (or CDS) response holding the new address.
async fn churn(
    client: &kube::Client,
    layout: &Arc<Layout>,
    fleet: &Arc<Fleet>,
    process: &Process,
    endpoints: &mut Endpoints,
    args: &Args,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let rate = args.churn_rate.max(1);
    let total = rate as u64 * args.churn_seconds;
    let push_timeout = Duration::from_secs(args.push_timeout);
    let before = process.sample();
    let started = Instant::now();
    let mut calls = JoinSet::new();
    let mut updates: Vec<(usize, Instant)> = Vec::new();
    let mut errors = 0usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total {
        ticker.tick().await;
        let s = (n as usize) % layout.services;
        let (fresh, list) = endpoints.replace_one(s);
        let probe = Probe {
            since: Instant::now(),
            types: &[probe::ENDPOINT, probe::CLUSTER],
            mention: layout.host(s),
            check: Check::Address(fresh),
        };
        let since = probe.since;
        updates.push((fleet.probe(probe), since));
        let (client, layout) = (client.clone(), layout.clone());
        // Calls overlap, so a slow one does not hold the rate back; at
        // most a few dozen are in flight.
        while calls.len() >= 64 {
            if let Some(done) = calls.join_next().await
                && !matches!(done, Ok(Ok(())))
            {
                errors += 1;
            }
        }
        calls.spawn(async move { cluster::set_endpoints(&client, &layout, s, &list).await });
    }
    while let Some(done) = calls.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            errors += 1;
        }
    }
    let sent = started.elapsed();
    // Stragglers: wait for the last update to reach everyone, bounded.
    if let Some((last, _)) = updates.last() {
        wait_verified(fleet, *last, push_timeout).await;
    }
    let after = process.sample();
    let mut latencies = Vec::new();
    let mut observed = Vec::new();
    let mut observed_count = 0usize;
    for (id, since) in &updates {
        let c = collect(fleet, *id, *since, *since);
        latencies.extend(c.verified_from_start);
        observed_count += c.observed;
        observed.extend(c.observed_from_start);
    }
    let expected = updates.len() * layout.proxies;
    summary.add(
        "endpoint churn",
        format!(
            "{} EndpointSlice updates in {:.1} s ({rate}/s asked, each replacing one address), {errors} failed",
            updates.len(),
            sent.as_secs_f64()
        ),
    );
    if latencies.is_empty() {
        summary.add(
            "  convergence",
            format!(
                "no push observed within {push_timeout:?} (EDS/CDS responses holding a new address: 0 of {expected}; responses of those types mentioning the service: {observed_count})"
            ),
        );
    } else {
        summary.add("  convergence from request start", distribution(latencies.clone()));
        summary.add("  (update, proxy) pairs reached", format!("{} of {expected}", latencies.len()));
    }
    summary.figures.latencies("endpoint churn convergence", &latencies);
    summary.figures.add("endpoint churn (update, proxy) pairs reached", "", Some(latencies.len() as f64));
    summary.figures.seconds("endpoint churn: updates sent in", Some(sent));
    summary.add("  controller", controller(process, before, after));
    summary.figures.add("CPU, endpoint churn", "s", cpu_seconds(process, before, after));
    Ok(())
}
