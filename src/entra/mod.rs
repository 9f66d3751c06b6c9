//! The only module that knows Microsoft Entra ID: the on-behalf-of exchange (OAuth 2.0 JWT
//! bearer grant) that turns a caller's token for this service's API into a token for Graph, the
//! gateway's client credential, the token endpoint's answers and errors, and the cache that
//! makes the exchange rare. The rest of the gateway sees [`OnBehalfOf::graph_token`] and
//! [`ExchangeFailure`].
//!
//! The request follows Microsoft's "OAuth 2.0 on-behalf-of flow" page: `POST
//! {authority}/{tenant}/oauth2/v2.0/token`, form-encoded, with `grant_type`, `client_id`,
//! `assertion` (the caller's token), `scope`, `requested_token_use=on_behalf_of` and the client
//! credential. Throttling (429) and failures of Entra (5xx, connections) are retried within the
//! call's deadline with the same policy as Graph calls; the request has no side effect, so any
//! failure may be retried.

mod answer;
mod assertion;
mod authority;
mod cache;
mod credential;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, header, uri::PathAndQuery};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{Instrument, field};

pub use self::{
    answer::{EntraRejection, IssuedToken, MalformedAnswer, RejectionKind, issued_token},
    assertion::AssertionError,
    authority::{EntraAuthority, PUBLIC_AUTHORITY},
    cache::{EXPIRY_SKEW, MAX_ENTRIES},
    credential::{
        ClientAssertion, ClientSecret, CredentialError, CredentialSource, JWT_BEARER_ASSERTION,
    },
};
use self::{
    cache::{CacheKey, CachedToken, Lookup, TokenCache},
    credential::ClientCredential,
};
use crate::{
    auth::BearerToken,
    backoff::{BACKOFF_MAX, RetryPolicy, backoff},
    graph::{
        self, ConnectError, Connected, Connector, GraphBaseUrl, GraphClientError, GraphProtocol,
        Negotiated,
    },
    metrics::Metrics,
};

/// The most bytes of a token endpoint answer read. A token answer is a few KiB; a larger answer
/// is refused, not cut.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// `grant_type` of the on-behalf-of exchange.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("printjob-gateway/", env!("CARGO_PKG_VERSION")));
const FORM: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");
const ACCEPT_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The longest a connection to the token endpoint is kept, whatever its peer does: one request
/// is sent on it, within a call's deadline.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Which token the gateway sends to Graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenExchange {
    /// The caller's own token, unchanged: callers send a Graph token.
    #[default]
    None,
    /// A Graph token from the on-behalf-of exchange of the caller's token: callers send a token
    /// for their own API, whose app registration the gateway uses.
    Obo,
}

/// The token exchange settings. With [`TokenExchange::Obo`], the tenant, the client ID and one
/// credential are required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Whether callers' tokens are exchanged.
    pub exchange: TokenExchange,
    /// Entra ID's authority.
    pub authority: EntraAuthority,
    /// The tenant (directory) ID or domain of the app registration.
    pub tenant_id: Option<String>,
    /// The application (client) ID of the app registration the callers' tokens are for.
    pub client_id: Option<String>,
    /// The app's client credential.
    pub credential: Option<CredentialSource>,
    /// The scope asked for; `None`: `https://<host of the Graph URL>/.default`.
    pub graph_scope: Option<String>,
}

