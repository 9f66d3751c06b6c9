//! The on-behalf-of exchange's secrets stay secret: the client secret, the client assertions
//! (signed or federated), the callers' tokens and the exchanged tokens never reach a log line at
//! any level, a status, or a metric; and a gateway whose exchange cannot work does not start.

use std::{path::Path, time::Duration};

use printjob_gateway::{
    Listeners,
    entra::{CredentialSource, TokenExchange},
    serve,
};
use tonic::Code;

use crate::support::{
    FakeGraph, Reply,
    fake_entra::{CLIENT_ID, EntraReply, FakeEntra, TENANT, obo_gateway},
    gateway::{Call, settings},
    logs::Captured,
    metrics::metrics,
    process::{BINARY, GatewayProcess},
};

const SECRET: &str = "s3cr3t~client.value-1";
const FEDERATED: &str = "eyJhbGciOiJSUzI1NiJ9.ZmVkZXJhdGVkLXMzY3IzdA.c2ln";
const CALLERS: [&str; 3] = [
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.czNjcjN0LXRva2VuLW9uZQ.c2lnbmF0dXJl",
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.czNjcjN0LXRva2VuLXR3bw.c2lnbmF0dXJl",
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.czNjcjN0LXRva2VuLXRocmVl.c2lnbmF0dXJl",
];

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Calls that exchange, reuse, get refused by Graph and by Entra (with a claims challenge), with
/// each of the three credentials; returns everything the callers saw.
async fn exercise(dir: &Path, graph: &FakeGraph, entra: &FakeEntra) -> Vec<String> {
    let mut seen = Vec::new();
    let secret = CredentialSource::SecretFile(write(dir, "secret", &format!("{SECRET}\n")));
    let certificate = CredentialSource::CertificateFile(write(
        dir,
        "client.pem",
        include_str!("../fixtures/client-certificate.pem"),
    ));
    let federated = CredentialSource::FederatedTokenFile(write(dir, "federated", FEDERATED));
    for credential in [secret, certificate, federated] {
        let gateway = obo_gateway(graph, entra, credential).await;
        let call = |caller: &str| {
            gateway
                .call()
                .authorization(Some(&format!("Bearer {caller}")))
        };
        call(CALLERS[0]).send().await.unwrap();
        call(CALLERS[0]).send().await.unwrap();
        graph.set_reply(Reply::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Expired.",
        ));
        seen.push(format!("{:?}", call(CALLERS[0]).send().await.unwrap_err()));
        graph.set_reply(Reply::no_content());
        entra.script([EntraReply::error_body(
            400,
            serde_json::json!({
                "error": "interaction_required",
                "error_codes": [50079],
                "claims": r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#,
            }),
        )]);
        seen.push(format!("{:?}", call(CALLERS[1]).send().await.unwrap_err()));
        entra.script([EntraReply::error(400, "invalid_grant", 500133)]);
        seen.push(format!("{:?}", call(CALLERS[2]).send().await.unwrap_err()));
        seen.push(metrics(gateway.admin_addr).await);
    }
    seen
}

/// Every secret of the exchange that the fakes saw.
fn secrets(entra: &FakeEntra) -> Vec<String> {
    let mut secrets: Vec<String> = [SECRET, FEDERATED].map(str::to_owned).into();
    secrets.extend(CALLERS.map(str::to_owned));
    for request in entra.requests() {
        secrets.extend(request.field("client_assertion").map(str::to_owned));
        secrets.extend(request.issued);
    }
    secrets
}

#[test]
fn no_secret_or_token_of_the_exchange_reaches_a_log_line_a_status_or_a_metric() {
    let logs = Captured::default();
    let _logging = logs.install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (seen, secrets) = runtime.block_on(async {
        let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
        let seen = exercise(dir.path(), &graph, &entra).await;
        (seen, secrets(&entra))
    });
    drop(runtime);

    let logs = logs.text();
    // Five fixed secrets, three issued tokens, and six assertions (three signed, three federated).
    assert_eq!(secrets.len(), 14, "every credential exchanged: {secrets:?}");
    assert!(logs.lines().count() > 100, "TRACE logging is captured");
    assert!(
        logs.contains("Entra ID refused the token request"),
        "{logs}"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line carries {secret}"
        );
        for answer in &seen {
            assert!(!answer.contains(secret.as_str()), "{secret} in {answer}");
        }
    }
}

