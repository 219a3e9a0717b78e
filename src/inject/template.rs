//! The containers, volumes and annotations an injected pod gains.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SecurityContext, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::annotations::{ProxyOptions, STATUS};
use crate::model::telemetry;
use crate::translate::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL};

use super::bootstrap::{self, BOOTSTRAP_DIR, BOOTSTRAP_FILE, ROOT_CERT_DIR, TOKEN_DIR, TOKEN_FILE};
use super::patch::{Addition, SidecarPatch};
use super::probes::{self, AppProbe};
use super::settings::{InjectArgs, PROXY_UID, TOKEN_AUDIENCE};
use super::{BOOTSTRAP_ANNOTATION, GATEWAY_TEMPLATE, INIT_CONTAINER, InjectError, PROXY_CONTAINER};

const ENVOY_VOLUME: &str = "istio-envoy";
const TOKEN_VOLUME: &str = "istio-token";
const ROOT_CERT_VOLUME: &str = "mesh-ca-root-cert";
const BOOTSTRAP_VOLUME: &str = "istio-bootstrap";

/// The JSON patch that adds the sidecar to `pod`. Built op by op (not by
/// diffing two pods): it is what the webhook answers for every pod created
/// in the mesh, so it costs only what it adds. Our init containers go first,
/// so the traffic rules are in place and Envoy is ready before any of the
/// pod's own init containers runs. `app_probes` are replaced by their
/// rewritten form and recorded on the sidecar; `bootstrap` serves them.
pub fn patch(
    pod: &Pod,
    namespace: &str,
    options: &ProxyOptions,
    args: &InjectArgs,
    bootstrap: &str,
    app_probes: &[AppProbe],
) -> Result<SidecarPatch, InjectError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err(InjectError::Invalid("the pod has no spec".into()));
    };
    let taken: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let ours = [ENVOY_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME, BOOTSTRAP_VOLUME];
    if let Some(clash) = ours.iter().find(|v| taken.contains(v)) {
        return Err(InjectError::Invalid(format!(
            "the pod already has a volume named {clash}, which the sidecar needs; rename it"
        )));
    }

    let mut patch = SidecarPatch::default();
    let mut proxy = proxy_container(options, args, &workload_name(pod), bootstrap::SIDECAR_NODE);
    proxy.env.get_or_insert_default().push(workload_labels(pod, namespace));
    if !app_probes.is_empty() {
        proxy.env.get_or_insert_default().push(EnvVar {
            name: probes::PROBERS_ENV.into(),
            value: Some(probes::recorded(app_probes)?),
            ..Default::default()
        });
    }
    let init = [init_container(options, args), proxy];
    if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        patch.add(&["spec", "initContainers"], Addition::Containers(init.to_vec()));
    } else {
        for (i, c) in init.into_iter().enumerate() {
            patch.add(&["spec", "initContainers", &i.to_string()], Addition::Container(Box::new(c)));
        }
    }
    for probe in app_probes {
        let path = ["spec", "containers", &probe.index.to_string(), probe.kind.field()];
        patch.replace(&path, Addition::Probe(Box::new(probe.rewritten())));
    }
    if spec.volumes.is_none() {
        patch.add(&["spec", "volumes"], Addition::Volumes(volumes(args)));
    } else {
        for v in volumes(args) {
            // "-": after the last element.
            patch.add(&["spec", "volumes", "-"], Addition::Volume(Box::new(v)));
        }
    }

    let added = json!({"initContainers": [INIT_CONTAINER, PROXY_CONTAINER], "containers": []});
    annotate(&mut patch, pod, bootstrap, added, &ours);
    // Istio's mark of a pod with a sidecar: clients send it mutual TLS (auto mTLS).
    let (label, value) = (TLS_MODE_LABEL, TLS_MODE_ISTIO.to_string());
    if pod.metadata.labels.is_none() {
        patch.add(&["metadata", "labels"], Addition::Labels([(label.to_string(), value)].into()));
    } else {
        patch.add(&["metadata", "labels", label], Addition::Label(value));
    }
    Ok(patch)
}

