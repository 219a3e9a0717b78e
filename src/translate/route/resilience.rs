//! Route resilience, as Istio translates it: the rule's `timeout`, its
//! `retries` (or Istio's default retry policy), its `fault` (as the
//! per-route configuration of Envoy's HTTP fault filter, which the outbound
//! connection managers carry before the router, [`fault_filter`]) and its
//! mirrors (Envoy's `request_mirror_policies`). docs/traffic.md says what
//! each field becomes and where Istio 1.1 differed.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, retry_policy, route_action,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::RouteFeatures;
use crate::api::networking::Percent;
use crate::api::virtual_service::{Destination, HttpFaultInjection, HttpRetry};
use crate::model::status;
use crate::translate::{any, parse_duration, seconds};

/// Envoy's HTTP fault filter, by the name its per-route configuration is
/// keyed by.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The fault filter as the outbound connection managers carry it: empty,
/// so it does nothing unless a route configures it (as Istio does).
pub fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: FAULT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&HttpFault::default()))),
        ..Default::default()
    }
}

/// Retries try other endpoints than those already tried.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// Retries may leave the locality (priority) already tried.
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// Istio's default retry policy, for a route whose rule sets no `retries`
/// (and for the route of a Service without a VirtualService): two
/// retries on connection failures, refused streams, gRPC `unavailable`
/// and `cancelled`, and HTTP 503, each to another endpoint unless the
/// route hashes requests to one.
pub fn default_retry_policy(hashed: bool) -> RetryPolicy {
    RetryPolicy {
        num_retries: Some(UInt32Value { value: 2 }),
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".to_string(),
        retriable_status_codes: vec![503],
        // Consistent hashing would send the retry to the same endpoint
        // again: Istio drops the predicate there.
        retry_host_predicate: if hashed { Vec::new() } else { vec![previous_hosts()] },
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> retry_policy::RetryHostPredicate {
    retry_policy::RetryHostPredicate {
        name: PREVIOUS_HOSTS.to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate::default(),
        ))),
    }
}

/// A rule's `retries` over Istio's default: None (no retries) when
/// `attempts` is 0 or unset, as Istio reads its proto's zero value.
fn retry_policy(retry: &HttpRetry, hashed: bool) -> Option<RetryPolicy> {
    let attempts = u32::try_from(retry.attempts.unwrap_or(0)).ok().filter(|a| *a > 0)?;
    let mut out = default_retry_policy(hashed);
    out.num_retries = Some(UInt32Value { value: attempts });
    if let Some(on) = retry.retry_on.as_deref().filter(|on| !on.is_empty()) {
        let (policies, codes) = retry_on(on);
        out.retry_on = policies;
        out.retriable_status_codes = codes;
        if !out.retriable_status_codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            if !out.retry_on.is_empty() {
                out.retry_on.push(',');
            }
            out.retry_on.push_str("retriable-status-codes");
        }
    }
    if let Some(timeout) = retry.per_try_timeout.as_deref().and_then(parse_duration) {
        out.per_try_timeout = Some(timeout);
    }
    if let Some(ignore) = retry.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore { vec![previous_hosts()] } else { Vec::new() };
    }
    if retry.retry_remote_localities == Some(true) {
        out.retry_priority = Some(retry_policy::RetryPriority {
            name: PREVIOUS_PRIORITIES.to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(
                &PreviousPrioritiesConfig { update_frequency: 2 },
            ))),
        });
    }
    if let Some(base) = retry.backoff.as_deref().and_then(parse_duration) {
        out.retry_back_off =
            Some(retry_policy::RetryBackOff { base_interval: Some(base), max_interval: None });
    }
    Some(out)
}

/// Istio's `retryOn`: Envoy's policy names (HTTP and gRPC ones alike), and
/// HTTP status codes, which become `retriable_status_codes`.
fn retry_on(text: &str) -> (String, Vec<u32>) {
    let mut policies = Vec::new();
    let mut codes = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if status::is_http_status(code) => codes.push(code),
            _ => policies.push(part),
        }
    }
    (policies.join(","), codes)
}

/// Istio's `Percent` (0.0-100.0) as a share per million.
fn per_million(percent: &Percent) -> FractionalPercent {
    let value = percent.value.unwrap_or(0.0).clamp(0.0, 100.0);
    FractionalPercent { numerator: (value * 10_000.0) as u32, denominator: DenominatorType::Million.into() }
}

