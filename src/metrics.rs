//! Prometheus metrics, served as text at `GET /metrics` on the admin listener: the registry that
//! each subsystem registers its own metrics under (a sub-registry each, beside the code that
//! updates them: `service`, `retry`, `server`, `egress`'s pool, `graph`'s throttle gate, `entra`),
//! composed in `serve`, with the process metrics and the build. No label ever carries a token, an
//! ID or any other unbounded value: only the method, the gRPC code, the HTTP status, and small
//! fixed sets of reasons. Series of small fixed label sets start at 0, as Prometheus'
//! instrumentation guide asks: a counter that appears only when it first moves hides that first
//! move from rate(), and leaves dashboards and alerts with no series to show until then.

use std::{hash::Hash, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text::encode},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Metric, Registry, Unit},
};

/// Bucket bounds, in seconds, for a cloud API that usually answers in tens to hundreds of
/// milliseconds and may be held for up to the longest deadline (30 s by default).
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// The gateway's metrics, to encode for a scrape. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    git_hash: &'static str,
}

// === impl Metrics ===

impl Metrics {
    /// The process metrics and the build, with no subsystem's.
    pub fn new() -> Self {
        Self::with_subsystem(|_| ()).0
    }

    /// Registers the process metrics and the build, and the subsystems' metrics through
    /// `register`: it gets the gateway's registry (the `printjob_gateway` prefix, which every name
    /// it registers keeps), in which each subsystem takes a sub-registry of its own, and returns
    /// the subsystems' handles.
    pub fn with_subsystem<T>(register: impl FnOnce(&mut Registry) -> T) -> (Self, T) {
        // The process metrics keep their standard names (`process_…`, as every Prometheus client
        // library writes them, and as dashboards expect them), outside the gateway's prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("printjob_gateway");
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
        let subsystems = register(registry);
        let metrics = Self {
            registry: Arc::new(root),
        };
        (metrics, subsystems)
    }

    /// The metrics in the OpenMetrics text format, which Prometheus asks for.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// The metrics in the Prometheus text format (0.0.4), for scrapers that do not ask for
    /// OpenMetrics (and `promtool check metrics`): the samples are the same; a counter's family
    /// is named with its `_total` suffix, as that format wants, and there is no `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A sub-registry of `registry` for one subsystem: the same prefix (so the names it registers are
/// the ones dashboards know), no label added, its metrics written together.
pub fn subsystem(registry: &mut Registry) -> &mut Registry {
    registry.sub_registry_with_labels(std::iter::empty())
}

/// Registers `metric` in `registry` as `name`, with `help`, and returns it: the handle the
/// subsystem updates (its clones share what a scrape reads).
pub fn register<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`register`] for a metric measured in seconds (its name takes the `_seconds` suffix).
pub fn register_seconds<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// Creates the series of each label set in `label_sets`, at 0: series of small fixed label sets
/// start at 0 (see the module's documentation).
pub fn start_at_zero<S: Clone + Hash + Eq, M>(
    family: &Family<S, M>,
    label_sets: impl IntoIterator<Item = S>,
) {
    for labels in label_sets {
        let _ = family.get_or_create(&labels);
    }
}

/// Declares an enum whose variants are the values of a metric's label, a small fixed set, each
/// with the text the label shows: the enum, `ALL` (its variants in order, for the series that start
/// at 0), `as_str` and the label encoding, so that the variants and their texts are written once.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
pub(crate) use label_values;

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

/// A histogram of latencies, with bounds fit for calls to cloud APIs.
pub fn latency_histogram() -> Histogram {
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
    fn the_build_and_the_process_keep_their_names() {
        let text = Metrics::new().encode();
        for expected in [
            r#"printjob_gateway_build_info{version=""#,
            "# TYPE process_cpu_seconds counter",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
