//! The on-behalf-of exchange: the caller's token becomes a Graph token from Entra ID (a fake
//! token endpoint on loopback that records every form), cached per caller's token, with one
//! exchange in flight per token, and every Entra error mapped to a status the caller can act on.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use printjob_gateway::{
    auth::BearerToken,
    credentials::GraphCredentials,
    entra::{CredentialSource, ExchangeMetrics, TokenExchange},
    graph,
    metrics::{Metrics, subsystem},
    request::ClientRequestId,
    retry::RetryPolicy,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TOKEN, TestGateway,
    fake_entra::{
        CLIENT_ID, CLIENT_SECRET, EntraReply, FakeEntra, TENANT, bearer_jwt, caller_jwt,
        obo_gateway, obo_gateway_with, secret_file, secret_obo, secret_obo_with,
    },
    metrics::{metrics, sample},
};

/// The test-only client certificate: a chain (the client's certificate, then its CA) and the
/// client's RSA key; see `fixtures/README.md`.
const CLIENT_CERTIFICATE: &str = include_str!("../fixtures/client-certificate.pem");

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

fn bearer(request: &crate::support::fake_graph::Recorded) -> &str {
    request.headers["authorization"].to_str().unwrap()
}

/// The `authorization` of each request Graph received, in order.
fn bearers(graph: &FakeGraph) -> Vec<String> {
    graph
        .requests()
        .iter()
        .map(|r| bearer(r).to_owned())
        .collect()
}

async fn scrape(gateway: &TestGateway) -> String {
    metrics(gateway.admin_addr).await
}

#[tokio::test]
async fn a_client_secret_exchange_sends_the_documented_form_and_graph_gets_the_new_token() {
    let (graph, entra, gateway, _dir) = secret_obo().await;

    gateway.call().send().await.unwrap();

    let requests = entra.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.target, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: BTreeMap<&str, &str> = request
        .form
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        form,
        BTreeMap::from([
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", CLIENT_ID),
            ("assertion", TOKEN),
            ("scope", "https://127.0.0.1/.default"),
            ("requested_token_use", "on_behalf_of"),
            ("client_secret", CLIENT_SECRET),
        ])
    );
    assert_eq!(
        request.form.len(),
        6,
        "each field once: {:?}",
        request.field_names()
    );
    let graph_requests = graph.requests();
    assert_eq!(graph_requests.len(), 1);
    assert_eq!(bearer(&graph_requests[0]), "Bearer graph-token-1");
}

#[tokio::test]
async fn a_certificate_signs_a_fresh_ps256_assertion_that_its_public_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.pem");
    std::fs::write(&path, CLIENT_CERTIFICATE).unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let gateway = obo_gateway_with(
        &graph,
        &entra,
        CredentialSource::CertificateFile(path),
        |settings| settings.token_exchange.graph_scope = Some(GRAPH_SCOPE.to_owned()),
    )
    .await;

    gateway.call().send().await.unwrap();
    gateway
        .call()
        .authorization(Some(&bearer_jwt("another-caller")))
        .send()
        .await
        .unwrap();

    let requests = entra.requests();
    assert_eq!(requests.len(), 2);
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let leaf = CertificateDer::pem_slice_iter(CLIENT_CERTIFICATE.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let public_key = certificate.public_key().subject_public_key.data.to_vec();
    let mut ids = BTreeSet::new();
    for request in &requests {
        assert_eq!(
            request.field_names(),
            [
                "assertion",
                "client_assertion",
                "client_assertion_type",
                "client_id",
                "grant_type",
                "requested_token_use",
                "scope"
            ]
        );
        assert_eq!(
            request.field("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(request.field("scope"), Some(GRAPH_SCOPE));
        let jwt = request.field("client_assertion").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWS in compact form");
        let json = |part: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        let (header, claims) = (json(parts[0]), json(parts[1]));
        let thumbprint =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()));
        assert_eq!(
            header,
            serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint})
        );
        assert_eq!(claims["aud"], entra.token_url());
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&CLIENT_ID.into(), &CLIENT_ID.into())
        );
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (nbf, iat, exp) = (
            claims["nbf"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        // Wide bounds: the point is a short lifetime that starts now, not the exact second.
        assert!((now - iat).abs() < 120 && nbf <= iat, "{claims}");
        assert!(exp > now && exp - nbf <= 600, "a short lifetime: {claims}");
        let jti = claims["jti"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(jti).is_ok(), "{jti}");
        ids.insert(jti.to_owned());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            &public_key,
        )
        .verify(signed.as_bytes(), &signature)
        .expect("the certificate's public key verifies the assertion");
    }
    assert_eq!(ids.len(), 2, "each exchange signs a new assertion");
}

