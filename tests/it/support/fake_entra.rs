//! A fake Entra ID token endpoint: a real HTTP server on loopback that records every form it
//! receives and answers with tokens it issues (`graph-token-1`, `graph-token-2`, …) or with the
//! answers a test scripts. It can hold its answers until the test releases them.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{body::Bytes, extract::State, http::Request, response::IntoResponse};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use printjob_gateway::entra::{CredentialSource, TokenExchange};
use tokio::sync::{Notify, watch};

use super::{FakeGraph, TestGateway};

/// The tenant the tests configure: a domain name, as the gateway requires.
pub const TENANT: &str = "tenant-1.example";
/// The client ID the tests configure.
pub const CLIENT_ID: &str = "00000000-0000-0000-0000-00000000c11e";

/// A caller's token with a JWT's shape (the exchange refuses any other), with `name` as its
/// payload.
pub fn caller_jwt(name: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(name)
    )
}

/// `Bearer ` and [`caller_jwt`] of `name`: the `authorization` metadata of a caller.
pub fn bearer_jwt(name: &str) -> String {
    format!("Bearer {}", caller_jwt(name))
}

/// A token request as the fake received it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The request target, exactly as sent.
    pub target: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The form fields, decoded, in the order sent.
    pub form: Vec<(String, String)>,
    /// The token the fake issued for it, when it issued one.
    pub issued: Option<String>,
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum EntraReply {
    /// A token answer with this `expires_in` (a number or a string).
    Token(serde_json::Value),
    /// A status, headers and a body.
    Answer {
        /// The status.
        status: u16,
        /// Headers to add.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
}

/// A running fake. It stops when dropped.
pub struct FakeEntra {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    default: Mutex<EntraReply>,
    script: Mutex<VecDeque<EntraReply>>,
    requests: Mutex<Vec<TokenRequest>>,
    arrived: Notify,
    open: watch::Sender<bool>,
    issued: AtomicUsize,
}

// === impl TokenRequest ===

impl TokenRequest {
    /// The value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The names of the form fields, sorted.
    pub fn field_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.form.iter().map(|(key, _)| key.as_str()).collect();
        names.sort_unstable();
        names
    }
}

// === impl EntraReply ===

impl EntraReply {
    /// A token valid for `expires_in` seconds, as a JSON number.
    pub fn token(expires_in: u64) -> Self {
        Self::Token(expires_in.into())
    }

    /// An OAuth 2.0 error as Entra sends it: `error`, a description, `error_codes`, the IDs.
    pub fn error(status: u16, error: &str, code: u32) -> Self {
        Self::error_body(
            status,
            serde_json::json!({
                "error": error,
                "error_description": format!("AADSTS{code}: A scripted error. Trace ID: 0d5b2a7c Correlation ID: 8f1c Timestamp: 2026-11-29 10:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-11-29 10:00:00Z",
                "trace_id": "0d5b2a7c-0000-4000-8000-000000000001",
                "correlation_id": "8f1c0000-0000-4000-8000-000000000002",
                "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
            }),
        )
    }

    /// An answer with this status and JSON body.
    pub fn error_body(status: u16, body: serde_json::Value) -> Self {
        Self::Answer {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
        }
    }

    /// Adds a header to an [`EntraReply::Answer`].
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Self::Answer { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}

// === impl FakeEntra ===

impl FakeEntra {
    /// A fake that issues tokens valid for an hour.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let state = Arc::new(Shared {
            default: Mutex::new(EntraReply::token(3599)),
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            open,
            issued: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    /// The authority to give the gateway, with the trailing slash Azure workload identity adds.
    pub fn authority(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The token endpoint's URL, as the gateway must call it.
    pub fn token_url(&self) -> String {
        format!("http://{}/{TENANT}/oauth2/v2.0/token", self.addr)
    }

    /// Answers every later request with `reply`, once the script is used up.
    pub fn set_reply(&self, reply: EntraReply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Answers the next requests with `replies`, in order, before the default.
    pub fn script(&self, replies: impl IntoIterator<Item = EntraReply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Holds every answer until [`FakeEntra::release`].
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Sends the answers held.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests have arrived.
    pub async fn wait_for_requests(&self, count: usize) {
        loop {
            let arrived = self.state.arrived.notified();
            if self.state.requests.lock().unwrap().len() >= count {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<Arc<Shared>>,
    request: Request<axum::body::Body>,
) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let reply = {
        let scripted = state.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| state.default.lock().unwrap().clone())
    };
    let (status, headers, body, issued) = match reply {
        EntraReply::Token(expires_in) => {
            let issued = format!(
                "graph-token-{}",
                state.issued.fetch_add(1, Ordering::Relaxed) + 1
            );
            let body = serde_json::json!({
                "token_type": "Bearer",
                "scope": "https://graph.microsoft.com/PrintJob.ReadWriteBasic https://graph.microsoft.com/.default",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": issued,
            });
            let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            (200, headers, body.to_string().into_bytes(), Some(issued))
        }
        EntraReply::Answer {
            status,
            headers,
            body,
        } => (status, headers, body, None),
    };
    state.requests.lock().unwrap().push(TokenRequest {
        target,
        headers: parts.headers,
        form,
        issued,
    });
    state.arrived.notify_waiters();

    let mut open = state.open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    let mut map = HeaderMap::new();
    for (name, value) in &headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (StatusCode::from_u16(status).unwrap(), map, body)
}

/// The client secret that [`secret_file`] writes.
pub const CLIENT_SECRET: &str = "s3cr3t~client.value-1";

/// A client secret file in `dir`, with a trailing newline, as editors and `kubectl create
/// secret` leave it.
pub fn secret_file(dir: &std::path::Path) -> CredentialSource {
    let path = dir.join("client-secret");
    std::fs::write(&path, format!("{CLIENT_SECRET}\n")).unwrap();
    CredentialSource::SecretFile(path)
}

/// What most token-exchange tests start from: a fake Graph, a fake Entra ID, a gateway exchanging
/// each caller's token there with a client secret, and the directory that holds the secret file
/// (keep it for as long as the gateway may read it).
pub async fn secret_obo() -> (FakeGraph, FakeEntra, TestGateway, tempfile::TempDir) {
    secret_obo_with(|_| {}).await
}

/// The same, with `tweak` applied to the rest of the settings.
pub async fn secret_obo_with(
    tweak: impl FnOnce(&mut printjob_gateway::Settings),
) -> (FakeGraph, FakeEntra, TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let gateway = obo_gateway_with(&graph, &entra, secret_file(dir.path()), tweak).await;
    (graph, entra, gateway, dir)
}

/// A gateway with the on-behalf-of exchange on, in front of `graph`, asking `entra`.
pub async fn obo_gateway(
    graph: &FakeGraph,
    entra: &FakeEntra,
    credential: CredentialSource,
) -> TestGateway {
    obo_gateway_with(graph, entra, credential, |_| {}).await
}

/// The same, with `tweak` applied to the rest of the settings.
pub async fn obo_gateway_with(
    graph: &FakeGraph,
    entra: &FakeEntra,
    credential: CredentialSource,
    tweak: impl FnOnce(&mut printjob_gateway::Settings),
) -> TestGateway {
    let authority = entra.authority();
    TestGateway::start_with(&graph.url(), move |settings| {
        let exchange = &mut settings.token_exchange;
        exchange.exchange = TokenExchange::Obo;
        exchange.authority = authority.parse().unwrap();
        exchange.tenant_id = Some(TENANT.to_owned());
        exchange.client_id = Some(CLIENT_ID.to_owned());
        exchange.credential = Some(credential);
        tweak(settings);
    })
    .await
}
