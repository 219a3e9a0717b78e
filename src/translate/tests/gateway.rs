//! A gateway proxy's translation: Istio's `bookinfo-gateway.yaml` and
//! Gateways with every kind of server, for an ingress gateway pod in
//! `istio-system`, each loaded by a real Envoy (`--mode validate`).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action, virtual_host};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context,
};
use prost::Message;
use serde_json::json;

use super::envoy::assert_envoy_accepts_gateway;
use super::{apply_networking, bookinfo, mesh_view};
use crate::index::{Gateways, Index, Pods, VirtualServices};
use crate::model::mesh::ProxyContext;
use crate::testing::TempDir;
use crate::translate::gateway::{GatewayConfig, gateway};
use crate::translate::sidecar::{Outbound, outbound};

const PRODUCTPAGE: &str = "outbound|9080||productpage.default.svc.cluster.local";

/// Bookinfo with its DestinationRules, and the ingress gateway's pod.
fn with_ingress() -> Index {
    let mut index = bookinfo();
    apply_networking(&mut index, "destination-rule-all.yaml");
    let mut pod = crate::testing::objects::pod("ingress-0")
        .labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")])
        .ip("10.244.0.50")
        .service_account("mesh-ingressgateway")
        .build();
    pod.metadata.namespace = Some("istio-system".into());
    index.apply::<Pods>(&pod);
    index
}

fn ingress(index: &Index) -> ProxyContext {
    let key = crate::model::ObjectKey::new("istio-system", "ingress-0");
    ProxyContext::from_workload(index.get::<Pods>(&key).expect("the gateway pod"))
}

/// What the ingress gateway gets: the clusters of its namespace, its own listeners and routes.
fn translated(index: &Index) -> (Outbound, GatewayConfig) {
    let view = mesh_view(index);
    let proxy = ingress(index);
    (outbound(&view, &view.scope(&proxy)), gateway(&view, &proxy))
}

fn object(doc: serde_json::Value) -> kube::api::DynamicObject {
    serde_json::from_value(doc).expect("an object")
}

fn manager(listener: &Listener, chain: usize) -> HttpConnectionManager {
    let Some(filter::ConfigType::TypedConfig(config)) = &listener.filter_chains[chain].filters[0].config_type
    else {
        panic!("a typed config")
    };
    HttpConnectionManager::decode(config.value.as_slice()).expect("a connection manager")
}

fn rds(manager: &HttpConnectionManager) -> &str {
    match &manager.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => &rds.route_config_name,
        other => panic!("{other:?}"),
    }
}

fn routes<'a>(config: &'a GatewayConfig, name: &str) -> &'a RouteConfiguration {
    config.routes.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no routes {name}"))
}

