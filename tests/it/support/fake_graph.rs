//! A fake Graph: a real HTTP server on loopback that records every request exactly as it
//! arrived (raw request target included) and answers with a reply the test chooses, or with
//! replies queued for each method in turn.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::Request, response::IntoResponse};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::{Notify, watch};

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The HTTP method.
    pub method: String,
    /// The request target exactly as sent: path and query, never normalised.
    pub target: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The HTTP version: `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// Headers to add.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long the fake waits before it answers.
    pub delay: Duration,
    /// Holds the answer until the test releases it.
    pub hold: Option<Hold>,
}

/// Holds a reply until the test releases it, and tells the test when the client gave up on the
/// request first: a test that needs a request to still be in flight waits on events, not on a
/// delay that a busy machine might outlast.
#[derive(Debug, Clone)]
pub struct Hold {
    released: Arc<watch::Sender<bool>>,
    abandoned: Arc<watch::Sender<bool>>,
}

/// A running fake Graph. It stops when dropped.
pub struct FakeGraph {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    reply: Mutex<Reply>,
    /// Replies for the next requests of a method, used before `reply`.
    queued: Mutex<VecDeque<(String, Reply)>>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
}

// === impl Reply ===

impl Reply {
    /// A bare status with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            hold: None,
        }
    }

    /// Graph's answer to a successful cancel: 204 with a `request-id`.
    pub fn no_content() -> Self {
        Self::status(204).header("request-id", "graph-request-id-204")
    }

    /// A Graph-shaped JSON error with a `request-id` header and `innerError`.
    pub fn graph_error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "code": format!("{code}Inner"),
                    "request-id": format!("graph-request-id-{status}"),
                    "date": "2026-11-29T10:00:00",
                    "client-request-id": "ignored",
                }
            }
        });
        Self::status(status)
            .header("content-type", "application/json")
            .header("request-id", &format!("graph-request-id-{status}"))
            .body(body.to_string().into_bytes())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Makes the fake wait before answering.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Makes the fake hold the answer until `hold` is released.
    pub fn held(mut self, hold: &Hold) -> Self {
        self.hold = Some(hold.clone());
        self
    }
}

// === impl Hold ===

impl Default for Hold {
    fn default() -> Self {
        Self {
            released: Arc::new(watch::channel(false).0),
            abandoned: Arc::new(watch::channel(false).0),
        }
    }
}

impl Hold {
    /// A hold that is not released yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the held reply go.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Waits until the client of a held request went away before the hold was released: the
    /// server dropped the request's handler.
    pub async fn abandoned(&self) {
        let _ = self
            .abandoned
            .subscribe()
            .wait_for(|abandoned| *abandoned)
            .await;
    }

    /// Waits for the release; marks the hold abandoned if dropped before it.
    async fn wait(&self) {
        /// Marks the hold abandoned when dropped while still armed.
        struct Abandoned<'a>(&'a watch::Sender<bool>, bool);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.send_replace(true);
                }
            }
        }
        let mut armed = Abandoned(&self.abandoned, true);
        let _ = self
            .released
            .subscribe()
            .wait_for(|released| *released)
            .await;
        armed.1 = false;
    }
}

// === impl FakeGraph ===

impl FakeGraph {
    /// A fake that accepts every cancel with 204.
    pub async fn start() -> Self {
        Self::replying(Reply::no_content()).await
    }

    /// A fake that answers every request with `reply`.
    pub async fn replying(reply: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, app) = app(reply);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    /// The Graph base URL to give the gateway.
    pub fn url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    /// A fake that accepts every cancel with 204, over TLS with `cert` and `key` (PEM) and
    /// ALPN `h2` and `http/1.1`. Its URL is [`FakeGraph::tls_url`].
    pub async fn start_tls(cert: &str, key: &str) -> Self {
        let acceptor = super::pki::tls_acceptor(cert, key, &[b"h2", b"http/1.1"]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, app) = app(Reply::no_content());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The Graph base URL of a TLS fake: `https://127.0.0.1:<port>/v1.0` (an address, so that no
    /// resolver is asked; the certificate names it).
    pub fn tls_url(&self) -> String {
        format!("https://{}/v1.0", self.addr)
    }

    /// Changes the reply to later requests.
    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }

    /// Queues `reply` for a later request with `method` (such as `POST` or `GET`): each request
    /// takes the first reply queued for its method, and one with none queued gets the fake's reply.
    pub fn queue(&self, method: &str, reply: Reply) {
        self.state
            .queued
            .lock()
            .unwrap()
            .push_back((method.to_owned(), reply));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests have arrived.
    pub async fn wait_for_requests(&self, count: usize) {
        loop {
            let arrived = self.state.arrived.notified();
            if self.requests().len() >= count {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fake's state and the router that answers every request from it.
fn app(reply: Reply) -> (Arc<Shared>, axum::Router) {
    let state = Arc::new(Shared {
        reply: Mutex::new(reply),
        queued: Mutex::new(VecDeque::new()),
        requests: Mutex::new(Vec::new()),
        arrived: Notify::new(),
    });
    let router = axum::Router::new()
        .fallback(answer)
        .with_state(state.clone());
    (state, router)
}

async fn answer(
    State(state): State<Arc<Shared>>,
    request: Request<axum::body::Body>,
) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        target,
        headers: parts.headers,
        body,
        version: format!("{:?}", parts.version),
    });
    state.arrived.notify_waiters();

    let reply = {
        let mut queued = state.queued.lock().unwrap();
        match queued
            .iter()
            .position(|(method, _)| method == parts.method.as_str())
        {
            Some(index) => queued.remove(index).unwrap().1,
            None => state.reply.lock().unwrap().clone(),
        }
    };
    if let Some(hold) = &reply.hold {
        hold.wait().await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await; // the fake's scripted delay
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (
        StatusCode::from_u16(reply.status).unwrap(),
        headers,
        reply.body,
    )
}
