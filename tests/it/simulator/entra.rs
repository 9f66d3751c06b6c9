//! The simulated Entra token endpoint over HTTP: the on-behalf-of form it checks, the tokens it
//! issues, Entra's error shape, scripted answers, what `/__requests` keeps of an exchange, and the
//! simulated Graph insisting on the tokens it issued.

use std::time::{Duration, Instant};

use printjob_gateway::simulator::{self, Scenario, Simulator, entra::sha256_prefix};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{TOKEN, TestGateway, http_client};

pub(crate) const SECRET: &str = "simulated-client-secret";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A simulator serving `scenario` on loopback, and its base URL (`http://127.0.0.1:port`).
pub(crate) async fn start(scenario: &str) -> (Simulator, String) {
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
pub(crate) fn obo_form(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", JWT_BEARER.to_owned()),
        ("client_id", "my-api".to_owned()),
        ("client_secret", SECRET.to_owned()),
        ("assertion", assertion.to_owned()),
        ("scope", GRAPH_SCOPE.to_owned()),
        ("requested_token_use", "on_behalf_of".to_owned()),
    ]
}

pub(crate) async fn exchange(
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

pub(crate) async fn json(response: reqwest::Response) -> Value {
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
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/simulator.md")).unwrap();
    let example = readme
        .split("```json\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|block| block.contains("\"entra\"") && block.contains("requireIssuedTokens"))
        .expect("docs/simulator.md shows a scenario with an entra object");

    let scenario = Scenario::parse(example, "docs/simulator.md").unwrap();

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

pub(crate) const ISSUER: &str = "https://oidc.example/cluster-1";
pub(crate) const SUBJECT: &str = "system:serviceaccount:example-app:printjob-gateway";

/// A federated token as the kubelet projects one (its signature is not checked by the simulator),
/// expiring `expires_in` seconds from now (negative: expired).
pub(crate) fn federated_token(
    issuer: &str,
    subject: &str,
    audience: &str,
    expires_in: i64,
) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let part = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(serde_json::json!({"alg": "RS256", "kid": "k1"})),
        part(serde_json::json!({
            "aud": [audience], "iss": issuer, "sub": subject, "exp": now + expires_in, "iat": now
        }))
    )
}

/// The simulated Entra checks what Entra checks of a client credential, through the gateway: a
/// certificate it does not have registered, a federated token of another subject or audience,
/// and an expired one are refused with Entra's codes.
#[tokio::test]
async fn the_simulated_entra_refuses_assertions_entra_would_refuse() {
    use printjob_gateway::entra::{CredentialSource, EntraAuthority, TokenExchange};
    use tonic_types::StatusExt;

    let dir = tempfile::tempdir().unwrap();
    let chain = include_str!("../fixtures/client-certificate.pem");
    let certificate_file = dir.path().join("client-certificate.pem");
    std::fs::write(&certificate_file, chain).unwrap();
    // Only the CA's certificate, the chain's second: the leaf that signs is not registered.
    let ca_only = chain
        .match_indices("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .map(|(at, _)| &chain[at..])
        .unwrap();
    let scenario = serde_json::json!({
        "printers": [{"id": "p", "anyJob": true}],
        "entra": {
            "clients": [{
                "id": "my-api",
                "certificates": [ca_only],
                "federatedCredentials": [{"issuer": ISSUER, "subject": SUBJECT}]
            }]
        }
    });
    let (_simulator, base) = start(&scenario.to_string()).await;
    let federated = |name: &str, token: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, token).unwrap();
        CredentialSource::FederatedTokenFile(path)
    };
    let cases = [
        (
            CredentialSource::CertificateFile(certificate_file),
            "ENTRA_CLIENT_REJECTED",
            "AADSTS700027",
        ),
        (
            federated(
                "other-subject",
                federated_token(
                    ISSUER,
                    "system:serviceaccount:x:y",
                    "api://AzureADTokenExchange",
                    3600,
                ),
            ),
            "ENTRA_REQUEST_REJECTED",
            "AADSTS70021",
        ),
        (
            federated(
                "other-audience",
                federated_token(ISSUER, SUBJECT, "api://Other", 3600),
            ),
            "ENTRA_REQUEST_REJECTED",
            "AADSTS70021",
        ),
        (
            federated(
                "expired",
                federated_token(ISSUER, SUBJECT, "api://AzureADTokenExchange", -3600),
            ),
            "ENTRA_CLIENT_REJECTED",
            "AADSTS700024",
        ),
    ];
    for (credential, reason, aadsts) in cases {
        let gateway = TestGateway::start_with(&format!("{base}/v1.0"), |settings| {
            let exchange = &mut settings.token_exchange;
            exchange.exchange = TokenExchange::Obo;
            exchange.authority = EntraAuthority::parse(&base).unwrap();
            exchange.tenant_id = Some("contoso.onmicrosoft.com".to_owned());
            exchange.client_id = Some("my-api".to_owned());
            exchange.credential = Some(credential);
            // AADSTS70021 is retried while a federated credential may be propagating: bound it,
            // widely enough that a loaded machine still gets an answer from Entra within it.
            exchange.exchange_timeout = Duration::from_secs(10);
        })
        .await;

        let status = gateway
            .call()
            .ids("p", "1")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_err();

        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            (
                info.reason.as_str(),
                info.metadata.get("aadstsCode").map_or("", String::as_str)
            ),
            (reason, aadsts),
            "{status:?}"
        );
    }
}
