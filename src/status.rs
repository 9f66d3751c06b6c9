//! The one place that decides which gRPC status a caller sees, and the one owner of facts about
//! gRPC codes: the HTTP-to-gRPC table, each [`CancelError`]'s code, the codes' names (for metrics
//! and logs), which codes mean the server failed, and the rich error details
//! (`google.rpc.ErrorInfo`, `RequestInfo`, `RetryInfo`, `BadRequest`) that go with every error.
//! What a `CancelError` says about itself (Graph's HTTP status and request ID, the suggested
//! wait) lives beside it in [`crate::error`].

use std::{collections::HashMap, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use http::StatusCode;
use tonic::{
    Code, Status,
    metadata::{AsciiMetadataValue, MetadataMap},
};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    auth::AuthError,
    entra::{EntraError, RejectionKind},
    error::CancelError,
    graph::{GraphError, GraphRejection},
    request::ClientRequestId,
};

/// `ErrorInfo.domain` of errors that Graph reported.
pub const GRAPH_DOMAIN: &str = "graph.microsoft.com";
/// `ErrorInfo.domain` of errors that Entra ID reported.
pub const ENTRA_DOMAIN: &str = "login.microsoftonline.com";
/// `ErrorInfo.domain` of errors that the gateway itself reports.
pub const GATEWAY_DOMAIN: &str = "printjob-gateway";

/// Response metadata: Graph's request ID, whenever Graph answered.
pub const REQUEST_ID: &str = "request-id";
/// Response metadata: the `client-request-id` sent to Graph, on every answer.
pub const CLIENT_REQUEST_ID: &str = "client-request-id";
/// Response metadata: Graph's authentication challenge (on 401, and a claims challenge on 403).
pub const WWW_AUTHENTICATE: &str = "www-authenticate";

/// The longest `www-authenticate` challenge passed on to a caller. Graph's and Entra ID's
/// challenges, a claims challenge included, are a few hundred bytes, and the longest claims
/// challenge the token exchange keeps (4 KiB, base64-encoded) fits. gRPC clients refuse a response
/// whose metadata is larger than they allow (8 KiB in all by default for grpcio and grpc-java,
/// which then answer RESOURCE_EXHAUSTED instead of the real status), and the status details travel
/// in the same trailers. A longer challenge is dropped with a log line: cut, it would no longer
/// parse.
pub const MAX_WWW_AUTHENTICATE_BYTES: usize = 6 * 1024;

/// Maps the HTTP status Graph answered with to the gRPC code the caller sees.
///
/// Sources: the HTTP mappings in `google/rpc/code.proto` (400 INVALID_ARGUMENT, 401
/// UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 409 ABORTED or ALREADY_EXISTS, 429
/// RESOURCE_EXHAUSTED, 499 CANCELLED, 500 INTERNAL, 501 UNIMPLEMENTED, 503 UNAVAILABLE, 504
/// DEADLINE_EXCEEDED) and Microsoft Graph's "Microsoft Graph error responses and resource types"
/// page, which says what each status means for Graph. Where they differ, the meaning for this one
/// call wins: 409 Conflict is a state the job is in, which is FAILED_PRECONDITION (retrying will
/// not help), not ABORTED (a 4xx after which the job reads neither cancelable nor canceled is
/// FAILED_PRECONDITION whatever its status, and a 403 with a claims challenge is UNAUTHENTICATED:
/// see `CancelError::code`); 504 is Graph's gateway timing out, not the caller's deadline, so it
/// is UNAVAILABLE; 405, 406, 411 and 415 can only mean the gateway built a wrong
/// request, so they are INTERNAL. Redirects are never followed and so land in UNKNOWN.
/// docs/status.md publishes this same table.
pub fn code_for_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 | 413 | 414 | 422 | 431 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 410 => Code::NotFound,
        402 | 409 | 412 | 423 => Code::FailedPrecondition,
        429 | 507 | 509 => Code::ResourceExhausted,
        405 | 406 | 411 | 415 | 500 => Code::Internal,
        501 => Code::Unimplemented,
        502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Maps a failed on-behalf-of exchange to the gRPC code the caller sees, the `ErrorInfo` reason
