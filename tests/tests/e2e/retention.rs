//! The retention job: with `projector.retention_days` set, a call that ended longer ago than
//! that is anonymised in the read model (number, custom fields, carrier id, and its history's
//! personal fields), a recent one is left alone, and the figures show in the metrics.

use std::time::Duration;

use ccm_core::config::{CarrierConfig, SimCarrierConfig};
use ccm_tests::{TEST_TOKEN, TestEnv, eventually};
use reqwest::Method;
use serde_json::json;

use crate::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ended_before_the_retention_are_anonymised_and_recent_ones_are_not() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 1,
        disconnected: 0,
        rnr: 0,
        failed: 0,
        call_ms: 20,
    });
    config.projector.retention_days = 1;
    config.projector.retention_every_secs = 1;
    let stack = Stack::start(&env, config).await;
    let campaign = stack.campaign("retention").await;
    let (old, recent) = ("+14155550301", "+14155550302");
    for phone in [old, recent] {
        let (status, body) = stack
            .send(
                Method::POST,
                "/api/v1/calls",
                json!({"campaign_id": campaign, "phone_number": phone}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let pg = env.pg().await.expect("postgres");
    let ended = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE campaign_id = $1 AND phase_rank >= 5",
        )
        .bind(campaign as i64)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n == 2).then_some(())
    })
    .await;
    assert!(ended.is_some(), "both calls end");
    // The first call ended two days ago, as far as the read model knows.
    let old_call: uuid::Uuid = sqlx::query_scalar(
        "UPDATE calls SET updated_at = now() - interval '2 days' WHERE phone_number = $1 \
         RETURNING call_id",
    )
    .bind(old)
    .fetch_one(&pg)
    .await
    .expect("backdate");

    let anonymised = eventually(Duration::from_secs(15), || async {
        let phone: Option<String> =
            sqlx::query_scalar("SELECT phone_number FROM calls WHERE call_id = $1")
                .bind(old_call)
                .fetch_one(&pg)
                .await
                .ok()?;
        phone.is_none().then_some(())
    })
    .await;
    assert!(anonymised.is_some(), "the old call is anonymised");
    let events: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM call_events WHERE call_id = $1")
            .bind(old_call)
            .fetch_all(&pg)
            .await
            .expect("events");
    assert!(!events.is_empty());
    for event in &events {
        assert!(!event.contains("4155550301"), "{event}");
        assert!(event.contains("\"anonymised\": true"), "{event}");
    }
    let status: String = sqlx::query_scalar("SELECT status FROM calls WHERE call_id = $1")
        .bind(old_call)
        .fetch_one(&pg)
        .await
        .expect("status");
    assert_eq!(status, "COMPLETED", "the call keeps its status");
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_events e JOIN calls c USING (call_id) \
         WHERE c.phone_number = $1 AND e.payload::text LIKE '%4155550302%'",
    )
    .bind(recent)
    .fetch_one(&pg)
    .await
    .expect("recent");
    assert!(kept > 0, "the recent call keeps its number");

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.base))
        .header("X-Auth-Token", TEST_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ccm_projector_retention_anonymised_total{table=\"calls\"}")),
        "{metrics}"
    );
    stack.stop().await;
}
