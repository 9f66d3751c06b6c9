//! Overload protection and request limits: beyond the cap on calls in flight, calls fail fast
//! with RESOURCE_EXHAUSTED; oversized messages and headers are refused; the gateway serves on.

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::support::{FakeGraph, Reply, TestGateway, fake_graph::Hold};

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
