//! Istio's standard metrics, made by each proxy itself: Envoy's stats
//! access logger counts every request into `istio.requests_total` and its
//! histograms (docs/observe.md). Envoy's Prometheus endpoint
//! (`:15090/stats/prometheus`) serves them as `envoy_istio_*`; the scrape
//! configuration the chart ships (`charts/mesh/files/prometheus-scrape.yaml`)
//! renames them `istio_*`, splits the joined tags below into Istio's labels,
//! adds the constant ones (`source_cluster`, `destination_cluster`) and
//! reports an empty label as `unknown`.
//!
//! Tags are few and joined ([`WorkloadLabels::joined`]): the logger sits on
//! every HTTP connection manager (one per Service port on the outbound
//! listener), and each tag is written out once per stat there, so 25 of
//! them would multiply the listener's size.
//!
//! Where each end's labels come from:
//! - the proxy's own workload: its environment ([`telemetry::ENV`], set by
//!   the injector), read once when Envoy loads the listener;
//! - the destination, for the caller's proxy (reporter `source`): the
//!   chosen endpoint's metadata ([`endpoint_metadata`]) and the cluster's
//!   ([`cluster_metadata`]), both from the controller;
//! - the source, for the called proxy (reporter `destination`): the header
//!   [`PEER_HEADER`] the caller's proxy sets on every request
//!   ([`peer_header`]), read into request metadata and removed by
//!   [`peer_filter`], on mutual TLS chains only: without a verified peer, a
//!   client could mint any number of label values.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, LogTypeFilter, access_log, access_log_filter,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, SubstitutionFormatString, data_source, header_value_option,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::trace::v3::{self as trace, ZipkinConfig, zipkin_config};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config as stats;
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::{
    Config as HeaderToMetadata, config as header_to_metadata,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt64Value};

use super::tls::string_value;
use super::{any, proto_map, seconds};
use crate::model::mesh::ServiceView;
use crate::model::protocol::Protocol;
use crate::model::telemetry::{self, AccessLogEncoding, Settings, WorkloadLabels};

/// The request header that carries the caller's workload to the callee:
/// its [`WorkloadLabels::joined`].
pub const PEER_HEADER: &str = "x-mesh-peer";
/// The request metadata [`peer_filter`] fills from [`PEER_HEADER`].
const PEER_METADATA: &str = "mesh.peer";
/// An endpoint's [`WorkloadLabels`], joined, under [`LABELS_KEY`].
pub const WORKLOAD_METADATA: &str = "mesh.workload";
/// A cluster's Service (host, name, namespace), joined, under [`LABELS_KEY`].
pub const SERVICE_METADATA: &str = "mesh.service";
const LABELS_KEY: &str = "labels";

const STATS_LOGGER: &str = "envoy.access_loggers.stats";
const FILE_LOGGER: &str = "envoy.access_loggers.file";
/// [`peer_filter`]'s name.
pub const PEER_FILTER: &str = "envoy.filters.http.header_to_metadata";
/// Envoy names the stats `istio.requests_total`.
const STAT_PREFIX: &str = "istio";
/// A label whose value no one can know here.
const UNKNOWN: &str = "unknown";

/// Envoy's stats logger configuration as Envoy 1.40 takes it: envoy-types
/// 0.7 lacks `stats_scope` (field 6), which replaces `stat_prefix` (field
/// 1, deprecated: Envoy warns once per logger at each listener load).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsLogConfig {
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<stats::Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub counters: Vec<stats::Counter>,
    #[prost(message, optional, tag = "6")]
    pub stats_scope: Option<StatsScope>,
}

impl prost::Name for StatsLogConfig {
    const NAME: &'static str = "Config";
    const PACKAGE: &'static str = "envoy.extensions.access_loggers.stats.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// Envoy's `envoy.type.v3.Scope`, its `prefix` (field 5) alone.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsScope {
    #[prost(string, tag = "5")]
    pub prefix: String,
}

/// Which end of a request a proxy reports: the caller's (`source`) or
/// the callee's (`destination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// Outbound listeners and gateways.
    Source,
    /// Inbound listeners; `mutual_tls` when the chain verified the peer.
    Destination { mutual_tls: bool },
}

