//! The `PrintJobService` implementation: turns a call into validated domain types at the boundary,
//! makes the Graph call within the call's deadline, and answers with the status and correlation
//! metadata the caller needs.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span, field};

use crate::{
    auth::BearerToken,
    error::CancelError,
    graph::{GraphAcceptance, GraphClient},
    metrics::{Metrics, code_name},
    proto::{CancelRequest, CancelResponse, PrintJobService},
    request::{CancelTarget, ClientRequestId, caller_timeout},
    retry::{Attempted, RetryPolicy},
    status::correlation_metadata,
    telemetry::{self, ErrorChain},
};

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
    metrics: Metrics,
    policy: CallPolicy,
    /// One permit per call in flight, shared by every connection.
    in_flight: Arc<Semaphore>,
    /// Fires when the shutdown grace period is over: calls still waiting for Graph then end
    /// with UNAVAILABLE instead of being cut off mid-stream.
    abort: CancellationToken,
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
    /// A service that calls Graph through `graph`, counts calls in `metrics`, and ends calls
    /// still in flight when `abort` fires.
    pub fn new(
        graph: GraphClient,
        metrics: Metrics,
        policy: CallPolicy,
        abort: CancellationToken,
    ) -> Self {
        Self {
            graph,
            metrics,
            policy,
            in_flight: Arc::new(Semaphore::new(policy.max_in_flight)),
            abort,
        }
    }

    /// Turns the request into a call the gateway can make, or the error that ends it. Runs
    /// before the first `await`, so that the raw request is not held while the call waits.
    fn validate(
        &self,
        request: Request<CancelRequest>,
        started: Instant,
    ) -> Result<ValidCall, CancelError> {
        let timeout = self
            .policy
            .deadlines
            .for_call(caller_timeout(request.metadata()));
        let token = BearerToken::from_metadata(request.metadata());
        let target = CancelTarget::try_from(request.into_inner());
        if let Ok(target) = &target {
            let span = Span::current();
            span.record("printer_id", target.printer_id.as_str());
            span.record("print_job_id", target.print_job_id.as_str());
        }
        Ok(ValidCall {
            token: token?,
            target: target?,
            deadline: started + timeout,
        })
    }

    /// Makes the Graph call, with the retries the policy allows, before the deadline.
    async fn call_graph(
        &self,
        call: &ValidCall,
        client_request_id: &ClientRequestId,
    ) -> Attempted<Result<GraphAcceptance, CancelError>> {
        if Instant::now() >= call.deadline {
            return Attempted::not_sent(CancelError::DeadlineExceeded {
                graph_called: false,
            });
        }
        self.policy
            .retry
            .run(call.deadline, &self.metrics, |_attempt| {
                self.graph
                    .cancel(&call.target, &call.token, client_request_id)
            })
            .await
    }
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
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let started = Instant::now();
        let client_request_id = ClientRequestId::from_metadata(request.metadata());
        let span = tracing::info_span!(
            "cancel",
            otel.kind = "server",
            otel.name = "graph.print.v1.PrintJobService/Cancel",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.grpc.status_code = field::Empty,
            method = METHOD,
            printer_id = field::Empty,
            print_job_id = field::Empty,
            client_request_id = client_request_id.as_str(),
            graph_request_id = field::Empty,
            http_status = field::Empty,
            grpc_code = field::Empty,
            attempts = field::Empty,
            latency_ms = field::Empty,
            trace_id = field::Empty,
        );
        telemetry::continue_trace(&span, request.metadata());
        if let Some(trace_id) = telemetry::trace_id(&span, request.metadata()) {
            span.record("trace_id", trace_id);
        }
        let call = span.in_scope(|| self.validate(request, started));
        async move {
            // Fail fast beyond the limit: a queue of calls would only grow while Graph is slow.
            let Ok(_permit) = self.in_flight.try_acquire() else {
                self.metrics.overloaded();
                let limit = self.policy.max_in_flight;
                let attempted = Attempted::not_sent(CancelError::Overloaded { limit });
                return self.answer(attempted, started, &client_request_id);
            };
            let _in_flight = self.metrics.in_flight();
            let attempted = match call {
                Err(error) => Attempted::not_sent(error),
                Ok(call) => tokio::select! {
                    biased;
                    () = self.abort.cancelled() => Attempted::not_sent(CancelError::ShuttingDown),
                    attempted = self.call_graph(&call, &client_request_id) => attempted,
                },
            };
            self.answer(attempted, started, &client_request_id)
        }
        .instrument(span)
        .await
    }
}

impl PrintJobGateway {
    /// Records the outcome on the call's span and in the metrics, writes the access log line,
    /// and builds the answer.
    fn answer(
        &self,
        attempted: Attempted<Result<GraphAcceptance, CancelError>>,
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
            Ok(acceptance) => {
                span.record("http_status", acceptance.status.as_u16());
                if let Some(id) = &acceptance.request_id {
                    span.record("graph_request_id", id.as_str());
                }
                let mut response = Response::new(CancelResponse {});
                *response.metadata_mut() =
                    correlation_metadata(client_request_id, acceptance.request_id.as_deref());
                Ok(response)
            }
            Err(error) => {
                if let Some(http_status) = error.http_status() {
                    span.record("http_status", http_status.as_u16());
                }
                if let Some(id) = error.graph_request_id() {
                    span.record("graph_request_id", id);
                }
                Err((error.to_status(client_request_id), error))
            }
        };
        let code = answer
            .as_ref()
            .map_or_else(|(status, _)| status.code(), |_| Code::Ok);
        span.record("grpc_code", code_name(code));
        span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.call_answered(METHOD, code, latency);
        match answer {
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

/// Whether a code means the server failed, which OpenTelemetry's gRPC conventions mark as an
/// error on server spans; the others are the caller's problem.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
