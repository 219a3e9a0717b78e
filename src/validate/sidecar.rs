//! networking.istio.io Sidecar, as today's Istio validates it: a workload
//! selector with labels; ingress listeners with a port (number, known
//! protocol), an IP bind, a default endpoint on loopback, any address or a
//! Unix socket, and TLS settings Istio allows there; egress listeners with
//! hosts written `namespace/host`, at most one without a port and that one
//! last, ports unique per bind address; an egress proxy only with ALLOW_ANY.

use std::collections::BTreeSet;

use crate::api::gateway::ServerTlsMode;
use crate::api::sidecar::{CaptureMode, OutboundMode, SidecarPort, SidecarSpec};

use super::Context;
use super::common::*;
use super::gateway::check_server_tls;

pub(super) fn check(spec: &SidecarSpec, out: &mut Out) {
    if let Some(selector) = &spec.workload_selector {
        if selector.labels.is_empty() {
            out.err(
                "spec.workloadSelector.labels",
                "a workloadSelector needs at least one label: add labels, or remove workloadSelector to apply \
                 the Sidecar to the whole namespace",
            );
        }
        check_labels(out, "spec.workloadSelector.labels", &selector.labels);
    }
    if spec.ingress.is_empty()
        && spec.egress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        out.warn(
            "spec",
            "the Sidecar is empty and changes nothing: add ingress, egress or outboundTrafficPolicy",
        );
    }

    let mut ingress_ports = BTreeSet::new();
    for (i, listener) in spec.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        let bind = listener.bind.as_deref().unwrap_or_default();
        match &listener.port {
            None => out.err(
                format!("{path}.port"),
                "an ingress listener needs a port: set number and protocol, e.g. {number: 9080, protocol: HTTP}",
            ),
            Some(port) => {
                check_sidecar_port(port, &format!("{path}.port"), out);
                let number = port.number.unwrap_or(0);
                if !ingress_ports.insert((bind, number)) {
                    out.err(
                        format!("{path}.port.number"),
                        format!("port {number} is used by an earlier ingress listener on the same address: give each its own port"),
                    );
                }
            }
        }
        if !bind.is_empty() && !is_ip(bind) {
            out.err(
                format!("{path}.bind"),
                format!("bind {bind:?} is not an IP address: an ingress listener binds to one of the pod's IPs, or leave it unset"),
            );
        }
        if let Some(endpoint) = listener.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
            check_default_endpoint(out, &format!("{path}.defaultEndpoint"), endpoint);
        }
        if let Some(tls) = &listener.tls {
            let at = format!("{path}.tls");
            if let Some(mode @ (ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough)) = tls.mode {
                let name =
                    if mode == ServerTlsMode::IstioMutual { "ISTIO_MUTUAL" } else { "AUTO_PASSTHROUGH" };
                out.err(
                    format!("{at}.mode"),
                    format!("mode {name} is not allowed on a Sidecar ingress listener: use SIMPLE or MUTUAL (mutual TLS between sidecars is a PeerAuthentication's job)"),
                );
            }
            if tls.https_redirect == Some(true) {
                out.err(
                    format!("{at}.httpsRedirect"),
                    "httpsRedirect is for Gateway servers, not Sidecar ingress listeners: remove it",
                );
            }
            check_server_tls(tls, &at, out);
        }
    }

    let mut egress_ports = BTreeSet::new();
    let mut catch_all = false;
    let last = spec.egress.len().saturating_sub(1);
    for (i, listener) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        let bind = listener.bind.as_deref().unwrap_or_default();
        let capture = listener.capture_mode.unwrap_or(CaptureMode::Default);
        match &listener.port {
            None if catch_all => out.err(
                format!("{path}.port"),
                "only one egress listener may leave out the port: give this one a port, or merge its hosts into \
                 the other",
            ),
            None if i != last => {
                catch_all = true;
                out.err(
                    format!("{path}.port"),
                    "the egress listener without a port catches every other port and must be the last one: move \
                     it to the end of egress",
                );
            }
            None => catch_all = true,
            Some(port) if bind.starts_with(UNIX_PREFIX) => {
                check_unix_address(out, &format!("{path}.bind"), bind);
                if port.number.unwrap_or(0) != 0 {
                    out.err(format!("{path}.port.number"), "a listener on a unix:// socket has no port number: set it to 0 or remove it");
                }
                if capture == CaptureMode::Iptables {
                    out.err(
                        format!("{path}.captureMode"),
                        "iptables cannot redirect to a unix:// socket: use captureMode NONE or DEFAULT",
                    );
                }
                if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty() && !is_dns1123_label(n)) {
                    out.err(format!("{path}.port.name"), format!("port name {name:?} is not a DNS label: use letters, digits and '-'"));
                }
            }
            Some(port) => {
                check_sidecar_port(port, &format!("{path}.port"), out);
                if !bind.is_empty() && !is_ip(bind) {
                    out.err(
                        format!("{path}.bind"),
                        format!("bind {bind:?} is not an IP address or unix:// path: write e.g. \"127.0.0.1\" or leave it unset"),
                    );
                }
                let number = port.number.unwrap_or(0);
                let at = if bind.is_empty() { "0.0.0.0" } else { bind };
                if !egress_ports.insert((at.to_string(), number)) {
                    out.err(
                        format!("{path}.port.number"),
                        format!("port {number} on {at} is used by an earlier egress listener: ports on one address must be unique"),
                    );
                }
            }
        }
        if listener.hosts.is_empty() {
            out.err(
                format!("{path}.hosts"),
                "an egress listener needs at least one host: list namespace/host entries, e.g. [\"./*\", \"istio-system/*\"]",
            );
        }
        let mut seen = BTreeSet::new();
        for (j, host) in listener.hosts.iter().enumerate() {
            let at = format!("{path}.hosts[{j}]");
            check_namespaced_host(out, &at, host, true);
            // Istio compares egress hosts with Services' full names as
            // written: a short name imports nothing.
            if let Some((ns, name)) = host.split_once('/')
                && name != "*"
                && !name.contains('.')
            {
                let ns = if ns == "." || ns == "*" || ns == "~" { "<namespace>" } else { ns };
                out.warn(
                    at.clone(),
                    format!(
                        "{name:?} is not a full name and matches no Service (egress hosts are not completed): \
                         write {name}.{ns}.svc.cluster.local"
                    ),
                );
            }
            if !seen.insert(host.as_str()) {
                out.warn(at, format!("{host:?} is listed twice: remove the duplicate"));
            }
        }
    }

    if let Some(policy) = &spec.outbound_traffic_policy {
        if let Some(proxy) = &policy.egress_proxy {
            if policy.mode != Some(OutboundMode::AllowAny) {
                out.err(
                    "spec.outboundTrafficPolicy.egressProxy",
                    "an egressProxy only takes effect with mode ALLOW_ANY: set mode: ALLOW_ANY, or remove it",
                );
            }
            if let Err(e) = check_fqdn(&proxy.host) {
                out.err(
                    "spec.outboundTrafficPolicy.egressProxy.host",
                    format!("egress proxy host {:?} is not valid ({e}): {HOST_FIX}", proxy.host),
                );
            }
            match proxy.port.as_ref().and_then(|p| p.number) {
                None => out.err(
                    "spec.outboundTrafficPolicy.egressProxy.port",
                    "the egress proxy needs a port: set port: {number: N}",
                ),
                Some(n) => {
                    check_port(out, "spec.outboundTrafficPolicy.egressProxy.port.number", i64::from(n))
                }
            }
        }
    }
}

