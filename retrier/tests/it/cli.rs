//! `ccm-retrier dlq …`: the operator's command line against a real DLQ.

use std::process::Output;

use ccm_core::EventKind;
use ccm_tests::{TestEnv, eventually};

use crate::{
    dead_letters::exhaust,
    support::{Retrier, events, request, shipped_policy},
};

async fn cli(env: &TestEnv, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccm-retrier"));
    command
        .args(args)
        .env("CCM_NATS_URL", &env.nats_url)
        .env("CCM_LOG__FILTER", "warn")
        // Warned about; the warning must stay out of stdout, which is the command's output.
        .env("CCM_NOT_A_SETTING", "x");
    tokio::time::timeout(std::time::Duration::from_secs(20), command.output())
        .await
        .expect("the command ends in time")
        .expect("the command runs")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON output: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_discard_from_the_command_line() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let retrier = Retrier::start(
        &env,
        &std::fs::read_to_string(shipped_policy()).expect("policy"),
    );
    let dial = request(66, "+15550006666", 1);
    ccm_core::nats::publish_dial(&js, &dial)
        .await
        .expect("published");
    exhaust(&js, "CALLS", "calls.dial.66", "dial_66", 2).await;
    let letters = eventually(std::time::Duration::from_secs(15), || async {
        let listed = json(&cli(&env, &["dlq", "list", "--campaign", "66"]).await);
        listed.as_array().filter(|l| !l.is_empty()).cloned()
    })
    .await
    .expect("the letter is listed");
    assert_eq!(letters.len(), 1);
    let seq = letters[0]["seq"].as_u64().expect("seq").to_string();
    assert_eq!(letters[0]["call_id"], dial.call_id.to_string());

    let shown = json(&cli(&env, &["dlq", "show", &seq]).await);
    assert_eq!(shown["deliveries"], 2);
    assert_eq!(shown["payload"]["call_id"], dial.call_id.to_string());
    assert_eq!(shown["stream"], "CALLS");

    json(&cli(&env, &["dlq", "discard", &seq]).await);
    let history = events(&js, &dial).await;
    assert!(matches!(
        history.last().map(|e| &e.kind),
        Some(EventKind::Failed { .. })
    ));
    let listed = json(&cli(&env, &["dlq", "list"]).await);
    assert_eq!(listed, serde_json::json!([]));
    let missing = cli(&env, &["dlq", "show", &seq]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("no dead letter #{seq}")));
    retrier.stop().await;
}

#[tokio::test]
async fn help_names_the_dlq_subcommands() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccm-retrier"))
        .args(["dlq", "--help"])
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["list", "show", "redrive", "discard"] {
        assert!(help.contains(command), "{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_streams_consumers_and_buckets() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    for n in 0..2 {
        ccm_core::nats::publish_dial(&js, &request(67, &format!("+1555000670{n}"), 1))
            .await
            .expect("published");
    }

    let status = json(&cli(&env, &["status", "--json"]).await);
    let calls = status["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["name"] == "CALLS")
        .expect("CALLS listed");
    assert_eq!(calls["messages"], 2, "{calls}");
    assert_eq!(calls["distinct_subjects"], 1, "{calls}");
    let projector = calls["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["name"] == "projector_calls")
        .expect("projector_calls listed");
    // Nobody has pulled: both attempts wait for the projector.
    assert_eq!(projector["pending"], 2, "{projector}");
    assert_eq!(projector["ack_pending"], 0, "{projector}");
    let buckets: Vec<&str> = status["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|b| b["bucket"].as_str())
        .collect();
    assert!(
        buckets.contains(&"campaigns") && buckets.contains(&"active_calls"),
        "{buckets:?}"
    );

    let text = cli(&env, &["status"]).await;
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("CALLS") && l.contains("projector_calls")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccm_log_format_json_writes_log_lines_as_json() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccm-retrier"));
    command
        .args(["status", "--json"])
        .env("CCM_NATS_URL", &env.nats_url)
        .env("CCM_LOG_FORMAT", "json")
        // Names no setting, so the binary logs a warning about it.
        .env("CCM_NO_SUCH_SETTING", "1");
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), command.output())
        .await
        .expect("the command ends in time")
        .expect("the command runs");
    assert!(output.status.success());
    // Logs go to stderr; stdout is the command's JSON and nothing else.
    let _: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("CCM_NO_SUCH_SETTING"))
        .unwrap_or_else(|| panic!("the warning is logged: {stderr}"));
    let line: serde_json::Value = serde_json::from_str(warning).expect("a JSON log line");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["fields"]["var"], "CCM_NO_SUCH_SETTING");
}
