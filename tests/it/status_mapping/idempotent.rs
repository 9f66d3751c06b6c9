//! An idempotent Cancel: when Graph refuses a cancel with a 4xx other than 401, 403, 404 and 429
//! (Graph documents only the class, so 409 is not relied on), the gateway reads the job (same
//! token, same `client-request-id`, same encoding of the IDs, same deadline) and answers OK with
//! `already_canceled` when it is canceled, FAILED_PRECONDITION with `jobState` when it is not
//! (`unknown` and `unknownFutureValue` included), and the refusal's own answer when the read fails.

use std::time::Duration;

use printjob_gateway::simulator::{self, Scenario, Simulator};
use tokio::net::TcpListener;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TOKEN, TestGateway,
    fake_graph::Hold,
    gateway::Call,
    metrics::{metrics, sample},
    process::GatewayProcess,
};

/// IDs that only reach Graph intact as one percent-encoded path segment each.
const PRINTER_ID: &str = "printer/1 é";
const PRINT_JOB_ID: &str = "42?$select=id";
const ENCODED_JOB: &str = "/v1.0/print/printers/printer%2F1%20%C3%A9/jobs/42%3F%24select%3Did";
/// The caller's correlation ID, which every Graph request of the call must carry.
const REQUEST_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// Graph's refusal of a cancel: the job can no longer be canceled.
fn refusal() -> Reply {
    Reply::graph_error(
        409,
        "notAllowed",
        "The print job cannot be canceled in its current state.",
    )
}

/// Graph's answer to the job read: a `printJob` with its status.
fn job(state: &str) -> Reply {
    let body = serde_json::json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#print/printers('p')/jobs(status)/$entity",
        "id": "42",
        "status": {
            "state": state,
            "description": format!("The print job is {state}."),
            "details": [],
            "isAcquiredByPrinter": true,
        }
    });
    Reply::status(200)
        .header("content-type", "application/json")
        .header("request-id", "graph-request-id-read")
        .body(body.to_string().into_bytes())
}

/// A Cancel of the job with the encoded IDs, with the caller's correlation ID.
fn cancel(gateway: &TestGateway) -> Call {
    gateway
        .call()
        .ids(PRINTER_ID, PRINT_JOB_ID)
        .metadata("x-request-id", REQUEST_ID)
}

fn job_reads(metrics: &str, outcome: &str) -> usize {
    let series = format!(r#"printjob_gateway_job_reads_total{{outcome="{outcome}"}}"#);
    sample(metrics, &series) as usize
}

/// What a caller sees of the 409 alone, as without the read: FAILED_PRECONDITION with Graph's
/// message, reason and request-id, and no `jobState`.
fn assert_the_refusal(status: &Status, context: &str) {
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{context}: {status:?}"
    );
    assert_eq!(
        status.message(),
        "The print job cannot be canceled in its current state.",
        "{context}"
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("graph.microsoft.com", "NOT_ALLOWED"),
        "{context}"
    );
    assert_eq!(info.metadata["httpStatus"], "409", "{context}");
    assert!(
        !info.metadata.contains_key("jobState"),
        "{context}: {info:?}"
    );
    assert!(status.get_details_retry_info().is_none(), "{context}");
    assert_eq!(
        status.metadata().get("request-id").unwrap(),
        "graph-request-id-409",
        "{context}"
    );
}

