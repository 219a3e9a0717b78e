//! What a ServiceEntry's services get beyond a Kubernetes Service's
//! translation, as Istio's cluster and listener builders give it:
//!
//! - **Clusters** by `resolution` ([`adjust_cluster`]): NONE an
//!   ORIGINAL_DST cluster (to the address the application connected to),
//!   STATIC an EDS cluster (the entry's endpoints, by EDS like a
//!   Service's), DNS a STRICT_DNS cluster and DNS_ROUND_ROBIN a
//!   LOGICAL_DNS cluster, each with its endpoints (names or addresses)
//!   inline, IPv4 only, as Istio sets them (Istio also asks Envoy to
//!   respect the DNS TTL, a field Envoy 1.40 deprecates: Envoy's own
//!   refresh, every 5 s, is kept). A
//!   LOGICAL_DNS cluster takes only its first endpoint (Envoy wants one);
//!   one with no endpoint at all (a subset nothing matches) is a
//!   STRICT_DNS cluster with none, which Envoy accepts and answers 503.
//!   MESH_EXTERNAL services get no auto mTLS: plaintext, unless a
//!   DestinationRule's `tls` originates TLS (SIMPLE, MUTUAL). MESH_INTERNAL
//!   ones get auto mTLS to endpoints labelled with a sidecar, checking
//!   the entry's `subjectAltNames` and its endpoints' ServiceAccounts.
//! - **Routes**: an HTTP port's virtual host answers to the entry's host
//!   and `host:port` ([`domains`]) and its addresses that are single IPs;
//!   an entry without addresses sits on the port's route configuration
//!   `"<port>"` (routed by Host on any address, as Istio), one with
//!   addresses gets a chain per address (CIDR blocks included) and its own
//!   `<host>:<port>`, as a Service at its ClusterIP.
//! - **TCP and TLS ports without addresses** ([`port_wide_chains`]): as
//!   Istio's listener on 0.0.0.0:<port>, a chain for the port on any
//!   address: by SNI for TLS and HTTPS ports (one per host, wildcards as
//!   Envoy's `server_names` take them), else one for the port (the first
//!   host by name; Istio, too, can tell such entries apart by port only).
//!   A port that some service speaks HTTP on keeps its HTTP chain, and
//!   VirtualService `tcp` and `tls` rules are not applied on these chains.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::cluster::{ClusterPolicy, outbound_name};
use super::endpoint::load_assignment;
use super::tcp::routed_by_sni;
use crate::api::destination_rule::Subset;
use crate::model::mesh::{PortView, ServiceView};
use crate::model::service_entry::{Discovery, EntryView};

/// Makes an outbound cluster of an entry's service what its resolution
/// and location ask for (the module's documentation says how).
pub(super) fn adjust_cluster(
    cluster: &mut Cluster,
    service: &ServiceView,
    entry: &EntryView,
    port: &PortView,
    subset: Option<&Subset>,
    policy: &ClusterPolicy,
) {
    if entry.is_external() {
        // No sidecar to talk mutual TLS to: plaintext unless the rule's tls says otherwise.
        cluster.transport_socket_matches.clear();
    }
    // PASSTHROUGH load balancing already made it an original-destination cluster.
    if !policy.uses_eds() {
        return;
    }
    let discovery = service.discovery();
    match discovery {
        Discovery::Eds => {}
        Discovery::OriginalDestination => {
            cluster.eds_cluster_config = None;
            cluster.cluster_discovery_type =
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst.into()));
            cluster.lb_policy = cluster::LbPolicy::ClusterProvided.into();
            cluster.lb_config = None;
        }
        Discovery::StrictDns | Discovery::LogicalDns => {
            let mut assignment = load_assignment(cluster.name.clone(), port, subset.map(|s| &s.labels), None);
            let count: usize = assignment.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
            let kind = if discovery == Discovery::LogicalDns && count > 0 {
                // Envoy's LOGICAL_DNS takes exactly one endpoint: the first.
                assignment.endpoints.truncate(1);
                assignment.endpoints[0].lb_endpoints.truncate(1);
                cluster::DiscoveryType::LogicalDns
            } else {
                cluster::DiscoveryType::StrictDns
            };
            cluster.eds_cluster_config = None;
            cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind.into()));
            cluster.load_assignment = Some(assignment);
            cluster.dns_lookup_family = cluster::DnsLookupFamily::V4Only.into();
        }
    }
}

