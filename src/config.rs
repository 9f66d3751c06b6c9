//! Every setting: its flag, its environment twin and its default. [`Cli`] is parsed and checked
//! once in `main`; it then hands each subsystem its own settings value ([`server::Settings`],
//! [`telemetry::Settings`], [`simulator::Settings`]). Only `main` and `app` use this module, and
//! nothing else reads the environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{
    ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind,
    parser::ValueSource,
};

use crate::{
    entra::{self, CredentialSource, EntraAuthority, TokenExchange},
    graph::{self, GraphBaseUrl, GraphProtocol},
    retry::RetryPolicy,
    server::{self, ListenAddr, TlsFiles},
    service::{CallPolicy, Deadlines},
    simulator,
    telemetry::{self, LogFormat},
};

/// printjob-gateway: cancels Universal Print jobs through Microsoft Graph for gRPC callers.
///
/// Serves `graph.print.v1.PrintJobService/Cancel` and forwards every call, with the caller's
/// bearer token, as `POST /print/printers/{printerId}/jobs/{printJobId}/cancel` to Graph.
/// Try it without Universal Print: `printjob-gateway --demo`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "printjob-gateway",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run instead of the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The gateway's settings.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Logs and traces, for the gateway and every subcommand.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// What the binary can run besides the gateway.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serves a simulated Microsoft Graph print-job cancel endpoint, to try the gateway and test
    /// callers without Universal Print.
    Simulate(SimulatorArgs),
}

/// The gateway's settings.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
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

    /// The proxy to Graph and Entra ID, from the standard variables rather than a flag (see
    /// [`proxy_env`]).
    #[arg(skip)]
    pub proxy: graph::ProxyEnv,

    /// Deadline of a call whose caller sends none (no grpc-timeout).
    #[arg(long, env = "PRINTJOB_GATEWAY_DEFAULT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// Longest deadline of any call, whatever the caller asks; bounds how long shutdown can wait.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub max_timeout: Duration,

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

    /// Most calls in flight at once; beyond it calls fail fast with RESOURCE_EXHAUSTED instead of
    /// queueing.
    #[arg(long, env = "PRINTJOB_GATEWAY_MAX_IN_FLIGHT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,

    /// On SIGTERM or SIGINT, how long calls in flight may take to finish before they are ended
    /// with UNAVAILABLE and the process exits.
    #[arg(long, env = "PRINTJOB_GATEWAY_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

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

    /// Threads that serve calls; the CPUs available to the process (cgroup limits included)
    /// when unset. A sidecar rarely needs more than 1 or 2.
    #[arg(long, env = "PRINTJOB_GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Which token goes to Graph: none (the caller's own token, unchanged: callers send a Graph
    /// token) or obo (the on-behalf-of exchange: callers send a token for their own API, and the
    /// gateway exchanges it at Entra ID for a Graph token, with the app registration below).
    #[arg(long, env = "PRINTJOB_GATEWAY_TOKEN_EXCHANGE", value_enum, default_value_t = TokenExchange::None)]
    pub token_exchange: TokenExchange,

    /// Entra ID's authority for the on-behalf-of exchange; another host for national clouds,
    /// such as https://login.microsoftonline.us. Must be https, except for loopback hosts.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = entra::PUBLIC_AUTHORITY,
        value_name = "URL"
    )]
    pub entra_authority: EntraAuthority,

    /// Tenant (directory) ID or domain of the app registration, for the on-behalf-of exchange.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,

    /// Application (client) ID of the app registration that callers' tokens are issued for, for
    /// the on-behalf-of exchange.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,

    /// File holding the app's client secret (a trailing newline is ignored). One of the three
    /// client credentials of the on-behalf-of exchange.
    #[arg(long, env = "PRINTJOB_GATEWAY_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// PEM file with the app's certificate chain and its RSA private key, which signs a
    /// client_assertion (JWT with an x5t#S256 header) for each exchange. One of the three client
    /// credentials of the on-behalf-of exchange.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_CLIENT_CERTIFICATE_FILE",
        value_name = "FILE"
    )]
    pub client_certificate_file: Option<PathBuf>,

    /// File holding a federated token (Azure workload identity: a Kubernetes service-account
    /// token) sent as the client_assertion; read again at each exchange, since it rotates. One
    /// of the three client credentials of the on-behalf-of exchange.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// Scope the on-behalf-of exchange asks for [default: https://<host of --graph-url>/.default,
    /// so that national clouds get their own Graph].
    #[arg(long, env = "PRINTJOB_GATEWAY_GRAPH_SCOPE")]
    pub graph_scope: Option<String>,

    /// On-behalf-of exchanges per second, on average, with bursts of five seconds' worth; past
    /// it, calls that need a new exchange fail fast with RESOURCE_EXHAUSTED
    /// (TOKEN_EXCHANGE_RATE_LIMITED) and a RetryInfo. Cached tokens are not counted.
    #[arg(long, env = "PRINTJOB_GATEWAY_TOKEN_EXCHANGE_RATE", default_value_t = entra::DEFAULT_EXCHANGE_RATE, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "PER_SECOND")]
    pub token_exchange_rate: u32,

    /// Starts a simulated Graph on loopback and serves the gateway in front of it, with the
    /// simulator's built-in printers and jobs, and prints grpcurl commands to try; it logs a WARN
    /// line that Graph is simulated at start and every 5 minutes. With --token-exchange obo, the
    /// simulator's Entra endpoint exchanges the callers' tokens, as a demo app registration. It
    /// refuses to start when Graph's URL or an on-behalf-of setting is also set.
    #[arg(long, env = "PRINTJOB_GATEWAY_DEMO")]
    pub demo: bool,
}

