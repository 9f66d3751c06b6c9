//! `sleep SECONDS`, for the image, which has no shell: the `preStop` hooks of the legacy sidecar and
//! of the shared Deployment run `/usr/local/bin/sleep N` so that the gateway keeps serving while
//! the app (or the Service's endpoints) catch up. Kubernetes' own `preStop: {sleep: …}` action needs
//! 1.30 (beta; alpha behind a gate in 1.29), which the legacy overlay cannot assume.
//!
//! Built by `deploy/rootfs.sh`'s callers with plain `rustc`, statically, like the gateway.

use std::{env, process::ExitCode, thread, time::Duration};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.as_slice() {
        [seconds] => match seconds.parse::<u64>() {
            Ok(seconds) => {
                thread::sleep(Duration::from_secs(seconds));
                ExitCode::SUCCESS
            }
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: sleep SECONDS (a whole number)");
    ExitCode::from(2)
}
