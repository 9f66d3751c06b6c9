//! The gateway's own client credential for the token endpoint: a client secret, a certificate
//! that signs a `client_assertion`, or a federated token file (Azure workload identity) whose
//! current token is the `client_assertion`. Secrets come from files only; none of them can be
//! printed.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::assertion::{AssertionError, CertificateCredential};
use crate::files::{FileReads, ReadError};

/// The most bytes read from a secret or token file: far more than any secret or service-account
/// token, and a guard against pointing the setting at the wrong file.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where the client credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A file holding the client secret (a trailing newline is not part of it).
    SecretFile(PathBuf),
    /// A PEM file with the certificate chain (the app's certificate first) and its RSA private
    /// key; it signs a `client_assertion` JWT for each exchange.
    CertificateFile(PathBuf),
    /// A file holding a federated token (a Kubernetes service-account token) used as the
    /// `client_assertion`. It rotates, so it is read at each exchange.
    FederatedTokenFile(PathBuf),
    /// A client secret given in code, for the demo: flags and the environment only ever name a
    /// file.
    Secret(ClientSecret),
}

/// A client secret. It has no `Display`, and its `Debug` prints a redaction.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

/// A client assertion: a signed JWT or a federated token. It has no `Display`, and its `Debug`
/// prints a redaction.
pub struct ClientAssertion(String);

/// Why the client credential cannot be loaded, or a federated token read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file cannot be read: the operating system refused, it is too large, or the read
    /// did not finish in time (a hung volume, a FIFO nobody writes).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The file is empty (or holds only a newline).
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file is unusable.
    #[error("{path} is not a usable client certificate")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: AssertionError,
    },
    /// A client assertion could not be signed.
    #[error("cannot sign the client assertion")]
    Signing(#[source] AssertionError),
}

/// The client credential, loaded.
#[derive(Debug)]
pub(crate) enum ClientCredential {
    Secret(ClientSecret),
    Certificate(Box<CertificateCredential>),
    /// The file, and the reads of it: one at a time, so that a file that hangs holds one thread.
    FederatedTokenFile(PathBuf, FileReads),
}

/// The credential fields of one token request.
pub(crate) enum CredentialFields<'a> {
    /// `client_secret`.
    Secret(&'a ClientSecret),
    /// `client_assertion_type` and `client_assertion`.
    Assertion(ClientAssertion),
}

// === impl ClientSecret ===

impl ClientSecret {
    /// A client secret from its text; `None` when it is empty.
    pub fn new(secret: impl Into<String>) -> Option<Self> {
        let secret = secret.into();
        (!secret.is_empty()).then_some(Self(secret))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

// === impl ClientAssertion ===

impl ClientAssertion {
    pub(crate) fn new(assertion: String) -> Self {
        Self(assertion)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion(<redacted>)")
    }
}

// === impl ClientCredential ===

impl ClientCredential {
    /// Loads the credential: reads the secret, parses the certificate and key, or checks that
    /// the federated token file can be read now, so that a wrong setting fails at start-up.
    pub(crate) async fn load(
        source: &CredentialSource,
        client_id: &str,
    ) -> Result<Self, CredentialError> {
        let reads = FileReads::default();
        match source {
            CredentialSource::SecretFile(path) => {
                let secret = read_secret_file(&reads, path).await?;
                Ok(Self::Secret(ClientSecret(secret)))
            }
            CredentialSource::Secret(secret) => Ok(Self::Secret(secret.clone())),
            CredentialSource::CertificateFile(path) => {
                let pem = reads.read(path, MAX_FILE_LEN).await?;
                CertificateCredential::from_pem(&pem, client_id)
                    .map(|certificate| Self::Certificate(Box::new(certificate)))
                    .map_err(|source| CredentialError::Certificate {
                        path: path.clone(),
                        source,
                    })
            }
            CredentialSource::FederatedTokenFile(path) => {
                read_secret_file(&reads, path).await?;
                Ok(Self::FederatedTokenFile(path.clone(), reads))
            }
        }
    }

    /// The credential fields of one request to the token endpoint at `audience`: the secret, a
    /// freshly signed assertion, or the federated token as the file holds it now.
    pub(crate) async fn fields(
        &self,
        audience: &str,
    ) -> Result<CredentialFields<'_>, CredentialError> {
        match self {
            Self::Secret(secret) => Ok(CredentialFields::Secret(secret)),
            Self::Certificate(certificate) => certificate
                .assertion(audience)
                .map(CredentialFields::Assertion)
                .map_err(CredentialError::Signing),
            Self::FederatedTokenFile(path, reads) => {
                let token = read_secret_file(reads, path).await?;
                Ok(CredentialFields::Assertion(ClientAssertion(token)))
            }
        }
    }

    /// The credential's kind, for the start-up log line.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Secret(_) => "client secret",
            Self::Certificate(_) => "client certificate",
            Self::FederatedTokenFile(..) => "federated token file",
        }
    }
}

// === impl CredentialFields ===

impl CredentialFields<'_> {
    /// Appends the fields to a form.
    pub(crate) fn append_to(&self, form: &mut url::form_urlencoded::Serializer<'_, String>) {
        match self {
            Self::Secret(secret) => {
                form.append_pair("client_secret", secret.expose());
            }
            Self::Assertion(assertion) => {
                form.append_pair("client_assertion_type", JWT_BEARER_ASSERTION);
                form.append_pair("client_assertion", assertion.expose());
            }
        }
    }
}

/// Reads a file holding one secret or token, without its trailing newline: on the blocking pool,
/// within a time limit, at most [`MAX_FILE_LEN`] bytes (`crate::files`).
async fn read_secret_file(reads: &FileReads, path: &Path) -> Result<String, CredentialError> {
    let bytes = reads.read(path, MAX_FILE_LEN).await?;
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trailing_newline_is_not_part_of_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            ("s3cr3t~value\n", Some("s3cr3t~value")),
            ("s3cr3t~value\r\n", Some("s3cr3t~value")),
            ("s3cr3t~value", Some("s3cr3t~value")),
            ("\n", None),
            ("", None),
        ] {
            let path = dir.path().join("secret");
            std::fs::write(&path, text).unwrap();
            let secret = read_secret_file(&FileReads::default(), &path).await.ok();
            assert_eq!(secret.as_deref(), expected, "{text:?}");
        }
        assert!(matches!(
            read_secret_file(&FileReads::default(), &dir.path().join("missing")).await,
            Err(CredentialError::Read(ReadError::Io { .. }))
        ));
    }

    #[test]
    fn secrets_never_print() {
        let secret = ClientSecret::new("s3cr3t").unwrap();
        let assertion = ClientAssertion::new("eyJhbGciOi.s3cr3t".to_owned());
        let printed = format!(
            "{secret:?} {assertion:?} {:?}",
            ClientCredential::Secret(secret.clone())
        );
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert_eq!(ClientSecret::new(""), None);
    }
}
