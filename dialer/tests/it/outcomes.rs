//! The outcome router against a real NATS server: each waiter is woken by its own call's
//! outcome of its own attempt and by nothing else, a dropped waiter leaves no entry behind,
//! a reconnect keeps waiters waiting, and the end of the subscription wakes them all; a router
//! hears only the outcomes addressed to it, those sent to every dialer, and those of an
//! address it adopted while it needs it.

use std::time::Duration;

use ccm_core::{CallEvent, CallId, CampaignId, EventKind, OutcomeSource, OutcomeStatus};
use ccm_dialer::outcomes::{Address, Closed, Outcomes, Route, Waiter};
use ccm_tests::{LocalNats, eventually};
use chrono::Utc;
use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded machine; a waiter that should wake does so in milliseconds.
const WAKE: Duration = Duration::from_secs(10);

struct Setup {
    nats: LocalNats,
    client: async_nats::Client,
    outcomes: Outcomes,
    router: JoinHandle<()>,
    stop: CancellationToken,
}

async fn setup() -> Setup {
    let nats = tokio::task::spawn_blocking(LocalNats::start)
        .await
        .expect("harness task")
        .expect("nats-server");
    let client = ccm_core::nats::connect(&nats.url(), "test")
        .await
        .expect("connect");
    let (outcomes, router) = Outcomes::subscribe(&client, Address::fresh("test:1"))
        .await
        .expect("subscribe");
    let stop = CancellationToken::new();
    let router = tokio::spawn(router.run(stop.clone()));
    Setup {
        nats,
        client,
        outcomes,
        router,
        stop,
    }
}

fn campaign() -> CampaignId {
    CampaignId::new(5).expect("id")
}

/// Copies an outcome of `attempt` of `call` to the dialer at `to` (every dialer: `None`) as
/// its publishers do once it is stored (the router reads only the copy, so no stream is
/// needed).
async fn publish(client: &async_nats::Client, to: Option<&Address>, call: CallId, attempt: u32) {
    let event = CallEvent {
        call_id: call,
        campaign_id: campaign(),
        attempt,
        at: Utc::now(),
        kind: EventKind::Outcome {
            status: OutcomeStatus::Picked,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: Some(3),
            external_call_id: None,
            reason: None,
            callback: None,
        },
    };
    ccm_core::outcome_route::copy(client, &event, to).await;
    client.flush().await.expect("flush");
}

async fn woken(waiter: &mut Waiter) -> Result<(), Closed> {
    tokio::time::timeout(WAKE, waiter.outcome())
        .await
        .expect("the waiter was not woken")
}

