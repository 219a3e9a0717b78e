//! `DestinationRule` (networking.istio.io/v1alpha3, also served as v1beta1
//! and v1): the policies applied to traffic for a service after routing has
//! chosen it (load balancing, connection pools, outlier detection, upstream
//! TLS) and the named subsets routes refer to. Fields follow Istio's current
//! `networking/v1alpha3/destination_rule.proto`, deprecated fields included.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::api::networking::{PortSelector, WorkloadSelector};
use crate::api::schema::one_of;
use crate::api::status::ConfigStatus;

/// Policies for traffic to one service, applied by the client side once a
/// route has chosen the service, and the named subsets of its endpoints.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "DestinationRule",
    namespaced,
    status = "ConfigStatus",
    derive = "PartialEq",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".spec.host",
        description = "The service this rule's policies apply to."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio policies for traffic to one service once routing has chosen it (load balancing, connection pool limits, outlier detection, upstream TLS), and the named subsets of its endpoints that routes can target."
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service the rule applies to, as named in the registry: a
    /// Kubernetes Service or a ServiceEntry host, e.g.
    /// "reviews.default.svc.cluster.local"; a leading `*.` wildcard is
    /// allowed. A short name such as "reviews" resolves in the namespace of
    /// this rule. Required.
    pub host: String,

    /// The policies for all traffic to the host, unless a subset or port
    /// overrides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,

    /// Named groups of the host's endpoints, selected by labels, that routes
    /// can send traffic to (a VirtualService destination's `subset`), each
    /// optionally with its own policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,

    /// Namespaces whose sidecars and gateways use this rule: "." for this
    /// namespace only, "*" for all. Unset exports to all namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,

    /// Restricts the rule to the workloads (in this namespace) whose labels
    /// match; unset applies it to every workload it is exported to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// The policies for traffic to a service, a subset or a port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// How requests are spread over the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,

    /// Limits on the connections and requests to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,

    /// When to take failing endpoints out of the load-balancing pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// TLS settings for connections to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,

    /// Policies for individual ports, overriding the ones above for that
    /// port. A port-level setting replaces the whole corresponding setting
    /// (e.g. all of `loadBalancer`), not just the fields it sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,

    /// Tunnel TCP connections to the service through a proxy (HTTP CONNECT
    /// or POST) instead of connecting directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,

    /// Send a PROXY protocol header on connections to the service, carrying
    /// the original client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,

    /// Caps concurrent retries relative to the requests in flight, so that
    /// retries cannot multiply load on a struggling service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// The policies for one port of the service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The service port these policies apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,

    /// How requests on this port are spread over the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,

    /// Limits on the connections and requests on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,

    /// When to take failing endpoints out of the pool for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// TLS settings for connections on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Tunnelling of TCP connections through an intermediate proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSettings {
    /// The tunnelling method: "CONNECT" (HTTP CONNECT, the default) or
    /// "POST" (HTTP POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// The host (name or IP address) the tunnel is opened to, e.g.
    /// "egress.example.com". Required.
    pub target_host: String,

    /// The port the tunnel is opened to, e.g. 443. Required.
    pub target_port: u32,
}

/// PROXY protocol settings for connections to the service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// Which PROXY protocol version to send; defaults to V1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

// Each enum's doc comment doubles as the description of the field that
// holds it (the CRD schema of an optional enum field carries the enum's
// description, not the field's), so it names the field's purpose and values.

/// The PROXY protocol version to send: V1 (text header, the default) or V2
/// (binary header).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProxyProtocolVersion {
    /// Version 1, a human-readable text header.
    V1,
    /// Version 2, a binary header.
    V2,
}

/// A cap on concurrent retries, as a share of the requests in flight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Concurrent retries allowed, as a percentage (0.0-100.0) of active and
    /// pending requests, e.g. 20.0; defaults to 20%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,

    /// Concurrent retries always allowed regardless of `percent`, e.g. 3;
    /// defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// A named group of a service's endpoints, picked by labels, with optional
/// policies of its own.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// The subset's name, used as `subset` in route destinations, e.g.
    /// "v1". Required.
    pub name: String,

    /// Labels an endpoint must all carry to belong to the subset, e.g.
    /// {version: v1}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Policies for traffic to this subset; a setting given here replaces
    /// the rule-level setting of the same name (only `portLevelSettings`
    /// entries are combined by port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// How requests are spread over a service's endpoints: a simple algorithm
