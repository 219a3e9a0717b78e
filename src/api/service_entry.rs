//! `ServiceEntry` (networking.istio.io/v1alpha3, also served as v1beta1
//! and v1): a service added to the mesh's registry by hand, usually one
//! outside the cluster (an external API, a database on a VM), with its
//! ports, how its addresses are found (resolution) and its endpoints.
//! Fields follow Istio's current `networking/v1alpha3/service_entry.proto`
//! and, for the endpoints, `workload_entry.proto`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::networking::WorkloadLabels;
use crate::api::status::ConfigStatus;

/// A service the mesh's registry does not learn from Kubernetes.
// Three printer columns are `type_ = "string"`, which clippy mistakes for
// a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "ServiceEntry",
    namespaced,
    status = "ConfigStatus",
    derive = "PartialEq",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hosts",
        description = "The host names the service entry adds to the registry."
    ),
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".spec.location",
        description = "Whether the service is part of the mesh (MESH_INTERNAL) or not (MESH_EXTERNAL)."
    ),
    printcolumn(
        name = "Resolution",
        type_ = "string",
        json_path = ".spec.resolution",
        description = "How the proxy finds the service's endpoints: NONE, STATIC, DNS or DNS_ROUND_ROBIN."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "An Istio service entry: adds a service, usually one outside the cluster, to the mesh's registry, with its host names, ports, how its endpoints are found and, optionally, the endpoints themselves."
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// The host names of the service, matched against the HTTP Host or
    /// Authority header, or the TLS SNI, e.g. "api.example.com"; a leading
    /// "*." wildcard is allowed. VirtualServices and DestinationRules name
    /// the service by these. At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// Virtual IP addresses or CIDR blocks of the service, e.g.
    /// "192.168.10.0/24"; traffic to them is treated as traffic to the
    /// service (required for a TCP port unless the hosts are enough).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,

    /// The ports of the service. Numbers and names must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,

    /// MESH_EXTERNAL (the default: outside the mesh, no mutual TLS) or
    /// MESH_INTERNAL (part of the mesh, such as a VM with a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,

    /// How the proxy finds the service's endpoints: NONE (the original
    /// destination of the connection), STATIC (the IP addresses in
    /// `endpoints`), DNS (resolve the hosts, or the endpoints' names,
    /// using every address) or DNS_ROUND_ROBIN (resolve, use the first
    /// address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,

    /// The endpoints of the service. With STATIC resolution they are IP
    /// addresses (or `unix://` paths); with DNS they may be host names.
    /// Not allowed with NONE or together with `workloadSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,

    /// Selects the service's endpoints among the pods and WorkloadEntries
    /// of this namespace by their labels (MESH_INTERNAL services only),
    /// instead of listing `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabels>,

    /// Namespaces whose sidecars and gateways see this service: "." for
    /// this namespace only, "*" for all, "~" for none. Unset exports to all
    /// namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,

    /// Identities (subject alternative names) the service's certificates
    /// must carry one of when it is reached with mutual TLS, e.g.
    /// ["spiffe://cluster.local/ns/vm/sa/mysql"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A port of a ServiceEntry (Istio's `ServicePort`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port number, 1-65535, e.g. 443. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,

    /// The protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL,
    /// REDIS, TCP, TLS or UDP, e.g. "HTTPS".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// A name for the port, a DNS label unique in the entry, e.g. "https".
    /// Endpoints' `ports` refer to it. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// The port on the endpoints traffic is sent to, when it differs from
    /// `number`, e.g. 8443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Whether the service is part of the mesh: MESH_EXTERNAL (the default;
/// reached without mutual TLS) or MESH_INTERNAL (its workloads run
/// sidecars, such as VMs in the mesh).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh.
    MeshExternal,
    /// Inside the mesh.
    MeshInternal,
}

/// How the proxy finds the service's endpoints: NONE (the default: the
/// connection's original destination address), STATIC (the addresses
/// listed in `endpoints`), DNS (resolve every address of the hosts or of
/// the endpoints' names) or DNS_ROUND_ROBIN (resolve and connect to the
/// first address only).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// The connection's original destination.
    None,
    /// The addresses in `endpoints`.
    Static,
    /// Every address DNS answers with.
    Dns,
    /// The first address DNS answers with.
    DnsRoundRobin,
}

/// One endpoint of a ServiceEntry, in the shape of Istio's
/// `WorkloadEntry`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// The endpoint's address: an IP address, a host name (DNS resolution
    /// only) or a `unix://` socket path, e.g. "10.1.2.3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Port numbers on this endpoint by the entry's port names, e.g.
    /// `{https: 8443}`, when they differ from the entry's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,

    /// Labels of the endpoint, which DestinationRule subsets select on,
    /// e.g. {version: v1}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// The network the endpoint is on, for multi-network meshes, e.g.
    /// "vpc1". Unset: the same network as the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,

    /// Where the endpoint runs, as region/zone/sub-zone, e.g.
    /// "us-east1/us-east1-b", for locality load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,

    /// The endpoint's share of traffic relative to the others, e.g. 20;
    /// equal shares when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,

    /// The Kubernetes ServiceAccount of the endpoint's workload (in the
    /// entry's namespace), whose identity a MESH_INTERNAL endpoint
    /// presents, e.g. "mysql".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_has_enums_and_columns() {
        let crd = ServiceEntry::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("serviceentries.networking.istio.io"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["se".to_string()]));
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["location"]["enum"], json!(["MESH_EXTERNAL", "MESH_INTERNAL"]));
        assert_eq!(spec["resolution"]["enum"], json!(["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]));
        assert!(spec["workloadSelector"]["properties"]["labels"].is_object());
    }

    const FULL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: mysql, namespace: vm}
spec:
  hosts: [mysql.example.com]
  addresses: [192.168.10.0/24]
  ports:
  - {number: 3306, protocol: TCP, name: mysql, targetPort: 13306}
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 192.168.10.1
    ports: {mysql: 3307}
    labels: {version: v1}
    network: vpc1
    locality: us-east1/us-east1-b
    weight: 20
    serviceAccount: mysql
  exportTo: ["."]
  subjectAltNames: ["spiffe://cluster.local/ns/vm/sa/mysql"]
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let se: ServiceEntry = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(se.spec.resolution, Some(Resolution::Static));
        assert_eq!(se.spec.endpoints[0].ports["mysql"], 3307);
        assert_eq!(serde_json::to_value(&se).unwrap(), doc);
    }
}
