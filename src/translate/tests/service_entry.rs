//! ServiceEntries and the `outboundTrafficPolicy` (translate/service_entry.rs,
//! the catch-alls of route.rs and passthrough.rs): the clusters, routes and
//! chains an entry's hosts get for Bookinfo's productpage, the same under
//! REGISTRY_ONLY with `block_all` and `BlackHoleCluster` as catch-alls,
//! and a real Envoy taking all of it. The scenario [`SERVICE_ENTRIES`] is
//! also one of the golden files (testdata/bookinfo/service-entries.json).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use prost::Message;

use super::envoy::assert_envoy_accepts;
use super::{apply_networking, bookinfo, mesh_view, permissive, productpage};
use crate::index::{DestinationRules, Index, ServiceEntries, VirtualServices};
use crate::model::{MeshConfig, OutboundTrafficPolicy};
use crate::testing::objects;
use crate::translate::sidecar::{Outbound, inbound, outbound};

/// The golden scenario: Bookinfo with `destination-rule-all.yaml`, the
/// entries below, and REGISTRY_ONLY.
pub(in crate::translate) const SERVICE_ENTRIES: &str = "service-entries";

/// One entry per resolution, external and internal, with and without
/// addresses; a DestinationRule with subsets and one originating TLS; a
/// VirtualService with a timeout on an entry's host.
const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.example.com]
  ports: [{number: 80, protocol: HTTP, name: http}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.10, labels: {version: v1}, weight: 3}
  - {address: 192.0.2.11, ports: {http: 8080}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, protocol: TLS, name: tls}]
  resolution: DNS
  endpoints: [{address: localhost}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.128/25]
  ports: [{number: 5432, protocol: TCP, name: pg}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 80, protocol: HTTP, name: http, targetPort: 443}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: localhost}, {address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: vm, namespace: default}
spec:
  hosts: [vm.example.com]
  ports: [{number: 9090, protocol: HTTP, name: http}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.10.0.5, labels: {security.istio.io/tlsMode: istio}, serviceAccount: vm}
  subjectAltNames: ["spiffe://example.org/vm"]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: httpbin-ext, namespace: default}
spec:
  host: httpbin.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: legacy, namespace: default}
spec:
  host: legacy.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, sni: legacy.example.com}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.example.com]
  http:
  - timeout: 3s
    route:
    - destination: {host: httpbin.example.com, subset: v2}
"#;

/// Bookinfo with the entries, under `policy`.
pub(in crate::translate) fn index(policy: OutboundTrafficPolicy) -> Index {
    let mut index =
        bookinfo().with_mesh_config(MeshConfig { outbound_traffic_policy: policy, ..MeshConfig::default() });
    apply_networking(&mut index, "destination-rule-all.yaml");
    for doc in ENTRIES.split("\n---\n") {
        let object = objects::from_yaml(doc);
        match object.types.as_ref().map(|t| t.kind.as_str()) {
            Some("ServiceEntry") => index.apply::<ServiceEntries>(&object),
            Some("DestinationRule") => index.apply::<DestinationRules>(&object),
            Some("VirtualService") => index.apply::<VirtualServices>(&object),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    index
}

fn translate(policy: OutboundTrafficPolicy) -> Outbound {
    let index = index(policy);
    let view = mesh_view(&index);
    outbound(&view, &view.scope(&productpage(&index)))
}

fn cluster<'a>(out: &'a Outbound, name: &str) -> &'a Cluster {
    out.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

fn discovery(c: &Cluster) -> cluster::DiscoveryType {
    match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t).expect("a type"),
        _ => panic!("{} has no discovery type", c.name),
    }
}

/// `address:port` of each endpoint a cluster carries inline.
fn inline_endpoints(c: &Cluster) -> Vec<String> {
    let assignment = c.load_assignment.as_ref().expect("inline endpoints");
    assignment
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                Some(format!("{}:{:?}", s.address, s.port_specifier))
            }
            _ => None,
        })
        .collect()
}

