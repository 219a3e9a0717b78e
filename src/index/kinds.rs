//! The kinds the index keeps, and how each watched object becomes a model
//! entry. Core kinds are watched typed (the API server validated them);
//! Istio kinds are watched as raw objects and parsed one by one, so one
//! malformed object is skipped instead of failing the whole list.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::{ClusterSnapshot, ConvertError, Kind, Store};
use crate::api;
use crate::model::credential::TlsCredential;
use crate::model::telemetry;
use crate::model::{
    Config, Endpoint, EndpointPort, EndpointSlice, Namespace, ObjectKey, Service, ServicePort, Workload,
};

/// How to open a cluster-wide watch for a kind.
pub trait Watched: Kind {
    fn api(client: Client) -> Api<Self::Object>;
    /// Which objects of the kind are listed and watched: all by default.
    fn config() -> watcher::Config {
        watcher::Config::default()
    }
}

fn key_of<R: Resource>(obj: &R, kind: &'static str) -> Result<ObjectKey, ConvertError> {
    let meta = obj.meta();
    let name = meta.name.clone().ok_or(ConvertError::Unnamed { kind })?;
    Ok(ObjectKey::new(meta.namespace.clone().unwrap_or_default(), name))
}

/// Parses the spec of a raw Istio object, naming the field at fault when it
/// does not fit the type.
fn parse_config<S: DeserializeOwned>(
    obj: &DynamicObject,
    kind: &'static str,
) -> Result<Config<S>, ConvertError> {
    let key = key_of(obj, kind)?;
    let raw = obj.data.get("spec").cloned().unwrap_or_else(|| serde_json::json!({}));
    let spec = serde_path_to_error::deserialize(raw).map_err(|e| ConvertError::Malformed {
        kind,
        key: key.clone(),
        path: e.path().to_string(),
        reason: e.inner().to_string(),
    })?;
    let status = obj.data.get("status").and_then(|s| serde_json::from_value(s.clone()).ok());
    Ok(Config {
        key,
        generation: obj.metadata.generation.unwrap_or_default(),
        created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        spec,
        status,
    })
}

