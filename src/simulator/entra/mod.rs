//! The simulated Microsoft Entra token endpoint, for the gateway's on-behalf-of exchange:
//! `POST /{tenant}/oauth2/v2.0/token` on the same server as the simulated Graph. It checks the
//! form as the identity platform documents it, issues opaque tokens that expire, answers errors
//! in Entra's JSON shape, and can be scripted (`"entra"` in a scenario).
//!
//! Like the Graph side, it is written from Microsoft's documentation, independently of the
//! gateway's exchange code, so that a misreading in one is not mirrored in the other.

mod model;
pub mod scenario;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

pub(crate) use self::model::{Entra, Refusal};

/// The demo's caller token for the on-behalf-of exchange: an unsigned JWT (`{"sub":"demo-user"}`),
/// since the gateway exchanges nothing that is not shaped as a JWT.
pub const DEMO_USER_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJkZW1vLXVzZXIifQ.";
/// The demo's user who gets a Conditional Access claims challenge (`{"sub":"mfa-user"}`).
pub const MFA_USER_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtZmEtdXNlciJ9.";
/// The demo's user for whom nobody consented (`{"sub":"unconsented-user"}`).
pub const UNCONSENTED_USER_TOKEN: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1bmNvbnNlbnRlZC11c2VyIn0.";
use self::model::{EntraFailure, Outcome, RequestContext, TokenForm};
use super::{Simulator, lock};

/// What `GET /__requests` shows of one token exchange. Secrets are never kept: of the caller's
/// token, the client assertion and the issued token only a SHA-256 prefix, of a client secret
/// only its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The tenant named in the path, decoded.
    pub tenant: String,
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `requested_token_use`.
    pub requested_token_use: Option<String>,
    /// Which client credential came: `clientSecret`, `clientAssertion`, `none`, or `both`.
    pub credential: Credential,
    /// `client_assertion_type`.
    pub client_assertion_type: Option<String>,
    /// The first 16 hex digits of the SHA-256 of `assertion` (the caller's token).
    pub assertion_sha256: Option<String>,
    /// The first 16 hex digits of the SHA-256 of `client_assertion`.
    pub client_assertion_sha256: Option<String>,
    /// The length in bytes of `client_secret`.
    pub client_secret_length: Option<usize>,
    /// The `error` answered.
    pub error: Option<String>,
    /// The first 16 hex digits of the SHA-256 of the token issued.
    pub issued_token_sha256: Option<String>,
    /// The `expires_in` answered.
    pub expires_in: Option<u64>,
    /// The `client-request-id` header, when sent.
    pub client_request_id: Option<String>,
    /// The `x-ms-lib-capability` header, when sent.
    pub lib_capability: Option<String>,
}

/// The client credential an exchange presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Credential {
    /// `client_secret`.
    ClientSecret,
    /// `client_assertion` (a certificate-signed or a federated JWT).
    ClientAssertion,
    /// Neither.
    None,
    /// Both, which Entra refuses.
    Both,
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    State(simulator): State<Simulator>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = TokenForm::parse(&body);
    let mut exchange = TokenExchange::new(&tenant, &form);
    exchange.client_request_id = headers
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    exchange.lib_capability = headers
        .get("x-ms-lib-capability")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    });
    let context = RequestContext {
        endpoint: host.map(|host| format!("{host}{}", uri.path())),
        retry_after_capable: exchange
            .lib_capability
            .as_deref()
            .is_some_and(|capability| capability.split(',').any(|c| c.trim() == "retry-after")),
    };
    let plan = lock(&simulator.shared.entra).exchange_in(&tenant, &form, Instant::now(), &context);
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = match plan.outcome {
        Outcome::Issued(issued) => {
            exchange.issued_token_sha256 = Some(sha256_prefix(&issued.access_token));
            exchange.expires_in = Some(issued.expires_in);
            Json(serde_json::json!({
                "token_type": "Bearer",
                "scope": issued.scope,
                "expires_in": issued.expires_in,
                "ext_expires_in": issued.expires_in,
                "access_token": issued.access_token,
            }))
            .into_response()
        }
        Outcome::Failed(failure) => {
            exchange.error = Some(failure.error.clone());
            error_response(failure, &headers)
        }
    };
    let answer = response.headers_mut();
    // As Entra's token endpoint: tokens are never cached on the way.
    answer.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    answer.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response.extensions_mut().insert(exchange);
    response
}

