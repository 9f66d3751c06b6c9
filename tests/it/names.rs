//! The names that deployments and dashboards depend on: every flag with its environment variable
//! and its default, and every metric family with its type. `fixtures/settings.tsv` and
//! `fixtures/metric-families.txt` hold them as they were before the flags and metrics moved into
//! their subsystems (issue 20); a change to any of them is a change for every deployment, so it
//! has to be made here on purpose. And `--help` shows the flags in one group per subsystem.

use std::{collections::BTreeSet, process::Command, time::Duration};

use printjob_gateway::{
    egress::ResendReason,
    entra::ExchangeMetrics,
    graph::GraphMetrics,
    metrics::{Metrics, subsystem},
    retry::{GraphFailure, RetryReason},
    server::{ConnectionClosed, Listener, ServerMetrics},
    service::{CallMetrics, JobReadOutcome},
};

use crate::support::{FakeGraph, TestGateway, http_client, process::BINARY};

/// The headings of `printjob-gateway --help`, in order, and the flags under each one. `Options`
/// holds what belongs to no subsystem: the demo, the runtime's threads, help and version.
const HEADINGS: &[(&str, &[&str])] = &[
    (
        "Options",
        &["--worker-threads", "--demo", "--help", "--version"],
    ),
    (
        "Listening and TLS",
        &[
            "--listen",
            "--admin-listen",
            "--tls-cert",
            "--tls-key",
            "--tls-client-ca",
            "--shutdown-grace",
        ],
    ),
    (
        "Graph",
        &[
            "--graph-url",
            "--graph-protocol",
            "--graph-ca-file",
            "--graph-max-connections",
            "--graph-streams-per-connection",
            "--graph-idle-timeout",
            "--graph-keepalive-interval",
            "--graph-keepalive-timeout",
            "--connect-timeout",
            "--max-attempts",
            "--retry-after-max",
            "--throttle-gate",
        ],
    ),
    (
        "Token exchange",
        &[
            "--token-exchange",
            "--entra-authority",
            "--tenant-id",
            "--client-id",
            "--client-secret-file",
            "--client-certificate-file",
            "--federated-token-file",
            "--graph-scope",
            "--token-exchange-rate",
        ],
    ),
    (
        "Limits",
        &[
            "--default-timeout",
            "--max-timeout",
            "--max-in-flight",
            "--max-connections",
            "--handshake-timeout",
            "--idle-connection-timeout",
        ],
    ),
    (
        "Telemetry",
        &[
            "--log-format",
            "--log-filter",
            "--otlp-endpoint",
            "--otel-service-name",
        ],
    ),
];

#[test]
fn every_flag_keeps_its_name_environment_variable_and_default() {
    let fixture = include_str!("fixtures/settings.tsv");
    let expected: BTreeSet<String> = fixture
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(expected.len() > 40, "the fixture is read: {expected:?}");
    let mut actual = BTreeSet::new();
    for (command, args) in [
        ("gateway", &["--help"][..]),
        ("simulate", &["simulate", "--help"]),
    ] {
        for entry in help_entries(&help(args)) {
            let [flag, env, default] = [&entry.flag, &entry.env, &entry.default];
            actual.insert(format!("{command}\t{flag}\t{env}\t{default}"));
        }
    }
    let missing: Vec<&String> = expected.difference(&actual).collect();
    let added: Vec<&String> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && added.is_empty(),
        "flags, environment variables or defaults changed (command, flag, env, default):\n\
         gone or changed: {missing:#?}\nnew or changed: {added:#?}"
    );
}

#[test]
fn help_shows_each_subsystems_flags_under_its_own_heading() {
    let gateway = help(&["--help"]);
    let entries = help_entries(&gateway);
    let headings: Vec<&str> = {
        let mut seen: Vec<&str> = Vec::new();
        for entry in &entries {
            if seen.last() != Some(&entry.heading.as_str()) {
                seen.push(&entry.heading);
            }
        }
        seen
    };
    let expected_headings: Vec<&str> = HEADINGS.iter().map(|(heading, _)| *heading).collect();
    assert_eq!(
        headings, expected_headings,
        "one group each, in order:\n{gateway}"
    );
    for (heading, flags) in HEADINGS {
        let under: BTreeSet<&str> = entries
            .iter()
            .filter(|entry| entry.heading == *heading)
            .map(|entry| entry.flag.as_str())
            .collect();
        assert_eq!(
            under,
            flags.iter().copied().collect(),
            "under {heading}:\n{gateway}"
        );
    }
    // The subcommand's own flags come first, then the logs and traces every command shares.
    let simulate = help(&["simulate", "--help"]);
    let under_telemetry: Vec<String> = help_entries(&simulate)
        .into_iter()
        .filter(|entry| entry.heading == "Telemetry")
        .map(|entry| entry.flag)
        .collect();
    assert_eq!(
        under_telemetry,
        [
            "--log-format",
            "--log-filter",
            "--otlp-endpoint",
            "--otel-service-name"
        ],
        "{simulate}"
    );
}

