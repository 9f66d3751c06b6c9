//! The simulated token endpoint's decisions: whether an exchange is well formed and from a known
//! client, which scripted answer applies, the tokens issued and until when they are valid. Pure
//! logic, no HTTP.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::scenario::{
    DEFAULT_TOKEN_LIFETIME, EntraRule, EntraSpec, FederatedCredentialSpec,
    LONGEST_DEFAULT_TOKEN_LIFETIME,
};
use crate::simulator::model::Rules;

/// The grant type of the on-behalf-of exchange.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The only `client_assertion_type` Entra accepts.
pub(crate) const CLIENT_ASSERTION_JWT: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How many issued tokens are remembered for Graph's check: the newest ones, so that long load
/// tests run in bounded memory.
pub(crate) const MAX_ISSUED: usize = 100_000;
/// Entra's loop detection, as the simulator plays it: more than this many identical requests
/// (client, assertion, scope) within [`LOOP_WINDOW`] are a loop (AADSTS50196).
pub(crate) const LOOP_LIMIT: u32 = 5;
/// The window of the loop detection.
pub(crate) const LOOP_WINDOW: Duration = Duration::from_secs(10);
/// How many requests the loop detection remembers at most.
const MAX_RECENT: usize = 10_000;
/// How far clocks may differ for a client assertion's `nbf` and `exp`.
const CLOCK_SKEW_SECS: i64 = 300;

/// What the HTTP request says beyond its form: the token endpoint's URL as called (the `aud` a
/// client assertion must carry) and whether the client declared `x-ms-lib-capability:
/// retry-after`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestContext {
    /// `host/path` of the request, without the scheme; not checked when `None`.
    pub endpoint: Option<String>,
    /// Whether the client honours `Retry-After` and 429 (MSAL's capability header).
    pub retry_after_capable: bool,
}

/// An app registration as the endpoint checks it.
#[derive(Debug, Default)]
struct Registered {
    secret: Option<String>,
    /// The DER of each registered certificate.
    certificates: Vec<Vec<u8>>,
    federated: Vec<FederatedCredentialSpec>,
}

/// An exchange's form fields, the first of each name, and whether a name came twice.
#[derive(Debug, Default)]
pub(crate) struct TokenForm {
    fields: HashMap<String, String>,
    repeated: Option<String>,
}

/// What the endpoint answers to one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A token.
    Issued(Issued),
    /// An Entra-shaped error.
    Failed(EntraFailure),
}

/// An issued token and what the answer says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
}

/// An Entra-shaped error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntraFailure {
    pub status: u16,
    pub error: String,
    pub error_codes: Vec<u32>,
    pub description: String,
    pub suberror: Option<String>,
    pub claims: Option<String>,
    pub retry_after: Option<String>,
}

/// How an exchange will be answered: after `delay`, with `outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub delay: Option<Duration>,
    pub outcome: Outcome,
}

/// Why the simulated Graph refuses a bearer token when it requires issued tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The token endpoint never issued it (or has forgotten it).
    NotIssued,
    /// It has expired.
    Expired,
}

/// The token endpoint's state: known tenants and clients, rules with their uses left, and the
/// tokens it issued with their expiry.
#[derive(Debug)]
pub(crate) struct Entra {
    tenants: HashSet<String>,
    clients: HashMap<String, Registered>,
    lifetime: Option<Duration>,
    require_issued_tokens: bool,
    rules: Rules<EntraRule>,
    issued: HashMap<String, Instant>,
    issued_order: VecDeque<String>,
    /// Identical requests seen lately: how many, since when.
    recent: HashMap<String, (u32, Instant)>,
}

// === impl TokenForm ===

impl TokenForm {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub(crate) fn parse(body: &[u8]) -> Self {
        let mut form = Self::default();
        for (name, value) in url::form_urlencoded::parse(body) {
            if form.fields.contains_key(name.as_ref()) {
                form.repeated.get_or_insert_with(|| name.to_string());
            } else {
                form.fields.insert(name.into_owned(), value.into_owned());
            }
        }
        form
    }

    /// The value of the field `name`, when present.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The value of `name` when present and not empty: Entra treats an empty parameter as missing.
    fn present(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|value| !value.is_empty())
    }
}

// === impl Entra ===

