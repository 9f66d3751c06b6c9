//! The printjob-gateway binary: wiring only. Everything it runs lives in the library.

#![forbid(unsafe_code)]

use std::{io::Write, process::ExitCode, time::Duration};

use printjob_gateway::{
    app,
    config::Cli,
    server::shutdown_signal,
    telemetry::{self, ErrorChain},
};

fn main() -> ExitCode {
    let cli = Cli::load();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = cli.gateway.worker_threads {
        runtime.worker_threads(usize::from(workers));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    let exit = runtime.block_on(async {
        // Telemetry starts inside the runtime: the OTLP exporter's connection lives on it.
        let telemetry = match telemetry::init(&cli.telemetry.settings()) {
            Ok(telemetry) => telemetry,
            Err(error) => return fail(&error),
        };
        let outcome = app::run(cli, shutdown_signal()).await;
        if let Err(error) = &outcome {
            tracing::error!(error = %ErrorChain(error), "printjob-gateway stopped");
        }
        telemetry.shutdown().await;
        if outcome.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    });
    // A file read that never returns (a hung volume, a FIFO nobody writes) holds a thread of the
    // blocking pool; dropping the runtime would wait for it for ever. Everything worth waiting
    // for is done by now.
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit
}

/// Reports a failure to start before logging is up: stderr is the only place left to say so.
fn fail(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "printjob-gateway: {}", ErrorChain(error));
    ExitCode::FAILURE
}
