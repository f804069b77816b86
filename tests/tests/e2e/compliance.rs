//! Calling rules by jurisdiction, end to end: a campaign over contacts in four US states and
//! two Canadian provinces, with a rule pack that closes some of them today, caps one at one
//! attempt per 24 hours and leaves the others open. From carrier-sim's ledger: no number was
//! called where its rules forbid it, the capped one exactly once, the open ones at every
//! attempt; and a contact's postal code (in Quebec) outweighs its number's area code
//! (Ontario). The audit trail's records say the same, with the jurisdiction, rules and counts.

use std::{collections::BTreeMap, io::Write, time::Duration};

use ccm_core::{
    phone::{PhoneNumber, PhoneRule},
    window::callee_zones,
};
use ccm_tests::{TestEnv, eventually};
use chrono::{Datelike, Days, Utc};
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer};

const FLORIDA: &str = "+13055550100";
const TEXAS: &str = "+12145550100";
const RHODE_ISLAND: &str = "+14015550100";
const ALBERTA: &str = "+14035550100";
const ONTARIO: &str = "+14165550100";
/// An Ontario number whose contact lives in Montreal (postal code `H2X 1Y4`).
const IN_QUEBEC: &str = "+14165550101";

/// Today and tomorrow in the zone of `number`'s area code (the test may cross midnight).
fn local_days(number: &str) -> (chrono::NaiveDate, chrono::NaiveDate) {
    let phone = PhoneNumber::parse(number, PhoneRule::Lenient).expect("phone");
    let zone = callee_zones(None, &phone, None)[0];
    let today = Utc::now().with_timezone(&zone).date_naive();
    (today, today.checked_add_days(Days::new(1)).expect("date"))
}

fn pack() -> tempfile::NamedTempFile {
    let (ri_today, ri_tomorrow) = local_days(RHODE_ISLAND);
    let (ab_today, ab_tomorrow) = local_days(ALBERTA);
    let (qc_today, qc_tomorrow) = local_days(IN_QUEBEC);
    let weekday = |d: chrono::NaiveDate| d.weekday().to_string().to_lowercase();
    let text = format!(
        "rules:
  - id: test-ri-holiday
    jurisdiction: US-RI
    holidays: [{ri_today}, {ri_tomorrow}]
    source: test
    as_of: 2026-12-05
  - id: test-tx-24h
    jurisdiction: US-TX
    max_per_24h: 1
    source: test
    as_of: 2026-12-05
  - id: test-fl-24h
    jurisdiction: US-FL
    max_per_24h: 10
    source: test
    as_of: 2026-12-05
  - id: test-ab-closed
    jurisdiction: CA-AB
    no_call_days: [{}, {}]
    source: test
    as_of: 2026-12-05
  - id: test-qc-holiday
    jurisdiction: CA-QC
    holidays: [{qc_today}, {qc_tomorrow}]
    source: test
    as_of: 2026-12-05
",
        weekday(ab_today),
        weekday(ab_tomorrow)
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_is_placed_outside_the_rules_of_the_callees_state_or_province() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = ccm_carrier_sim::SimConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
        ..Default::default()
    };
    let rules = pack();
    let stack = CarrierStack::start_with(&env, sim, |c| {
        c.compliance.rule_files = vec![rules.path().to_owned()];
    })
    .await;
    let dialer = Dialer::start(stack.config.clone());

    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({
                "name": "rules", "draft": true, "max_attempts": 2, "max_concurrent_calls": 10,
                "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["1s"]}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    let contacts = json!({"contacts": [
        {"phone_number": FLORIDA}, {"phone_number": TEXAS}, {"phone_number": RHODE_ISLAND},
        {"phone_number": ALBERTA}, {"phone_number": ONTARIO},
        {"phone_number": IN_QUEBEC, "postal_code": "H2X 1Y4"},
    ]});
    let (status, body) = stack
        .send(&format!("/api/v1/campaigns/{id}/contacts"), contacts)
        .await;
    assert!(status < 300, "{status} {body}");
    let (status, body) = stack
        .send(
            &format!("/api/v1/campaigns/{id}/start?call_contacts=true"),
            json!({}),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    assert_eq!(body["contacts_called"]["accepted"], 6, "{body}");

    let placed = |stats: &ccm_carrier_sim::ledger::Stats| {
        let mut by_number: BTreeMap<String, usize> = BTreeMap::new();
        for attempt in stats.attempts.values() {
            *by_number.entry(attempt.to.clone()).or_default() += 1;
        }
        by_number
    };
    // The open numbers get both attempts (RNR, retried after a second).
    let open = eventually(Duration::from_secs(60), || async {
        let by_number = placed(&stack.stats().await);
        (by_number.get(FLORIDA) == Some(&2) && by_number.get(ONTARIO) == Some(&2)).then_some(())
    })
    .await;
    assert!(
        open.is_some(),
        "Florida and Ontario called twice: {:?}",
        placed(&stack.stats().await)
    );
    // Long enough for the capped and closed ones to have been tried and put off again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_number = placed(&stack.stats().await);
    assert_eq!(
        by_number.get(TEXAS),
        Some(&1),
        "one per 24 h: {by_number:?}"
    );
    for closed in [RHODE_ISLAND, ALBERTA, IN_QUEBEC] {
        assert_eq!(
            by_number.get(closed),
            None,
            "{closed} called: {by_number:?}"
        );
    }
    assert_eq!(by_number.values().sum::<usize>(), 5, "{by_number:?}");

    // Nothing was rejected silently: the closed and capped calls are still waiting.
    let pg = env.pg().await.expect("pg");
    let waiting = eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE campaign_id = $1 AND status IN ('QUEUED', 'RETRYING')",
        )
        .bind(id as i64)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n == 4).then_some(n)
    })
    .await;
    assert_eq!(
        waiting,
        Some(4),
        "Texas, Rhode Island, Alberta and the Quebec contact wait"
    );

    // The audit trail says the same, and why: each decision with the callee's jurisdiction,
    // the rules applied and the counts seen.
    let records = eventually(Duration::from_secs(20), || async {
        let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT phone_number, decision, record FROM call_audit WHERE campaign_id = $1 \
             ORDER BY decided_at",
        )
        .bind(id as i64)
        .fetch_all(&pg)
        .await
        .ok()?;
        let numbers: std::collections::BTreeSet<&str> =
            rows.iter().map(|(n, _, _)| n.as_str()).collect();
        (numbers.len() == 6 && rows.iter().filter(|r| r.1 == "placed").count() == 5).then_some(rows)
    })
    .await
    .expect("a placed record for each of the 5 placements and a record for every number");
    let of = |number: &str| -> Vec<&(String, String, serde_json::Value)> {
        records.iter().filter(|(n, _, _)| n == number).collect()
    };
    for (number, decision, record) in &records {
        if decision == "placed" {
            assert!(
                [FLORIDA, TEXAS, ONTARIO].contains(&number.as_str()),
                "{number} placed against its rules: {record}"
            );
        }
    }
    for (closed, rule) in [
        (RHODE_ISLAND, "test-ri-holiday"),
        (ALBERTA, "test-ab-closed"),
        (IN_QUEBEC, "test-qc-holiday"),
    ] {
        for (_, decision, record) in of(closed) {
            assert_eq!(decision, "deferred", "{closed}: {record}");
            let rules = record["rules"]["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                rules.contains(&json!(rule)),
                "{closed} without {rule}: {record}"
            );
            assert_eq!(record["window"]["open"], false, "{closed}: {record}");
        }
    }
    let quebec = &of(IN_QUEBEC)[0].2;
    assert_eq!(
        quebec["rules"]["jurisdiction"]["subdivisions"],
        json!(["CA-QC"]),
        "{quebec}"
    );
    assert_eq!(quebec["rules"]["jurisdiction_source"], "postal_code");
    // Quebec spans zones: its postal code tells the province, not the zone.
    assert_eq!(quebec["time"]["source"], "area_code", "{quebec}");
    let texas = of(TEXAS);
    let count = |r: &serde_json::Value| r["rules"]["counts"][0].clone();
    assert_eq!(texas[0].1, "placed");
    assert_eq!(
        count(&texas[0].2),
        json!({"over": "24h", "limit": 1, "seen": 0})
    );
    let later = texas
        .iter()
        .find(|r| r.1 == "deferred")
        .expect("Texas's retry put off");
    assert_eq!(
        count(&later.2),
        json!({"over": "24h", "limit": 1, "seen": 1})
    );
    dialer.stop().await;
    stack.stop().await;
}

