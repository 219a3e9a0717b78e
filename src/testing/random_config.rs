//! Random VirtualServices and DestinationRules, drawn from the kinds' own
//! CRD schemas: every field the types declare can be generated (a new
//! field is covered the day it is added), Istio's `oneof`s as the schema
//! encodes them are respected, and values come from pools of what a user
//! writes and what the test's world holds (its hosts, subsets and ports;
//! durations, regexes and header names chosen by the field's name), so
//! most of what is drawn is valid. What validation still refuses is
//! dropped by the caller, which counts it.
//!
//! The strategies are proptest's, so a failing case shrinks to a small one.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

/// How often an optional field is set.
const PRESENT: f64 = 0.45;

/// A strategy for the `spec` of `kind` (`VirtualService`, `DestinationRule`).
pub fn spec(kind: &str) -> BoxedStrategy<Value> {
    let schema = spec_schema(kind);
    let kind = kind.to_string();
    object(&schema, "spec", true).prop_map(move |spec| repaired(&kind, spec)).boxed()
}

/// The structural schema of `kind`'s spec, as its CRD serves it (built
/// once: making the CRDs is costly).
pub fn spec_schema(kind: &str) -> Value {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, Value)>> = std::sync::OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        crate::api::crds()
            .into_iter()
            .filter_map(|crd| {
                let schema = crd.spec.versions[0].schema.as_ref()?.open_api_v3_schema.as_ref()?;
                let schema = serde_json::to_value(schema).ok()?;
                Some((crd.spec.names.kind.clone(), schema["properties"]["spec"].clone()))
            })
            .collect()
    });
    let spec = schemas.iter().find(|(k, _)| k == kind).map(|(_, s)| s.clone());
    let spec = spec.unwrap_or_else(|| panic!("no CRD serves {kind}"));
    assert!(spec.is_object(), "{kind}'s CRD has no spec schema");
    spec
}

/// Every field path set in `value`, an instance of `schema`, as the
/// inventory writes them (`spec.http[].match[].headers{}.exact`).
pub fn field_paths(schema: &Value, value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let (child, p) = match schema.get("properties").and_then(|p| p.get(key)) {
                    Some(child) => (child, format!("{path}.{key}")),
                    None => (&schema["additionalProperties"], format!("{path}{{}}")),
                };
                out.insert(p.clone());
                field_paths(child, v, &p, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                field_paths(&schema["items"], item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

fn strategy(schema: &Value, path: &str) -> BoxedStrategy<Value> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return select(values.clone()).boxed();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            if schema.get("properties").is_some() {
                object(schema, path, false)
            } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                let value = strategy(values, &format!("{path}{{}}"));
                proptest::collection::btree_map(map_key(path), value, 1..=2)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
                    .boxed()
            } else {
                Just(json!({})).boxed()
            }
        }
        Some("array") => {
            let item = strategy(&schema["items"], &format!("{path}[]"));
            // `*` beside a namespace, or listed twice, is refused.
            let most = if path.ends_with("exportTo") { 1 } else { 2 };
            proptest::collection::vec(item, 1..=most).prop_map(Value::Array).boxed()
        }
        Some("string") => string(path),
        Some("integer") => integer(path),
        Some("number") => number(path),
        Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
        _ => Just(json!({})).boxed(),
    }
}

