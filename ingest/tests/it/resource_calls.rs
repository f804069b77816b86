//! The resource API's calls: `POST /api/v1/calls` (Idempotency-Key, problem errors),
//! `POST /api/v1/calls/bulk`, `GET /api/v1/calls/{id}`, `GET /api/v1/calls`.

use std::time::Duration;

use ccm_tests::{TEST_TOKEN, TestEnv, eventually};
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_call_and_publishes_once() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("idem").await;
    let send = |key: String| {
        api.http
            .post(format!("{}/api/v1/calls", api.base))
            .header("X-Auth-Token", TEST_TOKEN)
            .header("Idempotency-Key", key)
            .json(&json!({"campaign_id": campaign, "phone_number": "+1234567890"}))
            .send()
    };
    let first = send("order-42".into()).await.expect("request");
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    let again = send("order-42".into()).await.expect("request");
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("json");
    assert_eq!(first, again, "the repeat gets the same call");
    assert_eq!(stream_messages(&env, "CALLS").await, 1);

    let too_long = send("k".repeat(256)).await.expect("request");
    assert_eq!(too_long.status(), 400);
    let body: Value = too_long.json().await.expect("json");
    assert_eq!(body["code"], "invalid_idempotency_key");
    assert_eq!(stream_messages(&env, "CALLS").await, 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrong_unknown_oversized_and_untyped_bodies_are_problems_and_publish_nothing() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.max_body_bytes = 4096;
    let api = Api::start_with(&env, config, false).await;
    let campaign = api.compat_campaign("problems").await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "application/json",
            "{\"campaign_id\": ".into(),
            400,
            "malformed_json",
        ),
        (
            "application/json",
            json!({"campaign_id": true, "phone_number": "+1234567890"}).to_string(),
            422,
            "invalid_type",
        ),
        (
            "application/json",
            json!({"campaign_id": campaign, "phone_number": 1234567890}).to_string(),
            422,
            "invalid_type",
        ),
        (
            "application/json",
            json!({"campaign_id": campaign, "phone_number": "+1234567890", "x": 1}).to_string(),
            422,
            "unknown_field",
        ),
        (
            "application/json",
            json!({"campaign_id": campaign}).to_string(),
            422,
            "missing_field",
        ),
        (
            "text/plain",
            json!({"campaign_id": campaign, "phone_number": "+1234567890"}).to_string(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            format!(
                "{{\"campaign_id\": {campaign}, \"phone_number\": \"{}\"}}",
                "1".repeat(5000)
            ),
            413,
            "body_too_large",
        ),
        (
            "application/json",
            json!({"campaign_id": campaign, "phone_number": "12"}).to_string(),
            400,
            "invalid_phone_number",
        ),
        (
            "application/json",
            json!({"campaign_id": 777, "phone_number": "+1234567890"}).to_string(),
            404,
            "campaign_not_found",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let response = api
            .http
            .post(format!("{}/api/v1/calls", api.base))
            .header("X-Auth-Token", TEST_TOKEN)
            .header("Content-Type", content_type)
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{code}");
        let content = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            content.as_deref(),
            Some("application/problem+json"),
            "{code}"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status);
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{problem}"
        );
    }
    assert_eq!(stream_messages(&env, "CALLS").await, 0);
    assert_eq!(stream_messages(&env, "KV_active_calls").await, 0);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_takes_json_or_csv_and_answers_per_item_in_order() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.bulk_max_items = 6;
    let api = Api::start_with(&env, config, false).await;
    let campaign = api.compat_campaign("bulk").await;
    let path = format!("/api/v1/calls/bulk?campaign_id={campaign}");

    let items = json!(["+1555000001", {"phone_number": "+1555000002"}, "bad", "+1 555 000 001"]);
    let (status, body) = api
        .raw(
            reqwest::Method::POST,
            &path,
            "application/json",
            items.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(2), json!(2))
    );
    let results = body["results"].as_array().expect("results");
    let summary: Vec<(u64, &str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["status"].as_str().unwrap(),
                r["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "accepted", ""),
            (1, "accepted", ""),
            (2, "rejected", "invalid_phone_number"),
            (3, "rejected", "repeated_in_request")
        ]
    );
    assert!(results[0]["call_id"].is_string());

    let csv = "name,phone_number\nann,+1555000003\nbob,+1555000001\n";
    let (status, body) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "accepted");
    assert_eq!(body["results"][1]["code"], "call_in_progress");
    assert_eq!(stream_messages(&env, "CALLS").await, 3);

    let seven = json!([
        "+1555000011",
        "+1555000012",
        "+1555000013",
        "+1555000014",
        "+1555000015",
        "+1555000016",
        "+1555000017"
    ]);
    let rejects = [
        ("application/json", seven.to_string(), 413, "too_many_items"),
        ("application/json", "[]".to_owned(), 400, "empty_bulk"),
        (
            "application/json",
            "[1, 2".to_owned(),
            400,
            "malformed_json",
        ),
        (
            "text/plain",
            "+1555000011".to_owned(),
            415,
            "unsupported_media_type",
        ),
        ("text/csv", "name\nann\n".to_owned(), 400, "invalid_csv"),
    ];
    for (content_type, body, status, code) in rejects {
        let (got, problem) = api
            .raw(reqwest::Method::POST, &path, content_type, body)
            .await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{problem}"
        );
    }
    assert_eq!(
        stream_messages(&env, "CALLS").await,
        3,
        "rejected requests published nothing"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_read_with_history_and_listed_with_filters_and_keyset_pages() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let (a, b) = (
        api.compat_campaign("a").await,
        api.compat_campaign("b").await,
    );
    let mut ids = Vec::new();
    for (campaign, phone) in [
        (a, "+1555000001"),
        (a, "+1555000002"),
        (a, "+1555000003"),
        (b, "+1555000004"),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/calls",
                json!({"campaign_id": campaign, "phone_number": phone}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["call_id"].as_str().expect("id").to_owned());
    }
    let detail = eventually(Duration::from_secs(10), || async {
        let (status, body) = api.get(&format!("/api/v1/calls/{}", ids[0])).await;
        (status == 200).then_some(body)
    })
    .await
    .expect("the call is readable");
    assert_eq!(detail["status"], "QUEUED");
    assert_eq!(detail["phone_number"], "+1555000001");
    assert_eq!(detail["history"][0]["kind"], "queued");

    let all = eventually(Duration::from_secs(10), || async {
        let (_, body) = api.get(&format!("/api/v1/calls?campaign_id={a}")).await;
        (body["items"].as_array().map(Vec::len) == Some(3)).then_some(body)
    })
    .await
    .expect("three calls of campaign a");
    assert!(all["next_cursor"].is_null());

    let (status, page1) = api
        .get(&format!("/api/v1/calls?campaign_id={a}&limit=2"))
        .await;
    assert_eq!(status, 200);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page2) = api
        .get(&format!(
            "/api/v1/calls?campaign_id={a}&limit=2&cursor={cursor}"
        ))
        .await;
    let seen: Vec<&str> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["items"].as_array().unwrap())
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        seen,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>(),
        "pages in creation order"
    );
    assert!(page2["next_cursor"].is_null());

    let (_, by_phone) = api
        .get("/api/v1/calls?phone=%2B1555000004&status=QUEUED")
        .await;
    assert_eq!(by_phone["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_phone["items"][0]["campaign_id"], b);

    for (query, code) in [
        ("status=NOPE", "invalid_status"),
        ("limit=0", "invalid_limit"),
        ("cursor=zzz", "invalid_cursor"),
        ("campaign_id=abc", "invalid_query"),
        ("colour=blue", "invalid_query"),
    ] {
        let (status, problem) = api.get(&format!("/api/v1/calls?{query}")).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    let (status, problem) = api
        .get(&format!("/api/v1/calls/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("call_not_found"))
    );
    let (status, _) = api.get("/api/v1/calls/not-a-uuid").await;
    assert_eq!(status, 400);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_100000_numbers_is_accepted_whole() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("big bulk").await;
    let csv: String = (0..100_000u64).map(|n| format!("+1555{n:07}\n")).collect();
    let started = std::time::Instant::now();
    let (status, body) = api
        .raw(
            reqwest::Method::POST,
            &format!("/api/v1/calls/bulk?campaign_id={campaign}"),
            "text/csv",
            csv,
        )
        .await;
    eprintln!("100,000-number bulk answered in {:?}", started.elapsed());
    assert_eq!(status, 200);
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(100_000), Some(0))
    );
    assert_eq!(body["results"][99_999]["index"], 99_999);
    assert_eq!(stream_messages(&env, "CALLS").await, 100_000);
    api.stop().await;
}
