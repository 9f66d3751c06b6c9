//! The service's metrics: calls answered by method and code and how long they took, calls in
//! flight and their limit, calls refused at it, the reads of a job after a 409, and (registered
//! with them, set by `retry`) Graph's attempts. Registered under a sub-registry of the gateway's
//! (`metrics`), with the outcomes of a job read, which only the service tells apart.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use tonic::Code;

use super::METHOD;
use crate::{
    metrics::{
        InFlight, label_values, latency_histogram, register, register_seconds, start_at_zero,
        subsystem,
    },
    retry::AttemptMetrics,
    status::code_name,
};

label_values! {
    /// What a read of a job, after Graph refused a cancel with 409, found.
    pub enum JobReadOutcome {
        /// The job is canceled: the call answered OK with `already_canceled`.
        AlreadyCanceled => "already_canceled",
        /// The job is in another state, such as completed: the call answered FAILED_PRECONDITION.
        NotCancelable => "not_cancelable",
        /// The read failed: the call answered the 409 as it is.
        Failed => "failed",
        /// The call's deadline ran out during the read.
        Timeout => "timeout",
    }
}

/// The service's metrics, and the attempts of its Graph calls. Each field is a handle on what a
/// scrape reads (an `Arc` inside); the gateway holds them in its shared state, so they are cloned
/// only at start-up.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    /// Graph's attempts, which the retry loop counts.
    pub attempts: AttemptMetrics,
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabels, Histogram>,
    job_reads: Family<JobReadLabels, Counter>,
    in_flight: Gauge,
    overload_rejections: Counter,
    in_flight_limit: Gauge,
    /// The series of `calls` and `call_duration` that answered calls count in.
    answered: Arc<AnsweredSeries>,
}

/// Handles on the series of [`METHOD`] in `calls` (one per gRPC code) and `call_duration`,
/// each taken from its family the first time a call needs it: later calls count without a
/// label lookup (a read lock and a hash of the labels per family). A series still appears only
/// once a call has counted in it, as before.
#[derive(Debug, Default)]
struct AnsweredSeries {
    /// By the code's number, 0 (`OK`) to 16 (`UNAUTHENTICATED`).
    calls: [OnceLock<Counter>; 17],
    duration: OnceLock<Histogram>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobReadLabels {
    outcome: JobReadOutcome,
}

// === impl CallMetrics ===

impl CallMetrics {
    /// Registers the service's metrics and Graph's attempts, each in a sub-registry of
    /// `registry` (whose prefix their names keep).
    pub fn register(registry: &mut Registry) -> Self {
        let attempts = AttemptMetrics::register(subsystem(registry));
        let registry = subsystem(registry);
        let metrics = Self {
            attempts,
            calls: register(
                registry,
                "calls",
                "gRPC calls answered, by method and gRPC code",
                Family::default(),
            ),
            call_duration: register_seconds(
                registry,
                "call_duration",
                "Time from a call's arrival to its answer",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            job_reads: register(
                registry,
                "job_reads",
                "Reads of a job after Graph refused a cancel with 409, by what they found",
                Family::default(),
            ),
            in_flight: register(
                registry,
                "calls_in_flight",
                "Cancel calls being served now",
                Gauge::default(),
            ),
            overload_rejections: register(
                registry,
                "overload_rejections",
                "Calls refused with RESOURCE_EXHAUSTED because the gateway was at its limit of calls in flight",
                Counter::default(),
            ),
            in_flight_limit: register(
                registry,
                "calls_in_flight_limit",
                "The most cancel calls served at once (--max-in-flight)",
                Gauge::default(),
            ),
            answered: Arc::default(),
        };
        start_at_zero(
            &metrics.job_reads,
            JobReadOutcome::ALL
                .iter()
                .map(|&outcome| JobReadLabels { outcome }),
        );
        metrics
    }

    /// Sets the limit an operator's alerts compare the calls in flight with: `--max-in-flight`.
    pub fn set_in_flight_limit(&self, max_in_flight: usize) {
        self.in_flight_limit
            .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
    }

    /// Counts an answered call and its duration, labelled with [`METHOD`] and the code's name
    /// ([`code_name`], such as `NOT_FOUND`).
    pub fn call_answered(&self, code: Code, duration: Duration) {
        let series = &self.answered;
        let resolve = || {
            self.calls
                .get_or_create(&CallLabels {
                    method: METHOD,
                    code: code_name(code),
                })
                .clone()
        };
        match usize::try_from(code as i32)
            .ok()
            .and_then(|index| series.calls.get(index))
        {
            Some(counter) => counter.get_or_init(resolve).inc(),
            None => resolve().inc(),
        };
        series
            .duration
            .get_or_init(|| {
                self.call_duration
                    .get_or_create(&MethodLabels { method: METHOD })
                    .clone()
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts a read of a job after a 409, by what it found.
    pub fn job_read(&self, outcome: JobReadOutcome) {
        self.job_reads
            .get_or_create(&JobReadLabels { outcome })
            .inc();
    }

    /// Counts a call turned away at the limit of calls in flight.
    pub fn overloaded(&self) {
        self.overload_rejections.inc();
    }

    /// Counts a call in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        InFlight::count(self.in_flight.clone())
    }
}
