//! DestinationRule: Istio's `ValidateDestinationRule` and what it calls
//! (traffic policies, load balancing, connection pools, outlier detection,
//! client TLS, subsets, exportTo, workload selector), and the check that
//! the host is a Service.

use std::collections::BTreeSet;

use crate::api::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy, LoadBalancerSettings,
    LocalityLoadBalancerSetting, OutlierDetection, TlsMode, TrafficPolicy, TunnelSettings,
};

use super::Context;
use super::common::*;

pub(super) fn check(spec: &DestinationRuleSpec, namespace: &str, ctx: &Context, out: &mut Out) {
    match check_wildcard_domain(&spec.host) {
        Err(e) => {
            out.err("spec.host", format!("host {:?} is not a valid host name ({e}): {HOST_FIX}", spec.host))
        }
        Ok(()) => {
            let fqdn = ctx.resolve_host(&spec.host, namespace);
            if !spec.host.starts_with('*') && ctx.service_exists(&fqdn) == Some(false) {
                out.warn(
                    "spec.host",
                    format!(
                        "no Service {fqdn} exists, so this DestinationRule applies to nothing: create the Service \
                         (or a ServiceEntry), or fix the host name"
                    ),
                );
            }
        }
    }
    if let Some(tp) = &spec.traffic_policy {
        check_traffic_policy("spec.trafficPolicy", tp, out);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            out.err(format!("{p}.name"), "the subset has no name: name it, e.g. \"v1\"");
        } else if !is_dns1123_label(&subset.name) {
            out.err(
                format!("{p}.name"),
                format!(
                    "subset name {:?} is not a DNS label: use letters, digits and '-', e.g. \"v1\"",
                    subset.name
                ),
            );
        }
        if !names.insert(subset.name.as_str()) {
            out.err(
                format!("{p}.name"),
                format!("subset {:?} is defined twice: give each subset its own name", subset.name),
            );
        }
        check_labels(out, &format!("{p}.labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            check_traffic_policy(&format!("{p}.trafficPolicy"), tp, out);
        }
    }
    check_export_to(out, namespace, &spec.export_to, spec.workload_selector.is_some());
    if let Some(ws) = &spec.workload_selector {
        check_workload_selector(out, "spec.workloadSelector", ws);
    }
}

fn check_traffic_policy(p: &str, tp: &TrafficPolicy, out: &mut Out) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        out.err(p, "the traffic policy is empty: set at least one policy, or remove trafficPolicy");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        out.err(p, "tunnel and proxyProtocol are both set, which Istio does not support together: keep one");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        check_outlier_detection(&format!("{p}.outlierDetection"), od, out);
    }
    if let Some(cp) = &tp.connection_pool {
        check_connection_pool(&format!("{p}.connectionPool"), cp, out);
    }
    if let Some(lb) = &tp.load_balancer {
        check_load_balancer(&format!("{p}.loadBalancer"), lb, tp.outlier_detection.is_some(), out);
    }
    if let Some(tls) = &tp.tls {
        check_tls(&format!("{p}.tls"), tls, out);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{i}]");
        match pl.port.as_ref().map(|port| port.number) {
            None => {
                out.err(format!("{pp}.port"), "the port-level policy has no port: add port: {number: <port>}")
            }
            Some(n) => check_port(out, &format!("{pp}.port.number"), n.map_or(0, i64::from)),
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            out.err(
                &pp,
                "the port-level policy is empty: set loadBalancer, connectionPool, outlierDetection or tls",
            );
            continue;
        }
        if let Some(od) = &pl.outlier_detection {
            check_outlier_detection(&format!("{pp}.outlierDetection"), od, out);
        }
        if let Some(cp) = &pl.connection_pool {
            check_connection_pool(&format!("{pp}.connectionPool"), cp, out);
        }
        if let Some(lb) = &pl.load_balancer {
            check_load_balancer(&format!("{pp}.loadBalancer"), lb, pl.outlier_detection.is_some(), out);
        }
        if let Some(tls) = &pl.tls {
            check_tls(&format!("{pp}.tls"), tls, out);
        }
    }
    if let Some(t) = &tp.tunnel {
        check_tunnel(&format!("{p}.tunnel"), t, out);
    }
    if let Some(v) = tp.retry_budget.as_ref().and_then(|rb| rb.percent)
        && !(0.0..=100.0).contains(&v)
    {
        out.err(format!("{p}.retryBudget.percent"), format!("percent {v} is out of range: use 0 to 100"));
    }
}

