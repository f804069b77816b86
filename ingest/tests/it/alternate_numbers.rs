//! Several numbers per contact: the contacts route stores an ordered, labelled list and the
//! campaign holds the advance policy; both are validated, and one number stays as before.

use ccm_tests::TestEnv;
use serde_json::json;

use crate::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_holds_an_ordered_labelled_list_and_a_campaign_its_advance_policy() {
    let env = TestEnv::start().await.expect("env");
    let api = Api::start(&env).await;
    let policy = json!({"advance_on": ["RNR", "UNREACHABLE"], "max_attempts_per_number": 2,
        "max_attempts_per_contact": 4});
    let id = api
        .campaign_with(json!({"name": "alt", "alternate_numbers": policy}))
        .await;
    let (_, campaign) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        campaign["alternate_numbers"]["advance_on"],
        json!(["RNR", "UNREACHABLE"])
    );
    assert_eq!(campaign["alternate_numbers"]["reset"], "daily");
    let path = format!("/api/v1/campaigns/{id}/contacts");
    let (status, problem) = api
        .post(
            &path,
            json!({"contacts": [
                {"numbers": [{"number": "+15550003001", "label": "mobile"},
                             {"number": "+15550003001", "label": "home"}]},
                {"numbers": [{"number": "+15550003011", "label": "Mobile Phone"}]},
                {"phone_number": "+15550003021",
                 "numbers": [{"number": "+15550003022", "label": "mobile"}]},
                {"numbers": [{"number": "nope", "label": "home"}]},
                {"numbers": []},
                {},
            ]}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_contacts")),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    for part in [
        "contacts[0]: numbers[1]: +15550003001 is listed twice",
        "contacts[1]: numbers[0]: label \"Mobile Phone\"",
        "contacts[2]: phone_number +15550003021 must be the first of numbers",
        "contacts[3]: numbers[0]:",
        "contacts[4]: numbers must hold 1 to 10 items",
        "contacts[5]: phone_number or numbers is required",
    ] {
        assert!(detail.contains(part), "{part:?} in {detail}");
    }
    let (status, body) = api
        .post(
            &path,
            json!({"contacts": [
                {"numbers": [{"number": "+15550003001", "label": "mobile"},
                             {"number": "+15550003002", "label": "home"},
                             {"number": "+15550003003", "label": "work"}],
                 "time_zone": "America/New_York"},
                {"phone_number": "+15550003101"},
            ]}),
        )
        .await;
    assert_eq!((status, body["written"].as_u64()), (200, Some(2)), "{body}");
    let js = env.jetstream().await.expect("js");
    let bucket = js.get_key_value("contacts").await.expect("bucket");
    let read = |key: String| {
        let bucket = bucket.clone();
        async move {
            serde_json::from_slice::<serde_json::Value>(
                &bucket.get(key).await.expect("kv").expect("contact"),
            )
            .expect("json")
        }
    };
    // Kept under its first number, the list in order with its labels.
    let several = read(format!("{id}.15550003001")).await;
    assert_eq!(several["phone_number"], "+15550003001");
    let labels: Vec<(&str, &str)> = several["numbers"]
        .as_array()
        .expect("numbers")
        .iter()
        .map(|n| (n["number"].as_str().unwrap(), n["label"].as_str().unwrap()))
        .collect();
    assert_eq!(
        labels,
        [
            ("+15550003001", "mobile"),
            ("+15550003002", "home"),
            ("+15550003003", "work")
        ]
    );
    // One number is stored exactly as before.
    let one = read(format!("{id}.15550003101")).await;
    assert!(one.get("numbers").is_none(), "{one}");

    // The policy is checked on creation and on change, and `null` removes it.
    for bad in [
        json!({"advance_on": []}),
        json!({"advance_on": ["RNR"], "max_attempts_per_number": 0}),
    ] {
        let (status, problem) = api
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/campaigns/{id}"),
                Some(json!({"alternate_numbers": bad})),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_alternate_numbers")),
            "{problem}"
        );
    }
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({"alternate_numbers": {"advance_on": ["BUSY"]}})),
        )
        .await;
    assert_eq!(status, 422, "an unknown outcome is a type error");
    let (status, changed) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({"alternate_numbers": null})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed.get("alternate_numbers").is_none(), "{changed}");

    // The OpenAPI document describes both beside the routes.
    let doc: serde_json::Value = api
        .http
        .get(format!("{}/api/v1/openapi.json", api.base))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["NewContact"]["properties"]["numbers"].is_object(),
        "{}",
        schemas["NewContact"]
    );
    assert!(schemas["NewContactNumber"]["properties"]["label"].is_object());
    assert!(schemas["AlternateNumbers"]["properties"]["advance_on"].is_object());
    assert!(schemas["NewCampaign"]["properties"]["alternate_numbers"].is_object());
    assert!(schemas["Campaign"]["properties"]["alternate_numbers"].is_object());
    api.stop().await;
}