/// How logs are written and traces exported.
#[derive(Debug, Clone, Args)]
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

/// The simulated Graph's settings.
#[derive(Debug, Clone, Args)]
pub struct SimulatorArgs {
    /// Address to serve the simulated Graph on; its base URL is http://<address>/v1.0.
    #[arg(
        long,
        env = "PRINTJOB_GATEWAY_SIMULATOR_LISTEN",
        default_value = "127.0.0.1:8089"
    )]
    pub listen: SocketAddr,

    /// A JSON scenario file: printers, jobs with states, and scripted answers. Without one, the
    /// built-in scenario applies (see the README).
    #[arg(long, env = "PRINTJOB_GATEWAY_SIMULATOR_SCENARIO")]
    pub scenario: Option<PathBuf>,
}

// === impl Cli ===

impl Cli {
    /// Parses the command line and the environment, checks the settings against each other, and
    /// exits with a clear message and a non-zero code when they are wrong.
    pub fn load() -> Self {
        Self::try_load_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Like [`Cli::load`], from the given arguments (and the environment), returning errors.
    pub fn try_load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        cli.gateway.check()?;
        check_demo_alone(&cli.gateway, &matches)?;
        cli.gateway.proxy = proxy_env(|name| std::env::var(name).ok());
        Ok(cli)
    }
}

/// The settings that `--demo` replaces with its simulator (the argument's ID and how to name it).
/// A real deployment sets some of them; with one of them set, the demo is on by mistake (a stray
/// `PRINTJOB_GATEWAY_DEMO` in a sidecar's environment), and would turn every cancel into a
/// simulated success.
const REPLACED_BY_THE_DEMO: &[(&str, &str)] = &[
    ("graph_url", "--graph-url (PRINTJOB_GATEWAY_GRAPH_URL)"),
    (
        "entra_authority",
        "--entra-authority (AZURE_AUTHORITY_HOST)",
    ),
    ("tenant_id", "--tenant-id (AZURE_TENANT_ID)"),
    ("client_id", "--client-id (AZURE_CLIENT_ID)"),
    (
        "client_secret_file",
        "--client-secret-file (PRINTJOB_GATEWAY_CLIENT_SECRET_FILE)",
    ),
    (
        "client_certificate_file",
        "--client-certificate-file (PRINTJOB_GATEWAY_CLIENT_CERTIFICATE_FILE)",
    ),
    (
        "federated_token_file",
        "--federated-token-file (AZURE_FEDERATED_TOKEN_FILE)",
    ),
    (
        "graph_scope",
        "--graph-scope (PRINTJOB_GATEWAY_GRAPH_SCOPE)",
    ),
];

