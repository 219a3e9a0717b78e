//! Sidecar resources narrowing what a proxy receives (model/sidecar_scope.rs):
//! which clusters, listener chains and routes the productpage sidecar gets
//! under a Sidecar's egress listeners, and that Envoy takes the result.

use std::collections::BTreeSet;

use serde_json::json;

use super::envoy::assert_envoy_accepts;
use super::{bookinfo, endpoint_slice, mesh_view, permissive, productpage};
use crate::index::{EndpointSlices, Index, Pods, Services, Sidecars, VirtualServices};
use crate::model::ObjectKey;
use crate::model::mesh::ProxyContext;
use crate::testing::objects::{self, config};
use crate::translate::sidecar::{Outbound, inbound, outbound};

const HTTPBIN: &str = "httpbin.other.svc.cluster.local";
const HTTPBIN_IP: &str = "10.96.5.1";
const MONITORING: &str = "monitoring.istio-system.svc.cluster.local";

/// Bookinfo in `default` (four Services on 9080), httpbin in `other`
/// (HTTP 8000) and a Service on 15014 in the root namespace `istio-system`.
fn mesh() -> Index {
    let mut index = bookinfo();
    for (name, namespace, ip, port) in [
        ("httpbin", "other", HTTPBIN_IP, ("http", 8000)),
        ("monitoring", "istio-system", "10.96.6.1", ("http-monitoring", 15014)),
    ] {
        let service = objects::service(name).namespace(namespace).cluster_ip(ip).port(port.0, port.1).build();
        index.apply::<Services>(&service);
        index.apply::<EndpointSlices>(&endpoint_slice(&service, &[]));
    }
    index
}

fn sidecar(index: &mut Index, namespace: &str, name: &str, spec: serde_json::Value) {
    index.apply::<Sidecars>(&config::<crate::api::Sidecar>(namespace, name, spec));
}

fn translate_for(index: &Index, proxy: &ProxyContext) -> Outbound {
    let view = mesh_view(index);
    outbound(&view, &view.scope(proxy))
}

fn pod(index: &Index, name: &str) -> ProxyContext {
    ProxyContext::from_workload(index.get::<Pods>(&ObjectKey::new("default", name)).expect("the pod"))
}

fn cluster_names(out: &Outbound) -> BTreeSet<String> {
    out.clusters.iter().map(|c| c.name.clone()).collect()
}

fn route_names(out: &Outbound) -> Vec<String> {
    out.routes.iter().map(|r| r.name.clone()).collect()
}

/// The filter chains at an address (`<ip>_<port>`) or a port's catch-all (`0.0.0.0_<port>`).
fn has_chain(out: &Outbound, name: &str) -> bool {
    out.listener.filter_chains.iter().any(|c| c.name == name)
}

fn bookinfo_clusters() -> Vec<String> {
    ["details", "productpage", "ratings", "reviews"]
        .iter()
        .map(|s| format!("outbound|9080||{s}.default.svc.cluster.local"))
        .collect()
}

fn with_fixed(mut names: Vec<String>) -> BTreeSet<String> {
    names.extend(["PassthroughCluster".to_string(), "BlackHoleCluster".to_string()]);
    names.into_iter().collect()
}