fn check_tunnel(p: &str, t: &TunnelSettings, out: &mut Out) {
    if let Some(proto) = &t.protocol
        && !proto.is_empty()
        && proto != "CONNECT"
        && proto != "POST"
    {
        out.err(
            format!("{p}.protocol"),
            format!("tunnel protocol {proto:?} is not supported: use \"CONNECT\" or \"POST\""),
        );
    }
    if check_fqdn(&t.target_host).is_err() && !is_ip(&t.target_host) {
        out.err(
            format!("{p}.targetHost"),
            format!(
                "{:?} is neither a host name nor an IP address: write e.g. \"egress.example.com\"",
                t.target_host
            ),
        );
    }
    check_port(out, &format!("{p}.targetPort"), t.target_port.into());
}

fn check_outlier_detection(p: &str, od: &OutlierDetection, out: &mut Out) {
    if let Some(t) = &od.base_ejection_time {
        check_duration(out, &format!("{p}.baseEjectionTime"), t);
    }
    if let Some(t) = &od.interval {
        check_duration(out, &format!("{p}.interval"), t);
    }
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        out.warn(
            format!("{p}.consecutiveErrors"),
            "consecutiveErrors is deprecated, and counts gateway errors (502, 503, 504) as today's Istio reads \
             it, where Istio 1.1 counted every 5xx: use consecutiveGatewayErrors, or consecutive5xxErrors for \
             1.1's meaning",
        );
    }
    if !od.split_external_local_origin_errors.unwrap_or(false)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        out.err(
            format!("{p}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures only counts when local-origin errors are split out: set \
             splitExternalLocalOriginErrors: true, or remove it",
        );
    }
    if let Some(v) = od.max_ejection_percent {
        check_percent(out, &format!("{p}.maxEjectionPercent"), v.into());
    }
    if let Some(v) = od.min_health_percent {
        check_percent(out, &format!("{p}.minHealthPercent"), v.into());
    }
}

