//! The simulated Graph, through the real gateway and directly over HTTP, and as the `simulate`
//! subcommand and `--demo` mode of the real binary.

use std::{process::Command, time::Duration};

use printjob_gateway::simulator::{
    Scenario,
    entra::{MFA_USER_TOKEN, UNCONSENTED_USER_TOKEN},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    TOKEN, TestGateway,
    gateway::Call,
    process::{BINARY, GatewayProcess},
    simulated_graph as start,
};

#[tokio::test]
async fn jobs_follow_their_states_through_the_gateway() {
    let (_, url) = start(Scenario::builtin()).await;
    let gateway = TestGateway::start(&url).await;
    let cancel = |printer: &str, job: &str| gateway.call().ids(printer, job).send();

    let first = cancel("printer-1", "1")
        .await
        .expect("a processing job is canceled");
    assert!(!first.get_ref().already_canceled);
    let again = cancel("printer-1", "1")
        .await
        .expect("a repeated cancel is OK");
    assert!(again.get_ref().already_canceled);

    cancel("printer-1", "2")
        .await
        .expect("a pending job is canceled");
    let canceled = cancel("printer-1", "4")
        .await
        .expect("a canceled job is OK");
    assert!(canceled.get_ref().already_canceled);
    for (finished, state) in [("3", "completed"), ("5", "aborted")] {
        let status = cancel("printer-1", finished).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "job {finished}");
        assert_eq!(
            status.message(),
            format!("The print job is already {state} and cannot be canceled.")
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (
                info.reason.as_str(),
                info.metadata["httpStatus"].as_str(),
                info.metadata["jobState"].as_str()
            ),
            ("NOT_ALLOWED", "409", state)
        );
    }
    assert_eq!(
        cancel("printer-1", "404").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        cancel("no-such-printer", "1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        cancel("forbidden-printer", "1").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        cancel("unavailable-printer", "1").await.unwrap_err().code(),
        Code::Unavailable
    );
    for _ in 0..3 {
        cancel("any-job-printer", "1")
            .await
            .expect("any job on any-job-printer");
    }
}

#[tokio::test]
async fn scripted_throttling_reaches_the_caller_as_retry_info() {
    let (_, url) = start(Scenario::builtin()).await;
    let gateway = TestGateway::start(&url).await;

    let status = gateway
        .call()
        .ids("throttled-printer", "1")
        .send()
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "TOO_MANY_REQUESTS"
    );
}

#[tokio::test]
async fn rules_with_a_number_of_uses_run_out() {
    let scenario = Scenario::parse(
        r#"{
            "printers": [{"id": "p", "anyJob": true}],
            "rules": [{"printer": "p", "status": 503, "retryAfter": "1", "times": 2}]
        }"#,
        "test",
    )
    .unwrap();
    let (simulator, url) = start(scenario).await;
    let gateway = TestGateway::start_with(&url, |s| s.calls.retry.max_attempts = 1).await;
    let cancel = || gateway.call().ids("p", "1").send();

    assert_eq!(cancel().await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(cancel().await.unwrap_err().code(), Code::Unavailable);
    cancel().await.expect("the rule is used up");
    let statuses: Vec<u16> = simulator.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 204]);
}

