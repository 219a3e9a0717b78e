//! The Envoy bootstrap of every sidecar. Stock Envoy has no agent beside it,
//! so the bootstrap alone must get it to the controller and prove who it is:
//! ADS (Delta xDS) over gRPC with TLS trusting the mesh root, the pod's
//! ServiceAccount token sent as `authorization: Bearer` on the stream, and
//! the pod named in the node id (given on Envoy's command line, where the
//! kubelet expands the pod's name and IP, which do not exist yet when the
//! pod is admitted).
//!
//! Static parts: the admin API on loopback only, and two listeners that
//! forward to it, /healthz/ready on :15021 (Envoy's own /ready: 200 once the
//! first configuration arrived) and /stats/prometheus on :15090. A pod whose
//! probes were rewritten also gets the app-health listener on :15020
//! (`with_app_health`).

use serde_json::{Value, json};

use super::probes::{APP_HEALTH_PORT, AppProbe, Check};

/// Where the injector mounts what the bootstrap reads.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "istio-token";
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/mesh";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const BOOTSTRAP_DIR: &str = "/etc/istio/bootstrap";
pub const BOOTSTRAP_FILE: &str = "envoy.json";

pub const ADMIN_PORT: u16 = 15000;
pub const HEALTH_PORT: u16 = 15021;
pub const PROMETHEUS_PORT: u16 = 15090;

/// The node id's first part for a sidecar (Istio's node types).
pub const SIDECAR_NODE: &str = "sidecar";
/// The node id's first part for a gateway's Envoy.
pub const ROUTER_NODE: &str = "router";

/// Envoy's node id for a pod, Istio's format: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`.
/// The injector passes it with `$(INSTANCE_IP)`, `$(POD_NAME)` and
/// `$(POD_NAMESPACE)` for the kubelet to expand.
pub fn node_id(ip: &str, pod: &str, namespace: &str, cluster_domain: &str) -> String {
    kind_node_id(SIDECAR_NODE, ip, pod, namespace, cluster_domain)
}

/// The same for a proxy of `kind` ([`SIDECAR_NODE`] or [`ROUTER_NODE`]).
pub fn kind_node_id(kind: &str, ip: &str, pod: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.{cluster_domain}")
}

/// The bootstrap for sidecars that reach the controller at `proxy_xds_address` (host:port).
pub fn bootstrap(proxy_xds_address: &str) -> Value {
    json!({
        "node": {"id": "set-by-command-line", "cluster": "set-by-command-line"},
        "admin": {
            "address": socket("127.0.0.1", ADMIN_PORT),
        },
        // A cluster's traffic statistics are made when it first carries
        // traffic: a sidecar in a mesh of 1,000 Services holds 1,000
        // clusters and talks to a few.
        "deferred_stat_options": {"enable_deferred_creation_stats": true},
        "dynamic_resources": {
            // Delta (incremental) xDS, as Istio's default: its ACKs name
            // nothing, where a SotW ACK repeats every endpoint and route
            // name subscribed to, and a Delta stream's state costs the
            // controller no more (docs/perf.md, "SotW or Delta for the
            // sidecars"). The ADS config sources of clusters, listeners,
            // routes and secrets follow the stream's protocol.
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"google_grpc": google_grpc(proxy_xds_address)}],
            },
            // No timeout: Envoy is not ready (and the app does not start)
            // until it has the mesh's configuration.
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
        },
        "static_resources": {
            "listeners": [
                admin_forward("health", HEALTH_PORT, "/healthz/ready", "/ready"),
                admin_forward("prometheus", PROMETHEUS_PORT, "/stats/prometheus", "/stats/prometheus"),
            ],
            "clusters": [{
                "name": "admin",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "admin",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket("127.0.0.1", ADMIN_PORT)}}]}],
                },
            }],
        },
    })
}

/// The bootstrap with the pod's own share of traced requests: Envoy's
/// runtime value `tracing.random_sampling`, which overrides the connection
/// managers' `random_sampling` (the mesh-wide share), as a fraction per
/// million. An admin layer above it keeps /runtime_modify working.
pub fn with_trace_sampling(mut bootstrap: Value, percent: f64) -> Value {
    let per_million = (percent * 10_000.0).round() as u64;
    bootstrap["layered_runtime"] = json!({
        "layers": [
            {
                "name": "pod",
                "static_layer": {
                    "tracing.random_sampling": {"numerator": per_million, "denominator": "MILLION"},
                },
            },
            {"name": "admin", "admin_layer": {}},
        ],
    });
    bootstrap
}

