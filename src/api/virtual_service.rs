//! `VirtualService` (networking.istio.io/v1alpha3, also served as v1beta1 and
//! v1): how requests addressed to a set of hosts are matched and routed, for
//! HTTP, TLS (by SNI) and opaque TCP traffic. Fields follow Istio's current
//! `networking/v1alpha3/virtual_service.proto`, deprecated fields included,
//! so existing Istio YAML reads back unchanged.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::api::networking::{Percent, PortSelector};
use crate::api::schema::one_of;
use crate::api::status::ConfigStatus;

/// Routing rules for traffic sent to a set of hosts: each protocol section
/// is an ordered list, and the first rule whose match fits a request or
/// connection decides where it goes.
// Two printer columns are both `type_ = "string"`, which clippy mistakes
// for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "VirtualService",
    namespaced,
    status = "ConfigStatus",
    derive = "PartialEq",
    shortname = "vs",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn(
        name = "Gateways",
        type_ = "string",
        json_path = ".spec.gateways",
        description = "The gateways (and `mesh` for sidecars) that apply these routes."
    ),
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hosts",
        description = "The hosts whose traffic these routes govern."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "How long ago the object was created."
    ),
    doc = "Istio traffic routing for a set of hosts: ordered HTTP, TLS and TCP rules that match requests or connections and send them to destinations, with rewrites, redirects, retries, timeouts, fault injection and mirroring."
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// The hosts these rules apply to, as clients address them: DNS names
    /// (a leading `*.` wildcard is allowed), IP addresses, or Kubernetes
    /// short names such as "reviews", which resolve in the namespace of this
    /// object, not the service's. Prefer fully-qualified names. Must be empty
    /// in a VirtualService that is only used as a delegate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// Where the rules are applied: gateway names, written `namespace/name`
    /// or just `name` for one in this namespace, and the reserved name `mesh`
    /// for every sidecar. Unset means `mesh` only; to cover sidecars as well
    /// as gateways, list `mesh` explicitly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    /// Ordered rules for HTTP/1.1, HTTP/2 and gRPC traffic (service ports of
    /// those protocols, gateway ports speaking them or terminating TLS). The
    /// first rule that matches a request is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,

    /// Ordered rules for TLS and HTTPS traffic that is passed through
    /// unterminated, routed by the SNI of the ClientHello. The first rule that
    /// matches a connection is used; TLS ports without a rule are treated as
    /// opaque TCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,

    /// Ordered rules for opaque TCP traffic, i.e. ports that are neither HTTP
    /// nor TLS. The first rule that matches a connection is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,

    /// Namespaces whose sidecars and gateways may use this VirtualService:
    /// "." for this namespace only, "*" for all. Unset exports to all
    /// namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// A service (optionally one subset and port of it) that a rule sends traffic
/// to. The host must be known to the mesh: a Kubernetes Service or a
/// ServiceEntry host; traffic to unknown hosts is dropped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The service's name in the registry, e.g.
    /// "reviews.default.svc.cluster.local". A short name such as "reviews"
    /// resolves in the namespace of the rule, not of the service. Required.
    pub host: String,

    /// A subset of the service's endpoints, by a name declared in the
    /// `subsets` of a DestinationRule for the same host, e.g. "v2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,

    /// The service port to use; may be left out when the service exposes a
    /// single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// One HTTP rule: its match conditions and what to do with matching
