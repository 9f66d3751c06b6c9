//! Ingress hardening, tried as a hostile client would before any token is checked: connections
//! are capped and must finish their handshake in time, a stream is bounded from its headers, the
//! long-lived streams of health and reflection are capped, memory stays bounded under all of it,
//! and a message over the size limit is RESOURCE_EXHAUSTED. Then the rest of issue 13: TLS files
//! rotate, unsafe settings are flagged at start-up, and shutdown does not wait for idle
//! connections.

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use prost::Message;
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use crate::support::{
    FakeGraph, TestGateway,
    counted::counted_channel,
    gateway::{Call, connect},
    http_client,
    metrics::{metrics, sample, wait_for_sample},
    pki::make_pki,
    process::GatewayProcess,
    raw::{
        RawH2, closed_within, grpc_frame, idle_connections, silent_connections, stalling_body,
        whole_body,
    },
};

/// Long enough for anything on a busy machine to happen, short enough to fail a test quickly when
/// it does not.
const PATIENCE: Duration = Duration::from_secs(10);

/// A CancelRequest as the wire carries it.
fn cancel_request() -> Vec<u8> {
    printjob_gateway::proto::CancelRequest {
        printer_id: "printer-1".to_owned(),
        print_job_id: "42".to_owned(),
        share_id: String::new(),
    }
    .encode_to_vec()
}

/// A health `Watch` stream open on `channel`, once its first answer has arrived.
async fn open_watch(channel: tonic::transport::Channel) -> tonic::Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("a first status");
    watch
}

#[tokio::test]
async fn beyond_the_cap_a_new_connection_is_closed_at_once_when_every_connection_has_a_stream() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.max_connections = 2;
    })
    .await;
    for (addr, listener) in [(gateway.grpc_addr, "api"), (gateway.admin_addr, "admin")] {
        // Two connections with a stream open (a health Watch each) fill the cap: neither is idle.
        let first = connect(addr).await;
        let second = connect(addr).await;
        let watches = [
            open_watch(first.clone()).await,
            open_watch(second.clone()).await,
        ];

        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut third, PATIENCE).await,
            "the {listener} listener closes the connection over its cap"
        );
        HealthClient::new(first)
            .check(HealthCheckRequest::default())
            .await
            .expect("connections under the cap are served on");
        drop(watches);
        drop(second);
    }
    // The admin connections are closed: the metrics need a connection of their own.
    let text = loop {
        if let Ok(response) = http_client()
            .get(format!("http://{}/metrics", gateway.admin_addr))
            .send()
            .await
        {
            break response.text().await.unwrap();
        }
        tokio::task::yield_now().await;
    };
    for listener in ["api", "admin"] {
        assert!(
            sample(
                &text,
                &format!(
                    r#"printjob_gateway_connections_closed_total{{listener="{listener}",reason="limit"}}"#
                )
            ) >= 1.0,
            "{text}"
        );
    }
}

