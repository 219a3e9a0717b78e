//! A DestinationRule's traffic policy for one cluster: which parts apply
//! ([`ClusterPolicy::resolve`], Istio's `MergeSubsetTrafficPolicy`), and
//! what each part sets on the Envoy cluster, as Istio's cluster builder
//! does (`applyConnectionPool`, `applyOutlierDetection`, slow start).
//!
//! Merging, for port P of the host and subset S:
//!
//! 1. The rule's policy: its `portLevelSettings` entry for P when there is
//!    one, which replaces the rule's `loadBalancer`, `connectionPool`,
//!    `outlierDetection` and `tls` as a whole (a part the entry leaves out
//!    falls back to the default, not to the rule's), else the rule's own.
//! 2. S's policy on top: S's `portLevelSettings` entry for P, when there is
//!    one, again replaces all four parts; otherwise each part S sets
//!    replaces the same part of step 1, and the parts S leaves out keep it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection, UpstreamConnectionOptions,
    circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    RuntimeDouble, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use crate::api::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, RetryBudget, SimpleLb, Subset, TrafficPolicy,
};
use crate::model::protocol::Protocol;
use crate::translate::endpoint::Failover;
use crate::translate::{parse_duration, seconds};

use super::CONNECT_TIMEOUT_SECONDS;

/// The parts of a DestinationRule's traffic policy that apply to one
/// cluster, merged as the module doc says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `None`: Istio's auto mTLS.
    pub tls: Option<ClientTlsSettings>,
    /// The rule's or the subset's; port-level settings have none.
    pub retry_budget: Option<RetryBudget>,
}

impl ClusterPolicy {
    /// The policy for `port` of the rule's host, for `subset` or the whole host.
    pub fn resolve(rule: Option<&DestinationRuleSpec>, subset: Option<&Subset>, port: u16) -> Self {
        let Some(rule) = rule else { return Self::default() };
        let mut out = rule.traffic_policy.as_ref().map(|p| Self::of(p, port)).unwrap_or_default();
        let Some(own) = subset.and_then(|s| s.traffic_policy.as_ref()) else { return out };
        let retry_budget = own.retry_budget.clone().or(out.retry_budget.take());
        match port_level(own, port) {
            Some(settings) => out = Self::of_port(settings),
            None => {
                let own = Self::of(own, port);
                out.load_balancer = own.load_balancer.or(out.load_balancer);
                out.connection_pool = own.connection_pool.or(out.connection_pool);
                out.outlier_detection = own.outlier_detection.or(out.outlier_detection);
                out.tls = own.tls.or(out.tls);
            }
        }
        out.retry_budget = retry_budget;
        out
    }

    /// One policy for `port`: its port-level entry, or else its own parts.
    fn of(policy: &TrafficPolicy, port: u16) -> Self {
        let parts = match port_level(policy, port) {
            Some(settings) => Self::of_port(settings),
            None => Self {
                load_balancer: policy.load_balancer.clone(),
                connection_pool: policy.connection_pool.clone(),
                outlier_detection: policy.outlier_detection.clone(),
                tls: policy.tls.clone(),
                retry_budget: None,
            },
        };
        Self { retry_budget: policy.retry_budget.clone(), ..parts }
    }

    fn of_port(settings: &PortTrafficPolicy) -> Self {
        Self {
            load_balancer: settings.load_balancer.clone(),
            connection_pool: settings.connection_pool.clone(),
            outlier_detection: settings.outlier_detection.clone(),
            tls: settings.tls.clone(),
            retry_budget: None,
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

    /// How the cluster's endpoints are ordered for a proxy with
    /// `proxy_labels`: locality failover, which Istio turns on by default
    /// but only where outliers are ejected (nothing would fail over
    /// otherwise), unless `localityLbSetting.enabled` is false; or
    /// locality weights, when the setting `distribute`s them.
    pub fn failover<'a>(&'a self, proxy_labels: &'a BTreeMap<String, String>) -> Option<Failover<'a>> {
        let setting = self.load_balancer.as_ref().and_then(|lb| lb.locality_lb_setting.as_ref());
        if setting.is_some_and(|s| s.enabled == Some(false)) {
            return None;
        }
        let distribute = setting.map(|s| s.distribute.as_slice()).unwrap_or_default();
        if distribute.is_empty() {
            self.outlier_detection.as_ref()?;
        }
        Some(Failover {
            proxy_labels,
            failover: setting.map(|s| s.failover.as_slice()).unwrap_or_default(),
            failover_priority: setting.map(|s| s.failover_priority.as_slice()).unwrap_or_default(),
            distribute,
        })
    }

    /// What a TCP proxy sending only to this cluster takes from its
    /// connection pool, as Istio's single-destination TCP proxy does:
    /// `tcp.idleTimeout` (unset: Envoy's 1h) and `tcp.maxConnectionDuration`.
    pub fn tcp_proxy_timeouts(&self) -> TcpProxyTimeouts {
        let tcp = self.connection_pool.as_ref().and_then(|p| p.tcp.as_ref());
        let duration = |text: Option<&String>| text.and_then(|t| parse_duration(t));
        TcpProxyTimeouts {
            idle: duration(tcp.and_then(|t| t.idle_timeout.as_ref())),
            max_connection_duration: duration(tcp.and_then(|t| t.max_connection_duration.as_ref())),
        }
    }

    pub(super) fn simple(&self) -> Option<SimpleLb> {
        self.load_balancer.as_ref().and_then(|lb| lb.simple)
    }
}

/// A TCP proxy's timeouts from a cluster's connection pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpProxyTimeouts {
    pub idle: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
}

/// The first `portLevelSettings` entry for `port`, as Istio picks it.
fn port_level(policy: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    policy
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().and_then(|s| s.number) == Some(u32::from(port)))
}

