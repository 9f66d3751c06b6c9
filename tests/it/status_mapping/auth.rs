//! The bearer token rules: anything but exactly one `Bearer <token68>` is UNAUTHENTICATED, with a
//! clear message, without the token in it, and without calling Graph.

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{FakeGraph, TOKEN, TestGateway};

#[tokio::test]
async fn missing_token_is_unauthenticated_and_graph_is_not_called() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let status = gateway.call().authorization(None).send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "missing credentials: send the metadata `authorization: Bearer <token>`"
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("MISSING_CREDENTIALS", "printjob-gateway")
    );
    assert!(status.get_details_request_info().is_some());
    assert!(status.metadata().get("client-request-id").is_some());
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn malformed_authorization_is_unauthenticated_and_graph_is_not_called() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let malformed = [
        String::new(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
        format!("Bearer{TOKEN}"),
        format!("Bearer {TOKEN} {TOKEN}"),
        format!("Bearer {TOKEN},x"),
        format!("Bearer \"{TOKEN}\""),
        format!("Bearer ={TOKEN}"),
        TOKEN.to_owned(),
    ];

    for value in &malformed {
        let status = gateway
            .call()
            .authorization(Some(value))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "authorization {value:?}"
        );
        assert!(
            !status.message().contains("c2VjcmV0"),
            "the token is not echoed: {}",
            status.message()
        );
        let reason = status.get_details_error_info().unwrap().reason;
        assert!(
            reason == "MALFORMED_CREDENTIALS" || reason == "MISSING_CREDENTIALS",
            "{value:?} gives {reason}"
        );
    }
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn repeated_authorization_is_unauthenticated() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let status = gateway
        .call()
        .metadata("authorization", "Bearer second")
        .send()
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn the_token_is_checked_before_the_ids() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let status = gateway
        .call()
        .authorization(None)
        .ids("", "")
        .send()
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}
