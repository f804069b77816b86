//! Answering machines: with the Twilio adapter's machine detection, a campaign that retries
//! machine answers retries them like RNR, and one that does not completes them.

use std::time::Duration;

use ccm_core::config::CarrierConfig;
use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_answers_are_retried_or_completed_as_each_campaign_chooses() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = ccm_carrier_sim::SimConfig {
        machine_rate: 1.0,
        ..answering(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let mut dialer_config = stack.config.clone();
    if let CarrierConfig::Twilio(twilio) = &mut dialer_config.dialer.carrier {
        twilio.machine_detection = "Enable".into();
    }
    let dialer = Dialer::start(dialer_config);
    let pg = env.pg().await.expect("postgres");
    let campaign = |choice: &'static str| {
        stack.send(
            "/api/v1/campaigns",
            json!({
                "name": choice,
                "max_attempts": 2,
                "answering_machine": choice,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["1s"]}}}
            }),
        )
    };
    let (status, body) = campaign("retry").await;
    assert_eq!(status, 201, "{body}");
    let retry = body["id"].as_u64().expect("id");
    let (status, body) = campaign("answered").await;
    assert_eq!(status, 201, "{body}");
    let answered = body["id"].as_u64().expect("id");
    for (id, number) in [(retry, "+15556000001"), (answered, "+15556000002")] {
        let (status, body) = stack
            .send(
                "/api/v1/calls",
                json!({"campaign_id": id, "phone_number": number}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let settled = eventually(Duration::from_secs(30), || async {
        let done = statuses(&pg, retry).await == [("FAILED".to_owned(), 1)]
            && statuses(&pg, answered).await == [("COMPLETED".to_owned(), 1)];
        done.then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "retry: {:?}, answered: {:?}",
        statuses(&pg, retry).await,
        statuses(&pg, answered).await
    );
    let attempts = |id: u64| {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT attempt_count FROM calls WHERE campaign_id = $1")
                .bind(id as i64)
                .fetch_one(&pg)
                .await
                .expect("row")
        }
    };
    assert_eq!(
        attempts(retry).await,
        2,
        "the machine answer was retried, then attempts ran out"
    );
    assert_eq!(attempts(answered).await, 1);
    assert_eq!(stack.stats().await.placed, 3);
    dialer.stop().await;
    stack.stop().await;
}
