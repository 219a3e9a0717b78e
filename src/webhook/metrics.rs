//! What the admission webhooks count, exported on /metrics with the
//! `mesh_` prefix: reviews by webhook and answer, and how long each took
//! from the request's arrival to its answer (Istio counts the same of its
//! validation and injection webhooks).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    /// `validate` or `inject`.
    webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    webhook: &'static str,
    /// `true` or `false`.
    allowed: &'static str,
}

#[derive(Clone)]
pub struct WebhookMetrics {
    reviews: Family<AnswerLabel, Counter>,
    seconds: Family<WebhookLabel, Histogram>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            reviews: Family::default(),
            // 100 µs to about 3 s.
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 15))),
        }
    }
}

impl WebhookMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_reviews",
            "Admission reviews answered, by webhook (validate, inject) and whether the object was allowed",
            self.reviews.clone(),
        );
        registry.register(
            "webhook_review_duration_seconds",
            "Time from an admission review's arrival to its answer, by webhook",
            self.seconds.clone(),
        );
    }

    /// One review of `webhook`, answered `allowed` after `seconds`.
    pub fn reviewed(&self, webhook: &'static str, allowed: bool, seconds: f64) {
        let allowed = if allowed { "true" } else { "false" };
        self.reviews.get_or_create(&AnswerLabel { webhook, allowed }).inc();
        self.seconds.get_or_create(&WebhookLabel { webhook }).observe(seconds);
    }

    /// The reviews counted so far, for tests.
    #[cfg(test)]
    pub fn reviews(&self, webhook: &'static str, allowed: bool) -> u64 {
        let allowed = if allowed { "true" } else { "false" };
        self.reviews.get_or_create(&AnswerLabel { webhook, allowed }).get()
    }
}
