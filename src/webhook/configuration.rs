//! Keeps the caBundle of the validating and mutating webhook configurations
//! equal to the mesh's root, so the API server trusts the webhook's
//! certificate without cert-manager. Every replica does it; the patch is the
//! same from all.

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A webhook configuration kind: its webhooks' names and caBundles.
pub trait WebhookConfiguration:
    kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn bundles(&self) -> Vec<(String, Option<&ByteString>)>;
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn bundles(&self) -> Vec<(String, Option<&ByteString>)> {
        self.webhooks.iter().flatten().map(|w| (w.name.clone(), w.client_config.ca_bundle.as_ref())).collect()
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn bundles(&self) -> Vec<(String, Option<&ByteString>)> {
        self.webhooks.iter().flatten().map(|w| (w.name.clone(), w.client_config.ca_bundle.as_ref())).collect()
    }
}

/// Watches the named configuration and patches every webhook's caBundle that differs.
pub async fn keep_ca_bundle<K: WebhookConfiguration>(
    client: Client,
    name: String,
    bundle_pem: String,
    shutdown: CancellationToken,
) {
    let bundle = base64::engine::general_purpose::STANDARD.encode(bundle_pem.as_bytes());
    let api: Api<K> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => return,
        };
        let config = match event {
            Some(Ok(Event::Apply(config) | Event::InitApply(config))) => config,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the webhook configuration");
                continue;
            }
            None => return,
        };
        let stale: Vec<String> = config
            .bundles()
            .into_iter()
            .filter(|(_, b)| {
                b.map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0)) != Some(bundle.clone())
            })
            .map(|(name, _)| name)
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
