//! The caller's deadline bounds the whole Graph call and ends it with DEADLINE_EXCEEDED, never
//! CANCELLED; a spent deadline never reaches Graph.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{FakeGraph, Reply, TestGateway};

/// A Graph that takes far longer than any deadline in these tests. Their upper bound on time
/// ([`KEPT`], against deadlines of 300 ms) only tells a deadline kept from one not kept at all,
/// with room for a busy machine.
fn slow_graph() -> Reply {
    Reply::no_content().delayed(Duration::from_secs(60))
}

/// A call whose 300 ms deadline was kept ends well within this; one whose deadline was not kept
/// waits for the slow Graph's 60 s. The 20 s between 300 ms and this bound are for a loaded
/// machine.
const KEPT: Duration = Duration::from_secs(20);

/// Checks that `status` is the gateway's own DEADLINE_EXCEEDED (not tonic's CANCELLED), with
/// `reason`, and that it came within [`KEPT`] of `started`.
fn assert_deadline_exceeded(status: &tonic::Status, reason: &str, started: Instant) {
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("ErrorInfo in {status:?}"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        (reason, "printjob-gateway")
    );
    assert!(
        status.metadata().get("client-request-id").is_some(),
        "{status:?}"
    );
    assert!(started.elapsed() < KEPT, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_graph_call() {
    let graph = FakeGraph::replying(slow_graph()).await;
    let gateway = TestGateway::start(&graph.url()).await;
    let started = Instant::now();

    // Without tonic's own timer, which could fire first on a busy machine and say CANCELLED.
    let status = gateway
        .call()
        .timeout(Duration::from_millis(300))
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_deadline_exceeded(&status, "GRAPH_DEADLINE_EXCEEDED", started);
    assert_eq!(graph.requests().len(), 1);
}

#[tokio::test]
async fn the_gateway_itself_answers_deadline_exceeded_not_cancelled() {
    let graph = FakeGraph::replying(slow_graph()).await;
    let gateway = TestGateway::start(&graph.url()).await;
    let started = Instant::now();

    let status = gateway
        .call()
        .timeout(Duration::from_millis(300))
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_deadline_exceeded(&status, "GRAPH_DEADLINE_EXCEEDED", started);
}

#[tokio::test]
async fn the_default_deadline_applies_when_the_caller_sends_none() {
    let graph = FakeGraph::replying(slow_graph()).await;
    let gateway = TestGateway::start_with(&graph.url(), |s| {
        s.calls.deadlines.default = Duration::from_millis(300)
    })
    .await;
    let started = Instant::now();

    let status = gateway
        .call()
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_deadline_exceeded(&status, "GRAPH_DEADLINE_EXCEEDED", started);
}

#[tokio::test]
async fn the_max_timeout_caps_a_longer_caller_deadline() {
    let graph = FakeGraph::replying(slow_graph()).await;
    let gateway = TestGateway::start_with(&graph.url(), |s| {
        s.calls.deadlines.default = Duration::from_millis(300);
        s.calls.deadlines.max = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();

    let status = gateway
        .call()
        .timeout(Duration::from_secs(60))
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_deadline_exceeded(&status, "GRAPH_DEADLINE_EXCEEDED", started);
}

#[tokio::test]
async fn a_spent_deadline_does_not_call_graph() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let started = Instant::now();

    let status = gateway
        .call()
        .timeout(Duration::ZERO)
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_deadline_exceeded(&status, "DEADLINE_SPENT_BEFORE_CALL", started);
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_deadline_long_enough_lets_the_call_succeed() {
    let graph = FakeGraph::replying(Reply::no_content().delayed(Duration::from_millis(100))).await;
    let gateway = TestGateway::start(&graph.url()).await;

    // 100 ms of Graph's within a 30 s deadline: no loaded machine makes it miss.
    gateway
        .call()
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
}
