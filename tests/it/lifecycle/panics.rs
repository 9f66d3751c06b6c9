//! No panic reaches a caller or breaks the log: whatever goes wrong inside a call, the caller gets a
//! gRPC status (INTERNAL, with the gateway's details, when the gateway itself failed), the call
//! has its access log line and metrics, the gateway goes on serving, and with `--log-format json`
//! every line the process writes, on stdout and stderr, is JSON.
//!
//! The input is one that made a call panic (a token endpoint answering `expires_in` = 2^63-1
//! overflowed the clock), and stays hostile whatever the exchange makes of it now: the rule is
//! that the caller gets a status either way, never a reset stream. Since no input makes the
//! gateway panic any more, the panic hook is also shown in a process of its own (see
//! `a_panic_anywhere_is_one_json_error_line_and_nothing_else`), and the catch around a call by a
//! unit test in `service.rs`.

use std::time::Duration;

use printjob_gateway::entra::CredentialSource;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, TOKEN,
    fake_entra::{CLIENT_ID, EntraReply, FakeEntra, TENANT, obo_gateway},
    gateway::{Call, connect},
    metrics::{metrics, sample},
    process::GatewayProcess,
};

/// `expires_in` as large as a JSON integer an i64 reader takes: 2^63-1 seconds.
const FOREVER: u64 = i64::MAX as u64;

fn secret_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("client-secret");
    std::fs::write(&path, "s3cr3t~client.value-1\n").unwrap();
    path
}

/// A status the caller can act on: what a panic that escaped the call used to give (a reset
/// stream, CANCELLED or UNKNOWN) is not one.
fn assert_a_real_status(answer: &Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>) {
    if let Err(status) = answer {
        assert!(
            !matches!(status.code(), Code::Cancelled | Code::Unknown),
            "a status of the gateway's, not a broken stream: {status:?}"
        );
        assert!(
            status.get_details_error_info().is_some(),
            "with the gateway's details: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_hostile_token_answer_gives_the_caller_a_status_and_the_gateway_goes_on_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    entra.set_reply(EntraReply::token(FOREVER));
    let gateway = obo_gateway(
        &graph,
        &entra,
        CredentialSource::SecretFile(secret_file(dir.path())),
    )
    .await;
    let channel = gateway.channel().await;

    let answer = Call::to(gateway.grpc_addr).send_on(channel.clone()).await;
    assert_a_real_status(&answer);

    // The same connection, another caller, a sane answer: served as if nothing happened.
    entra.set_reply(EntraReply::token(3599));
    Call::to(gateway.grpc_addr)
        .authorization(Some("Bearer eyJhbGciOiJub25lIn0.b3RoZXItY2FsbGVy.c2ln"))
        .send_on(channel)
        .await
        .expect("the next call is served");
    let code = match &answer {
        Ok(_) => "OK",
        Err(status) if status.code() == Code::Internal => "INTERNAL",
        Err(_) => "",
    };
    if !code.is_empty() {
        // The second call is OK too: counted beside the first when the first is OK (as it is now
        // that the exchange clamps `expires_in`).
        let expected = if code == "OK" { 2.0 } else { 1.0 };
        let scraped = metrics(gateway.admin_addr).await;
        assert_eq!(
            sample(
                &scraped,
                &format!(r#"printjob_gateway_calls_total{{method="Cancel",code="{code}"}}"#)
            ),
            expected,
            "the first call is counted:\n{scraped}"
        );
    }
}

#[tokio::test]
async fn with_json_logs_every_line_stays_json_when_a_call_goes_wrong_inside() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    entra.set_reply(EntraReply::token(FOREVER));
    let secret = secret_file(dir.path());
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--token-exchange",
            "obo",
            "--entra-authority",
            &entra.authority(),
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            secret.to_str().unwrap(),
        ],
        // A backtrace, as an operator chasing a panic would ask for: it must stay inside the line.
        &[("RUST_BACKTRACE", "1")],
    )
    .await;
    let client_request_id = "0f8fad5b-d9cb-469f-a165-70867728950e";

    let answer = Call::to(gateway.grpc_addr)
        .metadata("x-request-id", client_request_id)
        .send_on(connect(gateway.grpc_addr).await)
        .await;
    assert_a_real_status(&answer);
    let (status, logs) = gateway.terminate(Duration::from_secs(10)).await;

    assert!(status.success(), "{status:?}\n{logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line:?}\n{logs}"))
        })
        .collect();
    let access = lines
        .iter()
        .find(|line| {
            line["span"]["client_request_id"] == client_request_id
                && matches!(
                    line["message"].as_str(),
                    Some("cancel failed" | "cancel accepted by Graph")
                )
        })
        .unwrap_or_else(|| panic!("the call's access line:\n{logs}"));
    let expected = match &answer {
        Ok(_) => "OK",
        Err(status) => printjob_gateway::status::code_name(status.code()),
    };
    assert_eq!(access["span"]["grpc_code"], expected);
    if expected == "INTERNAL" {
        let panicked = lines
            .iter()
            .filter(|line| line["message"] == "panicked")
            .collect::<Vec<_>>();
        assert_eq!(panicked.len(), 1, "one ERROR line for the panic:\n{logs}");
        assert_eq!(panicked[0]["level"], "ERROR");
        assert_eq!(panicked[0]["span"]["client_request_id"], client_request_id);
        assert!(panicked[0]["panic.location"].is_string(), "{logs}");
    }
    assert!(!logs.contains(TOKEN), "no token in the logs");
}

