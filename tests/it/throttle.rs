//! The throttle gate: when Graph throttles a tenant and app, the gateway stops sending that
//! tenant and app's calls until the window ends, sends one first, then the rest; other tenants
//! are not held, and a call whose deadline ends inside the window is answered at once without
//! reaching Graph.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use printjob_gateway::simulator::{ReceivedRequest, Scenario, Simulator};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, Reply, TestGateway,
    fake_entra::{EntraReply, FakeEntra, bearer_jwt, obo_gateway_with},
    metrics::{metrics, sample, wait_for_sample},
    process::GatewayProcess,
    simulated_graph,
};

const TENANT_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const TENANT_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const APP: &str = "0a11ce00-0000-4000-8000-000000000003";

const WINDOWS: &str = "printjob_gateway_graph_throttle_windows_total";
/// Graph's 429s as the gateway counts them, as each answer arrives (with the gate or without).
const ANSWERED_429: &str = r#"printjob_gateway_graph_responses_total{status="429"}"#;
const HELD: &str = "printjob_gateway_graph_calls_held";
const THROTTLED_SECONDS: &str = "printjob_gateway_graph_throttled_seconds_total";

/// A JWT-shaped bearer token of `tenant` and [`APP`], unsigned: the gateway reads it unverified,
/// and the simulated Graph reads its `tid` the same way.
fn token_of(tenant: &str) -> String {
    let part = |json: String| URL_SAFE_NO_PAD.encode(json);
    format!(
        "Bearer {}.{}.c2lnbmF0dXJl",
        part(r#"{"alg":"RS256","typ":"JWT"}"#.to_owned()),
        part(format!(r#"{{"tid":"{tenant}","appid":"{APP}"}}"#))
    )
}

/// A simulated Graph where printer `p` accepts any job, with `extra` scenario fields.
async fn graph(extra: &str) -> (Simulator, String) {
    let scenario = format!(r#"{{"printers": [{{"id": "p", "anyJob": true}}]{extra}}}"#);
    simulated_graph(Scenario::parse(&scenario, "test").unwrap()).await
}

/// The cancels the simulator answered (not the job reads).
fn cancels(simulator: &Simulator) -> Vec<ReceivedRequest> {
    simulator
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn statuses(simulator: &Simulator) -> Vec<u16> {
    cancels(simulator).iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn two_hundred_calls_during_a_five_second_window_send_one_request_and_all_end_ok() {
    // Graph throttles tenant A for 5 s from its first call, every call inside answering 429 with
    // a Retry-After counting down. The simulator decides by its own clock which requests fall
    // inside its window, and answers each of those 429: so the 429s it sent are exactly the
    // requests that reached Graph during the window, however slow this machine is.
    let (simulator, url) = graph(&format!(
        r#", "throttle": [{{"tenant": "{TENANT_A}", "window": 5}}]"#
    ))
    .await;
    let gateway = TestGateway::start(&url).await;
    let token = token_of(TENANT_A);
    let call = || {
        gateway
            .call()
            .ids("p", "1")
            .authorization(Some(&token))
            // Generous: the longest wait is the 5 s window, and a loaded machine must not turn a
            // held call into DEADLINE_EXCEEDED.
            .timeout(Duration::from_secs(30))
    };
    let started = Instant::now();
    let mut calls = JoinSet::new();
    calls.spawn(call().send());
    // The first call opens the window. The others start once the gateway has received its 429
    // (an event, not a guess): a call sent before that answer came back would reach Graph too,
    // which no gate can prevent, and on a loaded machine that race is all the test would measure.
    wait_for_sample(gateway.admin_addr, ANSWERED_429, 1.0).await;
    // The other 199 arrive evenly over the rest of the 5 s (pacing only: a call that a busy
    // machine sends late, after the window, is served at once and changes no assertion).
    let spread = Duration::from_secs(5).saturating_sub(started.elapsed());
    for i in 1..200u32 {
        tokio::time::sleep_until((started + spread * i / 200).into()).await;
        calls.spawn(call().send());
    }
    let mut ok = 0;
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().expect("every call ends OK");
        ok += 1;
    }

    assert_eq!(ok, 200);
    let statuses = statuses(&simulator);
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        throttled <= 2,
        "{throttled} requests reached Graph during the window"
    );
    assert!(
        statuses.len() <= 205,
        "{} requests reached Graph in all",
        statuses.len()
    );
    let text = metrics(gateway.admin_addr).await;
    assert_eq!(sample(&text, WINDOWS), 1.0, "one window");
    assert_eq!(sample(&text, HELD), 0.0, "no call held any more");
    let seconds = sample(&text, THROTTLED_SECONDS);
    assert!((4.0..=5.0).contains(&seconds), "window of {seconds} s");
}

#[tokio::test]
async fn calls_of_other_tenants_are_served_during_a_tenants_window() {
    // A 60 s window for tenant A, and calls with 20 s deadlines: a call held by A's window
    // would be turned away at once with RESOURCE_EXHAUSTED, so OK shows it was not held.
    let (simulator, url) = graph(&format!(
        r#", "throttle": [{{"tenant": "{TENANT_A}", "window": 60}}]"#
    ))
    .await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.calls.retry.retry_after_max = Duration::from_secs(120)
    })
    .await;
    let call = |token: &str| {
        gateway
            .call()
            .ids("p", "1")
            .authorization(Some(token))
            .timeout(Duration::from_secs(20))
    };
    let opened = call(&token_of(TENANT_A)).send().await.unwrap_err();
    assert_eq!(opened.code(), Code::ResourceExhausted, "{opened:?}");
    assert_eq!(sample(&metrics(gateway.admin_addr).await, WINDOWS), 1.0);

    call(&token_of(TENANT_B))
        .send()
        .await
        .expect("another tenant's call is served");
    call(&format!("Bearer {}", crate::support::TOKEN))
        .send()
        .await
        .expect("a token that names no tenant is not held by tenant A's window");
    let held = call(&token_of(TENANT_A)).send().await.unwrap_err();

    assert_eq!(held.code(), Code::ResourceExhausted);
    assert_eq!(
        held.get_details_error_info().unwrap().reason,
        "GRAPH_THROTTLED"
    );
    assert_eq!(
        statuses(&simulator),
        [429, 204, 204],
        "A's second call was not sent"
    );
}

#[tokio::test]
async fn a_call_whose_deadline_ends_inside_the_window_fails_at_once_without_reaching_graph() {
    for (status, code) in [(429, Code::ResourceExhausted), (503, Code::Unavailable)] {
        // One throttling answer with a 60 s Retry-After; any later request would be accepted, so
        // a call that reached Graph would end OK.
        let (simulator, url) = graph(&format!(
            r#", "rules": [{{"status": {status}, "retryAfter": 60, "times": 1}}]"#
        ))
        .await;
        let gateway = TestGateway::start_with(&url, |s| {
            s.calls.retry.retry_after_max = Duration::from_secs(120)
        })
        .await;
        let token = token_of(TENANT_A);
        let call = || {
            gateway
                .call()
                .ids("p", "1")
                .authorization(Some(&token))
                .timeout(Duration::from_secs(20))
        };
        call().send().await.unwrap_err();

        let started = Instant::now();
        let turned_away = call().send().await.unwrap_err();

        // Not DEADLINE_EXCEEDED: the gateway answered before the 20 s deadline.
        assert_eq!(turned_away.code(), code, "HTTP {status}: {turned_away:?}");
        let info = turned_away.get_details_error_info().unwrap();
        assert_eq!(info.reason, "GRAPH_THROTTLED");
        assert_eq!(info.metadata["httpStatus"], status.to_string());
        let delay = turned_away
            .get_details_retry_info()
            .expect("RetryInfo")
            .retry_delay
            .unwrap();
        // What is left of the 60 s window: less than all of it, more than the deadline.
        assert!(
            delay > Duration::from_secs(20) && delay < Duration::from_secs(60),
            "{delay:?}"
        );
        assert!(
            delay + started.elapsed() <= Duration::from_secs(61),
            "{delay:?}"
        );
        assert_eq!(
            statuses(&simulator),
            [status],
            "HTTP {status}: the second call did not reach Graph"
        );
    }
}

#[tokio::test]
async fn one_call_probes_when_the_window_ends_and_a_throttled_probe_opens_a_new_window() {
    // Graph throttles twice (1 s windows), then accepts. The first call opens the window and,
    // first in line, is the probe after each window: Graph sees only its requests (429, 429, 204)
    // until it accepts one, and only then the five calls that waited behind it.
    let (simulator, url) =
        graph(r#", "rules": [{"status": 429, "retryAfter": 1, "times": 2}]"#).await;
    let gateway = TestGateway::start(&url).await;
    let token = token_of(TENANT_A);
    let first = "00000000-0000-4000-8000-000000000001";
    let call = |request_id: String| {
        gateway
            .call()
            .ids("p", "1")
            .authorization(Some(&token))
            .metadata("x-request-id", &request_id)
            .timeout(Duration::from_secs(30))
    };
    let mut calls = JoinSet::new();
    calls.spawn(call(first.to_owned()).send());
    // The first call is held at the gate, so first in line, before the others start.
    wait_for_sample(gateway.admin_addr, HELD, 1.0).await;
    for i in 2..=6 {
        calls.spawn(call(format!("00000000-0000-4000-8000-00000000000{i}")).send());
    }
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().expect("every call ends OK");
    }

    let sent: Vec<_> = cancels(&simulator)
        .into_iter()
        .map(|r| (r.client_request_id.unwrap(), r.status))
        .collect();
    assert_eq!(sent.len(), 8, "{sent:?}");
    assert_eq!(
        sent[..3],
        [
            (first.to_owned(), 429),
            (first.to_owned(), 429),
            (first.to_owned(), 204)
        ],
        "only the probe was sent until Graph accepted it: {sent:?}"
    );
    assert!(
        sent[3..]
            .iter()
            .all(|(id, status)| id != first && *status == 204)
    );
    assert_eq!(sample(&metrics(gateway.admin_addr).await, WINDOWS), 2.0);
}

#[tokio::test]
async fn with_the_on_behalf_of_exchange_the_key_is_read_from_the_exchanged_token() {
    // Two callers whose own tokens carry no tenant (alone, they would share one key) get Graph
    // tokens of tenants A and B from the exchange; Graph throttles A's first call for 60 s.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cr3t~client.value-1\n").unwrap();
    let (graph, entra) = (FakeGraph::start().await, FakeEntra::start().await);
    let exchanged = |tenant: &str| {
        EntraReply::error_body(
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3600,
                "access_token": token_of(tenant).trim_start_matches("Bearer "),
            }),
        )
    };
    entra.script([exchanged(TENANT_A), exchanged(TENANT_B)]);
    graph.queue(
        "POST",
        Reply::graph_error(429, "TooManyRequests", "Please retry again later.")
            .header("retry-after", "60"),
    );
    let gateway = obo_gateway_with(
        &graph,
        &entra,
        printjob_gateway::entra::CredentialSource::SecretFile(secret),
        |s| s.calls.retry.retry_after_max = Duration::from_secs(120),
    )
    .await;
    let (caller_a, caller_b) = (
        bearer_jwt("caller-of-tenant-a"),
        bearer_jwt("caller-of-tenant-b"),
    );
    let call = |caller: &str| {
        gateway
            .call()
            .authorization(Some(caller))
            .timeout(Duration::from_secs(20))
            .send()
    };

    let throttled = call(&caller_a).await.unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    call(&caller_b)
        .await
        .expect("tenant B's Graph token is not held by tenant A's window");
    let held = call(&caller_a).await.unwrap_err();

    assert_eq!(
        held.get_details_error_info().unwrap().reason,
        "GRAPH_THROTTLED"
    );
    assert_eq!(graph.requests().len(), 2, "A's second call was not sent");
}

