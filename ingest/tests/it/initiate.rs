//! `POST /api/v1/initiate-call/`.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::{Api, stream_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_call_is_201_with_the_old_call_log_fields_and_is_in_the_stream() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("initiate").await;

    let (status, body) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1 (555) 000-0001", "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let call_id: uuid::Uuid = body["call_id"]
        .as_str()
        .expect("call_id")
        .parse()
        .expect("uuid");
    assert_eq!(body["campaign"], campaign);
    assert_eq!(body["campaign_name"], "initiate");
    assert_eq!(body["phone_number"], "+15550000001");
    assert_eq!(body["status"], "QUEUED");
    assert_eq!(body["attempt_count"], 1);
    assert_eq!(body["max_attempts"], 3);
    for field in [
        "created_at",
        "updated_at",
        "last_attempt_at",
        "next_retry_at",
        "total_call_time",
        "external_call_id",
        "error_message",
    ] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    assert_eq!(stream_messages(&env, "CALLS").await, 1);
    let js = env.jetstream().await.expect("js");
    let claims = js.get_key_value("active_calls").await.expect("bucket");
    let holder = claims
        .get("15550000001")
        .await
        .expect("kv")
        .expect("claimed");
    assert_eq!(
        std::str::from_utf8(&holder).expect("utf8"),
        call_id.to_string()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_old_messages_and_publish_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("errors").await;
    let cases = [
        (
            json!({"phone_number": "+1234567890"}),
            400,
            "phone_number and campaign_id are required",
        ),
        (
            json!({"campaign_id": campaign}),
            400,
            "phone_number and campaign_id are required",
        ),
        (
            json!({"phone_number": "12ab", "campaign_id": campaign}),
            400,
            "Invalid phone number format",
        ),
        (
            json!({"phone_number": "123", "campaign_id": campaign}),
            400,
            "Invalid phone number format",
        ),
        (
            json!({"phone_number": "+1234567890", "campaign_id": 99999}),
            404,
            "Campaign not found or inactive",
        ),
        (
            json!({"phone_number": "+1234567890", "campaign_id": "x"}),
            404,
            "Campaign not found or inactive",
        ),
    ];
    for (body, want_status, message) in cases {
        let (status, answer) = api.post("/api/v1/initiate-call/", body.clone()).await;
        assert_eq!(status, want_status, "{body} -> {answer}");
        assert_eq!(answer, json!({"error": message}), "{body}");
    }
    // Malformed JSON, which the old system answered 500, is a 400 here.
    let (status, answer) = api
        .raw(
            reqwest::Method::POST,
            "/api/v1/initiate-call/",
            "application/json",
            "{\"phone_number\": ",
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Invalid JSON"),
        "{answer}"
    );

    assert_eq!(stream_messages(&env, "CALLS").await, 0, "nothing published");
    assert_eq!(
        stream_messages(&env, "KV_active_calls").await,
        0,
        "nothing claimed"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_campaign_is_404_and_calls_beyond_the_cap_are_still_accepted() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, inactive) = api
        .post(
            "/api/v1/campaigns/",
            json!({"name": "off", "is_active": false}),
        )
        .await;
    assert_eq!(status, 201, "{inactive}");
    let (status, body) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1234567890", "campaign_id": inactive["id"]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "Campaign not found or inactive"}))
    );

    // Cap 1, no dialer running: every call beyond the first waits queued, none is refused.
    let capped = api
        .campaign_with(json!({"name": "capped", "max_concurrent_calls": 1}))
        .await;
    for n in 1..=3 {
        let (status, body) = api
            .post(
                "/api/v1/initiate-call/",
                json!({"phone_number": format!("+1555000100{n}"), "campaign_id": capped}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(stream_messages(&env, "CALLS").await, 3);
    api.stop().await;
}
