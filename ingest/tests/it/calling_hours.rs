//! Calling hours, blackout dates and contacts' zones through the API: stored as given, and
//! bad values refused with a reason, leaving nothing behind.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_hours_and_blackout_dates_are_stored_and_bad_ones_refused() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let hours = json!([{"days": ["mon", "fri"], "start": "09:00", "end": "17:30"}]);
    let (status, campaign) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "hours", "calling_hours": hours,
                   "blackout_dates": ["2026-12-25", "2026-01-01", "2026-12-25"]}),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(campaign["calling_hours"], hours);
    assert_eq!(
        campaign["blackout_dates"],
        json!(["2026-01-01", "2026-12-25"])
    );
    let id = campaign["id"].as_u64().expect("id");
    for (body, code) in [
        (
            json!({"calling_hours": [{"days": ["mon"], "start": "18:00", "end": "09:00"}]}),
            "invalid_calling_hours",
        ),
        (
            json!({"calling_hours": [{"days": [], "start": "08:00", "end": "09:00"}]}),
            "invalid_calling_hours",
        ),
        (json!({"calling_hours": []}), "invalid_calling_hours"),
        (json!({"max_calls_per_second": 0}), "invalid_pacing"),
        (json!({"max_calls_per_second": 10_001}), "invalid_pacing"),
    ] {
        let (status, problem) = api
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/campaigns/{id}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{body}: {problem}"
        );
    }
    for body in [
        json!({"calling_hours": [{"days": ["someday"], "start": "08:00", "end": "09:00"}]}),
        json!({"calling_hours": [{"days": ["mon"], "start": "8 am", "end": "09:00"}]}),
        json!({"blackout_dates": ["25/12/2026"]}),
    ] {
        let (status, problem) = api
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/campaigns/{id}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
    }
    let (_, unchanged) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        unchanged["calling_hours"], hours,
        "refused changes changed nothing"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_with_zones_are_written_and_a_bad_item_refuses_the_whole_list() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.campaign_with(json!({"name": "contacts"})).await;
    let path = format!("/api/v1/campaigns/{id}/contacts");
    let (status, problem) = api
        .post(
            &path,
            json!({"contacts": [
                {"phone_number": "+15550002001", "time_zone": "Europe/Paris"},
                {"phone_number": "not a number"},
                {"phone_number": "+15550002003", "time_zone": "Mars/Olympus"},
            ]}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_contacts"))
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("contacts[1]")
            && detail.contains("contacts[2]")
            && !detail.contains("contacts[0]"),
        "{detail}"
    );
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("contacts").await.expect("bucket");
    assert!(
        bucket
            .get(format!("{id}.15550002001"))
            .await
            .expect("kv")
            .is_none(),
        "nothing written"
    );
    let (status, body) = api
        .post(
            &path,
            json!({"contacts": [{"phone_number": "+15550002001", "time_zone": "Europe/Paris"}]}),
        )
        .await;
    assert_eq!((status, body["written"].as_u64()), (200, Some(1)), "{body}");
    let stored: serde_json::Value = serde_json::from_slice(
        &bucket
            .get(format!("{id}.15550002001"))
            .await
            .expect("kv")
            .expect("contact"),
    )
    .expect("json");
    assert_eq!(stored["time_zone"], "Europe/Paris");
    let (status, _) = api
        .post(
            "/api/v1/campaigns/999/contacts",
            json!({"contacts": [{"phone_number": "+15550002001"}]}),
        )
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

/// A campaign's purpose and ring time: stored as given, out-of-range values refused, and the
/// telemarketing floor (15 s) enforced whichever of the two changes, on creation and PATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_time_and_purpose_are_stored_and_the_telemarketing_floor_enforced() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, problem) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "tm", "purpose": "telemarketing", "ring_timeout_secs": 14}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("ring_timeout_below_floor")),
        "{problem}"
    );
    let (status, campaign) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "short ring", "ring_timeout_secs": 10}),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(campaign["ring_timeout_secs"], 10);
    assert_eq!(campaign["purpose"], "informational");
    let id = campaign["id"].as_u64().expect("id");
    let path = format!("/api/v1/campaigns/{id}");
    for (body, code) in [
        (
            json!({"purpose": "telemarketing"}),
            "ring_timeout_below_floor",
        ),
        (json!({"ring_timeout_secs": 4}), "invalid_ring_timeout"),
        (json!({"ring_timeout_secs": 121}), "invalid_ring_timeout"),
    ] {
        let (status, problem) = api
            .send(reqwest::Method::PATCH, &path, Some(body.clone()))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{body}: {problem}"
        );
    }
    let (status, changed) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"purpose": "telemarketing", "ring_timeout_secs": 20})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["purpose"], &changed["ring_timeout_secs"]),
        (&json!("telemarketing"), &json!(20))
    );
    let (status, problem) = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"purpose": "fundraising"})),
        )
        .await;
    assert_eq!(status, 422, "an unknown purpose: {problem}");
    api.stop().await;
}
