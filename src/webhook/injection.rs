//! The sidecar injector's AdmissionReview: a Pod in, a JSON patch (or a
//! refusal naming the pod and the bad annotation) out. Pure, so fixtures
//! test it in-process; the decision itself is `inject::inject`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::inject::{self, InjectArgs, NamespaceInfo, Outcome};

/// Answers one review. `namespace_labels` are the pod's namespace's labels
/// if the controller knows them; the webhook's selectors already matched.
pub fn review(
    review: AdmissionReview<Pod>,
    namespace_labels: impl FnOnce(&str) -> Option<BTreeMap<String, String>>,
    mesh_namespace: &str,
    args: &InjectArgs,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
    };
    respond(&request, namespace_labels, mesh_namespace, args).into_review()
}

fn respond(
    request: &AdmissionRequest<Pod>,
    namespace_labels: impl FnOnce(&str) -> Option<BTreeMap<String, String>>,
    mesh_namespace: &str,
    args: &InjectArgs,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create || request.sub_resource.is_some() {
        return response;
    }
    let Some(pod) = &request.object else { return response };
    let namespace = request.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    // Without the namespace in the index (not synced yet), the webhook's
    // namespace selector is the word: it matched, so injection is on.
    let labels = namespace_labels(&namespace)
        .unwrap_or_else(|| BTreeMap::from([(inject::NAMESPACE_LABEL.to_string(), "enabled".to_string())]));
    let ns = NamespaceInfo { name: &namespace, labels: Some(&labels) };
    let name = pod_name(pod, &namespace);
    match inject::inject(pod, &ns, mesh_namespace, args) {
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(pod = %name, reason = %why, "not injected");
            response
        }
        Ok(Outcome::Injected(after)) => match inject::patch(pod, &after).and_then(|patch| {
            response.clone().with_patch(patch).map_err(|e| inject::InjectError::Invalid(e.to_string()))
        }) {
            Ok(patched) => {
                tracing::debug!(pod = %name, "injected");
                patched
            }
            Err(e) => response.deny(format!("sidecar injection into pod {name} failed: {e}")),
        },
        Err(e) => response.deny(format!("pod {name}: cannot inject the sidecar: {e}")),
    }
}

/// `namespace/name`, or `namespace/prefix*` for a pod whose name the API
/// server has yet to generate.
fn pod_name(pod: &Pod, namespace: &str) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => format!("{namespace}/{name}"),
        (_, Some(prefix)) => format!("{namespace}/{prefix}*"),
        _ => format!("{namespace}/<unnamed>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(pod: serde_json::Value) -> AdmissionReview<Pod> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "9d0c2a8e-1f6b-4a55-9a3b-1e2f3a4b5c6d",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "default", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
            }
        }))
        .expect("a review")
    }

    fn pod(annotations: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "details-v1-", "namespace": "default", "annotations": annotations},
               "spec": {"containers": [{"name": "details", "image": "details"}]}})
    }

    fn answer(pod: serde_json::Value, labels: Option<BTreeMap<String, String>>) -> AdmissionResponse {
        review(request(pod), |_| labels, "mesh-system", &InjectArgs::default()).response.expect("a response")
    }

    fn enabled() -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([("istio-injection".to_string(), "enabled".to_string())]))
    }

    #[test]
    fn an_enabled_namespace_gets_a_patch() {
        let r = answer(pod(json!({})), enabled());
        assert!(r.allowed);
        let patch: json_patch::Patch = serde_json::from_slice(r.patch.as_deref().expect("a patch")).unwrap();
        let mut doc = pod(json!({}));
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["initContainers"][1]["name"], "istio-proxy");
    }

    #[test]
    fn opted_out_pods_pass_untouched() {
        let r = answer(pod(json!({"sidecar.istio.io/inject": "false"})), enabled());
        assert!(r.allowed && r.patch.is_none());
    }

    #[test]
    fn a_bad_annotation_is_refused_with_pod_and_annotation() {
        let r = answer(pod(json!({"sidecar.istio.io/proxyMemory": "big"})), enabled());
        assert!(!r.allowed);
        let m = &r.result.message;
        assert!(m.contains("default/details-v1-*") && m.contains("sidecar.istio.io/proxyMemory"), "{m}");
    }

    #[test]
    fn an_unknown_namespace_trusts_the_selector() {
        assert!(answer(pod(json!({})), None).patch.is_some());
    }
}