#[tokio::test]
async fn the_federated_token_file_is_read_again_at_each_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("azure-identity-token");
    std::fs::write(&path, "federated.token-one\n").unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let gateway = obo_gateway(
        &graph,
        &entra,
        CredentialSource::FederatedTokenFile(path.clone()),
    )
    .await;

    gateway.call().send().await.unwrap();
    // The kubelet rotates the projected token by replacing the file.
    std::fs::write(&path, "federated.token-two").unwrap();
    gateway
        .call()
        .authorization(Some(&bearer_jwt("another-caller")))
        .send()
        .await
        .unwrap();

    let requests = entra.requests();
    let assertions: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.field("client_assertion"),
                r.field("client_assertion_type"),
                r.field("client_secret"),
            )
        })
        .collect();
    let kind = Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert_eq!(
        assertions,
        [
            (Some("federated.token-one"), kind, None),
            (Some("federated.token-two"), kind, None)
        ]
    );
}

#[tokio::test]
async fn a_cached_token_is_used_until_it_nears_expiry_and_tokens_never_share_an_entry() {
    let (graph, entra, gateway, _dir) = secret_obo().await;

    gateway.call().send().await.unwrap();
    gateway.call().send().await.unwrap();
    gateway
        .call()
        .authorization(Some(&bearer_jwt("another-caller")))
        .send()
        .await
        .unwrap();

    assert_eq!(entra.requests().len(), 2);
    let sent = bearers(&graph);
    assert_eq!(
        sent,
        [
            "Bearer graph-token-1",
            "Bearer graph-token-1",
            "Bearer graph-token-2"
        ]
    );
    let metrics = scrape(&gateway).await;
    let series = |s: &str| sample(&metrics, s);
    assert_eq!(
        series(r#"printjob_gateway_token_cache_lookups_total{result="hit"}"#),
        1.0
    );
    assert_eq!(
        series(r#"printjob_gateway_token_cache_lookups_total{result="miss"}"#),
        2.0
    );
    assert_eq!(
        series(r#"printjob_gateway_token_exchanges_total{outcome="ok"}"#),
        2.0
    );
    assert_eq!(
        series("printjob_gateway_token_exchange_duration_seconds_count"),
        2.0
    );
}

#[tokio::test]
async fn an_entry_expires_before_its_token_does() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    // A two-second token, with expires_in as a string: used for one second at most.
    entra.set_reply(EntraReply::Token("2".into()));
    let gateway = obo_gateway(&graph, &entra, secret_file(dir.path())).await;

    gateway.call().send().await.unwrap();
    // The passing of time is the point here: past the entry's life, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gateway.call().send().await.unwrap();

    assert_eq!(entra.requests().len(), 2);
    let sent = bearers(&graph);
    assert_eq!(sent, ["Bearer graph-token-1", "Bearer graph-token-2"]);
}

#[tokio::test]
async fn a_hundred_simultaneous_calls_with_one_token_make_one_exchange() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    let channel = gateway.channel().await;
    entra.hold();

    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(gateway.call().send_on(channel.clone())))
        .collect();
    // Hold Entra's answer until every call is in flight, so that all of them overlap the one
    // exchange; a call that had not yet looked when the answer came finds the cached token.
    let all_in_flight = async {
        entra.wait_for_requests(1).await;
        while sample(&scrape(&gateway).await, "printjob_gateway_calls_in_flight") < 100.0 {
            tokio::task::yield_now().await;
        }
    };
    // A bound only so that a broken gateway fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), all_in_flight)
        .await
        .expect("every call is in flight while Entra holds its answer");
    entra.release();
    for call in calls {
        call.await.unwrap().unwrap();
    }

    assert_eq!(entra.requests().len(), 1);
    assert_eq!(graph.requests().len(), 100);
    assert!(
        graph
            .requests()
            .iter()
            .all(|r| bearer(r) == "Bearer graph-token-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_a_hundred_callers_at_once_make_one_exchange_per_caller() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    let channel = gateway.channel().await;

    // 100 workers, each making 10 calls in turn with the callers' tokens, starting at its own:
    // every token is asked for by several calls at once.
    let workers: Vec<_> = (0..100)
        .map(|worker| {
            let (channel, call) = (channel.clone(), gateway.call());
            tokio::spawn(async move {
                for i in 0..10 {
                    let token = bearer_jwt(&format!("caller-{:03}", (worker + i * 10) % 100));
                    let call = call.clone().authorization(Some(&token));
                    call.send_on(channel.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let requests = entra.requests();
    let callers: BTreeSet<_> = requests
        .iter()
        .map(|r| r.field("assertion").unwrap().to_owned())
        .collect();
    assert_eq!((requests.len(), callers.len()), (100, 100));
    let graph_requests = graph.requests();
    assert_eq!(graph_requests.len(), 1000);
    let issued: BTreeSet<_> = requests
        .iter()
        .map(|r| format!("Bearer {}", r.issued.as_deref().unwrap()))
        .collect();
    assert!(graph_requests.iter().all(|r| issued.contains(bearer(r))));
}

/// The same rule at a scale that a debug build serves in seconds only without gRPC in the way:
/// 10,000 lookups through the gateway's own credentials handle, against the fake over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lookups_from_a_hundred_callers_make_a_hundred_exchanges() {
    let dir = tempfile::tempdir().unwrap();
    let entra = FakeEntra::start().await;
    let graph_settings = graph::Settings {
        resolver: crate::support::gateway::loopback_resolver(),
        ..graph::Settings::default()
    };
    let settings = printjob_gateway::entra::Settings {
        exchange: TokenExchange::Obo,
        authority: entra.authority().parse().unwrap(),
        tenant_id: Some(TENANT.to_owned()),
        client_id: Some(CLIENT_ID.to_owned()),
        credential: Some(secret_file(dir.path())),
        graph_scope: Some(GRAPH_SCOPE.to_owned()),
        ..Default::default()
    };
    let (scrape, metrics) =
        Metrics::with_subsystem(|registry| ExchangeMetrics::register(subsystem(registry)));
    let credentials =
        GraphCredentials::new(&settings, &graph_settings, RetryPolicy::default(), &metrics)
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

    let workers: Vec<_> = (0..100)
        .map(|worker| {
            let credentials = credentials.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..100 {
                    let caller = (worker + i) % 100;
                    let token =
                        BearerToken::from_token(&caller_jwt(&format!("caller-{caller:03}")))
                            .unwrap();
                    let sent = credentials
                        .graph_token(&token, deadline, &ClientRequestId::random())
                        .await
                        .unwrap();
                    seen.push((caller, sent.into_owned()));
                }
                seen
            })
        })
        .collect();
    let mut sent_for: BTreeMap<usize, Vec<BearerToken>> = BTreeMap::new();
    for worker in workers {
        for (caller, token) in worker.await.unwrap() {
            sent_for.entry(caller).or_default().push(token);
        }
    }

    let requests = entra.requests();
    assert_eq!(requests.len(), 100, "one exchange per caller's token");
    assert_eq!(sent_for.len(), 100);
    for (caller, tokens) in &sent_for {
        let request = requests
            .iter()
            .find(|r| r.field("assertion") == Some(&caller_jwt(&format!("caller-{caller:03}"))))
            .unwrap();
        let issued = BearerToken::from_token(request.issued.as_deref().unwrap()).unwrap();
        assert_eq!(tokens.len(), 100);
        assert!(
            tokens.iter().all(|token| *token == issued),
            "caller {caller}"
        );
    }
    let text = scrape.encode();
    assert_eq!(
        sample(
            &text,
            r#"printjob_gateway_token_cache_lookups_total{result="miss"}"#
        ),
        100.0
    );
    assert_eq!(
        sample(
            &text,
            r#"printjob_gateway_token_cache_lookups_total{result="hit"}"#
        ),
        9_900.0
    );
}

/// What a caller must see for an Entra answer.
struct Expected {
    code: Code,
    reason: &'static str,
    aadsts: Option<&'static str>,
}

#[tokio::test]
async fn every_entra_refusal_becomes_a_status_the_caller_can_act_on() {
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}}"#;
    let consent = EntraReply::error_body(
        400,
        serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS65001: The user or administrator has not consented to use the application.",
            "error_codes": [65001],
            "suberror": "consent_required",
            "trace_id": "t-1",
            "correlation_id": "c-1",
        }),
    );
    // What Entra really answers to Conditional Access in the on-behalf-of flow: `invalid_grant`
    // with `claims` and a `suberror` (MSAL.NET #4496), which is a claims challenge, not a token
    // to replace.
    let ca_challenge = EntraReply::error_body(
        400,
        serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication.",
            "error_codes": [50076],
            "suberror": "basic_action",
            "claims": claims,
            "trace_id": "t-2",
            "correlation_id": "c-2",
        }),
    );
    // `claims` alone decides, whatever `error` says (MSAL.NET's MsalClaimsChallengeException).
    let claims_only = EntraReply::error_body(
        400,
        serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS50158: External security challenge not satisfied.",
            "error_codes": [50158],
            "claims": claims,
            "trace_id": "t-2",
            "correlation_id": "c-2",
        }),
    );
    let challenge = EntraReply::error_body(
        400,
        serde_json::json!({
            "error": "interaction_required",
            "error_description": "AADSTS50079: Due to a configuration change made by your administrator, you must enroll in multi-factor authentication.",
            "error_codes": [50079],
            "suberror": "basic_action",
            "claims": claims,
            "trace_id": "t-2",
            "correlation_id": "c-2",
        }),
    );
    let cases = [
        (
            EntraReply::error(400, "invalid_grant", 500133),
            Expected {
                code: Code::Unauthenticated,
                reason: "INVALID_GRANT",
                aadsts: Some("AADSTS500133"),
            },
        ),
        (
            EntraReply::error(400, "invalid_grant", 500131),
            Expected {
                code: Code::Unauthenticated,
                reason: "INVALID_GRANT",
                aadsts: Some("AADSTS500131"),
            },
        ),
        (
            ca_challenge,
            Expected {
                code: Code::Unauthenticated,
                reason: "INTERACTION_REQUIRED",
                aadsts: Some("AADSTS50076"),
            },
        ),
        (
            claims_only,
            Expected {
                code: Code::Unauthenticated,
                reason: "INTERACTION_REQUIRED",
                aadsts: Some("AADSTS50158"),
            },
        ),
        (
            challenge,
            Expected {
                code: Code::Unauthenticated,
                reason: "INTERACTION_REQUIRED",
                aadsts: Some("AADSTS50079"),
            },
        ),
        (
            consent,
            Expected {
                code: Code::PermissionDenied,
                reason: "CONSENT_REQUIRED",
                aadsts: Some("AADSTS65001"),
            },
        ),
        (
            EntraReply::error(401, "invalid_client", 7000215),
            Expected {
                code: Code::Internal,
                reason: "ENTRA_CLIENT_REJECTED",
                aadsts: Some("AADSTS7000215"),
            },
        ),
        (
            EntraReply::error(400, "invalid_request", 90002),
            Expected {
                code: Code::Internal,
                reason: "ENTRA_REQUEST_REJECTED",
                aadsts: Some("AADSTS90002"),
            },
        ),
        (
            EntraReply::Answer {
                status: 200,
                headers: vec![],
                body: vec![b' '; 100 * 1024],
            },
            Expected {
                code: Code::Internal,
                reason: "ENTRA_MALFORMED_ANSWER",
                aadsts: None,
            },
        ),
    ];
    let (graph, entra, gateway, _dir) = secret_obo().await;

    let authorization_uri = format!("http://{}/{TENANT}/oauth2/v2.0/authorize", entra.addr);
    for (i, (reply, expected)) in cases.into_iter().enumerate() {
        entra.script([reply]);
        let sent = entra.requests().len();
        let caller = bearer_jwt(&format!("refused-caller-{i}"));
        let status = gateway
            .call()
            .authorization(Some(&caller))
            .send()
            .await
            .unwrap_err();

        assert_eq!(
            status.code(),
            expected.code,
            "{}: {status:?}",
            expected.reason
        );
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, expected.reason);
        assert_eq!(
            info.metadata.get("aadstsCode").map(String::as_str),
            expected.aadsts,
            "{}",
            expected.reason
        );
        if let Some(aadsts) = expected.aadsts {
            assert_eq!(info.domain, "login.microsoftonline.com");
            assert!(status.message().contains(aadsts), "{}", status.message());
        }
        let www_authenticate = status.metadata().get("www-authenticate");
        if expected.reason == "INTERACTION_REQUIRED" {
            let expected = format!(
                r#"Bearer realm="", authorization_uri="{authorization_uri}", error="insufficient_claims", claims="{}""#,
                STANDARD.encode(claims)
            );
            assert_eq!(www_authenticate.unwrap().to_str().unwrap(), expected);
            assert_eq!(
                info.metadata.get("traceId").map(String::as_str),
                Some("t-2")
            );
        } else {
            assert!(www_authenticate.is_none(), "{}", expected.reason);
        }
        assert!(status.metadata().get("client-request-id").is_some());
        assert_eq!(entra.requests().len(), sent + 1);
        // A refusal of the caller's token is remembered: the same token's next call gets it
        // again without a request to Entra (the caller needs a new token, which is a new key).
        // Refusals of the gateway's own request are not.
        let again = gateway.call().authorization(Some(&caller)).send().await;
        match expected.code {
            Code::Unauthenticated | Code::PermissionDenied => {
                let again = again.unwrap_err();
                assert_eq!(again.code(), expected.code);
                assert_eq!(
                    again.get_details_error_info().unwrap().reason,
                    expected.reason
                );
                assert_eq!(entra.requests().len(), sent + 1, "{}", expected.reason);
            }
            _ => {
                again.unwrap();
                assert_eq!(entra.requests().len(), sent + 2, "{}", expected.reason);
            }
        }
    }
    assert!(
        graph
            .requests()
            .iter()
            .all(|r| bearer(r).starts_with("Bearer graph-token-")),
        "Graph is never called with a refused exchange"
    );
    assert_eq!(graph.requests().len(), 3);
}

