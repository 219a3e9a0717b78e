//! The decision table (`../cases.yaml`) against a real Envoy: every case's
//! roles, bindings and switch go through the model and the translation as
//! the controller runs them, each case gets a listener of its own on one
//! Envoy, and a real request (HTTP, or bytes on a TCP port) from the
//! case's source address, over mutual TLS with a certificate of the mesh
//! CA when the case names a caller, must get the decision Istio 1.4 gives.
//!
//! - Each case listens on its own address, 127.77.x.y (or the
//!   `destinationIp` it names), on the port its destination names. Fixed
//!   ports could be taken on a shared machine, so each port a case names is
//!   a free port found when the test starts, and the same renaming is
//!   applied to the ports of its rules (`ports`, `notPorts` and
//!   `destination.port`): a case about port 9080 runs on, say, port 41234
//!   with its rules saying 41234. Ports no case listens on stay as written.
//! - A listener takes mutual TLS and plaintext, as a PERMISSIVE sidecar
//!   does: the TLS inspector picks the chain.
//! - HTTP: Envoy's JWT filter (the test's own Ed25519 key, inline, the
//!   payload left in metadata as [`JWT_PAYLOAD_METADATA`]), a
//!   header-to-metadata filter (header `x-tier` as metadata `tier` of
//!   `envoy.filters.http.header_to_metadata`, which the
//!   `experimental.envoy.filters.*` constraints read), then the RBAC
//!   filter the translation made, then a direct response `200 ok`. A deny
//!   must be `403 RBAC: access denied`.
//! - TCP: the network RBAC filter, then a TCP proxy to an echo server the
//!   test runs. Allowed is the echo coming back; denied is the connection
//!   closed with nothing echoed.
//! - Shadow rules: Envoy's `shadow_allowed` and `shadow_denied` counters
//!   are read before and after each request (requests run one at a time);
//!   a case that names `shadow` must move that one by one, any other case
//!   must move neither.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::{
    Config as HeaderToMetadata, config as header_to_metadata,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, JwtRequirementOrList, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, common_tls_context,
};
use envoy_types::pb::google::protobuf::{BoolValue, Empty};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use serde_json::Value;

use crate::api::rbac_config::RbacConfigSpec;
use crate::api::service_role::{AccessRule, ServiceRoleSpec};
use crate::api::service_role_binding::ServiceRoleBindingSpec;
use crate::ca::{Authority, Leaf, Root, SpiffeId};
use crate::model::rbac::{Authorization, RbacPolicies};
use crate::model::{ClusterState, Config, MeshConfig, ObjectKey, Store};
use crate::testing::{TempDir, envoy_binary};
use crate::translate::jwt::{JWT_FILTER, JWT_PAYLOAD_METADATA};
use crate::translate::passthrough::{ROUTER, network_filter, tls_inspector};
use crate::translate::rbac::{self, Destination, network_rbac_filter};
use crate::translate::secret::{ROOT_SECRET, WORKLOAD_SECRET, root_secret, workload_secret};
use crate::translate::{address, any};

const CASES: &str = include_str!("../cases.yaml");
const TRUST_DOMAIN: &str = "cluster.local";
const JWT_PROVIDER: &str = "table";
const JWT_KEY_ID: &str = "table-key";
const ECHO_CLUSTER: &str = "echo";
const PING: &[u8] = b"ping\n";
/// A filter that leaves dynamic metadata before RBAC, for the
/// `experimental.envoy.filters.*` constraints: header `x-tier` as `tier`.
const HEADER_TO_METADATA: &str = "envoy.filters.http.header_to_metadata";

