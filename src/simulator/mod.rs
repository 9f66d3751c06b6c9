//! A simulated Microsoft Graph print-job cancel endpoint, so that anyone can try the gateway, and
//! test their own cancel flows, without Universal Print: printers and jobs with states, scripted
//! throttling, failures and delays, and a read-only view of what it received.
//!
//! It is a model of Graph written independently of [`crate::graph`], on purpose: a mistake in the
//! gateway's reading of Graph is not mirrored here, so tests against the simulator can catch it.
//!
//! Routes (each also under `/v1.0/print/shares/{printerShareId}`, for the jobs of a share's
//! printer):
//! - `POST /v1.0/print/printers/{printerId}/jobs/{printJobId}/cancel`: 204, or a Graph-shaped JSON
//!   error; 401 without a bearer token.
//! - `GET /v1.0/print/printers/{printerId}/jobs/{printJobId}`: the job's `printJob` JSON with
//!   `@odata.context`, only the properties `$select` names when it names some (400 for a
//!   property `printJob` lacks), or the same errors.
//!
//! Errors are shaped as Graph's are, including where its real answers leave its published schema:
//! `innerError.date` is ISO 8601 without an offset, a scenario may send an empty `code`, nested
//! `innerError` levels and `details`, and a 429 carries Graph's `innerError.code` `"429"`.
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
    routing::{MethodRouter, get, post},
};
use base64::Engine as _;
use serde::Serialize;
use tokio::net::TcpListener;

pub use self::args::SimulatorArgs;
use self::entra::{Entra, TokenExchange};
use self::model::{Answer, Failure, Model, Parent, usual_error};
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
    /// The printer ID, decoded, when the path is a cancel or a job read under a printer.
    pub printer_id: Option<String>,
    /// The printer share ID, decoded, when the path is a cancel or a job read under a share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// The job ID, decoded, when the path is a cancel or a job read.
    pub print_job_id: Option<String>,
    /// Whether an `Authorization: Bearer` token came with it. The token itself is never kept.
    pub bearer_token: bool,
    /// The `client-request-id` header.
    pub client_request_id: Option<String>,
    /// The `traceparent` header.
    pub traceparent: Option<String>,
    /// The `content-length` header, which tells whether a body came (Graph's cancel takes none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_length: Option<String>,
    /// The `content-type` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
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
    parent: Parent,
    print_job_id: String,
}

