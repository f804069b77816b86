//! Do-not-call lists through the API: listed numbers are refused by every call route with the
//! list named (per number in bulk), nothing is published for them, and bad listings change
//! nothing.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::{Api, stream_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_numbers_are_refused_by_every_call_route_with_the_list_named() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.campaign_with(json!({"name": "dnc"})).await;
    let other = api.campaign_with(json!({"name": "other"})).await;
    let (status, body) = api
        .post(
            "/api/v1/dnc",
            json!({"phone_numbers": ["+15550003001", "+1 555 000 3001"], "reason": "asked"}),
        )
        .await;
    assert_eq!((status, body["listed"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = api
        .post(
            "/api/v1/dnc",
            json!({"phone_numbers": ["+15550003002"], "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let before = stream_messages(&env, "CALLS").await;
    let call = |campaign: u64, number: &str| {
        api.post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
    };
    let (status, problem) = call(campaign, "+15550003001").await;
    assert_eq!(
        (status, problem["code"].as_str(), problem["detail"].as_str()),
        (
            403,
            Some("do_not_call"),
            Some("+15550003001 is on the global do-not-call list")
        )
    );
    let (status, problem) = call(campaign, "+15550003002").await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            403,
            Some(format!("+15550003002 is on campaign {campaign}'s do-not-call list").as_str())
        )
    );
    let (status, problem) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"campaign_id": campaign, "phone_number": "+15550003001"}),
        )
        .await;
    assert_eq!(
        (status, problem["error"].as_str()),
        (400, Some("+15550003001 is on the global do-not-call list"))
    );
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        before,
        "nothing published"
    );

    // The campaign's list binds that campaign only.
    assert_eq!(call(other, "+15550003002").await.0, 202);
    let (status, body) = api
        .post(
            &format!("/api/v1/calls/bulk?campaign_id={campaign}"),
            json!(["+15550003001", "+15550003003", "+15550003002"]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<Option<&str>> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [Some("do_not_call"), None, Some("do_not_call")],
        "{body}"
    );
    let (status, body) = api
        .post(
            "/api/v1/bulk-initiate-calls/",
            json!({"campaign_id": campaign, "phone_numbers": ["+15550003001", "+15550003004"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["failed_numbers"],
        json!([{"phone_number": "+15550003001", "reason": "+15550003001 is on the global do-not-call list"}])
    );

    let (status, listing) = api.get("/api/v1/dnc/+15550003001").await;
    assert_eq!(
        (status, listing["entry"]["reason"].as_str()),
        (200, Some("asked"))
    );
    let (status, _) = api.get("/api/v1/dnc/+15550003002").await;
    assert_eq!(status, 404, "not on the global list");
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/api/v1/dnc/+15550003001", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        call(campaign, "+15550003001").await.0,
        202,
        "removed: callable again"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_listings_are_refused_with_each_number_named_and_list_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, problem) = api
        .post(
            "/api/v1/dnc",
            json!({"phone_numbers": ["+15550003101", "12", "+1555abc"]}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_phone_numbers"))
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("phone_numbers[1]") && detail.contains("phone_numbers[2]"),
        "{detail}"
    );
    let (status, _) = api.get("/api/v1/dnc/+15550003101").await;
    assert_eq!(status, 404, "nothing listed");
    for (body, expected) in [
        (json!({"phone_numbers": []}), 400),
        (
            json!({"phone_numbers": ["+15550003101"], "campaign_id": 999}),
            404,
        ),
        (
            json!({"phone_numbers": ["+15550003101"], "reason": "x".repeat(501)}),
            400,
        ),
        (json!({"phone_numbers": "+15550003101"}), 422),
    ] {
        let (status, problem) = api.post("/api/v1/dnc", body.clone()).await;
        assert_eq!(status, expected, "{body}: {problem}");
    }
    let (status, _) = api.get("/api/v1/dnc/+15550003101").await;
    assert_eq!(status, 404, "still nothing listed");
    api.stop().await;
}
