//! What an operator sees: Prometheus metrics that change as calls happen and stay bounded, HTTP
//! health endpoints that flip while draining, and OpenTelemetry traces linked to the caller's
//! trace, exported to a real OTLP/gRPC collector on loopback.

use std::{collections::BTreeSet, time::Duration};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use printjob_gateway::simulator::Scenario;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{
    FakeGraph, Reply, TestGateway, fake_graph::Hold, gateway::Call, http_client,
    process::GatewayProcess, simulated_graph,
};

async fn get(url: &str) -> (u16, String) {
    let response = http_client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn scrape(gateway: &TestGateway) -> String {
    let (status, text) = get(&format!("http://{}/metrics", gateway.admin_addr)).await;
    assert_eq!(status, 200);
    text
}

/// The value of the sample that starts with `series ` (name and labels), or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn metrics_change_as_calls_happen() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |s| s.calls.retry.max_attempts = 1).await;
    let ok = r#"printjob_gateway_calls_total{method="Cancel",code="OK"}"#;
    let not_found = r#"printjob_gateway_calls_total{method="Cancel",code="NOT_FOUND"}"#;
    let unauthenticated = r#"printjob_gateway_calls_total{method="Cancel",code="UNAUTHENTICATED"}"#;
    let graph_204 = r#"printjob_gateway_graph_responses_total{status="204"}"#;
    let graph_404 = r#"printjob_gateway_graph_responses_total{status="404"}"#;
    let graph_latency = "printjob_gateway_graph_request_duration_seconds_count";
    let call_latency = r#"printjob_gateway_call_duration_seconds_count{method="Cancel"}"#;

    let before = scrape(&gateway).await;
    assert!(
        before.contains("printjob_gateway_build_info{version=\"0.1.0\",git_hash=\""),
        "{before}"
    );
    // Twice each: the second call of a code counts in the series the first one made.
    for _ in 0..2 {
        gateway.call().send().await.unwrap();
        gateway.call().authorization(None).send().await.unwrap_err();
    }
    graph.set_reply(Reply::graph_error(404, "itemNotFound", "Not found."));
    gateway.call().send().await.unwrap_err();
    let after = scrape(&gateway).await;

    for (series, added) in [
        (ok, 2.0),
        (not_found, 1.0),
        (unauthenticated, 2.0),
        (call_latency, 5.0),
        (graph_204, 2.0),
        (graph_404, 1.0),
        (graph_latency, 3.0),
    ] {
        assert_eq!(
            sample(&after, series) - sample(&before, series),
            added,
            "{series}\n{after}"
        );
    }
    assert_eq!(sample(&after, "printjob_gateway_calls_in_flight"), 0.0);
    assert!(after.contains("# TYPE printjob_gateway_call_duration_seconds histogram"));
}

#[tokio::test]
async fn retries_and_overload_rejections_are_counted() {
    let throttled =
        Reply::graph_error(429, "TooManyRequests", "Slow down.").header("retry-after", "0.01");
    let graph = FakeGraph::replying(throttled).await;
    let gateway = TestGateway::start_with(&graph.url(), |s| {
        s.calls.retry.max_attempts = 3;
        s.calls.max_in_flight = 1;
    })
    .await;

    gateway.call().send().await.unwrap_err();
    let text = scrape(&gateway).await;
    assert_eq!(
        sample(
            &text,
            r#"printjob_gateway_graph_retries_total{reason="throttled"}"#
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"printjob_gateway_graph_responses_total{status="429"}"#
        ),
        3.0,
        "{text}"
    );

    // Held until released: the call is in flight for as long as the test needs it to be.
    let hold = Hold::new();
    graph.set_reply(Reply::no_content().held(&hold));
    let in_flight = tokio::spawn(gateway.call().send());
    graph.wait_for_requests(4).await;
    assert_eq!(
        sample(&scrape(&gateway).await, "printjob_gateway_calls_in_flight"),
        1.0
    );
    gateway.call().send().await.unwrap_err();
    hold.release();
    in_flight.await.unwrap().unwrap();
    let text = scrape(&gateway).await;
    assert_eq!(
        sample(&text, "printjob_gateway_overload_rejections_total"),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "printjob_gateway_calls_in_flight"), 0.0);
}

