//! The only module that knows Microsoft Entra ID: the on-behalf-of exchange (OAuth 2.0 JWT
//! bearer grant) that turns a caller's token for this service's API into a token for Graph, the
//! gateway's client credential, the token endpoint's answers and errors, and the cache that
//! makes the exchange rare. The rest of the gateway sees [`OnBehalfOf::graph_token`] and
//! [`ExchangeFailure`].
//!
//! The request follows Microsoft's "OAuth 2.0 on-behalf-of flow" page: `POST
//! {authority}/{tenant}/oauth2/v2.0/token`, form-encoded, with `grant_type`, `client_id`,
//! `assertion` (the caller's token), `scope`, `requested_token_use=on_behalf_of` and the client
//! credential, and, as MSAL sends them, `client-request-id` (the call's own ID, so that Entra's
//! `correlation_id` names it) and `x-ms-lib-capability: retry-after, h429` (so that Entra
//! breaks a request loop with 429 and `Retry-After` rather than `invalid_grant`).
//!
//! Failures of Entra (5xx without `Retry-After`, connections) and AADSTS70021 (a federated
//! credential not yet propagated) are retried with backoff; throttling is not: as MSAL, the
//! gateway never sends a request again before Entra's `Retry-After` ends, and until then the
//! calls that need it end at once. An exchange runs as a task of its own, under its own bound
//! (`--max-timeout`), shared by every call that waits for it, so no caller's deadline cuts it
//! short for the others. A caller's token that is not a JWT never reaches Entra, refusals of a
//! token are remembered for a while, and exchanges are rate-limited (`--token-exchange-rate`).

mod answer;
mod args;
mod assertion;
mod authority;
mod cache;
mod credential;
mod metrics;
mod rate;

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::time::Instant;
use tracing::Span;

