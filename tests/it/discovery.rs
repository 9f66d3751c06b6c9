//! What a tool can find out without the .proto: gRPC health on both listeners, and server
//! reflection (v1 and v1alpha) that describes everything the API port serves.

use std::collections::BTreeSet;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::support::{FakeGraph, TestGateway};

const SERVICE: &str = "graph.print.v1.PrintJobService";

async fn health(channel: Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    response.into_inner().status()
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
async fn reflection_v1_lists_and_describes_everything_served() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(gateway.channel().await);

    let ask =
        |request: v1::server_reflection_request::MessageRequest| v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
    let requests = vec![
        ask(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
        ask(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(SERVICE.to_owned()),
        ),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let listed = match answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => list
            .service
            .into_iter()
            .map(|s| s.name)
            .collect::<BTreeSet<_>>(),
        other => panic!("unexpected answer {other:?}"),
    };
    let expected: BTreeSet<String> = [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected);

    match answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_service_for_older_tools() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(gateway.channel().await);

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();

    match answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            assert!(list.service.iter().any(|s| s.name == SERVICE), "{list:?}");
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "grpc.health.v1.Health"),
                "{list:?}"
            );
        }
        other => panic!("unexpected answer {other:?}"),
    }
}
