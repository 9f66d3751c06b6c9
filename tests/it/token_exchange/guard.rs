//! The on-behalf-of exchange as Entra ID and MSAL behave, and a token endpoint or callers that
//! cannot hurt the gateway: claims challenges whatever `error` says, throttling never re-sent
//! before `Retry-After`, AADSTS50196 and AADSTS70021, refusals remembered, tokens that are not
//! JWTs refused before any exchange, the exchange rate bounded, a shared exchange under its own
//! bound, `expires_in` clamped, and start-up checks of the tenant and the cloud.

use std::time::{Duration, Instant};

use printjob_gateway::{
    Listeners,
    entra::{CredentialSource, MAX_CLAIMS_LEN, TokenExchange},
    serve,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph,
    fake_entra::{
        CLIENT_ID, EntraReply, FakeEntra, TENANT, bearer_jwt, obo_gateway, obo_gateway_with,
        secret_file, secret_obo,
    },
    gateway::settings,
    process::GatewayProcess,
};

fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().unwrap().reason
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or_else(|| panic!("RetryInfo in {status:?}"))
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_never_reaches_entra() {
    let (graph, entra, gateway, _dir) = secret_obo().await;

    for token in [
        "garbage",
        "a.b.c",
        "x.eyJzdWIiOiJ1In0.c2ln",
        "eyJhbGciOiJSUzI1NiJ9..c2ln",
    ] {
        let status = gateway
            .call()
            .authorization(Some(&format!("Bearer {token}")))
            .send()
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}: {status:?}");
        assert_eq!(reason(&status), "MALFORMED_CREDENTIALS");
        assert_eq!(
            status.message(),
            "the caller's token is not a JWT: the on-behalf-of exchange takes an access token \
             that Entra ID issued for this service's API",
            "{token}"
        );
    }
    assert!(entra.requests().is_empty());
    assert!(graph.requests().is_empty());
}

/// 300 garbage tokens: 100 that are not JWTs (no request), one JWT-shaped token sent 100 times
/// (its refusal is remembered: one request), and 100 different JWT-shaped ones (the exchange
/// rate: five seconds' worth at once, then the rate).
#[tokio::test]
async fn three_hundred_garbage_tokens_make_a_handful_of_entra_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    entra.set_reply(EntraReply::error(400, "invalid_request", 50027));
    let gateway = obo_gateway_with(&graph, &entra, secret_file(dir.path()), |settings| {
        settings.token_exchange.rate = 2;
    })
    .await;

    let started = Instant::now();
    let mut rate_limited = 0;
    for i in 0..300 {
        let token = match i / 100 {
            0 => format!("Bearer garbage-{i}"),
            1 => bearer_jwt("the-same-garbage"),
            _ => bearer_jwt(&format!("garbage-{i}")),
        };
        let status = gateway
            .call()
            .authorization(Some(&token))
            .send()
            .await
            .unwrap_err();
        if status.code() == Code::ResourceExhausted {
            assert_eq!(reason(&status), "TOKEN_EXCHANGE_RATE_LIMITED");
            assert!(retry_delay(&status) <= Duration::from_millis(500));
            rate_limited += 1;
        } else {
            assert_eq!(status.code(), Code::Unauthenticated, "{i}: {status:?}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let requests = entra.requests().len();
    // The bucket's ten (the repeated token's one request among them), and what two a second
    // refill meanwhile.
    let most = 10 + (2.0 * elapsed).ceil() as usize;
    assert!(
        requests <= most,
        "{requests} requests in {elapsed:.1} s, at most {most}"
    );
    assert!(requests >= 10, "the whole burst is used: {requests}");
    assert_eq!(rate_limited, 300 - 100 - 100 - (requests - 1));
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_shared_exchange_outlives_the_first_callers_deadline() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    entra.hold();

    let short = tokio::spawn(
        gateway
            .call()
            .timeout(Duration::from_millis(600))
            .send_without_client_timer(),
    );
    entra.wait_for_requests(1).await;
    // A wide deadline: it must outlast the short call's and the release below on a loaded
    // machine.
    let long = tokio::spawn(gateway.call().timeout(Duration::from_secs(20)).send());
    let status = short.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason(&status), "TOKEN_EXCHANGE_DEADLINE_EXCEEDED");
    entra.release();

    long.await
        .unwrap()
        .expect("the exchange the short call started serves the long one");
    assert_eq!(entra.requests().len(), 1, "one exchange for both");
    assert_eq!(graph.requests().len(), 1);
}

#[tokio::test]
async fn an_expires_in_past_any_clock_is_clamped_and_the_token_cached() {
    let (_graph, entra, gateway, _dir) = secret_obo().await;
    entra.set_reply(EntraReply::token(i64::MAX as u64));

    gateway.call().send().await.unwrap();
    gateway.call().send().await.unwrap();
    assert_eq!(entra.requests().len(), 1);

    // Past u64: not a number of seconds at all, a malformed answer.
    entra.set_reply(EntraReply::Token(serde_json::json!(1e30)));
    let status = gateway
        .call()
        .authorization(Some(&bearer_jwt("another")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(reason(&status), "ENTRA_MALFORMED_ANSWER");
}

/// Issue 24's "done when", against the binary: the caller gets a status and every log line is
/// JSON (a panic's text would not be).
#[tokio::test]
async fn the_binary_answers_an_expires_in_of_2_63_with_a_status_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    entra.set_reply(EntraReply::token(i64::MAX as u64));
    let authority = entra.authority();
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--token-exchange",
            "obo",
            "--entra-authority",
            &authority,
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            secret.to_str().unwrap(),
        ],
        &[],
    )
    .await;

    let answer = crate::support::gateway::Call::to(gateway.grpc_addr)
        .send()
        .await;
    answer.expect("a token that lives 28 hours at most");

    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}\n{logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert!(logs.contains("\"grpc_code\":\"OK\""), "{logs}");
}