/// Defines an Istio configuration kind: watched raw, parsed into its spec.
macro_rules! config_kind {
    ($(#[$doc:meta])* $kind:ident, $name:literal, $resource:ty, $spec:ty, $field:ident) => {
        $(#[$doc])*
        pub struct $kind;

        impl Kind for $kind {
            type Object = DynamicObject;
            type Entry = Config<$spec>;
            const NAME: &'static str = $name;

            fn key(obj: &DynamicObject) -> Result<ObjectKey, ConvertError> {
                key_of(obj, Self::NAME)
            }
            fn convert(obj: &DynamicObject) -> Result<Self::Entry, ConvertError> {
                parse_config(obj, Self::NAME)
            }
            fn store(cluster: &mut ClusterSnapshot) -> &mut Store<Self::Entry> {
                &mut cluster.$field
            }
            fn store_ref(cluster: &ClusterSnapshot) -> &Store<Self::Entry> {
                &cluster.$field
            }
        }

        impl Watched for $kind {
            fn api(client: Client) -> Api<DynamicObject> {
                Api::all_with(client, &ApiResource::erase::<$resource>(&()))
            }
        }
    };
}

config_kind!(
    /// networking.istio.io VirtualServices.
    VirtualServices, "VirtualService", api::VirtualService, api::virtual_service::VirtualServiceSpec, virtual_services
);
config_kind!(
    /// networking.istio.io DestinationRules.
    DestinationRules, "DestinationRule", api::DestinationRule, api::destination_rule::DestinationRuleSpec, destination_rules
);
config_kind!(
    /// networking.istio.io Gateways (translated for gateway proxies).
    Gateways, "Gateway", api::Gateway, api::gateway::GatewaySpec, gateways
);
config_kind!(
    /// networking.istio.io ServiceEntries (services of the mesh view beside Kubernetes Services).
    ServiceEntries, "ServiceEntry", api::ServiceEntry, api::service_entry::ServiceEntrySpec, service_entries
);
config_kind!(
    /// networking.istio.io Sidecars (their egress narrows what proxies receive).
    Sidecars, "Sidecar", api::Sidecar, api::sidecar::SidecarSpec, sidecars
);
config_kind!(
    /// rbac.istio.io ServiceRoles.
    ServiceRoles, "ServiceRole", api::ServiceRole, api::service_role::ServiceRoleSpec, service_roles
);
config_kind!(
    /// rbac.istio.io ServiceRoleBindings.
    ServiceRoleBindings, "ServiceRoleBinding", api::ServiceRoleBinding, api::service_role_binding::ServiceRoleBindingSpec,
    service_role_bindings
);
config_kind!(
    /// rbac.istio.io ClusterRbacConfig (cluster-scoped; Istio reads the one named `default`).
    ClusterRbacConfigs, "ClusterRbacConfig", api::ClusterRbacConfig, api::cluster_rbac_config::ClusterRbacConfigSpec,
    cluster_rbac_configs
);
config_kind!(
    /// rbac.istio.io RbacConfig, the namespaced older name of ClusterRbacConfig.
    RbacConfigs, "RbacConfig", api::RbacConfig, api::rbac_config::RbacConfigSpec, rbac_configs
);

config_kind!(
    /// security.istio.io PeerAuthentications.
    PeerAuthentications, "PeerAuthentication", api::PeerAuthentication,
    api::peer_authentication::PeerAuthenticationSpec, peer_authentications
);
config_kind!(
    /// security.istio.io RequestAuthentications.
    RequestAuthentications, "RequestAuthentication", api::RequestAuthentication,
    api::request_authentication::RequestAuthenticationSpec, request_authentications
);
config_kind!(
    /// authentication.istio.io Policies (Istio 1.1).
    Policies, "Policy", api::Policy, api::policy::PolicySpec, policies
);
config_kind!(
    /// authentication.istio.io MeshPolicy (cluster-scoped; Istio reads the one named `default`).
    MeshPolicies, "MeshPolicy", api::MeshPolicy, api::mesh_policy::MeshPolicySpec, mesh_policies
);

/// Defines a core kind watched typed, converted by a function.
macro_rules! core_kind {
    ($(#[$doc:meta])* $kind:ident, $name:literal, $object:ty, $entry:ty, $field:ident, $convert:path, $input:literal) => {
        $(#[$doc])*
        pub struct $kind;

        impl Kind for $kind {
            type Object = $object;
            type Entry = $entry;
            const NAME: &'static str = $name;
            const VALIDATION_INPUT: bool = $input;

            fn key(obj: &$object) -> Result<ObjectKey, ConvertError> {
                key_of(obj, Self::NAME)
            }
            fn convert(obj: &$object) -> Result<$entry, ConvertError> {
                Ok($convert(key_of(obj, Self::NAME)?, obj))
            }
            fn store(cluster: &mut ClusterSnapshot) -> &mut Store<$entry> {
                &mut cluster.$field
            }
            fn store_ref(cluster: &ClusterSnapshot) -> &Store<$entry> {
                &cluster.$field
            }
        }

        impl Watched for $kind {
            fn api(client: Client) -> Api<$object> {
                Api::all(client)
            }
        }
    };
}

core_kind!(
    /// Services.
    Services, "Service", core::Service, Service, services, service, true
);
core_kind!(
    /// EndpointSlices (discovery.k8s.io/v1).
    EndpointSlices, "EndpointSlice", discovery::EndpointSlice, EndpointSlice, endpoint_slices, endpoint_slice, false
);
core_kind!(
    /// Pods, kept as workloads.
    Pods, "Pod", core::Pod, Workload, workloads, workload, false
);
core_kind!(
    /// Namespaces.
    Namespaces, "Namespace", core::Namespace, Namespace, namespaces, namespace, false
);

/// Secrets, kept only for the TLS credentials they hold (gateway servers'
/// `credentialName`); ServiceAccount tokens and Helm's release records are
/// not even listed.
pub struct Secrets;

impl Kind for Secrets {
    type Object = core::Secret;
    type Entry = TlsCredential;
    const NAME: &'static str = "Secret";
    const VALIDATION_INPUT: bool = false;

    fn key(obj: &core::Secret) -> Result<ObjectKey, ConvertError> {
        key_of(obj, Self::NAME)
    }
    fn convert(obj: &core::Secret) -> Result<TlsCredential, ConvertError> {
        let data: BTreeMap<String, Vec<u8>> =
            obj.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        Ok(TlsCredential::from_data(key_of(obj, Self::NAME)?, &data))
    }
    fn kept(entry: &TlsCredential) -> bool {
        !entry.is_empty()
    }
    fn store(cluster: &mut ClusterSnapshot) -> &mut Store<TlsCredential> {
        &mut cluster.credentials
    }
    fn store_ref(cluster: &ClusterSnapshot) -> &Store<TlsCredential> {
        &cluster.credentials
    }
}

impl Watched for Secrets {
    fn api(client: Client) -> Api<core::Secret> {
        Api::all(client)
    }
    fn config() -> watcher::Config {
        watcher::Config::default()
            .fields("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1")
    }
}

fn labels(meta: &kube::api::ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Kubernetes ports are i32 on the wire; a value outside 0..=65535 never
/// passes API validation, so it maps to 0 rather than failing the object.
fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

fn service(key: ObjectKey, svc: &core::Service) -> Service {
    let spec = svc.spec.clone().unwrap_or_default();
    Service {
        key,
        cluster_ip: spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None"),
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePort {
                name: p.name.unwrap_or_default(),
                port: port(p.port),
                target_port: p.target_port.map(|t| match t {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                }),
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol,
            })
            .collect(),
        selector: spec.selector.unwrap_or_default(),
        export_to: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_EXPORT_TO))
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    }
}

/// The annotation by which a Service says which namespaces see it.
const SERVICE_EXPORT_TO: &str = "networking.istio.io/exportTo";

fn endpoint_slice(key: ObjectKey, slice: &discovery::EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        key,
        service: slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name").cloned()),
        address_type: slice.address_type.clone(),
        ports: slice
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                port: port(p.port.unwrap_or_default()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                // Unset conditions mean "ready" to the EndpointSlice API.
                let ready = c.ready.unwrap_or(true);
                Endpoint {
                    addresses: e.addresses.clone(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    pod: e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).map(|r| {
                        ObjectKey::new(
                            r.namespace.clone().unwrap_or_default(),
                            r.name.clone().unwrap_or_default(),
                        )
                    }),
                }
            })
            .collect(),
    }
}

fn workload(key: ObjectKey, pod: &core::Pod) -> Workload {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Workload {
        workload_name: workload_name(pod).unwrap_or_else(|| key.name.clone()),
        key,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        labels: labels(&pod.metadata),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        named_ports: spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone().filter(|n| !n.is_empty())?, port(p.container_port))))
            .collect(),
    }
}

/// The name of the workload a pod belongs to, from its controlling owner
/// ([`telemetry::workload_name`]). None without an owner.
fn workload_name(pod: &core::Pod) -> Option<String> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first())?;
    let owner = telemetry::Owner { kind: &owner.kind, name: &owner.name };
    telemetry::workload_name(Some(owner), pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
}

fn namespace(key: ObjectKey, ns: &core::Namespace) -> Namespace {
    Namespace { name: key.name, labels: labels(&ns.metadata) }
}
