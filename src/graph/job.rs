//! Reading a print job's state, `GET /print/printers/{printerId}/jobs/{printJobId}?$select=status`
//! (or the same under `/print/shares/{printerShareId}`): what the gateway does when Graph refuses a
//! cancel with a 4xx that may mean "no longer cancelable", to tell a job that is already canceled
//! (the cancel succeeded earlier, perhaps by this call's own attempt whose answer was lost) from
//! one that completed or aborted.

use std::time::SystemTime;

use http::{Method, StatusCode, header};
use serde::Deserialize;

use super::{GraphClient, GraphError, GraphRejection, answer, classify, read_bounded};
use crate::{auth::BearerToken, request::CancelTarget, request::ClientRequestId};

/// The longest job state kept, in bytes. Graph's states are short camelCase names.
const MAX_STATE_LEN: usize = 64;

/// A print job's status as Graph reports it (`printJobStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintJobStatus {
    /// `status.state`, Graph's `printJobProcessingState`: `unknown`, `pending`, `processing`,
    /// `paused`, `stopped`, `completed`, `canceled`, `aborted`, `unknownFutureValue` (what Graph
    /// sends for a member added later, to a client that does not send
    /// `Prefer: include-unknown-enum-members`), or such a later value.
    pub state: String,
    /// `status.description`, a human-readable description, bounded in length, for the logs.
    pub description: Option<String>,
    /// Graph's `request-id` of the read, for the logs.
    pub request_id: Option<String>,
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobReadError {
    /// Graph refused the read, or could not be reached.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Graph answered 2xx with something other than a print job with a status.
    #[error("Graph's answer to the job read is not a print job with a status")]
    Unreadable,
}

/// The parts of Graph's `printJob` JSON the gateway reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct PrintJob {
    status: Status,
}

#[derive(Debug, Deserialize)]
struct Status {
    state: String,
    description: Option<String>,
}

// === impl GraphRejection ===

impl GraphRejection {
    /// Whether Graph's refusal of a cancel may mean that the job can no longer be canceled (it is
    /// canceled already, or it completed or aborted), so that reading the job tells which: any
    /// 4xx but 401, 403, 404 and 429. Graph documents only the class `4XX` for the cancel
    /// action, not which status a job that can no longer be canceled gets (409 is a guess; 400
    /// and 423 are as likely), so the gateway does not rely on one. 401 and 403 are about the
    /// token, 404 about the IDs and 429 about the rate: none of them says anything about the
    /// job, and a read would only repeat them.
    pub fn calls_for_job_read(&self) -> bool {
        self.status.is_client_error()
            && !matches!(
                self.status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::NOT_FOUND
                    | StatusCode::TOO_MANY_REQUESTS
            )
    }
}

// === impl PrintJobStatus ===

impl PrintJobStatus {
    /// Whether the job is canceled: only the state `canceled` is. `unknown` and
    /// `unknownFutureValue` say nothing about it, so they are not.
    pub fn is_canceled(&self) -> bool {
        self.state == "canceled"
    }

    /// Reads Graph's `printJob` JSON. The state must be a short identifier, so that it can
    /// travel in `ErrorInfo` metadata and the logs as it is.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let PrintJob {
            status: Status { state, description },
        } = serde_json::from_slice(body).ok()?;
        let identifier = !state.is_empty()
            && state.len() <= MAX_STATE_LEN
            && state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        identifier.then(|| Self {
            state,
            description: description.map(answer::bounded_message),
            request_id: None,
        })
    }
}

// === impl GraphClient ===