/// The properties of Graph's `printJob` (CSDL `microsoft.graph.printJob` and its `entity` base),
/// which `$select` may name.
const PRINT_JOB_PROPERTIES: &[&str] = &[
    "id",
    "acknowledgedDateTime",
    "configuration",
    "createdBy",
    "createdDateTime",
    "errorCode",
    "isFetchable",
    "redirectedFrom",
    "redirectedTo",
    "status",
    "documents",
    "tasks",
];

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
                job_route(RuleMethod::Post, Parent::Printer),
            )
            .route(
                "/v1.0/print/printers/{printer_id}/jobs/{print_job_id}",
                job_route(RuleMethod::Get, Parent::Printer),
            )
            .route(
                "/v1.0/print/shares/{share_id}/jobs/{print_job_id}/cancel",
                job_route(RuleMethod::Post, Parent::Share),
            )
            .route(
                "/v1.0/print/shares/{share_id}/jobs/{print_job_id}",
                job_route(RuleMethod::Get, Parent::Share),
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

/// The route of a job's cancel (`POST`) or read (`GET`), under a printer or a share: `parent`
/// makes the job's parent of the first ID in the path.
fn job_route(method: RuleMethod, parent: fn(String) -> Parent) -> MethodRouter<Simulator> {
    let handler = move |State(simulator): State<Simulator>,
                        Path((parent_id, print_job_id)): Path<(String, String)>,
                        uri: axum::http::Uri,
                        headers: HeaderMap| async move {
        let ids = JobIds {
            parent: parent(parent_id),
            print_job_id,
        };
        // A read has a query (`$select`); a cancel's is not looked at.
        let query = (method == RuleMethod::Get).then(|| query(&uri));
        answer_job_request(simulator, method, ids, &headers, query).await
    };
    match method {
        RuleMethod::Post => post(handler),
        RuleMethod::Get => get(handler),
    }
}

/// Answers a cancel or read of a job: 401 without a token, or with one the simulated Entra did not
/// issue when the scenario requires issued tokens; else the first matching rule, after
/// its delay; else a 400 for a `$select` of a property `printJob` lacks; else what the model
/// makes of the printers and jobs. `query` is the read's query (`None` for a cancel).
async fn answer_job_request(
    simulator: Simulator,
    method: RuleMethod,
    ids: JobIds,
    headers: &HeaderMap,
    query: Option<Vec<(String, String)>>,
) -> Response {
    let JobIds {
        parent,
        print_job_id,
    } = &ids;
    let tenant = bearer(headers).and_then(tenant_of);
    let throttled =
        || lock(&simulator.shared.model).throttled(tenant.as_deref(), std::time::Instant::now());
    let select = query.as_deref().and_then(selected);
    let answer = if let Some(refused) = entra_refusal(&simulator, headers) {
        refused
    } else if let Some(throttled) = throttled() {
        throttled
    } else if bearer_token(headers) {
        let plan = lock(&simulator.shared.model).plan(method, parent, print_job_id);
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
        }
        let unknown = select
            .iter()
            .flatten()
            .find(|p| !PRINT_JOB_PROPERTIES.contains(&p.as_str()));
        match (plan.answer, unknown) {
            (Some(answer), _) => answer,
            (None, Some(property)) => failure(
                400,
                "BadRequest",
                &format!(
                    "Could not find a property named '{property}' on type 'microsoft.graph.printJob'."
                ),
            ),
            (None, None) => {
                let mut model = lock(&simulator.shared.model);
                match method {
                    RuleMethod::Post => model.cancel(parent, print_job_id),
                    RuleMethod::Get => model.read(parent, print_job_id),
                }
            }
        }
    } else {
        failure(401, "InvalidAuthenticationToken", "Access token is empty.")
    };
    let read = ReadView {
        parent,
        select: select.as_deref(),
    };
    let mut response = respond(answer, headers, Some(&read));
    response.extensions_mut().insert(ids.clone());
    response
}

/// A request's query, decoded.
fn query(uri: &axum::http::Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The properties a read's `$select` names, when it names some.
fn selected(query: &[(String, String)]) -> Option<Vec<String>> {
    let (_, value) = query.iter().rev().find(|(key, _)| key == "$select")?;
    let properties: Vec<String> = value
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    (!properties.is_empty()).then_some(properties)
}

/// How a job read is shown: its parent (for `@odata.context`) and its `$select`.
struct ReadView<'a> {
    parent: &'a Parent,
    select: Option<&'a [String]>,
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
    respond(failure(405, code, message), &headers, None)
}

async fn no_such_resource(headers: HeaderMap) -> Response {
    respond(
        failure(
            404,
            "itemNotFound",
            "No resource was found that matches the request.",
        ),
        &headers,
        None,
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
        ..Failure::default()
    })
}

/// Graph's `WWW-Authenticate` challenge, as it sends it on 401.
const CHALLENGE: &str = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#;

