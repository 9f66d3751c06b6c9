//! The printjob-gateway binary: wiring only. Everything it runs lives in the library.

#![forbid(unsafe_code)]

use std::{io::Write, process::ExitCode};

use printjob_gateway::{
    app,
    config::Cli,
    server::shutdown_signal,
    telemetry::{self, ErrorChain},
};

fn main() -> ExitCode {
    let cli = Cli::load();
    if let Err(error) = telemetry::init(cli.log.log_format, &cli.log.log_filter) {
        // Logging is what failed, so stderr is the only place left to say so.
        let _ = writeln!(
            std::io::stderr(),
            "printjob-gateway: {}",
            ErrorChain(&error)
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "printjob-gateway stopped");
            ExitCode::FAILURE
        }
    }
}