/// The names an entry's HTTP port answers to: each as written and with
/// `:<port>`, and the entry's addresses that are single IPs.
pub(super) fn domains(service: &ServiceView, entry: &EntryView, port: u16) -> Vec<String> {
    let mut out = vec![service.hostname.clone(), format!("{}:{port}", service.hostname)];
    for address in entry.addresses.iter().map(String::as_str).filter_map(single_address) {
        if address.contains(':') {
            out.push(format!("[{address}]:{port}"));
            out.push(format!("[{address}]"));
        } else {
            out.push(format!("{address}:{port}"));
            out.push(address.to_string());
        }
    }
    out
}

/// An address that is one IP: written alone, or as a /32 (/128) block,
/// which Istio reads as the IP itself.
fn single_address(address: &str) -> Option<&str> {
    match address.split_once('/') {
        None => Some(address),
        Some((ip, "32")) if !ip.contains(':') => Some(ip),
        Some((ip, "128")) if ip.contains(':') => Some(ip),
        Some(_) => None,
    }
}

/// The chains on any address of the non-HTTP ports of entries without
/// addresses, and the clusters they send to; `http_ports` are the ports
/// some service speaks HTTP on (they keep their HTTP chain).
pub(super) fn port_wide_chains<'a>(
    services: impl Iterator<Item = (&'a ServiceView, &'a PortView)>,
    http_ports: &std::collections::BTreeSet<u16>,
    logs: &super::telemetry::TcpLogs,
) -> (Vec<FilterChain>, Vec<String>, bool) {
    // By port: (SNI names or none, the service).
    let mut by_port: BTreeMap<u16, Vec<(Option<&str>, &ServiceView)>> = BTreeMap::new();
    for (service, port) in services {
        let Some(entry) = &service.entry else { continue };
        if !entry.addresses.is_empty() || port.protocol.is_http() || http_ports.contains(&port.port) {
            continue;
        }
        let sni = routed_by_sni(port.protocol).then_some(service.hostname.as_str());
        let chains = by_port.entry(port.port).or_default();
        // One chain per name (TLS), or the port's first service (TCP).
        let taken = chains.iter().any(|(name, _)| name.is_none() || sni.is_none() || *name == sni);
        if !taken {
            chains.push((sni, service));
        }
    }
    let mut chains = Vec::new();
    let mut clusters = Vec::new();
    let mut by_sni = false;
    for (port, entries) in by_port {
        for (sni, service) in entries {
            let cluster = outbound_name(port, "", &service.hostname);
            by_sni |= sni.is_some();
            chains.push(FilterChain {
                name: format!("0.0.0.0_{port}{}", sni.map(|n| format!(";{n}")).unwrap_or_default()),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: u32::from(port) }),
                    server_names: sni.map(|n| vec![n.to_string()]).unwrap_or_default(),
                    ..Default::default()
                }),
                filters: vec![super::sidecar::tcp_proxy_filter(cluster.clone(), logs)],
                ..Default::default()
            });
            clusters.push(cluster);
        }
    }
    (chains, clusters, by_sni)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_one_ip_alone_or_as_a_full_length_block() {
        assert_eq!(single_address("192.0.2.1"), Some("192.0.2.1"));
        assert_eq!(single_address("192.0.2.1/32"), Some("192.0.2.1"));
        assert_eq!(single_address("2001:db8::1/128"), Some("2001:db8::1"));
        assert_eq!(single_address("192.0.2.0/24"), None);
        assert_eq!(single_address("2001:db8::/64"), None);
    }
}