#[tokio::test]
async fn labels_stay_bounded_under_many_distinct_ids_and_tokens() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let channel = gateway.channel().await;
    let series = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.rsplit_once(' ').unwrap().0.to_owned())
            .collect()
    };
    gateway.call().send_on(channel.clone()).await.unwrap();
    let first = series(&scrape(&gateway).await);

    for i in 0..300 {
        let id = format!("printer-{i}-{}", uuid::Uuid::new_v4());
        let token = format!("Bearer token{i}x{}", uuid::Uuid::new_v4().simple());
        gateway
            .call()
            .ids(&id, &id)
            .authorization(Some(&token))
            .send_on(channel.clone())
            .await
            .unwrap();
    }
    let text = scrape(&gateway).await;

    assert_eq!(series(&text), first, "no new series for new IDs or tokens");
    assert!(!text.contains("printer-1-") && !text.contains("token1x"));
}

#[tokio::test]
async fn health_endpoints_answer_plain_http_and_readiness_flips_during_drain() {
    // Held until released, so the drain lasts as long as the test needs, however busy the machine.
    let hold = Hold::new();
    let graph = FakeGraph::replying(Reply::no_content().held(&hold)).await;
    let mut gateway = TestGateway::start(&graph.url()).await;
    let admin = gateway.admin_addr;
    assert_eq!(get(&format!("http://{admin}/healthz")).await.0, 200);
    assert_eq!(get(&format!("http://{admin}/readyz")).await.0, 200);

    let in_flight = tokio::spawn(gateway.call().send());
    graph.wait_for_requests(1).await;
    gateway.begin_shutdown();
    // Generous: readiness flips as soon as serve sees the signal; this only bounds a failing test.
    let not_ready = tokio::time::timeout(Duration::from_secs(10), async {
        while get(&format!("http://{admin}/readyz")).await.0 != 503 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    assert!(not_ready.is_ok(), "/readyz answers 503 while draining");
    let text = get(&format!("http://{admin}/metrics")).await.1;
    assert_eq!(
        sample(&text, "printjob_gateway_ready"),
        0.0,
        "the ready gauge follows /readyz\n{text}"
    );
    assert!(!in_flight.is_finished(), "the drain is still going on");
    assert_eq!(
        get(&format!("http://{admin}/healthz")).await.0,
        200,
        "still alive while draining"
    );
    hold.release();
    in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    gateway.shut_down().await.unwrap();
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_to_prometheus_and_as_prometheus_text_to_others() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    gateway.call().send().await.unwrap();
    let url = format!("http://{}/metrics", gateway.admin_addr);
    let scrape = |accept: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut request = http_client().get(&url);
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let response = request.send().await.unwrap();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (content_type, response.text().await.unwrap())
        }
    };
    // What Prometheus 2 sends.
    let (content_type, openmetrics) = scrape(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ))
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        openmetrics.contains("# TYPE printjob_gateway_calls counter\n"),
        "{openmetrics}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    // What curl sends, and a client that sends nothing.
    for accept in [Some("*/*"), None] {
        let (content_type, text) = scrape(accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            text.contains("# HELP printjob_gateway_calls_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE printjob_gateway_calls_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let ok = r#"printjob_gateway_calls_total{method="Cancel",code="OK"}"#;
        assert_eq!(sample(&text, ok), 1.0, "the same samples\n{text}");
        assert_eq!(sample(&openmetrics, ok), 1.0);
    }
}

#[tokio::test]
async fn process_resources_limits_and_readiness_are_metrics() {
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--max-in-flight",
            "7",
            "--max-connections",
            "9",
        ],
        &[],
    )
    .await;
    let text = crate::support::metrics::metrics(gateway.admin_addr).await;
    let rss = gateway.rss_kib() as f64 * 1024.0;
    let reported = sample(&text, "process_resident_memory_bytes");
    // The same process read at nearly the same time: within a factor of two of /proc's VmRSS.
    assert!(
        reported > rss / 2.0 && reported < rss * 2.0,
        "{reported} bytes reported, {rss} read\n{text}"
    );
    assert!(sample(&text, "process_open_fds") >= 3.0, "{text}");
    assert!(sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"));
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds");
    assert!(
        (now - started).abs() < 600.0,
        "started {started}, now {now}"
    );
    assert_eq!(sample(&text, "printjob_gateway_calls_in_flight_limit"), 7.0);
    for listener in ["api", "admin"] {
        let series = format!("printjob_gateway_connections_limit{{listener=\"{listener}\"}}");
        assert_eq!(sample(&text, &series), 9.0, "{text}");
    }
    assert_eq!(sample(&text, "printjob_gateway_ready"), 1.0);
}

