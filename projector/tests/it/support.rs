//! What the projector tests (and `examples/bench.rs`) share: call lives to publish, a running
//! projector, table dumps and a reference database.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use ccm_core::{
    CallEvent, CallId, CampaignId, Config, DialRequest, EventKind, OutcomeSource, OutcomeStatus,
    PhoneNumber, PhoneRule,
};
use ccm_projector::{consume::Source, fold::Item};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub subject: String,
    pub msg_id: String,
    pub payload: Vec<u8>,
}

impl Published {
    fn dial(request: &DialRequest) -> Self {
        Self {
            subject: request.subject(),
            msg_id: request.msg_id(),
            payload: serde_json::to_vec(request).expect("encode"),
        }
    }

    fn event(event: &CallEvent) -> Self {
        Self {
            subject: event.subject(),
            msg_id: event.msg_id(),
            payload: serde_json::to_vec(event).expect("encode"),
        }
    }

    /// Whether it goes to `CALLS` (else `CALL_EVENTS`).
    pub fn is_dial(&self) -> bool {
        self.subject.starts_with("calls.dial.")
    }
}

/// The messages of one call's life, in order; four shapes in turn: picked at once; RNR then
/// picked on attempt 2; failed for good; dead-lettered.
pub fn life(index: usize, campaign: u64, start: DateTime<Utc>) -> Vec<Published> {
    let call = CallId::new();
    let campaign = CampaignId::new(campaign).expect("campaign id");
    let phone = PhoneNumber::parse(
        &format!("+1415{:07}", index % 10_000_000),
        PhoneRule::Lenient,
    )
    .expect("phone");
    let t = |ms: i64| start + TimeDelta::milliseconds(ms);
    let dial = |attempt: u32, at| DialRequest {
        call_id: call,
        campaign_id: campaign,
        phone_number: phone.clone(),
        attempt,
        max_attempts: 3,
        created_at: start,
        queued_at: at,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    };
    let event = |attempt: u32, at, kind| CallEvent {
        call_id: call,
        campaign_id: campaign,
        attempt,
        at,
        kind,
    };
    let dialing = EventKind::Dialing {
        phone_number: phone.clone(),
        max_attempts: 3,
        created_at: start,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    };
    let outcome = |status, secs: u32, attempt: u32| EventKind::Outcome {
        status,
        source: OutcomeSource::Carrier,
        raw_status: Some(format!("{status}").to_lowercase()),
        duration_secs: Some(secs),
        external_call_id: Some(format!("CA-{index}-{attempt}")),
        reason: (status == OutcomeStatus::Failed).then(|| "carrier failed".to_owned()),
        callback: None,
    };
    // A call lasts its duration plus a second, so concurrency is visible at second resolution.
    let secs = u32::try_from(index % 90).expect("small");
    let end = |from: i64, secs: u32| from + (i64::from(secs) + 1) * 1000;
    let mut out = vec![Published::dial(&dial(1, t(0)))];
    let mut events = Vec::new();
    match index % 4 {
        0 => {
            events.push(event(1, t(10), dialing));
            events.push(event(
                1,
                t(end(10, secs)),
                outcome(OutcomeStatus::Picked, secs, 1),
            ));
            events.push(event(1, t(end(10, secs) + 10), EventKind::Completed));
        }
        1 => {
            events.push(event(1, t(10), dialing.clone()));
            events.push(event(1, t(end(10, 0)), outcome(OutcomeStatus::Rnr, 0, 1)));
            let next = t(5000);
            events.push(event(
                1,
                t(end(10, 0) + 10),
                EventKind::Retrying {
                    next_retry_at: next,
                    reason: "RNR".into(),
                },
            ));
            out.extend(events.drain(..).map(|e| Published::event(&e)));
            out.push(Published::dial(&dial(2, next)));
            events.push(event(2, t(5010), dialing));
            events.push(event(
                2,
                t(end(5010, secs)),
                outcome(OutcomeStatus::Picked, secs, 2),
            ));
            events.push(event(2, t(end(5010, secs) + 10), EventKind::Completed));
        }
        2 => {
            events.push(event(1, t(10), dialing));
            events.push(event(
                1,
                t(end(10, 0)),
                outcome(OutcomeStatus::Failed, 0, 1),
            ));
            events.push(event(
                1,
                t(end(10, 0) + 10),
                EventKind::Failed {
                    reason: "permanent".into(),
                },
            ));
        }
        _ => events.push(event(
            1,
            t(10),
            EventKind::DeadLettered {
                reason: "max deliver".into(),
            },
        )),
    }
    out.extend(events.iter().map(Published::event));
    out
}

