//! A call's `expires_at` (issue 21, item 6) and the audit trail of admission decisions
//! (item 8), through the whole stack with the in-process simulated carrier. Durations are
//! seconds through configuration (the retrier's sweep runs every 200 ms).

use std::time::{Duration, Instant};

use ccm_core::{
    Config,
    config::{CarrierConfig, SimCarrierConfig},
};
use ccm_tests::{TestEnv, eventually};
use chrono::{SecondsFormat, Timelike, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::stack::Stack;

fn config(env: &TestEnv, rnr: bool) -> Config {
    let mut config = env.config();
    config.retrier.expiry_sweep_ms = 200;
    // A number is free again as soon as its call ends.
    config.ingest.duplicate_call_window_minutes = 0;
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: u32::from(!rnr),
        rnr: u32::from(rnr),
        call_ms: 20,
        ..SimCarrierConfig::default()
    });
    config
}

fn in_secs(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn call(stack: &Stack, campaign: u64, phone: &str, expires_at: Option<String>) -> String {
    let (status, body) = stack
        .post(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": phone, "expires_at": expires_at}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["call_id"].as_str().expect("id").to_owned()
}

/// The call as the API shows it once its status is `status`.
async fn ends(stack: &Stack, call: &str, status: &str, within: Duration) -> Value {
    eventually(within, || async {
        let (code, body) = stack.get(&format!("/api/v1/calls/{call}")).await;
        (code == 200 && body["status"] == status).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("call {call} never showed {status}"))
}

/// The call's audit records once there are at least `n`.
async fn audit(stack: &Stack, call: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(20), || async {
        let (code, body) = stack.get(&format!("/api/v1/calls/{call}/audit")).await;
        let records = body["records"].as_array().cloned().unwrap_or_default();
        (code == 200 && records.len() >= n).then_some(records)
    })
    .await
    .unwrap_or_else(|| panic!("call {call}: fewer than {n} audit records"))
}

async fn retries_waiting(env: &TestEnv, campaign: u64) -> u64 {
    let js = env.jetstream().await.expect("jetstream");
    ccm_core::retries::count(&js, ccm_core::CampaignId::new(campaign).expect("id"))
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_in_a_paused_campaign_expires_at_its_expiry_without_resuming() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = Stack::start(&env, config(&env, false)).await;
    let paused = stack.campaign("held").await;

    // Refused before anything is queued: an expiry that is not in the future.
    let past = in_secs(-5);
    let (status, body) = stack
        .post(
            "/api/v1/calls",
            json!({"campaign_id": paused, "phone_number": "+15550007000", "expires_at": past}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("expires_at_in_past")),
        "{body}"
    );
    let (status, body) = stack
        .post(
            &format!(
                "/api/v1/calls/bulk?campaign_id={paused}&expires_at={}",
                past.replace('+', "%2B")
            ),
            json!(["+15550007001"]),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("expires_at_in_past")),
        "{body}"
    );
    let (status, body) = stack
        .post(
            "/api/v1/initiate-call/",
            json!({"campaign_id": paused, "phone_number": "+15550007002", "expires_at": past}),
        )
        .await;
    assert_eq!(status, 400, "the old API refuses it its own way: {body}");
    let (status, body) = stack
        .post(
            &format!("/api/v1/campaigns/{paused}/contacts"),
            json!({"contacts": [{"phone_number": "+15550007003", "expires_at": past}]}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_contacts")),
        "{body}"
    );

    let (status, body) = stack
        .post(&format!("/api/v1/campaigns/{paused}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let expiring = call(&stack, paused, "+15550007101", Some(in_secs(3))).await;
    let later = call(&stack, paused, "+15550007102", Some(in_secs(3600))).await;
    let started = Instant::now();
    let shown = ends(&stack, &expiring, "EXPIRED", Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "expired at its expiry (3 s), not when the campaign resumes: {took:?}"
    );
    let reason = shown["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("not placed by its expiry"), "{shown}");
    let (_, other) = stack.get(&format!("/api/v1/calls/{later}")).await;
    assert_eq!(
        other["status"], "QUEUED",
        "a call whose expiry is ahead waits: {other}"
    );
    let (_, campaign) = stack.get(&format!("/api/v1/campaigns/{paused}")).await;
    assert_eq!(campaign["state"], "paused", "never resumed: {campaign}");
    // The expired call's number is free again.
    call(&stack, paused, "+15550007101", None).await;

    // A contact's expiry and the start's: the earlier wins, per contact.
    let draft = stack
        .campaign_with(json!({"name": "contacts", "draft": true}))
        .await;
    let own = Utc::now() + chrono::Duration::minutes(30);
    let start = Utc::now() + chrono::Duration::minutes(60);
    let (status, body) = stack
        .post(
            &format!("/api/v1/campaigns/{draft}/contacts"),
            json!({"contacts": [
                {"phone_number": "+15550007201", "expires_at": own.to_rfc3339()},
                {"phone_number": "+15550007202"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let at = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let (status, body) = stack
        .post(
            &format!("/api/v1/campaigns/{draft}/start?call_contacts=true&expires_at={at}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contacts_called"]["accepted"], 2, "{body}");
    let pg = env.pg().await.expect("postgres");
    let expiries = eventually(Duration::from_secs(20), || async {
        let rows: Vec<(String, Option<chrono::DateTime<Utc>>)> = sqlx::query_as(
            "SELECT phone_number, expires_at FROM call_audit WHERE campaign_id = $1 \
             AND decision = 'placed' ORDER BY phone_number",
        )
        .bind(i64::try_from(draft).expect("id"))
        .fetch_all(&pg)
        .await
        .expect("rows");
        (rows.len() == 2).then_some(rows)
    })
    .await
    .expect("both contacts' calls placed and audited");
    let secs = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp());
    assert_eq!(
        secs(expiries[0].1),
        Some(own.timestamp()),
        "the contact's, earlier"
    );
    assert_eq!(secs(expiries[1].1), Some(start.timestamp()), "the start's");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_is_scheduled_after_the_expiry() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = Stack::start(&env, config(&env, true)).await;
    let id = stack
        .campaign_with(json!({
            "name": "retries",
            "max_attempts": 3,
            "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": ["30s"]}}}
        }))
        .await;
    let bounded = call(&stack, id, "+15550007301", Some(in_secs(10))).await;
    let open = call(&stack, id, "+15550007302", None).await;
    let shown = ends(&stack, &bounded, "EXPIRED", Duration::from_secs(20)).await;
    let reason = shown["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("its next attempt would be at"), "{shown}");
    assert_eq!(shown["attempt_count"], 1, "{shown}");
    // The other call's retry is scheduled; the bounded one's is not.
    ends(&stack, &open, "RETRYING", Duration::from_secs(20)).await;
    assert_eq!(retries_waiting(&env, id).await, 1);
    let records = audit(&stack, &bounded, 1).await;
    assert_eq!(records.len(), 1, "one attempt, placed: {records:?}");
    assert_eq!(records[0]["decision"]["outcome"], "placed");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_expiry_ends_the_call_and_every_decision_is_audited() {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = config(&env, false);
    config.dialer.max_attempts_per_number_per_day = 1;
    let stack = Stack::start(&env, config).await;
    // The window opens within two hours (an hour that starts at least an hour from now).
    let hour = (Utc::now().hour() + 2) % 24;
    let windowed = stack
        .campaign_with(json!({
            "name": "windowed", "time_zone": "UTC",
            "calling_window": {"start": format!("{hour:02}:00"), "end": format!("{hour:02}:59")}
        }))
        .await;
    let expiring = call(&stack, windowed, "+15550007401", Some(in_secs(60))).await;
    let waiting = call(&stack, windowed, "+15550007402", Some(in_secs(86_400))).await;
    let shown = ends(&stack, &expiring, "EXPIRED", Duration::from_secs(20)).await;
    let reason = shown["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("calling window opens at"), "{shown}");

    let ended = audit(&stack, &expiring, 1).await;
    let r = &ended[0];
    assert_eq!(r["decision"]["outcome"], "ended", "{r}");
    assert_eq!(r["decision"]["status"], "EXPIRED", "{r}");
    assert_eq!(r["window"]["open"], false, "{r}");
    assert!(r["window"]["opens_at"].is_string(), "{r}");
    assert_eq!(r["time"]["zones"], json!(["UTC"]), "{r}");
    assert_eq!(
        r["time"]["source"], "campaign",
        "a +1 555 number is timed in the campaign's zone: {r}"
    );
    assert!(r["campaign"]["revision"].as_u64().is_some(), "{r}");
    assert_eq!(r["campaign"]["dialling"], "dial", "{r}");
    let lists: Vec<&str> = r["dnc"]["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .map(|l| l["list"].as_str().expect("name"))
        .collect();
    assert_eq!(lists, ["global".to_owned(), format!("campaign:{windowed}")]);
    assert!(r["dialer"].as_str().is_some_and(|d| d.contains(':')), "{r}");
    assert!(r["expires_at"].is_string(), "{r}");

    let deferred = audit(&stack, &waiting, 1).await;
    assert_eq!(
        deferred[0]["decision"]["outcome"], "deferred",
        "{deferred:?}"
    );
    assert_eq!(
        deferred[0]["decision"]["until"],
        deferred[0]["window"]["opens_at"]
    );
    let (_, w) = stack.get(&format!("/api/v1/calls/{waiting}")).await;
    assert_eq!(w["status"], "QUEUED", "{w}");

    // The daily cap: the number was called once today; a second call whose expiry comes
    // before the next UTC day ends LIMITED.
    let open = stack.campaign("open").await;
    // Both calls on one UTC day, and the day not ending within the second's expiry: a run in
    // the last two minutes of the day waits for the next one.
    let left = ccm_dialer::frequency::next_day(Utc::now()) - Utc::now();
    if left < chrono::Duration::seconds(120) {
        tokio::time::sleep(
            (left + chrono::Duration::seconds(1))
                .to_std()
                .unwrap_or_default(),
        )
        .await;
    }
    let first = call(&stack, open, "+15550007501", None).await;
    ends(&stack, &first, "COMPLETED", Duration::from_secs(20)).await;
    let second = call(&stack, open, "+15550007501", Some(in_secs(60))).await;
    let limited = ends(&stack, &second, "LIMITED", Duration::from_secs(20)).await;
    let reason = limited["error_message"].as_str().unwrap_or_default();
    assert!(reason.contains("frequency limit"), "{limited}");
    let records = audit(&stack, &second, 1).await;
    assert_eq!(records[0]["decision"]["status"], "LIMITED");
    // The daily cap is the frequency limit of one local day.
    assert_eq!(
        records[0]["rules"]["counts"][0]["over"], "1d",
        "{:?}",
        records[0]
    );
    assert_eq!(
        records[0]["rules"]["counts"][0]["seen"], 1,
        "{:?}",
        records[0]
    );
    assert_eq!(records[0]["rules"]["counts"][0]["limit"], 1);
    let placed = audit(&stack, &first, 1).await;
    assert_eq!(placed[0]["decision"]["outcome"], "placed");
    assert_eq!(
        placed[0]["rules"]["counts"][0]["seen"], 0,
        "{:?}",
        placed[0]
    );

    // The campaign's export: a header row, then one parseable row per stored record.
    let (status, kind, csv) = stack
        .text(&format!("/api/v1/campaigns/{windowed}/audit.csv"))
        .await;
    assert_eq!(status, 200, "{csv}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let rows = parse_csv(&csv);
    let header = &rows[0];
    assert_eq!(header[0], "audit_id");
    assert_eq!(header.last().map(String::as_str), Some("record"));
    let pg = env.pg().await.expect("postgres");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM call_audit WHERE campaign_id = $1")
        .bind(i64::try_from(windowed).expect("id"))
        .fetch_one(&pg)
        .await
        .expect("count");
    assert_eq!(
        rows.len() - 1,
        usize::try_from(stored).expect("count"),
        "{csv}"
    );
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    for row in &rows[1..] {
        assert_eq!(row.len(), header.len(), "{row:?}");
        let record: Value = serde_json::from_str(&row[column("record")]).expect("record JSON");
        assert_eq!(
            record["call_id"].as_str(),
            Some(row[column("call_id")].as_str())
        );
        assert_eq!(row[column("zone_source")], "campaign");
    }
    let decisions: std::collections::BTreeSet<&str> = rows[1..]
        .iter()
        .map(|r| r[column("decision")].as_str())
        .collect();
    assert_eq!(decisions, ["deferred", "ended"].into(), "{csv}");
    replaying_the_records_adds_no_row(&env, &pg).await;
    stack.stop().await;
}

/// Replaying every record of `CALL_EVENTS` into the table again (a projector that starts
/// over, a redelivery) adds no row.
async fn replaying_the_records_adds_no_row(env: &TestEnv, pg: &PgPool) {
    let js = env.jetstream().await.expect("jetstream");
    let stream = js.get_stream("CALL_EVENTS").await.expect("stream");
    let info = stream.get_info().await.expect("info");
    let mut items = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        if message.subject.starts_with("calls.audit.") {
            items
                .push(ccm_projector::consume::decode_audit(seq, &message.payload).expect("record"));
        }
    }
    assert!(!items.is_empty());
    let refs: Vec<&ccm_projector::fold::Item> = items.iter().collect();
    ccm_projector::store::write_batch(pg, "CALL_EVENTS", &refs)
        .await
        .expect("replay");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM call_audit")
        .fetch_one(pg)
        .await
        .expect("count");
    let ids: std::collections::BTreeSet<String> = items
        .iter()
        .filter_map(|item| match item {
            ccm_projector::fold::Item::Audit { audit, .. } => Some(audit.audit_id()),
            _ => None,
        })
        .collect();
    let distinct = i64::try_from(ids.len()).expect("n");
    assert_eq!(total, distinct, "one row per record, replayed or not");
}

/// RFC 4180, enough for the export: quoted cells with doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && row.is_empty(),
        "the export ends with a line break"
    );
    rows
}
