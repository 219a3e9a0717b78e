//! Who is on the other end of a stream: the node id Envoy announces
//! (Istio's format, written into the bootstrap by the injector) and, once
//! the stream is authorized, the identity its token proved.

use std::fmt;
use std::net::IpAddr;

use super::auth::TokenIdentity;

/// The node id format the injector writes into every proxy's bootstrap:
/// `sidecar` for a sidecar, `router` for a gateway (Istio's kinds).
pub const NODE_ID_FORMAT: &str =
    "sidecar|router~<pod-ip>~<pod-name>.<namespace>~<namespace>.svc.cluster.local";

/// What a proxy is, as the first part of its node id says (Istio's
/// `NodeType`): a pod's sidecar, or a gateway's Envoy, which gets the
/// listeners of the Gateways that select its pod instead of a sidecar's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    #[default]
    Sidecar,
    Router,
}

impl ProxyKind {
    /// The node id's first part.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        }
    }
}

/// A proxy's node id, parsed: the pod it claims to run in, and its kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyId {
    pub kind: ProxyKind,
    pub ip: IpAddr,
    pub pod: String,
    pub namespace: String,
}

/// A node id that does not follow [`NODE_ID_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node id `{id}` is malformed: {problem}; expected `{NODE_ID_FORMAT}` (the proxy's bootstrap sets it)"
)]
pub struct NodeIdError {
    pub id: String,
    pub problem: &'static str,
}

impl ProxyId {
    /// Parses `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`
    /// (`router~…` for a gateway).
    pub fn parse(id: &str) -> Result<Self, NodeIdError> {
        let fail = |problem| NodeIdError { id: id.to_string(), problem };
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, workload, domain] = parts[..] else {
            return Err(fail("it needs four parts separated by `~`"));
        };
        let kind = match kind {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            _ => return Err(fail("the first part must be `sidecar` or `router`")),
        };
        let ip: IpAddr = ip.parse().map_err(|_| fail("the second part is not an IP address"))?;
        // Pod names may contain dots, namespaces may not: split at the last.
        let (pod, namespace) =
            workload.rsplit_once('.').ok_or(fail("the third part must be `<pod-name>.<namespace>`"))?;
        if pod.is_empty() || namespace.is_empty() {
            return Err(fail("the third part must be `<pod-name>.<namespace>`"));
        }
        let cluster_domain =
            domain.strip_prefix(namespace).and_then(|rest| rest.strip_prefix(".svc.")).ok_or(fail(
                "the fourth part must be `<namespace>.svc.<cluster-domain>`, with the pod's namespace",
            ))?;
        if cluster_domain.is_empty() {
            return Err(fail("the fourth part has no cluster domain"));
        }
        Ok(Self { kind, ip, pod: pod.to_string(), namespace: namespace.to_string() })
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.pod, self.ip)
    }
}

/// An authorized proxy: the pod its node id names, and the identity its
/// token proved (they agree; [`super::auth::authorize`] checked it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub id: ProxyId,
    pub identity: TokenIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istios_node_id() {
        let id = ProxyId::parse(
            "sidecar~10.244.0.7~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local",
        )
        .expect("valid");
        assert_eq!(
            id,
            ProxyId {
                kind: ProxyKind::Sidecar,
                ip: "10.244.0.7".parse().unwrap(),
                pod: "productpage-v1-6b746f74dc-9stvs".into(),
                namespace: "default".into(),
            }
        );
        assert_eq!(id.to_string(), "default/productpage-v1-6b746f74dc-9stvs (10.244.0.7)");
    }

    #[test]
    fn pod_names_may_contain_dots_and_ips_may_be_v6() {
        let id = ProxyId::parse("sidecar~fd00::7~web.v1.shop~shop.svc.example.org").expect("valid");
        assert_eq!((id.pod.as_str(), id.namespace.as_str()), ("web.v1", "shop"));
        assert_eq!(id.ip, "fd00::7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn gateways_announce_themselves_as_routers() {
        let id = ProxyId::parse(
            "router~10.244.0.9~mesh-ingressgateway-5d9c-x2.istio-system~istio-system.svc.cluster.local",
        )
        .expect("valid");
        assert_eq!(id.kind, ProxyKind::Router);
        assert_eq!((id.pod.as_str(), id.namespace.as_str()), ("mesh-ingressgateway-5d9c-x2", "istio-system"));
    }

    #[test]
    fn malformed_ids_say_what_is_wrong_and_what_is_expected() {
        let cases = [
            ("", "four parts"),
            ("sidecar~10.0.0.1~p.default", "four parts"),
            ("gateway~10.0.0.1~p.default~default.svc.cluster.local", "`sidecar` or `router`"),
            ("sidecar~pod-ip~p.default~default.svc.cluster.local", "not an IP"),
            ("sidecar~10.0.0.1~p~default.svc.cluster.local", "`<pod-name>.<namespace>`"),
            ("sidecar~10.0.0.1~.default~default.svc.cluster.local", "`<pod-name>.<namespace>`"),
            ("sidecar~10.0.0.1~p.default~other.svc.cluster.local", "fourth part"),
            ("sidecar~10.0.0.1~p.default~default.svc.", "no cluster domain"),
            ("sidecar~10.0.0.1~p.default~default.svc.cluster.local~x", "four parts"),
        ];
        for (id, problem) in cases {
            let err = ProxyId::parse(id).expect_err(id);
            let text = err.to_string();
            assert!(text.contains(problem), "{id:?}: {text}");
            assert!(text.contains(NODE_ID_FORMAT), "{text}");
        }
    }
}
