//! The `PrintJobService` implementation: turns a call into validated domain types at the boundary,
//! makes the Graph call within the call's deadline, and answers with the status and correlation
//! metadata the caller needs. When Graph refuses a cancel with a 4xx that may mean the job can no
//! longer be canceled, it reads the job, so that a job that is already canceled answers OK: a
//! retried cancel never turns into an error.

mod metrics;

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt;

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument, Span, field};

use crate::{
    auth::BearerToken,
    credentials::GraphCredentials,
    egress::retry::client_span,
    error::CancelError,
    graph::{GraphAcceptance, GraphClient, GraphError, GraphRejection, JobReadError},
    metrics::InFlight,
    proto::{CancelRequest, CancelResponse, PrintJobService},
    request::{CancelTarget, ClientRequestId, caller_timeout},
    retry::{Attempted, RetryPolicy},
    status::{code_name, correlation_metadata, is_server_error},
    telemetry::{self, ErrorChain},
};

pub use self::metrics::{CallMetrics, JobReadOutcome};

/// The method this service serves, as metrics and logs name it.
const METHOD: &str = "Cancel";

/// The most time the gateway keeps back from a caller's deadline, so that its answer, with the
/// details and correlation IDs, reaches the caller before the caller's own timer gives up.
const MAX_ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// How long a call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The deadline of a call whose caller sends no `grpc-timeout`.
    pub default: Duration,
    /// The longest deadline of any call, whatever the caller asks.
    pub max: Duration,
}

/// How calls are bounded: in time, in retries and in number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// How long a call may take.
    pub deadlines: Deadlines,
    /// How Graph calls are retried.
    pub retry: RetryPolicy,
    /// The most calls in flight at once; beyond it calls fail fast with RESOURCE_EXHAUSTED
    /// instead of queueing without bound.
    pub max_in_flight: usize,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            deadlines: Deadlines {
                default: Duration::from_secs(10),
                max: Duration::from_secs(30),
            },
            retry: RetryPolicy::default(),
            max_in_flight: 1000,
        }
    }
}

/// Serves `graph.print.v1.PrintJobService`. Cheap to clone: it holds handles only.
#[derive(Debug, Clone)]
pub struct PrintJobGateway {
    graph: GraphClient,
    /// Which token goes to Graph: the caller's, or one exchanged for it.
    credentials: GraphCredentials,
    metrics: CallMetrics,
    policy: CallPolicy,
    /// One permit per call in flight, shared by every connection.
    in_flight: Arc<Semaphore>,
    /// Fires when the shutdown grace period is over: calls still waiting for Graph then end
    /// with UNAVAILABLE instead of being cut off mid-stream.
    abort: CancellationToken,
}

/// A Cancel call admitted when its headers arrived: its deadline runs, and it holds its place
/// under [`CallPolicy::max_in_flight`], from then until it is answered. The admission layer in
/// front of the route (`server::admission`) makes it and hands it to the handler in the
/// request's extensions, so that a stream whose message is late is bounded too. (Clone, as
/// extensions must be; the place is given back when the last clone is dropped.)
#[derive(Debug, Clone)]
pub struct Admission {
    started: Instant,
    deadline: Instant,
    client_request_id: ClientRequestId,
    /// The caller's token, parsed once at the headers: the handler uses it as it is rather than
    /// parsing the `authorization` value (a few kilobytes for an Entra token) a second time.
    token: BearerToken,
    _place: Arc<(OwnedSemaphorePermit, InFlight)>,
}

/// A call whose headers have arrived, before it has a place.
struct Arrival {
    started: Instant,
    deadline: Instant,
    client_request_id: ClientRequestId,
    token: BearerToken,
}

// === impl Admission ===

impl Admission {
    /// When the call's headers arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the call's deadline runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The call's `client-request-id`.
    pub fn client_request_id(&self) -> &ClientRequestId {
        &self.client_request_id
    }
}

// === impl Deadlines ===

impl Deadlines {
    /// How long the gateway may wait for Graph, given the timeout the caller sent.
    ///
    /// A caller's own timeout is shortened by a tenth, at most [`MAX_ANSWER_MARGIN`], so that the
    /// gateway answers DEADLINE_EXCEEDED before the caller's timer fires; when the gateway's own
    /// limits are shorter, they apply as they are.
    pub fn for_call(&self, caller_timeout: Option<Duration>) -> Duration {
        match caller_timeout {
            Some(timeout) if timeout <= self.max => {
                timeout.saturating_sub((timeout / 10).min(MAX_ANSWER_MARGIN))
            }
            Some(_) => self.max,
            None => self.default,
        }
    }
}

