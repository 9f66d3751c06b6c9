//! Fault injection: Graph breaking HTTP in every way we know. Each test asserts the documented
//! code, a bounded time, bounded memory (the process's peak RSS), and that the gateway keeps
//! serving afterwards: a call for a healthy printer on the same Graph still succeeds.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    TestGateway,
    gateway::Call,
    process::{GatewayProcess, PEAK_RSS_LIMIT_KIB},
    raw::{Behaviour, FAULTY, RawFake},
};

/// The deadline of every faulty call. A fault that the gateway handles ends the call with its
/// own code well before it; the code, not a tight clock, is what the tests check.
const DEADLINE: Duration = Duration::from_secs(5);

/// What a faulty call answered, and how long it took.
struct Observed {
    status: tonic::Status,
    elapsed: Duration,
}

/// Runs one faulty call through a gateway process in front of `graph_url`, then checks that the
/// gateway still serves (`healthy_graph`: whether a healthy printer can be reached there) and
/// stayed within its memory bound, and that it exits cleanly.
async fn run_fault(graph_url: &str, healthy_graph: bool) -> Observed {
    let gateway = GatewayProcess::spawn(&["--graph-url", graph_url], &[]).await;
    let started = Instant::now();
    // Without tonic's own timer, which could fire first on a busy machine and say CANCELLED:
    // whatever comes back is the gateway's answer. The outer timeout only stops a broken gateway
    // from hanging the test.
    let status = tokio::time::timeout(
        DEADLINE + Duration::from_secs(30),
        Call::to(gateway.grpc_addr)
            .ids(FAULTY, "1")
            .timeout(DEADLINE)
            .send_without_client_timer(),
    )
    .await
    .expect("the gateway answers")
    .expect_err("the faulty call fails");
    let elapsed = started.elapsed();

    if healthy_graph {
        Call::to(gateway.grpc_addr)
            .ids("healthy", "1")
            .send()
            .await
            .expect("the gateway keeps serving after the fault");
    } else {
        let local = Call::to(gateway.grpc_addr).authorization(None).send().await;
        assert_eq!(
            local.unwrap_err().code(),
            Code::Unauthenticated,
            "the gateway keeps serving"
        );
    }
    let peak = gateway.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{logs}");
    Observed { status, elapsed }
}

fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().expect("ErrorInfo").reason
}

#[tokio::test]
async fn a_reset_before_the_response_is_unavailable_and_not_retried() {
    let mut graph = RawFake::start(Behaviour::Reset).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::Unavailable,
        "{:?}",
        observed.status
    );
    assert_eq!(reason(&observed.status), "GRAPH_CONNECTION_FAILED");
    assert!(observed.elapsed < DEADLINE, "{:?}", observed.elapsed);
    assert_eq!(
        graph.pending_events(),
        1,
        "the request may have reached Graph: no retry"
    );
}

#[tokio::test]
async fn garbage_instead_of_http_is_unavailable() {
    let graph = RawFake::start(Behaviour::Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::Unavailable,
        "{:?}",
        observed.status
    );
    assert_eq!(reason(&observed.status), "GRAPH_CONNECTION_FAILED");
    assert!(observed.elapsed < DEADLINE, "{:?}", observed.elapsed);
}

#[tokio::test]
async fn headers_that_never_come_end_at_the_deadline_and_the_request_is_dropped() {
    let mut graph = RawFake::start(Behaviour::Hang).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::DeadlineExceeded,
        "{:?}",
        observed.status
    );
    // The gateway answers just before the deadline; the bound, with a wide margin for a busy
    // machine, says the call did not outlive it.
    assert!(
        observed.elapsed < DEADLINE + Duration::from_secs(5),
        "{:?}",
        observed.elapsed
    );
    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "request");
    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "closed");
}

#[tokio::test]
async fn an_error_body_that_stalls_still_gives_the_status_code() {
    let head = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"error\":";
    let graph = RawFake::start(Behaviour::WriteThenStall(head.to_vec())).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::Internal,
        "{:?}",
        observed.status
    );
    assert_eq!(
        observed.status.message(),
        "Microsoft Graph answered HTTP 500 Internal Server Error"
    );
    // INTERNAL rather than DEADLINE_EXCEEDED shows the body wait ended before the deadline.
    assert!(
        observed.elapsed < DEADLINE,
        "the body wait is bounded: {:?}",
        observed.elapsed
    );
}

#[tokio::test]
async fn a_success_whose_body_stalls_is_ok_at_once() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial";
    let graph = RawFake::start(Behaviour::WriteThenStall(head.to_vec())).await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;
    let started = Instant::now();

    Call::to(gateway.grpc_addr)
        .ids(FAULTY, "1")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("OK");

    // The body never completes: a gateway that waited for it would run to the 30 s deadline.
    // A third of it is a bound no busy machine reaches.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    gateway.terminate(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_20_mb_error_body_is_cut_off_in_bounded_memory() {
    let graph = RawFake::start(Behaviour::HugeBody(500, 20 * 1024 * 1024)).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::Internal,
        "{:?}",
        observed.status
    );
    assert!(observed.elapsed < DEADLINE, "{:?}", observed.elapsed);
}

#[tokio::test]
async fn an_html_error_page_is_unavailable_with_a_short_message() {
    let page = "<html><head><title>502 Bad Gateway</title></head><body>".to_owned()
        + &"<p>upstream</p>".repeat(2000)
        + "</body></html>";
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
        page.len()
    );
    let graph = RawFake::start(Behaviour::Write(response.into_bytes())).await;
    let observed = run_fault(&graph.url(), true).await;

    assert_eq!(
        observed.status.code(),
        Code::Unavailable,
        "{:?}",
        observed.status
    );
    assert_eq!(
        observed.status.message(),
        "Microsoft Graph answered HTTP 502 Bad Gateway"
    );
    assert_eq!(reason(&observed.status), "HTTP_502");
}

#[tokio::test]
async fn a_closed_port_is_unavailable_after_the_allowed_attempts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let observed = run_fault(&format!("http://{closed}/v1.0"), false).await;

    assert_eq!(
        observed.status.code(),
        Code::Unavailable,
        "{:?}",
        observed.status
    );
    assert_eq!(
        observed.status.message(),
        "cannot connect to Microsoft Graph"
    );
    assert_eq!(reason(&observed.status), "GRAPH_UNREACHABLE");
    // Nothing was sent, so the two retries (200 ms and 400 ms, plus jitter) were safe to make.
    assert!(
        observed.elapsed >= Duration::from_millis(600),
        "{:?}",
        observed.elapsed
    );
    assert!(observed.elapsed < DEADLINE, "{:?}", observed.elapsed);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_unavailable() {
    let observed = run_fault("https://printjob-gateway-test.invalid/v1.0", false).await;

    assert_eq!(
        observed.status.code(),
        Code::Unavailable,
        "{:?}",
        observed.status
    );
    assert_eq!(reason(&observed.status), "GRAPH_UNREACHABLE");
    assert!(observed.elapsed < DEADLINE, "{:?}", observed.elapsed);
}

#[tokio::test]
async fn a_caller_who_gives_up_drops_the_graph_request() {
    let mut graph = RawFake::start(Behaviour::Hang).await;
    let gateway = TestGateway::start(&graph.url()).await;

    let call = tokio::spawn(gateway.call().ids(FAULTY, "1").send());
    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "request");
    call.abort();

    assert_eq!(graph.next_event(Duration::from_secs(5)).await, "closed");
}
