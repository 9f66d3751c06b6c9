//! What the binary runs: the gateway, the simulated Graph (`simulate`), or both together on
//! loopback (`--demo`).

use std::{future::Future, io, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Cli, Command},
    graph::GraphBaseUrl,
    server::{self, ListenAddr, Listeners, ServeError, serve},
    simulator::{self, Scenario, ScenarioError, Simulator},
};

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
    settings.graph.base_url = GraphBaseUrl::parse(&format!("http://{simulator_addr}/v1.0"))
        .expect("a loopback http URL is a valid Graph URL");
    let listeners = Listeners::bind(&settings).await?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .unwrap_or_else(|_| settings.listen.clone());

    let stop_simulator = CancellationToken::new();
    let simulator = tokio::spawn(simulator::serve(
        listener,
        Simulator::new(Scenario::builtin()),
        stop_simulator.clone().cancelled_owned(),
    ));
    let mut stdout = io::stdout().lock();
    let _ = io::Write::write_all(
        &mut stdout,
        demo_instructions(grpc_addr, simulator_addr).as_bytes(),
    );
    drop(stdout);

    let served = serve(settings, listeners, shutdown).await;
    stop_simulator.cancel();
    let _ = simulator.await;
    Ok(served?)
}

/// What the demo prints: where things are, and grpcurl commands to try.
pub fn demo_instructions(grpc: ListenAddr, simulator: SocketAddr) -> String {
    let grpc = match grpc {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::Unix(path) => format!("-unix {}", path.display()),
    };
    let cancel = |printer: &str, job: &str| {
        format!(
            "  grpcurl -plaintext -H 'authorization: Bearer demo-token' -d '{{\"printer_id\":\"{printer}\",\"print_job_id\":\"{job}\"}}' {grpc} graph.print.v1.PrintJobService/Cancel\n"
        )
    };
    format!(
        "printjob-gateway demo: the gateway serves gRPC on {grpc}, in front of a simulated Graph at http://{simulator}/v1.0\n\
         \n\
         Cancel a print job (answers OK, an empty response):\n{}\
         \n\
         Cancel a job that has already completed (answers FAILED_PRECONDITION, with Graph's error in the details):\n{}\
         \n\
         More printers: any-job-printer (always succeeds), throttled-printer (RESOURCE_EXHAUSTED with RetryInfo),\n\
         flaky-printer (UNAVAILABLE twice, then OK), unavailable-printer, slow-printer (3 s), forbidden-printer.\n\
         What the simulated Graph received: curl http://{simulator}/__requests\n\
         Stop with Ctrl-C.\n",
        cancel("printer-1", "1"),
        cancel("printer-1", "3"),
    )
}
