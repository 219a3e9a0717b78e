//! networking.istio.io ServiceEntry, as today's Istio validates it: hosts
//! required (DNS names, no bare `*`), addresses IPs or CIDR blocks, ports
//! with unique numbers and names and a known protocol, endpoints that fit
//! the resolution (none with NONE, IP addresses with STATIC, names or IPs
//! with DNS, at most one with DNS_ROUND_ROBIN), endpoints or a workload
//! selector but not both, and `exportTo`.

use std::collections::BTreeSet;

use crate::api::service_entry::{Resolution, ServiceEntrySpec, WorkloadEntry};
use crate::model::protocol::Protocol;

use super::common::*;

pub(super) fn check(spec: &ServiceEntrySpec, namespace: &str, out: &mut Out) {
    if spec.hosts.is_empty() {
        out.err(
            "spec.hosts",
            "a ServiceEntry needs at least one host: list the service's DNS names, e.g. [\"api.example.com\"]",
        );
    }
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            out.err(path, "host \"*\" would claim every host name: name the service, e.g. \"*.example.com\"");
        } else if let Err(e) = check_wildcard_domain(host) {
            out.err(path, format!("host {host:?} is not valid ({e}): {HOST_FIX}"));
        } else if spec.endpoints.is_empty()
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && host.starts_with('*')
        {
            out.err(
                path,
                format!(
                    "with DNS resolution and no endpoints the proxy resolves the hosts themselves, and the \
                     wildcard {host:?} cannot be resolved: name a host, add endpoints, or use resolution NONE"
                ),
            );
        }
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        if let Err(e) = check_ip_or_cidr(address) {
            out.err(format!("spec.addresses[{i}]"), e);
        }
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let number = port.number.unwrap_or(0);
        check_port(out, &format!("{path}.number"), i64::from(number));
        if number > 0 && !numbers.insert(number) {
            out.err(
                format!("{path}.number"),
                format!("port {number} is listed twice: give each port of the entry its own number"),
            );
        }
        check_protocol(out, &format!("{path}.protocol"), port.protocol.as_deref());
        match port.name.as_deref().unwrap_or_default() {
            "" => out.err(format!("{path}.name"), "the port needs a name: set e.g. name: https"),
            name if !is_dns1123_label(name) => out.err(
                format!("{path}.name"),
                format!("port name {name:?} is not a DNS label: use letters, digits and '-', e.g. \"https\""),
            ),
            name if !names.insert(name) => out.err(
                format!("{path}.name"),
                format!("port name {name:?} is used twice: give each port its own name"),
            ),
            _ => {}
        }
        if let Some(target) = port.target_port {
            check_port(out, &format!("{path}.targetPort"), i64::from(target));
        }
    }
    if spec.hosts.len() > 1 && spec.addresses.is_empty() {
        // A TCP connection carries no host name: only an address tells
        // which of the hosts it is for.
        for (i, port) in spec.ports.iter().enumerate() {
            let protocol = port.protocol.as_deref().and_then(Protocol::parse);
            if protocol.is_some_and(|p| !p.is_http() && !matches!(p, Protocol::Https | Protocol::Tls)) {
                out.warn(
                    format!("spec.ports[{i}]"),
                    format!(
                        "port {} carries no host name (not HTTP or TLS), so without addresses connections to \
                         the {} hosts cannot be told apart: add addresses, or one entry per host",
                        port.number.unwrap_or(0),
                        spec.hosts.len()
                    ),
                );
            }
        }
    }
    if let Some(selector) = &spec.workload_selector {
        if !spec.endpoints.is_empty() {
            out.err(
                "spec.workloadSelector",
                "a ServiceEntry takes its endpoints from either workloadSelector or endpoints, not both: \
                 remove one",
            );
        }
        check_labels(out, "spec.workloadSelector.labels", &selector.labels);
        if selector.labels.is_empty() {
            out.warn(
                "spec.workloadSelector.labels",
                "the workload selector has no labels, so it selects every workload in the namespace: add labels",
            );
        }
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => out.err(
            "spec.endpoints",
            "resolution NONE sends traffic to its original destination and takes no endpoints: remove them, \
             or set resolution STATIC (IP addresses) or DNS (names)",
        ),
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => out.warn(
            "spec.endpoints",
            "resolution STATIC with neither endpoints nor a workloadSelector has no endpoints, so every \
             connection to the service fails: list the endpoints' IP addresses",
        ),
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => out.err(
            "spec.endpoints",
            format!(
                "resolution DNS_ROUND_ROBIN takes at most one endpoint, not {}: keep one, or use resolution DNS",
                spec.endpoints.len()
            ),
        ),
        _ => {}
    }
    let port_names: BTreeSet<&str> = spec.ports.iter().filter_map(|p| p.name.as_deref()).collect();
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        check_endpoint(endpoint, resolution, &port_names, &format!("spec.endpoints[{i}]"), out);
    }
    check_export_to_entry(out, namespace, &spec.export_to);
    for (i, san) in spec.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            out.err(
                format!("spec.subjectAltNames[{i}]"),
                "an empty subject alternative name matches nothing: remove it",
            );
        }
    }
}

