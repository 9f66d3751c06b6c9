//! Graph's attempts, as the retry loop counts them: HTTP answers by status and how long they
//! took, attempts that got no answer, and retries by reason. Registered (with the service's
//! metrics) under a sub-registry of the gateway's (`metrics`), with the kinds and reasons that
//! only the retry loop tells apart.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::metrics::{label_values, latency_histogram, register, register_seconds, start_at_zero};

label_values! {
    /// A Graph attempt that got no HTTP answer.
    pub enum GraphFailure {
        /// No connection could be made; nothing was sent.
        Unreachable => "unreachable",
        /// The connection failed after the request may have been sent.
        Transport => "transport",
        /// The call's deadline ran out while waiting.
        Timeout => "timeout",
    }
}

label_values! {
    /// Why an attempt was retried.
    pub enum RetryReason {
        /// Graph answered 429.
        Throttled => "throttled",
        /// Graph answered 503.
        Unavailable => "unavailable",
        /// Graph answered 504.
        GatewayTimeout => "gateway_timeout",
        /// No connection could be made.
        Unreachable => "unreachable",
    }
}

/// The metrics of Graph's attempts. Each field is a handle on what a scrape reads (an `Arc`
/// inside); they are cloned only at start-up.
#[derive(Debug, Clone)]
pub struct AttemptMetrics {
    responses: Family<StatusLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Histogram,
    retries: Family<RetryLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: GraphFailure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    reason: RetryReason,
}

// === impl AttemptMetrics ===

impl AttemptMetrics {
    /// Registers the metrics of Graph's attempts in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            responses: register(
                registry,
                "graph_responses",
                "HTTP answers from Graph, by status, one per attempt",
                Family::default(),
            ),
            failures: register(
                registry,
                "graph_failures",
                "Graph attempts that got no HTTP answer, by kind",
                Family::default(),
            ),
            duration: register_seconds(
                registry,
                "graph_request_duration",
                "Time Graph took to answer one attempt (status and headers)",
                latency_histogram(),
            ),
            retries: register(
                registry,
                "graph_retries",
                "Graph attempts retried, by reason",
                Family::default(),
            ),
        };
        start_at_zero(
            &metrics.failures,
            GraphFailure::ALL.iter().map(|&kind| FailureLabels { kind }),
        );
        start_at_zero(
            &metrics.retries,
            RetryReason::ALL
                .iter()
                .map(|&reason| RetryLabels { reason }),
        );
        metrics
    }

    /// Counts an HTTP answer from Graph and how long it took.
    pub fn graph_answered(&self, status: u16, duration: Duration) {
        self.responses.get_or_create(&StatusLabels { status }).inc();
        self.duration.observe(duration.as_secs_f64());
    }

    /// Counts an attempt that got no HTTP answer.
    pub fn graph_failed(&self, kind: GraphFailure) {
        self.failures.get_or_create(&FailureLabels { kind }).inc();
    }

    /// Counts a retry.
    pub fn retried(&self, reason: RetryReason) {
        self.retries.get_or_create(&RetryLabels { reason }).inc();
    }
}
