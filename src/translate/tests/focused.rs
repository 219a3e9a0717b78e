//! One behaviour per test: match kinds, visibility, DestinationRule
//! precedence, unknown destinations, load balancing, inbound ports, scopes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, header_matcher, query_parameter_matcher, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use k8s_openapi::api::core::v1 as core;
use kube::api::ObjectMeta;
use prost::{Message, Name};
use serde_json::json;

use super::{NAMESPACE, bookinfo, endpoint_slice, mesh_view, permissive, productpage};
use crate::api::virtual_service::HttpMatchRequest;
use crate::index::{DestinationRules, EndpointSlices, Index, Services, VirtualServices};
use crate::model::mesh::{MeshView, ProxyContext, ScopeKey};
use crate::testing::objects::{self, config};
use crate::translate::parse_duration;
use crate::translate::route::route_match;
use crate::translate::sidecar::{Outbound, inbound, outbound};

fn vs(index: &mut Index, namespace: &str, name: &str, spec: serde_json::Value) {
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(namespace, name, spec));
}

fn dr(index: &mut Index, namespace: &str, name: &str, spec: serde_json::Value) {
    index.apply::<DestinationRules>(&config::<crate::api::DestinationRule>(namespace, name, spec));
}

/// Bookinfo's reviews DestinationRule: subsets v1, v2 and v3.
fn reviews_rule(index: &mut Index) {
    index.apply::<DestinationRules>(&objects::dr("reviews").versions().build());
}

fn scope(namespace: &str) -> ScopeKey {
    ScopeKey { namespace: namespace.into(), labels: BTreeMap::new(), sidecar: None }
}

fn translate(index: &Index) -> Outbound {
    let view = mesh_view(index);
    outbound(&view, &view.scope(&productpage(index)))
}

fn route_config<'a>(out: &'a Outbound, name: &str) -> &'a RouteConfiguration {
    out.routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("route configuration {name}"))
}

/// The virtual host of a Service with a ClusterIP, in its own route configuration.
fn vhost<'a>(out: &'a Outbound, port: &str, host: &str) -> &'a VirtualHost {
    let name = format!("{host}:{port}");
    route_config(out, &name).virtual_hosts.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name}"))
}

fn cluster_of(action: &Option<route::Action>) -> String {
    match action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| format!("{}={}", c.name, c.weight.map(|w| w.value).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","),
            other => panic!("{other:?}"),
        },
        Some(route::Action::DirectResponse(d)) => format!("direct {}", d.status),
        other => panic!("{other:?}"),
    }
}

fn cluster<'a>(out: &'a Outbound, name: &str) -> &'a Cluster {
    out.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("cluster {name}"))
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn every_match_kind_translates() {
    let m: HttpMatchRequest = serde_json::from_value(json!({
        "uri": {"regex": "/api/v[0-9]+/.*"},
        "ignoreUriCase": true,
        "method": {"exact": "GET"},
        "authority": {"prefix": "reviews"},
        "scheme": {"exact": "http"},
        "headers": {"End-User": {"exact": "jason"}, "x-present": {}},
        "withoutHeaders": {"x-canary": {"regex": "yes|true"}, "x-debug": {"regex": "*"}},
        "queryParams": {"debug": {"exact": ""}, "v": {"regex": "[0-9]+"}}
    }))
    .expect("a match");
    let r = route_match(&m);
    let Some(route_match::PathSpecifier::SafeRegex(regex)) = &r.path_specifier else { panic!("{r:?}") };
    assert_eq!(regex.regex, "/api/v[0-9]+/.*");
    assert_eq!(r.case_sensitive.map(|b| b.value), Some(false));
    let headers: Vec<(String, bool, String)> = r
        .headers
        .iter()
        .map(|h| {
            let what = match &h.header_match_specifier {
                Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => match &s.match_pattern {
                    Some(MatchPattern::Exact(v)) => format!("exact {v}"),
                    Some(MatchPattern::Prefix(v)) => format!("prefix {v}"),
                    Some(MatchPattern::SafeRegex(v)) => format!("regex {}", v.regex),
                    other => format!("{other:?}"),
                },
                Some(header_matcher::HeaderMatchSpecifier::PresentMatch(p)) => format!("present {p}"),
                other => format!("{other:?}"),
            };
            (h.name.clone(), h.invert_match, what)
        })
        .collect();
    let expected = [
        (":method", false, "exact GET"),
        (":authority", false, "prefix reviews"),
        (":scheme", false, "exact http"),
        ("end-user", false, "exact jason"),
        ("x-present", false, "present true"),
        ("x-canary", true, "regex yes|true"),
        // Istio's "*" in withoutHeaders: the header is absent.
        ("x-debug", true, "present true"),
    ];
    assert_eq!(headers, expected.map(|(n, i, w)| (n.to_string(), i, w.to_string())));
    let query: Vec<String> = r
        .query_parameters
        .iter()
        .map(|q| match &q.query_parameter_match_specifier {
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(_)) => {
                format!("{} present", q.name)
            }
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(s)) => {
                format!("{} {:?}", q.name, s.match_pattern)
            }
            None => q.name.clone(),
        })
        .collect();
    assert_eq!(query.len(), 2);
    assert_eq!(query[0], "debug present");
    assert!(query[1].starts_with("v Some(SafeRegex"), "{query:?}");

    let exact = route_match(&serde_json::from_value(json!({"uri": {"exact": "/login"}})).unwrap());
    assert_eq!(exact.path_specifier, Some(route_match::PathSpecifier::Path("/login".into())));
    let prefix = route_match(&serde_json::from_value(json!({"uri": {"prefix": "/api"}})).unwrap());
    assert_eq!(prefix.path_specifier, Some(route_match::PathSpecifier::Prefix("/api".into())));
    assert_eq!(prefix.case_sensitive, None);
}