/// and the status message.
///
/// Sources: Microsoft's "OAuth 2.0 on-behalf-of flow" and "Microsoft Entra authentication and
/// authorization error codes" pages, and `google/rpc/code.proto`. `invalid_grant` (a token
/// expired, revoked or issued for another app) and `interaction_required` (sign-in again, MFA,
/// Conditional Access) are about the caller's credentials: UNAUTHENTICATED, so that the caller
/// gets a new token or passes the claims challenge up. Missing consent (AADSTS65001) is a
/// permission the user or an administrator must grant: PERMISSION_DENIED. Entra refusing the
/// gateway's own credential or request is the gateway's configuration, which no caller can fix:
/// INTERNAL. Entra's throttling (HTTP 429, AADSTS50196) is RESOURCE_EXHAUSTED with what is left
/// of its `Retry-After`, as is the gateway's own exchange rate; failures of Entra, once the
/// retries that fit in the deadline are spent, are UNAVAILABLE. A token that is not a JWT is
/// refused as malformed credentials before any exchange.
pub fn token_exchange_outcome(error: &EntraError) -> (Code, &'static str, &'static str) {
    use Code::*;
    match error {
        EntraError::Rejected(rejection) => match rejection.kind() {
            RejectionKind::InvalidGrant => (
                Unauthenticated,
                "INVALID_GRANT",
                "Entra ID did not accept the caller's token for the on-behalf-of exchange: it is expired, revoked or not issued for this service's API; get a new token",
            ),
            RejectionKind::InteractionRequired => (
                Unauthenticated,
                "INTERACTION_REQUIRED",
                "Entra ID requires the user to sign in again or satisfy a Conditional Access policy before this service may call Graph for them; pass the www-authenticate challenge, when there is one, to the client",
            ),
            RejectionKind::ConsentRequired => (
                PermissionDenied,
                "CONSENT_REQUIRED",
                "the user or an administrator has not consented to this service's app calling Microsoft Graph; grant consent, then retry",
            ),
            RejectionKind::ClientRejected => (
                Internal,
                "ENTRA_CLIENT_REJECTED",
                "Entra ID refused the gateway's client credential: the gateway's on-behalf-of settings need fixing",
            ),
            RejectionKind::RequestRejected => (
                Internal,
                "ENTRA_REQUEST_REJECTED",
                "Entra ID refused the gateway's token request: the gateway's on-behalf-of settings need fixing",
            ),
            RejectionKind::Throttled => (
                ResourceExhausted,
                "ENTRA_THROTTLED",
                "Entra ID is throttling the gateway's token requests: retry after the RetryInfo delay",
            ),
            RejectionKind::Unavailable => (
                Unavailable,
                "ENTRA_UNAVAILABLE",
                "Entra ID could not issue a Graph token: retry later",
            ),
        },
        EntraError::Unreachable(_) => (
            Unavailable,
            "ENTRA_UNREACHABLE",
            "cannot connect to Entra ID",
        ),
        EntraError::Transport(_) => (
            Unavailable,
            "ENTRA_CONNECTION_FAILED",
            "the connection to Entra ID failed before it answered",
        ),
        EntraError::MalformedAnswer(_) => (
            Internal,
            "ENTRA_MALFORMED_ANSWER",
            "Entra ID's answer to the token request is unusable",
        ),
        EntraError::Credential(_) => (
            Unavailable,
            "CLIENT_CREDENTIAL_UNAVAILABLE",
            "the gateway cannot read its client credential: retry shortly",
        ),
        EntraError::DeadlineExceeded => (
            DeadlineExceeded,
            "TOKEN_EXCHANGE_DEADLINE_EXCEEDED",
            "the call's deadline ran out before Entra ID issued a Graph token",
        ),
        EntraError::NotAJwt => (
            Unauthenticated,
            "MALFORMED_CREDENTIALS",
            "the caller's token is not a JWT: the on-behalf-of exchange takes an access token that Entra ID issued for this service's API",
        ),
        EntraError::RateLimited { .. } => (
            ResourceExhausted,
            "TOKEN_EXCHANGE_RATE_LIMITED",
            "the gateway's rate of token exchanges with Entra ID (--token-exchange-rate) is spent: retry after the RetryInfo delay",
        ),
        EntraError::Abandoned => (
            Internal,
            "TOKEN_EXCHANGE_FAILED",
            "the token exchange ended without an outcome",
        ),
    }
}

