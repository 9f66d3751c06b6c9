//! Every setting of the gateway: its flag, its environment twin and its default. [`Config`] is
//! parsed and checked once in `main` and passed down; nothing else reads the environment.

use std::{net::SocketAddr, time::Duration};

use clap::{CommandFactory, Parser, ValueEnum, error::ErrorKind};

use crate::graph::{GraphBaseUrl, GraphSettings};

/// printjob-gateway: cancels Universal Print jobs through Microsoft Graph for gRPC callers.
///
/// Serves `graph.print.v1.PrintJobService/Cancel` and forwards every call, with the caller's
/// bearer token, as `POST /print/printers/{printerId}/jobs/{printJobId}/cancel` to Graph.
#[derive(Debug, Clone, Parser)]
#[command(name = "printjob-gateway", version, about, long_about)]
pub struct Config {
    /// Address of the gRPC API: PrintJobService, gRPC health and server reflection.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Address of the admin listener: gRPC health for Kubernetes probes.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,

    /// Base URL of Microsoft Graph. Must be https, except for loopback hosts (local fakes); use
    /// another base for national clouds, such as https://graph.microsoft.us/v1.0.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_GRAPH_URL",
        default_value = "https://graph.microsoft.com/v1.0"
    )]
    pub graph_url: GraphBaseUrl,

    /// Deadline of a call whose caller sends none (no grpc-timeout).
    #[arg(long, env = "PRINTJOB_GATEWAY_DEFAULT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// Longest deadline of any call, whatever the caller asks; bounds how long shutdown can wait.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub max_timeout: Duration,

    /// Longest time to open a connection to Graph, TLS handshake included.
    #[arg(long, env = "PRINTJOB_GATEWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// On SIGTERM or SIGINT, how long calls in flight may take to finish before they are ended
    /// with UNAVAILABLE and the process exits.
    #[arg(long, env = "PRINTJOB_GATEWAY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "PRINTJOB_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Which logs to write, in RUST_LOG syntax, such as `info` or `printjob_gateway=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log_filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

// === impl Config ===

impl Config {
    /// Parses the command line and the environment, checks the settings against each other, and
    /// exits with a clear message and a non-zero code when they are wrong.
    pub fn load() -> Self {
        Self::parse().checked().unwrap_or_else(|error| error.exit())
    }

    /// Like [`Config::load`], from the given arguments (and the environment), returning errors.
    pub fn try_load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)?.checked()
    }

    fn checked(self) -> Result<Self, clap::Error> {
        if self.default_timeout > self.max_timeout {
            return Err(Self::command().error(
                ErrorKind::ArgumentConflict,
                "--default-timeout must not be longer than --max-timeout",
            ));
        }
        if self.default_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Self::command().error(
                ErrorKind::InvalidValue,
                "--default-timeout and --connect-timeout must be longer than zero",
            ));
        }
        Ok(self)
    }

    /// The settings of the HTTP client that talks to Graph.
    pub fn graph_settings(&self) -> GraphSettings {
        GraphSettings {
            base_url: self.graph_url.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// Checks a log filter in RUST_LOG syntax.
fn parse_log_filter(text: &str) -> Result<String, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::try_new(text).map(|_| text.to_owned())
}

/// Parses a duration such as `10s`, `1500ms` or `2m`.
fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::try_load_from(["printjob-gateway"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(config.admin_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(
            config.graph_url.to_string(),
            "https://graph.microsoft.com/v1.0"
        );
        assert_eq!(config.default_timeout, Duration::from_secs(10));
        assert_eq!(config.max_timeout, Duration::from_secs(30));
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn contradictory_timeouts_are_refused() {
        let error = Config::try_load_from([
            "printjob-gateway",
            "--default-timeout",
            "1m",
            "--max-timeout",
            "10s",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn clap_definition_is_consistent() {
        Config::command().debug_assert();
    }
}