/// The header that carries the Host the kubelet would have sent to the app
/// (`<pod IP>:<app port>`) to `host_rewrite_header`: Envoy refuses to set
/// Host itself from `request_headers_to_add`, and the pod's IP is known only
/// once the pod runs, as the address the kubelet connected to.
pub const PROBE_HOST_HEADER: &str = "x-mesh-probe-host";

/// The bootstrap with the app-health listener on :15020 serving `probes`
/// (unchanged when there are none): one path per probe, as the rewritten
/// probes ask for it; any other path is a 404.
///
/// - httpGet: forwarded to the app on 127.0.0.1:<port> with the original
///   path, query, headers and Host (HTTPS without verifying the app's
///   certificate, as the kubelet does); the app's status goes back
///   unchanged, so the probe's thresholds count the app's own answers.
/// - tcpSocket and grpc: Envoy's health_check filter answers 200 only while
///   the probe's cluster has its one host healthy (else 503), and that host
///   is checked by Envoy's active health checking every periodSeconds: a
///   fresh connection (TCP, connect only), or gRPC health checking that must
///   answer SERVING. A route would only say that Envoy is up; the filter
///   says what the app's port did at its last check, at most one period old.
pub fn with_app_health(mut bootstrap: Value, probes: &[AppProbe]) -> Value {
    if probes.is_empty() {
        return bootstrap;
    }
    let mut routes = Vec::new();
    let mut filters = Vec::new();
    for probe in probes {
        match &probe.check {
            Check::Http { port, path, headers, .. } => {
                routes.push(http_probe_route(probe, *port, path, headers))
            }
            Check::Tcp { .. } | Check::Grpc { .. } => filters.push(json!({
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": false,
                    "headers": [{"name": ":path", "string_match": {"exact": probe.path()}}],
                    "cluster_min_healthy_percentages": {probe.cluster(): {"value": 100.0}},
                },
            })),
        }
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            // The app sees what the kubelet sent, not Envoy's own headers.
            "suppress_envoy_headers": true,
        },
    }));
    let listener = json!({
        "name": "app-health",
        "address": socket("0.0.0.0", APP_HEALTH_PORT),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "app-health",
                    "generate_request_id": false,
                    "route_config": {
                        "virtual_hosts": [{"name": "app-health", "domains": ["*"], "routes": routes}],
                    },
                    "http_filters": filters,
                },
            }],
        }],
    });
    let statics = &mut bootstrap["static_resources"];
    if let Some(listeners) = statics["listeners"].as_array_mut() {
        listeners.push(listener);
    }
    if let Some(clusters) = statics["clusters"].as_array_mut() {
        clusters.extend(probes.iter().map(app_cluster));
    }
    bootstrap
}