/// Set in the child process that [`a_panic_anywhere_is_one_json_error_line_and_nothing_else`]
/// starts: the child sets logging up as the binary does, then panics.
const PANICKING_CHILD: &str = "PRINTJOB_GATEWAY_TEST_PANICKING_CHILD";

/// The panic hook, in a process of its own, since it is process-wide: no input makes the gateway
/// panic now (the one that did is fixed), and the rule must hold for the next bug too. The child
/// is this test binary, running only this test with `PANICKING_CHILD` set: it sets logging up
/// with `telemetry::init` (JSON), as `main` does, and panics on a runtime worker inside a span.
/// What it writes is what the gateway would write.
#[test]
fn a_panic_anywhere_is_one_json_error_line_and_nothing_else() {
    if std::env::var_os(PANICKING_CHILD).is_some() {
        return panic_as_the_gateway_would();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lifecycle::panics::a_panic_anywhere_is_one_json_error_line_and_nothing_else",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PANICKING_CHILD, "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // Rust's own hook writes its text to stderr, which log collectors read with stdout.
    assert_eq!(stderr, "", "nothing but JSON lines");
    // The test harness's own words on stdout ("running 1 test", "test … ok", the latter before
    // the child's first log line on the same line) are not the gateway's.
    let logged: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| line.find(r#"{"timestamp""#).map(|start| &line[start..]))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line:?}")))
        .collect();
    let panicked: Vec<&serde_json::Value> = logged
        .iter()
        .filter(|line| line["message"] == "panicked")
        .collect();
    assert_eq!(panicked.len(), 1, "one line for the panic:\n{stdout}");
    let line = panicked[0];
    assert_eq!(line["level"], "ERROR");
    assert_eq!(
        line["panic.message"],
        "index out of bounds: the len is 0 but the index is 0"
    );
    assert!(
        line["panic.location"]
            .as_str()
            .unwrap()
            .contains("panics.rs"),
        "{line}"
    );
    assert!(
        line["panic.backtrace"].is_string(),
        "RUST_BACKTRACE asked for one: {line}"
    );
    assert_eq!(
        line["span"]["client_request_id"], "panicking-call",
        "{line}"
    );
}

/// What the child does: logging as the binary sets it up, and a panic inside a call's span on a
/// runtime worker.
fn panic_as_the_gateway_would() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let telemetry = printjob_gateway::telemetry::init(&printjob_gateway::telemetry::Settings {
            log_format: printjob_gateway::telemetry::LogFormat::Json,
            ..Default::default()
        })
        .unwrap();
        let span = tracing::info_span!("cancel", client_request_id = "panicking-call");
        let work = tokio::spawn(tracing::Instrument::instrument(
            async {
                let attempts: Vec<u32> = std::hint::black_box(Vec::new());
                attempts[0]
            },
            span,
        ));
        assert!(work.await.unwrap_err().is_panic());
        telemetry.shutdown().await;
    });
}
