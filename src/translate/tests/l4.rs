//! TCP and TLS routes (translate/tcp.rs): which chains a non-HTTP Service
//! port gets at its ClusterIP for a proxy, and that Envoy takes them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use prost::{Message, Name};
use serde_json::json;

use super::envoy::assert_envoy_accepts;
use super::{bookinfo, endpoint_slice, mesh_view, permissive, productpage};
use crate::index::{DestinationRules, EndpointSlices, Index, Services, VirtualServices};
use crate::model::mesh::ScopeKey;
use crate::testing::objects::{self, config};
use crate::translate::sidecar::{Outbound, inbound, outbound};

const ECHO: &str = "tcp-echo.default.svc.cluster.local";
const ECHO_IP: &str = "10.96.2.1";
const SECURE: &str = "secure.default.svc.cluster.local";
const SECURE_IP: &str = "10.96.2.2";

/// Bookinfo, with tcp-echo (TCP 9000 and 9001) and secure (TLS 8443), each
/// with subsets v1 and v2.
fn mesh() -> Index {
    let mut index = bookinfo();
    for (name, ip, ports) in [
        ("tcp-echo", ECHO_IP, &[("tcp", 9000), ("tcp-other", 9001)][..]),
        ("secure", SECURE_IP, &[("tls", 8443)]),
    ] {
        let mut service = objects::service(name).cluster_ip(ip);
        for (port_name, number) in ports {
            service = service.port(port_name, *number);
        }
        let service = service.build();
        index.apply::<Services>(&service);
        index.apply::<EndpointSlices>(&endpoint_slice(&service, &[]));
        let rule = objects::dr(name).subset("v1", &[("version", "v1")]).subset("v2", &[("version", "v2")]);
        index.apply::<DestinationRules>(&rule.build());
    }
    index
}

fn vs(index: &mut Index, name: &str, spec: serde_json::Value) {
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>("default", name, spec));
}

fn translate(index: &Index) -> Outbound {
    let view = mesh_view(index);
    outbound(&view, &view.scope(&productpage(index)))
}

/// A chain's match and where it sends, one line each: `<name> <sni> <source> -> <clusters>`.
fn chains(out: &Outbound, ip: &str) -> Vec<String> {
    out.listener.filter_chains.iter().filter(|c| c.name.starts_with(ip)).map(summary).collect()
}

fn summary(chain: &FilterChain) -> String {
    let m = chain.filter_chain_match.clone().unwrap_or_default();
    let sources: Vec<String> = m
        .source_prefix_ranges
        .iter()
        .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap_or_default().value))
        .collect();
    let Some(filter::ConfigType::TypedConfig(config)) = &chain.filters[0].config_type else { panic!() };
    assert_eq!(config.type_url, TcpProxy::type_url());
    let proxy = TcpProxy::decode(config.value.as_slice()).expect("decodes");
    let to = match proxy.cluster_specifier.expect("a cluster") {
        tcp_proxy::ClusterSpecifier::Cluster(c) => c,
        tcp_proxy::ClusterSpecifier::WeightedClusters(w) => {
            w.clusters.iter().map(|c| format!("{}={}", c.name, c.weight)).collect::<Vec<_>>().join(",")
        }
    };
    format!("{} sni={} src={} -> {to}", chain.name, m.server_names.join(","), sources.join(","))
}

fn inspectors(out: &Outbound) -> Vec<String> {
    out.listener.listener_filters.iter().map(|f| f.name.clone()).collect()
}

/// Envoy validates the productpage sidecar's whole configuration.
fn envoy_accepts(index: &Index) {
    let view = mesh_view(index);
    let proxy = productpage(index);
    let out = outbound(&view, &view.scope(&proxy));
    assert_envoy_accepts("the TCP and TLS routes", &out, &inbound(&view, &proxy, permissive));
}