fn routes<'a>(out: &'a Outbound, name: &str) -> &'a RouteConfiguration {
    out.routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no route configuration {name}"))
}

fn tcp_cluster(chain: &FilterChain) -> String {
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!("typed") };
    let proxy = TcpProxy::decode(any.value.as_slice()).expect("a TCP proxy");
    match proxy.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("one cluster: {other:?}"),
    }
}

#[test]
fn each_resolution_gets_its_cluster_type_and_endpoints() {
    let out = translate(OutboundTrafficPolicy::AllowAny);
    use cluster::DiscoveryType::*;
    // STATIC: by EDS, subsets by the endpoints' labels, the endpoint's own port.
    assert_eq!(discovery(cluster(&out, "outbound|80||httpbin.example.com")), Eds);
    let v2 =
        out.endpoints.iter().find(|e| e.cluster_name == "outbound|80|v2|httpbin.example.com").expect("v2");
    let addresses: Vec<String> = v2
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| format!("{:?}", e.host_identifier))
        .collect();
    assert_eq!(addresses.len(), 1);
    assert!(addresses[0].contains("192.0.2.11") && addresses[0].contains("8080"), "{addresses:?}");
    // An endpoint's weight is its share; one without has none set (equal).
    let whole =
        out.endpoints.iter().find(|e| e.cluster_name == "outbound|80||httpbin.example.com").expect("all");
    let weights: Vec<Option<u32>> = whole
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| e.load_balancing_weight.map(|w| w.value))
        .collect();
    assert_eq!(weights, [Some(3), None]);
    // DNS: STRICT_DNS with the endpoints inline, IPv4.
    let api = cluster(&out, "outbound|443||api.example.com");
    assert_eq!(discovery(api), StrictDns);
    assert_eq!(inline_endpoints(api), ["localhost:Some(PortValue(443))"]);
    assert_eq!(api.dns_lookup_family, cluster::DnsLookupFamily::V4Only as i32);
    assert!(api.eds_cluster_config.is_none());
    // DNS_ROUND_ROBIN: LOGICAL_DNS with the first endpoint only, at the targetPort.
    let legacy = cluster(&out, "outbound|80||legacy.example.com");
    assert_eq!(discovery(legacy), LogicalDns);
    assert_eq!(inline_endpoints(legacy), ["localhost:Some(PortValue(443))"]);
    // NONE: to the original destination.
    let db = cluster(&out, "outbound|5432||db.example.com");
    assert_eq!(discovery(db), OriginalDst);
    assert_eq!(db.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
    // Only EDS clusters have assignments sent by EDS.
    let eds: Vec<&str> = out
        .endpoints
        .iter()
        .map(|e| e.cluster_name.as_str())
        .filter(|n| n.ends_with(".example.com"))
        .collect();
    assert_eq!(
        eds,
        [
            "outbound|80||httpbin.example.com",
            "outbound|80|v1|httpbin.example.com",
            "outbound|80|v2|httpbin.example.com",
            "outbound|9090||vm.example.com"
        ]
    );
}

fn upstream_tls(socket: &TransportSocket) -> UpstreamTlsContext {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!("typed") };
    UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream TLS")
}