impl Entra {
    pub(crate) fn new(spec: EntraSpec) -> Self {
        Self {
            tenants: spec
                .tenants
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            clients: spec
                .clients
                .into_iter()
                .map(|client| {
                    let certificates = client
                        .certificates
                        .iter()
                        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
                        .filter_map(Result::ok)
                        .map(|der| der.as_ref().to_vec())
                        .collect();
                    let registered = Registered {
                        secret: client.secret,
                        certificates,
                        federated: client.federated_credentials,
                    };
                    (client.id, registered)
                })
                .collect(),
            lifetime: spec.token_lifetime,
            require_issued_tokens: spec.require_issued_tokens,
            rules: Rules::new(spec.rules, |rule| rule.times),
            issued: HashMap::new(),
            issued_order: VecDeque::new(),
            recent: HashMap::new(),
        }
    }

    /// The answer to an on-behalf-of exchange for `tenant` at `now`: checked as Entra checks
    /// it, then the first matching rule with uses left (which spends one), else a token.
    #[cfg(test)]
    pub(crate) fn exchange(&mut self, tenant: &str, form: &TokenForm, now: Instant) -> Plan {
        self.exchange_in(tenant, form, now, &RequestContext::default())
    }

    /// [`Entra::exchange`] of a request with `context`: client assertions are checked against
    /// the endpoint called, and identical requests repeated too fast are a loop that Entra breaks
    /// with `invalid_grant` AADSTS50196, or with 429 and `Retry-After` for a client that declared
    /// it honours them.
    pub(crate) fn exchange_in(
        &mut self,
        tenant: &str,
        form: &TokenForm,
        now: Instant,
        context: &RequestContext,
    ) -> Plan {
        let checked = self.check(tenant, form, context);
        let (client_id, assertion, scope) = match checked {
            Ok(fields) => fields,
            Err(failure) => {
                return Plan {
                    delay: None,
                    outcome: Outcome::Failed(*failure),
                };
            }
        };
        if let Some(failure) = self.loop_detected(client_id, assertion, scope, now, context) {
            return Plan {
                delay: None,
                outcome: Outcome::Failed(*failure),
            };
        }
        let rule = self.rules.take(|rule| {
            rule.tenant
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(tenant))
                && rule.client.as_deref().is_none_or(|c| c == client_id)
                && rule.assertion.as_deref().is_none_or(|a| a == assertion)
        });
        let (delay, expires_in) = match rule {
            Some(rule) => {
                if let Some(failure) = scripted_failure(rule) {
                    return Plan {
                        delay: rule.delay,
                        outcome: Outcome::Failed(failure),
                    };
                }
                (rule.delay, rule.expires_in)
            }
            None => (None, None),
        };
        let expires_in = expires_in.unwrap_or_else(|| match self.lifetime {
            Some(lifetime) => lifetime.as_secs(),
            None => random_lifetime(),
        });
        let scope = scope.to_owned();
        let expiry = now + delay.unwrap_or_default() + Duration::from_secs(expires_in);
        let access_token = self.issue(expiry);
        Plan {
            delay,
            outcome: Outcome::Issued(Issued {
                access_token,
                expires_in,
                scope,
            }),
        }
    }

    /// Whether the simulated Graph accepts `token` at `now`.
    pub(crate) fn graph_accepts(&self, token: &str, now: Instant) -> Result<(), Refusal> {
        if !self.require_issued_tokens {
            return Ok(());
        }
        match self.issued.get(token) {
            None => Err(Refusal::NotIssued),
            Some(expiry) if *expiry <= now => Err(Refusal::Expired),
            Some(_) => Ok(()),
        }
    }

    /// The form's checks, in the order Entra reports them; the client ID, assertion and scope
    /// of a well-formed exchange.
    fn check<'f>(
        &self,
        tenant: &str,
        form: &'f TokenForm,
        context: &RequestContext,
    ) -> Result<(&'f str, &'f str, &'f str), Box<EntraFailure>> {
        if !self.tenants.is_empty() && !self.tenants.contains(&tenant.to_ascii_lowercase()) {
            return Err(failure(
                400,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            ));
        }
        if let Some(name) = &form.repeated {
            return Err(malformed(format!("The parameter '{name}' is duplicated.")));
        }
        let grant_type = form
            .present("grant_type")
            .ok_or_else(|| missing("grant_type"))?;
        if grant_type != JWT_BEARER {
            return Err(failure(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let client_id = form
            .present("client_id")
            .ok_or_else(|| missing("client_id"))?;
        self.check_client(tenant, client_id, form, context)?;
        let assertion = form
            .present("assertion")
            .ok_or_else(|| missing("assertion"))?;
        let token_use = form
            .present("requested_token_use")
            .ok_or_else(|| missing("requested_token_use"))?;
        if token_use != "on_behalf_of" {
            return Err(malformed(format!(
                "The requested_token_use '{token_use}' is not supported: on_behalf_of is expected."
            )));
        }
        let scope = form.present("scope").ok_or_else(|| missing("scope"))?;
        if self.issued.contains_key(assertion) {
            // A token this endpoint issued is for Graph, not for the middle tier: Entra refuses
            // it as an assertion because of its audience.
            return Err(failure(
                400,
                "invalid_grant",
                500131,
                "Assertion audience does not match the Client application.".to_owned(),
            ));
        }
        Ok((client_id, assertion, scope))
    }

    /// Exactly one client credential, of a known client, as registered.
    fn check_client(
        &self,
        tenant: &str,
        client_id: &str,
        form: &TokenForm,
        context: &RequestContext,
    ) -> Result<(), Box<EntraFailure>> {
        let registered = if self.clients.is_empty() {
            None
        } else {
            let Some(registered) = self.clients.get(client_id) else {
                return Err(failure(
                    400,
                    "unauthorized_client",
                    700016,
                    format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                    ),
                ));
            };
            Some(registered)
        };
        let secret = form.present("client_secret");
        let assertion = form.present("client_assertion");
        let assertion_type = form.present("client_assertion_type");
        match (secret, assertion, assertion_type) {
            (None, None, None) => Err(failure(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
            )),
            (Some(_), Some(_), _) | (Some(_), None, Some(_)) => Err(malformed(
                "Only one client credential may be presented: client_secret, or client_assertion with client_assertion_type.".to_owned(),
            )),
            (Some(sent), None, None) => match registered.map(|r| r.secret.as_deref()) {
                Some(Some(expected)) if sent != expected => Err(invalid_secret(client_id)),
                Some(None) => Err(invalid_secret(client_id)),
                _ => Ok(()),
            },
            (None, None, Some(_)) => Err(missing("client_assertion")),
            (None, Some(_), None) => Err(missing("client_assertion_type")),
            (None, Some(jwt), Some(kind)) => {
                if kind != CLIENT_ASSERTION_JWT {
                    return Err(malformed(format!(
                        "The client_assertion_type '{kind}' is not supported."
                    )));
                }
                let parts: Vec<&str> = jwt.split('.').collect();
                let compact = parts.len() == 3
                    && parts[..2].iter().all(|part| {
                        !part.is_empty()
                            && part
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                let malformed_jwt = || {
                    failure(
                        401,
                        "invalid_client",
                        50027,
                        "JWT token is invalid or malformed.".to_owned(),
                    )
                };
                if !compact {
                    return Err(malformed_jwt());
                }
                let Some(registered) = registered else {
                    // Any client with any credential: the shape is all there is to check.
                    return Ok(());
                };
                let jwt = Jwt::parse(jwt).ok_or_else(malformed_jwt)?;
                if jwt.claim("iss") == Some(client_id) {
                    check_certificate_assertion(&jwt, client_id, registered, context)
                } else {
                    check_federated_token(&jwt, registered)
                }
            }
        }
    }

    /// Whether this request is one too many of the same within [`LOOP_WINDOW`], and Entra's
    /// answer if it is.
    fn loop_detected(
        &mut self,
        client_id: &str,
        assertion: &str,
        scope: &str,
        now: Instant,
        context: &RequestContext,
    ) -> Option<Box<EntraFailure>> {
        if self.recent.len() >= MAX_RECENT {
            self.recent
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < LOOP_WINDOW);
            if self.recent.len() >= MAX_RECENT {
                self.recent.clear();
            }
        }
        let key = super::sha256_prefix(&format!("{client_id}\n{assertion}\n{scope}"));
        let (count, since) = self.recent.entry(key).or_insert((0, now));
        if now.saturating_duration_since(*since) >= LOOP_WINDOW {
            *count = 0;
            *since = now;
        }
        *count += 1;
        if *count <= LOOP_LIMIT {
            return None;
        }
        let left = LOOP_WINDOW
            .saturating_sub(now.saturating_duration_since(*since))
            .as_secs()
            .max(1);
        let description = "The request was identified as a loop: too many of the same request in too short a period. Cache tokens and do not repeat a request that failed.".to_owned();
        Some(if context.retry_after_capable {
            let mut throttled = failure(429, "temporarily_unavailable", 50196, description);
            throttled.retry_after = Some(left.to_string());
            throttled
        } else {
            failure(400, "invalid_grant", 50196, description)
        })
    }

    /// A new opaque token valid until `expiry`, remembered for Graph's check.
    fn issue(&mut self, expiry: Instant) -> String {
        let token = format!(
            "sim-graph-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        if self.issued_order.len() == MAX_ISSUED
            && let Some(oldest) = self.issued_order.pop_front()
        {
            self.issued.remove(&oldest);
        }
        self.issued.insert(token.clone(), expiry);
        self.issued_order.push_back(token.clone());
        token
    }
}

/// A lifetime as Entra gives its access tokens by default: "a random value ranging between
/// 60-90 minutes".
fn random_lifetime() -> u64 {
    let shortest = DEFAULT_TOKEN_LIFETIME.as_secs();
    let spread = LONGEST_DEFAULT_TOKEN_LIFETIME.as_secs() - shortest + 1;
    let random = u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(spread)).unwrap_or(0);
    shortest + random
}

/// A compact JWT's decoded parts.
struct Jwt<'a> {
    header: serde_json::Value,
    claims: serde_json::Value,
    signed: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jwt<'a> {
    fn parse(jwt: &'a str) -> Option<Self> {
        let (signed, signature) = jwt.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let json = |part: &str| -> Option<serde_json::Value> {
            let value: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()?;
            value.is_object().then_some(value)
        };
        Some(Self {
            header: json(header)?,
            claims: json(claims)?,
            signed,
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(serde_json::Value::as_str)
    }

    /// Whether `aud` is `audience` or a list holding it.
    fn has_audience(&self, audience: &str) -> bool {
        match self.claims.get("aud") {
            Some(serde_json::Value::String(aud)) => aud == audience,
            Some(serde_json::Value::Array(auds)) => auds.iter().any(|aud| aud == audience),
            _ => false,
        }
    }

    /// `None` when `exp` and `nbf` hold now (with skew); else the failure.
    fn time_failure(&self, what: &str) -> Option<Box<EntraFailure>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        let exp = self.claims.get("exp").and_then(serde_json::Value::as_i64);
        let nbf = self.claims.get("nbf").and_then(serde_json::Value::as_i64);
        let valid = exp.is_some_and(|exp| exp + CLOCK_SKEW_SECS > now)
            && nbf.is_none_or(|nbf| nbf - CLOCK_SKEW_SECS <= now);
        (!valid).then(|| {
            failure(
                401,
                "invalid_client",
                700024,
                format!("{what} is not within its valid time range."),
            )
        })
    }
}

/// A certificate's `client_assertion`: as Entra's "certificate credentials" page requires.
fn check_certificate_assertion(
    jwt: &Jwt<'_>,
    client_id: &str,
    registered: &Registered,
    context: &RequestContext,
) -> Result<(), Box<EntraFailure>> {
    let invalid_claim = |description: String| failure(401, "invalid_client", 50012, description);
    if jwt.claim("sub") != Some(client_id) {
        return Err(invalid_claim(
            "Client assertion sub claim does not match the client ID.".to_owned(),
        ));
    }
    if let Some(endpoint) = &context.endpoint {
        let aud = jwt.claim("aud").unwrap_or_default();
        let called = aud
            .strip_prefix("https://")
            .or_else(|| aud.strip_prefix("http://"))
            .unwrap_or(aud);
        if called != endpoint {
            return Err(invalid_claim(format!(
                "Client assertion audience claim does not match the token endpoint '{endpoint}'."
            )));
        }
    }
    if let Some(expired) = jwt.time_failure("Client assertion") {
        return Err(expired);
    }
    let unknown_key = |description: &str| {
        failure(
            401,
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation: {description}"),
        )
    };
    let thumbprint = jwt
        .header
        .get("x5t#S256")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| unknown_key("the header has no x5t#S256."))?;
    let certificate = registered
        .certificates
        .iter()
        .find(|der| {
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der)) == thumbprint
        })
        .ok_or_else(|| unknown_key("no certificate of the application has this x5t#S256."))?;
    let algorithm: &dyn ring::signature::VerificationAlgorithm =
        match jwt.header.get("alg").and_then(serde_json::Value::as_str) {
            Some("PS256") => &ring::signature::RSA_PSS_2048_8192_SHA256,
            Some("RS256") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(unknown_key("the algorithm is not PS256 or RS256.")),
        };
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|_| unknown_key("the registered certificate cannot be read."))?;
    ring::signature::UnparsedPublicKey::new(algorithm, &parsed.public_key().subject_public_key.data)
        .verify(jwt.signed.as_bytes(), &jwt.signature)
        .map_err(|_| unknown_key("the signature does not verify."))
}

