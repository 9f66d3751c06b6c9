//! Fault injection: Graph breaking HTTP in every way we know. Each test asserts the documented
//! code, a bounded time, bounded memory (the process's peak RSS), and that the gateway keeps
//! serving afterwards: a call for a healthy printer on the same Graph still succeeds.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use printjob_gateway::graph::Resolver;

use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    TestGateway,
    gateway::Call,
    process::{GatewayProcess, PEAK_RSS_LIMIT_KIB},
    raw::{Behaviour, FAULTY, RawFake},
};

/// A deadline no fault here should reach: a fault the gateway handles ends the call with its own
/// code well before it, so a DEADLINE_EXCEEDED (rather than a tight clock) is what shows a
/// gateway that waited. It is long so that a loaded machine cannot make a handled fault miss it.
const LONG_DEADLINE: Duration = Duration::from_secs(30);

/// The deadline of the one case whose point is the deadline (headers that never come).
const SHORT_DEADLINE: Duration = Duration::from_secs(5);

/// How long to wait for an event of Graph's that must come: an event, not a clock, ends the
/// wait; the bound only stops a broken gateway from hanging the test.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// Where the faulty Graph is.
enum FaultyGraph {
    /// A raw TCP server on loopback that breaks HTTP as told for the printer [`FAULTY`].
    Raw(Behaviour),
    /// A loopback port with nothing listening on it.
    ClosedPort,
}

/// One fault of Graph's and what the caller, and Graph, must see of it.
struct Case {
    /// Named in every failure message.
    name: &'static str,
    graph: FaultyGraph,
    deadline: Duration,
    code: Code,
    message: &'static str,
    reason: &'static str,
    /// What the faulty Graph saw, in order, once the caller has its answer: `"request"` for each
    /// request for the faulty printer, `"closed"` when the gateway dropped a hanging one.
    graph_saw: &'static [&'static str],
    /// The call took at least this long (retries' backoff).
    at_least: Duration,
    /// The call took at most this long.
    at_most: Duration,
}

/// Graph breaking HTTP in every way we know: each ends with its documented code, message and
/// reason, Graph sees exactly the requests it should (no retry of what may have reached it), and
/// the gateway stays within its memory and serves on.
#[tokio::test]
async fn each_way_graph_breaks_http_gets_its_documented_status_and_the_gateway_serves_on() {
    let html_page = "<html><head><title>502 Bad Gateway</title></head><body>".to_owned()
        + &"<p>upstream</p>".repeat(2000)
        + "</body></html>";
    let cases = [
        Case {
            name: "a reset before the response",
            graph: FaultyGraph::Raw(Behaviour::Reset),
            deadline: LONG_DEADLINE,
            code: Code::Unavailable,
            message: "the connection to Microsoft Graph failed before it answered",
            reason: "GRAPH_CONNECTION_FAILED",
            // The request may have reached Graph: it is not sent again.
            graph_saw: &["request"],
            at_least: Duration::ZERO,
            at_most: LONG_DEADLINE,
        },
        Case {
            name: "garbage instead of HTTP",
            graph: FaultyGraph::Raw(Behaviour::Write(
                b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
            )),
            deadline: LONG_DEADLINE,
            code: Code::Unavailable,
            message: "the connection to Microsoft Graph failed before it answered",
            reason: "GRAPH_CONNECTION_FAILED",
            graph_saw: &["request"],
            at_least: Duration::ZERO,
            at_most: LONG_DEADLINE,
        },
        Case {
            name: "headers that never come",
            graph: FaultyGraph::Raw(Behaviour::Hang),
            deadline: SHORT_DEADLINE,
            code: Code::DeadlineExceeded,
            message: "the call's deadline ran out before Graph answered",
            reason: "GRAPH_DEADLINE_EXCEEDED",
            // The gateway drops the request at the deadline rather than leave it open.
            graph_saw: &["request", "closed"],
            // The deadline is the rule here: the gateway answers just before it. The upper bound
            // has 10 s of margin for a loaded machine and still fails a gateway that ignored it
            // (it would wait for the outer 30 s timeout).
            at_least: Duration::ZERO,
            at_most: SHORT_DEADLINE + Duration::from_secs(10),
        },
        Case {
            name: "an error body that stalls",
            graph: FaultyGraph::Raw(Behaviour::WriteThenStall(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"error\":".to_vec(),
            )),
            deadline: LONG_DEADLINE,
            // INTERNAL rather than DEADLINE_EXCEEDED shows that the body wait is bounded.
            code: Code::Internal,
            message: "Microsoft Graph answered HTTP 500 Internal Server Error",
            reason: "HTTP_500",
            graph_saw: &["request"],
            at_least: Duration::ZERO,
            at_most: LONG_DEADLINE,
        },
        Case {
            name: "a 20 MB error body",
            graph: FaultyGraph::Raw(Behaviour::HugeBody(500, 20 * 1024 * 1024)),
            deadline: LONG_DEADLINE,
            code: Code::Internal,
            message: "Microsoft Graph answered HTTP 500 Internal Server Error",
            reason: "HTTP_500",
            graph_saw: &["request"],
            at_least: Duration::ZERO,
            at_most: LONG_DEADLINE,
        },
        Case {
            name: "an HTML error page",
            graph: FaultyGraph::Raw(Behaviour::Write(
                format!(
                    "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{html_page}",
                    html_page.len()
                )
                .into_bytes(),
            )),
            deadline: LONG_DEADLINE,
            code: Code::Unavailable,
            message: "Microsoft Graph answered HTTP 502 Bad Gateway",
            reason: "HTTP_502",
            graph_saw: &["request"],
            at_least: Duration::ZERO,
            at_most: LONG_DEADLINE,
        },
        Case {
            name: "a closed port",
            graph: FaultyGraph::ClosedPort,
            deadline: LONG_DEADLINE,
            code: Code::Unavailable,
            message: "cannot connect to Microsoft Graph",
            reason: "GRAPH_UNREACHABLE",
            graph_saw: &[],
            // Nothing was sent, so the two retries (200 ms and 400 ms, plus jitter) were safe to
            // make: a lower bound, which no load can make fail.
            at_least: Duration::from_millis(600),
            at_most: LONG_DEADLINE,
        },
    ];

    for case in cases {
        check(case).await;
    }
}

