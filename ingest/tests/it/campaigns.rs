//! `GET|POST /api/v1/campaigns/` and `GET /api/v1/campaigns/<id>/`.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_are_created_listed_and_read_in_the_old_shape() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, created) = api
        .post(
            "/api/v1/campaigns/",
            json!({"name": "Spring", "description": "promo"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().expect("integer id");
    assert_eq!(created["name"], "Spring");
    assert_eq!(created["description"], "promo");
    assert_eq!(created["is_active"], true);
    assert_eq!(created["phone_numbers"], json!([]));
    assert_eq!(created["phone_count"], 0);
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());
    let (status, off) = api
        .post(
            "/api/v1/campaigns/",
            json!({"name": "Off", "is_active": false}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, list) = api.get("/api/v1/campaigns/").await;
    assert_eq!(status, 200);
    let ids: Vec<u64> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![id], "only active campaigns are listed");

    let (status, got) = api.get(&format!("/api/v1/campaigns/{id}/")).await;
    assert_eq!((status, got), (200, created));
    let (status, got) = api.get(&format!("/api/v1/campaigns/{}/", off["id"])).await;
    assert_eq!((status, &got["is_active"]), (200, &json!(false)));
    for missing in ["99999", "abc"] {
        let (status, body) = api.get(&format!("/api/v1/campaigns/{missing}/")).await;
        assert_eq!(
            (status, body),
            (404, json!({"error": "Campaign not found"}))
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_field_errors_are_400_in_the_drf_shape() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let cases = [
        (json!({}), json!({"name": ["This field is required."]})),
        (
            json!({"name": "  "}),
            json!({"name": ["This field may not be blank."]}),
        ),
        (
            json!({"name": "x".repeat(201)}),
            json!({"name": ["Ensure this field has no more than 200 characters."]}),
        ),
        (
            json!({"name": "ok", "is_active": "yes"}),
            json!({"is_active": ["Must be a valid boolean."]}),
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = api.post("/api/v1/campaigns/", body.clone()).await;
        assert_eq!((status, &answer), (400, &want), "{body}");
    }
    let (status, _) = api
        .post("/api/v1/campaigns/", json!({"name": "x".repeat(200)}))
        .await;
    assert_eq!(status, 201, "200 characters are allowed");
    let js = env.jetstream().await.expect("js");
    let mut campaigns = js.get_stream("KV_campaigns").await.expect("bucket stream");
    assert_eq!(
        campaigns.info().await.expect("info").state.messages,
        1,
        "only the valid one stored"
    );
    api.stop().await;
}
