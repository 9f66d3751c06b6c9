//! Reads of the files an operator points the gateway at (TLS material, the client credential),
//! off the runtime's workers, within a time limit and a size limit.
//!
//! A file on a hung volume (a stalled network or CSI mount) or a FIFO that nobody writes blocks the
//! thread that opens or reads it, for ever. On a runtime worker, with `--worker-threads 1` (the
//! sidecar's advice), that would freeze the API, the probes and SIGTERM. Here it blocks one thread
//! of tokio's blocking pool, and the caller gets [`ReadError::TimedOut`] after [`READ_TIMEOUT`]. A
//! [`FileReads`] runs one read at a time: a read that never returns keeps its one thread, and the
//! next reads through the same handle time out while waiting for it, rather than take one more
//! thread each. Sizes are counted while reading, not taken from the file's metadata, which says 0
//! for a FIFO or a device.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::Semaphore;

/// The longest a read of one file may take. Local files are read in microseconds; a volume that
/// takes seconds is broken.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes read from a PEM file (a certificate chain, a key, a CA bundle): the public roots
/// are about 220 KiB in PEM, so it fits many times over, and a wrong path (a device, a log) fails
/// at once instead of filling memory.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system refused to open or read it.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// It holds more than the reader takes.
    #[error("{path} is larger than {limit} bytes: is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes taken.
        limit: u64,
    },
    /// The read did not finish in time.
    #[error(
        "reading {path} took longer than {} (a hung volume, or a FIFO that nobody writes?)",
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        /// The file.
        path: PathBuf,
        /// How long the read was given.
        timeout: Duration,
    },
}

/// Reads files one at a time on the blocking pool, each within a time limit. Cheap to clone:
/// clones share the one-at-a-time rule.
#[derive(Debug, Clone)]
pub struct FileReads {
    one_at_a_time: Arc<Semaphore>,
    timeout: Duration,
}

// === impl FileReads ===

impl Default for FileReads {
    fn default() -> Self {
        Self::with_timeout(READ_TIMEOUT)
    }
}

impl FileReads {
    /// Reads that each take at most `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            one_at_a_time: Arc::new(Semaphore::new(1)),
            timeout,
        }
    }

    /// Reads the whole of `path`, at most `limit` bytes.
    pub async fn read(&self, path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
        let owned = path.to_path_buf();
        self.run(path, move || read_to_limit(&owned, limit)).await?
    }

    /// Runs `work`, which touches the file `path` (a `stat`, a read), on the blocking pool within
    /// the time limit, after any earlier work of this handle has returned.
    pub async fn run<T: Send + 'static>(
        &self,
        path: &Path,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let timed_out = || ReadError::TimedOut {
            path: path.to_path_buf(),
            timeout: self.timeout,
        };
        let gate = self.one_at_a_time.clone();
        let ran = tokio::time::timeout(self.timeout, async move {
            // The permit moves into the blocking work and is given back when it returns, however
            // long after the caller stopped waiting.
            let permit = gate.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
        })
        .await;
        match ran {
            Ok(Ok(value)) => Ok(value),
            // The work panicked (the panic hook logged it) or the runtime is shutting down.
            Ok(Err(join)) => Err(ReadError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(join.to_string()),
            }),
            Err(_) => Err(timed_out()),
        }
    }
}

/// Reads `path` whole, failing when it holds more than `limit` bytes. It blocks: call it inside
/// [`FileReads::run`].
pub fn read_to_limit(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let failed = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_are_bounded_in_size_and_in_time_and_a_stuck_one_holds_one_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "12345").unwrap();
        let reads = FileReads::with_timeout(Duration::from_secs(10));
        assert_eq!(reads.read(&path, 5).await.unwrap(), b"12345");
        assert!(matches!(
            reads.read(&path, 4).await,
            Err(ReadError::TooLarge { limit: 4, .. })
        ));
        // A device that never ends, whose metadata says it is empty: still bounded.
        assert!(matches!(
            reads.read(Path::new("/dev/zero"), 64).await,
            Err(ReadError::TooLarge { .. })
        ));
        assert!(matches!(
            reads.read(&dir.path().join("missing"), 64).await,
            Err(ReadError::Io { .. })
        ));

        // Work that does not return in time: the caller is told, and the next work of the same
        // handle waits for it (and times out) rather than start another thread.
        let short = FileReads::with_timeout(Duration::from_millis(100));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (ran, second_ran) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        let first = {
            let ran = ran.clone();
            short.run(&path, move || {
                ran.add_permits(1);
                let _ = released.recv();
            })
        };
        assert!(matches!(first.await, Err(ReadError::TimedOut { .. })));
        let second = {
            let second_ran = second_ran.clone();
            short.run(&path, move || second_ran.add_permits(1))
        };
        assert!(matches!(second.await, Err(ReadError::TimedOut { .. })));
        assert_eq!(ran.available_permits(), 1);
        assert_eq!(
            second_ran.available_permits(),
            0,
            "one stuck thread, not two"
        );
        release.send(()).unwrap();
    }
}
