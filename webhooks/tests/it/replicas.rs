//! Several deliverers side by side: the leases in `webhook_leases` let exactly one replica
//! queue events and exactly one work each lane, and a replica that stops or crashes is
//! taken over.

use std::{collections::HashMap, time::Duration};

use ccm_core::{CallEvent, CallId, CampaignId, EventKind};
use ccm_webhooks::{
    MIGRATOR,
    lease::{self, Leases},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::support::{self, Behaviour, Ingest, Receiver};

/// Publishes attempt `attempt` of call `call_id`: `retrying` before the last, `completed`
/// for it.
async fn publish(env: &ccm_tests::TestEnv, call_id: CallId, attempt: u32, last: bool) {
    let kind = if last {
        EventKind::Completed
    } else {
        EventKind::Retrying {
            next_retry_at: chrono::Utc::now(),
            reason: "busy".into(),
        }
    };
    let event = CallEvent {
        call_id,
        campaign_id: CampaignId::new(4).expect("campaign id"),
        attempt,
        at: chrono::Utc::now(),
        kind,
    };
    let js = env.jetstream().await.expect("jetstream");
    ccm_core::nats::publish_event(&js, &event)
        .await
        .expect("publish");
}

/// Publishes three attempts of each of `calls` new calls, the calls interleaved, so every
/// batch the dispatcher pulls mixes calls; answers the calls.
async fn publish_round(env: &ccm_tests::TestEnv, calls: usize) -> Vec<CallId> {
    let ids: Vec<CallId> = (0..calls).map(|_| CallId::new()).collect();
    for attempt in 1..=3 {
        for id in &ids {
            publish(env, *id, attempt, attempt == 3).await;
        }
    }
    ids
}

/// The leases held now: name → holder.
async fn leases(pg: &PgPool) -> HashMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT name, holder FROM webhook_leases WHERE expires_at > now()",
    )
    .fetch_all(pg)
    .await
    // The table appears when the first deliverer has migrated the database.
    .unwrap_or_default()
    .into_iter()
    .collect()
}

/// Waits until one holder other than `not` holds the dispatch lease and both lanes of every
/// endpoint; answers it.
async fn one_holder_of_all(pg: &PgPool, endpoints: &[String], not: Option<&str>) -> String {
    let mut wanted = vec![lease::DISPATCH.to_owned()];
    for e in endpoints {
        wanted.push(lease::lane(e, ccm_webhooks::queue::Lane::Live));
        wanted.push(lease::lane(e, ccm_webhooks::queue::Lane::Manual));
    }
    let holder = ccm_tests::eventually(Duration::from_secs(20), || async {
        let held = leases(pg).await;
        let first = held.get(lease::DISPATCH)?.clone();
        let all = wanted.iter().all(|n| held.get(n) == Some(&first));
        (all && Some(first.as_str()) != not).then_some(first)
    })
    .await;
    match holder {
        Some(holder) => holder,
        None => panic!("no single holder of {wanted:?}: {:?}", leases(pg).await),
    }
}

