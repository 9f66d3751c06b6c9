//! The token exchange's metrics: requests to Entra ID's token endpoint by outcome and how long
//! they took, and lookups in the cache of exchanged tokens. Registered under a sub-registry of the
//! gateway's (`metrics`).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::metrics::{latency_histogram, register, register_seconds};

/// The token exchange's metrics. Each field is a handle on what a scrape reads (an `Arc`
/// inside); the exchange holds them in its shared state, so they are cloned only at start-up.
#[derive(Debug, Clone)]
pub struct ExchangeMetrics {
    exchanges: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    cache_lookups: Family<LookupLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

// === impl ExchangeMetrics ===

impl ExchangeMetrics {
    /// Registers the token exchange's metrics in `registry` (a sub-registry for the exchange).
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            exchanges: register(
                registry,
                "token_exchanges",
                "Requests to Entra ID's token endpoint for the on-behalf-of exchange, by outcome",
                Family::default(),
            ),
            duration: register_seconds(
                registry,
                "token_exchange_duration",
                "Time Entra ID's token endpoint took to answer one request",
                latency_histogram(),
            ),
            cache_lookups: register(
                registry,
                "token_cache_lookups",
                "Lookups of an exchanged Graph token, by result: hit (cached, or shared with a call in flight) or miss",
                Family::default(),
            ),
        }
    }

    /// Counts a request to Entra ID's token endpoint by outcome (one of a fixed set of names),
    /// and how long it took.
    pub fn token_exchanged(&self, outcome: &'static str, duration: Duration) {
        self.exchanges
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.duration.observe(duration.as_secs_f64());
    }

    /// Counts a lookup in the cache of exchanged tokens.
    pub fn token_cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&LookupLabels { result })
            .inc();
    }
}