// ---- The cases, as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    destination: DestinationSpec,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DestinationSpec {
    host: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    service_account: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    port: Option<u16>,
    protocol: Option<Protocol>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    Http,
    Tcp,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    name: String,
    /// Why Istio decides so, where it is not obvious.
    #[serde(default)]
    note: Option<String>,
    /// The RBAC switches; none means a ClusterRbacConfig `default` with
    /// `mode: ON`.
    #[serde(default)]
    switches: Option<Vec<Switch>>,
    /// ServiceRoles by name, in the destination's namespace, or
    /// `<namespace>/<name>`.
    #[serde(default)]
    roles: BTreeMap<String, ServiceRoleSpec>,
    #[serde(default)]
    bindings: Vec<BindingSpec>,
    #[serde(default)]
    destination: Option<DestinationSpec>,
    #[serde(default)]
    request: RequestSpec,
    expect: Decision,
    /// The shadow rules' decision, counted by Envoy; none means no shadow
    /// counter moves.
    #[serde(default)]
    shadow: Option<Shadow>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Switch {
    kind: SwitchKind,
    #[serde(default = "default_switch_name")]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    created: Option<String>,
    spec: RbacConfigSpec,
}

fn default_switch_name() -> String {
    "default".into()
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
enum SwitchKind {
    ClusterRbacConfig,
    RbacConfig,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct BindingSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(flatten)]
    spec: ServiceRoleBindingSpec,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// The Host header (`:authority`); the destination's host by default.
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The caller's SPIFFE ID: mutual TLS with a certificate for it. None
    /// is a plaintext caller.
    #[serde(default)]
    caller: Option<String>,
    #[serde(default)]
    source_ip: Option<IpAddr>,
    #[serde(default)]
    destination_ip: Option<IpAddr>,
    /// The claims of a JWT the test signs and sends as a bearer token.
    #[serde(default)]
    jwt: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Allow,
    Deny,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Shadow {
    Allowed,
    Denied,
}

// ---- A case, ready to run ----

struct Prepared<'a> {
    index: usize,
    case: &'a Case,
    destination: Resolved,
    request: RequestSpec,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    /// The port Envoy listens on for this case.
    port: u16,
}

#[derive(Clone, Debug)]
struct Resolved {
    host: String,
    name: String,
    namespace: String,
    service_account: String,
    labels: BTreeMap<String, String>,
    port: u16,
    protocol: Protocol,
}

impl Resolved {
    fn of(base: &DestinationSpec, over: Option<&DestinationSpec>) -> Self {
        let pick = |f: fn(&DestinationSpec) -> Option<String>| {
            over.and_then(f).or_else(|| f(base)).expect("the table's destination sets every field")
        };
        Resolved {
            host: pick(|d| d.host.clone()),
            name: pick(|d| d.name.clone()),
            namespace: pick(|d| d.namespace.clone()),
            service_account: pick(|d| d.service_account.clone()),
            labels: over.and_then(|d| d.labels.clone()).or_else(|| base.labels.clone()).unwrap_or_default(),
            port: over.and_then(|d| d.port).or(base.port).expect("a port"),
            protocol: over.and_then(|d| d.protocol).or(base.protocol).unwrap_or(Protocol::Http),
        }
    }
}

