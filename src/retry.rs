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

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::{
    error::CancelError,
    graph::{GraphAcceptance, GraphError},
};

/// The first backoff wait; it doubles on each retry.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest backoff wait, before jitter.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How Graph calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most attempts per call, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured; longer ones are cut to it.
    pub retry_after_max: Duration,
}

/// A call's outcome and how many attempts it took.
#[derive(Debug)]
pub struct Attempted<T> {
    /// Acceptance, or why the call failed.
    pub outcome: T,
    /// How many requests were sent (or tried) to Graph.
    pub attempts: u32,
}

/// Why a Graph outcome may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retryable {
    /// Graph answered 429, 503 or 504.
    Status(u16),
    /// Nothing was sent: the connection could not be made.
    NotSent,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// Calls `attempt` until it succeeds, fails definitively, runs out of attempts, or the next
    /// wait would not fit before `deadline`. `attempt` gets the attempt number, from 1.
    pub async fn run<F, Fut>(
        &self,
        deadline: Instant,
        mut attempt: F,
    ) -> Attempted<Result<GraphAcceptance, CancelError>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<GraphAcceptance, GraphError>>,
    {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(BACKOFF_MIN)
            .with_max_delay(BACKOFF_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match tokio::time::timeout_at(deadline, attempt(attempts)).await {
                Ok(Ok(acceptance)) => {
                    return Attempted {
                        outcome: Ok(acceptance),
                        attempts,
                    };
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    let error = CancelError::DeadlineExceeded { graph_called: true };
                    return Attempted {
                        outcome: Err(error),
                        attempts,
                    };
                }
            };
            let Some(reason) = retryable(&error) else {
                return Attempted {
                    outcome: Err(error.into()),
                    attempts,
                };
            };
            if attempts >= self.max_attempts {
                return Attempted {
                    outcome: Err(error.into()),
                    attempts,
                };
            }
            let wait = match &error {
                GraphError::Rejected(rejection) if rejection.retry_after.is_some() => rejection
                    .retry_after
                    .unwrap_or_default()
                    .min(self.retry_after_max),
                _ => backoff.next().unwrap_or(BACKOFF_MAX),
            };
            if Instant::now() + wait >= deadline {
                tracing::info!(
                    attempt = attempts,
                    ?reason,
                    wait_ms = wait.as_millis() as u64,
                    "not retrying: the wait would end past the deadline"
                );
                let outcome = Err(CancelError::Graph {
                    source: error,
                    retry_delay: Some(wait),
                });
                return Attempted { outcome, attempts };
            }
            tracing::info!(
                attempt = attempts,
                ?reason,
                wait_ms = wait.as_millis() as u64,
                "retrying the Graph call"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

fn retryable(error: &GraphError) -> Option<Retryable> {
    match error {
        GraphError::Rejected(rejection) => match rejection.status.as_u16() {
            status @ (429 | 503 | 504) => Some(Retryable::Status(status)),
            _ => None,
        },
        GraphError::Unreachable(_) => Some(Retryable::NotSent),
        GraphError::Transport(_) => None,
    }
}