/// A federated token used as the `client_assertion`: one of the app's federated credentials
/// must name its issuer, subject and audience.
fn check_federated_token(jwt: &Jwt<'_>, registered: &Registered) -> Result<(), Box<EntraFailure>> {
    let (issuer, subject) = (
        jwt.claim("iss").unwrap_or_default(),
        jwt.claim("sub").unwrap_or_default(),
    );
    let matched = registered.federated.iter().any(|credential| {
        credential.issuer == issuer
            && credential.subject == subject
            && jwt.has_audience(&credential.audience)
    });
    if !matched {
        let audience = jwt
            .claims
            .get("aud")
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(failure(
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{audience}'."
            ),
        ));
    }
    match jwt.time_failure("The federated token") {
        Some(expired) => Err(expired),
        None => Ok(()),
    }
}

/// The failure a rule scripts, or `None` when it lets a token be issued.
fn scripted_failure(rule: &EntraRule) -> Option<EntraFailure> {
    let status = match (rule.status, rule.error.as_deref()) {
        (Some(status), _) if (200..300).contains(&status) => return None,
        (None, None) => return None,
        (Some(status), _) => status,
        (None, Some("invalid_client")) => 401,
        (None, Some("server_error")) => 500,
        (None, Some("temporarily_unavailable")) => 503,
        (None, Some(_)) => 400,
    };
    let (usual_error, usual_code, usual_description) = usual_error(status);
    let error = rule.error.clone().unwrap_or_else(|| usual_error.to_owned());
    let (code, description) = match error.as_str() {
        _ if rule.error.is_none() => (usual_code, usual_description),
        "interaction_required" => (
            50079,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access the resource.",
        ),
        "invalid_grant" if rule.claims.is_some() => (
            50076,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.",
        ),
        "invalid_grant" if rule.suberror.as_deref() == Some("consent_required") => (
            65001,
            "The user or administrator has not consented to use the application. Send an interactive authorization request for this user and resource.",
        ),
        "invalid_grant" => (
            500133,
            "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion.",
        ),
        _ => (usual_code, usual_description),
    };
    Some(EntraFailure {
        status,
        error,
        error_codes: rule.error_codes.clone().unwrap_or_else(|| vec![code]),
        description: rule
            .description
            .clone()
            .unwrap_or_else(|| description.to_owned()),
        suberror: rule.suberror.clone(),
        claims: rule.claims.clone(),
        retry_after: rule.retry_after.clone(),
    })
}

