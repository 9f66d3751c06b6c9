//! The simulated Entra token endpoint over HTTP: the on-behalf-of form it checks, the tokens it
//! issues, Entra's error shape, scripted answers, what `/__requests` keeps of an exchange, and the
//! simulated Graph insisting on the tokens it issued.

use std::time::{Duration, Instant};

use printjob_gateway::simulator::{self, Scenario, Simulator, entra::sha256_prefix};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{TOKEN, TestGateway, http_client};

const SECRET: &str = "simulated-client-secret";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A simulator serving `scenario` on loopback, and its base URL (`http://127.0.0.1:port`).
async fn start(scenario: &str) -> (Simulator, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let simulator = Simulator::new(Scenario::parse(scenario, "test").unwrap());
    tokio::spawn(simulator::serve(
        listener,
        simulator.clone(),
        std::future::pending(),
    ));
    (simulator, base)
}

/// The form the gateway sends for a caller's `assertion`, with a client secret.
fn obo_form(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", JWT_BEARER.to_owned()),
        ("client_id", "my-api".to_owned()),
        ("client_secret", SECRET.to_owned()),
        ("assertion", assertion.to_owned()),
        ("scope", GRAPH_SCOPE.to_owned()),
        ("requested_token_use", "on_behalf_of".to_owned()),
    ]
}

async fn exchange(
    base: &str,
    tenant: &str,
    form: &[(&str, String)],
    client_request_id: Option<&str>,
) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = http_client()
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(id) = client_request_id {
        request = request.header("client-request-id", id);
    }
    request.send().await.unwrap()
}