/// A count from the API (an int32) when it is above zero, which is how
/// Istio tells "set" from "unset" for these fields.
fn positive(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

/// A duration for a field Envoy wants above zero; validation refuses the
/// others, so only an object that bypassed it gets the default here.
fn positive_duration(text: &str) -> Option<Duration> {
    parse_duration(text).filter(|d| d.seconds > 0 || d.nanos > 0)
}

/// Circuit breakers, connect timeout, TCP keepalive and the upstream HTTP
/// options of a connection pool; without one, Istio's defaults (limits
/// lifted, 10 s to connect).
pub(crate) fn apply_connection_pool(
    cluster: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    protocol: Protocol,
) {
    let (http, tcp) = (pool.and_then(|p| p.http.as_ref()), pool.and_then(|p| p.tcp.as_ref()));
    let limit = |value: Option<i32>| Some(UInt32Value { value: positive(value).unwrap_or(u32::MAX) });
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: limit(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
            ..Default::default()
        }],
        ..Default::default()
    });
    cluster.connect_timeout = Some(
        tcp.and_then(|t| t.connect_timeout.as_deref())
            .and_then(positive_duration)
            .unwrap_or(seconds(CONNECT_TIMEOUT_SECONDS)),
    );
    if let Some(keepalive) = tcp.and_then(|t| t.tcp_keepalive.as_ref()) {
        // Envoy counts keepalive times in whole seconds; Istio truncates, we
        // keep at least one so a short time is not read as "the system's".
        let whole = |d: Option<&String>| {
            d.and_then(|d| parse_duration(d))
                .map(|d| UInt32Value { value: u32::try_from(d.seconds).unwrap_or(u32::MAX).max(1) })
        };
        cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_probes: keepalive.probes.map(|value| UInt32Value { value }),
                keepalive_time: whole(keepalive.time.as_ref()),
                keepalive_interval: whole(keepalive.interval.as_ref()),
            }),
            ..Default::default()
        });
    }

    // The HTTP connection's idle timeout is http's, else tcp's, as Istio.
    let idle_timeout = http
        .and_then(|h| h.idle_timeout.as_deref())
        .or(tcp.and_then(|t| t.idle_timeout.as_deref()))
        .and_then(parse_duration);
    let common = CommonHttpProtocolOptions {
        idle_timeout,
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection))
            .map(|value| UInt32Value { value }),
        max_connection_duration: tcp
            .and_then(|t| t.max_connection_duration.as_deref())
            .and_then(parse_duration),
        ..Default::default()
    };
    let streams = positive(http.and_then(|h| h.max_concurrent_streams)).map(|value| UInt32Value { value });
    let h2 = Http2ProtocolOptions { max_concurrent_streams: streams, ..Default::default() };
    let upgrade = http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade);
    let client_protocol = http.and_then(|h| h.use_client_protocol) == Some(true);
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    use http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig};
    let upstream = if client_protocol && protocol.is_http() {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(h2),
            ..Default::default()
        })
    } else if protocol.is_http2() || (upgrade && protocol == Protocol::Http) {
        // Istio upgrades only plain HTTP ports; HTTP/2 ones speak it already.
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
        })
    } else if common != CommonHttpProtocolOptions::default() {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())),
        })
    } else {
        return;
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: (common != CommonHttpProtocolOptions::default()).then_some(common),
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    };
    use prost::Name;
    cluster.typed_extension_protocol_options =
        [(HttpProtocolOptions::full_name(), crate::translate::any(&options))].into();
}

