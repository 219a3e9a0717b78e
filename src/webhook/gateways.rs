//! The chart's gateways are created with the controller, and Helm creates
//! Deployments before the MutatingWebhookConfiguration: a gateway pod made
//! in that moment is not injected, and its `istio-proxy` container (image
//! `auto`) can never run. This task watches the mesh's own namespace and
//! deletes such pods (opted in, asking for the gateway template, not
//! injected), so their ReplicaSet makes them again, through the injector.
//! Istio leaves this to the user (`kubectl rollout restart`).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::inject::{annotations, is_gateway, is_injected};

/// Whether `pod` is a gateway the injector never saw.
pub fn missed_gateway(pod: &Pod) -> bool {
    let opted_in = pod.labels().get(annotations::INJECT).is_some_and(|v| v == "true");
    opted_in && is_gateway(pod) && !is_injected(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Deletes the gateway pods of `namespace` that were not injected, until shutdown.
pub async fn replace_missed(client: Client, namespace: String, shutdown: CancellationToken) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let selector = format!("{}=true", annotations::INJECT);
    let stream =
        watcher::watcher(pods.clone(), watcher::Config::default().labels(&selector)).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => return,
        };
        let pod = match event {
            Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => pod,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, %namespace, "watching the gateway pods; retrying");
                continue;
            }
            None => return,
        };
        if missed_gateway(&pod) {
            let name = pod.name_any();
            match pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(pod = %name, %namespace, "gateway pod created before the injector answered: replaced")
                }
                Err(e) => {
                    tracing::warn!(pod = %name, %namespace, error = %e, "deleting an uninjected gateway pod")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]}
        }))
        .expect("a pod")
    }

    #[test]
    fn only_opted_in_gateway_pods_the_injector_missed_are_replaced() {
        let gateway = serde_json::json!({"inject.istio.io/templates": "gateway"});
        let opted = serde_json::json!({"sidecar.istio.io/inject": "true"});
        assert!(missed_gateway(&pod(opted.clone(), gateway.clone())));
        let injected =
            serde_json::json!({"inject.istio.io/templates": "gateway", "sidecar.istio.io/status": "{}"});
        assert!(!missed_gateway(&pod(opted.clone(), injected)), "injected");
        assert!(!missed_gateway(&pod(serde_json::json!({}), gateway)), "not opted in");
        assert!(!missed_gateway(&pod(opted, serde_json::json!({}))), "not a gateway");
    }
}
