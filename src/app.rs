//! What the binary runs: the gateway, the simulated Graph (`simulate`), or both together on
//! loopback (`--demo`).

use std::{future::Future, io, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Cli, Command},
    entra::{self, ClientSecret, CredentialSource, EntraAuthority, TokenExchange},
    graph::GraphBaseUrl,
    server::{self, ListenAddr, Listeners, ServeError, serve},
    simulator::{
        self, Scenario, ScenarioError, Simulator,
        entra::{DEMO_USER_TOKEN, MFA_USER_TOKEN, UNCONSENTED_USER_TOKEN, scenario::ClientSpec},
    },
};

/// The demo's app registration at the simulated Entra endpoint, with `--token-exchange obo`.
pub const DEMO_TENANT: &str = "demo.onmicrosoft.com";
/// The demo app registration's client ID.
pub const DEMO_CLIENT: &str = "demo-client";
/// The demo app registration's client secret: the simulator's, not a secret of anyone's.
const DEMO_SECRET: &str = "demo-client-secret";
/// An unsigned JWT of the tenant the built-in scenario throttles for 5 s (`tid`
/// 5e1f7a3c-0000-4000-8000-00000000d3e0, `appid` 0a11ce00-0000-4000-8000-00000000d3e0): the
/// gateway reads both, unverified, to hold that tenant and app's calls at its throttle gate.
pub const DEMO_THROTTLED_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0aWQiOiI1ZTFmN2EzYy0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMGQzZTAiLCJhcHBpZCI6IjBhMTFjZTAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwZDNlMCJ9.demo";
/// How often the demo repeats, after its first one at start, the WARN line that Graph is
/// simulated: whoever reads a recent stretch of a log that a stray `PRINTJOB_GATEWAY_DEMO` fills
/// with successful cancels must see why.
pub const DEMO_WARNING_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Why the binary stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gateway could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The simulator's scenario file is unusable.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The simulator could not listen or serve.
    #[error("the simulated Graph cannot serve on {addr}")]
    Simulator {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Runs what the command line asks for until `shutdown` completes.
pub async fn run(
    cli: Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    match cli.command {
        Some(Command::Simulate(simulator)) => simulate(simulator.settings(), shutdown).await,
        None if cli.gateway.demo => demo(cli.gateway.server_settings(), shutdown).await,
        None => {
            let settings = cli.gateway.server_settings();
            let listeners = Listeners::bind(&settings).await?;
            Ok(serve(settings, listeners, shutdown).await?)
        }
    }
}

/// Serves the simulated Graph alone.
async fn simulate(
    settings: simulator::Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let scenario = match &settings.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::builtin(),
    };
    let addr = settings.listen;
    let failed = |source| RunError::Simulator { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    tracing::info!(url = %format!("http://{bound}/v1.0"), entra_authority = %format!("http://{bound}"), requests = %format!("http://{bound}/__requests"), "simulated Graph serving");
    simulator::serve(listener, Simulator::new(scenario), shutdown)
        .await
        .map_err(failed)
}

/// Serves the gateway in front of a simulated Graph on loopback, and prints what to try.
async fn demo(
    mut settings: server::Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let failed = |source| RunError::Simulator {
        addr: loopback,
        source,
    };
    let listener = TcpListener::bind(loopback).await.map_err(failed)?;
    let simulator_addr = listener.local_addr().map_err(failed)?;
    let simulated = format!("http://{simulator_addr}/v1.0");
    settings.graph.base_url =
        GraphBaseUrl::parse(&simulated).expect("a loopback http URL is a valid Graph URL");
    warn_graph_is_simulated(&simulated);
    let mut scenario = Scenario::builtin();
    let exchange = settings.token_exchange.exchange == TokenExchange::Obo;
    if exchange {
        demo_exchange(&mut settings.token_exchange, &mut scenario, simulator_addr);
    }
    let listeners = Listeners::bind(&settings).await?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .unwrap_or_else(|_| settings.listen.clone());

    let stop_simulator = CancellationToken::new();
    let simulator = tokio::spawn(simulator::serve(
        listener,
        Simulator::new(scenario),
        stop_simulator.clone().cancelled_owned(),
    ));
    let stop_warning = stop_simulator.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = keep_warning_graph_is_simulated(simulated, DEMO_WARNING_INTERVAL) => {}
            () = stop_warning.cancelled() => {}
        }
    });
    let mut stdout = io::stdout().lock();
    let _ = io::Write::write_all(
        &mut stdout,
        demo_instructions(grpc_addr, simulator_addr, exchange).as_bytes(),
    );
    drop(stdout);

    let served = serve(settings, listeners, shutdown).await;
    stop_simulator.cancel();
    let _ = simulator.await;
    Ok(served?)
}

/// Says loudly that Graph is simulated: every cancel "succeeds" and no print job is touched.
fn warn_graph_is_simulated(simulated_graph: &str) {
    tracing::warn!(
        simulated_graph,
        "demo mode (--demo or PRINTJOB_GATEWAY_DEMO): Microsoft Graph is simulated, no real print job is canceled"
    );
}

/// Repeats [`warn_graph_is_simulated`] every `interval`, for as long as the demo runs.
async fn keep_warning_graph_is_simulated(simulated_graph: String, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        warn_graph_is_simulated(&simulated_graph);
    }
}