/// requests (route, redirect, answer directly or delegate), plus the
/// rewrites, timeout, retries, faults, mirroring, CORS and header changes to
/// apply on the way.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// A name for the rule, logged in access logs (joined with the matching
    /// match block's name) to help debugging, e.g. "reviews-v2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Conditions a request must meet for the rule to apply. Conditions
    /// within one entry must all hold; the rule applies when any entry holds.
    /// Unset matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<HttpMatchRequest>,

    /// The destinations matching requests are forwarded to, with relative
    /// weights for splitting traffic between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,

    /// Answer matching requests with an HTTP redirect instead of forwarding
    /// them. Excludes `route`, `directResponse` and `delegate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,

    /// Answer matching requests with a fixed status and body instead of
    /// forwarding them. Excludes `route`, `redirect` and `delegate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,

    /// Hand matching requests to the HTTP rules of another VirtualService.
    /// Only allowed when `route` and `redirect` are unset; delegation is one
    /// level deep, and the delegate's matches must narrow this rule's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,

    /// Rewrite the path and/or Host header before forwarding. Cannot be
    /// combined with `redirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,

    /// How long to wait for the whole request, retries included, as a
    /// duration such as "5s" or "250ms". Unset means no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,

    /// How to retry failed requests. Unset: Istio's default policy, 2
    /// retries on connect-failure, refused-stream, unavailable, cancelled
    /// and 503, each to another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,

    /// Delays and/or aborts to inject into matching requests, for resilience
    /// testing. The rule's timeout and retries do not cover the faults it
    /// injects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,

    /// Also send a copy of each request to this destination, without
    /// waiting for or returning its response. Superseded by `mirrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,

    /// Destinations that each receive a copy of requests, fire-and-forget,
    /// each with its own share of the traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,

    /// Deprecated: use `mirrorPercentage`. Whole percentage (0-100) of
    /// requests copied to `mirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,

    /// Deprecated: the protobuf spelling of `mirrorPercent`, which Istio's
    /// schema also accepts. Whole percentage (0-100) of requests copied to
    /// `mirror`.
    #[serde(default, rename = "mirror_percent", skip_serializing_if = "Option::is_none")]
    pub mirror_percent_proto_name: Option<u32>,

    /// Share of requests copied to `mirror`, 0.0-100.0. Unset copies all of
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,

    /// The Cross-Origin Resource Sharing (CORS) policy to enforce for
    /// matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,

    /// Header changes applied to every request this rule forwards and to
    /// every response it returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,

    /// Istio 1.0: use `headers.request.add`. Headers appended to each
    /// request this rule forwards, like `appendRequestHeaders`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,

    /// Istio 1.1: use `headers.request.add`. Headers appended to each
    /// request this rule forwards.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_request_headers: BTreeMap<String, String>,

    /// Istio 1.1: use `headers.request.remove`. Names of headers removed
    /// from each request this rule forwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_request_headers: Vec<String>,

    /// Istio 1.1: use `headers.response.add`. Headers appended to each
    /// response this rule returns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_response_headers: BTreeMap<String, String>,

    /// Istio 1.1: use `headers.response.remove`. Names of headers removed
    /// from each response this rule returns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_response_headers: Vec<String>,
}

/// A reference to the VirtualService whose HTTP rules handle the requests a
/// rule delegates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    /// The name of the delegate VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// The namespace of the delegate VirtualService; defaults to the
    /// delegating VirtualService's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Header changes for requests sent to a destination and for the responses
/// sent back to the caller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Changes made to the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,

    /// Changes made to the response before it is returned to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Header edits: overwrite, append to, or delete headers by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Headers to set, replacing any existing value, e.g. {x-env: prod}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,

    /// Values to append to headers, which become comma-separated lists when
    /// the header already exists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,

    /// Names of headers to delete, e.g. ["x-internal-debug"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// One rule for unterminated TLS or HTTPS traffic, routed by SNI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// Conditions a connection must meet for the rule to apply; conditions
    /// within one entry must all hold, and any one entry is enough. Required.
    pub r#match: Vec<TlsMatchAttributes>,

    /// The destinations matching connections are forwarded to, with relative
    /// weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// One rule for opaque TCP traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// Conditions a connection must meet for the rule to apply; conditions
    /// within one entry must all hold, and any one entry is enough. Unset
    /// matches every connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<L4MatchAttributes>,

    /// The destinations matching connections are forwarded to, with relative
    /// weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions on an HTTP request; every condition that is set must hold.
