//! The only module that knows Microsoft Graph: the URL of the cancel action, the headers Graph
//! wants, and how to read its answers and errors (and, in `job.rs`, the read of a job's state). It returns [`GraphError`] for every outcome
//! that is not a 2xx, so the rest of the gateway never sees HTTP.

mod answer;
mod args;
mod job;
mod metrics;
mod throttle;
mod url;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Empty;

pub use self::answer::GraphRejection;
pub use self::args::GraphArgs;
pub use self::job::{JobReadError, PrintJobStatus};
pub use self::metrics::{GraphMetrics, ThrottleMetrics};
pub use self::throttle::{GateCall, Held, MAX_KEYS, Refusal, Throttle, ThrottleGate, ThrottleKey};
pub use self::url::GraphBaseUrl;
// The transport's names as Graph's settings and callers have always known them.
pub use crate::egress::{
    Body, ClientError as GraphClientError, ConnectError, Protocol as GraphProtocol, ProxyEnv,
    Resolver, SendError, UrlError as GraphUrlError, parse_retry_after,
};
use crate::{
    auth::BearerToken,
    egress::{self, ConnectSettings, Connector, Pool, PoolSettings},
    request::CancelTarget,
    request::ClientRequestId,
    telemetry,
};

/// The most bytes of an error body read from Graph; the rest is never read. Graph's JSON errors
/// are well under a kilobyte, so this only bounds what a broken proxy can make the gateway hold.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How long the gateway waits for an error body once Graph's status line has arrived. The status
/// is what the caller's answer depends on; the body only adds Graph's words to it.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);

/// The header that correlates a call across the caller, the gateway and Graph.
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("printjob-gateway/", env!("CARGO_PKG_VERSION")));
const ACCEPT_JSON: HeaderValue = HeaderValue::from_static("application/json");
const ZERO: HeaderValue = HeaderValue::from_static("0");

/// How the HTTP client that talks to Graph is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Graph's base URL.
    pub base_url: GraphBaseUrl,
    /// The most time allowed to open a connection, TLS included.
    pub connect_timeout: Duration,
    /// Which HTTP versions to speak.
    pub protocol: GraphProtocol,
    /// CA certificates (PEM) to trust besides the platform's.
    pub extra_ca: Option<PathBuf>,
    /// The most connections to Graph open at once (connections draining after a GOAWAY aside).
    pub max_connections: usize,
    /// The most calls on one HTTP/2 connection, when Graph allows more.
    pub streams_per_connection: usize,
    /// How long a connection without calls stays open.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged, busy or idle.
    pub keepalive_interval: Duration,
    /// How long a ping's answer may take before the connection is closed.
    pub keepalive_timeout: Duration,
    /// The proxy to reach Graph (and Entra ID) through, as the environment names it.
    pub proxy: ProxyEnv,
    /// How Graph's (and Entra ID's) host names are resolved: the system's resolver; no flag
    /// changes it, and only code (the tests) hands in another.
    pub resolver: Resolver,
    /// Whether calls of a tenant and app that Graph throttles wait at one gate (on), or each
    /// back off on its own (off).
    pub throttle_gate: bool,
}

impl Settings {
    /// How connections are opened, for Graph and, with the same TLS roots, extra CA, proxy and
    /// connect timeout, for Entra ID.
    pub fn connect_settings(&self) -> ConnectSettings {
        ConnectSettings {
            connect_timeout: self.connect_timeout,
            extra_ca: self.extra_ca.clone(),
            proxy: self.proxy.clone(),
            resolver: self.resolver.clone(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_url: GraphBaseUrl::graph(),
            connect_timeout: Duration::from_secs(5),
            protocol: GraphProtocol::Auto,
            extra_ca: None,
            max_connections: 16,
            streams_per_connection: 100,
            idle_timeout: Duration::from_secs(50),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            proxy: ProxyEnv::default(),
            resolver: Resolver::system(),
            throttle_gate: true,
        }
    }
}

/// A handle to Graph: one pool of connections for the whole process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphClient {
    pool: Pool,
    base_url: GraphBaseUrl,
    throttle: ThrottleGate,
}

/// What Graph said when it accepted a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphAcceptance {
    /// The 2xx status; Graph documents 204.
    pub status: StatusCode,
    /// Graph's `request-id` header.
    pub request_id: Option<String>,
}

