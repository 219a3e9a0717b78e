//! `mesh proxy-config cluster|listener|route|endpoint|all`: what a
//! sidecar's Envoy holds, read from Envoy itself (its admin
//! /config_dump?include_eds, as istioctl reads it), as tables in istioctl's
//! spirit, or as the dump's own JSON for the chosen kind. Pure: the dump
//! in, text out.

use serde_json::Value;

use crate::xds::debug::aligned;

/// The admin path the tables are made from.
pub const CONFIG_DUMP_PATH: &str = "/config_dump?include_eds";

/// What `proxy-config` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Cluster,
    Listener,
    Route,
    Endpoint,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Listener, Kind::Route, Kind::Endpoint];

    /// The section of the dump (its `@type`'s last word) and, in it, the
    /// lists and the field of each entry that holds the resource.
    fn layout(self) -> (&'static str, &'static [(&'static str, &'static [&'static str])]) {
        match self {
            Kind::Cluster => (
                "ClustersConfigDump",
                &[("static_clusters", &["cluster"]), ("dynamic_active_clusters", &["cluster"])],
            ),
            Kind::Listener => (
                "ListenersConfigDump",
                &[("static_listeners", &["listener"]), ("dynamic_listeners", &["active_state", "listener"])],
            ),
            Kind::Route => (
                "RoutesConfigDump",
                &[("static_route_configs", &["route_config"]), ("dynamic_route_configs", &["route_config"])],
            ),
            Kind::Endpoint => (
                "EndpointsConfigDump",
                &[
                    ("static_endpoint_configs", &["endpoint_config"]),
                    ("dynamic_endpoint_configs", &["endpoint_config"]),
                ],
            ),
        }
    }

    /// The table of `resources` of this kind.
    pub fn table(self, resources: &[Value]) -> String {
        match self {
            Kind::Cluster => cluster_table(resources),
            Kind::Listener => listener_table(resources),
            Kind::Route => route_table(resources),
            Kind::Endpoint => endpoint_table(resources),
        }
    }
}

/// The active resources of `kind` in an Envoy config dump, static ones
/// first, in the dump's order (warming and draining ones are left out, as
/// they do not serve yet or any more).
pub fn resources(dump: &Value, kind: Kind) -> Vec<Value> {
    let (section, lists) = kind.layout();
    let Some(section) = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.rsplit('.').next() == Some(section)))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (list, path) in lists {
        for entry in section[*list].as_array().into_iter().flatten() {
            let resource = path.iter().fold(entry, |value, key| &value[*key]);
            if !resource.is_null() {
                found.push(resource.clone());
            }
        }
    }
    found
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn header(columns: &[&str]) -> Vec<Vec<String>> {
    vec![columns.iter().map(|c| c.to_string()).collect()]
}

/// Istio's cluster names, `direction|port|subset|host`, taken apart; other
/// names are the FQDN column alone.
fn cluster_table(clusters: &[Value]) -> String {
    let mut rows = header(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"]);
    for cluster in clusters {
        let name = text(&cluster["name"]);
        let kind = match (text(&cluster["type"]), text(&cluster["cluster_type"]["name"])) {
            (_, custom) if !custom.is_empty() => custom,
            (declared, _) if !declared.is_empty() => declared,
            // proto3 JSON leaves the default out.
            _ => "STATIC".into(),
        };
        let parts: Vec<&str> = name.split('|').collect();
        let row = match parts.as_slice() {
            [direction @ ("outbound" | "inbound"), port, subset, host] => {
                vec![
                    or_dash(host.to_string()),
                    port.to_string(),
                    or_dash(subset.to_string()),
                    direction.to_string(),
                ]
            }
            _ => vec![name.clone(), "-".into(), "-".into(), "-".into()],
        };
        rows.push([row, vec![kind]].concat());
    }
    aligned(rows)
}

/// One row per filter chain: what it matches and where it sends.
fn listener_table(listeners: &[Value]) -> String {
    let mut rows = header(&["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"]);
    for listener in listeners {
        let name = text(&listener["name"]);
        let socket = &listener["address"]["socket_address"];
        let (address, port) = (text(&socket["address"]), text(&socket["port_value"]));
        let mut chains: Vec<&Value> = listener["filter_chains"].as_array().into_iter().flatten().collect();
        if !listener["default_filter_chain"].is_null() {
            chains.push(&listener["default_filter_chain"]);
        }
        if chains.is_empty() {
            rows.push(vec![name.clone(), address.clone(), or_dash(port.clone()), "-".into(), "-".into()]);
        }
        for chain in chains {
            rows.push(vec![
                name.clone(),
                address.clone(),
                or_dash(port.clone()),
                chain_match(&chain["filter_chain_match"]),
                chain_destination(chain),
            ]);
        }
    }
    aligned(rows)
}

fn chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if !m["destination_port"].is_null() {
        parts.push(format!("port={}", text(&m["destination_port"])));
    }
    let list = |key: &str| -> Vec<String> { m[key].as_array().into_iter().flatten().map(text).collect() };
    let prefixes: Vec<String> = m["prefix_ranges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{}/{}", text(&r["address_prefix"]), text(&r["prefix_len"])))
        .collect();
    for (label, values) in [
        ("addr", prefixes),
        ("sni", list("server_names")),
        ("transport", m["transport_protocol"].as_str().map(|t| vec![t.to_string()]).unwrap_or_default()),
        ("alpn", list("application_protocols")),
    ] {
        if !values.is_empty() {
            parts.push(format!("{label}={}", values.join(",")));
        }
    }
    if parts.is_empty() { "ALL".into() } else { parts.join("; ") }
}

