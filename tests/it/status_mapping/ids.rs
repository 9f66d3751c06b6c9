//! The ID rules: both required and bounded, and each travels as exactly one percent-encoded path
//! segment, whatever it contains, checked against the raw request target a real server received.

use percent_encoding::percent_decode_str;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{FakeGraph, TestGateway};

#[tokio::test]
async fn empty_ids_are_invalid_arguments_naming_the_field_and_graph_is_not_called() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let too_long = "x".repeat(257);
    let cases = [
        ("printer-1", "", "print_job_id"),
        (too_long.as_str(), "42", "printer_id"),
        ("printer-1", too_long.as_str(), "print_job_id"),
        ("..", "42", "printer_id"),
        ("printer-1", ".", "print_job_id"),
        ("printer\u{0}1", "42", "printer_id"),
    ];

    for (printer_id, print_job_id, field) in cases {
        let status = gateway
            .call()
            .ids(printer_id, print_job_id)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{printer_id:?}/{print_job_id:?}"
        );
        assert!(status.message().contains(field), "{}", status.message());
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad_request.field_violations.len(), 1);
        assert_eq!(bad_request.field_violations[0].field, field);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELD", "printjob-gateway")
        );
    }
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn exactly_one_of_printer_and_share_is_required_naming_both_and_graph_is_not_called() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let neither = gateway.call().ids("", "42");
    let both = gateway.call().ids("printer-1", "42").share_id("share-1");

    for (call, problem) in [
        (
            neither,
            "exactly one of printer_id and share_id is required",
        ),
        (
            both,
            "only one of printer_id and share_id may be set, not both",
        ),
    ] {
        let status = call.send().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            format!("invalid printer_id and share_id: {problem}")
        );
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        let fields: Vec<&str> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["printer_id", "share_id"]);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "INVALID_FIELD");
        assert_eq!(info.metadata["field"], "printer_id,share_id");
    }
    let dot_segment = gateway.call().share("..", "42").send().await.unwrap_err();
    assert_eq!(dot_segment.code(), Code::InvalidArgument);
    assert_eq!(
        dot_segment.message(),
        "invalid share_id: cannot be `.` or `..`"
    );
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn the_longest_allowed_ids_are_accepted() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let longest = "x".repeat(256);

    gateway.call().ids(&longest, &longest).send().await.unwrap();

    assert_eq!(graph.requests().len(), 1);
}

#[tokio::test]
async fn no_id_can_change_the_path_or_reach_another_resource() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let hostile = [
        "../../me",
        "..%2F..%2Fme",
        "a/b",
        "/",
        "?",
        "?$select=id",
        "#fragment",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2F",
        "%",
        "%zz",
        "a b",
        "+",
        "é",
        "𝄞",
        "\u{202e}gnp.exe",
        "\\..\\",
        "...",
        "a;b=c",
        "@evil.example",
        "http://evil.example/",
    ];

    for id in hostile {
        gateway
            .call()
            .ids(id, id)
            .send()
            .await
            .unwrap_or_else(|status| panic!("{id:?}: {status:?}"));
    }

    let requests = graph.requests();
    assert_eq!(requests.len(), hostile.len());
    for (request, id) in requests.iter().zip(hostile) {
        let target = &request.target;
        assert!(
            !target.contains('?') && !target.contains('#'),
            "{id:?} made {target}"
        );
        let segments: Vec<&str> = target.split('/').collect();
        assert_eq!(segments.len(), 8, "{id:?} made {target}");
        assert_eq!(
            &segments[..4],
            ["", "v1.0", "print", "printers"],
            "{id:?} made {target}"
        );
        assert_eq!(
            (segments[5], segments[7]),
            ("jobs", "cancel"),
            "{id:?} made {target}"
        );
        for segment in [segments[4], segments[6]] {
            assert_eq!(
                percent_decode_str(segment).decode_utf8().unwrap(),
                id,
                "{target}"
            );
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
            );
        }
    }
}