/// How Entra ID fails to answer in a case of the table below.
enum EntraFails {
    /// 503 `temporarily_unavailable` (no `Retry-After`) this many times, then a token.
    Times(usize),
    /// 503 `temporarily_unavailable` at every attempt.
    Always,
    /// Nothing listens at the authority.
    Unreachable,
}

/// Entra ID failing without `Retry-After` is retried at once within the call's deadline, up to
/// the attempts allowed (three by default), and then the call ends UNAVAILABLE with a reason
/// that says which failure; Graph is called only with a token.
#[tokio::test]
async fn failures_of_entra_without_retry_after_are_retried_within_the_deadline_then_unavailable() {
    struct Case {
        name: &'static str,
        entra: EntraFails,
        /// `None`: the call succeeds.
        refused: Option<(Code, &'static str)>,
        /// Requests to Entra ID, by the outcome the exchange metric counts them under.
        exchanges: &'static [(&'static str, f64)],
        graph_requests: usize,
    }
    let cases = [
        Case {
            name: "failing once, then a token",
            entra: EntraFails::Times(1),
            refused: None,
            exchanges: &[("unavailable", 1.0), ("ok", 1.0)],
            graph_requests: 1,
        },
        Case {
            name: "failing every time",
            entra: EntraFails::Always,
            refused: Some((Code::Unavailable, "ENTRA_UNAVAILABLE")),
            exchanges: &[("unavailable", 3.0), ("ok", 0.0)],
            graph_requests: 0,
        },
        Case {
            name: "unreachable",
            entra: EntraFails::Unreachable,
            refused: Some((Code::Unavailable, "ENTRA_UNREACHABLE")),
            exchanges: &[("unreachable", 3.0), ("ok", 0.0)],
            graph_requests: 0,
        },
    ];

    for case in cases {
        let name = case.name;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nowhere = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let unreachable = matches!(case.entra, EntraFails::Unreachable);
        let (graph, entra, gateway, _dir) = secret_obo_with(|settings| {
            if unreachable {
                settings.token_exchange.authority = nowhere.parse().unwrap();
            }
        })
        .await;
        let failure = || EntraReply::error(503, "temporarily_unavailable", 0);
        match case.entra {
            EntraFails::Times(times) => entra.script((0..times).map(|_| failure())),
            EntraFails::Always => entra.set_reply(failure()),
            EntraFails::Unreachable => {}
        }

        let outcome = gateway.call().send().await;

        match (case.refused, outcome) {
            (None, Ok(_)) => {}
            (Some((code, reason)), Err(status)) => {
                assert_eq!(status.code(), code, "{name}: {status:?}");
                let info = status
                    .get_details_error_info()
                    .unwrap_or_else(|| panic!("{name}: ErrorInfo in {status:?}"));
                assert_eq!(info.reason, reason, "{name}");
            }
            (expected, outcome) => panic!("{name}: expected {expected:?}, got {outcome:?}"),
        }
        let text = scrape(&gateway).await;
        for (outcome, count) in case.exchanges {
            let series =
                format!(r#"printjob_gateway_token_exchanges_total{{outcome="{outcome}"}}"#);
            assert_eq!(sample(&text, &series), *count, "{name}: {series}");
        }
        let attempts: f64 = case.exchanges.iter().map(|(_, count)| count).sum();
        if !unreachable {
            assert_eq!(
                entra.requests().len() as f64,
                attempts,
                "{name}: requests to Entra"
            );
        } else {
            assert!(entra.requests().is_empty(), "{name}");
        }
        assert_eq!(
            graph.requests().len(),
            case.graph_requests,
            "{name}: requests to Graph"
        );
        assert!(
            graph
                .requests()
                .iter()
                .all(|r| bearer(r).starts_with("Bearer graph-token-")),
            "{name}: Graph is called with an exchanged token only"
        );
    }
}

