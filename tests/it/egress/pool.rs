//! The connections to Graph, against a Graph-like TLS upstream on loopback: connections opened
//! as the load needs them and no more, GOAWAY and refused streams that lose and duplicate
//! nothing, idle and dead connections that never fail a call, timed-out calls that leave the
//! gateway serving, HTTP/1.1 when ALPN says so, and honest proxy URLs.

use std::{collections::HashSet, time::Duration};

use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::support::{
    TestGateway,
    gateway::{Call, connect, timerless_client},
    graph_like::{GraphLike, Seen, Speaks},
    h2_peer::Http2Peer,
    metrics::{metrics, sample, wait_for_sample, wait_until_sample},
    pki::{Pki, make_pki},
    process::{BINARY, GatewayProcess},
    stall_proxy::{Direction, StallProxy},
};

/// How long a test waits for something that should happen at once before it fails instead of
/// hanging; only a broken gateway comes near it.
const PATIENCE: Duration = Duration::from_secs(20);

struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    ca: std::path::PathBuf,
}

impl Setup {
    /// A gateway in front of `url` that trusts the test CA, with `tweak` applied to its settings.
    async fn gateway(
        &self,
        url: &str,
        tweak: impl FnOnce(&mut printjob_gateway::Settings),
    ) -> TestGateway {
        let ca = self.ca.clone();
        TestGateway::start_with(url, move |s| {
            s.graph.extra_ca = Some(ca);
            tweak(s);
        })
        .await
    }
}

fn pki() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let ca = dir.path().join("ca.pem");
    Setup { _dir: dir, pki, ca }
}

/// Starts `count` calls for printer `printer`, job IDs 1..=count, concurrently on `channel`;
/// the future gives their outcomes.
fn calls(
    channel: &Channel,
    addr: std::net::SocketAddr,
    printer: &str,
    count: usize,
    timeout: Duration,
) -> impl Future<Output = Vec<Result<(), tonic::Status>>> + Send + 'static {
    let mut set = JoinSet::new();
    for job in 1..=count {
        let call = Call::to(addr)
            .ids(printer, &job.to_string())
            .timeout(timeout);
        set.spawn(call.send_on(channel.clone()));
    }
    async move {
        set.join_all()
            .await
            .into_iter()
            .map(|outcome| outcome.map(drop))
            .collect()
    }
}

async fn wait_until(graph: &GraphLike, condition: impl FnMut(&Seen) -> bool) -> Seen {
    tokio::time::timeout(PATIENCE, graph.wait_until(condition))
        .await
        .expect("the upstream saw what the test waits for")
}

fn all_ok(outcomes: &[Result<(), tonic::Status>]) {
    for outcome in outcomes {
        if let Err(status) = outcome {
            panic!("every call succeeds, but one failed: {status:?}");
        }
    }
}

fn each_once(seen: &Seen) {
    let distinct: HashSet<&String> = seen.processed.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.processed.len(),
        "Graph processed a request twice: {:?}",
        seen.processed
    );
}

#[tokio::test]
async fn a_burst_beyond_the_stream_cap_opens_just_the_connections_it_needs() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 10 }).await;
    graph.hold("/printers/held/");
    let gateway = setup.gateway(&graph.url(), |_| {}).await;
    let channel = gateway.channel().await;

    let burst = calls(&channel, gateway.grpc_addr, "held", 35, PATIENCE);
    let burst = tokio::spawn(burst);
    // All 35 can reach Graph at once only on ceil(35 / 10) = 4 connections.
    let seen = wait_until(&graph, |seen| seen.processed.len() == 35).await;
    assert_eq!(
        seen.connections, 4,
        "one connection per 10 streams, no more"
    );
    graph.release();
    all_ok(&burst.await.unwrap());

    let metrics = metrics(gateway.admin_addr).await;
    assert_eq!(
        sample(
            &metrics,
            r#"printjob_gateway_graph_connections_opened_total{protocol="h2"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(&metrics, "printjob_gateway_graph_connections_open"),
        4.0
    );
    assert_eq!(graph.seen().connections, 4);
}