/// At least one must be set, and a delegate VirtualService may not use regex
/// matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// A name for this match block, logged in access logs together with the
    /// rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Condition on the request path, e.g. {prefix: /api/}. Case-sensitive
    /// unless `ignoreUriCase` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,

    /// Condition on the URI scheme, e.g. {exact: https}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,

    /// Condition on the HTTP method, e.g. {exact: GET}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,

    /// Condition on the authority (Host header), e.g. {prefix: api.}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,

    /// Conditions on request headers, keyed by lowercase header name, e.g.
    /// {end-user: {exact: jason}}. An empty condition ({}) only requires the
    /// header to be present. The keys uri, scheme, method and authority are
    /// ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,

    /// The destination port the request was addressed to, e.g. 8080. Only
    /// needed when the host serves several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// Labels the calling workload must carry, e.g. {app: productpage}. When
    /// the VirtualService lists gateways, `mesh` must be among them for this
    /// to take effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    /// Gateways this match applies to, overriding the VirtualService's
    /// top-level `gateways` for this block; `mesh` means the sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    /// Conditions on query parameters, keyed by parameter name, e.g.
    /// {debug: {exact: "true"}}; {exact: ""} matches a parameter given
    /// without a value. Prefix matches are not supported.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,

    /// Match `uri` exact and prefix conditions case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,

    /// Header conditions that must NOT hold, in the same form as `headers`:
    /// a request matching any of them does not match this block.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,

    /// The namespace the calling workload must run in. When the
    /// VirtualService lists gateways, `mesh` must be among them for this to
    /// take effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,

    /// A human-readable prefix for the statistics emitted for requests
    /// matching this block, e.g. "reviews-v2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A destination of an HTTP rule with its share of the traffic and its own
/// header changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where requests go. Required.
    pub destination: Destination,

    /// Relative share of the rule's traffic for this destination; weights
    /// across a rule's destinations should add up to 100, e.g. 25. A single
    /// destination gets all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,

    /// Header changes applied only to requests sent to, and responses from,
    /// this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,

    /// Istio 1.1: use `headers.request.add`. Headers appended to each
    /// request sent to this destination.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_request_headers: BTreeMap<String, String>,

    /// Istio 1.1: use `headers.request.remove`. Names of headers removed
    /// from each request sent to this destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_request_headers: Vec<String>,

    /// Istio 1.1: use `headers.response.add`. Headers appended to each
    /// response from this destination.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_response_headers: BTreeMap<String, String>,

    /// Istio 1.1: use `headers.response.remove`. Names of headers removed
    /// from each response from this destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_response_headers: Vec<String>,
}

/// A destination of a TLS or TCP rule with its share of the connections.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where connections go. Required.
    pub destination: Destination,

    /// Relative share of the rule's connections for this destination, e.g.
    /// 25. A single destination gets all connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// Conditions on a TCP connection; every condition that is set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Destination IP addresses or CIDR ranges, e.g. ["10.1.0.0/16"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,

    /// The destination port of the connection, e.g. 27017.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// Source IP address or CIDR range, e.g. "10.2.3.0/24".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,

    /// Labels the calling workload must carry. When the VirtualService lists
    /// gateways, `mesh` must be among them for this to take effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    /// Gateways this match applies to, overriding the top-level `gateways`
    /// for this block; `mesh` means the sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    /// The namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// Conditions on a TLS connection; every condition that is set must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    /// Server names (SNI) to match, e.g. ["login.example.com"]; a leading
    /// `*.` wildcard is allowed. Each must fall within the VirtualService's
    /// hosts. Required.
    pub sni_hosts: Vec<String>,

    /// Destination IP addresses or CIDR ranges, e.g. ["10.1.0.0/16"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,

    /// The destination port of the connection, e.g. 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// Labels the calling workload must carry. When the VirtualService lists
    /// gateways, `mesh` must be among them for this to take effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,

    /// Gateways this match applies to, overriding the top-level `gateways`
    /// for this block; `mesh` means the sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    /// The namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A redirect sent back instead of forwarding the request: any part that is
/// set replaces the corresponding part of the request's URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = http_redirect_oneof)]
pub struct HttpRedirect {
    /// The path to redirect to, replacing the whole path whether the rule
    /// matched it exactly or by prefix, e.g. "/v1/bookRatings".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    /// The authority (host) to redirect to, e.g. "newratings.example.com".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,

