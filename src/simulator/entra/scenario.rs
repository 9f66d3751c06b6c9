//! The `entra` part of a scenario: which tenants and app registrations the simulated token
//! endpoint knows, how long its tokens live, whether Graph insists on them, and scripted answers.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::simulator::scenario::{delay, http_status, retry_after};

/// The shortest lifetime of issued tokens when a scenario sets none: Entra's default access-token
/// lifetime is "a random value ranging between 60-90 minutes".
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest lifetime of issued tokens when a scenario sets none.
pub const LONGEST_DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(5400);
/// The audience of a federated credential's token, when a scenario names none.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The simulated Entra token endpoint's settings in a scenario (`"entra": { … }`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntraSpec {
    /// The tenants (IDs or domain names, compared without case) the endpoint knows; every tenant
    /// when empty. Any other answers `invalid_request` AADSTS90002.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// The app registrations that may exchange tokens; every client ID with any credential when
    /// empty. Any other answers `unauthorized_client` AADSTS700016.
    #[serde(default)]
    pub clients: Vec<ClientSpec>,
    /// How long issued tokens live (`expires_in`): a number of seconds or a string such as
    /// `"1h"`. When absent, as Entra: a random lifetime from 60 to 90 minutes for each token.
    #[serde(default, deserialize_with = "lifetime")]
    pub token_lifetime: Option<Duration>,
    /// When true, the simulated Graph accepts only bearer tokens this endpoint issued and that
    /// have not expired, and answers 401 `InvalidAuthenticationToken` to any other.
    #[serde(default)]
    pub require_issued_tokens: bool,
    /// Scripted answers to well-formed exchanges, tried in order; the first that matches and has
    /// uses left applies.
    #[serde(default)]
    pub rules: Vec<EntraRule>,
}

/// An app registration the token endpoint knows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientSpec {
    /// Its application (client) ID.
    pub id: String,
    /// Its client secret. When set, an exchange may prove the client with exactly this
    /// `client_secret`; without it, only a `client_assertion` is accepted.
    #[serde(default)]
    pub secret: Option<String>,
    /// Its certificates, in PEM. A `client_assertion` whose `iss` is the client ID is checked as
    /// Entra checks it: `aud` the token endpoint called, `iss` = `sub` = the client ID, `exp` and
    /// `nbf`, an `x5t#S256` of one of these certificates, and a PS256 or RS256 signature by its
    /// key.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Its federated credentials. A `client_assertion` whose `iss` is not the client ID is a
    /// federated token: its `iss` and `sub` must match one of these, its `aud` the credential's
    /// audience, and it must not have expired. (Its signature is not checked: the simulator cannot
    /// fetch the issuer's keys.)
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredentialSpec>,
}

/// A federated identity credential of an app registration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FederatedCredentialSpec {
    /// The token's issuer, such as the cluster's OIDC issuer URL.
    pub issuer: String,
    /// The token's subject, such as `system:serviceaccount:<namespace>:<service account>`.
    pub subject: String,
    /// The token's audience; `api://AzureADTokenExchange` when absent.
    #[serde(default = "token_exchange_audience")]
    pub audience: String,
}

fn token_exchange_audience() -> String {
    TOKEN_EXCHANGE_AUDIENCE.to_owned()
}

/// A scripted answer of the token endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntraRule {
    /// The tenant it applies to (without case); every tenant when absent.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The client ID it applies to; every client when absent.
    #[serde(default)]
    pub client: Option<String>,
    /// The caller's token (`assertion`) it applies to; every token when absent. Lets a scenario
    /// give one test user a claims challenge and the others a token.
    #[serde(default)]
    pub assertion: Option<String>,
    /// The HTTP status to answer with. A 2xx (or no status and no `error`) issues a token; an
    /// error status answers Entra's JSON error.
    #[serde(default, deserialize_with = "http_status")]
    pub status: Option<u16>,
    /// The OAuth error (`invalid_grant`, `interaction_required`, …); a usual one for the status
    /// when absent. With an error and no status, the status is 401 for `invalid_client`, 500 for
    /// `server_error`, 503 for `temporarily_unavailable` and 400 otherwise.
    #[serde(default, deserialize_with = "oauth_error")]
    pub error: Option<String>,
    /// The `AADSTS` numbers in `error_codes`; usual ones for the error when absent.
    #[serde(default)]
    pub error_codes: Option<Vec<u32>>,
    /// The text of `error_description` before Entra's trace lines; a usual one when absent.
    #[serde(default)]
    pub description: Option<String>,
    /// `suberror`, such as `consent_required`.
    #[serde(default)]
    pub suberror: Option<String>,
    /// `claims`: the claims challenge, a JSON object sent as a string, as Entra does for
    /// Conditional Access (`interaction_required`).
    #[serde(default, deserialize_with = "claims")]
    pub claims: Option<String>,
    /// `Retry-After` on an error: a number of seconds or a string sent as it is.
    #[serde(default, deserialize_with = "retry_after")]
    pub retry_after: Option<String>,
    /// How long to wait before answering: a number of seconds or a string such as `"3s"`.
    #[serde(default, deserialize_with = "delay")]
    pub delay: Option<Duration>,
    /// The `expires_in` of the token issued, in seconds, instead of the scenario's lifetime: for
    /// tests of expiry (`0` issues a token that has already expired).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Applies to the first `times` matching exchanges only; to every one when absent.
    #[serde(default)]
    pub times: Option<u64>,
}

fn lifetime<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let lifetime = delay(deserializer)?.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    if lifetime.as_secs() == 0 {
        return Err(D::Error::custom(
            "tokenLifetime must be at least one second",
        ));
    }
    Ok(Some(lifetime))
}

/// An OAuth error code: `error` in RFC 6749 is printable ASCII without `"` and `\`.
fn oauth_error<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let error = String::deserialize(deserializer)?;
    let valid = !error.is_empty()
        && error
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e));
    if !valid {
        return Err(D::Error::custom(format!(
            "error {error:?} is not an OAuth error code"
        )));
    }
    Ok(Some(error))
}

/// A claims challenge: it must be a JSON object, which Entra sends as a string.
fn claims<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let claims = String::deserialize(deserializer)?;
    match serde_json::from_str::<serde_json::Value>(&claims) {
        Ok(serde_json::Value::Object(_)) => Ok(Some(claims)),
        _ => Err(D::Error::custom(
            "claims must be a JSON object written as a string",
        )),
    }
}