/// The error, `AADSTS` number and text Entra usually sends with a status.
fn usual_error(status: u16) -> (&'static str, u32, &'static str) {
    match status {
        401 => ("invalid_client", 7000215, "Invalid client secret provided."),
        429 => (
            "temporarily_unavailable",
            90024,
            "RequestBudgetExceededError: a transient error has occurred. Try again.",
        ),
        500 => (
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        ),
        502..=504 => (
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Try again.",
        ),
        501 | 505..=599 => (
            "server_error",
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        ),
        _ => (
            "invalid_request",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        ),
    }
}

fn failure(status: u16, error: &str, code: u32, description: String) -> Box<EntraFailure> {
    Box::new(EntraFailure {
        status,
        error: error.to_owned(),
        error_codes: vec![code],
        description,
        suberror: None,
        claims: None,
        retry_after: None,
    })
}

fn missing(parameter: &str) -> Box<EntraFailure> {
    failure(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{parameter}'."),
    )
}

fn malformed(description: String) -> Box<EntraFailure> {
    failure(400, "invalid_request", 9002313, description)
}

fn invalid_secret(client_id: &str) -> Box<EntraFailure> {
    failure(
        401,
        "invalid_client",
        7000215,
        format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Scenario, scenario::tests::check_refused};

    const SECRET_FORM: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&client_id=app&client_secret=s3cret&assertion=user-token&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&requested_token_use=on_behalf_of";

    fn entra(spec: &str) -> Entra {
        let scenario = Scenario::parse(&format!(r#"{{"entra": {spec}}}"#), "test").unwrap();
        Entra::new(scenario.entra)
    }

    /// `SECRET_FORM` with `name` removed (`value` None) or set to `value`.
    fn form_with(name: &str, value: Option<&str>) -> TokenForm {
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(SECRET_FORM.as_bytes())
            .into_owned()
            .filter(|(n, _)| n != name)
            .collect();
        if let Some(value) = value {
            pairs.push((name.to_owned(), value.to_owned()));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        TokenForm::parse(body.as_bytes())
    }

    fn failed(plan: Plan) -> (u16, String, Vec<u32>) {
        match plan.outcome {
            Outcome::Failed(failure) => (failure.status, failure.error, failure.error_codes),
            Outcome::Issued(issued) => panic!("expected an error, got {issued:?}"),
        }
    }

    fn issued(plan: Plan) -> Issued {
        match plan.outcome {
            Outcome::Issued(issued) => issued,
            Outcome::Failed(failure) => panic!("expected a token, got {failure:?}"),
        }
    }

    #[test]
    fn a_well_formed_exchange_gets_a_token_for_the_scope_that_lives_the_lifetime() {
        let mut entra = entra(r#"{"tokenLifetime": "90m", "requireIssuedTokens": true}"#);
        let now = Instant::now();

        let token =
            issued(entra.exchange("contoso", &TokenForm::parse(SECRET_FORM.as_bytes()), now));

        assert_eq!(token.expires_in, 5400);
        assert_eq!(token.scope, "https://graph.microsoft.com/.default");
        assert!(!token.access_token.contains("user-token"));
        assert_eq!(entra.graph_accepts(&token.access_token, now), Ok(()));
        let later = now + Duration::from_secs(5399);
        assert_eq!(entra.graph_accepts(&token.access_token, later), Ok(()));
        let expired = now + Duration::from_secs(5400);
        assert_eq!(
            entra.graph_accepts(&token.access_token, expired),
            Err(Refusal::Expired)
        );
        assert_eq!(
            entra.graph_accepts("user-token", now),
            Err(Refusal::NotIssued)
        );
        let other =
            issued(entra.exchange("contoso", &TokenForm::parse(SECRET_FORM.as_bytes()), now));
        assert_ne!(
            other.access_token, token.access_token,
            "every exchange issues a new token"
        );
    }

    #[test]
    fn without_require_issued_tokens_graph_accepts_any_token() {
        let entra = entra("{}");
        assert_eq!(entra.graph_accepts("anything", Instant::now()), Ok(()));
    }

    #[test]
    fn malformed_exchanges_get_the_errors_entra_sends() {
        let assertion = "eyJhbGciOiJQUzI1NiJ9.eyJpc3MiOiJhcHAifQ.c2ln";
        // AADSTS900144: a parameter the exchange needs is missing; AADSTS9002313: the request is
        // malformed.
        let missing = (400, "invalid_request", 900144);
        let malformed = (400, "invalid_request", 9002313);
        let cases: Vec<(TokenForm, (u16, &str, u32))> = vec![
            (form_with("grant_type", None), missing),
            (
                form_with("grant_type", Some("client_credentials")),
                (400, "unsupported_grant_type", 70003),
            ),
            (form_with("client_id", None), missing),
            (form_with("client_id", Some("")), missing),
            (form_with("assertion", None), missing),
            (form_with("scope", None), missing),
            (form_with("requested_token_use", None), missing),
            (
                form_with("requested_token_use", Some("on-behalf-of")),
                malformed,
            ),
            (
                form_with("client_secret", None),
                (401, "invalid_client", 7000218),
            ),
            (form_with("client_assertion", Some(assertion)), malformed),
            (
                form_with("client_assertion_type", Some(CLIENT_ASSERTION_JWT)),
                malformed,
            ),
            (
                TokenForm::parse(format!("{SECRET_FORM}&scope=openid").as_bytes()),
                malformed,
            ),
            (TokenForm::parse(b"not a form"), missing),
        ];
        for (form, (status, error, code)) in cases {
            let mut entra = entra("{}");
            assert_eq!(
                failed(entra.exchange("t", &form, Instant::now())),
                (status, error.to_owned(), vec![code]),
                "{form:?}"
            );
        }
    }

    #[test]
    fn a_client_assertion_must_be_a_compact_jwt_of_the_right_type() {
        let with_assertion = |kind: Option<&str>, jwt: Option<&str>| {
            let mut form = form_with("client_secret", None);
            for (name, value) in [("client_assertion_type", kind), ("client_assertion", jwt)] {
                if let Some(value) = value {
                    form.fields.insert(name.to_owned(), value.to_owned());
                }
            }
            let mut entra = entra("{}");
            entra.exchange("t", &form, Instant::now())
        };
        let jwt = "eyJhbGciOiJQUzI1NiJ9.eyJpc3MiOiJhcHAifQ.c2ln";

        issued(with_assertion(Some(CLIENT_ASSERTION_JWT), Some(jwt)));
        assert_eq!(
            failed(with_assertion(Some(CLIENT_ASSERTION_JWT), Some("opaque"))),
            (401, "invalid_client".into(), vec![50027])
        );
        assert_eq!(
            failed(with_assertion(Some("urn:other"), Some(jwt))),
            (400, "invalid_request".into(), vec![9002313])
        );
        assert_eq!(
            failed(with_assertion(None, Some(jwt))),
            (400, "invalid_request".into(), vec![900144])
        );
        assert_eq!(
            failed(with_assertion(Some(CLIENT_ASSERTION_JWT), None)),
            (400, "invalid_request".into(), vec![900144])
        );
    }

    #[test]
    fn listed_tenants_and_clients_are_the_only_ones_known() {
        let spec = r#"{"tenants": ["Contoso"], "clients": [{"id": "app", "secret": "s3cret"}, {"id": "cert-app"}]}"#;
        let now = Instant::now();
        let exchange = |tenant: &str, form: TokenForm| entra(spec).exchange(tenant, &form, now);

        issued(exchange(
            "contoso",
            form_with("client_secret", Some("s3cret")),
        ));
        assert_eq!(
            failed(exchange(
                "fabrikam",
                form_with("client_secret", Some("s3cret"))
            )),
            (400, "invalid_request".into(), vec![90002])
        );
        assert_eq!(
            failed(exchange(
                "contoso",
                form_with("client_secret", Some("s3cret\n"))
            )),
            (401, "invalid_client".into(), vec![7000215]),
            "a secret with a trailing newline is a wrong secret"
        );
        assert_eq!(
            failed(exchange(
                "contoso",
                form_with("client_id", Some("stranger"))
            )),
            (400, "unauthorized_client".into(), vec![700016])
        );
        let mut cert_app = form_with("client_id", Some("cert-app"));
        assert_eq!(
            failed(entra(spec).exchange("contoso", &cert_app, now)),
            (401, "invalid_client".into(), vec![7000215]),
            "a client without a secret takes only assertions"
        );
        cert_app.fields.remove("client_secret");
        cert_app
            .fields
            .insert("client_assertion_type".into(), CLIENT_ASSERTION_JWT.into());
        cert_app
            .fields
            .insert("client_assertion".into(), "a.b.c".into());
        assert_eq!(
            failed(entra(spec).exchange("contoso", &cert_app, now)),
            (401, "invalid_client".into(), vec![50027]),
            "a registered client's assertion is read, not only shaped"
        );
    }

    #[test]
    fn a_token_it_issued_is_refused_as_an_assertion() {
        let mut entra = entra("{}");
        let now = Instant::now();
        let token = issued(entra.exchange("t", &TokenForm::parse(SECRET_FORM.as_bytes()), now));

        let again = form_with("assertion", Some(&token.access_token));
        assert_eq!(
            failed(entra.exchange("t", &again, now)),
            (400, "invalid_grant".into(), vec![500131])
        );
    }

    #[test]
    fn rules_script_errors_with_claims_delays_and_lifetimes_for_their_uses() {
        let mut entra = entra(
            r#"{"rules": [
                {"assertion": "mfa-user", "error": "interaction_required", "claims": "{\"access_token\":{\"polids\":{\"essential\":true,\"values\":[\"p1\"]}}}"},
                {"assertion": "new-user", "error": "invalid_grant", "suberror": "consent_required"},
                {"client": "app", "status": 429, "retryAfter": 3, "times": 1},
                {"client": "app", "status": 503, "delay": "20ms", "times": 1},
                {"tenant": "SHORT", "expiresIn": 0}
            ]}"#,
        );
        let now = Instant::now();
        let answer = |entra: &mut Entra, tenant: &str, assertion: &str| {
            entra.exchange(tenant, &form_with("assertion", Some(assertion)), now)
        };

        let Outcome::Failed(mfa) = answer(&mut entra, "t", "mfa-user").outcome else {
            panic!("a claims challenge")
        };
        assert_eq!(
            (mfa.status, mfa.error.as_str(), mfa.error_codes.as_slice()),
            (400, "interaction_required", &[50079][..])
        );
        assert_eq!(
            mfa.claims.as_deref(),
            Some(r#"{"access_token":{"polids":{"essential":true,"values":["p1"]}}}"#)
        );
        let Outcome::Failed(consent) = answer(&mut entra, "t", "new-user").outcome else {
            panic!("consent")
        };
        assert_eq!(
            (
                consent.status,
                consent.error.as_str(),
                consent.error_codes.as_slice(),
                consent.suberror.as_deref()
            ),
            (400, "invalid_grant", &[65001][..], Some("consent_required"))
        );

        let throttled = answer(&mut entra, "t", "user");
        let Outcome::Failed(ref failure) = throttled.outcome else {
            panic!("429")
        };
        assert_eq!(
            (failure.status, failure.retry_after.as_deref()),
            (429, Some("3"))
        );
        let unavailable = answer(&mut entra, "t", "user");
        assert_eq!(unavailable.delay, Some(Duration::from_millis(20)));
        assert_eq!(
            failed(unavailable),
            (503, "temporarily_unavailable".into(), vec![90033])
        );
        let token = issued(answer(&mut entra, "t", "user"));
        assert!(
            (3600..=5400).contains(&token.expires_in),
            "the scripted errors are used up; Entra's 60 to 90 minutes: {}",
            token.expires_in
        );

        let short = issued(answer(&mut entra, "short", "user"));
        assert_eq!(short.expires_in, 0);
        assert_eq!(
            entra.graph_accepts(&short.access_token, now),
            Ok(()),
            "not required here"
        );
    }

    #[test]
    fn an_identical_request_repeated_too_fast_is_a_loop_entra_breaks() {
        let now = Instant::now();
        for (capable, expected) in [
            (false, (400, "invalid_grant".to_owned(), vec![50196])),
            (
                true,
                (429, "temporarily_unavailable".to_owned(), vec![50196]),
            ),
        ] {
            let mut entra = entra("{}");
            let context = RequestContext {
                endpoint: None,
                retry_after_capable: capable,
            };
            let form = TokenForm::parse(SECRET_FORM.as_bytes());
            for _ in 0..LOOP_LIMIT {
                issued(entra.exchange_in("t", &form, now, &context));
            }
            let looped = entra.exchange_in("t", &form, now, &context);
            if capable {
                let Outcome::Failed(ref failure) = looped.outcome else {
                    panic!("a loop")
                };
                assert_eq!(failure.retry_after.as_deref(), Some("10"));
            }
            assert_eq!(failed(looped), expected);
            let other = form_with("assertion", Some("another-user"));
            issued(entra.exchange_in("t", &other, now, &context));
            let later = now + LOOP_WINDOW;
            issued(entra.exchange_in("t", &form, later, &context));
        }
    }

    #[test]
    fn tokens_live_from_60_to_90_minutes_unless_the_scenario_says() {
        let mut entra = entra("{}");
        let form = |i: usize| form_with("assertion", Some(&format!("user-{i}")));
        let lifetimes: HashSet<u64> = (0..20)
            .map(|i| issued(entra.exchange("t", &form(i), Instant::now())).expires_in)
            .collect();
        assert!(
            lifetimes.iter().all(|s| (3600..=5400).contains(s)),
            "{lifetimes:?}"
        );
        assert!(lifetimes.len() > 1, "varied: {lifetimes:?}");
    }

    #[test]
    fn issued_tokens_are_remembered_in_bounded_memory() {
        let mut entra = entra(r#"{"requireIssuedTokens": true}"#);
        let now = Instant::now();
        let expiry = now + Duration::from_secs(60);
        let first = entra.issue(expiry);
        for _ in 1..MAX_ISSUED {
            entra.issue(expiry);
        }
        assert_eq!(entra.graph_accepts(&first, now), Ok(()));

        let newest = entra.issue(expiry);
        assert_eq!(entra.issued.len(), MAX_ISSUED);
        assert_eq!(entra.graph_accepts(&first, now), Err(Refusal::NotIssued));
        assert_eq!(entra.graph_accepts(&newest, now), Ok(()));
    }

    #[test]
    fn the_builtin_scenario_scripts_a_claims_challenge_and_missing_consent() {
        let mut entra = Entra::new(Scenario::builtin().entra);
        let now = Instant::now();
        let answer = |entra: &mut Entra, token: &str| {
            let Outcome::Failed(failure) = entra
                .exchange("t", &form_with("assertion", Some(token)), now)
                .outcome
            else {
                panic!("{token} is refused")
            };
            failure
        };

        let mfa = answer(&mut entra, super::super::MFA_USER_TOKEN);
        assert_eq!(
            (
                mfa.error.as_str(),
                mfa.error_codes.as_slice(),
                mfa.suberror.as_deref()
            ),
            ("invalid_grant", &[50076][..], Some("basic_action"))
        );
        assert!(mfa.claims.is_some_and(|claims| claims.contains("polids")));
        let consent = answer(&mut entra, super::super::UNCONSENTED_USER_TOKEN);
        assert_eq!(consent.suberror.as_deref(), Some("consent_required"));
        issued(entra.exchange("t", &form_with("assertion", Some("demo-token")), now));
    }

    #[test]
    fn a_bad_entra_scenario_is_an_error_naming_the_line() {
        let cases = [
            (
                "{\n \"entra\": {\n  \"rules\": [{\"claims\": \"{not json\"}]\n }\n}",
                "line 3",
                "claims must be a JSON object",
            ),
            (
                "{\n \"entra\": {\n  \"rules\": [{\"error\": \"bad \\\"quote\"}]\n }\n}",
                "line 3",
                "not an OAuth error code",
            ),
            (
                "{\"entra\": {\"tokenLifetime\": 0}}",
                "line 1",
                "at least one second",
            ),
            (
                "{\n \"entra\": {\n  \"tenant\": []\n }\n}",
                "line 3",
                "unknown field `tenant`",
            ),
            (
                "{\n \"entra\": {\n  \"rules\": [{\"status\": 99}]\n }\n}",
                "line 3",
                "not an HTTP status",
            ),
        ];
        check_refused(&cases);
    }
}