#[tokio::test]
async fn a_delay_rule_makes_a_job_slow() {
    let scenario = Scenario::parse(
        r#"{"printers": [{"id": "p", "jobs": [{"id": "y"}]}], "rules": [{"job": "y", "delay": "10s"}]}"#,
        "test",
    )
    .unwrap();
    let (_, url) = start(scenario).await;
    let gateway = TestGateway::start(&url).await;

    // A deadline 10 s shorter than the delay, so that no loaded machine lets the delay end first.
    // Without tonic's own timer, which could fire first on a busy machine and say CANCELLED.
    let too_short = gateway
        .call()
        .ids("p", "y")
        .timeout(Duration::from_millis(100))
        // The gateway's own answer: with tonic's client timer, a busy machine may let the
        // client give up (CANCELLED) before the gateway's DEADLINE_EXCEEDED arrives.
        .send_without_client_timer()
        .await;
    assert_eq!(too_short.unwrap_err().code(), Code::DeadlineExceeded);
    let started = std::time::Instant::now();
    gateway
        .call()
        .ids("p", "y")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the slow job is canceled");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn it_answers_like_graph_and_records_what_it_received_without_the_token() {
    let (simulator, url) = start(Scenario::builtin()).await;
    let http = crate::support::http_client();
    let cancel_url = format!("{url}/print/printers/printer-1/jobs/2/cancel");

    let anonymous = http
        .post(&cancel_url)
        .header("client-request-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(anonymous.headers()["client-request-id"], "abc");
    let request_id = anonymous.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json(anonymous).await;
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        body["error"]["innerError"]["request-id"],
        request_id.as_str()
    );
    assert_eq!(body["error"]["innerError"]["client-request-id"], "abc");
    assert!(body["error"]["innerError"]["date"].is_string());

    let accepted = http
        .post(&cancel_url)
        .bearer_auth(TOKEN)
        .header("client-request-id", "def")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 204);
    assert!(accepted.headers().contains_key("request-id"));

    let listed = json(
        http.get(url.replace("/v1.0", "/__requests"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["bearerToken"], false);
    assert_eq!(listed[1]["bearerToken"], true);
    assert_eq!(
        listed[1]["path"],
        "/v1.0/print/printers/printer-1/jobs/2/cancel"
    );
    assert_eq!(listed[1]["printerId"], "printer-1");
    assert_eq!(listed[1]["printJobId"], "2");
    assert_eq!(listed[1]["clientRequestId"], "def");
    assert_eq!(listed[1]["status"], 204);
    assert!(
        !listed.to_string().contains(TOKEN),
        "the token is never kept"
    );
    assert_eq!(simulator.received().len(), 2);
}

#[tokio::test]
async fn it_answers_a_job_read_with_the_state_cancels_leave() {
    let (simulator, url) = start(Scenario::builtin()).await;
    let http = crate::support::http_client();
    let job = |id: &str| format!("{url}/print/printers/printer-1/jobs/{id}?$select=status");
    let cancel_url = format!("{url}/print/printers/printer-1/jobs/2/cancel");

    let anonymous = http.get(job("4")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let read = http
        .get(job("4"))
        .bearer_auth(TOKEN)
        .header("client-request-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["client-request-id"], "abc");
    assert!(read.headers().contains_key("request-id"));
    let body = json(read).await;
    assert_eq!(
        body["id"],
        serde_json::Value::Null,
        "only what $select names"
    );
    assert!(
        body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("/$metadata#print/printers('printer-1')/jobs(status)/$entity"),
        "{body}"
    );
    assert_eq!(body["status"]["state"], "canceled");
    assert_eq!(
        body["status"]["description"],
        "The print job has been canceled."
    );

    let state = |id: &'static str| {
        let request = http.get(job(id)).bearer_auth(TOKEN);
        async move { json(request.send().await.unwrap()).await["status"]["state"].clone() }
    };
    assert_eq!(state("2").await, "pending");
    let cancel = || http.post(&cancel_url).bearer_auth(TOKEN).send();
    assert_eq!(cancel().await.unwrap().status(), 204);
    assert_eq!(state("2").await, "canceled");
    assert_eq!(cancel().await.unwrap().status(), 409, "a repeated cancel");

    let missing = http.get(job("99")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(json(missing).await["error"]["code"], "itemNotFound");
    let recorded = &simulator.received()[1];
    assert_eq!(
        (
            recorded.method.as_str(),
            recorded.path.as_str(),
            recorded.printer_id.as_deref(),
            recorded.print_job_id.as_deref(),
            recorded.status
        ),
        (
            "GET",
            "/v1.0/print/printers/printer-1/jobs/4?$select=status",
            Some("printer-1"),
            Some("4"),
            200
        )
    );
}

#[test]
fn a_bad_scenario_file_stops_the_simulator_with_the_line() {
    let path = std::env::temp_dir().join(format!(
        "printjob-gateway-bad-scenario-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, "{\n  \"printers\": [\n    {\"id\": \"p\", \"jobs\": [{\"id\": \"1\", \"state\": \"lost\"}]}\n  ]\n}\n").unwrap();

    let output = Command::new(BINARY)
        .args(["simulate", "--listen", "127.0.0.1:0", "--scenario"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();

    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(
        logs.contains("line 3") && logs.contains("unknown variant `lost`"),
        "{logs}"
    );
}

#[tokio::test]
async fn demo_mode_serves_a_working_cancel_in_one_command() {
    let demo = GatewayProcess::spawn(&["--demo"], &[]).await;
    // The built-in scenario's throttled tenant: held at the gate through its 5 s window, then OK.
    let throttled = tokio::spawn(
        Call::to(demo.grpc_addr)
            .ids("any-job-printer", "1")
            .authorization(Some(&format!(
                "Bearer {}",
                printjob_gateway::app::DEMO_THROTTLED_TOKEN
            )))
            .timeout(Duration::from_secs(30))
            .send(),
    );

    Call::to(demo.grpc_addr)
        .ids("printer-1", "1")
        .send()
        .await
        .expect("the demo's first command succeeds");
    let status = Call::to(demo.grpc_addr)
        .ids("printer-1", "3")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    throttled
        .await
        .unwrap()
        .expect("the throttled tenant's call ends OK after the window");

    let (exit, output) = demo.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{output}");
    assert!(
        output.contains("Graph is throttling this tenant and app"),
        "the demo shows the throttle window:\n{output}"
    );
    let expected = printjob_gateway::app::demo_instructions(
        printjob_gateway::server::ListenAddr::Tcp(demo_grpc(&output)),
        "127.0.0.1:1".parse().unwrap(),
        false,
    );
    let first_command = expected.lines().find(|l| l.contains("grpcurl")).unwrap();
    assert!(
        output.contains(first_command.trim()),
        "the demo prints the grpcurl command:\n{output}"
    );
}

#[tokio::test]
async fn demo_mode_with_obo_exchanges_tokens_at_the_simulated_entra_in_one_command() {
    let demo = GatewayProcess::spawn(&["--demo", "--token-exchange", "obo"], &[]).await;

    // The simulated Graph takes only tokens its Entra endpoint issued: TOKEN itself would be 401.
    Call::to(demo.grpc_addr)
        .ids("printer-1", "1")
        .send()
        .await
        .expect("the caller's token is exchanged, and Graph takes the exchanged one");
    let mfa = Call::to(demo.grpc_addr)
        .authorization(Some(&format!("Bearer {MFA_USER_TOKEN}")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(mfa.code(), Code::Unauthenticated);
    assert_eq!(
        mfa.get_details_error_info().unwrap().reason,
        "INTERACTION_REQUIRED"
    );
    let challenge = mfa.metadata().get("www-authenticate").unwrap();
    assert!(
        challenge
            .to_str()
            .unwrap()
            .contains(r#"error="insufficient_claims", claims=""#),
        "{challenge:?}"
    );
    let consent = Call::to(demo.grpc_addr)
        .authorization(Some(&format!("Bearer {UNCONSENTED_USER_TOKEN}")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(consent.code(), Code::PermissionDenied);

    let (exit, output) = demo.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{output}");
    assert!(
        output.contains("exchanging each caller's token on behalf of its user")
            && output.contains(&format!("Bearer {MFA_USER_TOKEN}")),
        "the demo says so, and prints the refused users' commands:\n{output}"
    );
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// The gRPC address the demo printed.
fn demo_grpc(output: &str) -> std::net::SocketAddr {
    let line = output
        .lines()
        .find(|l| l.starts_with("printjob-gateway demo:"))
        .unwrap();
    let after = line.split("serves gRPC on ").nth(1).unwrap();
    after.split(',').next().unwrap().parse().unwrap()
}

#[test]
fn the_readme_shows_the_builtin_scenario_as_it_is() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/simulator.md")).unwrap();
    assert!(
        readme.contains(printjob_gateway::simulator::scenario::DEFAULT_SCENARIO.trim()),
        "docs/simulator.md shows src/simulator/default-scenario.json verbatim"
    );
}
