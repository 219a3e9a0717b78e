//! The translation in a real Envoy 1.40, two ways:
//!
//! - `envoy --mode validate` on a bootstrap holding everything statically
//!   (EDS clusters as STATIC with their assignment inline, RDS routes
//!   inline in the connection managers): Envoy checks every field and
//!   exits non-zero with the reason when something is invalid.
//! - a running Envoy fed the exact resources from files (file-based LDS
//!   is not needed: listeners and clusters are static; RDS and EDS come
//!   from `path_config_source` files in place of ADS). Once it has applied
//!   them, nothing may be rejected, and its /config_dump is the golden
//!   file: whole for the baseline (Bookinfo with its DestinationRules and
//!   no VirtualService), and for every other scenario only the entries
//!   that differ from the baseline.
//!
//! Bootstraps and discovery files are binary protobuf (`.pb`), which Envoy
//! reads by extension, so no JSON encoding of our own is involved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, ConfigSource, Node, PathConfigSource, TransportSocket, config_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::{Message, Name};
use serde_json::Value;

use super::{SCENARIOS, mesh_view, permissive, productpage, scenario};
use crate::testing::{TempDir, envoy_binary};
use crate::translate::sidecar::{Inbound, Outbound, inbound, outbound};
use crate::translate::{address, any};

/// What the productpage sidecar gets in a scenario.
fn configuration(name: &str) -> (Outbound, Inbound) {
    let index = scenario(name);
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    (outbound(&view, &view.scope(&proxy)), inbound(&view, &proxy, permissive))
}

pub(super) fn base_bootstrap(listeners: Vec<Listener>, clusters: Vec<Cluster>) -> Bootstrap {
    Bootstrap {
        node: Some(Node {
            id: "sidecar~10.244.0.13~productpage-v1-0.default~default.svc.cluster.local".into(),
            cluster: "productpage.default".into(),
            ..Default::default()
        }),
        admin: Some(Admin { address: Some(address("127.0.0.1", 0)), ..Default::default() }),
        static_resources: Some(bootstrap::StaticResources { listeners, clusters, ..Default::default() }),
        ..Default::default()
    }
}

/// Rewrites the connection managers of a listener's chains.
fn map_managers(listener: &mut Listener, f: &mut dyn FnMut(&mut HttpConnectionManager)) {
    let chains = listener.filter_chains.iter_mut().chain(listener.default_filter_chain.as_mut());
    for chain in chains {
        for network_filter in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(config)) = &mut network_filter.config_type else {
                continue;
            };
            if config.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            let mut manager = HttpConnectionManager::decode(config.value.as_slice()).expect("decodes");
            f(&mut manager);
            *config = any(&manager);
        }
    }
}

fn rds_name(manager: &HttpConnectionManager) -> Option<String> {
    match &manager.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => Some(rds.route_config_name.clone()),
        _ => None,
    }
}

/// The secrets the productpage proxy gets by SDS, from a fresh CA.
pub(super) fn productpage_secrets() -> Vec<Secret> {
    let now = time::OffsetDateTime::now_utc();
    let root = crate::ca::Root::generate("cluster.local", now).expect("root");
    let authority = crate::ca::Authority::from_root(&root, now).expect("authority");
    let id = crate::ca::SpiffeId::new("cluster.local", "default", "bookinfo-productpage").expect("id");
    let leaf = authority.issue_workload(&id, time::Duration::HOUR, now).expect("leaf");
    workload_secrets(&leaf, &authority)
}

