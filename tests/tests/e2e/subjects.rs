//! A person's data through the whole stack: the export of a number lists its contact (with
//! custom fields), its calls with their retries and histories, its do-not-call entry and
//! the webhook deliveries that named it; its erase leaves it nowhere (every stream, bucket
//! and table read afterwards) but where the report says it was kept and why.

use std::time::Duration;

use axum::{Router, http::StatusCode, routing::post};
use ccm_core::config::{CarrierConfig, SimCarrierConfig};
use ccm_tests::{TestEnv, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    stack::Stack,
    subjects_walk::{Forms, walk},
};

/// The person, in E.164 and national forms, and a neighbour whose data must stay.
const PERSON: &str = "+14155550123";
const PERSON_FORMS: &[&str] = &[PERSON, "14155550123", "4155550123", "(415) 555-0123"];
const NEIGHBOUR: &str = "+14155550199";

const CSV: &str = "phone_number,first_name,plan\n\
                   +14155550123,Jeanne,gold\n\
                   +14155550199,Sam,silver\n";

struct Setup {
    env: TestEnv,
    stack: Stack,
    campaign: u64,
    person_call: String,
    _webhooks: DropGuard,
}

/// A campaign over the two contacts, each called twice (the first attempt rings out and is
/// retried), a receiver subscribed to it, and the person put on the campaign's do-not-call
/// list once the calls have ended.
async fn setup() -> Setup {
    let env = TestEnv::start().await.expect("test environment");
    let mut config = env.config();
    let mut policy = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut policy,
        b"status_retry_rules:\n  RNR: {should_retry: true, increment_attempt: true, backoff: [1s]}\ntimezone: UTC\n",
    )
    .expect("write");
    config.retrier.policy_file = policy.path().to_owned();
    std::mem::forget(policy);
    config.dialer.carrier = CarrierConfig::Sim(SimCarrierConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
    });
    config.webhooks.allow_private_targets = true;
    config.webhooks.backoff_min_ms = 50;
    config.webhooks.backoff_max_ms = 300;
    let stack = Stack::start(&env, config.clone()).await;
    let stop = CancellationToken::new();
    tokio::spawn(ccm_webhooks::run(config, stop.clone()));

    let hook = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let app = Router::new().route("/hook", post(|| async { StatusCode::OK }));
    tokio::spawn(async move { axum::serve(hook, app).await });

    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/campaigns",
            json!({"name": "subjects", "draft": true, "max_attempts": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let campaign = body["id"].as_u64().expect("id");
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": hook_url, "campaign_ids": [campaign]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, imported) = stack
        .raw(
            Method::POST,
            &format!("/api/v1/campaigns/{campaign}/contacts/import"),
            "text/csv",
            CSV,
        )
        .await;
    assert_eq!(imported["imported"], 2, "{imported}");
    let (status, body) = stack
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{campaign}/start?call_contacts=true"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let pg = env.pg().await.expect("postgres");
    let ended = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE campaign_id = $1 AND phase_rank >= 5 \
             AND attempt_count = 2",
        )
        .bind(campaign as i64)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n == 2).then_some(())
    })
    .await;
    assert!(ended.is_some(), "both calls end after two attempts");
    let person_call: uuid::Uuid =
        sqlx::query_scalar("SELECT call_id FROM calls WHERE phone_number = $1")
            .bind(PERSON)
            .fetch_one(&pg)
            .await
            .expect("the person's call");
    let delivered = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_messages WHERE call_id = $1 AND state = 'delivered'",
        )
        .bind(person_call)
        .fetch_one(&pg)
        .await
        .ok()?;
        (n >= 2).then_some(())
    })
    .await;
    let rows: Vec<(String, String, i32, Option<String>)> =
        sqlx::query_as("SELECT event_type, state, attempts, last_error FROM webhook_messages")
            .fetch_all(&pg)
            .await
            .expect("deliveries");
    assert!(
        delivered.is_some(),
        "the person's call events are delivered: {rows:?}"
    );
    // A consumer gave up on the person's first dial message: its parked record names them.
    let seq: i64 = sqlx::query_scalar(
        "SELECT seq FROM call_events WHERE call_id = $1 AND stream = 'CALLS' ORDER BY seq LIMIT 1",
    )
    .bind(person_call)
    .fetch_one(&pg)
    .await
    .expect("the dial message");
    let js = env.jetstream().await.expect("jetstream");
    let calls = js.get_stream("CALLS").await.expect("CALLS");
    let message = calls
        .get_raw_message(seq as u64)
        .await
        .expect("dial message");
    ccm_core::dlq::store(
        &js,
        ccm_core::dlq::Source {
            stream: "CALLS",
            subject: message.subject.as_str(),
            seq: seq as u64,
            consumer: "projector_calls",
            deliveries: 5,
            reason: "max deliveries",
            published: chrono::Utc::now().to_rfc3339(),
            headers: Some(&message.headers),
            payload: message.payload.clone(),
            parked: true,
        },
    )
    .await
    .expect("park");
    let projected = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE call_id = $1")
            .bind(person_call)
            .fetch_one(&pg)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert!(projected.is_some(), "the parked record is projected");
    let (status, body) = stack
        .send(
            Method::POST,
            "/api/v1/dnc",
            json!({"phone_numbers": [PERSON], "campaign_id": campaign, "reason": "asked"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Setup {
        env,
        stack,
        campaign,
        person_call: person_call.to_string(),
        _webhooks: stop.drop_guard(),
    }
}

fn path(action: &str, phone: &str) -> String {
    format!("/api/v1/subjects/{}/{action}", phone.replace('+', "%2B"))
}

/// Checks that an export of the person is complete.
fn check_export(export: &Value, setup: &Setup) {
    assert_eq!(export["phone_number"], PERSON);
    let contacts = export["contacts"].as_array().expect("contacts");
    assert_eq!(contacts.len(), 1, "{export:#}");
    assert_eq!(contacts[0]["value"]["fields"]["first_name"], "Jeanne");
    let calls = export["tables"]["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "only the person's call: {calls:?}");
    assert_eq!(calls[0]["call_id"], setup.person_call.as_str());
    assert_eq!(calls[0]["custom_fields"]["plan"], "gold");
    let events = export["tables"]["call_events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"retrying"),
        "the retry is in the history: {kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "dialing").count() == 2,
        "both attempts: {kinds:?}"
    );
    let audit = export["tables"]["call_audit"].as_array().expect("audit");
    assert!(
        audit.iter().filter(|r| r["decision"] == "placed").count() == 2,
        "both attempts' admission records: {audit:?}"
    );
    let dnc = export["do_not_call"].as_array().expect("dnc");
    assert_eq!(dnc.len(), 1, "{dnc:?}");
    assert_eq!(dnc[0]["key"], format!("{}.14155550123", setup.campaign));
    assert!(export["consent"].as_array().expect("consent").is_empty());
    let deliveries = export["tables"]["webhook_messages"]
        .as_array()
        .expect("deliveries");
    assert!(deliveries.len() >= 2, "{deliveries:?}");
    assert!(
        deliveries
            .iter()
            .all(|d| d["call_id"] == setup.person_call.as_str())
    );
    assert!(
        !export["tables"]["webhook_attempts"]
            .as_array()
            .expect("attempts")
            .is_empty()
    );
    let letters = export["tables"]["dead_letters"]
        .as_array()
        .expect("letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    for stream in ["CALLS", "CALL_EVENTS", "DLQ", "KV_contacts", "KV_dnc"] {
        assert!(
            export["held_in"][stream].as_u64().unwrap_or(0) > 0,
            "{stream}: {}",
            export["held_in"]
        );
    }
    // Nothing of the neighbour.
    assert!(!export.to_string().contains("14155550199"), "{export:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_lists_contacts_calls_retries_do_not_call_and_webhook_deliveries() {
    let setup = setup().await;
    let (status, export) = setup
        .stack
        .send(Method::GET, &path("export", PERSON), Value::Null)
        .await;
    assert_eq!(status, 200, "{export}");
    check_export(&export, &setup);
    let (status, body) = setup
        .stack
        .send(Method::GET, &path("export", "not a number"), Value::Null)
        .await;
    assert_eq!(status, 400, "{body}");
    setup.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_erase_the_number_is_nowhere_but_where_the_report_says_it_was_kept() {
    let setup = setup().await;
    let (status, export) = setup
        .stack
        .send(Method::GET, &path("export", PERSON), Value::Null)
        .await;
    assert_eq!(status, 200, "{export}");
    check_export(&export, &setup);
    let js = setup.env.jetstream().await.expect("jetstream");
    let pg = setup.env.pg().await.expect("postgres");
    // An audit record from before paths carried a number's pseudonym.
    let record = json!({"at": "2026-12-01T00:00:00Z", "token": "00", "role": "admin",
        "method": "DELETE", "route": "/api/v1/dnc/{phone}",
        "path": "/api/v1/dnc/%2B14155550123", "status": 204});
    js.publish("audit.admin", record.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let forms = Forms::new(PERSON_FORMS);
    let before = walk(&js, &pg, &forms).await;
    assert!(
        before.len() > 10,
        "the number is held widely before: {before:?}"
    );

    let (status, report) = setup
        .stack
        .send(Method::POST, &path("erase", PERSON), Value::Null)
        .await;
    assert_eq!(status, 200, "{report}");
    println!("report: {report:#}");
    let erased = |store: &str, name: &str| {
        report["erased"]
            .as_array()
            .expect("erased")
            .iter()
            .filter(|c| c["store"] == store && c["name"] == name)
            .map(|c| c["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    for (store, name) in [
        ("stream", "CALLS"),
        ("stream", "CALL_EVENTS"),
        ("stream", "DLQ"),
        ("stream", "AUDIT"),
        ("table", "dead_letters"),
        ("bucket", "contacts"),
        ("bucket", "dnc"),
        ("table", "calls"),
        ("table", "call_events"),
        ("table", "call_audit"),
        ("table", "phone_numbers"),
        ("table", "webhook_messages"),
    ] {
        assert!(erased(store, name) > 0, "{store} {name}: {report:#}");
    }
    assert_eq!(report["calls"], json!([setup.person_call]));

    // The erase's own audit record names the number by its pseudonym.
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, records) = setup
            .stack
            .send(Method::GET, "/api/v1/audit?limit=1000", Value::Null)
            .await;
        records
            .as_array()?
            .iter()
            .any(|r| r["route"] == "/api/v1/subjects/{phone}/erase")
            .then_some(records)
    })
    .await
    .expect("the erase is in the audit log");
    let subject = report["subject"].as_str().expect("subject");
    assert!(recorded.to_string().contains(&format!("subject:{subject}")));
    // The old record stays, with the number replaced by its pseudonym.
    assert!(
        recorded
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["path"] == format!("/api/v1/dnc/erased:{subject}")),
        "{recorded:#}"
    );

    let after = walk(&js, &pg, &forms).await;
    let kept: Vec<(String, String, String)> = report["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .map(|k| {
            assert!(!k["why"].as_str().unwrap_or_default().is_empty(), "{k}");
            (
                k["store"].as_str().unwrap_or_default().to_owned(),
                k["name"].as_str().unwrap_or_default().to_owned(),
                k["what"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for found in &after {
        let shown = found.what.replace("14155550123", "<number>");
        assert!(
            kept.contains(&(found.store.clone(), found.name.clone(), shown)),
            "{found:?} is not in the report's kept list {kept:?}"
        );
    }
    assert_eq!(
        after.len(),
        1,
        "only the global do-not-call entry stays: {after:?}"
    );
    assert_eq!(after[0].name, "dnc");
    assert_eq!(after[0].what, "global.14155550123");

    // The neighbour is untouched, and the person is never called again.
    let neighbour = walk(&js, &pg, &Forms::new(&[NEIGHBOUR, "14155550199"])).await;
    assert!(
        neighbour.iter().any(|f| f.name == "calls")
            && neighbour.iter().any(|f| f.name == "contacts"),
        "{neighbour:?}"
    );
    let (status, body) = setup
        .stack
        .send(
            Method::POST,
            "/api/v1/calls",
            json!({"campaign_id": setup.campaign, "phone_number": PERSON}),
        )
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    // The call's row stays, anonymised, so the campaign's figures do not change.
    let (status, call) = setup
        .stack
        .send(
            Method::GET,
            &format!("/api/v1/calls/{}", setup.person_call),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{call}");
    assert!(call["phone_number"].is_null(), "{call}");
    setup.stack.stop().await;
}