/// or consistent hashing, plus locality preferences and slow start.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = load_balancer_oneof)]
pub struct LoadBalancerSettings {
    /// A standard algorithm. Excludes `consistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,

    /// Session affinity by hashing a request property, so that requests
    /// with the same value reach the same endpoint. Excludes `simple`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,

    /// Locality-aware load balancing: how traffic is weighted between and
    /// fails over across regions, zones and sub-zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,

    /// Deprecated: use `warmup`. How long a new endpoint's share of traffic
    /// ramps up after it joins, as a duration such as "60s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<String>,

    /// Slow start: ramp up the traffic sent to newly added endpoints instead
    /// of giving them a full share at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

fn load_balancer_oneof(s: &mut Schema) {
    one_of(s, &["simple", "consistentHash"])
}

/// A standard load-balancing algorithm: ROUND_ROBIN, LEAST_REQUEST, RANDOM,
/// PASSTHROUGH (no balancing: connect to the address the caller used),
/// LEAST_CONN (deprecated, same as LEAST_REQUEST) or UNSPECIFIED (the mesh
/// picks, currently LEAST_REQUEST).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Not chosen: the proxy picks its default (LEAST_REQUEST).
    Unspecified,
    /// Deprecated: use LEAST_REQUEST.
    LeastConn,
    /// A uniformly random endpoint; can beat round robin when there is no
    /// health checking.
    Random,
    /// Forward to the address the caller connected to, without balancing;
    /// for advanced cases only.
    Passthrough,
    /// Each endpoint in turn.
    RoundRobin,
    /// Of two random endpoints, the one with fewer outstanding requests.
    LeastRequest,
}

/// Consistent-hash load balancing: what to hash (exactly one of the header,
/// cookie, source IP or query parameter) and which hashing algorithm to use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = consistent_hash_oneofs)]
pub struct ConsistentHashLb {
    /// Hash the value of this request header, e.g. "x-user-id".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,

    /// Hash the value of this cookie, which the proxy creates when the
    /// request lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,

    /// Hash the client's source IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,

    /// Hash the value of this query parameter, e.g. "session".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,

    /// Use the ring hash (ketama) algorithm. Excludes `maglev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,

    /// Use the Maglev algorithm. Excludes `ringHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,

    /// Deprecated: use `ringHash.minimumRingSize`. Minimum number of virtual
    /// nodes on the hash ring, e.g. 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

fn consistent_hash_oneofs(s: &mut Schema) {
    one_of(s, &["httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"]);
    one_of(s, &["ringHash", "maglev"]);
}

/// Ring hash (ketama) settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring, e.g. 1024; larger rings
    /// spread load more evenly but take longer to build. Defaults to 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev hashing settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MagLev {
    /// Size of the lookup table, a prime number, e.g. 65537 (the default);
    /// at least 100 times the number of endpoints works best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// The cookie hashed for consistent-hash load balancing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    /// The cookie's name, e.g. "session-affinity". Required.
    pub name: String,

    /// The Path of the cookie the proxy creates, e.g. "/".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Lifetime of the cookie the proxy creates, as a duration such as
    /// "3600s"; unset or "0s" makes it a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,

    /// Extra attributes for the cookie the proxy creates, e.g. SameSite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<HttpCookieAttribute>,
}

/// One attribute of a generated cookie.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookieAttribute {
    /// The attribute name, e.g. "SameSite". Required.
    pub name: String,

    /// The attribute value, e.g. "Strict"; unset for flag attributes such as
    /// "Secure".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Locality-aware load balancing. Localities are written
