//! The app's probes, sent through Envoy. Once a pod's inbound ports require
//! mutual TLS, the kubelet's plaintext httpGet, tcpSocket and grpc probes
//! to the app's ports would fail. As Istio does, the injector rewrites each
//! of them to an httpGet on port 15020 (which inbound capture leaves alone),
//! path `/app-health/<container>/readyz|livez|startupz`; Envoy's app-health
//! listener there (`bootstrap::with_app_health`) checks the app on loopback
//! and answers. There is no agent in the pod: the checks are Envoy's own.
//!
//! What was rewritten is recorded on the sidecar, in Istio's environment
//! variable `ISTIO_KUBE_APP_PROBERS`: a JSON map from each new path to the
//! original check (named ports resolved) and its timeout.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, Pod, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::InjectError;
use super::bootstrap::{ADMIN_PORT, HEALTH_PORT, PROMETHEUS_PORT};

/// Where Envoy serves the rewritten probes, Istio's status port.
pub const APP_HEALTH_PORT: u16 = 15020;
/// The sidecar's environment variable holding the original probes, as in Istio.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Which of a container's probes, with Istio's path suffix for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Readiness, ProbeKind::Liveness, ProbeKind::Startup];

    /// The container's field, as in the pod's JSON.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readyz",
            ProbeKind::Liveness => "livez",
            ProbeKind::Startup => "startupz",
        }
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Startup => container.startup_probe.as_ref(),
        }
    }
}

/// What Envoy checks on the app's behalf, on 127.0.0.1.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Forwarded: the app's status is the answer.
    Http {
        port: u16,
        /// Path and query, as the kubelet would ask for them.
        path: String,
        https: bool,
        /// The probe's httpHeaders, Host among them if it sets one.
        headers: Vec<(String, String)>,
    },
    /// Healthy while a connection to the port succeeds.
    Tcp { port: u16 },
    /// Healthy while gRPC health checking answers SERVING.
    Grpc { port: u16, service: Option<String> },
}

/// One probe of one app container, as rewritten.
#[derive(Clone, Debug, PartialEq)]
pub struct AppProbe {
    /// Index in `spec.containers`.
    pub index: usize,
    pub container: String,
    pub kind: ProbeKind,
    pub check: Check,
    /// The probe as the pod had it, its named port resolved.
    pub original: Probe,
}

impl AppProbe {
    /// The path the kubelet asks for on 15020.
    pub fn path(&self) -> String {
        format!("/app-health/{}/{}", self.container, self.kind.suffix())
    }

    /// The name of Envoy's cluster that reaches the app for this probe.
    pub fn cluster(&self) -> String {
        format!("app-health|{}|{}", self.container, self.kind.suffix())
    }

    /// The kubelet's defaults, as the API server fills them in.
    pub fn timeout_seconds(&self) -> i32 {
        self.original.timeout_seconds.unwrap_or(1).max(1)
    }

    pub fn period_seconds(&self) -> i32 {
        self.original.period_seconds.unwrap_or(10).max(1)
    }

    /// The probe the container gets instead: the same timing, an httpGet to Envoy.
    pub fn rewritten(&self) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some(self.path()),
                port: IntOrString::Int(APP_HEALTH_PORT.into()),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            exec: None,
            grpc: None,
            tcp_socket: None,
            ..self.original.clone()
        }
    }
}

/// The probes to rewrite: every httpGet, tcpSocket and grpc probe of the
/// pod's containers. Left as they are: exec probes (they run inside the
/// container, not over the network), probes of another host (the pod's
/// mTLS does not apply to them), probes of the sidecar's own uncaptured
/// ports, and probes on a named port the container does not declare (the
/// kubelet fails those as it would without the mesh).
pub fn app_probes(pod: &Pod) -> Result<Vec<AppProbe>, InjectError> {
    let mut probes = Vec::new();
    for (index, container) in pod.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.of(container) else { continue };
            let Some((check, original)) = envoy_check(container, kind, probe)? else { continue };
            probes.push(AppProbe { index, container: container.name.clone(), kind, check, original });
        }
    }
    Ok(probes)
}

