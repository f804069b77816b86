//! Callbacks the callee asks for (`POST /api/v1/calls/{id}/reschedule`), against carrier-sim
//! over HTTP: the next attempt is placed at the asked time (never at the policy's), it does
//! not count against the attempt limit, the calling window moves it, concurrent callbacks
//! leave one next attempt, and a cancelled call keeps none.

use std::time::Duration;

use ccm_core::{CallEvent, CallId, CampaignId, EventKind};
use ccm_tests::{TestEnv, eventually};
use chrono::{DateTime, Duration as Span, SecondsFormat, Timelike, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::carrier_stack::{CarrierStack, Dialer};

/// Every call is not answered (RNR), quickly.
fn unanswered() -> ccm_carrier_sim::SimConfig {
    ccm_carrier_sim::SimConfig {
        picked: 0,
        disconnected: 0,
        rnr: 1,
        failed: 0,
        call_ms: 20,
        ..Default::default()
    }
}

async fn campaign(stack: &CarrierStack, backoff: &str, extra: Value) -> u64 {
    let mut body = json!({
        "name": "callbacks",
        "max_attempts": 2,
        "time_zone": "UTC",
        "retry_policy": {"status_retry_rules": {"RNR": {"should_retry": true, "backoff": [backoff]}}}
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, body) = stack.send("/api/v1/campaigns", body).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("id")
}

async fn call(stack: &CarrierStack, campaign: u64, number: &str) -> CallId {
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": campaign, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["call_id"].as_str().expect("id").parse().expect("uuid")
}

/// Waits for the call's row to show `status` at `attempt`.
async fn row(pg: &sqlx::PgPool, call: CallId, status: &str, attempt: i32, within: Duration) {
    let found = eventually(within, || async {
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT status, attempt_count FROM calls WHERE call_id = $1")
                .bind(call.as_uuid())
                .fetch_optional(pg)
                .await
                .ok()
                .flatten();
        (row == Some((status.to_owned(), attempt))).then_some(())
    })
    .await;
    if found.is_none() {
        let row: Option<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT status, attempt_count, error_message FROM calls WHERE call_id = $1",
        )
        .bind(call.as_uuid())
        .fetch_optional(pg)
        .await
        .ok()
        .flatten();
        panic!("call {call} never showed {status} at attempt {attempt}: {row:?}");
    }
}

async fn reschedule(stack: &CarrierStack, call: CallId, body: Value) -> (u16, Value) {
    stack
        .send(&format!("/api/v1/calls/{call}/reschedule"), body)
        .await
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The call's lifecycle events, oldest first.
async fn events(env: &TestEnv, campaign: u64, call: CallId) -> Vec<CallEvent> {
    let js = env.jetstream().await.expect("jetstream");
    let stream = js.get_stream("CALL_EVENTS").await.expect("CALL_EVENTS");
    let subject = ccm_core::subjects::event(CampaignId::new(campaign).expect("id"), call);
    let mut all = Vec::new();
    let mut from = None;
    while let Ok(m) = stream
        .direct_get_next_for_subject(subject.clone(), from)
        .await
    {
        from = Some(m.sequence + 1);
        all.push(serde_json::from_slice::<CallEvent>(&m.payload).expect("event"));
    }
    all
}

/// When each attempt of the call was placed (its `Dialing` events).
async fn dialled(env: &TestEnv, campaign: u64, call: CallId) -> Vec<(u32, DateTime<Utc>)> {
    events(env, campaign, call)
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Dialing { .. }))
        .map(|e| (e.attempt, e.at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_placed_at_the_asked_time_and_does_not_count_against_the_limit() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, unanswered()).await;
    let _dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    // The policy's retry comes 4 s after the outcome; the callee asks for later than that.
    let id = campaign(&stack, "4s", json!({})).await;
    let call = call(&stack, id, "+15557000001").await;
    row(&pg, call, "RETRYING", 1, Duration::from_secs(20)).await;

    // Real errors first: nothing is scheduled by any of them.
    let unknown = CallId::new();
    let (status, body) = reschedule(&stack, unknown, json!({"at": rfc3339(Utc::now())})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("call_not_found")),
        "{body}"
    );
    let (status, body) = reschedule(&stack, call, json!({"at": "at five"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_time")),
        "{body}"
    );
    let past = rfc3339(Utc::now() - Span::minutes(5));
    let (status, body) = reschedule(&stack, call, json!({"at": past})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("in_the_past")),
        "{body}"
    );
    let (status, body) = reschedule(
        &stack,
        call,
        json!({"at": "2030-01-01T17:00", "time_zone": "Mars/Olympus"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_time_zone")),
        "{body}"
    );
    let far = rfc3339(Utc::now() + Span::days(60));
    let (status, body) = reschedule(&stack, call, json!({"at": far})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("too_far_ahead")),
        "{body}"
    );

    // Asked for 8 s from now, as a local time in the callee's zone given by name.
    let asked = (Utc::now() + Span::seconds(8))
        .with_nanosecond(0)
        .expect("whole second");
    let local = asked
        .with_timezone(&chrono_tz::America::New_York)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (status, body) = reschedule(
        &stack,
        call,
        json!({"at": local, "time_zone": "America/New_York"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["attempt"], 2, "{body}");
    assert_eq!(body["moved"], false, "{body}");
    let scheduled: DateTime<Utc> = body["scheduled_at"]
        .as_str()
        .expect("at")
        .parse()
        .expect("time");
    assert_eq!(scheduled, asked, "{body}");

    // The policy's own entry (due at +4 s) is dropped; the callback is placed at +8 s, and
    // its RNR is retried by the policy: with 2 attempts allowed, a counted callback would
    // have ended the call FAILED here.
    row(&pg, call, "RETRYING", 2, Duration::from_secs(30)).await;
    let placed = dialled(&env, id, call).await;
    assert_eq!(placed.len(), 2, "one placement per attempt: {placed:?}");
    assert!(
        placed[1].1 >= asked,
        "placed at {} before the asked {asked}",
        placed[1].1
    );
    let stats = stack.stats().await;
    assert_eq!((stats.placed, stats.repeated_requests), (2, 0), "{stats:?}");

    // The policy's retry of the callback is attempt 3, the last one counted: then FAILED.
    row(&pg, call, "FAILED", 3, Duration::from_secs(30)).await;
    let (status, body) = reschedule(
        &stack,
        call,
        json!({"at": rfc3339(Utc::now() + Span::minutes(5))}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("call_ended")),
        "{body}"
    );
    assert_eq!(stack.stats().await.placed, 3);
    stack.stop().await;
}

/// Generated: callbacks asked concurrently, racing the policy's own retry (due 1-5 s after
/// the outcome, before, among or after the asked times), leave exactly one next attempt,
/// placed no earlier than the plan standing when it was placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callbacks_leave_one_next_attempt() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, unanswered()).await;
    let _dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    for round in 0..3 {
        let backoff = format!("{}s", rng.random_range(1..6));
        let id = campaign(&stack, &backoff, json!({})).await;
        let call = call(&stack, id, &format!("+1555700001{round}")).await;
        row(&pg, call, "RETRYING", 1, Duration::from_secs(20)).await;
        let asks: Vec<DateTime<Utc>> = (0..rng.random_range(2..7))
            .map(|_| Utc::now() + Span::milliseconds(rng.random_range(0..6000)))
            .collect();
        let answers = futures::future::join_all(asks.iter().map(|at| {
            let stack = &stack;
            async move { reschedule(stack, call, json!({"at": rfc3339(*at)})).await }
        }))
        .await;
        for (status, body) in &answers {
            // Refused only because the call moved on: its next attempt started (or already
            // ended it), or the other callbacks kept changing it.
            assert!(
                *status == 200
                    || (*status == 409
                        && matches!(
                            body["code"].as_str(),
                            Some("attempt_in_progress" | "call_changing" | "call_ended")
                        ))
                    || (*status == 422 && body["code"] == "in_the_past"),
                "seed {seed}: {status} {body}"
            );
        }
        // Attempt 2 has its outcome: RETRYING when a callback placed it (it does not count),
        // FAILED when the policy's retry did (the second of two attempts).
        let pg2 = pg.clone();
        let decided = eventually(Duration::from_secs(30), || {
            let pg = pg2.clone();
            async move {
                let row: Option<(String, i32)> =
                    sqlx::query_as("SELECT status, attempt_count FROM calls WHERE call_id = $1")
                        .bind(call.as_uuid())
                        .fetch_optional(&pg)
                        .await
                        .ok()
                        .flatten();
                row.filter(|(s, a)| *a == 2 && (s == "RETRYING" || s == "FAILED"))
            }
        })
        .await;
        let history = events(&env, id, call).await;
        let (status, _) = decided.unwrap_or_else(|| panic!("seed {seed}: {history:?}"));
        let placed: Vec<&CallEvent> = history
            .iter()
            .filter(|e| e.attempt == 2 && matches!(e.kind, EventKind::Dialing { .. }))
            .collect();
        assert_eq!(placed.len(), 1, "seed {seed}: {history:?}");
        let plan = history
            .iter()
            .rev()
            .filter(|e| e.attempt == 1)
            .find(|e| {
                matches!(
                    e.kind,
                    EventKind::Retrying { .. } | EventKind::Rescheduled { .. }
                )
            })
            .expect("a plan");
        let (due, callback) = match plan.kind {
            EventKind::Retrying { next_retry_at, .. } => (next_retry_at, false),
            EventKind::Rescheduled { next_retry_at, .. } => (next_retry_at, true),
            _ => unreachable!(),
        };
        assert!(
            placed[0].at >= due - Span::milliseconds(5),
            "seed {seed}: placed at {} before its plan's {due}: {history:?}",
            placed[0].at
        );
        assert_eq!(
            status == "RETRYING",
            callback,
            "seed {seed}: a callback is not counted, the policy's retry is: {history:?}"
        );
        let won = answers.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(callback, won > 0, "seed {seed}: {answers:?} {history:?}");
    }
    // Stale entries (the policy's, the replaced callbacks') come due and place nothing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let stats = stack.stats().await;
    assert_eq!(stats.repeated_requests, 0, "seed {seed}: {stats:?}");
    stack.stop().await;
}

/// The calling window moves an asked time it does not allow, and says so; a cancelled
/// campaign's waiting callback ends with the call, and its number is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calling_window_moves_a_callback_and_a_cancel_still_ends_it() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, unanswered()).await;
    let _dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    // Open every day but for the hour three hours from now (UTC, the campaign's zone, which
    // times +1 555 numbers).
    let closed = (Utc::now() + Span::hours(3))
        .with_minute(0)
        .expect("hour")
        .with_second(0)
        .expect("s")
        .with_nanosecond(0)
        .expect("ns");
    let hour = closed.hour();
    let days = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    let mut hours = Vec::new();
    if hour > 0 {
        hours.push(json!({"days": days, "start": "00:00", "end": format!("{hour:02}:00")}));
    }
    if hour < 23 {
        hours
            .push(json!({"days": days, "start": format!("{:02}:00", hour + 1), "end": "23:59:59"}));
    }
    let id = campaign(&stack, "1h", json!({"calling_hours": hours})).await;
    let call = call(&stack, id, "+15557000021").await;
    row(&pg, call, "RETRYING", 1, Duration::from_secs(20)).await;
    let asked = closed + Span::minutes(30);
    let (status, body) = reschedule(&stack, call, json!({"at": rfc3339(asked)})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["moved"], true, "{body}");
    let scheduled: DateTime<Utc> = body["scheduled_at"]
        .as_str()
        .expect("at")
        .parse()
        .expect("time");
    assert_eq!(scheduled, closed + Span::hours(1), "{body}");
    assert!(
        body["reason"]
            .as_str()
            .expect("reason")
            .contains("first allowed time"),
        "{body}"
    );
    // The policy's entry it replaced (due in an hour) is gone: it would hold the campaign's
    // completion back until it came due.
    let js = env.jetstream().await.expect("jetstream");
    let waiting = ccm_core::retries::count(&js, CampaignId::new(id).expect("id"))
        .await
        .expect("RETRIES");
    assert_eq!(waiting, 1u64, "only the callback waits in RETRIES");
    let last = events(&env, id, call).await.pop().expect("event");
    assert!(
        matches!(last.kind, EventKind::Rescheduled { next_retry_at, asked_for, .. }
            if next_retry_at == scheduled && asked_for == asked),
        "{last:?}"
    );

    // The number stays claimed while the callback waits.
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15557000021"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("call_in_progress")),
        "a second call to a claimed number: {body}"
    );
    let (status, body) = stack
        .send(&format!("/api/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    row(&pg, call, "CANCELLED", 2, Duration::from_secs(30)).await;
    let (status, body) = reschedule(
        &stack,
        call,
        json!({"at": rfc3339(Utc::now() + Span::minutes(5))}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("call_ended")),
        "{body}"
    );
    assert_eq!(
        stack.stats().await.placed,
        1,
        "the callback was never placed"
    );
    stack.stop().await;
}

/// An AI voice agent reports "call me back" with the outcome (Twilio's `CallbackAt`, sent by
/// carrier-sim for a callee who asks): the answered call is not completed but called back at
/// that time, once, and the callback does not use the campaign's only attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_reported_with_the_outcome_is_placed_at_the_asked_time() {
    let env = TestEnv::start().await.expect("test environment");
    let number = "+15557000031";
    let sim = ccm_carrier_sim::SimConfig {
        callback_numbers: vec![number.to_owned()],
        callback_after_ms: 3000,
        ..crate::carrier_stack::answering(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let _dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let id = campaign(&stack, "1s", json!({"max_attempts": 1})).await;
    let call = call(&stack, id, number).await;
    row(&pg, call, "COMPLETED", 2, Duration::from_secs(30)).await;
    let history = events(&env, id, call).await;
    let asked = history
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Rescheduled {
                asked_for,
                next_retry_at,
                ..
            } if e.attempt == 1 => Some((asked_for, next_retry_at)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Rescheduled: {history:?}"));
    assert_eq!(
        asked.0, asked.1,
        "not moved: the campaign may call at any time"
    );
    let placed = dialled(&env, id, call).await;
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert!(
        placed[1].1 >= asked.0,
        "called back at {} before {}",
        placed[1].1,
        asked.0
    );
    let stats = stack.stats().await;
    assert_eq!(
        (
            stats.placed,
            stats.callback_requests,
            stats.repeated_requests
        ),
        (2, 1, 0),
        "{stats:?}"
    );
    stack.stop().await;
}
