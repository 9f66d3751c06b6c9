//! The caller's bearer token: read once from the `authorization` metadata, then carried as a type
//! that cannot print it.

use http::HeaderValue;
use tonic::metadata::MetadataMap;

/// The metadata key that carries the caller's credentials.
pub const AUTHORIZATION: &str = "authorization";

/// A caller's bearer token, ready to be forwarded to Graph unchanged.
///
/// The token is opaque: it is never parsed or validated beyond its RFC 6750 shape. It has no
/// `Display`, its `Debug` prints a redaction, and the header value it becomes is marked sensitive
/// so that HTTP/2 never adds it to a compression table and `http`'s own `Debug` hides it too.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    header: HeaderValue,
}

/// Why the `authorization` metadata cannot be used. Messages never include the metadata's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call carries no `authorization` metadata.
    #[error("missing credentials: send the metadata `authorization: Bearer <token>`")]
    Missing,
    /// The call carries `authorization` more than once.
    #[error("`authorization` metadata must be sent once, not several times")]
    Repeated,
    /// The scheme is not `Bearer`.
    #[error("`authorization` metadata must use the Bearer scheme: `Bearer <token>`")]
    NotBearer,
    /// The scheme is `Bearer` but no token follows it.
    #[error("`authorization` metadata has the Bearer scheme but no token")]
    EmptyToken,
    /// The token is not one RFC 6750 token68 value.
    #[error(
        "`authorization` metadata must be `Bearer` followed by one token of letters, digits and -._~+/ (optionally ending in =)"
    )]
    MalformedToken,
}

// === impl BearerToken ===

impl BearerToken {
    /// Reads the bearer token from a call's metadata.
    ///
    /// The scheme is matched case-insensitively (RFC 7235); exactly one non-empty token68 value
    /// must follow it, separated by spaces.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, AuthError> {
        let mut values = metadata.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Repeated);
        }
        Self::parse(value.as_bytes())
    }

    /// Parses the value of an `authorization` header: `Bearer <token68>`.
    pub fn parse(value: &[u8]) -> Result<Self, AuthError> {
        const SCHEME: &[u8] = b"bearer";
        let value = value.trim_ascii();
        if value.is_empty() {
            return Err(AuthError::Missing);
        }
        let scheme_len = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
        if !value[..scheme_len].eq_ignore_ascii_case(SCHEME) {
            return Err(AuthError::NotBearer);
        }
        let token = value[scheme_len..].trim_ascii_start();
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        if !is_token68(token) {
            return Err(AuthError::MalformedToken);
        }

        let mut header = Vec::with_capacity(b"Bearer ".len() + token.len());
        header.extend_from_slice(b"Bearer ");
        header.extend_from_slice(token);
        // A token68 value holds only visible ASCII, which is always a valid header value.
        let mut header = HeaderValue::from_bytes(&header).map_err(|_| AuthError::MalformedToken)?;
        header.set_sensitive(true);
        Ok(Self { header })
    }

    /// A bearer token from the token itself, such as one Entra ID issued: it must be an RFC 6750
    /// token68 value, as a JWT is.
    pub fn from_token(token: &str) -> Result<Self, AuthError> {
        let token = token.as_bytes();
        if token.is_empty() || token.len() != token.trim_ascii().len() {
            return Err(AuthError::MalformedToken);
        }
        let mut value = Vec::with_capacity(b"Bearer ".len() + token.len());
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(token);
        Self::parse(&value)
    }

    /// The token, without the scheme: for the on-behalf-of exchange's `assertion`.
    pub(crate) fn token(&self) -> &str {
        // A token68 value is ASCII, and the header starts with `Bearer `.
        std::str::from_utf8(&self.header.as_bytes()[b"Bearer ".len()..]).unwrap_or_default()
    }

    /// The token's bytes, without the scheme: what the token cache hashes.
    pub(crate) fn token_bytes(&self) -> &[u8] {
        &self.header.as_bytes()[b"Bearer ".len()..]
    }

    /// The `Authorization` header value to send to Graph: `Bearer ` and the caller's token.
    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.header
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Whether `token` is an RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0
        && token[..body_len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, expected: Result<&str, AuthError>) {
        let actual = BearerToken::parse(value.as_bytes());
        let actual = actual.map(|token| token.header_value().to_str().unwrap().to_owned());
        assert_eq!(
            actual.as_deref().map_err(|e| *e),
            expected,
            "authorization value {value:?}"
        );
    }

    #[test]
    fn accepts_bearer_in_any_case_and_forwards_the_token_unchanged() {
        check("Bearer abc.DEF-123_~+/==", Ok("Bearer abc.DEF-123_~+/=="));
        check("bearer abc", Ok("Bearer abc"));
        check("BEARER abc", Ok("Bearer abc"));
        check("bEaReR   abc", Ok("Bearer abc"));
        check("  Bearer abc  ", Ok("Bearer abc"));
    }

    #[test]
    fn rejects_every_malformed_value() {
        check("", Err(AuthError::Missing));
        check("   ", Err(AuthError::Missing));
        check("Bearer", Err(AuthError::EmptyToken));
        check("Bearer    ", Err(AuthError::EmptyToken));
        check("Basic dXNlcjpwYXNz", Err(AuthError::NotBearer));
        check("Bearerabc", Err(AuthError::NotBearer));
        check("abc", Err(AuthError::NotBearer));
        check("Bearer a b", Err(AuthError::MalformedToken));
        check("Bearer a,b", Err(AuthError::MalformedToken));
        check("Bearer ===", Err(AuthError::MalformedToken));
        check("Bearer a=b", Err(AuthError::MalformedToken));
        check("Bearer a\tb", Err(AuthError::MalformedToken));
        check("Bearer \"abc\"", Err(AuthError::MalformedToken));
    }

    #[test]
    fn debug_never_prints_the_token() {
        let token = BearerToken::parse(b"Bearer s3cr3t-token").unwrap();
        let printed = format!("{token:?} {:?}", token.header_value());
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }

    #[test]
    fn repeated_metadata_is_refused() {
        let mut metadata = MetadataMap::new();
        metadata.append(AUTHORIZATION, "Bearer a".parse().unwrap());
        metadata.append(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_eq!(
            BearerToken::from_metadata(&metadata).unwrap_err(),
            AuthError::Repeated
        );
        assert_eq!(
            BearerToken::from_metadata(&MetadataMap::new()).unwrap_err(),
            AuthError::Missing
        );
    }
}