#[tokio::test]
async fn at_the_cap_a_new_connection_displaces_the_one_idle_the_longest_on_both_listeners() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.max_connections = 3;
    })
    .await;

    // The API: three served connections without a stream fill the cap; a caller still gets in.
    let mut idle = idle_connections(gateway.grpc_addr, 3).await;
    gateway
        .call()
        .send()
        .await
        .expect("a caller gets in although idle connections fill the cap");
    assert!(
        closed_within(&mut idle[0], PATIENCE).await,
        "the connection idle the longest made room"
    );

    // The admin listener, its own budget: /healthz and the gRPC health check get in the same way.
    let mut idle = idle_connections(gateway.admin_addr, 3).await;
    // Kept, so that its connection stays open (idle, after the answer) and the Check below has to
    // displace another.
    let client = http_client();
    let healthz = client
        .get(format!("http://{}/healthz", gateway.admin_addr))
        .send()
        .await
        .expect("/healthz gets in although idle connections fill the cap");
    assert!(healthz.status().is_success());
    assert!(closed_within(&mut idle[0], PATIENCE).await);
    let check = HealthClient::new(gateway.admin_channel().await)
        .check(HealthCheckRequest::default())
        .await
        .expect("the health check gets in");
    assert_eq!(check.into_inner().status(), ServingStatus::Serving);
    assert!(closed_within(&mut idle[1], PATIENCE).await);

    let text = metrics(gateway.admin_addr).await;
    for listener in ["api", "admin"] {
        assert!(
            sample(
                &text,
                &format!(
                    r#"printjob_gateway_connections_closed_total{{listener="{listener}",reason="limit"}}"#
                )
            ) >= 1.0,
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_admin_listener_has_its_own_connection_budget() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.max_connections = 2;
    })
    .await;
    // The API's budget is full of connections that cannot be displaced (each has a stream open,
    // opened before the next connection, which would otherwise displace it while it is idle).
    let mut api_watches = Vec::new();
    for _ in 0..2 {
        api_watches.push(open_watch(connect(gateway.grpc_addr).await).await);
    }
    let mut refused = tokio::net::TcpStream::connect(gateway.grpc_addr)
        .await
        .unwrap();
    assert!(
        closed_within(&mut refused, PATIENCE).await,
        "the API is full"
    );

    let healthz = http_client()
        .get(format!("http://{}/healthz", gateway.admin_addr))
        .send()
        .await
        .expect("the admin listener takes connections of its own");
    assert!(healthz.status().is_success());
    let check = HealthClient::new(gateway.admin_channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(check.into_inner().status(), ServingStatus::Serving);

    // And the other way round.
    let mut admin_watches = Vec::new();
    for _ in 0..2 {
        admin_watches.push(open_watch(connect(gateway.admin_addr).await).await);
    }
    let mut refused = tokio::net::TcpStream::connect(gateway.admin_addr)
        .await
        .unwrap();
    assert!(
        closed_within(&mut refused, PATIENCE).await,
        "the admin listener is full"
    );
    drop(api_watches);
    gateway
        .call()
        .send()
        .await
        .expect("a full admin listener does not stop a caller");
}

#[tokio::test]
async fn a_connection_without_a_stream_is_closed_after_the_idle_timeout_pings_notwithstanding() {
    const IDLE_TIMEOUT: Duration = Duration::from_millis(500);
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.idle_connection_timeout = IDLE_TIMEOUT;
    })
    .await;
    // Both connections ping every 50 ms, ten times within the timeout; one keeps a Watch open.
    let ping = Duration::from_millis(50);
    let mut watching = RawH2::connect_pinging(gateway.grpc_addr, ping).await;
    let watch = watching
        .open(
            "/grpc.health.v1.Health/Watch",
            whole_body(&grpc_frame(&HealthCheckRequest::default().encode_to_vec())),
        )
        .await;
    assert_eq!(watch.status(), 200);
    let mut idle = RawH2::connect_pinging(gateway.grpc_addr, ping).await;
    // Taken before the call: the connection went idle after this, whenever the client saw it.
    let before_last_stream = std::time::Instant::now();
    let (code, message) = idle
        .cancel(None, whole_body(&grpc_frame(&cancel_request())))
        .await;
    assert_eq!(code, 0, "{message}");

    tokio::time::timeout(PATIENCE, idle.closed())
        .await
        .expect("the idle connection is closed");
    assert!(
        before_last_stream.elapsed() >= IDLE_TIMEOUT,
        "closed {:?} after the last stream began",
        before_last_stream.elapsed()
    );
    // It was opened after the watching one, so a timer that ignored streams would have closed
    // that one first.
    assert!(
        !watching.is_closed(),
        "a connection with a stream open stays"
    );
    let (code, message) = watching
        .stream(
            "/grpc.health.v1.Health/Check",
            None,
            None,
            whole_body(&grpc_frame(&HealthCheckRequest::default().encode_to_vec())),
        )
        .await;
    assert_eq!(code, 0, "{message}");
    drop(watch);

    let text = metrics(gateway.admin_addr).await;
    assert!(
        sample(
            &text,
            r#"printjob_gateway_connections_closed_total{listener="api",reason="idle_timeout"}"#
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn at_the_cap_a_silent_connection_makes_room_for_a_caller() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.max_connections = 3;
    })
    .await;
    let mut silent = silent_connections(gateway.grpc_addr, 3).await;

    gateway
        .call()
        .send()
        .await
        .expect("a caller gets in although silent connections fill the cap");
    assert!(
        closed_within(&mut silent[0], PATIENCE).await,
        "the oldest silent connection made room"
    );
}