/// A self-signed certificate for `localhost` that expires at `not_after`, with its key, in one
/// PEM file (so that one rename replaces both: the reloader never sees half a renewal).
fn certificate_and_key(year: i32, month: u8, day: u8) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let cert = params.self_signed(&key).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

/// Replaces `path` in one rename, as a deploy tool does.
fn replace(path: &std::path::Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
async fn the_serving_certificates_expiry_and_its_reloads_are_metrics() {
    use crate::support::metrics::{metrics, wait_until_sample};
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("tls.pem");
    std::fs::write(&pem, certificate_and_key(2030, 1, 2)).unwrap();
    let graph = FakeGraph::start().await;
    let pem_arg = pem.to_str().unwrap();
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--tls-cert",
            pem_arg,
            "--tls-key",
            pem_arg,
        ],
        &[],
    )
    .await;
    let admin = gateway.admin_addr;
    let expiry = r#"printjob_gateway_tls_certificate_expiry_timestamp_seconds{listener="api"}"#;
    let good = r#"printjob_gateway_tls_last_reload_successful{listener="api"}"#;
    let loaded = r#"printjob_gateway_tls_reloads_total{listener="api",outcome="loaded"}"#;
    let failed = r#"printjob_gateway_tls_reloads_total{listener="api",outcome="failed"}"#;
    let text = metrics(admin).await;
    // 2030-01-02T00:00:00Z.
    assert_eq!(sample(&text, expiry), 1_893_542_400.0, "{text}");
    assert_eq!(sample(&text, good), 1.0);

    // Renewed: the new certificate's expiry, 2031-01-02T00:00:00Z.
    replace(&pem, &certificate_and_key(2031, 1, 2));
    wait_until_sample(admin, expiry, |value| value == 1_925_078_400.0).await;
    let text = metrics(admin).await;
    assert_eq!(
        (sample(&text, loaded), sample(&text, failed)),
        (1.0, 0.0),
        "{text}"
    );
    assert_eq!(sample(&text, good), 1.0);

    // A renewal that does not load: flagged, and the certificate in use (and its expiry) stays.
    replace(&pem, "not a certificate\n");
    wait_until_sample(admin, good, |value| value == 0.0).await;
    let text = metrics(admin).await;
    assert_eq!(
        (sample(&text, loaded), sample(&text, failed)),
        (1.0, 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, expiry), 1_925_078_400.0);

    // Fixed: flagged good again.
    replace(&pem, &certificate_and_key(2032, 1, 2));
    wait_until_sample(admin, good, |value| value == 1.0).await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, expiry),
        1_956_614_400.0,
        "2032-01-02T00:00:00Z\n{text}"
    );
}