#[test]
fn egress_to_the_namespace_and_the_root_cuts_the_clusters_to_theirs() {
    let mut index = mesh();
    let before = translate_for(&index, &productpage(&index));
    let mut all = bookinfo_clusters();
    all.insert(0, format!("outbound|8000||{HTTPBIN}"));
    all.push(format!("outbound|15014||{MONITORING}"));
    assert_eq!(cluster_names(&before), with_fixed(all));
    assert!(has_chain(&before, &format!("{HTTPBIN_IP}_8000")));

    // Istio's documented example: the namespace's own Services, and the root namespace's.
    sidecar(&mut index, "default", "default", json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]}));
    let after = translate_for(&index, &productpage(&index));
    let mut narrowed = bookinfo_clusters();
    narrowed.push(format!("outbound|15014||{MONITORING}"));
    assert_eq!(cluster_names(&after), with_fixed(narrowed));
    assert_eq!(after.endpoints.len(), 5, "one assignment per EDS cluster");
    assert!(!has_chain(&after, &format!("{HTTPBIN_IP}_8000")));
    assert!(!has_chain(&after, "0.0.0.0_8000"));
    assert!(!route_names(&after).iter().any(|r| r == "8000" || r.starts_with(HTTPBIN)));
    assert!(has_chain(&after, "0.0.0.0_9080"));
    assert_envoy_accepts(
        "a Sidecar's narrowed configuration",
        &after,
        &inbound(&mesh_view(&index), &productpage(&index), permissive),
    );

    // Only the namespace: the root's Service goes too.
    sidecar(&mut index, "default", "default", json!({"egress": [{"hosts": ["./*"]}]}));
    assert_eq!(cluster_names(&translate_for(&index, &productpage(&index))), with_fixed(bookinfo_clusters()));

    // One host by name, from another namespace.
    sidecar(
        &mut index,
        "default",
        "default",
        json!({"egress": [{"hosts": [format!("other/{HTTPBIN}"), "./reviews.default.svc.cluster.local"]}]}),
    );
    assert_eq!(
        cluster_names(&translate_for(&index, &productpage(&index))),
        with_fixed(vec![
            format!("outbound|8000||{HTTPBIN}"),
            "outbound|9080||reviews.default.svc.cluster.local".into()
        ])
    );
}

#[test]
fn a_workload_selector_narrows_only_the_pods_it_selects() {
    let mut index = mesh();
    sidecar(
        &mut index,
        "default",
        "productpage",
        json!({"workloadSelector": {"labels": {"app": "productpage"}}, "egress": [{"hosts": ["./*"]}]}),
    );
    let view = mesh_view(&index);
    let productpage = productpage(&index);
    let reviews = pod(&index, "reviews-v1-0");
    assert_eq!(view.scope(&productpage).sidecar, Some(ObjectKey::new("default", "productpage")));
    assert_eq!(view.scope(&reviews).sidecar, None);
    assert_eq!(cluster_names(&translate_for(&index, &productpage)), with_fixed(bookinfo_clusters()));
    assert_eq!(translate_for(&index, &reviews).clusters.len(), 8, "every Service, unchanged");
    // Proxies of one Sidecar share their scope: both reviews pods, say.
    sidecar(
        &mut index,
        "default",
        "reviews",
        json!({"workloadSelector": {"labels": {"app": "reviews"}}, "egress": [{"hosts": ["./*"]}]}),
    );
    let view = mesh_view(&index);
    assert_eq!(view.scope(&pod(&index, "reviews-v1-0")), view.scope(&pod(&index, "reviews-v2-0")));
    assert_ne!(view.scope(&pod(&index, "reviews-v1-0")), view.scope(&productpage));
}

#[test]
fn a_root_namespace_sidecar_applies_where_the_namespace_has_none() {
    let mut index = mesh();
    sidecar(&mut index, "istio-system", "default", json!({"egress": [{"hosts": ["./*"]}]}));
    // "." is the proxy's namespace, not the root's.
    assert_eq!(cluster_names(&translate_for(&index, &productpage(&index))), with_fixed(bookinfo_clusters()));
    // The namespace's own Sidecar replaces it.
    sidecar(&mut index, "default", "default", json!({"egress": [{"hosts": ["other/*"]}]}));
    assert_eq!(
        cluster_names(&translate_for(&index, &productpage(&index))),
        with_fixed(vec![format!("outbound|8000||{HTTPBIN}")])
    );
}