#[tokio::test]
async fn the_binary_takes_the_workload_identity_environment_and_logs_no_secret_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(
        dir.path(),
        "azure-identity-token",
        &format!("{FEDERATED}\n"),
    );
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let authority = entra.authority();
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph.url()],
        &[
            ("RUST_LOG", "trace"),
            ("PRINTJOB_GATEWAY_TOKEN_EXCHANGE", "obo"),
            ("AZURE_AUTHORITY_HOST", &authority),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    )
    .await;
    let call =
        |caller: &str| Call::to(gateway.grpc_addr).authorization(Some(&format!("Bearer {caller}")));

    call(CALLERS[0]).send().await.unwrap();
    entra.script([EntraReply::error(400, "invalid_grant", 65001)]);
    let status = call(CALLERS[1]).send().await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{logs}");
    let request = &entra.requests()[0];
    assert_eq!(request.target, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(request.field("client_id"), Some(CLIENT_ID));
    assert_eq!(request.field("client_assertion"), Some(FEDERATED));
    assert!(logs.lines().count() > 50, "trace logging is on:\n{logs}");
    for secret in secrets(&entra) {
        for line in logs.lines() {
            assert!(
                !line.contains(&secret),
                "a log line carries {secret}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn a_credential_that_cannot_be_loaded_stops_start_up_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let key_only = write(dir.path(), "key-only.pem", {
        let pem = include_str!("../fixtures/client-certificate.pem");
        &pem[pem.find("-----BEGIN PRIVATE KEY-----").unwrap()..]
    });
    let cases = [
        (
            CredentialSource::SecretFile(dir.path().join("missing")),
            "missing",
        ),
        (
            CredentialSource::SecretFile(write(dir.path(), "empty", "\n")),
            "is empty",
        ),
        (
            CredentialSource::CertificateFile(key_only),
            "no certificate",
        ),
        (
            CredentialSource::FederatedTokenFile(dir.path().join("no-token")),
            "no-token",
        ),
    ];
    let graph = FakeGraph::start().await;
    for (credential, expected) in cases {
        let mut settings = settings(&graph.url());
        settings.token_exchange.exchange = TokenExchange::Obo;
        settings.token_exchange.tenant_id = Some(TENANT.to_owned());
        settings.token_exchange.client_id = Some(CLIENT_ID.to_owned());
        settings.token_exchange.credential = Some(credential);
        let listeners = Listeners::bind(&settings).await.unwrap();

        let error = serve(settings, listeners, std::future::pending())
            .await
            .unwrap_err();

        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain = format!("{chain}: {cause}");
            source = cause.source();
        }
        assert!(chain.contains("on-behalf-of"), "{chain}");
        assert!(chain.contains(expected), "{expected} in {chain}");
    }
}

#[test]
fn the_binary_refuses_an_incomplete_on_behalf_of_setting() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", SECRET);
    let secret = secret.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "--token-exchange",
                "obo",
                "--client-id",
                "c",
                "--client-secret-file",
                secret,
            ],
            "--tenant-id",
        ),
        (
            &[
                "--token-exchange",
                "obo",
                "--tenant-id",
                "t",
                "--client-id",
                "c",
            ],
            "client credential",
        ),
        (
            &[
                "--token-exchange",
                "obo",
                "--tenant-id",
                "t",
                "--client-id",
                "c",
                "--client-secret-file",
                secret,
                "--federated-token-file",
                secret,
            ],
            "exactly one client credential",
        ),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(BINARY)
            .env_clear()
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(expected), "{expected} in {stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
}