/// The case's objects as the index would hold them, through the model.
fn authorization(case: &Case, destination: &Resolved, ports: &HashMap<u16, u16>) -> Option<Authorization> {
    let mut service_roles = Store::new();
    for (key, spec) in &case.roles {
        let (namespace, name) = key.split_once('/').unwrap_or((&destination.namespace, key));
        let mut spec = spec.clone();
        spec.rules.iter_mut().for_each(|r| rename_ports(r, ports));
        service_roles.insert(ObjectKey::new(namespace, name), stored(namespace, name, None, spec));
    }
    let mut service_role_bindings = Store::new();
    for (n, binding) in case.bindings.iter().enumerate() {
        let namespace = binding.namespace.as_deref().unwrap_or(&destination.namespace);
        let name = binding.name.clone().unwrap_or_else(|| format!("binding-{n}"));
        let mut spec = binding.spec.clone();
        spec.actions.iter_mut().for_each(|r| rename_ports(r, ports));
        service_role_bindings.insert(ObjectKey::new(namespace, &name), stored(namespace, &name, None, spec));
    }
    let default_switch = [Switch {
        kind: SwitchKind::ClusterRbacConfig,
        name: "default".into(),
        namespace: None,
        created: None,
        spec: serde_json::from_value(serde_json::json!({"mode": "ON"})).expect("a switch"),
    }];
    let switches = case.switches.as_deref().unwrap_or(&default_switch);
    let mut cluster_rbac_configs = Store::new();
    let mut rbac_configs = Store::new();
    for switch in switches {
        match switch.kind {
            SwitchKind::ClusterRbacConfig => {
                let spec = switch.spec.clone().into();
                let config = stored("", &switch.name, switch.created.clone(), spec);
                cluster_rbac_configs.insert(config.key.clone(), config);
            }
            SwitchKind::RbacConfig => {
                let namespace = switch.namespace.as_deref().unwrap_or(&destination.namespace);
                let config = stored(namespace, &switch.name, switch.created.clone(), switch.spec.clone());
                rbac_configs.insert(config.key.clone(), config);
            }
        }
    }
    let mesh_config = MeshConfig::default();
    let (services, endpoint_slices, workloads, namespaces) =
        (Store::new(), Store::new(), Store::new(), Store::new());
    let (virtual_services, destination_rules, peer_authentications, policies, mesh_policies) =
        (Store::new(), Store::new(), Store::new(), Store::new(), Store::new());
    let request_authentications = Store::new();
    let (gateways, service_entries, sidecars) = (Store::new(), Store::new(), Store::new());
    let credentials = Store::new();
    let state = ClusterState {
        services: &services,
        endpoint_slices: &endpoint_slices,
        workloads: &workloads,
        namespaces: &namespaces,
        virtual_services: &virtual_services,
        destination_rules: &destination_rules,
        gateways: &gateways,
        credentials: &credentials,
        service_entries: &service_entries,
        sidecars: &sidecars,
        service_roles: &service_roles,
        service_role_bindings: &service_role_bindings,
        cluster_rbac_configs: &cluster_rbac_configs,
        rbac_configs: &rbac_configs,
        peer_authentications: &peer_authentications,
        request_authentications: &request_authentications,
        policies: &policies,
        mesh_policies: &mesh_policies,
        mesh_config: &mesh_config,
    };
    RbacPolicies::build(state).authorization(&destination.host, &destination.namespace)
}

/// An object as the index stores it.
fn stored<S>(namespace: &str, name: &str, created: Option<String>, spec: S) -> Config<S> {
    Config { key: ObjectKey::new(namespace, name), generation: 1, created, spec, status: None }
}

/// The port renaming of the module comment, on one rule.
fn rename_ports(rule: &mut AccessRule, ports: &HashMap<u16, u16>) {
    let rename = |p: &mut i32| {
        if let Some(actual) = u16::try_from(*p).ok().and_then(|p| ports.get(&p)) {
            *p = i32::from(*actual);
        }
    };
    rule.ports.iter_mut().for_each(rename);
    rule.not_ports.iter_mut().for_each(rename);
    for c in rule.constraints.iter_mut().filter(|c| c.key.as_deref() == Some("destination.port")) {
        for v in &mut c.values {
            if let Some(actual) = v.parse::<u16>().ok().and_then(|p| ports.get(&p)) {
                *v = actual.to_string();
            }
        }
    }
}

// ---- Identities and tokens ----

struct Identities {
    authority: Authority,
    server: Leaf,
    clients: BTreeMap<String, Arc<rustls::ClientConfig>>,
}

impl Identities {
    fn new(callers: impl Iterator<Item = String>) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let root = Root::generate(TRUST_DOMAIN, now).expect("a root");
        let authority = Authority::from_root(&root, now).expect("a CA");
        let server_id = SpiffeId::new(TRUST_DOMAIN, "default", "bookinfo-ratings").expect("an id");
        let server = authority.issue_workload(&server_id, time::Duration::HOUR, now).expect("a leaf");
        let mut clients = BTreeMap::new();
        for caller in callers {
            let id = SpiffeId::parse(&caller).unwrap_or_else(|e| panic!("caller {caller}: {e}"));
            let leaf = authority.issue_workload(&id, time::Duration::HOUR, now).expect("a leaf");
            clients.insert(caller, Arc::new(client_config(&leaf)));
        }
        Identities { authority, server, clients }
    }
}