/// Builds Graph's answer: the status, `request-id`, the echoed `client-request-id`, the
/// diagnostic header, and for errors Graph's JSON body. `read` shows a job read.
fn respond(answer: Answer, request: &HeaderMap, read: Option<&ReadView<'_>>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = request
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_owned);
    let mut response = match answer {
        Answer::Accepted(status) => status_code(status).into_response(),
        Answer::Job { id, state } => {
            let host = request
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("graph.microsoft.com");
            Json(job_json(&id, state, host, read)).into_response()
        }
        Answer::Failed(failure) => failure_response(failure, &request_id, &client_request_id),
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

/// A `printJob` as Graph shows it: `@odata.context`, then every property, or only those `$select`
/// names (and `@odata.context` says which, as `jobs(status)`).
fn job_json(
    id: &str,
    state: scenario::JobState,
    host: &str,
    read: Option<&ReadView<'_>>,
) -> serde_json::Value {
    let select = read.and_then(|read| read.select);
    let (collection, parent) = match read.map(|read| read.parent) {
        Some(Parent::Share(share)) => ("shares", share.as_str()),
        Some(Parent::Printer(printer)) => ("printers", printer.as_str()),
        None => ("printers", ""),
    };
    let selection = select.map_or_else(String::new, |s| format!("({})", s.join(",")));
    let context = format!(
        "http://{host}/v1.0/$metadata#print/{collection}('{}')/jobs{selection}/$entity",
        parent.replace('\'', "''")
    );
    let full = serde_json::json!({
        "id": id,
        "createdDateTime": format!("{}Z", iso_8601(std::time::SystemTime::now())),
        "acknowledgedDateTime": null,
        "errorCode": null,
        "isFetchable": state == scenario::JobState::Pending || state == scenario::JobState::Processing,
        "redirectedFrom": null,
        "redirectedTo": null,
        "status": {
            "state": state,
            "description": state.description(),
            "details": [],
            "isAcquiredByPrinter": false,
        },
    });
    let mut body = serde_json::Map::new();
    body.insert("@odata.context".to_owned(), context.into());
    if let serde_json::Value::Object(properties) = full {
        for (name, value) in properties {
            if select.is_none_or(|s| s.contains(&name)) {
                body.insert(name, value);
            }
        }
    }
    serde_json::Value::Object(body)
}

/// Graph's error answer. Its body follows Graph's real answers: `innerError.date` without an
/// offset, nested `innerError` levels, `details` (always present, as Graph sends it), and on a
/// 429 the `innerError` of Graph's throttling page (`code` and `status` `"429"`).
fn failure_response(failure: Failure, request_id: &str, client_request_id: &str) -> Response {
    let mut codes: Vec<String> = Vec::new();
    let mut inner = serde_json::json!({
        "date": iso_8601(std::time::SystemTime::now()),
        "request-id": request_id,
        "client-request-id": client_request_id,
    });
    if failure.status == 429 {
        codes.push("429".to_owned());
        inner["message"] = "Please retry after".into();
        inner["status"] = "429".into();
    }
    codes.extend(failure.inner_codes);
    // Innermost first: each level wraps the one below it.
    let mut nested: Option<serde_json::Value> = None;
    for code in codes.iter().skip(1).rev() {
        let mut level = serde_json::json!({ "code": code });
        if let Some(below) = nested.take() {
            level["innerError"] = below;
        }
        nested = Some(level);
    }
    if let Some(code) = codes.first() {
        inner["code"] = code.clone().into();
    }
    if let Some(below) = nested {
        inner["innerError"] = below;
    }
    let body = serde_json::json!({
        "error": {
            "code": failure.code,
            "message": failure.message,
            "details": failure.details,
            "innerError": inner,
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
    let challenge = match (&failure.claims, failure.status) {
        (Some(claims), _) => Some(format!(
            r#"{CHALLENGE}, error="insufficient_claims", claims="{}""#,
            base64::engine::general_purpose::STANDARD.encode(claims)
        )),
        (None, 401) => Some(CHALLENGE.to_owned()),
        (None, _) => None,
    };
    if let Some(challenge) = challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// A time as Graph writes `innerError.date`: ISO 8601 in UTC to the second, without an offset
/// (`2020-08-18T12:51:51`), which its published schema (`date-time` with an offset) does not
/// allow but its answers send.
fn iso_8601(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
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
        match &ids.parent {
            Parent::Printer(printer) => entry.printer_id = Some(printer.clone()),
            Parent::Share(share) => entry.share_id = Some(share.clone()),
        }
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
            share_id: None,
            print_job_id: None,
            bearer_token: bearer_token(request.headers()),
            client_request_id: header("client-request-id"),
            traceparent: header("traceparent"),
            content_length: header("content-length"),
            content_type: header("content-type"),
            status: 0,
            request_id: String::new(),
            bearer_token_sha256: bearer(request.headers()).map(entra::sha256_prefix),
            token_exchange: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso_8601_without_an_offset() {
        let at = |seconds| std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        assert_eq!(iso_8601(at(0)), "1970-01-01T00:00:00");
        assert_eq!(iso_8601(at(1_597_755_111)), "2020-08-18T12:51:51");
        assert_eq!(iso_8601(at(951_782_400)), "2000-02-29T00:00:00");
        assert_eq!(iso_8601(at(4_102_444_799)), "2099-12-31T23:59:59");
    }
}