#[test]
fn source_labels_port_and_source_namespace_are_decided_per_proxy() {
    let mut index = bookinfo();
    reviews_rule(&mut index);
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "http": [
            {"name": "from-productpage", "match": [{"sourceLabels": {"app": "productpage"}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"name": "other-port", "match": [{"port": 7000}], "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"name": "other-ns", "match": [{"sourceNamespace": "elsewhere"}], "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"name": "rest", "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]}),
    );
    let view = mesh_view(&index);
    let productpage = productpage(&index);
    let scope = view.scope(&productpage);
    assert_eq!(scope.labels, BTreeMap::from([("app".to_string(), "productpage".to_string())]));
    let out = outbound(&view, &scope);
    let names: Vec<_> =
        vhost(&out, "9080", REVIEWS).routes.iter().map(|r| (r.name.clone(), cluster_of(&r.action))).collect();
    assert_eq!(
        names,
        [
            ("from-productpage".into(), format!("outbound|9080|v2|{REVIEWS}")),
            ("rest".into(), format!("outbound|9080|v1|{REVIEWS}"))
        ]
    );

    // Another pod of the namespace does not match sourceLabels.
    let ratings = ProxyContext {
        labels: BTreeMap::from([("app".into(), "ratings".into()), ("version".into(), "v1".into())]),
        ..productpage.clone()
    };
    let other = outbound(&view, &view.scope(&ratings));
    let names: Vec<_> = vhost(&other, "9080", REVIEWS).routes.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["rest"]);
}

#[test]
fn scopes_ignore_labels_no_rule_selects_on() {
    let index = bookinfo();
    let view = mesh_view(&index);
    let a = ProxyContext {
        namespace: NAMESPACE.into(),
        labels: [("app".into(), "a".into())].into(),
        ..Default::default()
    };
    let b = ProxyContext {
        namespace: NAMESPACE.into(),
        labels: [("app".into(), "b".into())].into(),
        ..Default::default()
    };
    assert_eq!(view.scope(&a), view.scope(&b));
    assert_eq!(outbound(&view, &view.scope(&a)), outbound(&view, &view.scope(&b)));
}

#[test]
fn export_to_hides_configuration_from_other_namespaces() {
    let mut index = bookinfo();
    reviews_rule(&mut index);
    // Private to `default`.
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "exportTo": ["."],
        "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]}),
    );
    let view = mesh_view(&index);
    let own = outbound(&view, &scope(NAMESPACE));
    assert_eq!(
        cluster_of(&vhost(&own, "9080", REVIEWS).routes[0].action),
        format!("outbound|9080|v3|{REVIEWS}")
    );
    let other = outbound(&view, &scope("shop"));
    let route = &vhost(&other, "9080", REVIEWS).routes[0];
    assert_eq!(
        (route.name.as_str(), cluster_of(&route.action)),
        ("default", format!("outbound|9080||{REVIEWS}"))
    );
    // Short names only resolve in the Service's own namespace.
    assert!(!vhost(&other, "9080", REVIEWS).domains.contains(&"reviews".to_string()));
    assert!(vhost(&other, "9080", REVIEWS).domains.contains(&"reviews.default".to_string()));

    // Exported to `shop` by name.
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "exportTo": ["shop"],
        "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]}),
    );
    let view = mesh_view(&index);
    let shop = outbound(&view, &scope("shop"));
    assert_eq!(
        cluster_of(&vhost(&shop, "9080", REVIEWS).routes[0].action),
        format!("outbound|9080|v3|{REVIEWS}")
    );
    let own = outbound(&view, &scope(NAMESPACE));
    assert_eq!(vhost(&own, "9080", REVIEWS).routes[0].name, "default");
}