fn check_sidecar_port(port: &SidecarPort, path: &str, out: &mut Out) {
    check_port(out, &format!("{path}.number"), i64::from(port.number.unwrap_or(0)));
    check_protocol(out, &format!("{path}.protocol"), port.protocol.as_deref());
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty() && !is_dns1123_label(n)) {
        out.err(
            format!("{path}.name"),
            format!("port name {name:?} is not a DNS label: use letters, digits and '-'"),
        );
    }
}

/// Istio's forms of an ingress listener's default endpoint.
fn check_default_endpoint(out: &mut Out, path: &str, endpoint: &str) {
    if endpoint.starts_with(UNIX_PREFIX) {
        return check_unix_address(out, path, endpoint);
    }
    let port = ["127.0.0.1:", "0.0.0.0:", "[::1]:", "[::]:"].iter().find_map(|p| endpoint.strip_prefix(p));
    let fix = "write 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or a unix:// path";
    match port {
        None => out.err(path, format!("{endpoint:?} is not a default endpoint: {fix}")),
        Some(p) => match p.parse::<i64>() {
            Ok(n) if is_port(n) => {}
            _ => out.err(path, format!("{p:?} in {endpoint:?} is not a port from 1 to 65535: {fix}")),
        },
    }
}

/// Istio's analyzer flags two Sidecars without a workloadSelector in one
/// namespace: which one a workload gets is undefined.
pub(super) fn check_siblings(spec: &SidecarSpec, namespace: &str, name: &str, ctx: &Context, out: &mut Out) {
    if spec.workload_selector.is_some() {
        return;
    }
    let Some(known) = ctx.namespace_wide_sidecars(namespace) else { return };
    let others: Vec<&str> = known.into_iter().filter(|n| *n != name).collect();
    if others.is_empty() {
        return;
    }
    // Short: the API server cuts warnings at 256 characters, names included.
    out.warn(
        "spec.workloadSelector",
        format!(
            "Sidecar {} also has no workloadSelector in this namespace, and Istio does not define which \
             one applies: keep one, or add a workloadSelector",
            others.join(", ")
        ),
    );
}
