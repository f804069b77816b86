//! Calling windows across the services: a call whose callee is outside the window is not
//! dialled until the window opens, in the callee's own zone (the contact's).

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use chrono::{FixedOffset, SubsecRound, Timelike, Utc};
use futures::TryStreamExt;
use serde_json::json;

use crate::carrier_stack::{CarrierStack, Dialer, answering, statuses};

/// A fixed-offset IANA zone (`Etc/GMT-N` is UTC+N) in which it is about noon now, so a window
/// opening in a few seconds and lasting an hour stays within one local day.
fn noon_zone() -> (String, FixedOffset) {
    let offset = 12 - i32::try_from(Utc::now().hour()).expect("hour");
    let name = match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    (name, FixedOffset::east_opt(offset * 3600).expect("offset"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outside_its_window_is_dialled_only_once_the_window_opens() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = answering(20);
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let pg = env.pg().await.expect("postgres");
    let js = env.jetstream().await.expect("jetstream");

    let (zone, offset) = noon_zone();
    let opens = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(5);
    let local_open = opens.with_timezone(&offset).time();
    let local_close = local_open + chrono::Duration::hours(1);
    let every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    // The campaign's own zone is 14 hours ahead of UTC: the callee's zone must win.
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({
                "name": "window",
                "max_attempts": 1,
                "time_zone": "Pacific/Kiritimati",
                "calling_hours": [{
                    "days": every_day,
                    "start": local_open.format("%H:%M:%S").to_string(),
                    "end": local_close.format("%H:%M:%S").to_string(),
                }],
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("id");
    let number = "+15554000001";
    let (status, body) = stack
        .send(
            &format!("/api/v1/campaigns/{id}/contacts"),
            json!({"contacts": [{"phone_number": number, "time_zone": zone}]}),
        )
        .await;
    assert_eq!((status, body["written"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = stack
        .send(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": number}),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // Until the window opens nothing is placed (checked while it is closed).
    while Utc::now() < opens - chrono::Duration::milliseconds(300) {
        assert_eq!(
            stack.stats().await.placed,
            0,
            "placed before the window opened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let completed = eventually(Duration::from_secs(20), || async {
        (statuses(&pg, id).await == [("COMPLETED".to_owned(), 1)]).then_some(())
    })
    .await;
    assert!(completed.is_some(), "{:?}", statuses(&pg, id).await);
    let dialled: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT last_attempt_at FROM calls WHERE campaign_id = $1")
            .bind(id as i64)
            .fetch_one(&pg)
            .await
            .expect("row");
    assert!(
        dialled >= opens,
        "dialled at {dialled}, window opened at {opens}"
    );
    assert!(
        dialled < opens + chrono::Duration::seconds(5),
        "dialled soon after the opening: {dialled}"
    );
    // The attempt was put off once: its dial message was published again when due.
    let calls = js.get_stream("CALLS").await.expect("stream");
    let dial_messages: Vec<(String, usize)> = calls
        .info_with_subjects(format!("calls.dial.{id}"))
        .await
        .expect("info")
        .try_collect()
        .await
        .expect("subjects");
    assert_eq!(dial_messages.iter().map(|(_, n)| n).sum::<usize>(), 2);
    assert_eq!(stack.stats().await.placed, 1);
    dialer.stop().await;
    stack.stop().await;
}