#[test]
fn a_services_export_to_annotation_limits_the_namespaces_that_see_it() {
    let mut index = bookinfo();
    let notes = |export_to: &str| core::Service {
        metadata: ObjectMeta {
            name: Some("notes".into()),
            namespace: Some(NAMESPACE.into()),
            annotations: Some([("networking.istio.io/exportTo".to_string(), export_to.to_string())].into()),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            cluster_ip: Some("10.96.0.99".into()),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                port: 9080,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = "outbound|9080||notes.default.svc.cluster.local";
    let sees = |index: &Index, namespace: &str| {
        let out = outbound(&mesh_view(index), &scope(namespace));
        out.clusters.iter().any(|c| c.name == name)
    };
    index.apply::<Services>(&notes("."));
    assert!(sees(&index, NAMESPACE));
    assert!(!sees(&index, "shop"), "private to its namespace");
    index.apply::<Services>(&notes("shop, ."));
    assert!(sees(&index, NAMESPACE) && sees(&index, "shop"));
    assert!(!sees(&index, "other"));
    index.apply::<Services>(&notes("~"));
    assert!(!sees(&index, NAMESPACE), "exported to no namespace, not even its own");
    index.apply::<Services>(&notes(""));
    assert!(sees(&index, "other"), "an empty annotation is no annotation");
}

#[test]
fn the_proxys_namespace_wins_then_the_services_then_name_order() {
    let mut index = bookinfo();
    let policy = |lb: &str| json!({"host": "reviews.default.svc.cluster.local", "trafficPolicy": {"loadBalancer": {"simple": lb}}});
    dr(&mut index, "zzz", "b", policy("RANDOM"));
    dr(&mut index, "aaa", "a", policy("ROUND_ROBIN"));
    let view = mesh_view(&index);
    let lb = |view: &MeshView, ns: &str| {
        cluster(&outbound(view, &scope(ns)), &format!("outbound|9080||{REVIEWS}")).lb_policy
    };
    // Neither in the proxy's nor the service's namespace: name order (aaa/a).
    assert_eq!(lb(&view, NAMESPACE), i32::from(cluster::LbPolicy::RoundRobin));
    // The proxy's own namespace first.
    assert_eq!(lb(&view, "zzz"), i32::from(cluster::LbPolicy::Random));
    // The service's namespace before others.
    dr(&mut index, NAMESPACE, "reviews", policy("LEAST_REQUEST"));
    let view = mesh_view(&index);
    assert_eq!(lb(&view, "shop"), i32::from(cluster::LbPolicy::LeastRequest));
    assert_eq!(lb(&view, "zzz"), i32::from(cluster::LbPolicy::Random));
    // A private rule elsewhere is not seen.
    dr(
        &mut index,
        "aaa",
        "a",
        json!({"host": "reviews.default.svc.cluster.local", "exportTo": ["."],
        "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
    );
    dr(&mut index, NAMESPACE, "reviews", json!({"host": "x"}));
    let view = mesh_view(&index);
    assert_eq!(lb(&view, "shop"), i32::from(cluster::LbPolicy::Random));
}

#[test]
fn unknown_destinations_answer_503_and_weighted_shares_go_to_the_black_hole() {
    let mut index = bookinfo();
    reviews_rule(&mut index);
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "http": [
            {"name": "no-subset", "match": [{"headers": {"a": {"exact": "1"}}}], "route": [{"destination": {"host": "reviews", "subset": "v9"}}]},
            {"name": "no-host", "match": [{"headers": {"a": {"exact": "2"}}}], "route": [{"destination": {"host": "nowhere"}}]},
            {"name": "split", "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                                         {"destination": {"host": "reviews", "subset": "v9"}, "weight": 10}]}
        ]}),
    );
    // A VirtualService for a host that is no Service does nothing (and no panic).
    vs(
        &mut index,
        NAMESPACE,
        "external",
        json!({"hosts": ["example.com"], "http": [{"route": [{"destination": {"host": "example.com"}}]}]}),
    );
    let out = translate(&index);
    let routes = &vhost(&out, "9080", REVIEWS).routes;
    assert_eq!(cluster_of(&routes[0].action), "direct 503");
    assert_eq!(cluster_of(&routes[1].action), "direct 503");
    let Some(route::Action::DirectResponse(d)) = &routes[0].action else { unreachable!() };
    let body = format!("{:?}", d.body);
    assert!(body.contains("subset v9 of reviews.default.svc.cluster.local"), "{body}");
    assert_eq!(cluster_of(&routes[2].action), format!("outbound|9080|v1|{REVIEWS}=90,BlackHoleCluster=10"));
    assert!(out.clusters.iter().any(|c| c.name == "BlackHoleCluster"));
}

#[test]
fn subsets_get_their_own_clusters_and_only_their_endpoints() {
    let mut index = bookinfo();
    reviews_rule(&mut index);
    let out = translate(&index);
    let addresses = |name: &str| -> usize {
        out.endpoints
            .iter()
            .find(|e| e.cluster_name == name)
            .map(|e| e.endpoints.iter().map(|l| l.lb_endpoints.len()).sum())
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(addresses(&format!("outbound|9080||{REVIEWS}")), 3);
    assert_eq!(addresses(&format!("outbound|9080|v2|{REVIEWS}")), 1);
    let c = cluster(&out, &format!("outbound|9080|v2|{REVIEWS}"));
    let eds = c.eds_cluster_config.as_ref().expect("EDS");
    assert_eq!(eds.service_name, c.name);
}

#[test]
fn load_balancing_follows_the_destination_rule_with_port_and_subset_overrides() {
    let mut index = bookinfo();
    dr(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"host": "reviews",
        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}},
                          "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"consistentHash": {"httpCookie": {"name": "c", "ttl": "10s"}, "maglev": {"tableSize": 65537}}}}]},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}},
                    {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]}),
    );
    dr(
        &mut index,
        NAMESPACE,
        "ratings",
        json!({"host": "ratings", "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": true}}}}),
    );
    let out = translate(&index);
    let whole = cluster(&out, &format!("outbound|9080||{REVIEWS}"));
    assert_eq!(whole.lb_policy, i32::from(cluster::LbPolicy::Maglev));
    let v1 = cluster(&out, &format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(
        v1.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst.into()))
    );
    assert!(v1.eds_cluster_config.is_none());
    assert!(!out.endpoints.iter().any(|e| e.cluster_name == v1.name));
    // A subset's own policy overrides the rule's, port-level settings included.
    assert_eq!(
        cluster(&out, &format!("outbound|9080|v2|{REVIEWS}")).lb_policy,
        i32::from(cluster::LbPolicy::Random)
    );
    let ratings = cluster(&out, "outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(ratings.lb_policy, i32::from(cluster::LbPolicy::RingHash));

    // The default routes carry the hash policies.
    let hash = |host: &str| match &vhost(&out, "9080", host).routes[0].action {
        Some(route::Action::Route(a)) => format!("{:?}", a.hash_policy),
        other => panic!("{other:?}"),
    };
    let reviews = hash(REVIEWS);
    assert!(reviews.contains("Cookie") && reviews.contains("seconds: 10"), "{reviews}");
    assert!(hash("ratings.default.svc.cluster.local").contains("source_ip: true"));
    assert_eq!(hash("details.default.svc.cluster.local"), "[]");
}

fn tcp_service(index: &mut Index, name: &str, ip: &str, port: i32, port_name: &str) {
    let service = objects::service(name).cluster_ip(ip).port(port_name, port).build();
    index.apply::<Services>(&service);
    index.apply::<EndpointSlices>(&endpoint_slice(&service, &[]));
}

fn chain_names(chains: &[FilterChain]) -> Vec<String> {
    chains.iter().map(|c| c.name.clone()).collect()
}

/// The match and the RDS name (or TCP cluster) of a chain.
fn chain_summary(chain: &FilterChain) -> (Option<u32>, Vec<String>, String) {
    let m = chain.filter_chain_match.clone().unwrap_or_default();
    let ranges = m
        .prefix_ranges
        .iter()
        .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap_or_default().value))
        .collect();
    let Some(filter::ConfigType::TypedConfig(config)) = &chain.filters[0].config_type else { panic!() };
    let target = if config.type_url == TcpProxy::type_url() {
        let proxy = TcpProxy::decode(config.value.as_slice()).expect("decodes");
        format!("tcp {}", proxy.stat_prefix)
    } else {
        let manager = HttpConnectionManager::decode(config.value.as_slice()).expect("decodes");
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = manager.route_specifier else {
            return (m.destination_port.map(|p| p.value), ranges, "inline".into());
        };
        format!("{} rds {}", manager.stat_prefix, rds.route_config_name)
    };
    (m.destination_port.map(|p| p.value), ranges, target)
}