#[tokio::test]
async fn a_cancel_applied_before_a_504_ends_ok_with_already_canceled() {
    // Graph cancels the job but its front end answers 504; the retry meets a canceled job.
    let graph = FakeGraph::start().await;
    graph.queue(
        "POST",
        Reply::graph_error(504, "gatewayTimeout", "The gateway timed out.")
            .header("retry-after", "0"),
    );
    graph.queue("POST", refusal());
    let read = Hold::new();
    graph.queue("GET", job("canceled").held(&read));
    let gateway = TestGateway::start(&graph.url()).await;

    let call = tokio::spawn(cancel(&gateway).send());
    graph.wait_for_requests(3).await;
    assert!(!call.is_finished(), "the answer waits for the read");
    read.release();
    let response = call.await.unwrap().expect("the cancel succeeded");

    assert!(response.get_ref().already_canceled);
    assert_eq!(
        response.metadata().get("client-request-id").unwrap(),
        REQUEST_ID
    );
    assert_eq!(
        response.metadata().get("request-id").unwrap(),
        "graph-request-id-409",
        "the cancel's own Graph request-id"
    );
    let requests = graph.requests();
    let sent: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    let cancel_target = format!("{ENCODED_JOB}/cancel");
    let read_target = format!("{ENCODED_JOB}?$select=status");
    assert_eq!(
        sent,
        [
            ("POST", cancel_target.as_str()),
            ("POST", cancel_target.as_str()),
            ("GET", read_target.as_str()),
        ],
        "exactly two cancels and one read"
    );
    for request in &requests {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {TOKEN}").as_str(),
            "{} carries the caller's token",
            request.method
        );
        assert_eq!(request.headers["client-request-id"], REQUEST_ID);
    }
    let read = &requests[2];
    assert!(read.body.is_empty() && !read.headers.contains_key("content-length"));
    let text = metrics(gateway.admin_addr).await;
    assert_eq!(job_reads(&text, "already_canceled"), 1, "{text}");
    assert!(
        text.contains(r#"printjob_gateway_calls_total{method="Cancel",code="OK"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_job_that_is_not_canceled_answers_failed_precondition_with_its_state() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    for state in ["completed", "aborted"] {
        graph.queue("POST", refusal());
        graph.queue("GET", job(state));

        let status = cancel(&gateway).send().await.unwrap_err();

        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{state}: {status:?}"
        );
        assert_eq!(
            status.message(),
            "The print job cannot be canceled in its current state."
        );
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.domain.as_str(), info.reason.as_str()),
            ("graph.microsoft.com", "NOT_ALLOWED")
        );
        assert_eq!(info.metadata["jobState"], state);
        assert_eq!(info.metadata["httpStatus"], "409");
        assert_eq!(
            status.metadata().get("request-id").unwrap(),
            "graph-request-id-409"
        );
    }
    let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["POST", "GET", "POST", "GET"]);
    assert_eq!(
        job_reads(&metrics(gateway.admin_addr).await, "not_cancelable"),
        2
    );
}

#[tokio::test]
async fn a_read_that_fails_keeps_the_answer_of_the_refusal() {
    let elsewhere = FakeGraph::start().await;
    let redirect = format!("http://{}{ENCODED_JOB}", elsewhere.addr);
    let failures = [
        (
            "403",
            Reply::graph_error(403, "accessDenied", "Access denied."),
        ),
        (
            "429",
            Reply::graph_error(429, "TooManyRequests", "Slow down.").header("retry-after", "1"),
        ),
        ("500", Reply::graph_error(500, "generalException", "Oops.")),
        ("404", Reply::graph_error(404, "itemNotFound", "Not found.")),
        ("302", Reply::status(302).header("location", &redirect)),
        (
            "not JSON",
            Reply::status(200).body(b"<html>OK</html>".to_vec()),
        ),
        (
            "no state",
            Reply::status(200).body(br#"{"id":"42","status":{}}"#.to_vec()),
        ),
    ];
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    for (failure, reply) in &failures {
        graph.queue("POST", refusal());
        graph.queue("GET", reply.clone());

        let status = cancel(&gateway).send().await.unwrap_err();

        assert_the_refusal(&status, failure);
    }
    let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
    let expected: Vec<&str> = failures.iter().flat_map(|_| ["POST", "GET"]).collect();
    assert_eq!(methods, expected, "one read per call, never retried");
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect is never followed"
    );
    assert_eq!(
        job_reads(&metrics(gateway.admin_addr).await, "failed"),
        failures.len()
    );
}