pub use self::{
    answer::{
        EntraRejection, IssuedToken, MAX_CLAIMS_LEN, MAX_TOKEN_LIFETIME, MalformedAnswer,
        RejectionKind, issued_token,
    },
    args::TokenExchangeArgs,
    assertion::AssertionError,
    authority::{CLOUDS, Cloud, EntraAuthority, PUBLIC_AUTHORITY},
    cache::{EXPIRY_SKEW, MAX_ENTRIES, REFUSAL_MEMORY},
    credential::{
        ClientAssertion, ClientSecret, CredentialError, CredentialSource, JWT_BEARER_ASSERTION,
    },
    metrics::ExchangeMetrics,
};
use self::{
    cache::{CacheKey, CachedToken, Flight, FlightOutcome, Leader, Lookup, Remembered, TokenCache},
    credential::ClientCredential,
    rate::RateLimit,
};
use crate::{
    auth::BearerToken,
    backoff::RetryPolicy,
    egress::{
        self, ClientError, ConnectError, ConnectSettings, Connector, Protocol, SendError,
        retry::{self, Next, Observed, Operation, client_span},
    },
    request::ClientRequestId,
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
/// What MSAL declares to Entra: it honours `Retry-After` and HTTP 429, so that Entra breaks a
/// request loop with them instead of `invalid_grant` AADSTS50196.
const LIB_CAPABILITY: HeaderValue = HeaderValue::from_static("retry-after, h429");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// How long a throttled exchange is held back when Entra sent no `Retry-After` (MSAL Python's
/// default).
pub const THROTTLE_DEFAULT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` of Entra's honoured (MSAL.NET's cap): an hour.
pub const THROTTLE_MAX: Duration = Duration::from_secs(3600);
/// The default of `--token-exchange-rate`: exchanges per second, on average.
pub const DEFAULT_EXCHANGE_RATE: u32 = 20;
/// Tenant names that name no tenant: the exchange must ask the app registration's own tenant.
const NOT_A_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The longest an exchange runs, whoever waits for it (`--max-timeout`).
    pub exchange_timeout: Duration,
    /// Exchanges per second, on average, with bursts of five seconds' worth
    /// (`--token-exchange-rate`).
    pub rate: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            exchange: TokenExchange::default(),
            authority: EntraAuthority::default(),
            tenant_id: None,
            client_id: None,
            credential: None,
            graph_scope: None,
            // --max-timeout's default.
            exchange_timeout: Duration::from_secs(30),
            rate: DEFAULT_EXCHANGE_RATE,
        }
    }
}

/// Why the token exchange cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A required setting is missing.
    #[error("--token-exchange obo needs {0}")]
    Missing(&'static str),
    /// The tenant ID is neither a GUID nor a domain name.
    #[error(
        "the tenant ID {0:?} is neither a tenant GUID nor a domain name (such as contoso.onmicrosoft.com)"
    )]
    TenantId(String),
    /// The tenant ID names no tenant (`common`, `organizations`, `consumers`).
    #[error(
        "the tenant ID {0:?} names no tenant: the on-behalf-of exchange must ask the app registration's own tenant (Entra refuses this grant at /common and /consumers, and MSAL refuses /organizations for it); set the tenant's GUID or domain name"
    )]
    NotATenant(String),
    /// The Graph URL and the authority belong to different clouds.
    #[error(
        "the Graph URL's host {graph} belongs to {graph_cloud}, but the Entra authority {authority} belongs to {authority_cloud}: the on-behalf-of exchange's token would not be accepted; set --graph-url and --entra-authority (AZURE_AUTHORITY_HOST) for the same cloud"
    )]
    CloudMismatch {
        /// The Graph host.
        graph: String,
        /// Its cloud.
        graph_cloud: &'static str,
        /// The authority.
        authority: String,
        /// Its cloud.
        authority_cloud: &'static str,
    },
    /// The client credential cannot be loaded.
    #[error("cannot load the client credential")]
    Credential(#[from] CredentialError),
    /// The HTTP client for Entra ID cannot be built.
    #[error("cannot set up the connection to Entra ID")]
    Http(#[from] ClientError),
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
    /// The caller's token is not a JWT, so Entra cannot exchange it; no request was made.
    #[error("the caller's token is not a JWT")]
    NotAJwt,
    /// The gateway's own exchange rate is spent; no request was made.
    #[error("the gateway's rate of token exchanges is spent")]
    RateLimited {
        /// When another exchange may start.
        wait: Duration,
    },
    /// The exchange ended without an outcome (its task failed).
    #[error("the token exchange ended without an outcome")]
    Abandoned,
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
    /// The authorize endpoint, the `authorization_uri` of claims challenges.
    authorize_url: String,
    client_id: String,
    scope: String,
    credential: ClientCredential,
    cache: TokenCache,
    retry: RetryPolicy,
    exchange_timeout: Duration,
    rate: RateLimit,
    /// Entra's throttling of every exchange (HTTP 429, or 5xx with `Retry-After`), until it ends.
    throttled: std::sync::Mutex<Option<Remembered>>,
    metrics: ExchangeMetrics,
}

// === impl OnBehalfOf ===

impl OnBehalfOf {
    /// Checks the settings, loads the client credential and builds the HTTP client (with the
    /// same TLS roots, extra CA, proxy and connect timeout as Graph's: `connect`). `graph_host`
    /// is Graph's host, which the default scope names and whose cloud must be the authority's.
    pub async fn new(
        settings: &Settings,
        connect: &ConnectSettings,
        graph_host: &str,
        retry: RetryPolicy,
        metrics: ExchangeMetrics,
    ) -> Result<Self, SetupError> {
        let tenant_id = required(
            &settings.tenant_id,
            "a tenant ID (--tenant-id or AZURE_TENANT_ID)",
        )?;
        check_tenant(tenant_id)?;
        settings.authority.check_same_cloud(graph_host)?;
        let client_id = required(
            &settings.client_id,
            "a client ID (--client-id or AZURE_CLIENT_ID)",
        )?
        .to_owned();
        let source = settings.credential.as_ref().ok_or(SetupError::Missing(
            "a client credential (--client-secret-file, --client-certificate-file or --federated-token-file)",
        ))?;
        let credential = ClientCredential::load(source, &client_id).await?;
        let endpoint_url = settings.authority.token_endpoint(tenant_id);
        let authorize_url = settings.authority.authorize_endpoint(tenant_id);
        let endpoint: Uri = endpoint_url
            .parse()
            .map_err(|_| SetupError::TenantId(tenant_id.to_owned()))?;
        let connector = Connector::new(&endpoint, Protocol::Auto, connect)?;
        let scope = settings
            .graph_scope
            .clone()
            .unwrap_or_else(|| default_graph_scope(graph_host));
        if let Some(host) = url::Url::parse(&scope)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
        {
            settings.authority.check_same_cloud(&host)?;
        }
        tracing::info!(
            token_endpoint = %endpoint_url,
            client_id = %client_id,
            credential = credential.kind(),
            scope = %scope,
            rate = settings.rate,
            "callers' tokens are exchanged on behalf of their users"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                connector,
                endpoint,
                endpoint_url,
                authorize_url,
                client_id,
                scope,
                credential,
                cache: TokenCache::new(MAX_ENTRIES),
                retry,
                exchange_timeout: settings.exchange_timeout,
                rate: RateLimit::new(settings.rate),
                throttled: std::sync::Mutex::new(None),
                metrics,
            }),
        })
    }

    /// The Graph token for `caller`, by `deadline`: from the cache, or from an exchange (which
    /// sends `client_request_id` to Entra when this call starts it). A token that is not a JWT,
    /// a refusal remembered, Entra's throttling and the gateway's own rate end the call at once.
    pub async fn graph_token(
        &self,
        caller: &BearerToken,
        deadline: Instant,
        client_request_id: &ClientRequestId,
    ) -> Result<BearerToken, Arc<ExchangeFailure>> {
        let inner = &self.inner;
        let refuse = |error| {
            Err(Arc::new(ExchangeFailure {
                error,
                retry_delay: None,
            }))
        };
        if !is_jwt_shaped(caller.token()) {
            return refuse(EntraError::NotAJwt);
        }
        let key = CacheKey::of(caller);
        if let Some(token) = inner.cache.fresh(&key).await {
            inner.metrics.token_cache_lookup(true);
            return Ok(token);
        }
        let now = std::time::Instant::now();
        let remembered = match inner.cache.refusal(&key).await {
            Some(remembered) => Some(remembered),
            None => inner.throttled(now),
        };
        if let Some(remembered) = remembered {
            inner.metrics.token_cache_lookup(false);
            return Err(Arc::new(remembered.failure(now)));
        }
        let (mut outcome, lookup) = match inner.cache.join(key) {
            Flight::Joined(outcome) => (outcome, Lookup::Hit),
            Flight::Leading(leader, outcome) => {
                // An exchange that landed between the look above and `join` left its token.
                if let Some(token) = inner.cache.fresh(&key).await {
                    leader.land(Ok(token.clone()));
                    inner.metrics.token_cache_lookup(true);
                    return Ok(token);
                }
                if let Err(wait) = inner.rate.take() {
                    let failure = Arc::new(ExchangeFailure {
                        error: EntraError::RateLimited { wait },
                        retry_delay: None,
                    });
                    leader.land(Err(failure.clone()));
                    inner.metrics.token_cache_lookup(false);
                    return Err(failure);
                }
                tokio::spawn(self.clone().fly(
                    caller.clone(),
                    key,
                    leader,
                    client_request_id.clone(),
                ));
                (outcome, Lookup::Miss)
            }
        };
        inner.metrics.token_cache_lookup(lookup == Lookup::Hit);
        let landed = tokio::time::timeout_at(deadline, outcome.wait_for(Option::is_some)).await;
        match landed {
            Ok(Ok(landed)) => match &*landed {
                Some(outcome) => outcome.clone(),
                None => refuse(EntraError::Abandoned),
            },
            Ok(Err(_)) => refuse(EntraError::Abandoned),
            Err(_) => refuse(EntraError::DeadlineExceeded),
        }
    }

    /// Drops the cached Graph token for `caller`, when Graph refused it.
    pub async fn forget(&self, caller: &BearerToken) {
        self.inner.cache.forget(CacheKey::of(caller)).await;
    }
}

impl OnBehalfOf {
    /// Runs one exchange to its end, under its own bound, whoever still waits for it; keeps its
    /// token, remembers a refusal worth remembering, and gives the outcome to every waiting call.
    async fn fly(
        self,
        caller: BearerToken,
        key: CacheKey,
        leader: Leader,
        client_request_id: ClientRequestId,
    ) {
        let inner = &self.inner;
        let bound = Instant::now() + inner.exchange_timeout;
        let outcome: FlightOutcome = match self.exchange(&caller, bound, &client_request_id).await {
            Ok(cached) => {
                let token = cached.token().clone();
                inner.cache.insert(key, cached).await;
                Ok(token)
            }
            Err(mut failure) => {
                if let Some(delay) = self.remember(key, &failure.error).await {
                    failure.retry_delay = Some(delay);
                }
                Err(Arc::new(failure))
            }
        };
        leader.land(outcome);
    }

    /// Remembers a refusal that another request would only repeat: throttling until Entra's
    /// `Retry-After` ends (HTTP 429 and 5xx with `Retry-After` for every exchange, AADSTS50196
    /// for this token), a refusal of the caller's token for [`REFUSAL_MEMORY`]. Returns the wait
    /// a throttled caller is told.
    async fn remember(&self, key: CacheKey, error: &EntraError) -> Option<Duration> {
        let inner = &self.inner;
        let EntraError::Rejected(rejection) = error else {
            return None;
        };
        let now = std::time::Instant::now();
        let kind = rejection.kind();
        let retry_after = rejection.retry_after.map(|wait| wait.min(THROTTLE_MAX));
        match kind {
            RejectionKind::Throttled | RejectionKind::Unavailable => {
                let wait = match (kind, retry_after) {
                    (_, Some(wait)) => wait,
                    (RejectionKind::Throttled, None) => THROTTLE_DEFAULT,
                    _ => return None,
                };
                let remembered = Remembered::new(rejection, now, wait, true);
                if rejection.status.is_client_error() && rejection.status.as_u16() != 429 {
                    // AADSTS50196: this same request, repeated too fast.
                    inner.cache.remember(key, remembered).await;
                } else {
                    *inner
                        .throttled
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(remembered);
                }
                tracing::warn!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "Entra ID throttles the token requests: none is sent again before its Retry-After ends, and calls that need one end at once"
                );
                Some(wait)
            }
            RejectionKind::InvalidGrant
            | RejectionKind::InteractionRequired
            | RejectionKind::ConsentRequired => {
                let remembered = Remembered::new(rejection, now, REFUSAL_MEMORY, false);
                inner.cache.remember(key, remembered).await;
                None
            }
            RejectionKind::ClientRejected | RejectionKind::RequestRejected => None,
        }
    }

    /// Exchanges `caller`'s token, retrying failures of Entra and a federated credential that
    /// has not propagated yet while the next wait ends before `deadline`; never throttling.
    async fn exchange(
        &self,
        caller: &BearerToken,
        deadline: Instant,
        client_request_id: &ClientRequestId,
    ) -> Result<CachedToken, ExchangeFailure> {
        let mut exchange = Exchange {
            exchange: self,
            caller,
            client_request_id,
            federation_logged: false,
        };
        let (outcome, _) = retry::run(&mut exchange, deadline).await;
        let issued = outcome?;
        let issued_at = std::time::Instant::now();
        Ok(CachedToken::new(issued.token, issued.expires_in, issued_at))
    }

    /// One request to the token endpoint.
    async fn request(
        &self,
        caller: &BearerToken,
        client_request_id: &ClientRequestId,
    ) -> Result<IssuedToken, EntraError> {
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
        headers.insert("x-ms-lib-capability", LIB_CAPABILITY);
        headers.insert(
            "client-request-id",
            client_request_id.header_value().clone(),
        );
        headers.insert("return-client-request-id", TRUE);

        let response = egress::send_once(&inner.connector, request)
            .await
            .map_err(|error| match error {
                SendError::Unreachable(error) => EntraError::Unreachable(error),
                SendError::Refused(error) | SendError::Transport(error) => {
                    EntraError::Transport(error.into())
                }
            })?;
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
        let mut rejection =
            EntraRejection::new(parts.status, &parts.headers, &body, SystemTime::now());
        rejection.authorization_uri = Some(inner.authorize_url.clone());
        Err(EntraError::Rejected(Box::new(rejection)))
    }
}

/// The token requests of one exchange, for the retry loop.
struct Exchange<'a> {
    exchange: &'a OnBehalfOf,
    caller: &'a BearerToken,
    client_request_id: &'a ClientRequestId,
    /// Whether the wait for a federated credential to propagate was logged.
    federation_logged: bool,
}

impl Operation for Exchange<'_> {
    type Output = IssuedToken;
    type Error = EntraError;
    type Failure = ExchangeFailure;

    async fn ready(&mut self, _deadline: Instant, _attempts: u32) -> Result<(), ExchangeFailure> {
        Ok(())
    }

    fn span(&self, attempt: u32) -> Span {
        client_span!(
            "entra.token",
            "POST /{tenant}/oauth2/v2.0/token",
            "POST",
            attempt = attempt
        )
    }

    fn attempt(&mut self, _attempt: u32) -> impl Future<Output = Result<IssuedToken, EntraError>> {
        self.exchange.request(self.caller, self.client_request_id)
    }

    fn observe(
        &mut self,
        outcome: Option<Result<IssuedToken, EntraError>>,
        span: &Span,
        elapsed: Duration,
    ) -> Observed<IssuedToken, EntraError, ExchangeFailure> {
        let outcome = outcome.unwrap_or(Err(EntraError::DeadlineExceeded));
        self.exchange
            .inner
            .metrics
            .token_exchanged(outcome_label(&outcome), elapsed);
        let error = match outcome {
            Ok(issued) => {
                span.record("http.response.status_code", 200);
                return Observed::Done(issued);
            }
            Err(error) => error,
        };
        span.record("otel.status_code", "ERROR");
        if let EntraError::Rejected(rejection) = &error {
            span.record("http.response.status_code", rejection.status.as_u16());
            log_rejection(rejection);
        }
        Observed::Failed(error)
    }

    fn after(&mut self, error: EntraError, attempts: u32) -> Next<EntraError, ExchangeFailure> {
        // A federated credential propagates in seconds to minutes: its retries are bounded by
        // the deadline only.
        let retry = error.is_federation_pending()
            || (error.is_transient() && attempts < self.exchange.inner.retry.max_attempts);
        if !retry {
            return Next::Stop(ExchangeFailure {
                error,
                retry_delay: None,
            });
        }
        Next::After { error, wait: None }
    }

    fn too_late(&mut self, error: EntraError, _attempts: u32, wait: Duration) -> ExchangeFailure {
        ExchangeFailure {
            error,
            retry_delay: Some(wait),
        }
    }

    fn retrying(&mut self, error: EntraError, attempts: u32, wait: Duration) {
        if error.is_federation_pending() {
            if !self.federation_logged {
                self.federation_logged = true;
                tracing::warn!(
                    client_id = %self.exchange.inner.client_id,
                    "Entra ID knows no federated credential matching the gateway's federated token yet (AADSTS70021); retrying with backoff. A federated credential takes a few minutes to propagate after it is created; if this lasts, check the app registration's federated credential: its issuer is the cluster's OIDC issuer URL, its subject system:serviceaccount:<namespace>:<service account>, its audience api://AzureADTokenExchange"
                );
            }
        } else {
            tracing::info!(
                attempt = attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "retrying the token request"
            );
        }
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

// === impl EntraError ===

impl EntraError {
    /// Whether another request may soon succeed: Entra's failures without `Retry-After`, and
    /// connections. Throttling is never retried: no request goes before `Retry-After` ends.
    fn is_transient(&self) -> bool {
        match self {
            Self::Rejected(rejection) => {
                rejection.kind() == RejectionKind::Unavailable && rejection.retry_after.is_none()
            }
            Self::Unreachable(_) | Self::Transport(_) => true,
            Self::MalformedAnswer(_)
            | Self::Credential(_)
            | Self::DeadlineExceeded
            | Self::NotAJwt
            | Self::RateLimited { .. }
            | Self::Abandoned => false,
        }
    }

    /// Whether Entra has not yet propagated the federated credential (AADSTS70021).
    fn is_federation_pending(&self) -> bool {
        matches!(self, Self::Rejected(rejection) if rejection.is_federation_pending())
    }

    /// Entra's `Retry-After`, when it sent one, or when the gateway's own rate allows another
    /// exchange.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected(rejection) => rejection.retry_after,
            Self::RateLimited { wait } => Some(*wait),
            _ => None,
        }
    }
}

/// The scope of Graph at its host `graph_host`: `https://<host>/.default`, so that national
/// clouds get their own Graph.
pub fn default_graph_scope(graph_host: &str) -> String {
    format!("https://{graph_host}/.default")
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
        // Never sent, so never counted as an exchange.
        Err(EntraError::NotAJwt | EntraError::RateLimited { .. } | EntraError::Abandoned) => {
            "not_sent"
        }
    }
}

