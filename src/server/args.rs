//! The server's flags: where it listens, its TLS and its drain ("Listening and TLS"), and the
//! limits that keep one client from taking the gateway from the others ("Limits").

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{ListenAddr, TlsFiles};
use crate::{flags::parse_duration, service::Deadlines};

/// Where the gateway listens, its TLS, and how it drains.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listening and TLS")]
pub struct ListenArgs {
    /// Address of the gRPC API: PrintJobService, gRPC health and server reflection. A TCP address,
    /// or unix:/path/to/socket for a Unix domain socket (created with mode 0660).
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: ListenAddr,

    /// Address of the admin listener: gRPC health for Kubernetes probes.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,

    /// On SIGTERM or SIGINT, how long calls in flight may take to finish before they are ended
    /// with UNAVAILABLE and the process exits.
    #[arg(long, env = "PRINTJOB_GATEWAY_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// TLS certificate chain (PEM) of the gRPC API; with --tls-key, the API speaks only TLS.
    #[arg(long, env = "PRINTJOB_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of the gRPC API.
    #[arg(long, env = "PRINTJOB_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that callers' certificates must chain to (mTLS): callers without
    /// one are refused. Needs --tls-cert and --tls-key.
    #[arg(long, env = "PRINTJOB_GATEWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// How long calls and connections may take, and how many the gateway serves at once.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Deadline of a call whose caller sends none (no grpc-timeout).
    #[arg(long, env = "PRINTJOB_GATEWAY_DEFAULT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// Longest deadline of any call, whatever the caller asks; bounds how long shutdown can wait.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub max_timeout: Duration,

    /// Most calls in flight at once; beyond it calls fail fast with RESOURCE_EXHAUSTED instead of
    /// queueing.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_IN_FLIGHT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,

    /// Most connections open at once on each listener (the gRPC API and the admin listener, each
    /// its own budget). At the cap, a new connection takes the place of the oldest one still in
    /// its handshake, else of the one idle (no open stream) the longest, or is closed at once when
    /// every connection has a stream open (counted in printjob_gateway_connections_closed_total).
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// How long a new connection may take to finish TLS (when on) and send the HTTP/2 preface
    /// (on the admin listener, or its first HTTP/1.1 request head) before it is closed.
    #[arg(long, env = "PRINTJOB_GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long a connection may stay without an open stream (call, health Watch, HTTP request)
    /// before the gateway closes it (GOAWAY), whether or not its client sends PINGs.
    #[arg(long, env = "PRINTJOB_GATEWAY_IDLE_CONNECTION_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_connection_timeout: Duration,
}

// === impl ListenArgs ===

impl ListenArgs {
    /// The TLS files of the gRPC API, when TLS is on.
    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

// === impl LimitsArgs ===

impl LimitsArgs {
    /// The deadlines of calls, from the flags.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            default: self.default_timeout,
            max: self.max_timeout,
        }
    }

    /// `--max-in-flight`, as a count.
    pub fn max_in_flight(&self) -> usize {
        usize::try_from(self.max_in_flight).unwrap_or(usize::MAX)
    }

    /// `--max-connections`, as a count.
    pub fn max_connections(&self) -> usize {
        usize::try_from(self.max_connections).unwrap_or(usize::MAX)
    }
}
