//! The fixture most unit tests share: Istio's Bookinfo as the index would
//! hold it, from Istio's unmodified samples (`MESH_CONFORMANCE_DIR`):
//! its Services with ClusterIPs, one ready pod per Deployment, their
//! EndpointSlices, and any networking sample applied on top.

use crate::translate::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{DynamicObject, ObjectMeta};
use serde::Deserialize;
use serde_json::Value;

use crate::api::samples;
use crate::index::{
    ClusterRbacConfigs, DestinationRules, EndpointSlices, Gateways, Index, Namespaces, Pods,
    ServiceRoleBindings, ServiceRoles, Services, VirtualServices,
};
use crate::model::ObjectKey;
use crate::model::mesh::{MeshView, ProxyContext};

pub const NAMESPACE: &str = "default";

/// Every YAML document of a sample file.
pub fn documents(relative: &str) -> Vec<Value> {
    let path = samples::dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// Bookinfo's platform: Services with ClusterIPs 10.96.0.x, one ready pod
/// per Deployment at 10.244.0.x, and an EndpointSlice per Service.
pub fn bookinfo() -> Index {
    let mut index = Index::new(Default::default());
    index.apply::<Namespaces>(&core::Namespace {
        metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() },
        ..Default::default()
    });
    let docs = documents("platform/bookinfo.yaml");
    let mut services = Vec::new();
    for (n, doc) in docs.iter().filter(|d| kind(d) == "Service").enumerate() {
        let mut service: core::Service = serde_json::from_value(doc.clone()).expect("a Service");
        service.metadata.namespace = Some(NAMESPACE.into());
        let spec = service.spec.get_or_insert_with(Default::default);
        spec.cluster_ip = Some(format!("10.96.0.{}", 10 + n));
        index.apply::<Services>(&service);
        services.push(service);
    }
    let mut pods = Vec::new();
    for (n, doc) in docs.iter().filter(|d| kind(d) == "Deployment").enumerate() {
        let deployment: apps::Deployment = serde_json::from_value(doc.clone()).expect("a Deployment");
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let template = deployment.spec.map(|s| s.template).unwrap_or_default();
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-0")),
                namespace: Some(NAMESPACE.into()),
                uid: Some(format!("uid-{name}")),
                // Injected, as the injector marks pods with a sidecar.
                labels: template.metadata.and_then(|m| m.labels).map(|mut labels| {
                    labels.insert(TLS_MODE_LABEL.into(), TLS_MODE_ISTIO.into());
                    labels
                }),
                ..Default::default()
            },
            spec: template.spec,
            status: Some(core::PodStatus {
                pod_ip: Some(format!("10.244.0.{}", 10 + n)),
                conditions: Some(vec![core::PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        index.apply::<Pods>(&pod);
        pods.push(pod);
    }
    for service in &services {
        index.apply::<EndpointSlices>(&endpoint_slice(service, &pods));
    }
    index
}

/// The slice the endpoint controller would write for `service`.
pub fn endpoint_slice(service: &core::Service, pods: &[core::Pod]) -> discovery::EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let selector = spec.selector.unwrap_or_default();
    let selected = pods.iter().filter(|pod| {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    });
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-abcde")),
            namespace: Some(NAMESPACE.into()),
            labels: Some([("kubernetes.io/service-name".to_string(), name.clone())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(
            spec.ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| discovery::EndpointPort {
                    name: p.name,
                    port: Some(match p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
                        _ => p.port,
                    }),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: selected
            .map(|pod| discovery::Endpoint {
                addresses: vec![pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: Some(core::ObjectReference {
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

/// Applies every VirtualService, DestinationRule and Gateway of a networking sample.
pub fn apply_networking(index: &mut Index, file: &str) {
    for doc in documents(&format!("networking/{file}")) {
        let mut obj: DynamicObject = serde_json::from_value(doc.clone()).expect("an object");
        obj.metadata.namespace = Some(NAMESPACE.into());
        match kind(&doc) {
            "VirtualService" => index.apply::<VirtualServices>(&obj),
            "DestinationRule" => index.apply::<DestinationRules>(&obj),
            "Gateway" => index.apply::<Gateways>(&obj),
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
}

/// Applies every object of an RBAC sample (`rbac/<file>`): ServiceRoles
/// and bindings in Bookinfo's namespace, the cluster-scoped switch as is.
pub fn apply_rbac(index: &mut Index, file: &str) {
    for doc in documents(&format!("rbac/{file}")) {
        let mut obj: DynamicObject = serde_json::from_value(doc.clone()).expect("an object");
        match kind(&doc) {
            "ServiceRole" => {
                obj.metadata.namespace = Some(NAMESPACE.into());
                index.apply::<ServiceRoles>(&obj)
            }
            "ServiceRoleBinding" => {
                obj.metadata.namespace = Some(NAMESPACE.into());
                index.apply::<ServiceRoleBindings>(&obj)
            }
            "ClusterRbacConfig" => index.apply::<ClusterRbacConfigs>(&obj),
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
}

/// The mesh view the xDS generator builds from the index.
pub fn mesh_view(index: &Index) -> MeshView {
    MeshView::build(index.state())
}

/// The productpage pod's sidecar.
pub fn productpage(index: &Index) -> ProxyContext {
    let workload =
        index.get::<Pods>(&ObjectKey::new(NAMESPACE, "productpage-v1-0")).expect("productpage pod");
    ProxyContext::from_workload(workload)
}
