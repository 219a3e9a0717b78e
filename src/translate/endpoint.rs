//! Endpoints (EDS): one ClusterLoadAssignment per outbound EDS cluster.
//! A subset's assignment holds the endpoints whose pods carry all the
//! subset's labels. A cluster without endpoints still gets an (empty)
//! assignment, so Envoy does not wait for one and answers 503 at once.
//!
//! With locality failover ([`Failover`]: the cluster ejects outliers and
//! its DestinationRule does not turn locality balancing off), endpoints
//! are grouped by locality and given Envoy priorities as Istio does: the
//! proxy's own sub-zone first, then its zone, its region, the region
//! `failover` names, the rest; `failoverPriority` labels the proxy shares
//! with an endpoint rank before that. Envoy moves traffic to the next
//! priority as endpoints of the one before are ejected.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::tls::{TLS_MODE_ISTIO, TLS_MODE_LABEL, istio_endpoint_metadata};
use super::{address, proto_map, telemetry};
use crate::api::destination_rule::{LocalityDistribute, LocalityFailover};
use crate::model::locality::Locality;
use crate::model::mesh::{EndpointView, Health, PortView, is_subset};

/// What orders (or weighs) a cluster's endpoints for one proxy.
#[derive(Clone, Debug)]
pub struct Failover<'a> {
    /// The proxy's labels (those the scope keeps: locality and `failoverPriority` keys).
    pub proxy_labels: &'a BTreeMap<String, String>,
    pub failover: &'a [LocalityFailover],
    pub failover_priority: &'a [String],
    /// When set, localities are weighted instead of ordered.
    pub distribute: &'a [LocalityDistribute],
}

impl Failover<'_> {
    /// Istio's priority before compaction: `failoverPriority` mismatches
    /// times five, plus the locality's rank (0 to 4).
    fn raw_priority(&self, proxy: &Locality, endpoint: &EndpointView, locality: &Locality) -> u32 {
        let mut rank = locality.priority_from(proxy);
        if rank == 3
            && let Some(f) = self.failover.iter().find(|f| f.from.as_deref() == Some(proxy.region.as_str()))
            && f.to.as_deref() != Some(locality.region.as_str())
        {
            rank = 4;
        }
        let matched = self
            .failover_priority
            .iter()
            .take_while(|entry| {
                let (key, wanted) = match entry.split_once('=') {
                    Some((key, value)) => (key, Some(value)),
                    None => (entry.as_str(), self.proxy_labels.get(entry.as_str()).map(String::as_str)),
                };
                wanted.is_some() && endpoint.labels.get(key).map(String::as_str) == wanted
            })
            .count();
        (self.failover_priority.len() - matched) as u32 * 5 + rank
    }
}

/// The assignment of cluster `name`: the port's endpoints, those whose pod
/// labels match `subset_labels` when it is a subset, ordered by `failover`
/// when given.
pub fn load_assignment(
    name: String,
    port: &PortView,
    subset_labels: Option<&BTreeMap<String, String>>,
    failover: Option<&Failover<'_>>,
) -> ClusterLoadAssignment {
    let chosen =
        port.endpoints.iter().filter(|e| subset_labels.is_none_or(|labels| is_subset(labels, &e.labels)));
    let endpoints = match failover {
        None => {
            let lb_endpoints: Vec<LbEndpoint> = chosen.map(lb_endpoint).collect();
            if lb_endpoints.is_empty() {
                Vec::new()
            } else {
                vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }]
            }
        }
        Some(failover) => {
            let proxy = Locality::of(failover.proxy_labels);
            let mut groups: BTreeMap<(u32, Locality), Vec<LbEndpoint>> = BTreeMap::new();
            for endpoint in chosen {
                let locality = Locality::of(&endpoint.labels);
                let priority = failover.raw_priority(&proxy, endpoint, &locality);
                groups.entry((priority, locality)).or_default().push(lb_endpoint(endpoint));
            }
            if !failover.distribute.is_empty() {
                return ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: weighted(&proxy, failover.distribute, groups),
                    ..Default::default()
                };
            }
            // Envoy wants priorities from 0 without gaps.
            let ranks: BTreeSet<u32> = groups.keys().map(|(p, _)| *p).collect();
            let rank = |p: u32| ranks.iter().position(|r| *r == p).unwrap_or_default() as u32;
            groups
                .into_iter()
                .map(|((priority, locality), lb_endpoints)| LocalityLbEndpoints {
                    locality: envoy_locality(locality),
                    lb_endpoints,
                    priority: rank(priority),
                    ..Default::default()
                })
                .collect()
        }
    };
    ClusterLoadAssignment { cluster_name: name, endpoints, ..Default::default() }
}

