//! Per-number caps of a caller-id pool: at most so many attempts from one number in any 60
//! minutes and in any 24 hours (rolling windows, so no burst at the top of an hour).
//!
//! Pure rules over the times a number was used; the dialer keeps those times in one
//! compare-and-set record per number, shared by every replica and campaign.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The caps; none: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

/// How long a number's use is remembered: the longest window.
pub fn horizon() -> Duration {
    Duration::hours(24)
}

impl Caps {
    /// Whether no cap is set (nothing needs counting).
    pub fn is_empty(&self) -> bool {
        self.per_hour.is_none() && self.per_day.is_none()
    }

    /// When one more attempt from a number used at `times` is permitted, if not at `now`.
    pub fn free_at(&self, times: &[DateTime<Utc>], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        [
            (self.per_hour, Duration::hours(1)),
            (self.per_day, Duration::hours(24)),
        ]
        .into_iter()
        .filter_map(|(cap, window)| free_in(times, cap?, window, now))
        .max()
    }
}

/// In one window: with `n` uses in `(now - window, now]` and `n >= cap`, one more is permitted
/// once the `n - cap + 1` oldest of them have left the window.
fn free_in(
    times: &[DateTime<Utc>],
    cap: u32,
    window: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut inside: Vec<DateTime<Utc>> = times
        .iter()
        .copied()
        .filter(|t| *t > now - window && *t <= now)
        .collect();
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if inside.len() < cap {
        return None;
    }
    inside.sort_unstable();
    Some(inside[inside.len() - cap] + window)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn used(times: &[DateTime<Utc>], at: DateTime<Utc>, window: Duration) -> usize {
        times
            .iter()
            .filter(|t| **t > at - window && **t <= at)
            .count()
    }

    /// Generated: a number is free exactly when both windows hold fewer uses than their cap,
    /// and the moment given is the earliest at which that is so.
    #[test]
    fn free_exactly_when_under_both_caps_and_at_the_earliest_moment() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("t");
        for _ in 0..5_000 {
            let caps = Caps {
                per_hour: rng.random_bool(0.7).then(|| rng.random_range(1..6)),
                per_day: rng.random_bool(0.7).then(|| rng.random_range(1..20)),
            };
            let times: Vec<DateTime<Utc>> = (0..rng.random_range(0..30))
                .map(|_| now - Duration::seconds(rng.random_range(0..30 * 3600)))
                .collect();
            let under = |at: DateTime<Utc>| {
                caps.per_hour
                    .is_none_or(|c| used(&times, at, Duration::hours(1)) < c as usize)
                    && caps
                        .per_day
                        .is_none_or(|c| used(&times, at, Duration::hours(24)) < c as usize)
            };
            match caps.free_at(&times, now) {
                None => assert!(under(now), "seed {seed}: {caps:?} {times:?}"),
                Some(at) => {
                    assert!(at > now, "seed {seed}");
                    assert!(!under(now), "seed {seed}: capped while under");
                    assert!(under(at), "seed {seed}: still capped at {at}");
                    assert!(
                        !under(at - Duration::seconds(1)),
                        "seed {seed}: free earlier than {at}"
                    );
                }
            }
        }
    }
}
