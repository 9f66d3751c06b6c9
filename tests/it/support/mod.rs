//! Spawners for the real gateway and for fake Graph servers, all on `127.0.0.1:0`, bound before
//! they are spawned so that no test waits or sleeps to synchronise.

pub mod counted;
pub mod fake_entra;
pub mod fake_graph;
pub mod gateway;
pub mod graph_like;
pub mod h2_peer;
pub mod logs;
pub mod metrics;
pub mod pki;
pub mod process;
pub mod raw;
pub mod stall_proxy;

pub use fake_graph::{FakeGraph, Reply};
pub use gateway::TestGateway;

/// The Graph simulator serving `scenario` on `127.0.0.1:0` until the test ends, and its base URL.
pub async fn simulated_graph(
    scenario: printjob_gateway::simulator::Scenario,
) -> (printjob_gateway::simulator::Simulator, String) {
    use printjob_gateway::simulator::{self, Simulator};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1.0", listener.local_addr().unwrap());
    let graph = Simulator::new(scenario);
    tokio::spawn(simulator::serve(
        listener,
        graph.clone(),
        std::future::pending(),
    ));
    (graph, url)
}

/// A bearer token that tests look for in places where it must never appear.
pub const TOKEN: &str =
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl";

/// A plain HTTP client for the tests' own requests (admin endpoints, the simulator).
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own; the gateway installs ring, and so
    // must a test that may run before any gateway has started.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Whether `addr` starts refusing connections within 10 s. A draining gateway closes its listener
/// within milliseconds of the signal; the margin is for a loaded machine, where the gateway (a
/// separate process) may not run for a while.
///
/// The attempts are paced, not made back to back: a client that connects as fast as it can
/// outruns the gateway's accept loop, fills the listener's accept queue (128 connections), and
/// the kernel then drops its next SYN, which is sent again only after 1 s (and then refused, the
/// listener being closed by then). A tight loop therefore measured the SYN retransmission timer,
/// not the gateway, and failed at a bound of 1 s.
pub async fn refuses_connections(addr: std::net::SocketAddr) -> bool {
    const PACE: std::time::Duration = std::time::Duration::from_millis(5);
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(PACE).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), refused)
        .await
        .is_ok()
}
