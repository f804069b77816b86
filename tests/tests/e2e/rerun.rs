//! Re-running the unreached (`POST /api/v1/campaigns/{id}/rerun`): a campaign over
//! imported contacts ends with some numbers answered and some not (the simulated carrier
//! answers at random); the rerun creates a campaign that calls exactly the numbers whose
//! last attempt rang unanswered, with their contacts' custom fields, and none that answered.

use std::{collections::BTreeMap, time::Duration};

use ccm_core::config::{CarrierConfig, SimCarrierConfig};
use ccm_tests::{TestEnv, eventually};
use reqwest::Method;
use serde_json::{Value, json};

use crate::stack::Stack;

const NUMBERS: u64 = 12;

/// Every call of `campaign` once each has ended: number → (status, error message).
async fn ended_calls(stack: &Stack, campaign: u64, count: usize) -> BTreeMap<String, Value> {
    let ended = eventually(Duration::from_secs(60), || async {
        let (status, body) = stack
            .send(
                Method::GET,
                &format!("/api/v1/calls?campaign_id={campaign}&limit=100"),
                Value::Null,
            )
            .await;
        // 503 until the projector has created the read model.
        if status != 200 {
            return None;
        }
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let done = items.iter().all(|c| {
            matches!(
                c["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED" | "EXPIRED" | "DEAD_LETTERED")
            )
        });
        (items.len() == count && done).then(|| {
            items
                .into_iter()
                .map(|c| (c["phone_number"].as_str().unwrap_or("").to_owned(), c))
                .collect::<BTreeMap<_, _>>()
        })
    })
    .await;
    ended.unwrap_or_else(|| panic!("campaign {campaign}'s {count} calls did not all end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_calls_exactly_the_numbers_whose_last_attempt_went_unanswered() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 1,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
    });
    // The numbers are called again a moment after their first call ended: outside the test,
    // `duplicate_call_window_minutes` (5) refuses that and the rerun counts them duplicates.
    config.ingest.duplicate_call_window_minutes = 0;
    let stack = Stack::start(&env, config).await;

    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "first round", "draft": true, "max_attempts": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let first = body["id"].as_u64().expect("id");
    let mut csv = String::from("phone_number,first_name\n");
    for i in 0..NUMBERS {
        csv.push_str(&format!("+1555000{:04},name{i}\n", 8100 + i));
    }
    let (status, body) = stack
        .raw(
            Method::POST,
            &format!("/api/v1/campaigns/{first}/contacts/import"),
            "text/csv",
            csv.into_bytes(),
        )
        .await;
    assert!((200..300).contains(&status), "import: {status} {body}");
    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{first}/start?call_contacts=true"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let round1 = ended_calls(&stack, first, NUMBERS as usize).await;
    // With one attempt, a call that rang unanswered ended FAILED; one answered, COMPLETED.
    let unanswered: Vec<&String> = round1
        .iter()
        .filter(|(_, c)| c["status"] != "COMPLETED")
        .map(|(n, _)| n)
        .collect();
    eprintln!("round 1: {} of {NUMBERS} unanswered", unanswered.len());

    // Refused: an answered outcome, an unknown campaign.
    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{first}/rerun"),
            json!({"outcomes": ["COMPLETED"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_outcomes", "{body}");
    let (status, _) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns/999999/rerun",
            json!({"outcomes": ["RNR"]}),
        )
        .await;
    assert_eq!(status, 404);

    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{first}/rerun"),
            json!({"outcomes": ["RNR"], "name": "second round"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source_campaign_id"], first);
    assert_eq!(body["selected"], unanswered.len(), "{body}");
    assert_eq!(
        body["contacts_called"]["accepted"],
        unanswered.len(),
        "{body}"
    );
    assert_eq!(body["campaign"]["name"], "second round");
    assert_eq!(body["campaign"]["max_attempts"], 1, "settings are copied");
    let second = body["campaign"]["id"].as_u64().expect("id");

    let round2 = ended_calls(&stack, second, unanswered.len()).await;
    let called: Vec<&String> = round2.keys().collect();
    assert_eq!(called, unanswered, "the rerun called other numbers");
    for (number, call) in &round2 {
        let i: u64 = number[number.len() - 4..].parse::<u64>().expect("digits") - 8100;
        assert_eq!(
            call["custom_fields"]["first_name"],
            format!("name{i}"),
            "{number}'s contact fields were not copied: {call}"
        );
    }
    stack.stop().await;
}
