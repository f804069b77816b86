//! `GET /metrics`: the API's own Prometheus metrics after real traffic.

use ccm_core::metrics::sample;
use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

async fn scrape(api: &Api, token: Option<&str>) -> (u16, String) {
    let mut request = api.http.get(format!("{}/metrics", api.base));
    if let Some(token) = token {
        request = request.header("X-Auth-Token", token);
    }
    let response = request.send().await.expect("scrape");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_recorded_per_route_template_and_calls_by_result() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("prometheus").await;
    for n in 1..=3 {
        let (status, body) = api
            .post(
                "/api/v1/initiate-call/",
                json!({"phone_number": format!("+155500001{n}"), "campaign_id": campaign}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // A duplicate (429) and bad input (400) on the same route.
    let (status, _) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1555000011", "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 429);
    let (status, _) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "nope", "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 400);
    // Two different ids share one template; a path no route matches is `unmatched`.
    for id in [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()] {
        api.get(&format!("/api/v1/calls/{id}")).await;
    }
    api.get("/no/such/route/12345").await;

    // Scraped without a token: the default.
    let (status, text) = scrape(&api, None).await;
    assert_eq!(status, 200, "{text}");
    let count = |route: &str, status: &str| {
        sample(
            &text,
            "ccm_ingest_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", route), ("status", status)],
        )
    };
    assert_eq!(count("/api/v1/initiate-call/", "2xx"), Some(3.0), "{text}");
    assert_eq!(count("/api/v1/initiate-call/", "4xx"), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "ccm_ingest_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/api/v1/calls/{id}")],
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ccm_ingest_http_request_duration_seconds_count",
            &[("route", "unmatched")],
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("12345"), "raw paths never become labels");
    assert_eq!(
        sample(&text, "ccm_ingest_calls_accepted_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "ccm_ingest_calls_refused_total",
            &[("reason", "in_progress")]
        ),
        Some(1.0)
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_put_behind_the_api_token() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.metrics_require_token = true;
    let api = Api::start_with(&env, config, false).await;
    assert_eq!(scrape(&api, None).await.0, 401);
    let (status, text) = scrape(&api, Some(ccm_tests::TEST_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    api.stop().await;
}