/// The JSON patch that makes `pod` a gateway proxy (Istio's `gateway`
/// template): its container `istio-proxy` (whatever image it names, e.g.
/// `auto`) becomes stock Envoy announcing itself as `router~…`, as an
/// ordinary container (the gateway is the pod's application), with the
/// same token, root certificate and bootstrap volumes as a sidecar, so
/// it proves its pod's identity and gets its workload certificate by SDS
/// for mutual TLS to sidecars. No init container and no traffic capture:
/// the gateway's listeners bind the ports themselves. The container's own
/// ports, environment, volume mounts and resources are kept, as Istio
/// merges them.
pub fn gateway_patch(
    pod: &Pod,
    namespace: &str,
    options: &ProxyOptions,
    args: &InjectArgs,
    bootstrap: &str,
) -> Result<SidecarPatch, InjectError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err(InjectError::Invalid("the pod has no spec".into()));
    };
    let Some(index) = spec.containers.iter().position(|c| c.name == PROXY_CONTAINER) else {
        return Err(InjectError::Invalid(format!(
            "the pod asks for the gateway template ({}: {GATEWAY_TEMPLATE}) but has no container named \
             {PROXY_CONTAINER} for it; add one (image: auto)",
            super::annotations::TEMPLATES
        )));
    };
    let taken: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    let ours = [ENVOY_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME, BOOTSTRAP_VOLUME];
    if let Some(clash) = ours.iter().find(|v| taken.contains(v)) {
        return Err(InjectError::Invalid(format!(
            "the pod already has a volume named {clash}, which the gateway proxy needs; rename it"
        )));
    }
    let theirs = &spec.containers[index];
    let mut proxy = proxy_container(options, args, &workload_name(pod), bootstrap::ROUTER_NODE);
    proxy.env.get_or_insert_default().push(workload_labels(pod, namespace));
    // The pod's application: no native sidecar, nothing waits for it.
    proxy.restart_policy = None;
    proxy.startup_probe = None;
    // Ready as soon as it has its listeners, probed as Istio's gateways are.
    if let Some(probe) = proxy.readiness_probe.as_mut() {
        probe.period_seconds = Some(2);
        probe.failure_threshold = Some(30);
    }
    let ports = proxy.ports.get_or_insert_default();
    for port in theirs.ports.iter().flatten() {
        if !ports.iter().any(|p| p.container_port == port.container_port) {
            ports.push(port.clone());
        }
    }
    proxy.env.get_or_insert_default().extend(theirs.env.iter().flatten().cloned());
    // Istio 1.1's certificate files (`serverCertificate`) come in this way.
    proxy.volume_mounts.get_or_insert_default().extend(theirs.volume_mounts.iter().flatten().cloned());
    if theirs.resources.as_ref().is_some_and(|r| r.requests.is_some() || r.limits.is_some()) {
        proxy.resources = theirs.resources.clone();
    }
    let mut patch = SidecarPatch::default();
    patch.replace(&["spec", "containers", &index.to_string()], Addition::Container(Box::new(proxy)));
    if spec.volumes.is_none() {
        patch.add(&["spec", "volumes"], Addition::Volumes(volumes(args)));
    } else {
        for v in volumes(args) {
            patch.add(&["spec", "volumes", "-"], Addition::Volume(Box::new(v)));
        }
    }
    annotate(
        &mut patch,
        pod,
        bootstrap,
        json!({"initContainers": [], "containers": [PROXY_CONTAINER]}),
        &ours,
    );
    Ok(patch)
}

/// Adds the bootstrap and Istio's injection status (which of the pod's
/// containers and volumes are the injector's: `added`, `volumes`) to the
/// pod's annotations.
fn annotate(
    patch: &mut SidecarPatch,
    pod: &Pod,
    bootstrap: &str,
    added: serde_json::Value,
    volumes: &[&str],
) {
    let mut status = added;
    status["volumes"] = json!(volumes);
    status["imagePullSecrets"] = serde_json::Value::Null;
    status["revision"] = json!("default");
    let annotations = [(BOOTSTRAP_ANNOTATION, bootstrap.to_string()), (STATUS, status.to_string())];
    if pod.metadata.annotations.is_none() {
        let map = annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        patch.add(&["metadata", "annotations"], Addition::Annotations(map));
    } else {
        for (key, value) in annotations {
            patch.add(&["metadata", "annotations", key], Addition::Annotation(value));
        }
    }
}

/// The workload the pod belongs to, for Envoy's cluster name: the `app`
/// label, else the pod's generated-name prefix, else its name.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let app = meta.labels.as_ref().and_then(|l| l.get("app")).filter(|a| !a.is_empty());
    let generated = meta.generate_name.as_deref().map(|g| g.trim_end_matches('-')).filter(|g| !g.is_empty());
    app.map(String::as_str).or(generated).or(meta.name.as_deref()).unwrap_or("unknown").to_string()
}

