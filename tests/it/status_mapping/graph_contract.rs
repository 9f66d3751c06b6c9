//! What the gateway relies on of Graph's documented answers, against the simulator's reading of
//! them: a cancel through a printer share, `ErrorInfo` built from nested `innerError` and
//! `details`, and a 403 claims challenge. (The simulator's own answers are
//! `simulator::graph_contract`.)

use base64::{Engine, engine::general_purpose::STANDARD};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    simulator::graph_contract::{CLAIMS, start},
    support::TestGateway,
};

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