/// Where a chain's last filter sends: a route configuration (RDS or
/// inline) for HTTP, a cluster (or weighted clusters) for TCP.
fn chain_destination(chain: &Value) -> String {
    let Some(last) = chain["filters"].as_array().and_then(|f| f.last()) else {
        return "-".into();
    };
    let config = &last["typed_config"];
    let kind = config["@type"].as_str().unwrap_or_default().rsplit('.').next().unwrap_or_default();
    match kind {
        "HttpConnectionManager" if !config["rds"].is_null() => {
            format!("Route: {}", text(&config["rds"]["route_config_name"]))
        }
        "HttpConnectionManager" => {
            format!("Inline Route: {}", or_dash(text(&config["route_config"]["name"])))
        }
        "TcpProxy" if !config["cluster"].is_null() => format!("Cluster: {}", text(&config["cluster"])),
        "TcpProxy" => format!("Clusters: {}", weighted(&config["weighted_clusters"]["clusters"])),
        _ => text(&last["name"]),
    }
}

/// `name:weight` of weighted clusters, comma-separated.
fn weighted(clusters: &Value) -> String {
    let all: Vec<String> = clusters
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{}:{}", text(&c["name"]), text(&c["weight"])))
        .collect();
    all.join(",")
}

/// One row per route of each virtual host.
fn route_table(configs: &[Value]) -> String {
    let mut rows = header(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "DESTINATION"]);
    for config in configs {
        let name = or_dash(text(&config["name"]));
        for host in config["virtual_hosts"].as_array().into_iter().flatten() {
            let domains: Vec<String> = host["domains"].as_array().into_iter().flatten().map(text).collect();
            let domains = match domains.len() {
                0..=2 => domains.join(","),
                n => format!("{},{} +{} more", domains[0], domains[1], n - 2),
            };
            for route in host["routes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    name.clone(),
                    text(&host["name"]),
                    or_dash(domains.clone()),
                    route_match(&route["match"]),
                    route_destination(route),
                ]);
            }
        }
    }
    aligned(rows)
}

fn route_match(m: &Value) -> String {
    let path = if let Some(prefix) = m["prefix"].as_str() {
        format!("{prefix}*")
    } else if let Some(path) = m["path"].as_str() {
        path.to_string()
    } else if let Some(prefix) = m["path_separated_prefix"].as_str() {
        format!("{prefix}/*")
    } else if let Some(regex) = m["safe_regex"]["regex"].as_str() {
        format!("~{regex}")
    } else {
        "-".into()
    };
    let headers = m["headers"].as_array().map_or(0, Vec::len);
    if headers == 0 { path } else { format!("{path} (+{headers} headers)") }
}

fn route_destination(route: &Value) -> String {
    let action = &route["route"];
    if let Some(cluster) = action["cluster"].as_str() {
        cluster.to_string()
    } else if !action["weighted_clusters"].is_null() {
        weighted(&action["weighted_clusters"]["clusters"])
    } else if !route["redirect"].is_null() {
        "redirect".into()
    } else if !route["direct_response"].is_null() {
        format!("direct response {}", text(&route["direct_response"]["status"]))
    } else {
        "-".into()
    }
}

