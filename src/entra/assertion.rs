//! The certificate credential: a `client_assertion` JWT signed with the app's RSA key, as Entra
//! ID's certificate credentials page describes it: header `alg` PS256, `typ` JWT and `x5t#S256`
//! (the base64url SHA-256 of the certificate); claims `aud` (the token endpoint), `iss` = `sub` =
//! the client ID, a fresh `jti`, and `nbf`, `iat` and `exp` a few minutes apart. Signed with
//! ring, the crypto library rustls already uses.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{RSA_PSS_SHA256, RsaKeyPair},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::credential::ClientAssertion;

/// How long a signed assertion is valid: short, since one is signed for each exchange.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The app's certificate and its private key, ready to sign assertions. Its `Debug` prints only
/// the certificate's thumbprint.
pub(crate) struct CertificateCredential {
    key: RsaKeyPair,
    /// `x5t#S256` of the app's certificate, base64url.
    thumbprint: String,
    client_id: String,
    rng: SystemRandom,
}

/// Why a certificate file cannot sign assertions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The file holds no PEM certificate.
    #[error("no certificate (-----BEGIN CERTIFICATE-----) in the file")]
    NoCertificate,
    /// The file holds no PEM private key.
    #[error("no private key (-----BEGIN PRIVATE KEY----- or RSA PRIVATE KEY) in the file")]
    NoKey,
    /// The key is not an RSA key ring accepts; Entra ID accepts only RSA for assertions.
    #[error("the private key is not a usable RSA key (Entra ID accepts RSA only): {0}")]
    NotRsa(String),
    /// The key does not belong to the first certificate.
    #[error("the private key does not belong to the first certificate in the file")]
    KeyMismatch,
    /// Signing failed.
    #[error("signing the client assertion failed")]
    Signing,
}

// === impl CertificateCredential ===

impl CertificateCredential {
    /// Reads the certificate chain (the app's certificate first) and the RSA private key (PKCS#8
    /// or PKCS#1) from one PEM text.
    pub(crate) fn from_pem(pem: &[u8], client_id: &str) -> Result<Self, AssertionError> {
        let leaf = CertificateDer::pem_slice_iter(pem)
            .next()
            .and_then(Result::ok)
            .ok_or(AssertionError::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| AssertionError::NoKey)?;
        let key = match &key {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err(AssertionError::NotRsa("not PKCS#8 or PKCS#1".to_owned())),
        }
        .map_err(|rejected| AssertionError::NotRsa(rejected.to_string()))?;
        // The certificate's SubjectPublicKeyInfo holds the key's RSAPublicKey DER verbatim.
        let public = key.public().as_ref();
        if !leaf.as_ref().windows(public.len()).any(|w| w == public) {
            return Err(AssertionError::KeyMismatch);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let credential = Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            client_id: client_id.to_owned(),
            rng: SystemRandom::new(),
        };
        // Sign once now, so that a key ring cannot use fails at start-up, not at the first call.
        credential.sign("https://check.invalid/")?;
        Ok(credential)
    }

    /// A freshly signed assertion for the token endpoint at `audience`.
    pub(crate) fn assertion(&self, audience: &str) -> Result<ClientAssertion, AssertionError> {
        self.sign(audience).map(ClientAssertion::new)
    }

    fn sign(&self, audience: &str) -> Result<String, AssertionError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint,
        });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let mut jwt = String::with_capacity(1024);
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut jwt);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jwt);
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PSS_SHA256, &self.rng, jwt.as_bytes(), &mut signature)
            .map_err(|_| AssertionError::Signing)?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test-only client certificate of the integration tests: the client's certificate, its
    /// CA's, and the client's RSA key.
    const FIXTURE: &str = include_str!("../../tests/it/fixtures/client-certificate.pem");

    fn load(pem: &str) -> Result<CertificateCredential, AssertionError> {
        CertificateCredential::from_pem(pem.as_bytes(), "client")
    }

    #[test]
    fn the_key_must_be_rsa_and_belong_to_the_first_certificate() {
        assert!(load(FIXTURE).is_ok());
        let (certificates, key) = FIXTURE.split_at(FIXTURE.find("-----BEGIN PRIVATE KEY").unwrap());
        assert_eq!(load(certificates).err(), Some(AssertionError::NoKey));
        assert_eq!(load(key).err(), Some(AssertionError::NoCertificate));
        let second = certificates
            .match_indices("-----BEGIN CERTIFICATE")
            .nth(1)
            .unwrap()
            .0;
        let ca_first = format!(
            "{}{}{key}",
            &certificates[second..],
            &certificates[..second]
        );
        assert_eq!(load(&ca_first).err(), Some(AssertionError::KeyMismatch));

        let ec_key = rcgen::KeyPair::generate().unwrap();
        let ec_certificate = rcgen::CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .self_signed(&ec_key)
            .unwrap();
        let ec = format!("{}{}", ec_certificate.pem(), ec_key.serialize_pem());
        assert!(matches!(load(&ec), Err(AssertionError::NotRsa(_))));
    }

    #[test]
    fn debug_shows_the_thumbprint_only() {
        let credential = load(FIXTURE).unwrap();
        let printed = format!("{credential:?}");
        assert!(printed.contains(&credential.thumbprint), "{printed}");
        assert!(!printed.contains("client"), "{printed}");
    }
}
