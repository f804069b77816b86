//! `dead_letters`: every letter of the DLQ becomes a row, marked when an operator redrives or
//! discards it; the two facts may be applied in either order. Also the projector's own
//! metrics and probes.

use std::{net::SocketAddr, time::Duration};

use async_nats::jetstream;
use ccm_core::{
    CallEvent, CallId, CampaignId, DialRequest, EventKind, PhoneNumber, PhoneRule,
    dlq::{self, Dlq},
    metrics::{get, sample},
};
use ccm_projector::{
    consume::Source,
    fold::{Item, letter},
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use sqlx::PgPool;

use crate::support::{Running, config, fresh_database};

fn dial(campaign: u64, number: &str) -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(campaign).expect("id"),
        phone_number: PhoneNumber::parse(number, PhoneRule::Lenient).expect("phone"),
        attempt: 1,
        max_attempts: 3,
        created_at: now,
        queued_at: now,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

/// Dead-letters a dial message as the retrier does: the letter, then the call's event.
async fn dead_letter(js: &jetstream::Context, request: &DialRequest) {
    let ack = ccm_core::nats::publish_dial(js, request)
        .await
        .expect("dial");
    let payload = serde_json::to_vec(request).expect("json");
    dlq::store(
        js,
        dlq::Source {
            stream: "CALLS",
            subject: &request.subject(),
            seq: ack.sequence,
            consumer: "dial_9",
            deliveries: 5,
            reason: "carrier down",
            published: Utc::now().to_rfc3339(),
            headers: None,
            payload: payload.into(),
            parked: false,
        },
    )
    .await
    .expect("letter");
    let event = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: request.attempt,
        at: Utc::now(),
        kind: EventKind::DeadLettered {
            reason: "carrier down".into(),
        },
    };
    ccm_core::nats::publish_event(js, &event)
        .await
        .expect("event");
}