#[test]
fn each_service_port_has_its_chain_at_its_cluster_ip_and_http_ports_a_catch_all() {
    let mut index = bookinfo();
    tcp_service(&mut index, "mysql", "10.96.1.1", 3306, "tcp-mysql");
    tcp_service(&mut index, "legacy", "10.96.1.2", 9080, "legacy");
    let out = translate(&index);
    assert_eq!(
        chain_names(&out.listener.filter_chains),
        [
            "0.0.0.0_9080",
            "10.96.1.1_3306",
            "10.96.0.10_9080",
            "10.96.0.11_9080",
            "10.96.0.12_9080",
            "10.96.0.13_9080",
            "10.96.1.2_9080",
            "virtualOutbound-http"
        ]
    );
    let summary = |name: &str| {
        chain_summary(out.listener.filter_chains.iter().find(|c| c.name == name).expect("chain"))
    };
    assert_eq!(summary("0.0.0.0_9080"), (Some(9080), vec![], "outbound_0.0.0.0_9080 rds 9080".into()));
    assert_eq!(
        summary("10.96.1.1_3306"),
        (
            Some(3306),
            vec!["10.96.1.1/32".into()],
            "tcp outbound|3306||mysql.default.svc.cluster.local".into()
        )
    );
    let reviews_ip = vhost(&out, "9080", REVIEWS).domains.last().cloned().expect("the ClusterIP");
    assert_eq!(
        summary(&format!("{reviews_ip}_9080")),
        (Some(9080), vec![format!("{reviews_ip}/32")], format!("outbound_0.0.0.0_9080 rds {REVIEWS}:9080"))
    );
    // The legacy port is no HTTP: a TCP proxy, and no virtual host anywhere.
    assert!(summary("10.96.1.2_9080").2.starts_with("tcp "));
    assert!(!out.routes.iter().flat_map(|r| &r.virtual_hosts).any(|v| v.name.starts_with("legacy.")));
    assert!(out.listener.default_filter_chain.is_some());

    // Each Service's routes hold its virtual host and the pass-through;
    // the port's, for other addresses, only the pass-through.
    let names: Vec<_> = out.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "9080",
            "details.default.svc.cluster.local:9080",
            "productpage.default.svc.cluster.local:9080",
            "ratings.default.svc.cluster.local:9080",
            "reviews.default.svc.cluster.local:9080"
        ]
    );
    let hosts = |name: &str| -> Vec<String> {
        route_config(&out, name).virtual_hosts.iter().map(|v| v.name.clone()).collect()
    };
    assert_eq!(hosts(&format!("{REVIEWS}:9080")), [format!("{REVIEWS}:9080"), "allow_any".into()]);
    assert_eq!(hosts("9080"), ["allow_any"]);
}

#[test]
fn headless_services_are_routed_by_the_ports_catch_all() {
    let mut index = bookinfo();
    tcp_service(&mut index, "db", "None", 9080, "http-db");
    let out = translate(&index);
    let hosts: Vec<_> = route_config(&out, "9080").virtual_hosts.iter().map(|v| v.name.clone()).collect();
    assert_eq!(hosts, ["db.default.svc.cluster.local:9080", "allow_any"]);
    assert!(!out.routes.iter().any(|r| r.name == "db.default.svc.cluster.local:9080"));
    assert!(!chain_names(&out.listener.filter_chains).iter().any(|n| n.starts_with("None")));
    // A change to a Service with a ClusterIP leaves the catch-all alone.
    let before = route_config(&out, "9080").clone();
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}),
    );
    reviews_rule(&mut index);
    let after = translate(&index);
    assert_eq!(route_config(&after, "9080"), &before);
    assert_ne!(
        route_config(&after, &format!("{REVIEWS}:9080")),
        route_config(&out, &format!("{REVIEWS}:9080"))
    );
}

#[test]
fn inbound_serves_the_pods_own_ports() {
    let index = bookinfo();
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let inb = inbound(&view, &proxy, permissive);
    assert_eq!(
        chain_names(&inb.listener.filter_chains),
        ["inbound|9080||;mtls", "inbound|9080||", "virtualInbound-http"]
    );
    let names: Vec<_> = inb.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["inbound|9080||", "InboundPassthroughCluster"]);
    let bind =
        inb.clusters[0].upstream_bind_config.as_ref().and_then(|b| b.source_address.as_ref()).expect("bind");
    assert_eq!(bind.address, "127.0.0.6");
    // A pod no Service selects has only the pass-through.
    let lonely = ProxyContext {
        namespace: NAMESPACE.into(),
        labels: [("app".into(), "x".into())].into(),
        ..Default::default()
    };
    assert_eq!(
        chain_names(&inbound(&view, &lonely, permissive).listener.filter_chains),
        ["virtualInbound-http"]
    );
}

#[test]
fn each_mutual_tls_mode_gives_the_port_its_chains() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

    use crate::model::mtls::MtlsMode;
    let index = bookinfo();
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let chains = |mode: MtlsMode| {
        inbound(&view, &proxy, move |_| crate::translate::sidecar::PortPolicy {
            mtls: mode,
            ..Default::default()
        })
        .listener
        .filter_chains
    };

    // PERMISSIVE: mutual TLS for clients offering Istio's ALPN, plaintext for the rest.
    let permissive = chains(MtlsMode::Permissive);
    let (tls, plain) = (&permissive[0], &permissive[1]);
    let tls_match = tls.filter_chain_match.clone().expect("a match");
    assert_eq!(tls_match.transport_protocol, "tls");
    assert!(tls_match.application_protocols.contains(&"istio-peer-exchange".to_string()));
    assert!(plain.transport_socket.is_none());
    let socket = tls.transport_socket.as_ref().expect("TLS");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(config)) =
        &socket.config_type
    else {
        panic!("typed config")
    };
    let context = DownstreamTlsContext::decode(config.value.as_slice()).expect("a server TLS context");
    assert_eq!(context.require_client_certificate.map(|b| b.value), Some(true), "mutual");
    let common = context.common_tls_context.expect("common");
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");

    // STRICT: only mutual TLS, and it takes every connection to the port,
    // so plaintext fails the handshake instead of passing through.
    let strict = chains(MtlsMode::Strict);
    assert_eq!(chain_names(&strict), ["inbound|9080||;mtls", "virtualInbound-http"]);
    let strict_match = strict[0].filter_chain_match.clone().expect("a match");
    assert_eq!(strict_match.transport_protocol, "");
    assert!(strict_match.application_protocols.is_empty());
    assert_eq!(strict_match.destination_port.map(|p| p.value), Some(9080));

    // DISABLE: plaintext only.
    assert_eq!(chain_names(&chains(MtlsMode::Disable)), ["inbound|9080||", "virtualInbound-http"]);
}

