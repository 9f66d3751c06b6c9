//! A simulated Microsoft Graph print-job cancel endpoint, so that anyone can try the gateway, and
//! test their own cancel flows, without Universal Print: printers and jobs with states, scripted
//! throttling, failures and delays, and a read-only view of what it received.
//!
//! It is a model of Graph written independently of [`crate::graph`], on purpose: a mistake in the
//! gateway's reading of Graph is not mirrored here, so tests against the simulator can catch it.
//!
//! Routes:
//! - `POST /v1.0/print/printers/{printerId}/jobs/{printJobId}/cancel`: 204, or a Graph-shaped JSON
//!   error; 401 without a bearer token.
//! - `GET /v1.0/print/printers/{printerId}/jobs/{printJobId}`: the job's `printJob` JSON with its
//!   `status`, or the same errors.
//! - `POST /{tenant}/oauth2/v2.0/token`: the simulated Microsoft Entra token endpoint, for the
//!   gateway's on-behalf-of exchange ([`entra`]).
//! - `GET /__requests`: the requests received (the newest [`MAX_RECORDED`]), as JSON.

mod args;
pub mod entra;
mod model;
pub mod scenario;

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;
use tokio::net::TcpListener;

pub use self::args::SimulatorArgs;
use self::entra::{Entra, TokenExchange};
use self::model::{Answer, Failure, Model, usual_error};
use self::scenario::RuleMethod;
pub use self::scenario::{Scenario, ScenarioError};

/// How many requests `GET /__requests` keeps: the newest ones, so that long load tests run in
/// bounded memory.
pub const MAX_RECORDED: usize = 10_000;

/// The simulated Graph's diagnostic header, shaped like Graph's own.
const DIAGNOSTIC: &str = r#"{"ServerInfo":{"DataCenter":"Simulator","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"printjob-gateway-simulator"}}"#;

/// Where the simulated Graph serves, and what it simulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The address to serve on; the base URL is `http://<address>/v1.0`.
    pub listen: std::net::SocketAddr,
    /// A JSON scenario file; the built-in scenario without one.
    pub scenario: Option<std::path::PathBuf>,
}

/// A handle to one simulated Graph. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    model: Mutex<Model>,
    entra: Mutex<Entra>,
    received: Mutex<VecDeque<ReceivedRequest>>,
    /// Every request received since the start, including those no longer in `received`.
    received_count: AtomicU64,
}

/// One request the simulator received, as `GET /__requests` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedRequest {
    /// The HTTP method.
    pub method: String,
    /// The request target exactly as received: path and query, not normalised.
    pub path: String,
    /// The printer ID, decoded, when the path is a cancel or a job read.
    pub printer_id: Option<String>,
    /// The job ID, decoded, when the path is a cancel or a job read.
    pub print_job_id: Option<String>,
    /// Whether an `Authorization: Bearer` token came with it. The token itself is never kept.
    pub bearer_token: bool,
    /// The `client-request-id` header.
    pub client_request_id: Option<String>,
    /// The `traceparent` header.
    pub traceparent: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The `request-id` answered.
    pub request_id: String,
    /// The first 16 hex digits of the SHA-256 of the bearer token, when one came: enough for a
    /// test to recognise a token it knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_sha256: Option<String>,
    /// For a token exchange at the simulated Entra endpoint, what it asked for and got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
}

/// The IDs a cancel or job read named, passed from the handler to the recording layer.
#[derive(Debug, Clone)]
struct JobIds {
    printer_id: String,
    print_job_id: String,
}

// === impl Simulator ===

impl Simulator {
    /// A simulated Graph that starts in `scenario`'s state.
    pub fn new(mut scenario: Scenario) -> Self {
        let entra = Entra::new(std::mem::take(&mut scenario.entra));
        Self {
            shared: Arc::new(Shared {
                model: Mutex::new(Model::new(scenario)),
                entra: Mutex::new(entra),
                received: Mutex::new(VecDeque::new()),
                received_count: AtomicU64::new(0),
            }),
        }
    }

    /// The requests received so far (the newest [`MAX_RECORDED`]), oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.received).iter().cloned().collect()
    }

    /// How many requests it has received since it started (`/__requests` paths excluded).
    pub fn received_count(&self) -> u64 {
        self.shared.received_count.load(Ordering::Relaxed)
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/v1.0/print/printers/{printer_id}/jobs/{print_job_id}/cancel",
                post(cancel),
            )
            .route(
                "/v1.0/print/printers/{printer_id}/jobs/{print_job_id}",
                get(read_job),
            )
            .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(no_such_resource)
            .layer(middleware::from_fn_with_state(self.clone(), record))
            .route("/__requests", get(received))
            .with_state(self.clone())
    }
}

