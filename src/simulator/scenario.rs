//! What the simulator knows: printers, their jobs and the jobs' states, and scripted rules. Read
//! from a JSON scenario file, or the built-in default.

use std::{collections::HashSet, marker::PhantomData, path::Path, time::Duration};

use super::entra::scenario::EntraSpec;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{Error as _, SeqAccess, Visitor},
};

/// The built-in scenario, used when no file is given. docs/simulator.md shows it.
pub const DEFAULT_SCENARIO: &str = include_str!("default-scenario.json");

/// A scenario: printers with their jobs, and rules that script answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// The printers Graph knows. Any other printer ID answers 404.
    #[serde(default, deserialize_with = "unique_printers")]
    pub printers: Vec<PrinterSpec>,
    /// The printer shares Graph knows, each of a listed printer: a job reached through a share
    /// (`/print/shares/{id}/jobs/{jobId}`) is that printer's job. Any other share ID answers 404.
    #[serde(default, deserialize_with = "unique_shares")]
    pub shares: Vec<ShareSpec>,
    /// The HTTP status of the answer to a cancel of a job that can no longer be canceled
    /// (completed, canceled, aborted, unknown): 409 when absent. Graph documents only the class
    /// `4XX` there, so a scenario can make it 400 or 423 to see how a client copes.
    #[serde(default, deserialize_with = "client_error_status")]
    pub not_cancelable_status: Option<u16>,
    /// Scripted answers, tried in order; the first that matches a call and has uses left applies.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The simulated Entra token endpoint: tenants, clients, token lifetime, scripted answers.
    #[serde(default)]
    pub entra: EntraSpec,
    /// Throttle windows scripted per tenant, applied before the rules.
    #[serde(default)]
    pub throttle: Vec<ThrottleSpec>,
}

/// A throttle window scripted for one tenant, as Graph throttles an app in a tenant: the
/// tenant's first call opens it, and every call of that tenant while it lasts answers 429 with a
/// `Retry-After` counting down to its end.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThrottleSpec {
    /// The tenant: the `tid` claim of the bearer token (read, not verified, from a JWT).
    pub tenant: String,
    /// How long each window lasts: a number of seconds or a string such as `"5s"`.
    #[serde(deserialize_with = "window")]
    pub window: Duration,
    /// A new window opens at the tenant's first call this long or more after the previous one
    /// opened; only one window when absent.
    #[serde(default, deserialize_with = "delay")]
    pub repeat_after: Option<Duration>,
}

/// A printer and its jobs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrinterSpec {
    /// The printer's ID.
    pub id: String,
    /// Its jobs, each with a state that cancels change.
    #[serde(default, deserialize_with = "unique_jobs")]
    pub jobs: Vec<JobSpec>,
    /// When true, a job ID that is not listed counts as a job in progress, and canceling it
    /// always succeeds without changing any state: for load tests that repeat one call.
    #[serde(default)]
    pub any_job: bool,
}

/// A printer share: another name under which a printer's jobs are reached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShareSpec {
    /// The share's ID.
    pub id: String,
    /// The ID of the printer it shares, which must be listed under `printers`.
    pub printer: String,
}

/// A print job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSpec {
    /// The job's ID.
    pub id: String,
    /// Its processing state; `processing` when not given.
    #[serde(default = "JobState::processing")]
    pub state: JobState,
}

/// A print job's processing state, as Graph names them (`printJobProcessingState`, all nine
/// members).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Graph does not know the state: cannot be canceled here.
    Unknown,
    /// Waiting to be printed.
    Pending,
    /// Printing.
    Processing,
    /// Held.
    Paused,
    /// Stopped by an error.
    Stopped,
    /// Printed: cannot be canceled.
    Completed,
    /// Canceled: cannot be canceled again.
    Canceled,
    /// Ended by an error: cannot be canceled.
    Aborted,
    /// The evolvable enumeration's sentinel: what Graph sends for a state added later to a client
    /// that does not send `Prefer: include-unknown-enum-members`. Cannot be canceled here.
    UnknownFutureValue,
}

