//! Failures below HTTP: nothing listening, a reset, garbage instead of HTTP, and a caller who
//! gives up, whose Graph request must then be dropped.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    TestGateway,
    raw::{Behaviour, RawFake},
};

#[tokio::test]
async fn a_closed_port_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let gateway = TestGateway::start(&format!("http://{closed}/v1.0")).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "cannot connect to Microsoft Graph");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("GRAPH_UNREACHABLE", "printjob-gateway")
    );
}

#[tokio::test]
async fn a_reset_before_the_response_is_unavailable() {
    let mut graph = RawFake::start(Behaviour::Reset).await;
    let gateway = TestGateway::start(&graph.url()).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GRAPH_CONNECTION_FAILED"
    );
    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "request");
}

#[tokio::test]
async fn garbage_instead_of_http_is_unavailable() {
    let graph = RawFake::start(Behaviour::Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
    let gateway = TestGateway::start(&graph.url()).await;

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GRAPH_CONNECTION_FAILED"
    );
}

#[tokio::test]
async fn a_caller_who_gives_up_drops_the_graph_request() {
    let mut graph = RawFake::start(Behaviour::Hang).await;
    let gateway = TestGateway::start(&graph.url()).await;

    let call = tokio::spawn(gateway.call().send());
    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "request");
    call.abort();

    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "closed");
}