#[test]
fn without_a_virtual_service_tcp_and_tls_ports_go_to_the_service() {
    let index = mesh();
    let out = translate(&index);
    assert_eq!(
        chains(&out, "10.96.2."),
        [
            format!("10.96.2.2_8443 sni= src= -> outbound|8443||{SECURE}"),
            format!("10.96.2.1_9000 sni= src= -> outbound|9000||{ECHO}"),
            format!("10.96.2.1_9001 sni= src= -> outbound|9001||{ECHO}"),
        ]
    );
    assert!(!inspectors(&out).iter().any(|f| f.contains("tls_inspector")), "{:?}", inspectors(&out));
}

#[test]
fn a_tcp_route_splits_connections_by_weight_on_the_port_it_matches() {
    let mut index = mesh();
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [{
        "match": [{"port": 9000}],
        "route": [
            {"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v1"}, "weight": 80},
            {"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v2"}, "weight": 20},
        ]}]}),
    );
    let out = translate(&index);
    assert_eq!(
        chains(&out, ECHO_IP),
        [
            format!("10.96.2.1_9000 sni= src= -> outbound|9000|v1|{ECHO}=80,outbound|9000|v2|{ECHO}=20"),
            // 9001 matches no rule: the Service, as before.
            format!("10.96.2.1_9001 sni= src= -> outbound|9001||{ECHO}"),
        ]
    );
    for cluster in [format!("outbound|9000|v1|{ECHO}"), format!("outbound|9000|v2|{ECHO}")] {
        assert!(out.listener_clusters.contains(&cluster), "{cluster} in {:?}", out.listener_clusters);
    }
    envoy_accepts(&index);
}

#[test]
fn tcp_matches_that_cannot_hold_for_this_proxy_or_address_are_dropped() {
    let mut index = mesh();
    let to = |subset: &str| json!([{"destination": {"host": "tcp-echo", "subset": subset}}]);
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [
            {"match": [{"sourceLabels": {"app": "reviews"}}], "route": to("v1")},
            {"match": [{"sourceNamespace": "other"}], "route": to("v1")},
            {"match": [{"gateways": ["some-gateway"]}], "route": to("v1")},
            {"match": [{"destinationSubnets": ["10.96.3.0/24"]}], "route": to("v1")},
            {"match": [{"port": 9001, "sourceLabels": {"app": "productpage"}, "sourceNamespace": "default",
                        "destinationSubnets": ["10.96.2.0/24"], "gateways": ["mesh"]}], "route": to("v2")},
        ]}),
    );
    let out = translate(&index);
    assert_eq!(
        chains(&out, ECHO_IP),
        [
            format!("10.96.2.1_9000 sni= src= -> outbound|9000||{ECHO}"),
            format!("10.96.2.1_9001 sni= src= -> outbound|9001|v2|{ECHO}"),
        ]
    );
    // The label the rules select on is part of the scope.
    let view = mesh_view(&index);
    assert_eq!(
        view.scope(&productpage(&index)).labels,
        BTreeMap::from([("app".into(), "productpage".into())])
    );
    let reviews = ScopeKey {
        namespace: "default".into(),
        labels: [("app".into(), "reviews".into())].into(),
        sidecar: None,
    };
    let out = outbound(&view, &reviews);
    assert_eq!(chains(&out, ECHO_IP)[0], format!("10.96.2.1_9000 sni= src= -> outbound|9000|v1|{ECHO}"));
}

