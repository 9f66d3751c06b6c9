//! Prometheus metrics, served as text at `GET /metrics` on the admin listener. A handle built
//! once in `serve` and cloned where calls and attempts are counted. No label ever carries a
//! token, an ID or any other unbounded value: only the method, the gRPC code, the HTTP status,
//! and small fixed sets of reasons.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
        prometheus_text, text::encode,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

/// Bucket bounds, in seconds, for a cloud API that usually answers in tens to hundreds of
/// milliseconds and may be held for up to the longest deadline (30 s by default).
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// The gateway's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabels, Histogram>,
    graph_responses: Family<StatusLabels, Counter>,
    graph_failures: Family<FailureLabels, Counter>,
    graph_duration: Histogram,
    retries: Family<RetryLabels, Counter>,
    job_reads: Family<JobReadLabels, Counter>,
    in_flight: Gauge,
    overload_rejections: Counter,
    token_exchanges: Family<OutcomeLabels, Counter>,
    token_exchange_duration: Histogram,
    token_cache_lookups: Family<LookupLabels, Counter>,
    in_flight_limit: Gauge,
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobReadLabels {
    outcome: JobReadOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    git_hash: &'static str,
}

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

/// What a read of a job, after Graph refused a cancel with 409, found.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum JobReadOutcome {
    /// The job is canceled: the call answered OK with `already_canceled`.
    AlreadyCanceled,
    /// The job is in another state, such as completed: the call answered FAILED_PRECONDITION.
    NotCancelable,
    /// The read failed: the call answered the 409 as it is.
    Failed,
    /// The call's deadline ran out during the read.
    Timeout,
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

// === impl JobReadOutcome ===

impl JobReadOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyCanceled => "already_canceled",
            Self::NotCancelable => "not_cancelable",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
}

impl EncodeLabelValue for JobReadOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

// === impl Metrics ===

impl Metrics {
    /// Registers the gateway's metrics under the `printjob_gateway` prefix, with no subsystem
    /// that registers its own (tests that need only these).
    pub fn new() -> Self {
        Self::with_subsystem(|_| ()).0
    }

