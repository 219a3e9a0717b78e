//! One AdmissionReview in, one out: what the validating webhook answers
//! for an object of an Istio kind. Pure, so fixtures test it in-process.
//!
//! Errors reject the object (it never reaches etcd) with one line per
//! problem naming kind, namespace/name, field, problem and fix; warnings let
//! it through and kubectl prints them as `Warning: ...`.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::validate::{self, Context, Severity};

/// The API server caps each warning; longer ones are cut, so keep them whole.
const MAX_WARNING: usize = 256;

/// Answers one review. A body that is not a readable review gets an
/// "invalid" answer, which the API server reports as a webhook error.
pub fn review(review: AdmissionReview<DynamicObject>, ctx: &Context) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
    };
    respond(&request, ctx).into_review()
}

fn respond(request: &AdmissionRequest<DynamicObject>, ctx: &Context) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if matches!(request.operation, Operation::Delete | Operation::Connect) {
        return response;
    }
    let Some(object) = &request.object else { return response };
    let kind = request.kind.kind.as_str();
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let name = object.metadata.name.as_deref().unwrap_or(request.name.as_str());
    let spec = object.data.get("spec").cloned().unwrap_or_else(|| serde_json::json!({}));
    let findings = validate::validate_object(kind, namespace, name, &spec, ctx);

    let lines = |severity: Severity| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(|f| validate::render(kind, namespace, name, f))
            .collect()
    };
    let (errors, warnings) = (lines(Severity::Error), lines(Severity::Warning));
    let mut response = response;
    if !warnings.is_empty() {
        response.warnings = Some(warnings.into_iter().map(|w| shorten(&w)).collect());
    }
    if errors.is_empty() { response } else { response.deny(errors.join("\n")) }
}

fn shorten(warning: &str) -> String {
    if warning.len() <= MAX_WARNING {
        return warning.to_string();
    }
    let mut end = MAX_WARNING - 3;
    while !warning.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &warning[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(kind: &str, name: &str, spec: serde_json::Value) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": kind},
                "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "virtualservices"},
                "name": name, "namespace": "default", "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": {"apiVersion": "networking.istio.io/v1alpha3", "kind": kind,
                           "metadata": {"name": name, "namespace": "default"}, "spec": spec},
            }
        }))
        .expect("a review")
    }

    fn answer(review: AdmissionReview<DynamicObject>, ctx: &Context) -> AdmissionResponse {
        super::review(review, ctx).response.expect("a response")
    }

    #[test]
    fn a_valid_object_is_allowed_with_its_uid() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        let r = answer(request("VirtualService", "reviews", spec), &Context::default());
        assert!(r.allowed);
        assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    }

    #[test]
    fn an_invalid_object_is_denied_naming_object_and_field() {
        let spec = json!({"hosts": ["reviews"], "http": [{"timeout": "10", "route": [{"destination": {"host": "reviews"}}]}]});
        let r = answer(request("VirtualService", "reviews", spec), &Context::default());
        assert!(!r.allowed);
        assert!(r.result.message.contains("VirtualService default/reviews"), "{}", r.result.message);
        assert!(r.result.message.contains("spec.http[0].timeout"), "{}", r.result.message);
    }

    #[test]
    fn a_route_to_an_unknown_subset_is_allowed_with_a_warning() {
        let mut ctx = Context::empty();
        ctx.add_service("default", "reviews");
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}]});
        let r = answer(request("VirtualService", "reviews", spec), &ctx);
        assert!(r.allowed);
        let warnings = r.warnings.unwrap_or_default();
        assert!(warnings.iter().any(|w| w.contains("v9")), "{warnings:?}");
        assert!(warnings.iter().all(|w| w.len() <= MAX_WARNING));
    }

    #[test]
    fn deletes_are_always_allowed() {
        let mut review = request("VirtualService", "reviews", json!({"hosts": 5}));
        if let Some(req) = review.request.as_mut() {
            req.operation = Operation::Delete;
        }
        assert!(answer(review, &Context::default()).allowed);
    }

    #[test]
    fn a_body_without_a_request_is_invalid() {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
                .unwrap();
        assert!(!super::review(review, &Context::default()).response.unwrap().allowed);
    }
}
