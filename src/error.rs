//! `CancelError`: every way a Cancel call can fail, and what each says about itself (Graph's HTTP
//! status and request ID, the wait to suggest). [`crate::status`], the one owner of gRPC codes,
//! gives it its code and turns it into the status the caller sees.

use std::{sync::Arc, time::Duration};

use http::StatusCode;

use crate::{
    auth::AuthError,
    entra::ExchangeFailure,
    graph::{GraphError, GraphRejection},
    request::InvalidField,
};

/// The wait suggested to callers turned away because the gateway is at its limit of calls in
/// flight: short, since calls in flight usually end within a Graph round trip.
pub const OVERLOADED_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Why a Cancel call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The `authorization` metadata is missing or malformed; Graph was not called.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A request field is invalid; Graph was not called.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidField),
    /// The call's deadline ran out, before Graph was called or while waiting for it.
    #[error("the call's deadline ran out {}", if *.graph_called { "before Graph answered" } else { "before Graph was called" })]
    DeadlineExceeded {
        /// Whether a request to Graph had been started.
        graph_called: bool,
    },
    /// Graph refused the call, or could not be reached (after the retries the policy allows).
    // The message names only this layer: `source` is the error's source, and a log's error chain
    // prints it next, so `{source}` here would print it twice.
    #[error("the call to Graph failed")]
    Graph {
        /// The last attempt's outcome.
        source: GraphError,
        /// The wait the gateway would have made before another attempt, when it stopped only
        /// because that wait would have ended past the deadline.
        retry_delay: Option<Duration>,
    },
    /// Graph refused the cancel with a 4xx other than 401, 403, 404 and 429, and a read of the job
    /// found it in a state other than canceled, such as completed, aborted or
    /// `unknownFutureValue`: the job can no longer be canceled (FAILED_PRECONDITION).
    #[error("Graph answered HTTP {} and the job is {job_state}", .rejection.status)]
    NotCancelable {
        /// Graph's refusal of the cancel.
        rejection: Box<GraphRejection>,
        /// The job's state as Graph reported it, such as `completed`.
        job_state: String,
    },
    /// The on-behalf-of exchange of the caller's token for a Graph token failed; Graph was not
    /// called.
    #[error(transparent)]
    TokenExchange(Arc<ExchangeFailure>),
    /// The gateway already has as many calls in flight as it allows.
    #[error("the gateway is at its limit of {limit} calls in flight: retry shortly")]
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// The request message is larger than the gateway accepts; Graph was not called.
    #[error("the request message of {size} bytes is over the limit of {limit} bytes")]
    MessageTooLarge {
        /// The size the message declared.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Graph is throttling the tenant and app of the call's token, and the call's deadline ends
    /// before the throttle window does: the gateway did not send it.
    #[error(
        "Microsoft Graph is throttling this tenant and app (HTTP {}) for {} ms more, past the call's deadline: the call was not sent",
        .status.as_u16(),
        .retry_delay.as_millis()
    )]
    Throttled {
        /// The HTTP status that opened the window: 429, or 503.
        status: StatusCode,
        /// What is left of the window.
        retry_delay: Duration,
    },
    /// The request message did not arrive within the gateway's wait after the call's headers;
    /// Graph was not called.
    #[error("the request message did not arrive within {} of the call's headers", humantime::format_duration(*.waited))]
    MessageLate {
        /// How long the gateway waited.
        waited: Duration,
    },
    /// The gateway is shutting down and its grace period ended before Graph answered.
    #[error("the gateway shut down before Graph answered")]
    ShuttingDown,
    /// The gateway failed while handling the call: code that should not panic did. The panic is
    /// logged where it happened (`telemetry`'s panic hook); the caller gets INTERNAL, not a
    /// broken stream.
    #[error("the gateway failed internally while handling the call")]
    Internal,
}

// === impl CancelError ===

impl CancelError {
    /// The HTTP status Graph answered with, when it answered.
    pub fn http_status(&self) -> Option<StatusCode> {
        self.rejection().map(|rejection| rejection.status)
    }

    /// Graph's `request-id`, when Graph answered.
    pub fn graph_request_id(&self) -> Option<&str> {
        self.rejection()?.request_id.as_deref()
    }

    /// Graph's refusal of the cancel, when Graph answered.
    pub fn rejection(&self) -> Option<&GraphRejection> {
        match self {
            Self::Graph {
                source: GraphError::Rejected(rejection),
                ..
            }
            | Self::NotCancelable { rejection, .. } => Some(rejection),
            _ => None,
        }
    }

    /// The job's state, when a read of the job after Graph refused the cancel found one.
    pub fn job_state(&self) -> Option<&str> {
        match self {
            Self::NotCancelable { job_state, .. } => Some(job_state),
            _ => None,
        }
    }

    /// How long the caller should wait before trying again, when the gateway can tell.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self {
            Self::Graph { retry_delay, .. } => *retry_delay,
            Self::Throttled { retry_delay, .. } => Some(*retry_delay),
            Self::TokenExchange(failure) => failure.retry_delay.or(failure.error.retry_after()),
            Self::Overloaded { .. } => Some(OVERLOADED_RETRY_DELAY),
            _ => None,
        }
    }
}

impl From<GraphError> for CancelError {
    fn from(source: GraphError) -> Self {
        Self::Graph {
            source,
            retry_delay: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ErrorChain;

    #[test]
    fn a_graph_failure_logs_each_message_once() {
        let rejection = GraphRejection::new(
            StatusCode::NOT_FOUND,
            &http::HeaderMap::new(),
            b"",
            std::time::SystemTime::now(),
        );
        let error = CancelError::from(GraphError::Rejected(Box::new(rejection)));
        let line = ErrorChain(&error).to_string();
        assert_eq!(line.matches("Graph answered HTTP 404").count(), 1, "{line}");
        assert_eq!(
            line,
            "the call to Graph failed: Graph answered HTTP 404 Not Found"
        );
    }
}