/// Runs one faulty call through a gateway process in front of the case's Graph and checks what
/// the caller got, what Graph saw and how long it took; then that the gateway still serves (a
/// healthy printer on the same Graph, or a local answer when there is no Graph), stayed within
/// its memory bound, and exits cleanly.
async fn check(case: Case) {
    let Case { name, .. } = case;
    let (mut raw, graph_url) = match case.graph {
        FaultyGraph::Raw(behaviour) => {
            let raw = RawFake::start(behaviour).await;
            let url = raw.url();
            (Some(raw), url)
        }
        FaultyGraph::ClosedPort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let closed = listener.local_addr().unwrap();
            drop(listener);
            (None, format!("http://{closed}/v1.0"))
        }
    };
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph_url], &[]).await;
    let started = Instant::now();
    // Without tonic's own timer, which could fire first on a busy machine and say CANCELLED:
    // whatever comes back is the gateway's answer. The outer timeout only stops a broken gateway
    // from hanging the test.
    let status = tokio::time::timeout(
        case.deadline + Duration::from_secs(30),
        Call::to(gateway.grpc_addr)
            .ids(FAULTY, "1")
            .timeout(case.deadline)
            .send_without_client_timer(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: the gateway answers"))
    .expect_err("the faulty call fails");
    let elapsed = started.elapsed();

    assert_eq!(status.code(), case.code, "{name}: {status:?}");
    assert_eq!(status.message(), case.message, "{name}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{name}: ErrorInfo in {status:?}"));
    assert_eq!(info.reason, case.reason, "{name}: {status:?}");
    assert!(
        elapsed >= case.at_least && elapsed <= case.at_most,
        "{name}: took {elapsed:?}, not within {:?}..={:?}",
        case.at_least,
        case.at_most
    );
    if let Some(raw) = &mut raw {
        let mut saw = Vec::new();
        for _ in case.graph_saw {
            saw.push(raw.next_event(EVENT_WAIT).await);
        }
        assert_eq!(saw, case.graph_saw, "{name}: what Graph saw");
        // Every request was made before the answer, so a retry would be waiting here by now.
        assert_eq!(raw.pending_events(), 0, "{name}: Graph saw no more");
    }

    if raw.is_some() {
        Call::to(gateway.grpc_addr)
            .ids("healthy", "1")
            .send()
            .await
            .unwrap_or_else(|status| panic!("{name}: the gateway keeps serving: {status:?}"));
    } else {
        let local = Call::to(gateway.grpc_addr).authorization(None).send().await;
        assert_eq!(
            local.unwrap_err().code(),
            Code::Unauthenticated,
            "{name}: the gateway keeps serving"
        );
    }
    let peak = gateway.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "{name}: peak RSS {peak} KiB");
    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{name}: {logs}");
}

/// A name that does not resolve: the connector's resolver, handed in so that no DNS server is
/// asked, answers "no such host" at once. Nothing was sent, so the call is tried again (one lookup
/// per attempt) and ends UNAVAILABLE, GRAPH_UNREACHABLE, without waiting for any timer: the
/// connect timeout and the deadline are ten minutes, so an answer within a minute waited on
/// neither.
#[tokio::test]
async fn a_name_that_does_not_resolve_is_unavailable_at_once() {
    const HOST: &str = "printjob-gateway-test.invalid";
    const TEN_MINUTES: Duration = Duration::from_secs(600);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let resolver = Resolver::from_fn({
        let asked = asked.clone();
        move |host: String| {
            asked.lock().unwrap().push(host);
            std::future::ready(Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such host",
            )))
        }
    });
    let gateway = TestGateway::start_with(&format!("https://{HOST}/v1.0"), |settings| {
        settings.graph.resolver = resolver;
        settings.graph.connect_timeout = TEN_MINUTES;
        settings.calls.deadlines.max = TEN_MINUTES;
    })
    .await;
    let started = Instant::now();

    let status = gateway
        .call()
        .timeout(TEN_MINUTES)
        .send_without_client_timer()
        .await
        .expect_err("no such host");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "cannot connect to Microsoft Graph");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "GRAPH_UNREACHABLE"
    );
    assert_eq!(*asked.lock().unwrap(), [HOST; 3], "one lookup per attempt");
    // The backoff between the attempts is under a second; the margin is for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
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
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("OK");

    // The body never completes: a gateway that waited for it would run to the 60 s deadline and
    // answer DEADLINE_EXCEEDED. Half of it is a bound that no loaded machine reaches and that
    // still tells the two apart.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{logs}");
}

#[tokio::test]
async fn a_caller_who_gives_up_drops_the_graph_request() {
    let mut graph = RawFake::start(Behaviour::Hang).await;
    let gateway = TestGateway::start(&graph.url()).await;

    let call = tokio::spawn(gateway.call().ids(FAULTY, "1").send());
    assert_eq!(graph.next_event(EVENT_WAIT).await, "request");
    call.abort();

    assert_eq!(graph.next_event(EVENT_WAIT).await, "closed");
}