#[test]
fn the_translation_is_deterministic() {
    let mut index = super::scenario("virtual-service-reviews-jason-v2-v3");
    dr(
        &mut index,
        NAMESPACE,
        "ratings",
        json!({"host": "ratings", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
    );
    let encode = |out: &Outbound| {
        let mut bytes = Vec::new();
        out.clusters.iter().for_each(|c| bytes.extend(c.encode_to_vec()));
        out.endpoints.iter().for_each(|c| bytes.extend(c.encode_to_vec()));
        out.routes.iter().for_each(|c| bytes.extend(c.encode_to_vec()));
        bytes.extend(out.listener.encode_to_vec());
        bytes
    };
    assert_eq!(encode(&translate(&index)), encode(&translate(&index)));
}

#[test]
fn durations_parse_as_istio_writes_them() {
    let d = |s: &str| parse_duration(s).map(|d| (d.seconds, d.nanos));
    assert_eq!(d("10s"), Some((10, 0)));
    assert_eq!(d("1h"), Some((3600, 0)));
    assert_eq!(d("1m30s"), Some((90, 0)));
    assert_eq!(d("0.5s"), Some((0, 500_000_000)));
    assert_eq!(d("100ms"), Some((0, 100_000_000)));
    assert_eq!(d("1.5m"), Some((90, 0)));
    assert_eq!(d("0"), Some((0, 0)));
    assert_eq!(d("10"), None);
    assert_eq!(d("-1s"), None);
    assert_eq!(d(""), None);
}

/// `cargo test --release --lib translate::tests::focused::timing -- --ignored --nocapture`
#[test]
#[ignore = "a timing run; prints figures"]
fn timing_for_a_thousand_services() {
    use std::time::Instant;
    let mut index = Index::new(Default::default());
    let mut pods = Vec::new();
    for n in 0..1000u32 {
        let ns = format!("ns{}", n % 10);
        let name = format!("svc{n}");
        let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
        let service = objects::service(&name).namespace(&ns).cluster_ip(&ip).port("http", 8080).build();
        index.apply::<Services>(&service);
        pods.clear();
        for v in 0..2u32 {
            pods.push(core::Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{v}")),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [("app".to_string(), name.clone()), ("version".to_string(), format!("v{v}"))].into(),
                    ),
                    ..Default::default()
                },
                status: Some(core::PodStatus {
                    pod_ip: Some(format!("10.{}.{}.{}", 100 + v, n / 250, n % 250 + 1)),
                    ..Default::default()
                }),
                ..Default::default()
            });
            index.apply::<crate::index::Pods>(pods.last().expect("pod"));
        }
        let mut slice = endpoint_slice(&service, &pods);
        slice.metadata.namespace = Some(ns.clone());
        for e in &mut slice.endpoints {
            if let Some(r) = &mut e.target_ref {
                r.namespace = Some(ns.clone());
            }
        }
        index.apply::<EndpointSlices>(&slice);
        if n % 2 == 0 {
            dr(
                &mut index,
                &ns,
                &name,
                json!({"host": name, "subsets": [{"name": "v0", "labels": {"version": "v0"}}, {"name": "v1", "labels": {"version": "v1"}}]}),
            );
            vs(
                &mut index,
                &ns,
                &name,
                json!({"hosts": [name], "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": name, "subset": "v1"}}]},
                {"route": [{"destination": {"host": name, "subset": "v0"}, "weight": 90}, {"destination": {"host": name, "subset": "v1"}, "weight": 10}]}]}),
            );
        }
    }
    // The best of a few runs: the first pays for warming the allocator.
    let best = |f: &mut dyn FnMut()| {
        (0..7)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let view = mesh_view(&index);
    let scope = scope("ns0");
    let out = outbound(&view, &scope);
    let bytes: usize = out.clusters.iter().map(|c| c.encoded_len()).sum::<usize>()
        + out.endpoints.iter().map(|c| c.encoded_len()).sum::<usize>()
        + out.routes.iter().map(|c| c.encoded_len()).sum::<usize>()
        + out.listener.encoded_len();
    use crate::translate::sidecar;
    println!(
        "1000 services ({} clusters, {} assignments, {} route configurations, {} virtual hosts, {bytes} bytes encoded)",
        out.clusters.len(),
        out.endpoints.len(),
        out.routes.len(),
        out.routes.iter().map(|r| r.virtual_hosts.len()).sum::<usize>(),
    );
    // What one VirtualService change re-sends: one Service's route
    // configuration, against the single per-port one of before (every
    // visible Service's virtual host and allow_any, as route_configuration_for
    // builds it when given them all).
    let one = out.routes.iter().find(|r| r.name == "svc0.ns0.svc.cluster.local:8080").expect("svc0's routes");
    let catch_all = out.routes.iter().find(|r| r.name == "8080").expect("the port's routes");
    let visible: Vec<_> = view.visible_services(&scope.namespace).collect();
    let per_port = crate::translate::route::route_configuration_for(&view, &scope, 8080, &visible);
    println!(
        "  one Service's route configuration {} bytes ({} virtual hosts); the port's catch-all {} bytes; \
         one per port, as before: {} bytes ({} virtual hosts); all route configurations {} bytes; \
         listener {} bytes ({} chains)",
        one.encoded_len(),
        one.virtual_hosts.len(),
        catch_all.encoded_len(),
        per_port.encoded_len(),
        per_port.virtual_hosts.len(),
        out.routes.iter().map(|r| r.encoded_len()).sum::<usize>(),
        out.listener.encoded_len(),
        out.listener.filter_chains.len(),
    );
    println!("  view      {:?}", best(&mut || drop(mesh_view(&index))));
    println!("  outbound  {:?}", best(&mut || drop(outbound(&view, &scope))));
    println!("    clusters  {:?}", best(&mut || drop(sidecar::clusters(&view, &scope))));
    println!("    endpoints {:?}", best(&mut || drop(sidecar::endpoints(&view, &scope))));
    println!("    routes    {:?}", best(&mut || drop(sidecar::routes(&view, &scope))));
    println!("    listener  {:?}", best(&mut || drop(sidecar::outbound_listener(&view, &scope))));
    let proxy = ProxyContext {
        namespace: "ns0".into(),
        labels: [("app".into(), "svc0".into())].into(),
        ..Default::default()
    };
    println!("  scope     {:?}", best(&mut || drop(view.scope(&proxy))));
    println!("  inbound   {:?}", best(&mut || drop(inbound(&view, &proxy, permissive))));
    println!(
        "  encode    {:?}",
        best(&mut || {
            out.clusters.iter().for_each(|c| drop(c.encode_to_vec()));
            out.endpoints.iter().for_each(|c| drop(c.encode_to_vec()));
            out.routes.iter().for_each(|c| drop(c.encode_to_vec()));
        })
    );
}

