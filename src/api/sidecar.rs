//! `Sidecar` (networking.istio.io/v1alpha3, also served as v1beta1 and
//! v1): narrows what a workload's sidecar proxy accepts and reaches. Its
//! ingress listeners say how inbound ports are exposed, its egress
//! listeners which services (by `namespace/host`) the proxy is configured
//! for, and the outbound traffic policy what happens to traffic for hosts
//! it does not know. Without a workload selector it applies to every
//! workload of its namespace that no other Sidecar selects. Fields follow
//! Istio's current `networking/v1alpha3/sidecar.proto`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::destination_rule::ConnectionPoolSettings;
use crate::api::gateway::ServerTlsSettings;
use crate::api::networking::WorkloadLabels;
use crate::api::status::ConfigStatus;
use crate::api::virtual_service::Destination;

/// What a workload's sidecar proxy listens on and is configured to reach.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "Sidecar",
    namespaced,
    status = "ConfigStatus",
    derive = "PartialEq",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "An Istio sidecar configuration: the inbound ports a workload's sidecar exposes, the services (namespace/host) it is configured to reach, and what it does with traffic for unknown hosts."
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The pods (in this namespace) this configuration applies to, by
    /// their labels. Without it, it applies to every workload of the
    /// namespace that no Sidecar with a selector picks; a namespace should
    /// have at most one such Sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabels>,

    /// The inbound ports of the workload: how traffic to each is accepted
    /// and where it is forwarded. Unset: the ports of the workload's
    /// Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,

    /// The outbound listeners: which services, by `namespace/host`, the
    /// proxy is configured for, per port or (one listener without a port,
    /// listed last) for every other port. Unset: every service exported to
    /// the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,

    /// What the proxy does with outbound traffic for hosts it is not
    /// configured for. Unset: the mesh-wide setting (ALLOW_ANY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,

    /// Connection pool limits for inbound connections to the workload, for
    /// every ingress listener that sets none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
}

/// One inbound port of the workload (Istio's `IstioIngressListener`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioIngressListener {
    /// The port the proxy accepts traffic on, with its protocol. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,

    /// The IP address the listener binds to, e.g. "172.16.1.32"; the
    /// pod's addresses when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// How traffic reaches the listener: DEFAULT (as the mesh captures it),
    /// IPTABLES (redirected by iptables) or NONE (sent to the listener's
    /// address directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,

    /// Where the proxy forwards the port's traffic: "127.0.0.1:PORT",
    /// "0.0.0.0:PORT", "[::1]:PORT", "[::]:PORT" or a `unix://` path, e.g.
    /// "127.0.0.1:8080". Unset: the application's port as the Service
    /// names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,

    /// TLS the proxy terminates on this port instead of mutual TLS between
    /// sidecars (SIMPLE or MUTUAL with the given certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,

    /// Connection pool limits for this port's inbound connections, over
    /// `inboundConnectionPool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// One outbound listener (Istio's `IstioEgressListener`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioEgressListener {
    /// The port the listener is for. Unset: every port no other egress
    /// listener names; at most one listener may leave it out, and it must
    /// be the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,

    /// The address (IP, or `unix://` path) the listener binds to, e.g.
    /// "127.0.0.1" for an application that calls the proxy directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// How outbound traffic reaches the listener: DEFAULT, IPTABLES or NONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,

    /// The services this listener is configured for, each `namespace/host`:
    /// the namespace "*" (any), "." (this one), "~" (none) or a name; the
    /// host a DNS name, "*" or "*.suffix", e.g. "istio-system/*" or
    /// "./reviews.default.svc.cluster.local". At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A port of a Sidecar listener (Istio's `SidecarPort`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    /// The port number, 1-65535, e.g. 9080 (0 only for a listener bound to
    /// a `unix://` socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,

    /// The protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL,
    /// REDIS, TCP or TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// A name for the port, a DNS label, e.g. "http".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Deprecated and ignored by Istio: the port on the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// How traffic reaches a Sidecar listener: DEFAULT (as the mesh captures
/// traffic), IPTABLES (redirected by iptables) or NONE (no capture: the
/// application sends to the listener's bind address).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The mesh's default capture.
    Default,
    /// Redirected by iptables.
    Iptables,
    /// Not captured.
    None,
}

/// What happens to outbound traffic for hosts the proxy is not
/// configured for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// ALLOW_ANY (pass it through unchanged) or REGISTRY_ONLY (refuse it:
    /// only hosts in the registry, Services and ServiceEntries, are
    /// reachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundMode>,

    /// With ALLOW_ANY: send traffic for unknown hosts to this service (an
    /// egress proxy) instead of its original destination; the host and the
    /// port number are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// ALLOW_ANY (traffic for unknown hosts passes through) or REGISTRY_ONLY
/// (it is refused).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Only hosts in the registry are reachable.
    RegistryOnly,
    /// Unknown hosts are reached at their original destination.
    AllowAny,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_has_enums() {
        let crd = Sidecar::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("sidecars.networking.istio.io"));
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["outboundTrafficPolicy"]["properties"]["mode"]["enum"],
            json!(["REGISTRY_ONLY", "ALLOW_ANY"])
        );
        assert_eq!(
            spec["egress"]["items"]["properties"]["captureMode"]["enum"],
            json!(["DEFAULT", "IPTABLES", "NONE"])
        );
    }

    const FULL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: ratings, namespace: prod}
spec:
  workloadSelector: {labels: {app: ratings}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: somename, targetPort: 9080}
    bind: 172.16.1.32
    captureMode: IPTABLES
    defaultEndpoint: 127.0.0.1:8080
    tls: {mode: SIMPLE, credentialName: ratings-cert}
    connectionPool: {tcp: {maxConnections: 10}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: egresshttp}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["prod-us1/*"]
  - hosts: ["istio-system/*"]
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: egress.example.com, port: {number: 443}}
  inboundConnectionPool: {http: {http1MaxPendingRequests: 100}}
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let sc: Sidecar = serde_yaml_ng::from_str(FULL).unwrap();
        assert_eq!(sc.spec.egress[0].capture_mode, Some(CaptureMode::None));
        assert_eq!(serde_json::to_value(&sc).unwrap(), doc);
    }
}
