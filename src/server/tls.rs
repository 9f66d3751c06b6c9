//! TLS on the gRPC API, for the shared-service mode: a certificate and key, and optionally a
//! client CA that every caller's certificate must chain to (mTLS).

use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

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
    /// A PEM file could not be read or holds nothing usable.
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

/// Builds the TLS acceptor: TLS 1.2 and 1.3 with ring, ALPN `h2` (gRPC needs HTTP/2).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_all::<CertificateDer<'static>>(&files.cert, "certificates")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
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
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_all<T: PemObject>(path: &PathBuf, what: &'static str) -> Result<Vec<T>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.clone(),
        source,
    };
    let items = T::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if items.is_empty() {
        return Err(pem_error(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(items)
}
