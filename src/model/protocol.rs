//! The application protocol of a Service port, as Istio infers it: from
//! `appProtocol` when set, else from the port's name (`http`, `http-web`,
//! `grpc-api`: the part before the first `-`), case-insensitively.
//!
//! Istio sniffs ports whose protocol it cannot infer. Here such ports are
//! treated as opaque TCP, which is what sniffing concludes for anything but
//! HTTP; HTTP on an unnamed port is still proxied, only as bytes (it is not
//! routed by VirtualServices, as Istio would after sniffing).

use serde::Serialize;

/// What the mesh does with a port's traffic follows from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    /// TLS carrying HTTP; the proxy only sees bytes.
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    /// Not captured by the sidecar at all (iptables redirect TCP only).
    Udp,
    /// Neither `appProtocol` nor the name say: Istio would sniff, we treat it as TCP.
    Unknown,
}

impl Protocol {
    /// Infers a port's protocol. `l4` is the Kubernetes protocol (TCP, UDP,
    /// SCTP); only TCP ports carry mesh traffic.
    pub fn infer(name: &str, app_protocol: Option<&str>, l4: &str) -> Protocol {
        if l4.eq_ignore_ascii_case("UDP") || l4.eq_ignore_ascii_case("SCTP") {
            return Protocol::Udp;
        }
        if let Some(app) = app_protocol.and_then(Self::from_app_protocol) {
            return app;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        Self::parse(prefix).unwrap_or(Protocol::Unknown)
    }

    /// `appProtocol` may also carry Kubernetes' own names for HTTP variants.
    fn from_app_protocol(value: &str) -> Option<Protocol> {
        match value.to_ascii_lowercase().as_str() {
            "kubernetes.io/h2c" => Some(Protocol::Http2),
            "kubernetes.io/ws" => Some(Protocol::Http),
            "kubernetes.io/wss" => Some(Protocol::Https),
            other => Self::parse(other),
        }
    }

    /// A protocol by Istio's name for it, any case (`HTTP`, `grpc-web`); `None`
    /// for a name Istio does not know.
    pub fn parse(value: &str) -> Option<Protocol> {
        Some(match value.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// Routed by an HTTP connection manager (VirtualService `http` rules apply).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Spoken as HTTP/2 to the upstream.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Carried by the sidecar at all (TCP underneath).
    pub fn is_captured(self) -> bool {
        self != Protocol::Udp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_from_the_name_prefix_or_app_protocol() {
        let cases = [
            ("http", None, "TCP", Protocol::Http),
            ("http-web", None, "TCP", Protocol::Http),
            ("HTTP2", None, "TCP", Protocol::Http2),
            ("grpc-api", None, "TCP", Protocol::Grpc),
            ("https", None, "TCP", Protocol::Https),
            ("tcp-db", None, "TCP", Protocol::Tcp),
            ("mongo", None, "TCP", Protocol::Mongo),
            ("redis-main", None, "TCP", Protocol::Redis),
            ("mysql", None, "TCP", Protocol::Mysql),
            ("tls", None, "TCP", Protocol::Tls),
            ("web", None, "TCP", Protocol::Unknown),
            ("", None, "TCP", Protocol::Unknown),
            ("httpx", None, "TCP", Protocol::Unknown),
            ("web", Some("http"), "TCP", Protocol::Http),
            ("http", Some("grpc"), "TCP", Protocol::Grpc),
            ("web", Some("grpc-web"), "TCP", Protocol::GrpcWeb),
            ("web", Some("kubernetes.io/h2c"), "TCP", Protocol::Http2),
            ("web", Some("example.com/custom"), "TCP", Protocol::Unknown),
            ("http", None, "UDP", Protocol::Udp),
        ];
        for (name, app, l4, expected) in cases {
            assert_eq!(Protocol::infer(name, app, l4), expected, "{name} {app:?} {l4}");
        }
    }

    #[test]
    fn http_kinds() {
        assert!(Protocol::Grpc.is_http() && Protocol::Grpc.is_http2());
        assert!(Protocol::Http.is_http() && !Protocol::Http.is_http2());
        assert!(!Protocol::Https.is_http() && !Protocol::Unknown.is_http());
    }
}
