//! networking.istio.io Gateway, as today's Istio validates it: at least one
//! server; each with a port (number 1-65535, a known protocol, a name),
//! hosts of the form `[namespace/]host`, and TLS settings that fit the
//! protocol and mode; server names unique. Also the server TLS settings
//! the Sidecar's ingress listeners share ([`check_server_tls`]).

use std::collections::BTreeSet;

use crate::api::gateway::{GatewaySpec, Port, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::model::protocol::Protocol;

use super::common::*;

pub(super) fn check(spec: &GatewaySpec, out: &mut Out) {
    check_labels(out, "spec.selector", &spec.selector);
    if spec.servers.is_empty() {
        out.err(
            "spec.servers",
            "a Gateway needs at least one server: add one with a port and hosts, e.g. \
             {port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}",
        );
    }
    let mut names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        check_server(server, &path, out);
        if let Some(name) = server.name.as_deref().filter(|n| !n.is_empty()) {
            if !names.insert(name) {
                out.err(
                    format!("{path}.name"),
                    format!(
                        "server name {name:?} is used by an earlier server: give each server its own name"
                    ),
                );
            }
        }
    }
}

fn check_server(server: &Server, path: &str, out: &mut Out) {
    let bind = server.bind.as_deref().unwrap_or_default();
    match &server.port {
        None => out.err(
            format!("{path}.port"),
            "the port is required: set number, name and protocol, e.g. {number: 80, name: http, protocol: HTTP}",
        ),
        Some(port) => check_server_port(port, bind, &format!("{path}.port"), out),
    }
    if !bind.is_empty() {
        if bind.starts_with(UNIX_PREFIX) {
            check_unix_address(out, &format!("{path}.bind"), bind);
        } else if !is_ip(bind) {
            out.err(
                format!("{path}.bind"),
                format!("bind {bind:?} is not an IP address or unix:// path: write e.g. \"0.0.0.0\" or leave it unset"),
            );
        }
    }
    if server.hosts.is_empty() {
        out.err(
            format!("{path}.hosts"),
            "a server needs at least one host: list the hosts it admits, e.g. [\"*\"] or \
             [\"bookinfo/*.example.com\"]",
        );
    }
    for (j, host) in server.hosts.iter().enumerate() {
        check_namespaced_host(out, &format!("{path}.hosts[{j}]"), host, false);
    }
    if server.default_endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
        out.warn(
            format!("{path}.defaultEndpoint"),
            "Istio does not implement defaultEndpoint on gateways: route with a VirtualService bound to this \
             Gateway instead",
        );
    }
    let protocol = server.port.as_ref().and_then(|p| p.protocol.as_deref()).and_then(Protocol::parse);
    let Some(protocol) = protocol else {
        // An unknown or missing protocol is already an error.
        if let Some(tls) = &server.tls {
            check_server_tls(tls, &format!("{path}.tls"), out);
        }
        return;
    };
    let is_tls = matches!(protocol, Protocol::Https | Protocol::Tls);
    match &server.tls {
        None if is_tls => out.err(
            format!("{path}.tls"),
            "an HTTPS or TLS server needs TLS settings: set tls.mode (SIMPLE with credentialName, or \
             PASSTHROUGH), or use protocol HTTP",
        ),
        None => {}
        Some(tls) if !is_tls => {
            let only_redirect = tls.mode.is_none()
                && tls.server_certificate.is_none()
                && tls.private_key.is_none()
                && tls.ca_certificates.is_none()
                && tls.credential_name.is_none()
                && tls.credential_names.is_empty();
            if !(protocol.is_http() && only_redirect) {
                let what = if protocol.is_http() { "plain HTTP" } else { "non-TLS" };
                out.err(
                    format!("{path}.tls"),
                    format!(
                        "a {what} server can only set tls.httpsRedirect: use protocol HTTPS (or TLS) to \
                         terminate or pass through TLS, or keep only httpsRedirect"
                    ),
                );
            }
            check_server_tls(tls, &format!("{path}.tls"), out);
        }
        Some(tls) => check_server_tls(tls, &format!("{path}.tls"), out),
    }
}

