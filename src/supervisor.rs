//! The one owner of the controller's long-running tasks: the watches, the
//! xDS push loop, the certificate authority, the servers, the status
//! writer and leader election. Each is spawned here with a name, and each
//! must run until shutdown: a watch or a server never ends on its own.
//!
//! So the first task that ends, fails or panics before shutdown is a
//! failure of the controller, not of that task alone (a controller without
//! its Pod watch or its push loop would serve stale configuration while
//! looking healthy). It is logged with the task's name and reason, makes
//! /readyz fail for good ([`Readiness::fail`]), stops the other tasks, and
//! is returned, so `mesh controller` exits non-zero and Kubernetes
//! restarts it.
//!
//! On shutdown (SIGTERM) every task is asked to stop through the shared
//! token and given a grace period to finish (xDS connections drain, the
//! Lease is released); whatever still runs after it is aborted.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// How long tasks get to finish after shutdown before they are aborted:
/// more than the xDS server's drain, less than Kubernetes' default 30 s.
const GRACE: Duration = Duration::from_secs(10);

/// The controller's long-running tasks, by name.
pub struct Tasks {
    running: JoinSet<anyhow::Result<()>>,
    names: BTreeMap<Id, String>,
    readiness: Readiness,
    shutdown: CancellationToken,
    grace: Duration,
}

/// Why the controller stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[error("{task} {failure}")]
pub struct TaskFailed {
    /// The task's name, as it was spawned.
    pub task: String,
    pub failure: Failure,
}

/// How a task stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("ended before shutdown (it must run until the controller stops)")]
    Ended,
    #[error("failed: {0}")]
    Error(String),
    #[error("panicked: {0}")]
    Panicked(String),
}

/// What a task returns: nothing, or a result whose error says why it stopped.
pub trait Outcome: Send + 'static {
    fn into_result(self) -> anyhow::Result<()>;
}

impl Outcome for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<T, E> Outcome for Result<T, E>
where
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    fn into_result(self) -> anyhow::Result<()> {
        self.map(drop).map_err(Into::into)
    }
}

impl Tasks {
    /// Tasks that stop when `shutdown` is cancelled; a failure is reported
    /// to `readiness`.
    pub fn new(readiness: Readiness, shutdown: CancellationToken) -> Self {
        Self { running: JoinSet::new(), names: BTreeMap::new(), readiness, shutdown, grace: GRACE }
    }

    /// Starts `task` under `name` (which the log and /readyz show if it fails).
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let handle = self.running.spawn(async move { task.await.into_result() });
        self.names.insert(handle.id(), name.into());
    }

    /// Takes over a task a library spawned itself (leader election does):
    /// its end, error or panic counts as this task's.
    pub fn adopt<T: Outcome>(&mut self, name: impl Into<String>, handle: JoinHandle<T>) {
        self.spawn(name, async move {
            match handle.await {
                Ok(outcome) => outcome.into_result(),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(e.into()),
            }
        });
    }

    /// Runs until `stop` resolves (then `Ok`) or a task stops first (then
    /// the error naming it); either way every task has stopped on return.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), TaskFailed> {
        let failed = tokio::select! {
            _ = stop => None,
            Some(joined) = self.running.join_next_with_id() => Some(self.stopped(joined)),
        };
        match &failed {
            Some(failed) => {
                tracing::error!(
                    task = %failed.task,
                    reason = %failed.failure,
                    "a task of the controller stopped; shutting down, to be restarted"
                );
                self.readiness.fail(failed.to_string());
            }
            None => tracing::info!("shutting down"),
        }
        self.shutdown.cancel();
        self.drain().await;
        failed.map_or(Ok(()), Err)
    }

    /// Waits for the tasks to finish after shutdown, at most the grace period.
    async fn drain(&mut self) {
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.running.join_next_with_id() => match joined {
                    None => return,
                    Some(joined) => match self.stopped(joined) {
                        TaskFailed { task, failure: Failure::Ended } => tracing::debug!(%task, "stopped"),
                        TaskFailed { task, failure } => {
                            tracing::warn!(%task, reason = %failure, "stopped badly during shutdown");
                        }
                    },
                },
                _ = &mut deadline => break,
            }
        }
        let left: Vec<&String> = self.names.values().collect();
        tracing::warn!(tasks = ?left, grace = ?self.grace, "still running after shutdown; aborting them");
        self.running.shutdown().await;
    }

    /// Which task stopped, and how.
    fn stopped(&mut self, joined: Result<(Id, anyhow::Result<()>), JoinError>) -> TaskFailed {
        let (id, failure) = match joined {
            Ok((id, Ok(()))) => (id, Failure::Ended),
            Ok((id, Err(e))) => (id, Failure::Error(format!("{e:#}"))),
            Err(e) => {
                let id = e.id();
                match e.try_into_panic() {
                    Ok(panic) => (id, Failure::Panicked(panic_message(&*panic))),
                    Err(e) => (id, Failure::Error(e.to_string())),
                }
            }
        };
        let task = self.names.remove(&id).unwrap_or_else(|| format!("task {id}"));
        TaskFailed { task, failure }
    }

    /// A shorter grace period, so tests need not sit through it.
    #[cfg(test)]
    fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// Runs `work` only while this replica leads (`leader` says so), for the
