//! Gateways as translation reads them (Istio's `model/gateway.go`): which
//! Gateways configure a gateway proxy (those whose `selector` is a subset
//! of its pod's labels, in any namespace, Istio's default), their servers
//! merged by port, which VirtualServices bind to a Gateway (`gateways`
//! entries `name` in the VirtualService's namespace, `namespace/name`, or
//! Istio's legacy `name.namespace`), and the hosts a server admits from a
//! VirtualService (the server host's `namespace/` part, then Istio's
//! `pickMatchingGatewayHosts`). Host names compare by [`super::host`].

use std::collections::BTreeMap;

use super::host;
use super::protocol::Protocol;
use super::{Config, ObjectKey};
use crate::api::gateway::{GatewaySpec, Server, ServerTlsMode};

/// A Gateway, as the mesh view keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayView {
    pub key: ObjectKey,
    pub spec: GatewaySpec,
}

impl GatewayView {
    pub fn of(config: &Config<GatewaySpec>) -> Self {
        Self { key: config.key.clone(), spec: config.spec.clone() }
    }

    /// Whether the Gateway configures a proxy whose pod has `labels`. An
    /// empty selector selects every gateway proxy, as in Istio.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        super::mesh::is_subset(&self.spec.selector, labels)
    }
}

/// The Gateway a `gateways` entry of a VirtualService in `vs_namespace`
/// names; None for `mesh` (the sidecars). Istio's `resolveGatewayName`.
pub fn gateway_key(name: &str, vs_namespace: &str) -> Option<ObjectKey> {
    if name == super::mesh::MESH_GATEWAY || name.is_empty() {
        return None;
    }
    Some(match name.split_once('/') {
        Some((ns, gw)) => ObjectKey::new(ns, gw),
        // The legacy `name.namespace[.svc.cluster.local]` form.
        None => match name.split_once('.') {
            Some((gw, rest)) => ObjectKey::new(rest.split('.').next().unwrap_or(rest), gw),
            None => ObjectKey::new(vs_namespace, name),
        },
    })
}

/// Whether a `gateways` list of a VirtualService in `vs_namespace` names `gateway`.
pub fn names_gateway(gateways: &[String], vs_namespace: &str, gateway: &ObjectKey) -> bool {
    gateways.iter().any(|g| gateway_key(g, vs_namespace).as_ref() == Some(gateway))
}

/// One host of a server: the namespaces whose VirtualServices may bind to
/// it and the host name (`*`, `*.example.com`, `example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    /// None: any namespace (`*/` or no prefix).
    pub namespace: Option<String>,
    pub host: String,
}

impl ServerHost {
    /// `[namespace/]host` of a server of a Gateway in `gateway_namespace`
    /// (`.` is the Gateway's own namespace).
    pub fn parse(written: &str, gateway_namespace: &str) -> Self {
        let (namespace, host) = match written.split_once('/') {
            None | Some(("*", _)) => (None, written.rsplit('/').next().unwrap_or(written)),
            Some((".", host)) => (Some(gateway_namespace.to_string()), host),
            Some((ns, host)) => (Some(ns.to_string()), host),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        Self { namespace, host }
    }

    /// The host a VirtualService of `vs_namespace` gets on this server for
    /// its (resolved) host `vs_host`: the more specific of the two when
    /// one covers the other (Istio's `pickMatchingGatewayHosts`).
    pub fn admits(&self, vs_namespace: &str, vs_host: &str) -> Option<String> {
        if self.namespace.as_deref().is_some_and(|ns| ns != vs_namespace) {
            return None;
        }
        if host::subset_of(&self.host, vs_host) {
            Some(self.host.clone())
        } else if host::subset_of(vs_host, &self.host) {
            Some(vs_host.to_string())
        } else {
            None
        }
    }
}

/// What a gateway port carries, as its first server's protocol says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// HTTP, HTTP2, GRPC: plain HTTP routed by `http` rules.
    Http,
    /// HTTPS or TLS with TLS terminated (SIMPLE, MUTUAL, ISTIO_MUTUAL,
    /// OPTIONAL_MUTUAL): HTTP routed by `http` rules behind it for HTTPS,
    /// the `tcp` rules for TLS.
    Terminated,
    /// HTTPS or TLS passed through: `tls` rules by SNI.
    Passthrough,
    /// TCP and the other opaque protocols: `tcp` rules.
    Tcp,
}