/// Points every SDS reference of the clusters and listeners at a file
/// holding the named secret (standing in for ADS; a file holds one secret).
fn secrets_from(dir: &TempDir, listeners: &mut [Listener], clusters: &mut [Cluster]) {
    let secrets = productpage_secrets();
    let sources: Vec<(String, ConfigSource)> = secrets
        .iter()
        .map(|secret| {
            let source =
                discovery_file(dir, &format!("sds-{}.pb", secret.name), std::slice::from_ref(secret));
            (secret.name.clone(), source)
        })
        .collect();
    // A gateway's `kubernetes://<credential>` secrets: the workload's
    // certificate, and its root for `-cacert`, under those names.
    let credential = |name: &str| {
        let like = if name.ends_with(crate::model::credential::CA_SUFFIX) { 1 } else { 0 };
        let secret = Secret { name: name.to_string(), ..secrets[like].clone() };
        let file = format!("sds-{}.pb", name.replace(['/', ':'], "_"));
        discovery_file(dir, &file, std::slice::from_ref(&secret))
    };
    let source_of = |name: &str| {
        sources.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()).or_else(|| {
            name.starts_with(crate::translate::secret::CREDENTIAL_PREFIX).then(|| credential(name))
        })
    };
    let point = |common: &mut Option<CommonTlsContext>| {
        let Some(common) = common else { return };
        for sds in &mut common.tls_certificate_sds_secret_configs {
            sds.sds_config = source_of(&sds.name);
        }
        match &mut common.validation_context_type {
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
                sds.sds_config = source_of(&sds.name);
            }
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) => {
                if let Some(sds) = &mut combined.validation_context_sds_secret_config {
                    sds.sds_config = source_of(&sds.name);
                }
            }
            _ => {}
        }
    };
    let mut rewrite = |socket: &mut TransportSocket| {
        let Some(transport_socket::ConfigType::TypedConfig(config)) = &mut socket.config_type else { return };
        if config.type_url == UpstreamTlsContext::type_url() {
            let mut context = UpstreamTlsContext::decode(config.value.as_slice()).expect("decodes");
            point(&mut context.common_tls_context);
            *config = any(&context);
        } else if config.type_url == DownstreamTlsContext::type_url() {
            let mut context = DownstreamTlsContext::decode(config.value.as_slice()).expect("decodes");
            point(&mut context.common_tls_context);
            *config = any(&context);
        }
    };
    for cluster in clusters {
        cluster.transport_socket.iter_mut().for_each(&mut rewrite);
        cluster
            .transport_socket_matches
            .iter_mut()
            .filter_map(|m| m.transport_socket.as_mut())
            .for_each(&mut rewrite);
    }
    for listener in listeners {
        listener.filter_chains.iter_mut().filter_map(|c| c.transport_socket.as_mut()).for_each(&mut rewrite);
    }
}

/// Runs `envoy --mode validate` on a proxy's configuration; fails the test,
/// with Envoy's words, when Envoy refuses `what`.
pub(super) fn assert_envoy_accepts(what: &str, out: &Outbound, inb: &Inbound) {
    let dir = TempDir::new("validate");
    let bootstrap = static_bootstrap(&dir, out, inb);
    assert_envoy_validates(what, &dir, &bootstrap);
}

/// `envoy --mode validate` on `bootstrap`, written into `dir`.
fn assert_envoy_validates(what: &str, dir: &TempDir, bootstrap: &Bootstrap) {
    let path = dir.write("config.pb", bootstrap.encode_to_vec());
    let result = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        result.status.success(),
        "Envoy refused {what}:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The listeners with the route configurations their managers name by RDS inline.
fn with_inline_routes(mut listeners: Vec<Listener>, routes: &[RouteConfiguration]) -> Vec<Listener> {
    for listener in &mut listeners {
        map_managers(listener, &mut |manager| {
            if let Some(name) = rds_name(manager) {
                let routes =
                    routes.iter().find(|r| r.name == name).cloned().expect("the route configuration");
                manager.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(routes));
            }
        });
    }
    listeners
}

/// The clusters, EDS ones made static with their endpoints from `out`.
fn static_clusters(clusters: impl IntoIterator<Item = Cluster>, out: &Outbound) -> Vec<Cluster> {
    let mut clusters: Vec<Cluster> = clusters.into_iter().collect();
    for cluster in &mut clusters {
        if cluster.eds_cluster_config.take().is_some() {
            cluster.cluster_discovery_type =
                Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static.into()));
            cluster.load_assignment = out.endpoints.iter().find(|e| e.cluster_name == cluster.name).cloned();
            assert!(cluster.load_assignment.is_some(), "{} has no endpoints", cluster.name);
        }
    }
    clusters
}