/// Serves `simulator` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    simulator: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, simulator.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Locks a mutex, recovering it if a panicking thread poisoned it: the data stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn cancel(
    State(simulator): State<Simulator>,
    Path((printer_id, print_job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let ids = JobIds {
        printer_id,
        print_job_id,
    };
    answer_job_request(simulator, RuleMethod::Post, ids, &headers, Model::cancel).await
}

async fn read_job(
    State(simulator): State<Simulator>,
    Path((printer_id, print_job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let ids = JobIds {
        printer_id,
        print_job_id,
    };
    answer_job_request(simulator, RuleMethod::Get, ids, &headers, Model::read).await
}

/// Answers a cancel or read of a job: 401 without a token, or with one the simulated Entra did not
/// issue when the scenario requires issued tokens; else the first matching rule, after
/// its delay; else what `decide` makes of the printers and jobs.
async fn answer_job_request(
    simulator: Simulator,
    method: RuleMethod,
    ids: JobIds,
    headers: &HeaderMap,
    decide: fn(&mut Model, &str, &str) -> Answer,
) -> Response {
    let JobIds {
        printer_id,
        print_job_id,
    } = &ids;
    let tenant = bearer(headers).and_then(tenant_of);
    let throttled =
        || lock(&simulator.shared.model).throttled(tenant.as_deref(), std::time::Instant::now());
    let answer = if let Some(refused) = entra_refusal(&simulator, headers) {
        refused
    } else if let Some(throttled) = throttled() {
        throttled
    } else if bearer_token(headers) {
        let plan = lock(&simulator.shared.model).plan(method, printer_id, print_job_id);
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
        }
        match plan.answer {
            Some(answer) => answer,
            None => decide(&mut lock(&simulator.shared.model), printer_id, print_job_id),
        }
    } else {
        Answer::Failed(Failure {
            status: 401,
            code: "InvalidAuthenticationToken".to_owned(),
            message: "Access token is empty.".to_owned(),
            retry_after: None,
        })
    };
    let mut response = respond(answer, headers);
    response.extensions_mut().insert(ids);
    response
}

/// Graph's 401 when the scenario requires tokens issued by the simulated Entra endpoint and the
/// request's bearer token is not one, or has expired.
fn entra_refusal(simulator: &Simulator, headers: &HeaderMap) -> Option<Answer> {
    let token = bearer(headers)?;
    let refusal = lock(&simulator.shared.entra)
        .graph_accepts(token, std::time::Instant::now())
        .err()?;
    Some(failure(
        401,
        "InvalidAuthenticationToken",
        entra::refusal_message(refusal),
    ))
}

async fn method_not_allowed(headers: HeaderMap) -> Response {
    let (code, message) = usual_error(405);
    respond(failure(405, code, message), &headers)
}

async fn no_such_resource(headers: HeaderMap) -> Response {
    respond(
        failure(
            404,
            "itemNotFound",
            "No resource was found that matches the request.",
        ),
        &headers,
    )
}

async fn received(State(simulator): State<Simulator>) -> Json<Vec<ReceivedRequest>> {
    Json(simulator.received())
}

fn failure(status: u16, code: &str, message: &str) -> Answer {
    Answer::Failed(Failure {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
        retry_after: None,
    })
}

/// Builds Graph's answer: the status, `request-id`, the echoed `client-request-id`, the
/// diagnostic header, and for errors Graph's JSON body.
fn respond(answer: Answer, request: &HeaderMap) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = request
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_owned);
    let mut response = match answer {
        Answer::Accepted(status) => status_code(status).into_response(),
        Answer::Job { id, state } => Json(serde_json::json!({
            "id": id,
            "status": {
                "state": state,
                "description": state.description(),
                "details": [],
                "isAcquiredByPrinter": false,
            }
        }))
        .into_response(),
        Answer::Failed(failure) => {
            let body = serde_json::json!({
                "error": {
                    "code": failure.code,
                    "message": failure.message,
                    "innerError": {
                        "date": httpdate::fmt_http_date(std::time::SystemTime::now()),
                        "request-id": request_id,
                        "client-request-id": client_request_id,
                    }
                }
            });
            let mut response = (status_code(failure.status), Json(body)).into_response();
            if let Some(retry_after) = failure
                .retry_after
                .and_then(|v| HeaderValue::try_from(v).ok())
            {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after);
            }
            if failure.status == 401 {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#,
                    ),
                );
            }
            response
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("request-id", request_id),
        ("client-request-id", client_request_id),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    headers.insert("x-ms-ags-diagnostic", HeaderValue::from_static(DIAGNOSTIC));
    response
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Whether the request carries `Authorization: Bearer <something>`.
fn bearer_token(headers: &HeaderMap) -> bool {
    bearer(headers).is_some()
}

/// The token of `Authorization: Bearer <token>`, when there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `tid` claim of a JWT bearer token, read without checking the signature, as Graph's
/// throttling groups calls by tenant.
fn tenant_of(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(claims.get("tid")?.as_str()?.to_owned())
}

/// Records every request and the answer it got.
async fn record(State(simulator): State<Simulator>, request: Request, next: Next) -> Response {
    let mut entry = ReceivedRequest::from(&request);
    let response = next.run(request).await;

    if let Some(ids) = response.extensions().get::<JobIds>() {
        entry.printer_id = Some(ids.printer_id.clone());
        entry.print_job_id = Some(ids.print_job_id.clone());
    }
    if let Some(exchange) = response.extensions().get::<TokenExchange>() {
        entry.token_exchange = Some(exchange.clone());
    }
    entry.status = response.status().as_u16();
    entry.request_id = response
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    simulator
        .shared
        .received_count
        .fetch_add(1, Ordering::Relaxed);
    let mut received = lock(&simulator.shared.received);
    if received.len() == MAX_RECORDED {
        received.pop_front();
    }
    received.push_back(entry);
    drop(received);
    response
}

// === impl ReceivedRequest ===

impl From<&Request> for ReceivedRequest {
    /// What a request shows before it is answered; the answer's fields are filled in later.
    fn from(request: &Request) -> Self {
        let header = |name: &str| {
            let value = request.headers().get(name)?.to_str().ok()?;
            Some(value.to_owned())
        };
        Self {
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(String::new, |pq| pq.to_string()),
            printer_id: None,
            print_job_id: None,
            bearer_token: bearer_token(request.headers()),
            client_request_id: header("client-request-id"),
            traceparent: header("traceparent"),
            status: 0,
            request_id: String::new(),
            bearer_token_sha256: bearer(request.headers()).map(entra::sha256_prefix),
            token_exchange: None,
        }
    }
}