    /// The port to redirect to, e.g. 8443. Excludes `derivePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,

    /// How to choose the redirect's port when `port` is not given. Excludes
    /// `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,

    /// The scheme to redirect to, e.g. "https". Unset keeps the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,

    /// The HTTP status of the redirect response, e.g. 302; defaults to 301.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

fn http_redirect_oneof(s: &mut Schema) {
    one_of(s, &["port", "derivePort"])
}

// Each enum's doc comment doubles as the description of the field that
// holds it (the CRD schema of an optional enum field carries the enum's
// description, not the field's), so it names the field's purpose and values.

/// How a redirect picks its port when `port` is not given:
/// FROM_PROTOCOL_DEFAULT (80 for http, 443 for https) or FROM_REQUEST_PORT
/// (the port the request arrived on).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// The default port of the redirect's scheme: 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port the original request was received on.
    FromRequestPort,
}

/// A fixed response returned instead of forwarding the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    /// The HTTP status of the response, e.g. 503. Required.
    pub status: u32,

    /// The response body; unset sends an empty body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// The body of a direct response, given as text or as binary data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = http_body_oneof)]
pub struct HttpBody {
    /// The body as text, e.g. "{\"error\": \"unavailable\"}". Excludes
    /// `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,

    /// The body as base64-encoded binary data, e.g. "aGVsbG8=". Excludes
    /// `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

fn http_body_oneof(s: &mut Schema) {
    one_of(s, &["string", "bytes"])
}

/// Changes made to a request's path and Host header before it is forwarded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replacement for the path, or for the matched prefix when the rule
    /// matched `uri` by prefix, e.g. "/v1/bookRatings".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    /// Replacement for the authority (Host header), e.g.
    /// "ratings.internal".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,

    /// Rewrite the path with a regular expression. Cannot be combined with
    /// `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regular-expression substitution applied to the request path.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// The RE2 regular expression to look for, e.g. "^/service/([^/]+)(/.*)$".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<String>,

    /// What to put in place of each match; `\1`, `\2`... insert capture
    /// groups, e.g. "\\2/instance/\\1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// A condition on a string (path, header value, ...): exactly one of exact,
/// prefix or regex. Matching is case-sensitive.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = string_match_oneof)]
pub struct StringMatch {
    /// The string must equal this value, e.g. "/productpage".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,

    /// The string must start with this value, e.g. "/api/".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// The whole string must match this RE2 regular expression, e.g.
    /// "^/v[0-9]+/.*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

fn string_match_oneof(s: &mut Schema) {
    one_of(s, &["exact", "prefix", "regex"])
}

/// When and how often a failed HTTP request is retried.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Maximum number of retries for a request, e.g. 3; 0 (or unset)
    /// disables retries.
    /// How many actually happen is also bounded by the route's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    /// Timeout for each attempt, the first included, as a duration of at
    /// least 1ms, e.g. "2s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,

    /// Comma-separated conditions that trigger a retry, using Envoy's
    /// x-envoy-retry-on and x-envoy-retry-grpc-on names, e.g.
    /// "5xx,connect-failure,refused-stream". A bare status code such as
    /// "503" retries on that status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,

    /// Whether retries may go to endpoints in other localities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,

    /// Whether retries avoid the endpoints already tried for this request;
    /// defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,

    /// Base interval of the exponential back-off between retries, as a
    /// duration such as "100ms"; defaults to 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// The Cross-Origin Resource Sharing (CORS) policy for a rule: which
/// browser origins may call it, and with what.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated: use `allowOrigins`. Origins allowed to make CORS
    /// requests, compared exactly; "*" allows any origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,

    /// Origins allowed to make CORS requests; an origin matching any entry is
    /// allowed and echoed in Access-Control-Allow-Origin, e.g.
    /// [{exact: "https://example.com"}].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,

    /// HTTP methods allowed for CORS requests, sent as
    /// Access-Control-Allow-Methods, e.g. ["GET", "POST"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,

    /// Request headers allowed in CORS requests, sent as
    /// Access-Control-Allow-Headers, e.g. ["X-Foo-Bar"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,

