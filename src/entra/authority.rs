//! Entra ID's authority (the identity platform's host, such as `https://login.microsoftonline.com`),
//! checked once at start-up, and the one function that builds the token endpoint's URL from it.

use std::fmt;

use percent_encoding::utf8_percent_encode;

use crate::graph::{GraphUrlError, PATH_SEGMENT, check_url_is_safe};

/// The authority of the public cloud.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Entra ID's authority, such as `https://login.microsoftonline.com` or, for a national cloud,
/// `https://login.microsoftonline.us`.
///
/// Like Graph's base URL it is `https`, except for loopback hosts (a local fake or simulator), so
/// that the caller's token and the gateway's client credential never cross a network in
/// plaintext. Azure workload identity sets it with a trailing slash; it is kept without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraAuthority {
    /// The URL without a trailing slash, so that paths are appended with `/`.
    base: String,
}

// === impl EntraAuthority ===

impl EntraAuthority {
    /// Parses and checks an authority URL.
    pub fn parse(text: &str) -> Result<Self, GraphUrlError> {
        let url = url::Url::parse(text)?;
        check_url_is_safe(&url)?;
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// The token endpoint of a tenant: `{authority}/{tenant}/oauth2/v2.0/token`, the tenant one
    /// percent-encoded path segment.
    pub fn token_endpoint(&self, tenant_id: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.base,
            utf8_percent_encode(tenant_id, PATH_SEGMENT)
        )
    }
}

impl Default for EntraAuthority {
    fn default() -> Self {
        Self {
            base: PUBLIC_AUTHORITY.to_owned(),
        }
    }
}

impl fmt::Display for EntraAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl std::str::FromStr for EntraAuthority {
    type Err = GraphUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoints_are_joined_with_one_slash_and_one_tenant_segment() {
        let cases = [
            (
                "https://login.microsoftonline.com/",
                "contoso.onmicrosoft.com",
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            ),
            (
                "https://login.microsoftonline.us",
                "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "https://login.microsoftonline.us/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token",
            ),
            (
                "http://127.0.0.1:8089//",
                "a/b?c",
                "http://127.0.0.1:8089/a%2Fb%3Fc/oauth2/v2.0/token",
            ),
        ];
        for (authority, tenant, expected) in cases {
            let authority = EntraAuthority::parse(authority).unwrap();
            assert_eq!(authority.token_endpoint(tenant), expected);
        }
        assert_eq!(EntraAuthority::default().to_string(), PUBLIC_AUTHORITY);
    }

    #[test]
    fn authorities_are_https_or_loopback() {
        for refused in [
            "http://login.microsoftonline.com",
            "http://10.0.0.1/",
            "ftp://login.microsoftonline.com",
            "https://u:p@login.microsoftonline.com",
            "https://login.microsoftonline.com/?x=1",
            "login.microsoftonline.com",
        ] {
            assert!(EntraAuthority::parse(refused).is_err(), "{refused}");
        }
        for accepted in [
            "http://localhost:1",
            "http://[::1]:2/",
            "https://login.partner.microsoftonline.cn/",
        ] {
            assert!(EntraAuthority::parse(accepted).is_ok(), "{accepted}");
        }
    }
}
