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
    ($name:literal, $otel_name:expr, $method:literal $(, attempt = $attempt:expr)?) => {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// What the scripted operation's rule says after a failure.
    #[derive(Clone, Copy)]
    enum Rule {
        Stop,
        Again,
        After(Option<Duration>),
    }

    /// An operation that answers from a script: each attempt takes `delay`, then gives its
    /// answer (`Ok(n)` or `Err(name)`), and records what the loop did, with the paused clock's
    /// time since the start.
    struct Script {
        start: Instant,
        ready: Result<(), &'static str>,
        answers: VecDeque<(Duration, Result<u32, &'static str>)>,
        rule: Rule,
        events: Vec<(String, Duration)>,
    }

    impl Script {
        fn new(answers: &[(u64, Result<u32, &'static str>)], rule: Rule) -> Self {
            Self {
                start: Instant::now(),
                ready: Ok(()),
                answers: answers
                    .iter()
                    .map(|&(ms, answer)| (Duration::from_millis(ms), answer))
                    .collect(),
                rule,
                events: Vec::new(),
            }
        }

        fn event(&mut self, what: String) {
            self.events.push((what, self.start.elapsed()));
        }
    }

    impl Operation for Script {
        type Output = u32;
        type Error = &'static str;
        type Failure = String;

        async fn ready(&mut self, _deadline: Instant, attempts: u32) -> Result<(), String> {
            self.ready
                .map_err(|refusal| format!("{refusal} after {attempts}"))
        }

        fn span(&self, attempt: u32) -> Span {
            client_span!("test.op", "POST /op", "POST", attempt = attempt)
        }

        fn attempt(&mut self, attempt: u32) -> impl Future<Output = Result<u32, &'static str>> {
            self.event(format!("attempt {attempt}"));
            let (delay, answer) = self.answers.pop_front().expect("a scripted answer");
            async move {
                tokio::time::sleep(delay).await;
                answer
            }
        }

        fn observe(
            &mut self,
            outcome: Option<Result<u32, &'static str>>,
            _span: &Span,
            _elapsed: Duration,
        ) -> Observed<u32, &'static str, String> {
            match outcome {
                Some(Ok(n)) => Observed::Done(n),
                Some(Err(error)) => Observed::Failed(error),
                None => Observed::Ended("deadline".to_owned()),
            }
        }

        fn after(&mut self, error: &'static str, _attempts: u32) -> Next<&'static str, String> {
            match self.rule {
                Rule::Stop => Next::Stop(format!("stopped at {error}")),
                Rule::Again => Next::Again,
                Rule::After(wait) => Next::After { error, wait },
            }
        }

        fn too_late(&mut self, error: &'static str, attempts: u32, wait: Duration) -> String {
            format!("too late after {error} ({attempts}) for {wait:?}")
        }

        fn retrying(&mut self, error: &'static str, _attempts: u32, wait: Duration) {
            self.event(format!("retrying after {error} in {wait:?}"));
        }
    }

    fn at(events: &[(String, Duration)], what: &str) -> Duration {
        events
            .iter()
            .find(|(event, _)| event == what)
            .unwrap_or_else(|| panic!("no {what:?} in {events:?}"))
            .1
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_tried_again_after_the_backoff_until_one_succeeds() {
        let mut op = Script::new(
            &[(0, Err("a")), (0, Err("b")), (0, Ok(7))],
            Rule::After(None),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(run(&mut op, deadline).await, (Ok(7), 3));
        // 200 ms doubling, plus up to as much again at random.
        let second = at(&op.events, "attempt 2");
        let third = at(&op.events, "attempt 3");
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&second),
            "{second:?}"
        );
        let gap = third - second;
        assert!(
            (Duration::from_millis(400)..=Duration::from_millis(800)).contains(&gap),
            "{gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_the_other_side_asks_for_replaces_the_backoff() {
        let wait = Duration::from_secs(3);
        let mut op = Script::new(&[(0, Err("a")), (0, Ok(1))], Rule::After(Some(wait)));
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(run(&mut op, deadline).await, (Ok(1), 2));
        assert_eq!(at(&op.events, "attempt 2"), wait);
        assert_eq!(at(&op.events, "retrying after a in 3s"), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_end_past_the_deadline_is_not_made() {
        let mut op = Script::new(&[(0, Err("a"))], Rule::After(Some(Duration::from_secs(2))));
        let deadline = Instant::now() + Duration::from_secs(1);
        let (outcome, attempts) = run(&mut op, deadline).await;
        assert_eq!(outcome, Err("too late after a (1) for 2s".to_owned()));
        assert_eq!(attempts, 1);
        assert_eq!(op.start.elapsed(), Duration::ZERO, "no wait was made");
    }

    #[tokio::test(start_paused = true)]
    async fn again_tries_at_once_and_stop_ends_with_the_rules_failure() {
        let mut op = Script::new(&[(10, Err("a")), (10, Err("b")), (10, Ok(3))], Rule::Again);
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(run(&mut op, deadline).await, (Ok(3), 3));
        assert_eq!(at(&op.events, "attempt 3"), Duration::from_millis(20));

        let mut op = Script::new(&[(0, Err("a"))], Rule::Stop);
        assert_eq!(
            run(&mut op, deadline).await,
            (Err("stopped at a".to_owned()), 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_an_attempt_and_a_refusal_before_one_sends_nothing() {
        let mut op = Script::new(&[(5_000, Ok(1))], Rule::After(None));
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            run(&mut op, deadline).await,
            (Err("deadline".to_owned()), 1)
        );
        assert_eq!(op.start.elapsed(), Duration::from_secs(1));

        let mut op = Script::new(&[], Rule::After(None));
        op.ready = Err("held");
        assert_eq!(
            run(&mut op, deadline).await,
            (Err("held after 0".to_owned()), 0)
        );
    }
}
