//! The one retry loop, generic over the operation: each attempt in a client span within the
//! deadline, then the operation's own rule (Graph's in `crate::retry`, Entra ID's in
//! `crate::entra`) says whether to stop, try again at once (the attempt waits itself, as at
//! Graph's throttle gate), or wait (its `Retry-After`, else the backoff); a wait that would end
//! past the deadline is not made.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::backoff::{BACKOFF_MAX, backoff};

/// The client span of a request to a remote party, the same shape for every client:
/// `client_span!("graph.cancel", "POST /…/cancel", "POST", attempt = number)`; without `attempt`
/// for a request that is never retried. The operation records the answer's status on it.
macro_rules! client_span {
    ($name:literal, $otel_name:literal, $method:literal $(, attempt = $attempt:expr)?) => {
        tracing::info_span!(
            $name,
            otel.kind = "client",
            otel.name = $otel_name,
            otel.status_code = tracing::field::Empty,
            http.request.method = $method,
            http.response.status_code = tracing::field::Empty,
            $(attempt = $attempt,)?
        )
    };
}
pub(crate) use client_span;

/// What the loop does after an attempt failed.
pub(crate) enum Next<E, F> {
    /// Stop, ending with this.
    Stop(F),
    /// Try again at once: the next attempt waits by itself (at Graph's throttle gate).
    Again,
    /// Try again after `wait`, or after the backoff's next wait when `None`, unless that wait
    /// would end past the deadline.
    After {
        /// The attempt's error.
        error: E,
        /// The wait the other side asked for.
        wait: Option<Duration>,
    },
}

/// What an attempt came to, once observed.
pub(crate) enum Observed<O, E, F> {
    /// It succeeded.
    Done(O),
    /// It failed; the operation's rule says what next.
    Failed(E),
    /// The loop ends (the deadline ran out during the attempt, for Graph).
    Ended(F),
}

/// One kind of request that the loop sends until it succeeds or its rule says stop.
pub(crate) trait Operation {
    /// What a successful attempt gives.
    type Output;
    /// What a failed attempt gives.
    type Error;
    /// What the loop ends with when it stops without success.
    type Failure;

    /// Waits until the next attempt may go, within `deadline`; `Err` ends the loop. `attempts`
    /// were made so far.
    fn ready(
        &mut self,
        deadline: Instant,
        attempts: u32,
    ) -> impl Future<Output = Result<(), Self::Failure>>;

    /// The client span of attempt `attempt` (from 1), made with [`client_span!`].
    fn span(&self, attempt: u32) -> Span;

    /// Sends attempt `attempt`.
    fn attempt(&mut self, attempt: u32) -> impl Future<Output = Result<Self::Output, Self::Error>>;

    /// Records an attempt's outcome (`None`: the deadline ran out first) and its time on its
    /// span and in the metrics.
    fn observe(
        &mut self,
        outcome: Option<Result<Self::Output, Self::Error>>,
        span: &Span,
        elapsed: Duration,
    ) -> Observed<Self::Output, Self::Error, Self::Failure>;

    /// Whether to try again after `error`, the failure of attempt `attempts`.
    fn after(&mut self, error: Self::Error, attempts: u32) -> Next<Self::Error, Self::Failure>;

    /// The end of a loop whose next wait would end past the deadline.
    fn too_late(&mut self, error: Self::Error, attempts: u32, wait: Duration) -> Self::Failure;

    /// Another attempt goes after `wait`.
    fn retrying(&mut self, error: Self::Error, attempts: u32, wait: Duration);
}

/// Runs `operation` until it succeeds or stops, never waiting past `deadline`. Returns the
/// outcome and how many attempts were sent.
pub(crate) async fn run<O: Operation>(
    operation: &mut O,
    deadline: Instant,
) -> (Result<O::Output, O::Failure>, u32) {
    let mut backoff = backoff();
    let mut attempts = 0;
    loop {
        if let Err(failure) = operation.ready(deadline, attempts).await {
            return (Err(failure), attempts);
        }
        attempts += 1;
        let span = operation.span(attempts);
        let started = Instant::now();
        // The attempt's future is built in place and held once: every byte of a call's state
        // is held by every call in flight.
        let outcome = tokio::time::timeout_at(deadline, operation.attempt(attempts))
            .instrument(span.clone())
            .await
            .ok();
        let error = match operation.observe(outcome, &span, started.elapsed()) {
            Observed::Done(output) => return (Ok(output), attempts),
            Observed::Ended(failure) => return (Err(failure), attempts),
            Observed::Failed(error) => error,
        };
        let (error, wait) = match operation.after(error, attempts) {
            Next::Stop(failure) => return (Err(failure), attempts),
            Next::Again => continue,
            Next::After { error, wait } => (error, wait),
        };
        let wait = wait.unwrap_or_else(|| backoff.next().unwrap_or(BACKOFF_MAX));
        if Instant::now() + wait >= deadline {
            return (Err(operation.too_late(error, attempts, wait)), attempts);
        }
        operation.retrying(error, attempts, wait);
        tokio::time::sleep(wait).await;
    }
}
