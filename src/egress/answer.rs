//! What every answer from a remote party is read with: `Retry-After`, identifiers and messages
//! kept only when short and printable, and a body read within a size and a time limit.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Body;

/// The longest message kept from an answer, in bytes; longer messages are cut at a character
/// boundary.
pub const MAX_MESSAGE_LEN: usize = 512;

/// Parses `Retry-After`: decimal seconds (Graph sends fractions such as `2.128`) or an HTTP-date,
/// which counts from `now`. A date in the past means "now"; anything else unreadable is ignored.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().ok()?;
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait an answer's `Retry-After` header asks for, if it has one that [`parse_retry_after`]
/// reads.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, now))
}

/// Keeps an identifier only when it is short, non-empty, visible ASCII, so that it can travel as
/// gRPC metadata and in `ErrorInfo` without escaping.
pub(crate) fn bounded_identifier(text: String, max_len: usize) -> Option<String> {
    let fits =
        !text.is_empty() && text.len() <= max_len && text.bytes().all(|b| b.is_ascii_graphic());
    fits.then_some(text)
}

/// Cuts a message to [`MAX_MESSAGE_LEN`] bytes at a character boundary, marking the cut, and
/// replaces control characters with spaces so that it stays one readable line.
pub(crate) fn bounded_message(text: String) -> String {
    let mut text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Reads at most `limit` bytes of an answer's body, waiting at most `wait`. Whatever arrived by
/// then is kept; a broken or endless body is simply cut off.
pub async fn read_bounded(mut body: Body, limit: usize, wait: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    let give_up = Instant::now() + wait;
    while bytes.len() < limit {
        match tokio::time::timeout_at(give_up, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = limit - bytes.len();
                    bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 29 Nov 2026 10:00:00 GMT").unwrap()
    }

    #[test]
    fn retry_after_takes_decimal_seconds_and_http_dates() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("2", Some(Duration::from_secs(2))),
            ("2.128", Some(Duration::from_millis(2128))),
            ("0", Some(Duration::ZERO)),
            (
                "Sun, 29 Nov 2026 10:00:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Sun, 29 Nov 2026 09:00:00 GMT", Some(Duration::ZERO)),
            ("-1", None),
            ("soon", None),
            ("1e3", None),
            ("", None),
            ("99999999999999999999999999", None),
        ];
        for &(text, expected) in cases {
            let value = HeaderValue::from_str(text).unwrap();
            assert_eq!(
                parse_retry_after(&value, now()),
                expected,
                "Retry-After {text:?}"
            );
        }
    }
}