#[test]
fn source_subnets_get_chains_of_their_own_before_the_catch_all() {
    let mut index = mesh();
    let to = |subset: &str| json!([{"destination": {"host": "tcp-echo", "subset": subset}}]);
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [
            {"match": [{"sourceSubnet": "10.244.3.4/16"}, {"sourceSubnet": "10.245.0.7"}], "route": to("v2")},
            // Inside the first block: the first rule already takes it.
            {"match": [{"sourceSubnet": "10.244.1.0/24"}], "route": to("v1")},
            {"match": [{"port": 9000}], "route": to("v1")},
            // Never reached on 9000: the rule before takes every connection.
            {"match": [{"sourceSubnet": "10.0.0.0/8"}], "route": to("v2")},
        ]}),
    );
    let out = translate(&index);
    let v2 = format!("outbound|9000|v2|{ECHO}");
    assert_eq!(
        chains(&out, "10.96.2.1_9000"),
        [
            format!("10.96.2.1_9000;tcp[0].match[0] sni= src=10.244.0.0/16 -> {v2}"),
            format!("10.96.2.1_9000;tcp[0].match[1] sni= src=10.245.0.7/32 -> {v2}"),
            format!("10.96.2.1_9000 sni= src= -> outbound|9000|v1|{ECHO}"),
        ]
    );
    // On 9001 the port match drops the third rule, so the fourth is reached.
    assert_eq!(
        chains(&out, "10.96.2.1_9001"),
        [
            format!("10.96.2.1_9001;tcp[0].match[0] sni= src=10.244.0.0/16 -> outbound|9001|v2|{ECHO}"),
            format!("10.96.2.1_9001;tcp[0].match[1] sni= src=10.245.0.7/32 -> outbound|9001|v2|{ECHO}"),
            format!("10.96.2.1_9001;tcp[3].match[0] sni= src=10.0.0.0/8 -> outbound|9001|v2|{ECHO}"),
            format!("10.96.2.1_9001 sni= src= -> outbound|9001||{ECHO}"),
        ]
    );
    envoy_accepts(&index);
}

#[test]
fn tls_routes_pick_the_destination_by_sni_and_close_what_no_rule_names() {
    let mut index = mesh();
    let to = |subset: &str| json!([{"destination": {"host": "secure", "subset": subset}}]);
    vs(
        &mut index,
        "secure",
        json!({"hosts": ["secure", "one.example.com", "*.two.example.com"], "tls": [
            {"match": [{"sniHosts": ["One.example.com"]}],
             "route": [{"destination": {"host": "secure", "subset": "v1", "port": {"number": 8443}}}]},
            {"match": [{"sniHosts": ["*.two.example.com", "one.example.com"]}], "route": [
                {"destination": {"host": "secure", "subset": "v1"}, "weight": 50},
                {"destination": {"host": "secure", "subset": "v2"}, "weight": 50},
            ]},
            // Covered by the wildcard before it: the first rule wins.
            {"match": [{"sniHosts": ["a.two.example.com"]}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "sourceLabels": {"app": "reviews"}}], "route": to("v2")},
            // Neither the tcp rule nor the port's protocol make 8443 TCP.
        ], "tcp": [{"route": to("v2")}]}),
    );
    let out = translate(&index);
    let cluster = |subset: &str| format!("outbound|8443|{subset}|{SECURE}");
    assert_eq!(
        chains(&out, SECURE_IP),
        [
            format!("10.96.2.2_8443;tls[0].match[0] sni=one.example.com src= -> {}", cluster("v1")),
            format!(
                "10.96.2.2_8443;tls[1].match[0] sni=*.two.example.com src= -> {}=50,{}=50",
                cluster("v1"),
                cluster("v2")
            ),
            "10.96.2.2_8443 sni= src= -> BlackHoleCluster".to_string(),
        ]
    );
    assert_eq!(inspectors(&out)[1], "envoy.filters.listener.tls_inspector");
    assert!(out.listener_clusters.contains("BlackHoleCluster"));
    envoy_accepts(&index);
}

#[test]
fn tls_matches_that_cannot_hold_for_this_proxy_or_address_are_dropped() {
    let mut index = mesh();
    let to = |subset: &str| json!([{"destination": {"host": "secure", "subset": subset}}]);
    vs(
        &mut index,
        "secure",
        json!({"hosts": ["secure"], "tls": [
            {"match": [{"sniHosts": ["secure"], "sourceLabels": {"app": "reviews"}}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "sourceNamespace": "other"}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "gateways": ["some-gateway"]}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "destinationSubnets": ["10.96.3.0/24"]}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "port": 443}], "route": to("v1")},
            {"match": [{"sniHosts": ["secure"], "port": 8443, "sourceLabels": {"app": "productpage"},
                        "sourceNamespace": "default", "destinationSubnets": ["10.96.2.2"], "gateways": ["mesh"]}],
             "route": to("v2")},
        ]}),
    );
    let out = translate(&index);
    assert_eq!(
        chains(&out, SECURE_IP),
        [
            format!("10.96.2.2_8443;tls[5].match[0] sni=secure src= -> outbound|8443|v2|{SECURE}"),
            "10.96.2.2_8443 sni= src= -> BlackHoleCluster".to_string(),
        ]
    );
    envoy_accepts(&index);
}

