//! Logs captured in memory at every level, for the tests that prove a secret never reaches a log
//! line. The subscriber is installed for the current thread only: run the gateway on a
//! current-thread runtime so that every task logs into it.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// Everything logged on this thread, at every level.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a TRACE subscriber writing here for the current thread, until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        // tracing caches each callsite's interest when the callsite is first hit. While exactly one
        // dispatcher is alive (this thread's capture), tracing-core asks only the hitting thread's
        // default, which on another test's thread is "no subscriber": the callsite is cached as
        // never, and this capture then misses it. A second dispatcher that lives as long as the
        // process makes tracing ask every live one, so the capture's "always" counts.
        static SECOND_DISPATCHER: OnceLock<tracing::Dispatch> = OnceLock::new();
        SECOND_DISPATCHER
            .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