#[test]
fn external_hosts_get_no_mesh_tls_and_internal_ones_check_their_identities() {
    let out = translate(OutboundTrafficPolicy::AllowAny);
    let httpbin = cluster(&out, "outbound|80||httpbin.example.com");
    assert!(httpbin.transport_socket_matches.is_empty() && httpbin.transport_socket.is_none());
    // The DestinationRule's SIMPLE TLS originates TLS to the external host.
    let legacy = cluster(&out, "outbound|80||legacy.example.com");
    let tls = upstream_tls(legacy.transport_socket.as_ref().expect("TLS origination"));
    assert_eq!(tls.sni, "legacy.example.com");
    // MESH_INTERNAL: auto mTLS, expecting the entry's names and its endpoints' ServiceAccounts.
    let vm = cluster(&out, "outbound|9090||vm.example.com");
    assert_eq!(vm.transport_socket_matches.len(), 2);
    let socket = vm.transport_socket_matches[0].transport_socket.as_ref().expect("mutual TLS");
    let text = format!("{:?}", upstream_tls(socket));
    for id in ["spiffe://example.org/vm", "spiffe://cluster.local/ns/default/sa/vm"] {
        assert!(text.contains(id), "{id} in {text}");
    }
    let vm_endpoints = out.endpoints.iter().find(|e| e.cluster_name == "outbound|9090||vm.example.com");
    assert!(format!("{vm_endpoints:?}").contains("tlsMode"), "the endpoint is marked as having a sidecar");
}

#[test]
fn http_hosts_are_routed_by_name_on_their_port_and_virtual_services_apply() {
    let out = translate(OutboundTrafficPolicy::AllowAny);
    let port_80 = routes(&out, "80");
    let names: Vec<&str> = port_80.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["httpbin.example.com:80", "legacy.example.com:80", "allow_any"]);
    assert_eq!(port_80.virtual_hosts[0].domains, ["httpbin.example.com", "httpbin.example.com:80"]);
    // The VirtualService's timeout and subset.
    let Some(route::Action::Route(action)) = &port_80.virtual_hosts[0].routes[0].action else {
        panic!("a route")
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster("outbound|80|v2|httpbin.example.com".into()))
    );
    assert_eq!(action.timeout.map(|t| t.seconds), Some(3));
    // The port's chain on any address sends to those routes.
    assert!(out.listener.filter_chains.iter().any(|c| c.name == "0.0.0.0_80"));
}

#[test]
fn tcp_ports_are_matched_by_address_block_or_by_port_and_sni() {
    let out = translate(OutboundTrafficPolicy::AllowAny);
    let db = out.listener.filter_chains.iter().find(|c| c.name == "192.0.2.128/25_5432").expect("db's chain");
    let m = db.filter_chain_match.as_ref().expect("a match");
    assert_eq!(m.prefix_ranges[0].address_prefix, "192.0.2.128");
    assert_eq!(m.prefix_ranges[0].prefix_len.map(|l| l.value), Some(25));
    assert_eq!(tcp_cluster(db), "outbound|5432||db.example.com");
    let api =
        out.listener.filter_chains.iter().find(|c| c.name == "0.0.0.0_443;api.example.com").expect("api");
    let m = api.filter_chain_match.as_ref().expect("a match");
    assert_eq!(m.server_names, ["api.example.com"]);
    assert!(m.prefix_ranges.is_empty());
    assert_eq!(tcp_cluster(api), "outbound|443||api.example.com");
    assert!(out.listener_clusters.contains("outbound|443||api.example.com"));
    // The SNI needs the TLS inspector.
    assert!(out.listener.listener_filters.iter().any(|f| f.name.contains("tls_inspector")));
}

