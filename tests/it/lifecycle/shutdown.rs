//! Shutdown: health turns NOT_SERVING, the API stops accepting connections, calls in flight
//! finish, and those that outlast the grace period end with UNAVAILABLE instead of hanging.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::support::{FakeGraph, Reply, TestGateway, fake_graph::Hold, refuses_connections};

#[tokio::test]
async fn calls_in_flight_finish_while_health_turns_not_serving_and_new_connections_are_refused() {
    // Held until released: the call stays in flight through the checks, however busy the machine.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let mut gateway = TestGateway::start(&graph.url()).await;
    let mut watch = HealthClient::new(gateway.admin_channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let in_flight = tokio::spawn(gateway.call().send());
    graph.wait_for_requests(1).await;
    gateway.begin_shutdown();

    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // The listener closes as soon as the server task sees the signal: connections fail from then
    // on, while the call in flight waits for Graph, which answers only when released.
    assert!(
        refuses_connections(gateway.grpc_addr).await,
        "new connections are refused while draining"
    );
    assert!(!in_flight.is_finished());
    hold.release();

    in_flight
        .await
        .unwrap()
        .expect("the call in flight completes OK");
    drop(watch);
    gateway.shut_down().await.unwrap();
}

#[tokio::test]
async fn a_call_longer_than_the_grace_period_ends_with_unavailable() {
    // Graph never answers: only the grace period can end the call.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let mut gateway = TestGateway::start_with(&graph.url(), |s| {
        s.shutdown_grace = Duration::from_millis(300)
    })
    .await;

    let in_flight = tokio::spawn(gateway.call().timeout(Duration::from_secs(25)).send());
    graph.wait_for_requests(1).await;
    let started = Instant::now();
    gateway.begin_shutdown();

    let status = in_flight.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "SHUTTING_DOWN"
    );
    gateway.shut_down().await.unwrap();
    // SHUTTING_DOWN above already shows the grace period ended the call (its own timer would say
    // DEADLINE_EXCEEDED after 25 s); this wide bound, far below 25 s and far above the 300 ms
    // grace, only shows that shutdown does not then wait for anything else.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_gateway_shuts_down_at_once() {
    let graph = FakeGraph::start().await;
    let gateway =
        TestGateway::start_with(&graph.url(), |s| s.shutdown_grace = Duration::from_secs(60)).await;
    gateway.call().send().await.unwrap();
    let started = Instant::now();

    gateway.shut_down().await.unwrap();

    // With nothing in flight there is nothing to wait for: a bound far below the 60 s grace (so
    // that a busy machine cannot break it) still shows the grace was not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
