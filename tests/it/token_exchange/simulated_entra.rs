//! The gateway's token exchange against the simulated Entra ID rather than a fake: each
//! credential, the loop Entra breaks, and MSAL's rules for challenges, throttling and federation.
//! (What the simulated Entra itself answers is `simulator::entra`.)

use std::time::Duration;

use printjob_gateway::simulator::entra::sha256_prefix;

use crate::{
    simulator::entra::{ISSUER, SECRET, SUBJECT, exchange, federated_token, json, obo_form, start},
    support::{TOKEN, TestGateway, http_client},
};

/// The gateway's exchange against the simulator's independent reading of Entra: with each of the
/// three credentials, the simulated Entra accepts the form, and the simulated Graph receives the
/// token it issued (it takes no other).
#[tokio::test]
async fn the_gateway_exchanges_at_the_simulated_entra_with_each_credential() {
    use printjob_gateway::entra::{CredentialSource, EntraAuthority, TokenExchange};

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let certificate_file = dir.path().join("client-certificate.pem");
    std::fs::write(
        &certificate_file,
        include_str!("../fixtures/client-certificate.pem"),
    )
    .unwrap();
    let federated = &federated_token(ISSUER, SUBJECT, "api://AzureADTokenExchange", 3600);
    let federated_file = dir.path().join("azure-identity-token");
    std::fs::write(&federated_file, federated).unwrap();
    let scenario = serde_json::json!({
        "printers": [{"id": "p", "anyJob": true}],
        "entra": {
            "tenants": ["contoso.onmicrosoft.com"],
            "clients": [{
                "id": "my-api",
                "secret": SECRET,
                "certificates": [include_str!("../fixtures/client-certificate.pem")],
                "federatedCredentials": [{"issuer": ISSUER, "subject": SUBJECT}]
            }],
            "requireIssuedTokens": true
        }
    });
    let (simulator, base) = start(&scenario.to_string()).await;
    let credentials = [
        (CredentialSource::SecretFile(secret_file), "clientSecret"),
        (
            CredentialSource::CertificateFile(certificate_file),
            "clientAssertion",
        ),
        (
            CredentialSource::FederatedTokenFile(federated_file),
            "clientAssertion",
        ),
    ];

    for (credential, kind) in credentials {
        let gateway = TestGateway::start_with(&format!("{base}/v1.0"), |settings| {
            let exchange = &mut settings.token_exchange;
            exchange.exchange = TokenExchange::Obo;
            exchange.authority = EntraAuthority::parse(&base).unwrap();
            exchange.tenant_id = Some("contoso.onmicrosoft.com".to_owned());
            exchange.client_id = Some("my-api".to_owned());
            exchange.credential = Some(credential);
        })
        .await;

        gateway
            .call()
            .ids("p", "1")
            .send()
            .await
            .unwrap_or_else(|status| panic!("{kind}: {status:?}"));

        let received = simulator.received();
        let (exchange, graph) = (&received[received.len() - 2], &received[received.len() - 1]);
        let exchanged = exchange.token_exchange.as_ref().expect("an exchange first");
        assert_eq!(exchange.status, 200, "{kind}: {exchanged:?}");
        assert_eq!(serde_json::to_value(exchanged.credential).unwrap(), kind);
        assert_eq!(
            exchanged.assertion_sha256.as_deref(),
            Some(sha256_prefix(TOKEN).as_str())
        );
        assert_eq!(graph.status, 204);
        assert_eq!(graph.bearer_token_sha256, exchanged.issued_token_sha256);
    }
    let exchanges: Vec<_> = simulator
        .received()
        .into_iter()
        .filter_map(|request| request.token_exchange)
        .collect();
    assert_eq!(
        exchanges[0].client_secret_length,
        Some(SECRET.len()),
        "without the newline"
    );
    assert_eq!(
        exchanges[2].client_assertion_sha256,
        Some(sha256_prefix(federated)),
        "the federated token, as the file holds it"
    );
}

