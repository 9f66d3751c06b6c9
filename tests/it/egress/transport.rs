//! How the gateway reaches Graph: HTTP/2 or HTTP/1.1 as configured, TLS with the platform's roots
//! plus an extra CA, and through an HTTPS_PROXY tunnel that never sees the token.

use std::time::Duration;

use printjob_gateway::graph::GraphProtocol;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    FakeGraph, TOKEN, TestGateway, gateway::Call, pki::make_pki, process::GatewayProcess,
};

fn versions(graph: &FakeGraph) -> Vec<String> {
    graph.requests().into_iter().map(|r| r.version).collect()
}

#[tokio::test]
async fn plain_http_uses_http1_by_default_and_http2_when_asked() {
    for (protocol, expected) in [
        (GraphProtocol::Auto, "HTTP/1.1"),
        (GraphProtocol::Http1, "HTTP/1.1"),
        (GraphProtocol::Http2, "HTTP/2.0"),
    ] {
        let graph = FakeGraph::start().await;
        let gateway = TestGateway::start_with(&graph.url(), |s| s.graph.protocol = protocol).await;

        for _ in 0..3 {
            gateway.call().send().await.unwrap();
        }

        assert_eq!(
            versions(&graph),
            [expected; 3],
            "--graph-protocol {protocol:?}"
        );
    }
}

#[tokio::test]
async fn tls_graph_is_trusted_through_the_extra_ca_and_speaks_http2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let graph = FakeGraph::start_tls(&pki.server_cert, &pki.server_key).await;
    let ca = dir.path().join("ca.pem").display().to_string();

    let untrusted = TestGateway::start(&graph.tls_url()).await;
    let status = untrusted.call().send().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GRAPH_UNREACHABLE"
    );
    assert!(
        graph.requests().is_empty(),
        "nothing reaches a server the gateway does not trust"
    );

    let trusting = TestGateway::start_with(&graph.tls_url(), |s| {
        s.graph.extra_ca = Some(ca.clone().into())
    })
    .await;
    trusting.call().send().await.expect("a cancel over TLS");
    assert_eq!(versions(&graph), ["HTTP/2.0"]);

    let http1 = TestGateway::start_with(&graph.tls_url(), |s| {
        s.graph.extra_ca = Some(ca.clone().into());
        s.graph.protocol = GraphProtocol::Http1;
    })
    .await;
    http1
        .call()
        .send()
        .await
        .expect("a cancel over TLS and HTTP/1.1");
    assert_eq!(versions(&graph), ["HTTP/2.0", "HTTP/1.1"]);
}

/// An HTTP CONNECT proxy on loopback that reports each CONNECT line and every byte it relays
/// towards the destination.
async fn connect_proxy() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = seen.send(head.clone());
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut upstream_read, mut upstream_write) = upstream.split();
                let outbound = async {
                    let mut buffer = [0u8; 8192];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 || upstream_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        let _ = seen.send(buffer[..n].to_vec());
                    }
                };
                let inbound = tokio::io::copy(&mut upstream_read, &mut client_write);
                let _ = tokio::join!(outbound, inbound);
            });
        }
    });
    (addr, receiver)
}

#[tokio::test]
async fn https_proxy_from_the_environment_tunnels_to_graph_and_never_sees_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let graph = FakeGraph::start_tls(&pki.server_cert, &pki.server_key).await;
    let (proxy, mut seen) = connect_proxy().await;
    let ca = dir.path().join("ca.pem").display().to_string();
    let proxy_url = format!("http://{proxy}");
    let gateway = GatewayProcess::spawn(
        &["--graph-url", &graph.tls_url(), "--graph-ca-file", &ca],
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    )
    .await;

    Call::to(gateway.grpc_addr)
        .send()
        .await
        .expect("a cancel through the proxy");

    assert_eq!(graph.requests().len(), 1);
    let mut relayed = Vec::new();
    // The proxy reported the CONNECT before it opened the tunnel the call went through: all of
    // it is here by now, with no wait.
    while let Ok(bytes) = seen.try_recv() {
        relayed.extend(bytes);
    }
    let relayed = String::from_utf8_lossy(&relayed);
    assert!(
        relayed.starts_with(&format!("CONNECT {} HTTP/1.1", graph.addr)),
        "{relayed}"
    );
    assert!(
        !relayed.contains(&TOKEN[10..40]),
        "the proxy never sees the token: TLS runs inside the tunnel"
    );
    gateway.terminate(Duration::from_secs(10)).await;
}
