//! The rule for every URL a token is sent to: `https`, except to a loopback host (a local fake or
//! simulator), so that a token never crosses a network in plaintext; and the one encoding of a
//! path segment that an input becomes.

use std::net::IpAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Every byte but RFC 3986's unreserved characters is percent-encoded, so that an ID can never
/// add a path separator, a query, a fragment or an escape of its own. The dot segments `.` and
/// `..`, the one input this cannot neutralise, are refused earlier by [`crate::request`].
pub(crate) const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a URL a token would be sent to (Graph's base URL, Entra ID's authority) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The text is not a URL.
    #[error("not a valid URL: {0}")]
    Syntax(#[from] url::ParseError),
    /// The scheme is `http` and the host is not loopback.
    #[error(
        "must use https (plain http is allowed only for loopback hosts), so that bearer tokens never cross a network in plaintext"
    )]
    Plaintext,
    /// The scheme is neither `https` nor `http`.
    #[error("must be an https URL, not {0}:")]
    Scheme(String),
    /// The URL carries credentials, a query or a fragment.
    #[error("must not contain user info, a query or a fragment")]
    Extras,
}

/// Parses the base of the URLs a token is sent to (Graph's base URL, Entra ID's authority), checks
/// it with [`check_url_is_safe`], and returns it without a trailing slash, so that paths are
/// appended with `/`.
pub(crate) fn parse_base_url(text: &str) -> Result<String, UrlError> {
    let url = url::Url::parse(text)?;
    check_url_is_safe(&url)?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Checks that a URL a token is sent to is `https` (plain `http` only to a loopback host) and
/// carries no user info, query or fragment.
fn check_url_is_safe(url: &url::Url) -> Result<(), UrlError> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => return Err(UrlError::Plaintext),
        other => return Err(UrlError::Scheme(other.to_owned())),
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(UrlError::Extras);
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