/// Entra breaks a loop of identical requests: `invalid_grant` AADSTS50196 for a client that did
/// not declare `x-ms-lib-capability: retry-after`, 429 and `Retry-After` for one that did. The
/// gateway declares it, sends its `client-request-id`, and never loops: a refused token is asked
/// for once however often it comes.
#[tokio::test]
async fn an_identical_request_repeated_too_fast_is_a_loop_and_the_gateway_never_makes_one() {
    let scenario = serde_json::json!({
        "printers": [{"id": "p", "anyJob": true}],
        "entra": {"rules": [{"assertion": TOKEN, "error": "invalid_grant"}]}
    });
    let (simulator, base) = start(&scenario.to_string()).await;
    let form = obo_form("some-user");
    for _ in 0..5 {
        assert_eq!(exchange(&base, "t", &form, None).await.status(), 200);
    }
    let looped = exchange(&base, "t", &form, None).await;
    assert_eq!(looped.status(), 400);
    let body = json(looped).await;
    assert_eq!(
        (body["error"].as_str(), body["error_codes"][0].as_u64()),
        (Some("invalid_grant"), Some(50196))
    );

    let capable = obo_form("another-user");
    let send = || {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&capable)
            .finish();
        http_client()
            .post(format!("{base}/t/oauth2/v2.0/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-ms-lib-capability", "retry-after, h429")
            .body(body)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    let throttled = send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));

    let gateway = TestGateway::start_with(&format!("{base}/v1.0"), |settings| {
        let exchange = &mut settings.token_exchange;
        exchange.exchange = printjob_gateway::entra::TokenExchange::Obo;
        exchange.authority = printjob_gateway::entra::EntraAuthority::parse(&base).unwrap();
        exchange.tenant_id = Some("contoso.onmicrosoft.com".to_owned());
        exchange.client_id = Some("my-api".to_owned());
        exchange.credential = printjob_gateway::entra::ClientSecret::new(SECRET)
            .map(printjob_gateway::entra::CredentialSource::Secret);
    })
    .await;
    let request_id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    for _ in 0..10 {
        let status = gateway
            .call()
            .ids("p", "1")
            .metadata("x-request-id", request_id)
            .send()
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    let exchanges: Vec<_> = simulator
        .received()
        .into_iter()
        .filter_map(|request| request.token_exchange)
        .filter(|exchange| exchange.tenant == "contoso.onmicrosoft.com")
        .collect();
    assert_eq!(exchanges.len(), 1, "a refusal is remembered: {exchanges:?}");
    assert_eq!(exchanges[0].error.as_deref(), Some("invalid_grant"));
    assert_eq!(exchanges[0].client_request_id.as_deref(), Some(request_id));
    assert_eq!(
        exchanges[0].lib_capability.as_deref(),
        Some("retry-after, h429")
    );
}

/// The exchange's rules against the simulated Entra rather than a fake: Conditional Access as
/// Entra answers it in the on-behalf-of flow reaches the caller as a claims challenge with
/// `authorization_uri`; five calls within a 429's `Retry-After` make one request; AADSTS70021
/// followed by a token ends OK.
#[tokio::test]
async fn against_the_simulated_entra_challenges_throttling_and_federation_behave_as_msal() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use printjob_gateway::entra::{ClientSecret, CredentialSource, EntraAuthority, TokenExchange};
    use tonic_types::StatusExt;

    use crate::support::fake_entra::bearer_jwt;

    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["p1"]}}}"#;
    let scenario = serde_json::json!({
        "printers": [{"id": "p", "anyJob": true}],
        "entra": {"rules": [
            {"assertion": crate::support::fake_entra::caller_jwt("mfa"), "error": "invalid_grant",
             "suberror": "basic_action", "claims": claims},
            {"assertion": crate::support::fake_entra::caller_jwt("busy"), "status": 429, "retryAfter": 60},
            {"assertion": crate::support::fake_entra::caller_jwt("new-fic"), "error": "invalid_request",
             "errorCodes": [70021], "times": 2}
        ]}
    });
    let (simulator, base) = start(&scenario.to_string()).await;
    let tenant = "contoso.onmicrosoft.com";
    let gateway = TestGateway::start_with(&format!("{base}/v1.0"), |settings| {
        let exchange = &mut settings.token_exchange;
        exchange.exchange = TokenExchange::Obo;
        exchange.authority = EntraAuthority::parse(&base).unwrap();
        exchange.tenant_id = Some(tenant.to_owned());
        exchange.client_id = Some("my-api".to_owned());
        exchange.credential = ClientSecret::new(SECRET).map(CredentialSource::Secret);
    })
    .await;
    let call = |who: &str| {
        gateway
            .call()
            .ids("p", "1")
            .authorization(Some(&bearer_jwt(who)))
            .timeout(Duration::from_secs(20))
    };
    let exchanges = || {
        simulator
            .received()
            .into_iter()
            .filter(|request| request.token_exchange.is_some())
            .count()
    };

    let challenged = call("mfa").send().await.unwrap_err();
    assert_eq!(challenged.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        challenged.get_details_error_info().unwrap().reason,
        "INTERACTION_REQUIRED"
    );
    assert_eq!(
        challenged
            .metadata()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap(),
        format!(
            r#"Bearer realm="", authorization_uri="{base}/{tenant}/oauth2/v2.0/authorize", error="insufficient_claims", claims="{}""#,
            STANDARD.encode(claims)
        )
    );

    let before = exchanges();
    call("new-fic")
        .send()
        .await
        .expect("AADSTS70021 twice, then a token");
    assert_eq!(exchanges(), before + 3);

    // Last: Entra's 429 holds back every exchange until its Retry-After ends.
    let before = exchanges();
    for _ in 0..5 {
        let throttled = call("busy").send().await.unwrap_err();
        assert_eq!(
            throttled.code(),
            tonic::Code::ResourceExhausted,
            "{throttled:?}"
        );
    }
    assert_eq!(exchanges(), before + 1, "one request within Retry-After");
}