/// A whole percentage (Istio 1.1's `percent` fields) as a share per hundred.
fn per_hundred(percent: i64) -> FractionalPercent {
    FractionalPercent {
        numerator: percent.clamp(0, 100) as u32,
        denominator: DenominatorType::Hundred.into(),
    }
}

/// A rule's `fault` as the fault filter's per-route configuration; None
/// when it injects nothing Envoy can (no fixed delay, no HTTP or gRPC
/// status).
fn http_fault(fault: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = fault.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_deref().and_then(parse_duration)?;
        Some(FaultDelay {
            // Unset with no `percent` delays nothing, as in Istio.
            percentage: Some(match &d.percentage {
                Some(p) => per_million(p),
                None => per_hundred(d.percent.unwrap_or(0).into()),
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)),
        })
    });
    let abort = fault.abort.as_ref().and_then(|a| {
        let error = if let Some(status) = a.http_status {
            fault_abort::ErrorType::HttpStatus(u32::try_from(status).ok()?)
        } else {
            fault_abort::ErrorType::GrpcStatus(status::grpc_status_code(a.grpc_status.as_deref()?)?)
        };
        Some(FaultAbort {
            // Istio 1.1 read `percent` when `percentage` was unset; today's
            // Istio has no `percent` here, and with neither, Envoy aborts
            // nothing.
            percentage: match (&a.percentage, a.percent) {
                (Some(p), _) => Some(per_million(p)),
                (None, Some(p)) => Some(per_hundred(p.into())),
                (None, None) => None,
            },
            error_type: Some(error),
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault { delay, abort, ..Default::default() })
}

/// A mirror's share of requests, as Istio reads it: 100% unless a share is
/// given; an explicit 0 mirrors nothing (None).
fn mirror_share(percentage: Option<&Percent>, percent: Option<u32>) -> Option<RuntimeFractionalPercent> {
    let share = match (percentage, percent) {
        (Some(p), _) if p.value.unwrap_or(0.0) > 0.0 => per_million(p),
        (None, Some(p)) if p > 0 => per_hundred(p.into()),
        (None, None) => per_hundred(100),
        _ => return None,
    };
    Some(RuntimeFractionalPercent { default_value: Some(share), ..Default::default() })
}

impl RouteFeatures<'_> {
    /// No timeout unless the rule sets one (Istio's default).
    pub(super) fn timeout(&self, action: &mut RouteAction) {
        action.timeout = Some(self.rule.timeout.as_deref().and_then(parse_duration).unwrap_or(seconds(0)));
    }

    /// The rule's retries, or Istio's default policy when it sets none.
    /// `hashed`: the route sends to one destination by consistent hash.
    pub(super) fn retries(&self, action: &mut RouteAction, hashed: bool) {
        action.retry_policy = match &self.rule.retries {
            None => Some(default_retry_policy(hashed)),
            Some(retry) => retry_policy(retry, hashed),
        };
    }

    /// The rule's fault, as the fault filter's configuration for its routes.
    pub(super) fn fault(&self, route: &mut Route) {
        if let Some(fault) = self.rule.fault.as_ref().and_then(http_fault) {
            route.typed_per_filter_config.insert(FAULT_FILTER.to_string(), any(&fault));
        }
    }

    /// The rule's `mirror` (with `mirrorPercentage`, else 1.1's
    /// `mirrorPercent` in either spelling) and `mirrors`, each to the
    /// cluster `cluster_of` finds for it; a destination with no cluster is
    /// skipped (validation warns), as is a share of 0.
    pub(super) fn mirrors(
        &self,
        action: &mut RouteAction,
        cluster_of: impl Fn(&Destination) -> Option<String>,
    ) {
        let rule = self.rule;
        let legacy = rule.mirror_percent.or(rule.mirror_percent_proto_name);
        let single = rule.mirror.as_ref().map(|m| (m, mirror_share(rule.mirror_percentage.as_ref(), legacy)));
        let many = rule.mirrors.iter().map(|m| (&m.destination, mirror_share(m.percentage.as_ref(), None)));
        for (destination, share) in single.into_iter().chain(many) {
            let (Some(share), Some(cluster)) = (share, cluster_of(destination)) else { continue };
            action.request_mirror_policies.push(route_action::RequestMirrorPolicy {
                cluster,
                runtime_fraction: Some(share),
                // Istio does not sample the copies for tracing.
                trace_sampled: Some(BoolValue { value: false }),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(json: serde_json::Value) -> HttpRetry {
        serde_json::from_value(json).expect("an HTTPRetry")
    }

    #[test]
    fn istio_default_policy_when_no_retries_are_set() {
        let policy = default_retry_policy(false);
        assert_eq!(policy.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(
            policy.retry_on,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(policy.retriable_status_codes, [503]);
        assert_eq!(policy.host_selection_retry_max_attempts, 5);
        assert_eq!(
            policy.retry_host_predicate.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            [PREVIOUS_HOSTS]
        );
        assert!(default_retry_policy(true).retry_host_predicate.is_empty(), "hashing keeps the endpoint");
    }

    #[test]
    fn attempts_zero_or_unset_disables_retries() {
        assert_eq!(retry_policy(&retry(serde_json::json!({"attempts": 0})), false), None);
        assert_eq!(retry_policy(&retry(serde_json::json!({"perTryTimeout": "1s"})), false), None);
    }

    #[test]
    fn retry_fields_override_the_default() {
        let policy = retry_policy(
            &retry(serde_json::json!({"attempts": 4, "perTryTimeout": "250ms", "retryOn": "5xx, 429,reset",
                "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false, "backoff": "40ms"})),
            false,
        )
        .expect("a policy");
        assert_eq!(policy.num_retries, Some(UInt32Value { value: 4 }));
        assert_eq!(policy.retry_on, "5xx,reset,retriable-status-codes", "a status code needs the policy");
        assert_eq!(policy.retriable_status_codes, [429]);
        assert_eq!(policy.per_try_timeout.map(|d| d.nanos), Some(250_000_000));
        assert!(policy.retry_host_predicate.is_empty());
        assert_eq!(policy.retry_priority.map(|p| p.name).as_deref(), Some(PREVIOUS_PRIORITIES));
        assert_eq!(policy.retry_back_off.and_then(|b| b.base_interval).map(|d| d.nanos), Some(40_000_000));
        assert_eq!(policy.host_selection_retry_max_attempts, 5);

        let names_only =
            retry_policy(&retry(serde_json::json!({"attempts": 1, "retryOn": "gateway-error"})), true)
                .expect("a policy");
        assert_eq!(names_only.retry_on, "gateway-error");
        assert!(names_only.retriable_status_codes.is_empty(), "the default's 503 is replaced, as in Istio");
    }

    #[test]
    fn fault_percentages_as_istio_reads_them() {
        let fault: HttpFaultInjection = serde_json::from_value(serde_json::json!({
            "delay": {"fixedDelay": "7s", "percentage": {"value": 12.5}},
            "abort": {"httpStatus": 500, "percent": 30}
        }))
        .expect("a fault");
        let out = http_fault(&fault).expect("a fault");
        let delay = out.delay.expect("a delay");
        assert_eq!(delay.percentage, Some(FractionalPercent { numerator: 125_000, denominator: 2 }));
        let abort = out.abort.expect("an abort");
        assert_eq!(abort.percentage, Some(FractionalPercent { numerator: 30, denominator: 0 }));
        assert_eq!(abort.error_type, Some(fault_abort::ErrorType::HttpStatus(500)));

        let grpc: HttpFaultInjection =
            serde_json::from_value(serde_json::json!({"abort": {"grpcStatus": "UNAVAILABLE"}}))
                .expect("a fault");
        let abort = http_fault(&grpc).and_then(|f| f.abort).expect("an abort");
        assert_eq!(abort.error_type, Some(fault_abort::ErrorType::GrpcStatus(14)));
        assert_eq!(abort.percentage, None, "Envoy's default: nothing is aborted");

        let exponential: HttpFaultInjection =
            serde_json::from_value(serde_json::json!({"delay": {"exponentialDelay": "1s"}}))
                .expect("a fault");
        assert_eq!(http_fault(&exponential), None, "Envoy has no exponential delay");
    }

    #[test]
    fn mirror_shares() {
        let hundred =
            |n| Some(RuntimeFractionalPercent { default_value: Some(per_hundred(n)), ..Default::default() });
        assert_eq!(mirror_share(None, None), hundred(100));
        assert_eq!(mirror_share(None, Some(30)), hundred(30));
        assert_eq!(mirror_share(None, Some(0)), None);
        assert_eq!(
            mirror_share(Some(&Percent { value: Some(0.0) }), Some(30)),
            None,
            "mirrorPercentage wins"
        );
        let half = mirror_share(Some(&Percent { value: Some(50.0) }), None);
        assert_eq!(half.and_then(|s| s.default_value).map(|p| p.numerator), Some(500_000));
    }
}