/// `region/zone/sub-zone`, with `*` as a wildcard for a trailing part. Set
/// at most one of `distribute`, `failover` and `failoverPriority`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLoadBalancerSetting {
    /// Explicit traffic weights from each client locality to endpoint
    /// localities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,

    /// Which region to fail over to when a region's endpoints are unhealthy.
    /// Needs outlier detection to take effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,

    /// Ordered labels that rank endpoints by how many leading labels they
    /// share with the client, preferring the closest, e.g.
    /// ["topology.istio.io/network", "topology.kubernetes.io/region"]. An
    /// entry `label=value` compares against that value instead of the
    /// client's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,

    /// Turns locality load balancing on or off for this service, overriding
    /// the mesh-wide setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Traffic weights from clients in one locality to endpoint localities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityDistribute {
    /// The clients' locality, e.g. "us-west/zone1/*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,

    /// Endpoint localities and the percentage of traffic each receives,
    /// adding up to 100, e.g. {"us-west/zone1/*": 80, "us-west/zone2/*": 20}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

/// A region-to-region failover step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityFailover {
    /// The region whose clients fail over, e.g. "us-east".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,

    /// The region that takes the traffic when `from` has no healthy
    /// endpoints, e.g. "eu-west".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Slow start for new endpoints: their share of traffic grows over a
/// period instead of starting at full weight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    /// How long the ramp-up lasts, as a duration such as "60s". Required.
    pub duration: String,

    /// The share of its full traffic, in percent (0.0-100.0), an endpoint
    /// gets when the ramp-up starts, e.g. 10.0; defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,

    /// The curve of the ramp-up: 1.0 is linear, higher values grow slower at
    /// first and faster later; defaults to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Limits on connections and requests to each endpoint of the service,
/// acting as a circuit breaker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// Limits that apply to both TCP and HTTP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,

    /// Limits specific to HTTP/1.1, HTTP/2 and gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// Connection limits and timeouts common to TCP and HTTP.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Maximum number of HTTP/1.1 or TCP connections to each endpoint, e.g.
    /// 100; defaults to 2^32-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,

    /// How long to wait for a TCP connection to be established, as a
    /// duration such as "30ms"; defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,

    /// Enables TCP keepalive probes (SO_KEEPALIVE) on the connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,

    /// Maximum lifetime of a connection, after which it is drained and
    /// closed, as a duration of at least 1ms such as "1h". Unset means no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<String>,

    /// How long a TCP connection may sit without traffic before it is
    /// closed, as a duration such as "1h"; defaults to 1h, "0s" disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// TCP keepalive settings; unset fields use the operating system's values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Unanswered probes after which the connection is considered dead,
    /// e.g. 9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,

    /// Idle time before the first probe, as a duration such as "7200s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,

    /// Time between probes, as a duration such as "75s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Request limits and HTTP connection behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Maximum number of requests queued while waiting for a connection,
    /// e.g. 1024; defaults to 2^32-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,

    /// Maximum number of requests in flight to the service, over HTTP/1.1
    /// or HTTP/2 despite the name; defaults to 2^32-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,

    /// Maximum number of requests sent over one connection before it is
    /// closed, e.g. 1 to disable keep-alive; 0 or unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,

    /// Maximum number of retries in flight to all endpoints at once, e.g. 3;
    /// defaults to 2^32-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,

    /// How long a connection may sit without active requests before it is
    /// closed, as a duration such as "30s"; defaults to 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,

    /// Whether HTTP/1.1 connections to the service are upgraded to HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,

    /// Speak to the service in the protocol the client used (HTTP/1.1 or
    /// HTTP/2) instead of the one configured for the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,

    /// Maximum number of concurrent streams on one HTTP/2 connection, e.g.
    /// 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
}

/// Whether HTTP/1.1 connections to the service are upgraded to HTTP/2:
/// DEFAULT (follow the mesh-wide setting), DO_NOT_UPGRADE or UPGRADE.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Follow the mesh-wide default.
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// Upgrade to HTTP/2 when the destination supports it.
    Upgrade,
}

