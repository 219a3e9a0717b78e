//! The Envoy bootstrap of every sidecar. Stock Envoy has no agent beside it,
//! so the bootstrap alone must get it to the controller and prove who it is:
//! ADS over gRPC with TLS trusting the mesh root, the pod's ServiceAccount
//! token sent as `authorization: Bearer` on the stream, and the pod named in
//! the node id (given on Envoy's command line, where the kubelet expands the
//! pod's name and IP, which do not exist yet when the pod is admitted).
//!
//! Static parts: the admin API on loopback only, and two listeners that
//! forward to it, /healthz/ready on :15021 (Envoy's own /ready: 200 once the
//! first configuration arrived) and /stats/prometheus on :15090.

use serde_json::{Value, json};

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

/// Envoy's node id for a pod, Istio's format: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`.
/// The injector passes it with `$(INSTANCE_IP)`, `$(POD_NAME)` and
/// `$(POD_NAMESPACE)` for the kubelet to expand.
pub fn node_id(ip: &str, pod: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.{cluster_domain}")
}

/// The bootstrap for sidecars that reach the controller at `proxy_xds_address` (host:port).
pub fn bootstrap(proxy_xds_address: &str) -> Value {
    json!({
        "node": {"id": "set-by-command-line", "cluster": "set-by-command-line"},
        "admin": {
            "address": socket("127.0.0.1", ADMIN_PORT),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
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