#[test]
fn registry_only_blocks_unknown_hosts_with_502_and_unknown_connections_in_the_black_hole() {
    let allow = translate(OutboundTrafficPolicy::AllowAny);
    let block = translate(OutboundTrafficPolicy::RegistryOnly);
    for out in [&allow, &block] {
        // Every route configuration ends in the catch-all host.
        for config in &out.routes {
            let last = config.virtual_hosts.last().expect("a catch-all");
            assert_eq!(last.domains, ["*"]);
        }
    }
    let catch_all = |out: &Outbound| routes(out, "80").virtual_hosts.last().cloned().expect("catch-all");
    assert_eq!(catch_all(&allow).name, "allow_any");
    let blocked = catch_all(&block);
    assert_eq!(blocked.name, "block_all");
    match &blocked.routes[0].action {
        Some(route::Action::DirectResponse(response)) => assert_eq!(response.status, 502),
        other => panic!("a direct 502: {other:?}"),
    }
    // A Service's own configuration too.
    let reviews = routes(&block, "reviews.default.svc.cluster.local:9080");
    assert_eq!(reviews.virtual_hosts.last().map(|v| v.name.as_str()), Some("block_all"));
    // Connections no chain takes: PassthroughCluster, or BlackHoleCluster with no HTTP sniffing.
    let default_cluster =
        |out: &Outbound| tcp_cluster(out.listener.default_filter_chain.as_ref().expect("default"));
    assert_eq!(default_cluster(&allow), "PassthroughCluster");
    assert_eq!(default_cluster(&block), "BlackHoleCluster");
    assert!(block.listener.filter_chains.iter().all(|c| !c.name.starts_with("virtualOutbound")));
    assert!(block.listener_clusters.contains("BlackHoleCluster"));
    assert!(!block.listener_clusters.contains("PassthroughCluster"));
    // The mesh's own chains are the same under both.
    let names =
        |out: &Outbound| out.listener.filter_chains.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let mut allowed = names(&allow);
    allowed.retain(|n| !n.starts_with("virtualOutbound"));
    assert_eq!(allowed, names(&block));
}

#[test]
fn envoy_accepts_service_entries_under_both_policies() {
    for policy in [OutboundTrafficPolicy::AllowAny, OutboundTrafficPolicy::RegistryOnly] {
        let index = index(policy);
        let view = mesh_view(&index);
        let proxy = productpage(&index);
        let out = outbound(&view, &view.scope(&proxy));
        let inb = inbound(&view, &proxy, permissive);
        assert_envoy_accepts(&format!("service entries under {}", policy.as_str()), &out, &inb);
    }
}

#[test]
fn export_to_limits_an_entrys_host_to_the_namespaces_it_names() {
    let mut index = index(OutboundTrafficPolicy::AllowAny);
    index.apply::<ServiceEntries>(&objects::from_yaml(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: private, namespace: other}
spec:
  hosts: [private.example.com]
  ports: [{number: 80, protocol: HTTP, name: http}]
  exportTo: ["."]
"#,
    ));
    let view = mesh_view(&index);
    let clusters = |namespace: &str| -> Vec<String> {
        let scope = crate::model::mesh::ScopeKey { namespace: namespace.into(), ..Default::default() };
        outbound(&view, &scope)
            .clusters
            .into_iter()
            .map(|c| c.name)
            .filter(|n| n.contains("private"))
            .collect()
    };
    assert_eq!(clusters("other"), ["outbound|80||private.example.com"]);
    assert!(clusters("default").is_empty(), "not exported to default");
}

#[test]
fn an_entry_host_that_is_another_name_of_a_headless_service_shares_no_domain_with_it() {
    let mut index = index(OutboundTrafficPolicy::AllowAny);
    // A headless Service `hs` on 9080, and an entry naming it `hs.default`.
    index.apply::<crate::index::Services>(&objects::service("hs").port("http", 9080).build());
    index.apply::<ServiceEntries>(&objects::from_yaml(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: alias, namespace: other}
spec:
  hosts: [hs.default]
  ports: [{number: 9080, protocol: HTTP, name: http}]
"#,
    ));
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let out = outbound(&view, &view.scope(&proxy));
    let config = routes(&out, "9080");
    let mut domains: Vec<&String> = config.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    let all = domains.len();
    domains.sort();
    domains.dedup();
    assert_eq!(domains.len(), all, "a domain twice in {:?}", config.virtual_hosts);
    assert!(
        config.virtual_hosts.iter().any(|v| v.name == "hs.default:9080"),
        "the entry keeps its own host:port"
    );
    assert_envoy_accepts("an entry aliasing a headless Service", &out, &inbound(&view, &proxy, permissive));
}
