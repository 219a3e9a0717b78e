//! Outbound clusters: one per Service port (`outbound|<port>||<host>`) and
//! one per DestinationRule subset (`outbound|<port>|<subset>|<host>`), as
//! Istio names them. Endpoints come by EDS over the same ADS stream
//! (see [`super::endpoint`]), named after the cluster.
//!
//! A DestinationRule's traffic policy is merged as Istio does: a subset's
//! policy overrides the rule's, field by field, and a `portLevelSettings`
//! entry for the cluster's port overrides both. Load balancing and TLS
//! ([`super::tls`]: auto mTLS unless the rule sets `tls`) are translated
//! today; connection pools and outlier detection come next and belong in
//! [`ClusterPolicy`].

use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, circuit_breakers, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, config_source,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use prost::Name;

use super::tls;
use super::{any, seconds};
use crate::api::destination_rule::{
    ClientTlsSettings, ConsistentHashLb, DestinationRuleSpec, LoadBalancerSettings, SimpleLb, Subset,
    TrafficPolicy,
};
use crate::model::mesh::{DestinationRuleView, PortView, ServiceView};

/// Where traffic to a destination nobody can serve goes; no endpoints, so
/// Envoy answers 503 (`UH`).
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

pub(crate) const CONNECT_TIMEOUT_SECONDS: i64 = 10;

/// Istio's default minimum ring size for consistent hashing.
const DEFAULT_RING_SIZE: u64 = 1024;

/// `outbound|<port>|<subset>|<host>` (subset empty for the whole Service).
pub fn outbound_name(port: u16, subset: &str, hostname: &str) -> String {
    format!("outbound|{port}|{subset}|{hostname}")
}

/// `inbound|<port>||`: the application's own port, on the inbound side.
pub fn inbound_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// The parts of a DestinationRule's traffic policy that apply to one
/// cluster, after merging subset and port-level settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    /// `None`: Istio's auto mTLS.
    pub tls: Option<ClientTlsSettings>,
}

impl ClusterPolicy {
    /// The policy for `port` of the rule's host, for `subset` or the whole host.
    pub fn resolve(rule: Option<&DestinationRuleSpec>, subset: Option<&Subset>, port: u16) -> Self {
        let mut out = Self::default();
        let Some(rule) = rule else { return out };
        // Later layers override earlier ones, field by field.
        for policy in [rule.traffic_policy.as_ref(), subset.and_then(|s| s.traffic_policy.as_ref())]
            .into_iter()
            .flatten()
        {
            out.apply(policy, port);
        }
        out
    }

    fn apply(&mut self, policy: &TrafficPolicy, port: u16) {
        if policy.load_balancer.is_some() {
            self.load_balancer = policy.load_balancer.clone();
        }
        if policy.tls.is_some() {
            self.tls = policy.tls.clone();
        }
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|s| s.number) == Some(u32::from(port)));
        if let Some(port_level) = port_level {
            if port_level.load_balancer.is_some() {
                self.load_balancer = port_level.load_balancer.clone();
            }
            if port_level.tls.is_some() {
                self.tls = port_level.tls.clone();
            }
        }
    }

    /// The consistent-hash settings, which routes carry as hash policies.
    pub fn consistent_hash(&self) -> Option<&ConsistentHashLb> {
        self.load_balancer.as_ref().and_then(|lb| lb.consistent_hash.as_ref())
    }

    /// Whether the cluster's endpoints come by EDS (not PASSTHROUGH load balancing).
    pub fn uses_eds(&self) -> bool {
        self.consistent_hash().is_some() || self.simple() != Some(SimpleLb::Passthrough)
    }

    fn simple(&self) -> Option<SimpleLb> {
        self.load_balancer.as_ref().and_then(|lb| lb.simple)
    }
}

