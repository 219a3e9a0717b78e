//! What the injector puts in every pod unless a pod's annotations say
//! otherwise: images, the controller's xDS address, default resources.
//! The same flags serve the webhook (`mesh controller`) and `mesh kube-inject`,
//! so both give the same pod.

/// The stock Envoy image the sidecar runs, pinned to the version the mesh is tested with.
pub const DEFAULT_PROXY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";

/// The mesh image, which runs `mesh iptables` as the init container.
pub const DEFAULT_INIT_IMAGE: &str = concat!("ghcr.io/mesh-project/mesh:", env!("CARGO_PKG_VERSION"));

/// The audience of the ServiceAccount token Envoy presents to the controller.
pub const TOKEN_AUDIENCE: &str = "mesh-ca";

/// UID and GID Envoy runs as; the iptables rules let its own traffic out uncaptured.
pub const PROXY_UID: i64 = 1337;

/// Injection settings, from flags or their environment variables.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct InjectArgs {
    /// The Envoy image of the sidecar (pod annotation sidecar.istio.io/proxyImage overrides it).
    #[arg(long, env = "MESH_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,

    /// The image of the init container that runs `mesh iptables`.
    #[arg(long, env = "MESH_PROXY_INIT_IMAGE", default_value = DEFAULT_INIT_IMAGE)]
    pub proxy_init_image: String,

    /// host:port of the controller's xDS server, as Envoy reaches it; the host
    /// must be a name in the controller's serving certificate.
    #[arg(long, env = "MESH_PROXY_XDS_ADDRESS", default_value = "mesh.mesh-system.svc:15012")]
    pub proxy_xds_address: String,

    /// Envoy's log level unless sidecar.istio.io/logLevel says otherwise.
    #[arg(long, env = "MESH_PROXY_LOG_LEVEL", default_value = "warning")]
    pub proxy_log_level: String,

    /// CPU request of the sidecar (sidecar.istio.io/proxyCPU overrides it).
    #[arg(long, env = "MESH_PROXY_CPU", default_value = "100m")]
    pub proxy_cpu: String,

    /// Memory request of the sidecar (sidecar.istio.io/proxyMemory).
    #[arg(long, env = "MESH_PROXY_MEMORY", default_value = "128Mi")]
    pub proxy_memory: String,

    /// CPU limit of the sidecar (sidecar.istio.io/proxyCPULimit); empty for none.
    #[arg(long, env = "MESH_PROXY_CPU_LIMIT", default_value = "2000m")]
    pub proxy_cpu_limit: String,

    /// Memory limit of the sidecar (sidecar.istio.io/proxyMemoryLimit); empty for none.
    #[arg(long, env = "MESH_PROXY_MEMORY_LIMIT", default_value = "1Gi")]
    pub proxy_memory_limit: String,

    /// Lifetime asked for the ServiceAccount token Envoy presents (the kubelet renews it).
    #[arg(long, env = "MESH_PROXY_TOKEN_SECONDS", default_value_t = 43200)]
    pub proxy_token_seconds: i64,

    /// The Kubernetes cluster's DNS domain.
    #[arg(long, env = "MESH_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
}

impl Default for InjectArgs {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            proxy_init_image: DEFAULT_INIT_IMAGE.into(),
            proxy_xds_address: "mesh.mesh-system.svc:15012".into(),
            proxy_log_level: "warning".into(),
            proxy_cpu: "100m".into(),
            proxy_memory: "128Mi".into(),
            proxy_cpu_limit: "2000m".into(),
            proxy_memory_limit: "1Gi".into(),
            proxy_token_seconds: 43200,
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Namespaces the injector never touches, whatever their labels say: the
/// cluster's own, and the mesh's (its controller cannot wait for itself).
pub fn is_system_namespace(namespace: &str, mesh_namespace: &str) -> bool {
    matches!(namespace, "kube-system" | "kube-public" | "kube-node-lease") || namespace == mesh_namespace
}