// === impl PrintJobGateway ===

impl PrintJobGateway {
    /// A service that calls Graph through `graph` with the token `credentials` give, counts
    /// calls in `metrics`, and ends calls still in flight when `abort` fires.
    pub fn new(
        graph: GraphClient,
        credentials: GraphCredentials,
        metrics: CallMetrics,
        policy: CallPolicy,
        abort: CancellationToken,
    ) -> Self {
        Self {
            graph,
            credentials,
            metrics,
            policy,
            in_flight: Arc::new(Semaphore::new(policy.max_in_flight)),
            abort,
        }
    }

    /// Admits a call when its headers arrive: starts its deadline (the caller's `grpc-timeout`,
    /// else the default, capped) and takes its place under the limit of calls in flight. Beyond
    /// the limit the call is refused at once: the error is its answer, already logged and
    /// counted. So is a call without a plausible `authorization`, which takes no place.
    pub fn admit(&self, metadata: &MetadataMap) -> Result<Admission, Status> {
        let arrival = self.arrive(metadata)?;
        // Fail fast beyond the limit: a queue of calls would only grow while Graph is slow.
        match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.admitted(arrival, permit)),
            Err(_) => Err(self.overloaded(&arrival, metadata)),
        }
    }

    /// Like [`PrintJobGateway::admit`], but when no place is free, waits for one until the
    /// call's deadline. Places given back go to waiting calls first, in order.
    pub async fn admit_waiting(&self, metadata: &MetadataMap) -> Result<Admission, Status> {
        let arrival = self.arrive(metadata)?;
        let place =
            tokio::time::timeout_at(arrival.deadline, self.in_flight.clone().acquire_owned());
        match place.await {
            Ok(Ok(permit)) => Ok(self.admitted(arrival, permit)),
            _ => Err(self.overloaded(&arrival, metadata)),
        }
    }

    /// A call's headers have arrived: its deadline starts, and its credentials must be plausible
    /// before it may take a place (a call without them could only fail).
    fn arrive(&self, metadata: &MetadataMap) -> Result<Arrival, Status> {
        let started = Instant::now();
        let client_request_id = ClientRequestId::from_metadata(metadata);
        let token = match BearerToken::from_metadata(metadata) {
            Ok(token) => token,
            Err(error) => {
                return Err(self.answer_early(error.into(), started, &client_request_id, metadata));
            }
        };
        let timeout = self.policy.deadlines.for_call(caller_timeout(metadata));
        Ok(Arrival {
            started,
            deadline: started + timeout,
            client_request_id,
            token,
        })
    }

    fn admitted(&self, arrival: Arrival, permit: OwnedSemaphorePermit) -> Admission {
        Admission {
            started: arrival.started,
            deadline: arrival.deadline,
            client_request_id: arrival.client_request_id,
            token: arrival.token,
            _place: Arc::new((permit, self.metrics.in_flight())),
        }
    }

    fn overloaded(&self, arrival: &Arrival, metadata: &MetadataMap) -> Status {
        self.metrics.overloaded();
        let limit = self.policy.max_in_flight;
        let error = CancelError::Overloaded { limit };
        self.answer_early(error, arrival.started, &arrival.client_request_id, metadata)
    }

    /// Answers a call that ends before the handler has its message (refused at the limit, its
    /// message late or too large), with the access log line and metrics of any other call.
    pub fn answer_early(
        &self,
        error: CancelError,
        started: Instant,
        client_request_id: &ClientRequestId,
        metadata: &MetadataMap,
    ) -> Status {
        let span = call_span(client_request_id, metadata);
        let answer =
            span.in_scope(|| self.answer(Attempted::not_sent(error), started, client_request_id));
        // An error is always answered with its status.
        answer.err().unwrap_or_else(|| Status::unknown("no answer"))
    }

    /// Whether a place under the limit of calls in flight is free now (none is while calls wait
    /// for one).
    pub fn place_free(&self) -> bool {
        self.in_flight.available_permits() > 0
    }

    /// Whether no call is in flight (admitted and not yet answered).
    pub fn is_idle(&self) -> bool {
        self.in_flight.available_permits() == self.policy.max_in_flight
    }

    /// Turns the request into a call the gateway can make, or the error that ends it, with the
    /// token admission parsed at the headers. Runs before the first `await`, so that the raw
    /// request is not held while the call waits.
    fn validate(
        &self,
        request: Request<CancelRequest>,
        token: BearerToken,
        deadline: Instant,
    ) -> Result<ValidCall, CancelError> {
        let target = CancelTarget::try_from(request.into_inner());
        if let Ok(target) = &target {
            let span = Span::current();
            span.record(target.parent.field(), target.parent.id());
            span.record("print_job_id", target.print_job_id.as_str());
        }
        Ok(ValidCall {
            token,
            target: target?,
            deadline,
        })
    }

    /// Gets the token to send to Graph, then makes the Graph call with the retries the policy
    /// allows, all before the deadline, counting in `attempts_made` each attempt as it starts;
    /// when Graph refuses it because the job can no longer be canceled, reads the job to tell
    /// why. When Graph refuses the token (401), the credentials are told, so that an exchanged
    /// token is not used again.
    async fn call_graph(
        &self,
        call: &ValidCall,
        client_request_id: &ClientRequestId,
        attempts_made: &AtomicU32,
    ) -> Attempted<Result<Canceled, CancelError>> {
        if Instant::now() >= call.deadline {
            return Attempted::not_sent(CancelError::DeadlineExceeded {
                graph_called: false,
            });
        }
        let token = match self
            .credentials
            .graph_token(&call.token, call.deadline, client_request_id)
            .await
        {
            Ok(token) => token,
            Err(error) => return Attempted::not_sent(error),
        };
        let Attempted { outcome, attempts } = self
            .policy
            .retry
            .run(
                call.deadline,
                call.target.parent.cancel_route(),
                &self.metrics.attempts,
                self.graph.throttle_gate().call(&token),
                |attempt| {
                    attempts_made.store(attempt, Ordering::Relaxed);
                    self.graph.cancel(&call.target, &token, client_request_id)
                },
            )
            .await;
        if let Err(error) = &outcome
            && error.http_status() == Some(http::StatusCode::UNAUTHORIZED)
        {
            self.credentials.refused_by_graph(&call.token).await;
        }
        let outcome = match outcome {
            Ok(acceptance) => Ok(Canceled::Accepted(acceptance)),
            Err(CancelError::Graph {
                source: GraphError::Rejected(refusal),
                ..
            }) if refusal.calls_for_job_read() => {
                self.read_refused_job(call, &token, client_request_id, refusal)
                    .await
            }
            Err(error) => Err(error),
        };
        Attempted { outcome, attempts }
    }

    /// Reads the job after Graph refused its cancel with a 4xx that may mean "no longer
    /// cancelable" ([`GraphRejection::calls_for_job_read`]), within the call's deadline, with
    /// the cancel's token and `client-request-id`, under the same printer or share. A canceled job
    /// is a success: the cancel this call retried (or an earlier call) went through before its
    /// answer was lost. Another state (`unknown` and `unknownFutureValue` included) is
    /// FAILED_PRECONDITION with that state. A failed read leaves the refusal as it is.
    async fn read_refused_job(
        &self,
        call: &ValidCall,
        token: &BearerToken,
        client_request_id: &ClientRequestId,
        refusal: Box<GraphRejection>,
    ) -> Result<Canceled, CancelError> {
        let deadline_exceeded = CancelError::DeadlineExceeded { graph_called: true };
        if Instant::now() >= call.deadline {
            self.metrics.job_read(JobReadOutcome::Timeout);
            return Err(deadline_exceeded);
        }
        let span = client_span!("graph.read_job", call.target.parent.read_route(), "GET");
        let read = self
            .graph
            .job_status(&call.target, token, client_request_id);
        let read = tokio::time::timeout_at(call.deadline, read)
            .instrument(span.clone())
            .await;
        let status = match read {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                if let JobReadError::Graph(GraphError::Rejected(rejection)) = &error {
                    span.record("http.response.status_code", rejection.status.as_u16());
                }
                span.record("otel.status_code", "ERROR");
                span.in_scope(|| {
                    tracing::warn!(
                        error = %ErrorChain(&error),
                        "cannot read the job after Graph refused the cancel"
                    );
                });
                self.metrics.job_read(JobReadOutcome::Failed);
                return Err(GraphError::Rejected(refusal).into());
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
                span.in_scope(|| {
                    tracing::info!("the deadline ran out while reading the job");
                });
                self.metrics.job_read(JobReadOutcome::Timeout);
                return Err(deadline_exceeded);
            }
        };
        span.in_scope(|| {
            tracing::debug!(
                job_state = status.state.as_str(),
                description = status.description.as_deref(),
                graph_request_id = status.request_id.as_deref(),
                "read the job after Graph refused the cancel"
            );
        });
        Span::current().record("job_state", status.state.as_str());
        if status.is_canceled() {
            self.metrics.job_read(JobReadOutcome::AlreadyCanceled);
            Ok(Canceled::AlreadyCanceled(refusal))
        } else {
            self.metrics.job_read(JobReadOutcome::NotCancelable);
            Err(CancelError::NotCancelable {
                rejection: refusal,
                job_state: status.state,
            })
        }
    }
}

