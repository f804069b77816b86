//! The dialer with the Twilio adapter against carrier-sim over HTTP, callbacks through
//! ingest: the concurrency cap, never dialling twice across a crash, callback faults,
//! signatures and carrier outages.

use std::time::{Duration, Instant};

use ccm_carrier_sim::SimConfig;
use ccm_tests::{TestEnv, eventually};

use crate::carrier_stack::{AUTH_TOKEN, CarrierStack, Dialer, statuses};

/// Every call answered, quickly.
fn quick_sim(call_ms: u64) -> SimConfig {
    SimConfig {
        picked: 1,
        disconnected: 0,
        rnr: 0,
        failed: 0,
        call_ms,
        call_jitter_ms: call_ms,
        ..SimConfig::default()
    }
}

/// Waits until every one of `n` calls is terminal in Postgres; returns the status counts.
async fn all_terminal(
    env: &TestEnv,
    campaign: u64,
    n: i64,
    within: Duration,
) -> Vec<(String, i64)> {
    let pg = env.pg().await.expect("postgres");
    let done = eventually(within, || async {
        let counts = statuses(&pg, campaign).await;
        let terminal: i64 = counts
            .iter()
            .filter(|(s, _)| s == "COMPLETED" || s == "FAILED")
            .map(|(_, c)| c)
            .sum();
        (terminal == n).then_some(counts)
    })
    .await;
    match done {
        Some(counts) => counts,
        None => panic!(
            "not all {n} calls terminal: {:?}",
            statuses(&pg, campaign).await
        ),
    }
}

