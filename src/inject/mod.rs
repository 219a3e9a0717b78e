//! Sidecar injection as a pure function: a Pod (and what is known of its
//! namespace) in, the JSON patch that adds the sidecar, or the reason it was
//! left alone, out. The mutating webhook answers with the patch; `mesh
//! kube-inject` applies the same patch to the pod templates of files.
//!
//! An injected pod gains, with Istio's names so existing tooling works:
//! - the init container `istio-init` running `mesh iptables` with only
//!   NET_ADMIN and NET_RAW;
//! - `istio-proxy`, stock Envoy as a native sidecar (an init container with
//!   restartPolicy Always and a startup probe), so the application starts
//!   once Envoy has its configuration, and Envoy stops after it;
//! - volumes: a projected ServiceAccount token (audience `mesh-ca`), the
//!   `mesh-ca-root-cert` ConfigMap, the Envoy bootstrap (from an annotation,
//!   through the downward API) and an emptyDir for Envoy;
//! - the annotation `sidecar.istio.io/status` recording what was added,
//!   which also makes injecting twice a no-op;
//! - a pod annotated `inject.istio.io/templates: gateway` (Istio's
//!   gateway template) instead becomes a gateway proxy: its `istio-proxy`
//!   container is filled with Envoy announcing itself as `router~…`, with
//!   the same volumes, and nothing else is added (`template::gateway_patch`);
//! - unless the pod says `sidecar.istio.io/rewriteAppHTTPProbers: "false"`,
//!   its containers' httpGet, tcpSocket and grpc probes rewritten to
//!   Envoy's app-health listener on :15020, so they pass under mutual TLS
//!   (`probes`).

pub mod annotations;
pub mod bootstrap;
pub mod offline;
pub mod patch;
pub mod probes;
pub mod settings;
mod template;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

pub use patch::SidecarPatch;
pub use settings::{InjectArgs, is_system_namespace};

/// The annotation carrying the Envoy bootstrap, which a downward API volume
/// turns into Envoy's config file.
pub const BOOTSTRAP_ANNOTATION: &str = "sidecar.mesh.io/bootstrap";
/// Istio's namespace label: `enabled` injects every pod that does not opt out.
pub const NAMESPACE_LABEL: &str = "istio-injection";
pub const INIT_CONTAINER: &str = "istio-init";
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The template (annotation `inject.istio.io/templates`) of gateway proxies.
pub const GATEWAY_TEMPLATE: &str = "gateway";
const SIDECAR_TEMPLATE: &str = "sidecar";

/// Why a pod was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    AlreadyInjected,
    HostNetwork,
    SystemNamespace,
    /// Label or annotation `sidecar.istio.io/inject: "false"`.
    OptedOut,
    /// The namespace is not labelled `istio-injection=enabled` (or is
    /// labelled `disabled`) and the pod did not opt in.
    NotEnabled,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::AlreadyInjected => "already injected",
            Skip::HostNetwork => "the pod uses the host's network",
            Skip::SystemNamespace => "system namespace",
            Skip::OptedOut => "the pod opted out with sidecar.istio.io/inject=false",
            Skip::NotEnabled => "injection is not enabled for the namespace or the pod",
        })
    }
}

/// What injection did with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The JSON patch that injects the pod.
    Injected(SidecarPatch),
    Skipped(Skip),
}

/// A pod the injector cannot inject as asked: the pod is refused, with a
/// message naming the pod, the annotation, the value and what is expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {key}: {value:?} {problem}")]
    Annotation { key: String, value: String, problem: String },
    #[error("{0}")]
    Invalid(String),
}

impl InjectError {
    pub fn annotation(key: &str, value: &str, problem: &str) -> Self {
        Self::Annotation { key: key.into(), value: value.into(), problem: problem.into() }
    }
}

/// What the injector knows of the pod's namespace. `labels: None` means
/// not known (offline injection): the pod is injected unless it opts out.
#[derive(Clone, Debug, Default)]
pub struct NamespaceInfo<'a> {
    pub name: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// The injector: its settings, and what they make the same for every pod.
#[derive(Clone, Debug)]
pub struct Injector {
    pub args: InjectArgs,
    /// The mesh's own namespace, never injected.
    pub mesh_namespace: String,
    /// Envoy's bootstrap, as the annotation carries it for a pod without
    /// rewritten probes.
    bootstrap: String,
}

impl Injector {
    pub fn new(args: InjectArgs, mesh_namespace: impl Into<String>) -> Self {
        let bootstrap = bootstrap::bootstrap(&args.proxy_xds_address).to_string();
        Self { args, mesh_namespace: mesh_namespace.into(), bootstrap }
    }

