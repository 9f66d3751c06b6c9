//! The printjob-gateway binary: wiring only. Everything it runs lives in the library.

#![forbid(unsafe_code)]

use std::{io::Write, process::ExitCode};

use printjob_gateway::{
    Config, Listeners, serve,
    server::shutdown_signal,
    telemetry::{self, ErrorChain},
};

fn main() -> ExitCode {
    let config = Config::load();
    if let Err(error) = telemetry::init(config.log_format, &config.log_filter) {
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
    let outcome = runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        serve(config, listeners, shutdown_signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "printjob-gateway stopped");
            ExitCode::FAILURE
        }
    }
}
