//! What Graph says when it refuses a call: its JSON error body and the headers that matter.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

pub(super) use crate::egress::bounded_message;
use crate::egress::{bounded_identifier, parse_retry_after};

/// The longest Graph error code kept, in bytes. Graph's codes are short identifiers.
const MAX_CODE_LEN: usize = 128;
/// The longest `request-id` kept, in bytes. Graph's are GUIDs.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A non-2xx answer from Graph, with everything the caller and the logs need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRejection {
    /// The HTTP status Graph answered with.
    pub status: StatusCode,
    /// Graph's `error.code`, such as `itemNotFound`.
    pub code: Option<String>,
    /// Graph's `error.message`, bounded in length.
    pub message: Option<String>,
    /// Graph's `error.innerError.code`.
    pub inner_code: Option<String>,
    /// Graph's `request-id` header, or the one in `innerError` when the header is missing.
    pub request_id: Option<String>,
    /// How long Graph asks the caller to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Graph's `WWW-Authenticate` challenge on 401, which claims challenges need.
    pub www_authenticate: Option<HeaderValue>,
    /// Graph's `x-ms-ags-diagnostic` header, for the logs.
    pub diagnostic: Option<String>,
}

/// Graph's JSON error envelope: `{"error":{"code","message","innerError":{…}}}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "innerError", alias = "innererror")]
    inner_error: Option<InnerError>,
}

#[derive(Debug, Deserialize)]
struct InnerError {
    code: Option<String>,
    #[serde(rename = "request-id")]
    request_id: Option<String>,
}

// === impl GraphRejection ===

impl GraphRejection {
    /// Reads a rejection from Graph's status, headers and (the first bytes of) its body. A body
    /// that is not Graph's JSON, such as an HTML page from a proxy, is ignored.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Self {
        let body = serde_json::from_slice::<Envelope>(body)
            .ok()
            .map(|e| e.error);
        let (code, message, inner) = match body {
            Some(ErrorBody {
                code,
                message,
                inner_error,
            }) => (code, message, inner_error),
            None => (None, None, None),
        };
        let (inner_code, inner_request_id) = match inner {
            Some(InnerError { code, request_id }) => (code, request_id),
            None => (None, None),
        };
        Self {
            status,
            code: code.and_then(|code| bounded_identifier(code, MAX_CODE_LEN)),
            message: message.map(bounded_message).filter(|m| !m.is_empty()),
            inner_code: inner_code.and_then(|code| bounded_identifier(code, MAX_CODE_LEN)),
            request_id: request_id(headers).or_else(|| {
                inner_request_id.and_then(|id| bounded_identifier(id, MAX_REQUEST_ID_LEN))
            }),
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|value| parse_retry_after(value, now)),
            www_authenticate: headers.get(http::header::WWW_AUTHENTICATE).cloned(),
            diagnostic: headers
                .get("x-ms-ags-diagnostic")
                .and_then(|value| value.to_str().ok())
                .map(|value| bounded_message(value.to_owned())),
        }
    }
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

    #[test]
    fn reads_graph_errors_with_either_spelling_of_inner_error() {
        for inner in ["innerError", "innererror"] {
            let body = format!(
                r#"{{"error":{{"code":"itemNotFound","message":"Not found.","{inner}":{{"code":"printJobNotFound","request-id":"body-id","date":"2026-11-29T10:00:00"}}}}}}"#
            );
            let rejection = GraphRejection::new(
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                body.as_bytes(),
                now(),
            );
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
        let rejection = GraphRejection::new(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body.as_bytes(),
            now(),
        );
        let kept = rejection.message.unwrap();
        assert!(
            kept.len() <= MAX_MESSAGE_LEN && kept.ends_with('…'),
            "{kept}"
        );
        assert_eq!(rejection.code, None);
        assert_eq!(bounded_message("a\r\nb".into()), "a  b");
    }
}
