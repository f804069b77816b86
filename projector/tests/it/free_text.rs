//! Nothing a client or a carrier can put in a free-text field poisons the projector: every
//! such field of every message kind is filled with generated unicode (NUL, control
//! characters, any scalar value, long text) and each message is stored, not refused.
//! Issue 16: a contact's custom field with a NUL made the projector NAK its call's messages
//! until the retrier dead-lettered the call.

use std::collections::BTreeMap;

use ccm_core::{
    CallEvent, CallId, CampaignId, DialRequest, EventKind, OutcomeSource, OutcomeStatus,
    PhoneNumber, PhoneRule,
};
use ccm_projector::{consume::Source, consume::decode_payload, fold::Item, nul, store};
use ccm_tests::TestEnv;
use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::PgPool;

use crate::support;

/// Text of any unicode scalar values, weighted toward what Postgres and JSON find hard.
fn text(rng: &mut StdRng) -> String {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(200..600),
        _ => rng.random_range(1..24),
    };
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 | 1 => '\0',
            2 => char::from_u32(rng.random_range(1..0x20)).expect("control"),
            3 => ['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{feff}', '\u{fffd}']
                [rng.random_range(0..7)],
            4 => char::from_u32(rng.random_range(0x1_0000..0x11_0000)).unwrap_or('😀'),
            5 | 6 => loop {
                if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
                    break c;
                }
            },
            _ => char::from(rng.random_range(b' '..=b'~')),
        })
        .collect()
}

fn fields(rng: &mut StdRng) -> BTreeMap<String, String> {
    (0..rng.random_range(0..5))
        .map(|_| (text(rng), text(rng)))
        .collect()
}

fn opt(rng: &mut StdRng) -> Option<String> {
    rng.random_bool(0.8).then(|| text(rng))
}

/// Decodes `value` as the projector would and writes it alone; panics if it is refused.
async fn store_one(
    pool: &PgPool,
    source: Source,
    seq: u64,
    value: &impl serde::Serialize,
    seed: u64,
) {
    let payload = serde_json::to_vec(value).expect("encode");
    let item: Item = decode_payload(source, seq, &payload, true)
        .unwrap_or_else(|e| panic!("seed {seed}: {source:?} #{seq} not decoded: {e}"))
        .expect("an item");
    store::write_batch(pool, source.stream(), &[&item])
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {source:?} #{seq} refused: {e}"));
}

fn clean(map: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| {
            (
                nul::replaced_str(k).into_owned(),
                nul::replaced_str(v).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_free_text_in_every_field_is_stored() {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with CCM_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("test env");
    let pool = support::fresh_database(&env, "free_text").await;

    let cases = 150u64;
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut expected = Vec::new();
    for case in 0..cases {
        let campaign = CampaignId::new(case % 7 + 1).expect("campaign");
        let phone =
            PhoneNumber::parse(&format!("+1415{:07}", case), PhoneRule::Lenient).expect("phone");
        let now = Utc::now();
        let custom_fields = fields(&mut rng);
        let request = DialRequest {
            call_id: CallId::new(),
            campaign_id: campaign,
            phone_number: phone.clone(),
            attempt: 1,
            max_attempts: 3,
            created_at: now,
            queued_at: now,
            custom_fields: custom_fields.clone(),
            expires_at: None,
            alternate: None,
            callback: None,
        };
        store_one(&pool, Source::Calls, next(), &request, seed).await;
        let event = |kind| CallEvent {
            call_id: request.call_id,
            campaign_id: campaign,
            attempt: 1,
            at: Utc::now(),
            kind,
        };
        let kinds = [
            EventKind::Dialing {
                phone_number: phone.clone(),
                max_attempts: 3,
                created_at: now,
                custom_fields: custom_fields.clone(),
                expires_at: None,
                alternate: None,
            },
            EventKind::Outcome {
                status: OutcomeStatus::Failed,
                source: OutcomeSource::Carrier,
                raw_status: opt(&mut rng),
                duration_secs: Some(1),
                external_call_id: opt(&mut rng),
                reason: opt(&mut rng),
                callback: None,
            },
            EventKind::Retrying {
                next_retry_at: now,
                reason: text(&mut rng),
            },
            match case % 3 {
                0 => EventKind::Failed {
                    reason: text(&mut rng),
                },
                1 => EventKind::Cancelled {
                    reason: text(&mut rng),
                },
                _ => EventKind::DeadLettered {
                    reason: text(&mut rng),
                },
            },
        ];
        for kind in kinds {
            store_one(&pool, Source::Events, next(), &event(kind), seed).await;
        }
        let contact = ccm_core::campaign::Contact {
            expires_at: None,
            campaign_id: campaign,
            phone_number: phone,
            created_at: now,
            time_zone: opt(&mut rng),
            postal_code: None,
            fields: fields(&mut rng),
            numbers: Vec::new(),
        };
        store_one(&pool, Source::Contacts, next(), &contact, seed).await;
        let document = serde_json::json!({
            "id": campaign, "name": text(&mut rng), "description": text(&mut rng),
            "is_active": true, "max_concurrent_calls": 1, "max_attempts": 3,
            "created_at": now, "updated_at": now, "time_zone": opt(&mut rng),
        });
        store_one(&pool, Source::Campaigns, next(), &document, seed).await;
        expected.push((request.call_id, clean(&custom_fields)));
    }

    // Every call row is there, its custom fields as sent but for NULs.
    for (call, fields) in expected {
        let stored: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT custom_fields FROM calls WHERE call_id = $1")
                .bind(call.as_uuid())
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: call {call} has no row: {e}"));
        let stored: BTreeMap<String, String> = stored
            .map(|v| serde_json::from_value(v).expect("a map"))
            .unwrap_or_default();
        assert_eq!(stored, fields, "seed {seed}: call {call}");
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        events,
        i64::try_from(cases * 5).expect("small"),
        "seed {seed}"
    );
}