fn check_endpoint(
    endpoint: &WorkloadEntry,
    resolution: Resolution,
    port_names: &BTreeSet<&str>,
    path: &str,
    out: &mut Out,
) {
    let address = endpoint.address.as_deref().unwrap_or_default();
    let at = format!("{path}.address");
    if address.starts_with(UNIX_PREFIX) {
        check_unix_address(out, &at, address);
        if !endpoint.ports.is_empty() {
            out.err(format!("{path}.ports"), "a unix:// endpoint has no ports: remove them");
        }
    } else if address.is_empty() {
        out.err(at, "the endpoint needs an address: an IP address (or a host name with resolution DNS)");
    } else if resolution == Resolution::Static {
        if !is_ip(address) {
            out.err(
                at,
                format!(
                    "{address:?} is not an IP address, and resolution STATIC takes IP addresses: write one, or \
                     set resolution DNS to resolve names"
                ),
            );
        }
    } else if !is_ip(address) {
        if let Err(e) = check_fqdn(address) {
            out.err(at, format!("{address:?} is neither an IP address nor a host name ({e}): {HOST_FIX}"));
        }
    }
    for (name, number) in &endpoint.ports {
        let field = key(&format!("{path}.ports"), name);
        if !port_names.contains(name.as_str()) {
            out.err(
                &field,
                format!(
                    "the entry has no port named {name:?}: name one of spec.ports, or add the port there"
                ),
            );
        }
        check_port(out, &field, i64::from(*number));
    }
    check_labels(out, &format!("{path}.labels"), &endpoint.labels);
    if endpoint.weight == Some(0) {
        out.warn(
            format!("{path}.weight"),
            "weight 0 is the same as unset (an equal share): remove it, or set a positive weight",
        );
    }
    if let Some(sa) = endpoint.service_account.as_deref().filter(|s| !s.is_empty()) {
        if !sa.split('.').all(is_dns1123_label) {
            out.err(
                format!("{path}.serviceAccount"),
                format!("{sa:?} is not a ServiceAccount name: use lower-case letters, digits, '-' and '.'"),
            );
        }
    }
}

/// A ServiceEntry's `exportTo`: like the other kinds', but "~" (no one) is
/// allowed, alone.
fn check_export_to_entry(out: &mut Out, namespace: &str, export_to: &[String]) {
    if export_to.iter().any(|e| e == "~") {
        if export_to.len() > 1 {
            out.err(
                "spec.exportTo",
                "\"~\" exports to no namespace and must be listed alone: remove it or the other entries",
            );
        }
        return;
    }
    check_export_to(out, namespace, export_to, false);
}