/// Everything static: what `--mode validate` can check in full.
pub(super) fn static_bootstrap(dir: &TempDir, out: &Outbound, inb: &Inbound) -> Bootstrap {
    let mut listeners = with_inline_routes(vec![out.listener.clone(), inb.listener.clone()], &out.routes);
    let mut clusters = static_clusters(out.clusters.iter().chain(&inb.clusters).cloned(), out);
    secrets_from(dir, &mut listeners, &mut clusters);
    base_bootstrap(listeners, clusters)
}

/// Runs `envoy --mode validate` on a gateway proxy's configuration: its
/// listeners (routes inline) and the clusters of its namespace.
pub(super) fn assert_envoy_accepts_gateway(
    what: &str,
    out: &Outbound,
    gateway: &crate::translate::gateway::GatewayConfig,
) {
    let dir = TempDir::new("validate-gateway");
    let listeners = gateway.listeners.iter().map(|(l, _)| l.clone()).collect();
    let mut listeners = with_inline_routes(listeners, &gateway.routes);
    let mut clusters = static_clusters(out.clusters.clone(), out);
    secrets_from(&dir, &mut listeners, &mut clusters);
    let mut bootstrap = base_bootstrap(listeners, clusters);
    bootstrap.node.as_mut().expect("a node").id =
        "router~10.244.0.50~ingress-0.istio-system~istio-system.svc.cluster.local".into();
    assert_envoy_validates(what, &dir, &bootstrap);
}

#[test]
fn envoy_validates_every_scenario() {
    for name in SCENARIOS {
        let (out, inb) = configuration(name);
        assert_envoy_accepts(&format!("the {name} configuration"), &out, &inb);
    }
}

#[test]
fn envoy_accepts_the_access_logs_and_metrics_of_every_setting() {
    use crate::model::MeshConfig;
    use crate::model::telemetry::{AccessLogEncoding, Settings, Tracing};
    let custom_json = r#"{"code": "%RESPONSE_CODE%", "peer": "%DOWNSTREAM_PEER_URI_SAN%"}"#;
    let settings = [
        Settings::new(true, "/dev/stdout", AccessLogEncoding::Text, "", None),
        Settings::new(true, "/dev/stdout", AccessLogEncoding::Json, "", None),
        Settings::new(false, "/dev/stdout", AccessLogEncoding::Text, "%RESPONSE_CODE% %REQ(:PATH)%", None),
        Settings::new(false, "/tmp/access.log", AccessLogEncoding::Json, custom_json, None),
        Settings::new(false, "", AccessLogEncoding::Text, "", None),
        Settings::new(
            true,
            "",
            AccessLogEncoding::Text,
            "",
            Tracing::new("zipkin.mesh-system:9411", 10.0).unwrap(),
        ),
    ];
    for telemetry in settings {
        let telemetry = telemetry.expect("valid settings");
        let index = scenario("no-virtual-service")
            .with_mesh_config(MeshConfig { telemetry: telemetry.clone(), ..MeshConfig::default() });
        let view = mesh_view(&index);
        let proxy = productpage(&index);
        let (out, inb) = (outbound(&view, &view.scope(&proxy)), inbound(&view, &proxy, permissive));
        let mut loggers = Vec::new();
        for listener in [&out.listener, &inb.listener] {
            let mut listener = listener.clone();
            map_managers(&mut listener, &mut |m| loggers.extend(m.access_log.iter().map(|l| l.name.clone())));
        }
        let wanted = usize::from(telemetry.metrics) + usize::from(telemetry.access_log_file.is_some());
        assert!(!loggers.is_empty() || wanted == 0, "{telemetry:?}");
        assert_eq!(loggers.len() % wanted.max(1), 0, "{telemetry:?}: {loggers:?}");
        assert_eq!(
            loggers.iter().any(|l| l == "envoy.access_loggers.stats"),
            telemetry.metrics,
            "{telemetry:?}"
        );
        assert_eq!(
            loggers.iter().any(|l| l == "envoy.access_loggers.file"),
            telemetry.access_log_file.is_some(),
            "{telemetry:?}"
        );
        if telemetry.tracing.is_some() {
            assert!(out.clusters.iter().any(|c| c.name == "zipkin"), "the collector's cluster");
            let mut traced = 0;
            map_managers(&mut out.listener.clone(), &mut |m| traced += usize::from(m.tracing.is_some()));
            assert!(traced > 0, "the outbound connection managers trace");
        }
        assert_envoy_accepts(&format!("the telemetry {telemetry:?}"), &out, &inb);
    }
    let refused = Settings::new(true, "/dev/stdout", AccessLogEncoding::Json, "%RESPONSE_CODE%", None);
    assert!(refused.is_err_and(|e| e.contains("JSON object")), "a JSON format that is no object");
}