/// The clusters of one Service port: the whole port, then each subset of
/// its DestinationRule.
pub fn service_port_clusters(
    service: &ServiceView,
    port: &PortView,
    rule: Option<&DestinationRuleView>,
    trust_domain: &str,
) -> Vec<Cluster> {
    let spec = rule.map(|r| &r.spec);
    let peer_ids: Vec<String> = service
        .service_accounts
        .iter()
        .map(|sa| tls::spiffe_id(trust_domain, &service.key.namespace, sa))
        .collect();
    let cluster = |subset: Option<&Subset>| {
        let subset_name = subset.map_or("", |s| s.name.as_str());
        let identity = PeerIdentity {
            sni: tls::mesh_sni(port.port, subset_name, &service.hostname),
            peer_ids: &peer_ids,
        };
        outbound_cluster(
            outbound_name(port.port, subset_name, &service.hostname),
            port,
            &ClusterPolicy::resolve(spec, subset, port.port),
            &identity,
        )
    };
    let mut out = vec![cluster(None)];
    for subset in spec.map(|s| s.subsets.as_slice()).unwrap_or_default() {
        out.push(cluster(Some(subset)));
    }
    out
}

/// What a client checks of a mesh server, and the SNI it sends.
struct PeerIdentity<'a> {
    sni: String,
    peer_ids: &'a [String],
}

/// One EDS cluster; PASSTHROUGH load balancing makes it an original-destination cluster instead.
fn outbound_cluster(
    name: String,
    port: &PortView,
    policy: &ClusterPolicy,
    peer: &PeerIdentity<'_>,
) -> Cluster {
    let mut cluster = Cluster {
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECONDS)),
        circuit_breakers: Some(default_circuit_breakers()),
        ..Default::default()
    };
    match &policy.tls {
        Some(settings) => {
            cluster.transport_socket = tls::client_transport_socket(settings, &peer.sni, peer.peer_ids)
        }
        None => cluster.transport_socket_matches = tls::auto_mtls_matches(&peer.sni, peer.peer_ids),
    }
    if port.protocol.is_http2() {
        cluster.typed_extension_protocol_options =
            [(HttpProtocolOptions::full_name(), any(&http2_options()))].into();
    }
    apply_load_balancer(&mut cluster, policy);
    if policy.uses_eds() {
        cluster.cluster_discovery_type =
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds.into()));
        cluster.eds_cluster_config = Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: name.clone(),
        });
    }
    cluster.name = name;
    cluster
}

fn apply_load_balancer(cluster: &mut Cluster, policy: &ClusterPolicy) {
    use cluster::LbPolicy;
    if let Some(hash) = policy.consistent_hash() {
        if let Some(maglev) = &hash.maglev {
            cluster.lb_policy = LbPolicy::Maglev.into();
            cluster.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: maglev.table_size.map(|value| UInt64Value { value }),
            }));
        } else {
            let size = hash
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size)
                .unwrap_or(DEFAULT_RING_SIZE);
            cluster.lb_policy = LbPolicy::RingHash.into();
            cluster.lb_config = Some(cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: size }),
                ..Default::default()
            }));
        }
        return;
    }
    cluster.lb_policy = match policy.simple() {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => {
            cluster.cluster_discovery_type =
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst.into()));
            LbPolicy::ClusterProvided
        }
        // Istio's default is LEAST_REQUEST; LEAST_CONN is its older name.
        Some(SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified) | None => {
            LbPolicy::LeastRequest
        }
    }
    .into();
}

/// `ads {}`, API v3: where EDS and RDS resources come from.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// HTTP/2 to the upstream, for http2 and gRPC ports.
pub(crate) fn http2_options() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    }
}

/// Istio lifts Envoy's default limits (1024 connections, pending and
/// active requests), which surprise busy services; DestinationRule
/// connection pools set real ones.
fn default_circuit_breakers() -> CircuitBreakers {
    let max = Some(UInt32Value { value: u32::MAX });
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: max,
            max_pending_requests: max,
            max_requests: max,
            max_retries: max,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `BlackHoleCluster`: a static cluster with no endpoints.
pub fn black_hole_cluster() -> Cluster {
    Cluster {
        name: BLACK_HOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static.into(),
        )),
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECONDS)),
        ..Default::default()
    }
}