#[test]
fn a_repeated_cluster_ip_stays_with_the_first_service() {
    let mut index = bookinfo();
    // The index may briefly hold a deleted Service and its successor with the same address.
    let reviews_ip =
        vhost(&translate(&index), "9080", REVIEWS).domains.last().cloned().expect("the ClusterIP");
    tcp_service(&mut index, "aaa", &reviews_ip, 9080, "http");
    let out = translate(&index);
    // One chain for the address (Envoy refuses two with the same match), to the first Service's routes.
    let chains: Vec<_> =
        out.listener.filter_chains.iter().filter(|c| c.name == format!("{reviews_ip}_9080")).collect();
    assert_eq!(chains.len(), 1);
    assert_eq!(chain_summary(chains[0]).2, "outbound_0.0.0.0_9080 rds aaa.default.svc.cluster.local:9080");
    let first = vhost(&out, "9080", "aaa.default.svc.cluster.local");
    assert!(first.domains.contains(&format!("{reviews_ip}:9080")));
    // The other has no chain, so no routes of its own until the index settles.
    assert!(!out.routes.iter().any(|r| r.name == format!("{REVIEWS}:9080")));
}

#[test]
fn route_features_translate() {
    let mut index = bookinfo();
    reviews_rule(&mut index);
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "gateways": ["mesh"], "http": [
            {"name": "teapot", "match": [{"name": "brew", "uri": {"exact": "/brew"}}],
             "directResponse": {"status": 418, "body": {"string": "short and stout"}}},
            {"name": "at-the-gateway", "match": [{"gateways": ["bookinfo-gateway"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"name": "no-such-port", "match": [{"uri": {"prefix": "/x"}}],
             "route": [{"destination": {"host": "reviews", "port": {"number": 9999}}}]},
            {"name": "slow", "match": [{"uri": {"prefix": "/slow"}}], "timeout": "2.5s",
             "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]},
            {"name": "rest", "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]}),
    );
    // Bound to a gateway only: not for the sidecars, which keep the default route.
    vs(
        &mut index,
        NAMESPACE,
        "ratings",
        json!({"hosts": ["ratings"], "gateways": ["bookinfo-gateway"],
               "http": [{"route": [{"destination": {"host": "ratings", "port": {"number": 9999}}}]}]}),
    );
    let out = translate(&index);
    let routes = &vhost(&out, "9080", REVIEWS).routes;
    let summary: Vec<(String, String)> =
        routes.iter().map(|r| (r.name.clone(), cluster_of(&r.action))).collect();
    assert_eq!(
        summary,
        [
            ("teapot.brew".to_string(), "direct 418".to_string()),
            ("no-such-port".into(), "direct 503".into()),
            ("slow".into(), format!("outbound|9080|v2|{REVIEWS}")),
            ("rest".into(), format!("outbound|9080|v1|{REVIEWS}")),
        ],
        "a match for another gateway is dropped; the rest keep their order"
    );
    let Some(route::Action::DirectResponse(teapot)) = &routes[0].action else { unreachable!() };
    assert_eq!(
        format!("{:?}", teapot.body.as_ref().and_then(|b| b.specifier.clone())),
        "Some(InlineString(\"short and stout\"))"
    );
    let Some(route::Action::DirectResponse(no_port)) = &routes[1].action else { unreachable!() };
    assert!(format!("{:?}", no_port.body).contains("has no port 9999"), "{:?}", no_port.body);
    let timeout = |i: usize| match &routes[i].action {
        Some(route::Action::Route(a)) => a.timeout.map(|d| (d.seconds, d.nanos)),
        other => panic!("{other:?}"),
    };
    assert_eq!(timeout(2), Some((2, 500_000_000)), "the rule's timeout");
    assert_eq!(timeout(3), Some((0, 0)), "no timeout unless set, as in Istio");

    let ratings = &vhost(&out, "9080", "ratings.default.svc.cluster.local").routes;
    assert_eq!(ratings.len(), 1);
    assert_eq!(cluster_of(&ratings[0].action), "outbound|9080||ratings.default.svc.cluster.local");
}

#[test]
fn consistent_hash_keys_and_ring_sizes_translate() {
    let mut index = bookinfo();
    dr(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "user", "minimumRingSize": 2048}}},
               "subsets": [{"name": "v1", "labels": {"version": "v1"},
                            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "c", "path": "/api", "ttl": "0s"}, "ringHash": {"minimumRingSize": 4096}}}}}]}),
    );
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}),
    );
    let out = translate(&index);
    let ring = |name: &str| match &cluster(&out, name).lb_config {
        Some(cluster::LbConfig::RingHashLbConfig(c)) => c.minimum_ring_size.map(|s| s.value),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(ring(&format!("outbound|9080||{REVIEWS}")), Some(2048));
    assert_eq!(
        ring(&format!("outbound|9080|v1|{REVIEWS}")),
        Some(4096),
        "ringHash.minimumRingSize of the subset"
    );
    let Some(route::Action::Route(action)) = &vhost(&out, "9080", REVIEWS).routes[0].action else {
        panic!("a route")
    };
    let hash = format!("{:?}", action.hash_policy);
    assert!(hash.contains("Cookie") && hash.contains("path: \"/api\""), "{hash}");

    // Without a VirtualService, the whole port's hash key: the query parameter.
    vs(&mut index, NAMESPACE, "reviews", json!({"hosts": ["other"]}));
    let out = translate(&index);
    let Some(route::Action::Route(action)) = &vhost(&out, "9080", REVIEWS).routes[0].action else {
        panic!("a route")
    };
    let hash = format!("{:?}", action.hash_policy);
    assert!(hash.contains("QueryParameter") && hash.contains("name: \"user\""), "{hash}");
}

