//! DestinationRule traffic policies on the clusters productpage's sidecar
//! gets: connection pools, outlier detection, slow start, cookie
//! attributes, and how rule, subset and port-level settings merge. The
//! last test loads a rule that sets every one of these fields into a real
//! Envoy.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
use envoy_types::pb::envoy::config::route::v3::{route, route_action};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use prost::{Message, Name};
use serde_json::{Value, json};

use super::envoy::assert_envoy_accepts;
use super::{NAMESPACE, bookinfo, mesh_view, permissive, productpage};
use crate::index::{DestinationRules, Index};
use crate::testing::objects::config;
use crate::translate::sidecar::{Outbound, inbound, outbound};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn with_rule(spec: Value) -> Index {
    let mut index = bookinfo();
    index.apply::<DestinationRules>(&config::<crate::api::DestinationRule>(NAMESPACE, "reviews", spec));
    index
}

fn translate(index: &Index) -> Outbound {
    let view = mesh_view(index);
    outbound(&view, &view.scope(&productpage(index)))
}

fn cluster(out: &Outbound, subset: &str) -> Cluster {
    let name = format!("outbound|9080|{subset}|{REVIEWS}");
    out.clusters.iter().find(|c| c.name == name).cloned().unwrap_or_else(|| panic!("cluster {name}"))
}

/// The (max connections, pending, requests, retries) circuit breaker limits.
fn limits(c: &Cluster) -> [u32; 4] {
    let t = &c.circuit_breakers.as_ref().expect("circuit breakers").thresholds[0];
    [&t.max_connections, &t.max_pending_requests, &t.max_requests, &t.max_retries]
        .map(|v| v.as_ref().expect("a limit").value)
}

fn http_options(c: &Cluster) -> Option<HttpProtocolOptions> {
    c.typed_extension_protocol_options
        .get(&HttpProtocolOptions::full_name())
        .map(|any| HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes"))
}

const MAX: u32 = u32::MAX;

#[test]
fn without_a_pool_the_limits_are_lifted_and_connecting_takes_ten_seconds() {
    let out = translate(&bookinfo());
    let c = cluster(&out, "");
    assert_eq!(limits(&c), [MAX; 4]);
    assert_eq!(c.connect_timeout.map(|d| d.seconds), Some(10));
    assert!(c.outlier_detection.is_none() && c.common_lb_config.is_none());
    assert!(http_options(&c).is_none(), "an HTTP/1.1 port without a pool needs no protocol options");
}

#[test]
fn a_connection_pool_sets_circuit_breakers_timeouts_keepalive_and_http_options() {
    let out = translate(&with_rule(json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
        "tcp": {"maxConnections": 1, "connectTimeout": "250ms", "maxConnectionDuration": "1h",
                "idleTimeout": "5m", "tcpKeepalive": {"probes": 3, "time": "30s", "interval": "500ms"}},
        "http": {"http1MaxPendingRequests": 2, "http2MaxRequests": 3, "maxRetries": 4,
                 "maxRequestsPerConnection": 1, "idleTimeout": "30s", "maxConcurrentStreams": 50}}}})));
    let c = cluster(&out, "");
    assert_eq!(limits(&c), [1, 2, 3, 4]);
    let timeout = c.connect_timeout.expect("connect timeout");
    assert_eq!((timeout.seconds, timeout.nanos), (0, 250_000_000));
    let keepalive = c.upstream_connection_options.and_then(|o| o.tcp_keepalive).expect("keepalive");
    let values = [keepalive.keepalive_probes, keepalive.keepalive_time, keepalive.keepalive_interval]
        .map(|v| v.map(|v| v.value));
    // Whole seconds for Envoy, at least one.
    assert_eq!(values, [Some(3), Some(30), Some(1)]);
    let options = http_options(&c).expect("HTTP protocol options");
    let common = options.common_http_protocol_options.expect("common options");
    // http's idle timeout wins over tcp's.
    assert_eq!(common.idle_timeout.map(|d| d.seconds), Some(30));
    assert_eq!(common.max_requests_per_connection.map(|v| v.value), Some(1));
    assert_eq!(common.max_connection_duration.map(|d| d.seconds), Some(3600));
    // HTTP/1.1 port: no upgrade, so maxConcurrentStreams has nothing to limit.
    assert!(matches!(
        options.upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)
                )
            }
        ))
    ));
}