#[tokio::test]
async fn at_the_connection_bound_calls_wait_for_a_stream_and_are_served_in_turn() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 10 }).await;
    graph.hold("/printers/held/");
    let gateway = setup
        .gateway(&graph.url(), |s| s.graph.max_connections = 2)
        .await;
    let channel = gateway.channel().await;

    let burst = tokio::spawn(calls(&channel, gateway.grpc_addr, "held", 35, PATIENCE));
    let seen = wait_until(&graph, |seen| seen.processed.len() == 20).await;
    assert_eq!(seen.connections, 2);
    graph.release();
    all_ok(&burst.await.unwrap());
    let seen = graph.seen();
    assert_eq!(seen.processed.len(), 35);
    assert_eq!(
        seen.connections, 2,
        "never more than --graph-max-connections"
    );
    // First come, first served: the 15 that waited went in the order they were queued, after
    // the 20 that got a stream at once (the order within each group is the callers').
    each_once(&seen);
}

#[tokio::test]
async fn calls_waiting_for_a_stream_are_served_first_come_first_served() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 1 }).await;
    graph.hold("/printers/held/");
    let gateway = setup
        .gateway(&graph.url(), |s| s.graph.max_connections = 1)
        .await;
    let channel = gateway.channel().await;

    let call = |job: u32| {
        let call = Call::to(gateway.grpc_addr)
            .ids("held", &job.to_string())
            .timeout(PATIENCE);
        tokio::spawn(call.send_on(channel.clone()))
    };
    let mut pending = vec![call(1)];
    wait_until(&graph, |seen| seen.processed.len() == 1).await;
    // One stream, taken: each next call waits, and joins the queue before the one after it.
    for waiting in 1..=4 {
        pending.push(call(waiting + 1));
        wait_until_sample(
            gateway.admin_addr,
            "printjob_gateway_graph_calls_waiting",
            |n| n >= f64::from(waiting),
        )
        .await;
    }
    graph.release();
    for call in pending {
        call.await.unwrap().expect("every call succeeds");
    }
    assert_eq!(
        graph.seen().processed,
        (1..=5)
            .map(|job| format!("/v1.0/print/printers/held/jobs/{job}/cancel"))
            .collect::<Vec<_>>(),
        "Graph got the calls in the order they came"
    );
}

#[tokio::test]
async fn a_call_waiting_for_a_stream_ends_at_its_deadline_and_max_in_flight_sheds_load_first() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 1 }).await;
    graph.hold("/printers/held/");
    let gateway = setup
        .gateway(&graph.url(), |s| {
            s.graph.max_connections = 1;
            s.calls.max_in_flight = 2;
        })
        .await;
    let channel = gateway.channel().await;
    let waiting = "printjob_gateway_graph_calls_waiting";

    // The one stream Graph allows is taken until the test releases it.
    let holder = gateway.call().ids("held", "1").timeout(PATIENCE);
    let holder = tokio::spawn(holder.send_on(channel.clone()));
    wait_until(&graph, |seen| seen.processed.len() == 1).await;
    // The next call waits in the gateway for a stream. No client-side timer: its end is the
    // gateway's own deadline, 15 s away. Before it, this test only reads a metric and makes one
    // call that is refused at once (milliseconds each, a few hundred on a busy machine); the
    // deadline is that wide (10 s more than a loaded machine has been seen to need) so that
    // both happen while the call still waits.
    let waiter = gateway
        .call()
        .ids("held", "2")
        .timeout(Duration::from_secs(15));
    let waiter = tokio::spawn(waiter.send_timerless_on(timerless_client()));
    wait_until_sample(gateway.admin_addr, waiting, |n| n == 1.0).await;
    // Two calls in flight: a third is refused at once by --max-in-flight, not queued behind them
    // (it has no deadline of its own that could end it sooner).
    let shed = gateway.call().ids("held", "3").timeout(PATIENCE);
    let status = shed.send_on(channel.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let status = waiter.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("GRAPH_DEADLINE_EXCEEDED", "printjob-gateway")
    );
    // The call that gave up left the queue, and the freed stream goes to the next caller.
    wait_until_sample(gateway.admin_addr, waiting, |n| n == 0.0).await;
    graph.release();
    holder.await.unwrap().expect("the held call succeeds");
    gateway
        .call()
        .ids("printer", "4")
        .timeout(PATIENCE)
        .send_on(channel.clone())
        .await
        .expect("the next call gets the stream");
    assert_eq!(
        graph.seen().processed,
        [
            "/v1.0/print/printers/held/jobs/1/cancel",
            "/v1.0/print/printers/printer/jobs/4/cancel"
        ],
        "Graph never saw the call that timed out waiting, nor the one shed"
    );
}

