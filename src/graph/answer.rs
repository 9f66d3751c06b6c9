//! What Graph says when it refuses a call: its JSON error body and the headers that matter.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

pub(super) use crate::egress::bounded_message;
use crate::egress::{bounded_identifier, retry_after};

/// The longest Graph error code kept, in bytes. Graph's codes are short identifiers.
const MAX_CODE_LEN: usize = 128;
/// The longest `request-id` kept, in bytes. Graph's are GUIDs.
const MAX_REQUEST_ID_LEN: usize = 128;
/// The most `details` codes kept. Graph uses `details` for batch and bulk operations; a cancel's
/// error has none or a few, and the codes travel in `ErrorInfo` metadata, so they stay few.
pub const MAX_DETAIL_CODES: usize = 8;

/// A non-2xx answer from Graph, with everything the caller and the logs need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRejection {
    /// The HTTP status Graph answered with.
    pub status: StatusCode,
    /// Graph's `error.code`, such as `itemNotFound`.
    pub code: Option<String>,
    /// Graph's `error.message`, bounded in length.
    pub message: Option<String>,
    /// The most detailed code Graph sent: the `code` of the deepest `innerError` that has one
    /// (Graph nests `innerError` and asks apps to use the most detailed code they understand).
    pub inner_code: Option<String>,
    /// The codes of `error.details`, in order: at most [`MAX_DETAIL_CODES`], each a short
    /// identifier (others are skipped).
    pub detail_codes: Vec<String>,
    /// Graph's `request-id` header, or the one in `innerError` when the header is missing.
    pub request_id: Option<String>,
    /// How long Graph asks the caller to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Graph's `WWW-Authenticate` challenge (on 401, and on 403 under Conditional Access), which
    /// claims challenges need.
    pub www_authenticate: Option<HeaderValue>,
    /// Whether `WWW-Authenticate` is a claims challenge (`error="insufficient_claims"`): the
    /// token lacks claims that a Conditional Access policy requires, and a new token obtained with
    /// the challenge's `claims` would be accepted.
    pub claims_challenge: bool,
    /// Graph's `x-ms-ags-diagnostic` header, for the logs.
    pub diagnostic: Option<String>,
}

/// Graph's JSON error envelope:
/// `{"error":{"code","message","details":[{"code",…}],"innerError":{"code",…,"innerError":{…}}}}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: ErrorBody,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    details: Option<Vec<Detail>>,
    #[serde(rename = "innerError", alias = "innererror")]
    inner_error: Option<InnerError>,
}

#[derive(Debug, Deserialize)]
struct Detail {
    code: Option<String>,
}

/// One level of `innerError`, which may hold another. serde_json's recursion limit bounds the
/// depth it reads (a deeper body is not Graph's JSON, and is ignored like any other).
#[derive(Debug, Deserialize)]
struct InnerError {
    code: Option<String>,
    #[serde(rename = "request-id")]
    request_id: Option<String>,
    #[serde(rename = "innerError", alias = "innererror")]
    inner_error: Option<Box<InnerError>>,
}

// === impl GraphRejection ===

impl GraphRejection {
    /// Reads a rejection from Graph's status, headers and (the first bytes of) its body. A body
    /// that is not Graph's JSON, such as an HTML page from a proxy, reads as an empty one.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Self {
        let ErrorBody {
            code,
            message,
            details,
            inner_error: inner,
        } = serde_json::from_slice::<Envelope>(body)
            .map(|envelope| envelope.error)
            .unwrap_or_default();
        let inner_request_id = inner.as_ref().and_then(|inner| inner.request_id.clone());
        // The deepest level whose code is a usable identifier.
        let mut inner_code = None;
        let mut level = inner.as_ref();
        while let Some(InnerError {
            code, inner_error, ..
        }) = level
        {
            if let Some(code) = code
                .clone()
                .and_then(|code| bounded_identifier(code, MAX_CODE_LEN))
            {
                inner_code = Some(code);
            }
            level = inner_error.as_deref();
        }
        let detail_codes = details
            .unwrap_or_default()
            .into_iter()
            .filter_map(|detail| bounded_identifier(detail.code?, MAX_CODE_LEN))
            .take(MAX_DETAIL_CODES)
            .collect();
        let www_authenticate = headers.get(http::header::WWW_AUTHENTICATE).cloned();
        let claims_challenge = www_authenticate
            .as_ref()
            .is_some_and(|value| is_claims_challenge(value.as_bytes()));
        Self {
            status,
            code: code.and_then(|code| bounded_identifier(code, MAX_CODE_LEN)),
            message: message.map(bounded_message).filter(|m| !m.is_empty()),
            inner_code,
            detail_codes,
            request_id: request_id(headers).or_else(|| {
                inner_request_id.and_then(|id| bounded_identifier(id, MAX_REQUEST_ID_LEN))
            }),
            retry_after: retry_after(headers, now),
            www_authenticate,
            claims_challenge,
            diagnostic: headers
                .get("x-ms-ags-diagnostic")
                .and_then(|value| value.to_str().ok())
                .map(|value| bounded_message(value.to_owned())),
        }
    }
}