/// MSAL never sends a request again before Entra's `Retry-After`; the calls that need it end at
/// once with what is left. The request declares `x-ms-lib-capability` as MSAL does, and carries
/// the call's `client-request-id`.
#[tokio::test]
async fn a_throttled_exchange_is_sent_once_and_calls_within_retry_after_end_at_once() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    entra.set_reply(EntraReply::error(429, "", 0).header("retry-after", "60"));
    let request_id = "5e0bd6c6-53c5-4b7a-8a43-0d1c2a3b4c5d";

    let status = gateway
        .call()
        .metadata("x-request-id", request_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "ENTRA_THROTTLED");
    let first = retry_delay(&status);
    assert!(first > Duration::ZERO && first <= Duration::from_secs(60));

    for i in 0..5 {
        // The same caller, and others: Entra's 429 holds back every exchange.
        let call = gateway.call();
        let call = if i % 2 == 0 {
            call
        } else {
            call.authorization(Some(&bearer_jwt(&format!("other-{i}"))))
        };
        let started = Instant::now();
        let status = call.send().await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(&status), "ENTRA_THROTTLED");
        let left = retry_delay(&status);
        assert!(left > Duration::ZERO && left <= first, "{left:?}");
        // Wide: "at once" means without waiting for Retry-After or a request.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    let requests = entra.requests();
    assert_eq!(requests.len(), 1, "one request in Retry-After");
    let headers = &requests[0].headers;
    assert_eq!(headers["x-ms-lib-capability"], "retry-after, h429");
    assert_eq!(headers["client-request-id"], request_id);
    assert_eq!(headers["return-client-request-id"], "true");
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_failure_of_entra_with_retry_after_holds_every_exchange_back() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    entra.set_reply(
        EntraReply::error(503, "temporarily_unavailable", 90033).header("retry-after", "30"),
    );

    for i in 0..3 {
        let status = gateway
            .call()
            .authorization(Some(&bearer_jwt(&format!("caller-{i}"))))
            .send()
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "ENTRA_UNAVAILABLE");
        assert!(retry_delay(&status) <= Duration::from_secs(30));
    }
    assert_eq!(entra.requests().len(), 1, "neither retried nor re-sent");
    assert!(graph.requests().is_empty());
}

/// Entra breaks a client's loop with `invalid_grant` AADSTS50196; MSAL reports it as
/// throttling, and the same request is held back while another caller's goes.
#[tokio::test]
async fn aadsts50196_is_throttling_of_that_request() {
    let (_graph, entra, gateway, _dir) = secret_obo().await;
    entra.script([EntraReply::error(400, "invalid_grant", 50196)]);

    for _ in 0..3 {
        let status = gateway.call().send().await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(&status), "ENTRA_THROTTLED");
        assert!(retry_delay(&status) <= Duration::from_secs(5));
    }
    assert_eq!(entra.requests().len(), 1);
    gateway
        .call()
        .authorization(Some(&bearer_jwt("someone-else")))
        .send()
        .await
        .unwrap();
    assert_eq!(entra.requests().len(), 2);
}

