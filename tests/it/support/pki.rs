//! Throwaway certificates: a CA, a server certificate for `localhost` and 127.0.0.1, and a client
//! certificate.

use std::{path::Path, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM texts of a test CA and the certificates it issued.
pub struct Pki {
    /// The CA certificate.
    pub ca: String,
    /// The server certificate, for `localhost` and 127.0.0.1, and its key.
    pub server_cert: String,
    pub server_key: String,
    /// A client certificate and its key.
    pub client_cert: String,
    pub client_key: String,
}

/// Makes a PKI and writes `ca.pem`, `server.pem` and `server.key` into `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let issue = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(
            names
                .iter()
                .map(|&name| name.to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = issue(&["caller.example"]);
    let pki = Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    };
    for (name, pem) in [
        ("ca.pem", &pki.ca),
        ("server.pem", &pki.server_cert),
        ("server.key", &pki.server_key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    pki
}

impl Pki {
    /// A TLS acceptor with this PKI's server certificate that offers the ALPN protocols `alpn`,
    /// in order of preference.
    pub fn tls_acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        tls_acceptor(&self.server_cert, &self.server_key, alpn)
    }
}

/// A TLS acceptor with the server certificate `cert` and key `key` (PEM) that offers the ALPN
/// protocols `alpn`, in order of preference.
pub fn tls_acceptor(cert: &str, key: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