#[tokio::test]
async fn a_connection_that_does_not_finish_its_handshake_in_time_is_closed() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    for addr in [gateway.grpc_addr, gateway.admin_addr] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half_preface = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut half_preface, b"PRI * HTTP/2.0\r\n")
            .await
            .unwrap();
        // The bound is 300 ms; PATIENCE only guards against a gateway that never closes them.
        assert!(closed_within(&mut silent, PATIENCE).await);
        assert!(closed_within(&mut half_preface, PATIENCE).await);
    }
    gateway.call().send().await.expect("callers are served");
    let text = metrics(gateway.admin_addr).await;
    assert!(
        sample(
            &text,
            r#"printjob_gateway_connections_closed_total{listener="api",reason="handshake_timeout"}"#
        ) >= 2.0,
        "{text}"
    );
}

/// The settings a listener sends a new HTTP/2 connection, as (identifier, value) pairs.
async fn server_settings(addr: std::net::SocketAddr) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|setting| {
            (
                u16::from_be_bytes([setting[0], setting[1]]),
                u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_connection_is_told_the_stream_limit_of_1024() {
    const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    for addr in [gateway.grpc_addr, gateway.admin_addr] {
        let settings = server_settings(addr).await;
        assert!(
            settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 1024)),
            "{settings:?}"
        );
    }
    assert_eq!(printjob_gateway::server::MAX_CONCURRENT_STREAMS, 1024);
}

/// One caller may fill the stream limit on one connection while the gateway is too busy to read.
/// Each call's message is a small DATA frame, which h2 counts against a framing budget (half the
/// connection window) until the gateway reads it; when the budget runs out, h2 closes the
/// connection with ENHANCE_YOUR_CALM and every call on it is lost. The gateway is stopped
/// (SIGSTOP) while the calls are sent, so that it meets all of them at once when it continues, as
/// a gateway starved of CPU would.
#[tokio::test]
async fn a_burst_that_fills_a_connection_while_the_gateway_is_busy_is_served_not_dropped() {
    const CALLS: usize = 1_000;
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;
    let (channel, data_frames) = counted_channel(gateway.grpc_addr).await;
    Call::to(gateway.grpc_addr)
        .send_on(channel.clone())
        .await
        .expect("a first call");
    assert_eq!(data_frames.load(Ordering::SeqCst), 1);

    gateway.signal("STOP");
    let mut calls = tokio::task::JoinSet::new();
    for job in 1..=CALLS {
        let call = Call::to(gateway.grpc_addr)
            .ids("printer-1", &job.to_string())
            .timeout(Duration::from_secs(60));
        calls.spawn(call.send_on(channel.clone()));
    }
    // Every message has left the client and waits in the gateway's socket.
    tokio::time::timeout(PATIENCE, async {
        while data_frames.load(Ordering::SeqCst) < 1 + CALLS {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the client writes every call while the gateway is stopped");
    gateway.signal("CONT");

    for outcome in calls.join_all().await {
        outcome.expect("every call of the burst is served");
    }
    assert_eq!(graph.requests().len(), 1 + CALLS);
    let (status, logs) = gateway.terminate(PATIENCE).await;
    assert!(status.success(), "{logs}");
}

#[tokio::test]
async fn a_stream_whose_message_never_comes_ends_at_the_message_wait_not_its_deadline() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.calls.max_in_flight = 1;
        settings.message_wait = Duration::from_millis(300);
    })
    .await;
    let mut raw = RawH2::connect(gateway.grpc_addr).await;

    // A 60 s deadline: only the message wait can end it within PATIENCE.
    let started = std::time::Instant::now();
    let header_only = tokio::spawn(raw.cancel(Some("60S"), stalling_body(&[])));
    let (code, message) = tokio::time::timeout(PATIENCE, header_only)
        .await
        .expect("the stream ends long before its deadline")
        .unwrap();
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("did not arrive within 300ms"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(graph.requests().is_empty(), "Graph was never called");
    gateway.call().send().await.expect("the place is back");
}

#[tokio::test]
async fn a_stream_without_a_plausible_token_is_refused_at_its_headers_without_a_place() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.calls.max_in_flight = 1;
        // Far longer than PATIENCE: a refused stream must not be waiting for its message.
        settings.message_wait = Duration::from_secs(60);
    })
    .await;
    let mut raw = RawH2::connect(gateway.grpc_addr).await;
    let cancel = "/graph.print.v1.PrintJobService/Cancel";
    for authorization in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer a b")] {
        // Headers only, and a 60 s deadline: answered at once, or this times out.
        let refused = raw.stream(cancel, authorization, Some("60S"), stalling_body(&[]));
        let (code, message) = tokio::time::timeout(PATIENCE, refused)
            .await
            .expect("refused at its headers");
        assert_eq!(
            code,
            Code::Unauthenticated as i32,
            "{authorization:?}: {message}"
        );
    }
    // Many of them at once, and the only place is still free for a caller with a token.
    let mut refused = Vec::new();
    for _ in 0..100 {
        refused.push(tokio::spawn(raw.stream(
            cancel,
            None,
            Some("60S"),
            stalling_body(&[]),
        )));
    }
    gateway
        .call()
        .send()
        .await
        .expect("the caller gets the place");
    for stream in refused {
        assert_eq!(stream.await.unwrap().0, Code::Unauthenticated as i32);
    }
    assert_eq!(
        sample(
            &metrics(gateway.admin_addr).await,
            "printjob_gateway_overload_rejections_total"
        ),
        0.0
    );
}