fn check_connection_pool(p: &str, cp: &ConnectionPoolSettings, out: &mut Out) {
    if cp.http.is_none() && cp.tcp.is_none() {
        out.err(p, "the connection pool is empty: set tcp and/or http settings, or remove connectionPool");
        return;
    }
    let non_negative = |out: &mut Out, field: String, v: Option<i32>| {
        if let Some(v) = v.filter(|v| *v < 0) {
            out.err(field, format!("{v} is negative: use 0 or more"));
        }
    };
    if let Some(h) = &cp.http {
        let hp = format!("{p}.http");
        non_negative(out, format!("{hp}.http1MaxPendingRequests"), h.http1_max_pending_requests);
        non_negative(out, format!("{hp}.http2MaxRequests"), h.http2_max_requests);
        non_negative(out, format!("{hp}.maxRequestsPerConnection"), h.max_requests_per_connection);
        non_negative(out, format!("{hp}.maxRetries"), h.max_retries);
        non_negative(out, format!("{hp}.maxConcurrentStreams"), h.max_concurrent_streams);
        if let Some(t) = &h.idle_timeout {
            check_duration(out, &format!("{hp}.idleTimeout"), t);
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol == Some(true) {
            out.err(
                format!("{hp}.useClientProtocol"),
                "useClientProtocol contradicts h2UpgradePolicy: UPGRADE: remove one of them",
            );
        }
    }
    if let Some(t) = &cp.tcp {
        let tp = format!("{p}.tcp");
        non_negative(out, format!("{tp}.maxConnections"), t.max_connections);
        for (field, value) in [
            ("connectTimeout", &t.connect_timeout),
            ("maxConnectionDuration", &t.max_connection_duration),
            ("idleTimeout", &t.idle_timeout),
        ] {
            if let Some(v) = value {
                check_duration(out, &format!("{tp}.{field}"), v);
            }
        }
        if let Some(ka) = &t.tcp_keepalive {
            for (field, value) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(v) = value {
                    check_duration(out, &format!("{tp}.tcpKeepalive.{field}"), v);
                }
            }
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x % 2 == 0 {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x % f == 0 {
            return false;
        }
        f += 2;
    }
    true
}

fn check_load_balancer(p: &str, lb: &LoadBalancerSettings, has_outlier: bool, out: &mut Out) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        out.err(p, "simple and consistentHash are both set: use only one");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{p}.consistentHash");
        let keys: Vec<&str> = [
            (ch.http_header_name.is_some(), "httpHeaderName"),
            (ch.http_cookie.is_some(), "httpCookie"),
            (ch.use_source_ip == Some(true), "useSourceIp"),
            (ch.http_query_parameter_name.is_some(), "httpQueryParameterName"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if keys.len() > 1 {
            out.err(
                &cp,
                format!("{} are all set: hash on only one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName", keys.join(" and ")),
            );
        } else if keys.is_empty() {
            out.warn(
                &cp,
                "consistentHash has nothing to hash on, so there is no session affinity: set httpHeaderName, \
                 httpCookie, useSourceIp or httpQueryParameterName",
            );
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                out.err(format!("{cp}.httpCookie.name"), "the cookie has no name: name it, e.g. \"session\"");
            }
            for (i, attribute) in cookie.attributes.iter().enumerate() {
                if attribute.name.is_empty() {
                    out.err(
                        format!("{cp}.httpCookie.attributes[{i}].name"),
                        "the cookie attribute has no name: name it, e.g. \"SameSite\"",
                    );
                }
            }
            if let Some(ttl) = &cookie.ttl {
                let path = format!("{cp}.httpCookie.ttl");
                // Istio admits it, but Envoy takes no negative ttl: the mesh
                // sends none, and without one Envoy adds no cookie.
                if duration_parses(out, &path, ttl) == Err(DurationError::Negative) {
                    out.warn(
                        path,
                        format!(
                            "ttl {ttl:?} is negative, which Envoy cannot take, so the mesh sets no ttl and Envoy \
                             adds no cookie to requests without one: use a positive duration, or \"0s\" for a \
                             session cookie"
                        ),
                    );
                }
            }
        }
        let algorithm = ch.ring_hash.is_some() || ch.maglev.is_some();
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            out.err(&cp, "ringHash and maglev are both set: choose one hashing algorithm");
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            if algorithm {
                out.err(
                    format!("{cp}.minimumRingSize"),
                    "minimumRingSize cannot be combined with ringHash or maglev: move it to ringHash.minimumRingSize",
                );
            } else {
                out.warn(
                    format!("{cp}.minimumRingSize"),
                    "minimumRingSize is deprecated: write ringHash: {minimumRingSize: ...} instead",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let tp = format!("{cp}.maglev.tableSize");
            match m.table_size.unwrap_or(0) {
                0 => out.err(tp, "maglev needs a tableSize: set a prime number such as 65537"),
                n if n >= 5_000_011 => {
                    out.err(tp, format!("tableSize {n} is too large: use a prime below 5000011, e.g. 65537"))
                }
                n if !is_prime(n) => {
                    out.err(tp, format!("tableSize {n} is not a prime number: use a prime, e.g. 65537"))
                }
                _ => {}
            }
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        check_locality_lb(&format!("{p}.localityLbSetting"), l, has_outlier, out);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        check_duration(out, &format!("{p}.warmupDurationSecs"), d);
    }
    if let Some(w) = &lb.warmup {
        check_duration(out, &format!("{p}.warmup.duration"), &w.duration);
        if let Some(v) = w.minimum_percent.filter(|v| !(0.0..=100.0).contains(v)) {
            out.err(
                format!("{p}.warmup.minimumPercent"),
                format!("minimumPercent {v} is out of range: use 0 to 100"),
            );
        }
        // Envoy's slow start curve is defined for aggression 1 and above.
        if let Some(v) = w.aggression.filter(|v| *v < 1.0 || !v.is_finite()) {
            out.err(
                format!("{p}.warmup.aggression"),
                format!("aggression {v} is below 1: use 1 for a linear ramp-up, or more to start slower"),
            );
        }
    }
}

const TOPOLOGY_LABELS: &[&str] =
    &["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

fn check_locality_lb(p: &str, l: &LocalityLoadBalancerSetting, has_outlier: bool, out: &mut Out) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        out.err(p, "distribute and failover are both set: use only one");
        return;
    }
    if !l.failover.is_empty()
        && let Some(label) = l.failover_priority.iter().find(|x| TOPOLOGY_LABELS.contains(&x.as_str()))
    {
        out.err(
            format!("{p}.failoverPriority"),
            format!("failover already orders by topology, so {label:?} cannot be in failoverPriority too: remove one"),
        );
        return;
    }
    let mut sources = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = format!("{p}.distribute[{i}]");
        sources.push(d.from.clone().unwrap_or_default());
        if let Some((loc, w)) = d.to.iter().find(|(_, w)| !(1..=100).contains(*w)) {
            out.err(format!("{dp}.to"), format!("weight {w} for {loc:?} is out of range: use 1 to 100"));
            return;
        }
        let total: u32 = d.to.values().sum();
        if total != 100 {
            out.err(format!("{dp}.to"), format!("the weights add up to {total}: make them add up to 100"));
            return;
        }
        let targets: Vec<String> = d.to.keys().cloned().collect();
        if let Err(e) = check_localities(&targets) {
            out.err(format!("{dp}.to"), e);
        }
    }
    if let Err(e) = check_localities(&sources) {
        out.err(format!("{p}.distribute"), e);
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        out.warn(
            p,
            "failover only happens when unhealthy endpoints are detected: add an outlierDetection policy next to \
             this loadBalancer",
        );
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = format!("{p}.failover[{i}]");
        let (from, to) = (f.from.as_deref().unwrap_or(""), f.to.as_deref().unwrap_or(""));
        if from == to {
            out.err(
                &fp,
                format!("failover from {from:?} to itself does nothing: name two different regions"),
            );
        }
        if from.contains('/') || to.contains('/') {
            out.err(&fp, "failover works between regions: write region names only, without zones");
        }
        if from.contains('*') || to.contains('*') {
            out.err(&fp, "failover regions cannot contain '*': name the regions");
        }
    }
}

/// Istio's `validateLocalities`: `region[/zone[/subzone]]`, at most one
/// trailing '*', no empty parts, and no locality that overlaps another.
fn check_localities(localities: &[String]) -> Result<(), String> {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {loc:?} may have one '*' only, at the end: write e.g. \"us-east/*\""
            ));
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|x| x.is_empty()) {
            return Err(format!(
                "locality {loc:?} has an empty region, zone or sub-zone: write region/zone/subzone"
            ));
        }
        let parts: Vec<&str> = parts.into_iter().filter(|x| *x != "*").collect();
        // Two localities overlap when one is a prefix of the other.
        if seen.iter().any(|s| s.iter().zip(&parts).all(|(a, b)| a == b)) {
            return Err(format!("locality {loc:?} overlaps one listed before it: list each locality once"));
        }
        seen.push(parts);
    }
    Ok(())
}

