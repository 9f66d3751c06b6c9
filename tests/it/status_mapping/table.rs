//! Every row of the HTTP-to-gRPC table, through a real HTTP answer, with the rich details a
//! client decodes with tonic-types.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{FakeGraph, Reply, TestGateway};

/// The table maps one answer; retries (tested in `retries`) would only repeat it.
/// Settings with one attempt per call, so that each answer is Graph's first.
fn no_retries(settings: &mut printjob_gateway::Settings) {
    settings.calls.retry.max_attempts = 1;
}

/// Every row of docs/status.md's table, with statuses a real HTTP server can send as final answers.
const TABLE: &[(&[u16], Code)] = &[
    (&[400, 413, 414, 422, 431], Code::InvalidArgument),
    (&[401], Code::Unauthenticated),
    (&[403], Code::PermissionDenied),
    (&[404, 410], Code::NotFound),
    (&[402, 409, 412, 423], Code::FailedPrecondition),
    (&[429, 507, 509], Code::ResourceExhausted),
    (&[405, 406, 411, 415, 500], Code::Internal),
    (&[501], Code::Unimplemented),
    (&[502, 503, 504], Code::Unavailable),
    (&[407, 408, 418, 451, 505, 511, 599], Code::Unknown),
];

#[tokio::test]
async fn every_graph_error_status_maps_as_the_table_says_with_rich_details() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), no_retries).await;
    let channel = gateway.channel().await;

    for (statuses, code) in TABLE {
        for &http_status in *statuses {
            graph.set_reply(Reply::graph_error(
                http_status,
                "somethingWentWrong",
                "Graph's own words.",
            ));
            let status = gateway.call().send_on(channel.clone()).await.unwrap_err();

            assert_eq!(status.code(), *code, "HTTP {http_status}");
            assert_eq!(status.message(), "Graph's own words.", "HTTP {http_status}");
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.domain, "graph.microsoft.com");
            assert_eq!(info.reason, "SOMETHING_WENT_WRONG");
            assert_eq!(info.metadata["httpStatus"], http_status.to_string());
            assert_eq!(info.metadata["graphErrorCode"], "somethingWentWrong");
            assert_eq!(
                info.metadata["graphInnerErrorCode"],
                "somethingWentWrongInner"
            );
            let request_info = status.get_details_request_info().expect("RequestInfo");
            assert_eq!(
                request_info.request_id,
                format!("graph-request-id-{http_status}")
            );
            assert!(request_info.serving_data.starts_with("client-request-id="));
            assert_eq!(
                status.metadata().get("request-id").unwrap(),
                format!("graph-request-id-{http_status}").as_str()
            );
            assert!(
                status.get_details_retry_info().is_none(),
                "no Retry-After, no RetryInfo"
            );
        }
    }
}

#[tokio::test]
async fn throttling_carries_retry_info_from_fractional_retry_after() {
    let reply =
        Reply::graph_error(429, "TooManyRequests", "Slow down.").header("retry-after", "2.128");
    let graph = FakeGraph::replying(reply).await;
    let gateway = TestGateway::start_with(&graph.url(), no_retries).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(2128)));
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "TOO_MANY_REQUESTS"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_becomes_retry_info() {
    let in_a_minute =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let reply = Reply::graph_error(503, "serviceUnavailable", "Try later.")
        .header("retry-after", &in_a_minute);
    let graph = FakeGraph::replying(reply).await;
    // A --retry-after-max above the minute, which would otherwise cut the RetryInfo to it.
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        no_retries(settings);
        settings.calls.retry.retry_after_max = Duration::from_secs(120);
    })
    .await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    let delay = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        delay > Duration::from_secs(50) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
}

#[tokio::test]
async fn unauthenticated_passes_graphs_challenge_back() {
    let challenge = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ==""#;
    let reply = Reply::graph_error(
        401,
        "InvalidAuthenticationToken",
        "Access token has expired.",
    )
    .header("www-authenticate", challenge);
    let graph = FakeGraph::replying(reply).await;
    let gateway = TestGateway::start_with(&graph.url(), no_retries).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        challenge
    );
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "INVALID_AUTHENTICATION_TOKEN"
    );
}

#[tokio::test]
async fn an_html_error_page_gives_a_short_message_and_an_http_reason() {
    let page = format!(
        "<html><body>{}</body></html>",
        "<p>Bad gateway</p>".repeat(5000)
    );
    let graph = FakeGraph::replying(
        Reply::status(502)
            .header("content-type", "text/html")
            .body(page.into_bytes()),
    )
    .await;
    let gateway = TestGateway::start_with(&graph.url(), no_retries).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "Microsoft Graph answered HTTP 502 Bad Gateway"
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("HTTP_502", "graph.microsoft.com")
    );
    assert!(!info.metadata.contains_key("graphErrorCode"));
}

#[tokio::test]
async fn a_huge_graph_message_is_cut_short() {
    let message = "word ".repeat(12_000);
    let graph = FakeGraph::replying(Reply::graph_error(400, "badRequest", &message)).await;
    let gateway = TestGateway::start_with(&graph.url(), no_retries).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() <= 512,
        "message of {} bytes",
        status.message().len()
    );
    assert!(status.message().starts_with("word word"));
}

#[tokio::test]
async fn redirects_are_never_followed_so_the_token_goes_nowhere_else() {
    let elsewhere = FakeGraph::start().await;
    let target = format!(
        "http://{}/v1.0/print/printers/printer-1/jobs/42/cancel",
        elsewhere.addr
    );
    for http_status in [301, 302, 303, 307, 308] {
        let graph =
            FakeGraph::replying(Reply::status(http_status).header("location", &target)).await;
        let gateway = TestGateway::start_with(&graph.url(), no_retries).await;

        let status = gateway.call().send().await.unwrap_err();

        assert_eq!(status.code(), Code::Unknown, "HTTP {http_status}");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            format!("HTTP_{http_status}")
        );
        assert_eq!(graph.requests().len(), 1);
    }
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect target never saw a request"
    );
}
