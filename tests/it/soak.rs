//! A bounded soak test.
//!
//! What it proves: over many calls, 64 at a time, through the real binary to the simulated Graph,
//! every call answers OK; Graph sees exactly one request per call (no duplicate cancels where no
//! retry was due); and the gateway's memory stays flat (its RSS after the run is within a few MiB
//! of its RSS after a warm-up). What it does not prove: throughput or latency; the benchmark in
//! `bench/` measures those.
//!
//! In `cargo test` it is small (1,000 calls against the debug binary), so that the suite stays
//! fast. The interop step (`tests/interop/run.sh`) runs it with 20,000 calls against the release
//! binary: `PRINTJOB_SOAK_CALLS=20000 PRINTJOB_SOAK_BINARY=target/release/printjob-gateway cargo
//! test --test it soak::`.

use std::{sync::Arc, time::Duration};

use printjob_gateway::simulator::Scenario;
use tokio::sync::Semaphore;

use crate::support::{
    gateway::{Call, connect},
    process::{BINARY, GatewayProcess},
    simulated_graph,
};

/// Calls in `cargo test`, unless `PRINTJOB_SOAK_CALLS` asks for more; a tenth of them warm up.
const CALLS: usize = 1_000;
const CONCURRENCY: usize = 64;
const CONNECTIONS: usize = 4;
/// How much the RSS may grow between the end of the warm-up and the end of the run.
const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_one_graph_request_each_and_flat_memory() {
    let calls: usize = std::env::var("PRINTJOB_SOAK_CALLS").map_or(CALLS, |n| n.parse().unwrap());
    let warm_up = calls / 10;
    let binary = std::env::var("PRINTJOB_SOAK_BINARY").unwrap_or_else(|_| BINARY.to_owned());
    let (graph, graph_url) = simulated_graph(Scenario::builtin()).await;
    let gateway = GatewayProcess::spawn_binary(
        &binary,
        &[
            "--graph-url",
            &graph_url,
            "--log-filter",
            "warn,printjob_gateway::server=info",
        ],
        &[],
    )
    .await;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(gateway.grpc_addr).await);
    }

    let run = |calls: usize| {
        let channels = channels.clone();
        let addr = gateway.grpc_addr;
        async move {
            let slots = Arc::new(Semaphore::new(CONCURRENCY));
            let mut tasks = Vec::with_capacity(calls);
            for i in 0..calls {
                let permit = slots.clone().acquire_owned().await.unwrap();
                let channel = channels[i % CONNECTIONS].clone();
                let job = i.to_string();
                tasks.push(tokio::spawn(async move {
                    let outcome = Call::to(addr)
                        .ids("any-job-printer", &job)
                        .send_on(channel)
                        .await;
                    drop(permit);
                    outcome.map(drop)
                }));
            }
            let mut failures = 0;
            for task in tasks {
                if task.await.unwrap().is_err() {
                    failures += 1;
                }
            }
            failures
        }
    };

    assert_eq!(run(warm_up).await, 0, "no failures during the warm-up");
    let rss_after_warm_up = gateway.rss_kib();
    assert_eq!(run(calls - warm_up).await, 0, "no failures");
    let rss_after_run = gateway.rss_kib();

    assert_eq!(
        graph.received_count(),
        calls as u64,
        "exactly one Graph request per call"
    );
    assert!(
        rss_after_run <= rss_after_warm_up + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_after_warm_up} KiB to {rss_after_run} KiB"
    );
    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{logs}");
}
