//! What every subsystem's flags share: durations as an operator writes them (`10s`, `1500ms`,
//! `2m`), bounded. Each subsystem declares its own flags (a clap `Args` group beside its
//! settings); `config` composes them into the command line.

use std::time::Duration;

/// The longest duration any setting takes. Each one bounds a wait of the gateway, none has a use
/// beyond an hour, and far longer ones overflow the clock's arithmetic (a `--default-timeout` of
/// 300000000000y made every call panic).
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Parses a duration such as `10s`, `1500ms` or `2m`, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!(
            "at most {} is allowed",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}
