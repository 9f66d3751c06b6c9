//! Listening modes: a Unix domain socket for the sidecar, and TLS (with optional client
//! certificates) for the shared service.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use printjob_gateway::{
    Listeners, Settings, serve,
    server::{ListenAddr, TlsFiles},
};
use tokio::{net::UnixStream, sync::oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::{FakeGraph, gateway::Call, pki::make_pki};

/// The settings and bound listeners of a gateway in front of `graph`, listening on `listen`.
async fn start(
    graph: &FakeGraph,
    listen: ListenAddr,
    tls: Option<TlsFiles>,
) -> (Listeners, Settings) {
    let mut settings = crate::support::gateway::settings(&graph.url());
    settings.listen = listen;
    settings.tls = tls;
    let listeners = Listeners::bind(&settings).await.unwrap();
    (listeners, settings)
}

/// A Unix socket address.
fn unix(path: &Path) -> ListenAddr {
    format!("unix:{}", path.display()).parse().unwrap()
}

/// A loopback TCP address on a free port.
fn loopback() -> ListenAddr {
    ListenAddr::Tcp(([127, 0, 0, 1], 0).into())
}

/// Serves in the background until `stop` fires; returns when `serve` has returned.
fn spawn(
    listeners: Listeners,
    config: Settings,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(config, listeners, async {
            let _ = signal.await;
        })
        .await
        .unwrap();
    });
    (stop, task)
}

async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_unix_socket_serves_cancels_with_group_permissions_and_is_removed_at_exit() {
    let graph = FakeGraph::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("printjob-gateway.sock");
    let (listeners, config) = start(&graph, unix(&socket), None).await;
    let (stop, task) = spawn(listeners, config);

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is rw for owner and group only");
    Call::to("127.0.0.1:1".parse().unwrap())
        .send_on(unix_channel(&socket).await)
        .await
        .expect("a cancel over the socket");
    assert_eq!(graph.requests().len(), 1);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_is_not() {
    let graph = FakeGraph::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gw.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(
        socket.exists(),
        "a socket file left behind by a process that is gone"
    );

    let (listeners, config) = start(&graph, unix(&socket), None).await;
    let (_stop, _task) = spawn(listeners, config.clone());

    let second = Listeners::bind(&config).await;
    let error = second.expect_err("the socket is in use").to_string();
    assert!(error.contains("cannot listen on unix:"), "{error}");
    Call::to("127.0.0.1:1".parse().unwrap())
        .send_on(unix_channel(&socket).await)
        .await
        .expect("the first gateway still serves");
}

async fn tls_call(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<(), tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.domain_name("localhost"))
        .unwrap()
        // Only bounds a broken test: a refused caller is refused by the handshake itself, and the
        // bound is wide for a loaded machine.
        .connect_timeout(Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Call::to(addr).send_on(channel).await.map(drop)
}

fn tls_files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
    }
}

fn grpc_addr(listeners: &Listeners) -> std::net::SocketAddr {
    match listeners.grpc.local_addr().unwrap() {
        ListenAddr::Tcp(addr) => addr,
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn tls_serves_callers_that_trust_the_certificate_and_refuses_plaintext() {
    let graph = FakeGraph::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (listeners, config) = start(&graph, loopback(), Some(tls_files(dir.path()))).await;
    let addr = grpc_addr(&listeners);
    let (_stop, _task) = spawn(listeners, config);

    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    tls_call(addr, trusted).await.expect("a TLS call");
    let plaintext = Call::to(addr).send().await;
    assert!(plaintext.is_err(), "plaintext is refused: {plaintext:?}");
    assert_eq!(graph.requests().len(), 1);
}

#[tokio::test]
async fn with_a_client_ca_callers_must_present_a_certificate() {
    let graph = FakeGraph::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let tls = TlsFiles {
        client_ca: Some(dir.path().join("ca.pem")),
        ..tls_files(dir.path())
    };
    let (listeners, config) = start(&graph, loopback(), Some(tls)).await;
    let addr = grpc_addr(&listeners);
    let (_stop, _task) = spawn(listeners, config);

    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    let refused = tls_call(addr, anonymous).await;
    assert!(
        refused.is_err(),
        "a caller without a certificate is refused: {refused:?}"
    );
    assert!(graph.requests().is_empty());

    let identified = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    tls_call(addr, identified)
        .await
        .expect("a caller with a certificate");
    assert_eq!(graph.requests().len(), 1);
}

#[tokio::test]
async fn an_unreadable_certificate_stops_start_up_with_its_path() {
    let graph = FakeGraph::start().await;
    let tls = TlsFiles {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        client_ca: None,
    };
    let (listeners, config) = start(&graph, loopback(), Some(tls)).await;

    let error = serve(config, listeners, std::future::pending())
        .await
        .unwrap_err();

    let chain = printjob_gateway::telemetry::ErrorChain(&error).to_string();
    assert!(chain.contains("/nonexistent/cert.pem"), "{chain}");
}