/// Two campaigns call the same Texas numbers (a number may be in one live call per campaign)
/// through two dialer replicas, under a pack capping Texas at 3 attempts per 24 hours: each
/// number wants 4 attempts (2 per campaign) and carrier-sim's ledger shows exactly 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_24_hour_cap_holds_across_two_campaigns_and_two_dialers() {
    const NUMBERS: u32 = 5;
    let env = TestEnv::start().await.expect("test environment");
    let sim = ccm_carrier_sim::SimConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
        ..Default::default()
    };
    let mut rules = tempfile::NamedTempFile::new().expect("temp file");
    rules
        .write_all(
            b"rules:\n  - id: test-tx-24h\n    jurisdiction: US-TX\n    max_per_24h: 3\n    source: test\n    as_of: 2026-12-05\n",
        )
        .expect("write");
    let stack = CarrierStack::start_with(&env, sim, |c| {
        c.compliance.rule_files = vec![rules.path().to_owned()];
        c.ingest.duplicate_scope = ccm_core::config::DuplicateScope::Campaign;
    })
    .await;
    let dialers = [
        Dialer::start(stack.config.clone()),
        Dialer::start(stack.config.clone()),
    ];
    let mut campaigns = Vec::new();
    for name in ["first", "second"] {
        let (status, body) = stack
            .send(
                "/api/v1/campaigns",
                json!({
                    "name": name, "max_attempts": 2, "max_concurrent_calls": 10,
                    "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["1s"]}}}
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        campaigns.push(body["id"].as_u64().expect("id"));
    }
    let numbers: Vec<String> = (0..NUMBERS)
        .map(|i| format!("+1214555{:04}", 200 + i))
        .collect();
    for number in &numbers {
        for campaign in &campaigns {
            let (status, body) = stack
                .send(
                    "/api/v1/calls",
                    json!({"campaign_id": campaign, "phone_number": number}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
        }
    }
    let by_number = || async {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for attempt in stack.stats().await.attempts.values() {
            *counts.entry(attempt.to.clone()).or_default() += 1;
        }
        counts
    };
    let capped = eventually(Duration::from_secs(60), || async {
        let counts = by_number().await;
        (counts.len() == NUMBERS as usize && counts.values().all(|n| *n >= 3)).then_some(())
    })
    .await;
    assert!(
        capped.is_some(),
        "every number reached the cap: {:?}",
        by_number().await
    );
    // The fourth attempt of each number is put off a day, never placed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = by_number().await;
    for number in &numbers {
        assert_eq!(counts.get(number), Some(&3), "{number}: {counts:?}");
    }
    assert_eq!(stack.stats().await.repeated_requests, 0);
    for dialer in dialers {
        dialer.stop().await;
    }
    stack.stop().await;
}
