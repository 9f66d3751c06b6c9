//! Graph's client metrics: the pool's (`egress`) and the throttle gate's, registered together
//! when the client is built. Each under a sub-registry of the gateway's (`metrics`).

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

use crate::{
    egress::PoolMetrics,
    metrics::{InFlight, register, register_seconds, subsystem},
};

/// The metrics of Graph's client: its pool's and its throttle gate's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphMetrics {
    /// The connections to Graph and the calls waiting for them.
    pub pool: PoolMetrics,
    /// The throttle gate's windows and the calls held at it.
    pub throttle: ThrottleMetrics,
}

/// The throttle gate's metrics. Each field is a handle on what a scrape reads (an `Arc` inside);
/// the gate holds them in its shared state, so they are cloned only at start-up.
#[derive(Debug, Clone)]
pub struct ThrottleMetrics {
    windows: Counter,
    calls_held: Gauge,
    throttled_seconds: Counter<f64, AtomicU64>,
}

// === impl GraphMetrics ===

impl GraphMetrics {
    /// Registers the pool's and the throttle gate's metrics, each in a sub-registry of
    /// `registry` (whose prefix their names keep).
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            pool: PoolMetrics::register(subsystem(registry)),
            throttle: ThrottleMetrics::register(subsystem(registry)),
        }
    }
}

// === impl ThrottleMetrics ===

impl ThrottleMetrics {
    /// Registers the throttle gate's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            windows: register(
                registry,
                "graph_throttle_windows",
                "Throttle windows opened: Graph answered 429 (or 503 with Retry-After) and the gateway held that tenant and app's calls until the window ended",
                Counter::default(),
            ),
            calls_held: register(
                registry,
                "graph_calls_held",
                "Calls waiting at the throttle gate now, for their tenant and app's window to end",
                Gauge::default(),
            ),
            throttled_seconds: register_seconds(
                registry,
                "graph_throttled",
                "Time throttle windows lasted, summed over tenants and apps",
                Counter::default(),
            ),
        }
    }

    /// Counts a throttle window opened.
    pub fn throttle_window_opened(&self) {
        self.windows.inc();
    }

    /// Adds the time a throttle window lasted, when it ends.
    pub fn throttle_window_closed(&self, lasted: Duration) {
        self.throttled_seconds.inc_by(lasted.as_secs_f64());
    }

    /// Counts a call held at the throttle gate until the returned guard is dropped.
    pub fn call_held(&self) -> InFlight {
        InFlight::count(self.calls_held.clone())
    }
}