/// An OTLP/gRPC trace collector on loopback that hands over every span it receives.
struct Collector(mpsc::UnboundedSender<OtlpSpan>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &OtlpSpan, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_linked_to_the_callers_trace() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, mut spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let scenario = r#"{"printers": [{"id": "p", "anyJob": true}], "rules": [{"printer": "p", "status": 503, "retryAfter": 0.05, "times": 1}]}"#;
    let (graph, graph_url) = simulated_graph(Scenario::parse(scenario, "test").unwrap()).await;
    let endpoint = format!("http://{collector_addr}");
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph_url],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    Call::to(gateway.grpc_addr)
        .ids("p", "1")
        .metadata("traceparent", &format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .expect("OK after one retry");

    let mut received = Vec::new();
    let all_in = tokio::time::timeout(Duration::from_secs(20), async {
        while received
            .iter()
            .filter(|s: &&OtlpSpan| hex(&s.trace_id) == trace_id)
            .count()
            < 3
        {
            received.push(spans.recv().await.unwrap());
        }
    })
    .await;
    assert!(
        all_in.is_ok(),
        "3 spans of the caller's trace arrive: {received:#?}"
    );
    let ours: Vec<&OtlpSpan> = received
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let server = ours
        .iter()
        .find(|s| s.name == "graph.print.v1.PrintJobService/Cancel")
        .expect("a server span");
    assert_eq!(
        hex(&server.parent_span_id),
        caller_span,
        "the server span's parent is the caller's span"
    );
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    let mut clients: Vec<&&OtlpSpan> = ours.iter().filter(|s| s.kind == 3).collect();
    clients.sort_by_key(|s| attribute(s, "attempt"));
    assert_eq!(clients.len(), 2, "one client span per Graph attempt");
    assert_eq!(attribute(clients[0], "attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(clients[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attribute(clients[1], "attempt").as_deref(), Some("2"));
    assert_eq!(
        attribute(clients[1], "http.response.status_code").as_deref(),
        Some("204")
    );
    for client in &clients {
        assert_eq!(
            client.parent_span_id, server.span_id,
            "client spans are children of the server span"
        );
    }

    let sent: Vec<String> = graph
        .received()
        .iter()
        .map(|r| r.traceparent.clone().expect("traceparent sent to Graph"))
        .collect();
    for (traceparent, client) in sent.iter().zip(&clients) {
        assert_eq!(
            traceparent,
            &format!("00-{trace_id}-{}-01", hex(&client.span_id)),
            "Graph sees the attempt's span as parent"
        );
    }
    gateway.terminate(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn without_an_otlp_endpoint_no_trace_context_is_sent_to_graph() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;

    gateway
        .call()
        .metadata(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();

    assert!(!graph.requests()[0].headers.contains_key("traceparent"));
}

#[tokio::test]
async fn client_spans_name_graphs_route_of_the_printer_or_the_share_the_call_went_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, mut spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // Job 1 is canceled already: Graph refuses its cancel and the gateway reads it, so each call
    // makes both client spans, the cancel's and the read's.
    let scenario = r#"{"printers": [{"id": "p", "jobs": [{"id": "1", "state": "canceled"}]}],
                       "shares": [{"id": "s", "printer": "p"}]}"#;
    let (_graph, graph_url) = simulated_graph(Scenario::parse(scenario, "test").unwrap()).await;
    let endpoint = format!("http://{collector_addr}");
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph_url],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let printer_trace = "4bf92f3577b34da6a3ce929d0e0e4737";
    let share_trace = "4bf92f3577b34da6a3ce929d0e0e4738";
    for (trace_id, call) in [
        (printer_trace, Call::to(gateway.grpc_addr).ids("p", "1")),
        (share_trace, Call::to(gateway.grpc_addr).share("s", "1")),
    ] {
        let answer = call
            .metadata("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .await
            .expect("OK: already canceled");
        assert!(answer.into_inner().already_canceled);
    }

    // Client spans (SPAN_KIND_CLIENT) by trace. The exporter sends every 50 ms; 20 s is for a
    // loaded machine.
    let clients_of = |received: &[OtlpSpan], trace_id: &str| -> BTreeSet<String> {
        received
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id && s.kind == 3)
            .map(|s| s.name.clone())
            .collect()
    };
    let mut received = Vec::new();
    let all_in = tokio::time::timeout(Duration::from_secs(20), async {
        while clients_of(&received, printer_trace).len() < 2
            || clients_of(&received, share_trace).len() < 2
        {
            received.push(spans.recv().await.unwrap());
        }
    })
    .await;
    assert!(all_in.is_ok(), "4 client spans arrive: {received:#?}");
    assert_eq!(
        clients_of(&received, printer_trace),
        BTreeSet::from([
            "POST /print/printers/{printerId}/jobs/{printJobId}/cancel".to_owned(),
            "GET /print/printers/{printerId}/jobs/{printJobId}".to_owned(),
        ])
    );
    assert_eq!(
        clients_of(&received, share_trace),
        BTreeSet::from([
            "POST /print/shares/{printerShareId}/jobs/{printJobId}/cancel".to_owned(),
            "GET /print/shares/{printerShareId}/jobs/{printJobId}".to_owned(),
        ])
    );
    gateway.terminate(Duration::from_secs(10)).await;
}
