//! Graph's base URL, checked once at start-up, and the one function that builds request URLs.

use http::{
    Uri,
    uri::{Authority, Scheme},
};
use percent_encoding::utf8_percent_encode;

use crate::{
    egress::{PATH_SEGMENT, UrlError as GraphUrlError, parse_base_url},
    request::{CancelTarget, JobParent},
};

/// The base URL of Microsoft Graph, such as `https://graph.microsoft.com/v1.0`.
///
/// It is `https`, except for loopback hosts (a local fake or simulator), so that a caller's bearer
/// token never crosses a network in plaintext. It has no user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphBaseUrl {
    /// The URL without a trailing slash, so that paths are appended with `/`.
    base: String,
    /// The URL as hyper takes it, split once so that each call only adds its path.
    scheme: Scheme,
    authority: Authority,
    /// The base path without a trailing slash, such as `/v1.0`.
    path: String,
}

// === impl GraphBaseUrl ===

impl GraphBaseUrl {
    /// Microsoft Graph's global service, `https://graph.microsoft.com/v1.0`: the default.
    pub fn graph() -> Self {
        Self::parse("https://graph.microsoft.com/v1.0")
            .expect("Graph's global URL is a valid Graph URL")
    }

    /// Parses and checks a Graph base URL.
    pub fn parse(text: &str) -> Result<Self, GraphUrlError> {
        let base = parse_base_url(text)?;
        let uri: Uri = base.parse().map_err(|_| GraphUrlError::Extras)?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(GraphUrlError::Extras);
        };
        let path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            base,
            scheme,
            authority,
            path,
        })
    }

    /// The host, such as `graph.microsoft.com`.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// The base URL, for the HTTP client's choice of TLS and proxy.
    pub fn uri(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.path.as_str())
            .build()
            .unwrap_or_default()
    }

    /// The URI of the cancel action of one print job, as hyper sends it:
    /// `{base}/print/printers/{printerId}/jobs/{printJobId}/cancel`, each ID one encoded segment.
    pub fn cancel_uri(&self, target: &CancelTarget) -> Uri {
        self.job_uri(target, "/cancel")
    }

    /// The URI that reads one print job's status, and nothing else of it:
    /// `{base}/print/printers/{printerId}/jobs/{printJobId}?$select=status`, each ID one encoded
    /// segment.
    pub fn job_status_uri(&self, target: &CancelTarget) -> Uri {
        self.job_uri(target, "?$select=status")
    }

    /// `{base}/print/printers/{printerId}/jobs/{printJobId}` (or `/print/shares/{printerShareId}`)
    /// and a fixed `tail`.
    fn job_uri(&self, target: &CancelTarget, tail: &'static str) -> Uri {
        let collection = match target.parent {
            JobParent::Printer(_) => "printers",
            JobParent::Share(_) => "shares",
        };
        let (parent_id, job_id) = (target.parent.id(), target.print_job_id.as_str());
        // Pushed piece by piece rather than through `format!`, whose machinery cost a forwarded
        // call 2,400 instructions here; each ID's escapes can at most triple it.
        let mut path = String::with_capacity(
            self.path.len() + 32 + 3 * (parent_id.len() + job_id.len()) + tail.len(),
        );
        path.push_str(&self.path);
        path.push_str("/print/");
        path.push_str(collection);
        path.push('/');
        path.extend(utf8_percent_encode(parent_id, PATH_SEGMENT));
        path.push_str("/jobs/");
        path.extend(utf8_percent_encode(job_id, PATH_SEGMENT));
        path.push_str(tail);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            // A checked base, a path of unreserved characters and %-escapes, and a fixed tail is
            // always a URI.
            .expect("an encoded job path is a valid URI")
    }

    /// The URL of the cancel action of one print job:
    /// `{base}/print/printers/{printerId}/jobs/{printJobId}/cancel`, each ID one encoded segment.
    pub fn cancel_url(&self, target: &CancelTarget) -> String {
        self.cancel_uri(target).to_string()
    }
}

