//! Feeds arbitrary bytes to every parser that sees input from outside: the `authorization`
//! value, the request IDs (and the URLs they become), `grpc-timeout`, Graph's `Retry-After`, error
//! bodies and print jobs, Entra ID's token answers and errors, listen addresses, Graph base URLs,
//! Entra authorities and simulator scenarios. Besides "no panic",
//! it checks the one property that matters most: a valid ID pair always makes a URL with exactly
//! one path segment per ID, and no query or fragment.

#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use printjob_gateway::{
    auth::BearerToken,
    entra::{EntraAuthority, EntraRejection, issued_token},
    graph::{GraphBaseUrl, GraphRejection, PrintJobStatus, parse_retry_after},
    proto::CancelRequest,
    request::{CancelTarget, caller_timeout},
    server::ListenAddr,
    simulator::Scenario,
};

fuzz_target!(|data: &[u8]| {
    let _ = BearerToken::parse(data);

    let text = String::from_utf8_lossy(data);
    let (printer_id, rest) = text.split_once('\n').unwrap_or((&text, "1"));
    let (print_job_id, share_id) = rest.split_once('\n').unwrap_or((rest, ""));
    let request = CancelRequest {
        printer_id: printer_id.to_owned(),
        print_job_id: print_job_id.to_owned(),
        share_id: share_id.to_owned(),
    };
    if let Ok(target) = CancelTarget::try_from(request) {
        let base = GraphBaseUrl::parse("https://graph.microsoft.com/v1.0").unwrap();
        let url = base.cancel_url(&target);
        let path = url.strip_prefix("https://graph.microsoft.com").unwrap();
        assert_eq!(path.split('/').count(), 8, "{url}");
        assert!(!path.contains('?') && !path.contains('#'), "{url}");
        let read = base.job_status_uri(&target);
        assert_eq!(read.path().split('/').count(), 7, "{read}");
        assert_eq!(read.query(), Some("$select=status"), "{read}");
    }

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let _ = parse_retry_after(
            &value,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(data) {
            metadata.insert("grpc-timeout", value);
            let _ = caller_timeout(&metadata);
        }
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", value.clone());
        headers.insert("request-id", value);
        let _ = GraphRejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            data,
            SystemTime::now(),
        );
    }
    let _ = GraphRejection::new(
        StatusCode::NOT_FOUND,
        &HeaderMap::new(),
        data,
        SystemTime::now(),
    );
    if let Some(status) = PrintJobStatus::from_json(data) {
        assert!(status.state.len() <= 64, "{status:?}");
    }

    let _ = issued_token(data);
    let _ = BearerToken::from_token(&text);
    let rejection = EntraRejection::new(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        data,
        SystemTime::now(),
    );
    let _ = (rejection.kind(), rejection.aadsts());
    if let Ok(authority) = EntraAuthority::parse(&text) {
        let _ = authority.token_endpoint(&text);
    }

    let _ = text.parse::<ListenAddr>();
    let _ = GraphBaseUrl::parse(&text);
    let _ = Scenario::parse(&text, "fuzz");
});
