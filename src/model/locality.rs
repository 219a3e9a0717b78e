//! Where a workload runs (region, zone, sub-zone), and the labels
//! DestinationRules' locality failover reads it from.
//!
//! Istio takes a pod's locality from its `istio-locality` label
//! (`region.zone.subzone`, dots since labels cannot hold `/`), else from
//! its node's topology labels. The mesh reads pods' labels only: the
//! `istio-locality` label, else the topology labels on the pod itself
//! (`topology.kubernetes.io/region`, `topology.kubernetes.io/zone`,
//! `topology.istio.io/subzone`).

use std::collections::BTreeMap;

use crate::api::destination_rule::{DestinationRuleSpec, LoadBalancerSettings, TrafficPolicy};

/// Istio's pod label for an explicit locality.
pub const LOCALITY_LABEL: &str = "istio-locality";

/// The labels a locality is read from, in the order they are tried.
pub const LOCALITY_LABELS: [&str; 4] = [
    LOCALITY_LABEL,
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// A region, zone and sub-zone; empty parts are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// The locality pod labels say.
    pub fn of(labels: &BTreeMap<String, String>) -> Self {
        if let Some(value) = labels.get(LOCALITY_LABEL).filter(|v| !v.is_empty()) {
            let mut parts = value.splitn(3, '.').map(str::to_string);
            return Self {
                region: parts.next().unwrap_or_default(),
                zone: parts.next().unwrap_or_default(),
                subzone: parts.next().unwrap_or_default(),
            };
        }
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        Self {
            region: label(LOCALITY_LABELS[1]),
            zone: label(LOCALITY_LABELS[2]),
            subzone: label(LOCALITY_LABELS[3]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Istio's `LbPriority`: 0 when region, zone and sub-zone match, 1 when
    /// region and zone do, 2 when the region does, 3 otherwise.
    pub fn priority_from(&self, proxy: &Locality) -> u32 {
        match (self.region == proxy.region, self.zone == proxy.zone, self.subzone == proxy.subzone) {
            (true, true, true) => 0,
            (true, true, false) => 1,
            (true, false, _) => 2,
            (false, _, _) => 3,
        }
    }
}

/// The proxy labels a DestinationRule's locality failover compares with
/// the endpoints': the locality labels whenever some policy ejects
/// outliers (locality failover only works then) or distributes weights, and the keys of every
/// `failoverPriority`. Proxies that differ in these get their own
/// endpoints.
pub fn failover_label_keys(spec: &DestinationRuleSpec) -> Vec<String> {
    let policies =
        spec.traffic_policy.iter().chain(spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
    let mut keys = Vec::new();
    let mut outliers = false;
    let mut note = |lb: Option<&LoadBalancerSettings>, outlier: bool| {
        let weights =
            lb.and_then(|lb| lb.locality_lb_setting.as_ref()).is_some_and(|l| !l.distribute.is_empty());
        outliers |= outlier || weights;
        for key in lb
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .map(|l| l.failover_priority.as_slice())
            .unwrap_or_default()
        {
            keys.push(key.split_once('=').map_or(key.as_str(), |(k, _)| k).to_string());
        }
    };
    for policy in policies {
        let TrafficPolicy { load_balancer, outlier_detection, port_level_settings, .. } = policy;
        note(load_balancer.as_ref(), outlier_detection.is_some());
        for port in port_level_settings {
            note(port.load_balancer.as_ref(), port.outlier_detection.is_some());
        }
    }
    if outliers {
        keys.extend(LOCALITY_LABELS.iter().map(|k| k.to_string()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_istio_locality_label_wins_over_topology_labels() {
        let l = Locality::of(&labels(&[
            ("istio-locality", "us-east.zone1"),
            ("topology.kubernetes.io/zone", "z9"),
        ]));
        assert_eq!((l.region.as_str(), l.zone.as_str(), l.subzone.as_str()), ("us-east", "zone1", ""));
        let l = Locality::of(&labels(&[
            ("topology.kubernetes.io/region", "eu"),
            ("topology.kubernetes.io/zone", "b"),
        ]));
        assert_eq!((l.region.as_str(), l.zone.as_str()), ("eu", "b"));
        assert!(Locality::of(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn priorities_follow_how_much_of_the_locality_matches() {
        let at = |r: &str, z: &str, s: &str| Locality { region: r.into(), zone: z.into(), subzone: s.into() };
        let proxy = at("r1", "z1", "s1");
        assert_eq!(at("r1", "z1", "s1").priority_from(&proxy), 0);
        assert_eq!(at("r1", "z1", "s2").priority_from(&proxy), 1);
        assert_eq!(at("r1", "z2", "s1").priority_from(&proxy), 2);
        assert_eq!(at("r2", "z1", "s1").priority_from(&proxy), 3);
    }
}