#[test]
fn zero_and_negative_counts_leave_the_default_as_istio_does() {
    let out = translate(&with_rule(json!({"host": "reviews", "trafficPolicy": {"connectionPool": {
        "tcp": {"maxConnections": 0, "idleTimeout": "5m"}, "http": {"http1MaxPendingRequests": -1, "maxRequestsPerConnection": 0}}}})));
    let c = cluster(&out, "");
    assert_eq!(limits(&c), [MAX; 4]);
    let common = http_options(&c).and_then(|o| o.common_http_protocol_options).expect("common options");
    assert_eq!(common, Common { idle_timeout: common.idle_timeout, ..Default::default() });
    assert_eq!(common.idle_timeout.map(|d| d.seconds), Some(300), "tcp's idle timeout when http has none");
}

#[test]
fn h2_upgrade_and_client_protocol_choose_the_upstream_protocol() {
    let upstream = |http: Value| {
        let out = translate(&with_rule(
            json!({"host": "reviews", "trafficPolicy": {"connectionPool": {"http": http}}}),
        ));
        let options = http_options(&cluster(&out, "")).expect("protocol options");
        format!("{:?}", options.upstream_protocol_options)
    };
    let upgraded = upstream(json!({"h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 7}));
    assert!(upgraded.contains("Http2ProtocolOptions") && upgraded.contains("value: 7"), "{upgraded}");
    let kept = upstream(json!({"h2UpgradePolicy": "DO_NOT_UPGRADE", "idleTimeout": "1s"}));
    assert!(kept.contains("ExplicitHttpConfig") && !kept.contains("Http2"), "{kept}");
    let client = upstream(json!({"useClientProtocol": true}));
    assert!(client.contains("UseDownstreamProtocolConfig"), "{client}");
}

#[test]
fn outlier_detection_follows_istio_with_the_panic_threshold_off() {
    let out = translate(&with_rule(json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {
        "consecutive5xxErrors": 7, "consecutiveGatewayErrors": 0, "interval": "1s", "baseEjectionTime": "3m",
        "maxEjectionPercent": 100, "splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 2}}})));
    let c = cluster(&out, "");
    let od = c.outlier_detection.expect("outlier detection");
    let v = |x: Option<envoy_types::pb::google::protobuf::UInt32Value>| x.map(|x| x.value);
    assert_eq!(v(od.enforcing_success_rate), Some(0));
    assert_eq!((v(od.consecutive_5xx), v(od.enforcing_consecutive_5xx)), (Some(7), Some(100)));
    assert_eq!(
        (v(od.consecutive_gateway_failure), v(od.enforcing_consecutive_gateway_failure)),
        (Some(0), Some(0))
    );
    assert_eq!(od.interval.map(|d| d.seconds), Some(1));
    assert_eq!(od.base_ejection_time.map(|d| d.seconds), Some(180));
    assert_eq!(v(od.max_ejection_percent), Some(100));
    assert!(od.split_external_local_origin_errors);
    assert_eq!(v(od.consecutive_local_origin_failure), Some(2));
    assert_eq!(v(od.enforcing_consecutive_local_origin_failure), Some(100));
    let panic = c.common_lb_config.and_then(|l| l.healthy_panic_threshold).expect("panic threshold");
    assert_eq!(panic.value, 0.0);

    let out = translate(&with_rule(json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {
        "consecutiveErrors": 3, "minHealthPercent": 40}}})));
    let c = cluster(&out, "");
    let od = c.outlier_detection.expect("outlier detection");
    // The deprecated field counts gateway errors, as today's Istio reads it.
    assert_eq!(v(od.consecutive_gateway_failure), Some(3));
    assert_eq!(v(od.enforcing_consecutive_gateway_failure), Some(100));
    assert_eq!(v(od.enforcing_consecutive_5xx), Some(0));
    assert_eq!(c.common_lb_config.and_then(|l| l.healthy_panic_threshold).map(|p| p.value), Some(40.0));
}

#[test]
fn warmup_sets_slow_start_on_round_robin_and_least_request_only() {
    let slow_start = |lb: Value| {
        let out = translate(&with_rule(json!({"host": "reviews", "trafficPolicy": {"loadBalancer": lb}})));
        match cluster(&out, "").lb_config {
            Some(cluster::LbConfig::RoundRobinLbConfig(c)) => c.slow_start_config,
            Some(cluster::LbConfig::LeastRequestLbConfig(c)) => c.slow_start_config,
            _ => None,
        }
    };
    let plain = slow_start(json!({"warmupDurationSecs": "60s"})).expect("least request slow start");
    assert_eq!(plain.slow_start_window.map(|d| d.seconds), Some(60));
    let tuned = slow_start(
        json!({"simple": "ROUND_ROBIN", "warmupDurationSecs": "5s", "warmup": {"duration": "90s", "minimumPercent": 20, "aggression": 2.5}}),
    )
    .expect("round robin slow start");
    assert_eq!(tuned.slow_start_window.map(|d| d.seconds), Some(90), "warmup wins over warmupDurationSecs");
    assert_eq!(tuned.min_weight_percent.map(|p| p.value), Some(20.0));
    assert_eq!(tuned.aggression.map(|a| a.default_value), Some(2.5));
    assert_eq!(slow_start(json!({"simple": "RANDOM", "warmupDurationSecs": "60s"})), None);
}

#[test]
fn cookie_attributes_reach_the_routes_hash_policy() {
    let out = translate(&with_rule(
        json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"consistentHash": {
        "httpCookie": {"name": "session", "ttl": "60s", "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}}}}}),
    ));
    let route = out
        .routes
        .iter()
        .flat_map(|r| &r.virtual_hosts)
        .find(|v| v.name == format!("{REVIEWS}:9080"))
        .map(|v| v.routes[0].clone())
        .expect("the reviews route");
    let Some(route::Action::Route(action)) = route.action else { panic!("a route action") };
    let Some(route_action::hash_policy::PolicySpecifier::Cookie(cookie)) =
        action.hash_policy[0].policy_specifier.clone()
    else {
        panic!("a cookie hash policy")
    };
    let attributes: Vec<(String, String)> =
        cookie.attributes.into_iter().map(|a| (a.name, a.value)).collect();
    assert_eq!(attributes, [("SameSite".into(), "Strict".into()), ("Secure".into(), String::new())]);
}

#[test]
fn subset_and_port_level_settings_merge_as_istio_merges_them() {
    let out = translate(&with_rule(json!({"host": "reviews",
        "trafficPolicy": {
            "connectionPool": {"tcp": {"maxConnections": 10}},
            "outlierDetection": {"consecutive5xxErrors": 5},
            "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": {"tcp": {"maxConnections": 20}}}]},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 2}}},
            {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 30}},
                "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}}]})));
    let connections = |c: &Cluster| limits(c)[0];
    let ejects = |c: &Cluster| c.outlier_detection.as_ref().and_then(|o| o.consecutive_5xx).map(|v| v.value);
    // The rule's port-level entry replaces the rule's policy whole: its
    // pool, and no outlier detection, since the entry sets none.
    let whole = cluster(&out, "");
    assert_eq!((connections(&whole), ejects(&whole)), (20, None));
    // A subset without a policy takes the rule's, port level included.
    let v1 = cluster(&out, "v1");
    assert_eq!((connections(&v1), ejects(&v1)), (20, None));
    // A subset's part replaces that part only.
    let v2 = cluster(&out, "v2");
    assert_eq!((connections(&v2), ejects(&v2)), (20, Some(2)));
    // A subset's port-level entry replaces everything: the subset's own
    // pool is gone too, back to the defaults.
    let v3 = cluster(&out, "v3");
    assert_eq!((connections(&v3), ejects(&v3)), (MAX, None));
    assert_eq!(v3.lb_policy, i32::from(cluster::LbPolicy::Random));
}

/// Every field this module translates, at rule, port and subset level, in
/// a real Envoy's `--mode validate`.
/// The (percent, minimum) of the circuit breaker's retry budget.
fn retry_budget(c: &Cluster) -> Option<(f64, u32)> {
    let t = &c.circuit_breakers.as_ref().expect("circuit breakers").thresholds[0];
    t.retry_budget.as_ref().map(|b| {
        (
            b.budget_percent.as_ref().expect("a percent").value,
            b.min_retry_concurrency.expect("a minimum").value,
        )
    })
}

#[test]
fn a_retry_budget_caps_retries_on_the_circuit_breaker_per_subset() {
    let out = translate(&with_rule(json!({"host": "reviews",
        "trafficPolicy": {"retryBudget": {"percent": 50}},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"retryBudget": {"minRetryConcurrency": 7}}},
            {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 9080}, "connectionPool": {"http": {"maxRetries": 2}}}]}}]})));
    assert_eq!(retry_budget(&cluster(&out, "")), Some((50.0, 3)), "the minimum defaults to 3");
    assert_eq!(retry_budget(&cluster(&out, "v1")), Some((50.0, 3)), "a subset without one keeps the rule's");
    assert_eq!(
        retry_budget(&cluster(&out, "v2")),
        Some((20.0, 7)),
        "the subset's replaces it; 20% by default"
    );
    // Port-level settings have no budget of their own: the rule's stays.
    assert_eq!(retry_budget(&cluster(&out, "v3")), Some((50.0, 3)));
    assert_eq!(limits(&cluster(&out, "v3"))[3], 2);
    let none = translate(&bookinfo());
    assert_eq!(retry_budget(&cluster(&none, "")), None);
}