#[test]
fn envoy_validation_is_not_vacuous() {
    // A route configuration with two virtual hosts sharing a domain is invalid.
    let (mut out, inb) = configuration("no-virtual-service");
    let route = &mut out.routes[0];
    let duplicate = route.virtual_hosts[0].clone();
    route.virtual_hosts.push(duplicate);
    let dir = TempDir::new("invalid");
    let path = dir.write("invalid.pb", static_bootstrap(&dir, &out, &inb).encode_to_vec());
    let result = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(!result.status.success());
    let log = String::from_utf8_lossy(&result.stderr);
    assert!(log.contains("domain"), "{log}");
}

/// A discovery response file for a `path_config_source`.
fn discovery_file<M: Message + Name>(dir: &TempDir, file: &str, resources: &[M]) -> ConfigSource {
    let response = DiscoveryResponse {
        version_info: "1".into(),
        type_url: M::type_url(),
        resources: resources.iter().map(any).collect::<Vec<Any>>(),
        ..Default::default()
    };
    let path = dir.write(file, response.encode_to_vec());
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
            PathConfigSource { path: path.display().to_string(), ..Default::default() },
        )),
        ..Default::default()
    }
}

/// The exact resources, with RDS and EDS read from files instead of ADS,
/// and listeners that do not bind (tests run side by side).
fn file_bootstrap(dir: &TempDir, out: &Outbound, inb: &Inbound) -> Bootstrap {
    let mut listeners = vec![out.listener.clone(), inb.listener.clone()];
    for listener in &mut listeners {
        listener.bind_to_port = Some(BoolValue { value: false });
        map_managers(listener, &mut |manager| {
            let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &mut manager.route_specifier else {
                return;
            };
            let routes: Vec<RouteConfiguration> =
                out.routes.iter().filter(|r| r.name == rds.route_config_name).cloned().collect();
            rds.config_source =
                Some(discovery_file(dir, &format!("rds-{}.pb", rds.route_config_name), &routes));
        });
    }
    let mut clusters: Vec<Cluster> = out.clusters.iter().chain(&inb.clusters).cloned().collect();
    for (n, cluster) in clusters.iter_mut().enumerate() {
        if let Some(eds) = &mut cluster.eds_cluster_config {
            let assignment: Vec<ClusterLoadAssignment> =
                out.endpoints.iter().filter(|e| e.cluster_name == eds.service_name).cloned().collect();
            eds.eds_config = Some(discovery_file(dir, &format!("eds-{n}.pb"), &assignment));
        }
    }
    secrets_from(dir, &mut listeners, &mut clusters);
    base_bootstrap(listeners, clusters)
}

/// A running Envoy, killed when dropped.
pub(super) struct Running {
    child: Child,
    pub(super) admin: String,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub(super) fn start(dir: &TempDir, bootstrap: &Bootstrap) -> Self {
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
        let mut running = Self { child, admin: String::new(), log };
        running.admin = running.wait_for("the admin address", || {
            std::fs::read_to_string(&admin_path).ok().map(|a| a.trim().to_string()).filter(|a| !a.is_empty())
        });
        running
    }