/// With the demo on, refuses every setting it would replace, naming each one set.
fn check_demo_alone(gateway: &GatewayArgs, matches: &ArgMatches) -> Result<(), clap::Error> {
    if !gateway.demo {
        return Ok(());
    }
    let set: Vec<&str> = REPLACED_BY_THE_DEMO
        .iter()
        .filter(|(id, _)| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    Err(Cli::command().error(
        ErrorKind::ArgumentConflict,
        format!(
            "--demo (PRINTJOB_GATEWAY_DEMO) simulates Graph and Entra ID, so it does not start with {} also set: unset the demo to serve the real Graph, or unset them to try the demo",
            set.join(", ")
        ),
    ))
}

/// The proxy for HTTPS as the standard variables name it, the way curl and Go read them:
/// `HTTPS_PROXY`, else `ALL_PROXY`, and `NO_PROXY`; each upper-case name before its lower-case
/// twin, and an empty value as if unset. `lookup` reads one variable.
pub fn proxy_env(lookup: impl Fn(&str) -> Option<String>) -> graph::ProxyEnv {
    let first = |names: [&'static str; 2]| {
        names.into_iter().find_map(|name| {
            lookup(name)
                .filter(|value| !value.is_empty())
                .map(|value| (name, value))
        })
    };
    graph::ProxyEnv {
        proxy: first(["HTTPS_PROXY", "https_proxy"]).or_else(|| first(["ALL_PROXY", "all_proxy"])),
        no_proxy: first(["NO_PROXY", "no_proxy"]).map(|(_, value)| value),
    }
}

// === impl GatewayArgs ===

impl GatewayArgs {
    fn check(&self) -> Result<(), clap::Error> {
        if self.default_timeout > self.max_timeout {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                "--default-timeout must not be longer than --max-timeout",
            ));
        }
        // The demo fills in what it needs: its simulator is the token endpoint too.
        if self.token_exchange == TokenExchange::Obo && !self.demo {
            self.check_on_behalf_of()?;
        }
        if self.default_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.idle_connection_timeout.is_zero()
        {
            return Err(Cli::command().error(
                ErrorKind::InvalidValue,
                "--default-timeout, --connect-timeout, --handshake-timeout and --idle-connection-timeout must be longer than zero",
            ));
        }
        if self.demo
            && let ListenAddr::Tcp(addr) = &self.listen
            && !addr.ip().is_loopback()
        {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--demo accepts any token, so it listens only on loopback or a Unix socket, not on {addr}"
                ),
            ));
        }
        if let Some(path) = &self.graph_ca_file {
            check_ca_file(path)?;
        }
        Ok(())
    }

    /// The settings of the gateway's server, from the flags.
    pub fn server_settings(&self) -> server::Settings {
        server::Settings {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen,
            tls: self.tls(),
            shutdown_grace: self.shutdown_grace,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: self.handshake_timeout,
            idle_connection_timeout: self.idle_connection_timeout,
            message_wait: server::MESSAGE_WAIT,
            calls: CallPolicy {
                deadlines: Deadlines {
                    default: self.default_timeout,
                    max: self.max_timeout,
                },
                retry: RetryPolicy {
                    max_attempts: self.max_attempts,
                    retry_after_max: self.retry_after_max,
                },
                max_in_flight: usize::try_from(self.max_in_flight).unwrap_or(usize::MAX),
            },
            graph: graph::Settings {
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
                throttle_gate: self.throttle_gate,
            },
            token_exchange: self.token_exchange_settings(),
        }
    }

    /// With `--token-exchange obo`: the tenant, the client and exactly one client credential.
    fn check_on_behalf_of(&self) -> Result<(), clap::Error> {
        let missing = |what: &str| {
            Cli::command().error(
                ErrorKind::MissingRequiredArgument,
                format!("--token-exchange obo needs {what}"),
            )
        };
        if self.tenant_id.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--tenant-id (AZURE_TENANT_ID)"));
        }
        if self.client_id.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--client-id (AZURE_CLIENT_ID)"));
        }
        let credentials = [
            ("--client-secret-file", &self.client_secret_file),
            ("--client-certificate-file", &self.client_certificate_file),
            (
                "--federated-token-file (AZURE_FEDERATED_TOKEN_FILE)",
                &self.federated_token_file,
            ),
        ];
        let given: Vec<&str> = credentials
            .iter()
            .filter(|(_, file)| file.is_some())
            .map(|(flag, _)| *flag)
            .collect();
        match given.len() {
            0 => Err(missing(
                "one client credential: --client-secret-file, --client-certificate-file or --federated-token-file (AZURE_FEDERATED_TOKEN_FILE)",
            )),
            1 => Ok(()),
            _ => Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--token-exchange obo takes exactly one client credential, not {}",
                    given.join(" and ")
                ),
            )),
        }
    }

    /// The token exchange settings.
    pub fn token_exchange_settings(&self) -> entra::Settings {
        let credential = match (
            &self.client_secret_file,
            &self.client_certificate_file,
            &self.federated_token_file,
        ) {
            (Some(file), _, _) => Some(CredentialSource::SecretFile(file.clone())),
            (_, Some(file), _) => Some(CredentialSource::CertificateFile(file.clone())),
            (_, _, Some(file)) => Some(CredentialSource::FederatedTokenFile(file.clone())),
            _ => None,
        };
        entra::Settings {
            exchange: self.token_exchange,
            authority: self.entra_authority.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            credential,
            graph_scope: self.graph_scope.clone(),
            exchange_timeout: self.max_timeout,
            rate: self.token_exchange_rate,
        }
    }

    /// The TLS files of the gRPC API, when TLS is on.
    fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

