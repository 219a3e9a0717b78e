//! What the xDS server counts, exported on /metrics with the `mesh_`
//! prefix: connected proxies, refused streams by reason, and pushes, ACKs
//! and NACKs by resource type, how long pushes take and how long proxies
//! take to converge after one, and pushes that
//! panicked; workload certificates issued, failed and the nearest expiry
//! among connected proxies, and secret requests refused. Every label has
//! a bounded set of values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::resource_type::ResourceType;

#[derive(Clone)]
pub struct XdsMetrics {
    connected: Gauge,
    rejected: Family<ReasonLabel, Counter>,
    pushes: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    push_seconds: Histogram,
    convergence_seconds: Histogram,
    snapshots_changed: Counter,
    push_panics: Counter,
    certs_issued: Counter,
    cert_errors: Counter,
    secret_refusals: Counter,
    nearest_cert_expiry: Gauge,
    queue_full: Counter,
    stalled: Counter,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            rejected: Family::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            // 1 ms to about 16 s.
            push_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            // 10 ms to about 80 s.
            convergence_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.01, 2.0, 14,
            )),
            snapshots_changed: Counter::default(),
            push_panics: Counter::default(),
            certs_issued: Counter::default(),
            cert_errors: Counter::default(),
            secret_refusals: Counter::default(),
            nearest_cert_expiry: Gauge::default(),
            queue_full: Counter::default(),
            stalled: Counter::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

