//! The pool's metrics: connections to Graph opened and open, calls waiting for a stream, and
//! requests Graph did not process, sent again. Registered under a sub-registry of the gateway's
//! (`metrics`), with the reasons for a re-send, which only the pool tells apart.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::metrics::{label_values, register, start_at_zero};

label_values! {
    /// Why a request that Graph did not process was sent again on another connection.
    pub enum ResendReason {
        /// Graph's GOAWAY came before the request's stream.
        GoAway => "goaway",
        /// Graph refused the stream (REFUSED_STREAM).
        Refused => "refused",
        /// The connection was closed, or going away after Graph's GOAWAY, before the request left
        /// the gateway.
        Closed => "closed",
    }
}

/// The pool's metrics. Each field is a handle on what a scrape reads (an `Arc` inside); the pool
/// holds them in its shared state, so they are cloned only at start-up.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    connections_opened: Family<ProtocolLabels, Counter>,
    connections_open: Gauge,
    requests_resent: Family<ResendLabels, Counter>,
    calls_waiting: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResendLabels {
    reason: ResendReason,
}

// === impl PoolMetrics ===

impl PoolMetrics {
    /// Registers the pool's metrics in `registry` (a sub-registry for the pool).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections_opened: register(
                registry,
                "graph_connections_opened",
                "Connections opened to Graph, by protocol (h2, http1)",
                Family::default(),
            ),
            connections_open: register(
                registry,
                "graph_connections_open",
                "Connections to Graph open now",
                Gauge::default(),
            ),
            requests_resent: register(
                registry,
                "graph_requests_resent",
                "Requests Graph did not process, sent again at once on another connection (not retries)",
                Family::default(),
            ),
            calls_waiting: register(
                registry,
                "graph_calls_waiting",
                "Calls waiting for a stream to Graph: every connection full, or being opened",
                Gauge::default(),
            ),
        };
        start_at_zero(
            &metrics.requests_resent,
            ResendReason::ALL
                .iter()
                .map(|&reason| ResendLabels { reason }),
        );
        metrics
    }

    /// Counts a connection opened to Graph; `protocol` is `h2` or `http1`.
    pub fn graph_connection_opened(&self, protocol: &'static str) {
        self.connections_opened
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
        self.connections_open.inc();
    }

    /// Counts a connection to Graph closed.
    pub fn graph_connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Sets how many calls wait for a stream to Graph.
    pub fn graph_calls_waiting(&self, waiting: usize) {
        self.calls_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Counts a request sent again because Graph did not process it.
    pub fn graph_request_resent(&self, reason: ResendReason) {
        self.requests_resent
            .get_or_create(&ResendLabels { reason })
            .inc();
    }
}