impl std::fmt::Display for GraphBaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

impl std::str::FromStr for GraphBaseUrl {
    type Err = GraphUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::CancelRequest;

    #[test]
    fn base_urls_are_https_or_loopback() {
        let cases: &[(&str, Result<&str, GraphUrlError>)] = &[
            (
                "https://graph.microsoft.com/v1.0",
                Ok("https://graph.microsoft.com/v1.0"),
            ),
            (
                "https://graph.microsoft.us/v1.0/",
                Ok("https://graph.microsoft.us/v1.0"),
            ),
            (
                "http://127.0.0.1:8089/v1.0",
                Ok("http://127.0.0.1:8089/v1.0"),
            ),
            ("http://127.8.9.10/v1.0", Ok("http://127.8.9.10/v1.0")),
            ("http://[::1]:1/v1.0", Ok("http://[::1]:1/v1.0")),
            ("http://localhost:1/v1.0", Ok("http://localhost:1/v1.0")),
            (
                "http://graph.microsoft.com/v1.0",
                Err(GraphUrlError::Plaintext),
            ),
            ("http://10.0.0.1/v1.0", Err(GraphUrlError::Plaintext)),
            (
                "http://localhost.evil.example/v1.0",
                Err(GraphUrlError::Plaintext),
            ),
            (
                "ftp://graph.microsoft.com/",
                Err(GraphUrlError::Scheme("ftp".into())),
            ),
            (
                "https://u:p@graph.microsoft.com/v1.0",
                Err(GraphUrlError::Extras),
            ),
            (
                "https://graph.microsoft.com/v1.0?x=1",
                Err(GraphUrlError::Extras),
            ),
            (
                "https://graph.microsoft.com/v1.0#x",
                Err(GraphUrlError::Extras),
            ),
            (
                "graph.microsoft.com",
                Err(GraphUrlError::Syntax(
                    url::ParseError::RelativeUrlWithoutBase,
                )),
            ),
        ];
        for (text, expected) in cases {
            let actual = GraphBaseUrl::parse(text).map(|url| url.to_string());
            assert_eq!(
                actual.as_deref().map_err(Clone::clone),
                expected.clone(),
                "{text}"
            );
        }
    }

    #[test]
    fn every_id_is_exactly_one_encoded_segment() {
        let base = GraphBaseUrl::parse("https://graph.microsoft.com/v1.0").unwrap();
        let cases = [
            ("p1", "42", "p1/jobs/42"),
            ("a/b", "../x", "a%2Fb/jobs/..%2Fx"),
            ("a?b=c", "d#e", "a%3Fb%3Dc/jobs/d%23e"),
            ("%2e%2e", "%2F", "%252e%252e/jobs/%252F"),
            ("a b", "é", "a%20b/jobs/%C3%A9"),
            ("a\\b", "a;b", "a%5Cb/jobs/a%3Bb"),
            ("...", "a..b", ".../jobs/a..b"),
        ];
        for (printer_id, print_job_id, expected) in cases {
            for (collection, share) in [("printers", false), ("shares", true)] {
                let parent_id = String::from(printer_id);
                let target = CancelTarget::try_from(CancelRequest {
                    printer_id: if share {
                        String::new()
                    } else {
                        parent_id.clone()
                    },
                    print_job_id: print_job_id.into(),
                    share_id: if share { parent_id } else { String::new() },
                })
                .unwrap();
                let expected = format!(
                    "https://graph.microsoft.com/v1.0/print/{collection}/{expected}/cancel"
                );
                assert_eq!(base.cancel_url(&target), expected);
                assert_eq!(base.cancel_uri(&target).to_string(), expected);
                let read = expected.replace("/cancel", "?$select=status");
                assert_eq!(base.job_status_uri(&target).to_string(), read);
            }
        }
    }
}