impl GraphClient {
    /// Reads a print job's status:
    /// `GET {base}/print/printers/{printerId}/jobs/{printJobId}?$select=status`, or the same under
    /// `/print/shares/{printerShareId}` when the cancel went through a share.
    ///
    /// The request is the cancel's with another method and URL, so that it carries the same
    /// token, `client-request-id`, trace context and headers, and goes through the same entry
    /// point, `Pool::send` (which never follows redirects). At most [`super::ERROR_BODY_LIMIT`] bytes of the answer
    /// are read, as for an error body. The caller bounds the time by dropping the future.
    pub async fn job_status(
        &self,
        target: &CancelTarget,
        token: &BearerToken,
        client_request_id: &ClientRequestId,
    ) -> Result<PrintJobStatus, JobReadError> {
        let read = || {
            let mut request = self.request(target, token, client_request_id);
            *request.method_mut() = Method::GET;
            *request.uri_mut() = self.base_url.job_status_uri(target);
            // A GET has no body, so it sends no Content-Length (RFC 9110, section 8.6).
            request.headers_mut().remove(header::CONTENT_LENGTH);
            request
        };
        let response = self.pool.send(read).await.map_err(classify)?;
        let (parts, body) = response.into_parts();
        let body = read_bounded(body).await;
        if !parts.status.is_success() {
            let rejection =
                GraphRejection::new(parts.status, &parts.headers, &body, SystemTime::now());
            return Err(GraphError::Rejected(Box::new(rejection)).into());
        }
        let mut status = PrintJobStatus::from_json(&body).ok_or(JobReadError::Unreadable)?;
        status.request_id = answer::request_id(&parts.headers);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job body and the state and description read from it, or `None` when it is refused.
    type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);

    #[test]
    fn reads_the_state_of_graphs_print_job_json() {
        let cases: &[Case] = &[
            (
                r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#print/printers('p')/jobs(status)/$entity","id":"5182","status":{"state":"canceled","description":"The print job has been canceled.","details":[],"isAcquiredByPrinter":true}}"#,
                Some(("canceled", Some("The print job has been canceled."))),
            ),
            (
                r#"{"status":{"state":"completed"}}"#,
                Some(("completed", None)),
            ),
            (
                r#"{"status":{"state":"unknownFutureValue","description":null}}"#,
                Some(("unknownFutureValue", None)),
            ),
            (r#"{"status":{"state":""}}"#, None),
            (r#"{"status":{"state":"a b"}}"#, None),
            (r#"{"status":{"description":"no state"}}"#, None),
            (r#"{"status":null}"#, None),
            (r#"{"id":"1"}"#, None),
            (r#"{"status":{"state":"canceled""#, None),
            ("<html>Bad Gateway</html>", None),
            ("", None),
        ];
        for &(body, expected) in cases {
            let status = PrintJobStatus::from_json(body.as_bytes());
            let actual = status
                .as_ref()
                .map(|s| (s.state.as_str(), s.description.as_deref()));
            assert_eq!(actual, expected, "{body}");
        }
        let long = format!(
            r#"{{"status":{{"state":"{}"}}}}"#,
            "a".repeat(MAX_STATE_LEN + 1)
        );
        assert_eq!(PrintJobStatus::from_json(long.as_bytes()), None);
    }

    #[test]
    fn only_canceled_is_canceled() {
        for (state, canceled) in [
            ("canceled", true),
            ("completed", false),
            ("aborted", false),
            ("processing", false),
            ("unknown", false),
            ("unknownFutureValue", false),
            ("Canceled", false),
        ] {
            let status = PrintJobStatus {
                state: state.to_owned(),
                description: None,
                request_id: None,
            };
            assert_eq!(status.is_canceled(), canceled, "{state}");
        }
    }

    #[test]
    fn every_4xx_but_401_403_404_and_429_calls_for_a_read() {
        for status in 100..=599 {
            let status = StatusCode::from_u16(status).unwrap();
            let rejection =
                GraphRejection::new(status, &http::HeaderMap::new(), b"", SystemTime::now());
            let expected = (400..500).contains(&status.as_u16())
                && ![401, 403, 404, 429].contains(&status.as_u16());
            assert_eq!(rejection.calls_for_job_read(), expected, "HTTP {status}");
        }
    }
}