/// An object: required fields always, optional ones sometimes, at most
/// one field of each `oneof` (the schema's, an alias pair, and the
/// exclusions Istio's validation adds, [`EXCLUSIVE`]), at least one of
/// each group Istio needs one of ([`AT_LEAST_ONE`]), and never empty.
fn object(schema: &Value, path: &str, top: bool) -> BoxedStrategy<Value> {
    let empty = Map::new();
    let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let names: Vec<String> =
        properties.keys().filter(|n| !REFUSED.contains(&format!("{path}.{n}").as_str())).cloned().collect();
    let mut required: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (suffix, fields) in REQUIRED {
        if path.ends_with(suffix) {
            required.extend(fields.iter().copied());
        }
    }
    let values: Vec<BoxedStrategy<Value>> =
        names.iter().map(|name| strategy(&properties[name], &format!("{path}.{name}"))).collect();
    let presence: Vec<BoxedStrategy<bool>> = names
        .iter()
        .map(|name| {
            if required.contains(name.as_str()) {
                Just(true).boxed()
            } else {
                proptest::bool::weighted(if top { 0.7 } else { PRESENT }).boxed()
            }
        })
        .collect();
    let index_of = |group: Vec<String>| -> Vec<usize> {
        group.iter().filter_map(|f| names.iter().position(|n| n == f)).collect()
    };
    let exclusive: Vec<Vec<usize>> =
        exclusive_groups(schema, path).into_iter().map(index_of).filter(|g| g.len() > 1).collect();
    let mut needed: Vec<Vec<usize>> = AT_LEAST_ONE
        .iter()
        .filter(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, fields)| index_of(fields.iter().map(|f| f.to_string()).collect()))
        .filter(|g| !g.is_empty())
        .collect();
    // An object with fields is never empty: `port: {}` says nothing.
    if !names.is_empty() {
        needed.push((0..names.len()).collect());
    }
    let picks = exclusive.len() + needed.len();
    (values, presence, proptest::collection::vec(any::<u8>(), picks..=picks))
        .prop_map(move |(values, mut present, picks)| {
            let mut picks = picks.into_iter().map(usize::from);
            for group in &exclusive {
                let pick = picks.next().unwrap_or(0);
                let set: Vec<usize> = group.iter().copied().filter(|&i| present[i]).collect();
                if set.len() > 1 {
                    let keep = set[pick % set.len()];
                    set.into_iter().filter(|&i| i != keep).for_each(|i| present[i] = false);
                }
            }
            for group in &needed {
                let pick = picks.next().unwrap_or(0);
                if !group.iter().any(|&i| present[i]) {
                    let chosen = group[pick % group.len()];
                    present[chosen] = true;
                    // What excludes the chosen field goes.
                    for other in exclusive.iter().filter(|g| g.contains(&chosen)).flatten() {
                        present[*other] &= *other == chosen;
                    }
                }
            }
            let fields = names.iter().cloned().zip(values).zip(present);
            Value::Object(fields.filter(|(_, p)| *p).map(|(field, _)| field).collect())
        })
        .boxed()
}

/// Fields of which Istio's validation allows at most one, beyond the
/// `oneof`s the schema carries: (path suffix, fields).
const EXCLUSIVE: &[(&str, &[&str])] = &[
    ("http[]", &["route", "redirect", "directResponse", "delegate"]),
    ("http[]", &["mirror", "mirrors"]),
    ("http[]", &["mirrorPercent", "mirror_percent", "mirrorPercentage"]),
    ("http[]", &["redirect", "rewrite"]),
    ("http[]", &["directResponse", "rewrite"]),
    ("http[]", &["redirect", "fault"]),
    ("http[]", &["directResponse", "fault"]),
    ("corsPolicy", &["allowOrigin", "allowOrigins"]),
    ("loadBalancer", &["warmup", "warmupDurationSecs"]),
    ("localityLbSetting", &["distribute", "failover"]),
    ("fault.delay", &["percent", "percentage"]),
    ("fault.abort", &["percent", "percentage"]),
    ("trafficPolicy", &["tunnel", "proxyProtocol"]),
    ("rewrite", &["uri", "uriRegexRewrite"]),
    ("consistentHash", &["minimumRingSize", "ringHash", "maglev"]),
    ("localityLbSetting", &["failover", "failoverPriority"]),
    ("spec", &["workloadSelector", "exportTo"]),
];

/// Groups of which Istio needs at least one: (path suffix, fields).
const AT_LEAST_ONE: &[(&str, &[&str])] = &[
    ("http[]", &["route", "redirect", "directResponse", "delegate"]),
    ("fault", &["delay", "abort"]),
    ("spec", &["http", "tcp", "tls"]),
    ("portLevelSettings[]", &["loadBalancer", "connectionPool", "outlierDetection", "tls"]),
];

/// Fields Istio needs although the schema lets them out.
const REQUIRED: &[(&str, &[&str])] = &[
    ("spec", &["hosts"]),
    ("tcp[]", &["route"]),
    ("tls[]", &["route"]),
    ("portLevelSettings[]", &["port"]),
    ("retries", &["attempts"]),
    ("uriRegexRewrite", &["match", "rewrite"]),
];

