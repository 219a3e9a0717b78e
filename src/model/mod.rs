//! The mesh as plain data: services, endpoints, workloads, namespaces and the
//! Istio configuration that applies to them. Nothing here knows about kube,
//! tonic or I/O; the index fills these types from watch events and the
//! translation layer reads them to build Envoy configuration.
//!
//! Configuration specs are the `api` types themselves: they are plain serde
//! structs, and keeping one definition avoids a second copy that can drift.
//!
//! [`ClusterState`] is what the index holds, by reference: the one input of
//! the layers above it (the mesh view for translation, validation's
//! context, status), so none of them needs to know the index.
//!
//! Istio's grammar lives here once, for every reader: host names
//! ([`host`]), durations ([`duration`]), address blocks ([`cidr`]), status
//! codes ([`status`]) and the `mesh` gateway ([`mesh::MESH_GATEWAY`]).

pub mod cidr;
pub mod credential;
pub mod duration;
pub mod gateway;
pub mod host;
pub mod jwt;
pub mod locality;
pub mod mesh;
pub mod mtls;
pub mod protocol;
pub mod rbac;
pub mod service_entry;
pub mod sidecar_scope;
pub mod status;
pub mod telemetry;
pub mod visibility;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::cluster_rbac_config::ClusterRbacConfigSpec;
use crate::api::destination_rule::DestinationRuleSpec;
use crate::api::gateway::GatewaySpec;
use crate::api::mesh_policy::MeshPolicySpec;
use crate::api::peer_authentication::PeerAuthenticationSpec;
use crate::api::policy::PolicySpec;
use crate::api::rbac_config::RbacConfigSpec;
use crate::api::request_authentication::RequestAuthenticationSpec;
use crate::api::service_entry::ServiceEntrySpec;
use crate::api::service_role::ServiceRoleSpec;
use crate::api::service_role_binding::ServiceRoleBindingSpec;
use crate::api::sidecar::SidecarSpec;
use crate::api::virtual_service::VirtualServiceSpec;

/// Names one object: namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A Kubernetes Service as the mesh sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Service {
    pub key: ObjectKey,
    /// The virtual IP, when the Service has one (not for headless Services).
    pub cluster_ip: Option<String>,
    pub ports: Vec<ServicePort>,
    /// Pods with all of these labels back the Service.
    pub selector: BTreeMap<String, String>,
    /// Istio's `networking.istio.io/exportTo` annotation, split at commas;
    /// empty: every namespace.
    pub export_to: Vec<String>,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServicePort {
    /// The port's name; Istio reads the protocol from its prefix (`http-web`).
    pub name: String,
    pub port: u16,
    /// The container port, by number or by name, as the Service wrote it.
    pub target_port: Option<String>,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The explicit application protocol, which wins over the name prefix.
    pub app_protocol: Option<String>,
}

/// The endpoints of one EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// The Service this slice belongs to (label `kubernetes.io/service-name`).
    pub service: Option<String>,
    /// IPv4, IPv6 or FQDN.
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// A port every endpoint of a slice listens on.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// One backend of a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    /// Ready to take new traffic.
    pub ready: bool,
    /// Able to serve, even while terminating.
    pub serving: bool,
    pub terminating: bool,
    /// The pod behind the endpoint, when it is one.
    pub pod: Option<ObjectKey>,
}

/// A pod: the unit that gets a sidecar and an identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Workload {
    pub key: ObjectKey,
    /// The workload the pod belongs to, as Istio names it in its metrics
    /// (`source_workload`, `destination_workload`): its Deployment's name
    /// for a pod of a ReplicaSet made by one, its CronJob's for a pod of a
    /// Job made by one, else its owner's name, else its own.
    pub workload_name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// The named ports of its containers, name to number: what a Service's
    /// targetPort written as a name means on this pod.
    pub named_ports: BTreeMap<String, u16>,
}

