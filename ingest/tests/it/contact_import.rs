//! CSV contact import: streamed, per-row errors, custom fields kept, and a draft started over
//! its contacts.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::{Api, stream_messages};

const IMPORT: &str = "/api/v1/campaigns/{id}/contacts/import";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_imported_with_their_fields_and_bad_rows_reported_by_line() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.campaign_with(json!({"name": "import"})).await;
    let csv = "phone_number,time_zone,first_name,note\r\n\
               +15550004001,Europe/Paris,Jane,\"likes mornings, not evenings\"\r\n\
               not-a-number,,Bob,x\n\
               \n\
               +15550004003,Mars/Olympus,Ann,x\n\
               +15550004004,,Too,many,fields\n\
               +15550004005,,\"Li \"\"Lee\"\"\",\n";
    let path = IMPORT.replace("{id}", &id.to_string());
    let (status, body) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["rows"].as_u64(),
            body["imported"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(5), Some(2), Some(3)),
        "{body}"
    );
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [3, 5, 6], "{body}");
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("contacts").await.expect("bucket");
    let stored: serde_json::Value = serde_json::from_slice(
        &bucket
            .get(format!("{id}.15550004001"))
            .await
            .expect("kv")
            .expect("contact"),
    )
    .expect("json");
    assert_eq!(stored["time_zone"], "Europe/Paris");
    assert_eq!(
        stored["fields"],
        json!({"first_name": "Jane", "note": "likes mornings, not evenings"})
    );
    let quoted: serde_json::Value = serde_json::from_slice(
        &bucket
            .get(format!("{id}.15550004005"))
            .await
            .expect("kv")
            .expect("contact"),
    )
    .expect("json");
    assert_eq!(quoted["fields"]["first_name"], "Li \"Lee\"");

    for (csv, expected) in [
        ("number,name\n+15550004001,x\n", "phone_number"),
        ("", "header"),
    ] {
        let (status, problem) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_csv")),
            "{csv:?}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(expected),
            "{problem}"
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_the_body_limit_is_streamed_in() {
    let env = TestEnv::start().await.expect("env");
    let mut config = env.config();
    config.ingest.max_body_bytes = 64 * 1024;
    let api = Api::start_with(&env, config, false).await;
    let id = api.campaign_with(json!({"name": "large"})).await;
    let rows = 20_000u32;
    // About 320 KB: more than four times what any other route of this ingest accepts.
    let mut file = String::from("phone_number,segment\n");
    for n in 0..rows {
        file.push_str(&format!("+1556{n:07},s{}\n", n % 7));
    }
    assert!(file.len() > 4 * 64 * 1024);
    let path = IMPORT.replace("{id}", &id.to_string());
    let (status, result) = api
        .raw(reqwest::Method::POST, &path, "text/csv", file)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["imported"].as_u64(),
        Some(u64::from(rows)),
        "{result}"
    );
    assert_eq!(result["rejected"].as_u64(), Some(0));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_started_over_its_contacts_queues_one_call_each_except_do_not_call() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let (status, draft) = api
        .post(
            "/api/v1/campaigns",
            json!({"name": "over contacts", "draft": true}),
        )
        .await;
    assert_eq!(status, 201);
    let id = draft["id"].as_u64().expect("id");
    let path = IMPORT.replace("{id}", &id.to_string());
    let csv = "phone_number\n+15550005001\n+15550005002\n+15550005003\n";
    let (status, _) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
    assert_eq!(status, 200);
    let (status, _) = api
        .post("/api/v1/dnc", json!({"phone_numbers": ["+15550005002"]}))
        .await;
    assert_eq!(status, 200);
    let before = stream_messages(&env, "CALLS").await;
    let (status, started) = api
        .post(
            &format!("/api/v1/campaigns/{id}/start?call_contacts=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["state"], "running");
    assert_eq!(
        started["contacts_called"],
        json!({"contacts": 3, "accepted": 2, "do_not_call": 1, "duplicates": 0, "expired": 0})
    );
    assert_eq!(stream_messages(&env, "CALLS").await, before + 2);
    // Not a draft any more: starting again is refused and queues nothing.
    let (status, _) = api
        .post(&format!("/api/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, problem) = api
        .post(
            &format!("/api/v1/campaigns/{id}/start?call_contacts=true"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    assert_eq!(stream_messages(&env, "CALLS").await, before + 2);
    api.stop().await;
}

/// A `postal_code` column is the contact's postal code (for its zone and state or province),
/// not a custom field; a value that cannot be one is reported by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postal_code_column_is_kept_as_the_contacts_postal_code() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.campaign_with(json!({"name": "postal"})).await;
    let csv = "phone_number,postal_code,first_name\n\
               +12125550101, 90210 ,Jane\n\
               +12125550102,T2P 1J9,Ann\n\
               +12125550103,<script>,Bob\n";
    let path = IMPORT.replace("{id}", &id.to_string());
    let (status, body) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 2, "{body}");
    assert_eq!(body["errors"][0]["line"], 4, "{body}");
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("contacts").await.expect("bucket");
    for (digits, postal) in [("12125550101", "90210"), ("12125550102", "T2P 1J9")] {
        let stored: serde_json::Value = serde_json::from_slice(
            &bucket
                .get(format!("{id}.{digits}"))
                .await
                .expect("kv")
                .expect("contact"),
        )
        .expect("json");
        assert_eq!(stored["postal_code"], postal, "{stored}");
        assert_eq!(stored["fields"].get("postal_code"), None, "{stored}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expires_at_column_is_the_contacts_expiry_not_a_custom_field() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let id = api.campaign_with(json!({"name": "expiring"})).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let past = (chrono::Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let csv = format!(
        "phone_number,expires_at,first_name\n\
         +15550004101,{later},Jane\n\
         +15550004102,,Bob\n\
         +15550004103,tomorrow,Ann\n\
         +15550004104,{past},Li\n"
    );
    let path = IMPORT.replace("{id}", &id.to_string());
    let (status, body) = api.raw(reqwest::Method::POST, &path, "text/csv", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["imported"].as_u64(), body["rejected"].as_u64()),
        (Some(2), Some(2)),
        "a bad and a past expiry are row errors: {body}"
    );
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("contacts").await.expect("bucket");
    let read = |digits: &'static str| {
        let bucket = bucket.clone();
        async move {
            let bytes = bucket
                .get(format!("{id}.{digits}"))
                .await
                .expect("kv")
                .expect("contact");
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("json")
        }
    };
    let jane = read("15550004101").await;
    assert_eq!(jane["expires_at"], later.as_str(), "{jane}");
    assert_eq!(jane["fields"], json!({"first_name": "Jane"}));
    let bob = read("15550004102").await;
    assert!(bob.get("expires_at").is_none(), "{bob}");
}
