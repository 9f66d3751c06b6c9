//! The simulated Graph's state and its decisions: which answer a cancel or a job read gets, after
//! which delay. Pure logic, no HTTP.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::scenario::{ErrorDetailSpec, JobState, Rule, RuleMethod, Scenario, ThrottleSpec};

/// What the simulated Graph answers to one cancel or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Success with this 2xx status and no body (Graph sends 204 to a cancel).
    Accepted(u16),
    /// A job read: 200 with the job's `printJob` JSON.
    Job { id: String, state: JobState },
    /// A Graph-shaped error.
    Failed(Failure),
}

/// A Graph-shaped error answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after: Option<String>,
    /// Codes of nested `innerError` levels, outermost first.
    pub inner_codes: Vec<String>,
    pub details: Vec<ErrorDetailSpec>,
    /// The claims JSON of a claims challenge.
    pub claims: Option<String>,
}

/// What a job request names as the job's parent: a printer, or a printer share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parent {
    Printer(String),
    Share(String),
}

/// How a call will be answered: after `delay`, with `answer`, or by the printers and jobs when
/// no rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub delay: Option<Duration>,
    pub answer: Option<Answer>,
}

/// The printers, their jobs, and the rules with the uses they have left.
#[derive(Debug)]
pub(crate) struct Model {
    printers: HashMap<String, Printer>,
    /// Each share's printer.
    shares: HashMap<String, String>,
    rules: Rules<Rule>,
    /// Each tenant's throttle window, and when its current one opened.
    throttles: Vec<(ThrottleSpec, Option<Instant>)>,
    not_cancelable_status: u16,
}

#[derive(Debug)]
struct Printer {
    jobs: HashMap<String, JobState>,
    any_job: bool,
}

/// A scenario's scripted rules, of Graph or of the token endpoint, each with the uses it has
/// left: tried in order, the first that matches a request and has uses left applies.
#[derive(Debug)]
pub(crate) struct Rules<R> {
    rules: Vec<(R, Option<u64>)>,
}

// === impl Model ===

impl Model {
    pub(crate) fn new(scenario: Scenario) -> Self {
        let printers = scenario
            .printers
            .into_iter()
            .map(|printer| {
                let jobs = printer
                    .jobs
                    .into_iter()
                    .map(|job| (job.id, job.state))
                    .collect();
                (
                    printer.id,
                    Printer {
                        jobs,
                        any_job: printer.any_job,
                    },
                )
            })
            .collect();
        let rules = Rules::new(scenario.rules, |rule| rule.times);
        let throttles = scenario
            .throttle
            .into_iter()
            .map(|spec| (spec, None))
            .collect();
        let shares = scenario
            .shares
            .into_iter()
            .map(|share| (share.id, share.printer))
            .collect();
        Self {
            printers,
            shares,
            rules,
            throttles,
            not_cancelable_status: scenario.not_cancelable_status.unwrap_or(409),
        }
    }

    /// The 429 for a call of `tenant` at `now` while its scripted throttle window lasts (the
    /// tenant's first call opens it), with a `Retry-After` of what is left, rounded up to the
    /// millisecond so that a client that waits it out arrives after the window.
    pub(crate) fn throttled(&mut self, tenant: Option<&str>, now: Instant) -> Option<Answer> {
        let tenant = tenant?;
        let (spec, opened) = self
            .throttles
            .iter_mut()
            .find(|(spec, _)| spec.tenant == tenant)?;
        let opened = match *opened {
            Some(at) if spec.repeat_after.is_none_or(|repeat| now < at + repeat) => at,
            _ => *opened.insert(now),
        };
        let left = (opened + spec.window).checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        let millis = left.as_nanos().div_ceil(1_000_000);
        let (code, message) = usual_error(429);
        Some(Answer::Failed(Failure {
            status: 429,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after: Some(format!("{}.{:03}", millis / 1000, millis % 1000)),
            ..Failure::default()
        }))
    }

    /// The printer a request names, directly or through a share; `None` for an unknown share.
    fn printer_of<'a>(&'a self, parent: &'a Parent) -> Option<&'a str> {
        match parent {
            Parent::Printer(printer) => Some(printer),
            Parent::Share(share) => self.shares.get(share).map(String::as_str),
        }
    }