async fn json(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn cancel(base: &str, token: &str) -> reqwest::Response {
    http_client()
        .post(format!("{base}/v1.0/print/printers/p/jobs/1/cancel"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn recorded(base: &str) -> Value {
    json(
        http_client()
            .get(format!("{base}/__requests"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn an_exchange_gets_an_opaque_expiring_token_and_is_recorded_without_secrets() {
    let (_, base) = start(r#"{"entra": {"tokenLifetime": "75m"}}"#).await;

    let response = exchange(&base, "contoso", &obo_form(TOKEN), None).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store, no-cache");
    let body = json(response).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], GRAPH_SCOPE);
    assert_eq!(body["expires_in"], 4500);
    let issued = body["access_token"].as_str().unwrap().to_owned();
    assert!(issued.len() >= 32 && !issued.contains(TOKEN), "{issued}");

    let log = recorded(&base).await;
    let entry = &log[0]["tokenExchange"];
    assert_eq!(log[0]["path"], "/contoso/oauth2/v2.0/token");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(entry["tenant"], "contoso");
    assert_eq!(entry["grantType"], JWT_BEARER);
    assert_eq!(entry["clientId"], "my-api");
    assert_eq!(entry["scope"], GRAPH_SCOPE);
    assert_eq!(entry["requestedTokenUse"], "on_behalf_of");
    assert_eq!(entry["credential"], "clientSecret");
    assert_eq!(entry["clientSecretLength"], SECRET.len());
    assert_eq!(entry["assertionSha256"], sha256_prefix(TOKEN));
    assert_eq!(entry["issuedTokenSha256"], sha256_prefix(&issued));
    assert_eq!(entry["expiresIn"], 4500);
    let text = log.to_string();
    for secret in [TOKEN, SECRET, issued.as_str()] {
        assert!(!text.contains(secret), "/__requests shows a secret: {text}");
    }
}

#[tokio::test]
async fn a_client_assertion_is_recorded_by_its_hash_only() {
    let (_, base) = start("{}").await;
    let assertion = "eyJhbGciOiJQUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJteS1hcGkifQ.c2lnbmF0dXJl";
    let mut form = obo_form(TOKEN);
    form.retain(|(name, _)| *name != "client_secret");
    form.push((
        "client_assertion_type",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
    ));
    form.push(("client_assertion", assertion.to_owned()));

    assert_eq!(exchange(&base, "t", &form, None).await.status(), 200);

    let log = recorded(&base).await;
    let entry = &log[0]["tokenExchange"];
    assert_eq!(entry["credential"], "clientAssertion");
    assert_eq!(entry["clientAssertionSha256"], sha256_prefix(assertion));
    assert!(entry.get("clientSecretLength").is_none_or(Value::is_null));
    assert!(!log.to_string().contains(assertion));
}

#[tokio::test]
async fn errors_have_entras_shape_status_and_correlation() {
    let scenario = serde_json::json!({"entra": {"clients": [{"id": "my-api", "secret": SECRET}]}});
    let (_, base) = start(&scenario.to_string()).await;
    let correlation = "3b1c2a4e-8f5d-4c6b-9a7e-1d2f3a4b5c6d";
    let mut no_credential = obo_form(TOKEN);
    no_credential.retain(|(name, _)| *name != "client_secret");
    let mut no_scope = obo_form(TOKEN);
    no_scope.retain(|(name, _)| *name != "scope");
    let mut wrong_secret = obo_form(TOKEN);
    wrong_secret.retain(|(name, _)| *name != "client_secret");
    wrong_secret.push(("client_secret", format!("{SECRET}\n")));
    let cases = [
        (no_credential, 401, "invalid_client", 7000218),
        (wrong_secret, 401, "invalid_client", 7000215),
        (no_scope, 400, "invalid_request", 900144),
    ];

    for (form, status, error, code) in cases {
        let response = exchange(&base, "t", &form, Some(correlation)).await;
        assert_eq!(response.status(), status, "{error} {code}");
        let trace_header = response.headers()["x-ms-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(response.headers()["client-request-id"], correlation);
        let body = json(response).await;
        assert_eq!(body["error"], error);
        assert_eq!(body["error_codes"], serde_json::json!([code]));
        assert_eq!(body["trace_id"], trace_header.as_str());
        assert_eq!(body["correlation_id"], correlation);
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!("AADSTS{code}: "))
                && description.contains(&format!("\r\nTrace ID: {trace_header}"))
                && description.contains(&format!("\r\nCorrelation ID: {correlation}")),
            "{description}"
        );
        let timestamp = body["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 20 && timestamp.ends_with('Z') && &timestamp[10..11] == " ",
            "{timestamp}"
        );
        assert!(body.get("claims").is_none());
    }
}

#[tokio::test]
async fn scripted_claims_challenges_and_consent_errors_come_back_as_entra_sends_them() {
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["c1"]}}}"#;
    let scenario = serde_json::json!({"entra": {"rules": [
        {"assertion": "mfa-user", "error": "interaction_required", "errorCodes": [50079], "claims": claims},
        {"assertion": "new-user", "error": "invalid_grant", "errorCodes": [65001], "suberror": "consent_required"}
    ]}});
    let (_, base) = start(&scenario.to_string()).await;

    let mfa = exchange(&base, "t", &obo_form("mfa-user"), None).await;
    assert_eq!(mfa.status(), 400);
    let mfa = json(mfa).await;
    assert_eq!(mfa["error"], "interaction_required");
    assert_eq!(mfa["error_codes"], serde_json::json!([50079]));
    assert_eq!(mfa["claims"], claims, "the claims JSON, as a string");

    let consent = json(exchange(&base, "t", &obo_form("new-user"), None).await).await;
    assert_eq!(consent["error"], "invalid_grant");
    assert_eq!(consent["suberror"], "consent_required");
    assert_eq!(consent["error_codes"], serde_json::json!([65001]));

    let other = exchange(&base, "t", &obo_form("another-user"), None).await;
    assert_eq!(other.status(), 200, "rules match the caller's token");
}

#[tokio::test]
async fn throttling_and_delays_are_scripted_for_their_number_of_uses() {
    let (_, base) = start(
        r#"{"entra": {"rules": [
            {"status": 429, "retryAfter": 2, "times": 1},
            {"status": 503, "delay": "300ms", "times": 1}
        ]}}"#,
    )
    .await;

    let throttled = exchange(&base, "t", &obo_form(TOKEN), None).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "2");
    assert_eq!(json(throttled).await["error"], "temporarily_unavailable");

    let started = Instant::now();
    let unavailable = exchange(&base, "t", &obo_form(TOKEN), None).await;
    assert_eq!(unavailable.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));

    assert_eq!(
        exchange(&base, "t", &obo_form(TOKEN), None).await.status(),
        200
    );
}