/// Ejection of endpoints that keep failing from the load-balancing pool,
/// for a time that grows with each ejection. Applies to HTTP and TCP.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Count locally originated failures (timeouts, connection resets)
    /// separately from errors returned by the endpoint, ejecting on
    /// `consecutiveLocalOriginFailures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,

    /// Consecutive locally originated failures that eject an endpoint, e.g.
    /// 5; only used with `splitExternalLocalOriginErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,

    /// Consecutive gateway errors (HTTP 502, 503, 504, or a TCP connect
    /// failure or timeout) that eject an endpoint; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,

    /// Consecutive 5xx errors (or TCP connect failures and timeouts) that
    /// eject an endpoint, e.g. 7; defaults to 5, 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,

    /// How often endpoints are analysed for ejection, as a duration of at
    /// least 1ms such as "30s"; defaults to 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,

    /// Base ejection time, multiplied by the number of times the endpoint
    /// has been ejected, as a duration such as "30s"; defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,

    /// Maximum percentage of the pool that may be ejected at once, e.g. 10;
    /// defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,

    /// Outlier detection is suspended while fewer than this percentage of
    /// the pool's endpoints are healthy, e.g. 50; defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,

    /// Deprecated: use `consecutive5xxErrors` or
    /// `consecutiveGatewayErrors`. Consecutive errors that eject an
    /// endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
}

/// TLS settings for connections from the proxy to the service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// Whether and how connections are secured with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,

    /// Path of the client certificate file presented in MUTUAL mode, e.g.
    /// "/etc/certs/client.pem". Required in MUTUAL mode unless
    /// `credentialName` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,

    /// Path of the client's private key file in MUTUAL mode. Required in
    /// MUTUAL mode unless `credentialName` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    /// Path of the CA certificates file used to verify the server's
    /// certificate, e.g. "/etc/certs/ca.pem". Unset falls back to the
    /// proxy's default trust roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,

    /// Name of a Secret (or ConfigMap, for CA certificates only) holding the
    /// client certificate, key and/or CA certificates, instead of file
    /// paths. Only honoured for gateways and sidecars in the Secret's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,

    /// Identities the server certificate's subject alternative names must
    /// include one of, e.g. ["spiffe://cluster.local/ns/default/sa/reviews"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,

    /// The server name (SNI) sent in the TLS handshake, e.g.
    /// "api.example.com".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,

    /// Skip verifying the server certificate's CA signature and subject
    /// alternative names. Insecure; defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,

    /// Path of a certificate revocation list (CRL) file used when verifying
    /// the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// Whether and how connections to the service use TLS: DISABLE (no TLS),
