//! Entra ID's authority (the identity platform's host, such as `https://login.microsoftonline.com`),
//! checked once at start-up, the functions that build the token and authorize endpoints' URLs
//! from it, and the table of Microsoft's clouds that keeps the authority and Graph in one cloud.

use std::fmt;

use percent_encoding::utf8_percent_encode;

use super::SetupError;
use crate::egress::{PATH_SEGMENT, UrlError, parse_base_url};

/// The authority of the public cloud.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// One of Microsoft's clouds: the hosts of its Entra authority and of its Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cloud {
    /// Its name, as Microsoft's national cloud pages name it.
    pub name: &'static str,
    /// The hosts of its Entra authority (`AZURE_AUTHORITY_HOST`).
    pub authority_hosts: &'static [&'static str],
    /// The hosts of its Graph.
    pub graph_hosts: &'static [&'static str],
}

/// Microsoft's clouds, from the "National clouds" pages of the identity platform and of Graph
/// (learn.microsoft.com/entra/identity-platform/authentication-national-cloud,
/// learn.microsoft.com/graph/deployments). US Government L4 (GCC High) and L5 (DoD) share an
/// authority and have their own Graph hosts. Hosts in no cloud (a simulator on loopback, a
/// proxy) are not checked.
pub const CLOUDS: [Cloud; 4] = [
    Cloud {
        name: "the global service",
        authority_hosts: &["login.microsoftonline.com", "login.windows.net"],
        graph_hosts: &["graph.microsoft.com"],
    },
    Cloud {
        name: "US Government L4",
        authority_hosts: &["login.microsoftonline.us"],
        graph_hosts: &["graph.microsoft.us"],
    },
    Cloud {
        name: "US Government L5 (DoD)",
        authority_hosts: &["login.microsoftonline.us"],
        graph_hosts: &["dod-graph.microsoft.us"],
    },
    Cloud {
        name: "China (21Vianet)",
        authority_hosts: &["login.chinacloudapi.cn", "login.partner.microsoftonline.cn"],
        graph_hosts: &["microsoftgraph.chinacloudapi.cn"],
    },
];

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
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        Ok(Self {
            base: parse_base_url(text)?,
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

    /// The authorize endpoint of a tenant, `{authority}/{tenant}/oauth2/v2.0/authorize`: the
    /// `authorization_uri` of a claims challenge, where the client signs the user in again.
    pub fn authorize_endpoint(&self, tenant_id: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/authorize",
            self.base,
            utf8_percent_encode(tenant_id, PATH_SEGMENT)
        )
    }

    /// The authority's host.
    pub fn host(&self) -> String {
        url::Url::parse(&self.base)
            .ok()
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default()
    }

    /// The cloud of the authority's host, when it is one of Microsoft's.
    pub fn clouds(&self) -> impl Iterator<Item = &'static Cloud> {
        let host = self.host();
        CLOUDS
            .iter()
            .filter(move |cloud| cloud.authority_hosts.contains(&host.as_str()))
    }

    /// Checks that the Graph host `graph` belongs to the authority's cloud. Either host outside
    /// every cloud passes: a simulator, a proxy, a cloud this table does not know yet.
    pub fn check_same_cloud(&self, graph: &str) -> Result<(), SetupError> {
        let graph = graph.to_ascii_lowercase();
        let Some(graph_cloud) = CLOUDS
            .iter()
            .find(|cloud| cloud.graph_hosts.contains(&graph.as_str()))
        else {
            return Ok(());
        };
        let mut clouds = self.clouds().peekable();
        let Some(authority_cloud) = clouds.peek().copied() else {
            return Ok(());
        };
        if clouds.any(|cloud| cloud == graph_cloud) {
            return Ok(());
        }
        Err(SetupError::CloudMismatch {
            graph,
            graph_cloud: graph_cloud.name,
            authority: self.base.clone(),
            authority_cloud: authority_cloud.name,
        })
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
    type Err = UrlError;

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
    fn authority_and_graph_must_be_of_one_cloud() {
        let authority = |url: &str| EntraAuthority::parse(url).unwrap();
        for (url, graph) in [
            ("https://login.microsoftonline.com/", "graph.microsoft.com"),
            ("https://login.microsoftonline.us/", "graph.microsoft.us"),
            ("https://login.microsoftonline.us", "dod-graph.microsoft.us"),
            (
                "https://login.chinacloudapi.cn/",
                "microsoftgraph.chinacloudapi.cn",
            ),
            (
                "https://login.partner.microsoftonline.cn",
                "microsoftgraph.chinacloudapi.cn",
            ),
            ("http://127.0.0.1:1", "graph.microsoft.us"),
            ("https://login.microsoftonline.us", "127.0.0.1"),
        ] {
            assert!(
                authority(url).check_same_cloud(graph).is_ok(),
                "{url} {graph}"
            );
        }
        let error = authority("https://login.microsoftonline.us/")
            .check_same_cloud("graph.microsoft.com")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("graph.microsoft.com")
                && error.contains("https://login.microsoftonline.us")
                && error.contains("US Government")
                && error.contains("global service"),
            "{error}"
        );
        assert!(
            authority(PUBLIC_AUTHORITY)
                .check_same_cloud("microsoftgraph.chinacloudapi.cn")
                .is_err()
        );
        assert_eq!(
            authority("https://login.microsoftonline.us/").authorize_endpoint("contoso.us"),
            "https://login.microsoftonline.us/contoso.us/oauth2/v2.0/authorize"
        );
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