/// The kind of `server`'s port; None for a protocol the mesh does not serve
/// on gateways (UDP, unknown) or a mode it does not apply (AUTO_PASSTHROUGH).
pub fn port_kind(server: &Server) -> Option<PortKind> {
    let protocol = server.port.as_ref().and_then(|p| p.protocol.as_deref()).and_then(Protocol::parse)?;
    let mode = server.tls.as_ref().and_then(|t| t.mode).unwrap_or(ServerTlsMode::Passthrough);
    Some(match protocol {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => PortKind::Http,
        Protocol::Https | Protocol::Tls => match mode {
            ServerTlsMode::Passthrough => PortKind::Passthrough,
            ServerTlsMode::AutoPassthrough => return None,
            _ if protocol == Protocol::Tls => return None,
            _ => PortKind::Terminated,
        },
        Protocol::Tcp | Protocol::Mongo | Protocol::Redis | Protocol::Mysql => PortKind::Tcp,
        Protocol::Udp | Protocol::Unknown => return None,
    })
}

/// One server of a Gateway.
#[derive(Clone, Copy, Debug)]
pub struct BoundServer<'a> {
    pub gateway: &'a GatewayView,
    pub server: &'a Server,
    pub kind: PortKind,
}

impl BoundServer<'_> {
    pub fn hosts(&self) -> impl Iterator<Item = ServerHost> + '_ {
        self.server.hosts.iter().map(|h| ServerHost::parse(h, &self.gateway.key.namespace))
    }

    pub fn port_name(&self) -> &str {
        self.server.port.as_ref().and_then(|p| p.name.as_deref()).unwrap_or_default()
    }
}

/// The servers of `gateways` (oldest Gateway first, as Istio merges them),
/// by port number. A port takes the kind of its first server; a later
/// server of a kind that cannot share the port is left out, as Istio's
/// `MergeGateways` drops conflicting servers. Plain HTTP servers share the
/// port's one route configuration. Servers bound to an address (`bind`) or
/// a Unix socket are left out (`bind` stays pending).
pub fn servers_by_port<'a>(gateways: &[&'a GatewayView]) -> BTreeMap<u16, Vec<BoundServer<'a>>> {
    let mut out: BTreeMap<u16, Vec<BoundServer>> = BTreeMap::new();
    for gateway in gateways {
        for server in &gateway.spec.servers {
            if server.bind.as_deref().is_some_and(|b| !b.is_empty()) {
                continue;
            }
            let Some(number) =
                server.port.as_ref().and_then(|p| p.number).and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            let Some(kind) = port_kind(server) else { continue };
            if number == 0 {
                continue;
            }
            let servers = out.entry(number).or_default();
            let fits = servers.first().is_none_or(|first| compatible(first.kind, kind));
            if fits {
                servers.push(BoundServer { gateway, server, kind });
            }
        }
    }
    out
}

/// Whether two servers can share a port: TLS-based ones (terminated and
/// passed through, told apart by SNI) may; plain HTTP and TCP only with their own kind.
fn compatible(first: PortKind, next: PortKind) -> bool {
    use PortKind::*;
    matches!((first, next), (Http, Http) | (Tcp, Tcp) | (Terminated | Passthrough, Terminated | Passthrough))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_as_istio() {
        assert_eq!(gateway_key("mesh", "default"), None);
        assert_eq!(
            gateway_key("bookinfo-gateway", "default"),
            Some(ObjectKey::new("default", "bookinfo-gateway"))
        );
        assert_eq!(gateway_key("istio-system/edge", "default"), Some(ObjectKey::new("istio-system", "edge")));
        assert_eq!(gateway_key("edge.istio-system", "default"), Some(ObjectKey::new("istio-system", "edge")));
        assert_eq!(
            gateway_key("edge.istio-system.svc.cluster.local", "default"),
            Some(ObjectKey::new("istio-system", "edge"))
        );
        assert!(names_gateway(&["mesh".into(), "edge".into()], "shop", &ObjectKey::new("shop", "edge")));
        assert!(!names_gateway(&["edge".into()], "shop", &ObjectKey::new("other", "edge")));
    }

    #[test]
    fn server_hosts_admit_namespaces_and_the_more_specific_host() {
        let any = ServerHost::parse("*", "gw");
        assert_eq!(any.admits("default", "*"), Some("*".into()));
        assert_eq!(
            any.admits("default", "reviews.default.svc.cluster.local"),
            Some("reviews.default.svc.cluster.local".into())
        );
        let wild = ServerHost::parse("*/*.example.com", "gw");
        assert_eq!(wild.admits("x", "*"), Some("*.example.com".into()));
        assert_eq!(wild.admits("x", "a.example.com"), Some("a.example.com".into()));
        assert_eq!(wild.admits("x", "a.example.org"), None);
        let own = ServerHost::parse("./Shop.Example.com.", "gw");
        assert_eq!(own, ServerHost { namespace: Some("gw".into()), host: "shop.example.com".into() });
        assert_eq!(own.admits("gw", "*.example.com"), Some("shop.example.com".into()));
        assert_eq!(own.admits("other", "*.example.com"), None);
        let named = ServerHost::parse("bookinfo/*", "gw");
        assert_eq!(named.admits("bookinfo", "x.com"), Some("x.com".into()));
        assert_eq!(named.admits("default", "x.com"), None);
    }
}
