//! The demo is loud: however it is switched on, it says at WARN that Graph is simulated, and it
//! refuses to start beside the settings of a real deployment, so that a stray
//! `PRINTJOB_GATEWAY_DEMO` cannot silently turn every cancel into a simulated success.

use std::time::Duration;

use crate::support::process::{BINARY, GatewayProcess};

/// The demo's WARN line, from the JSON log of a demo started with `args` and `env`.
async fn demo_warning(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let demo = GatewayProcess::spawn(args, env).await;
    let (exit, output) = demo.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "{output}");
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.contains("Microsoft Graph is simulated"))
        })
        .unwrap_or_else(|| panic!("the demo warns that Graph is simulated:\n{output}"))
}

#[tokio::test]
async fn the_demo_warns_that_graph_is_simulated_however_it_is_switched_on() {
    for (args, env) in [
        (&["--demo"][..], &[][..]),
        (&[], &[("PRINTJOB_GATEWAY_DEMO", "true")]),
        (
            &["--token-exchange", "obo"],
            &[("PRINTJOB_GATEWAY_DEMO", "true")],
        ),
    ] {
        let warning = demo_warning(args, env).await;
        assert_eq!(warning["level"], "WARN", "{args:?} {env:?}");
        let simulated = warning["simulated_graph"].as_str().unwrap();
        assert!(simulated.starts_with("http://127.0.0.1:"), "{warning}");
    }
}

/// Arguments, environment, and the settings the refusal must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);

#[tokio::test]
async fn the_demo_refuses_to_start_beside_a_real_graph_url_or_on_behalf_of_settings_and_names_them()
{
    let cases: &[Case] = &[
        (
            &["--demo"],
            &[(
                "PRINTJOB_GATEWAY_GRAPH_URL",
                "https://graph.microsoft.com/v1.0",
            )],
            &["PRINTJOB_GATEWAY_GRAPH_URL"],
        ),
        (
            &["--graph-url", "https://graph.microsoft.com/v1.0"],
            &[("PRINTJOB_GATEWAY_DEMO", "true")],
            &["--graph-url"],
        ),
        (
            &[],
            &[
                ("PRINTJOB_GATEWAY_DEMO", "true"),
                ("PRINTJOB_GATEWAY_TOKEN_EXCHANGE", "obo"),
                ("AZURE_TENANT_ID", "tenant-1"),
                ("AZURE_CLIENT_ID", "client-1"),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token",
                ),
            ],
            &[
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
            ],
        ),
    ];
    for (args, env, named) in cases {
        let run = tokio::process::Command::new(BINARY)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(*args)
            .env_clear()
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output();
        // A refusal is immediate; a demo that starts serves until it is stopped. 30 s is far
        // more than the refusal takes on a loaded machine, and a started demo never ends in it.
        let output = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?} {env:?}: the demo started instead of refusing"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("--demo"), "{stderr}");
        for name in *named {
            assert!(stderr.contains(name), "{name} is named: {stderr}");
        }
    }
}