#[test]
fn a_destination_rule_with_a_workload_selector_applies_only_to_its_workloads() {
    let mut index = bookinfo();
    let selected = objects::dr("reviews")
        .named("reviews-for-productpage")
        .with("workloadSelector", json!({"matchLabels": {"app": "productpage"}}))
        .load_balancer("RANDOM");
    index.apply::<DestinationRules>(&selected.build());
    index.apply::<DestinationRules>(&objects::dr("reviews").load_balancer("ROUND_ROBIN").build());
    let view = mesh_view(&index);
    let lb = |proxy: &ProxyContext| {
        let out = outbound(&view, &view.scope(proxy));
        cluster(&out, &format!("outbound|9080||{REVIEWS}")).lb_policy
    };
    let productpage = productpage(&index);
    assert_eq!(lb(&productpage), i32::from(cluster::LbPolicy::Random), "the selected workload gets its rule");
    let ratings = ProxyContext {
        labels: BTreeMap::from([("app".into(), "ratings".into()), ("version".into(), "v1".into())]),
        ..productpage.clone()
    };
    assert_eq!(
        lb(&ratings),
        i32::from(cluster::LbPolicy::RoundRobin),
        "others get the rule without a selector"
    );
}

/// What a listener's filters send to, read back from their encoded configs:
/// the oracle for the sets translation declares.
fn decoded_listener_clusters(
    listener: &envoy_types::pb::envoy::config::listener::v3::Listener,
) -> Vec<String> {
    let mut names = Vec::new();
    let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.as_ref());
    for filter in chains.flat_map(|c| &c.filters) {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else { continue };
        if any.type_url == TcpProxy::type_url() {
            let proxy = TcpProxy::decode(any.value.as_slice()).expect("a TCP proxy");
            if let Some(tcp_proxy::ClusterSpecifier::Cluster(name)) = proxy.cluster_specifier {
                names.push(name);
            }
        } else if any.type_url == HttpConnectionManager::type_url() {
            let manager = HttpConnectionManager::decode(any.value.as_slice()).expect("a connection manager");
            if let Some(http_connection_manager::RouteSpecifier::RouteConfig(config)) =
                &manager.route_specifier
            {
                names.extend(crate::translate::route::route_clusters(config));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn translation_names_every_cluster_its_listeners_send_to() {
    let mut index = bookinfo();
    tcp_service(&mut index, "mysql", "10.96.0.99", 3306, "tcp-mysql");
    let view = mesh_view(&index);
    let productpage = productpage(&index);
    let out = outbound(&view, &view.scope(&productpage));
    let declared: Vec<String> = out.listener_clusters.iter().cloned().collect();
    assert_eq!(declared, decoded_listener_clusters(&out.listener));
    assert!(declared.contains(&"outbound|3306||mysql.default.svc.cluster.local".to_string()), "{declared:?}");
    let inb = inbound(&view, &productpage, permissive);
    let declared: Vec<String> = inb.listener_clusters.iter().cloned().collect();
    assert_eq!(declared, decoded_listener_clusters(&inb.listener));
    assert_eq!(declared, ["InboundPassthroughCluster", "inbound|9080||"]);
}

/// The client TLS context of a cluster, decoded.
fn upstream_tls(
    socket: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>,
) -> Option<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(config)) = socket?.config_type.as_ref() else { return None };
    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
        config.value.as_slice(),
    )
    .ok()
}

#[test]
fn without_tls_settings_clients_send_mutual_tls_to_sidecars_and_plaintext_to_the_rest() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let index = bookinfo();
    let out = translate(&index);
    let reviews = cluster(&out, &format!("outbound|9080||{REVIEWS}"));
    assert!(reviews.transport_socket.is_none());
    let [istio, plain] = reviews.transport_socket_matches.as_slice() else { panic!("two matches") };
    let wanted = istio.r#match.as_ref().expect("a match").fields.get("tlsMode").cloned();
    assert_eq!(
        wanted.and_then(|v| v.kind),
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("istio".into()))
    );
    assert_eq!(plain.r#match.as_ref().map(|m| m.fields.len()), Some(0), "the rest");
    let tls = upstream_tls(istio.transport_socket.as_ref()).expect("mTLS");
    assert_eq!(tls.sni, format!("outbound_.9080_._.{REVIEWS}"));
    let common = tls.common_tls_context.expect("common");
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    let Some(ValidationContextType::CombinedValidationContext(combined)) = common.validation_context_type
    else {
        panic!("the mesh root and the server's identity are checked")
    };
    assert_eq!(combined.validation_context_sds_secret_config.map(|s| s.name).as_deref(), Some("ROOTCA"));
    let sans: Vec<String> = combined
        .default_validation_context
        .expect("SANs")
        .match_typed_subject_alt_names
        .into_iter()
        .filter_map(|m| m.matcher.and_then(|m| m.match_pattern))
        .map(|p| match p {
            MatchPattern::Exact(s) => s,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]);

    // Endpoints of pods with a sidecar carry the mark the match reads.
    let assignment = out.endpoints.iter().find(|e| e.cluster_name == reviews.name).expect("endpoints");
    let endpoint = &assignment.endpoints[0].lb_endpoints[0];
    let metadata = endpoint.metadata.as_ref().expect("metadata");
    assert!(metadata.filter_metadata.contains_key("envoy.transport_socket_match"));
}

