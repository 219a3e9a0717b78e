//! The sidecar injector's AdmissionReview: a Pod in, a JSON patch (or a
//! refusal naming the pod and the bad annotation) out. Pure, so fixtures
//! test it in-process; the decision itself is `inject::Injector`.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::Serialize;

use crate::inject::{self, Injector, NamespaceInfo, Outcome};

/// The answer, as the API server reads it. Our own type rather than kube's
/// AdmissionResponse, which writes the patch as an array of numbers: the
/// API server accepts that, but it is 3.5 times the size of the base64
/// string the API documents, on every pod created in the mesh.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    api_version: &'static str,
    kind: &'static str,
    response: Response,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the JSON patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
}

impl Answer {
    fn new(uid: String) -> Self {
        let response = Response { uid, allowed: true, status: None, patch_type: None, patch: None };
        Self { api_version: "admission.k8s.io/v1", kind: "AdmissionReview", response }
    }

    fn deny(mut self, code: u16, message: String) -> Self {
        self.response.allowed = false;
        self.response.status = Some(Status { code, message });
        self
    }

    fn with_patch(mut self, patch: &[u8]) -> Self {
        self.response.patch_type = Some("JSONPatch");
        self.response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
        self
    }

    pub fn allowed(&self) -> bool {
        self.response.allowed
    }

    /// The JSON patch, decoded.
    pub fn patch(&self) -> Option<Vec<u8>> {
        let text = self.response.patch.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    pub fn message(&self) -> Option<&str> {
        self.response.status.as_ref().map(|s| s.message.as_str())
    }
}

/// Answers one review. `namespace_labels` are the pod's namespace's labels
/// if the controller knows them; the webhook's selectors already matched.
pub fn review(
    review: AdmissionReview<Pod>,
    namespace_labels: impl FnOnce(&str) -> Option<BTreeMap<String, String>>,
    injector: &Injector,
) -> Answer {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return Answer::new(String::new()).deny(400, format!("not an AdmissionReview: {e}")),
    };
    let answer = Answer::new(request.uid.clone());
    if request.operation != Operation::Create || request.sub_resource.is_some() {
        return answer;
    }
    let Some(pod) = &request.object else { return answer };
    let namespace = request.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    // Without the namespace in the index (not synced yet), the webhook's
    // namespace selector is the word: it matched, so injection is on.
    let labels = namespace_labels(&namespace)
        .unwrap_or_else(|| BTreeMap::from([(inject::NAMESPACE_LABEL.to_string(), "enabled".to_string())]));
    let ns = NamespaceInfo { name: &namespace, labels: Some(&labels) };
    let name = pod_name(pod, &namespace);
    match injector.inject(pod, &ns).and_then(|outcome| match outcome {
        Outcome::Injected(patch) => patch.to_bytes().map(Some),
        Outcome::Skipped(why) => {
            tracing::debug!(pod = %name, reason = %why, "not injected");
            Ok(None)
        }
    }) {
        Ok(Some(patch)) => {
            tracing::debug!(pod = %name, "injected");
            answer.with_patch(&patch)
        }
        Ok(None) => answer,
        Err(e) => answer.deny(400, format!("pod {name}: cannot inject the sidecar: {e}")),
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
    use crate::inject::InjectArgs;
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

    fn answer(pod: serde_json::Value, labels: Option<BTreeMap<String, String>>) -> Answer {
        review(request(pod), |_| labels, &Injector::new(InjectArgs::default(), "mesh-system"))
    }

    fn enabled() -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([("istio-injection".to_string(), "enabled".to_string())]))
    }

    #[test]
    fn an_enabled_namespace_gets_a_patch_in_base64() {
        let a = answer(pod(json!({})), enabled());
        assert!(a.allowed());
        let wire = serde_json::to_value(&a).unwrap();
        assert_eq!(wire["response"]["uid"], "9d0c2a8e-1f6b-4a55-9a3b-1e2f3a4b5c6d");
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
        assert!(wire["response"]["patch"].is_string(), "{wire}");
        let patch: json_patch::Patch = serde_json::from_slice(&a.patch().expect("a patch")).unwrap();
        let mut doc = pod(json!({}));
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["initContainers"][1]["name"], "istio-proxy");
    }

    #[test]
    fn opted_out_pods_pass_untouched() {
        let a = answer(pod(json!({"sidecar.istio.io/inject": "false"})), enabled());
        assert!(a.allowed() && a.patch().is_none());
        let wire = serde_json::to_value(&a).unwrap();
        assert!(wire["response"].get("patch").is_none(), "{wire}");
    }

    #[test]
    fn a_bad_annotation_is_refused_with_pod_and_annotation() {
        let a = answer(pod(json!({"sidecar.istio.io/proxyMemory": "big"})), enabled());
        assert!(!a.allowed());
        let m = a.message().unwrap_or_default();
        assert!(m.contains("default/details-v1-*") && m.contains("sidecar.istio.io/proxyMemory"), "{m}");
    }

    #[test]
    fn an_unknown_namespace_trusts_the_selector() {
        assert!(answer(pod(json!({})), None).patch().is_some());
    }
}
