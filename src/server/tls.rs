//! TLS on the gRPC API, for the shared-service mode: a certificate and key, and optionally a
//! client CA that every caller's certificate must chain to (mTLS).
//!
//! The files are re-read when they change, so that a renewed certificate (cert-manager writing a
//! Kubernetes Secret) takes effect without a restart: new handshakes use the new material,
//! connections already open keep theirs. A new set that does not load (a file half-written, a key
//! that does not match its certificate) leaves the old one in place and is logged.
//!
//! Changes are found by polling each file's metadata every [`POLL_INTERVAL`], following
//! symlinks. Kubernetes swaps a Secret volume's files by re-pointing the `..data` symlink at a new
//! directory, which inotify-based watchers on the file itself do not see; a `stat` of three files
//! once a second costs nothing and sees every kind of update (symlink swap, rename over, rewrite
//! in place).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Listener, ServerMetrics};
use crate::{
    files::{FileReads, ReadError, read_to_limit},
    telemetry::ErrorChain,
};

/// How often the TLS files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub use crate::files::MAX_PEM_BYTES;

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that callers' certificates must chain to (PEM); no client certificates when absent.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read in time, or is too large.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A PEM file holds nothing usable.
    #[error("cannot read {what} from {path}")]
    Pem {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate, key or client CA is not acceptable.
    #[error("invalid TLS configuration")]
    Config(#[from] rustls::Error),
    /// The client CA cannot verify client certificates.
    #[error("invalid client CA")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The TLS configuration new connections use now. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfig(watch::Receiver<Arc<ServerConfig>>);

/// What identifies a version of a file: where the path leads, and when and how it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

// === impl TlsConfig ===

impl TlsConfig {
    /// Loads `files`, and keeps reloading them when they change until `stop` fires. Every look
    /// at the files (a `stat`, a read) runs on the blocking pool within
    /// [`crate::files::READ_TIMEOUT`], one at a time: a hung volume or a FIFO never blocks a
    /// runtime worker, and a look that never returns holds one thread.
    pub(crate) async fn load_and_watch(
        files: TlsFiles,
        metrics: ServerMetrics,
        stop: CancellationToken,
    ) -> Result<Self, TlsError> {
        let reads = FileReads::default();
        let seen = look(&reads, &files, fingerprints).await?;
        let (config, not_after) = look(&reads, &files, server_config).await??;
        certificate_loaded(&metrics, not_after);
        let (sender, receiver) = watch::channel(Arc::new(config));
        tokio::spawn(async move {
            tokio::select! {
                () = watch_files(files, reads, seen, sender, metrics) => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(Self(receiver))
    }

    /// An acceptor with the current configuration.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.borrow().clone())
    }
}

/// Runs `work` over the TLS files on the blocking pool, through `reads`.
async fn look<T: Send + 'static>(
    reads: &FileReads,
    files: &TlsFiles,
    work: fn(&TlsFiles) -> T,
) -> Result<T, ReadError> {
    let owned = files.clone();
    reads.run(&files.cert, move || work(&owned)).await
}

/// Polls `files` and sends a new configuration each time they change and load.
async fn watch_files(
    files: TlsFiles,
    reads: FileReads,
    mut seen: Vec<Option<Fingerprint>>,
    sender: watch::Sender<Arc<ServerConfig>>,
    metrics: ServerMetrics,
) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = match look(&reads, &files, fingerprints).await {
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot check the TLS files for changes");
                continue;
            }
        };
        if now == seen {
            continue;
        }
        // Remembered even when the load fails, so that a broken file is reported once, and
        // tried again when it changes again.
        seen = now;
        match look(&reads, &files, server_config)
            .await
            .map_err(TlsError::from)
            .and_then(|loaded| loaded)
        {
            Ok((config, not_after)) => {
                sender.send_replace(Arc::new(config));
                metrics.tls_reloaded(Listener::Api, true);
                certificate_loaded(&metrics, not_after);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                metrics.tls_reloaded(Listener::Api, false);
                tracing::error!(
                    error = %ErrorChain(&error),
                    "the TLS files changed but do not load: keeping the certificate in use"
                );
            }
        }
    }
}

/// The fingerprints of every TLS file, `None` for one that cannot be read now.
fn fingerprints(files: &TlsFiles) -> Vec<Option<Fingerprint>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| fingerprint(path))
    .collect()
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: a Secret volume's `tls.crt` leads through `..data` to the current file.
    let metadata = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        device: metadata.dev(),
        inode: metadata.ino(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
        changed: (metadata.ctime(), metadata.ctime_nsec()),
    })
}

/// Reports the certificate now in use: when it expires, for the operator's expiry alert.
fn certificate_loaded(metrics: &ServerMetrics, not_after: Option<i64>) {
    if let Some(not_after) = not_after {
        metrics.tls_certificate_loaded(Listener::Api, not_after);
    }
}

/// When the leaf certificate expires (its notAfter), as Unix time; `None` if it does not parse,
/// which rustls, having accepted it, makes unlikely.
fn not_after(leaf: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Builds the TLS configuration (it reads the files: call it through [`look`]): TLS 1.2 and 1.3 with ring, ALPN `h2` (gRPC needs HTTP/2), and
/// says when its certificate expires.
fn server_config(files: &TlsFiles) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_all::<CertificateDer<'static>>(&files.cert, "certificates")?;
    let expires = certs.first().and_then(not_after);
    let key = read_to_limit(&files.key, MAX_PEM_BYTES)?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: files.key.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_all::<CertificateDer<'static>>(path, "client CA certificates")? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, expires))
}

fn read_all<T: PemObject>(path: &Path, what: &'static str) -> Result<Vec<T>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let pem = read_to_limit(path, MAX_PEM_BYTES)?;
    let items = T::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if items.is_empty() {
        return Err(pem_error(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(items)
}