fn check_tls(p: &str, tls: &ClientTlsSettings, out: &mut Out) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    let credential = set(&tls.credential_name);
    if tls.insecure_skip_verify == Some(true) {
        if mode == TlsMode::Simple
            && (set(&tls.ca_certificates) || credential || !tls.subject_alt_names.is_empty())
        {
            out.err(
                format!("{p}.insecureSkipVerify"),
                "insecureSkipVerify turns off the server check that caCertificates, credentialName and \
                 subjectAltNames configure: remove those, or remove insecureSkipVerify",
            );
        }
        if mode == TlsMode::Mutual && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty()) {
            out.err(
                format!("{p}.insecureSkipVerify"),
                "insecureSkipVerify turns off the server check that caCertificates and subjectAltNames configure: \
                 remove those, or remove insecureSkipVerify",
            );
        }
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && credential {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            out.err(
                format!("{p}.credentialName"),
                "with credentialName, the certificates come from that Secret: remove clientCertificate, \
                 privateKey, caCertificates and caCrl",
            );
        }
        return;
    }
    if mode == TlsMode::Mutual {
        if !set(&tls.client_certificate) {
            out.err(
                format!("{p}.clientCertificate"),
                "MUTUAL TLS needs a client certificate: set clientCertificate and privateKey (file paths), or \
                 credentialName",
            );
        }
        if !set(&tls.private_key) {
            out.err(
                format!("{p}.privateKey"),
                "MUTUAL TLS needs a private key: set privateKey (a file path), or credentialName",
            );
        }
    }
    let certs =
        set(&tls.client_certificate) || set(&tls.private_key) || set(&tls.ca_certificates) || credential;
    if mode == TlsMode::IstioMutual && certs {
        out.warn(
            p,
            "ISTIO_MUTUAL uses the mesh's own certificates, so clientCertificate, privateKey, caCertificates and \
             credentialName are ignored: remove them, or use mode MUTUAL",
        );
    } else if mode == TlsMode::Disable && certs {
        out.warn(p, "TLS is disabled, so the certificate settings are ignored: set mode SIMPLE or MUTUAL, or remove them");
    }
}