    /// Response headers browsers may expose to the calling script, sent as
    /// Access-Control-Expose-Headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,

    /// How long browsers may cache a preflight result, sent as
    /// Access-Control-Max-Age, as a duration such as "24h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,

    /// Whether the actual (non-preflight) request may carry credentials,
    /// sent as Access-Control-Allow-Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,

    /// What to do with a preflight request whose origin is not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// What to do with a CORS preflight request whose origin is not allowed:
/// FORWARD it to the service (the default, also for UNSPECIFIED) or IGNORE
/// it, answering locally without CORS headers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Not set; behaves like FORWARD.
    Unspecified,
    /// Pass the preflight on to the upstream service.
    Forward,
    /// Answer the preflight locally without CORS headers, not forwarding it.
    Ignore,
}

/// Faults injected into requests to test how callers cope. Delay and abort
/// are independent: both may be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    /// Hold requests for a while before forwarding them, like a slow
    /// network or overloaded upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,

    /// Fail requests immediately with an error, as if the upstream had
    /// failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Latency added to a share of requests before they are forwarded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = fault_delay_oneof)]
pub struct FaultDelay {
    /// Deprecated: use `percentage`. Whole percentage (0-100) of requests
    /// to delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,

    /// A fixed delay of at least 1ms, e.g. "5s". Excludes
    /// `exponentialDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,

    /// An exponentially distributed delay with this mean, e.g. "1s".
    /// Excludes `fixedDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<String>,

    /// Share of requests to delay, 0.0-100.0, e.g. {value: 0.1}. Unset (with
    /// no `percent`) delays no request, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

fn fault_delay_oneof(s: &mut Schema) {
    one_of(s, &["fixedDelay", "exponentialDelay"])
}

/// An error returned, without forwarding, for a share of requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = fault_abort_oneof)]
pub struct FaultAbort {
    /// The HTTP status to answer with, e.g. 503. Excludes `grpcStatus` and
    /// `http2Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,

    /// The gRPC status to answer with, by name or number, e.g.
    /// "UNAVAILABLE". Excludes `httpStatus` and `http2Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,

    /// The HTTP/2 error to reset the stream with, e.g. "REFUSED_STREAM".
    /// Excludes `httpStatus` and `grpcStatus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,

    /// Share of requests to abort, 0.0-100.0, e.g. {value: 0.1}. Unset (with
    /// no `percent`) aborts no request, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,

    /// Istio 1.1's field: use `percentage`. Whole percentage (0-100) of
    /// requests to abort, read when `percentage` is unset, as Istio 1.1
    /// did; today's Istio no longer has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

fn fault_abort_oneof(s: &mut Schema) {
    one_of(s, &["httpStatus", "grpcStatus", "http2Error"])
}

/// A destination that receives copies of requests, with the share of
/// requests to copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Where the copies go; responses from it are ignored. Required.
    pub destination: Destination,

