//! The control plane under test: the mesh's controller, or istiod
//! (`pilot-discovery`) for the side-by-side run (`COMPARE=istiod make
//! bench-xds`). The objects, the proxies and the figures are the same; what
//! differs is what each control plane's own sidecar would present: the
//! token's audience, the root the server's certificate chains to, the name
//! it is served under, and the node metadata (Istio's injected bootstrap
//! sends pilot-agent's; the mesh's sends none).

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::cluster::Layout;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Mesh,
    Istiod,
}

/// The Istio version the simulated pilot-agent reports to istiod: the
/// release line of the pinned module (its VERSION file says 1.31).
const ISTIO_VERSION: &str = "1.31.0";

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Mesh => "mesh",
            Target::Istiod => "istiod",
        }
    }

    /// The audience the control plane's token authenticator accepts
    /// (istiod: `TOKEN_AUDIENCES`, default `istio-ca`).
    pub fn audience(self) -> &'static str {
        match self {
            Target::Mesh => "mesh-ca",
            Target::Istiod => "istio-ca",
        }
    }

    /// The ConfigMap, in every namespace, that holds the root the xDS
    /// server's certificate chains to (key `root-cert.pem` in both).
    pub fn root_config_map(self) -> &'static str {
        match self {
            Target::Mesh => "mesh-ca-root-cert",
            Target::Istiod => "istio-ca-root-cert",
        }
    }

    /// The name the xDS server's certificate holds (TLS SNI and HTTP/2
    /// authority): istiod's own serving certificate names its Service.
    pub fn server_name(self) -> &'static str {
        match self {
            Target::Mesh => "mesh.mesh-system.svc",
            Target::Istiod => "istiod.istio-system.svc",
        }
    }

    /// Whether the sidecars' workload secrets come over this ADS stream.
    /// Istio's sidecar gets them from pilot-agent (SDS over a local
    /// socket, the certificate signed by istiod's CA service), never from
    /// istiod's ADS, so a simulated proxy does not ask istiod for them.
    pub fn serves_secrets(self) -> bool {
        self == Target::Mesh
    }

    /// The node metadata proxy `i` sends in its first request. For istiod,
    /// what pilot-agent puts in an injected sidecar's bootstrap and that
    /// changes what istiod builds or checks: its version, namespace,
    /// ServiceAccount (checked against the token), labels (the pods never
    /// get an IP, so istiod cannot find them and takes the labels from
    /// here), cluster, addresses and capture mode.
    pub fn node_metadata(self, layout: &Layout, i: usize) -> Option<Struct> {
        if self == Target::Mesh {
            return None;
        }
        let text = |s: &str| Value { kind: Some(Kind::StringValue(s.to_string())) };
        let labels = Struct {
            fields: HashMap::from([
                ("app".to_string(), text(&layout.service(i % layout.services.max(1)))),
                ("version".to_string(), text(layout.version(i))),
            ]),
        };
        let fields = HashMap::from([
            ("ISTIO_VERSION".to_string(), text(ISTIO_VERSION)),
            ("NAMESPACE".to_string(), text(&layout.namespace)),
            ("NAME".to_string(), text(&layout.pod(i))),
            ("SERVICE_ACCOUNT".to_string(), text(&layout.account(i))),
            ("WORKLOAD_NAME".to_string(), text(&layout.pod(i))),
            ("LABELS".to_string(), Value { kind: Some(Kind::StructValue(labels)) }),
            ("CLUSTER_ID".to_string(), text("Kubernetes")),
            ("MESH_ID".to_string(), text("cluster.local")),
            ("INSTANCE_IPS".to_string(), text(&layout.pod_ip(i))),
            ("INTERCEPTION_MODE".to_string(), text("REDIRECT")),
        ]);
        Some(Struct { fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &Struct, key: &str) -> String {
        match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn istiod_gets_the_metadata_that_matches_the_token_and_the_node_id() {
        let layout = Layout { namespace: "bench".into(), services: 3, proxies: 8, accounts: 4, endpoints: 1 };
        assert!(Target::Mesh.node_metadata(&layout, 5).is_none());
        let m = Target::Istiod.node_metadata(&layout, 5).expect("istiod gets metadata");
        assert_eq!(string(&m, "SERVICE_ACCOUNT"), layout.account(5));
        assert_eq!(string(&m, "NAMESPACE"), "bench");
        // The address istiod takes for the proxy is the node id's.
        let ip = string(&m, "INSTANCE_IPS");
        assert_eq!(layout.node_id(5).split('~').nth(1), Some(ip.as_str()));
        let Some(Kind::StructValue(labels)) = m.fields["LABELS"].kind.as_ref() else { panic!("LABELS") };
        assert_eq!(labels.fields.len(), 2);
        assert!(matches!(&labels.fields["app"].kind, Some(Kind::StringValue(v)) if v == "svc-0002"));
        assert!(matches!(&labels.fields["version"].kind, Some(Kind::StringValue(v)) if v == "v2"));
    }
}
