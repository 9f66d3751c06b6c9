//! The retry policy: 429, 503 and 504 are retried honouring Retry-After, definite answers never
//! are, attempts are bounded, and no wait ever runs past the caller's deadline.

use std::time::{Duration, Instant};

use printjob_gateway::simulator::{Scenario, Simulator};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{TestGateway, simulated_graph};

/// A simulated Graph where printer `p` accepts any job, after the given rules.
async fn graph_with_rules(rules: &str) -> (Simulator, String) {
    let scenario = format!(r#"{{"printers": [{{"id": "p", "anyJob": true}}], "rules": {rules}}}"#);
    simulated_graph(Scenario::parse(&scenario, "test").unwrap()).await
}

/// The statuses of the cancels the simulator answered (not the job reads after a 409).
fn statuses(simulator: &Simulator) -> Vec<u16> {
    simulator
        .received()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn throttling_is_retried_after_the_fractional_retry_after() {
    let (simulator, url) =
        graph_with_rules(r#"[{"status": 429, "retryAfter": 0.15, "times": 2}]"#).await;
    let gateway = TestGateway::start(&url).await;
    let started = Instant::now();

    gateway
        .call()
        .ids("p", "1")
        .send()
        .await
        .expect("the third attempt succeeds");

    assert_eq!(statuses(&simulator), [429, 429, 204]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited {:?}",
        started.elapsed()
    );
    let ids: Vec<_> = simulator
        .received()
        .iter()
        .map(|r| r.client_request_id.clone())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one client-request-id for the whole call"
    );
}

#[tokio::test]
async fn unavailable_and_gateway_timeout_are_retried_with_backoff() {
    for status in [503, 504] {
        let (simulator, url) =
            graph_with_rules(&format!(r#"[{{"status": {status}, "times": 1}}]"#)).await;
        let gateway = TestGateway::start(&url).await;
        let started = Instant::now();

        gateway
            .call()
            .ids("p", "1")
            .send()
            .await
            .expect("the retry succeeds");

        assert_eq!(statuses(&simulator), [status, 204]);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "backed off {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn definite_answers_are_never_retried() {
    for status in [400, 401, 403, 404, 409, 500, 501, 502] {
        let (simulator, url) = graph_with_rules(&format!(r#"[{{"status": {status}}}]"#)).await;
        let gateway = TestGateway::start(&url).await;

        gateway
            .call()
            .ids("p", "1")
            .send()
            .await
            .expect_err("an error");

        assert_eq!(statuses(&simulator), [status], "HTTP {status} is sent once");
    }
}

#[tokio::test]
async fn attempts_are_bounded_by_the_setting() {
    for (max_attempts, expected) in [(1, 1), (3, 3), (5, 5)] {
        let (simulator, url) = graph_with_rules(r#"[{"status": 503, "retryAfter": 0.01}]"#).await;
        let gateway =
            TestGateway::start_with(&url, |s| s.calls.retry.max_attempts = max_attempts).await;

        let status = gateway.call().ids("p", "1").send().await.unwrap_err();

        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            simulator.received().len(),
            expected,
            "--max-attempts {max_attempts}"
        );
    }
}

#[tokio::test]
async fn a_wait_past_the_deadline_answers_at_once_with_retry_info() {
    let (simulator, url) = graph_with_rules(r#"[{"status": 429, "retryAfter": 60}]"#).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.calls.retry.retry_after_max = Duration::from_secs(120)
    })
    .await;
    let started = Instant::now();

    let status = gateway
        .call()
        .ids("p", "1")
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_err();

    // A gateway that waited would end at the 20 s deadline with DEADLINE_EXCEEDED; half the
    // deadline is a bound no busy machine reaches, yet it shows the answer did not wait.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once: {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(60))
    );
    assert_eq!(simulator.received().len(), 1);
}

#[tokio::test]
async fn a_backoff_past_the_deadline_answers_at_once_with_the_backoff_as_retry_info() {
    let (simulator, url) = graph_with_rules(r#"[{"status": 503}]"#).await;
    // Attempts enough that only the deadline stops the retries: backoff waits of 200 ms, 400 ms,
    // 800 ms... (plus jitter) until the next one would end past the 2 s deadline.
    let gateway = TestGateway::start_with(&url, |s| s.calls.retry.max_attempts = 10).await;
    let deadline = Duration::from_secs(2);
    let started = Instant::now();

    let status = gateway
        .call()
        .ids("p", "1")
        .timeout(deadline)
        .send()
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    // No clock bound needed: UNAVAILABLE (not DEADLINE_EXCEEDED) shows the gateway answered
    // before the deadline, and the suggested wait would have ended past it.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let delay = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .unwrap();
    assert!(
        delay >= Duration::from_millis(200) && delay <= Duration::from_secs(10),
        "a backoff wait: {delay:?}"
    );
    // The gateway keeps back a small part of the deadline (at most 50 ms) for its answer.
    assert!(
        elapsed + delay > deadline * 9 / 10,
        "stopped only because the wait would end past the deadline: {elapsed:?} + {delay:?}"
    );
    let attempts = simulator.received().len();
    assert!((1..10).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn a_long_retry_after_is_cut_to_the_ceiling() {
    let (simulator, url) =
        graph_with_rules(r#"[{"status": 429, "retryAfter": 60, "times": 1}]"#).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.calls.retry.retry_after_max = Duration::from_millis(100)
    })
    .await;
    let started = Instant::now();

    gateway
        .call()
        .ids("p", "1")
        .send()
        .await
        .expect("retried after the ceiling");

    // Success shows the ceiling: a 60 s wait does not fit the default 10 s deadline, so without
    // the ceiling the gateway would have answered RESOURCE_EXHAUSTED at once; and a success
    // within that deadline already bounds the wait. The ceiling is a lower bound too: the retry
    // waited for it (100 ms), not less, which no load can make fail.
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(statuses(&simulator), [429, 204]);
}