/// The pod's workload as Istio's metrics name it, for the sidecar's own
/// (crate::translate::telemetry): fixed at creation, as the pod's owner is.
fn workload_labels(pod: &Pod, namespace: &str) -> EnvVar {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let owners = meta.owner_references.iter().flatten();
    let owner = owners.clone().find(|o| o.controller == Some(true)).or_else(|| owners.clone().next());
    let owner = owner.map(|o| telemetry::Owner { kind: &o.kind, name: &o.name });
    // A pod without an owner is its own workload; it may have only a generated name yet.
    let own_name = meta.name.as_deref().or(meta.generate_name.as_deref().map(|g| g.trim_end_matches('-')));
    let workload =
        telemetry::workload_name(owner, labels).unwrap_or_else(|| own_name.unwrap_or_default().to_string());
    EnvVar {
        name: telemetry::ENV.into(),
        value: Some(telemetry::WorkloadLabels::new(&workload, namespace, labels).joined()),
        ..Default::default()
    }
}

/// `mesh iptables`: root with NET_ADMIN and NET_RAW only, nothing else.
fn init_container(options: &ProxyOptions, args: &InjectArgs) -> Container {
    let mut iptables_args = vec!["iptables".to_string()];
    iptables_args.extend(options.traffic.iptables_args());
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(args.proxy_init_image.clone()),
        args: Some(iptables_args),
        resources: Some(resources(
            &[("cpu", "10m"), ("memory", "10Mi")],
            &[("cpu", "100m"), ("memory", "50Mi")],
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Stock Envoy as a native sidecar; `kind` is its node id's first part.
fn proxy_container(options: &ProxyOptions, args: &InjectArgs, workload: &str, kind: &str) -> Container {
    let node_id = bootstrap::kind_node_id(
        kind,
        "$(INSTANCE_IP)",
        "$(POD_NAME)",
        "$(POD_NAMESPACE)",
        &args.cluster_domain,
    );
    let envoy_args = [
        "-c",
        &format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}"),
        "--service-node",
        &node_id,
        "--service-cluster",
        &format!("{workload}.$(POD_NAMESPACE)"),
        "--log-level",
        &options.log_level,
        // Each pod's Envoy is alone in its pod: no shared memory for hot restart.
        "--disable-hot-restart",
        "--drain-time-s",
        "45",
        "--local-address-ip-version",
        "v4",
    ];
    let env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut limits = vec![];
    if !options.cpu_limit.is_empty() {
        limits.push(("cpu", options.cpu_limit.as_str()));
    }
    if !options.memory_limit.is_empty() {
        limits.push(("memory", options.memory_limit.as_str()));
    }
    let ready = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".into()),
            port: IntOrString::Int(bootstrap::HEALTH_PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(options.image.clone()),
        args: Some(envoy_args.iter().map(|s| s.to_string()).collect()),
        // Native sidecar: runs for the pod's life, started before the app.
        restart_policy: Some("Always".into()),
        env: Some(vec![
            env("POD_NAME", "metadata.name"),
            env("POD_NAMESPACE", "metadata.namespace"),
            env("INSTANCE_IP", "status.podIP"),
            env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http-envoy-prom".into()),
            container_port: bootstrap::PROMETHEUS_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Up to 10 minutes to get the first configuration; the app waits.
        startup_probe: Some(ready(1, 600)),
        readiness_probe: Some(ready(15, 4)),
        resources: Some(resources(
            &[("cpu", options.cpu.as_str()), ("memory", options.memory.as_str())],
            &limits,
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(ENVOY_VOLUME, "/etc/istio/proxy", false),
            mount(TOKEN_VOLUME, TOKEN_DIR, true),
            mount(ROOT_CERT_VOLUME, ROOT_CERT_DIR, true),
            mount(BOOTSTRAP_VOLUME, BOOTSTRAP_DIR, true),
        ]),
        ..Default::default()
    }
}

fn volumes(args: &InjectArgs) -> Vec<Volume> {
    vec![
        Volume {
            name: ENVOY_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: Some("Memory".into()), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(args.proxy_token_seconds),
                        path: TOKEN_FILE.into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: ROOT_CERT_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: crate::ca::store::ROOT_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: BOOTSTRAP_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: BOOTSTRAP_FILE.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{BOOTSTRAP_ANNOTATION}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty())
            .then(|| pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
    };
    ResourceRequirements { requests: map(requests), limits: map(limits), ..Default::default() }
}
