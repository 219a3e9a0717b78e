//! Proxies that never read their stream (`--stalled N`): each opens its
//! connection and stream with the first request a proxy sends, and then
//! reads nothing. The connection keeps HTTP/2's initial 64 KiB windows and
//! still answers pings, so to the controller it is a live proxy whose
//! configuration stops on its way: an Envoy whose main thread is stuck
//! while its gRPC library's threads are not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::ads::{self, Connector};
use crate::proxy::{self, Identity};

/// Streams opened at once.
const OPENING: usize = 50;
/// How long one stream may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The stalled streams, held until dropped.
pub struct Stalled {
    held: Vec<Held>,
    /// Why streams could not be opened, one line each.
    pub refused: Vec<String>,
}

struct Held {
    /// The stream, and the sender that keeps the connection's handle
    /// waiting for the connection's end.
    _opened: (ads::Stream, ads::Sender),
    opened: Instant,
    /// When the connection ended: the controller closed it.
    closed: Arc<Mutex<Option<Instant>>>,
}

impl Stalled {
    /// Opens a stalled stream for each identity.
    pub async fn open(connector: &Connector, identities: Vec<Identity>) -> Stalled {
        let opened = futures::stream::iter(identities)
            .map(|identity| async move {
                let first = proxy::first_request(connector.protocol, &identity);
                let open = connector.open_small_window(&identity.token, first);
                match tokio::time::timeout(OPEN_TIMEOUT, open).await {
                    Ok(Ok(ads::Opened { stream, connection, sender })) => {
                        let (opened, closed) = (Instant::now(), Arc::new(Mutex::new(None)));
                        let noted = closed.clone();
                        tokio::spawn(async move {
                            let _ = connection.await;
                            *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        });
                        Ok(Held { _opened: (stream, sender), opened, closed })
                    }
                    Ok(Err(e)) => Err(format!("{}: {e}", identity.node_id)),
                    Err(_) => Err(format!("{}: no stream within {OPEN_TIMEOUT:?}", identity.node_id)),
                }
            })
            .buffer_unordered(OPENING)
            .collect::<Vec<_>>()
            .await;
        let (mut held, mut refused) = (Vec::new(), Vec::new());
        for result in opened {
            match result {
                Ok(h) => held.push(h),
                Err(e) => refused.push(e),
            }
        }
        Stalled { held, refused }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// How long each stream the controller closed had been open, in order.
    pub fn closed_after(&self) -> Vec<Duration> {
        let mut after: Vec<Duration> = self
            .held
            .iter()
            .filter_map(|h| {
                Some((*h.closed.lock().unwrap_or_else(|p| p.into_inner()))?.duration_since(h.opened))
            })
            .collect();
        after.sort();
        after
    }
}
