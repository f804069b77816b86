//! Carrier-aware throttling (issue 22 item 5): a carrier account limited to N calls per
//! second, answering 429 over it, and two dialers that start believing it takes twice as
//! many. The account's shared rate is cut by the 429s and the throttled calls are put
//! off, not failed: every call ends COMPLETED with its one attempt, none is placed twice,
//! and the 429s stay a bounded share of the requests.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};

use crate::carrier_stack::{ACCOUNT_SID, CarrierStack, Dialer, answering, statuses};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dialers_slow_down_to_the_carrier_accounts_rate_and_lose_no_call() {
    let env = TestEnv::start().await.expect("test environment");
    const N: u32 = 5;
    let sim = ccm_carrier_sim::SimConfig {
        account_cps: N,
        ..answering(200)
    };
    let stack = CarrierStack::start_with(&env, sim, |config| {
        let account = &mut config.dialer.carrier_account;
        account.max_calls_per_second = f64::from(2 * N);
        account.increase_per_second = 0.5;
    })
    .await;
    let pg = env.pg().await.expect("postgres");
    // One attempt per call: a 429 taken as a failed attempt would end the call FAILED.
    let id = stack.campaign(20).await;
    let first = Dialer::start(stack.config.clone());
    let second = Dialer::start(stack.config.clone());
    let calls = 60;
    stack.calls(id, calls).await;
    let done = eventually(Duration::from_secs(90), || async {
        (statuses(&pg, id).await == [("COMPLETED".to_owned(), i64::from(calls))]).then_some(())
    })
    .await;
    assert!(done.is_some(), "{:?}", statuses(&pg, id).await);
    let stats = stack.stats().await;
    assert_eq!(stats.placed, u64::from(calls));
    assert_eq!(stats.repeated_requests, 0, "an attempt was requested twice");
    assert!(
        stats.number_overlaps.is_empty(),
        "{:?}",
        stats.number_overlaps
    );
    let account = &stats.accounts[ACCOUNT_SID];
    let share = account.throttled as f64 / (account.throttled + account.placed) as f64;
    // When the calls were placed: after the first seconds (the rate learnt), the placed
    // rate is near N (the carrier never lets more through).
    let mut placed: Vec<u64> = stats.attempts.values().map(|a| a.placed_ms).collect();
    placed.sort_unstable();
    let span_s = (placed[placed.len() - 1] - placed[0]) as f64 / 1000.0;
    let rate = (placed.len() - 1) as f64 / span_s;
    println!(
        "placed {} in {span_s:.1} s ({rate:.2}/s, carrier limit {N}/s), throttled {} ({:.1} %)",
        account.placed,
        account.throttled,
        share * 100.0
    );
    assert!(share < 0.3, "429 share {share}");
    assert!(
        rate > 0.6 * f64::from(N),
        "placed only {rate:.2}/s against a limit of {N}/s"
    );
    first.stop().await;
    second.stop().await;
    stack.stop().await;
}
