//! Outbound clusters: one per Service port (`outbound|<port>||<host>`) and
//! one per DestinationRule subset (`outbound|<port>|<subset>|<host>`), as
//! Istio names them. Endpoints come by EDS over the same ADS stream
//! (see [`super::endpoint`]), named after the cluster.
//!
//! A DestinationRule's traffic policy is merged as Istio merges it
//! ([`policy`] says how) into a [`ClusterPolicy`]: load balancing, the
//! connection pool (circuit breakers, timeouts, upstream HTTP options),
//! outlier detection, and TLS ([`super::tls`]: auto mTLS unless the rule
//! sets `tls`).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, Metadata, config_source,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::UInt64Value;

mod policy;

pub(super) use policy::apply_connection_pool;
pub use policy::{ClusterPolicy, TcpProxyTimeouts};

use super::seconds;
use super::{telemetry, tls};
use crate::api::destination_rule::{SimpleLb, Subset};
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

/// The host of an [`outbound_name`]; `None` for any other name.
pub fn outbound_host(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("outbound|")?;
    let mut fields = rest.splitn(3, '|');
    let (_port, _subset, host) = (fields.next()?, fields.next()?, fields.next()?);
    Some(host)
}

/// `inbound|<port>||`: the application's own port, on the inbound side.
pub fn inbound_name(port: u16) -> String {
    format!("inbound|{port}||")
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
    let mut peer_ids: Vec<String> = service
        .service_accounts
        .iter()
        .map(|sa| tls::spiffe_id(trust_domain, &service.key.namespace, sa))
        .collect();
    // A ServiceEntry names more identities its servers may present.
    peer_ids.extend(service.entry.iter().flat_map(|e| e.subject_alt_names.iter().cloned()));
    let cluster = |subset: Option<&Subset>| {
        let subset_name = subset.map_or("", |s| s.name.as_str());
        let identity = PeerIdentity {
            sni: tls::mesh_sni(port.port, subset_name, &service.hostname),
            peer_ids: &peer_ids,
        };
        let policy = ClusterPolicy::resolve(spec, subset, port.port);
        let mut cluster = outbound_cluster(
            outbound_name(port.port, subset_name, &service.hostname),
            port,
            &policy,
            &identity,
        );
        if let Some(entry) = &service.entry {
            super::service_entry::adjust_cluster(&mut cluster, service, entry, port, subset, &policy);
        }
        // Names the Service in the caller's metrics.
        cluster.metadata = Some(Metadata {
            filter_metadata: [telemetry::cluster_metadata(service)].into(),
            ..Default::default()
        });
        cluster
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
    let mut cluster = Cluster::default();
    policy::apply_connection_pool(&mut cluster, policy.connection_pool.as_ref(), port.protocol);
    policy::apply_retry_budget(&mut cluster, policy.retry_budget.as_ref());
    policy::apply_outlier_detection(&mut cluster, policy.outlier_detection.as_ref());
    policy::apply_locality_weights(&mut cluster, policy.load_balancer.as_ref());
    match &policy.tls {
        Some(settings) => {
            cluster.transport_socket = tls::client_transport_socket(settings, &peer.sni, peer.peer_ids)
        }
        None => cluster.transport_socket_matches = tls::auto_mtls_matches(&peer.sni, peer.peer_ids),
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
    let slow_start_config = policy::slow_start(policy.load_balancer.as_ref());
    cluster.lb_policy = match policy.simple() {
        Some(SimpleLb::RoundRobin) => {
            cluster.lb_config = slow_start_config.map(|c| {
                cluster::LbConfig::RoundRobinLbConfig(cluster::RoundRobinLbConfig {
                    slow_start_config: Some(c),
                })
            });
            LbPolicy::RoundRobin
        }
        // Envoy has no slow start for random choice; Istio drops it there too.
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => {
            cluster.cluster_discovery_type =
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst.into()));
            LbPolicy::ClusterProvided
        }
        // Istio's default is LEAST_REQUEST; LEAST_CONN is its older name.
        Some(SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified) | None => {
            cluster.lb_config = slow_start_config.map(|c| {
                cluster::LbConfig::LeastRequestLbConfig(cluster::LeastRequestLbConfig {
                    slow_start_config: Some(c),
                    ..Default::default()
                })
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_back_from_an_outbound_name() {
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(outbound_host(&outbound_name(9080, "v1", host)), Some(host));
        assert_eq!(outbound_host(&outbound_name(9080, "", host)), Some(host));
        assert_eq!(outbound_host(&inbound_name(9080)), None);
        assert_eq!(outbound_host("PassthroughCluster"), None);
    }
}