#[tokio::test]
async fn the_exchange_counts_against_the_calls_deadline() {
    let (graph, entra, gateway, _dir) = secret_obo().await;
    entra.hold();

    let started = std::time::Instant::now();
    let status = gateway
        .call()
        .timeout(Duration::from_millis(500))
        .send_without_client_timer()
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "TOKEN_EXCHANGE_DEADLINE_EXCEEDED"
    );
    // A wide bound: the answer comes at the deadline, not when Entra finally answers.
    assert!(started.elapsed() < Duration::from_secs(10));
    entra.release();
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_token_graph_refuses_is_dropped_from_the_cache() {
    let (graph, entra, gateway, _dir) = secret_obo().await;

    gateway.call().send().await.unwrap();
    graph.set_reply(Reply::graph_error(
        401,
        "InvalidAuthenticationToken",
        "Lifetime validation failed.",
    ));
    let status = gateway.call().send().await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    graph.set_reply(Reply::no_content());
    gateway.call().send().await.unwrap();
    gateway.call().send().await.unwrap();

    assert_eq!(entra.requests().len(), 2);
    let sent = bearers(&graph);
    assert_eq!(
        sent,
        [
            "Bearer graph-token-1",
            "Bearer graph-token-1",
            "Bearer graph-token-2",
            "Bearer graph-token-2"
        ]
    );
}

#[tokio::test]
async fn pass_through_stays_the_default_and_sends_the_callers_own_token() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    gateway.call().send().await.unwrap();

    assert_eq!(bearer(&graph.requests()[0]), format!("Bearer {TOKEN}"));
}

#[tokio::test]
async fn the_job_read_after_a_409_carries_the_exchanged_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::replying(Reply::graph_error(409, "conflict", "Job completed.")).await;
    let entra = FakeEntra::start().await;
    let gateway = obo_gateway(&graph, &entra, secret_file(dir.path())).await;

    gateway.call().send().await.unwrap_err();

    let requests = graph.requests();
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["POST", "GET"],
        "the cancel, then the read of the job"
    );
    assert!(requests.iter().all(|r| bearer(r) == "Bearer graph-token-1"));
    assert_eq!(entra.requests().len(), 1);
}