/// A scripted answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// The printer it applies to; every printer when absent.
    #[serde(default)]
    pub printer: Option<String>,
    /// The printer share it applies to: only requests through that share
    /// (`/print/shares/{id}/…`) match. Absent, requests through a printer match, and so do those
    /// through a share of a printer the rule matches.
    #[serde(default)]
    pub share: Option<String>,
    /// The job it applies to; every job when absent.
    #[serde(default)]
    pub job: Option<String>,
    /// The request it scripts: the cancel (`POST`, also when absent) or the job read (`GET`).
    #[serde(default)]
    pub method: RuleMethod,
    /// The HTTP status to answer with. A 2xx answers success without changing any state; an
    /// error status answers a Graph-shaped JSON error. When absent, the call goes on to the
    /// printers and jobs as usual (after `delay`).
    #[serde(default, deserialize_with = "http_status")]
    pub status: Option<u16>,
    /// The Graph error code; a usual one for the status when absent. `""` sends an empty code,
    /// as Graph's real answers sometimes do.
    #[serde(default)]
    pub code: Option<String>,
    /// The codes of nested `innerError` objects, outermost first: `["a", "b"]` sends
    /// `"innerError": {"code": "a", …, "innerError": {"code": "b"}}` (after Graph's own `"429"`
    /// on a 429).
    #[serde(default)]
    pub inner_codes: Vec<String>,
    /// The error's `details`: `[{"code", "message", "target"?}]`.
    #[serde(default)]
    pub details: Vec<ErrorDetailSpec>,
    /// A claims challenge: the claims JSON that Conditional Access requires, sent base64-encoded
    /// in `WWW-Authenticate: Bearer …, error="insufficient_claims", claims="…"` (Graph sends it
    /// on 403 as well as on 401).
    #[serde(default)]
    pub claims: Option<String>,
    /// The Graph error message; a usual one for the status when absent.
    #[serde(default)]
    pub message: Option<String>,
    /// `Retry-After`: a number of seconds (fractions allowed, such as 2.128) or a string sent as
    /// it is (such as an HTTP-date).
    #[serde(default, deserialize_with = "retry_after")]
    pub retry_after: Option<String>,
    /// How long to wait before answering: a number of seconds or a string such as `"3s"`.
    #[serde(default, deserialize_with = "delay")]
    pub delay: Option<Duration>,
    /// Applies to the first `times` matching calls only; to every matching call when absent.
    #[serde(default)]
    pub times: Option<u64>,
}

/// One entry of an error's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetailSpec {
    /// The detail's code.
    pub code: String,
    /// The detail's message.
    pub message: String,
    /// What it is about, such as a property name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The request a rule scripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum RuleMethod {
    /// The cancel, `POST …/jobs/{printJobId}/cancel`: the default, so that rules written before
    /// the simulator answered reads keep scripting only the cancel.
    #[default]
    #[serde(rename = "POST")]
    Post,
    /// The job read, `GET …/jobs/{printJobId}`.
    #[serde(rename = "GET")]
    Get,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read the scenario file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid scenario; the message names the line and column.
    #[error("invalid scenario {path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where. Part of the message rather than its source, so that a log's
        /// error chain prints it once.
        problem: serde_json::Error,
    },
}

// === impl Scenario ===

impl Scenario {
    /// The built-in scenario.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_SCENARIO, "<built-in>").expect("the built-in scenario is valid")
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses a scenario; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let invalid = |problem| ScenarioError::Invalid {
            path: origin.to_owned(),
            problem,
        };
        let scenario: Self = serde_json::from_str(text).map_err(invalid)?;
        if let Some(share) = scenario
            .shares
            .iter()
            .find(|share| !scenario.printers.iter().any(|p| p.id == share.printer))
        {
            return Err(invalid(serde_json::Error::custom(format!(
                "share {:?} names printer {:?}, which is not listed",
                share.id, share.printer
            ))));
        }
        Ok(scenario)
    }
}

// === impl JobState ===

impl JobState {
    fn processing() -> Self {
        Self::Processing
    }