/// Every outcome of a Graph call other than acceptance, as far as the gateway can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with a status other than 2xx.
    #[error("Graph answered HTTP {}", .0.status)]
    Rejected(Box<GraphRejection>),
    /// Graph did not get the request or did not process it: no connection could be made
    /// (refused, DNS, TLS handshake), or Graph refused the request on every connection tried.
    #[error("cannot connect to Graph")]
    Unreachable(#[source] SendError),
    /// The connection failed after the request may have been sent, or the answer was not HTTP.
    #[error("the connection to Graph failed")]
    Transport(#[source] SendError),
}

// === impl GraphClient ===

impl GraphClient {
    /// Builds the client: rustls with the platform's roots, connection pooling, HTTP/2 when Graph
    /// offers it, the proxy of `settings` honoured, and redirects never followed, so a token
    /// never goes anywhere but Graph's host.
    pub fn new(settings: &Settings, metrics: GraphMetrics) -> Result<Self, GraphClientError> {
        let connector = Connector::new(
            &settings.base_url.uri(),
            settings.protocol,
            &settings.connect_settings(),
        )?;
        let pool = Pool::new(
            connector,
            PoolSettings {
                max_connections: settings.max_connections,
                streams_per_connection: settings.streams_per_connection,
                idle_timeout: settings.idle_timeout,
                keepalive_interval: settings.keepalive_interval,
                keepalive_timeout: settings.keepalive_timeout,
            },
            metrics.pool,
        );
        Ok(Self {
            pool,
            base_url: settings.base_url.clone(),
            throttle: ThrottleGate::new(settings.throttle_gate, metrics.throttle),
        })
    }

    /// The gate that holds the calls of a tenant and app while Graph throttles them.
    pub fn throttle_gate(&self) -> &ThrottleGate {
        &self.throttle
    }

    /// Cancels one print job: `POST {base}/print/printers/{printerId}/jobs/{printJobId}/cancel`.
    ///
    /// The caller bounds the call's time by dropping the future; dropping it drops the request.
    pub async fn cancel(
        &self,
        target: &CancelTarget,
        token: &BearerToken,
        client_request_id: &ClientRequestId,
    ) -> Result<GraphAcceptance, GraphError> {
        let response = self
            .pool
            .send(|| self.request(target, token, client_request_id))
            .await
            .map_err(classify)?;
        let status = response.status();
        if status.is_success() {
            return Ok(GraphAcceptance {
                status,
                request_id: answer::request_id(response.headers()),
            });
        }
        // Boxed: the read of a refusal's body is state that only refused calls need, and every
        // call in flight holds this future.
        Err(Box::pin(rejection(response)).await)
    }
}

impl GraphClient {
    /// The cancel request, with the caller's token and the correlation and trace headers.
    fn request(
        &self,
        target: &CancelTarget,
        token: &BearerToken,
        client_request_id: &ClientRequestId,
    ) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.base_url.cancel_uri(target);
        let headers = request.headers_mut();
        headers.reserve(8);
        headers.extend(telemetry::trace_headers());
        headers.insert(header::AUTHORIZATION, token.header_value().clone());
        // Unique to the call: never-indexed, so that it does not churn Graph's HPACK table
        // (`status::correlation_metadata` says why).
        let mut id = client_request_id.header_value().clone();
        id.set_sensitive(true);
        headers.insert(CLIENT_REQUEST_ID, id);
        headers.insert(header::ACCEPT, ACCEPT_JSON);
        headers.insert(header::USER_AGENT, USER_AGENT);
        headers.insert(header::CONTENT_LENGTH, ZERO);
        request
    }
}

/// Tells a failure where Graph did not process the request from one where it may have.
fn classify(error: SendError) -> GraphError {
    match error {
        SendError::Unreachable(_) | SendError::Refused(_) => GraphError::Unreachable(error),
        SendError::Transport(_) => GraphError::Transport(error),
    }
}

/// Graph's refusal: its status, headers and (bounded) body.
async fn rejection(response: Response<Body>) -> GraphError {
    let (parts, body) = response.into_parts();
    let body = read_bounded(body).await;
    GraphError::Rejected(Box::new(GraphRejection::new(
        parts.status,
        &parts.headers,
        &body,
        SystemTime::now(),
    )))
}

/// Reads at most [`ERROR_BODY_LIMIT`] bytes of an error body, waiting at most [`ERROR_BODY_WAIT`].
async fn read_bounded(body: Body) -> Vec<u8> {
    egress::read_bounded(body, ERROR_BODY_LIMIT, ERROR_BODY_WAIT).await
}