#[tokio::test]
async fn one_connection_may_use_every_place_until_a_caller_on_another_connection_waits() {
    const PLACES: usize = 4;
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.calls.max_in_flight = PLACES;
        settings.message_wait = Duration::from_secs(1);
    })
    .await;
    // One connection takes every place, with streams that send their headers and nothing more.
    let mut hog = RawH2::connect(gateway.grpc_addr).await;
    let mut held = Vec::new();
    for _ in 0..PLACES {
        held.push(tokio::spawn(hog.cancel(Some("60S"), stalling_body(&[]))));
    }
    wait_for_sample(
        gateway.admin_addr,
        "printjob_gateway_calls_in_flight",
        PLACES as f64,
    )
    .await;
    // It is alone: it may use every place, and a further stream of its own is refused at once.
    let (code, _) = hog.cancel(Some("60S"), stalling_body(&[])).await;
    assert_eq!(code, Code::ResourceExhausted as i32);

    // A caller on another connection, under its share, waits for the first place given back
    // (the hog's streams end at the message wait) instead of being turned away.
    let caller = tokio::spawn(gateway.call().timeout(Duration::from_secs(30)).send());
    // Meanwhile the hog, over its share, keeps trying to renew its places (every 5 ms while it
    // is refused): the places it gives back go to the waiting caller first all the same.
    let renewing = tokio::spawn(async move {
        loop {
            hog.cancel(Some("60S"), stalling_body(&[])).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    caller
        .await
        .unwrap()
        .expect("the caller on another connection is served");
    for stream in held {
        let (code, message) = stream.await.unwrap();
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    }
    renewing.abort();
}

#[tokio::test]
async fn a_message_whose_stream_never_ends_is_bounded_by_the_default_deadline() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.calls.deadlines.default = Duration::from_millis(500);
    })
    .await;
    let mut raw = RawH2::connect(gateway.grpc_addr).await;

    let (code, message) = raw
        .cancel(None, stalling_body(&grpc_frame(&cancel_request())))
        .await;

    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted_and_says_the_limit() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let huge = "x".repeat(8 * 1024);

    let status = gateway.call().ids(&huge, "1").send().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4096 bytes"), "{status:?}");

    // Declared over the limit, with the payload still to come: refused at once.
    let mut raw = RawH2::connect(gateway.grpc_addr).await;
    let prefix = [0, 0, 1, 0, 0];
    let (code, message) = raw.cancel(Some("20S"), stalling_body(&prefix)).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(graph.requests().is_empty());
    gateway.call().send().await.expect("the gateway serves on");
}