/// Fields validation refuses whatever their value (not supported yet):
/// never drawn, and not expected in the coverage of a run.
pub const REFUSED: &[&str] =
    &["spec.http[].fault.abort.http2Error", "spec.http[].fault.delay.exponentialDelay"];

fn exclusive_groups(schema: &Value, path: &str) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    let mut one_ofs = vec![schema.get("oneOf")];
    for all in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        one_ofs.push(all.get("oneOf"));
    }
    for branches in one_ofs.into_iter().flatten().filter_map(Value::as_array) {
        let fields: Vec<String> = branches
            .iter()
            .filter_map(|b| b.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        groups.push(fields);
    }
    // A field's protobuf spelling is a copy of it: one or the other.
    let empty = Map::new();
    let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (name, field) in properties {
        let description = field.get("description").and_then(Value::as_str).unwrap_or_default();
        if let Some(rest) = description.strip_prefix("Same as ") {
            let of = rest.split(',').next().unwrap_or_default().to_string();
            groups.push(vec![of, name.clone()]);
        }
    }
    for (suffix, fields) in EXCLUSIVE {
        if path.ends_with(suffix) {
            groups.push(fields.iter().map(|f| f.to_string()).collect());
        }
    }
    groups
}

/// The world's hosts: Bookinfo's, the extra services of the random test,
/// and one the mesh does not know.
pub const HOSTS: [&str; 8] = [
    "reviews",
    "ratings.default.svc.cluster.local",
    "productpage",
    "details.default",
    "tcp-echo",
    "secure.default.svc.cluster.local",
    "mongodb",
    "unknown.example.com",
];
/// Where the test writes the certificate files DestinationRules name.
pub const CERT_DIR: &str = "/tmp/mesh-random-config";
pub const CA_CERTIFICATES: &str = "/tmp/mesh-random-config/root-cert.pem";
pub const CLIENT_CERTIFICATE: &str = "/tmp/mesh-random-config/cert-chain.pem";
pub const PRIVATE_KEY: &str = "/tmp/mesh-random-config/key.pem";
pub const SUBSETS: [&str; 4] = ["v1", "v2", "v3", "v9"];
pub const PORTS: [u32; 7] = [9080, 9000, 9001, 443, 27017, 8080, 1234];

const DURATIONS: [&str; 8] = ["1ms", "10ms", "250ms", "1s", "1.5s", "10s", "1m", "1h"];
const HEADER_NAMES: [&str; 5] = ["x-user", "end-user", "x-canary", "x-request-id", "x-b3-sampled"];

