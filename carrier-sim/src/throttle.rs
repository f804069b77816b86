//! A carrier account's own limits: calls per second and live calls per account.
//!
//! Real carriers limit each account, whatever the campaigns behind it: Twilio queues or
//! refuses (HTTP 429, error 20429) calls over the account's CPS, Vonage allows 3 CPS,
//! Bandwidth 5 CPS and a number of sessions. The simulator enforces both limits per account
//! (the Twilio account sid; the old contract has one account, [`HTTP_ACCOUNT`]) and answers
//! 429 with `Retry-After` over them, placing nothing, so the dialer's throttling is tested
//! against a carrier that actually pushes back.
//!
//! The rate is a sliding one-second window of accepted placements: at most `per_second`
//! placements in any second, which is how carriers count CPS (no burst above the rate).

use std::collections::VecDeque;

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

/// The account of the old contract, which names none.
pub const HTTP_ACCOUNT: &str = "http";

/// An account's limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub per_second: u32,
    pub max_live: u64,
}

/// The placements an account made in the last second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Window {
    placed_ms: VecDeque<u64>,
}

/// Whether a new placement of an account with `live` calls may go at `now_ms`: `Err` holds
/// how long to wait before asking again, in milliseconds. An accepted placement is recorded.
pub(crate) fn admit(
    window: &mut Window,
    now_ms: u64,
    live: u64,
    limits: Limits,
) -> Result<(), u64> {
    while window
        .placed_ms
        .front()
        .is_some_and(|t| now_ms.saturating_sub(*t) >= 1000)
    {
        window.placed_ms.pop_front();
    }
    if limits.max_live > 0 && live >= limits.max_live {
        // When a call ends is up to the callee: ask again in a second.
        return Err(1000);
    }
    if limits.per_second > 0 && window.placed_ms.len() >= limits.per_second as usize {
        let oldest = window.placed_ms.front().copied().unwrap_or(now_ms);
        return Err((oldest + 1000).saturating_sub(now_ms).max(1));
    }
    window.placed_ms.push_back(now_ms);
    Ok(())
}

/// `Retry-After` in whole seconds (the header's unit), never 0.
pub(crate) fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The 429 answer: `body` with `Retry-After`.
pub(crate) fn too_many(retry_after_ms: u64, body: serde_json::Value) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(
            header::RETRY_AFTER,
            retry_after_secs(retry_after_ms).to_string(),
        )],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Whatever the arrival times, no second holds more than `per_second` accepted
    /// placements, and a refusal's wait ends when one is free again.
    #[test]
    fn no_second_holds_more_than_the_rate() {
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let per_second = rng.random_range(1..20);
            let limits = Limits {
                per_second,
                max_live: 0,
            };
            let mut window = Window::default();
            let mut now = 0u64;
            let mut accepted = Vec::new();
            for _ in 0..300 {
                now += rng.random_range(0..120);
                match admit(&mut window, now, 0, limits) {
                    Ok(()) => accepted.push(now),
                    Err(wait) => {
                        assert!((1..=1000).contains(&wait), "seed {seed}: wait {wait}");
                        let mut probe = window.clone();
                        assert!(
                            admit(&mut probe, now + wait, 0, limits).is_ok(),
                            "seed {seed}: still refused after the wait"
                        );
                    }
                }
            }
            for (i, t) in accepted.iter().enumerate() {
                let within = accepted[i..].iter().take_while(|u| **u < t + 1000).count();
                assert!(
                    within <= per_second as usize,
                    "seed {seed}: {within} in a second"
                );
            }
        }
    }

    #[test]
    fn live_calls_over_the_cap_are_refused_and_zero_is_unlimited() {
        let mut window = Window::default();
        let capped = Limits {
            per_second: 0,
            max_live: 2,
        };
        assert_eq!(admit(&mut window, 0, 1, capped), Ok(()));
        assert_eq!(admit(&mut window, 0, 2, capped), Err(1000));
        for i in 0..1000 {
            assert_eq!(admit(&mut window, 0, i, Limits::default()), Ok(()));
        }
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