#[tokio::test]
async fn graph_takes_only_unexpired_tokens_it_issued_when_the_scenario_requires_them() {
    let (_, base) = start(
        r#"{
            "printers": [{"id": "p", "anyJob": true}],
            "entra": {"requireIssuedTokens": true, "rules": [{"assertion": "short-user", "expiresIn": 0}]}
        }"#,
    )
    .await;

    let refused = cancel(&base, TOKEN).await;
    assert_eq!(refused.status(), 401, "a token Entra never issued");
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    assert_eq!(
        json(refused).await["error"]["code"],
        "InvalidAuthenticationToken"
    );

    let body = json(exchange(&base, "t", &obo_form(TOKEN), None).await).await;
    let issued = body["access_token"].as_str().unwrap();
    assert_eq!(cancel(&base, issued).await.status(), 204);

    let expired = json(exchange(&base, "t", &obo_form("short-user"), None).await).await;
    assert_eq!(expired["expires_in"], 0);
    let late = cancel(&base, expired["access_token"].as_str().unwrap()).await;
    assert_eq!(late.status(), 401, "an expired token");
    assert_eq!(
        json(late).await["error"]["message"],
        "Lifetime validation failed, the token is expired."
    );

    let log = recorded(&base).await;
    let accepted = log
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["status"] == 204)
        .unwrap();
    assert_eq!(accepted["bearerTokenSha256"], sha256_prefix(issued));
    assert_eq!(
        log[1]["tokenExchange"]["issuedTokenSha256"],
        sha256_prefix(issued)
    );
}

#[tokio::test]
async fn a_token_it_issued_is_refused_as_an_assertion() {
    let (_, base) = start("{}").await;
    let body = json(exchange(&base, "t", &obo_form(TOKEN), None).await).await;

    let again = exchange(
        &base,
        "t",
        &obo_form(body["access_token"].as_str().unwrap()),
        None,
    )
    .await;

    assert_eq!(again.status(), 400);
    let again = json(again).await;
    assert_eq!(again["error"], "invalid_grant");
    assert_eq!(again["error_codes"], serde_json::json!([500131]));
}

#[test]
fn the_readmes_entra_scenario_is_valid_and_scripts_what_it_says() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("```json\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|block| block.contains("\"entra\"") && block.contains("requireIssuedTokens"))
        .expect("README shows a scenario with an entra object");

    let scenario = Scenario::parse(example, "README.md").unwrap();

    assert_eq!(scenario.entra.tenants, ["contoso"]);
    assert!(scenario.entra.require_issued_tokens);
    let scripted: Vec<Option<&str>> = scenario
        .entra
        .rules
        .iter()
        .map(|rule| rule.assertion.as_deref())
        .collect();
    assert_eq!(
        scripted,
        [
            Some("mfa-user"),
            Some("unconsented-user"),
            Some("busy-user"),
            Some("short-user")
        ]
    );
}

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
        include_str!("fixtures/client-certificate.pem"),
    )
    .unwrap();
    let federated = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imsxczh0In0.eyJhdWQiOlsiYXBpOi8vQXp1cmVBRFRva2VuRXhjaGFuZ2UiXX0.c2lnbmF0dXJl";
    let federated_file = dir.path().join("azure-identity-token");
    std::fs::write(&federated_file, federated).unwrap();
    let scenario = serde_json::json!({
        "printers": [{"id": "p", "anyJob": true}],
        "entra": {
            "tenants": ["contoso.onmicrosoft.com"],
            "clients": [{"id": "my-api", "secret": SECRET}],
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