/// With `--token-exchange obo`: the gateway exchanges callers' tokens at the simulator's Entra
/// endpoint, as the demo app registration (the demo refuses to start with on-behalf-of settings
/// of its own), and the simulated Graph takes only tokens that endpoint issued, so a cancel that
/// succeeds shows the exchange.
fn demo_exchange(exchange: &mut entra::Settings, scenario: &mut Scenario, simulator: SocketAddr) {
    exchange.authority = EntraAuthority::parse(&format!("http://{simulator}"))
        .expect("a loopback http URL is a valid authority");
    exchange.tenant_id = Some(DEMO_TENANT.to_owned());
    scenario.entra.tenants = vec![DEMO_TENANT.to_owned()];
    exchange.client_id = Some(DEMO_CLIENT.to_owned());
    exchange.credential = ClientSecret::new(DEMO_SECRET).map(CredentialSource::Secret);
    scenario.entra.clients = vec![ClientSpec {
        id: DEMO_CLIENT.to_owned(),
        secret: Some(DEMO_SECRET.to_owned()),
        ..ClientSpec::default()
    }];
    scenario.entra.require_issued_tokens = true;
}

/// What the demo prints: where things are, and grpcurl commands to try; with `exchange`
/// (`--token-exchange obo`), also the callers whose tokens Entra refuses.
pub fn demo_instructions(grpc: ListenAddr, simulator: SocketAddr, exchange: bool) -> String {
    let grpc = match grpc {
        ListenAddr::Tcp(addr) => addr.to_string(),
        // grpcurl 1.8 would send the socket's path as :authority, which h2 refuses.
        ListenAddr::Unix(path) => format!("-authority localhost -unix {}", path.display()),
    };
    let cancel = |token: &str, printer: &str, job: &str| {
        format!(
            "  grpcurl -plaintext -H 'authorization: Bearer {token}' -d '{{\"printer_id\":\"{printer}\",\"print_job_id\":\"{job}\"}}' {grpc} graph.print.v1.PrintJobService/Cancel\n"
        )
    };
    // The exchange takes only JWT-shaped tokens; the simulated Graph alone takes any.
    let user = if exchange {
        DEMO_USER_TOKEN
    } else {
        "demo-token"
    };
    let (how, refused) = if exchange {
        (
            format!(
                ", exchanging each caller's token on behalf of its user at a simulated Entra ID at http://{simulator}/{DEMO_TENANT}/oauth2/v2.0/token"
            ),
            format!(
                "\n\
                 A user who must pass multi-factor authentication (answers UNAUTHENTICATED, reason INTERACTION_REQUIRED,\n\
                 with the claims challenge to pass up in the www-authenticate trailer that -v shows):\n{}\
                 \n\
                 A user for whom nobody consented to the Graph permission (answers PERMISSION_DENIED, reason CONSENT_REQUIRED):\n{}",
                cancel(MFA_USER_TOKEN, "printer-1", "2").replacen("-plaintext", "-v -plaintext", 1),
                cancel(UNCONSENTED_USER_TOKEN, "printer-1", "2"),
            ),
        )
    } else {
        (
            String::new(),
            format!(
                "\n\
                 A tenant that Graph throttles for 5 s from its first call (again 30 s later): run this a few times at\n\
                 once; the gateway holds the tenant's calls at its throttle gate, sends one first when the window ends,\n\
                 then the rest (all answer OK; the log shows the window, /metrics graph_throttle_windows_total):\n{}",
                cancel(DEMO_THROTTLED_TOKEN, "any-job-printer", "1"),
            ),
        )
    };
    format!(
        "printjob-gateway demo: the gateway serves gRPC on {grpc}, in front of a simulated Graph at http://{simulator}/v1.0{how}\n\
         \n\
         Cancel a print job (answers OK, an empty response):\n{}\
         \n\
         Cancel a job that has already completed (answers FAILED_PRECONDITION, with Graph's error in the details):\n{}\
         {refused}\
         \n\
         More printers: any-job-printer (always succeeds), throttled-printer (RESOURCE_EXHAUSTED with RetryInfo),\n\
         flaky-printer (UNAVAILABLE twice, then OK), unavailable-printer, slow-printer (3 s), forbidden-printer.\n\
         Printer shares, named with share_id instead of printer_id: share-1 (printer-1's jobs), any-job-share.\n\
         What the simulated Graph received: curl http://{simulator}/__requests\n\
         Stop with Ctrl-C.\n",
        cancel(user, "printer-1", "1"),
        cancel(user, "printer-1", "3"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines, as a subscriber for one test writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_demo_warns_that_graph_is_simulated_every_interval() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let warnings = || {
            String::from_utf8_lossy(
                &lines
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .matches("Microsoft Graph is simulated")
            .count()
        };
        let warning = keep_warning_graph_is_simulated(
            "http://127.0.0.1:1/v1.0".to_owned(),
            DEMO_WARNING_INTERVAL,
        );
        // The clock is paused: it moves only when every task waits, straight to the next timer.
        let ran =
            tokio::time::timeout(DEMO_WARNING_INTERVAL * 3 + Duration::from_secs(1), warning).await;
        assert!(ran.is_err(), "it warns for as long as the demo runs");
        assert_eq!(warnings(), 3, "one warning per interval");
        assert_eq!(
            DEMO_WARNING_INTERVAL,
            Duration::from_secs(300),
            "docs/simulator.md says every 5 minutes"
        );
    }
}
