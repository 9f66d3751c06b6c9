//! What Entra ID's token endpoint answers: a token, or an OAuth 2.0 error with Entra's
//! `AADSTS` codes. Answers are read from a bounded body and never kept or logged whole.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::{
    auth::BearerToken,
    egress::{self, bounded_identifier, bounded_message},
};

/// The longest `error`, `suberror`, trace or correlation ID kept, in bytes.
const MAX_IDENTIFIER_LEN: usize = 128;
/// The longest `claims` challenge passed to the caller, in bytes. Conditional Access challenges
/// are a few hundred bytes; their base64 in a `www-authenticate` trailer must stay well inside
/// the 8 KiB of metadata that gRPC clients accept by default. A longer one is not cut (a cut one
/// is useless): the caller is told that there was one and that it was too large.
pub const MAX_CLAIMS_LEN: usize = 4 * 1024;
/// The longest lifetime believed of an issued token: Entra's longest (a continuous access
/// evaluation token lives 20 to 28 hours). A longer `expires_in` is cut to it, so that no
/// answer can make the cache keep a token for ever or overflow a clock.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(28 * 60 * 60);

/// A token Entra ID issued.
#[derive(Debug)]
pub struct IssuedToken {
    /// The access token for Graph, ready to send.
    pub token: BearerToken,
    /// How long it is valid from when Entra answered.
    pub expires_in: Duration,
}

/// Why an answer with a 2xx status is not a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedAnswer {
    /// The body is not the JSON of a token answer.
    #[error("the answer is not a token response")]
    NotJson,
    /// `token_type` is not `Bearer`.
    #[error("the token is not a bearer token")]
    NotBearer,
    /// `access_token` is missing or cannot be sent as a bearer token.
    #[error("the answer has no usable access_token")]
    NoToken,
    /// `expires_in` is missing or not a number of seconds.
    #[error("the answer has no usable expires_in")]
    NoExpiry,
    /// The body is larger than the gateway reads.
    #[error("the answer is larger than {} bytes", super::ANSWER_LIMIT)]
    TooLarge,
}

/// A non-2xx answer from Entra ID: its OAuth 2.0 error and the parts the caller and the logs need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraRejection {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OAuth 2.0 `error`, such as `invalid_grant`.
    pub error: Option<String>,
    /// The first of `error_codes`: the number of the `AADSTS` code, such as 65001.
    pub code: Option<u32>,
    /// `suberror`, such as `consent_required`.
    pub suberror: Option<String>,
    /// `error_description`, bounded; for the logs only, since it names the app and the tenant.
    pub description: Option<String>,
    /// `claims`: the raw JSON of a claims challenge (Conditional Access), as Entra sent it.
    pub claims: Option<String>,
    /// `trace_id`, for Microsoft support.
    pub trace_id: Option<String>,
    /// `correlation_id`, for Microsoft support.
    pub correlation_id: Option<String>,
    /// How long Entra asks the gateway to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Whether Entra sent a `claims` challenge longer than [`MAX_CLAIMS_LEN`], which is not
    /// passed on.
    pub claims_too_large: bool,
    /// The `authorization_uri` of the challenge passed to the caller: the authorize endpoint of
    /// the configured authority and tenant.
    pub authorization_uri: Option<String>,
}

/// What a rejection means for the caller, from Entra's `error`, `suberror` and codes (never from
/// the description's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The caller's token cannot be exchanged: expired, revoked, or not issued for this app.
    InvalidGrant,
    /// The user must interact: sign in again, MFA, or a Conditional Access policy.
    InteractionRequired,
    /// The user or an administrator has not consented to the app calling Graph (AADSTS65001).
    ConsentRequired,
    /// Entra refused the gateway's own client credential (`invalid_client`,
    /// `unauthorized_client`).
    ClientRejected,
    /// Entra refused the gateway's request for another reason (a wrong tenant, scope or
    /// setting): nothing the caller can fix.
    RequestRejected,
    /// Entra throttles: HTTP 429, or AADSTS50196 (the same request repeated too often, which
    /// Entra answers with `invalid_grant` to break a loop).
    Throttled,
    /// Entra failed or is temporarily unavailable (HTTP 5xx, `temporarily_unavailable`).
    Unavailable,
}

