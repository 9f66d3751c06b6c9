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
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{
    FakeGraph, TestGateway,
    counted::counted_channel,
    gateway::{Call, connect},
    http_client,
    metrics::{metrics, sample, wait_for_sample},
    pki::make_pki,
    process::GatewayProcess,
    raw::{RawH2, closed_within, grpc_frame, silent_connections, stalling_body},
};

/// Long enough for anything on a busy machine to happen, short enough to fail a test quickly when
/// it does not.
const PATIENCE: Duration = Duration::from_secs(10);

/// A CancelRequest as the wire carries it.
fn cancel_request() -> Vec<u8> {
    printjob_gateway::proto::CancelRequest {
        printer_id: "printer-1".to_owned(),
        print_job_id: "42".to_owned(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn beyond_the_cap_a_new_connection_is_closed_at_once_and_counted_on_both_listeners() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.max_connections = 2;
    })
    .await;
    for (addr, listener) in [(gateway.grpc_addr, "api"), (gateway.admin_addr, "admin")] {
        // Two connections that finished their handshake fill the cap.
        let first = connect(addr).await;
        let second = connect(addr).await;
        HealthClient::new(first.clone())
            .check(HealthCheckRequest::default())
            .await
            .unwrap();
        HealthClient::new(second.clone())
            .check(HealthCheckRequest::default())
            .await
            .unwrap();

        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut third, PATIENCE).await,
            "the {listener} listener closes the connection over its cap"
        );
        HealthClient::new(first)
            .check(HealthCheckRequest::default())
            .await
            .expect("connections under the cap are served on");
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
async fn a_stream_whose_message_never_comes_holds_its_permit_and_ends_deadline_exceeded() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start_with(&graph.url(), |settings| {
        settings.calls.max_in_flight = 1;
    })
    .await;
    let mut raw = RawH2::connect(gateway.grpc_addr).await;

    let header_only = tokio::spawn(raw.cancel(Some("2S"), stalling_body(&[])));
    wait_for_sample(gateway.admin_addr, "printjob_gateway_calls_in_flight", 1.0).await;
    let status = gateway.call().send().await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "the header-only stream holds the only permit: {status:?}"
    );

    let (code, message) = header_only.await.unwrap();
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(graph.requests().is_empty(), "Graph was never called");
    gateway.call().send().await.expect("the permit is back");
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
async fn health_and_reflection_streams_are_capped_per_listener() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    let channel = gateway.admin_channel().await;
    let mut watches = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        match HealthClient::new(channel.clone())
            .watch(HealthCheckRequest::default())
            .await
        {
            Ok(watch) => watches.push(watch.into_inner()),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("Watch streams are capped");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(watches.len() >= 16, "{} watches", watches.len());

    // The API listener has its own cap, and Cancel calls are not counted against either.
    gateway.call().send().await.expect("Cancel is served");
    let api = HealthClient::new(gateway.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(api.into_inner().status(), ServingStatus::Serving);

    watches.pop();
    let check = async {
        loop {
            if let Ok(answer) = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
            {
                return answer;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, check)
        .await
        .expect("a closed Watch gives its place back");
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