#[test]
fn envoy_accepts_every_traffic_policy_field() {
    let pool = json!({
        "tcp": {"maxConnections": 100, "connectTimeout": "30ms", "maxConnectionDuration": "1h", "idleTimeout": "2h",
                "tcpKeepalive": {"probes": 9, "time": "7200s", "interval": "75s"}},
        "http": {"http1MaxPendingRequests": 10, "http2MaxRequests": 1000, "maxRequestsPerConnection": 10,
                 "maxRetries": 3, "idleTimeout": "30s", "h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 100}});
    let outlier = json!({"consecutiveErrors": 2, "consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3,
        "splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 4, "interval": "5m",
        "baseEjectionTime": "15m", "maxEjectionPercent": 50, "minHealthPercent": 30});
    let client_protocol = json!({"http": {"useClientProtocol": true, "maxConcurrentStreams": 10}});
    let index = with_rule(json!({"host": "reviews",
        "trafficPolicy": {"connectionPool": pool, "outlierDetection": outlier,
            "retryBudget": {"percent": 25.5, "minRetryConcurrency": 5},
            "loadBalancer": {"simple": "ROUND_ROBIN", "warmup": {"duration": "60s", "minimumPercent": 5, "aggression": 2}},
            "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": pool, "outlierDetection": outlier,
                "loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "path": "/", "ttl": "0s",
                    "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "HttpOnly"}]}}}}]},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"connectionPool": client_protocol,
                "loadBalancer": {"warmupDurationSecs": "10s"}}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080},
                "outlierDetection": {"consecutiveErrors": 5}, "loadBalancer": {"simple": "LEAST_REQUEST", "warmupDurationSecs": "1m"}}]}},
            {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                "distribute": [{"from": "*", "to": {"*": 100}}]}}}}]}));
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let (out, inb) = (outbound(&view, &view.scope(&proxy)), inbound(&view, &proxy, permissive));
    assert_envoy_accepts("the traffic policies", &out, &inb);
    // Not vacuous: what was validated holds the policies.
    let v1 = cluster(&out, "v1");
    assert!(format!("{:?}", http_options(&v1)).contains("UseDownstreamProtocolConfig"));
    assert!(cluster(&out, "v2").outlier_detection.is_some());
}