/// Why the token exchange cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A required setting is missing.
    #[error("--token-exchange obo needs {0}")]
    Missing(&'static str),
    /// The tenant ID cannot be a path segment.
    #[error("the tenant ID must be a tenant GUID or domain name")]
    TenantId,
    /// The client credential cannot be loaded.
    #[error("cannot load the client credential")]
    Credential(#[from] CredentialError),
    /// The HTTP client for Entra ID cannot be built.
    #[error("cannot set up the connection to Entra ID")]
    Http(#[from] GraphClientError),
}

/// One failed request to the token endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    /// Entra ID answered with an error.
    #[error("{0}")]
    Rejected(Box<EntraRejection>),
    /// No connection to Entra ID could be made.
    #[error("cannot connect to Entra ID")]
    Unreachable(#[source] ConnectError),
    /// The connection failed before the whole answer arrived.
    #[error("the connection to Entra ID failed")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Entra ID answered 2xx without a usable token.
    #[error("Entra ID's answer is unusable")]
    MalformedAnswer(#[source] MalformedAnswer),
    /// The client credential could not be read or signed.
    #[error("cannot get the gateway's client credential")]
    Credential(#[source] CredentialError),
    /// The call's deadline ran out before the exchange ended.
    #[error("the call's deadline ran out before Entra ID answered")]
    DeadlineExceeded,
}

/// An exchange that failed: the last request's error, after the retries the policy allows.
#[derive(Debug, thiserror::Error)]
#[error("the on-behalf-of token exchange failed")]
pub struct ExchangeFailure {
    /// The last request's error.
    #[source]
    pub error: EntraError,
    /// The wait the gateway would have made before another request, when it stopped only because
    /// that wait would have ended past the deadline.
    pub retry_delay: Option<Duration>,
}

/// The on-behalf-of exchange: a handle to the token endpoint and the cache. Cheap to clone.
#[derive(Clone)]
pub struct OnBehalfOf {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    endpoint: Uri,
    /// The token endpoint's URL, the `aud` of signed assertions.
    endpoint_url: String,
    client_id: String,
    scope: String,
    credential: ClientCredential,
    cache: TokenCache,
    retry: RetryPolicy,
    metrics: Metrics,
}

// === impl OnBehalfOf ===

impl OnBehalfOf {
    /// Checks the settings, loads the client credential and builds the HTTP client (with the
    /// same TLS roots, extra CA, proxy and connect timeout as Graph's).
    pub async fn new(
        settings: &Settings,
        graph: &graph::Settings,
        retry: RetryPolicy,
        metrics: Metrics,
    ) -> Result<Self, SetupError> {
        let tenant_id = settings
            .tenant_id
            .as_deref()
            .filter(|tenant| !tenant.is_empty())
            .ok_or(SetupError::Missing(
                "a tenant ID (--tenant-id or AZURE_TENANT_ID)",
            ))?;
        if matches!(tenant_id, "." | "..") {
            return Err(SetupError::TenantId);
        }
        let client_id = settings
            .client_id
            .clone()
            .filter(|client| !client.is_empty())
            .ok_or(SetupError::Missing(
                "a client ID (--client-id or AZURE_CLIENT_ID)",
            ))?;
        let source = settings.credential.as_ref().ok_or(SetupError::Missing(
            "a client credential (--client-secret-file, --client-certificate-file or --federated-token-file)",
        ))?;
        let credential = ClientCredential::load(source, &client_id).await?;
        let endpoint_url = settings.authority.token_endpoint(tenant_id);
        let endpoint: Uri = endpoint_url.parse().map_err(|_| SetupError::TenantId)?;
        let connector = Connector::new(
            &endpoint,
            GraphProtocol::Auto,
            graph.connect_timeout,
            graph.extra_ca.as_ref(),
            &graph.proxy,
        )?;
        let scope = settings
            .graph_scope
            .clone()
            .unwrap_or_else(|| default_graph_scope(&graph.base_url));
        tracing::info!(
            token_endpoint = %endpoint_url,
            client_id = %client_id,
            credential = credential.kind(),
            scope = %scope,
            "callers' tokens are exchanged on behalf of their users"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                connector,
                endpoint,
                endpoint_url,
                client_id,
                scope,
                credential,
                cache: TokenCache::new(MAX_ENTRIES),
                retry,
                metrics,
            }),
        })
    }

    /// The Graph token for `caller`: from the cache, or from an exchange that ends by `deadline`.
    pub async fn graph_token(
        &self,
        caller: &BearerToken,
        deadline: Instant,
    ) -> Result<BearerToken, Arc<ExchangeFailure>> {
        let inner = &self.inner;
        let lookup = inner
            .cache
            .get_or_exchange(CacheKey::of(caller), self.exchange(caller, deadline));
        match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok((token, lookup))) => {
                inner.metrics.token_cache_lookup(lookup == Lookup::Hit);
                Ok(token)
            }
            Ok(Err(failure)) => {
                inner.metrics.token_cache_lookup(false);
                Err(failure)
            }
            Err(_) => Err(Arc::new(ExchangeFailure {
                error: EntraError::DeadlineExceeded,
                retry_delay: None,
            })),
        }
    }

    /// Drops the cached Graph token for `caller`, when Graph refused it.
    pub async fn forget(&self, caller: &BearerToken) {
        self.inner.cache.forget(CacheKey::of(caller)).await;
    }
}

