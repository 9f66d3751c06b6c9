//! Where Graph's own description (msgraph-metadata, the docs; `tests/contract/graph-print-v1.yaml`)
//! and its real answers differ from what the simulator and the gateway once assumed: the simulator
//! answers as Graph does (ISO 8601 dates without an offset, nine job states, nested `innerError`,
//! `details`, empty codes, Graph's 429 body, 403 claims challenges, `$select` and `@odata.context`,
//! printer shares), and the gateway relies on what Graph documents rather than on a guess.

use base64::{Engine, engine::general_purpose::STANDARD};
use printjob_gateway::simulator::{Scenario, Simulator};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{TOKEN, TestGateway, simulated_graph};

/// The nine members of Graph's `printJobProcessingState`, in the CSDL's order.
const STATES: [&str; 9] = [
    "unknown",
    "pending",
    "processing",
    "paused",
    "stopped",
    "completed",
    "canceled",
    "aborted",
    "unknownFutureValue",
];

/// Conditional Access's claims, as Graph's challenge carries them (base64 in `claims="…"`).
const CLAIMS: &str = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;

/// A printer `p` with a job in each state (its ID is the state's name), a share `s` of it, and
/// rules for the error shapes.
fn scenario() -> Scenario {
    let jobs: Vec<_> = STATES
        .iter()
        .map(|state| serde_json::json!({"id": state, "state": state}))
        .collect();
    let text = serde_json::json!({
        "printers": [{"id": "p", "jobs": jobs}, {"id": "other", "jobs": [{"id": "1"}]}],
        "shares": [{"id": "s", "printer": "p"}],
        "rules": [
            {"job": "throttled", "status": 429, "retryAfter": 2},
            {
                "job": "detailed",
                "status": 400,
                "code": "badRequest",
                "message": "The print job cannot be canceled.",
                "innerCodes": ["invalidPrintJob", "printJobTooOld"],
                "details": [
                    {"code": "jobExpired", "message": "The job expired.", "target": "printJob"},
                    {"code": "retentionPolicy", "message": "Kept for 24 hours."}
                ]
            },
            {"job": "nameless", "status": 400, "code": ""},
            {"job": "claims", "status": 403, "code": "accessDenied", "claims": CLAIMS},
            {"job": "forbidden", "status": 403}
        ]
    });
    Scenario::parse(&text.to_string(), "graph_contract").unwrap()
}

async fn start() -> (Simulator, String) {
    simulated_graph(scenario()).await
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// `2020-08-18T12:51:51`: what Graph's answers carry in `innerError.date`.
fn is_iso_8601_without_offset(date: &str) -> bool {
    let bytes = date.as_bytes();
    date.len() == 19
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        })
}

#[tokio::test]
async fn the_simulator_errors_have_graphs_real_shape() {
    let (_, url) = start().await;
    let http = crate::support::http_client();
    let cancel = |job: &str| {
        http.post(format!("{url}/print/printers/p/jobs/{job}/cancel"))
            .bearer_auth(TOKEN)
            .send()
    };

    let detailed = cancel("detailed").await.unwrap();
    assert_eq!(detailed.status(), 400);
    let error = json(detailed).await["error"].clone();
    assert_eq!(error["code"], "badRequest");
    assert_eq!(
        error["details"],
        serde_json::json!([
            {"code": "jobExpired", "message": "The job expired.", "target": "printJob"},
            {"code": "retentionPolicy", "message": "Kept for 24 hours."}
        ])
    );
    assert_eq!(error["innerError"]["code"], "invalidPrintJob");
    assert_eq!(error["innerError"]["innerError"]["code"], "printJobTooOld");
    let date = error["innerError"]["date"].as_str().unwrap();
    assert!(is_iso_8601_without_offset(date), "date {date:?}");
    assert!(error["innerError"]["request-id"].is_string());

    let nameless = json(cancel("nameless").await.unwrap()).await;
    assert_eq!(
        nameless["error"]["code"], "",
        "an empty code, as Graph sends"
    );

    let throttled = cancel("throttled").await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "2");
    let throttled = json(throttled).await;
    assert_eq!(throttled["error"]["code"], "TooManyRequests");
    assert_eq!(throttled["error"]["innerError"]["code"], "429");
    assert_eq!(throttled["error"]["innerError"]["status"], "429");

    let challenged = cancel("claims").await.unwrap();
    assert_eq!(challenged.status(), 403);
    let challenge = challenged.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm=\"\""), "{challenge}");
    assert!(
        challenge.ends_with(&format!(
            r#"error="insufficient_claims", claims="{}""#,
            STANDARD.encode(CLAIMS)
        )),
        "{challenge}"
    );
    let forbidden = cancel("forbidden").await.unwrap();
    assert_eq!(forbidden.status(), 403);
    assert!(!forbidden.headers().contains_key("www-authenticate"));

    let missing = json(cancel("no-such-job").await.unwrap()).await;
    assert_eq!(missing["error"]["code"], "itemNotFound");
    assert_eq!(missing["error"]["details"], serde_json::json!([]));
}

