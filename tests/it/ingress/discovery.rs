//! What a tool can find out without the .proto: gRPC health on both listeners, and server
//! reflection (v1 and v1alpha) that describes everything each listener serves.

use std::collections::BTreeSet;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::support::{FakeGraph, TestGateway};

const SERVICE: &str = "graph.print.v1.PrintJobService";
const ADMIN_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn health(channel: Channel, service: &str) -> ServingStatus {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = HealthClient::new(channel).check(request).await.unwrap();
    response.into_inner().status()
}

/// Asks reflection v1 one question and returns its answer.
async fn reflect_v1(
    channel: Channel,
    question: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(question),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

async fn services_v1(channel: Channel) -> BTreeSet<String> {
    let question = v1::server_reflection_request::MessageRequest::ListServices(String::new());
    match reflect_v1(channel, question).await {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[tokio::test]
async fn both_listeners_report_serving() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    for channel in [gateway.channel().await, gateway.admin_channel().await] {
        assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
        assert_eq!(health(channel, SERVICE).await, ServingStatus::Serving);
    }
}

#[tokio::test]
async fn reflection_v1_lists_everything_the_api_port_serves() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let listed = services_v1(gateway.channel().await).await;

    let mut expected = names(ADMIN_SERVICES);
    expected.insert(SERVICE.to_owned());
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn reflection_describes_the_service_and_the_error_details() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    // The error details' file is what tools such as grpcurl need to decode an error status.
    for symbol in [SERVICE, "google.rpc.ErrorInfo", "google.rpc.RetryInfo"] {
        let question =
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.to_owned());
        match reflect_v1(gateway.channel().await, question).await {
            v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
            }
            other => panic!("{symbol}: unexpected answer {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_same_services_for_older_tools() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(gateway.channel().await);
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();

    let answer = answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let listed: BTreeSet<String> = match answer {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected answer {other:?}"),
    };
    assert_eq!(listed, services_v1(gateway.channel().await).await);
}

#[tokio::test]
async fn the_admin_listener_reflects_only_what_it_serves() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    let listed = services_v1(gateway.admin_channel().await).await;

    assert_eq!(listed, names(ADMIN_SERVICES));
}