/// SIMPLE (TLS verifying the server), MUTUAL (mutual TLS with the client
/// certificate given here) or ISTIO_MUTUAL (mutual TLS with the workload
/// certificates Istio issues).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plain connections, no TLS.
    Disable,
    /// TLS that verifies the server; the client presents no certificate.
    Simple,
    /// Mutual TLS with the client certificate and key given in this policy.
    Mutual,
    /// Mutual TLS with the workload certificates Istio issues, as between
    /// sidecars; the other certificate fields must be empty.
    IstioMutual,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    fn spec_schema() -> Value {
        let crd = serde_json::to_value(DestinationRule::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn crd_has_names_and_columns() {
        let crd = DestinationRule::crd();
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: DestinationRule"));
        assert_eq!(crd.metadata.name.as_deref(), Some("destinationrules.networking.istio.io"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["dr".to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["istio-io".to_string(), "networking-istio-io".to_string()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha3");
        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(columns, vec![("Host", ".spec.host"), ("Age", ".metadata.creationTimestamp")]);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_string(&version.schema).unwrap();
        assert!(!schema.contains("\"$ref\"") && !schema.contains("\"const\""));
    }

    #[test]
    fn schema_has_enums_oneofs_and_required_fields() {
        let spec = spec_schema();
        assert_eq!(spec["required"], json!(["host"]));
        let policy = &spec["properties"]["trafficPolicy"]["properties"];
        let lb = &policy["loadBalancer"];
        assert_eq!(
            lb["properties"]["simple"]["enum"],
            json!(["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"])
        );
        assert_eq!(lb["oneOf"].as_array().unwrap().len(), 3, "{lb}");
        // Two oneofs on ConsistentHashLB: both hold, under allOf.
        let hash = &lb["properties"]["consistentHash"];
        assert_eq!(hash["allOf"].as_array().unwrap().len(), 2, "{hash}");
        assert_eq!(
            policy["tls"]["properties"]["mode"]["enum"],
            json!(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"])
        );
        assert_eq!(
            policy["connectionPool"]["properties"]["http"]["properties"]["h2UpgradePolicy"]["enum"],
            json!(["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"])
        );
        assert!(policy["outlierDetection"]["properties"]["consecutive5xxErrors"].is_object());
        assert!(
            policy["connectionPool"]["properties"]["http"]["properties"]["http1MaxPendingRequests"]
                .is_object()
        );
        assert_eq!(policy["tunnel"]["required"], json!(["targetHost", "targetPort"]));
        assert_eq!(spec["properties"]["subsets"]["items"]["required"], json!(["name"]));
    }

    const EXAMPLE: &str = r#"
host: reviews.prod.svc.cluster.local
exportTo:
- "."
workloadSelector:
  matchLabels:
    app: productpage
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie:
        name: affinity
        path: /
        ttl: 3600s
        attributes:
        - name: SameSite
          value: Strict
        - name: Secure
      ringHash:
        minimumRingSize: 2048
    localityLbSetting:
      enabled: true
      distribute:
      - from: us-west/zone1/*
        to:
          us-west/zone1/*: 80
          us-west/zone2/*: 20
      failover:
      - from: us-east
        to: eu-west
      failoverPriority:
      - topology.istio.io/network
      - topology.kubernetes.io/region
    warmup:
      duration: 60s
      minimumPercent: 10.0
      aggression: 1.5
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 30ms
      maxConnectionDuration: 1h
      idleTimeout: 30m
      tcpKeepalive:
        probes: 9
        time: 7200s
        interval: 75s
    http:
      http1MaxPendingRequests: 1024
      http2MaxRequests: 1000
      maxRequestsPerConnection: 10
      maxRetries: 3
      idleTimeout: 30s
      h2UpgradePolicy: UPGRADE
      useClientProtocol: false
      maxConcurrentStreams: 100
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 3
    consecutiveLocalOriginFailures: 4
    splitExternalLocalOriginErrors: true
    consecutiveErrors: 5
    interval: 5m
    baseEjectionTime: 15m
    maxEjectionPercent: 100
    minHealthPercent: 50
  tls:
    mode: MUTUAL
    clientCertificate: /etc/certs/client.pem
    privateKey: /etc/certs/key.pem
    caCertificates: /etc/certs/ca.pem
    caCrl: /etc/certs/crl.pem
    subjectAltNames:
    - reviews.example.com
    sni: reviews.example.com
    insecureSkipVerify: false
  portLevelSettings:
  - port:
      number: 80
    loadBalancer:
      simple: LEAST_REQUEST
      warmupDurationSecs: 30s
    connectionPool:
      tcp:
        maxConnections: 10
    outlierDetection:
      consecutive5xxErrors: 2
    tls:
      mode: SIMPLE
      credentialName: reviews-ca
  - port:
      number: 443
    loadBalancer:
      consistentHash:
        useSourceIp: true
        maglev:
          tableSize: 65537
  tunnel:
    protocol: CONNECT
    targetHost: egress.example.com
    targetPort: 3128
  proxyProtocol:
    version: V2
  retryBudget:
    percent: 25.0
    minRetryConcurrency: 5
subsets:
- name: v1
  labels:
    version: v1
- name: v2
  labels:
    version: v2
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        minimumRingSize: 1024
    tls:
      mode: ISTIO_MUTUAL
- name: v3
  labels:
    version: v3
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpQueryParameterName: session
    connectionPool:
      http:
        h2UpgradePolicy: DO_NOT_UPGRADE
    tls:
      mode: DISABLE
"#;

    #[test]
    fn example_round_trips() {
        let original: Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        let spec: DestinationRuleSpec = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        let policy = spec.traffic_policy.as_ref().unwrap();
        assert_eq!(policy.tls.as_ref().unwrap().mode, Some(TlsMode::Mutual));
        assert_eq!(policy.outlier_detection.as_ref().unwrap().consecutive_5xx_errors, Some(7));
        assert_eq!(serde_json::to_value(&spec).unwrap(), original);
        let again: DestinationRuleSpec =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn bookinfo_samples_round_trip() {
        let docs = crate::api::samples::of_kind("DestinationRule");
        assert!(docs.len() >= 10, "only {} DestinationRules found", docs.len());
        for (file, doc) in docs {
            let name = format!("{file} {}", doc["metadata"]["name"]);
            let dr: DestinationRule =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(serde_json::to_value(&dr.spec).unwrap(), doc["spec"], "{name}");
        }
    }
}