/// The real binary, alone in its process so that its memory is measured (VmHWM): with every
/// stream Graph allows taken and Graph silent, the calls that wait in the gateway are bounded by
/// `--max-in-flight`, and so is memory; they are all served once Graph answers.
#[tokio::test]
async fn calls_waiting_behind_a_silent_graph_are_bounded_by_max_in_flight_and_so_is_memory() {
    /// The gateway idles near 10 MiB; one that kept what every call that came allocated, or
    /// queued without bound, would pass this.
    const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 10 }).await;
    graph.hold("/printers/held/");
    let ca = setup.ca.to_str().unwrap();
    let args = [
        ["--graph-url", &graph.url()],
        ["--graph-ca-file", ca],
        ["--graph-max-connections", "2"],
        ["--max-in-flight", "1000"],
        // The held calls must outlast every step below on a busy machine; each step has its own
        // bound, so a broken gateway still fails the test early.
        ["--max-timeout", "60s"],
    ];
    let gateway = GatewayProcess::spawn(&args.concat(), &[]).await;
    let channel = connect(gateway.grpc_addr).await;

    // 1,000 calls: 20 at Graph on two connections, 980 waiting in the gateway for a stream.
    let deadline = Duration::from_secs(60);
    let held = tokio::spawn(calls(&channel, gateway.grpc_addr, "held", 1_000, deadline));
    wait_until(&graph, |seen| seen.processed.len() == 20).await;
    let waiting = "printjob_gateway_graph_calls_waiting";
    wait_for_sample(gateway.admin_addr, waiting, 980.0).await;
    // The next call is refused at once rather than queued.
    let shed = Call::to(gateway.grpc_addr).ids("held", "shed");
    let status = shed.send_on(channel.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let peak = gateway.peak_rss_kib();
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB with 980 calls waiting"
    );

    graph.release();
    all_ok(&held.await.unwrap());
    let seen = graph.seen();
    assert_eq!(seen.processed.len(), 1_000);
    each_once(&seen);
    assert_eq!(seen.connections, 2);
    wait_until_sample(gateway.admin_addr, waiting, |n| n == 0.0).await;
    let peak = gateway.peak_rss_kib();
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    let (exit, logs) = gateway.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{logs}");
}

