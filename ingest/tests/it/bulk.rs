//! `POST /api/v1/bulk-initiate-calls/` and `POST /api/v1/phone-numbers/`.

use ccm_tests::TestEnv;
use serde_json::{Value, json};

use crate::api::{Api, stream_messages};

const BULK: &str = "/api/v1/bulk-initiate-calls/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_accepts_in_order_drops_repeats_and_reports_duplicates() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("bulk").await;
    // A live call makes +1888000002 a duplicate.
    let (status, _) = api
        .post(
            "/api/v1/initiate-call/",
            json!({"phone_number": "+1888000002", "campaign_id": campaign}),
        )
        .await;
    assert_eq!(status, 201);

    let numbers = [
        "+1888000001",
        "+1888000002",
        "+1888000003",
        "+1 888 000 001",
        "+1888000004",
    ];
    let (status, body) = api
        .post(
            BULK,
            json!({"campaign_id": campaign, "phone_numbers": numbers}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["campaign_id"], campaign);
    assert_eq!(body["campaign_name"], "bulk");
    let batch = body["batch_id"].as_str().expect("batch_id");
    assert!(
        batch.starts_with("batch_") && batch.ends_with(&format!("_{campaign}")),
        "{batch}"
    );
    assert_eq!(
        body["total_requested"], 4,
        "the repeat of +1888000001 is dropped"
    );
    assert_eq!(body["failed"], 1);
    assert_eq!(body["failed_count"], 1);
    assert_eq!(
        body["failed_numbers"],
        json!([{"phone_number": "+1888000002", "reason": "Duplicate call within window"}])
    );
    let ids = body["call_ids"].as_array().expect("call_ids");
    assert_eq!(ids.len(), 3);
    assert_eq!(
        body["immediate_processed"].as_u64().unwrap() + body["queued_for_later"].as_u64().unwrap(),
        3
    );
    let info = &body["queue_info"];
    for field in [
        "available_slots",
        "immediate_processed",
        "queued_pending",
        "total_in_queue",
        "message",
    ] {
        assert!(info.get(field).is_some(), "queue_info.{field}: {body}");
    }
    assert_eq!(info["available_slots"], 100, "no dialer holds any slot");
    assert_eq!(stream_messages(&env, "CALLS").await, 4);

    // The call ids are in input order: each id's dial message carries its number.
    let js = env.jetstream().await.expect("js");
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    for (seq, (id, phone)) in ids
        .iter()
        .zip(["+1888000001", "+1888000003", "+1888000004"])
        .enumerate()
    {
        let message = calls
            .get_raw_message(seq as u64 + 2)
            .await
            .expect("message");
        let request: Value = serde_json::from_slice(&message.payload).expect("json");
        assert_eq!(
            (&request["call_id"], request["phone_number"].as_str()),
            (id, Some(phone))
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_rejects_bad_requests_with_the_old_messages_and_publishes_nothing() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("bulk errors").await;
    let mut mixed = vec!["+1888000001".to_owned()];
    mixed.extend((1..=7).map(|n| format!("bad{n}")));
    let cases = [
        (
            json!({"phone_numbers": ["+1888000001"]}),
            400,
            json!({"error": "campaign_id is required"}),
        ),
        (
            json!({"campaign_id": campaign}),
            400,
            json!({"error": "No phone numbers provided"}),
        ),
        (
            json!({"campaign_id": campaign, "phone_numbers": []}),
            400,
            json!({"error": "No phone numbers provided"}),
        ),
        (
            json!({"campaign_id": campaign, "use_campaign_numbers": true}),
            400,
            json!({"error": "No phone numbers provided"}),
        ),
        (
            json!({"campaign_id": campaign, "phone_numbers": mixed}),
            400,
            json!({"error": "Invalid phone numbers: bad1, bad2, bad3, bad4, bad5 and 2 more"}),
        ),
        (
            json!({"campaign_id": 99999, "phone_numbers": ["+1888000001"]}),
            404,
            json!({"error": "Campaign not found or inactive"}),
        ),
    ];
    for (body, want_status, want) in cases {
        let (status, answer) = api.post(BULK, body.clone()).await;
        assert_eq!((status, &answer), (want_status, &want), "{body}");
    }
    assert_eq!(stream_messages(&env, "CALLS").await, 0);
    assert_eq!(stream_messages(&env, "KV_active_calls").await, 0);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_added_are_dialled_at_once_by_use_campaign_numbers() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("contacts").await;
    let numbers = json!(["+1555000001", "+1555000002", "nope", "+1555000001"]);
    let (status, body) = api
        .post(
            "/api/v1/phone-numbers/",
            json!({"campaign_id": campaign, "phone_numbers": numbers}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created_count"], 2);
    assert_eq!(
        body["created_numbers"],
        json!(["+1555000001", "+1555000002"])
    );
    assert_eq!(body["errors"], json!(["Invalid phone number format: nope"]));
    // Idempotent per (campaign, number).
    let (status, body) = api
        .post(
            "/api/v1/phone-numbers/",
            json!({"campaign_id": campaign, "phone_numbers": ["+1555000002"]}),
        )
        .await;
    assert_eq!((status, &body["created_count"]), (201, &json!(0)));

    let (status, body) = api
        .post(
            BULK,
            json!({"campaign_id": campaign, "use_campaign_numbers": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["total_requested"], 2);
    assert_eq!(body["call_ids"].as_array().map(Vec::len), Some(2));

    let (status, detail) = api.get(&format!("/api/v1/campaigns/{campaign}/")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["phone_count"], 2);

    let cases = [
        (
            json!({"campaign_id": campaign}),
            400,
            json!({"error": "campaign_id and phone_numbers are required"}),
        ),
        (
            json!({"campaign_id": 999, "phone_numbers": ["+1555000001"]}),
            404,
            json!({"error": "Campaign not found"}),
        ),
    ];
    for (body, want_status, want) in cases {
        let (status, answer) = api.post("/api/v1/phone-numbers/", body.clone()).await;
        assert_eq!((status, &answer), (want_status, &want), "{body}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_numbers_are_mirrored_into_the_read_model() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::with_projector(&env).await;
    let campaign = api.compat_campaign("mirror").await;
    let body = json!({"campaign_id": campaign, "phone_numbers": ["+1555000001", "+1555000002"]});
    for _ in 0..2 {
        let (status, _) = api.post("/api/v1/phone-numbers/", body.clone()).await;
        assert_eq!(status, 201);
    }
    let pg = env.pg().await.expect("pg");
    let rows = ccm_tests::eventually(std::time::Duration::from_secs(10), || async {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT phone_number FROM phone_numbers WHERE campaign_id = $1 ORDER BY phone_number",
        )
        .bind(campaign as i64)
        .fetch_all(&pg)
        .await
        .unwrap_or_default();
        (rows.len() == 2).then_some(rows)
    })
    .await
    .expect("both numbers mirrored, once each");
    assert_eq!(rows, ["+1555000001", "+1555000002"]);
    api.stop().await;
}

/// Every refused number is listed (the old API listed ten: a client with more failures could
/// not tell which numbers to retry), and each accepted id is paired with its number in
/// `calls`, beside the old `call_ids`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_lists_every_failure_and_pairs_each_call_id_with_its_number() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let campaign = api.compat_campaign("bulk pairs").await;
    let live: Vec<String> = (1..=13).map(|n| format!("+1888100{n:03}")).collect();
    let (status, body) = api
        .post(
            BULK,
            json!({"campaign_id": campaign, "phone_numbers": live}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let fresh = ["+1888200001", "+1888200002"];
    let mut numbers = vec![fresh[0].to_owned()];
    numbers.extend(live.iter().cloned());
    numbers.push(fresh[1].to_owned());
    let (status, body) = api
        .post(
            BULK,
            json!({"campaign_id": campaign, "phone_numbers": numbers}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["failed"], 13);
    assert_eq!(body["failed_count"], 13);
    let failed: Vec<&str> = body["failed_numbers"]
        .as_array()
        .expect("failed_numbers")
        .iter()
        .map(|f| f["phone_number"].as_str().expect("number"))
        .collect();
    assert_eq!(failed, live, "every failure, in input order");
    let ids = body["call_ids"].as_array().expect("call_ids");
    let pairs = body["calls"].as_array().expect("calls");
    assert_eq!(pairs.len(), ids.len());
    for ((pair, id), phone) in pairs.iter().zip(ids).zip(fresh) {
        assert_eq!(pair, &json!({"call_id": id, "phone_number": phone}));
    }
    api.stop().await;
}