#[test]
fn locality_failover_needs_outlier_detection_weights_do_not_and_both_can_be_turned_off() {
    use crate::api::destination_rule::DestinationRuleSpec;
    use crate::translate::cluster::ClusterPolicy;
    let labels = std::collections::BTreeMap::from([("istio-locality".to_string(), "r1.z1".to_string())]);
    let failover = |policy: Value| {
        let spec: DestinationRuleSpec =
            serde_json::from_value(json!({"host": "reviews", "trafficPolicy": policy})).expect("a rule");
        let resolved = ClusterPolicy::resolve(Some(&spec), None, 9080);
        resolved.failover(&labels).map(|f| (f.failover.len(), f.failover_priority.to_vec()))
    };
    let outlier = json!({"consecutive5xxErrors": 1});
    // Istio's default: on wherever outliers are ejected.
    assert_eq!(failover(json!({"outlierDetection": outlier})), Some((0, vec![])));
    assert_eq!(failover(json!({"loadBalancer": {"localityLbSetting": {"enabled": true}}})), None);
    let setting =
        json!({"enabled": true, "failover": [{"from": "r1", "to": "r2"}], "failoverPriority": ["network"]});
    assert_eq!(
        failover(json!({"outlierDetection": outlier, "loadBalancer": {"localityLbSetting": setting}})),
        Some((1, vec!["network".to_string()]))
    );
    let off = json!({"enabled": false});
    assert_eq!(
        failover(json!({"outlierDetection": outlier, "loadBalancer": {"localityLbSetting": off}})),
        None
    );
    // Weights need no outlier detection.
    let weights = json!({"distribute": [{"from": "r1/*", "to": {"r1/*": 100}}]});
    let distributed = |policy: Value| {
        let spec: DestinationRuleSpec =
            serde_json::from_value(json!({"host": "reviews", "trafficPolicy": policy})).expect("a rule");
        ClusterPolicy::resolve(Some(&spec), None, 9080).failover(&labels).map(|f| f.distribute.len())
    };
    assert_eq!(distributed(json!({"loadBalancer": {"localityLbSetting": weights}})), Some(1));
    // The cluster weighs localities only then.
    let out = translate(&with_rule(
        json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"localityLbSetting": weights}}}),
    ));
    let weighted = cluster(&out, "").common_lb_config.and_then(|c| c.locality_config_specifier);
    assert!(matches!(
        weighted,
        Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));
    assert!(cluster(&translate(&bookinfo()), "").common_lb_config.is_none());
}