/// What Envoy checks for one probe, and the probe with its port resolved;
/// None when the probe stays as it is.
fn envoy_check(
    container: &Container,
    kind: ProbeKind,
    probe: &Probe,
) -> Result<Option<(Check, Probe)>, InjectError> {
    let resolved = |port: &IntOrString| {
        resolve(container, port)
            .filter(|p| ![APP_HEALTH_PORT, HEALTH_PORT, PROMETHEUS_PORT, ADMIN_PORT].contains(p))
    };
    let mut original = probe.clone();
    if let Some(http) = &probe.http_get {
        let (None, Some(port)) = (http.host.as_deref().filter(|h| !h.is_empty()), resolved(&http.port))
        else {
            return Ok(None);
        };
        let path = match http.path.as_deref().unwrap_or_default() {
            "" => "/".to_string(),
            p if p.starts_with('/') => p.to_string(),
            p => format!("/{p}"),
        };
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        let bad = std::iter::once(&path)
            .chain(headers.iter().flat_map(|(k, v)| [k, v]))
            .find(|t| t.chars().any(char::is_control))
            .cloned();
        if let Some(bad) = bad {
            return Err(InjectError::Invalid(format!(
                "container {}: {}.httpGet has a control character in {bad:?}, which Envoy cannot \
                 forward; fix the probe, or keep it as it is with {}: \"false\"",
                container.name,
                kind.field(),
                super::annotations::REWRITE_PROBES,
            )));
        }
        let https = http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        original.http_get = Some(HTTPGetAction { port: IntOrString::Int(port.into()), ..http.clone() });
        return Ok(Some((Check::Http { port, path, https, headers }, original)));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let (None, Some(port)) = (tcp.host.as_deref().filter(|h| !h.is_empty()), resolved(&tcp.port)) else {
            return Ok(None);
        };
        original.tcp_socket = Some(TCPSocketAction { port: IntOrString::Int(port.into()), ..tcp.clone() });
        return Ok(Some((Check::Tcp { port }, original)));
    }
    if let Some(grpc) = &probe.grpc {
        let Some(port) = resolved(&IntOrString::Int(grpc.port)) else { return Ok(None) };
        let service = grpc.service.clone().filter(|s| !s.is_empty());
        original.grpc = Some(GRPCAction { port: port.into(), ..grpc.clone() });
        return Ok(Some((Check::Grpc { port, service }, original)));
    }
    Ok(None)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve(container: &Container, port: &IntOrString) -> Option<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))?
                .container_port
        }
    };
    u16::try_from(number).ok().filter(|p| *p != 0)
}

/// The original probes as Istio records them in `ISTIO_KUBE_APP_PROBERS`:
/// `{"/app-health/<container>/readyz": {"httpGet": {...}, "timeoutSeconds": 1}, ...}`.
pub fn recorded(probes: &[AppProbe]) -> Result<String, InjectError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Prober<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        http_get: Option<&'a HTTPGetAction>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tcp_socket: Option<&'a TCPSocketAction>,
        #[serde(skip_serializing_if = "Option::is_none")]
        grpc: Option<&'a GRPCAction>,
        timeout_seconds: i32,
    }
    let map: BTreeMap<String, Prober<'_>> = probes
        .iter()
        .map(|p| {
            let o = &p.original;
            let prober = Prober {
                http_get: o.http_get.as_ref(),
                tcp_socket: o.tcp_socket.as_ref(),
                grpc: o.grpc.as_ref(),
                timeout_seconds: p.timeout_seconds(),
            };
            (p.path(), prober)
        })
        .collect();
    serde_json::to_string(&map).map_err(|e| InjectError::Invalid(format!("recording the probes: {e}")))
}
