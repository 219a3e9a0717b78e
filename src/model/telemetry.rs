//! How Istio's standard metrics name a workload (`source_workload`,
//! `destination_app`, `destination_canonical_service`...), in one place for
//! both ends that need it: the injector writes a pod's own values into its
//! sidecar's environment ([`ENV`]), and translation puts every endpoint's
//! on its EDS entry, where the calling proxy reads them per request. Both
//! carry them joined into one value ([`WorkloadLabels::joined`]), which
//! the Prometheus scrape configuration splits into Istio's labels.

use std::collections::BTreeMap;

use serde::Serialize;

/// What every proxy reports, mesh-wide (the chart's `meshConfig` and
/// `telemetry` values, through the controller's flags).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Istio's standard metrics, counted by each proxy.
    pub metrics: bool,
    /// Istio's `accessLogFile`: where each proxy writes a line per request
    /// or connection (`/dev/stdout`: its container's log); None: no log.
    pub access_log_file: Option<String>,
    /// Istio's `accessLogEncoding`.
    pub access_log_encoding: AccessLogEncoding,
    /// Istio's `accessLogFormat`: Envoy's format string for TEXT, or a
    /// JSON object of them for JSON; None: Istio's default format.
    pub access_log_format: Option<String>,
    /// Spans to a Zipkin collector; None: no tracing.
    pub tracing: Option<Tracing>,
}

/// Istio's `defaultConfig.tracing` with a Zipkin collector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tracing {
    /// The collector's `host:port` (Istio's `tracing.zipkin.address`).
    pub zipkin_address: String,
    /// The percentage of requests traced when the caller did not decide
    /// (Istio's `tracing.sampling`); a pod's `proxy.istio.io/config`
    /// annotation may set its own.
    pub sampling: f64,
}

impl Tracing {
    /// The settings from the flags: `zipkin_address` empty means none.
    pub fn new(zipkin_address: &str, sampling: f64) -> Result<Option<Self>, String> {
        let address = zipkin_address.trim();
        if address.is_empty() {
            return Ok(None);
        }
        check_sampling(sampling)?;
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {}
            _ => {
                return Err(format!(
                    "tracing.zipkin.address {address:?}: write host:port, such as zipkin.istio-system:9411"
                ));
            }
        }
        Ok(Some(Self { zipkin_address: address.to_string(), sampling }))
    }

    /// The collector's host and port.
    pub fn host_port(&self) -> (&str, u16) {
        let (host, port) = self.zipkin_address.rsplit_once(':').unwrap_or((&self.zipkin_address, "9411"));
        (host, port.parse().unwrap_or(9411))
    }
}

/// A sampling percentage, as Istio takes it: 0 to 100.
pub fn check_sampling(sampling: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&sampling) {
        Ok(())
    } else {
        Err(format!(
            "tracing sampling {sampling}: write a percentage from 0 to 100 (1 traces one request in a hundred)"
        ))
    }
}

impl Settings {
    /// The settings as the flags give them (empty: unset); a JSON format
    /// must be an object of format strings, as Envoy takes it.
    pub fn new(
        metrics: bool,
        access_log_file: &str,
        access_log_encoding: AccessLogEncoding,
        access_log_format: &str,
        tracing: Option<Tracing>,
    ) -> Result<Self, String> {
        let format = Some(access_log_format.trim()).filter(|f| !f.is_empty());
        if let (AccessLogEncoding::Json, Some(format)) = (access_log_encoding, format) {
            json_format(format)?;
        }
        Ok(Self {
            metrics,
            access_log_file: Some(access_log_file.trim()).filter(|f| !f.is_empty()).map(str::to_string),
            access_log_encoding,
            access_log_format: format.map(str::to_string),
            tracing,
        })
    }
}

/// A JSON access log format: its keys and their format strings.
pub fn json_format(format: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_str(format).map_err(|e| {
        format!(
            "accessLogFormat with accessLogEncoding JSON: {e}; write a JSON object of format strings, \
             such as {{\"method\": \"%REQ(:METHOD)%\", \"code\": \"%RESPONSE_CODE%\"}}"
        )
    })
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            metrics: true,
            access_log_file: None,
            access_log_encoding: AccessLogEncoding::Text,
            access_log_format: None,
            tracing: None,
        }
    }
}

/// Istio's `accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

impl AccessLogEncoding {
    /// Istio's names, `TEXT` and `JSON`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "TEXT" => Ok(Self::Text),
            "JSON" => Ok(Self::Json),
            other => Err(format!("access log encoding {other:?}: expected TEXT or JSON")),
        }
    }
}

/// What Istio's metrics say of one workload; an empty value is reported
/// as `unknown` (docs/observe.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadLabels {
    /// `*_workload`: the Deployment (or CronJob, or other owner) of the pod.
    pub workload: String,
    /// `*_workload_namespace`.
    pub namespace: String,
    /// `*_app`: the pod's `app` label.
    pub app: String,
    /// `*_version`: the pod's `version` label.
    pub version: String,
    /// `*_canonical_service`: `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload.
    pub canonical_service: String,
    /// `*_canonical_revision`: `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub canonical_revision: String,
}