/// The joined tags, each of which the scrape configuration splits into
/// the labels it lists, in order.
pub const JOINED_TAGS: [(&str, &[&str]); 3] = [
    ("source", &telemetry::FIELDS),
    ("destination", &telemetry::FIELDS),
    ("service", &["service", "service_name", "service_namespace"]),
];

/// What an HTTP connection manager logs: Istio's metrics and the access
/// log, as `settings` ask.
pub fn http_logs(
    settings: &Settings,
    reporter: Reporter,
    protocol: Protocol,
    service: Option<&ServiceView>,
) -> Vec<AccessLog> {
    let metrics = settings.metrics.then(|| http_metrics(reporter, protocol, service));
    metrics.into_iter().chain(access_log(settings)).collect()
}

/// What a TCP proxy logs: Istio's TCP metrics and the access log, as
/// `settings` ask, reported as `reporter`; `service` as for [`http_metrics`].
pub fn tcp_logs(settings: &Settings, reporter: Reporter, service: Option<&ServiceView>) -> TcpLogs {
    let mut logs = TcpLogs::default();
    if settings.metrics {
        let [opened, ended] = tcp_metrics(reporter, service);
        logs.access_log.extend([opened, ended]);
        // The opened counter needs a record when the upstream connects.
        logs.options = Some(tcp_proxy::TcpAccessLogOptions {
            flush_access_log_on_connected: true,
            ..Default::default()
        });
    }
    logs.access_log.extend(access_log(settings).map(|log| of_type(log, AccessLogType::TcpConnectionEnd)));
    logs
}

/// The access loggers of a TCP proxy, and when it writes its records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpLogs {
    pub access_log: Vec<AccessLog>,
    pub options: Option<tcp_proxy::TcpAccessLogOptions>,
}

impl TcpLogs {
    /// Sets them on `proxy`.
    pub fn apply(&self, proxy: &mut TcpProxy) {
        proxy.access_log.clone_from(&self.access_log);
        proxy.access_log_options.clone_from(&self.options);
    }
}

/// `log`, only for records of type `record`.
fn of_type(mut log: AccessLog, record: AccessLogType) -> AccessLog {
    log.filter = Some(AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::LogTypeFilter(LogTypeFilter {
            types: vec![record.into()],
            exclude: false,
        })),
    });
    log
}

/// Istio's TCP metrics: connections opened, counted when the upstream
/// connects; connections closed and the bytes each way, counted when the
/// connection ends (so a long connection's bytes show at its end).
fn tcp_metrics(reporter: Reporter, service: Option<&ServiceView>) -> [AccessLog; 2] {
    let mut tags = peer_tags(reporter, service);
    tags.extend([tag("request_protocol", "tcp"), tag("response_flags", "%RESPONSE_FLAGS%")]);
    let counter = |name: &str, value: Result<u64, &str>| stats::Counter {
        stat: Some(stats::Stat { name: name.to_string(), tags: tags.clone() }),
        value_fixed: value.ok().map(|value| UInt64Value { value }),
        value_format: value.err().unwrap_or_default().to_string(),
    };
    let logger = |counters, record| of_type(stats_logger(counters, Vec::new()), record);
    [
        logger(vec![counter("tcp_connections_opened_total", Ok(1))], AccessLogType::TcpUpstreamConnected),
        logger(
            vec![
                counter("tcp_connections_closed_total", Ok(1)),
                // Sent and received by the proxy on its downstream connection.
                counter("tcp_sent_bytes_total", Err("%BYTES_SENT%")),
                counter("tcp_received_bytes_total", Err("%BYTES_RECEIVED%")),
            ],
            AccessLogType::TcpConnectionEnd,
        ),
    ]
}