#[tokio::test]
async fn goaway_in_the_middle_of_traffic_loses_nothing_and_duplicates_nothing() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 100 }).await;
    graph.hold("/printers/held/");
    let gateway = setup.gateway(&graph.url(), |_| {}).await;
    let channel = gateway.channel().await;

    let held = tokio::spawn(calls(&channel, gateway.grpc_addr, "held", 50, PATIENCE));
    wait_until(&graph, |seen| seen.processed.len() == 50).await;
    graph.go_away();
    // Calls made after the GOAWAY are answered while the 50 processed ones are still held on
    // the connection that is going away.
    all_ok(&calls(&channel, gateway.grpc_addr, "after", 50, PATIENCE).await);
    // Until the gateway has seen the GOAWAY, a call may still go to the old connection and be
    // processed there; a call that meets the GOAWAY on it (before or after hyper handed it to
    // the connection) is sent again, elsewhere. One call at a time until one has.
    let resent = |metrics: &str| {
        sample(
            metrics,
            r#"printjob_gateway_graph_requests_resent_total{reason="goaway"}"#,
        ) + sample(
            metrics,
            r#"printjob_gateway_graph_requests_resent_total{reason="closed"}"#,
        )
    };
    let mut job = 1000;
    while resent(&metrics(gateway.admin_addr).await) < 1.0 {
        job += 1;
        assert!(job < 1500, "no call met the GOAWAY");
        gateway
            .call()
            .ids("after", &job.to_string())
            .send_on(channel.clone())
            .await
            .expect("a call after the GOAWAY");
    }
    assert!(!held.is_finished());
    graph.release();
    all_ok(&held.await.unwrap());

    let seen = graph.seen();
    assert_eq!(seen.processed.len(), 100, "Graph saw every call");
    each_once(&seen);
    assert!(
        seen.connections >= 2,
        "the calls after GOAWAY went elsewhere"
    );
    all_ok(&calls(&channel, gateway.grpc_addr, "later", 5, PATIENCE).await);
}

#[tokio::test]
async fn streams_above_a_goaways_last_stream_id_go_to_one_new_connection_and_are_not_retries() {
    let setup = pki();
    let graph = Http2Peer::start(&setup.pki).await;
    let gateway = setup
        .gateway(&graph.url(), |s| {
            // A retry is impossible: only the re-send of unprocessed requests can save these calls.
            s.calls.retry.max_attempts = 1;
        })
        .await;
    let channel = gateway.channel().await;

    // Twenty calls on the first connection (it allows 100 streams), none answered yet.
    let outcomes = tokio::spawn(calls(&channel, gateway.grpc_addr, "printer", 20, PATIENCE));
    tokio::time::timeout(
        PATIENCE,
        graph.wait_until(|seen| seen.requests.first().is_some_and(|ids| ids.len() == 20)),
    )
    .await
    .expect("the first connection received all twenty requests");
    // Graph goes away having processed five of them, and answers those five.
    graph.go_away_first(5).await;
    all_ok(&outcomes.await.unwrap());

    let seen = graph.seen();
    assert_eq!(
        seen.requests.len(),
        2,
        "fifteen re-sent calls need one new connection, no more: {seen:?}"
    );
    assert_eq!(seen.answered[0], 5);
    assert_eq!(
        seen.requests[1].len(),
        15,
        "exactly the unprocessed requests were sent again, once each: {seen:?}"
    );
    assert_eq!(seen.answered[1], 15);
    let metrics = metrics(gateway.admin_addr).await;
    assert_eq!(
        sample(
            &metrics,
            r#"printjob_gateway_graph_requests_resent_total{reason="goaway"}"#
        ),
        15.0,
        "{metrics}"
    );
    assert_eq!(retries(&metrics), 0.0, "{metrics}");
}

#[tokio::test]
async fn refused_streams_are_sent_again_at_once_and_are_not_retries() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 100 }).await;
    graph.refuse_first();
    let gateway = setup
        .gateway(&graph.url(), |s| {
            // A retry is impossible: only the re-send of unprocessed requests can save these calls.
            s.calls.retry.max_attempts = 1;
        })
        .await;
    let channel = gateway.channel().await;

    all_ok(&calls(&channel, gateway.grpc_addr, "printer", 20, PATIENCE).await);

    let seen = graph.seen();
    assert_eq!(seen.refused, 20);
    assert_eq!(seen.processed.len(), 20);
    each_once(&seen);
    let metrics = metrics(gateway.admin_addr).await;
    assert_eq!(
        sample(
            &metrics,
            r#"printjob_gateway_graph_requests_resent_total{reason="refused"}"#
        ),
        20.0
    );
    assert_eq!(retries(&metrics), 0.0, "{metrics}");
}