fn cluster(route: &envoy_types::pb::envoy::config::route::v3::Route) -> String {
    match &route.action {
        Some(route::Action::Route(action)) => match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(name)) => name.clone(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

#[test]
fn bookinfo_gateway_routes_the_product_page_paths_on_port_80() {
    let mut index = with_ingress();
    let (_, before) = translated(&index);
    assert!(before.listeners.is_empty() && before.routes.is_empty(), "no Gateway: nothing to listen on");
    apply_networking(&mut index, "bookinfo-gateway.yaml");
    let (out, config) = translated(&index);
    assert_eq!(config.listeners.len(), 1);
    let (listener, sends_to) = &config.listeners[0];
    assert_eq!(listener.name, "0.0.0.0_80");
    assert!(sends_to.is_empty(), "HTTP sends through its routes");
    assert_eq!(rds(&manager(listener, 0)), "http.80");
    let http = routes(&config, "http.80");
    assert_eq!(http.virtual_hosts.len(), 1);
    let host = &http.virtual_hosts[0];
    assert_eq!((host.name.as_str(), host.domains.as_slice()), ("*:80", &["*".to_string()][..]));
    let paths: Vec<String> = host
        .routes
        .iter()
        .map(|r| format!("{:?}", r.r#match.as_ref().and_then(|m| m.path_specifier.clone())))
        .collect();
    assert_eq!(paths.len(), 5, "{paths:?}");
    assert!(paths[0].contains("\"/productpage\"") && paths[1].contains("\"/static\""), "{paths:?}");
    for route in &host.routes {
        assert_eq!(cluster(route), PRODUCTPAGE);
    }
    // The gateway's clusters are those of its namespace: every Service's.
    assert!(out.clusters.iter().any(|c| c.name == PRODUCTPAGE));
    assert_envoy_accepts_gateway("bookinfo-gateway.yaml", &out, &config);

    // A pod the Gateway does not select gets nothing.
    let mut other = ingress(&index);
    other.labels = BTreeMap::from([("istio".into(), "egressgateway".into())]);
    assert!(gateway(&mesh_view(&index), &other).listeners.is_empty());
}

/// A VirtualService in `default` bound to `gateways`, created at `created`.
fn gateway_vs(
    name: &str,
    created: &str,
    hosts: &[&str],
    gateways: &[&str],
    http: serde_json::Value,
) -> kube::api::DynamicObject {
    object(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {"hosts": hosts, "gateways": gateways, "http": http}
    }))
}

#[test]
fn gateway_routes_reuse_the_sidecars_route_translation_narrowed_to_the_gateway() {
    let mut index = with_ingress();
    apply_networking(&mut index, "bookinfo-gateway.yaml");
    // Bound to the gateway and the mesh; one match only for the mesh.
    index.apply::<VirtualServices>(&gateway_vs(
        "reviews-edge",
        "2024-01-01T00:00:02Z",
        &["reviews.example.com"],
        &["bookinfo-gateway", "mesh"],
        json!([
            {"match": [{"headers": {"end-user": {"exact": "jason"}}},
                       {"uri": {"prefix": "/mesh-only"}, "gateways": ["mesh"]}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}
        ]),
    ));
    // Older, for the same host: its routes come first (Istio merges by age).
    index.apply::<VirtualServices>(&gateway_vs(
        "reviews-old",
        "2024-01-01T00:00:01Z",
        &["reviews.example.com"],
        &["default/bookinfo-gateway"],
        json!([{"match": [{"uri": {"prefix": "/v3"}}], "route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]),
    ));
    // Bound to another gateway only: not here.
    index.apply::<VirtualServices>(&gateway_vs(
        "elsewhere",
        "2024-01-01T00:00:00Z",
        &["elsewhere.example.com"],
        &["other-gateway"],
        json!([{"route": [{"destination": {"host": "details"}}]}]),
    ));
    let (out, config) = translated(&index);
    let http = routes(&config, "http.80");
    let names: Vec<&str> = http.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["*:80", "reviews.example.com:80"]);
    let reviews = &http.virtual_hosts[1];
    assert_eq!(reviews.domains, ["reviews.example.com", "reviews.example.com:80"]);
    let clusters: Vec<String> = reviews.routes.iter().map(cluster).collect();
    // No port on the destination: reviews' only port, 9080.
    assert_eq!(
        clusters,
        [
            "outbound|9080|v3|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
        ],
        "the mesh-only match is dropped; the older VirtualService first"
    );
    assert_envoy_accepts_gateway("merged VirtualServices", &out, &config);
}

/// One Gateway with a server of every kind the mesh translates.
fn edge(dir: &TempDir) -> kube::api::DynamicObject {
    let key =
        rcgen::generate_simple_self_signed(vec!["files.example.com".to_string()]).expect("a certificate");
    let cert = dir.write("files.pem", key.cert.pem());
    let private = dir.write("files-key.pem", key.signing_key.serialize_pem());
    let ca = dir.write("ca.pem", key.cert.pem());
    let https = |hosts: serde_json::Value, tls: serde_json::Value| json!({"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": hosts, "tls": tls});
    object(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
             "hosts": ["default/bookinfo.example.com"], "tls": {"httpsRedirect": true}},
            https(json!(["bookinfo.example.com"]), json!({"mode": "SIMPLE", "credentialName": "bookinfo-credential"})),
            https(json!(["secure.example.com"]), json!({"mode": "MUTUAL", "credentialName": "secure-credential"})),
            https(json!(["files.example.com"]), json!({"mode": "SIMPLE",
                "serverCertificate": cert, "privateKey": private, "caCertificates": ca})),
            {"port": {"number": 443, "name": "tls", "protocol": "TLS"},
             "hosts": ["nginx.example.com"], "tls": {"mode": "PASSTHROUGH"}},
            {"port": {"number": 15443, "name": "https-mesh", "protocol": "HTTPS"},
             "hosts": ["*"], "tls": {"mode": "ISTIO_MUTUAL"}},
            {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}
        ]}
    }))
}