/// The lives of `calls` calls, interleaved step by step as a busy system would publish them.
pub fn lives(calls: usize, campaign: u64, start: DateTime<Utc>) -> Vec<Published> {
    let all: Vec<Vec<Published>> = (0..calls).map(|i| life(i, campaign, start)).collect();
    let longest = all.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|step| all.iter().filter_map(move |l| l.get(step).cloned()))
        .collect()
}

/// Publishes everything, pipelined in windows of 1,000 un-acknowledged publishes.
pub async fn publish_all(js: &jetstream::Context, messages: &[Published]) {
    for window in messages.chunks(1000) {
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(window.len());
        for m in window {
            let publish = jetstream::message::PublishMessage::build()
                .payload(m.payload.clone().into())
                .message_id(&m.msg_id);
            acks.push(
                js.send_publish(m.subject.clone(), publish)
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }
}

/// A projector running in this process.
pub struct Running {
    pub handle: JoinHandle<Result<(), ccm_projector::ProjectorError>>,
    pub shutdown: CancellationToken,
}

impl Running {
    pub fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ccm_projector::run(config, shutdown.clone()));
        Self { handle, shutdown }
    }

    /// Stops it cleanly and checks it did not fail.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("projector task")
            .expect("projector");
    }

    /// Aborts it wherever it is (a crash, as far as this process can tell).
    pub async fn abort(self) {
        self.handle.abort();
        let _ = self.handle.await;
        self.shutdown.cancel();
    }
}

/// Rows in `call_events`.
pub async fn event_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Waits until `call_events` holds `n` rows; panics after `timeout`.
pub async fn wait_for_rows(pool: &PgPool, n: usize, timeout: Duration) {
    let n = i64::try_from(n).expect("count");
    let reached = ccm_tests::eventually(timeout, || async {
        (event_rows(pool).await >= n).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "only {} of {n} rows projected",
        event_rows(pool).await
    );
}

/// Every table of the read model as JSON, in key order, without `projected_at` (when a row
/// was written, the one thing a replay legitimately changes).
pub async fn dump(pool: &PgPool) -> Vec<(&'static str, String)> {
    let tables = [
        ("campaigns", "id"),
        ("calls", "call_id"),
        ("call_events", "stream, seq"),
        ("daily_metrics", "day, campaign_id"),
        ("call_concurrency", "second"),
        ("call_metrics_daily", "day"),
    ];
    let mut out = Vec::new();
    for (table, order) in tables {
        let sql = format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'projected_at' ORDER BY {order}), '[]')::text
             FROM {table} t"
        );
        let json: String = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .expect("dump");
        out.push((table, json));
    }
    out
}

/// Every message of `CALLS` and `CALL_EVENTS`, decoded as the projector decodes them.
pub async fn stored_items(js: &jetstream::Context) -> Vec<(Source, Item)> {
    let mut items = Vec::new();
    for (name, source) in [("CALLS", Source::Calls), ("CALL_EVENTS", Source::Events)] {
        let mut stream = js.get_stream(name).await.expect("stream");
        let last = stream.info().await.expect("info").state.last_sequence;
        for seq in 1..=last {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            if let Ok(Some(item)) =
                ccm_projector::consume::decode_payload(source, seq, &message.payload, true)
            {
                items.push((source, item));
            }
        }
    }
    items
}

/// A second database on the test's server with the read model migrated into it.
pub async fn fresh_database(env: &ccm_tests::TestEnv, name: &str) -> PgPool {
    let mut conn = PgConnection::connect(&env.database_url)
        .await
        .expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create db");
    let (base, _) = env
        .database_url
        .rsplit_once('/')
        .expect("url with a database");
    let pool = PgPool::connect(&format!("{base}/{name}"))
        .await
        .expect("connect new db");
    ccm_projector::MIGRATOR.run(&pool).await.expect("migrate");
    pool
}

/// Writes `items` to `pool` in batches of `batch` as the projector would.
pub async fn write_items(pool: &PgPool, items: &[(Source, Item)], batch: usize) {
    for chunk in items.chunks(batch.max(1)) {
        for source in [Source::Calls, Source::Events] {
            let of_source: Vec<&Item> = chunk
                .iter()
                .filter(|(s, _)| *s == source)
                .map(|(_, i)| i)
                .collect();
            ccm_projector::store::write_batch(pool, source.stream(), &of_source)
                .await
                .expect("write batch");
        }
    }
}

/// The tables written from all stored messages in one go into a fresh database: what any
/// correct projection must end up with.
pub async fn reference_dump(env: &ccm_tests::TestEnv, name: &str) -> Vec<(&'static str, String)> {
    let js = env.jetstream().await.expect("jetstream");
    let items = stored_items(&js).await;
    let pool = fresh_database(env, name).await;
    write_items(&pool, &items, usize::MAX).await;
    dump(&pool).await
}

/// A config for tests.
pub fn config(env: &ccm_tests::TestEnv) -> Config {
    env.config()
}