#[tokio::test]
async fn a_deadline_that_runs_out_during_the_read_answers_deadline_exceeded() {
    let graph = FakeGraph::start().await;
    let hold = Hold::new();
    graph.queue("POST", refusal());
    graph.queue("GET", job("canceled").held(&hold));
    let gateway = TestGateway::start(&graph.url()).await;

    // The read is held until the gateway gives up on it: only the deadline can end the call. The
    // outer bound only turns a gateway that ignores its deadline into a failure, not a hang.
    let call = cancel(&gateway)
        .timeout(Duration::from_secs(2))
        .send_without_client_timer();
    let status = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the gateway answers at its deadline")
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("printjob-gateway", "GRAPH_DEADLINE_EXCEEDED")
    );
    let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["POST", "GET"]);
    // The gateway drops the read at its deadline; the wide bound only keeps a broken build from
    // hanging the suite.
    tokio::time::timeout(Duration::from_secs(20), hold.abandoned())
        .await
        .expect("the gateway dropped the read");
    assert_eq!(job_reads(&metrics(gateway.admin_addr).await, "timeout"), 1);
}

/// A simulated Graph serving `scenario` on loopback, and its base URL.
async fn simulate(scenario: &str) -> (Simulator, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1.0", listener.local_addr().unwrap());
    let simulator = Simulator::new(Scenario::parse(scenario, "test").unwrap());
    tokio::spawn(simulator::serve(
        listener,
        simulator.clone(),
        std::future::pending(),
    ));
    (simulator, url)
}

#[tokio::test]
async fn simulator_rules_script_the_read() {
    let (simulator, url) = simulate(
        r#"{
            "printers": [{"id": "p", "jobs": [
                {"id": "gone", "state": "canceled"},
                {"id": "slow", "state": "completed"}
            ]}],
            "rules": [
                {"job": "gone", "method": "GET", "status": 403, "times": 1},
                {"job": "slow", "method": "GET", "delay": "60s"}
            ]
        }"#,
    )
    .await;
    let gateway = TestGateway::start(&url).await;

    let forbidden = gateway.call().ids("p", "gone").send().await.unwrap_err();
    assert_eq!(forbidden.code(), Code::FailedPrecondition);
    let info = forbidden.get_details_error_info().unwrap();
    assert_eq!(info.reason, "NOT_ALLOWED");
    assert!(!info.metadata.contains_key("jobState"), "{info:?}");
    let response = gateway
        .call()
        .ids("p", "gone")
        .send()
        .await
        .expect("the rule is used up");
    assert!(response.get_ref().already_canceled);
    let slow = gateway
        .call()
        .ids("p", "slow")
        .timeout(Duration::from_secs(2))
        .send_without_client_timer()
        .await
        .unwrap_err();
    assert_eq!(slow.code(), Code::DeadlineExceeded);

    // The slow read, dropped at the deadline, never completed, so the simulator did not record it.
    let received: Vec<(String, u16)> = simulator
        .received()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    let expected = [
        ("POST", 409),
        ("GET", 403),
        ("POST", 409),
        ("GET", 200),
        ("POST", 409),
    ];
    assert_eq!(
        received,
        expected.map(|(method, status)| (method.to_owned(), status))
    );
}

#[tokio::test]
async fn the_logs_show_the_read_its_failure_and_the_state_found() {
    let graph = FakeGraph::start().await;
    graph.queue("POST", refusal());
    graph.queue(
        "GET",
        Reply::graph_error(403, "accessDenied", "Access denied."),
    );
    graph.queue("POST", refusal());
    graph.queue("GET", job("canceled"));
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;

    Call::to(gateway.grpc_addr)
        .ids("p", "1")
        .send()
        .await
        .unwrap_err();
    Call::to(gateway.grpc_addr)
        .ids("p", "1")
        .send()
        .await
        .expect("already canceled");

    let (_, logs) = gateway.terminate(Duration::from_secs(10)).await;
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let failure = lines
        .iter()
        .find(|line| line["message"] == "cannot read the job after Graph refused the cancel")
        .unwrap_or_else(|| panic!("a line on the failed read:\n{logs}"));
    assert!(
        failure["error"].as_str().unwrap().contains("403"),
        "{failure}"
    );
    let access = lines
        .iter()
        .find(|line| line["message"] == "job already canceled")
        .unwrap_or_else(|| panic!("an access line:\n{logs}"));
    assert_eq!(access["span"]["job_state"], "canceled");
    assert_eq!(access["span"]["grpc_code"], "OK");
    assert_eq!(access["span"]["http_status"], 409);
}

