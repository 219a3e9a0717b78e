//! Where the CA's root of trust lives in the cluster, and how its root
//! certificate reaches every namespace. This is the CA's only I/O:
//!
//! - the user's `cacerts` Secret (Istio's layout) in the mesh namespace wins;
//! - otherwise the Secret `mesh-ca` holds the root this controller (or a
//!   sibling replica) generated. It is made with a create, which the API
//!   server accepts once: a replica that loses the race reads the winner's
//!   root, so several replicas never end up with two roots;
//! - the trust bundle is published as ConfigMap `mesh-ca-root-cert` (key
//!   `root-cert.pem`) in every namespace, put back when deleted or edited.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Authority, CA_CERT, CA_KEY, CaCerts, CaError, ROOT_CERT, Root};

/// The Secret a user creates to plug in their own CA (Istio's name).
pub const PLUGGED_IN_SECRET: &str = "cacerts";
/// The Secret holding the root the mesh generated.
pub const GENERATED_SECRET: &str = "mesh-ca";
/// The ConfigMap with the trust bundle, in every namespace.
pub const ROOT_CONFIGMAP: &str = "mesh-ca-root-cert";
const FIELD_MANAGER: &str = "mesh-controller";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Secret {namespace}/{name}: {source}")]
    Invalid { namespace: String, name: String, source: Box<CaError> },
    #[error("Secret {namespace}/{name} is missing {key}: delete the Secret to have a new root generated")]
    Incomplete { namespace: String, name: String, key: &'static str },
    #[error(
        "reading or writing the CA Secret in namespace {namespace}: {source} (does the namespace exist, and may the controller read and create Secrets there?)"
    )]
    Api { namespace: String, source: kube::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Loads the mesh's CA from the cluster, generating and storing a root on first start.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
    now: OffsetDateTime,
) -> Result<Authority, StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api = |source| StoreError::Api { namespace: namespace.to_string(), source };
    if let Some(plugged) = secrets.get_opt(PLUGGED_IN_SECRET).await.map_err(api)? {
        let invalid = |source: CaError| StoreError::Invalid {
            namespace: namespace.into(),
            name: PLUGGED_IN_SECRET.into(),
            source: Box::new(source),
        };
        let cacerts = CaCerts::from_secret_data(&plugged.data.unwrap_or_default()).map_err(invalid)?;
        let authority = Authority::from_cacerts(&cacerts, now).map_err(invalid)?;
        tracing::info!(secret = PLUGGED_IN_SECRET, ca = %authority.ca_cert(), "using the plugged-in CA");
        return Ok(authority);
    }
    let stored = match secrets.get_opt(GENERATED_SECRET).await.map_err(api)? {
        Some(secret) => secret,
        None => {
            let root = Root::generate(trust_domain, now)?;
            match secrets.create(&PostParams::default(), &root_secret(namespace, &root)).await {
                Ok(created) => {
                    tracing::info!(secret = GENERATED_SECRET, "generated a new root CA");
                    created
                }
                // Another replica stored its root first: use that one.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    secrets.get(GENERATED_SECRET).await.map_err(api)?
                }
                Err(e) => return Err(api(e)),
            }
        }
    };
    let data = stored.data.unwrap_or_default();
    let field = |key: &'static str| {
        let text = data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok()).filter(|s| !s.is_empty());
        text.ok_or_else(|| StoreError::Incomplete {
            namespace: namespace.into(),
            name: GENERATED_SECRET.into(),
            key,
        })
    };
    let root = Root { cert_pem: field(CA_CERT)?, key_pem: field(CA_KEY)? };
    Authority::from_root(&root, now).map_err(|source| StoreError::Invalid {
        namespace: namespace.into(),
        name: GENERATED_SECRET.into(),
        source: Box::new(source),
    })
}

fn root_secret(namespace: &str, root: &Root) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(GENERATED_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/part-of".to_string(), "mesh".to_string())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (CA_CERT.to_string(), bytes(&root.cert_pem)),
            (CA_KEY.to_string(), bytes(&root.key_pem)),
            (ROOT_CERT.to_string(), bytes(&root.cert_pem)),
        ])),
        ..Default::default()
    }
}

/// Keeps ConfigMap `mesh-ca-root-cert` with `bundle` in every namespace until
/// `shutdown`: on every namespace that appears, when the ConfigMap is
/// deleted or edited, and once a minute for good measure.
pub async fn publish_root(client: Client, bundle: String, shutdown: CancellationToken) {
    let namespaces = watcher::watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| namespaces_of(&e)));
    let expected = bundle.clone();
    let configmaps = watcher::watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CONFIGMAP}")),
    )
    .default_backoff()
    .map(move |e| {
        e.map(|e| match e {
            // Ours and unchanged: nothing to do.
            Event::Apply(cm) | Event::InitApply(cm) if holds(&cm, &expected) => Vec::new(),
            other => namespaces_of_configmap(&other),
        })
    });
    let events = futures::stream::select(namespaces, configmaps);
    futures::pin_mut!(events);
    let mut resync = tokio::time::interval(Duration::from_secs(60));
    let mut known: Vec<String> = Vec::new();
    loop {
        let targets: Vec<String> = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = resync.tick() => known.clone(),
            event = events.next() => match event {
                Some(Ok(targets)) => targets,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching for the root ConfigMap; retrying");
                    continue;
                }
                None => return,
            },
        };
        for ns in targets {
            if !known.contains(&ns) {
                known.push(ns.clone());
            }
            if let Err(e) = apply_root(&client, &ns, &bundle).await {
                // A namespace being deleted refuses new objects; that is fine.
                tracing::debug!(namespace = %ns, error = %e, "publishing the root certificate");
            }
        }
    }
}

fn bundle_of(cm: &ConfigMap) -> String {
    cm.data.as_ref().and_then(|d| d.get(ROOT_CERT)).cloned().unwrap_or_default()
}

fn holds(cm: &ConfigMap, bundle: &str) -> bool {
    !bundle.is_empty() && bundle_of(cm) == bundle && cm.metadata.deletion_timestamp.is_none()
}

fn namespaces_of(event: &Event<Namespace>) -> Vec<String> {
    match event {
        Event::Apply(ns) | Event::InitApply(ns) if ns.metadata.deletion_timestamp.is_none() => {
            ns.metadata.name.clone().into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn namespaces_of_configmap(event: &Event<ConfigMap>) -> Vec<String> {
    match event {
        Event::Apply(cm) | Event::InitApply(cm) | Event::Delete(cm) => {
            cm.metadata.namespace.clone().into_iter().collect()
        }
        _ => Vec::new(),
    }
}

async fn apply_root(client: &Client, namespace: &str, bundle: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "mesh"}},
        "data": {ROOT_CERT: bundle},
    });
    api.patch(ROOT_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm)).await.map(drop)
}