impl Inner {
    /// Entra's throttling of every exchange, while it lasts.
    fn throttled(&self, now: std::time::Instant) -> Option<Remembered> {
        self.throttled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|remembered| remembered.applies(now))
    }
}

/// Whether `token` has a JWT's shape: three base64url parts, a header that is a JSON object
/// naming its `alg`, and a payload. Anything else cannot be an access token Entra issued, and
/// would spend one of Entra's requests (and the app's throttling budget) to learn so.
fn is_jwt_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if payload.is_empty() || !base64url(payload) || !base64url(signature) {
        return false;
    }
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|header| serde_json::from_slice::<serde_json::Value>(&header).ok())
        .is_some_and(|header| header.get("alg").is_some_and(serde_json::Value::is_string))
}

/// A setting the exchange cannot run without: set and not empty (an empty environment variable is
/// as good as none), or `SetupError::Missing` naming `what`.
fn required<'a>(setting: &'a Option<String>, what: &'static str) -> Result<&'a str, SetupError> {
    setting
        .as_deref()
        .filter(|value| !value.is_empty())
        .ok_or(SetupError::Missing(what))
}

/// Checks a tenant ID at start-up: a GUID or a domain name, and not a name that means "any
/// tenant".
fn check_tenant(tenant: &str) -> Result<(), SetupError> {
    if NOT_A_TENANT
        .iter()
        .any(|name| name.eq_ignore_ascii_case(tenant))
    {
        return Err(SetupError::NotATenant(tenant.to_owned()));
    }
    let guid = tenant.len() == 36 && uuid::Uuid::try_parse(tenant).is_ok();
    let label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let domain = tenant.len() <= 253 && tenant.contains('.') && tenant.split('.').all(label);
    if guid || domain {
        Ok(())
    } else {
        Err(SetupError::TenantId(tenant.chars().take(64).collect()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jwt_shaped_tokens_are_exchanged() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"RS256"}"#);
        for (token, shaped) in [
            (format!("{header}.eyJzdWIiOiJ1In0.c2ln"), true),
            (format!("{header}.cGF5bG9hZA."), true),
            (format!("{header}..c2ln"), false),
            (format!("{header}.eyJ9.c2ln.x"), false),
            (format!("{header}.eyJ9"), false),
            (format!("{header}.ey J9.c2ln"), false),
            ("garbage".to_owned(), false),
            ("a.b.c".to_owned(), false),
            (
                format!("{}.eyJ9.c2ln", URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#)),
                false,
            ),
            (
                format!("{}.eyJ9.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
                false,
            ),
        ] {
            assert_eq!(is_jwt_shaped(&token), shaped, "{token}");
        }
    }

    #[test]
    fn tenants_are_guids_or_domains_and_never_common() {
        for tenant in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "login.contoso.example",
        ] {
            assert!(check_tenant(tenant).is_ok(), "{tenant}");
        }
        for tenant in ["common", "Organizations", "consumers"] {
            let error = check_tenant(tenant).unwrap_err().to_string();
            assert!(error.contains("names no tenant"), "{error}");
        }
        for tenant in [
            "t", "contoso", "a/b.com", "-x.com", "x..com", ".", "..", "a b.com",
        ] {
            assert!(
                matches!(check_tenant(tenant), Err(SetupError::TenantId(_))),
                "{tenant}"
            );
        }
    }
}