/// `AADSTS` codes that refine an `invalid_request` into a refusal of the caller's token, not of
/// the gateway's request: 50027 (a malformed token), 50013, 500131 (wrong audience), 500133
/// (expired). Numbers only refine: Microsoft warns that they change.
const CALLER_TOKEN_CODES: [u32; 4] = [50027, 50013, 500131, 500133];
/// The `AADSTS` code that refines an `invalid_grant` into missing consent.
const CONSENT_CODE: u32 = 65001;
/// AADSTS50196, LoopDetected: "too many of the same request in too short a period". Entra
/// breaks a client's retry loop with it; MSAL reports it as throttling, and so does the gateway.
const LOOP_DETECTED_CODE: u32 = 50196;
/// AADSTS70021: no federated credential matches the presented token. Right after a federated
/// credential is created Entra answers this until it has propagated, and Microsoft recommends
/// retrying.
const FEDERATION_PENDING_CODE: u32 = 70021;
/// `suberror` values that ask the user to act (msal-common's list): a claims challenge or
/// interaction, whatever `error` says.
const USER_ACTION_SUBERRORS: [&str; 4] = [
    "basic_action",
    "additional_action",
    "message_only",
    "user_password_expired",
];

#[derive(Deserialize)]
struct TokenBody {
    token_type: Option<String>,
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Default, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<serde_json::Value>,
    suberror: Option<String>,
    claims: Option<String>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// Reads a 2xx answer: the token and its lifetime. `expires_in` may be a number or a string of
/// digits: the v2 endpoint sends a number, older ones and some proxies a string.
pub fn issued_token(body: &[u8]) -> Result<IssuedToken, MalformedAnswer> {
    let body: TokenBody = serde_json::from_slice(body).map_err(|_| MalformedAnswer::NotJson)?;
    if !body
        .token_type
        .as_deref()
        .is_some_and(|kind| kind.eq_ignore_ascii_case("bearer"))
    {
        return Err(MalformedAnswer::NotBearer);
    }
    let token = body
        .access_token
        .as_deref()
        .and_then(|token| BearerToken::from_token(token).ok())
        .ok_or(MalformedAnswer::NoToken)?;
    let seconds = match body.expires_in {
        Some(serde_json::Value::Number(number)) => number.as_u64(),
        Some(serde_json::Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    };
    // A number past u64 (or a fraction) is malformed; a representable one is clamped.
    let expires_in =
        Duration::from_secs(seconds.ok_or(MalformedAnswer::NoExpiry)?).min(MAX_TOKEN_LIFETIME);
    Ok(IssuedToken { token, expires_in })
}

// === impl EntraRejection ===

impl EntraRejection {
    /// Reads a rejection from Entra's status, headers and (the first bytes of) its body. A body
    /// that is not Entra's JSON, such as a proxy's HTML page, reads as an empty one: it leaves
    /// only the status and `Retry-After`.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Self {
        let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_default();
        let identifier = |text: Option<String>| {
            text.and_then(|text| bounded_identifier(text, MAX_IDENTIFIER_LEN))
        };
        Self {
            status,
            error: identifier(body.error),
            code: body
                .error_codes
                .first()
                .and_then(serde_json::Value::as_u64)
                .and_then(|code| u32::try_from(code).ok()),
            suberror: identifier(body.suberror),
            description: body
                .error_description
                .map(bounded_message)
                .filter(|text| !text.is_empty()),
            claims_too_large: body
                .claims
                .as_ref()
                .is_some_and(|claims| claims.len() > MAX_CLAIMS_LEN),
            claims: body
                .claims
                .filter(|claims| !claims.is_empty() && claims.len() <= MAX_CLAIMS_LEN),
            trace_id: identifier(body.trace_id),
            correlation_id: identifier(body.correlation_id),
            retry_after: egress::retry_after(headers, now),
            authorization_uri: None,
        }
    }

    /// What the rejection means for the caller, as MSAL decides it: the status, then a
    /// `claims` challenge or a user-action `suberror` (interaction, whatever `error` says), then
    /// `error`; `AADSTS` numbers only refine the `error` (Microsoft: "error codes are subject to
    /// change").
    pub fn kind(&self) -> RejectionKind {
        let error = self.error.as_deref().unwrap_or_default();
        let suberror = self.suberror.as_deref().unwrap_or_default();
        let code = self.code.unwrap_or_default();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            return RejectionKind::Throttled;
        }
        if self.status.is_server_error() || error == "temporarily_unavailable" {
            return RejectionKind::Unavailable;
        }
        if self.claims.is_some() || self.claims_too_large {
            return RejectionKind::InteractionRequired;
        }
        if error == "consent_required" || suberror == "consent_required" {
            return RejectionKind::ConsentRequired;
        }
        if matches!(error, "interaction_required" | "login_required")
            || USER_ACTION_SUBERRORS.contains(&suberror)
        {
            return RejectionKind::InteractionRequired;
        }
        match error {
            "invalid_grant" if code == LOOP_DETECTED_CODE => RejectionKind::Throttled,
            "invalid_grant" if code == CONSENT_CODE => RejectionKind::ConsentRequired,
            "invalid_grant" => RejectionKind::InvalidGrant,
            "invalid_request" if CALLER_TOKEN_CODES.contains(&code) => RejectionKind::InvalidGrant,
            "invalid_client" | "unauthorized_client" => RejectionKind::ClientRejected,
            _ if code == LOOP_DETECTED_CODE => RejectionKind::Throttled,
            _ => RejectionKind::RequestRejected,
        }
    }