impl OnBehalfOf {
    /// Exchanges `caller`'s token, retrying throttling and failures of Entra while the next
    /// wait ends before `deadline`.
    async fn exchange(
        &self,
        caller: &BearerToken,
        deadline: Instant,
    ) -> Result<CachedToken, ExchangeFailure> {
        let inner = &self.inner;
        let mut backoff = backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let span = tracing::info_span!(
                "entra.token",
                otel.kind = "client",
                otel.name = "POST /{tenant}/oauth2/v2.0/token",
                otel.status_code = field::Empty,
                http.request.method = "POST",
                http.response.status_code = field::Empty,
                attempt = attempts,
            );
            let started = Instant::now();
            let outcome = tokio::time::timeout_at(deadline, self.request(caller))
                .instrument(span.clone())
                .await
                .unwrap_or(Err(EntraError::DeadlineExceeded));
            inner
                .metrics
                .token_exchanged(outcome_label(&outcome), started.elapsed());
            let error = match outcome {
                Ok(issued) => {
                    span.record("http.response.status_code", 200);
                    let issued_at = std::time::Instant::now();
                    return Ok(CachedToken::new(issued.token, issued.expires_in, issued_at));
                }
                Err(error) => error,
            };
            span.record("otel.status_code", "ERROR");
            if let EntraError::Rejected(rejection) = &error {
                span.record("http.response.status_code", rejection.status.as_u16());
                log_rejection(rejection);
            }
            if !error.is_transient() || attempts >= inner.retry.max_attempts {
                return Err(ExchangeFailure {
                    error,
                    retry_delay: None,
                });
            }
            let wait = error
                .retry_after()
                .map(|wait| wait.min(inner.retry.retry_after_max))
                .unwrap_or_else(|| backoff.next().unwrap_or(BACKOFF_MAX));
            if Instant::now() + wait >= deadline {
                return Err(ExchangeFailure {
                    error,
                    retry_delay: Some(wait),
                });
            }
            tracing::info!(
                attempt = attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "retrying the token request"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request to the token endpoint.
    async fn request(&self, caller: &BearerToken) -> Result<IssuedToken, EntraError> {
        let inner = &self.inner;
        let credential = inner
            .credential
            .fields(&inner.endpoint_url)
            .await
            .map_err(EntraError::Credential)?;
        let form = {
            // The serializer is not `Send`; it must not live across an `await`.
            let mut form = url::form_urlencoded::Serializer::new(String::with_capacity(4096));
            form.append_pair("grant_type", JWT_BEARER_GRANT)
                .append_pair("client_id", &inner.client_id)
                .append_pair("assertion", caller.token())
                .append_pair("scope", &inner.scope)
                .append_pair("requested_token_use", "on_behalf_of");
            credential.append_to(&mut form);
            form.finish()
        };
        let mut request = Request::new(Full::new(Bytes::from(form)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = inner.endpoint.clone();
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, FORM);
        headers.insert(header::ACCEPT, ACCEPT_JSON);
        headers.insert(header::USER_AGENT, USER_AGENT);

        let response = send_once(&inner.connector, request).await?;
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, ANSWER_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(EntraError::MalformedAnswer(MalformedAnswer::TooLarge));
            }
            Err(error) => return Err(EntraError::Transport(error)),
        };
        if parts.status.is_success() {
            return answer::issued_token(&body).map_err(EntraError::MalformedAnswer);
        }
        Err(EntraError::Rejected(Box::new(EntraRejection::new(
            parts.status,
            &parts.headers,
            &body,
            SystemTime::now(),
        ))))
    }
}

impl fmt::Debug for OnBehalfOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnBehalfOf")
            .field("token_endpoint", &self.inner.endpoint_url)
            .field("client_id", &self.inner.client_id)
            .field("credential", &self.inner.credential)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

/// Sends one request on a connection of its own. Exchanges are rare (each caller's Graph token
/// is cached for most of its life), so they keep no pool; Graph's pool is made for its calls.
async fn send_once(
    connector: &Connector,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, EntraError> {
    let (connected, negotiated) = connector.connect().await.map_err(EntraError::Unreachable)?;
    match connected {
        Connected::Plain(tcp) => send_on(TokioIo::new(tcp), negotiated, request).await,
        Connected::Tls(tls) => send_on(TokioIo::new(tls), negotiated, request).await,
    }
}

async fn send_on<IO>(
    io: TokioIo<IO>,
    negotiated: Negotiated,
    mut request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, EntraError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let transport = |error: hyper::Error| EntraError::Transport(error.into());
    match negotiated {
        Negotiated::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(transport)?;
            tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, connection));
            // HTTP/1.1 wants the target in origin form and the host in `Host`.
            let uri = request.uri().clone();
            if let Some(authority) = uri.authority()
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                request.headers_mut().insert(header::HOST, host);
            }
            let path = uri
                .path_and_query()
                .cloned()
                .unwrap_or(PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
            sender.send_request(request).await.map_err(transport)
        }
        Negotiated::Http2 => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(transport)?;
            tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, connection));
            sender.send_request(request).await.map_err(transport)
        }
    }
}