    /// Share of requests to copy, 0.0-100.0. Unset copies all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    /// Walks a schema and fails on constructs a structural CRD schema may not
    /// contain: references, `const`, or types/properties inside `oneOf`.
    fn assert_structural(path: &str, v: &Value) {
        match v {
            Value::Object(map) => {
                assert!(!map.contains_key("$ref"), "{path} has a $ref");
                assert!(!map.contains_key("const"), "{path} has a const");
                if let Some(Value::Array(branches)) = map.get("oneOf") {
                    for b in branches {
                        assert!(b.get("type").is_none() && b.get("properties").is_none(), "{path}: {b}");
                    }
                }
                for (k, child) in map {
                    assert_structural(&format!("{path}/{k}"), child);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| assert_structural(path, i)),
            _ => {}
        }
    }

    fn spec_schema() -> Value {
        let crd = serde_json::to_value(VirtualService::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn crd_has_names_columns_and_structural_schema() {
        let crd = VirtualService::crd();
        assert!(serde_yaml_ng::to_string(&crd).unwrap().contains("kind: VirtualService"));
        assert_eq!(crd.metadata.name.as_deref(), Some("virtualservices.networking.istio.io"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["vs".to_string()]));
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
        assert_eq!(
            columns,
            vec![
                ("Gateways", ".spec.gateways"),
                ("Hosts", ".spec.hosts"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
        assert!(version.subresources.as_ref().unwrap().status.is_some());

        let schema = serde_json::to_value(&version.schema).unwrap();
        assert_structural("", &schema);
    }

    #[test]
    fn schema_has_enums_oneofs_and_descriptions() {
        let spec = spec_schema();
        let http = &spec["properties"]["http"]["items"];
        let cors = &http["properties"]["corsPolicy"];
        assert_eq!(
            cors["properties"]["unmatchedPreflights"]["enum"],
            json!(["UNSPECIFIED", "FORWARD", "IGNORE"])
        );
        let uri = &http["properties"]["match"]["items"]["properties"]["uri"];
        assert_eq!(uri["oneOf"].as_array().unwrap().len(), 4, "{uri}");
        assert!(uri["description"].as_str().unwrap().contains("path"));
        let redirect = &http["properties"]["redirect"];
        assert_eq!(
            redirect["properties"]["derivePort"]["enum"],
            json!(["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"])
        );
        // Both spellings of the deprecated mirror percentage survive pruning.
        assert!(http["properties"]["mirrorPercent"].is_object());
        assert!(http["properties"]["mirror_percent"].is_object());
        // Required protobuf fields are required in the schema.
        assert_eq!(http["properties"]["route"]["items"]["required"], json!(["destination"]));
        let tls_match = &spec["properties"]["tls"]["items"]["properties"]["match"]["items"];
        assert_eq!(tls_match["required"], json!(["sniHosts"]));
        // Every property carries a description for `kubectl explain`.
        fn all_described(path: &str, schema: &Value) {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let p = format!("{path}.{name}");
                    assert!(prop.get("description").is_some(), "{p} has no description");
                    all_described(&p, prop);
                }
            }
            if let Some(items) = schema.get("items") {
                all_described(path, items);
            }
            if let Some(values) = schema.get("additionalProperties") {
                all_described(path, values);
            }
        }
        all_described("spec", &spec);
    }

    const EXAMPLE: &str = r#"
hosts:
- reviews.prod.svc.cluster.local
- "*.bookinfo.example.com"
gateways:
- istio-system/bookinfo-gateway
- mesh
exportTo:
- "."
http:
- name: reviews-v2
  match:
  - name: jason
    uri:
      prefix: /wpcatalog
    scheme:
      exact: https
    method:
      regex: "GET|HEAD"
    authority:
      prefix: bookinfo
    headers:
      end-user:
        exact: jason
      x-canary: {}
    withoutHeaders:
      x-debug:
        exact: "1"
    queryParams:
      version:
        regex: "^v[0-9]+$"
    port: 9080
    sourceLabels:
      app: productpage
    sourceNamespace: frontend
    gateways:
    - mesh
    ignoreUriCase: true
    statPrefix: reviews-jason
  rewrite:
    uri: /newcatalog
    authority: reviews.internal
  route:
  - destination:
      host: reviews.prod.svc.cluster.local
      subset: v2
      port:
        number: 9080
    weight: 75
    headers:
      request:
        set:
          x-route: v2
      response:
        remove:
        - x-internal
  - destination:
      host: reviews.prod.svc.cluster.local
      subset: v1
    weight: 25
  timeout: 5s
  retries:
    attempts: 3
    perTryTimeout: 2s
    retryOn: 5xx,connect-failure,refused-stream
    retryRemoteLocalities: true
    retryIgnorePreviousHosts: false
    backoff: 100ms
  fault:
    delay:
      fixedDelay: 5s
      percentage:
        value: 0.1
    abort:
      httpStatus: 503
      percentage:
        value: 12.5
  mirror:
    host: reviews-shadow
    subset: v3
  mirrorPercentage:
    value: 50.0
  mirrors:
  - destination:
      host: audit
      port:
        number: 8080
    percentage:
      value: 5.0
  corsPolicy:
    allowOrigins:
    - exact: https://example.com
    - regex: "https://.*\\.example\\.org"
    allowOrigin:
    - https://legacy.example.com
    allowMethods: [GET, POST]
    allowHeaders: [X-Foo-Bar]
    exposeHeaders: [X-Trace]
    maxAge: 24h
    allowCredentials: false
    unmatchedPreflights: IGNORE
  headers:
    request:
      add:
        x-via: mesh
    response:
      set:
        cache-control: no-store
- name: legacy-mirror
  route:
  - destination:
      host: ratings
    appendRequestHeaders:
      x-dest: ratings
    removeRequestHeaders:
    - x-drop
    appendResponseHeaders:
      x-from: ratings
    removeResponseHeaders:
    - x-secret
  appendHeaders:
    x-legacy: "1.0"
  appendRequestHeaders:
    x-request: "1.1"
  removeRequestHeaders:
  - x-internal
  appendResponseHeaders:
    x-response: "1.1"
  removeResponseHeaders:
  - server
  mirror:
    host: ratings-shadow
  mirrorPercent: 10
  mirror_percent: 20
  fault:
    delay:
      percent: 5
      exponentialDelay: 1s
    abort:
      grpcStatus: UNAVAILABLE
      percent: 50
- match:
  - uri:
      exact: /old
  redirect:
    uri: /new
    authority: new.example.com
    derivePort: FROM_REQUEST_PORT
    scheme: https
    redirectCode: 302
- match:
  - uri:
      exact: /moved
  redirect:
    port: 8443
- match:
  - uri:
      prefix: /down
  directResponse:
    status: 503
    body:
      string: '{"error": "down"}'
- match:
  - uri:
      prefix: /blob
  directResponse:
    status: 200
    body:
      bytes: aGVsbG8=
- match:
  - uri:
      regex: "^/service/([^/]+)(/.*)$"
  rewrite:
    uriRegexRewrite:
      match: "^/service/([^/]+)(/.*)$"
      rewrite: "\\2/instance/\\1"
  route:
  - destination:
      host: backend
- match:
  - uri:
      prefix: /delegated
  delegate:
    name: productpage
    namespace: nsA
- fault:
    abort:
      http2Error: REFUSED_STREAM
  route:
  - destination:
      host: ratings
tls:
- match:
  - sniHosts:
    - login.bookinfo.example.com
    port: 443
    destinationSubnets:
    - 10.1.0.0/16
    sourceLabels:
      app: gateway
    gateways:
    - bookinfo-gateway
    sourceNamespace: istio-system
  route:
  - destination:
      host: login.prod.svc.cluster.local
    weight: 100
tcp:
- match:
  - port: 27017
    destinationSubnets:
    - 10.2.0.0/16
    sourceSubnet: 10.3.0.0/24
    sourceLabels:
      app: reporter
    gateways:
    - mesh
    sourceNamespace: jobs
  route:
  - destination:
      host: mongo.backup.svc.cluster.local
      port:
        number: 5555
    weight: 60
  - destination:
      host: mongo.prod.svc.cluster.local
    weight: 40
"#;

    #[test]
    fn example_round_trips() {
        let original: Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        let spec: VirtualServiceSpec = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        assert_eq!(spec.http[1].mirror_percent, Some(10));
        assert_eq!(spec.http[1].mirror_percent_proto_name, Some(20));
        assert_eq!(
            spec.http[2].redirect.as_ref().unwrap().derive_port,
            Some(RedirectPortSelection::FromRequestPort)
        );
        assert_eq!(serde_json::to_value(&spec).unwrap(), original);
        // And back through YAML text.
        let again: VirtualServiceSpec =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn bookinfo_samples_round_trip() {
        let docs = crate::api::samples::of_kind("VirtualService");
        assert!(docs.len() >= 20, "only {} VirtualServices found", docs.len());
        for (file, doc) in docs {
            let name = format!("{file} {}", doc["metadata"]["name"]);
            let vs: VirtualService =
                serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(serde_json::to_value(&vs.spec).unwrap(), doc["spec"], "{name}");
        }
    }
}