    pub(super) fn wait_for<T>(&mut self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(value) = probe() {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited ({status}) while waiting for {what}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; Envoy's log:\n{}", self.log_text());
    }

    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub(super) fn get(admin: &str, path: &str) -> Option<String> {
    let mut response = ureq::get(&format!("http://{admin}{path}")).call().ok()?;
    response.body_mut().read_to_string().ok()
}

/// Replaces the test's file sources by what the proxy really gets (`ads`),
/// and drops what only the test set.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("path_config_source").is_some() {
                map.insert("ads".into(), Value::Object(Default::default()));
            }
            map.remove("bind_to_port");
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Items of a config dump section, at `path` inside each entry, sorted by `key`.
fn pick(dump: &Value, section: &str, path: &[&str], key: &str) -> Vec<Value> {
    let mut items: Vec<Value> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get(section))
        .filter_map(Value::as_array)
        .flatten()
        .map(|entry| path.iter().fold(entry.clone(), |v, k| v[*k].clone()))
        .collect();
    items.sort_by_key(|item| item[key].as_str().unwrap_or_default().to_string());
    items
}

/// Envoy's view of what it applied: clusters, endpoints, routes and listeners.
fn applied(name: &str) -> Value {
    let (out, inb) = configuration(name);
    let dir = TempDir::new(name);
    let mut envoy = Running::start(&dir, &file_bootstrap(&dir, &out, &inb));
    let admin = envoy.admin.clone();
    let route_names: Vec<&str> = out.routes.iter().map(|r| r.name.as_str()).collect();
    let dump = envoy.wait_for("Envoy to apply every route configuration", || {
        let text = get(&admin, "/config_dump?include_eds")?;
        let dump: Value = serde_json::from_str(&text).ok()?;
        let routes = pick(&dump, "dynamic_route_configs", &["route_config"], "name");
        let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
        (names == route_names).then_some(dump)
    });
    let stats = get(&admin, "/stats?filter=update_(rejected|failure)").unwrap_or_default();
    let refused: Vec<&str> = stats.lines().filter(|l| !l.ends_with(": 0")).collect();
    assert!(
        refused.is_empty(),
        "{name}: Envoy refused some configuration: {refused:?}\n{}",
        envoy.log_text()
    );

    let endpoint_names: Vec<&str> = out.endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
    let mut endpoints = pick(&dump, "static_endpoint_configs", &["endpoint_config"], "cluster_name");
    endpoints.extend(pick(&dump, "dynamic_endpoint_configs", &["endpoint_config"], "cluster_name"));
    endpoints.retain(|e| endpoint_names.contains(&e["cluster_name"].as_str().unwrap_or_default()));
    endpoints.sort_by_key(|e| e["cluster_name"].as_str().unwrap_or_default().to_string());
    let mut value = serde_json::json!({
        "clusters": pick(&dump, "static_clusters", &["cluster"], "name"),
        "endpoints": endpoints,
        "routes": pick(&dump, "dynamic_route_configs", &["route_config"], "name"),
        "listeners": pick(&dump, "static_listeners", &["listener"], "name"),
    });
    normalize(&mut value);
    value
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/testdata/bookinfo").join(format!("{name}.json"))
}

/// The scenario every other one is read against: its golden file is whole.
const BASELINE: &str = "no-virtual-service";

/// What a scenario changes against the baseline, per section (clusters,
/// endpoints, routes, listeners): the entries it adds or changes, whole,
/// and the names of those it removes. A reviewer sees the route that
/// changed, not 1,400 lines that did not.
fn difference(baseline: &Value, scenario: &Value) -> Value {
    let name_of = |item: &Value| {
        ["name", "cluster_name"].iter().find_map(|k| item[*k].as_str()).unwrap_or_default().to_string()
    };
    let mut out = serde_json::Map::new();
    for (section, items) in scenario.as_object().into_iter().flatten() {
        let before: Vec<&Value> = baseline[section].as_array().into_iter().flatten().collect();
        let after: Vec<&Value> = items.as_array().into_iter().flatten().collect();
        let changed: Vec<Value> = after
            .iter()
            .filter(|item| !before.iter().any(|b| b == *item))
            .map(|item| (*item).clone())
            .collect();
        let removed: Vec<String> = before
            .iter()
            .map(|b| name_of(b))
            .filter(|name| !after.iter().any(|a| name_of(a) == *name))
            .collect();
        if !changed.is_empty() || !removed.is_empty() {
            out.insert(section.clone(), serde_json::json!({"changed": changed, "removed": removed}));
        }
    }
    Value::Object(out)
}