    /// The plan for a cancel (`POST`) or read (`GET`) of `job` under `parent`: the first rule
    /// that matches and has uses left, which spends one use; or no rule at all.
    pub(crate) fn plan(&mut self, method: RuleMethod, parent: &Parent, job: &str) -> Plan {
        let printer = self.printer_of(parent).map(str::to_owned);
        let share = match parent {
            Parent::Share(share) => Some(share.as_str()),
            Parent::Printer(_) => None,
        };
        let matching = self.rules.take(|rule| {
            rule.method == method
                && rule
                    .printer
                    .as_deref()
                    .is_none_or(|p| printer.as_deref() == Some(p))
                && rule.share.as_deref().is_none_or(|s| share == Some(s))
                && rule.job.as_deref().is_none_or(|j| j == job)
        });
        let Some(rule) = matching else {
            return Plan {
                delay: None,
                answer: None,
            };
        };
        let answer = rule.status.map(|status| {
            if (200..300).contains(&status) {
                Answer::Accepted(status)
            } else {
                let (code, message) = usual_error(status);
                Answer::Failed(Failure {
                    status,
                    code: rule.code.clone().unwrap_or_else(|| code.to_owned()),
                    message: rule.message.clone().unwrap_or_else(|| message.to_owned()),
                    retry_after: rule.retry_after.clone(),
                    inner_codes: rule.inner_codes.clone(),
                    details: rule.details.clone(),
                    claims: rule.claims.clone(),
                })
            }
        });
        Plan {
            delay: rule.delay,
            answer,
        }
    }

    /// Cancels `job` under `parent` by the state machine: a pending, processing, paused or
    /// stopped job becomes canceled; a completed, canceled, aborted, unknown or
    /// unknownFutureValue one cannot be canceled (409 `notAllowed`, or the scenario's
    /// `notCancelableStatus`); an unknown printer, share or job is 404 `itemNotFound`.
    pub(crate) fn cancel(&mut self, parent: &Parent, job: &str) -> Answer {
        let refused_status = self.not_cancelable_status;
        let printer = match self.printer_of(parent) {
            Some(printer) => printer.to_owned(),
            None => return parent_not_found(parent),
        };
        let Some(found) = self.printers.get_mut(&printer) else {
            return parent_not_found(parent);
        };
        let Some(state) = found.jobs.get_mut(job) else {
            return if found.any_job {
                Answer::Accepted(204)
            } else {
                not_found(format!(
                    "The print job '{job}' was not found on printer '{}'.",
                    parent_name(parent)
                ))
            };
        };
        if !state.is_cancelable() {
            let code = match refused_status {
                409 => "notAllowed",
                other => usual_error(other).0,
            };
            return Answer::Failed(Failure {
                status: refused_status,
                code: code.to_owned(),
                message: format!(
                    "The print job is already {} and cannot be canceled.",
                    state.name()
                ),
                ..Failure::default()
            });
        }
        *state = JobState::Canceled;
        Answer::Accepted(204)
    }

    /// Reads `job` under `parent`: the job and its state, or 404 `itemNotFound`. A job of an
    /// `anyJob` printer that is not listed reads as processing, as it cancels.
    pub(crate) fn read(&mut self, parent: &Parent, job: &str) -> Answer {
        let Some(found) = self.printer_of(parent).and_then(|p| self.printers.get(p)) else {
            return parent_not_found(parent);
        };
        let state = match found.jobs.get(job) {
            Some(state) => *state,
            None if found.any_job => JobState::Processing,
            None => {
                return not_found(format!(
                    "The print job '{job}' was not found on printer '{}'.",
                    parent_name(parent)
                ));
            }
        };
        Answer::Job {
            id: job.to_owned(),
            state,
        }
    }
}

// === impl Rules ===

impl<R> Rules<R> {
    /// `rules` in their order, each with the `times` it applies.
    pub(crate) fn new(rules: Vec<R>, times: impl Fn(&R) -> Option<u64>) -> Self {
        let rules = rules
            .into_iter()
            .map(|rule| {
                let uses = times(&rule);
                (rule, uses)
            })
            .collect();
        Self { rules }
    }

    /// The first rule that `matches` and has uses left, which spends one of them.
    pub(crate) fn take(&mut self, matches: impl Fn(&R) -> bool) -> Option<&R> {
        let (rule, uses) = self
            .rules
            .iter_mut()
            .find(|(rule, uses)| uses.is_none_or(|left| left > 0) && matches(rule))?;
        if let Some(left) = uses {
            *left -= 1;
        }
        Some(rule)
    }
}

fn not_found(message: String) -> Answer {
    Answer::Failed(Failure {
        status: 404,
        code: "itemNotFound".to_owned(),
        message,
        ..Failure::default()
    })
}

fn parent_name(parent: &Parent) -> &str {
    match parent {
        Parent::Printer(id) | Parent::Share(id) => id,
    }
}

fn parent_not_found(parent: &Parent) -> Answer {
    not_found(match parent {
        Parent::Printer(printer) => format!("The printer '{printer}' was not found."),
        Parent::Share(share) => format!("The printer share '{share}' was not found."),
    })
}

