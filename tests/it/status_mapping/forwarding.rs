//! A valid call becomes exactly the documented Graph call, and the caller can correlate it.

use printjob_gateway::proto::CancelResponse;

use crate::support::{FakeGraph, Reply, TOKEN, TestGateway};

#[tokio::test]
async fn cancel_is_forwarded_as_the_documented_graph_call() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let response = gateway.call().ids("printer-1", "42").send().await.unwrap();

    assert_eq!(
        response.get_ref(),
        &CancelResponse {
            already_canceled: false
        }
    );
    let requests = graph.requests();
    assert_eq!(requests.len(), 1, "exactly one Graph call");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/v1.0/print/printers/printer-1/jobs/42/cancel"
    );
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert_eq!(request.headers["content-length"], "0");
    assert!(request.body.is_empty());
    let sent_id = request.headers["client-request-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::try_parse(sent_id).is_ok(),
        "client-request-id {sent_id} is a GUID"
    );

    let metadata = response.metadata();
    assert_eq!(metadata.get("request-id").unwrap(), "graph-request-id-204");
    assert_eq!(metadata.get("client-request-id").unwrap(), sent_id);
}

#[tokio::test]
async fn every_2xx_is_ok() {
    for status in [200, 201, 202, 204] {
        let graph = FakeGraph::replying(Reply::status(status).body(b"{}".to_vec())).await;
        let gateway = TestGateway::start(&graph.url()).await;
        let response = gateway
            .call()
            .send()
            .await
            .unwrap_or_else(|error| panic!("HTTP {status} is OK: {error:?}"));
        // Canceled now, by this call: not a job found already canceled, and no job read.
        assert!(!response.get_ref().already_canceled, "HTTP {status}");
        let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
        assert_eq!(methods, ["POST"], "HTTP {status}: the cancel alone");
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case_and_the_token_is_forwarded_unchanged() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let value = format!("{scheme} {TOKEN}");
        gateway
            .call()
            .authorization(Some(&value))
            .send()
            .await
            .unwrap();
    }
    let requests = graph.requests();
    assert_eq!(requests.len(), 3, "each scheme's call reached Graph");
    for request in requests {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {TOKEN}").as_str()
        );
    }
}

#[tokio::test]
async fn a_caller_guid_in_x_request_id_becomes_the_client_request_id() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let guid = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";

    let response = gateway
        .call()
        .metadata("x-request-id", guid)
        .send()
        .await
        .unwrap();

    assert_eq!(graph.requests()[0].headers["client-request-id"], guid);
    assert_eq!(response.metadata().get("client-request-id").unwrap(), guid);
}

#[tokio::test]
async fn an_x_request_id_that_is_not_a_guid_is_replaced_by_a_new_one() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let response = gateway
        .call()
        .metadata("x-request-id", "not-a-guid")
        .send()
        .await
        .unwrap();

    let sent = graph.requests()[0].headers["client-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(sent, "not-a-guid");
    assert!(uuid::Uuid::try_parse(&sent).is_ok());
    assert_eq!(
        response.metadata().get("client-request-id").unwrap(),
        sent.as_str()
    );
}

#[tokio::test]
async fn each_call_gets_its_own_client_request_id() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let channel = gateway.channel().await;

    for _ in 0..3 {
        gateway.call().send_on(channel.clone()).await.unwrap();
    }
    let mut ids: Vec<_> = graph
        .requests()
        .iter()
        .map(|r| r.headers["client-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "one request per call");
    for id in &ids {
        uuid::Uuid::try_parse(id).expect("a GUID");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different IDs");
}

#[tokio::test]
async fn correlation_ids_come_back_on_errors_too() {
    let graph = FakeGraph::replying(Reply::graph_error(
        404,
        "itemNotFound",
        "The job was not found.",
    ))
    .await;
    let gateway = TestGateway::start(&graph.url()).await;
    let guid = "0f8fad5b-d9cb-469f-a165-70867728950e";

    let status = gateway
        .call()
        .metadata("x-request-id", guid)
        .send()
        .await
        .unwrap_err();

    assert_eq!(
        status.metadata().get("request-id").unwrap(),
        "graph-request-id-404"
    );
    assert_eq!(status.metadata().get("client-request-id").unwrap(), guid);
}