/// The gRPC code as grpc-go and the gRPC docs name it, such as `NOT_FOUND`: the `code` label of
/// metrics and the `grpc_code` field of the access log.
pub fn code_name(code: Code) -> &'static str {
    use Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a code means the server failed, which OpenTelemetry's gRPC conventions mark as an
/// error on server spans; the others are the caller's problem.
pub fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

// === impl CancelError ===

impl CancelError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::DeadlineExceeded { .. } | Self::MessageLate { .. } => Code::DeadlineExceeded,
            // A claims challenge asks for a new token (with the claims), on 403 as on 401.
            Self::Graph {
                source: GraphError::Rejected(rejection),
                ..
            } if rejection.claims_challenge => Code::Unauthenticated,
            Self::Graph {
                source: GraphError::Rejected(rejection),
                ..
            } => code_for_http_status(rejection.status),
            // Graph refused the cancel and the job reads neither cancelable nor canceled: whatever
            // 4xx Graph chose for that, retrying will not help.
            Self::NotCancelable { .. } => Code::FailedPrecondition,
            Self::Graph { .. } => Code::Unavailable,
            // The code Graph's own answer would have had: RESOURCE_EXHAUSTED, or UNAVAILABLE
            // for a 503.
            Self::Throttled { status, .. } => code_for_http_status(*status),
            Self::TokenExchange(failure) => token_exchange_outcome(&failure.error).0,
            Self::Overloaded { .. } | Self::MessageTooLarge { .. } => Code::ResourceExhausted,
            Self::ShuttingDown => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// The status the caller sees: code, a short message, rich error details and the
    /// correlation metadata. The `RetryInfo` it suggests is at most `max_retry_delay` (the
    /// gateway's `--retry-after-max`), however long Graph's or Entra ID's `Retry-After` was.
    pub fn to_status(
        &self,
        client_request_id: &ClientRequestId,
        max_retry_delay: Duration,
    ) -> Status {
        let mut details = ErrorDetails::new();
        let mut metadata = correlation_metadata(client_request_id, self.graph_request_id());
        let message = match (self.rejection(), self) {
            (Some(rejection), _) => {
                describe_rejection(rejection, self.job_state(), &mut details, &mut metadata)
            }
            (None, Self::TokenExchange(failure)) => {
                describe_exchange_failure(&failure.error, &mut details, &mut metadata)
            }
            (None, _) => {
                let (reason, extra) = self.gateway_reason();
                details.set_error_info(reason, GATEWAY_DOMAIN, extra);
                if let Self::InvalidArgument(invalid) = self {
                    for field in std::iter::once(invalid.field).chain(invalid.other_field) {
                        details.add_bad_request_violation(field, invalid.problem);
                    }
                }
                self.gateway_message()
            }
        };
        // Graph's own Retry-After wins over the gateway's estimate; neither may tell a caller to
        // wait longer than the gateway itself would (a Retry-After of 99999999999 is 3,170 years).
        let retry_delay = self
            .rejection()
            .and_then(|rejection| rejection.retry_after)
            .or_else(|| self.retry_delay());
        if let Some(delay) = retry_delay {
            details.set_retry_info(Some(delay.min(max_retry_delay)));
        }
        details.set_request_info(
            self.graph_request_id()
                .unwrap_or(client_request_id.as_str()),
            format!("client-request-id={}", client_request_id.as_str()),
        );
        Status::with_error_details_and_metadata(self.code(), message, details, metadata)
    }

    /// `ErrorInfo.reason` and metadata of the errors the gateway reports itself.
    fn gateway_reason(&self) -> (&'static str, HashMap<String, String>) {
        let reason = match self {
            Self::Unauthenticated(AuthError::Missing) => "MISSING_CREDENTIALS",
            Self::Unauthenticated(_) => "MALFORMED_CREDENTIALS",
            Self::InvalidArgument(_) => "INVALID_FIELD",
            Self::DeadlineExceeded {
                graph_called: false,
            } => "DEADLINE_SPENT_BEFORE_CALL",
            Self::DeadlineExceeded { graph_called: true } => "GRAPH_DEADLINE_EXCEEDED",
            Self::Graph {
                source: GraphError::Unreachable(_),
                ..
            } => "GRAPH_UNREACHABLE",
            Self::Graph { .. } => "GRAPH_CONNECTION_FAILED",
            Self::Throttled { .. } => "GRAPH_THROTTLED",
            // Answered with Graph's own reason, by `describe_rejection`.
            Self::NotCancelable { .. } => "NOT_CANCELABLE",
            Self::TokenExchange(failure) => token_exchange_outcome(&failure.error).1,
            Self::Overloaded { .. } => "OVERLOADED",
            Self::MessageTooLarge { .. } => "MESSAGE_TOO_LARGE",
            Self::MessageLate { .. } => "MESSAGE_LATE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Internal => "INTERNAL_ERROR",
        };
        let mut metadata = HashMap::new();
        if let Self::InvalidArgument(invalid) = self {
            let field = match invalid.other_field {
                Some(other) => format!("{},{other}", invalid.field),
                None => invalid.field.to_owned(),
            };
            metadata.insert("field".to_owned(), field);
        }
        if let Self::Throttled { status, .. } = self {
            metadata.insert("httpStatus".to_owned(), status.as_u16().to_string());
        }
        (reason, metadata)
    }

    /// The status message of the errors the gateway reports itself. It never includes the
    /// caller's token or a raw error chain, which the logs carry instead.
    fn gateway_message(&self) -> String {
        match self {
            Self::Graph {
                source: GraphError::Unreachable(_),
                ..
            } => "cannot connect to Microsoft Graph".to_owned(),
            Self::Graph { .. } => {
                "the connection to Microsoft Graph failed before it answered".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Fills the details of a Graph rejection and returns its status message: Graph's own message
/// when it sent one. `job_state` is the job's state read after the refusal, as metadata
/// `jobState`.
fn describe_rejection(
    rejection: &GraphRejection,
    job_state: Option<&str>,
    details: &mut ErrorDetails,
    metadata: &mut MetadataMap,
) -> String {
    let mut info = HashMap::from([(
        "httpStatus".to_owned(),
        rejection.status.as_u16().to_string(),
    )]);
    if let Some(code) = &rejection.code {
        info.insert("graphErrorCode".to_owned(), code.clone());
    }
    if let Some(inner_code) = &rejection.inner_code {
        info.insert("graphInnerErrorCode".to_owned(), inner_code.clone());
    }
    if !rejection.detail_codes.is_empty() {
        info.insert(
            "graphDetailCodes".to_owned(),
            rejection.detail_codes.join(","),
        );
    }
    if let Some(job_state) = job_state {
        info.insert("jobState".to_owned(), job_state.to_owned());
    }
    let reason = rejection
        .code
        .as_deref()
        .and_then(upper_snake_case)
        .unwrap_or_else(|| format!("HTTP_{}", rejection.status.as_u16()));
    details.set_error_info(reason, GRAPH_DOMAIN, info);

    if let Some(challenge) = &rejection.www_authenticate {
        pass_on_challenge(challenge.as_bytes(), "Graph", metadata);
    }
    match &rejection.message {
        Some(message) => message.clone(),
        None => format!(
            "Microsoft Graph answered HTTP {} {}",
            rejection.status.as_u16(),
            rejection.status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_owned(),
    }
}

/// Fills the details of a failed on-behalf-of exchange and returns its status message. What
/// Entra reported goes into `ErrorInfo` (its `error`, the `AADSTS` code, the IDs Microsoft
/// support asks for); a claims challenge becomes the `www-authenticate` metadata the caller
/// passes up to its client, as the on-behalf-of page describes for a middle tier. Entra's own
/// description is logged, not sent: it names the app and the tenant.
fn describe_exchange_failure(
    error: &EntraError,
    details: &mut ErrorDetails,
    metadata: &mut MetadataMap,
) -> String {
    let (_, reason, message) = token_exchange_outcome(error);
    let mut message = message.to_owned();
    let EntraError::Rejected(rejection) = error else {
        details.set_error_info(reason, GATEWAY_DOMAIN, HashMap::new());
        return message;
    };
    let mut info = HashMap::from([(
        "httpStatus".to_owned(),
        rejection.status.as_u16().to_string(),
    )]);
    let fields = [
        ("entraError", rejection.error.clone()),
        ("aadstsCode", rejection.aadsts()),
        ("suberror", rejection.suberror.clone()),
        ("traceId", rejection.trace_id.clone()),
        ("correlationId", rejection.correlation_id.clone()),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            info.insert(key.to_owned(), value);
        }
    }
    if let Some(aadsts) = rejection.aadsts() {
        message = format!("{message} ({aadsts})");
    }
    if rejection.claims_too_large {
        info.insert(
            "claimsChallenge".to_owned(),
            format!(
                "omitted: longer than {} bytes",
                crate::entra::MAX_CLAIMS_LEN
            ),
        );
        message = format!(
            "{message}; Entra ID's claims challenge is longer than {} bytes and is not passed on: the client must sign the user in again interactively",
            crate::entra::MAX_CLAIMS_LEN
        );
    }
    details.set_error_info(reason, ENTRA_DOMAIN, info);
    if let Some(claims) = &rejection.claims {
        // The form of the identity platform's "Claims challenges" page, where
        // `authorization_uri` is required.
        let challenge = format!(
            r#"Bearer realm="", authorization_uri="{}", error="insufficient_claims", claims="{}""#,
            rejection.authorization_uri.as_deref().unwrap_or_default(),
            STANDARD.encode(claims)
        );
        pass_on_challenge(challenge.as_bytes(), "Entra ID", metadata);
    }
    message
}

/// Puts an authentication challenge from `from` into the caller's `www-authenticate` metadata,
/// unless it is longer than [`MAX_WWW_AUTHENTICATE_BYTES`] (then it is dropped, and logged) or
/// not valid metadata.
fn pass_on_challenge(challenge: &[u8], from: &'static str, metadata: &mut MetadataMap) {
    if challenge.len() > MAX_WWW_AUTHENTICATE_BYTES {
        tracing::warn!(
            from,
            bytes = challenge.len(),
            limit = MAX_WWW_AUTHENTICATE_BYTES,
            "dropped a www-authenticate challenge too long to pass on to the caller"
        );
        return;
    }
    if let Ok(challenge) = AsciiMetadataValue::try_from(challenge) {
        metadata.insert(WWW_AUTHENTICATE, challenge);
    }
}

/// The response metadata that lets a caller find the call in the gateway's and Graph's logs.
///
/// Both IDs differ on every call, so they are sent never-indexed (HPACK's "sensitive"): added to
/// HTTP/2's header tables, ours and the caller's, they would only push out the headers every
/// answer repeats and lengthen each lookup, for no entry that is ever used again.
pub fn correlation_metadata(
    client_request_id: &ClientRequestId,
    graph_request_id: Option<&str>,
) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    if let Ok(mut value) = AsciiMetadataValue::try_from(client_request_id.as_str()) {
        value.set_sensitive(true);
        metadata.insert(CLIENT_REQUEST_ID, value);
    }
    if let Some(mut value) = graph_request_id.and_then(|id| AsciiMetadataValue::try_from(id).ok()) {
        value.set_sensitive(true);
        metadata.insert(REQUEST_ID, value);
    }
    metadata
}

/// Turns a Graph error code such as `itemNotFound` or `Request_BadRequest` into an `ErrorInfo`
/// reason such as `ITEM_NOT_FOUND` or `REQUEST_BAD_REQUEST` (`[A-Z][A-Z0-9_]+[A-Z0-9]`).
fn upper_snake_case(code: &str) -> Option<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            out.push('_');
            continue;
        }
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let starts_word = c.is_ascii_uppercase()
            && previous.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(char::is_ascii_lowercase))
            });
        if starts_word {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    let mut collapsed = String::with_capacity(out.len());
    for c in out.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    let reason = collapsed.trim_matches('_');
    let valid = reason.len() >= 3 && reason.starts_with(|c: char| c.is_ascii_uppercase());
    valid.then(|| reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_correlation_ids_are_sent_never_indexed() {
        let client_request_id = ClientRequestId::random();
        let metadata = correlation_metadata(&client_request_id, Some("graph-request-7"));
        for key in [CLIENT_REQUEST_ID, REQUEST_ID] {
            let value = metadata.get(key).unwrap();
            assert!(value.is_sensitive(), "{key}");
        }
        let value = metadata.get(CLIENT_REQUEST_ID).unwrap();
        assert_eq!(value.to_str().unwrap(), client_request_id.as_str());
    }

    #[test]
    fn every_token_exchange_failure_maps_as_the_table_says() {
        use crate::entra::{EntraRejection, MalformedAnswer};
        let rejected = |status: u16, body: serde_json::Value| {
            EntraError::Rejected(Box::new(EntraRejection::new(
                StatusCode::from_u16(status).unwrap(),
                &http::HeaderMap::new(),
                body.to_string().as_bytes(),
                std::time::SystemTime::now(),
            )))
        };
        let oauth = |status, error: &str, code: u32| {
            rejected(
                status,
                serde_json::json!({"error": error, "error_codes": [code]}),
            )
        };
        let cases = [
            (
                oauth(400, "invalid_grant", 500133),
                Code::Unauthenticated,
                "INVALID_GRANT",
            ),
            (
                oauth(400, "interaction_required", 50079),
                Code::Unauthenticated,
                "INTERACTION_REQUIRED",
            ),
            (
                oauth(400, "invalid_grant", 65001),
                Code::PermissionDenied,
                "CONSENT_REQUIRED",
            ),
            (
                oauth(401, "invalid_client", 7000215),
                Code::Internal,
                "ENTRA_CLIENT_REJECTED",
            ),
            (
                oauth(400, "invalid_scope", 70011),
                Code::Internal,
                "ENTRA_REQUEST_REJECTED",
            ),
            (
                oauth(429, "", 0),
                Code::ResourceExhausted,
                "ENTRA_THROTTLED",
            ),
            (
                oauth(400, "invalid_grant", 50196),
                Code::ResourceExhausted,
                "ENTRA_THROTTLED",
            ),
            (
                EntraError::NotAJwt,
                Code::Unauthenticated,
                "MALFORMED_CREDENTIALS",
            ),
            (
                EntraError::RateLimited {
                    wait: std::time::Duration::from_secs(1),
                },
                Code::ResourceExhausted,
                "TOKEN_EXCHANGE_RATE_LIMITED",
            ),
            (oauth(503, "", 0), Code::Unavailable, "ENTRA_UNAVAILABLE"),
            (
                EntraError::Transport("reset".into()),
                Code::Unavailable,
                "ENTRA_CONNECTION_FAILED",
            ),
            (
                EntraError::MalformedAnswer(MalformedAnswer::TooLarge),
                Code::Internal,
                "ENTRA_MALFORMED_ANSWER",
            ),
            (
                EntraError::DeadlineExceeded,
                Code::DeadlineExceeded,
                "TOKEN_EXCHANGE_DEADLINE_EXCEEDED",
            ),
        ];
        for (error, code, reason) in cases {
            let (actual_code, actual_reason, message) = token_exchange_outcome(&error);
            assert_eq!((actual_code, actual_reason), (code, reason), "{error}");
            assert!(!message.is_empty() && !message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn every_http_status_maps_as_the_table_says() {
        use Code::*;
        let table: &[(&[u16], Code)] = &[
            (&[200, 201, 202, 204, 299], Ok),
            (&[400, 413, 414, 422, 431], InvalidArgument),
            (&[401], Unauthenticated),
            (&[403], PermissionDenied),
            (&[404, 410], NotFound),
            (&[402, 409, 412, 423], FailedPrecondition),
            (&[429, 507, 509], ResourceExhausted),
            (&[405, 406, 411, 415, 500], Internal),
            (&[501], Unimplemented),
            (&[502, 503, 504], Unavailable),
            (
                &[
                    100, 101, 300, 301, 302, 303, 304, 307, 308, 407, 408, 418, 451, 499, 505, 508,
                    511, 599,
                ],
                Unknown,
            ),
        ];
        for (statuses, code) in table {
            for &status in *statuses {
                let status = StatusCode::from_u16(status).unwrap();
                assert_eq!(code_for_http_status(status), *code, "HTTP {status}");
            }
        }
        // Every status from 100 to 599 has a row: none panics, and only 2xx is OK.
        for status in 100..=599 {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                code_for_http_status(status) == Ok,
                status.is_success(),
                "HTTP {status}"
            );
        }
    }

    #[test]
    fn a_job_that_cannot_be_canceled_keeps_the_refusal_and_adds_its_state() {
        let body = br#"{"error":{"code":"notAllowed","message":"Cannot cancel."}}"#;
        let mut headers = http::HeaderMap::new();
        headers.insert("request-id", "graph-409".parse().unwrap());
        let refusal = || {
            Box::new(GraphRejection::new(
                StatusCode::CONFLICT,
                &headers,
                body,
                std::time::SystemTime::now(),
            ))
        };
        let id = ClientRequestId::random();
        let max = Duration::from_secs(10);
        let plain = CancelError::from(GraphError::Rejected(refusal())).to_status(&id, max);
        let with_state = CancelError::NotCancelable {
            rejection: refusal(),
            job_state: "completed".to_owned(),
        }
        .to_status(&id, max);

        for status in [&plain, &with_state] {
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!(status.message(), "Cannot cancel.");
            assert_eq!(status.metadata().get(REQUEST_ID).unwrap(), "graph-409");
        }
        let plain = plain.get_details_error_info().unwrap();
        let with_state = with_state.get_details_error_info().unwrap();
        assert_eq!(plain.metadata.get("jobState"), None);
        assert_eq!(with_state.metadata["jobState"], "completed");
        assert_eq!(
            (with_state.reason.as_str(), with_state.domain.as_str()),
            ("NOT_ALLOWED", GRAPH_DOMAIN)
        );
        assert_eq!(with_state.metadata["httpStatus"], "409");
    }

    #[test]
    fn graph_codes_become_upper_snake_case_reasons() {
        let cases = [
            ("itemNotFound", Some("ITEM_NOT_FOUND")),
            (
                "InvalidAuthenticationToken",
                Some("INVALID_AUTHENTICATION_TOKEN"),
            ),
            ("Request_BadRequest", Some("REQUEST_BAD_REQUEST")),
            ("HTTPError", Some("HTTP_ERROR")),
            ("generalException", Some("GENERAL_EXCEPTION")),
            ("tooManyRequests2", Some("TOO_MANY_REQUESTS2")),
            ("a-b c", Some("A_B_C")),
            ("__x__", None),
            ("9lives", None),
            ("", None),
        ];
        for (code, expected) in cases {
            assert_eq!(upper_snake_case(code).as_deref(), expected, "{code}");
        }
    }
}
