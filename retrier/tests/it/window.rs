//! A retry due outside the campaign's calling window is scheduled at the window's opening,
//! and every retry keeps the contact's custom fields.

use std::time::Duration;

use ccm_core::{
    CallEvent, Campaign, CustomFields, EventKind, OutcomeSource, OutcomeStatus, topology::names,
};
use ccm_tests::{TestEnv, eventually};
use chrono::{Days, Utc};
use serde_json::json;

use crate::support::{Retrier, events, request, retry_entry};

const HOUR_LATER: &str = "status_retry_rules:\n  RNR: {should_retry: true, backoff: [1h]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_in_a_blackout_moves_to_the_opening_and_keeps_the_custom_fields() {
    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let outcome_at = Utc::now();
    // The day the policy's retry (an hour after the outcome) falls on, in UTC, is a blackout
    // date, so the campaign (open all day otherwise) next opens at the following midnight.
    let blackout = (outcome_at + chrono::Duration::hours(1)).date_naive();
    let opening = blackout
        .checked_add_days(Days::new(1))
        .expect("next day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let campaign: Campaign = serde_json::from_value(json!({
        "id": 12, "name": "windowed", "is_active": true, "max_concurrent_calls": 5,
        "max_attempts": 3, "created_at": outcome_at, "updated_at": outcome_at,
        "time_zone": "UTC", "blackout_dates": [blackout],
    }))
    .expect("campaign");
    let campaigns = js
        .get_key_value(names::KV_CAMPAIGNS)
        .await
        .expect("campaigns bucket");
    campaigns
        .put("12", serde_json::to_vec(&campaign).expect("json").into())
        .await
        .expect("campaign stored");
    let retrier = Retrier::start(&env, HOUR_LATER);

    // A +1 number of an area code the prefix map does not place: the campaign's zone (UTC)
    // applies.
    let dial = request(12, "+15550000123", 1);
    let fields: CustomFields = [("first_name".to_owned(), "Jeanne".to_owned())].into();
    let dialing = CallEvent {
        call_id: dial.call_id,
        campaign_id: dial.campaign_id,
        attempt: 1,
        at: outcome_at,
        kind: EventKind::Dialing {
            phone_number: dial.phone_number.clone(),
            max_attempts: 3,
            created_at: dial.created_at,
            custom_fields: fields.clone(),
            expires_at: None,
            alternate: None,
        },
    };
    ccm_core::nats::publish_event(&js, &dialing)
        .await
        .expect("dialing");
    let outcome = CallEvent {
        kind: EventKind::Outcome {
            status: OutcomeStatus::Rnr,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
            callback: None,
        },
        ..dialing.clone()
    };
    ccm_core::nats::publish_event(&js, &outcome)
        .await
        .expect("outcome");

    let retrying = eventually(Duration::from_secs(20), || async {
        events(&js, &dial)
            .await
            .into_iter()
            .find_map(|e| match e.kind {
                EventKind::Retrying { next_retry_at, .. } => Some(next_retry_at),
                _ => None,
            })
    })
    .await
    .expect("the outcome is decided");
    assert_eq!(retrying, opening, "the event shows the window's opening");

    let entry = retry_entry(&js, 1).await;
    assert_eq!(entry.due_at, opening, "the entry is due at the opening");
    assert_eq!(entry.request.queued_at, opening);
    assert_eq!(entry.request.attempt, 2);
    assert_eq!(
        entry.request.custom_fields, fields,
        "the retry keeps the fields"
    );
    retrier.stop().await;
}

/// A retry due on a holiday of the callee's state (Rhode Island, found from the contact's ZIP
/// code although the number is a New York one) is scheduled at the state's next opening, the
/// following local midnight; the campaign itself has no window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_on_a_holiday_of_the_callees_state_moves_to_the_next_local_day() {
    use std::io::Write;

    let env = TestEnv::start().await.expect("test environment");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let outcome_at = Utc::now();
    let dial = request(13, "+12125550199", 1);
    let new_york = ccm_core::window::callee_zones(None, &dial.phone_number, None)[0];
    let holiday = (outcome_at + chrono::Duration::hours(1))
        .with_timezone(&new_york)
        .date_naive();
    let opening = holiday
        .checked_add_days(Days::new(1))
        .expect("next day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_local_timezone(new_york)
        .earliest()
        .expect("local midnight")
        .with_timezone(&Utc);
    let mut rules = tempfile::NamedTempFile::new().expect("rule file");
    write!(
        rules,
        "rules:\n  - id: test-ri-holiday\n    jurisdiction: US-RI\n    holidays: [{holiday}]\n    source: test\n    as_of: 2026-12-05\n"
    )
    .expect("write");
    let campaign: Campaign = serde_json::from_value(json!({
        "id": 13, "name": "ruled", "is_active": true, "max_concurrent_calls": 5,
        "max_attempts": 3, "created_at": outcome_at, "updated_at": outcome_at,
    }))
    .expect("campaign");
    js.get_key_value(names::KV_CAMPAIGNS)
        .await
        .expect("campaigns bucket")
        .put("13", serde_json::to_vec(&campaign).expect("json").into())
        .await
        .expect("campaign stored");
    let contact = ccm_core::campaign::Contact {
        campaign_id: dial.campaign_id,
        phone_number: dial.phone_number.clone(),
        created_at: outcome_at,
        time_zone: None,
        postal_code: Some("02903".into()),
        expires_at: None,
        fields: Default::default(),
        numbers: Vec::new(),
    };
    js.get_key_value(names::KV_CONTACTS)
        .await
        .expect("contacts bucket")
        .put(
            ccm_core::contacts::key(dial.campaign_id, &dial.phone_number),
            serde_json::to_vec(&contact).expect("json").into(),
        )
        .await
        .expect("contact stored");
    let mut config = env.config();
    config.compliance.rule_files = vec![rules.path().to_owned()];
    let retrier = Retrier::start_with(&env, HOUR_LATER, config);

    let dialing = CallEvent {
        call_id: dial.call_id,
        campaign_id: dial.campaign_id,
        attempt: 1,
        at: outcome_at,
        kind: EventKind::Dialing {
            phone_number: dial.phone_number.clone(),
            max_attempts: 3,
            created_at: dial.created_at,
            custom_fields: Default::default(),
            expires_at: None,
            alternate: None,
        },
    };
    ccm_core::nats::publish_event(&js, &dialing)
        .await
        .expect("dialing");
    let outcome = CallEvent {
        kind: EventKind::Outcome {
            status: OutcomeStatus::Rnr,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: None,
            external_call_id: None,
            reason: None,
            callback: None,
        },
        ..dialing.clone()
    };
    ccm_core::nats::publish_event(&js, &outcome)
        .await
        .expect("outcome");
    let retrying = eventually(Duration::from_secs(20), || async {
        events(&js, &dial)
            .await
            .into_iter()
            .find_map(|e| match e.kind {
                EventKind::Retrying { next_retry_at, .. } => Some(next_retry_at),
                _ => None,
            })
    })
    .await
    .expect("the outcome is decided");
    assert_eq!(
        retrying, opening,
        "the event shows the state's next opening"
    );
    assert_eq!(retry_entry(&js, 1).await.due_at, opening);
    retrier.stop().await;
}
