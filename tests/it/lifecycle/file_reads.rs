//! Nothing blocks a runtime worker or start-up: the files an operator points the gateway at (the
//! client credential, the TLS certificate) are read off the runtime's workers, within a time limit,
//! so that a hung volume freezes neither the API nor the probes nor SIGTERM, and start-up answers
//! SIGTERM and SIGINT at every step. A FIFO that nobody writes stands in for a hung volume: opening
//! and reading it block for as long as the test wants, which is what a stalled mount does.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{io::AsyncReadExt, process::Child};

use crate::support::{
    FakeGraph,
    fake_entra::{CLIENT_ID, TENANT},
    http_client,
    pki::make_pki,
    process::{BINARY, GatewayProcess},
};

/// Far longer than a process needs to exit after a signal, even on a loaded machine, and far
/// shorter than never, which is what a start-up that ignores its signals takes.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `fifo` for writing, which returns once a reader has opened it: the event that says the
/// gateway is now inside its read. The test holds the file and never writes, so the read waits.
async fn opened_by_the_gateway(fifo: PathBuf, gateway: &mut Child) -> File {
    let path = fifo.clone();
    let writer = tokio::task::spawn_blocking(move || File::options().write(true).open(path));
    tokio::select! {
        writer = writer => writer.unwrap().unwrap(),
        exit = gateway.wait() => {
            // Lets the waiting open return, so that the test ends instead of waiting for it.
            let _reader = File::open(&fifo);
            panic!("the gateway exited before reading the file: {exit:?}")
        }
    }
}

/// The gateway binary with JSON logs, listening on `127.0.0.1:0`, exchanging tokens with
/// `federated_token_file` as its client credential; its stdout and stderr piped.
fn spawn_with_federated_token_file(federated_token_file: &Path, graph: &FakeGraph) -> Child {
    let authority = format!("http://{}/", graph.addr);
    tokio::process::Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--graph-url", &graph.url()])
        .args(["--token-exchange", "obo", "--entra-authority", &authority])
        .args(["--tenant-id", TENANT, "--client-id", CLIENT_ID])
        .arg("--federated-token-file")
        .arg(federated_token_file)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits up to `within` for `child` to exit; its exit status and everything it wrote.
async fn exit_within(mut child: Child, within: Duration) -> (ExitStatus, String) {
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("the gateway exits in time")
        .unwrap();
    let mut output = String::new();
    stdout.read_to_string(&mut output).await.unwrap();
    stderr.read_to_string(&mut output).await.unwrap();
    (status, output)
}

#[tokio::test]
async fn sigterm_and_sigint_end_a_start_up_stuck_reading_its_credential() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("azure-identity-token");
        mkfifo(&fifo);
        let graph = FakeGraph::start().await;
        let mut gateway = spawn_with_federated_token_file(&fifo, &graph);
        let _writer = opened_by_the_gateway(fifo, &mut gateway).await;

        let pid = gateway.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let (status, logs) = exit_within(gateway, PROMPTLY).await;

        assert_eq!(status.code(), Some(0), "SIG{signal}: {status:?}\n{logs}");
        assert!(logs.contains(&format!("SIG{signal} received")), "{logs}");
        assert!(
            logs.contains("stopped during start-up, before serving"),
            "{logs}"
        );
        for line in logs.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "every line is JSON: {line:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_credential_read_that_never_ends_fails_start_up_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("azure-identity-token");
    mkfifo(&fifo);
    let graph = FakeGraph::start().await;
    let mut gateway = spawn_with_federated_token_file(&fifo, &graph);
    let _writer = opened_by_the_gateway(fifo.clone(), &mut gateway).await;

    // The read times out after 5 s (files::READ_TIMEOUT); the process then exits even though the
    // thread that reads is still stuck. 30 s leaves a loaded machine room.
    let (status, logs) = exit_within(gateway, Duration::from_secs(30)).await;

    assert_eq!(status.code(), Some(1), "{status:?}\n{logs}");
    assert!(logs.contains("took longer than 5s"), "{logs}");
    assert!(
        logs.contains(fifo.to_str().unwrap()),
        "names the file: {logs}"
    );
}

#[tokio::test]
async fn a_certificate_file_that_hangs_freezes_neither_the_api_nor_the_probes_with_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            // The sidecar's advice: one worker, which a blocking read would take whole.
            "--worker-threads",
            "1",
        ],
        &[],
    )
    .await;
    let healthz = format!("http://{}/healthz", gateway.admin_addr);
    let client = http_client();
    assert!(
        client
            .get(&healthz)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    // The certificate's volume hangs: the reloader sees a new file and is stuck reading it.
    std::fs::remove_file(&cert).unwrap();
    mkfifo(&cert);
    let writer = tokio::task::spawn_blocking(move || File::options().write(true).open(cert));
    let _writer = tokio::time::timeout(PROMPTLY, writer)
        .await
        .expect("the reloader opens the new certificate within its poll")
        .unwrap()
        .unwrap();

    let answered = tokio::time::timeout(PROMPTLY, client.get(&healthz).send())
        .await
        .expect("/healthz answers while a certificate read hangs")
        .unwrap();
    assert!(answered.status().is_success());
    let metrics = tokio::time::timeout(
        PROMPTLY,
        client
            .get(format!("http://{}/metrics", gateway.admin_addr))
            .send(),
    )
    .await
    .expect("/metrics answers while a certificate read hangs")
    .unwrap();
    assert!(metrics.status().is_success());
    gateway
        .wait_for_log("the TLS files changed but do not load", PROMPTLY)
        .await;
    let (status, logs) = gateway.terminate(PROMPTLY).await;
    assert!(
        status.success(),
        "SIGTERM still ends it: {status:?}\n{logs}"
    );
    assert!(logs.contains("took longer than 5s"), "{logs}");
}