    /// Registers the gateway's metrics under the `printjob_gateway` prefix, and a subsystem's
    /// through `register`, which gets a sub-registry of its own under the same prefix (the names
    /// it registers keep it) and returns the subsystem's handle.
    pub fn with_subsystem<T>(register: impl FnOnce(&mut Registry) -> T) -> (Self, T) {
        // The process metrics keep their standard names (`process_…`, as every Prometheus client
        // library writes them, and as dashboards expect them), outside the gateway's prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("printjob_gateway");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "gRPC calls answered, by method and gRPC code",
            calls.clone(),
        );
        let call_duration = Family::<MethodLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "call_duration",
            "Time from a call's arrival to its answer",
            Unit::Seconds,
            call_duration.clone(),
        );
        let graph_responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "graph_responses",
            "HTTP answers from Graph, by status, one per attempt",
            graph_responses.clone(),
        );
        let graph_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "graph_failures",
            "Graph attempts that got no HTTP answer, by kind",
            graph_failures.clone(),
        );
        let graph_duration = latency_histogram();
        registry.register_with_unit(
            "graph_request_duration",
            "Time Graph took to answer one attempt (status and headers)",
            Unit::Seconds,
            graph_duration.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "graph_retries",
            "Graph attempts retried, by reason",
            retries.clone(),
        );
        let job_reads = Family::<JobReadLabels, Counter>::default();
        registry.register(
            "job_reads",
            "Reads of a job after Graph refused a cancel with 409, by what they found",
            job_reads.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "calls_in_flight",
            "Cancel calls being served now",
            in_flight.clone(),
        );
        let overload_rejections = Counter::default();
        registry.register(
            "overload_rejections",
            "Calls refused with RESOURCE_EXHAUSTED because the gateway was at its limit of calls in flight",
            overload_rejections.clone(),
        );
        let token_exchanges = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_exchanges",
            "Requests to Entra ID's token endpoint for the on-behalf-of exchange, by outcome",
            token_exchanges.clone(),
        );
        let token_exchange_duration = latency_histogram();
        registry.register_with_unit(
            "token_exchange_duration",
            "Time Entra ID's token endpoint took to answer one request",
            Unit::Seconds,
            token_exchange_duration.clone(),
        );
        let token_cache_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "token_cache_lookups",
            "Lookups of an exchanged Graph token, by result: hit (cached, or shared with a call in flight) or miss",
            token_cache_lookups.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                git_hash: env!("PRINTJOB_GATEWAY_GIT_HASH"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running build: version and git commit",
            build_info,
        );
        let in_flight_limit = Gauge::default();
        registry.register(
            "calls_in_flight_limit",
            "The most cancel calls served at once (--max-in-flight)",
            in_flight_limit.clone(),
        );
        // Series of small fixed label sets start at 0, as Prometheus' instrumentation guide asks:
        // a counter that appears only when it first moves hides that first move from rate(), and
        // leaves dashboards and alerts with no series to show until then.
        for kind in [
            GraphFailure::Unreachable,
            GraphFailure::Transport,
            GraphFailure::Timeout,
        ] {
            let _ = graph_failures.get_or_create(&FailureLabels { kind });
        }
        for reason in [
            RetryReason::Throttled,
            RetryReason::Unavailable,
            RetryReason::GatewayTimeout,
            RetryReason::Unreachable,
        ] {
            let _ = retries.get_or_create(&RetryLabels { reason });
        }
        for outcome in [
            JobReadOutcome::AlreadyCanceled,
            JobReadOutcome::NotCancelable,
            JobReadOutcome::Failed,
            JobReadOutcome::Timeout,
        ] {
            let _ = job_reads.get_or_create(&JobReadLabels { outcome });
        }
        let subsystem = register(registry.sub_registry_with_labels(std::iter::empty()));
        let metrics = Self {
            inner: Arc::new(Inner {
                registry: root,
                calls,
                call_duration,
                graph_responses,
                graph_failures,
                graph_duration,
                retries,
                job_reads,
                in_flight,
                overload_rejections,
                token_exchanges,
                token_exchange_duration,
                token_cache_lookups,
                in_flight_limit,
            }),
        };
        (metrics, subsystem)
    }

    /// Sets the limit an operator's alerts compare the calls in flight with: `--max-in-flight`.
    pub fn set_in_flight_limit(&self, max_in_flight: usize) {
        self.inner
            .in_flight_limit
            .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
    }

    /// Counts an answered call and its duration.
    ///
    /// `code` is the gRPC code's name, such as `NOT_FOUND` ([`crate::status::code_name`]): the
    /// names are a gRPC fact that status.rs owns, and metrics, which graph/ uses, stays below it.
    pub fn call_answered(&self, method: &'static str, code: &'static str, duration: Duration) {
        self.inner
            .calls
            .get_or_create(&CallLabels { method, code })
            .inc();
        self.inner
            .call_duration
            .get_or_create(&MethodLabels { method })
            .observe(duration.as_secs_f64());
    }

    /// Counts an HTTP answer from Graph and how long it took.
    pub fn graph_answered(&self, status: u16, duration: Duration) {
        self.inner
            .graph_responses
            .get_or_create(&StatusLabels { status })
            .inc();
        self.inner.graph_duration.observe(duration.as_secs_f64());
    }

    /// Counts an attempt that got no HTTP answer.
    pub fn graph_failed(&self, kind: GraphFailure) {
        self.inner
            .graph_failures
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

    /// Counts a read of a job after a 409, by what it found.
    pub fn job_read(&self, outcome: JobReadOutcome) {
        self.inner
            .job_reads
            .get_or_create(&JobReadLabels { outcome })
            .inc();
    }

    /// Counts a request to Entra ID's token endpoint by outcome (one of a fixed set of names),
    /// and how long it took.
    pub fn token_exchanged(&self, outcome: &'static str, duration: Duration) {
        self.inner
            .token_exchanges
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.inner
            .token_exchange_duration
            .observe(duration.as_secs_f64());
    }

    /// Counts a lookup in the cache of exchanged tokens.
    pub fn token_cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.inner
            .token_cache_lookups
            .get_or_create(&LookupLabels { result })
            .inc();
    }

    /// Counts a call turned away at the limit of calls in flight.
    pub fn overloaded(&self) {
        self.inner.overload_rejections.inc();
    }

    /// Counts a call in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.inner.in_flight.inc();
        InFlight(self.inner.in_flight.clone())
    }

    /// The metrics in the OpenMetrics text format, which Prometheus asks for.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }

    /// The metrics in the Prometheus text format (0.0.4), for scrapers that do not ask for
    /// OpenMetrics (and `promtool check metrics`): the samples are the same; a counter's family
    /// is named with its `_total` suffix, as that format wants, and there is no `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A call (or a connection) in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl InFlight {
    /// Counts one more in `gauge` until the returned guard is dropped.
    pub fn count(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The gateway process's CPU time, memory and file descriptors, read from `/proc` (procfs) at
/// each scrape, under the names every Prometheus client library gives them. Where `/proc` cannot
/// be read (not Linux), the metrics are left out rather than reported as zero.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(process) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        if let Ok(stat) = process.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = gauge(stat.rss.saturating_mul(procfs::page_size()));
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                rss.metric_type(),
            )?)?;
            let virtual_memory = gauge(stat.vsize);
            virtual_memory.encode(encoder.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                None,
                virtual_memory.metric_type(),
            )?)?;
            let threads = gauge(u64::try_from(stat.num_threads).unwrap_or(0));
            threads.encode(encoder.encode_descriptor(
                "process_threads",
                "Number of OS threads in the process",
                None,
                threads.metric_type(),
            )?)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                start.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    start.metric_type(),
                )?)?;
            }
        }
        if let Ok(open) = process.fd_count() {
            let open = gauge(u64::try_from(open).unwrap_or(0));
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Ok(limits) = process.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            let max = gauge(max);
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_fixed_label_sets_start_at_zero() {
        let text = Metrics::new().encode_prometheus_text();
        for expected in [
            r#"printjob_gateway_graph_failures_total{kind="unreachable"} 0"#,
            r#"printjob_gateway_graph_retries_total{reason="throttled"} 0"#,
            r#"printjob_gateway_job_reads_total{outcome="failed"} 0"#,
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.call_answered("Cancel", "NOT_FOUND", Duration::from_millis(20));
        metrics.graph_answered(404, Duration::from_millis(15));
        metrics.graph_failed(GraphFailure::Unreachable);
        metrics.retried(RetryReason::Throttled);
        metrics.job_read(JobReadOutcome::AlreadyCanceled);
        metrics.overloaded();
        metrics.token_exchanged("ok", Duration::from_millis(80));
        metrics.token_cache_lookup(true);
        metrics.set_in_flight_limit(1000);
        let text = metrics.encode();
        for expected in [
            r#"printjob_gateway_calls_total{method="Cancel",code="NOT_FOUND"} 1"#,
            r#"printjob_gateway_call_duration_seconds_bucket{le="0.025",method="Cancel"} 1"#,
            r#"printjob_gateway_graph_responses_total{status="404"} 1"#,
            r#"printjob_gateway_graph_failures_total{kind="unreachable"} 1"#,
            "printjob_gateway_graph_request_duration_seconds_count 1",
            r#"printjob_gateway_graph_retries_total{reason="throttled"} 1"#,
            r#"printjob_gateway_job_reads_total{outcome="already_canceled"} 1"#,
            "printjob_gateway_calls_in_flight 0",
            "printjob_gateway_overload_rejections_total 1",
            r#"printjob_gateway_token_exchanges_total{outcome="ok"} 1"#,
            "printjob_gateway_token_exchange_duration_seconds_count 1",
            r#"printjob_gateway_token_cache_lookups_total{result="hit"} 1"#,
            r#"printjob_gateway_build_info{version=""#,
            "printjob_gateway_calls_in_flight_limit 1000",
            "# TYPE process_cpu_seconds counter",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