#[test]
fn every_metric_family_keeps_its_name_and_type() {
    let expected = fixture_families();
    // Every subsystem, as `serve` composes them.
    let (metrics, (calls, server, graph, exchange)) = Metrics::with_subsystem(|registry| {
        (
            CallMetrics::register(subsystem(registry)),
            ServerMetrics::register(subsystem(registry)),
            GraphMetrics::register(subsystem(registry)),
            ExchangeMetrics::register(subsystem(registry)),
        )
    });
    record_in_every_family(&calls, &server, &graph, &exchange);
    let actual: BTreeSet<String> = families("openmetrics", &metrics.encode())
        .into_iter()
        .chain(families("prometheus", &metrics.encode_prometheus_text()))
        .collect();
    let missing: Vec<&String> = expected.difference(&actual).collect();
    let added: Vec<&String> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && added.is_empty(),
        "metric families changed:\ngone or changed: {missing:#?}\nnew or changed: {added:#?}"
    );
}

#[tokio::test]
async fn a_running_gateway_serves_only_the_families_of_the_fixture() {
    let graph = FakeGraph::start().await;
    let gateway = TestGateway::start(&graph.url()).await;
    gateway.call().send().await.unwrap();
    let expected = fixture_families();
    let url = format!("http://{}/metrics", gateway.admin_addr);
    for (format, accept) in [
        ("openmetrics", "application/openmetrics-text;version=1.0.0"),
        ("prometheus", "text/plain;version=0.0.4"),
    ] {
        let response = http_client()
            .get(&url)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let served = families(format, &response.text().await.unwrap());
        assert!(served.len() > 20, "{format}: {served:?}");
        let unknown: Vec<&String> = served.difference(&expected).collect();
        assert!(
            unknown.is_empty(),
            "served but not in the fixture: {unknown:#?}"
        );
    }
}

/// One flag as `--help` shows it: the heading it is under, its environment variable and its
/// default (empty when none is shown).
#[derive(Debug)]
struct HelpEntry {
    heading: String,
    flag: String,
    env: String,
    default: String,
}

/// The binary's `--help` (or a subcommand's), without the developer's environment.
fn help(args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The flags of a long `--help`: a heading is a line at the margin ending in `:`; a flag's line
/// starts with `  -x, --name` or `      --name`; its details, indented further, end in lines of
/// their own, `[env: NAME=]` and `[default: VALUE]`.
fn help_entries(help: &str) -> Vec<HelpEntry> {
    let mut entries: Vec<HelpEntry> = Vec::new();
    let mut heading = String::new();
    let mut in_flag = false;
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            heading = line.strip_suffix(':').unwrap_or_default().to_owned();
            in_flag = false;
            continue;
        }
        let flag_line = line.strip_prefix("      --").or_else(|| {
            line.strip_prefix("  -")
                .and_then(|rest| rest.get(3..)?.strip_prefix("--"))
        });
        if let Some(rest) = flag_line {
            let name = rest.split([' ', '=']).next().unwrap_or_default();
            entries.push(HelpEntry {
                heading: heading.clone(),
                flag: format!("--{name}"),
                env: String::new(),
                default: String::new(),
            });
            in_flag = true;
            continue;
        }
        let (Some(entry), true) = (entries.last_mut(), in_flag) else {
            continue;
        };
        let detail = line.trim();
        if let Some(env) = detail
            .strip_prefix("[env: ")
            .and_then(|rest| rest.strip_suffix("=]"))
        {
            entry.env = env.to_owned();
        } else if let Some(default) = detail
            .strip_prefix("[default: ")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            entry.default = default.to_owned();
        }
    }
    entries
}

/// The families of `fixtures/metric-families.txt`: `FORMAT NAME TYPE` and `FORMAT NAME unit UNIT`.
fn fixture_families() -> BTreeSet<String> {
    let families: BTreeSet<String> = include_str!("fixtures/metric-families.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(families.len() > 50, "the fixture is read: {families:?}");
    families
}

/// Each family of a scrape (its `# TYPE` and `# UNIT` lines), as `FORMAT NAME TYPE` or
/// `FORMAT NAME unit UNIT`.
fn families(format: &str, text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                Some(format!("{format} {family}"))
            } else {
                let (name, unit) = line.strip_prefix("# UNIT ")?.split_once(' ')?;
                Some(format!("{format} {name} unit {unit}"))
            }
        })
        .collect()
}

/// Moves every family once, so that each one has a series and is written (a family without one
/// is left out of a scrape).
fn record_in_every_family(
    calls: &CallMetrics,
    server: &ServerMetrics,
    graph: &GraphMetrics,
    exchange: &ExchangeMetrics,
) {
    let moment = Duration::from_millis(20);
    calls.call_answered(tonic::Code::Ok, moment);
    calls.attempts.graph_answered(204, moment);
    calls.attempts.graph_failed(GraphFailure::Transport);
    calls.attempts.retried(RetryReason::Throttled);
    calls.job_read(JobReadOutcome::Failed);
    calls.overloaded();
    drop(calls.in_flight());
    graph.pool.graph_connection_opened("h2");
    graph.pool.graph_connection_closed();
    graph.pool.graph_calls_waiting(1);
    graph.pool.graph_request_resent(ResendReason::GoAway);
    graph.throttle.throttle_window_opened();
    graph.throttle.throttle_window_closed(moment);
    drop(graph.throttle.call_held());
    drop(server.connection_open(Listener::Api));
    server.connection_closed(Listener::Api, ConnectionClosed::IdleTimeout);
    server.streams_refused(Listener::Admin).inc();
    exchange.token_exchanged("ok", moment);
    exchange.token_cache_lookup(true);
    server.set_ready(true);
    calls.set_in_flight_limit(1000);
    server.set_connections_limit(512);
    server.tls_certificate_loaded(Listener::Api, 1_893_542_400);
    server.tls_reloaded(Listener::Api, true);
}