fn tls_context(listener: &Listener, chain: usize) -> DownstreamTlsContext {
    let socket = listener.filter_chains[chain].transport_socket.as_ref().expect("TLS");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(config)) =
        &socket.config_type
    else {
        panic!("typed")
    };
    DownstreamTlsContext::decode(config.value.as_slice()).expect("a TLS context")
}

/// (certificate SDS names, validation SDS name) of a TLS context.
fn sds_names(context: &DownstreamTlsContext) -> (Vec<String>, Option<String>) {
    let common = context.common_tls_context.as_ref().expect("common");
    let validation = match &common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            Some(sds.name.clone())
        }
        _ => None,
    };
    (common.tls_certificate_sds_secret_configs.iter().map(|s| s.name.clone()).collect(), validation)
}

fn tcp_cluster(listener: &Listener, chain: usize) -> String {
    let Some(filter::ConfigType::TypedConfig(config)) = &listener.filter_chains[chain].filters[0].config_type
    else {
        panic!("typed")
    };
    let proxy = TcpProxy::decode(config.value.as_slice()).expect("a TCP proxy");
    match proxy.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => name,
        other => format!("{other:?}"),
    }
}

#[test]
fn https_tls_and_tcp_servers_terminate_pass_through_and_proxy() {
    let dir = TempDir::new("gateway-certs");
    let mut index = with_ingress();
    index.apply::<Gateways>(&edge(&dir));
    let vs = |name: &str, spec: serde_json::Value| {
        object(json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
                      "metadata": {"name": name, "namespace": "default"}, "spec": spec}))
    };
    index.apply::<VirtualServices>(&vs(
        "web",
        json!({
        "hosts": ["bookinfo.example.com", "secure.example.com", "files.example.com"],
        "gateways": ["istio-system/edge"],
        "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]}),
    ));
    index.apply::<VirtualServices>(&vs(
        "nginx",
        json!({
        "hosts": ["nginx.example.com"], "gateways": ["istio-system/edge"],
        "tls": [{"match": [{"sniHosts": ["nginx.example.com"]}],
                 "route": [{"destination": {"host": "details", "port": {"number": 9080}}}]}]}),
    ));
    index.apply::<VirtualServices>(&vs("tcp", json!({
        "hosts": ["*"], "gateways": ["istio-system/edge"],
        "tcp": [{"match": [{"port": 31400}], "route": [{"destination": {"host": "ratings", "port": {"number": 9080}}}]}]})));
    let (out, config) = translated(&index);
    let names: Vec<&str> = config.listeners.iter().map(|(l, _)| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_80", "0.0.0.0_443", "0.0.0.0_15443", "0.0.0.0_31400"]);

    // Port 80 only redirects: its host requires TLS.
    let http = routes(&config, "http.80");
    assert_eq!(http.virtual_hosts.len(), 1);
    assert_eq!(http.virtual_hosts[0].require_tls, virtual_host::TlsRequirementType::All as i32);
    assert_eq!(http.virtual_hosts[0].routes.len(), 1, "the VirtualService's route, behind the redirect");

    // Port 443: a chain per server by SNI; the HTTPS ones share Istio's route name.
    let (tls443, sends_to) = &config.listeners[1];
    assert!(tls443.listener_filters.iter().any(|f| f.name.contains("tls_inspector")));
    let sni: Vec<Vec<String>> = tls443
        .filter_chains
        .iter()
        .map(|c| c.filter_chain_match.as_ref().map(|m| m.server_names.clone()).unwrap_or_default())
        .collect();
    assert_eq!(
        sni,
        [
            vec!["bookinfo.example.com"],
            vec!["secure.example.com"],
            vec!["files.example.com"],
            vec!["nginx.example.com"]
        ]
    );
    assert_eq!(sds_names(&tls_context(tls443, 0)), (vec!["kubernetes://bookinfo-credential".into()], None));
    assert_eq!(
        sds_names(&tls_context(tls443, 1)),
        (vec!["kubernetes://secure-credential".into()], Some("kubernetes://secure-credential-cacert".into()))
    );
    assert!(tls_context(tls443, 1).require_client_certificate.is_some_and(|b| b.value));
    let files = tls_context(tls443, 2);
    assert_eq!(files.common_tls_context.as_ref().unwrap().tls_certificates.len(), 1, "from the files");
    for chain in 0..3 {
        assert_eq!(rds(&manager(tls443, chain)), "https.443.https.edge.istio-system");
    }
    let https = routes(&config, "https.443.https.edge.istio-system");
    let hosts: Vec<&str> = https.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, ["bookinfo.example.com:443", "files.example.com:443", "secure.example.com:443"]);
    assert!(tls443.filter_chains[3].transport_socket.is_none(), "passed through, not terminated");
    assert_eq!(tcp_cluster(tls443, 3), "outbound|9080||details.default.svc.cluster.local");
    assert!(sends_to.contains("outbound|9080||details.default.svc.cluster.local"));

    // ISTIO_MUTUAL: the workload's own certificate; `*` admits every host of the bound VirtualServices.
    let (mesh, _) = &config.listeners[2];
    assert_eq!(sds_names(&tls_context(mesh, 0)), (vec!["default".into()], Some("ROOTCA".into())));
    assert!(tls_context(mesh, 0).require_client_certificate.is_some_and(|b| b.value));
    let hosts: Vec<&str> = routes(&config, "https.15443.https-mesh.edge.istio-system")
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(hosts, ["bookinfo.example.com:15443", "files.example.com:15443", "secure.example.com:15443"]);

    let (tcp, _) = &config.listeners[3];
    assert_eq!(tcp_cluster(tcp, 0), "outbound|9080||ratings.default.svc.cluster.local");

    assert_envoy_accepts_gateway("every kind of server", &out, &config);
}

#[test]
fn server_hosts_limit_the_namespaces_that_may_bind() {
    let mut index = with_ingress();
    index.apply::<Gateways>(&object(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "own", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["./*"]},
            {"port": {"number": 8081, "name": "http", "protocol": "HTTP"}, "hosts": ["default/*.example.com"]}]}
    })));
    index.apply::<VirtualServices>(&gateway_vs(
        "shop",
        "2024-01-01T00:00:00Z",
        &["shop.example.com", "shop.example.org"],
        &["istio-system/own"],
        json!([{"route": [{"destination": {"host": "productpage"}}]}]),
    ));
    index.apply::<Gateways>(&object(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "unrouted", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 9443, "name": "tls", "protocol": "TLS"}, "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}}]}
    })));
    let (out, config) = translated(&index);
    let ports: Vec<&str> = config.listeners.iter().map(|(l, _)| l.name.as_str()).collect();
    assert_eq!(
        ports,
        ["0.0.0.0_8080", "0.0.0.0_8081"],
        "a passthrough port no rule routes has no chain, so no listener"
    );
    assert!(routes(&config, "http.8080").virtual_hosts.is_empty(), "only istio-system may bind to ./*");
    let hosts: Vec<&str> =
        routes(&config, "http.8081").virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, ["shop.example.com:8081"], "the .org host is not admitted");
    assert_envoy_accepts_gateway("namespaced server hosts", &out, &config);
}
