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

use std::future::Future;

use tokio::time::Instant;
use tracing::{Instrument, Span, field};

pub use crate::backoff::RetryPolicy;
use crate::{
    backoff::{BACKOFF_MAX, backoff},
    error::CancelError,
    graph::{GateCall, GraphAcceptance, GraphError, Held, Throttle},
    metrics::{GraphFailure, Metrics, RetryReason},
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
    /// attempt passes `gate` first, runs in a client span (`graph.cancel`) and is counted in
    /// `metrics`. The time held at the gate goes on the current (call's) span as `held_ms`.
    pub async fn run<F, Fut>(
        &self,
        deadline: Instant,
        metrics: &Metrics,
        mut gate: GateCall<'_>,
        mut attempt: F,
    ) -> Attempted<Result<GraphAcceptance, CancelError>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<GraphAcceptance, GraphError>>,
    {
        let mut backoff = backoff();
        let mut attempts = 0;
        // The previous attempt's failure, which a call turned away at the gate answers with.
        let mut previous: Option<GraphError> = None;
        let outcome = loop {
            match gate.wait(deadline).await {
                Ok(()) => {}
                Err(Held::TooLate(refusal)) => {
                    break Err(match previous.take() {
                        Some(source) => CancelError::Graph {
                            source,
                            retry_delay: Some(refusal.wait),
                        },
                        None => CancelError::Throttled {
                            status: refusal.status,
                            retry_delay: refusal.wait,
                        },
                    });
                }
                Err(Held::DeadlineExceeded) => {
                    break Err(CancelError::DeadlineExceeded {
                        graph_called: attempts > 0,
                    });
                }
            }
            attempts += 1;
            let error = match observed(|| attempt(attempts), attempts, deadline, metrics).await {
                Ok(acceptance) => {
                    gate.answered(None);
                    break Ok(acceptance);
                }
                Err(Timeout) => break Err(CancelError::DeadlineExceeded { graph_called: true }),
                Err(Failed(error)) => error,
            };
            let at_the_gate = gate.answered(throttle(&error, self.retry_after_max));
            let Some(reason) = retryable(&error) else {
                break Err(error.into());
            };
            if attempts >= self.max_attempts {
                break Err(error.into());
            }
            if at_the_gate {
                tracing::info!(
                    attempt = attempts,
                    reason = reason.as_str(),
                    "retrying the Graph call when the throttle window ends"
                );
                metrics.retried(reason);
                previous = Some(error);
                continue;
            }
            let wait = match &error {
                GraphError::Rejected(rejection) => rejection
                    .retry_after
                    .map(|wait| wait.min(self.retry_after_max)),
                _ => None,
            }
            .unwrap_or_else(|| backoff.next().unwrap_or(BACKOFF_MAX));
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            if Instant::now() + wait >= deadline {
                tracing::info!(
                    attempt = attempts,
                    reason = reason.as_str(),
                    wait_ms,
                    "not retrying: the wait would end past the deadline"
                );
                break Err(CancelError::Graph {
                    source: error,
                    retry_delay: Some(wait),
                });
            }
            tracing::info!(
                attempt = attempts,
                reason = reason.as_str(),
                wait_ms,
                "retrying the Graph call"
            );
            metrics.retried(reason);
            tokio::time::sleep(wait).await;
            previous = Some(error);
        };
        let held = gate.held();
        if !held.is_zero() {
            // Whole microseconds, as the call's latency.
            Span::current().record("held_ms", held.as_micros() as f64 / 1e3);
        }
        Attempted { outcome, attempts }
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

/// Why an attempt did not succeed.
enum AttemptFailed {
    /// The deadline ran out while waiting.
    Timeout,
    /// Graph refused, or could not be reached.
    Failed(GraphError),
}

use AttemptFailed::{Failed, Timeout};

/// Runs one attempt within the deadline, in a client span, and counts it. It takes a closure
/// rather than the attempt's future so that the future is built in place and held once: every
/// byte of a call's state is held by every call in flight.
async fn observed<Fut: Future<Output = Result<GraphAcceptance, GraphError>>>(
    attempt: impl FnOnce() -> Fut,
    number: u32,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<GraphAcceptance, AttemptFailed> {
    let span = tracing::info_span!(
        "graph.cancel",
        otel.kind = "client",
        otel.name = "POST /print/printers/{printerId}/jobs/{printJobId}/cancel",
        otel.status_code = field::Empty,
        http.request.method = "POST",
        http.response.status_code = field::Empty,
        attempt = number,
    );
    let started = Instant::now();
    let outcome = tokio::time::timeout_at(deadline, attempt())
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let http_status = match &outcome {
        Ok(Ok(acceptance)) => Some(acceptance.status),
        Ok(Err(GraphError::Rejected(rejection))) => Some(rejection.status),
        Ok(Err(GraphError::Unreachable(_))) => {
            metrics.graph_failed(GraphFailure::Unreachable);
            None
        }
        Ok(Err(GraphError::Transport(_))) => {
            metrics.graph_failed(GraphFailure::Transport);
            None
        }
        Err(_) => {
            metrics.graph_failed(GraphFailure::Timeout);
            None
        }
    };
    if let Some(status) = http_status {
        metrics.graph_answered(status.as_u16(), elapsed);
        span.record("http.response.status_code", status.as_u16());
    }
    match outcome {
        Ok(Ok(acceptance)) => Ok(acceptance),
        Ok(Err(error)) => {
            span.record("otel.status_code", "ERROR");
            Err(Failed(error))
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
            Err(Timeout)
        }
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