#[tokio::test]
async fn a_job_that_can_no_longer_be_canceled_is_read_whatever_4xx_graph_answers() {
    // Graph documents `4XX` for the cancel action, not 409: a simulator that answers 400 or 423
    // for a job that can no longer be canceled must get the same answers as with 409.
    for (refusal, reason) in [(400, "INVALID_REQUEST"), (423, "RESOURCE_LOCKED")] {
        let (simulator, url) = simulate(&format!(
            r#"{{
                "printers": [{{"id": "p", "jobs": [
                    {{"id": "1", "state": "processing"}},
                    {{"id": "2", "state": "completed"}},
                    {{"id": "3", "state": "unknownFutureValue"}},
                    {{"id": "4", "state": "unknown"}}
                ]}}],
                "notCancelableStatus": {refusal}
            }}"#
        ))
        .await;
        let gateway = TestGateway::start(&url).await;
        let call = |job: &'static str| gateway.call().ids("p", job).send();

        let first = call("1").await.expect("canceled");
        assert!(!first.get_ref().already_canceled);
        let again = call("1")
            .await
            .unwrap_or_else(|status| panic!("HTTP {refusal}: a repeated cancel is OK: {status:?}"));
        assert!(again.get_ref().already_canceled, "HTTP {refusal}");

        for (job, state) in [
            ("2", "completed"),
            ("3", "unknownFutureValue"),
            ("4", "unknown"),
        ] {
            let status = call(job).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "HTTP {refusal}, {state}: {status:?}"
            );
            let info = status.get_details_error_info().unwrap();
            assert_eq!(info.metadata["jobState"], state, "HTTP {refusal}");
            assert_eq!(info.metadata["httpStatus"], refusal.to_string());
            assert_eq!(info.reason, reason);
        }
        let methods: Vec<String> = simulator.received().into_iter().map(|r| r.method).collect();
        assert_eq!(
            methods,
            [
                "POST", "POST", "GET", "POST", "GET", "POST", "GET", "POST", "GET"
            ],
            "HTTP {refusal}"
        );
    }
}

#[tokio::test]
async fn refusals_about_the_token_the_ids_or_the_rate_never_read_the_job() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        // One attempt, so that the 429 is the answer rather than a retry.
        settings.calls.retry.max_attempts = 1;
    })
    .await;
    for (status, code) in [
        (401, Code::Unauthenticated),
        (403, Code::PermissionDenied),
        (404, Code::NotFound),
        (429, Code::ResourceExhausted),
    ] {
        graph.queue("POST", Reply::graph_error(status, "someCode", "Refused."));
        let answer = cancel(&gateway).send().await.unwrap_err();
        assert_eq!(answer.code(), code, "HTTP {status}");
        let info = answer.get_details_error_info().unwrap();
        assert!(!info.metadata.contains_key("jobState"), "HTTP {status}");
    }
    let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["POST"; 4], "no read after 401, 403, 404 or 429");
}

#[tokio::test]
async fn a_400_whose_read_fails_keeps_invalid_argument() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    graph.queue(
        "POST",
        Reply::graph_error(400, "invalidRequest", "Cannot cancel."),
    );
    graph.queue("GET", Reply::graph_error(500, "generalException", "Oops."));

    let status = cancel(&gateway).send().await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "Cannot cancel.");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "INVALID_REQUEST");
    assert!(!info.metadata.contains_key("jobState"));
    let methods: Vec<String> = graph.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["POST", "GET"]);
}