#[tokio::test]
async fn watch_streams_are_capped_per_connection_and_per_listener_and_never_stop_a_check() {
    use printjob_gateway::server::MAX_SERVICE_STREAMS;
    const PER_CONNECTION: usize = 4;
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let check = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(|answer| answer.into_inner().status())
    };

    // Per connection: the fifth Watch on one connection is refused, and a Check on it answered.
    let channel = gateway.admin_channel().await;
    let mut watches = Vec::new();
    for _ in 0..PER_CONNECTION {
        watches.push(open_watch(channel.clone()).await);
    }
    let refused = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect_err("a connection's Watch streams are capped");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        check(channel.clone()).await.unwrap(),
        ServingStatus::Serving
    );

    // Per listener: Watch streams spread over connections stop at the cap.
    let mut refused = None;
    'fill: for _ in 0..(2 * MAX_SERVICE_STREAMS / PER_CONNECTION) {
        let channel = gateway.admin_channel().await;
        for _ in 0..PER_CONNECTION {
            match HealthClient::new(channel.clone())
                .watch(HealthCheckRequest::default())
                .await
            {
                Ok(watch) => watches.push(watch.into_inner()),
                Err(status) => {
                    refused = Some(status);
                    break 'fill;
                }
            }
        }
    }
    let refused = refused.expect("Watch streams are capped per listener");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(watches.len(), MAX_SERVICE_STREAMS);
    // Each refusal is counted, on the listener that refused it.
    let text = metrics(gateway.admin_addr).await;
    let refusals = |listener: &str| {
        sample(
            &text,
            &format!(r#"printjob_gateway_service_streams_refused_total{{listener="{listener}"}}"#),
        )
    };
    assert_eq!((refusals("admin"), refusals("api")), (2.0, 0.0), "{text}");

    // A full Watch cap stops no probe: a Check on any connection, /healthz, and the API listener,
    // which has caps of its own; reflection has its own cap too.
    assert_eq!(
        check(channel.clone()).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(gateway.admin_channel().await).await.unwrap(),
        ServingStatus::Serving
    );
    let healthz = http_client()
        .get(format!("http://{}/healthz", gateway.admin_addr))
        .send()
        .await
        .unwrap();
    assert!(healthz.status().is_success());
    assert_eq!(
        check(gateway.channel().await).await.unwrap(),
        ServingStatus::Serving
    );
    gateway.call().send().await.expect("Cancel is served");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            gateway.admin_channel().await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut listed = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection is not capped by Watch streams")
        .into_inner();
    assert!(listed.message().await.unwrap().is_some());

    // A closed Watch gives its place back (asked for on a connection under its own cap).
    watches.pop();
    let fresh = gateway.admin_channel().await;
    let watch = async {
        loop {
            if let Ok(watch) = HealthClient::new(fresh.clone())
                .watch(HealthCheckRequest::default())
                .await
            {
                return watch;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("a closed Watch gives its place back");
}

#[tokio::test]
async fn header_only_checks_are_capped_per_connection_and_stop_no_other_check() {
    const PER_CONNECTION: usize = 4;
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let mut raw = RawH2::connect(gateway.admin_addr).await;
    let path = "/grpc.health.v1.Health/Check";
    let mut header_only = Vec::new();
    for _ in 0..PER_CONNECTION {
        header_only.push(tokio::spawn(raw.stream(
            path,
            None,
            None,
            stalling_body(&[]),
        )));
    }
    // The next one on that connection is refused at once; the streams before it are held (a
    // refusal is answered in order, after their headers were seen).
    let (code, message) = raw.stream(path, None, None, stalling_body(&[])).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(
        message.contains("at most 4 health Check streams"),
        "{message}"
    );
    for _ in 0..10 {
        let check = HealthClient::new(gateway.admin_channel().await)
            .check(HealthCheckRequest::default())
            .await
            .expect("a Check on another connection is answered");
        assert_eq!(check.into_inner().status(), ServingStatus::Serving);
    }
    drop(header_only);
}

// === Certificates rotate ===

/// Publishes a certificate and key as a Kubernetes Secret volume does: a new directory of files,
/// then the `..data` symlink swapped to it in one rename (`tls.crt` and `tls.key` are symlinks
/// through `..data`).
fn publish(secret: &Path, version: &str, cert: &str, key: &str) {
    publish_files(secret, version, &[("tls.crt", cert), ("tls.key", key)]);
}

/// Publishes these files (name, contents) as one version of a Secret volume.
fn publish_files(secret: &Path, version: &str, files: &[(&str, &str)]) {
    let dir = secret.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    let next = secret.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &next).unwrap();
    std::fs::rename(&next, secret.join("..data")).unwrap();
    for (name, _) in files {
        let link = secret.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

/// The certificate a new TLS handshake with the gateway presents (the client trusts `roots`).
async fn presented_certificate(addr: std::net::SocketAddr, roots: &[&str]) -> Vec<u8> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store.add(der(pem).into()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER bytes of the first certificate in `pem`.
fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Polls new handshakes until one presents `expected`.
async fn wait_for_certificate(addr: std::net::SocketAddr, roots: &[&str], expected: &[u8]) {
    let rotated = async {
        while presented_certificate(addr, roots).await != expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, rotated)
        .await
        .expect("new handshakes present the new certificate");
}

#[tokio::test]
async fn a_certificate_swapped_in_is_used_by_new_handshakes_while_old_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    let (first, second) = (make_pki(&first), make_pki(&second));
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    publish(&secret, "2026_01", &first.server_cert, &first.server_key);
    let graph = FakeGraph::start().await;
    let (cert, key) = (secret.join("tls.crt"), secret.join("tls.key"));
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--handshake-timeout",
            "2s",
        ],
        &[],
    )
    .await;
    // The handshake timeout covers TLS too: a client that never sends its ClientHello is closed.
    let mut silent = tokio::net::TcpStream::connect(gateway.grpc_addr)
        .await
        .unwrap();
    assert!(closed_within(&mut silent, PATIENCE).await);
    let both = [first.ca.as_str(), second.ca.as_str()];
    assert_eq!(
        presented_certificate(gateway.grpc_addr, &both).await,
        der(&first.server_cert)
    );
    // A connection that trusts only the first CA, opened before the rotation.
    let old = Endpoint::from_shared(format!("https://{}", gateway.grpc_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(Certificate::from_pem(&first.ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    Call::to(gateway.grpc_addr)
        .send_on(old.clone())
        .await
        .unwrap();

    publish(&secret, "2026_02", &second.server_cert, &second.server_key);
    wait_for_certificate(gateway.grpc_addr, &both, &der(&second.server_cert)).await;
    gateway
        .wait_for_log("TLS certificate reloaded", PATIENCE)
        .await;
    // A new handshake would fail now (the first CA did not sign the new certificate): this call
    // can only have gone over the connection opened before.
    Call::to(gateway.grpc_addr)
        .send_on(old)
        .await
        .expect("the connection opened before the rotation keeps working");

    publish(&secret, "2026_03", "not a certificate", &second.server_key);
    gateway.wait_for_log("do not load", PATIENCE).await;
    assert_eq!(
        presented_certificate(gateway.grpc_addr, &both).await,
        der(&second.server_cert),
        "a file that does not load leaves the certificate in use"
    );
    let (status, logs) = gateway.terminate(PATIENCE).await;
    assert!(status.success(), "{logs}");
}

#[tokio::test]
async fn a_client_ca_swapped_in_decides_which_callers_new_handshakes_accept() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    let (first, second) = (make_pki(&first), make_pki(&second));
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let files = |ca: &str| {
        [
            ("tls.crt", first.server_cert.clone()),
            ("tls.key", first.server_key.clone()),
            ("ca.crt", ca.to_owned()),
        ]
    };
    let publish_ca = |version: &str, ca: &str| {
        let files = files(ca);
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        publish_files(&secret, version, &files);
    };
    publish_ca("2026_01", &first.ca);
    let graph = FakeGraph::start().await;
    let path = |name: &str| secret.join(name).to_str().unwrap().to_owned();
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--tls-cert",
            &path("tls.crt"),
            "--tls-key",
            &path("tls.key"),
            "--tls-client-ca",
            &path("ca.crt"),
        ],
        &[],
    )
    .await;
    // Callers trust the server's CA and present a certificate from one PKI or the other.
    let caller = |pki: &crate::support::pki::Pki| {
        ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&first.ca))
            .identity(Identity::from_pem(&pki.client_cert, &pki.client_key))
    };
    let call = |tls: ClientTlsConfig| async move {
        let channel = Endpoint::from_shared(format!("https://{}", gateway.grpc_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        Call::to(gateway.grpc_addr).send_on(channel).await.map(drop)
    };
    call(caller(&first))
        .await
        .expect("a caller of the first CA");
    call(caller(&second))
        .await
        .expect_err("a caller of the second CA, not yet trusted");

    publish_ca("2026_02", &second.ca);
    gateway
        .wait_for_log("TLS certificate reloaded", PATIENCE)
        .await;
    call(caller(&second))
        .await
        .expect("a caller of the second CA, now trusted");
    call(caller(&first))
        .await
        .expect_err("a caller of the first CA, no longer trusted");
}

// === Start-up ===

#[tokio::test]
async fn plaintext_beyond_loopback_and_a_grace_shorter_than_the_longest_call_are_warned_about() {
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--listen",
            "0.0.0.0:0",
            "--shutdown-grace",
            "5s",
        ],
        &[],
    )
    .await;
    let (status, logs) = gateway.terminate(PATIENCE).await;
    assert!(status.success(), "{logs}");
    let warnings: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|json| json["level"] == "WARN")
        .collect();
    for expected in [
        "bearer tokens would cross the network unencrypted",
        "--shutdown-grace",
    ] {
        assert!(
            warnings
                .iter()
                .any(|json| json["message"].as_str().unwrap().contains(expected)),
            "a WARN saying {expected:?}:\n{logs}"
        );
    }
}

