//! Feeds the index from the API server: one cluster-wide watch per kind.
//! A (re)list is buffered and applied as one `reset`, so objects deleted
//! while the watch was down disappear; the kind counts as synced (for
//! /readyz) after its first complete list.

use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Event, ExponentialBackoff};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::SharedIndex;
use super::kinds::Watched;
use crate::readiness::ReadyGuard;

/// When a failed watch is tried again: kube's default doubling from 0.8 s
/// reaches 30 s between tries (plus jitter), so after an API server outage
/// a change could wait that long; here the delay doubles from 0.5 s to
/// 5 s, plus a random part of at most as much again, so the watches do not
/// all come back at once: at most 10 s apart.
fn retries() -> impl Backoff {
    let doubling = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(doubling), Duration::from_secs(120))
}

/// Watches one kind until `shutdown`. Errors are logged and retried with
/// back-off, so the watch never ends on its own; if it did, the index
/// would go stale, and the controller's supervisor treats that as a failure.
pub async fn run<K>(client: Client, index: SharedIndex, ready: ReadyGuard, shutdown: CancellationToken)
where
    K: Watched,
    K::Object: DeserializeOwned,
{
    let mut ready = Some(ready);
    let mut listing: Vec<K::Object> = Vec::new();
    let stream = watcher::watcher(K::api(client), K::config()).backoff(retries());
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Apply(obj)) => index.lock().apply::<K>(&obj),
            Ok(Event::Delete(obj)) => index.lock().delete::<K>(&obj),
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(obj)) => listing.push(obj),
            Ok(Event::InitDone) => {
                let objs = std::mem::take(&mut listing);
                index.lock().reset::<K>(&objs);
                tracing::debug!(kind = K::NAME, count = objs.len(), "listed");
                if let Some(guard) = ready.take() {
                    guard.ready();
                    tracing::info!(kind = K::NAME, count = objs.len(), "synced");
                }
            }
            Err(error) => {
                tracing::warn!(kind = K::NAME, %error, "watch failed; retrying with back-off");
            }
        }
    }
}