fn check_server_port(port: &Port, bind: &str, path: &str, out: &mut Out) {
    check_protocol(out, &format!("{path}.protocol"), port.protocol.as_deref());
    let number = port.number.unwrap_or(0);
    if number > 0 || !bind.starts_with(UNIX_PREFIX) {
        check_port(out, &format!("{path}.number"), i64::from(number));
    }
    if port.target_port.is_some_and(|t| t > 0) {
        out.warn(
            format!("{path}.targetPort"),
            "targetPort has no effect on a gateway: remove it, and set the container port in the gateway's \
             Service instead",
        );
    }
    if port.name.as_deref().unwrap_or_default().is_empty() {
        out.err(format!("{path}.name"), "the port needs a name: set e.g. name: http");
    }
}

/// The TLS settings of a Gateway server or a Sidecar ingress listener, as
/// Istio's `validateTLSOptions`.
pub(super) fn check_server_tls(tls: &ServerTlsSettings, path: &str, out: &mut Out) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let credential = set(&tls.credential_name) || !tls.credential_names.is_empty();
    if set(&tls.credential_name) && !tls.credential_names.is_empty() {
        out.err(
            format!("{path}.credentialNames"),
            "credentialName and credentialNames are both set: keep one of them",
        );
    }
    if tls.credential_names.len() > 2 {
        out.err(
            format!("{path}.credentialNames"),
            format!(
                "{} credentialNames are listed, at most 2 are allowed (one RSA and one ECDSA certificate): \
                 remove the others",
                tls.credential_names.len()
            ),
        );
    }
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    match mode {
        ServerTlsMode::IstioMutual => {
            for (field, value) in [
                ("serverCertificate", &tls.server_certificate),
                ("privateKey", &tls.private_key),
                ("caCertificates", &tls.ca_certificates),
                ("credentialName", &tls.credential_name),
            ] {
                if set(value) {
                    out.err(
                        format!("{path}.{field}"),
                        format!("ISTIO_MUTUAL uses the mesh's own certificates and cannot set {field}: remove it, or use mode MUTUAL"),
                    );
                }
            }
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual if !credential => {
            let name = match mode {
                ServerTlsMode::Simple => "SIMPLE",
                ServerTlsMode::Mutual => "MUTUAL",
                _ => "OPTIONAL_MUTUAL",
            };
            if !set(&tls.server_certificate) {
                out.err(
                    format!("{path}.serverCertificate"),
                    format!("{name} TLS needs the server's certificate: set credentialName, or serverCertificate and privateKey"),
                );
            }
            if !set(&tls.private_key) {
                out.err(
                    format!("{path}.privateKey"),
                    format!("{name} TLS needs the server's private key: set credentialName, or serverCertificate and privateKey"),
                );
            }
            if mode != ServerTlsMode::Simple && !set(&tls.ca_certificates) {
                out.err(
                    format!("{path}.caCertificates"),
                    format!("{name} TLS needs the CA certificates client certificates are verified with: set caCertificates, or credentialName"),
                );
            }
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            if credential || set(&tls.server_certificate) || set(&tls.private_key) =>
        {
            out.warn(
                format!("{path}.mode"),
                "in PASSTHROUGH and AUTO_PASSTHROUGH modes the proxy does not terminate TLS, so the certificates \
                 set here are not used: remove them, or set mode SIMPLE",
            );
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version) {
        if max != TlsProtocol::TlsAuto && min != TlsProtocol::TlsAuto && min > max {
            out.err(
                format!("{path}.minProtocolVersion"),
                format!(
                    "minProtocolVersion {} is newer than maxProtocolVersion {}: swap them, or raise maxProtocolVersion",
                    tls_name(min),
                    tls_name(max)
                ),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, suite) in tls.cipher_suites.iter().enumerate() {
        if suite.is_empty() || suite.contains(char::is_whitespace) {
            out.err(
                format!("{path}.cipherSuites[{i}]"),
                format!("{suite:?} is not a cipher suite name: write an OpenSSL name such as \"ECDHE-RSA-AES128-GCM-SHA256\""),
            );
        } else if !seen.insert(suite.as_str()) {
            out.warn(
                format!("{path}.cipherSuites[{i}]"),
                format!("cipher suite {suite:?} is listed twice: remove the duplicate"),
            );
        }
    }
}

fn tls_name(p: TlsProtocol) -> &'static str {
    match p {
        TlsProtocol::TlsAuto => "TLS_AUTO",
        TlsProtocol::Tlsv1_0 => "TLSV1_0",
        TlsProtocol::Tlsv1_1 => "TLSV1_1",
        TlsProtocol::Tlsv1_2 => "TLSV1_2",
        TlsProtocol::Tlsv1_3 => "TLSV1_3",
    }
}
