//! The command line: each subsystem's flags (a clap `Args` group beside its settings, under a
//! heading of its own in `--help`) composed into [`Cli`], parsed and checked once in `main`. It
//! then hands each subsystem its own settings value ([`server::Settings`],
//! [`telemetry::Settings`], [`simulator::Settings`]). Only `main` and `app` use this module, and
//! nothing else reads the environment: the subsystems declare their flags' variables, and they
//! are read here, when the command line is parsed.

use clap::{
    ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind,
    parser::ValueSource,
};

use crate::{
    entra::{TokenExchange, TokenExchangeArgs},
    graph::{self, GraphArgs},
    server::{self, LimitsArgs, ListenAddr, ListenArgs},
    service::CallPolicy,
    simulator::SimulatorArgs,
    telemetry::TelemetryArgs,
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

/// The gateway's settings: each subsystem's group, and the two that belong to none (the
/// runtime's threads and the demo), which `--help` shows first, under Options.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Threads that serve calls; the CPUs available to the process (cgroup limits included)
    /// when unset. A sidecar rarely needs more than 1 or 2.
    #[arg(long, env = "PRINTJOB_GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Starts a simulated Graph on loopback and serves the gateway in front of it, with the
    /// simulator's built-in printers and jobs, and prints grpcurl commands to try; it logs a WARN
    /// line that Graph is simulated at start and every 5 minutes. With --token-exchange obo, the
    /// simulator's Entra endpoint exchanges the callers' tokens, as a demo app registration. It
    /// refuses to start when Graph's URL or an on-behalf-of setting is also set.
    #[arg(long, env = "PRINTJOB_GATEWAY_DEMO")]
    pub demo: bool,

    /// Where the gateway listens, its TLS and its drain.
    #[command(flatten)]
    pub listening: ListenArgs,

    /// How Graph is reached.
    #[command(flatten)]
    pub graph: GraphArgs,

    /// Which token goes to Graph.
    #[command(flatten)]
    pub token_exchange: TokenExchangeArgs,

    /// How long calls and connections may take, and how many are served at once.
    #[command(flatten)]
    pub limits: LimitsArgs,
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
        cli.gateway.graph.proxy = proxy_env(|name| std::env::var(name).ok());
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
    /// Checks each subsystem's flags, and the flags of different subsystems against each other.
    fn check(&self) -> Result<(), clap::Error> {
        // A subsystem's error is raw; the command line gives it its usage and help hint.
        let in_context = |error: clap::Error| error.format(&mut Cli::command());
        let limits = &self.limits;
        if limits.default_timeout > limits.max_timeout {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                "--default-timeout must not be longer than --max-timeout",
            ));
        }
        // The demo fills in what it needs: its simulator is the token endpoint too.
        if self.token_exchange.token_exchange == TokenExchange::Obo && !self.demo {
            self.token_exchange
                .check_on_behalf_of()
                .map_err(in_context)?;
        }
        if limits.default_timeout.is_zero()
            || self.graph.connect_timeout.is_zero()
            || limits.handshake_timeout.is_zero()
            || limits.idle_connection_timeout.is_zero()
        {
            return Err(Cli::command().error(
                ErrorKind::InvalidValue,
                "--default-timeout, --connect-timeout, --handshake-timeout and --idle-connection-timeout must be longer than zero",
            ));
        }
        if self.demo
            && let ListenAddr::Tcp(addr) = &self.listening.listen
            && !addr.ip().is_loopback()
        {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--demo accepts any token, so it listens only on loopback or a Unix socket, not on {addr}"
                ),
            ));
        }
        self.graph.check().map_err(in_context)
    }

    /// The settings of the gateway's server, from each subsystem's flags.
    pub fn server_settings(&self) -> server::Settings {
        server::Settings {
            listen: self.listening.listen.clone(),
            admin_listen: self.listening.admin_listen,
            tls: self.listening.tls(),
            shutdown_grace: self.listening.shutdown_grace,
            max_connections: self.limits.max_connections(),
            handshake_timeout: self.limits.handshake_timeout,
            idle_connection_timeout: self.limits.idle_connection_timeout,
            message_wait: server::MESSAGE_WAIT,
            calls: CallPolicy {
                deadlines: self.limits.deadlines(),
                retry: self.graph.retry_policy(),
                max_in_flight: self.limits.max_in_flight(),
            },
            graph: self.graph.settings(),
            token_exchange: self.token_exchange.settings(self.limits.max_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::{
        entra::{self, CredentialSource, EntraAuthority},
        flags::parse_duration,
        graph::GraphBaseUrl,
        telemetry::{self, LogFormat},
    };

    /// Parses flags without reading the environment, so that a developer's variables do not leak
    /// into the test.
    /// Checks that `args` are refused with an error that names `expected`, and returns it.
    fn refused(args: &[&str], expected: &str) -> clap::Error {
        let error = parse(args).unwrap_err();
        assert!(error.to_string().contains(expected), "{args:?}: {error}");
        error
    }

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
            let error = refused(&args, named);
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{extra:?}");
        }
        // Every one is named.
        refused(
            &[
                "printjob-gateway",
                "--demo",
                "--tenant-id",
                "t",
                "--client-id",
                "c",
            ],
            "--tenant-id (AZURE_TENANT_ID), --client-id (AZURE_CLIENT_ID)",
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
        assert_eq!(
            cli.gateway.listening.listen,
            "127.0.0.1:50051".parse().unwrap()
        );
        assert_eq!(
            cli.gateway.graph.graph_url.to_string(),
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
        refused(&["printjob-gateway", "--tls-key", "/k.pem"], "--tls-cert");
    }

    #[test]
    fn demo_listens_only_on_loopback_or_a_unix_socket() {
        let error = refused(
            &["printjob-gateway", "--demo", "--listen", "0.0.0.0:50051"],
            "loopback",
        );
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
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
            let error = refused(&["printjob-gateway", flag, "300000000000y"], "at most 1h");
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{flag}");
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
        refused(
            &["printjob-gateway", "--handshake-timeout", "0s"],
            "--handshake-timeout",
        );
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
            refused(
                &["printjob-gateway", "--graph-ca-file", path],
                "--graph-ca-file",
            );
        }
        // A device that never ends: refused after the size bound, not read until memory runs out.
        refused(
            &["printjob-gateway", "--graph-ca-file", "/dev/zero"],
            "larger than",
        );
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