fn client_config(leaf: &Leaf) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert_chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("the key");
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("a client certificate")
}

/// The client does not check Envoy's certificate: what is under test is
/// Envoy's view of the client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An Ed25519 key: the JWKS Envoy verifies with, and the tokens it signs.
struct TokenKey(rcgen::KeyPair);

impl TokenKey {
    fn new() -> Self {
        TokenKey(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key"))
    }

    fn jwks(&self) -> String {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": JWT_KEY_ID,
            "x": URL_SAFE_NO_PAD.encode(self.0.public_key_raw()),
        }]})
        .to_string()
    }

    fn sign(&self, claims: &serde_json::Map<String, Value>) -> String {
        use rcgen::SigningKey;
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": JWT_KEY_ID});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
        );
        let signature = self.0.sign(input.as_bytes()).expect("a signature");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

// ---- Envoy's configuration ----

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    })
}

fn mtls_socket() -> TransportSocket {
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: WORKLOAD_SECRET.into(),
                ..Default::default()
            }],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                    SdsSecretConfig { name: ROOT_SECRET.into(), ..Default::default() },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
    }
}

fn jwt_filter(jwks: &str) -> HttpFilter {
    let provider = JwtProvider {
        payload_in_metadata: JWT_PAYLOAD_METADATA.into(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let requirement = |t| JwtRequirement { requires_type: Some(t) };
    let config = JwtAuthentication {
        providers: [(JWT_PROVIDER.to_string(), provider)].into(),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requirement(
                jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList {
                    requirements: vec![
                        requirement(jwt_requirement::RequiresType::ProviderName(JWT_PROVIDER.into())),
                        requirement(jwt_requirement::RequiresType::AllowMissing(Empty {})),
                    ],
                }),
            ))),
        }],
        ..Default::default()
    };
    HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