impl WorkloadLabels {
    /// The values of a pod of `workload` in `namespace` with `labels`.
    pub fn new(workload: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let first = |keys: &[&str]| {
            keys.iter().find_map(|k| labels.get(*k).filter(|v| !v.is_empty())).cloned().unwrap_or_default()
        };
        let canonical_service =
            match first(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]) {
                name if name.is_empty() => workload.to_string(),
                name => name,
            };
        let canonical_revision =
            match first(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]) {
                revision if revision.is_empty() => "latest".to_string(),
                revision => revision,
            };
        Self {
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            app: first(&["app"]),
            version: first(&["version"]),
            canonical_service,
            canonical_revision,
        }
    }

    /// Each value with its label's name (without `source_` or
    /// `destination_`), in [`FIELDS`] order.
    pub fn fields(&self) -> [(&'static str, &str); 6] {
        let [workload, namespace, app, version, service, revision] = FIELDS;
        [
            (workload, &self.workload),
            (namespace, &self.namespace),
            (app, &self.app),
            (version, &self.version),
            (service, &self.canonical_service),
            (revision, &self.canonical_revision),
        ]
    }

    /// The values in [`FIELDS`] order, joined by [`SEPARATOR`]: how a
    /// proxy carries them as one tag, header or metadata value.
    pub fn joined(&self) -> String {
        self.fields().map(|(_, value)| value).join(SEPARATOR)
    }
}

/// The labels Istio gives each end of a request, after its `source_` or
/// `destination_` prefix, in the order [`WorkloadLabels::joined`] writes them.
pub const FIELDS: [&str; 6] =
    ["workload", "workload_namespace", "app", "version", "canonical_service", "canonical_revision"];

/// Between the values of [`WorkloadLabels::joined`]; no label value holds it.
pub const SEPARATOR: &str = ";";

/// The sidecar's environment variable holding its own
/// [`WorkloadLabels::joined`], set by the injector.
pub const ENV: &str = "MESH_WORKLOAD_LABELS";

/// A pod's controlling owner (or first owner), as its ownerReferences say.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

/// The workload a pod belongs to, as Istio's metrics name it: a
/// ReplicaSet named `<deployment>-<pod-template-hash>` stands for its
/// Deployment, a Job named `<cronjob>-<number>` for its CronJob; any other
/// owner for itself. None without an owner (the caller then uses the
/// pod's own name).
pub fn workload_name(owner: Option<Owner<'_>>, labels: &BTreeMap<String, String>) -> Option<String> {
    let owner = owner?;
    let named = match owner.kind {
        "ReplicaSet" => labels
            .get("pod-template-hash")
            .filter(|hash| !hash.is_empty())
            .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        // A CronJob's Jobs are named after it and the minute they were
        // scheduled for: a number.
        "Job" => owner
            .name
            .rsplit_once('-')
            .filter(|(name, n)| !name.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|(name, _)| name.to_string()),
        _ => None,
    };
    Some(named.unwrap_or_else(|| owner.name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn canonical_names_fall_back_as_istios_do() {
        let w =
            WorkloadLabels::new("reviews-v2", "default", &labels(&[("app", "reviews"), ("version", "v2")]));
        assert_eq!((w.app.as_str(), w.version.as_str()), ("reviews", "v2"));
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("reviews", "v2"));

        let named = labels(&[
            ("app", "reviews"),
            ("app.kubernetes.io/name", "reviews-app"),
            ("service.istio.io/canonical-name", "reviews-canonical"),
            ("app.kubernetes.io/version", "2.0"),
        ]);
        let w = WorkloadLabels::new("reviews-v2", "default", &named);
        assert_eq!(
            (w.canonical_service.as_str(), w.canonical_revision.as_str()),
            ("reviews-canonical", "2.0")
        );
        assert_eq!(w.version, "", "no version label: unknown, though the canonical revision has one");

        let bare = WorkloadLabels::new("batch", "jobs", &BTreeMap::new());
        assert_eq!((bare.canonical_service.as_str(), bare.canonical_revision.as_str()), ("batch", "latest"));
        assert_eq!((bare.app.as_str(), bare.namespace.as_str()), ("", "jobs"));
    }

    #[test]
    fn the_workload_is_the_deployment_or_cronjob_behind_the_owner() {
        let hash = labels(&[("pod-template-hash", "7d4b9c")]);
        let rs = |name| Some(Owner { kind: "ReplicaSet", name });
        assert_eq!(workload_name(rs("reviews-v1-7d4b9c"), &hash).as_deref(), Some("reviews-v1"));
        // A ReplicaSet not named after its hash (made by hand) is its own workload.
        assert_eq!(workload_name(rs("reviews-v1"), &hash).as_deref(), Some("reviews-v1"));
        assert_eq!(workload_name(rs("7d4b9c"), &hash).as_deref(), Some("7d4b9c"));
        let job = |name| Some(Owner { kind: "Job", name });
        assert_eq!(workload_name(job("report-29123456"), &hash).as_deref(), Some("report"));
        assert_eq!(workload_name(job("migrate-db"), &hash).as_deref(), Some("migrate-db"));
        let sts = Some(Owner { kind: "StatefulSet", name: "ratings" });
        assert_eq!(workload_name(sts, &hash).as_deref(), Some("ratings"));
        assert_eq!(workload_name(None, &hash), None);
    }

    #[test]
    fn the_joined_form_keeps_the_field_order_and_its_empty_values() {
        let w = WorkloadLabels::new("reviews-v2", "default", &labels(&[("app", "reviews")]));
        assert_eq!(w.joined(), "reviews-v2;default;reviews;;reviews;latest");
        assert_eq!(w.fields().map(|(name, _)| name), FIELDS);
    }
}
