//! Carrier-aware throttling (issue 22 item 5): a carrier account limited to N calls per
//! second, answering 429 over it, and two dialers that start believing it takes twice as
//! many. The account's shared rate is cut by the 429s and the throttled calls are put
//! off, not failed: every call ends COMPLETED with its one attempt, none is placed twice,
//! and the 429s stay a bounded share of the requests.

use std::time::Duration;

use ccm_tests::{TestEnv, eventually};
use serde_json::json;

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
        rate > 0.5 * f64::from(N),
        "placed only {rate:.2}/s against a limit of {N}/s"
    );
    first.stop().await;
    second.stop().await;
    stack.stop().await;
}

/// Two campaigns of weights 3 and 1 on a saturated carrier account: while both have calls
/// waiting, their placed rates follow their weights; a weight outside 1 to 100 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_share_a_saturated_account_by_their_weights() {
    let env = TestEnv::start().await.expect("test environment");
    const N: u32 = 8;
    let sim = ccm_carrier_sim::SimConfig {
        account_cps: N,
        ..answering(200)
    };
    // The account's rate set under the carrier's, and caps high enough for each campaign to
    // keep calls waiting for its slots: saturated, with few 429s. (After a
    // cut, slots already reserved keep the rate they were reserved at, so a campaign with a
    // deeper queue keeps its old pace for a while: the shares follow the weights at a steady
    // rate, see docs/carriers.md.)
    let stack = CarrierStack::start_with(&env, sim, |config| {
        config.dialer.carrier_account.max_calls_per_second = f64::from(N - 2);
        config.dialer.carrier_account.increase_per_second = 0.8;
    })
    .await;
    let pg = env.pg().await.expect("postgres");
    let (status, body) = stack
        .send(
            "/api/v1/campaigns",
            json!({"name": "w0", "max_concurrent_calls": 5, "carrier_weight": 0}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_carrier_weight")),
        "{body}"
    );
    let mut ids = Vec::new();
    for weight in [3, 1] {
        let (status, body) = stack
            .send(
                "/api/v1/campaigns",
                json!({"name": format!("w{weight}"), "max_concurrent_calls": 40,
                       "max_attempts": 1, "carrier_weight": weight}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["carrier_weight"], weight, "{body}");
        ids.push(body["id"].as_u64().expect("id"));
    }
    let first = Dialer::start(stack.config.clone());
    let second = Dialer::start(stack.config.clone());
    let calls = 60;
    let (heavy, light) = (ids[0], ids[1]);
    tokio::join!(
        stack.calls(heavy, calls),
        stack.calls_from(light, calls, 5_000_000)
    );
    for id in [heavy, light] {
        let done = eventually(Duration::from_secs(120), || async {
            (statuses(&pg, id).await == [("COMPLETED".to_owned(), i64::from(calls))]).then_some(())
        })
        .await;
        assert!(done.is_some(), "{:?}", statuses(&pg, id).await);
    }
    let stats = stack.stats().await;
    assert_eq!(stats.repeated_requests, 0);
    let times = |id: u64| -> Vec<u64> {
        let mut t: Vec<u64> = stats
            .attempts
            .values()
            .filter(|a| a.campaign == id.to_string())
            .map(|a| a.placed_ms)
            .collect();
        t.sort_unstable();
        t
    };
    let (h, l) = (times(heavy), times(light));
    // Both saturate the account from the later of their first placements until the heavier
    // one's queue runs dry (its last calls are stragglers a 429 put off; the lighter one
    // then gets the whole rate).
    let from = h[0].max(l[0]) + 1000;
    let to = h[h.len() * 9 / 10].min(l[l.len() - 1]);
    let within = |t: &[u64]| t.iter().filter(|x| (from..=to).contains(*x)).count() as f64;
    let (hn, ln) = (within(&h), within(&l));
    let secs = (to - from) as f64 / 1000.0;
    let account = &stats.accounts[ACCOUNT_SID];
    println!(
        "over {secs:.1} s: weight 3 placed {hn} ({:.2}/s), weight 1 placed {ln} ({:.2}/s), \
         ratio {:.2}; throttled {} of {}",
        hn / secs,
        ln / secs,
        hn / ln,
        account.throttled,
        account.placed + account.throttled
    );
    assert!(secs > 3.0, "the campaigns hardly overlapped: {secs} s");
    assert!(
        (2.4..=3.75).contains(&(hn / ln)),
        "weights 3:1 placed {hn}:{ln}"
    );
    first.stop().await;
    second.stop().await;
    stack.stop().await;
}
