//! The simulated token endpoint's decisions: whether an exchange is well formed and from a known
//! client, which scripted answer applies, the tokens issued and until when they are valid. Pure
//! logic, no HTTP.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::scenario::{EntraRule, EntraSpec};

/// The grant type of the on-behalf-of exchange.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The only `client_assertion_type` Entra accepts.
pub(crate) const CLIENT_ASSERTION_JWT: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How many issued tokens are remembered for Graph's check: the newest ones, so that long load
/// tests run in bounded memory.
pub(crate) const MAX_ISSUED: usize = 100_000;

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
    clients: HashMap<String, Option<String>>,
    lifetime: Duration,
    require_issued_tokens: bool,
    rules: Vec<(EntraRule, Option<u64>)>,
    issued: HashMap<String, Instant>,
    issued_order: VecDeque<String>,
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
                .map(|client| (client.id, client.secret))
                .collect(),
            lifetime: spec.token_lifetime,
            require_issued_tokens: spec.require_issued_tokens,
            rules: spec
                .rules
                .into_iter()
                .map(|rule| {
                    let uses = rule.times;
                    (rule, uses)
                })
                .collect(),
            issued: HashMap::new(),
            issued_order: VecDeque::new(),
        }
    }

    /// The answer to an on-behalf-of exchange for `tenant` at `now`: checked as Entra checks
    /// it, then the first matching rule with uses left (which spends one), else a token.
    pub(crate) fn exchange(&mut self, tenant: &str, form: &TokenForm, now: Instant) -> Plan {
        let checked = self.check(tenant, form);
        let (client_id, assertion, scope) = match checked {
            Ok(fields) => fields,
            Err(failure) => {
                return Plan {
                    delay: None,
                    outcome: Outcome::Failed(*failure),
                };
            }
        };
        let rule = self.rules.iter_mut().find(|(rule, uses)| {
            uses.is_none_or(|left| left > 0)
                && rule
                    .tenant
                    .as_deref()
                    .is_none_or(|t| t.eq_ignore_ascii_case(tenant))
                && rule.client.as_deref().is_none_or(|c| c == client_id)
                && rule.assertion.as_deref().is_none_or(|a| a == assertion)
        });
        let (delay, expires_in) = match rule {
            Some((rule, uses)) => {
                if let Some(left) = uses {
                    *left -= 1;
                }
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
        let expires_in = expires_in.unwrap_or(self.lifetime.as_secs());
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
        self.check_client(tenant, client_id, form)?;
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
    ) -> Result<(), Box<EntraFailure>> {
        let registered = if self.clients.is_empty() {
            None
        } else {
            let Some(secret) = self.clients.get(client_id) else {
                return Err(failure(
                    400,
                    "unauthorized_client",
                    700016,
                    format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                    ),
                ));
            };
            Some(secret.as_deref())
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
            (Some(sent), None, None) => match registered {
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
                if compact {
                    Ok(())
                } else {
                    Err(failure(
                        401,
                        "invalid_client",
                        50027,
                        "JWT token is invalid or malformed.".to_owned(),
                    ))
                }
            }
        }
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
    use crate::simulator::Scenario;

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
        let cases: Vec<(TokenForm, (u16, &str, u32))> = vec![
            (
                form_with("grant_type", None),
                (400, "invalid_request", 900144),
            ),
            (
                form_with("grant_type", Some("client_credentials")),
                (400, "unsupported_grant_type", 70003),
            ),
            (
                form_with("client_id", None),
                (400, "invalid_request", 900144),
            ),
            (
                form_with("client_id", Some("")),
                (400, "invalid_request", 900144),
            ),
            (
                form_with("assertion", None),
                (400, "invalid_request", 900144),
            ),
            (form_with("scope", None), (400, "invalid_request", 900144)),
            (
                form_with("requested_token_use", None),
                (400, "invalid_request", 900144),
            ),
            (
                form_with("requested_token_use", Some("on-behalf-of")),
                (400, "invalid_request", 9002313),
            ),
            (
                form_with("client_secret", None),
                (401, "invalid_client", 7000218),
            ),
            (
                form_with("client_assertion", Some(assertion)),
                (400, "invalid_request", 9002313),
            ),
            (
                form_with("client_assertion_type", Some(CLIENT_ASSERTION_JWT)),
                (400, "invalid_request", 9002313),
            ),
            (
                TokenForm::parse(format!("{SECRET_FORM}&scope=openid").as_bytes()),
                (400, "invalid_request", 9002313),
            ),
            (
                TokenForm::parse(b"not a form"),
                (400, "invalid_request", 900144),
            ),
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
        issued(entra(spec).exchange("contoso", &cert_app, now));
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
        assert_eq!(token.expires_in, 3600, "the scripted errors are used up");

        let short = issued(answer(&mut entra, "short", "user"));
        assert_eq!(short.expires_in, 0);
        assert_eq!(
            entra.graph_accepts(&short.access_token, now),
            Ok(()),
            "not required here"
        );
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
        for (text, line, problem) in cases {
            let error = Scenario::parse(text, "test.json").unwrap_err().to_string();
            assert!(error.contains(line) && error.contains(problem), "{error}");
        }
    }
}