// === impl EntraError ===

impl EntraError {
    /// Whether another request may succeed: throttling, Entra's failures, and connections.
    fn is_transient(&self) -> bool {
        match self {
            Self::Rejected(rejection) => rejection.kind().is_transient(),
            Self::Unreachable(_) | Self::Transport(_) => true,
            Self::MalformedAnswer(_) | Self::Credential(_) | Self::DeadlineExceeded => false,
        }
    }

    /// Entra's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected(rejection) => rejection.retry_after,
            _ => None,
        }
    }
}

/// The scope of Graph at `graph`'s host: `https://<host>/.default`, so that national clouds get
/// their own Graph.
pub fn default_graph_scope(graph: &GraphBaseUrl) -> String {
    format!("https://{}/.default", graph.host())
}

/// The metric label of a request's outcome: a small fixed set.
fn outcome_label(outcome: &Result<IssuedToken, EntraError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(EntraError::Rejected(rejection)) => match rejection.kind() {
            RejectionKind::InvalidGrant => "invalid_grant",
            RejectionKind::InteractionRequired => "interaction_required",
            RejectionKind::ConsentRequired => "consent_required",
            RejectionKind::ClientRejected => "client_rejected",
            RejectionKind::RequestRejected => "request_rejected",
            RejectionKind::Throttled => "throttled",
            RejectionKind::Unavailable => "unavailable",
        },
        Err(EntraError::Unreachable(_)) => "unreachable",
        Err(EntraError::Transport(_)) => "connection_failed",
        Err(EntraError::MalformedAnswer(_)) => "malformed_answer",
        Err(EntraError::Credential(_)) => "credential_failed",
        Err(EntraError::DeadlineExceeded) => "deadline_exceeded",
    }
}

/// Logs what Entra said, bounded: never the whole answer.
fn log_rejection(rejection: &EntraRejection) {
    tracing::info!(
        http_status = rejection.status.as_u16(),
        error = rejection.error.as_deref(),
        aadsts = rejection.code,
        suberror = rejection.suberror.as_deref(),
        trace_id = rejection.trace_id.as_deref(),
        correlation_id = rejection.correlation_id.as_deref(),
        description = rejection.description.as_deref(),
        claims_challenge = rejection.claims.is_some(),
        "Entra ID refused the token request"
    );
}