#[tokio::test]
async fn connections_graph_closes_while_idle_never_fail_a_call() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 100 }).await;
    let gateway = setup
        .gateway(&graph.url(), |s| s.calls.retry.max_attempts = 1)
        .await;
    let channel = gateway.channel().await;

    for round in 0..3 {
        all_ok(&calls(&channel, gateway.grpc_addr, "printer", 10, PATIENCE).await);
        graph.go_away();
        wait_until(&graph, |seen| {
            seen.open == 0 && seen.connections == round + 1
        })
        .await;
    }
    all_ok(&calls(&channel, gateway.grpc_addr, "printer", 10, PATIENCE).await);
    assert_eq!(graph.seen().connections, 4);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 100 }).await;
    let gateway = setup
        .gateway(&graph.url(), |s| {
            s.graph.idle_timeout = Duration::from_millis(200)
        })
        .await;
    let channel = gateway.channel().await;

    all_ok(&calls(&channel, gateway.grpc_addr, "printer", 3, PATIENCE).await);
    // The gateway closes it; the upstream never would.
    wait_until(&graph, |seen| seen.connections == 1 && seen.open == 0).await;
    all_ok(&calls(&channel, gateway.grpc_addr, "printer", 3, PATIENCE).await);
    assert_eq!(graph.seen().connections, 2);
}