#[tokio::test]
async fn with_the_gate_off_each_call_finds_the_throttle_on_its_own() {
    let (simulator, url) =
        graph(r#", "rules": [{"status": 429, "retryAfter": 60, "times": 2}]"#).await;
    let gateway = TestGateway::start_with(&url, |s| {
        s.graph.throttle_gate = false;
        s.calls.retry.retry_after_max = Duration::from_secs(120);
    })
    .await;
    let token = token_of(TENANT_A);
    for _ in 0..2 {
        let status = gateway
            .call()
            .ids("p", "1")
            .authorization(Some(&token))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "TOO_MANY_REQUESTS"
        );
    }
    assert_eq!(statuses(&simulator), [429, 429], "each call was sent");
    assert_eq!(sample(&metrics(gateway.admin_addr).await, WINDOWS), 0.0);
}

#[tokio::test]
async fn the_logs_show_the_window_with_its_tenant_app_and_wait_and_each_held_call_says_how_long() {
    let (_simulator, url) =
        graph(r#", "rules": [{"status": 429, "retryAfter": 1, "times": 1}]"#).await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &url], &[]).await;
    let token = token_of(TENANT_A);
    let call = || {
        crate::support::gateway::Call::to(gateway.grpc_addr)
            .ids("p", "1")
            .authorization(Some(&token))
            .timeout(Duration::from_secs(30))
    };
    let mut calls = JoinSet::new();
    calls.spawn(call().send());
    wait_for_sample(gateway.admin_addr, WINDOWS, 1.0).await;
    calls.spawn(call().send());
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().expect("both calls end OK");
    }
    let (_, output) = gateway.terminate(Duration::from_secs(10)).await;

    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    // Events are flattened: their fields sit beside `message`; the call's span is under `span`.
    let field = |line: &serde_json::Value, name: &str| line[name].clone();
    let message = |line: &serde_json::Value| {
        field(line, "message")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let opened: Vec<_> = lines
        .iter()
        .filter(|line| message(line).contains("Graph is throttling"))
        .collect();
    let closed: Vec<_> = lines
        .iter()
        .filter(|line| message(line).contains("throttle window ended"))
        .collect();
    assert_eq!((opened.len(), closed.len()), (1, 1), "{output}");
    for line in [opened[0], closed[0]] {
        assert_eq!(field(line, "tenant"), TENANT_A, "{line}");
        assert_eq!(field(line, "app"), APP, "{line}");
        let wait = field(line, "wait_ms").as_u64().unwrap();
        assert!((900..=1000).contains(&wait), "{line}");
    }
    let held: Vec<f64> = lines
        .iter()
        .filter(|line| message(line) == "cancel accepted by Graph")
        .filter_map(|line| line["span"]["held_ms"].as_f64())
        .collect();
    assert_eq!(held.len(), 2, "both calls were held: {output}");
    assert!(held.iter().all(|&ms| ms > 0.0), "{held:?}");
}