/// writes one replica makes for all: started each time the replica
/// becomes leader, and cancelled through its token (then awaited) when it
/// stops leading, so two replicas never write at once for longer than the
/// Lease's grace. Returns `None` at shutdown or when the election ends
/// (its sender dropped: the election's own task reports that), and what
/// `work` returned if it ended without being cancelled, which the caller
/// treats as a failure.
pub async fn while_leading<F, Fut, T>(
    mut leader: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
    mut work: F,
) -> Option<T>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                changed = leader.changed() => if changed.is_err() { return None },
                _ = shutdown.cancelled() => return None,
            }
        }
        let stop = shutdown.child_token();
        let running = work(stop.clone());
        tokio::pin!(running);
        loop {
            tokio::select! {
                // At shutdown the work's token is cancelled too (a child):
                // its ending then is no failure, whichever branch wakes first.
                ended = &mut running => return (!shutdown.is_cancelled()).then_some(ended),
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        stop.cancel();
                        running.as_mut().await;
                        if changed.is_err() { return None }
                        break;
                    }
                }
                _ = shutdown.cancelled() => {
                    running.as_mut().await;
                    return None;
                }
            }
        }
    }
}

/// The message of a panic (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A task that runs until shutdown, as a watch or a server does, and
    /// says whether it saw the shutdown.
    fn until_shutdown(shutdown: CancellationToken) -> (impl Future<Output = ()>, Arc<AtomicBool>) {
        let stopped = Arc::new(AtomicBool::new(false));
        let seen = stopped.clone();
        (
            async move {
                shutdown.cancelled().await;
                seen.store(true, Ordering::SeqCst);
            },
            stopped,
        )
    }

    async fn panics_after(wait: Duration, message: &str) {
        tokio::time::sleep(wait).await;
        panic!("{message}");
    }

    /// Tasks whose start-up is done, so readiness only reflects failures.
    fn tasks() -> (Tasks, Readiness, CancellationToken) {
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        readiness.register("caches").ready();
        let tasks = Tasks::new(readiness.clone(), shutdown.clone()).with_grace(Duration::from_secs(5));
        (tasks, readiness, shutdown)
    }

    #[tokio::test]
    async fn a_task_that_panics_makes_the_controller_unready_and_stops_the_rest() {
        let (mut tasks, readiness, shutdown) = tasks();
        let (watch, watch_stopped) = until_shutdown(shutdown.clone());
        tasks.spawn("Pod watch", watch);
        tasks.spawn("xDS push loop", panics_after(Duration::from_millis(20), "generating a listener: boom"));
        assert!(readiness.is_ready());

        let failed = tasks.run_until(std::future::pending()).await.expect_err("a task panicked");

        assert_eq!(failed.task, "xDS push loop");
        assert_eq!(failed.failure, Failure::Panicked("generating a listener: boom".into()));
        assert_eq!(failed.to_string(), "xDS push loop panicked: generating a listener: boom");
        assert!(!readiness.is_ready());
        assert_eq!(readiness.failures(), vec![failed.to_string()]);
        assert!(shutdown.is_cancelled());
        assert!(watch_stopped.load(Ordering::SeqCst), "the other tasks were stopped");
    }

    #[tokio::test]
    async fn a_task_that_ends_or_fails_before_shutdown_is_a_failure() {
        let (mut tasks, readiness, shutdown) = tasks();
        let (server, _) = until_shutdown(shutdown.clone());
        tasks.spawn("monitoring server", server);
        tasks.spawn("Service watch", async {});
        let failed = tasks.run_until(std::future::pending()).await.expect_err("a task ended");
        assert_eq!(failed.task, "Service watch");
        assert_eq!(failed.failure, Failure::Ended);
        let failures = readiness.failures();
        assert!(failures[0].starts_with("Service watch ended before shutdown"), "{failures:?}");

        let (mut tasks, readiness, _) = self::tasks();
        tasks.spawn("certificate authority", async {
            Err::<(), _>(anyhow::anyhow!("no key").context("issuing the serving certificate"))
        });
        let failed = tasks.run_until(std::future::pending()).await.expect_err("a task failed");
        assert_eq!(
            failed.to_string(),
            "certificate authority failed: issuing the serving certificate: no key"
        );
        assert!(!readiness.is_ready());
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_and_is_no_failure() {
        let (mut tasks, readiness, shutdown) = tasks();
        let (watch, watch_stopped) = until_shutdown(shutdown.clone());
        let (server, server_stopped) = until_shutdown(shutdown.clone());
        tasks.spawn("Namespace watch", watch);
        tasks.spawn("webhook server", async move {
            server.await;
            Ok::<(), std::io::Error>(())
        });
        let stop = tokio::time::sleep(Duration::from_millis(20));
        assert!(tasks.run_until(stop).await.is_ok());
        assert!(watch_stopped.load(Ordering::SeqCst) && server_stopped.load(Ordering::SeqCst));
        assert!(readiness.is_ready(), "shutting down is not a failure");
    }

    #[tokio::test]
    async fn a_task_that_ignores_shutdown_is_aborted_after_the_grace_period() {
        let readiness = Readiness::new();
        let mut tasks = Tasks::new(readiness, CancellationToken::new()).with_grace(Duration::from_millis(50));
        tasks.spawn("stuck", std::future::pending::<()>());
        let started = std::time::Instant::now();
        assert!(tasks.run_until(std::future::ready(())).await.is_ok());
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_adopted_task_reports_its_own_panic() {
        let (mut tasks, _, _) = tasks();
        // A literal message (a `&str` payload), where the others are formatted (a `String`).
        async fn lease_watch() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("lease lost its mind");
        }
        let handle = tokio::spawn(lease_watch());
        tasks.adopt("leader election", handle);
        let failed = tasks.run_until(std::future::pending()).await.expect_err("it panicked");
        assert_eq!(failed.to_string(), "leader election panicked: lease lost its mind");
    }

    /// Counts how often `while_leading` starts and stops its work.
    fn counted(
        starts: Arc<std::sync::atomic::AtomicUsize>,
        stops: Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl FnMut(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |stop| {
            starts.fetch_add(1, Ordering::SeqCst);
            let stops = stops.clone();
            Box::pin(async move {
                stop.cancelled().await;
                stops.fetch_add(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_stops_when_leadership_goes() {
        use std::sync::atomic::AtomicUsize;
        let (lead, leader) = tokio::sync::watch::channel(false);
        let shutdown = CancellationToken::new();
        let (starts, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let running =
            tokio::spawn(while_leading(leader, shutdown.clone(), counted(starts.clone(), stops.clone())));
        // Waits (at most 5 s, on a loaded machine) for the counts to be `want`.
        let counts = || (starts.load(Ordering::SeqCst), stops.load(Ordering::SeqCst));
        let until = |want: (usize, usize), why: &'static str| async move {
            let reached = tokio::time::timeout(Duration::from_secs(5), async {
                while counts() != want {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(reached.is_ok(), "{why}: (starts, stops) = {:?}, not {want:?}", counts());
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(counts(), (0, 0), "not leading: nothing runs");
        lead.send(true).unwrap();
        until((1, 0), "leading: the work started").await;
        lead.send(false).unwrap();
        until((1, 1), "leadership lost: the work was cancelled").await;
        lead.send(true).unwrap();
        until((2, 1), "leading again: started again").await;
        shutdown.cancel();
        assert_eq!(running.await.unwrap(), None);
        assert_eq!(stops.load(Ordering::SeqCst), 2, "shutdown cancels the work and waits for it");
    }

    #[tokio::test]
    async fn the_election_ending_stops_the_work() {
        use std::sync::atomic::AtomicUsize;
        let (lead, leader) = tokio::sync::watch::channel(true);
        let (starts, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let running = tokio::spawn(while_leading(
            leader,
            CancellationToken::new(),
            counted(starts.clone(), stops.clone()),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(lead);
        let ended = tokio::time::timeout(Duration::from_secs(5), running).await.expect("returns").unwrap();
        assert_eq!(ended, None);
        assert_eq!((starts.load(Ordering::SeqCst), stops.load(Ordering::SeqCst)), (1, 1));
    }

    #[tokio::test]
    async fn work_that_ends_by_itself_ends_the_loop() {
        let (_lead, leader) = tokio::sync::watch::channel(true);
        let ended = while_leading(leader, CancellationToken::new(), |_| async { "done" });
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await.expect("returns");
        assert_eq!(ended, Some("done"), "for the caller to report");
    }
}