fn http_probe_route(probe: &AppProbe, port: u16, path: &str, headers: &[(String, String)]) -> Value {
    // Header values are Envoy format strings: a literal % is written %%.
    let literal = |v: &str| v.replace('%', "%%");
    let host = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v);
    let mut to_add: Vec<Value> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .map(|(k, v)| json!({"header": {"key": k, "value": literal(v)}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
        .collect();
    let mut route = json!({
        "cluster": probe.cluster(),
        // The kubelet asked for exactly this path: the whole of it is replaced.
        "prefix_rewrite": path,
        "timeout": seconds(probe.timeout_seconds()),
    });
    match host {
        Some(host) => route["host_rewrite_literal"] = json!(host),
        None => {
            // The kubelet connected to <pod IP>:15020; it would have sent
            // Host <pod IP>:<app port> to the app itself.
            to_add.push(json!({
                "header": {"key": PROBE_HOST_HEADER, "value": format!("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:{port}")},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }));
            route["host_rewrite_header"] = json!(PROBE_HOST_HEADER);
        }
    }
    json!({"match": {"path": probe.path()}, "route": route, "request_headers_to_add": to_add})
}

/// The cluster that reaches the app for one probe, on loopback.
fn app_cluster(probe: &AppProbe) -> Value {
    let port = match probe.check {
        Check::Http { port, .. } | Check::Tcp { port } | Check::Grpc { port, .. } => port,
    };
    let name = probe.cluster();
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(probe.timeout_seconds()),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket("127.0.0.1", port)}}]}],
        },
    });
    let period = seconds(probe.period_seconds());
    let health_check = |kind: &str, config: Value| {
        json!([{
            "timeout": seconds(probe.timeout_seconds()),
            "interval": period,
            // Nothing but the checks ever uses these clusters: without these,
            // an idle cluster would be checked only once a minute.
            "no_traffic_interval": period,
            "no_traffic_healthy_interval": period,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            // A new connection per check, as the kubelet makes one per probe.
            "reuse_connection": false,
            kind: config,
        }])
    };
    match &probe.check {
        Check::Http { https: true, .. } => {
            // No validation context: the app's certificate is not verified,
            // as the kubelet does not verify it.
            cluster["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                },
            });
        }
        Check::Http { .. } => {}
        Check::Tcp { .. } => {
            // Empty send and receive: a connect-only check.
            cluster["health_checks"] = health_check("tcp_health_check", json!({}));
        }
        Check::Grpc { service, .. } => {
            // The authority would be the cluster's name, whose `|` a gRPC
            // server may refuse (hyper's does, resetting the stream); the
            // address dialled is what a gRPC client sends.
            let config = json!({
                "service_name": service.clone().unwrap_or_default(),
                "authority": format!("127.0.0.1:{port}"),
            });
            cluster["health_checks"] = health_check("grpc_health_check", config);
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            });
        }
    }
    cluster
}

fn seconds(n: i32) -> String {
    format!("{n}s")
}

/// gRPC with TLS to the controller, trusting only the mesh root, with the
/// projected token as call credentials (the file is re-read as the kubelet
/// renews it). Without `credentials_factory_name` Envoy sends no token.
fn google_grpc(proxy_xds_address: &str) -> Value {
    let plugin = "envoy.grpc_credentials.file_based_metadata";
    json!({
        "target_uri": proxy_xds_address,
        "stat_prefix": "xds-grpc",
        "channel_credentials": {
            "ssl_credentials": {"root_certs": {"filename": format!("{ROOT_CERT_DIR}/{ROOT_CERT_FILE}")}},
        },
        "credentials_factory_name": plugin,
        "call_credentials": [{
            "from_plugin": {
                "name": plugin,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                    "secret_data": {"filename": format!("{TOKEN_DIR}/{TOKEN_FILE}")},
                    "header_key": "authorization",
                    "header_prefix": "Bearer ",
                },
            },
        }],
    })
}

/// A listener on `port` serving one path, forwarded to the admin API's `admin_path`.
fn admin_forward(name: &str, port: u16, path: &str, admin_path: &str) -> Value {
    json!({
        "name": name,
        "address": socket("0.0.0.0", port),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {
                        "virtual_hosts": [{
                            "name": name,
                            "domains": ["*"],
                            "routes": [{
                                "match": {"path": path},
                                "route": {"cluster": "admin", "prefix_rewrite": admin_path},
                            }],
                        }],
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }],
                },
            }],
        }],
    })
}

fn socket(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_istios_format() {
        assert_eq!(
            node_id("10.244.0.5", "details-v1-abc", "default", "cluster.local"),
            "sidecar~10.244.0.5~details-v1-abc.default~default.svc.cluster.local"
        );
    }

    #[test]
    fn ads_sends_the_token_over_tls() {
        let b = bootstrap("mesh.mesh-system.svc:15012");
        let grpc = &b["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
        assert_eq!(grpc["target_uri"], "mesh.mesh-system.svc:15012");
        assert_eq!(grpc["credentials_factory_name"], "envoy.grpc_credentials.file_based_metadata");
        assert_eq!(
            grpc["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"],
            "/var/run/secrets/tokens/istio-token"
        );
        assert_eq!(
            grpc["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"],
            "/var/run/secrets/mesh/root-cert.pem"
        );
    }
}