impl XdsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected_proxies",
            "Proxies with an authorized ADS stream open",
            self.connected.clone(),
        );
        registry.register(
            "xds_rejected_streams",
            "ADS streams refused at start, by reason",
            self.rejected.clone(),
        );
        registry.register("xds_pushes", "Discovery responses sent, by resource type", self.pushes.clone());
        registry.register(
            "xds_acks",
            "Discovery responses proxies applied, by resource type",
            self.acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "Discovery responses proxies refused, by resource type",
            self.nacks.clone(),
        );
        registry.register(
            "xds_push_duration_seconds",
            "Time to build every connected proxy's snapshot after a (debounced) index change",
            self.push_seconds.clone(),
        );
        registry.register(
            "xds_proxy_convergence_seconds",
            "Time from the first configuration change of a push until a proxy it reached acknowledged \
             everything it was sent (the debounce included; refused configuration not counted)",
            self.convergence_seconds.clone(),
        );
        registry.register(
            "xds_snapshots_changed",
            "Proxy snapshots that changed in a push (each wakes one stream)",
            self.snapshots_changed.clone(),
        );
        registry.register(
            "xds_push_panics",
            "Pushes, or proxies' first snapshots, that panicked (a bug; a push's panic stops the controller)",
            self.push_panics.clone(),
        );
        registry.register(
            "xds_workload_certs_issued",
            "Workload certificates issued to proxies (at connection and at each rotation)",
            self.certs_issued.clone(),
        );
        registry.register(
            "xds_workload_cert_errors",
            "Workload certificates that could not be issued",
            self.cert_errors.clone(),
        );
        registry.register(
            "xds_secret_refusals",
            "Secret requests refused: a proxy asked for a secret other than its own `default` and `ROOTCA`",
            self.secret_refusals.clone(),
        );
        registry.register(
            "xds_workload_cert_nearest_expiry_timestamp_seconds",
            "Unix time at which the first certificate held by a connected proxy expires (0: none)",
            self.nearest_cert_expiry.clone(),
        );
        registry.register(
            "xds_stream_queue_full",
            "Times a stream's queue of responses was full, so it stopped reading its proxy's requests \
             until the proxy read (a slow or stuck proxy; its memory stays bounded)",
            self.queue_full.clone(),
        );
        registry.register(
            "xds_streams_stalled",
            "Streams closed with their connection because the proxy stopped taking its responses \
             (it reconnects if it is alive)",
            self.stalled.clone(),
        );
    }

    pub(crate) fn queue_full(&self) {
        self.queue_full.inc();
    }

    /// Times a stream's queue was found full (tests).
    pub fn queue_full_count(&self) -> u64 {
        self.queue_full.get()
    }

    pub(crate) fn stream_stalled(&self) {
        self.stalled.inc();
    }

    /// Streams closed because their proxy stopped reading (tests).
    pub fn stalled_count(&self) -> u64 {
        self.stalled.get()
    }

    pub(crate) fn cert_issued(&self) {
        self.certs_issued.inc();
    }

    pub(crate) fn cert_failed(&self) {
        self.cert_errors.inc();
    }

    pub(crate) fn secret_refused(&self) {
        self.secret_refusals.inc();
    }

    pub(crate) fn set_nearest_cert_expiry(&self, unix_seconds: i64) {
        self.nearest_cert_expiry.set(unix_seconds);
    }

    pub(crate) fn push_done(&self, elapsed: std::time::Duration, changed: u64) {
        self.push_seconds.observe(elapsed.as_secs_f64());
        self.snapshots_changed.inc_by(changed);
    }

    pub(crate) fn converged(&self, elapsed: std::time::Duration) {
        self.convergence_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn push_panicked(&self) {
        self.push_panics.inc();
    }

    pub(crate) fn connected(&self) -> ConnectedGuard {
        self.connected.inc();
        ConnectedGuard(self.connected.clone())
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn pushed(&self, resource_type: ResourceType) {
        self.pushes.get_or_create(&type_label(resource_type)).inc();
    }

    pub(crate) fn acked(&self, resource_type: ResourceType) {
        self.acks.get_or_create(&type_label(resource_type)).inc();
    }

    pub(crate) fn nacked(&self, resource_type: ResourceType) {
        self.nacks.get_or_create(&type_label(resource_type)).inc();
    }

    /// Proxies connected now.
    pub fn connected_proxies(&self) -> i64 {
        self.connected.get()
    }

    /// Streams refused for `reason` (see [`super::Rejection::reason`]).
    pub fn rejected_streams(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabel { reason }).get()
    }

    pub fn pushes(&self, resource_type: ResourceType) -> u64 {
        self.pushes.get_or_create(&type_label(resource_type)).get()
    }

    pub fn acks(&self, resource_type: ResourceType) -> u64 {
        self.acks.get_or_create(&type_label(resource_type)).get()
    }

    pub fn nacks(&self, resource_type: ResourceType) -> u64 {
        self.nacks.get_or_create(&type_label(resource_type)).get()
    }

    /// Pushes and first snapshots that panicked.
    pub fn push_panics(&self) -> u64 {
        self.push_panics.get()
    }

    pub fn certs_issued(&self) -> u64 {
        self.certs_issued.get()
    }

    pub fn secret_refusals(&self) -> u64 {
        self.secret_refusals.get()
    }

    pub fn nearest_cert_expiry(&self) -> i64 {
        self.nearest_cert_expiry.get()
    }
}

fn type_label(resource_type: ResourceType) -> TypeLabel {
    TypeLabel { r#type: resource_type.label() }
}

/// Counts one connected proxy while it lives.
pub(crate) struct ConnectedGuard(Gauge);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_mesh_names() {
        let metrics = XdsMetrics::default();
        let mut registry = Registry::with_prefix("mesh");
        metrics.register(&mut registry);
        metrics.rejected("pod_mismatch");
        metrics.nacked(ResourceType::Listener);
        metrics.push_panicked();
        let guard = metrics.connected();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("mesh_xds_rejected_streams_total{reason=\"pod_mismatch\"} 1"), "{text}");
        assert!(text.contains("mesh_xds_nacks_total{type=\"lds\"} 1"), "{text}");
        assert!(text.contains("mesh_xds_connected_proxies 1"), "{text}");
        assert!(text.contains("mesh_xds_push_panics_total 1"), "{text}");
        drop(guard);
        assert_eq!(metrics.connected_proxies(), 0);
        assert_eq!(metrics.rejected_streams("pod_mismatch"), 1);
    }
}