/// Why the simulated Graph refuses a token, as Graph words it.
pub(crate) fn refusal_message(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::NotIssued => "Access token validation failure. Invalid audience.",
        Refusal::Expired => "Lifetime validation failed, the token is expired.",
    }
}

/// The first 16 hex digits of the SHA-256 of `secret`: enough to match it in a test, too little
/// to be of use to anyone else.
pub fn sha256_prefix(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Entra's error body: `error`, `error_description` with the trace lines, `error_codes`,
/// `timestamp`, `trace_id`, `correlation_id` (the caller's `client-request-id` when it sent
/// one), and `suberror` and `claims` when set.
fn error_response(failure: EntraFailure, request: &HeaderMap) -> Response {
    let trace_id = uuid::Uuid::new_v4().to_string();
    let correlation_id = request
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let timestamp = timestamp(SystemTime::now());
    let code = failure
        .error_codes
        .first()
        .map_or_else(String::new, |code| format!("AADSTS{code}: "));
    let mut body = serde_json::json!({
        "error": failure.error,
        "error_description": format!(
            "{code}{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            failure.description
        ),
        "error_codes": failure.error_codes,
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": "https://login.microsoftonline.com/error",
    });
    if let Some(suberror) = failure.suberror {
        body["suberror"] = suberror.into();
    }
    if let Some(claims) = failure.claims {
        body["claims"] = claims.into();
    }
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(retry_after) = failure
        .retry_after
        .and_then(|value| HeaderValue::try_from(value).ok())
    {
        headers.insert(header::RETRY_AFTER, retry_after);
    }
    for (name, value) in [
        ("x-ms-request-id", trace_id),
        ("client-request-id", correlation_id),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    response
}

/// Entra's `timestamp`: `2026-11-29 21:16:26Z`, in UTC.
fn timestamp(now: SystemTime) -> String {
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, time) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

// === impl TokenExchange ===

impl TokenExchange {
    /// What the form shows, before it is answered.
    fn new(tenant: &str, form: &TokenForm) -> Self {
        let field = |name: &str| form.get(name).map(str::to_owned);
        let credential = match (
            form.get("client_secret").is_some(),
            form.get("client_assertion").is_some(),
        ) {
            (true, true) => Credential::Both,
            (true, false) => Credential::ClientSecret,
            (false, true) => Credential::ClientAssertion,
            (false, false) => Credential::None,
        };
        Self {
            tenant: tenant.to_owned(),
            grant_type: field("grant_type"),
            client_id: field("client_id"),
            scope: field("scope"),
            requested_token_use: field("requested_token_use"),
            credential,
            client_assertion_type: field("client_assertion_type"),
            assertion_sha256: form.get("assertion").map(sha256_prefix),
            client_assertion_sha256: form.get("client_assertion").map(sha256_prefix),
            client_secret_length: form.get("client_secret").map(str::len),
            error: None,
            issued_token_sha256: None,
            expires_in: None,
            client_request_id: None,
            lib_capability: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_in_entras_format() {
        let cases = [
            (0, "1970-01-01 00:00:00Z"),
            (951_782_400, "2000-02-29 00:00:00Z"),
            (1_795_987_386, "2026-11-29 21:23:06Z"),
            (4_107_542_399, "2100-02-28 23:59:59Z"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                timestamp(UNIX_EPOCH + Duration::from_secs(seconds)),
                expected
            );
        }
    }

    #[test]
    fn a_sha256_prefix_is_16_hex_digits_of_the_digest() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(sha256_prefix("abc"), "ba7816bf8f01cfea");
    }
}