/// Whether a `WWW-Authenticate` value is a claims challenge: a Bearer challenge with
/// `error="insufficient_claims"` (Graph's Conditional Access and continuous access evaluation).
fn is_claims_challenge(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    text.trim_start().starts_with("bearer")
        && text
            .replace(' ', "")
            .contains(r#"error="insufficient_claims""#)
}

/// Graph's `request-id` response header, when it is a short visible-ASCII value.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("request-id")?.to_str().ok()?;
    bounded_identifier(value.to_owned(), MAX_REQUEST_ID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::MAX_MESSAGE_LEN;

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 29 Nov 2026 10:00:00 GMT").unwrap()
    }

    /// What Graph's answer of `status` and `body`, with no headers, says.
    fn rejection_of(status: StatusCode, body: &[u8]) -> GraphRejection {
        GraphRejection::new(status, &HeaderMap::new(), body, now())
    }

    #[test]
    fn reads_graph_errors_with_either_spelling_of_inner_error() {
        for inner in ["innerError", "innererror"] {
            let body = format!(
                r#"{{"error":{{"code":"itemNotFound","message":"Not found.","{inner}":{{"code":"printJobNotFound","request-id":"body-id","date":"2026-11-29T10:00:00"}}}}}}"#
            );
            let rejection = rejection_of(StatusCode::NOT_FOUND, body.as_bytes());
            assert_eq!(rejection.code.as_deref(), Some("itemNotFound"));
            assert_eq!(rejection.message.as_deref(), Some("Not found."));
            assert_eq!(rejection.inner_code.as_deref(), Some("printJobNotFound"));
            assert_eq!(rejection.request_id.as_deref(), Some("body-id"));
        }
    }

    #[test]
    fn the_request_id_header_wins_and_other_bodies_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("request-id", "header-id".parse().unwrap());
        headers.insert("retry-after", "2.5".parse().unwrap());
        headers.insert("www-authenticate", "Bearer realm=\"\"".parse().unwrap());
        let body = b"<html><body>502 Bad Gateway</body></html>";
        let rejection = GraphRejection::new(StatusCode::BAD_GATEWAY, &headers, body, now());
        assert_eq!(rejection.request_id.as_deref(), Some("header-id"));
        assert_eq!(rejection.retry_after, Some(Duration::from_millis(2500)));
        assert!(rejection.www_authenticate.is_some());
        assert_eq!((rejection.code, rejection.message), (None, None));
    }

    #[test]
    fn long_or_strange_values_are_bounded() {
        let message = "é".repeat(1000) + "\nsecond line";
        let code = "x".repeat(200);
        let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
        let rejection = rejection_of(StatusCode::BAD_REQUEST, body.as_bytes());
        let kept = rejection.message.unwrap();
        assert!(
            kept.len() <= MAX_MESSAGE_LEN && kept.ends_with('…'),
            "{kept}"
        );
        assert_eq!(rejection.code, None);
        assert_eq!(bounded_message("a\r\nb".into()), "a  b");
    }

    #[test]
    fn the_most_detailed_inner_code_and_the_detail_codes_are_kept() {
        // Graph's throttling body (throttling.md), one level deeper, with `details`.
        let body = serde_json::json!({"error": {
            "code": "TooManyRequests",
            "message": "Please retry again later.",
            "details": [
                {"code": "printerBusy", "message": "a", "target": "printJob"},
                {"code": "", "message": "empty"},
                {"code": "bad code", "message": "spaces"},
                {"message": "no code"},
                {"code": "queueFull", "message": "b"},
            ],
            "innerError": {
                "code": "429",
                "date": "2020-08-18T12:51:51",
                "message": "Please retry after",
                "request-id": "94fb3b52-452a-4535-a601-69e0a90e3aa2",
                "status": "429",
                "innerError": {"code": "printServiceThrottled", "innerError": {"date": "x"}},
            },
        }})
        .to_string();
        let rejection = rejection_of(StatusCode::TOO_MANY_REQUESTS, body.as_bytes());
        assert_eq!(rejection.code.as_deref(), Some("TooManyRequests"));
        assert_eq!(
            rejection.inner_code.as_deref(),
            Some("printServiceThrottled")
        );
        assert_eq!(rejection.detail_codes, ["printerBusy", "queueFull"]);
        assert_eq!(
            rejection.request_id.as_deref(),
            Some("94fb3b52-452a-4535-a601-69e0a90e3aa2")
        );

        let many: Vec<_> = (0..100)
            .map(|i| serde_json::json!({"code": format!("code{i}"), "message": ""}))
            .collect();
        let body = serde_json::json!({"error": {"code": "", "message": "m", "details": many}});
        let rejection = rejection_of(StatusCode::BAD_REQUEST, body.to_string().as_bytes());
        assert_eq!(rejection.detail_codes.len(), MAX_DETAIL_CODES);
        assert_eq!(rejection.code, None, "an empty code is no code");
        assert_eq!(rejection.message.as_deref(), Some("m"));

        // Nesting beyond serde_json's limit is not Graph's JSON: ignored, without a panic.
        let deep = "{\"innerError\":".repeat(10_000) + &"}".repeat(10_000);
        let body = format!(r#"{{"error":{{"code":"x1","innerError":{deep}}}}}"#);
        let rejection = rejection_of(StatusCode::BAD_REQUEST, body.as_bytes());
        assert_eq!((rejection.code, rejection.inner_code), (None, None));
    }

    #[test]
    fn a_claims_challenge_is_recognised_on_any_status() {
        let cases = [
            (
                r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="eyJ9""#,
                true,
            ),
            (
                r#"bearer error = "insufficient_claims", claims="e30=""#,
                true,
            ),
            (r#"Bearer realm="", error="invalid_token""#, false),
            (r#"Basic error="insufficient_claims""#, false),
        ];
        for (challenge, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("www-authenticate", challenge.parse().unwrap());
            let rejection = GraphRejection::new(StatusCode::FORBIDDEN, &headers, b"", now());
            assert_eq!(rejection.claims_challenge, expected, "{challenge}");
        }
    }
}