    /// Whether a job in this state can still be canceled. Graph publishes no rule; the
    /// simulator refuses the finished states and the ones it cannot tell.
    pub fn is_cancelable(self) -> bool {
        !matches!(
            self,
            Self::Completed
                | Self::Canceled
                | Self::Aborted
                | Self::Unknown
                | Self::UnknownFutureValue
        )
    }

    /// Graph's human-readable description of the state (`status.description`).
    pub fn description(self) -> &'static str {
        match self {
            Self::Unknown => "The print job's state is unknown.",
            Self::UnknownFutureValue => "The print job is in a state this client does not know.",
            Self::Pending => "The print job is waiting to be processed.",
            Self::Processing => "The print job is being processed.",
            Self::Paused => "The print job has been paused.",
            Self::Stopped => "The print job has been stopped.",
            Self::Completed => "The print job has completed.",
            Self::Canceled => "The print job has been canceled.",
            Self::Aborted => "The print job has been aborted.",
        }
    }

    /// The state's name, as Graph spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::UnknownFutureValue => "unknownFutureValue",
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
        }
    }
}

fn unique_printers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PrinterSpec>, D::Error> {
    deserializer.deserialize_seq(UniqueIds::new("printer"))
}

fn unique_shares<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ShareSpec>, D::Error> {
    deserializer.deserialize_seq(UniqueIds::new("share"))
}

fn unique_jobs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<JobSpec>, D::Error> {
    deserializer.deserialize_seq(UniqueIds::new("job"))
}

/// Items with an ID that must be unique in their list.
trait Identified {
    fn id(&self) -> &str;
}

impl Identified for PrinterSpec {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for ShareSpec {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for JobSpec {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Reads a list item by item, refusing empty and repeated IDs. The error names the ID; its
/// line is where the list ends, since serde_json places errors after what it has read.
struct UniqueIds<T> {
    what: &'static str,
    items: PhantomData<T>,
}

impl<T> UniqueIds<T> {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            items: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de> + Identified> Visitor<'de> for UniqueIds<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a list of {}s", self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items: Vec<T> = Vec::new();
        let mut seen = HashSet::new();
        while let Some(item) = seq.next_element::<T>()? {
            if item.id().is_empty() {
                return Err(A::Error::custom(format!(
                    "a {} ID must not be empty",
                    self.what
                )));
            }
            if !seen.insert(item.id().to_owned()) {
                return Err(A::Error::custom(format!(
                    "{} ID {:?} is listed twice",
                    self.what,
                    item.id()
                )));
            }
            items.push(item);
        }
        Ok(items)
    }
}

pub(super) fn http_status<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    let status = u16::deserialize(deserializer)?;
    if !(200..=599).contains(&status) {
        return Err(D::Error::custom(format!(
            "status {status} is not an HTTP status from 200 to 599"
        )));
    }
    Ok(Some(status))
}

fn client_error_status<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    let status = u16::deserialize(deserializer)?;
    if !(400..=499).contains(&status) || [401, 403, 404, 429].contains(&status) {
        return Err(D::Error::custom(format!(
            "notCancelableStatus {status} is not a 4xx other than 401, 403, 404 and 429"
        )));
    }
    Ok(Some(status))
}

/// A number of seconds, or a string: the forms a scenario writes durations and `Retry-After` in.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecondsOrText {
    Seconds(f64),
    Text(String),
}

pub(super) fn retry_after<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let text = match SecondsOrText::deserialize(deserializer)? {
        SecondsOrText::Seconds(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            seconds.to_string()
        }
        SecondsOrText::Seconds(seconds) => {
            return Err(D::Error::custom(format!(
                "retryAfter {seconds} is not a number of seconds"
            )));
        }
        SecondsOrText::Text(text) => text,
    };
    if text.is_empty() || !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(D::Error::custom(
            "retryAfter must be seconds or printable ASCII text",
        ));
    }
    Ok(Some(text))
}

