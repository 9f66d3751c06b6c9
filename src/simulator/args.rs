//! The flags of `printjob-gateway simulate`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use super::Settings;

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
    /// built-in scenario applies (see docs/simulator.md).
    #[arg(long, env = "PRINTJOB_GATEWAY_SIMULATOR_SCENARIO")]
    pub scenario: Option<PathBuf>,
}

// === impl SimulatorArgs ===

impl SimulatorArgs {
    /// The simulated Graph's settings, from the flags.
    pub fn settings(&self) -> Settings {
        Settings {
            listen: self.listen,
            scenario: self.scenario.clone(),
        }
    }
}