/// Istio's `LocalityMatch`: `region[/zone[/subzone]]`, `*` or a missing
/// part matching anything.
fn locality_matches(locality: &Locality, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let mut part = |have: &str, required: bool| match parts.next() {
        None | Some("") => !required,
        Some("*") => true,
        Some(want) => want == have,
    };
    part(&locality.region, true) && part(&locality.zone, false) && part(&locality.subzone, false)
}

/// Istio's `applyLocalityWeights`, all at priority 0.
fn weighted(
    proxy: &Locality,
    distribute: &[LocalityDistribute],
    groups: BTreeMap<(u32, Locality), Vec<LbEndpoint>>,
) -> Vec<LocalityLbEndpoints> {
    // One group per locality: Envoy takes no locality twice in a priority.
    let mut by_locality: BTreeMap<Locality, Vec<LbEndpoint>> = BTreeMap::new();
    for ((_, locality), endpoints) in groups {
        by_locality.entry(locality).or_default().extend(endpoints);
    }
    let mut out: Vec<(Locality, Vec<LbEndpoint>, u32)> = by_locality
        .into_iter()
        .map(|(l, eps)| {
            let n = eps.len() as u32;
            (l, eps, n)
        })
        .collect();
    let rule = distribute.iter().find(|d| locality_matches(proxy, d.from.as_deref().unwrap_or_default()));
    if let Some(rule) = rule {
        let mut unmatched: BTreeSet<usize> = (0..out.len()).collect();
        for (pattern, weight) in &rule.to {
            let matched: Vec<usize> =
                unmatched.iter().copied().filter(|i| locality_matches(&out[*i].0, pattern)).collect();
            let total: u32 = matched.iter().map(|i| out[*i].2).sum();
            for i in matched {
                unmatched.remove(&i);
                out[i].2 =
                    (u64::from(out[i].2) * u64::from(*weight)).div_ceil(u64::from(total.max(1))) as u32;
            }
        }
        // Localities no `to` names get nothing.
        for i in unmatched {
            out[i].1.clear();
        }
    }
    out.into_iter()
        .filter(|(_, eps, _)| !eps.is_empty())
        .map(|(locality, lb_endpoints, weight)| LocalityLbEndpoints {
            locality: envoy_locality(locality),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: weight.max(1) }),
            ..Default::default()
        })
        .collect()
}

fn envoy_locality(locality: Locality) -> Option<EnvoyLocality> {
    (!locality.is_empty()).then_some(EnvoyLocality {
        region: locality.region,
        zone: locality.zone,
        sub_zone: locality.subzone,
    })
}

fn lb_endpoint(endpoint: &EndpointView) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(address(&endpoint.address, u32::from(endpoint.port))),
            ..Default::default()
        })),
        health_status: health_status(endpoint.health).into(),
        load_balancing_weight: endpoint.weight.map(|value| UInt32Value { value }),
        metadata: endpoint_metadata(endpoint),
    }
}