/// How a cancel succeeded.
enum Canceled {
    /// Graph accepted it.
    Accepted(GraphAcceptance),
    /// Graph refused it (a 4xx other than 401, 403, 404 and 429) and the job reads canceled.
    AlreadyCanceled(Box<GraphRejection>),
}

/// A call that passed validation: what the Graph call needs.
struct ValidCall {
    token: BearerToken,
    target: CancelTarget,
    deadline: Instant,
}

#[tonic::async_trait]
impl PrintJobService for PrintJobGateway {
    async fn cancel(
        &self,
        mut request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let admission = match request.extensions_mut().remove::<Admission>() {
            Some(admission) => admission,
            // Served without the admission layer in front (not through `serve`): admitted now.
            None => self.admit(request.metadata())?,
        };
        // Taken apart so that the token moves into the call: one copy of it per call in flight.
        let Admission {
            started,
            deadline,
            client_request_id,
            token,
            _place: place,
        } = admission;
        let span = call_span(&client_request_id, request.metadata());
        let call = span.in_scope(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.validate(request, token, deadline)))
                .unwrap_or(Err(CancelError::Internal))
        });
        async move {
            let client_request_id = &client_request_id;
            let attempts_made = AtomicU32::new(0);
            let attempted = match call {
                Err(error) => Attempted::not_sent(error),
                Ok(call) => tokio::select! {
                    biased;
                    () = self.abort.cancelled() => Attempted {
                        outcome: Err(CancelError::ShuttingDown),
                        // The requests really sent (or being sent) when the grace period ended.
                        attempts: attempts_made.load(Ordering::Relaxed),
                    },
                    attempted = unwinding(self.call_graph(&call, client_request_id, &attempts_made)) => {
                        attempted.unwrap_or_else(|Panicked| Attempted {
                            outcome: Err(CancelError::Internal),
                            attempts: attempts_made.load(Ordering::Relaxed),
                        })
                    }
                },
            };
            let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.answer(attempted, started, client_request_id)
            }))
            // Not even the answer could be built: the bare code, so that the stream still ends
            // with a status.
            .unwrap_or_else(|_| Err(Status::internal(CancelError::Internal.to_string())));
            // The call's place under the limit is given back once it is answered.
            drop(place);
            answer
        }
        .instrument(span)
        .await
    }
}

