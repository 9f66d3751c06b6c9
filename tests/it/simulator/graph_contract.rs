//! Where Graph's own description (msgraph-metadata, the docs; `tests/contract/graph-print-v1.yaml`)
//! and its real answers differ from what the simulator and the gateway once assumed: the simulator
//! answers as Graph does (ISO 8601 dates without an offset, nine job states, nested `innerError`,
//! `details`, empty codes, Graph's 429 body, 403 claims challenges, `$select` and `@odata.context`,
//! printer shares). What the gateway relies on of them is `status_mapping::graph_contract`.

use base64::{Engine, engine::general_purpose::STANDARD};
use printjob_gateway::simulator::{Scenario, Simulator};

use crate::support::{TOKEN, simulated_graph};

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
pub(crate) const CLAIMS: &str = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;

/// A printer `p` with a job in each state (its ID is the state's name), a share `s` of it, and
/// rules for the error shapes.
pub(crate) fn scenario() -> Scenario {
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

pub(crate) async fn start() -> (Simulator, String) {
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
