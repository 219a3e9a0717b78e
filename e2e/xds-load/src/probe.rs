//! When a simulated proxy counts as having received a change: a probe is
//! set at the start of the API call that makes the change, names the
//! resource types that should move, and says what the new content must
//! hold. Every response of those types that arrives later is matched
//! against it, with no I/O, so the rules are tested here on protos built
//! in memory.
//!
//! Two outcomes are kept per probe and proxy: `observed`, the first
//! response of a watched type after the change that mentions the changed
//! service at all (a push happened, its content not checked), and
//! `verified`, the first one whose content shows the change itself (the new
//! endpoint address, the new route weight). Convergence is the verified
//! one; the observed one says whether the control plane pushed at all
//! when it translates differently from what the check expects.

use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::{Message, Name};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// A short name for a type URL, for the report.
pub fn label(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "LDS",
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        ROUTE => "RDS",
        SECRET => "SDS",
        _ => "other",
    }
}

/// What the changed content must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// An endpoint address (a CLA's, or a cluster's inline one), as a whole
    /// string: `10.200.0.1` does not match `10.200.0.12`.
    Address(String),
    /// A route (in a RouteConfiguration, or inline in a listener's HTTP
    /// connection manager) gives `weight` to a cluster whose name contains
    /// `cluster` (Istio names them `outbound|<port>|<subset>|<host>`).
    RouteWeight { cluster: String, weight: u32 },
}

/// One change under watch.
#[derive(Clone, Debug)]
pub struct Probe {
    /// When the API call making the change started.
    pub since: Instant,
    /// The types that should carry the change.
    pub types: &'static [&'static str],
    /// Bytes every resource about the changed service holds (its name).
    pub mention: String,
    pub check: Check,
}

/// What one response proves for one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Finding {
    pub observed: bool,
    pub verified: bool,
}

impl Probe {
    /// Matches a response of `type_url` with `resources`, received at `at`.
    /// `resources` are the encoded messages (the values of the `Any`s).
    pub fn matches(&self, type_url: &str, resources: &[Bytes], at: Instant) -> Finding {
        if at < self.since || !self.types.contains(&type_url) {
            return Finding::default();
        }
        let mention = memchr::memmem::Finder::new(self.mention.as_bytes());
        // A cluster or CLA is about the service when its name says so (a
        // short read); a listener or route configuration when its content does.
        let by_name = type_url == CLUSTER || type_url == ENDPOINT;
        let about: Vec<&Bytes> = resources
            .iter()
            .filter(|r| match first_string(r).filter(|_| by_name) {
                Some(name) => mention.find(name).is_some(),
                None => mention.find(r).is_some(),
            })
            .collect();
        if about.is_empty() {
            return Finding::default();
        }
        let verified = match &self.check {
            Check::Address(address) => about.iter().any(|r| holds_address(r, address)),
            Check::RouteWeight { cluster, weight } => about.iter().any(|r| {
                route_weights(type_url, r).iter().any(|(c, w)| c.contains(cluster.as_str()) && w == weight)
            }),
        };
        Finding { observed: true, verified }
    }
}