async fn state_of(pool: &PgPool, call: CallId) -> Option<(String, Option<String>, bool)> {
    sqlx::query_as::<_, (String, Option<String>, bool)>(
        "SELECT state, source_stream, resolved_at IS NOT NULL FROM dead_letters WHERE call_id = $1",
    )
    .bind(call.as_uuid())
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_appear_and_are_marked_on_redrive_and_discard() {
    let mut env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");
    let addr: SocketAddr = (
        [127, 0, 0, 1],
        ccm_tests::process::free_port().expect("port"),
    )
        .into();
    let mut config = config(&env);
    config.projector.metrics_listen = Some(addr);
    let projector = Running::start(config);

    let (redriven, discarded) = (dial(9, "+15550009001"), dial(9, "+15550009002"));
    for request in [&redriven, &discarded] {
        dead_letter(&js, request).await;
    }
    for request in [&redriven, &discarded] {
        let open = eventually(Duration::from_secs(15), || async {
            state_of(&pool, request.call_id)
                .await
                .filter(|(state, _, _)| state == "open")
        })
        .await
        .expect("the letter is projected");
        assert_eq!(open, ("open".into(), Some("CALLS".into()), false));
    }
    let (reason, deliveries, consumer): (String, i32, String) =
        sqlx::query_as("SELECT reason, deliveries, consumer FROM dead_letters WHERE call_id = $1")
            .bind(redriven.call_id.as_uuid())
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(
        (reason.as_str(), deliveries, consumer.as_str()),
        ("carrier down", 5, "dial_9")
    );
    let today: i64 = sqlx::query_scalar(
        "SELECT dlq_entries_created FROM call_metrics_daily WHERE day = (now() AT TIME ZONE 'UTC')::date",
    )
    .fetch_one(&pool)
    .await
    .expect("metrics");
    assert_eq!(today, 2, "the daily figure counts the letters");

    // The operator acts; the rows follow.
    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let letters = dlq
        .list(&dlq::Filter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    let seq_of = |call: CallId| {
        letters
            .iter()
            .find(|l| l.call_id == Some(call))
            .map(|l| l.seq)
            .expect("letter listed")
    };
    dlq.redrive(seq_of(redriven.call_id))
        .await
        .expect("redrive");
    dlq.discard(seq_of(discarded.call_id))
        .await
        .expect("discard");
    for (request, expected) in [(&redriven, "redriven"), (&discarded, "discarded")] {
        let row = eventually(Duration::from_secs(15), || async {
            state_of(&pool, request.call_id)
                .await
                .filter(|(state, _, _)| state == expected)
        })
        .await;
        assert_eq!(
            row,
            Some((expected.to_owned(), Some("CALLS".to_owned()), true)),
            "{expected}"
        );
    }

    // Metrics: calls by status and campaign, from the events.
    let (status, text) = get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "ccm_projector_calls_total",
            &[("campaign", "9"), ("status", "DEAD_LETTERED")]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ccm_projector_messages_total",
            &[("source", "DLQ"), ("result", "new")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    // Ready while PostgreSQL answers, not once it is gone; alive all along.
    assert_eq!(get(addr, "/readyz").await.expect("readyz").0, 200);
    env.local_postgres.as_mut().expect("local postgres").stop();
    let unready = eventually(Duration::from_secs(10), || async {
        let (status, body) = get(addr, "/readyz").await.ok()?;
        (status == 503).then_some(body)
    })
    .await
    .expect("/readyz turns 503 without PostgreSQL");
    assert!(unready.contains("postgres"), "{unready}");
    assert_eq!(get(addr, "/healthz").await.expect("healthz").0, 200);
    projector.abort().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_applied_before_its_letter_gives_the_same_row() {
    let env = TestEnv::start().await.expect("env");
    let request = dial(4, "+15550004444");
    let headers = |name: &str| match name {
        dlq::header::STREAM => Some("CALLS".to_owned()),
        dlq::header::SUBJECT => Some(request.subject()),
        dlq::header::SEQ => Some("12".to_owned()),
        dlq::header::REASON => Some("carrier down".to_owned()),
        dlq::header::DELIVERIES => Some("5".to_owned()),
        dlq::header::CALL => Some(request.call_id.to_string()),
        dlq::header::CAMPAIGN => Some("4".to_owned()),
        dlq::header::DEAD_AT => Some("2026-01-02T03:04:05Z".to_owned()),
        _ => None,
    };
    let payload = serde_json::to_vec(&request).expect("json");
    let letter = Item::DeadLetter {
        seq: 7,
        letter: letter(&headers, &payload, 0),
    };
    let event = CallEvent {
        call_id: request.call_id,
        campaign_id: request.campaign_id,
        attempt: 1,
        at: "2026-01-02T04:00:00Z".parse().expect("time"),
        kind: EventKind::Failed {
            reason: "Dead letter #7 discarded by an operator".into(),
        },
    };
    let resolution = Item::Event {
        seq: 30,
        payload: serde_json::to_string(&event).expect("json"),
        event,
        resolves: Some(7),
    };
    let mut dumps = Vec::new();
    for (n, order) in [[0, 1], [1, 0], [0, 1]].iter().enumerate() {
        let pool = fresh_database(&env, &format!("order_{n}")).await;
        // The third database gets everything twice: a redelivery changes nothing.
        let times = if n == 2 { 2 } else { 1 };
        for _ in 0..times {
            for index in order {
                let (source, item) = match index {
                    0 => (Source::DeadLetters, &letter),
                    _ => (Source::Events, &resolution),
                };
                ccm_projector::store::write_batch(&pool, source.stream(), &[item])
                    .await
                    .expect("write");
            }
        }
        let row: String =
            sqlx::query_scalar("SELECT to_jsonb(d)::text FROM dead_letters d WHERE dlq_seq = 7")
                .fetch_one(&pool)
                .await
                .expect("row");
        dumps.push(row);
    }
    assert_eq!(dumps[0], dumps[1], "order does not matter");
    assert_eq!(dumps[0], dumps[2], "applying twice changes nothing");
    let row: serde_json::Value = serde_json::from_str(&dumps[0]).expect("json");
    assert_eq!(row["state"], "discarded");
    assert_eq!(row["source_stream"], "CALLS");
    assert_eq!(row["reason"], "carrier down");
    assert_eq!(row["campaign_id"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_that_leaves_the_dlq_without_an_event_is_marked_removed() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");
    let projector = Running::start(config(&env));
    // An event nobody could decode: its letter belongs to no call, so discarding it publishes
    // no event.
    dlq::store(
        &js,
        dlq::Source {
            stream: "CALL_EVENTS",
            subject: "calls.event.3.x",
            seq: 41,
            consumer: "projector_events",
            deliveries: 10,
            reason: "undecodable",
            published: Utc::now().to_rfc3339(),
            headers: None,
            payload: "not json".into(),
            parked: false,
        },
    )
    .await
    .expect("letter");
    let dlq = Dlq::open(js.clone()).await.expect("dlq");
    let seq = dlq
        .list(&dlq::Filter {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .first()
        .map(|l| l.seq)
        .expect("listed");
    let state = |expected: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM dead_letters WHERE dlq_seq = $1")
                .bind(i64::try_from(seq).expect("seq"))
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
                .filter(|s| s == expected)
        }
    };
    eventually(Duration::from_secs(15), || state("open"))
        .await
        .expect("the letter is projected");
    dlq.discard(seq).await.expect("discard");
    eventually(ccm_projector::sweep::EVERY * 3, || state("removed"))
        .await
        .expect("the sweep finds it gone");
    projector.stop().await;
}