    /// Decides, then injects. Pure: same pod, same answer.
    pub fn inject(&self, pod: &Pod, namespace: &NamespaceInfo<'_>) -> Result<Outcome, InjectError> {
        if let Some(skip) = skip_reason(pod, namespace, &self.mesh_namespace) {
            return Ok(Outcome::Skipped(skip));
        }
        let empty = BTreeMap::new();
        let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let options = annotations::proxy_options(pod_annotations, &self.args)?;
        match pod_annotations.get(annotations::TEMPLATES).map(|t| t.trim()) {
            None | Some(SIDECAR_TEMPLATE) => {}
            Some(GATEWAY_TEMPLATE) => {
                return Ok(Outcome::Injected(template::gateway_patch(
                    pod,
                    namespace.name,
                    &options,
                    &self.args,
                    &self.bootstrap,
                )?));
            }
            Some(other) => {
                return Err(InjectError::annotation(
                    annotations::TEMPLATES,
                    other,
                    "is not a template the injector has; use `gateway` (a gateway proxy) or `sidecar`",
                ));
            }
        }
        let app_probes = if options.rewrite_probes { probes::app_probes(pod)? } else { Vec::new() };
        if app_probes.is_empty() && options.trace_sampling.is_none() {
            return Ok(Outcome::Injected(template::patch(
                pod,
                namespace.name,
                &options,
                &self.args,
                &self.bootstrap,
                &[],
            )?));
        }
        // This pod's own bootstrap: its probes, its share of traces.
        let mut bootstrap = bootstrap::bootstrap(&self.args.proxy_xds_address);
        if !app_probes.is_empty() {
            bootstrap = bootstrap::with_app_health(bootstrap, &app_probes);
        }
        if let Some(percent) = options.trace_sampling {
            bootstrap = bootstrap::with_trace_sampling(bootstrap, percent);
        }
        let bootstrap = bootstrap.to_string();
        Ok(Outcome::Injected(template::patch(
            pod,
            namespace.name,
            &options,
            &self.args,
            &bootstrap,
            &app_probes,
        )?))
    }
}

/// The pod's own choice: label first (what the webhook's object selector
/// sees), then annotation (Istio's older form).
fn pod_choice(pod: &Pod) -> Option<bool> {
    let meta = &pod.metadata;
    let value = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(annotations::INJECT))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(annotations::INJECT)))?;
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "enabled" | "on" => Some(true),
        "false" | "no" | "n" | "disabled" | "off" => Some(false),
        _ => None,
    }
}

pub fn skip_reason(pod: &Pod, namespace: &NamespaceInfo<'_>, mesh_namespace: &str) -> Option<Skip> {
    if is_injected(pod) {
        return Some(Skip::AlreadyInjected);
    }
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return Some(Skip::HostNetwork);
    }
    // The mesh's own gateways live beside the controller: a pod there is
    // injected only when it opts in and asks for the gateway template.
    let own_gateway = namespace.name == mesh_namespace && pod_choice(pod) == Some(true) && is_gateway(pod);
    if is_system_namespace(namespace.name, mesh_namespace) && !own_gateway {
        return Some(Skip::SystemNamespace);
    }
    let label = namespace.labels.and_then(|l| l.get(NAMESPACE_LABEL)).map(String::as_str);
    match (pod_choice(pod), label) {
        (Some(false), _) => Some(Skip::OptedOut),
        (_, Some("disabled")) => Some(Skip::NotEnabled),
        (Some(true), _) => None,
        (None, Some("enabled")) => None,
        // Offline, nothing is known of the namespace: the user asked for it.
        (None, _) if namespace.labels.is_none() => None,
        (None, _) => Some(Skip::NotEnabled),
    }
}

/// Whether the pod asks for the gateway template.
pub fn is_gateway(pod: &Pod) -> bool {
    let templates = pod.metadata.annotations.as_ref().and_then(|a| a.get(annotations::TEMPLATES));
    templates.is_some_and(|t| t.trim() == GATEWAY_TEMPLATE)
}

/// Injected before: the status annotation, or a container of ours.
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(annotations::STATUS));
    let spec = pod.spec.as_ref();
    let has = |name: &str| {
        spec.is_some_and(|s| {
            s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == name)
        })
    };
    // A gateway pod brings its own `istio-proxy`, for the template to fill.
    annotated || (!is_gateway(pod) && has(PROXY_CONTAINER))
}

/// The pod with a patch applied, as the API server applies it.
pub fn patched(pod: &Pod, patch: &SidecarPatch) -> Result<Pod, InjectError> {
    let invalid = |e: &dyn std::fmt::Display| InjectError::Invalid(e.to_string());
    let mut doc = serde_json::to_value(pod).map_err(|e| invalid(&e))?;
    json_patch::patch(&mut doc, &patch.to_json_patch()?).map_err(|e| invalid(&e))?;
    serde_json::from_value(doc).map_err(|e| invalid(&e))
}

#[cfg(test)]
mod tests;