/// What Envoy reads of an endpoint besides its address: whether it is
/// sent mutual TLS (a pod with a sidecar: auto mTLS, see super::tls), and
/// the workload that answers there, for the caller's metrics.
fn endpoint_metadata(endpoint: &EndpointView) -> Option<Metadata> {
    let sidecar = endpoint.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO);
    let namespaces: Vec<_> = sidecar
        .then(istio_endpoint_metadata)
        .into_iter()
        .chain(endpoint.workload.as_deref().map(telemetry::endpoint_metadata))
        .collect();
    (!namespaces.is_empty())
        .then(|| Metadata { filter_metadata: proto_map(namespaces), ..Default::default() })
}

/// One endpoint (an address or, for DNS clusters, a host name), inline in
/// its cluster.
pub fn single(cluster_name: String, host: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address(host, u32::from(port))),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn health_status(health: Health) -> HealthStatus {
    match health {
        Health::Healthy => HealthStatus::Healthy,
        Health::Draining => HealthStatus::Draining,
        Health::Unhealthy => HealthStatus::Unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::{Address, address};

    use super::*;
    use crate::model::protocol::Protocol;

    fn endpoint(address: &str, labels: &[(&str, &str)]) -> EndpointView {
        EndpointView {
            address: address.into(),
            port: 8080,
            health: Health::Healthy,
            pod: None,
            labels: Arc::new(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            workload: None,
            weight: None,
        }
    }

    fn port(endpoints: Vec<EndpointView>) -> PortView {
        PortView { name: "http".into(), port: 8000, protocol: Protocol::Http, target_port: None, endpoints }
    }

    /// (priority, region/zone, addresses) of each group.
    fn groups(assignment: &ClusterLoadAssignment) -> Vec<(u32, String, Vec<String>)> {
        assignment
            .endpoints
            .iter()
            .map(|g| {
                let locality =
                    g.locality.as_ref().map(|l| format!("{}/{}", l.region, l.zone)).unwrap_or_default();
                let addresses = g
                    .lb_endpoints
                    .iter()
                    .map(|e| match &e.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(Address { address: Some(address::Address::SocketAddress(a)) }),
                            ..
                        })) => a.address.clone(),
                        other => panic!("an endpoint with a socket address: {other:?}"),
                    })
                    .collect();
                (g.priority, locality, addresses)
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn failover_orders_localities_from_the_proxys_own_outwards_without_gaps() {
        let p = port(vec![
            endpoint("10.0.0.1", &[("istio-locality", "r1.z1")]),
            endpoint("10.0.0.2", &[("istio-locality", "r1.z2")]),
            endpoint(
                "10.0.0.3",
                &[("topology.kubernetes.io/region", "r2"), ("topology.kubernetes.io/zone", "z1")],
            ),
            endpoint("10.0.0.4", &[("istio-locality", "r3.z1")]),
            endpoint("10.0.0.5", &[("istio-locality", "r1.z1")]),
        ]);
        let proxy = labels(&[("istio-locality", "r1.z1")]);
        let plain = Failover { proxy_labels: &proxy, failover: &[], failover_priority: &[], distribute: &[] };
        assert_eq!(
            groups(&load_assignment("c".into(), &p, None, Some(&plain))),
            [
                (0, "r1/z1".into(), vec!["10.0.0.1".into(), "10.0.0.5".into()]),
                (1, "r1/z2".into(), vec!["10.0.0.2".into()]),
                // Other regions share the last priority.
                (2, "r2/z1".into(), vec!["10.0.0.3".into()]),
                (2, "r3/z1".into(), vec!["10.0.0.4".into()]),
            ]
        );
        // failover: r1 -> r3 puts r3 before the other regions.
        let to_r3 = [LocalityFailover { from: Some("r1".into()), to: Some("r3".into()) }];
        let failover =
            Failover { proxy_labels: &proxy, failover: &to_r3, failover_priority: &[], distribute: &[] };
        let order: Vec<(u32, String)> = groups(&load_assignment("c".into(), &p, None, Some(&failover)))
            .into_iter()
            .map(|(p, l, _)| (p, l))
            .collect();
        assert_eq!(
            order,
            [(0, "r1/z1".into()), (1, "r1/z2".into()), (2, "r3/z1".into()), (3, "r2/z1".into())]
        );
        // Without failover, one group with no locality, as before.
        let none = load_assignment("c".into(), &p, None, None);
        assert_eq!(none.endpoints.len(), 1);
        assert!(none.endpoints[0].locality.is_none());
    }

    #[test]
    fn failover_priority_labels_rank_before_locality() {
        let p = port(vec![
            endpoint("10.0.0.1", &[("network", "a"), ("tier", "x")]),
            endpoint("10.0.0.2", &[("network", "a"), ("tier", "y")]),
            endpoint("10.0.0.3", &[("network", "b"), ("tier", "x")]),
        ]);
        let proxy = labels(&[("network", "a"), ("tier", "x")]);
        let keys = ["network".to_string(), "tier".to_string()];
        let f = Failover { proxy_labels: &proxy, failover: &[], failover_priority: &keys, distribute: &[] };
        let order: Vec<(u32, Vec<String>)> = groups(&load_assignment("c".into(), &p, None, Some(&f)))
            .into_iter()
            .map(|(p, _, a)| (p, a))
            .collect();
        assert_eq!(
            order,
            [(0, vec!["10.0.0.1".into()]), (1, vec!["10.0.0.2".into()]), (2, vec!["10.0.0.3".into()])]
        );
        // key=value compares with the value given, not the proxy's.
        let keys = ["network=b".to_string()];
        let f = Failover { proxy_labels: &proxy, failover: &[], failover_priority: &keys, distribute: &[] };
        let first = &groups(&load_assignment("c".into(), &p, None, Some(&f)))[0];
        assert_eq!((first.0, first.2.clone()), (0, vec!["10.0.0.3".to_string()]));
    }

    #[test]
    fn distribute_weighs_localities_for_the_proxys_own_and_drops_the_unnamed() {
        let p = port(vec![
            endpoint("10.0.0.1", &[("istio-locality", "r1.z1")]),
            endpoint("10.0.0.2", &[("istio-locality", "r2.z1")]),
            endpoint("10.0.0.3", &[("istio-locality", "r2.z1")]),
            endpoint("10.0.0.4", &[("istio-locality", "r2.z2")]),
            endpoint("10.0.0.5", &[("istio-locality", "r3.z1")]),
        ]);
        let proxy = labels(&[("istio-locality", "r1.z1")]);
        let rules = [
            LocalityDistribute { from: Some("r9/*".into()), to: [("r3/*".to_string(), 100)].into() },
            LocalityDistribute {
                from: Some("r1/z1/*".into()),
                to: [("r1/z1".to_string(), 60), ("r2/*".to_string(), 40)].into(),
            },
        ];
        let f = Failover { proxy_labels: &proxy, failover: &[], failover_priority: &[], distribute: &rules };
        let got: Vec<(u32, String, u32)> = load_assignment("c".into(), &p, None, Some(&f))
            .endpoints
            .iter()
            .map(|g| {
                let l = g.locality.clone().unwrap_or_default();
                (
                    g.priority,
                    format!("{}/{}", l.region, l.zone),
                    g.load_balancing_weight.map_or(0, |w| w.value),
                )
            })
            .collect();
        // The second rule is the proxy's: r1/z1 takes 60; r2/* shares 40
        // between z1 (two endpoints) and z2 (one), rounded up; no `to`
        // names r3.
        assert_eq!(got, [(0, "r1/z1".into(), 60), (0, "r2/z1".into(), 27), (0, "r2/z2".into(), 14)]);
        assert!(locality_matches(&Locality::of(&proxy), "r1"));
        assert!(!locality_matches(&Locality::of(&proxy), "r1/z2"));
    }
}
