//! Logs and traces: the tracing subscriber (text or JSON), and, when an OTLP endpoint is set,
//! OpenTelemetry: W3C trace context read from callers and sent to Graph, and spans exported over
//! OTLP/gRPC. This is the one place that installs process-wide state.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context, global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How logs are written and traces exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Human-readable text or one JSON object per line.
    pub log_format: LogFormat,
    /// Which logs to write, in RUST_LOG syntax.
    pub log_filter: String,
    /// The OTLP/gRPC endpoint to export traces to; no exporter runs without one.
    pub otlp_endpoint: Option<String>,
    /// The service name traces carry.
    pub service_name: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "printjob-gateway".to_owned(),
        }
    }
}

/// How logs are written and traces exported, for the gateway and every subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryArgs {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "PRINTJOB_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Which logs to write, in RUST_LOG syntax, such as `info` or `printjob_gateway=debug,info`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log_filter: String,

    /// OTLP/gRPC endpoint to export traces to, such as http://otel-collector:4317. Unset: no
    /// exporter runs. The other standard OTEL_* variables (OTEL_EXPORTER_OTLP_HEADERS,
    /// OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*) apply too.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The service name traces carry.
    #[arg(
        long,
        global = true,
        env = "OTEL_SERVICE_NAME",
        default_value = "printjob-gateway"
    )]
    pub otel_service_name: String,
}

// === impl TelemetryArgs ===

impl TelemetryArgs {
    /// The settings of logs and traces, from the flags.
    pub fn settings(&self) -> Settings {
        Settings {
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            service_name: self.otel_service_name.clone(),
        }
    }
}

/// Checks a log filter in RUST_LOG syntax.
fn parse_log_filter(text: &str) -> Result<String, tracing_subscriber::filter::ParseError> {
    EnvFilter::try_new(text).map(|_| text.to_owned())
}

/// Whether OpenTelemetry is on. When it is off, nothing reads or writes trace context, so it
/// costs nothing.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter is not valid RUST_LOG syntax.
    #[error("invalid log filter")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber is already installed.
    #[error("logging is already set up")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built.
    #[error("cannot set up the OTLP trace exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber (logs to stdout, as text or JSON), the panic hook that logs
/// through it ([`log_panic`]), and, when `settings.otlp_endpoint` is set, the OpenTelemetry layer,
/// exporter and W3C propagator.
///
/// Call it inside the Tokio runtime: the OTLP/gRPC exporter's connection lives on it.
pub fn init(settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&settings.log_filter)?;
    let provider = settings
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| tracer_provider(endpoint, &settings.service_name))
        .transpose()?;
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("printjob-gateway"))
            .with_tracked_inactivity(false)
    });
    let (text, json) = match settings.log_format {
        // Colour codes only for a person at a terminal: piped into a file or a log collector,
        // they would be noise in every line.
        LogFormat::Text => (
            Some(fmt::layer().with_ansi(std::io::stdout().is_terminal())),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(filter)
        .with(text)
        .with(json)
        .try_init()?;
    std::panic::set_hook(Box::new(log_panic));
    if provider.is_some() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Release);
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(
    endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

// === impl Telemetry ===

impl Telemetry {
    /// Sends the spans not yet exported and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The exporter's thread waits on the runtime to send: do not block a runtime worker.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "cannot flush traces");
            }
        }
    }
}

/// The panic hook: a panic, wherever it happens, is one ERROR event through the subscriber, in
/// place of the standard hook's text on stderr, which would be the one line of a JSON log that
/// is not JSON (log collectors read a pod's stderr and stdout as one stream). It runs on the
/// panicking thread before the unwind, so the line carries the span of the call that panicked;
/// the call itself is then answered INTERNAL (`service`). A backtrace is added when
/// `RUST_BACKTRACE` asks for one, as the standard hook does.
pub fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = info.location().map(ToString::to_string);
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    tracing::error!(
        panic.message = message,
        panic.location = location.as_deref(),
        panic.backtrace = backtrace.as_deref(),
        "panicked"
    );
}

/// Whether OpenTelemetry is on.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Acquire)
}

/// Makes `span` a child of the caller's span, from the W3C `traceparent`/`tracestate` metadata.
pub fn continue_trace(span: &Span, metadata: &MetadataMap) {
    if tracing_enabled() {
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&MetadataExtractor(metadata))
        });
        let _ = span.set_parent(parent);
    }
}

/// The W3C trace context of the current span, as headers for the Graph request.
pub fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if tracing_enabled() {
        let context = Span::current().context();
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut headers))
        });
    }
    headers
}

/// The trace ID of a call, for its log line: the span's when OpenTelemetry is on, else the
/// caller's `traceparent`, if it sent a valid one.
pub fn trace_id(span: &Span, metadata: &MetadataMap) -> Option<String> {
    if tracing_enabled() {
        let context: Context = span.context();
        let trace_id = context.span().span_context().trace_id();
        return (trace_id != opentelemetry::trace::TraceId::INVALID).then(|| trace_id.to_string());
    }
    let traceparent = metadata.get("traceparent")?.to_str().ok()?;
    let mut parts = traceparent.split('-');
    let (version, trace_id) = (parts.next()?, parts.next()?);
    let valid = version.len() == 2
        && trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_owned())
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// Displays an error and its sources on one line, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_trace_id_is_read_from_a_valid_traceparent() {
        let cases = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            ("garbage", None),
        ];
        for (traceparent, expected) in cases {
            let mut metadata = MetadataMap::new();
            metadata.insert("traceparent", traceparent.parse().unwrap());
            assert_eq!(
                trace_id(&Span::none(), &metadata).as_deref(),
                expected,
                "{traceparent}"
            );
        }
    }
}