#[test]
fn a_tls_port_whose_rules_do_not_apply_here_goes_to_the_service() {
    let mut index = mesh();
    vs(
        &mut index,
        "secure",
        json!({"hosts": ["secure"], "tls": [{
            "match": [{"sniHosts": ["secure"], "port": 443}],
            "route": [{"destination": {"host": "secure", "subset": "v2"}}]}]}),
    );
    let out = translate(&index);
    assert_eq!(chains(&out, SECURE_IP), [format!("10.96.2.2_8443 sni= src= -> outbound|8443||{SECURE}")]);
    assert!(!inspectors(&out).iter().any(|f| f.contains("tls_inspector")));
}

#[test]
fn unknown_destinations_close_their_share_of_connections() {
    let mut index = mesh();
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [{"route": [
            {"destination": {"host": "tcp-echo", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "tcp-echo", "subset": "v9"}, "weight": 50},
        ]}]}),
    );
    let out = translate(&index);
    assert_eq!(
        chains(&out, "10.96.2.1_9000")[0],
        format!("10.96.2.1_9000 sni= src= -> outbound|9000|v1|{ECHO}=50,BlackHoleCluster=50")
    );
    envoy_accepts(&index);
}

/// The TCP proxy of the chain named `name`.
fn proxy_of(out: &Outbound, name: &str) -> TcpProxy {
    let chain = out.listener.filter_chains.iter().find(|c| c.name == name).expect("the chain");
    let Some(filter::ConfigType::TypedConfig(config)) = &chain.filters[0].config_type else { panic!() };
    TcpProxy::decode(config.value.as_slice()).expect("decodes")
}

fn seconds(proxy: &TcpProxy) -> (Option<i64>, Option<i64>) {
    (
        proxy.idle_timeout.as_ref().map(|d| d.seconds),
        proxy.max_downstream_connection_duration.as_ref().map(|d| d.seconds),
    )
}

#[test]
fn a_tcp_proxy_to_one_cluster_takes_its_connection_pools_idle_timeout_and_duration() {
    let mut index = mesh();
    // The rule's pool for the Service; subset v2's own pool replaces it whole.
    let rule = objects::dr("tcp-echo")
        .with(
            "subsets",
            json!([{"name": "v1", "labels": {"version": "v1"}},
                   {"name": "v2", "labels": {"version": "v2"},
                    "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "5s"}}}}]),
        )
        .with(
            "trafficPolicy",
            json!({"connectionPool": {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "2h"}}}),
        );
    index.apply::<DestinationRules>(&rule.build());
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [{
        "match": [{"port": 9000}],
        "route": [{"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v2"}}]}]}),
    );
    let out = translate(&index);
    assert_eq!(seconds(&proxy_of(&out, "10.96.2.1_9000")), (Some(5), None), "v2's own pool");
    assert_eq!(seconds(&proxy_of(&out, "10.96.2.1_9001")), (Some(30), Some(7200)), "the Service's pool");
    envoy_accepts(&index);

    // A split keeps Envoy's defaults, as Istio's weighted TCP proxy does.
    vs(
        &mut index,
        "tcp-echo",
        json!({"hosts": ["tcp-echo"], "tcp": [{"route": [
            {"destination": {"host": "tcp-echo", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "tcp-echo", "subset": "v2"}, "weight": 50}]}]}),
    );
    let out = translate(&index);
    assert_eq!(seconds(&proxy_of(&out, "10.96.2.1_9000")), (None, None));
}