/// The error code and message Graph usually sends with a status.
pub(crate) fn usual_error(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalidRequest", "The request is malformed or incorrect."),
        401 => (
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        ),
        403 => (
            "accessDenied",
            "The caller does not have permission to cancel this print job.",
        ),
        404 => ("itemNotFound", "The requested resource was not found."),
        405 => (
            "BadRequest",
            "The HTTP method is not allowed for this resource.",
        ),
        409 => (
            "notAllowed",
            "The print job cannot be canceled in its current state.",
        ),
        423 => ("resourceLocked", "The resource is locked."),
        429 => (
            "TooManyRequests",
            "Too many requests: retry after the time in the Retry-After header.",
        ),
        500 => ("generalException", "An unspecified error has occurred."),
        502 => ("badGateway", "The gateway received an invalid response."),
        503 => (
            "serviceNotAvailable",
            "The service is temporarily unavailable: retry later.",
        ),
        504 => ("gatewayTimeout", "The gateway timed out."),
        _ => ("generalException", "A simulated error has occurred."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(scenario: &str) -> Model {
        Model::new(Scenario::parse(scenario, "test").unwrap())
    }

    fn printer(id: &str) -> Parent {
        Parent::Printer(id.to_owned())
    }

    fn share(id: &str) -> Parent {
        Parent::Share(id.to_owned())
    }

    #[test]
    fn cancel_follows_the_job_state_machine() {
        let mut model = Model::new(Scenario::builtin());
        let failed = |answer: Answer| match answer {
            Answer::Failed(failure) => (failure.status, failure.code),
            other => panic!("expected a failure, got {other:?}"),
        };

        for job in ["1", "2", "6"] {
            assert_eq!(
                model.cancel(&printer("printer-1"), job),
                Answer::Accepted(204),
                "job {job}"
            );
            assert_eq!(
                failed(model.cancel(&printer("printer-1"), job)),
                (409, "notAllowed".into()),
                "job {job} again"
            );
        }
        for job in ["3", "4", "5"] {
            assert_eq!(
                failed(model.cancel(&printer("printer-1"), job)),
                (409, "notAllowed".into()),
                "job {job}"
            );
        }
        assert_eq!(
            failed(model.cancel(&printer("printer-1"), "99")),
            (404, "itemNotFound".into())
        );
        assert_eq!(
            failed(model.cancel(&printer("no-such-printer"), "1")),
            (404, "itemNotFound".into())
        );
        for _ in 0..3 {
            assert_eq!(
                model.cancel(&printer("any-job-printer"), "7"),
                Answer::Accepted(204)
            );
        }
    }

    #[test]
    fn rules_apply_in_order_for_their_number_of_uses() {
        let mut model = model(
            r#"{"rules": [
                {"printer": "p", "job": "1", "status": 500},
                {"printer": "p", "status": 429, "retryAfter": 2.5, "times": 2},
                {"status": 202, "delay": "10ms"}
            ]}"#,
        );
        let status = |plan: Plan| match plan.answer {
            Some(Answer::Failed(failure)) => (failure.status, failure.retry_after),
            Some(Answer::Accepted(status)) => (status, None),
            Some(Answer::Job { .. }) | None => (0, None),
        };

        let post = RuleMethod::Post;
        assert_eq!(status(model.plan(post, &printer("p"), "1")), (500, None));
        assert_eq!(
            status(model.plan(post, &printer("p"), "2")),
            (429, Some("2.5".into()))
        );
        assert_eq!(
            status(model.plan(post, &printer("p"), "2")),
            (429, Some("2.5".into()))
        );
        let third = model.plan(post, &printer("p"), "2");
        assert_eq!(third.delay, Some(Duration::from_millis(10)));
        assert_eq!(status(third), (202, None));
        assert_eq!(
            status(model.plan(post, &printer("p"), "1")),
            (500, None),
            "unlimited rules never run out"
        );
    }

    #[test]
    fn without_a_matching_rule_the_state_decides() {
        let mut model = model(r#"{"rules": [{"printer": "other", "status": 503}]}"#);
        assert_eq!(
            model.plan(RuleMethod::Post, &printer("p"), "1"),
            Plan {
                delay: None,
                answer: None
            }
        );
    }

    #[test]
    fn rules_script_the_cancel_unless_they_name_the_read() {
        let mut model = model(
            r#"{"rules": [
                {"job": "1", "status": 503, "times": 1},
                {"job": "1", "method": "GET", "status": 403, "times": 1},
                {"job": "2", "method": "POST", "delay": "1s"}
            ]}"#,
        );
        let status = |plan: Plan| match plan.answer {
            Some(Answer::Failed(failure)) => Some(failure.status),
            _ => None,
        };

        assert_eq!(
            status(model.plan(RuleMethod::Get, &printer("p"), "1")),
            Some(403)
        );
        assert_eq!(
            status(model.plan(RuleMethod::Get, &printer("p"), "1")),
            None
        );
        assert_eq!(
            status(model.plan(RuleMethod::Post, &printer("p"), "1")),
            Some(503)
        );
        assert_eq!(model.plan(RuleMethod::Get, &printer("p"), "2").delay, None);
        assert_eq!(
            model.plan(RuleMethod::Post, &printer("p"), "2").delay,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_tenants_throttle_window_opens_at_its_first_call_and_counts_down() {
        let mut model = model(
            r#"{"throttle": [
                {"tenant": "t1", "window": 5},
                {"tenant": "t2", "window": "1s", "repeatAfter": "10s"}
            ]}"#,
        );
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let retry_after = |answer: Option<Answer>| match answer {
            Some(Answer::Failed(failure)) => {
                assert_eq!(failure.status, 429);
                failure.retry_after
            }
            other => panic!("expected a 429, got {other:?}"),
        };

        assert_eq!(model.throttled(None, t0), None);
        assert_eq!(model.throttled(Some("other"), t0), None);
        assert_eq!(
            retry_after(model.throttled(Some("t1"), t0)).as_deref(),
            Some("5.000")
        );
        assert_eq!(
            retry_after(model.throttled(Some("t1"), t0 + Duration::from_nanos(1_500_000_001)))
                .as_deref(),
            Some("3.500"),
            "rounded up to the millisecond"
        );
        assert_eq!(model.throttled(Some("t1"), t0 + ms(5_000)), None);
        assert_eq!(
            model.throttled(Some("t1"), t0 + ms(60_000)),
            None,
            "one window"
        );

        assert!(model.throttled(Some("t2"), t0).is_some());
        assert_eq!(model.throttled(Some("t2"), t0 + ms(2_000)), None);
        assert!(
            model.throttled(Some("t2"), t0 + ms(10_000)).is_some(),
            "again"
        );
    }

    #[test]
    fn a_read_answers_the_state_a_cancel_left() {
        let mut model = Model::new(Scenario::builtin());
        let state = |answer: Answer| match answer {
            Answer::Job { state, .. } => Ok(state),
            Answer::Failed(failure) => Err(failure.status),
            Answer::Accepted(status) => Err(status),
        };

        assert_eq!(
            state(model.read(&printer("printer-1"), "2")),
            Ok(JobState::Pending)
        );
        model.cancel(&printer("printer-1"), "2");
        assert_eq!(
            state(model.read(&printer("printer-1"), "2")),
            Ok(JobState::Canceled)
        );
        assert_eq!(
            state(model.read(&printer("printer-1"), "3")),
            Ok(JobState::Completed)
        );
        assert_eq!(
            state(model.read(&printer("any-job-printer"), "7")),
            Ok(JobState::Processing)
        );
        assert_eq!(state(model.read(&printer("printer-1"), "99")), Err(404));
        assert_eq!(
            state(model.read(&printer("no-such-printer"), "1")),
            Err(404)
        );
    }

    #[test]
    fn a_share_reaches_its_printers_jobs_and_rules_can_name_it() {
        let mut model = model(
            r#"{
                "printers": [{"id": "p", "jobs": [{"id": "1"}, {"id": "2", "state": "unknownFutureValue"}]}],
                "shares": [{"id": "s", "printer": "p"}],
                "rules": [{"share": "s", "job": "9", "status": 503}],
                "notCancelableStatus": 400
            }"#,
        );
        let failed = |answer: Answer| match answer {
            Answer::Failed(failure) => (failure.status, failure.code),
            other => panic!("expected a failure, got {other:?}"),
        };
        assert_eq!(model.cancel(&share("s"), "1"), Answer::Accepted(204));
        assert_eq!(
            model.read(&printer("p"), "1"),
            Answer::Job {
                id: "1".into(),
                state: JobState::Canceled
            },
            "the share's job is the printer's"
        );
        assert_eq!(
            failed(model.cancel(&share("s"), "1")),
            (400, "invalidRequest".into()),
            "notCancelableStatus"
        );
        assert_eq!(
            failed(model.cancel(&printer("p"), "2")),
            (400, "invalidRequest".into()),
            "unknownFutureValue cannot be canceled"
        );
        assert_eq!(failed(model.cancel(&share("nope"), "1")).0, 404);
        assert_eq!(failed(model.read(&share("nope"), "1")).0, 404);
        assert!(
            model
                .plan(RuleMethod::Post, &share("s"), "9")
                .answer
                .is_some()
        );
        assert!(
            model
                .plan(RuleMethod::Post, &printer("p"), "9")
                .answer
                .is_none(),
            "a share rule does not match the printer's own path"
        );
    }
}
