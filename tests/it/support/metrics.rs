//! The gateway's own metrics, read from its admin listener: what a test waits on when the event it
//! needs happens inside the gateway.

use std::{net::SocketAddr, time::Duration};

use super::http_client;

/// The gateway's metrics, as text.
pub async fn metrics(admin: SocketAddr) -> String {
    http_client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample in the metrics text, 0 when absent.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Polls the metrics until `name` reaches `value` (an event the gateway reports, not a sleep).
pub async fn wait_for_sample(admin: SocketAddr, name: &str, value: f64) {
    wait_until_sample(admin, name, |sampled| sampled >= value).await;
}

/// Polls the metrics until `name` satisfies `condition`.
pub async fn wait_until_sample(admin: SocketAddr, name: &str, condition: impl Fn(f64) -> bool) {
    let reached = async {
        while !condition(sample(&metrics(admin).await, name)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reached)
        .await
        .unwrap_or_else(|_| panic!("{name} never reached what the test waits for"));
}
