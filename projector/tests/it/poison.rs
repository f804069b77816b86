//! A message that cannot be applied does not hold up the ones behind it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use ccm_core::{CallEvent, CallId, CampaignId, EventKind};
use ccm_tests::TestEnv;
use chrono::Utc;
use futures::StreamExt;

use crate::support::{self, Published, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_do_not_block_later_events_and_are_terminated_with_their_reason() {
    let env = TestEnv::start().await.expect("test env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("jetstream");
    let pool = env.pg().await.expect("pg");

    let good_before = support::lives(20, 4, Utc::now());
    support::publish_all(&js, &good_before).await;
    // Not JSON at all: poison. Beside it, valid JSON Postgres would refuse as it is (a NUL
    // character, in jsonb and text): stored with the NUL replaced, not poison (issue 16).
    let garbage = CallId::new();
    let with_nul = CallEvent {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(4).expect("id"),
        attempt: 1,
        at: Utc::now(),
        kind: EventKind::Failed {
            reason: "nul \u{0} inside".into(),
        },
    };
    let poison = [
        Published {
            subject: format!("calls.event.4.{garbage}"),
            msg_id: format!("{garbage}/1/garbage"),
            payload: b"{not json".to_vec(),
        },
        Published {
            subject: with_nul.subject(),
            msg_id: with_nul.msg_id(),
            payload: serde_json::to_vec(&with_nul).expect("encode"),
        },
    ];
    let mut seqs = Vec::new();
    for p in &poison {
        let publish = jetstream::message::PublishMessage::build()
            .payload(p.payload.clone().into())
            .message_id(&p.msg_id);
        let ack = js
            .send_publish(p.subject.clone(), publish)
            .await
            .expect("publish");
        seqs.push(ack.await.expect("ack").sequence);
    }
    let (poison_seqs, nul_seq) = (vec![seqs[0]], seqs[1]);
    let good_after = support::lives(20, 4, Utc::now());
    support::publish_all(&js, &good_after).await;

    let projector = Running::start(support::config(&env));
    let good = good_before.len() + good_after.len() + 1;
    // Every good message is projected although the poison ones sit in the middle.
    support::wait_for_rows(&pool, good, Duration::from_secs(30)).await;

    // Each poison message is TERMed with its reason at its first delivery (instead of spending
    // `max_deliver`); the server's MSG_TERMINATED advisory, with the reason, is captured in
    // ADVISORIES for the retrier to park it.
    let advisories = js
        .get_stream("ADVISORIES")
        .await
        .expect("advisories stream");
    let consumer = advisories
        .create_consumer(pull::Config {
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .stream()
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("messages");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < poison_seqs.len() {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let advisory: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("advisory json");
        if advisory["consumer"] == "projector_events" {
            seen.push(advisory["stream_seq"].as_u64().expect("stream_seq"));
            assert_eq!(advisory["type"], "io.nats.jetstream.advisory.v1.terminated");
            assert_eq!(advisory["deliveries"].as_u64(), Some(1), "{advisory}");
            let reason = advisory["reason"].as_str().expect("a reason");
            assert!(reason.starts_with("undecodable: "), "{reason}");
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen, poison_seqs,
        "no terminated advisory for the poison messages"
    );

    // Later good events keep flowing after the poison is given up on.
    let later = support::lives(10, 4, Utc::now());
    support::publish_all(&js, &later).await;
    support::wait_for_rows(&pool, good + later.len(), Duration::from_secs(30)).await;
    let poisoned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_events WHERE stream = 'CALL_EVENTS' AND seq = ANY($1)",
    )
    .bind(
        poison_seqs
            .iter()
            .map(|s| i64::try_from(*s).expect("seq"))
            .collect::<Vec<_>>(),
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!(poisoned, 0);
    let stored: String = sqlx::query_scalar(
        "SELECT payload::text FROM call_events WHERE stream = 'CALL_EVENTS' AND seq = $1",
    )
    .bind(i64::try_from(nul_seq).expect("seq"))
    .fetch_one(&pool)
    .await
    .expect("the event with a NUL is stored");
    assert!(stored.contains("nul \u{fffd} inside"), "{stored}");
    projector.stop().await;
}