/// Whether a waiter is still waiting, without waiting: only meaningful once the router has
/// handled the messages in question (it handles them in order, so after a later one woke its
/// waiter).
fn still_waiting(waiter: &mut Waiter) -> bool {
    waiter.outcome().now_or_never().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_wakes_only_the_waiter_of_its_call_and_attempt() {
    let s = setup().await;
    let (a, b, marker) = (CallId::new(), CallId::new(), CallId::new());
    let mut wait_a = s.outcomes.register(a, 1);
    let mut wait_b = s.outcomes.register(b, 1);
    let mut wait_marker = s.outcomes.register(marker, 1);
    assert_eq!(s.outcomes.waiting(), 3);

    // Another call's outcome, an unregistered call's, and another attempt of `a`'s.
    publish(&s.client, Some(s.outcomes.address()), b, 1).await;
    publish(&s.client, Some(s.outcomes.address()), CallId::new(), 1).await;
    publish(&s.client, Some(s.outcomes.address()), a, 2).await;
    publish(&s.client, Some(s.outcomes.address()), marker, 1).await;
    woken(&mut wait_marker).await.expect("marker's outcome");
    woken(&mut wait_b).await.expect("b's outcome");
    assert!(
        still_waiting(&mut wait_a),
        "woken by another attempt's outcome"
    );
    // A woken waiter leaves the map at once, before it is dropped.
    assert_eq!(s.outcomes.waiting(), 1);

    publish(&s.client, Some(s.outcomes.address()), a, 1).await;
    woken(&mut wait_a).await.expect("a's outcome");
    // Asking again answers the same without waiting.
    assert_eq!(wait_a.outcome().now_or_never(), Some(Ok(())));
    assert_eq!(s.outcomes.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiter_unregisters_and_a_redelivery_waits_beside_it() {
    let s = setup().await;
    let calls: Vec<CallId> = (0..100).map(|_| CallId::new()).collect();
    let waiters: Vec<Waiter> = calls.iter().map(|&c| s.outcomes.register(c, 1)).collect();
    assert_eq!(s.outcomes.waiting(), 100);
    drop(waiters);
    assert_eq!(s.outcomes.waiting(), 0);

    // Two deliveries of one dial message wait for the same outcome; dropping one leaves the
    // other registered, and the outcome wakes both.
    let call = CallId::new();
    let mut first = s.outcomes.register(call, 1);
    let mut second = s.outcomes.register(call, 1);
    let third = s.outcomes.register(call, 1);
    drop(third);
    assert_eq!(s.outcomes.waiting(), 2);
    // Outcomes for calls nobody waits on any more are dropped quietly.
    publish(&s.client, Some(s.outcomes.address()), calls[0], 1).await;
    publish(&s.client, Some(s.outcomes.address()), call, 1).await;
    woken(&mut first).await.expect("first delivery");
    woken(&mut second).await.expect("second delivery");
    assert_eq!(s.outcomes.waiting(), 0);
    assert!(!s.router.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_waiters_each_get_their_own_outcome() {
    let s = setup().await;
    let calls: Vec<CallId> = (0..2_000).map(|_| CallId::new()).collect();
    let mut tasks = Vec::new();
    for &call in &calls {
        let outcomes = s.outcomes.clone();
        let mut waiter = outcomes.register(call, 1);
        // Long enough for all the publishing below on a loaded machine.
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(120), waiter.outcome())
                .await
                .expect("the waiter was not woken")
        }));
    }
    assert_eq!(s.outcomes.waiting(), calls.len());

    // Only the even calls' outcomes, published concurrently from several tasks.
    let publishers: Vec<_> = calls
        .chunks(500)
        .map(|chunk| {
            let (client, chunk) = (s.client.clone(), chunk.to_vec());
            let to = s.outcomes.address().clone();
            tokio::spawn(async move {
                for call in chunk.iter().step_by(2) {
                    publish(&client, Some(&to), *call, 1).await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let (even, odd): (Vec<_>, Vec<_>) =
        tasks.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, task) in even {
        task.await.expect("waiter task").expect("its outcome");
    }
    assert_eq!(s.outcomes.waiting(), calls.len() / 2);
    assert!(odd.iter().all(|(_, task)| !task.is_finished()));

    for call in calls.iter().skip(1).step_by(2) {
        publish(&s.client, Some(s.outcomes.address()), *call, 1).await;
    }
    for (_, task) in odd {
        task.await.expect("waiter task").expect("its outcome");
    }
    assert_eq!(s.outcomes.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_closing_wakes_every_waiter_with_an_error() {
    let s = setup().await;
    let mut waiters: Vec<Waiter> = (0..10)
        .map(|_| s.outcomes.register(CallId::new(), 1))
        .collect();
    s.client.drain().await.expect("drain");
    for waiter in &mut waiters {
        assert_eq!(woken(waiter).await, Err(Closed));
    }
    tokio::time::timeout(WAKE, s.router)
        .await
        .expect("the router did not stop")
        .expect("router task");
    assert_eq!(s.outcomes.waiting(), 0);
    // A call registering afterwards learns it at once rather than waiting in vain.
    let mut late = s.outcomes.register(CallId::new(), 1);
    assert_eq!(late.outcome().now_or_never(), Some(Err(Closed)));
    assert_eq!(s.outcomes.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_router_wakes_every_waiter_with_an_error() {
    let s = setup().await;
    let mut waiter = s.outcomes.register(CallId::new(), 1);
    s.stop.cancel();
    assert_eq!(woken(&mut waiter).await, Err(Closed));
    s.router.await.expect("router task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_keep_waiting_across_a_reconnect_and_are_woken_after_it() {
    let mut s = setup().await;
    let call = CallId::new();
    let mut waiter = s.outcomes.register(call, 1);
    let nats = &mut s.nats;
    tokio::task::block_in_place(|| nats.stop());
    let client = s.client.clone();
    eventually(WAKE, || {
        let state = client.connection_state();
        async move { (state != async_nats::connection::State::Connected).then_some(()) }
    })
    .await
    .expect("the client never saw the server go");
    tokio::task::block_in_place(|| nats.restart()).expect("restart nats-server");
    eventually(Duration::from_secs(30), || {
        let state = client.connection_state();
        async move { (state == async_nats::connection::State::Connected).then_some(()) }
    })
    .await
    .expect("the client did not reconnect");
    assert!(still_waiting(&mut waiter), "a reconnect ended the wait");
    assert!(!s.router.is_finished());

    // The client subscribed again before anything it sends after reconnecting.
    publish(&s.client, Some(s.outcomes.address()), call, 1).await;
    woken(&mut waiter)
        .await
        .expect("outcome after the reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_hears_only_its_own_address_and_the_broadcast() {
    let s = setup().await;
    let other_client = ccm_core::nats::connect(&s.nats.url(), "test")
        .await
        .expect("connect");
    let (other, other_router) = Outcomes::subscribe(&other_client, Address::fresh("test:1"))
        .await
        .expect("subscribe");
    tokio::spawn(other_router.run(s.stop.clone()));
    assert_ne!(s.outcomes.address(), other.address());
    let (mine, theirs, legacy) = (CallId::new(), CallId::new(), CallId::new());
    let mut wait_mine = s.outcomes.register(mine, 1);
    let mut wait_theirs = other.register(theirs, 1);
    let mut wait_legacy = other.register(legacy, 1);

    publish(&s.client, Some(s.outcomes.address()), mine, 1).await;
    publish(&s.client, Some(other.address()), theirs, 1).await;
    // No address known: every dialer hears it.
    publish(&s.client, None, legacy, 1).await;
    woken(&mut wait_mine).await.expect("mine");
    woken(&mut wait_theirs).await.expect("theirs");
    woken(&mut wait_legacy).await.expect("legacy");
    eventually(WAKE, || async {
        (s.outcomes.received().get(Route::Broadcast) == 1).then_some(())
    })
    .await
    .expect("the broadcast reached both");
    for outcomes in [&s.outcomes, &other] {
        assert_eq!(outcomes.received().get(Route::Addressed), 1);
        assert_eq!(outcomes.received().get(Route::Broadcast), 1);
        assert_eq!(outcomes.received().get(Route::Adopted), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_address_is_heard_while_a_call_needs_it() {
    let s = setup().await;
    let gone = Address::fresh("gone:1");
    let (first, second) = (CallId::new(), CallId::new());
    let mut wait_first = s.outcomes.register(first, 1);
    let mut wait_second = s.outcomes.register(second, 1);
    // Not adopted: a copy to the gone dialer reaches nobody here.
    publish(&s.client, Some(&gone), first, 1).await;
    publish(&s.client, Some(s.outcomes.address()), CallId::new(), 1).await;
    eventually(WAKE, || async {
        (s.outcomes.received().get(Route::Addressed) == 1).then_some(())
    })
    .await
    .expect("the marker arrived");
    assert!(still_waiting(&mut wait_first));

    let adoption = s.outcomes.adopt(gone.clone()).await.expect("adopt");
    let again = s.outcomes.adopt(gone.clone()).await.expect("adopt again");
    // Its own address is heard anyway: nothing to listen to.
    let own = s
        .outcomes
        .adopt(s.outcomes.address().clone())
        .await
        .expect("own");
    assert_eq!(s.outcomes.adopted(), 1);
    publish(&s.client, Some(&gone), first, 1).await;
    woken(&mut wait_first)
        .await
        .expect("first, through the adopted address");
    drop(own);
    drop(adoption);
    assert_eq!(s.outcomes.adopted(), 1, "the other call still needs it");
    publish(&s.client, Some(&gone), second, 1).await;
    woken(&mut wait_second).await.expect("second");
    assert_eq!(s.outcomes.received().get(Route::Adopted), 2);
    drop(again);
    assert_eq!(s.outcomes.adopted(), 0);
    // No longer heard: a later copy to it is not received.
    publish(&s.client, Some(&gone), CallId::new(), 1).await;
    publish(&s.client, Some(s.outcomes.address()), CallId::new(), 1).await;
    eventually(WAKE, || async {
        (s.outcomes.received().get(Route::Addressed) == 2).then_some(())
    })
    .await
    .expect("the marker arrived");
    assert_eq!(s.outcomes.received().get(Route::Adopted), 2);
}