#[tokio::test]
async fn the_simulator_reads_all_nine_states_honours_select_and_names_the_context() {
    let (_, url) = start().await;
    let http = crate::support::http_client();
    let read = |path: String| http.get(format!("{url}{path}")).bearer_auth(TOKEN).send();

    for state in STATES {
        let full = json(
            read(format!("/print/printers/p/jobs/{state}"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(full["status"]["state"], state);
        assert_eq!(full["id"], state);
        assert!(full["createdDateTime"].is_string(), "{full}");
        assert!(
            full["@odata.context"]
                .as_str()
                .unwrap()
                .ends_with("/v1.0/$metadata#print/printers('p')/jobs/$entity"),
            "{full}"
        );
        let selected = json(
            read(format!("/print/printers/p/jobs/{state}?$select=status"))
                .await
                .unwrap(),
        )
        .await;
        let keys: Vec<&String> = selected.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["@odata.context", "status"], "{selected}");
        assert_eq!(selected["status"]["state"], state);
        assert!(
            selected["@odata.context"]
                .as_str()
                .unwrap()
                .ends_with("#print/printers('p')/jobs(status)/$entity")
        );
    }
    let two = json(
        read("/print/printers/p/jobs/pending?%24select=id,status".to_owned())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(two["id"], "pending");
    assert!(
        two["@odata.context"]
            .as_str()
            .unwrap()
            .contains("jobs(id,status)")
    );

    let unknown = read("/print/printers/p/jobs/pending?$select=colour".to_owned())
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    assert_eq!(
        json(unknown).await["error"]["message"],
        "Could not find a property named 'colour' on type 'microsoft.graph.printJob'."
    );
}

#[tokio::test]
async fn the_simulator_serves_a_printers_jobs_through_its_share() {
    let (simulator, url) = start().await;
    let http = crate::support::http_client();

    let canceled = http
        .post(format!("{url}/print/shares/s/jobs/pending/cancel"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 204);
    let through_printer = json(
        http.get(format!(
            "{url}/print/printers/p/jobs/pending?$select=status"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(through_printer["status"]["state"], "canceled");
    let through_share = json(
        http.get(format!("{url}/print/shares/s/jobs/pending?$select=status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(through_share["status"]["state"], "canceled");
    assert!(
        through_share["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("#print/shares('s')/jobs(status)/$entity")
    );
    let unknown_share = http
        .post(format!("{url}/print/shares/nope/jobs/pending/cancel"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_share.status(), 404);

    let recorded = &simulator.received()[0];
    assert_eq!(
        (
            recorded.share_id.as_deref(),
            recorded.printer_id.as_deref(),
            recorded.print_job_id.as_deref()
        ),
        (Some("s"), None, Some("pending"))
    );
}

#[tokio::test]
async fn a_cancel_through_a_share_goes_to_the_share_and_reads_the_job_under_it() {
    let (simulator, url) = start().await;
    let gateway = TestGateway::start(&url).await;

    let first = gateway
        .call()
        .share("s", "processing")
        .send()
        .await
        .expect("canceled through the share");
    assert!(!first.get_ref().already_canceled);
    let again = gateway
        .call()
        .share("s", "processing")
        .send()
        .await
        .expect("a repeated cancel through the share is OK");
    assert!(again.get_ref().already_canceled);
    let completed = gateway
        .call()
        .share("s", "completed")
        .send()
        .await
        .unwrap_err();
    assert_eq!(completed.code(), Code::FailedPrecondition);
    assert_eq!(
        completed.get_details_error_info().unwrap().metadata["jobState"],
        "completed"
    );
    let unknown_share = gateway.call().share("nope", "1").send().await.unwrap_err();
    assert_eq!(unknown_share.code(), Code::NotFound);

    let sent: Vec<(String, String)> = simulator
        .received()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let expected = [
        ("POST", "/v1.0/print/shares/s/jobs/processing/cancel"),
        ("POST", "/v1.0/print/shares/s/jobs/processing/cancel"),
        ("GET", "/v1.0/print/shares/s/jobs/processing?$select=status"),
        ("POST", "/v1.0/print/shares/s/jobs/completed/cancel"),
        ("GET", "/v1.0/print/shares/s/jobs/completed?$select=status"),
        ("POST", "/v1.0/print/shares/nope/jobs/1/cancel"),
    ];
    assert_eq!(
        sent,
        expected.map(|(method, path)| (method.to_owned(), path.to_owned()))
    );
}

#[tokio::test]
async fn error_info_carries_the_deepest_inner_code_and_the_detail_codes() {
    let (_, url) = start().await;
    let gateway = TestGateway::start(&url).await;

    // A 400 calls for the job read, which answers 404 here (no such job): the 400's own answer
    // stands, with everything Graph said in it.
    let detailed = gateway
        .call()
        .ids("p", "detailed")
        .send()
        .await
        .unwrap_err();
    assert_eq!(detailed.code(), Code::InvalidArgument);
    assert_eq!(detailed.message(), "The print job cannot be canceled.");
    let info = detailed.get_details_error_info().unwrap();
    assert_eq!(info.reason, "BAD_REQUEST");
    assert_eq!(info.metadata["graphErrorCode"], "badRequest");
    assert_eq!(info.metadata["graphInnerErrorCode"], "printJobTooOld");
    assert_eq!(
        info.metadata["graphDetailCodes"],
        "jobExpired,retentionPolicy"
    );
    assert!(!info.metadata.contains_key("jobState"), "{info:?}");

    let nameless = gateway
        .call()
        .ids("p", "nameless")
        .send()
        .await
        .unwrap_err();
    assert_eq!(nameless.code(), Code::InvalidArgument);
    let info = nameless.get_details_error_info().unwrap();
    assert_eq!(
        info.reason, "HTTP_400",
        "an empty code falls back to the status"
    );
    assert!(!info.metadata.contains_key("graphErrorCode"), "{info:?}");
    assert!(!info.metadata.contains_key("graphDetailCodes"), "{info:?}");
}

#[tokio::test]
async fn a_403_claims_challenge_reaches_the_caller_as_unauthenticated_with_www_authenticate() {
    let (simulator, url) = start().await;
    let gateway = TestGateway::start(&url).await;

    let challenged = gateway.call().ids("p", "claims").send().await.unwrap_err();
    assert_eq!(challenged.code(), Code::Unauthenticated, "{challenged:?}");
    let challenge = challenged.metadata().get("www-authenticate").unwrap();
    let claims = format!(r#"claims="{}""#, STANDARD.encode(CLAIMS));
    assert!(
        challenge.to_str().unwrap().contains(&claims),
        "{challenge:?}"
    );
    let info = challenged.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.metadata["httpStatus"].as_str()),
        ("ACCESS_DENIED", "403")
    );

    let forbidden = gateway
        .call()
        .ids("p", "forbidden")
        .send()
        .await
        .unwrap_err();
    assert_eq!(forbidden.code(), Code::PermissionDenied);
    assert!(forbidden.metadata().get("www-authenticate").is_none());

    // Neither is about the job: no read follows.
    assert!(simulator.received().iter().all(|r| r.method == "POST"));
}
