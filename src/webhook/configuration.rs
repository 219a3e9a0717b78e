//! Keeps the ValidatingWebhookConfiguration's caBundle equal to the mesh's
//! root, so the API server trusts the webhook's certificate without
//! cert-manager. Every replica does it; the patch is the same from all.

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Watches the named configuration and patches every webhook's caBundle that differs.
pub async fn keep_ca_bundle(client: Client, name: String, bundle_pem: String, shutdown: CancellationToken) {
    let bundle = base64::engine::general_purpose::STANDARD.encode(bundle_pem.as_bytes());
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => return,
        };
        let vwc = match event {
            Some(Ok(Event::Apply(vwc) | Event::InitApply(vwc))) => vwc,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the webhook configuration");
                continue;
            }
            None => return,
        };
        let stale: Vec<String> = vwc
            .webhooks
            .iter()
            .flatten()
            .filter(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0))
                    != Some(bundle.clone())
            })
            .map(|w| w.name.clone())
            .collect();
        if stale.is_empty() {
            continue;
        }
        // Webhooks merge by name in a strategic merge patch.
        let webhooks: Vec<_> =
            stale.iter().map(|n| json!({"name": n, "clientConfig": {"caBundle": bundle}})).collect();
        let patch = json!({"webhooks": webhooks});
        match api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => tracing::info!(configuration = %name, webhooks = ?stale, "caBundle updated"),
            Err(e) => tracing::warn!(configuration = %name, error = %e, "updating the caBundle"),
        }
    }
}