/// Right after a federated credential is created, Entra answers AADSTS70021 until it has
/// propagated; Microsoft recommends retrying.
#[tokio::test]
async fn aadsts70021_is_retried_until_the_federated_credential_propagates() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("azure-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzYSJ9.c2ln").unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let gateway = obo_gateway(&graph, &entra, CredentialSource::FederatedTokenFile(token)).await;
    let pending = || {
        EntraReply::error_body(
            400,
            serde_json::json!({
                "error": "invalid_client",
                "error_description": "AADSTS70021: No matching federated identity record found for presented assertion.",
                "error_codes": [70021],
            }),
        )
    };
    // More than --max-attempts: propagation is bounded by the deadline, not by attempts.
    entra.script([pending(), pending(), pending(), pending()]);

    gateway
        .call()
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the fifth request gets a token");
    assert_eq!(entra.requests().len(), 5);
}

#[tokio::test]
async fn a_claims_challenge_past_the_bound_is_reported_not_dropped() {
    let (_graph, entra, gateway, _dir) = secret_obo().await;
    let claims = format!(
        r#"{{"access_token":{{"polids":{{"essential":true,"values":["{}"]}}}}}}"#,
        "p".repeat(MAX_CLAIMS_LEN)
    );
    entra.script([EntraReply::error_body(
        400,
        serde_json::json!({"error": "invalid_grant", "error_codes": [50076], "suberror": "basic_action", "claims": claims}),
    )]);

    let status = gateway.call().send().await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "INTERACTION_REQUIRED");
    assert_eq!(
        info.metadata["claimsChallenge"],
        format!("omitted: longer than {MAX_CLAIMS_LEN} bytes")
    );
    assert!(
        status.message().contains("not passed on"),
        "{}",
        status.message()
    );
    assert!(status.metadata().get("www-authenticate").is_none());
}

/// Start-up errors, with their causes, as one line.
async fn start_up_error(change: impl FnOnce(&mut printjob_gateway::Settings)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start().await;
    let mut settings = settings(&graph.url());
    let exchange = &mut settings.token_exchange;
    exchange.exchange = TokenExchange::Obo;
    exchange.tenant_id = Some(TENANT.to_owned());
    exchange.client_id = Some(CLIENT_ID.to_owned());
    exchange.credential = Some(secret_file(dir.path()));
    change(&mut settings);
    let listeners = Listeners::bind(&settings).await.unwrap();
    // Wide: start-up stops at once; without the check it would serve until the timeout.
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        serve(settings, listeners, std::future::pending()),
    )
    .await
    .expect("start-up stops")
    .unwrap_err();
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain = format!("{chain}: {cause}");
        source = cause.source();
    }
    chain
}

#[tokio::test]
async fn common_organizations_consumers_or_a_bad_tenant_stop_start_up() {
    for tenant in ["common", "organizations", "consumers"] {
        let error = start_up_error(|settings| {
            settings.token_exchange.tenant_id = Some(tenant.to_owned());
        })
        .await;
        assert!(
            error.contains(tenant) && error.contains("names no tenant"),
            "{error}"
        );
    }
    let error = start_up_error(|settings| {
        settings.token_exchange.tenant_id = Some("not a tenant".to_owned());
    })
    .await;
    assert!(
        error.contains("neither a tenant GUID nor a domain name"),
        "{error}"
    );
}

#[tokio::test]
async fn a_graph_url_and_an_authority_of_different_clouds_stop_start_up() {
    let error = start_up_error(|settings| {
        settings.graph.base_url = "https://graph.microsoft.com/v1.0".parse().unwrap();
        settings.token_exchange.authority = "https://login.microsoftonline.us/".parse().unwrap();
        // The scope alone would pass: the Graph URL is what is checked here.
        settings.token_exchange.graph_scope = Some("https://graph.microsoft.us/.default".into());
    })
    .await;
    assert!(
        error.contains("graph.microsoft.com")
            && error.contains("https://login.microsoftonline.us")
            && error.contains("same cloud"),
        "{error}"
    );
    let error = start_up_error(|settings| {
        settings.graph.base_url = "https://graph.microsoft.us/v1.0".parse().unwrap();
        settings.token_exchange.authority = "https://login.microsoftonline.us/".parse().unwrap();
        settings.token_exchange.graph_scope = Some("https://graph.microsoft.com/.default".into());
    })
    .await;
    assert!(error.contains("graph.microsoft.com"), "{error}");
}
