//! `call_audit`: every admission audit record of `CALL_EVENTS` (`calls.audit.…`) becomes one
//! row, whatever happens on the way: a record published again under another id (two stream
//! messages), the projector aborted mid-way and started again (redelivery of what it had not
//! acknowledged), a record applied twice. Generated, seeded.

use std::{collections::BTreeMap, time::Duration};

use ccm_core::{
    CallId, CallStatus, CampaignId, DialRequest, PhoneNumber, PhoneRule,
    attempt_audit::{AttemptAudit, AuditDecision, CampaignSeen, Checks, DncListSeen, DncSeen},
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use crate::support::{self, Published, Running};

fn record(rng: &mut rand::rngs::StdRng, i: usize) -> AttemptAudit {
    let request = DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(rng.random_range(1..4)).expect("id"),
        phone_number: PhoneNumber::parse(&format!("+1415{:07}", i), PhoneRule::Lenient)
            .expect("phone"),
        attempt: rng.random_range(1..3),
        max_attempts: 3,
        created_at: Utc::now(),
        queued_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: rng
            .random_bool(0.5)
            .then(|| Utc::now() + chrono::Duration::hours(1)),
        alternate: None,
        callback: None,
    };
    let decision = match rng.random_range(0..3) {
        0 => AuditDecision::Placed,
        1 => AuditDecision::Deferred {
            until: Utc::now() + chrono::Duration::minutes(rng.random_range(1..600)),
        },
        _ => AuditDecision::Ended {
            status: CallStatus::Expired,
            reason: "not placed by its expiry".into(),
        },
    };
    let checks = Checks {
        campaign: CampaignSeen {
            revision: Some(rng.random_range(1..100)),
            dialling: "dial".into(),
        },
        dnc: Some(DncSeen {
            lists: vec![DncListSeen {
                list: "global".into(),
                revision: None,
                listed: false,
            }],
        }),
        ..Checks::default()
    };
    AttemptAudit::of(
        &request,
        rng.random_range(0..3),
        "host:1",
        decision,
        checks,
        Utc::now(),
    )
}

async fn rows(pool: &PgPool) -> Vec<(String, String, serde_json::Value)> {
    sqlx::query_as("SELECT audit_id, decision, record FROM call_audit ORDER BY audit_id")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_audit_record_is_one_row_through_repeats_restarts_and_replays() {
    let seed: u64 = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (CCM_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");

    let records: Vec<AttemptAudit> = (0..300).map(|i| record(&mut rng, i)).collect();
    let mut messages = Vec::new();
    for r in &records {
        let payload = serde_json::to_vec(r).expect("json");
        // The original, and up to two copies under ids of their own (beyond the duplicate
        // window a re-send is a new stream message).
        for copy in 0..=rng.random_range(0..=2) {
            messages.push(Published {
                subject: r.subject(),
                msg_id: format!("{}/{copy}", r.audit_id()),
                payload: payload.clone(),
            });
        }
    }
    let (first, rest) = messages.split_at(messages.len() / 2);
    support::publish_all(&js, first).await;
    // Aborted while it works through the first half: what it had not acknowledged comes again.
    let projector = Running::start(support::config(&env));
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    projector.abort().await;
    support::publish_all(&js, rest).await;
    let projector = Running::start(support::config(&env));
    let want: BTreeMap<String, &AttemptAudit> = records.iter().map(|r| (r.audit_id(), r)).collect();
    // What the aborted projector held un-acknowledged comes back after the consumer's
    // `ack_wait` (30 s).
    let done = eventually(Duration::from_secs(75), || async {
        (rows(&pool).await.len() >= want.len()).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "seed {seed}: {} rows",
        rows(&pool).await.len()
    );
    projector.stop().await;

    // Applied once more, all of it (a replay): nothing changes.
    let items: Vec<ccm_projector::fold::Item> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            ccm_projector::consume::decode_audit(1_000_000 + i as u64, &m.payload).expect("decode")
        })
        .collect();
    let refs: Vec<&ccm_projector::fold::Item> = items.iter().collect();
    let written = ccm_projector::store::write_batch(&pool, "CALL_EVENTS", &refs)
        .await
        .expect("replay");
    assert_eq!(written.new, 0, "seed {seed}: a replay adds no row");

    let stored = rows(&pool).await;
    assert_eq!(stored.len(), want.len(), "seed {seed}: one row per record");
    for (id, decision, record) in stored {
        let original = want.get(&id).expect("a record's row");
        assert_eq!(decision, original.decision.name(), "seed {seed}");
        let back: AttemptAudit = serde_json::from_value(record).expect("stored record");
        assert_eq!(&back, *original, "seed {seed}: stored as published");
    }
}