/// A panic caught on its way out of a call. What it said is already logged, by the panic hook
/// that `telemetry::init` installs, on the panicking thread and in the call's span.
#[derive(Debug)]
struct Panicked;

/// Runs `work` to its end, or catches the panic that ends it first, so that a panic anywhere in a
/// call (the token exchange, the Graph call, the job read) becomes the call's INTERNAL answer,
/// with its access log line and metrics, instead of a stream reset with neither. Whatever the
/// panicking code held is dropped on the way out; the state it shares with other calls (the
/// pool, the token cache) stays usable, as their locks recover from poisoning.
///
/// Not an `async fn`: that would keep `work`, unstarted, beside the future that runs it (an async
/// fn's arguments have storage of their own in its state), doubling the largest part of every
/// call in flight's memory.
fn unwinding<T>(work: impl Future<Output = T>) -> impl Future<Output = Result<T, Panicked>> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .map(|caught| caught.map_err(|_| Panicked))
}

/// The server span of a call, carrying on the caller's trace.
fn call_span(client_request_id: &ClientRequestId, metadata: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        "cancel",
        otel.kind = "server",
        otel.name = "graph.print.v1.PrintJobService/Cancel",
        otel.status_code = field::Empty,
        rpc.system = "grpc",
        rpc.grpc.status_code = field::Empty,
        method = METHOD,
        printer_id = field::Empty,
        share_id = field::Empty,
        print_job_id = field::Empty,
        client_request_id = client_request_id.as_str(),
        graph_request_id = field::Empty,
        http_status = field::Empty,
        job_state = field::Empty,
        grpc_code = field::Empty,
        attempts = field::Empty,
        latency_ms = field::Empty,
        held_ms = field::Empty,
        trace_id = field::Empty,
    );
    telemetry::continue_trace(&span, metadata);
    if let Some(trace_id) = telemetry::trace_id(&span, metadata) {
        span.record("trace_id", trace_id);
    }
    span
}

