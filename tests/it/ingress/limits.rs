//! Overload protection and request limits: beyond the cap on calls in flight, calls fail fast
//! with RESOURCE_EXHAUSTED; oversized messages and headers are refused; the gateway serves on.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TestGateway,
    fake_graph::Hold,
    gateway::Call,
    metrics::{metrics, sample, wait_for_sample},
    process::{GatewayProcess, PEAK_RSS_LIMIT_KIB},
    raw::{RawH2, silent_connections, stalling_body},
};

#[tokio::test]
async fn beyond_the_cap_calls_fail_fast_and_health_still_answers() {
    // Held until released: the two calls fill the cap for as long as the test needs.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let gateway = TestGateway::start_with(&graph.url(), |s| s.calls.max_in_flight = 2).await;
    let channel = gateway.channel().await;

    let first = tokio::spawn(gateway.call().send_on(channel.clone()));
    let second = tokio::spawn(gateway.call().send_on(channel.clone()));
    graph.wait_for_requests(2).await;
    // No clock needed to show it fails fast: the slots free up only when the test releases Graph,
    // so a call that queued for a slot would end at its deadline with DEADLINE_EXCEEDED.
    let status = gateway.call().send_on(channel.clone()).await.unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("OVERLOADED", "printjob-gateway")
    );
    assert!(status.get_details_retry_info().is_some());
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        health.into_inner().status(),
        ServingStatus::Serving,
        "health is never rejected"
    );
    assert_eq!(
        graph.requests().len(),
        2,
        "the rejected call never reached Graph"
    );

    hold.release();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    gateway
        .call()
        .send_on(channel)
        .await
        .expect("room again once calls finish");
}

#[tokio::test]
async fn an_oversized_message_is_refused_without_calling_graph() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let huge = "x".repeat(64 * 1024);

    let status = gateway.call().ids(&huge, "1").send().await.unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(graph.requests().is_empty());
    gateway.call().send().await.expect("the gateway serves on");
}

#[tokio::test]
async fn an_oversized_header_list_is_refused_and_the_gateway_serves_on() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let huge_token = format!("Bearer {}", "a".repeat(64 * 1024));

    let outcome = gateway.call().authorization(Some(&huge_token)).send().await;

    // The HTTP/2 server answers such a header block 431 before any gRPC service sees it; a
    // gRPC client maps an HTTP status without grpc-status to UNKNOWN and names the 431.
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    assert!(graph.requests().is_empty());
    gateway.call().send().await.expect("the gateway serves on");
}

/// Issue 13's hostile load on the real binary, at its default limits: 1,000 connections that
/// never speak plus 1,000 streams that send their headers and never their message. The gateway
/// runs as its own process so that its memory is measured alone (VmHWM in /proc).
#[tokio::test]
async fn silent_connections_and_header_only_streams_leave_memory_bounded_and_calls_served() {
    crate::support::raw::raise_open_files_limit();
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;

    let silent = silent_connections(gateway.grpc_addr, 1_000).await;
    let mut streams = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..10 {
        let mut raw = RawH2::connect(gateway.grpc_addr).await;
        for _ in 0..100 {
            streams.push(tokio::spawn(raw.cancel(Some("6S"), stalling_body(&[]))));
        }
        connections.push(raw);
    }
    wait_for_sample(
        gateway.admin_addr,
        "printjob_gateway_calls_in_flight",
        1_000.0,
    )
    .await;

    // At --max-in-flight (1,000 by default) a further stream on a connection at its share is
    // refused at once rather than queued.
    let (code, message) = connections[0].cancel(Some("6S"), stalling_body(&[])).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    // A caller on a connection of its own is under its share while the others are over theirs:
    // it waits for the first place given back, when the header-only streams end at the message
    // wait (2 s), and is served.
    Call::to(gateway.grpc_addr)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("a normal call is served once a header-only stream has ended");
    let peak = gateway.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB under load");

    for stream in streams {
        let (code, message) = stream.await.unwrap();
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    }
    let text = metrics(gateway.admin_addr).await;
    assert!(
        sample(
            &text,
            r#"printjob_gateway_connections_closed_total{listener="api",reason="limit"}"#
        ) >= 1.0,
        "silent connections over the cap were closed:\n{text}"
    );
    let peak = gateway.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    drop(silent);
    drop(connections);
    let (status, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{logs}");
}