fn pick(values: &[&'static str]) -> BoxedStrategy<Value> {
    select(values.to_vec()).prop_map(|s| Value::String(s.to_string())).boxed()
}

fn field_name(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.trim_end_matches("[]").trim_end_matches("{}")
}

fn map_key(path: &str) -> BoxedStrategy<String> {
    let keys: &[&'static str] = match field_name(path) {
        "sourceLabels" | "labels" | "matchLabels" => &["app", "version"],
        "queryParams" => &["user", "v"],
        "to" => &["region1/zone1/*", "region2/*", "region1/zone2/sub1"],
        _ => &HEADER_NAMES,
    };
    select(keys.to_vec()).prop_map(str::to_string).boxed()
}

fn string(path: &str) -> BoxedStrategy<Value> {
    let field = field_name(path);
    let parent = path.rsplit('.').nth(1).unwrap_or_default().trim_end_matches("[]").trim_end_matches("{}");
    match (parent, field) {
        ("spec", "host") | (_, "hosts") | (_, "sniHosts") | ("destination" | "mirror", "host") => {
            pick(&HOSTS)
        }
        (_, "subset") | ("subsets", "name") => pick(&SUBSETS),
        ("sourceLabels" | "labels" | "matchLabels", _) => pick(&["v1", "v2", "reviews", "productpage"]),
        ("uriRegexRewrite", "match") | (_, "regex") => pick(&["^/api/.*$", "v[0-9]+", ".*", "(?i)jason"]),
        ("uriRegexRewrite", "rewrite") => pick(&["/", "/v2/"]),
        // Envoy's CORS max age is whole seconds.
        (_, "maxAge") => pick(&["1s", "600s", "24h"]),
        (_, "exact" | "prefix") => pick(&["/", "/productpage", "jason", "GET"]),
        (
            _,
            "timeout"
            | "perTryTimeout"
            | "fixedDelay"
            | "exponentialDelay"
            | "interval"
            | "baseEjectionTime"
            | "connectTimeout"
            | "idleTimeout"
            | "maxConnectionDuration"
            | "time"
            | "ttl"
            | "backoff"
            | "duration"
            | "warmupDurationSecs",
        ) => pick(&DURATIONS),
        (_, "gateways") => pick(&["mesh", "bookinfo-gateway", "default/gw"]),
        (_, "sourceNamespace" | "namespace") => pick(&["default", "other"]),
        (_, "destinationSubnets" | "sourceSubnet") => pick(&["10.96.0.0/16", "10.244.0.5", "0.0.0.0/0"]),
        (_, "exportTo") => pick(&[".", "*", "default"]),
        (_, "retryOn") => {
            pick(&["5xx", "connect-failure,refused-stream", "gateway-error,503", "retriable-4xx,reset"])
        }
        (_, "grpcStatus") => pick(&["UNAVAILABLE", "NOT_FOUND"]),
        (_, "http2Error") => pick(&["REFUSED_STREAM"]),
        ("redirect", "uri") | ("rewrite", "uri") => pick(&["/", "/v2/productpage"]),
        ("redirect" | "rewrite", "authority") => pick(&["example.com", "reviews:9080"]),
        (_, "scheme") => pick(&["http", "https"]),
        ("body", "string") => pick(&["ok", "{\"a\": 1}"]),
        ("body", "bytes") => pick(&["b2s=", "aGVsbG8="]),
        (_, "allowOrigin") => pick(&["https://example.com", "*"]),
        (_, "allowMethods") => pick(&["GET", "POST"]),
        (_, "allowHeaders" | "exposeHeaders" | "remove" | "httpHeaderName") => pick(&HEADER_NAMES),
        (_, "removeRequestHeaders" | "removeResponseHeaders") => pick(&HEADER_NAMES),
        (_, "httpQueryParameterName") => pick(&["user"]),
        ("httpCookie", "name") => pick(&["session", "user"]),
        ("httpCookie", "path") => pick(&["/", "/productpage"]),
        ("attributes", "name") => pick(&["SameSite", "Secure"]),
        ("attributes", "value") => pick(&["Strict", "Lax"]),
        ("failover", "from") => pick(&["region1", "region3"]),
        ("failover", "to") => pick(&["region2", "region3"]),
        (_, "from") => pick(&["region1/zone1/*", "region1/*"]),
        (_, "failoverPriority") => pick(&["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]),
        // Files the test writes: Envoy refuses a path that is not there.
        (_, "caCertificates" | "caCrl") => pick(&[CA_CERTIFICATES]),
        (_, "clientCertificate") => pick(&[CLIENT_CERTIFICATE]),
        (_, "privateKey") => pick(&[PRIVATE_KEY]),
        (_, "subjectAltNames") => pick(&["spiffe://cluster.local/ns/default/sa/reviews"]),
        (_, "sni") => pick(&["reviews.default.svc.cluster.local"]),
        (_, "credentialName") => pick(&["reviews-credential"]),
        (_, "targetHost") => pick(&["proxy.example.com"]),
        (_, "protocol") => pick(&["CONNECT", "POST"]),
        ("delegate", "name") => pick(&["reviews-delegate"]),
        (_, "statPrefix") => pick(&["reviews_v1"]),
        (_, "name") => pick(&["primary", "r-1"]),
        (
            _,
            "set" | "add" | "headers" | "appendHeaders" | "appendRequestHeaders" | "appendResponseHeaders",
        ) => pick(&["jason", "1", "a b"]),
        _ => pick(&["jason", "x"]),
    }
}

fn int(values: &[i64]) -> BoxedStrategy<Value> {
    select(values.to_vec()).prop_map(Value::from).boxed()
}

fn integer(path: &str) -> BoxedStrategy<Value> {
    match field_name(path) {
        "weight" => (0i64..=100).prop_map(Value::from).boxed(),
        "percent" | "mirrorPercent" | "mirror_percent" | "maxEjectionPercent" | "minHealthPercent" => {
            (0i64..=100).prop_map(Value::from).boxed()
        }
        "httpStatus" | "status" => int(&[200, 400, 404, 500, 503]),
        "redirectCode" => int(&[301, 302, 303, 307, 308]),
        "attempts" => (1i64..=5).prop_map(Value::from).boxed(),
        "number" | "port" | "targetPort" => {
            select(PORTS.to_vec()).prop_map(|p| Value::from(i64::from(p))).boxed()
        }
        "probes" => (1i64..=9).prop_map(Value::from).boxed(),
        "minimumRingSize" => int(&[1024, 2048]),
        "tableSize" => int(&[65537, 1031]),
        "to" => int(&[0, 20, 50, 80, 100]),
        _ => (1i64..=1000).prop_map(Value::from).boxed(),
    }
}

fn number(path: &str) -> BoxedStrategy<Value> {
    match field_name(path) {
        "aggression" => select(vec![1.0, 2.0]).prop_map(Value::from).boxed(),
        _ => prop_oneof![select(vec![0.0, 0.5, 10.0, 50.0, 100.0]), 0.0f64..=100.0]
            .prop_map(Value::from)
            .boxed(),
    }
}

/// What a user writes for the cross-field rules the schema cannot carry:
/// a route's weights add up to 100, a TLS route's SNI hosts are among the
/// VirtualService's hosts, local-origin failures are counted only when
/// split out.
fn repaired(kind: &str, mut spec: Value) -> Value {
    let first_host = spec["hosts"][0].clone();
    for rule in spec.get_mut("tls").and_then(Value::as_array_mut).into_iter().flatten() {
        for m in rule.get_mut("match").and_then(Value::as_array_mut).into_iter().flatten() {
            m["sniHosts"] = json!([first_host]);
        }
    }
    split_local_origin(&mut spec);
    for (list, key) in [("hosts", None), ("subsets", Some("name"))] {
        if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
            let mut seen = BTreeSet::new();
            items.retain(|item| seen.insert(key.map_or(item, |k| &item[k]).to_string()));
        }
    }
    for_each_key(&mut spec, "distribute", &mut |distribute| {
        for item in distribute.as_array_mut().into_iter().flatten() {
            if let Some(to) = item.get_mut("to").and_then(Value::as_object_mut) {
                let mut weights: Vec<Value> = to.values().map(|w| json!({"weight": w})).collect();
                hundred_all(&mut weights);
                for (w, v) in to.values_mut().zip(weights) {
                    *w = v["weight"].clone();
                }
            }
        }
    });
    if kind == "VirtualService" {
        for section in ["http", "tcp", "tls"] {
            for rule in spec.get_mut(section).and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(routes) = rule.get_mut("route").and_then(Value::as_array_mut) {
                    hundred(routes);
                }
            }
        }
    }
    spec
}

/// Calls `f` on the value of every `key`, however deep.
fn for_each_key(value: &mut Value, key: &str, f: &mut dyn FnMut(&mut Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == key {
                    f(v);
                }
                for_each_key(v, key, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_key(v, key, f)),
        _ => {}
    }
}

fn split_local_origin(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("consecutiveLocalOriginFailures") {
                map.insert("splitExternalLocalOriginErrors".into(), Value::Bool(true));
            }
            map.values_mut().for_each(split_local_origin);
        }
        Value::Array(items) => items.iter_mut().for_each(split_local_origin),
        _ => {}
    }
}

/// Weights that add up to 100 when more than one destination shares traffic.
fn hundred(routes: &mut [Value]) {
    if routes.len() >= 2 {
        hundred_all(routes);
    }
}

/// Weights (each item's `weight`) that add up to 100.
fn hundred_all(routes: &mut [Value]) {
    if routes.is_empty() {
        return;
    }
    let weights: Vec<i64> = routes.iter().map(|r| r["weight"].as_i64().unwrap_or(0)).collect();
    let total: i64 = weights.iter().sum();
    let mut left = 100;
    let last = routes.len() - 1;
    for (i, route) in routes.iter_mut().enumerate() {
        let w = if i == last {
            left
        } else if total == 0 {
            100 / (last as i64 + 1)
        } else {
            weights[i] * 100 / total
        };
        left -= w;
        route["weight"] = Value::from(w);
    }
}
