//! The retry policy: which Graph outcomes are tried again, how long to wait, and never past the
//! caller's deadline.
//!
//! - Retried: 429, 503 and 504, and failures where nothing was sent (connection refused, DNS,
//!   TLS handshake). Everything else is a definite answer (other 4xx, 500, 501) or may have
//!   reached Graph (a connection that broke mid-call), and a retry could surprise the caller.
//! - The wait is Graph's `Retry-After` (seconds or HTTP-date), at most `retry_after_max`;
//!   without one, exponential backoff with jitter (200 ms doubling to 5 s, plus up to as much
//!   again at random).
//! - At most `max_attempts` attempts in all.
//! - When the next wait would end past the deadline, the gateway answers at once with the mapped
//!   status and a `RetryInfo` of that wait, so the caller can decide.
//! - With the throttle gate on, every attempt first passes the gate ([`GateCall`]), and a 429 (or
//!   a 503 with `Retry-After`) opens a window for the call's tenant and app: the retry is then
//!   simply a call waiting at the gate, with the others, rather than a wait of its own.

mod metrics;

use std::future::Future;

use tokio::time::Instant;
use tracing::Span;

pub use self::metrics::{AttemptMetrics, GraphFailure, RetryReason};
pub use crate::backoff::RetryPolicy;
use crate::{
    egress::retry::{self, Next, Observed, Operation, client_span},
    error::CancelError,
    graph::{GateCall, GraphAcceptance, GraphError, Held, Throttle},
};

/// A call's outcome and how many attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    /// Acceptance, or why the call failed.
    pub outcome: T,
    /// How many requests were sent (or tried) to Graph.
    pub attempts: u32,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// Calls `attempt` until it succeeds, fails definitively, runs out of attempts, or the next
    /// wait would not fit before `deadline`. `attempt` gets the attempt number, from 1. Each
    /// attempt passes `gate` first, runs in a client span (`graph.cancel`, named `route`: Graph's
    /// route template) and is counted in `metrics`. The time held at the gate goes on the current
    /// (call's) span as `held_ms`.
    ///
    /// Not an `async fn`: its arguments would then have storage of their own in the future,
    /// beside the loop's state that they are moved into, in every call in flight.
    pub fn run<'a, F, Fut>(
        &'a self,
        deadline: Instant,
        route: &'static str,
        metrics: &'a AttemptMetrics,
        gate: GateCall<'a>,
        attempt: F,
    ) -> impl Future<Output = Attempted<Result<GraphAcceptance, CancelError>>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<GraphAcceptance, GraphError>>,
    {
        let mut cancel = GraphCancel {
            policy: self,
            route,
            metrics,
            gate,
            attempt,
            previous: None,
            reason: RetryReason::Unreachable,
        };
        async move {
            let (outcome, attempts) = retry::run(&mut cancel, deadline).await;
            let held = cancel.gate.held();
            if !held.is_zero() {
                // Whole microseconds, as the call's latency.
                Span::current().record("held_ms", held.as_micros() as f64 / 1e3);
            }
            Attempted { outcome, attempts }
        }
    }
}

// === impl Attempted ===

impl<T> Attempted<Result<T, CancelError>> {
    /// A call that ended before any request was sent to Graph.
    pub fn not_sent(error: CancelError) -> Self {
        Self {
            outcome: Err(error),
            attempts: 0,
        }
    }
}

/// The attempts of one Graph call under the policy, for the retry loop.
struct GraphCancel<'a, F> {
    policy: &'a RetryPolicy,
    /// Graph's route template, the client spans' name: a printer's or a share's cancel.
    route: &'static str,
    metrics: &'a AttemptMetrics,
    gate: GateCall<'a>,
    attempt: F,
    /// The previous attempt's failure, which a call turned away at the gate answers with.
    previous: Option<GraphError>,
    /// Why the last failure may be tried again.
    reason: RetryReason,
}

impl<F, Fut> Operation for GraphCancel<'_, F>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<GraphAcceptance, GraphError>>,
{
    type Output = GraphAcceptance;
    type Error = GraphError;
    type Failure = CancelError;

    async fn ready(&mut self, deadline: Instant, attempts: u32) -> Result<(), CancelError> {
        match self.gate.wait(deadline).await {
            Ok(()) => Ok(()),
            Err(Held::TooLate(refusal)) => Err(match self.previous.take() {
                Some(source) => CancelError::Graph {
                    source,
                    retry_delay: Some(refusal.wait),
                },
                None => CancelError::Throttled {
                    status: refusal.status,
                    retry_delay: refusal.wait,
                },
            }),
            Err(Held::DeadlineExceeded) => Err(CancelError::DeadlineExceeded {
                graph_called: attempts > 0,
            }),
        }
    }