pub(super) fn delay<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    match SecondsOrText::deserialize(deserializer)? {
        SecondsOrText::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("delay {seconds} is not a number of seconds"))),
        SecondsOrText::Text(text) => humantime::parse_duration(&text)
            .map(Some)
            .map_err(|error| D::Error::custom(format!("delay {text:?}: {error}"))),
    }
}

fn window<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    delay(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that each scenario text of `cases` is refused with an error that names the file, the
    /// line and the problem.
    pub(crate) fn check_refused(cases: &[(&str, &str, &str)]) {
        for (text, line, problem) in cases {
            let error = Scenario::parse(text, "test.json").unwrap_err().to_string();
            assert!(
                error.contains(line) && error.contains(problem) && error.contains("test.json"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_builtin_scenario_parses() {
        let scenario = Scenario::builtin();
        assert!(scenario.printers.iter().any(|p| p.id == "printer-1"));
        assert_eq!(scenario.rules[0].retry_after.as_deref(), Some("2"));
        assert_eq!(scenario.rules[1].retry_after.as_deref(), Some("0.2"));
        assert_eq!(scenario.rules[3].delay, Some(Duration::from_secs(3)));
        assert!(scenario.rules.iter().all(|r| r.method == RuleMethod::Post));
    }

    #[test]
    fn a_bad_scenario_is_an_error_naming_the_line() {
        let cases = [
            (
                "{\n  \"printers\": [\n    {\"id\": \"p\", \"jobs\": [{\"id\": \"1\", \"state\": \"lost\"}]}\n  ]\n}",
                "line 3",
                "unknown variant `lost`",
            ),
            (
                "{\n  \"rules\": [\n    {\"status\": 700}\n  ]\n}",
                "line 3",
                "not an HTTP status",
            ),
            (
                "{\n  \"rules\": [\n    {\"delay\": \"soon\"}\n  ]\n}",
                "line 3",
                "delay \"soon\"",
            ),
            (
                "{\n  \"printers\": [\n    {\"id\": \"p\"},\n    {\"id\": \"p\"}\n  ]\n}",
                "line 5",
                "printer ID \"p\" is listed twice",
            ),
            (
                "{\n  \"printer\": []\n}",
                "line 2",
                "unknown field `printer`",
            ),
            (
                "{\n  \"rules\": [\n    {\"retryAfter\": -1}\n  ]\n}",
                "line 3",
                "retryAfter -1",
            ),
            (
                "{\n  \"rules\": [\n    {\"method\": \"DELETE\"}\n  ]\n}",
                "line 3",
                "unknown variant `DELETE`",
            ),
            ("{\n  \"printers\": [\n", "line 3", "EOF"),
            (
                "{\n  \"shares\": [{\"id\": \"s\", \"printer\": \"nope\"}]\n}",
                "",
                "share \"s\" names printer \"nope\"",
            ),
            (
                "{\n  \"notCancelableStatus\": 404\n}",
                "line 3",
                "notCancelableStatus 404",
            ),
        ];
        check_refused(&cases);
    }

    #[test]
    fn all_nine_processing_states_are_scriptable() {
        let names = [
            "unknown",
            "pending",
            "processing",
            "paused",
            "stopped",
            "completed",
            "canceled",
            "aborted",
            "unknownFutureValue",
        ];
        let jobs: Vec<_> = names
            .iter()
            .map(|state| serde_json::json!({"id": state, "state": state}))
            .collect();
        let text = serde_json::json!({"printers": [{"id": "p", "jobs": jobs}]}).to_string();
        let scenario = Scenario::parse(&text, "test").unwrap();
        let read: Vec<_> = scenario.printers[0]
            .jobs
            .iter()
            .map(|job| job.state.name())
            .collect();
        assert_eq!(read, names);
        let cancelable: Vec<_> = scenario.printers[0]
            .jobs
            .iter()
            .filter(|job| job.state.is_cancelable())
            .map(|job| job.state.name())
            .collect();
        assert_eq!(cancelable, ["pending", "processing", "paused", "stopped"]);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = Scenario::load(Path::new("/nonexistent/scenario.json")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/scenario.json"),
            "{error}"
        );
    }
}