    /// Whether Entra has not yet seen a federated credential that was just created
    /// (AADSTS70021 refining `invalid_client` or `invalid_request`): worth retrying.
    pub fn is_federation_pending(&self) -> bool {
        self.code == Some(FEDERATION_PENDING_CODE)
            && matches!(
                self.error.as_deref(),
                Some("invalid_client" | "invalid_request" | "unauthorized_client")
            )
    }

    /// The `AADSTS` code, such as `AADSTS65001`, when Entra sent one.
    pub fn aadsts(&self) -> Option<String> {
        self.code.map(|code| format!("AADSTS{code}"))
    }
}

impl std::fmt::Display for EntraRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entra ID answered HTTP {}", self.status.as_u16())?;
        if let Some(error) = &self.error {
            write!(f, " {error}")?;
        }
        if let Some(code) = self.code {
            write!(f, " (AADSTS{code})")?;
        }
        Ok(())
    }
}

// === impl RejectionKind ===

impl RejectionKind {
    /// Whether the request may succeed when tried again.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn expires_in_is_a_number_or_a_string() {
        for (expires_in, expected) in [
            ("3599", Ok(3599)),
            ("\"3599\"", Ok(3599)),
            ("\" 60 \"", Ok(60)),
            ("0", Ok(0)),
            ("9223372036854775807", Ok(MAX_TOKEN_LIFETIME.as_secs())),
            ("\"18446744073709551615\"", Ok(MAX_TOKEN_LIFETIME.as_secs())),
            ("18446744073709551616", Err(MalformedAnswer::NoExpiry)),
            ("1e300", Err(MalformedAnswer::NoExpiry)),
            ("-1", Err(MalformedAnswer::NoExpiry)),
            ("\"soon\"", Err(MalformedAnswer::NoExpiry)),
            ("1.5", Err(MalformedAnswer::NoExpiry)),
            ("null", Err(MalformedAnswer::NoExpiry)),
        ] {
            let body = format!(
                r#"{{"token_type":"Bearer","scope":"https://graph.microsoft.com/.default","expires_in":{expires_in},"ext_expires_in":3599,"access_token":"eyJ0.eyJ1.c2ln"}}"#
            );
            let actual = issued_token(body.as_bytes()).map(|issued| issued.expires_in.as_secs());
            assert_eq!(actual, expected, "expires_in {expires_in}");
        }
    }

    #[test]
    fn a_token_answer_must_carry_a_bearer_token() {
        let cases = [
            (
                r#"{"token_type":"bearer","expires_in":1,"access_token":"a.b"}"#,
                None,
            ),
            (
                r#"{"token_type":"pop","expires_in":1,"access_token":"a.b"}"#,
                Some(MalformedAnswer::NotBearer),
            ),
            (
                r#"{"token_type":"Bearer","expires_in":1}"#,
                Some(MalformedAnswer::NoToken),
            ),
            (
                r#"{"token_type":"Bearer","expires_in":1,"access_token":"a b"}"#,
                Some(MalformedAnswer::NoToken),
            ),
            ("<html></html>", Some(MalformedAnswer::NotJson)),
        ];
        for (body, expected) in cases {
            assert_eq!(issued_token(body.as_bytes()).err(), expected, "{body}");
        }
    }

    fn rejection(status: u16, body: serde_json::Value) -> EntraRejection {
        EntraRejection::new(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            now(),
        )
    }

    #[test]
    fn rejections_are_classified_by_error_suberror_and_code() {
        use RejectionKind::*;
        let cases = [
            (400, "invalid_grant", None, 500133, InvalidGrant),
            (400, "invalid_grant", None, 50013, InvalidGrant),
            (400, "invalid_request", None, 50027, InvalidGrant),
            (
                400,
                "interaction_required",
                None,
                50079,
                InteractionRequired,
            ),
            (
                400,
                "invalid_grant",
                Some("consent_required"),
                65001,
                ConsentRequired,
            ),
            (400, "invalid_grant", None, 65001, ConsentRequired),
            (
                400,
                "invalid_grant",
                Some("basic_action"),
                50076,
                InteractionRequired,
            ),
            (
                400,
                "invalid_grant",
                Some("additional_action"),
                0,
                InteractionRequired,
            ),
            (400, "login_required", None, 0, InteractionRequired),
            (400, "invalid_grant", None, 50196, Throttled),
            (400, "invalid_grant", None, 50079, InvalidGrant),
            (400, "consent_required", None, 0, ConsentRequired),
            (401, "invalid_client", None, 7000215, ClientRejected),
            (400, "unauthorized_client", None, 700016, ClientRejected),
            (400, "invalid_request", None, 90002, RequestRejected),
            (400, "invalid_scope", None, 70011, RequestRejected),
            (429, "", None, 0, Throttled),
            (500, "server_error", None, 0, Unavailable),
            (503, "", None, 0, Unavailable),
            (400, "temporarily_unavailable", None, 0, Unavailable),
        ];
        for (status, error, suberror, code, expected) in cases {
            let body = serde_json::json!({
                "error": error,
                "error_description": format!("AADSTS{code}: something. Trace ID: t"),
                "error_codes": [code],
                "suberror": suberror,
                "timestamp": "2026-11-29 10:00:00Z",
                "trace_id": "t",
                "correlation_id": "c",
            });
            let rejection = rejection(status, body);
            assert_eq!(rejection.kind(), expected, "{status} {error} {code}");
            assert_eq!(rejection.code, Some(code));
        }
    }

    #[test]
    fn claims_make_a_challenge_whatever_the_error_and_a_long_one_is_reported() {
        let claims = r#"{"access_token":{"polids":{"essential":true,"values":["p"]}}}"#;
        for error in ["invalid_grant", "interaction_required", "invalid_request"] {
            let answer = rejection(
                400,
                serde_json::json!({"error": error, "error_codes": [50158], "claims": claims}),
            );
            assert_eq!(answer.kind(), RejectionKind::InteractionRequired, "{error}");
            assert_eq!(answer.claims.as_deref(), Some(claims));
        }
        let long = format!(
            r#"{{"access_token":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_CLAIMS_LEN)
        );
        let answer = rejection(
            400,
            serde_json::json!({"error": "invalid_grant", "claims": long}),
        );
        assert_eq!(
            (answer.kind(), answer.claims, answer.claims_too_large),
            (RejectionKind::InteractionRequired, None, true)
        );
        let pending = rejection(
            401,
            serde_json::json!({"error": "invalid_client", "error_codes": [70021]}),
        );
        assert!(pending.is_federation_pending());
        assert_eq!(pending.kind(), RejectionKind::ClientRejected);
    }

    #[test]
    fn a_claims_challenge_is_kept_raw_and_other_bodies_are_ignored() {
        let claims = r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}}"#;
        let rejection = rejection(
            400,
            serde_json::json!({"error": "interaction_required", "error_codes": [50079], "claims": claims}),
        );
        assert_eq!(rejection.claims.as_deref(), Some(claims));
        assert_eq!(rejection.aadsts().as_deref(), Some("AADSTS50079"));

        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let html = EntraRejection::new(StatusCode::BAD_GATEWAY, &headers, b"<html>", now());
        assert_eq!(html.error, None);
        assert_eq!(html.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(html.kind(), RejectionKind::Unavailable);
        assert_eq!(html.to_string(), "Entra ID answered HTTP 502");
    }
}
