//! What the gateway tells a caller is bounded, whatever Graph or Entra ID sent: a `RetryInfo` is
//! never longer than `--retry-after-max`, and a `www-authenticate` challenge too long for gRPC
//! clients is dropped (and logged) rather than turn the caller's status into another one.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use printjob_gateway::{entra::CredentialSource, status::MAX_WWW_AUTHENTICATE_BYTES};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TestGateway,
    fake_entra::{EntraReply, FakeEntra, TENANT, obo_gateway_with},
};

/// `Retry-After` in seconds as a hostile or broken server might send it: 3,170 years.
const CENTURIES: &str = "99999999999";

/// One attempt per call, so that the answer is the first one, and a `--retry-after-max` of 2 s.
fn capped(settings: &mut printjob_gateway::Settings) {
    settings.calls.retry.max_attempts = 1;
    settings.calls.retry.retry_after_max = Duration::from_secs(2);
}

fn secret_file(dir: &std::path::Path) -> CredentialSource {
    let path = dir.join("client-secret");
    std::fs::write(&path, "s3cr3t~client.value-1\n").unwrap();
    CredentialSource::SecretFile(path)
}

#[tokio::test]
async fn graphs_retry_after_reaches_the_caller_cut_to_retry_after_max() {
    for status in [429, 503] {
        let reply = Reply::graph_error(status, "TooManyRequests", "Slow down.")
            .header("retry-after", CENTURIES);
        let graph = FakeGraph::replying(reply).await;
        let gateway = TestGateway::start_with(&graph.url(), capped).await;

        let answer = gateway.call().send().await.unwrap_err();

        assert!(
            matches!(answer.code(), Code::ResourceExhausted | Code::Unavailable),
            "{answer:?}"
        );
        assert_eq!(
            answer.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(2)),
            "HTTP {status}: Retry-After {CENTURIES} is cut to --retry-after-max"
        );
    }
}

#[tokio::test]
async fn entras_retry_after_reaches_the_caller_cut_to_retry_after_max() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    entra.set_reply(EntraReply::error(429, "", 0).header("retry-after", CENTURIES));
    let gateway = obo_gateway_with(&graph, &entra, secret_file(dir.path()), capped).await;

    let answer = gateway.call().send().await.unwrap_err();

    assert_eq!(answer.code(), Code::ResourceExhausted, "{answer:?}");
    assert_eq!(
        answer.get_details_error_info().unwrap().reason,
        "ENTRA_THROTTLED"
    );
    assert_eq!(
        answer.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(2)),
        "Entra's Retry-After {CENTURIES} is cut to --retry-after-max"
    );
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_challenge_from_graph_too_long_for_grpc_clients_is_dropped_and_the_status_stays() {
    // 30 KB: over the 8 KiB of metadata that grpcio and grpc-java accept, and over the 16 KiB
    // of tonic's client, which fail the call with another status when it is forwarded.
    let long = format!(r#"Bearer realm="", claims="{}""#, "A".repeat(30_000));
    let just_fits = format!(
        r#"Bearer realm="", claims="{}""#,
        "B".repeat(MAX_WWW_AUTHENTICATE_BYTES - 26)
    );
    assert_eq!(just_fits.len(), MAX_WWW_AUTHENTICATE_BYTES);
    for (challenge, forwarded) in [(&long, false), (&just_fits, true)] {
        let reply = Reply::graph_error(401, "InvalidAuthenticationToken", "Token expired.")
            .header("www-authenticate", challenge);
        let graph = FakeGraph::replying(reply).await;
        let gateway = TestGateway::start_with(&graph.url(), capped).await;

        let answer = gateway.call().send().await.unwrap_err();

        assert_eq!(answer.code(), Code::Unauthenticated, "{answer:?}");
        assert_eq!(
            answer.get_details_error_info().unwrap().reason,
            "INVALID_AUTHENTICATION_TOKEN"
        );
        let sent = answer.metadata().get("www-authenticate");
        assert_eq!(
            sent.map(|value| value.to_str().unwrap()),
            forwarded.then_some(challenge.as_str()),
            "a challenge of {} bytes",
            challenge.len()
        );
    }
}

#[tokio::test]
async fn the_longest_claims_challenge_entra_may_send_still_reaches_the_caller() {
    // The exchange keeps a claims challenge of up to 4 KiB; base64-encoded in the challenge, it
    // must still fit under the bound above, or a caller could never pass it up.
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let prefix = r#"{"access_token":{"acrs":{"values":[""#;
    let suffix = r#""]}}}"#;
    let claims = format!(
        "{prefix}{}{suffix}",
        "c".repeat(4096 - prefix.len() - suffix.len())
    );
    assert_eq!(claims.len(), 4096);
    entra.set_reply(EntraReply::error_body(
        400,
        serde_json::json!({
            "error": "interaction_required",
            "error_description": "AADSTS50079: Multi-factor authentication required.",
            "error_codes": [50079],
            "claims": claims,
        }),
    ));
    let gateway = obo_gateway_with(&graph, &entra, secret_file(dir.path()), capped).await;

    let answer = gateway.call().send().await.unwrap_err();

    assert_eq!(answer.code(), Code::Unauthenticated, "{answer:?}");
    let challenge = answer.metadata().get("www-authenticate").unwrap();
    assert_eq!(
        challenge.to_str().unwrap(),
        format!(
            r#"Bearer realm="", authorization_uri="http://{}/{TENANT}/oauth2/v2.0/authorize", error="insufficient_claims", claims="{}""#,
            entra.addr,
            STANDARD.encode(&claims)
        )
    );
    assert!(challenge.len() <= MAX_WWW_AUTHENTICATE_BYTES);
}
