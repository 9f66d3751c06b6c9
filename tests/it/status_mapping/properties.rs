//! Bad input at scale: property tests over IDs and `authorization` values. Whatever comes in,
//! the gateway does not panic, answers only with the documented codes, never sends a request
//! outside the one resource, and never writes the token to a log line, at any level.

use percent_encoding::percent_decode_str;
use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};
use tonic::Code;

use crate::support::{FakeGraph, TestGateway, logs::Captured};

/// A gateway and fake Graph on a current-thread runtime, so that every task (the gateway's,
/// hyper's, reqwest's) runs on this thread and logs into the captured buffer at TRACE.
struct Harness {
    runtime: tokio::runtime::Runtime,
    graph: FakeGraph,
    gateway: TestGateway,
    logs: Captured,
    _logging: tracing::subscriber::DefaultGuard,
}

impl Harness {
    fn new() -> Self {
        let logs = Captured::default();
        let logging = logs.install();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (graph, gateway) = runtime.block_on(async {
            let graph = FakeGraph::start().await;
            let gateway =
                TestGateway::start_with(&graph.url(), |s| s.calls.retry.max_attempts = 1).await;
            (graph, gateway)
        });
        Self {
            runtime,
            graph,
            gateway,
            logs,
            _logging: logging,
        }
    }

    fn logs(&self) -> String {
        self.logs.text()
    }
}

/// IDs: arbitrary text, and text built from the pieces that try to escape a path segment.
fn id() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(".."),
        Just("."),
        Just("/"),
        Just("\\"),
        Just("%2e"),
        Just("%2F"),
        Just("%"),
        Just("?"),
        Just("#"),
        Just(" "),
        Just("é"),
        Just("𝄞"),
        Just("~"),
        Just("+"),
        Just("a"),
        Just("@"),
        Just(";"),
        Just(":"),
        Just("\u{0}"),
        Just("\n"),
    ];
    prop_oneof![
        ".{0,80}",
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat()),
    ]
}

/// Runs `property` over `strategy` against one harness, dropped before the thread ends.
fn check<S: Strategy>(
    strategy: S,
    property: impl Fn(&Harness, S::Value) -> Result<(), TestCaseError>,
) {
    let harness = Harness::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |value| property(&harness, value));
    drop(harness);
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn no_id_reaches_anything_but_the_one_resource() {
    check((id(), id()), |harness, (printer_id, print_job_id)| {
        let before = harness.graph.requests().len();
        let outcome = harness.runtime.block_on(
            harness
                .gateway
                .call()
                .ids(&printer_id, &print_job_id)
                .send(),
        );
        let requests = harness.graph.requests();
        match outcome {
            Ok(_) => {
                prop_assert_eq!(requests.len(), before + 1);
                let target = &requests[before].target;
                let segments: Vec<&str> = target.split('/').collect();
                prop_assert_eq!(segments.len(), 8, "{}", target);
                prop_assert_eq!(&segments[..4], ["", "v1.0", "print", "printers"]);
                prop_assert_eq!((segments[5], segments[7]), ("jobs", "cancel"));
                prop_assert!(!target.contains('?') && !target.contains('#'));
                let decoded = |segment: &str| {
                    percent_decode_str(segment)
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                };
                prop_assert_eq!(decoded(segments[4]), printer_id);
                prop_assert_eq!(decoded(segments[6]), print_job_id);
            }
            Err(status) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
                prop_assert_eq!(requests.len(), before, "Graph is not called");
            }
        }
        Ok(())
    });
}

#[test]
fn no_authorization_value_panics_or_reaches_a_log_line() {
    let scheme = prop_oneof![
        Just("Bearer".to_owned()),
        Just("bearer".to_owned()),
        Just("BEARER".to_owned()),
        Just("Basic".to_owned()),
        Just(String::new()),
        "[ -~]{0,8}",
    ];
    let separator = prop_oneof![Just(" "), Just("  "), Just(""), Just("\t")];
    let suffix = prop_oneof![
        Just(""),
        Just("="),
        Just("=="),
        Just(" extra"),
        Just(","),
        Just("\"")
    ];
    let value = (
        scheme,
        separator,
        "[A-Za-z0-9._~+/-]{0,8}",
        "[A-Za-z0-9]{16,40}",
        suffix,
    );
    check(
        value,
        |harness, (scheme, separator, prefix, secret, suffix)| {
            let token = format!("tok{secret}");
            let value = format!("{scheme}{separator}{prefix}{token}{suffix}");
            let outcome = harness
                .runtime
                .block_on(harness.gateway.call().authorization(Some(&value)).send());
            if let Err(status) = &outcome {
                prop_assert_eq!(
                    status.code(),
                    Code::Unauthenticated,
                    "{:?} gave {:?}",
                    value,
                    status
                );
                prop_assert!(!status.message().contains(&token));
            }
            let logs = harness.logs();
            prop_assert!(logs.len() > 1000, "TRACE logging is captured");
            prop_assert!(
                !logs.contains(&token),
                "a log line carries the token of {:?}",
                value
            );
            Ok(())
        },
    );
}