#[test]
fn destination_rule_tls_modes_translate() {
    let mut index = bookinfo();
    dr(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"host": "reviews",
               "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "sni": "reviews.example", "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/other"]},
                                 "portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL"}}]},
               "subsets": [
                   {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                   {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {
                       "mode": "MUTUAL", "clientCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem",
                       "caCertificates": "/etc/certs/ca.pem", "sni": "v2.example", "subjectAltNames": ["v2.example"]}}},
                   {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}}]}),
    );
    let out = translate(&index);
    let whole = cluster(&out, &format!("outbound|9080||{REVIEWS}"));
    // ISTIO_MUTUAL: mTLS to every endpoint; the port-level entry (no sni,
    // no SANs of its own) replaces the rule's, so the mesh defaults apply.
    assert!(whole.transport_socket_matches.is_empty());
    let tls = upstream_tls(whole.transport_socket.as_ref()).expect("mTLS");
    assert_eq!(tls.sni, format!("outbound_.9080_._.{REVIEWS}"));
    assert_eq!(tls.common_tls_context.expect("common").tls_certificate_sds_secret_configs[0].name, "default");

    // DISABLE: plaintext, whatever the endpoint.
    let v1 = cluster(&out, &format!("outbound|9080|v1|{REVIEWS}"));
    assert!(v1.transport_socket.is_none() && v1.transport_socket_matches.is_empty());

    // MUTUAL: the files mounted in the sidecar, the rule's SNI and names.
    let v2 = upstream_tls(cluster(&out, &format!("outbound|9080|v2|{REVIEWS}")).transport_socket.as_ref())
        .expect("TLS origination");
    assert_eq!(v2.sni, "v2.example");
    let common = v2.common_tls_context.expect("common");
    let certificate = &common.tls_certificates[0];
    let file = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.clone())
    {
        Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(file(&certificate.certificate_chain), "/etc/certs/cert.pem");
    assert_eq!(file(&certificate.private_key), "/etc/certs/key.pem");
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let Some(ValidationContextType::ValidationContext(validation)) = &common.validation_context_type else {
        panic!("the server is verified")
    };
    assert_eq!(file(&validation.trusted_ca), "/etc/certs/ca.pem");
    assert_eq!(validation.match_typed_subject_alt_names.len(), 2, "v2.example as a DNS or URI name");

    // SIMPLE with insecureSkipVerify: TLS, no verification, no client certificate.
    let v3 = upstream_tls(cluster(&out, &format!("outbound|9080|v3|{REVIEWS}")).transport_socket.as_ref())
        .expect("TLS origination");
    let common = v3.common_tls_context.expect("common");
    assert!(common.validation_context_type.is_none() && common.tls_certificates.is_empty());
}

#[test]
fn resilience_features_reach_the_route() {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    let mut index = bookinfo();
    reviews_rule(&mut index);
    vs(
        &mut index,
        NAMESPACE,
        "reviews",
        json!({"hosts": ["reviews"], "http": [
            {"name": "tested", "match": [{"name": "a", "uri": {"prefix": "/a"}}, {"name": "b", "uri": {"prefix": "/b"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
             "retries": {"attempts": 4, "retryOn": "503"},
             "fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 100}}},
             "mirror": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}, "mirrorPercentage": {"value": 50},
             "mirrors": [{"destination": {"host": "nowhere"}},
                         {"destination": {"host": "ratings", "port": {"number": 9080}}, "percentage": {"value": 0}},
                         {"destination": {"host": "details", "port": {"number": 9080}}}]},
            {"name": "rest", "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]}),
    );
    let out = translate(&index);
    let routes = &vhost(&out, "9080", REVIEWS).routes;
    let action = |i: usize| match &routes[i].action {
        Some(route::Action::Route(a)) => a.clone(),
        other => panic!("{other:?}"),
    };
    for i in [0, 1] {
        let tested = action(i);
        let retry = tested.retry_policy.expect("the rule's retries");
        assert_eq!(
            (retry.num_retries.map(|n| n.value), retry.retry_on.as_str()),
            (Some(4), "retriable-status-codes")
        );
        assert_eq!(retry.retriable_status_codes, [503]);
        let mirrors: Vec<_> = tested.request_mirror_policies.iter().map(|m| m.cluster.as_str()).collect();
        assert_eq!(
            mirrors,
            [
                format!("outbound|9080|v3|{REVIEWS}"),
                "outbound|9080||details.default.svc.cluster.local".into()
            ],
            "a mirror with no Service, or a share of 0, is left out"
        );
        let fault = routes[i].typed_per_filter_config.get("envoy.filters.http.fault").expect("the fault");
        let fault = HttpFault::decode(fault.value.as_slice()).expect("an HTTPFault");
        assert_eq!(fault.delay.and_then(|d| d.percentage).map(|p| p.numerator), Some(1_000_000));
    }
    let rest = action(2);
    assert_eq!(
        rest.retry_policy.and_then(|r| r.num_retries).map(|n| n.value),
        Some(2),
        "Istio's default policy"
    );
    assert!(rest.request_mirror_policies.is_empty() && routes[2].typed_per_filter_config.is_empty());
    let depends = crate::translate::route::route_clusters(route_config(&out, &format!("{REVIEWS}:9080")));
    assert!(
        depends.contains(&format!("outbound|9080|v3|{REVIEWS}")),
        "the mirror's cluster is waited for: {depends:?}"
    );
}