/// One row per endpoint, with the health the dump gives (UNKNOWN: not
/// health-checked, which Envoy sends to).
fn endpoint_table(assignments: &[Value]) -> String {
    let mut rows = header(&["ENDPOINT", "STATUS", "WEIGHT", "CLUSTER"]);
    for assignment in assignments {
        let cluster = text(&assignment["cluster_name"]);
        for locality in assignment["endpoints"].as_array().into_iter().flatten() {
            for lb in locality["lb_endpoints"].as_array().into_iter().flatten() {
                let socket = &lb["endpoint"]["address"]["socket_address"];
                let health = lb["health_status"].as_str().unwrap_or("UNKNOWN");
                rows.push(vec![
                    format!("{}:{}", text(&socket["address"]), text(&socket["port_value"])),
                    health.to_string(),
                    or_dash(text(&lb["load_balancing_weight"])),
                    cluster.clone(),
                ]);
            }
        }
    }
    aligned(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump() -> Value {
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "static_clusters": [{"cluster": {"name": "xds-grpc", "type": "STRICT_DNS"}}],
             "dynamic_active_clusters": [
                {"cluster": {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "type": "EDS"}},
                {"cluster": {"name": "inbound|9080||"}},
                {"cluster": {"name": "PassthroughCluster", "type": "ORIGINAL_DST"}}],
             "dynamic_warming_clusters": [{"cluster": {"name": "warming"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamic_listeners": [{"name": "virtualOutbound", "active_state": {"listener": {
                "name": "virtualOutbound",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                "filter_chains": [
                  {"filter_chain_match": {"destination_port": 9080},
                   "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                     "rds": {"route_config_name": "9080"}}}]},
                  {"filter_chain_match": {"destination_port": 3306, "prefix_ranges": [{"address_prefix": "10.0.0.7", "prefix_len": 32}]},
                   "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                     "cluster": "outbound|3306||mysql.default.svc.cluster.local"}}]}],
                "default_filter_chain": {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                     "cluster": "PassthroughCluster"}}]}}}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [{"route_config": {"name": "9080", "virtual_hosts": [
                {"name": "reviews.default.svc.cluster.local:9080",
                 "domains": ["reviews.default.svc.cluster.local", "reviews", "reviews.default", "10.96.0.9"],
                 "routes": [
                   {"match": {"prefix": "/", "headers": [{"name": "end-user"}]},
                    "route": {"cluster": "outbound|9080|v2|reviews.default.svc.cluster.local"}},
                   {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                      {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 80},
                      {"name": "outbound|9080|v3|reviews.default.svc.cluster.local", "weight": 20}]}}}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamic_endpoint_configs": [{"endpoint_config": {
                "cluster_name": "outbound|9080|v1|reviews.default.svc.cluster.local",
                "endpoints": [{"lb_endpoints": [
                  {"endpoint": {"address": {"socket_address": {"address": "10.244.0.12", "port_value": 9080}}},
                   "health_status": "HEALTHY", "load_balancing_weight": 1}]}]}}]}
        ]})
    }

    #[test]
    fn each_table_shows_what_the_dump_holds() {
        let dump = dump();
        let clusters = Kind::Cluster.table(&resources(&dump, Kind::Cluster));
        let lines: Vec<&str> = clusters.lines().collect();
        assert_eq!(lines.len(), 5, "static and active, not warming:\n{clusters}");
        assert!(lines[0].starts_with("SERVICE FQDN"));
        assert!(lines[1].starts_with("xds-grpc") && lines[1].ends_with("STRICT_DNS"), "{clusters}");
        let reviews: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(reviews, ["reviews.default.svc.cluster.local", "9080", "v1", "outbound", "EDS"]);
        let inbound: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(inbound, ["-", "9080", "-", "inbound", "STATIC"]);

        let listeners = Kind::Listener.table(&resources(&dump, Kind::Listener));
        assert!(listeners.contains("port=9080") && listeners.contains("Route: 9080"), "{listeners}");
        assert!(
            listeners.contains("port=3306; addr=10.0.0.7/32")
                && listeners.contains("Cluster: outbound|3306||mysql.default.svc.cluster.local"),
            "{listeners}"
        );
        let default_chain: Vec<&str> = listeners.lines().last().unwrap().split_whitespace().collect();
        assert_eq!(default_chain[3..], ["ALL", "Cluster:", "PassthroughCluster"], "{listeners}");

        let routes = Kind::Route.table(&resources(&dump, Kind::Route));
        assert!(routes.contains("reviews.default.svc.cluster.local,reviews +2 more"), "{routes}");
        assert!(routes.contains("/* (+1 headers)") && routes.contains("outbound|9080|v2|"), "{routes}");
        assert!(routes.contains("outbound|9080|v1|reviews.default.svc.cluster.local:80,"), "{routes}");

        let endpoints = Kind::Endpoint.table(&resources(&dump, Kind::Endpoint));
        let row: Vec<&str> = endpoints.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["10.244.0.12:9080", "HEALTHY", "1", "outbound|9080|v1|reviews.default.svc.cluster.local"]
        );
    }

    #[test]
    fn a_dump_without_a_section_gives_an_empty_table() {
        let empty = json!({"configs": []});
        for kind in Kind::ALL {
            assert!(resources(&empty, kind).is_empty());
            assert_eq!(kind.table(&[]).lines().count(), 1, "{kind:?}: the header alone");
        }
        assert!(resources(&json!("not a dump"), Kind::Cluster).is_empty());
    }
}