#[test]
fn imported_virtual_services_bring_their_destinations_clusters_and_others_do_not_apply() {
    let mut index = mesh();
    // A rule of `default` sends reviews to httpbin in `other`.
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
        "default",
        "reviews",
        json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": HTTPBIN, "port": {"number": 8000}}}]}]}),
    ));
    // A rule of `other` for details: not imported by "./*".
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(
        "other",
        "details",
        json!({"hosts": ["details.default.svc.cluster.local"], "http": [{"fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}, "route": [{"destination": {"host": "details.default.svc.cluster.local"}}]}]}),
    ));
    let view = mesh_view(&index);
    let scope = view.scope(&productpage(&index));
    let details = view.service("details.default.svc.cluster.local").expect("details");
    assert!(
        view.virtual_service_for(&scope, details).is_some(),
        "without a Sidecar, the rule of other applies"
    );

    sidecar(&mut index, "default", "default", json!({"egress": [{"hosts": ["./*"]}]}));
    let view = mesh_view(&index);
    let scope = view.scope(&productpage(&index));
    let details = view.service("details.default.svc.cluster.local").expect("details");
    assert!(view.virtual_service_for(&scope, details).is_none(), "not imported");
    let out = outbound(&view, &scope);
    // As Istio: the destination's cluster comes with the rule, but no chain at its address.
    assert!(cluster_names(&out).contains(&format!("outbound|8000||{HTTPBIN}")));
    assert!(!has_chain(&out, &format!("{HTTPBIN_IP}_8000")));
    let reviews = out
        .routes
        .iter()
        .find(|r| r.name == "reviews.default.svc.cluster.local:9080")
        .expect("reviews' routes");
    let sends_to = crate::translate::route::route_clusters(reviews);
    assert!(sends_to.contains(&format!("outbound|8000||{HTTPBIN}")), "{sends_to:?}");
    assert!(!sends_to.iter().any(|c| c.contains("reviews")), "{sends_to:?}");
    assert_envoy_accepts(
        "a rule sending outside the egress hosts",
        &out,
        &inbound(&view, &productpage(&index), permissive),
    );
}

#[test]
fn an_egress_listener_with_a_port_serves_that_port() {
    let mut index = mesh();
    sidecar(
        &mut index,
        "default",
        "default",
        json!({"egress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "hosts": ["./reviews.default.svc.cluster.local"]}, {"hosts": ["./*", "other/*"]}]}),
    );
    let out = translate_for(&index, &productpage(&index));
    // Port 9080 is the first listener's: only reviews gets a chain and routes there...
    let route_9080: Vec<String> = route_names(&out).into_iter().filter(|r| r.ends_with(":9080")).collect();
    assert_eq!(route_9080, ["reviews.default.svc.cluster.local:9080"]);
    // ...the other Services keep the clusters the catch-all imports them with,
    let mut all = bookinfo_clusters();
    all.insert(0, format!("outbound|8000||{HTTPBIN}"));
    assert_eq!(cluster_names(&out), with_fixed(all));
    // and httpbin's port is the catch-all's.
    assert!(has_chain(&out, &format!("{HTTPBIN_IP}_8000")));
    assert_envoy_accepts(
        "an egress listener with a port",
        &out,
        &inbound(&mesh_view(&index), &productpage(&index), permissive),
    );
}

/// The inbound clusters of a proxy: name, discovery type and, for a static
/// one, its endpoint.
fn inbound_clusters(inb: &crate::translate::sidecar::Inbound) -> Vec<String> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    inb.clusters
        .iter()
        .map(|c| {
            let kind = match c.cluster_discovery_type {
                Some(ClusterDiscoveryType::Type(t)) => format!("{:?}", envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::try_from(t).unwrap()),
                _ => "?".into(),
            };
            let endpoint = c.load_assignment.iter().flat_map(|a| &a.endpoints).flat_map(|e| &e.lb_endpoints).map(|e| {
                let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else { return String::new() };
                let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(a)) =
                    endpoint.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    return String::new();
                };
                match a.port_specifier {
                    Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => format!(" {}:{p}", a.address),
                    _ => format!(" {}", a.address),
                }
            });
            format!("{} {kind}{}", c.name, endpoint.collect::<String>())
        })
        .collect()
}

#[test]
fn ingress_listeners_replace_the_services_ports() {
    let mut index = mesh();
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let ip = proxy.ip.clone().expect("productpage has an address");
    let before = inbound(&view, &proxy, permissive);
    assert_eq!(
        inbound_clusters(&before),
        ["inbound|9080|| OriginalDst", "InboundPassthroughCluster OriginalDst"]
    );

    sidecar(
        &mut index,
        "default",
        "productpage",
        json!({"workloadSelector": {"labels": {"app": "productpage"}}, "ingress": [
            {"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "127.0.0.1:8080"},
            {"port": {"number": 9090, "protocol": "TCP", "name": "tcp"}, "defaultEndpoint": "0.0.0.0:9091"},
            {"port": {"number": 7070, "protocol": "HTTP", "name": "as-sent"}},
            // Not applied: a Unix socket (status says so); the listener is left out.
            {"port": {"number": 6060, "protocol": "HTTP", "name": "uds"}, "defaultEndpoint": "unix:///var/run/app.sock"},
        ]}),
    );
    let view = mesh_view(&index);
    // Which Service each port's policy is asked for: productpage's on 9080 only.
    let asked = std::cell::RefCell::new(Vec::new());
    let inb = inbound(&view, &proxy, |port| {
        asked.borrow_mut().push((port.port, port.service.map(|s| s.key.name.clone())));
        crate::translate::sidecar::PortPolicy::default()
    });
    assert_eq!(
        inbound_clusters(&inb),
        [
            "inbound|9080|| Static 127.0.0.1:8080".to_string(),
            format!("inbound|9090|| Static {ip}:9091"),
            "inbound|7070|| OriginalDst".to_string(),
            "InboundPassthroughCluster OriginalDst".to_string(),
        ]
    );
    let asked = asked.into_inner();
    assert!(asked.contains(&(9080, Some("productpage".into()))), "{asked:?}");
    assert!(asked.contains(&(9090, None)) && asked.contains(&(7070, None)), "{asked:?}");
    let ports: BTreeSet<String> = inb
        .listener
        .filter_chains
        .iter()
        .filter(|c| c.name.starts_with("inbound|"))
        .map(|c| c.name.clone())
        .collect();
    // PERMISSIVE: a mutual TLS chain and a plaintext one per port.
    let expected = ["7070", "9080", "9090"]
        .iter()
        .flat_map(|p| [format!("inbound|{p}||"), format!("inbound|{p}||;mtls")]);
    assert_eq!(ports, expected.collect());
    // Other pods of the namespace keep their Services' ports.
    let reviews = inbound(&view, &pod(&index, "reviews-v1-0"), permissive);
    assert_eq!(
        inbound_clusters(&reviews),
        ["inbound|9080|| OriginalDst", "InboundPassthroughCluster OriginalDst"]
    );
    assert_envoy_accepts("a Sidecar's ingress listeners", &outbound(&view, &view.scope(&proxy)), &inb);
}

/// `(max_connections, max_pending_requests)` of a cluster's circuit breaker, if it has one.
fn limits(inb: &crate::translate::sidecar::Inbound, name: &str) -> Option<(u32, u32)> {
    let cluster = inb.clusters.iter().find(|c| c.name == name).expect("the cluster");
    let t = *cluster.circuit_breakers.as_ref()?.thresholds.first()?;
    Some((t.max_connections?.value, t.max_pending_requests?.value))
}

#[test]
fn inbound_connection_pools_limit_the_inbound_clusters() {
    let mut index = mesh();
    let proxy = productpage(&index);
    assert_eq!(limits(&inbound(&mesh_view(&index), &proxy, permissive), "inbound|9080||"), None);

    // The Sidecar's pool, on the Services' ports.
    sidecar(
        &mut index,
        "default",
        "default",
        json!({"inboundConnectionPool": {"tcp": {"maxConnections": 3}}}),
    );
    let inb = inbound(&mesh_view(&index), &proxy, permissive);
    assert_eq!(limits(&inb, "inbound|9080||"), Some((3, u32::MAX)));

    // An ingress listener's own pool replaces it; one without keeps it.
    sidecar(
        &mut index,
        "default",
        "default",
        json!({"inboundConnectionPool": {"tcp": {"maxConnections": 3}}, "ingress": [
            {"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:9080",
             "connectionPool": {"http": {"http1MaxPendingRequests": 2}}},
            {"port": {"number": 9090, "protocol": "TCP"}},
        ]}),
    );
    let view = mesh_view(&index);
    let inb = inbound(&view, &proxy, permissive);
    assert_eq!(limits(&inb, "inbound|9080||"), Some((u32::MAX, 2)));
    assert_eq!(limits(&inb, "inbound|9090||"), Some((3, u32::MAX)));
    assert_envoy_accepts("inbound connection pools", &outbound(&view, &view.scope(&proxy)), &inb);
}

/// Every field of a connection pool: the inbound cluster takes exactly what a
/// DestinationRule's pool gives an outbound one (src/translate/tests/policy.rs
/// proves that translation field by field).
#[test]
fn an_inbound_pool_translates_every_field_as_a_destination_rules_pool() {
    let pool = json!({
        "tcp": {"maxConnections": 7, "connectTimeout": "3s", "maxConnectionDuration": "1h", "idleTimeout": "30s",
                "tcpKeepalive": {"probes": 4, "time": "60s", "interval": "5s"}},
        "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 9, "maxRequestsPerConnection": 3, "maxRetries": 2,
                 "idleTimeout": "20s", "maxConcurrentStreams": 11, "h2UpgradePolicy": "DEFAULT", "useClientProtocol": true},
    });
    let mut index = mesh();
    index.apply::<crate::index::DestinationRules>(
        &objects::dr("productpage").with("trafficPolicy", json!({"connectionPool": pool.clone()})).build(),
    );
    for spec in [
        json!({"inboundConnectionPool": pool.clone()}),
        json!({"ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "connectionPool": pool.clone()}]}),
    ] {
        sidecar(&mut index, "default", "default", spec.clone());
        let view = mesh_view(&index);
        let proxy = productpage(&index);
        let out = outbound(&view, &view.scope(&proxy));
        let inb = inbound(&view, &proxy, permissive);
        let outbound_cluster = out
            .clusters
            .iter()
            .find(|c| c.name == "outbound|9080||productpage.default.svc.cluster.local")
            .unwrap();
        let inbound_cluster = inb.clusters.iter().find(|c| c.name == "inbound|9080||").unwrap();
        assert!(inbound_cluster.circuit_breakers.is_some(), "{spec}");
        assert_eq!(inbound_cluster.circuit_breakers, outbound_cluster.circuit_breakers, "{spec}");
        assert_eq!(inbound_cluster.connect_timeout, outbound_cluster.connect_timeout, "{spec}");
        assert_eq!(
            inbound_cluster.upstream_connection_options, outbound_cluster.upstream_connection_options,
            "{spec}"
        );
        assert_eq!(
            inbound_cluster.typed_extension_protocol_options,
            outbound_cluster.typed_extension_protocol_options,
            "{spec}"
        );
        assert_envoy_accepts("an inbound pool with every field", &out, &inb);
    }
}

/// A Sidecar's `outboundTrafficPolicy.mode` replaces the mesh's for the
/// proxies it applies to, both ways; a Sidecar without one keeps the mesh's.
#[test]
fn a_sidecars_outbound_traffic_policy_replaces_the_meshs_for_its_proxies() {
    use crate::model::OutboundTrafficPolicy::{AllowAny, RegistryOnly};
    // Where virtualOutbound sends connections no chain of the mesh takes.
    let default_chain = |out: &Outbound| {
        out.listener_clusters.contains("BlackHoleCluster")
            && !out.listener_clusters.contains("PassthroughCluster")
    };
    let mut index = mesh();
    sidecar(
        &mut index,
        "default",
        "productpage",
        json!({"workloadSelector": {"labels": {"app": "productpage"}}, "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    );
    let view = mesh_view(&index);
    let (productpage, reviews) = (productpage(&index), pod(&index, "reviews-v1-0"));
    assert_eq!(view.outbound_traffic_policy(&view.scope(&productpage)), RegistryOnly);
    assert_eq!(view.outbound_traffic_policy(&view.scope(&reviews)), AllowAny, "the mesh's, ALLOW_ANY");
    assert!(default_chain(&translate_for(&index, &productpage)), "unknown connections: BlackHoleCluster");
    assert!(!default_chain(&translate_for(&index, &reviews)), "unknown connections pass through");
    let blocked = translate_for(&index, &productpage);
    assert!(blocked.routes.iter().all(|r| r.virtual_hosts.last().is_some_and(|v| v.name == "block_all")));
    assert_envoy_accepts("a Sidecar's REGISTRY_ONLY", &blocked, &inbound(&view, &productpage, permissive));

    // The other way round: a mesh of REGISTRY_ONLY, a namespace's Sidecar allowing any.
    let strict = |allow: bool| {
        let mut index = bookinfo().with_mesh_config(crate::model::MeshConfig {
            outbound_traffic_policy: RegistryOnly,
            ..Default::default()
        });
        let spec = if allow {
            json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})
        } else {
            json!({"egress": [{"hosts": ["*/*"]}]})
        };
        sidecar(&mut index, "default", "default", spec);
        let view = mesh_view(&index);
        view.outbound_traffic_policy(&view.scope(&productpage))
    };
    assert_eq!(strict(true), AllowAny);
    assert_eq!(strict(false), RegistryOnly, "a Sidecar without a policy keeps the mesh's");
}