// === impl TelemetryArgs ===

impl TelemetryArgs {
    /// The settings of logs and traces, from the flags.
    pub fn settings(&self) -> telemetry::Settings {
        telemetry::Settings {
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            service_name: self.otel_service_name.clone(),
        }
    }
}

// === impl SimulatorArgs ===

impl SimulatorArgs {
    /// The simulated Graph's settings, from the flags.
    pub fn settings(&self) -> simulator::Settings {
        simulator::Settings {
            listen: self.listen,
            scenario: self.scenario.clone(),
        }
    }
}

/// Checks a log filter in RUST_LOG syntax.
fn parse_log_filter(text: &str) -> Result<String, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::try_new(text).map(|_| text.to_owned())
}

/// The longest duration any setting takes. Each one bounds a wait of the gateway, none has a use
/// beyond an hour, and far longer ones overflow the clock's arithmetic (a `--default-timeout` of
/// 300000000000y made every call panic).
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Parses a duration such as `10s`, `1500ms` or `2m`, at most [`MAX_DURATION`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!(
            "at most {} is allowed",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

/// Checks that an extra CA file for Graph is readable and holds at least one certificate: an
/// empty file would otherwise add nothing, silently, and Graph's TLS would fail at the first call.
fn check_ca_file(path: &std::path::Path) -> Result<(), clap::Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let invalid = |problem: String| {
        Cli::command().error(
            ErrorKind::InvalidValue,
            format!("--graph-ca-file {}: {problem}", path.display()),
        )
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid(error.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses flags without reading the environment, so that a developer's variables do not leak
    /// into the test.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut command = Cli::command();
        let no_env = |arg: clap::Arg| arg.env(None::<&'static str>);
        command = command
            .mut_args(no_env)
            .mut_subcommand("simulate", |simulate| simulate.mut_args(no_env));
        let matches = command.try_get_matches_from(args)?;
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
        cli.gateway.check()?;
        check_demo_alone(&cli.gateway, &matches)?;
        Ok(cli)
    }

    #[test]
    fn the_demo_refuses_to_start_beside_a_real_graph_or_on_behalf_of_settings() {
        let secret = ["--client-secret-file", "/run/secret"];
        for (extra, named) in [
            (
                &["--graph-url", "https://graph.microsoft.com/v1.0"][..],
                "--graph-url (PRINTJOB_GATEWAY_GRAPH_URL)",
            ),
            (
                &["--entra-authority", "https://login.microsoftonline.com/"],
                "--entra-authority",
            ),
            (&["--tenant-id", "t"], "--tenant-id (AZURE_TENANT_ID)"),
            (&["--client-id", "c"], "--client-id (AZURE_CLIENT_ID)"),
            (&secret, "--client-secret-file"),
            (
                &["--client-certificate-file", "/run/c.pem"],
                "--client-certificate-file",
            ),
            (
                &["--federated-token-file", "/run/token"],
                "--federated-token-file",
            ),
            (
                &["--graph-scope", "https://graph.microsoft.com/.default"],
                "--graph-scope",
            ),
        ] {
            let args = [&["printjob-gateway", "--demo"][..], extra].concat();
            let error = parse(&args).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{extra:?}");
            assert!(error.to_string().contains(named), "{extra:?}: {error}");
        }
        let error = parse(&[
            "printjob-gateway",
            "--demo",
            "--tenant-id",
            "t",
            "--client-id",
            "c",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("--tenant-id (AZURE_TENANT_ID), --client-id (AZURE_CLIENT_ID)"),
            "every one is named: {error}"
        );
        // What the demo itself takes, and settings it does not replace.
        parse(&["printjob-gateway", "--demo", "--token-exchange", "obo"]).unwrap();
        parse(&["printjob-gateway", "--demo", "--max-attempts", "1"]).unwrap();
        // Without the demo, nothing changes.
        parse(&[
            "printjob-gateway",
            "--graph-url",
            "https://graph.microsoft.us/v1.0",
        ])
        .unwrap();
    }

    #[test]
    fn flag_defaults_are_the_settings_defaults() {
        let cli = parse(&["printjob-gateway"]).unwrap();
        assert_eq!(cli.gateway.server_settings(), server::Settings::default());
        assert_eq!(cli.telemetry.settings(), telemetry::Settings::default());
        assert_eq!(cli.gateway.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(
            cli.gateway.graph_url.to_string(),
            "https://graph.microsoft.com/v1.0"
        );
        assert!(!cli.gateway.demo);
    }

    #[test]
    fn the_proxy_comes_from_https_proxy_then_all_proxy_upper_case_first() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            proxy_env(move |name| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            })
        };
        let proxy = |pairs| env(pairs).proxy;
        assert_eq!(proxy(&[]), None);
        assert_eq!(
            proxy(&[("https_proxy", "http://a:1"), ("HTTPS_PROXY", "http://b:1")]),
            Some(("HTTPS_PROXY", "http://b:1".to_owned()))
        );
        assert_eq!(
            proxy(&[("HTTPS_PROXY", ""), ("all_proxy", "socks5://c:1")]),
            Some(("all_proxy", "socks5://c:1".to_owned())),
            "an empty HTTPS_PROXY is unset, and ALL_PROXY applies"
        );
        assert_eq!(
            env(&[("NO_PROXY", ""), ("no_proxy", "graph.microsoft.com")]).no_proxy,
            Some("graph.microsoft.com".to_owned())
        );
    }

    #[test]
    fn contradictory_timeouts_are_refused() {
        let error = parse(&[
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
    fn a_tls_key_without_a_certificate_is_refused() {
        let error = parse(&["printjob-gateway", "--tls-key", "/k.pem"]).unwrap_err();
        assert!(error.to_string().contains("--tls-cert"), "{error}");
    }

    #[test]
    fn demo_listens_only_on_loopback_or_a_unix_socket() {
        let error =
            parse(&["printjob-gateway", "--demo", "--listen", "0.0.0.0:50051"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert!(error.to_string().contains("loopback"), "{error}");
        for listen in ["127.0.0.1:50051", "[::1]:50051", "unix:/run/gw.sock"] {
            parse(&["printjob-gateway", "--demo", "--listen", listen]).unwrap();
        }
    }

    #[test]
    fn durations_beyond_an_hour_are_refused() {
        for flag in [
            "--default-timeout",
            "--max-timeout",
            "--connect-timeout",
            "--retry-after-max",
            "--shutdown-grace",
            "--handshake-timeout",
        ] {
            let error = parse(&["printjob-gateway", flag, "300000000000y"]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{flag}");
            assert!(error.to_string().contains("at most 1h"), "{error}");
        }
        parse(&[
            "printjob-gateway",
            "--max-timeout",
            "1h",
            "--retry-after-max",
            "1h",
            "--shutdown-grace",
            "1h",
        ])
        .unwrap();
    }

    #[test]
    fn a_zero_handshake_timeout_is_refused() {
        let error = parse(&["printjob-gateway", "--handshake-timeout", "0s"]).unwrap_err();
        assert!(error.to_string().contains("--handshake-timeout"), "{error}");
    }

    #[test]
    fn an_empty_or_unreadable_graph_ca_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let not_pem = dir.path().join("notes.txt");
        std::fs::write(&not_pem, "a certificate, surely").unwrap();
        let missing = dir.path().join("missing.pem");
        for path in [&empty, &not_pem, &missing] {
            let path = path.to_str().unwrap();
            let error = parse(&["printjob-gateway", "--graph-ca-file", path]).unwrap_err();
            assert!(error.to_string().contains("--graph-ca-file"), "{error}");
        }
        let ca = dir.path().join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        parse(&["printjob-gateway", "--graph-ca-file", ca.to_str().unwrap()]).unwrap();
    }

    /// How long the drain may go on after the grace period: calls ended (at once), then up to a
    /// second for each listener's connections to close (`server::FLUSH_AFTER_ABORT`), rounded up.
    const EXIT_ALLOWANCE: Duration = Duration::from_secs(3);

    #[test]
    fn the_default_grace_covers_the_longest_call_and_the_manifests_cover_the_grace() {
        let defaults = server::Settings::default();
        assert!(defaults.shutdown_grace >= defaults.calls.deadlines.max);
        assert_eq!(defaults.warnings(), Vec::<String>::new());

        let k8s = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
        let env = std::fs::read_to_string(k8s.join("base/settings.env")).unwrap();
        let setting = |name: &str| {
            let value = env
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("settings.env sets {name}"));
            parse_duration(value).unwrap()
        };
        let grace = setting("PRINTJOB_GATEWAY_SHUTDOWN_GRACE");
        let max_timeout = setting("PRINTJOB_GATEWAY_MAX_TIMEOUT");
        assert_eq!(grace, defaults.shutdown_grace);
        assert_eq!(max_timeout, defaults.calls.deadlines.max);

        let mut checked = 0;
        for manifest in yaml_files(&k8s) {
            let text = std::fs::read_to_string(&manifest).unwrap();
            let Some(period) = number_after(&text, "terminationGracePeriodSeconds:") else {
                continue;
            };
            // What may come before the gateway's SIGTERM: its preStop sleep, or an app whose
            // last calls (up to --max-timeout) finish before the gateway is stopped.
            let pre_stop = number_after(&text, r#"command: ["/usr/local/bin/sleep", ""#)
                .map_or(Duration::ZERO, Duration::from_secs);
            let app_first = if text.contains("- name: app") {
                max_timeout
            } else {
                Duration::ZERO
            };
            let needed = pre_stop.max(app_first) + grace + EXIT_ALLOWANCE;
            assert!(
                Duration::from_secs(period) >= needed,
                "{}: terminationGracePeriodSeconds {period} < {needed:?}",
                manifest.display()
            );
            checked += 1;
        }
        assert!(checked >= 4, "every overlay sets a grace period: {checked}");
    }

    fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(yaml_files(&path));
            } else if path.extension().is_some_and(|ext| ext == "yaml") {
                files.push(path);
            }
        }
        files
    }

    /// The whole number that follows `marker` in `text`.
    fn number_after(text: &str, marker: &str) -> Option<u64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    #[test]
    fn on_behalf_of_needs_a_tenant_a_client_and_exactly_one_credential() {
        let with = |extra: &[&str]| {
            let args = [&["printjob-gateway", "--token-exchange", "obo"], extra].concat();
            parse(&args).map_err(|error| error.to_string())
        };
        let secret = ["--client-secret-file", "/run/secret"];
        let cases: [(&[&str], &str); 4] = [
            (
                &[&["--client-id", "c"][..], &secret].concat(),
                "--tenant-id",
            ),
            (
                &[&["--tenant-id", "t"][..], &secret].concat(),
                "--client-id",
            ),
            (
                &["--tenant-id", "t", "--client-id", "c"],
                "one client credential",
            ),
            (
                &[
                    &["--tenant-id", "t", "--client-id", "c"][..],
                    &secret,
                    &["--client-certificate-file", "/run/c.pem"],
                ]
                .concat(),
                "exactly one client credential, not --client-secret-file and --client-certificate-file",
            ),
        ];
        for (args, expected) in cases {
            let error = with(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }

        let cli = with(&[
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--federated-token-file",
            "/var/run/secrets/azure/tokens/azure-identity-token",
            "--entra-authority",
            "https://login.microsoftonline.us/",
            "--graph-scope",
            "https://graph.microsoft.us/.default",
        ])
        .unwrap();
        assert_eq!(
            cli.gateway.server_settings().token_exchange,
            entra::Settings {
                exchange: TokenExchange::Obo,
                authority: EntraAuthority::parse("https://login.microsoftonline.us").unwrap(),
                tenant_id: Some("t".to_owned()),
                client_id: Some("c".to_owned()),
                credential: Some(CredentialSource::FederatedTokenFile(
                    "/var/run/secrets/azure/tokens/azure-identity-token".into()
                )),
                graph_scope: Some("https://graph.microsoft.us/.default".to_owned()),
                exchange_timeout: Duration::from_secs(30),
                rate: entra::DEFAULT_EXCHANGE_RATE,
            }
        );
        // Pass-through needs none of it, and ignores a credential the environment may carry; the
        // demo brings its own.
        assert!(parse(&["printjob-gateway", "--federated-token-file", "/f"]).is_ok());
        assert!(with(&["--demo"]).is_ok());
    }

    #[test]
    fn the_entra_authority_is_https_except_for_loopback() {
        let authority = |url: &str| parse(&["printjob-gateway", "--entra-authority", url]);
        assert!(authority("http://login.microsoftonline.com").is_err());
        assert!(authority("http://127.0.0.1:8089/").is_ok());
        assert!(authority("https://login.microsoftonline.com/").is_ok());
    }

    #[test]
    fn the_default_graph_scope_follows_the_graph_url() {
        let cases = [
            (
                "https://graph.microsoft.com/v1.0",
                "https://graph.microsoft.com/.default",
            ),
            (
                "https://graph.microsoft.us/beta",
                "https://graph.microsoft.us/.default",
            ),
            (
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
            ("http://127.0.0.1:8089/v1.0", "https://127.0.0.1/.default"),
        ];
        for (graph_url, scope) in cases {
            let graph_url = GraphBaseUrl::parse(graph_url).unwrap();
            assert_eq!(entra::default_graph_scope(graph_url.host()), scope);
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn simulate_takes_its_own_settings() {
        let cli = parse(&[
            "printjob-gateway",
            "simulate",
            "--listen",
            "127.0.0.1:1",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Some(Command::Simulate(simulator)) = cli.command else {
            panic!("simulate is a subcommand");
        };
        let simulator = simulator.settings();
        assert_eq!(simulator.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(simulator.scenario, None);
        assert_eq!(cli.telemetry.log_format, LogFormat::Json);
    }
}