/// Each attempt the simulator saw was requested exactly once.
fn assert_placed_once(stats: &ccm_carrier_sim::ledger::Stats) {
    let repeated: Vec<_> = stats
        .attempts
        .values()
        .filter(|a| a.requests != 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "attempts requested more than once: {repeated:?}"
    );
    assert_eq!(stats.repeated_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_capped_at_twenty_never_exceed_twenty_live_and_all_complete() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, quick_sim(20)).await;
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(20).await;

    let started = Instant::now();
    stack.calls(campaign, 1000).await;
    let counts = all_terminal(&env, campaign, 1000, Duration::from_secs(90)).await;
    eprintln!(
        "1000 calls, cap 20, 20-40 ms calls: all terminal after {:?}",
        started.elapsed()
    );
    assert_eq!(counts, [("COMPLETED".to_owned(), 1000)]);

    let stats = stack.stats().await;
    let c = &stats.campaigns[&campaign.to_string()];
    eprintln!("carrier-sim peak live calls: {}", c.peak);
    assert_eq!(c.placed, 1000);
    assert!(c.peak <= 20, "peak {} exceeds the cap", c.peak);
    assert!(c.peak >= 10, "the cap was not used (peak {})", c.peak);
    assert_placed_once(&stats);
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_killed_with_calls_in_flight_places_nothing_twice_and_loses_nothing() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, quick_sim(1500)).await;
    let mut dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(30).await;
    stack.calls(campaign, 120).await;

    let in_flight = eventually(Duration::from_secs(20), || async {
        let stats = stack.stats().await;
        stats
            .campaigns
            .get(&campaign.to_string())
            .filter(|c| c.live >= 20)
            .map(|c| c.placed)
    })
    .await
    .expect("calls in flight");
    dialer.kill();
    eprintln!("dialer killed with {in_flight} attempts placed");
    let dialer = Dialer::start(stack.config.clone());

    // The killed dialer's messages come back after AckWait (30 s): within 90 s all is done.
    let counts = all_terminal(&env, campaign, 120, Duration::from_secs(90)).await;
    let stats = stack.stats().await;
    assert_placed_once(&stats);
    let c = &stats.campaigns[&campaign.to_string()];
    eprintln!(
        "after kill and restart: {counts:?}, {} placed, peak {}",
        c.placed, c.peak
    );
    assert!(c.peak <= 30, "peak {}", c.peak);
    // A call whose Dialing was published but whose request never left may end FAILED
    // (timeout); every other call was placed exactly once and completed.
    let completed = counts
        .iter()
        .find(|(s, _)| s == "COMPLETED")
        .map_or(0, |(_, n)| *n);
    assert_eq!(
        completed,
        i64::try_from(c.placed).expect("count"),
        "{counts:?}"
    );
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_out_of_order_callbacks_change_nothing() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = SimConfig {
        duplicate_rate: 1.0,
        reorder_rate: 1.0,
        ..quick_sim(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(10).await;
    stack.calls(campaign, 40).await;
    let counts = all_terminal(&env, campaign, 40, Duration::from_secs(30)).await;
    assert_eq!(counts, [("COMPLETED".to_owned(), 40)]);

    // Every call got its final status twice and `ringing` after it...
    let stats = eventually(Duration::from_secs(10), || async {
        let stats = stack.stats().await;
        (stats.callbacks_sent == 120).then_some(stats)
    })
    .await
    .expect("3 callbacks per call delivered");
    assert_placed_once(&stats);
    // ...yet each attempt has exactly one outcome and one attempt.
    let js = env.jetstream().await.expect("jetstream");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    let info = events
        .info_with_subjects("calls.outcome.>")
        .await
        .expect("subjects");
    let per_call: Vec<(String, usize)> = {
        use futures::TryStreamExt;
        info.try_collect::<Vec<(String, usize)>>()
            .await
            .expect("subject counts")
    };
    assert_eq!(per_call.len(), 40);
    assert!(per_call.iter().all(|(_, n)| *n == 1), "{per_call:?}");
    let pg = env.pg().await.expect("postgres");
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT attempt_count FROM calls WHERE campaign_id = $1")
            .bind(campaign as i64)
            .fetch_all(&pg)
            .await
            .expect("attempts");
    assert_eq!(attempts, [1]);
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_twilio_signature_gets_403_and_publishes_nothing() {
    let env = TestEnv::start().await.expect("test environment");
    let stack = CarrierStack::start(&env, quick_sim(20)).await;
    let call = ccm_core::CallId::new();
    let url = format!(
        "{}/api/v1/callbacks/twilio?call_id={call}&attempt=1&campaign_id=1",
        stack.client.base
    );
    let params: Vec<(String, String)> = [
        ("CallSid", "CA1"),
        ("CallStatus", "completed"),
        ("CallDuration", "12"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let post = |signature: String| {
        stack
            .client
            .http
            .post(&url)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
    };
    let js = env.jetstream().await.expect("jetstream");
    let mut events = js.get_stream("CALL_EVENTS").await.expect("stream");

    let wrong = ccm_core::twilio::signature("not-the-token", &url, &params);
    assert_eq!(post(wrong).await.expect("post").status(), 403);
    let unsigned = stack
        .client
        .http
        .post(&url)
        .form(&params)
        .send()
        .await
        .expect("post");
    assert_eq!(unsigned.status(), 403);
    let mut tampered = params.clone();
    tampered[1].1 = "busy".into();
    let signed_other = ccm_core::twilio::signature(AUTH_TOKEN, &url, &tampered);
    assert_eq!(post(signed_other).await.expect("post").status(), 403);
    assert_eq!(
        events.info().await.expect("info").state.messages,
        0,
        "nothing published"
    );

    // The same callback correctly signed is accepted and published once.
    let right = ccm_core::twilio::signature(AUTH_TOKEN, &url, &params);
    assert_eq!(post(right.clone()).await.expect("post").status(), 204);
    assert_eq!(post(right).await.expect("post").status(), 204);
    let outcome = events
        .direct_get_last_for_subject(format!("calls.outcome.1.{call}"))
        .await
        .expect("outcome published");
    let event: serde_json::Value = serde_json::from_slice(&outcome.payload).expect("json");
    assert_eq!(event["status"], "PICKED");
    assert_eq!(event["raw_status"], "completed");
    assert_eq!(event["duration_secs"], 12);
    let outcomes = {
        use futures::TryStreamExt;
        let info = events
            .info_with_subjects("calls.outcome.>")
            .await
            .expect("subjects");
        info.try_collect::<Vec<(String, usize)>>()
            .await
            .expect("subject counts")
    };
    assert_eq!(
        outcomes,
        [(format!("calls.outcome.1.{call}"), 1)],
        "the repeat is dropped"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_5xx_backs_off_then_succeeds() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = SimConfig {
        fail_first: 12,
        ..quick_sim(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(10).await;
    stack.calls(campaign, 10).await;
    let counts = all_terminal(&env, campaign, 10, Duration::from_secs(40)).await;
    assert_eq!(counts, [("COMPLETED".to_owned(), 10)]);
    let stats = stack.stats().await;
    assert_eq!(
        stats.injected_errors, 12,
        "every refused request was retried later"
    );
    assert_eq!(stats.placed, 10);
    assert_placed_once(&stats);
    dialer.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_4xx_ends_the_attempt_failed_with_the_carriers_reason() {
    let env = TestEnv::start().await.expect("test environment");
    let sim = SimConfig {
        reject_rate: 1.0,
        ..quick_sim(20)
    };
    let stack = CarrierStack::start(&env, sim).await;
    let dialer = Dialer::start(stack.config.clone());
    let campaign = stack.campaign(5).await;
    stack.calls(campaign, 3).await;
    let counts = all_terminal(&env, campaign, 3, Duration::from_secs(20)).await;
    assert_eq!(counts, [("FAILED".to_owned(), 3)]);
    let js = env.jetstream().await.expect("jetstream");
    let events = js.get_stream("CALL_EVENTS").await.expect("stream");
    let pg = env.pg().await.expect("postgres");
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT call_id FROM calls WHERE campaign_id = $1")
            .bind(campaign as i64)
            .fetch_all(&pg)
            .await
            .expect("ids");
    for id in ids {
        let outcome = events
            .direct_get_last_for_subject(format!("calls.outcome.{campaign}.{id}"))
            .await
            .expect("outcome");
        let event: serde_json::Value = serde_json::from_slice(&outcome.payload).expect("json");
        assert_eq!(event["status"], "FAILED");
        assert_eq!(event["source"], "rejected");
        let reason = event["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("400") && reason.contains("not reachable"),
            "{reason}"
        );
    }
    assert_eq!(stack.stats().await.placed, 0);
    dialer.stop().await;
    stack.stop().await;
}