#[test]
fn envoy_applies_every_scenario_as_in_the_golden_files() {
    let update = std::env::var_os("MESH_UPDATE_GOLDEN").is_some();
    // Two Envoys at a time: each holds inotify instances (its file-based
    // RDS and EDS), of which a user gets 128 on a default machine, shared
    // with whatever else runs Envoy there.
    let results: Vec<(&str, Value)> = SCENARIOS
        .chunks(2)
        .flat_map(|chunk| {
            std::thread::scope(|scope| {
                let handles: Vec<_> =
                    chunk.iter().map(|name| scope.spawn(move || (*name, applied(name)))).collect();
                handles.into_iter().map(|h| h.join().expect("scenario thread")).collect::<Vec<_>>()
            })
        })
        .collect();
    let baseline =
        results.iter().find(|(name, _)| *name == BASELINE).map(|(_, v)| v.clone()).expect("baseline");
    for (name, applied) in results {
        let golden = if name == BASELINE { applied } else { difference(&baseline, &applied) };
        let pretty = serde_json::to_string_pretty(&golden).expect("json") + "\n";
        let path = golden_path(name);
        if update {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("testdata dir");
            std::fs::write(&path, &pretty).expect("write golden");
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        let what =
            if name == BASELINE { "Envoy's view" } else { "what differs from the baseline in Envoy's view" };
        pretty_assertions::assert_eq!(
            pretty,
            expected,
            "{what} of {name} changed; if intended, rerun with MESH_UPDATE_GOLDEN=1"
        );
    }
}

#[test]
fn a_scenario_golden_holds_only_what_differs() {
    let baseline = serde_json::json!({"routes": [{"name": "a", "v": 1}, {"name": "b", "v": 1}, {"name": "gone", "v": 1}],
                                      "clusters": [{"name": "c", "v": 1}]});
    let scenario = serde_json::json!({"routes": [{"name": "a", "v": 1}, {"name": "b", "v": 2}, {"name": "new", "v": 1}],
                                      "clusters": [{"name": "c", "v": 1}]});
    assert_eq!(
        difference(&baseline, &scenario),
        serde_json::json!({"routes": {"changed": [{"name": "b", "v": 2}, {"name": "new", "v": 1}], "removed": ["gone"]}})
    );
}

/// A listener whose TLS names the two secrets as a sidecar's will.
fn tls_listener() -> Listener {
    use crate::translate::secret::{ROOT_SECRET, WORKLOAD_SECRET};
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, common_tls_context,
    };
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
    let proxy = TcpProxy {
        stat_prefix: "tls".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("BlackHoleCluster".into())),
        ..Default::default()
    };
    Listener {
        name: "tls".into(),
        address: Some(address("127.0.0.1", 0)),
        filter_chains: vec![FilterChain {
            filters: vec![crate::translate::passthrough::network_filter(
                "envoy.filters.network.tcp_proxy",
                any(&proxy),
            )],
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any(
                        &tls,
                    )),
                ),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn secrets_bootstrap(
    secrets: Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
) -> Bootstrap {
    let mut bootstrap =
        base_bootstrap(vec![tls_listener()], vec![crate::translate::cluster::black_hole_cluster()]);
    if let Some(resources) = bootstrap.static_resources.as_mut() {
        resources.secrets = secrets;
    }
    bootstrap
}

/// What a workload's proxy will get by SDS: its own chain and key, and the trust bundle.
fn workload_secrets(
    leaf: &crate::ca::Leaf,
    authority: &crate::ca::Authority,
) -> Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret> {
    use crate::translate::secret::{root_secret, workload_secret};
    vec![workload_secret(&leaf.cert_chain_pem, &leaf.key_pem), root_secret(authority.trust_bundle_pem())]
}

#[test]
fn envoy_serves_a_workload_certificate_from_the_default_and_rootca_secrets() {
    use crate::ca::{Authority, Root, SpiffeId};
    use crate::translate::secret::{root_secret, workload_secret};
    let now = time::OffsetDateTime::now_utc();
    let root = Root::generate("cluster.local", now).expect("a root");
    let authority = Authority::from_root(&root, now).expect("a CA");
    let id = SpiffeId::new("cluster.local", "default", "bookinfo-productpage").expect("an id");
    let leaf = authority.issue_workload(&id, time::Duration::hours(24), now).expect("a leaf");

    let dir = TempDir::new("secrets");
    let mut envoy = Running::start(&dir, &secrets_bootstrap(workload_secrets(&leaf, &authority)));
    let admin = envoy.admin.clone();
    let certs = envoy.wait_for("the listener's certificates", || {
        let text = get(&admin, "/certs")?;
        text.contains("spiffe://").then_some(text)
    });
    assert!(certs.contains("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"), "{certs}");

    // Validation passes on these secrets, and fails on a key that does not
    // match the certificate: the secrets' content is what is checked.
    let validate = |name: &str, bootstrap: Bootstrap| {
        let path = dir.write(name, bootstrap.encode_to_vec());
        Command::new(envoy_binary())
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&path)
            .output()
            .expect("run envoy")
    };
    let good = validate("good.pb", secrets_bootstrap(workload_secrets(&leaf, &authority)));
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let other = authority.issue_workload(&id, time::Duration::hours(24), now).expect("another leaf");
    let mismatched = vec![
        workload_secret(&leaf.cert_chain_pem, &other.key_pem),
        root_secret(authority.trust_bundle_pem()),
    ];
    let result = validate("mismatched.pb", secrets_bootstrap(mismatched));
    assert!(!result.status.success(), "Envoy took a key that does not match its certificate");
}