impl PrintJobGateway {
    /// Records the outcome on the call's span and in the metrics, writes the access log line,
    /// and builds the answer.
    fn answer(
        &self,
        attempted: Attempted<Result<Canceled, CancelError>>,
        started: Instant,
        client_request_id: &ClientRequestId,
    ) -> Result<Response<CancelResponse>, Status> {
        let Attempted { outcome, attempts } = attempted;
        let span = Span::current();
        span.record("attempts", attempts);
        let latency = started.elapsed();
        // Whole microseconds: precise enough, and short in the logs.
        span.record("latency_ms", latency.as_micros() as f64 / 1e3);
        let answer = match outcome {
            Ok(canceled) => {
                let (http_status, graph_request_id, already_canceled) = match &canceled {
                    Canceled::Accepted(acceptance) => {
                        (acceptance.status, acceptance.request_id.as_deref(), false)
                    }
                    Canceled::AlreadyCanceled(refusal) => {
                        (refusal.status, refusal.request_id.as_deref(), true)
                    }
                };
                span.record("http_status", http_status.as_u16());
                if let Some(id) = graph_request_id {
                    span.record("graph_request_id", id);
                }
                let mut response = Response::new(CancelResponse { already_canceled });
                *response.metadata_mut() =
                    correlation_metadata(client_request_id, graph_request_id);
                Ok(response)
            }
            Err(error) => {
                if let Some(http_status) = error.http_status() {
                    span.record("http_status", http_status.as_u16());
                }
                if let Some(id) = error.graph_request_id() {
                    span.record("graph_request_id", id);
                }
                let max_retry_delay = self.policy.retry.retry_after_max;
                Err((error.to_status(client_request_id, max_retry_delay), error))
            }
        };
        let code = answer
            .as_ref()
            .map_or_else(|(status, _)| status.code(), |_| Code::Ok);
        let code_name = code_name(code);
        span.record("grpc_code", code_name);
        span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.call_answered(code, latency);
        match answer {
            Ok(response) if response.get_ref().already_canceled => {
                tracing::info!("job already canceled");
                Ok(response)
            }
            Ok(response) => {
                tracing::info!("cancel accepted by Graph");
                Ok(response)
            }
            Err((status, error)) => {
                tracing::info!(error = %ErrorChain(&error), "cancel failed");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_calls_work_is_caught_and_the_work_after_it_goes_on() {
        let panicking = async {
            tokio::task::yield_now().await;
            let attempts: Vec<u32> = Vec::new();
            attempts[attempts.len()]
        };
        assert!(matches!(unwinding(panicking).await, Err(Panicked)));
        assert_eq!(unwinding(async { 7 }).await.unwrap(), 7);
        let status = CancelError::Internal.to_status(&ClientRequestId::random(), Duration::ZERO);
        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn catching_a_panic_adds_next_to_nothing_to_a_calls_future() {
        // A future that holds a kilobyte across an await, as a call's Graph call holds its state.
        let work = async {
            let state = [7u8; 1024];
            tokio::task::yield_now().await;
            std::hint::black_box(&state).len()
        };
        let work_size = std::mem::size_of_val(&work);
        assert!(work_size >= 1024, "{work_size}");
        let caught = unwinding(work);
        // Every call in flight holds this future: the catch may add a few words, not a copy.
        let caught_size = std::mem::size_of_val(&caught);
        assert!(
            caught_size <= work_size + 64,
            "{work_size} -> {caught_size} bytes"
        );
    }

    #[test]
    fn deadlines_leave_the_caller_time_to_hear_the_answer() {
        let deadlines = Deadlines {
            default: Duration::from_secs(10),
            max: Duration::from_secs(30),
        };
        let ms = Duration::from_millis;
        let cases = [
            (None, ms(10_000)),
            (Some(ms(300)), ms(270)),
            (Some(ms(10_000)), ms(9_950)),
            (Some(ms(30_000)), ms(29_950)),
            (Some(ms(60_000)), ms(30_000)),
            (Some(ms(5)), Duration::from_micros(4_500)),
            (Some(Duration::ZERO), Duration::ZERO),
        ];
        for (caller_timeout, expected) in cases {
            assert_eq!(
                deadlines.for_call(caller_timeout),
                expected,
                "{caller_timeout:?}"
            );
        }
    }
}
