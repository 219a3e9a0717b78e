//! Feeds the index from the API server: one cluster-wide watch per kind.
//! A (re)list is buffered and applied as one `reset`, so objects deleted
//! while the watch was down disappear; the kind counts as synced (for
//! /readyz) after its first complete list.

use futures::StreamExt;
use kube::Client;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::SharedIndex;
use super::kinds::Watched;
use crate::readiness::ReadyGuard;

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
    let stream = watcher::watcher(K::api(client), K::config()).default_backoff();
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
