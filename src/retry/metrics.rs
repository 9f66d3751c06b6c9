//! Graph's attempts, as the retry loop counts them: HTTP answers by status and how long they
//! took, attempts that got no answer, and retries by reason. Registered (with the service's
//! metrics) under a sub-registry of the gateway's (`metrics`), with the kinds and reasons that
//! only the retry loop tells apart.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::metrics::latency_histogram;

/// A Graph attempt that got no HTTP answer.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum GraphFailure {
    /// No connection could be made; nothing was sent.
    Unreachable,
    /// The connection failed after the request may have been sent.
    Transport,
    /// The call's deadline ran out while waiting.
    Timeout,
}

/// Why an attempt was retried.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RetryReason {
    /// Graph answered 429.
    Throttled,
    /// Graph answered 503.
    Unavailable,
    /// Graph answered 504.
    GatewayTimeout,
    /// No connection could be made.
    Unreachable,
}

/// The metrics of Graph's attempts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AttemptMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
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
        let responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "graph_responses",
            "HTTP answers from Graph, by status, one per attempt",
            responses.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "graph_failures",
            "Graph attempts that got no HTTP answer, by kind",
            failures.clone(),
        );
        let duration = latency_histogram();
        registry.register_with_unit(
            "graph_request_duration",
            "Time Graph took to answer one attempt (status and headers)",
            Unit::Seconds,
            duration.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "graph_retries",
            "Graph attempts retried, by reason",
            retries.clone(),
        );
        // Series of small fixed label sets start at 0 (see `metrics`).
        for kind in [
            GraphFailure::Unreachable,
            GraphFailure::Transport,
            GraphFailure::Timeout,
        ] {
            let _ = failures.get_or_create(&FailureLabels { kind });
        }
        for reason in [
            RetryReason::Throttled,
            RetryReason::Unavailable,
            RetryReason::GatewayTimeout,
            RetryReason::Unreachable,
        ] {
            let _ = retries.get_or_create(&RetryLabels { reason });
        }
        Self {
            inner: Arc::new(Inner {
                responses,
                failures,
                duration,
                retries,
            }),
        }
    }

    /// Counts an HTTP answer from Graph and how long it took.
    pub fn graph_answered(&self, status: u16, duration: Duration) {
        self.inner
            .responses
            .get_or_create(&StatusLabels { status })
            .inc();
        self.inner.duration.observe(duration.as_secs_f64());
    }

    /// Counts an attempt that got no HTTP answer.
    pub fn graph_failed(&self, kind: GraphFailure) {
        self.inner
            .failures
            .get_or_create(&FailureLabels { kind })
            .inc();
    }

    /// Counts a retry.
    pub fn retried(&self, reason: RetryReason) {
        self.inner
            .retries
            .get_or_create(&RetryLabels { reason })
            .inc();
    }
}

// === impl GraphFailure ===

impl GraphFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
        }
    }
}

impl EncodeLabelValue for GraphFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

// === impl RetryReason ===

impl RetryReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::GatewayTimeout => "gateway_timeout",
            Self::Unreachable => "unreachable",
        }
    }
}

impl EncodeLabelValue for RetryReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}
