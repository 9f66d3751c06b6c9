//! Graph's flags: where Graph is, how the gateway's connections to it are made and kept, and how
//! often a call is tried.

use std::{path::PathBuf, time::Duration};

use clap::{Args, error::ErrorKind};

use super::{GraphBaseUrl, GraphProtocol, ProxyEnv, Resolver, Settings};
use crate::{backoff::RetryPolicy, flags::parse_duration};

/// How the gateway reaches Microsoft Graph.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Graph")]
pub struct GraphArgs {
    /// Base URL of Microsoft Graph. Must be https, except for loopback hosts (local fakes); use
    /// another base for national clouds, such as https://graph.microsoft.us/v1.0.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_GRAPH_URL",
        default_value = "https://graph.microsoft.com/v1.0"
    )]
    pub graph_url: GraphBaseUrl,

    /// HTTP versions spoken to Graph: auto (HTTP/2 when Graph offers it over TLS, else HTTP/1.1),
    /// http1 (a pool of HTTP/1.1 connections), or http2 (HTTP/2 only; prior knowledge over plain
    /// http to loopback fakes).
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_PROTOCOL", value_enum, default_value_t = GraphProtocol::Auto)]
    pub graph_protocol: GraphProtocol,

    /// Extra CA certificates (PEM) to trust for Graph besides the platform's, for egress proxies
    /// that inspect TLS or a private Graph stand-in.
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_CA_FILE")]
    pub graph_ca_file: Option<PathBuf>,

    /// Most connections open to Graph at once. HTTP/2 connections are opened as the load needs
    /// them (when every one is at its stream limit); at this bound, calls wait for a stream
    /// within their deadline.
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub graph_max_connections: u16,

    /// Most calls carried at once on one HTTP/2 connection to Graph, when Graph allows more
    /// (its SETTINGS_MAX_CONCURRENT_STREAMS applies when lower).
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub graph_streams_per_connection: u32,

    /// How long a connection to Graph without calls stays open; below the idle timeouts of
    /// Graph's front doors and of common NATs, so the gateway closes first.
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_IDLE_TIMEOUT", default_value = "50s", value_parser = parse_duration)]
    pub graph_idle_timeout: Duration,

    /// How often an HTTP/2 connection to Graph is pinged, busy or idle, to find one whose peer
    /// went silent (a NAT or load balancer that dropped it).
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub graph_keepalive_interval: Duration,

    /// How long a ping to Graph may go unanswered before its connection is closed; the calls on
    /// it then fail with UNAVAILABLE, and the next calls use a new connection.
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub graph_keepalive_timeout: Duration,

    /// The proxy to Graph and Entra ID, from the standard variables rather than a flag (`config`
    /// reads them).
    #[arg(skip)]
    pub proxy: ProxyEnv,

    /// Longest time to open a connection to Graph, TLS handshake included.
    #[arg(long, env = "PRINTJOB_GATEWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Most attempts per call to Graph, the first included: 429, 503, 504 and connections that
    /// could not be made are retried; 1 turns retries off.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,

    /// Longest Retry-After from Graph that the gateway waits for before retrying, and the
    /// longest RetryInfo it suggests to a caller; longer ones are cut to it.
    #[arg(long, env = "PRINTJOB_GATEWAY_RETRY_AFTER_MAX", default_value = "10s", value_parser = parse_duration)]
    pub retry_after_max: Duration,

    /// When Graph throttles a tenant and app (429, or 503 with Retry-After), hold all of that
    /// tenant and app's calls at one gate until the window ends, then send one call first (on);
    /// or let each call back off on its own (off).
    #[arg(long, env = "PRINTJOB_GATEWAY_THROTTLE_GATE", default_value = "on", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub throttle_gate: bool,
}

// === impl GraphArgs ===

impl GraphArgs {
    /// Checks what a value parser cannot see alone: that the extra CA file holds certificates.
    /// The error is raw; `config` formats it with the command line's usage.
    pub fn check(&self) -> Result<(), clap::Error> {
        if let Some(path) = &self.graph_ca_file {
            check_ca_file(path)?;
        }
        Ok(())
    }

    /// Graph's client settings, from the flags.
    pub fn settings(&self) -> Settings {
        Settings {
            base_url: self.graph_url.clone(),
            connect_timeout: self.connect_timeout,
            protocol: self.graph_protocol,
            extra_ca: self.graph_ca_file.clone(),
            max_connections: usize::from(self.graph_max_connections),
            streams_per_connection: usize::try_from(self.graph_streams_per_connection)
                .unwrap_or(usize::MAX),
            idle_timeout: self.graph_idle_timeout,
            keepalive_interval: self.graph_keepalive_interval,
            keepalive_timeout: self.graph_keepalive_timeout,
            proxy: self.proxy.clone(),
            resolver: Resolver::system(),
            throttle_gate: self.throttle_gate,
        }
    }

    /// How often a call to Graph is tried, from the flags.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            retry_after_max: self.retry_after_max,
        }
    }
}

/// Checks that an extra CA file for Graph is readable and holds at least one certificate: an
/// empty file would otherwise add nothing, silently, and Graph's TLS would fail at the first call.
fn check_ca_file(path: &std::path::Path) -> Result<(), clap::Error> {
    let invalid = |problem: String| {
        clap::Error::raw(
            ErrorKind::InvalidValue,
            format!("--graph-ca-file {}: {problem}", path.display()),
        )
    };
    // Before the runtime starts: a read that blocks holds no worker, and SIGTERM still ends the
    // process. The same read as the connector's, so that what passes here loads there.
    let certificates = crate::egress::read_ca_certificates(path)
        .map_err(|error| invalid(crate::telemetry::ErrorChain(&error).to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    Ok(())
}