/// A namespace and its labels (injection and visibility read them).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// One Istio configuration object: its spec, as the user wrote it, and
/// the status the controller last wrote on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config<S> {
    pub key: ObjectKey,
    /// metadata.generation: bumped by the API server on every spec change.
    pub generation: i64,
    /// metadata.creationTimestamp as the API server writes it (RFC 3339 in
    /// UTC, to the second, so text order is time order); None when unknown.
    /// Where Istio lets the oldest of several objects win, this decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub spec: S,
    /// As stored; absent or unreadable status is None (it is only ever rewritten).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::api::ConfigStatus>,
}

impl<S> Config<S> {
    /// Istio's order among objects competing for the same place: the oldest
    /// first (creationTimestamp; an unknown one counts as newest), then by
    /// name, then by namespace.
    pub fn age_order(&self) -> (bool, Option<&str>, &str, &str) {
        (self.created.is_none(), self.created.as_deref(), &self.key.name, &self.key.namespace)
    }
}

/// The mesh-wide settings Istio keeps in its MeshConfig, from the
/// controller's flags.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeshConfig {
    /// Istio's `rootNamespace`: configuration here without a workload
    /// selector applies to the whole mesh (a PeerAuthentication, say).
    pub root_namespace: String,
    /// Istio's `outboundTrafficPolicy.mode`: where a sidecar sends traffic
    /// to a destination the registry does not know.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// What every proxy reports: metrics, access logs.
    pub telemetry: telemetry::Settings,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations are reached as without the mesh (Istio's default).
    #[default]
    AllowAny,
    /// Only Services and ServiceEntries are reached: the rest goes to
    /// `BlackHoleCluster` (HTTP on a known port: 502).
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    /// Istio's names, `ALLOW_ANY` and `REGISTRY_ONLY`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "ALLOW_ANY" => Ok(Self::AllowAny),
            "REGISTRY_ONLY" => Ok(Self::RegistryOnly),
            other => Err(format!("outbound traffic policy {other:?}: expected ALLOW_ANY or REGISTRY_ONLY")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowAny => "ALLOW_ANY",
            Self::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

/// Istio's default `rootNamespace`.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            telemetry: telemetry::Settings::default(),
        }
    }
}

/// The entries of one kind, by namespace and name. A persistent map:
/// a clone shares the entries, so the index hands out a snapshot of every
/// store in constant time and readers build from it without its lock.
pub type Store<E> = imbl::OrdMap<ObjectKey, E>;

/// Everything the cluster holds that the mesh reads, by reference: the
/// index hands it out under its lock, and the mesh view, validation's
/// context and status are built from it.
#[derive(Clone, Copy)]
pub struct ClusterState<'a> {
    pub services: &'a Store<Service>,
    pub endpoint_slices: &'a Store<EndpointSlice>,
    pub workloads: &'a Store<Workload>,
    pub namespaces: &'a Store<Namespace>,
    pub virtual_services: &'a Store<Config<VirtualServiceSpec>>,
    pub destination_rules: &'a Store<Config<DestinationRuleSpec>>,
    /// Translated for the gateway proxies they select.
    pub gateways: &'a Store<Config<GatewaySpec>>,
    /// The TLS credentials Secrets hold (gateways' `credentialName`).
    pub credentials: &'a Store<credential::TlsCredential>,
    /// Services of the mesh view beside the Kubernetes Services
    /// ([`service_entry`]).
    pub service_entries: &'a Store<Config<ServiceEntrySpec>>,
    /// Indexed and validated; nothing translates them yet.
    pub sidecars: &'a Store<Config<SidecarSpec>>,
    pub service_roles: &'a Store<Config<ServiceRoleSpec>>,
    pub service_role_bindings: &'a Store<Config<ServiceRoleBindingSpec>>,
    pub cluster_rbac_configs: &'a Store<Config<ClusterRbacConfigSpec>>,
    pub rbac_configs: &'a Store<Config<RbacConfigSpec>>,
    pub peer_authentications: &'a Store<Config<PeerAuthenticationSpec>>,
    pub request_authentications: &'a Store<Config<RequestAuthenticationSpec>>,
    pub policies: &'a Store<Config<PolicySpec>>,
    pub mesh_policies: &'a Store<Config<MeshPolicySpec>>,
    /// The mesh-wide settings (not watched: the controller's flags).
    pub mesh_config: &'a MeshConfig,
}
