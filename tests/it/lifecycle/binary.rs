//! The binary as an operator runs it: its command line, its exit codes, its signals, and its logs,
//! which must never contain a bearer token at any level.

use std::{process::Command, time::Duration};

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TOKEN,
    fake_graph::Hold,
    gateway::{Call, connect},
    process::{BINARY, GatewayProcess},
    refuses_connections,
};

#[test]
fn a_plaintext_graph_url_stops_start_up_with_a_clear_message() {
    for url in [
        "http://graph.microsoft.com/v1.0",
        "not a url",
        "ftp://graph.microsoft.com/v1.0",
    ] {
        let output = Command::new(BINARY)
            .args([
                "--graph-url",
                url,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env_clear()
            .output()
            .unwrap();
        assert!(!output.status.success(), "{url} is refused");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("--graph-url"), "{stderr}");
    }
    let output = Command::new(BINARY)
        .args(["--graph-url", "http://graph.microsoft.com/v1.0"])
        .env_clear()
        .output()
        .unwrap();
    assert!(String::from_utf8(output.stderr).unwrap().contains("https"));
}

#[test]
fn a_bad_setting_in_the_environment_stops_start_up() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("PRINTJOB_GATEWAY_DEFAULT_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("--default-timeout")
    );
}

#[tokio::test]
async fn no_log_line_at_any_level_carries_the_token() {
    let graph = FakeGraph::start().await;
    let gateway =
        GatewayProcess::spawn(&["--graph-url", &graph.url()], &[("RUST_LOG", "trace")]).await;
    let call = || Call::to(gateway.grpc_addr);

    call().send().await.unwrap();
    graph.set_reply(Reply::graph_error(
        401,
        "InvalidAuthenticationToken",
        "Access token is empty.",
    ));
    assert_eq!(
        call().send().await.unwrap_err().code(),
        Code::Unauthenticated
    );
    for bad in [
        format!("Bearer {TOKEN} extra"),
        format!("Basic {TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let status = call().authorization(Some(&bad)).send().await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    call().ids("", "1").send().await.unwrap_err();

    let (status, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.lines().count() > 50, "trace logging is on:\n{logs}");
    let secret = TOKEN.split('.').nth(1).unwrap();
    for line in logs.lines() {
        assert!(
            !line.contains(secret),
            "a log line carries the token: {line}"
        );
    }
}

#[tokio::test]
async fn the_access_log_line_carries_what_an_operator_greps_for() {
    let graph = FakeGraph::replying(Reply::graph_error(404, "itemNotFound", "Not found.")).await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;
    let guid = "3b241101-e2bb-4255-8caf-4136c566a962";

    Call::to(gateway.grpc_addr)
        .ids("printer-7", "99")
        .metadata("x-request-id", guid)
        .metadata(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap_err();

    let (_, logs) = gateway.terminate(Duration::from_secs(10)).await;
    let line = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| json["message"] == "cancel failed")
        .unwrap_or_else(|| panic!("an access line:\n{logs}"));
    let span = &line["span"];
    assert_eq!(span["printer_id"], "printer-7");
    assert_eq!(span["print_job_id"], "99");
    assert_eq!(span["client_request_id"], guid);
    assert_eq!(span["graph_request_id"], "graph-request-id-404");
    assert_eq!(span["http_status"], 404);
    assert_eq!(span["grpc_code"], "NOT_FOUND");
    assert_eq!(span["method"], "Cancel");
    assert_eq!(span["attempts"], 1);
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(span["latency_ms"].is_number());
}

#[tokio::test]
async fn sigterm_drains_a_call_in_flight_refuses_new_connections_and_exits_zero() {
    // Held until released: the call stays in flight through the checks, however busy the machine.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;
    let channel = connect(gateway.grpc_addr).await;
    let health = HealthClient::new(connect(gateway.admin_addr).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);

    let in_flight = tokio::spawn(Call::to(gateway.grpc_addr).send_on(channel));
    graph.wait_for_requests(1).await;
    gateway.signal("TERM");
    assert!(
        refuses_connections(gateway.grpc_addr).await,
        "new connections are refused while draining"
    );
    assert!(!in_flight.is_finished(), "the call is still in flight");
    hold.release();
    let (status, logs) = gateway.wait(Duration::from_secs(10)).await;

    assert!(status.success(), "exit status {status:?}\n{logs}");
    in_flight
        .await
        .unwrap()
        .expect("the call in flight completed OK");
    assert!(logs.contains("SIGTERM received"), "{logs}");
}

#[tokio::test]
async fn sigterm_ends_a_call_longer_than_the_grace_period_cleanly_and_exits_zero() {
    // Graph never answers: only the grace period can end the call.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph.url(), "--shutdown-grace", "500ms"],
        &[],
    )
    .await;

    let in_flight = tokio::spawn(
        Call::to(gateway.grpc_addr)
            .timeout(Duration::from_secs(25))
            .send(),
    );
    graph.wait_for_requests(1).await;
    let started = std::time::Instant::now();
    let (status, logs) = gateway.terminate(Duration::from_secs(10)).await;

    assert!(status.success(), "exit status {status:?}\n{logs}");
    // SHUTTING_DOWN below shows the grace period ended the call (the call's own 25 s timer would
    // give another code); this bound, far below 25 s, shows the process then exits without
    // waiting for anything else, with room for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exited after {:?}",
        started.elapsed()
    );
    let ended = in_flight.await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(
        ended.get_details_error_info().unwrap().reason,
        "SHUTTING_DOWN"
    );
}

#[tokio::test]
async fn worker_threads_sets_how_many_runtime_workers_serve_calls() {
    let graph = FakeGraph::start().await;
    let url = graph.url();
    // 3 is neither this machine's CPU count nor tokio's fallback, so only the setting explains it;
    // the flag and its environment twin are each checked.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 2] = [
        (&["--worker-threads", "1"], &[], 1),
        (&[], &[("PRINTJOB_GATEWAY_WORKER_THREADS", "3")], 3),
    ];
    for (args, env, workers) in cases {
        let args = [&["--graph-url", url.as_str()], args].concat();
        let gateway = GatewayProcess::spawn(&args, env).await;
        // tokio starts every worker when the runtime is built, before the serving line, but a new
        // thread takes its name only once it first runs, which a busy machine can delay: poll
        // until the count is right (a wrong count never becomes right, and fails after 20 s). No
        // call has been made, so no blocking-pool thread (which shares the name) exists yet.
        let named = tokio::time::timeout(Duration::from_secs(20), async {
            while gateway.threads_named("tokio-rt-worker") != workers {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            named.is_ok(),
            "{args:?} {env:?}: {} tokio-rt-worker threads, expected {workers}",
            gateway.threads_named("tokio-rt-worker")
        );
        Call::to(gateway.grpc_addr).send().await.unwrap();
        let (status, logs) = gateway.terminate(Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}\n{logs}");
    }
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    // A port already taken: start-up fails, and says so in a text log line on stdout, a pipe here.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = Command::new(BINARY)
        .args([
            "--listen",
            &taken.local_addr().unwrap().to_string(),
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("ERROR") && stdout.contains("printjob-gateway stopped"),
        "a text log line says why: {stdout:?}"
    );
    assert!(!stdout.contains('\x1b'), "no ANSI escape: {stdout:?}");
}
