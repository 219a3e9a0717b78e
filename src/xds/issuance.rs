//! How fast the CA issues workload certificates: every ADS stream costs one
//! at admission and one per renewal, so this bounds how fast a fleet of
//! proxies can (re)connect. Issues certificates through
//! [`WorkloadCa::issue`], the call a stream's admission makes (a fresh
//! ECDSA P-256 key, a signed SPIFFE certificate, both encoded as the SDS
//! secrets `default` and `ROOTCA`), first on one thread, then on as many
//! threads as the machine has cores. Prints the rate and the latency of
//! one issue; asserts nothing about speed, so it cannot flake on a busy
//! machine. Ignored by default; run with
//! `cargo test --release --lib xds::issuance -- --ignored --nocapture`
//! (`make bench-ca`). `MESH_BENCH_CERTS` sets how many certificates each
//! thread issues (default 2,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::auth::TokenIdentity;
use super::sds::{DEFAULT_TTL, WorkloadCa};
use crate::ca::{Authority, Root};

const DEFAULT_CERTS: usize = 2000;
/// Identities cycle over this many ServiceAccounts, as pods of a few
/// workloads would.
const ACCOUNTS: usize = 4;

fn certs_per_thread() -> usize {
    std::env::var("MESH_BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CERTS)
}

fn identity(i: usize) -> TokenIdentity {
    TokenIdentity {
        namespace: "bench".into(),
        service_account: format!("account-{}", i % ACCOUNTS),
        pod_name: format!("pod-{i}"),
        pod_uid: format!("uid-{i}"),
    }
}

/// Issues `count` certificates one after the other; returns the time of
/// each issue.
fn issue_many(ca: &WorkloadCa, first: usize, count: usize) -> Vec<Duration> {
    let now = OffsetDateTime::now_utc();
    (first..first + count)
        .map(|i| {
            let identity = identity(i);
            let started = Instant::now();
            let issued = ca.issue(&identity, now).expect("issued");
            let took = started.elapsed();
            // The secrets are what a stream sends; keep the compiler from
            // dropping the work.
            assert_eq!(issued.secrets.len(), 2);
            took
        })
        .collect()
}

/// The `q` quantile of sorted times, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(label: &str, mut times: Vec<Duration>, wall: Duration) -> f64 {
    times.sort();
    let rate = times.len() as f64 / wall.as_secs_f64();
    println!(
        "{label}: {} certificates in {:.2} s: {rate:.0} certs/s; per issue p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        times.len(),
        wall.as_secs_f64(),
        quantile(&times, 0.5).as_secs_f64() * 1000.0,
        quantile(&times, 0.99).as_secs_f64() * 1000.0,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    rate
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
fn workload_certificates_issued_per_second() {
    let now = OffsetDateTime::now_utc();
    let root = Root::generate("cluster.local", now).expect("root");
    let authority = Arc::new(Authority::from_root(&root, now).expect("authority"));
    let ca = WorkloadCa::with_authority(authority, "cluster.local", DEFAULT_TTL);
    let per_thread = certs_per_thread();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Warm-up: the first signatures fill caches and fault pages in.
    issue_many(&ca, 0, 50);

    let started = Instant::now();
    let single = issue_many(&ca, 0, per_thread);
    let one = report("1 thread", single, started.elapsed());

    let started = Instant::now();
    let all: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|t| {
                let ca = &ca;
                scope.spawn(move || issue_many(ca, t * per_thread, per_thread))
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("issuing thread")).collect()
    });
    let total = report(&format!("{cores} threads ({cores} cores)"), all, started.elapsed());
    println!("scaling: {:.2}x the single thread's rate on {cores} cores", total / one);
}