/// Field 1 of an encoded message when it is a string, read without
/// decoding the rest: the name of a Cluster, Listener or
/// RouteConfiguration, the cluster name of a ClusterLoadAssignment
/// (protobuf encoders write fields in number order).
pub fn first_string(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(&[0x0a])?;
    let (mut len, mut shift, mut at) = (0usize, 0u32, 0usize);
    loop {
        let b = *rest.get(at)?;
        len |= usize::from(b & 0x7f).checked_shl(shift)?;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    rest.get(at..at.checked_add(len)?)
}

/// Whether `bytes` (an encoded proto) holds `address` as a whole string
/// field: the bytes around it are not part of a longer address.
pub fn holds_address(bytes: &[u8], address: &str) -> bool {
    let part = |b: u8| b.is_ascii_digit() || b == b'.' || b == b':';
    memchr::memmem::find_iter(bytes, address.as_bytes()).any(|at| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + address.len()).copied();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

/// The (cluster, weight) pairs of every weighted route in a route
/// configuration, or in the inline route configurations of a listener.
pub fn route_weights(type_url: &str, resource: &[u8]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    match type_url {
        ROUTE => {
            if let Ok(config) = RouteConfiguration::decode(resource) {
                weights_of(&config, &mut out);
            }
        }
        LISTENER => {
            if let Ok(listener) = Listener::decode(resource) {
                for hcm in connection_managers(&listener) {
                    if let Some(RouteSpecifier::RouteConfig(config)) = &hcm.route_specifier {
                        weights_of(config, &mut out);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn weights_of(config: &RouteConfiguration, out: &mut Vec<(String, u32)>) {
    for host in &config.virtual_hosts {
        for r in &host.routes {
            let Some(route::Action::Route(action)) = &r.action else { continue };
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
                    for c in &weighted.clusters {
                        out.push((c.name.clone(), c.weight.map_or(0, |w| w.value)));
                    }
                }
                Some(route_action::ClusterSpecifier::Cluster(name)) => out.push((name.clone(), 100)),
                _ => {}
            }
        }
    }
}

/// Every HTTP connection manager in a listener's filter chains.
pub fn connection_managers(listener: &Listener) -> Vec<HttpConnectionManager> {
    let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.iter());
    chains
        .flat_map(|chain| chain.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url == HttpConnectionManager::type_url() =>
            {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .collect()
}

/// The route configuration names a listener's connection managers fetch
/// over RDS.
pub fn rds_names(listener: &Listener) -> Vec<String> {
    // Borrowed, not `into_iter`: collecting in place would keep the
    // connection managers' allocation, a few kilobytes each, for the names.
    connection_managers(listener)
        .iter()
        .filter_map(|hcm| match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, VirtualHost, WeightedCluster, weighted_cluster,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};

    use super::*;

    fn any<M: Message + Name>(m: &M) -> Any {
        Any { type_url: M::type_url(), value: m.encode_to_vec() }
    }

    /// What a resource's `Any` wraps.
    fn value<M: Message>(m: &M) -> Bytes {
        Bytes::from(m.encode_to_vec())
    }

    fn cla(name: &str, addresses: &[&str]) -> Bytes {
        let endpoint = |ip: &str| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        value(&ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: addresses.iter().map(|a| endpoint(a)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn routes(weights: &[(&str, u32)]) -> RouteConfiguration {
        let clusters = weights
            .iter()
            .map(|(name, w)| weighted_cluster::ClusterWeight {
                name: name.to_string(),
                weight: Some(UInt32Value { value: *w }),
                ..Default::default()
            })
            .collect();
        RouteConfiguration {
            name: "9080".into(),
            virtual_hosts: vec![VirtualHost {
                name: "svc-0001.bench.svc.cluster.local:9080".into(),
                routes: vec![Route {
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                            WeightedCluster { clusters, ..Default::default() },
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn probe(check: Check, types: &'static [&'static str], since: Instant) -> Probe {
        Probe { since, types, mention: "svc-0001.bench".into(), check }
    }

    #[test]
    fn a_new_endpoint_address_is_found_whole() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let p = probe(Check::Address("10.200.0.1".into()), &[ENDPOINT, CLUSTER], t0);
        let name = "outbound|9080||svc-0001.bench.svc.cluster.local";
        let with = [
            cla("outbound|9080||svc-0002.bench.svc.cluster.local", &["10.200.0.1"]),
            cla(name, &["10.200.0.1"]),
        ];
        assert_eq!(p.matches(ENDPOINT, &with, later), Finding { observed: true, verified: true });
        // A longer address is not the one looked for.
        let longer = [cla(name, &["10.200.0.12", "110.200.0.1"])];
        assert_eq!(p.matches(ENDPOINT, &longer, later), Finding { observed: true, verified: false });
        // The address under another service does not count.
        let elsewhere = [cla("outbound|9080||svc-0002.bench.svc.cluster.local", &["10.200.0.1"])];
        assert_eq!(p.matches(ENDPOINT, &elsewhere, later), Finding::default());
        // Nor does a response of another type, or one from before the change.
        assert_eq!(p.matches(ROUTE, &with, later), Finding::default());
        let p_later = probe(Check::Address("10.200.0.1".into()), &[ENDPOINT], later);
        assert_eq!(p_later.matches(ENDPOINT, &with, t0), Finding::default());
    }

    #[test]
    fn a_route_weight_is_found_in_rds_and_in_inline_routes() {
        let t0 = Instant::now();
        let v2 = "|v2|svc-0001.bench.svc.cluster.local".to_string();
        let p = probe(Check::RouteWeight { cluster: v2, weight: 80 }, &[ROUTE, LISTENER], t0);
        let old = routes(&[
            ("outbound|9080|v1|svc-0001.bench.svc.cluster.local", 80),
            ("outbound|9080|v2|svc-0001.bench.svc.cluster.local", 20),
        ]);
        let new = routes(&[
            ("outbound|9080|v1|svc-0001.bench.svc.cluster.local", 20),
            ("outbound|9080|v2|svc-0001.bench.svc.cluster.local", 80),
        ]);
        assert_eq!(p.matches(ROUTE, &[value(&old)], t0), Finding { observed: true, verified: false });
        assert_eq!(p.matches(ROUTE, &[value(&new)], t0), Finding { observed: true, verified: true });

        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::RouteConfig(new)),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_9080".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(p.matches(LISTENER, &[value(&listener)], t0), Finding { observed: true, verified: true });
    }

    #[test]
    fn rds_names_come_from_the_connection_managers() {
        let hcm = |name: &str| HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let chain = |name: &str| FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm(name)))),
            }],
            ..Default::default()
        };
        let listener = Listener {
            filter_chains: vec![chain("9080"), chain("15010")],
            default_filter_chain: Some(chain("80")),
            ..Default::default()
        };
        assert_eq!(rds_names(&listener), ["9080", "15010", "80"]);
        assert!(rds_names(&Listener::default()).is_empty());
    }

    #[test]
    fn the_name_is_read_from_the_first_field() {
        let long = "x".repeat(300);
        let encoded = cla(&long, &["10.200.0.1"]);
        assert_eq!(first_string(&encoded), Some(long.as_bytes()));
        assert_eq!(first_string(&cla("a", &[])), Some(&b"a"[..]));
        assert_eq!(first_string(&cla("", &["10.200.0.1"])), None);
        assert_eq!(first_string(&[0x0a, 0x05, b'a']), None, "truncated");
    }

    #[test]
    fn type_urls_are_the_protos_own() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        assert_eq!(LISTENER, Listener::type_url());
        assert_eq!(CLUSTER, Cluster::type_url());
        assert_eq!(ENDPOINT, ClusterLoadAssignment::type_url());
        assert_eq!(ROUTE, RouteConfiguration::type_url());
    }
}