    fn span(&self, attempt: u32) -> Span {
        client_span!("graph.cancel", self.route, "POST", attempt = attempt)
    }

    fn attempt(
        &mut self,
        attempt: u32,
    ) -> impl Future<Output = Result<GraphAcceptance, GraphError>> {
        (self.attempt)(attempt)
    }

    fn observe(
        &mut self,
        outcome: Option<Result<GraphAcceptance, GraphError>>,
        span: &Span,
        elapsed: std::time::Duration,
    ) -> Observed<GraphAcceptance, GraphError, CancelError> {
        let metrics = self.metrics;
        let http_status = match &outcome {
            Some(Ok(acceptance)) => Some(acceptance.status),
            Some(Err(GraphError::Rejected(rejection))) => Some(rejection.status),
            Some(Err(GraphError::Unreachable(_))) => {
                metrics.graph_failed(GraphFailure::Unreachable);
                None
            }
            Some(Err(GraphError::Transport(_))) => {
                metrics.graph_failed(GraphFailure::Transport);
                None
            }
            None => {
                metrics.graph_failed(GraphFailure::Timeout);
                None
            }
        };
        if let Some(status) = http_status {
            metrics.graph_answered(status.as_u16(), elapsed);
            span.record("http.response.status_code", status.as_u16());
        }
        match outcome {
            Some(Ok(acceptance)) => {
                self.gate.answered(None);
                Observed::Done(acceptance)
            }
            Some(Err(error)) => {
                span.record("otel.status_code", "ERROR");
                Observed::Failed(error)
            }
            None => {
                span.record("otel.status_code", "ERROR");
                Observed::Ended(CancelError::DeadlineExceeded { graph_called: true })
            }
        }
    }

    fn after(&mut self, error: GraphError, attempts: u32) -> Next<GraphError, CancelError> {
        let at_the_gate = self
            .gate
            .answered(throttle(&error, self.policy.retry_after_max));
        let Some(reason) = retryable(&error) else {
            return Next::Stop(error.into());
        };
        if attempts >= self.policy.max_attempts {
            return Next::Stop(error.into());
        }
        self.reason = reason;
        if at_the_gate {
            tracing::info!(
                attempt = attempts,
                reason = reason.as_str(),
                "retrying the Graph call when the throttle window ends"
            );
            self.metrics.retried(reason);
            self.previous = Some(error);
            return Next::Again;
        }
        let wait = match &error {
            GraphError::Rejected(rejection) => rejection
                .retry_after
                .map(|wait| wait.min(self.policy.retry_after_max)),
            _ => None,
        };
        Next::After { error, wait }
    }

    fn too_late(
        &mut self,
        error: GraphError,
        attempts: u32,
        wait: std::time::Duration,
    ) -> CancelError {
        tracing::info!(
            attempt = attempts,
            reason = self.reason.as_str(),
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "not retrying: the wait would end past the deadline"
        );
        CancelError::Graph {
            source: error,
            retry_delay: Some(wait),
        }
    }

    fn retrying(&mut self, error: GraphError, attempts: u32, wait: std::time::Duration) {
        tracing::info!(
            attempt = attempts,
            reason = self.reason.as_str(),
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "retrying the Graph call"
        );
        self.metrics.retried(self.reason);
        self.previous = Some(error);
    }
}

/// Whether an outcome is Graph throttling: 429, or 503 with `Retry-After` (bounded by
/// `retry_after_max`).
fn throttle(error: &GraphError, retry_after_max: std::time::Duration) -> Option<Throttle> {
    let GraphError::Rejected(rejection) = error else {
        return None;
    };
    let retry_after = rejection.retry_after.map(|wait| wait.min(retry_after_max));
    match rejection.status.as_u16() {
        429 => Some(Throttle {
            status: rejection.status,
            retry_after,
        }),
        503 if retry_after.is_some() => Some(Throttle {
            status: rejection.status,
            retry_after,
        }),
        _ => None,
    }
}

/// Why an outcome may be tried again, or `None` when it may not.
fn retryable(error: &GraphError) -> Option<RetryReason> {
    match error {
        GraphError::Rejected(rejection) => match rejection.status.as_u16() {
            429 => Some(RetryReason::Throttled),
            503 => Some(RetryReason::Unavailable),
            504 => Some(RetryReason::GatewayTimeout),
            _ => None,
        },
        GraphError::Unreachable(_) => Some(RetryReason::Unreachable),
        GraphError::Transport(_) => None,
    }
}