/// The cluster the proxies send their spans to (Istio's name for it).
pub const ZIPKIN_CLUSTER: &str = "zipkin";
const ZIPKIN_TRACER: &str = "envoy.tracers.zipkin";

/// An HTTP connection manager's tracing, when `settings` ask for it:
/// Zipkin spans (v2 JSON, 128-bit trace ids, one span per hop and side,
/// as Istio sets Zipkin up) for the sampled share of requests the caller
/// did not decide on. A pod's own share arrives as Envoy's runtime value
/// `tracing.random_sampling`, which overrides this one (the injector puts
/// it in the pod's bootstrap).
pub fn tracing(settings: &Settings) -> Option<http_connection_manager::Tracing> {
    let tracing = settings.tracing.as_ref()?;
    let (host, _) = tracing.host_port();
    let zipkin = ZipkinConfig {
        collector_cluster: ZIPKIN_CLUSTER.to_string(),
        collector_endpoint: "/api/v2/spans".to_string(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson.into(),
        collector_hostname: host.to_string(),
        trace_id_128bit: true,
        shared_span_context: Some(BoolValue { value: false }),
        ..Default::default()
    };
    Some(http_connection_manager::Tracing {
        provider: Some(trace::tracing::Http {
            name: ZIPKIN_TRACER.to_string(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(any(&zipkin))),
        }),
        random_sampling: Some(Percent { value: tracing.sampling }),
        ..Default::default()
    })
}

/// The collector's cluster, when tracing is on: its address by DNS.
pub fn zipkin_cluster(settings: &Settings) -> Option<Cluster> {
    let (host, port) = settings.tracing.as_ref()?.host_port();
    Some(Cluster {
        name: ZIPKIN_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns.into(),
        )),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(super::endpoint::single(ZIPKIN_CLUSTER.to_string(), host, port)),
        ..Default::default()
    })
}

/// Istio's default access log line (its `accessLogFormat` unset, TEXT).
const TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% \
%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON access log: its keys and what each holds.
const JSON_FORMAT: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
];

/// The access log Istio's `accessLogFile`, `accessLogEncoding` and
/// `accessLogFormat` ask for; None when `accessLogFile` is unset.
pub fn access_log(settings: &Settings) -> Option<AccessLog> {
    let path = settings.access_log_file.clone()?;
    let format = match settings.access_log_encoding {
        AccessLogEncoding::Text => {
            let text = settings
                .access_log_format
                .as_ref()
                .map_or_else(|| TEXT_FORMAT.to_string(), |f| format!("{f}\n"));
            substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..Default::default()
            })
        }
        AccessLogEncoding::Json => {
            // Checked when the controller started (Settings::new).
            let keys = match &settings.access_log_format {
                Some(format) => telemetry::json_format(format).unwrap_or_default(),
                None => JSON_FORMAT.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            let fields = keys.into_iter().map(|(key, value)| (key, string_value(&value)));
            substitution_format_string::Format::JsonFormat(Struct { fields: proto_map(fields) })
        }
    };
    let config = FileAccessLog {
        path,
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(format),
            ..Default::default()
        })),
    };
    Some(AccessLog {
        name: FILE_LOGGER.to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    })
}

/// The access log that counts an HTTP connection manager's requests into
/// Istio's request metrics, reported as `reporter`; `service` is the
/// Service an inbound port serves (None: outbound, where the cluster
/// names it, or an inbound port no Service exposes).
pub fn http_metrics(reporter: Reporter, protocol: Protocol, service: Option<&ServiceView>) -> AccessLog {
    let protocol = if protocol == Protocol::Grpc { "grpc" } else { "http" };
    let mut tags = peer_tags(reporter, service);
    tags.extend([
        tag("request_protocol", protocol),
        tag("response_code", "%RESPONSE_CODE%"),
        tag("grpc_response_status", "%GRPC_STATUS_NUMBER%"),
        tag("response_flags", "%RESPONSE_FLAGS%"),
    ]);
    let stat = |name: &str| Some(stats::Stat { name: name.to_string(), tags: tags.clone() });
    let histogram = |name: &str, unit: stats::histogram::Unit, value: &str| stats::Histogram {
        stat: stat(name),
        unit: unit.into(),
        value_format: value.to_string(),
    };
    stats_logger(
        vec![stats::Counter {
            stat: stat("requests_total"),
            value_fixed: Some(UInt64Value { value: 1 }),
            ..Default::default()
        }],
        vec![
            histogram("request_duration_milliseconds", stats::histogram::Unit::Milliseconds, "%DURATION%"),
            // Bodies: Envoy's byte counts of a request leave out its headers.
            histogram("request_bytes", stats::histogram::Unit::Bytes, "%BYTES_RECEIVED%"),
            histogram("response_bytes", stats::histogram::Unit::Bytes, "%BYTES_SENT%"),
        ],
    )
}

