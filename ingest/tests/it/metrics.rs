//! `GET /api/v1/metrics/`.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_real_figures_for_the_last_seven_days() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let campaign = api.compat_campaign("metrics").await;
    for n in 1..=2 {
        let (status, _) = api
            .post(
                "/api/v1/initiate-call/",
                json!({"phone_number": format!("+155500000{n}"), "campaign_id": campaign}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let metrics = eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get("/api/v1/metrics/").await;
        (status == 200 && body["recent_metrics"][0]["total_calls_initiated"] == 2).then_some(body)
    })
    .await
    .expect("today's figures count both calls");
    assert_eq!(
        metrics["current_concurrent_calls"], 0,
        "no dialer: nothing is live"
    );
    assert_eq!(metrics["max_concurrent_calls"], 100);
    assert_eq!(metrics["system_status"], "healthy");
    let days = metrics["recent_metrics"].as_array().expect("array");
    assert_eq!(days.len(), 7);
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(days[0]["date"], today);
    for field in [
        "total_calls_picked",
        "total_calls_disconnected",
        "total_calls_rnr",
        "total_calls_failed",
        "total_retries",
        "peak_concurrent_calls",
        "total_call_duration_seconds",
        "dlq_entries_created",
    ] {
        assert_eq!(days[0][field], 0, "{field}");
    }
    api.stop().await;
}
