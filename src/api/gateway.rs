//! `Gateway` (networking.istio.io/v1alpha3, also served as v1beta1 and v1):
//! a load balancer at the edge of the mesh, the ports a set of gateway
//! proxies (picked by their labels) listen on, the hosts each port admits,
//! and the TLS it terminates or passes through. VirtualServices bind to a
//! Gateway by name to route what it admits. Fields follow Istio's current
//! `networking/v1alpha3/gateway.proto`; `ServerTlsSettings` is shared with
//! the Sidecar's ingress listeners, as in Istio.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::status::ConfigStatus;

/// The ports, hosts and TLS of a set of gateway proxies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "Gateway",
    namespaced,
    status = "ConfigStatus",
    derive = "PartialEq",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "An Istio gateway: the ports, hosts and TLS settings of the gateway proxies (ingress or egress) whose pods carry the selector's labels. VirtualServices bind to it by name to route the traffic it admits."
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The ports the gateway listens on, each with the hosts it admits and
    /// its TLS settings. At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,

    /// Labels of the gateway proxy pods this configuration applies to, e.g.
    /// `{istio: ingressgateway}`. Istio looks for them in every namespace
    /// unless its PILOT_SCOPE_GATEWAY_TO_NAMESPACE setting is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One port of the gateway: what it listens on, which hosts it admits and
/// how it handles TLS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// The port the proxy listens on, with its protocol and name. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,

    /// The address (IP, or `unix://` path) the listener binds to instead of
    /// every address of the pod, e.g. "10.0.0.1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// The hosts this port admits, each `[namespace/]host`: the host is a
    /// DNS name with an optional leading wildcard ("*.example.com", "*"),
    /// the namespace ("*" any, "." the gateway's own, or a name) limits
    /// which namespaces' VirtualServices may bind. At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// TLS settings: redirect plain HTTP to HTTPS, or terminate or pass
    /// through TLS. Required for HTTPS and TLS ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,

    /// Where the gateway forwards traffic that no route claims, as
    /// "127.0.0.1:PORT" or a `unix://` path. Istio does not implement it
    /// for gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,

    /// A name for the server, unique within the gateway, shown in
    /// telemetry (e.g. "bookinfo-https").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A port a proxy listens on (Istio's `Port`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// The port number, 1-65535, e.g. 443. Required (it may be 0 only when
    /// the server binds to a `unix://` socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,

    /// The protocol of the port: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO,
    /// MYSQL, REDIS, TCP or TLS (TLS means the proxy routes by SNI without
    /// terminating). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// A name for the port, e.g. "https". Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Deprecated: the port on the endpoint traffic is forwarded to. It has
    /// no effect on a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// How a server handles TLS (Istio's `ServerTLSSettings`): as a gateway
/// server's or a Sidecar ingress listener's `tls`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    /// On a plain HTTP port: answer every request with a 301 redirect to
    /// HTTPS. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,

    /// What the server does with TLS; PASSTHROUGH when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,

    /// Path of the server's certificate file (PEM), e.g.
    /// "/etc/certs/server.pem". With `privateKey`, required for SIMPLE and
    /// MUTUAL unless `credentialName` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,

    /// Path of the server's private key file (PEM), e.g.
    /// "/etc/certs/privatekey.pem".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    /// Path of the CA certificates file (PEM) client certificates are
    /// verified with, e.g. "/etc/certs/ca.pem". Required for MUTUAL unless
    /// `credentialName` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,

    /// Path of a certificate revocation list file (PEM) client
    /// certificates are checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,

    /// Name of a Secret, in the gateway proxy's namespace, holding the
    /// server certificate and key (and the CA certificates for MUTUAL),
    /// instead of file paths, e.g. "bookinfo-credential".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,

    /// Up to two Secret names (one RSA, one ECDSA certificate) instead of
    /// `credentialName`; do not set both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,

    /// Subject alternative names a client certificate must carry one of,
    /// e.g. ["spiffe://cluster.local/ns/default/sa/client"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,

    /// Base64-encoded SHA-256 hashes of the SPKI of client certificates
    /// that are accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,

    /// Hex-encoded SHA-256 hashes of client certificates that are accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,

    /// The oldest TLS version accepted: TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2
    /// or TLSV1_3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,

    /// The newest TLS version accepted: TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2
    /// or TLSV1_3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,

    /// The cipher suites offered, by their OpenSSL names, e.g.
    /// ["ECDHE-ECDSA-AES256-GCM-SHA384"]; Envoy's defaults when unset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

// Each enum's doc comment doubles as the description of the field that
// holds it, so it names the field's purpose and values.

/// What the server does with TLS: PASSTHROUGH (route by SNI, do not
/// terminate), SIMPLE (terminate), MUTUAL (terminate and require a client
/// certificate), AUTO_PASSTHROUGH (route by SNI to the service the SNI
/// names, without a VirtualService), ISTIO_MUTUAL (terminate with the
/// mesh's own certificates) or OPTIONAL_MUTUAL (terminate, verify a client
/// certificate when one is sent).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the TLS connection unchanged, chosen by its SNI.
    Passthrough,
    /// Terminate TLS with the given server certificate.
    Simple,
    /// Terminate TLS and require a client certificate signed by the CA.
    Mutual,
    /// Forward by SNI to the service the SNI names; no VirtualService.
    AutoPassthrough,
    /// Terminate mutual TLS with the mesh's workload certificates.
    IstioMutual,
    /// Terminate TLS; verify a client certificate if one is presented.
    OptionalMutual,
}

/// A TLS protocol version: TLS_AUTO (Envoy's default), TLSV1_0, TLSV1_1,
/// TLSV1_2 or TLSV1_3.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum TlsProtocol {
    /// Envoy's default.
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    Tlsv1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    Tlsv1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    Tlsv1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    Tlsv1_3,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    #[test]
    fn crd_is_namespaced_networking_with_enums() {
        let crd = Gateway::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("gateways.networking.istio.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["gw".to_string()]));
        let v = serde_json::to_value(&crd).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let tls = &spec["servers"]["items"]["properties"]["tls"]["properties"];
        assert_eq!(
            tls["mode"]["enum"],
            json!(["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"])
        );
        assert_eq!(
            tls["minProtocolVersion"]["enum"],
            json!(["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"])
        );
        assert_eq!(spec["selector"]["type"], "object");
    }

    const FULL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}
    hosts: ["bookinfo/*.example.com"]
    tls: {httpsRedirect: true}
    name: plain
    bind: 0.0.0.0
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/server.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      caCrl: /etc/certs/crl.pem
      credentialName: ""
      credentialNames: [a, b]
      subjectAltNames: [client.example.com]
      verifyCertificateSpki: [abc]
      verifyCertificateHash: [def]
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
"#;

    #[test]
    fn every_field_round_trips() {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let gw: Gateway = serde_yaml_ng::from_str(FULL).unwrap();
        let tls = gw.spec.servers[1].tls.as_ref().unwrap();
        assert_eq!(tls.mode, Some(ServerTlsMode::Mutual));
        assert_eq!(tls.min_protocol_version, Some(TlsProtocol::Tlsv1_2));
        assert_eq!(serde_json::to_value(&gw).unwrap(), doc);
    }
}