#[tokio::test]
async fn the_defaults_start_without_a_warning() {
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(&["--graph-url", &graph.url()], &[]).await;
    let (status, logs) = gateway.terminate(PATIENCE).await;
    assert!(status.success(), "{logs}");
    assert!(!logs.contains(r#""level":"WARN""#), "{logs}");
}

// === Shutdown ===

#[tokio::test]
async fn connections_without_calls_do_not_hold_shutdown_for_the_grace_period() {
    let graph = FakeGraph::start().await;
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph.url(), "--shutdown-grace", "60s"],
        &[],
    )
    .await;
    // A connection that never speaks, one that sent its preface and never reads (so never
    // answers GOAWAY's ping), an idle caller, and health Watch streams on both listeners.
    let _silent = silent_connections(gateway.grpc_addr, 1).await;
    let mut deaf = tokio::net::TcpStream::connect(gateway.grpc_addr)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut deaf,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await
    .unwrap();
    let idle = connect(gateway.grpc_addr).await;
    Call::to(gateway.grpc_addr)
        .send_on(idle.clone())
        .await
        .unwrap();
    let mut watches = Vec::new();
    for addr in [gateway.grpc_addr, gateway.admin_addr] {
        let mut watch = HealthClient::new(connect(addr).await)
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        watch.message().await.unwrap();
        watches.push(watch);
    }

    let started = std::time::Instant::now();
    let (status, logs) = gateway.terminate(Duration::from_secs(50)).await;

    assert!(status.success(), "{logs}");
    // Nothing is in flight: the drain takes about a second per listener to let connections
    // close. The bound is wide for a busy machine and still far from the 60 s grace period.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exited after {:?}",
        started.elapsed()
    );
    drop(watches);
}