/// Waits until nothing is pending in any queue, then long enough for a second replica's
/// worker to poll (and wrongly send again) before the receivers are checked.
async fn drained(pg: &PgPool) {
    let empty = ccm_tests::eventually(Duration::from_secs(30), || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_messages WHERE state = 'pending'")
                .fetch_one(pg)
                .await
                .ok()?;
        (pending == 0).then_some(())
    })
    .await;
    assert!(empty.is_some(), "messages still pending");
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Every receiver got each of `calls`' three events exactly once (and nothing else beyond
/// the `before` requests it had), each call's in attempt order.
fn exactly_once_in_order(receiver: &Receiver, before: usize, calls: &[CallId]) {
    let got = receiver.received();
    let got = &got[before..];
    assert_eq!(got.len(), calls.len() * 3, "one request per event");
    let mut per_call: HashMap<String, Vec<String>> = HashMap::new();
    for r in got {
        let call = r.id.split('/').next().expect("call id").to_owned();
        per_call.entry(call).or_default().push(r.id.clone());
    }
    for call in calls {
        let ids = per_call.get(&call.to_string()).expect("the call's events");
        let expected: Vec<String> = (1..=3)
            .map(|a| {
                let kind = if a == 3 { "completed" } else { "retrying" };
                format!("{call}/{a}/{kind}")
            })
            .collect();
        assert_eq!(ids, &expected, "each once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once_in_order_and_one_takes_over_when_the_other_stops() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let config = support::config(&env);
    let ingest = Ingest::start(config.clone()).await;
    let mut receivers = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let receiver = Receiver::start(Behaviour::always(axum::http::StatusCode::OK)).await;
        let created = ingest
            .subscribe(json!({"url": receiver.url, "events": ["retrying", "completed"]}))
            .await;
        endpoints.push(created["id"].as_str().expect("id").to_owned());
        receivers.push(receiver);
    }
    let first = support::start_webhooks(config.clone());
    let pg = env.pg().await.expect("pg");
    let first_holder = one_holder_of_all(&pg, &endpoints, None).await;
    let second = support::start_webhooks(config);

    let calls = publish_round(&env, 10).await;
    for receiver in &receivers {
        receiver.wait_for(30, Duration::from_secs(30)).await;
    }
    drained(&pg).await;
    for receiver in &receivers {
        exactly_once_in_order(receiver, 0, &calls);
    }
    assert_eq!(
        leases(&pg).await.get(lease::DISPATCH),
        Some(&first_holder),
        "the second replica took nothing while the first ran"
    );

    // The first stops (its leases are released): the second takes everything over.
    first.stop().await;
    one_holder_of_all(&pg, &endpoints, Some(&first_holder)).await;
    let calls = publish_round(&env, 10).await;
    for receiver in &receivers {
        receiver.wait_for(60, Duration::from_secs(30)).await;
    }
    drained(&pg).await;
    for receiver in &receivers {
        exactly_once_in_order(receiver, 30, &calls);
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replicas_leases_are_taken_over_once_they_expire() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let mut config = support::config(&env);
    config.webhooks.request_timeout_ms = 1000;
    config.webhooks.lease_ttl_ms = 4000;
    let ingest = Ingest::start(config.clone()).await;
    let receiver = Receiver::start(Behaviour::always(axum::http::StatusCode::OK)).await;
    let created = ingest.subscribe(json!({"url": receiver.url})).await;
    let endpoint = created["id"].as_str().expect("id").to_owned();
    let pg = env.pg().await.expect("pg");
    MIGRATOR.run(&pg).await.expect("migrations");

    // A replica that crashed holding the dispatcher and the endpoint's lanes: its leases
    // still run for four seconds, and nobody renews or releases them.
    let before = Instant::now();
    let names = [
        lease::DISPATCH.to_owned(),
        lease::lane(&endpoint, ccm_webhooks::queue::Lane::Live),
        lease::lane(&endpoint, ccm_webhooks::queue::Lane::Manual),
    ];
    sqlx::query(
        "INSERT INTO webhook_leases (name, holder, expires_at)
         SELECT n, 'crashed', now() + interval '4 seconds' FROM UNNEST($1::text[]) AS t(n)",
    )
    .bind(&names[..])
    .execute(&pg)
    .await
    .expect("crashed leases");
    let webhooks = support::start_webhooks(config);
    let call = CallId::new();
    publish(&env, call, 1, true).await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].id, format!("{call}/1/completed"));
    assert!(
        got[0].at.duration_since(before.into_std()) >= Duration::from_secs(4),
        "delivered only once the crashed replica's leases expired"
    );
    let holder = one_holder_of_all(&pg, std::slice::from_ref(&endpoint), Some("crashed")).await;
    assert_ne!(holder, "crashed");
    webhooks.stop().await;
    assert!(leases(&pg).await.is_empty(), "released at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_held_by_one_replica_until_released_or_expired() {
    let env = ccm_tests::TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    MIGRATOR.run(&pg).await.expect("migrations");
    let ttl = Duration::from_secs(3);
    let a = Leases::new(pg.clone(), "a".into(), ttl);
    let b = Leases::new(pg.clone(), "b".into(), ttl);
    let names = ["x".to_owned(), "y".to_owned()];

    let held = a.acquire(&names).await.expect("a acquires");
    assert_eq!(held.len(), 2);
    assert!(b.acquire(&names).await.expect("b tries").is_empty());
    assert_eq!(
        a.acquire(&names).await.expect("a again").len(),
        2,
        "ours already"
    );

    // Released: free at once.
    a.release(&names[1..]).await;
    assert!(held[1].lost().is_cancelled());
    let y = b.acquire(&names).await.expect("b tries again");
    assert_eq!(y.iter().map(|l| l.name()).collect::<Vec<_>>(), ["y"]);

    // Renewed, x stays a's beyond its first time to live.
    let started = Instant::now();
    while started.elapsed() < ttl * 3 / 2 {
        a.renew().await.expect("renew");
        assert!(b.acquire(&names[..1]).await.expect("b tries x").is_empty());
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(held[0].remaining() > Duration::ZERO);

    // Not renewed, x expires; b takes it and a learns at its next renewal that it lost it.
    let taken = ccm_tests::eventually(Duration::from_secs(10), || async {
        let got = b.acquire(&names[..1]).await.ok()?;
        (!got.is_empty()).then_some(())
    })
    .await;
    assert!(taken.is_some(), "b takes the expired lease");
    assert_eq!(
        held[0].remaining(),
        Duration::ZERO,
        "a's own clock ran out first"
    );
    a.renew().await.expect("renew");
    assert!(held[0].lost().is_cancelled());
    assert!(!a.holds("x"));
    assert!(b.holds("x"));
    // b never renewed y: its own clock ran out, but nobody took it, so renewing keeps it.
    assert!(!b.holds("y"));
    b.renew().await.expect("renew");
    assert!(b.holds("x") && b.holds("y"));
}
