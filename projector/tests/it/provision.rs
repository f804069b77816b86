//! `ccm-projector provision`: what the Helm chart's pre-install/pre-upgrade Job runs, so the
//! services can start with `provision: false`.

use std::{process::Output, time::Duration};

use ccm_core::topology::names;
use ccm_tests::{TestEnv, eventually};

async fn provision(env: &TestEnv) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccm-projector"));
    command
        .arg("provision")
        .env("CCM_NATS_URL", &env.nats_url)
        .env("CCM_DATABASE_URL", &env.database_url)
        .env("CCM_LOG__FILTER", "warn")
        // Warned about (a variable naming no setting); the warning must not reach stdout,
        // which is the JSON report (CI sets CCM_NATS_SERVER for the test harness).
        .env("CCM_NOT_A_SETTING", "x");
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command ends in time")
        .expect("the command runs")
}

fn report(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON report: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_migrates_and_creates_the_topology_then_the_projector_starts_without_it() {
    let env = TestEnv::start().await.expect("test environment");
    let first = report(&provision(&env).await);
    let created = first["created"].as_array().expect("created");
    assert!(
        created
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains("CALLS"))),
        "{first}"
    );
    let js = env.jetstream().await.expect("jetstream");
    for stream in [names::CALLS, names::CALL_EVENTS, names::RETRIES, names::DLQ] {
        js.get_stream(stream).await.expect(stream);
    }
    let pg = env.pg().await.expect("postgres");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('calls', 'call_events')",
    )
    .fetch_one(&pg)
    .await
    .expect("query");
    assert_eq!(tables, 2, "the read model is migrated");

    // Idempotent: a second run (the next upgrade) creates nothing.
    let second = report(&provision(&env).await);
    assert_eq!(second["created"], serde_json::json!([]), "{second}");
    assert_eq!(second["drift"], serde_json::json!([]), "{second}");

    // A projector told not to provision runs on what the Job made.
    let mut config = env.config();
    config.provision = false;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = tokio::spawn(ccm_projector::run(config, shutdown.clone()));
    let consuming = eventually(Duration::from_secs(15), || async {
        let mut consumer = js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                "projector_calls",
                names::CALLS,
            )
            .await
            .ok()?;
        (consumer.info().await.ok()?.num_waiting > 0).then_some(())
    })
    .await;
    assert!(consuming.is_some(), "the projector pulls from its consumer");
    shutdown.cancel();
    projector
        .await
        .expect("projector task")
        .expect("projector ran without provisioning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_told_not_to_provision_creates_nothing() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.provision = false;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Nothing provisioned: the projector cannot open its consumers and says so.
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        ccm_projector::run(config, shutdown.clone()),
    )
    .await
    .expect("the projector gives up in time");
    assert!(result.is_err(), "it ran on a topology nobody created");
    let js = env.jetstream().await.expect("jetstream");
    assert!(
        js.get_stream(names::CALLS).await.is_err(),
        "it created CALLS although told not to"
    );
}