#[tokio::test]
async fn a_silent_peer_is_found_by_keepalive_and_the_next_call_uses_a_new_connection() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 100 }).await;
    let proxy = StallProxy::start(graph.addr).await;
    let gateway = setup
        .gateway(&proxy.url(), |s| {
            s.graph.keepalive_interval = Duration::from_millis(200);
            s.graph.keepalive_timeout = Duration::from_millis(500);
        })
        .await;
    let channel = gateway.channel().await;
    all_ok(&calls(&channel, gateway.grpc_addr, "printer", 1, PATIENCE).await);

    proxy.stall(Direction::Both);
    // Without keepalive this call would wait on the dead connection until its 30 s deadline.
    let stranded = calls(
        &channel,
        gateway.grpc_addr,
        "stranded",
        1,
        Duration::from_secs(30),
    )
    .await;
    let status = stranded[0].as_ref().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    all_ok(&calls(&channel, gateway.grpc_addr, "next", 5, PATIENCE).await);
    assert_eq!(
        proxy.accepted(),
        2,
        "the next calls used one new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_timed_out_calls_leave_the_gateway_serving() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http2 { max_streams: 2000 }).await;
    let proxy = StallProxy::start(graph.addr).await;
    let gateway = setup
        .gateway(&proxy.url(), |s| {
            s.graph.streams_per_connection = 2000;
            s.graph.connect_timeout = Duration::from_secs(60);
            s.calls.max_in_flight = 4000;
        })
        .await;
    let channel = gateway.channel().await;
    all_ok(&calls(&channel, gateway.grpc_addr, "warm", 1, PATIENCE).await);

    // Graph answers, but its answers are held on the way back, on every connection: every call
    // times out and resets its stream, and the answers arrive later, on streams the gateway has
    // given up.
    proxy.stall_all(Direction::ToGateway);
    // Four connections to the gateway (it takes 1,024 calls on one), and no client-side timer:
    // every call ends with the gateway's own DEADLINE_EXCEEDED.
    let mut timed_out = JoinSet::new();
    for (n, printer) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let client = timerless_client();
        for job in 1..=500 {
            let call = gateway
                .call()
                .ids(printer, &(n * 1000 + job).to_string())
                .timeout(Duration::from_secs(2));
            timed_out.spawn(call.send_timerless_on(client.clone()));
        }
    }
    for outcome in timed_out.join_all().await {
        let status = outcome.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }

    // New calls are on their way to Graph, or waiting for a stream, when the late answers to
    // the 2,000 arrive: none of them fails for it.
    let after = tokio::spawn(calls(&channel, gateway.grpc_addr, "after", 200, PATIENCE));
    tokio::time::timeout(PATIENCE, async {
        loop {
            let waiting = sample(
                &metrics(gateway.admin_addr).await,
                "printjob_gateway_graph_calls_waiting",
            );
            let reached = graph
                .seen()
                .processed
                .iter()
                .filter(|path| path.contains("/printers/after/"))
                .count();
            if waiting + reached as f64 >= 200.0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the new calls reach the gateway's pool");
    proxy.resume();
    all_ok(&after.await.unwrap());
    let metrics = metrics(gateway.admin_addr).await;
    assert!(
        sample(&metrics, "printjob_gateway_graph_connections_open") <= 16.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_http1_only_upstream_is_served_by_a_bounded_pool() {
    let setup = pki();
    let graph = GraphLike::start(&setup.pki, Speaks::Http1).await;
    graph.hold("/printers/held/");
    let gateway = setup
        .gateway(&graph.url(), |s| s.graph.max_connections = 3)
        .await;
    let channel = gateway.channel().await;

    let burst = tokio::spawn(calls(&channel, gateway.grpc_addr, "held", 10, PATIENCE));
    let seen = wait_until(&graph, |seen| seen.processed.len() == 3).await;
    assert_eq!(
        seen.connections, 3,
        "one call per HTTP/1.1 connection, three at most"
    );
    graph.release();
    all_ok(&burst.await.unwrap());
    let seen = graph.seen();
    assert_eq!(seen.processed.len(), 10);
    assert_eq!(seen.connections, 3, "connections are reused, not reopened");
    let metrics = metrics(gateway.admin_addr).await;
    assert_eq!(
        sample(
            &metrics,
            r#"printjob_gateway_graph_connections_opened_total{protocol="http1"}"#
        ),
        3.0
    );
}

#[tokio::test]
async fn a_proxy_scheme_other_than_http_is_refused_at_start_up() {
    // (variable, value, what the refusal says): a proxy the gateway would speak to in plaintext
    // (https), or whose scheme it would ignore and reach Graph directly (socks, ftp), or that is
    // no URL at all.
    let cases = [
        (
            "HTTPS_PROXY",
            "https://user:s3cret@127.0.0.1:9",
            "HTTPS_PROXY uses the scheme https://, but only http:// proxies",
        ),
        (
            "HTTPS_PROXY",
            "socks5://user:s3cret@127.0.0.1:9",
            "HTTPS_PROXY uses the scheme socks5://, but only http:// proxies",
        ),
        (
            "https_proxy",
            "ftp://user:s3cret@127.0.0.1:9",
            "https_proxy uses the scheme ftp://, but only http:// proxies",
        ),
        (
            "ALL_PROXY",
            "socks4a://user:s3cret@127.0.0.1:9",
            "ALL_PROXY uses the scheme socks4a://, but only http:// proxies",
        ),
        (
            "HTTPS_PROXY",
            "http://user:s3cret@127.0.0.1:9 /",
            "HTTPS_PROXY is set but is not a proxy URL",
        ),
    ];
    for (variable, proxy, refusal) in cases {
        let mut command = tokio::process::Command::new(BINARY);
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--graph-url",
                "https://graph.microsoft.com/v1.0",
            ])
            .env_clear()
            .env(variable, proxy)
            .kill_on_drop(true);
        let output = tokio::time::timeout(PATIENCE, command.output())
            .await
            .expect("the gateway exits at start-up")
            .unwrap();
        // The error is logged (to stdout) as the reason the gateway stopped.
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{variable}={proxy}: {printed}");
        assert!(printed.contains(refusal), "{variable}={proxy}: {printed}");
        assert!(
            !printed.contains("s3cret"),
            "the proxy's password is never printed"
        );
    }
}

/// Retries counted, for every reason (each reason's series is there from the start, at 0).
fn retries(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("printjob_gateway_graph_retries_total{"))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}
