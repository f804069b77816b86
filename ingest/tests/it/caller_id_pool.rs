//! A campaign's caller-id pool through the API: parsed into E.164 when set, bad pools
//! refused with a reason, replaced or removed by PATCH, one number paused and resumed.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_is_stored_in_e164_refused_when_bad_and_its_numbers_paused() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, plain) = api
        .post("/api/v1/campaigns", json!({"name": "plain"}))
        .await;
    assert_eq!(status, 201, "{plain}");
    assert!(
        plain.get("caller_id_pool").is_none(),
        "no pool: the adapter's from: {plain}"
    );
    for (pool, code) in [
        (json!({"numbers": []}), "invalid_caller_id_pool"),
        (
            json!({"numbers": ["not a number"]}),
            "invalid_caller_id_pool",
        ),
        (
            json!({"numbers": ["+14155550100", "+1 415 555 0100"]}),
            "invalid_caller_id_pool",
        ),
        (
            json!({"numbers": ["+14155550100"], "max_attempts_per_hour": 0}),
            "invalid_caller_id_pool",
        ),
    ] {
        let (status, problem) = api
            .post(
                "/api/v1/campaigns",
                json!({"name": "bad", "caller_id_pool": pool}),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{pool}: {problem}"
        );
    }
    let (status, problem) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "bad", "caller_id_pool": {"numbers": ["+14155550100"], "rotate": true}}),
        )
        .await;
    assert_eq!(status, 422, "unknown pool field: {problem}");
    let (status, campaign) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "pool", "caller_id_pool": {
                "numbers": ["+1 (415) 555-0100", {"number": "+12125550100", "paused": true}],
                "consistent": true, "max_attempts_per_hour": 30, "max_attempts_per_day": 200}}),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(
        campaign["caller_id_pool"],
        json!({"numbers": ["+14155550100", {"number": "+12125550100", "paused": true}],
               "consistent": true, "max_attempts_per_hour": 30, "max_attempts_per_day": 200})
    );
    let id = campaign["id"].as_u64().expect("id");
    let path = format!("/api/v1/campaigns/{id}");
    let (status, paused) = api
        .post(
            &format!("{path}/caller-ids/%2B14155550100/pause"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(
        paused["caller_id_pool"]["numbers"][0],
        json!({"number": "+14155550100", "paused": true})
    );
    let (status, resumed) = api
        .post(&format!("{path}/caller-ids/+12125550100/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["caller_id_pool"]["numbers"][1], "+12125550100");
    let (status, problem) = api
        .post(&format!("{path}/caller-ids/+19995550100/pause"), json!({}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("caller_id_not_found")),
        "{problem}"
    );
    let plain_id = plain["id"].as_u64().expect("id");
    let (status, _) = api
        .post(
            &format!("/api/v1/campaigns/{plain_id}/caller-ids/+14155550100/pause"),
            json!({}),
        )
        .await;
    assert_eq!(
        status, 404,
        "a campaign without a pool has no number to pause"
    );
    let (status, replaced) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"caller_id_pool": {"numbers": ["+13035550100"], "local_presence": false}})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        replaced["caller_id_pool"],
        json!({"numbers": ["+13035550100"], "local_presence": false})
    );
    let (status, problem) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"caller_id_pool": {"numbers": ["x"]}})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    let (status, removed) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"caller_id_pool": null})),
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed.get("caller_id_pool").is_none(), "{removed}");
}