#[tokio::test]
async fn a_second_signal_exits_at_once_while_a_call_drains() {
    let graph =
        FakeGraph::replying(crate::support::Reply::no_content().delayed(Duration::from_secs(60)))
            .await;
    let gateway = GatewayProcess::spawn(
        &[
            "--graph-url",
            &graph.url(),
            "--shutdown-grace",
            "60s",
            "--max-timeout",
            "60s",
        ],
        &[],
    )
    .await;
    let in_flight = tokio::spawn(
        Call::to(gateway.grpc_addr)
            .timeout(Duration::from_secs(55))
            .send(),
    );
    graph.wait_for_requests(1).await;
    gateway.signal("TERM");
    gateway.wait_for_log("shutting down", PATIENCE).await;
    let started = std::time::Instant::now();
    gateway.signal("TERM");
    let (status, logs) = gateway.wait(Duration::from_secs(50)).await;

    // Far less than the call's 60 s or the grace period; wide for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exited after {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(128 + 15), "{logs}");
    assert!(logs.contains("SIGTERM received again"), "{logs}");
    in_flight
        .await
        .unwrap()
        .expect_err("the call did not complete");
}

#[tokio::test]
async fn a_call_cut_off_by_the_grace_period_is_logged_with_the_attempts_it_made() {
    let graph =
        FakeGraph::replying(crate::support::Reply::no_content().delayed(Duration::from_secs(30)))
            .await;
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph.url(), "--shutdown-grace", "500ms"],
        &[],
    )
    .await;
    let in_flight = tokio::spawn(
        Call::to(gateway.grpc_addr)
            .timeout(Duration::from_secs(25))
            .send(),
    );
    graph.wait_for_requests(1).await;
    let (status, logs) = gateway.terminate(PATIENCE).await;

    assert!(status.success(), "{logs}");
    let code = in_flight.await.unwrap().unwrap_err().code();
    assert_eq!(code, Code::Unavailable);
    let line = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| json["message"] == "cancel failed")
        .unwrap_or_else(|| panic!("an access log line:\n{logs}"));
    assert_eq!(line["span"]["grpc_code"], "UNAVAILABLE", "{line}");
    assert_eq!(
        line["span"]["attempts"], 1,
        "the request sent to Graph is counted: {line}"
    );
}