/// Every resilience field of an HTTP rule at once (retries with each
/// setting, a fixed delay and a gRPC abort, a mirror and mirrors with
/// their shares, a timeout): Envoy accepts the routes and the fault
/// filter's per-route configuration.
#[test]
fn envoy_validates_every_resilience_field() {
    use crate::index::VirtualServices;
    use crate::testing::objects::config;
    let mut index = scenario("no-virtual-service");
    let spec = serde_json::json!({"hosts": ["reviews"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
         "timeout": "3s",
         "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,429,unavailable",
                     "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false, "backoff": "50ms"},
         "fault": {"delay": {"fixedDelay": "1s", "percent": 10},
                   "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.5}}},
         "mirror": {"host": "ratings"}, "mirrorPercent": 20},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                   {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50}],
         "fault": {"abort": {"httpStatus": 418, "percent": 5}},
         "mirrors": [{"destination": {"host": "details"}, "percentage": {"value": 12.5}},
                     {"destination": {"host": "ratings", "subset": "v1"}}],
         "retries": {"attempts": 0}}
    ]});
    index.apply::<VirtualServices>(&config::<crate::api::VirtualService>(super::NAMESPACE, "reviews", spec));
    let view = mesh_view(&index);
    let proxy = productpage(&index);
    let (out, inb) = (outbound(&view, &view.scope(&proxy)), inbound(&view, &proxy, permissive));
    let reviews = out.routes.iter().flat_map(|r| &r.virtual_hosts).find(|v| v.name.starts_with("reviews."));
    let routes = &reviews.expect("reviews' virtual host").routes;
    assert!(routes.iter().all(|r| r.typed_per_filter_config.contains_key("envoy.filters.http.fault")));
    assert_envoy_accepts("the resilience fields", &out, &inb);
}