/// Envoy's stats logger with these stats, named `istio.*`.
fn stats_logger(counters: Vec<stats::Counter>, histograms: Vec<stats::Histogram>) -> AccessLog {
    let config = StatsLogConfig {
        stats_scope: Some(StatsScope { prefix: STAT_PREFIX.to_string() }),
        counters,
        histograms,
    };
    AccessLog {
        name: STATS_LOGGER.to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// Who is at either end, and how they are connected.
fn peer_tags(reporter: Reporter, service: Option<&ServiceView>) -> Vec<stats::Tag> {
    let own = format!("%ENVIRONMENT({})%", telemetry::ENV);
    let endpoint = format!("%UPSTREAM_METADATA({WORKLOAD_METADATA}:{LABELS_KEY})%");
    let peer = format!("%DYNAMIC_METADATA({PEER_METADATA}:{LABELS_KEY})%");
    // (reporter, source, its principal, destination, its principal, security)
    let (name, source, source_principal, destination, destination_principal, security) = match reporter {
        Reporter::Source => {
            ("source", own, "%UPSTREAM_LOCAL_URI_SAN%", endpoint, "%UPSTREAM_PEER_URI_SAN%", UNKNOWN)
        }
        Reporter::Destination { mutual_tls: true } => (
            "destination",
            peer,
            "%DOWNSTREAM_PEER_URI_SAN%",
            own,
            "%DOWNSTREAM_LOCAL_URI_SAN%",
            "mutual_tls",
        ),
        Reporter::Destination { mutual_tls: false } => {
            ("destination", UNKNOWN.to_string(), UNKNOWN, own, UNKNOWN, "none")
        }
    };
    let service = match (reporter, service) {
        (Reporter::Source, _) => format!("%CLUSTER_METADATA({SERVICE_METADATA}:{LABELS_KEY})%"),
        (Reporter::Destination { .. }, Some(service)) => service_labels(service),
        (Reporter::Destination { .. }, None) => UNKNOWN.to_string(),
    };
    vec![
        tag("reporter", name),
        tag("source", &source),
        tag("source_principal", source_principal),
        tag("destination", &destination),
        tag("destination_principal", destination_principal),
        tag("service", &service),
        tag("connection_security_policy", security),
    ]
}

fn tag(name: &str, value_format: &str) -> stats::Tag {
    stats::Tag { name: name.to_string(), value_format: value_format.to_string() }
}

/// A Service's host, name and namespace, joined, as Istio's
/// `destination_service*` labels give them; a ServiceEntry's host is its name.
fn service_labels(service: &ServiceView) -> String {
    [service.hostname.as_str(), &service.key.name, &service.key.namespace].join(telemetry::SEPARATOR)
}

/// The header every outbound request carries, set by the caller's proxy
/// whatever the application sent: the proxy's own [`WorkloadLabels`].
pub fn peer_header() -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: PEER_HEADER.to_string(),
            value: format!("%ENVIRONMENT({})%", telemetry::ENV),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

/// On an inbound mutual TLS chain, first: moves [`PEER_HEADER`] into the
/// request's metadata, out of the application's sight.
pub fn peer_filter() -> HttpFilter {
    let rule = header_to_metadata::Rule {
        header: PEER_HEADER.to_string(),
        on_header_present: Some(header_to_metadata::KeyValuePair {
            metadata_namespace: PEER_METADATA.to_string(),
            key: LABELS_KEY.to_string(),
            ..Default::default()
        }),
        remove: true,
        ..Default::default()
    };
    let config = HeaderToMetadata { request_rules: vec![rule], ..Default::default() };
    HttpFilter {
        name: PEER_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The metadata of an endpoint that is a known pod (a namespace of it):
/// its workload, for the caller's metrics.
pub fn endpoint_metadata(workload: &WorkloadLabels) -> (String, Struct) {
    let fields = [(LABELS_KEY.to_string(), string_value(&workload.joined()))].into();
    (WORKLOAD_METADATA.to_string(), Struct { fields })
}

/// The metadata of a Service's cluster (a namespace of it): the Service,
/// for the caller's metrics.
pub fn cluster_metadata(service: &ServiceView) -> (String, Struct) {
    let fields = [(LABELS_KEY.to_string(), string_value(&service_labels(service)))].into();
    (SERVICE_METADATA.to_string(), Struct { fields })
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    fn tags(log: &AccessLog) -> Vec<(String, String)> {
        let Some(access_log::ConfigType::TypedConfig(config)) = &log.config_type else {
            panic!("typed config")
        };
        let config = StatsLogConfig::decode(config.value.as_slice()).expect("a stats logger");
        assert_eq!(config.stats_scope.as_ref().map(|s| s.prefix.as_str()), Some("istio"));
        let counter = &config.counters[0];
        assert_eq!(counter.stat.as_ref().map(|s| s.name.as_str()), Some("requests_total"));
        // Every stat carries the same tags, so the labels of a request agree across them.
        for histogram in &config.histograms {
            assert_eq!(histogram.stat.as_ref().map(|s| &s.tags), counter.stat.as_ref().map(|s| &s.tags));
        }
        counter.stat.iter().flat_map(|s| &s.tags).map(|t| (t.name.clone(), t.value_format.clone())).collect()
    }

    fn tag_value<'a>(tags: &'a [(String, String)], name: &str) -> &'a str {
        tags.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn only_a_verified_peer_names_the_caller() {
        let mtls = tags(&http_metrics(Reporter::Destination { mutual_tls: true }, Protocol::Http, None));
        assert_eq!(tag_value(&mtls, "source"), "%DYNAMIC_METADATA(mesh.peer:labels)%");
        assert_eq!(tag_value(&mtls, "source_principal"), "%DOWNSTREAM_PEER_URI_SAN%");
        assert_eq!(tag_value(&mtls, "destination"), "%ENVIRONMENT(MESH_WORKLOAD_LABELS)%");
        assert_eq!(tag_value(&mtls, "connection_security_policy"), "mutual_tls");
        let plain = tags(&http_metrics(Reporter::Destination { mutual_tls: false }, Protocol::Grpc, None));
        assert_eq!(tag_value(&plain, "source"), "unknown");
        assert_eq!(tag_value(&plain, "source_principal"), "unknown");
        assert_eq!(tag_value(&plain, "connection_security_policy"), "none");
        assert_eq!(tag_value(&plain, "request_protocol"), "grpc");
        let outbound = tags(&http_metrics(Reporter::Source, Protocol::Http, None));
        assert_eq!(tag_value(&outbound, "reporter"), "source");
        assert_eq!(tag_value(&outbound, "source"), "%ENVIRONMENT(MESH_WORKLOAD_LABELS)%");
        assert_eq!(tag_value(&outbound, "destination"), "%UPSTREAM_METADATA(mesh.workload:labels)%");
        assert_eq!(tag_value(&outbound, "service"), "%CLUSTER_METADATA(mesh.service:labels)%");
        // The header the callee trusts is the one the caller's proxy sets.
        assert_eq!(
            peer_header().header.map(|h| h.value),
            Some("%ENVIRONMENT(MESH_WORKLOAD_LABELS)%".to_string())
        );
    }

    #[test]
    fn tracing_sends_zipkin_spans_to_the_collector_named_by_the_settings() {
        assert_eq!(tracing(&Settings::default()), None, "off unless a collector is named");
        assert_eq!(zipkin_cluster(&Settings::default()), None);
        let on = Settings {
            tracing: telemetry::Tracing::new("zipkin.mesh-system:9411", 2.5).expect("valid"),
            ..Settings::default()
        };
        let config = tracing(&on).expect("tracing");
        assert_eq!(config.random_sampling.map(|p| p.value), Some(2.5));
        let provider = config.provider.expect("a provider");
        assert_eq!(provider.name, "envoy.tracers.zipkin");
        let Some(trace::tracing::http::ConfigType::TypedConfig(any)) = provider.config_type else { panic!() };
        let zipkin = ZipkinConfig::decode(any.value.as_slice()).expect("Zipkin");
        assert_eq!(
            (zipkin.collector_cluster.as_str(), zipkin.collector_endpoint.as_str()),
            ("zipkin", "/api/v2/spans")
        );
        assert!(zipkin.trace_id_128bit);
        let cluster = zipkin_cluster(&on).expect("the collector's cluster");
        let endpoint = &cluster.load_assignment.expect("its address").endpoints[0].lb_endpoints[0];
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
        let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier else {
            panic!()
        };
        let address = format!("{:?}", endpoint.address);
        assert!(address.contains("zipkin.mesh-system") && address.contains("9411"), "{address}");
        for bad in [
            ("zipkin", 1.0),
            ("zipkin:0", 1.0),
            (":9411", 1.0),
            ("zipkin:9411", 101.0),
            ("zipkin:9411", -1.0),
        ] {
            assert!(telemetry::Tracing::new(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    /// The sample Prometheus's job for the proxies: its metric relabelling.
    fn scrape_rules() -> Vec<Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/addons/prometheus.yaml");
        let text = std::fs::read_to_string(path).expect("the sample");
        let config = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).expect("YAML"))
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the ConfigMap");
        let prometheus: Value =
            serde_yaml_ng::from_str(config["data"]["prometheus.yml"].as_str().expect("prometheus.yml"))
                .expect("YAML");
        let job = prometheus["scrape_configs"]
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["job_name"] == "mesh-proxies")
            .expect("the proxies' job")
            .clone();
        job["metric_relabel_configs"].as_array().expect("rules").clone()
    }

    #[test]
    fn the_sample_scrape_configuration_splits_every_joined_tag_into_istios_labels() {
        let rules = scrape_rules();
        for (tag, labels) in JOINED_TAGS {
            let prefix = if tag == "source" { "source_" } else { "destination_" };
            let labels: Vec<String> = labels
                .iter()
                .map(|l| {
                    if l.starts_with("service") { format!("destination_{l}") } else { format!("{prefix}{l}") }
                })
                .collect();
            for (i, label) in labels.iter().enumerate() {
                let rule = rules
                    .iter()
                    .find(|r| r["target_label"] == label.as_str() && r["source_labels"][0] == tag)
                    .unwrap_or_else(|| panic!("no rule makes {label} from {tag}"));
                let groups = rule["regex"].as_str().expect("a regex").matches("([^;]*)").count();
                assert_eq!(groups, labels.len(), "{label}: one group per joined value");
                assert_eq!(rule["replacement"], format!("${}", i + 1), "{label}");
                let unknown = rules
                    .iter()
                    .any(|r| r["target_label"] == label.as_str() && r["replacement"] == "unknown");
                assert!(unknown, "{label} is `unknown` when empty");
            }
            let dropped = rules
                .iter()
                .filter(|r| r["action"] == "labeldrop")
                .any(|r| r["regex"].as_str().is_some_and(|re| re.split('|').any(|t| t == tag)));
            assert!(dropped, "{tag} is dropped once split");
        }
    }
}