/// A retry budget on the circuit breaker, as Istio's `applyRetryBudget`:
/// concurrent retries capped at `percent` of the requests in flight, with
/// `minRetryConcurrency` always allowed; Envoy then ignores `max_retries`.
/// Unset parts take the API's documented defaults, 20% and 3 (Istio writes
/// 0.2, which Envoy reads as 0.2%).
pub(super) fn apply_retry_budget(cluster: &mut Cluster, budget: Option<&RetryBudget>) {
    let Some(budget) = budget else { return };
    let Some(thresholds) = cluster.circuit_breakers.as_mut().and_then(|c| c.thresholds.first_mut()) else {
        return;
    };
    thresholds.retry_budget = Some(circuit_breakers::thresholds::RetryBudget {
        budget_percent: Some(Percent { value: budget.percent.unwrap_or(20.0) }),
        min_retry_concurrency: Some(UInt32Value {
            value: budget.min_retry_concurrency.filter(|n| *n > 0).unwrap_or(3),
        }),
    });
}

/// Istio's `applyOutlierDetection`: success-rate ejection off, each error
/// count enforced fully when set, and the panic threshold at
/// `minHealthPercent` (0 unless given), so traffic never goes back to
/// ejected endpoints just because few are left, as Envoy's default 50% would.
pub(super) fn apply_outlier_detection(cluster: &mut Cluster, outlier: Option<&OutlierDetection>) {
    let Some(outlier) = outlier else { return };
    let value = |value: u32| Some(UInt32Value { value });
    let enforce = |count: u32| value(if count > 0 { 100 } else { 0 });
    let mut out = EnvoyOutlierDetection { enforcing_success_rate: value(0), ..Default::default() };
    // The deprecated count means gateway errors only (502, 503, 504), as
    // today's Istio reads it; Istio 1.1 counted every 5xx.
    if let Some(count) = positive(outlier.consecutive_errors) {
        out.consecutive_gateway_failure = value(count);
        out.enforcing_consecutive_gateway_failure = value(100);
        out.enforcing_consecutive_5xx = value(0);
    }
    if let Some(count) = outlier.consecutive_5xx_errors {
        out.consecutive_5xx = value(count);
        out.enforcing_consecutive_5xx = enforce(count);
    }
    if let Some(count) = outlier.consecutive_gateway_errors {
        out.consecutive_gateway_failure = value(count);
        out.enforcing_consecutive_gateway_failure = enforce(count);
    }
    out.interval = outlier.interval.as_deref().and_then(positive_duration);
    out.base_ejection_time = outlier.base_ejection_time.as_deref().and_then(positive_duration);
    out.max_ejection_percent =
        positive(outlier.max_ejection_percent).map(|v| UInt32Value { value: v.min(100) });
    if outlier.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(count) = outlier.consecutive_local_origin_failures.filter(|n| *n > 0) {
            out.consecutive_local_origin_failure = value(count);
            out.enforcing_consecutive_local_origin_failure = value(100);
        }
        out.enforcing_local_origin_success_rate = value(0);
    }
    cluster.outlier_detection = Some(out);
    let min_health = outlier.min_health_percent.unwrap_or(0).clamp(0, 100);
    cluster.common_lb_config.get_or_insert_default().healthy_panic_threshold =
        Some(Percent { value: f64::from(min_health) });
}

/// Locality weights (`distribute`) count only where the cluster says so.
pub(super) fn apply_locality_weights(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    let setting = lb.and_then(|lb| lb.locality_lb_setting.as_ref());
    if setting.is_some_and(|s| s.enabled != Some(false) && !s.distribute.is_empty()) {
        cluster.common_lb_config.get_or_insert_default().locality_config_specifier = Some(
            cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(Default::default()),
        );
    }
}

/// Envoy's slow start, for the balancers that have it (round robin and
/// least request): `warmup` when given, else `warmupDurationSecs`.
pub(super) fn slow_start(lb: Option<&LoadBalancerSettings>) -> Option<cluster::SlowStartConfig> {
    let lb = lb?;
    if let Some(warmup) = &lb.warmup {
        return Some(cluster::SlowStartConfig {
            slow_start_window: parse_duration(&warmup.duration),
            aggression: warmup.aggression.map(|default_value| RuntimeDouble {
                default_value,
                runtime_key: "upstream.slow_start.aggression".into(),
            }),
            min_weight_percent: warmup.minimum_percent.map(|value| Percent { value }),
        });
    }
    let window: Duration = parse_duration(lb.warmup_duration_secs.as_deref()?)?;
    Some(cluster::SlowStartConfig { slow_start_window: Some(window), ..Default::default() })
}