fn tier_to_metadata() -> HttpFilter {
    let config = HeaderToMetadata {
        request_rules: vec![header_to_metadata::Rule {
            header: "x-tier".into(),
            on_header_present: Some(header_to_metadata::KeyValuePair {
                metadata_namespace: HEADER_TO_METADATA.into(),
                key: "tier".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpFilter {
        name: HEADER_TO_METADATA.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

fn router() -> HttpFilter {
    HttpFilter {
        name: ROUTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    }
}

/// The listener of one case: its RBAC filter (none where RBAC is off for
/// the service), on mutual TLS and on plaintext.
fn listener(case: &Prepared, auth: Option<&Authorization>, jwks: &str) -> Listener {
    let d = &case.destination;
    let destination = Destination {
        host: &d.host,
        name: &d.name,
        namespace: &d.namespace,
        service_account: &d.service_account,
        labels: &d.labels,
    };
    let filters: Vec<Filter> = match d.protocol {
        Protocol::Http => {
            let mut http_filters = vec![jwt_filter(jwks), tier_to_metadata()];
            http_filters.extend(auth.map(|a| rbac::http_filter(a, &destination)));
            http_filters.push(router());
            let routes = RouteConfiguration {
                name: "table".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "table".into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::DirectResponse(DirectResponseAction {
                            status: 200,
                            body: inline("ok"),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let manager = HttpConnectionManager {
                stat_prefix: format!("case{}", case.index),
                codec_type: http_connection_manager::CodecType::Auto.into(),
                route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
                http_filters,
                ..Default::default()
            };
            vec![network_filter("envoy.filters.network.http_connection_manager", any(&manager))]
        }
        Protocol::Tcp => {
            let proxy = TcpProxy {
                stat_prefix: format!("case{}", case.index),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(ECHO_CLUSTER.into())),
                ..Default::default()
            };
            let mut filters: Vec<Filter> =
                auth.map(|a| network_rbac_filter(a, &destination)).into_iter().collect();
            filters.push(network_filter("envoy.filters.network.tcp_proxy", any(&proxy)));
            filters
        }
    };
    let chain = |protocol: &str, socket: Option<TransportSocket>| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: protocol.into(),
            ..Default::default()
        }),
        filters: filters.clone(),
        transport_socket: socket,
        ..Default::default()
    };
    Listener {
        name: format!("case{}", case.index),
        address: Some(address(&case.destination_ip.to_string(), u32::from(case.port))),
        listener_filters: vec![tls_inspector()],
        filter_chains: vec![chain("tls", Some(mtls_socket())), chain("raw_buffer", None)],
        ..Default::default()
    }
}

fn echo_cluster(port: u16) -> Cluster {
    Cluster {
        name: ECHO_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static.into(),
        )),
        connect_timeout: Some(crate::translate::seconds(5)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: ECHO_CLUSTER.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address("127.0.0.1", u32::from(port))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---- The processes ----

/// A running Envoy, killed when dropped.
struct Envoy {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn start(dir: &TempDir, bootstrap: &Bootstrap) -> Self {
        let config = dir.write("envoy.pb", bootstrap.encode_to_vec());
        let admin_path = dir.0.join("admin-address");
        let log = dir.0.join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy { child, admin: String::new(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited ({status}):\n{}", envoy.log_text());
            }
            if envoy.admin.is_empty() {
                envoy.admin = std::fs::read_to_string(&admin_path).unwrap_or_default().trim().to_string();
            }
            if !envoy.admin.is_empty() && envoy.get("/ready").is_some_and(|r| r.trim() == "LIVE") {
                return envoy;
            }
            assert!(Instant::now() < deadline, "Envoy was not ready in 30s:\n{}", envoy.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut response = ureq::get(&format!("http://{}{path}", self.admin)).call().ok()?;
        response.body_mut().read_to_string().ok()
    }

    /// The shadow counters of every RBAC filter, summed.
    fn shadow_counters(&self) -> (u64, u64) {
        let stats = self.get("/stats?filter=rbac%5C.shadow_").expect("Envoy's stats");
        let mut allowed = 0;
        let mut denied = 0;
        for line in stats.lines() {
            let Some((name, value)) = line.split_once(": ") else { continue };
            let Ok(value) = value.trim().parse::<u64>() else { continue };
            if name.ends_with("rbac.shadow_allowed") {
                allowed += value;
            } else if name.ends_with("rbac.shadow_denied") {
                denied += value;
            }
        }
        (allowed, denied)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Echoes every connection's bytes back, until stopped (or a deadline).
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("an echo port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 1024];
                            // Bounded by the read timeout and the peer's close.
                            while let Ok(n) = stream.read(&mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { port, stop, thread: Some(thread) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- The requests ----

/// What Envoy answered: the HTTP status and body, or on TCP whether the
/// echo came back.
#[derive(Debug, PartialEq)]
enum Answer {
    Http(u16, String),
    Echoed,
    Closed,
    Failed(String),
}

impl Answer {
    fn decision(&self, protocol: Protocol) -> Option<Decision> {
        match (self, protocol) {
            (Answer::Http(200, body), Protocol::Http) if body == "ok" => Some(Decision::Allow),
            (Answer::Http(403, body), Protocol::Http) if body == "RBAC: access denied" => {
                Some(Decision::Deny)
            }
            (Answer::Echoed, Protocol::Tcp) => Some(Decision::Allow),
            (Answer::Closed, Protocol::Tcp) => Some(Decision::Deny),
            _ => None,
        }
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(
    runtime: &tokio::runtime::Runtime,
    source: IpAddr,
    destination: SocketAddr,
) -> std::io::Result<TcpStream> {
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        tokio::time::timeout(Duration::from_secs(5), socket.connect(destination))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn send(
    case: &Prepared,
    identities: &Identities,
    key: &TokenKey,
    runtime: &tokio::runtime::Runtime,
) -> Answer {
    let target = SocketAddr::new(case.destination_ip, case.port);
    let tcp = match connect(runtime, case.source_ip, target) {
        Ok(s) => s,
        Err(e) => return Answer::Failed(format!("connecting from {} to {target}: {e}", case.source_ip)),
    };
    let mut stream: Box<dyn Stream> = match &case.request.caller {
        Some(caller) => {
            let config = identities.clients.get(caller).expect("a client per caller").clone();
            let name = ServerName::try_from("ratings.default.svc.cluster.local").expect("a name");
            let connection = rustls::ClientConnection::new(config, name).expect("a TLS client");
            Box::new(rustls::StreamOwned::new(connection, tcp))
        }
        None => Box::new(tcp),
    };
    match case.destination.protocol {
        Protocol::Tcp => {
            let mut received = Vec::new();
            if let Err(e) = stream.write_all(PING).and_then(|_| stream.flush()) {
                // A handshake refused is a failure, not a decision.
                return Answer::Failed(format!("sending: {e}"));
            }
            let mut buf = [0u8; 64];
            while received.len() < PING.len() {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
            if received == PING {
                Answer::Echoed
            } else if received.is_empty() {
                Answer::Closed
            } else {
                Answer::Failed(format!("got {:?}", String::from_utf8_lossy(&received)))
            }
        }
        Protocol::Http => {
            let r = &case.request;
            let mut text = format!(
                "{} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
                r.method.as_deref().unwrap_or("GET"),
                r.path.as_deref().unwrap_or("/"),
                r.host.as_deref().unwrap_or(&case.destination.host),
            );
            for (name, value) in &r.headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            if let Some(claims) = &r.jwt {
                text.push_str(&format!("authorization: Bearer {}\r\n", key.sign(claims)));
            }
            text.push_str("\r\n");
            if let Err(e) = stream.write_all(text.as_bytes()).and_then(|_| stream.flush()) {
                return Answer::Failed(format!("sending: {e}"));
            }
            read_response(&mut stream, r.method.as_deref() == Some("HEAD"))
        }
    }
}

/// Reads one response: up to its Content-Length, not to the close, which
/// Envoy delays.
fn read_response(stream: &mut dyn Stream, head_request: bool) -> Answer {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            let expected = if head_request { Some(0) } else { length };
            if expected.is_some_and(|n| body.len() >= n) {
                return match status {
                    // A HEAD answer has no body: the status alone says.
                    Some(200) if head_request => Answer::Http(200, "ok".into()),
                    Some(403) if head_request => Answer::Http(403, "RBAC: access denied".into()),
                    Some(status) => Answer::Http(status, body.to_string()),
                    None => Answer::Failed(format!("no status: {head:?}")),
                };
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Answer::Failed(format!("closed after {text:?}")),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return Answer::Failed(format!("reading after {text:?}: {e}")),
        }
    }
}

// ---- The test ----

fn free_port() -> TcpListener {
    TcpListener::bind("0.0.0.0:0").expect("a free port")
}

#[test]
fn decision_table_agrees_with_istio_on_a_real_envoy() {
    let table: Table = serde_yaml_ng::from_str(CASES).unwrap_or_else(|e| panic!("cases.yaml: {e}"));
    let mut names = BTreeSet::new();
    for case in &table.cases {
        assert!(names.insert(case.name.as_str()), "two cases are named {:?}", case.name);
    }

    // The ports cases name, each renamed to a free one (held until Envoy starts).
    let resolved: Vec<Resolved> =
        table.cases.iter().map(|c| Resolved::of(&table.destination, c.destination.as_ref())).collect();
    let held: BTreeMap<u16, TcpListener> = resolved.iter().map(|d| (d.port, free_port())).collect();
    let ports: HashMap<u16, u16> =
        held.iter().map(|(logical, l)| (*logical, l.local_addr().expect("address").port())).collect();

    let mut taken = BTreeSet::new();
    let prepared: Vec<Prepared> = table
        .cases
        .iter()
        .zip(resolved)
        .enumerate()
        .map(|(index, (case, destination))| {
            let request = case.request.clone();
            let destination_ip = request.destination_ip.unwrap_or_else(|| {
                IpAddr::from([
                    127,
                    77,
                    u8::try_from(index / 200 + 1).expect("few cases"),
                    (index % 200 + 1) as u8,
                ])
            });
            assert!(
                taken.insert((destination_ip, destination.port)),
                "case {:?}: another case listens on {destination_ip} port {}",
                case.name,
                destination.port
            );
            let port = ports[&destination.port];
            Prepared {
                index,
                case,
                source_ip: request.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
                destination_ip,
                port,
                request,
                destination,
            }
        })
        .collect();

    let identities = Identities::new(
        prepared.iter().filter_map(|p| p.request.caller.clone()).collect::<BTreeSet<_>>().into_iter(),
    );
    let key = TokenKey::new();
    let jwks = key.jwks();
    let echo = Echo::start();

    let listeners: Vec<Listener> = prepared
        .iter()
        .map(|p| listener(p, authorization(p.case, &p.destination, &ports).as_ref(), &jwks))
        .collect();
    let bootstrap = Bootstrap {
        admin: Some(Admin { address: Some(address("127.0.0.1", 0)), ..Default::default() }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters: vec![echo_cluster(echo.port)],
            secrets: vec![
                workload_secret(&identities.server.cert_chain_pem, &identities.server.key_pem),
                root_secret(identities.authority.trust_bundle_pem()),
            ],
        }),
        ..Default::default()
    };
    let dir = TempDir::new("rbac-table");
    drop(held);
    let envoy = Envoy::start(&dir, &bootstrap);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut failures = Vec::new();
    let (mut http, mut tcp) = (0, 0);
    for case in &prepared {
        let protocol = case.destination.protocol;
        match protocol {
            Protocol::Http => http += 1,
            Protocol::Tcp => tcp += 1,
        }
        let before = envoy.shadow_counters();
        let answer = send(case, &identities, &key, &runtime);
        let after = envoy.shadow_counters();
        let shadow = match (after.0 - before.0, after.1 - before.1) {
            (0, 0) => None,
            (1, 0) => Some(Shadow::Allowed),
            (0, 1) => Some(Shadow::Denied),
            moved => {
                failures.push(format!("{}: shadow counters moved by {moved:?}", describe(case)));
                continue;
            }
        };
        let decision = answer.decision(protocol);
        if decision != Some(case.case.expect) || shadow != case.case.shadow {
            failures.push(format!(
                "{}\n    expected {:?} (shadow {:?}), Envoy: {:?} (shadow {:?}), answer {:?}{}",
                describe(case),
                case.case.expect,
                case.case.shadow,
                decision,
                shadow,
                answer,
                case.case.note.as_deref().map(|n| format!("\n    why: {n}")).unwrap_or_default()
            ));
        }
    }
    drop(echo);
    println!("RBAC decision table: {} cases ({http} HTTP, {tcp} TCP) against Envoy", prepared.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with Istio 1.4:\n{}\nEnvoy's log:\n{}",
        failures.len(),
        prepared.len(),
        failures.join("\n"),
        envoy.log_text()
    );
    assert!(prepared.len() >= 100, "the table has only {} cases", prepared.len());
    // Both answers on both kinds of port: a harness that could only see one
    // would fail here, not pass.
    for protocol in [Protocol::Http, Protocol::Tcp] {
        for decision in [Decision::Allow, Decision::Deny] {
            assert!(
                prepared.iter().any(|p| p.destination.protocol == protocol && p.case.expect == decision),
                "no {protocol:?} case expects {decision:?}"
            );
        }
    }
}

fn describe(case: &Prepared) -> String {
    let r = &case.request;
    let what = match case.destination.protocol {
        Protocol::Tcp => "TCP".to_string(),
        Protocol::Http => format!(
            "{} {} host {} headers {:?}{}",
            r.method.as_deref().unwrap_or("GET"),
            r.path.as_deref().unwrap_or("/"),
            r.host.as_deref().unwrap_or(&case.destination.host),
            r.headers,
            r.jwt.as_ref().map(|j| format!(" jwt {}", Value::Object(j.clone()))).unwrap_or_default()
        ),
    };
    format!(
        "case {:?}: {what} from {} ({}) to {}:{} (port {} as {})",
        case.case.name,
        r.caller.as_deref().unwrap_or("plaintext"),
        case.source_ip,
        case.destination_ip,
        case.destination.port,
        case.destination.port,
        case.port
    )
}
