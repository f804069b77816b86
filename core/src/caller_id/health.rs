//! Which numbers of a pool answer far less than the rest: the low-answer-rate flag.
//!
//! A number whose callees stop answering has usually been labelled as spam by the carriers'
//! analytics; showing it again costs answers. Each number's answer rate over a recent window
//! is compared with the rate of the *other* numbers of the same pool (leaving the number out,
//! so one bad number among two cannot drag the comparison down with it), and flagged when it is
//! under `ratio` times that rate. Both sides need `min_attempts` attempts, so a handful of
//! unanswered calls flags nothing.

use serde::{Deserialize, Serialize};

/// One number's attempts and answers in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberStats {
    pub caller_id: String,
    pub attempts: u64,
    pub answered: u64,
}

impl NumberStats {
    /// The answer rate, 0 without attempts.
    pub fn rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.answered as f64 / self.attempts as f64
        }
    }
}

/// When a number counts as far below its pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlagRule {
    /// Attempts the number, and the rest of the pool together, need before any comparison.
    pub min_attempts: u64,
    /// Flagged under this share of the rest of the pool's rate (0.5: half of it).
    pub ratio: f64,
}

/// A flagged number, with its rate and the rest of the pool's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub caller_id: String,
    pub attempts: u64,
    pub answered: u64,
    pub answer_rate: f64,
    pub pool_answer_rate: f64,
}

/// The numbers of one pool that `rule` flags.
pub fn flagged(pool: &[NumberStats], rule: FlagRule) -> Vec<Flag> {
    let attempts: u64 = pool.iter().map(|n| n.attempts).sum();
    let answered: u64 = pool.iter().map(|n| n.answered).sum();
    pool.iter()
        .filter_map(|n| {
            let others = NumberStats {
                caller_id: String::new(),
                attempts: attempts - n.attempts,
                answered: answered - n.answered,
            };
            let enough = n.attempts >= rule.min_attempts && others.attempts >= rule.min_attempts;
            (enough && others.answered > 0 && n.rate() < rule.ratio * others.rate()).then(|| Flag {
                caller_id: n.caller_id.clone(),
                attempts: n.attempts,
                answered: n.answered,
                answer_rate: n.rate(),
                pool_answer_rate: others.rate(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// Generated pools: a flagged number has enough attempts on both sides and a rate under
    /// the ratio of the others'; every number that meets those is flagged; and a number
    /// answered at the pool's own rate is never flagged.
    #[test]
    fn flagged_exactly_when_far_below_the_rest_with_enough_attempts() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..5_000 {
            let pool: Vec<NumberStats> = (0..rng.random_range(1..8))
                .map(|i| {
                    let attempts = rng.random_range(0..200);
                    NumberStats {
                        caller_id: format!("+1212555{i:04}"),
                        attempts,
                        answered: rng.random_range(0..=attempts),
                    }
                })
                .collect();
            let rule = FlagRule {
                min_attempts: rng.random_range(1..50),
                ratio: rng.random_range(0.1..0.9),
            };
            let flags = flagged(&pool, rule);
            for n in &pool {
                let others: Vec<&NumberStats> =
                    pool.iter().filter(|o| o.caller_id != n.caller_id).collect();
                let (a, b) = others
                    .iter()
                    .fold((0u64, 0u64), |(a, b), o| (a + o.attempts, b + o.answered));
                let far_below = n.attempts >= rule.min_attempts
                    && a >= rule.min_attempts
                    && b > 0
                    && n.rate() < rule.ratio * (b as f64 / a as f64);
                let is_flagged = flags.iter().any(|f| f.caller_id == n.caller_id);
                assert_eq!(
                    is_flagged, far_below,
                    "seed {seed}: {n:?} in {pool:?} {rule:?}"
                );
            }
            // A pool whose numbers all answer alike flags none.
            let alike: Vec<NumberStats> = pool
                .iter()
                .map(|n| NumberStats {
                    answered: n.attempts / 2,
                    attempts: n.attempts / 2 * 2,
                    ..n.clone()
                })
                .collect();
            assert!(flagged(&alike, rule).is_empty(), "seed {seed}: {alike:?}");
        }
    }

    #[test]
    fn one_silent_number_among_answered_ones_is_flagged() {
        let n = |id: &str, attempts, answered| NumberStats {
            caller_id: id.into(),
            attempts,
            answered,
        };
        let rule = FlagRule {
            min_attempts: 20,
            ratio: 0.5,
        };
        let pool = [n("a", 40, 20), n("b", 40, 18), n("c", 40, 2)];
        let flags = flagged(&pool, rule);
        assert_eq!(flags.len(), 1);
        assert_eq!(flags[0].caller_id, "c");
        assert!((flags[0].pool_answer_rate - 38.0 / 80.0).abs() < 1e-9);
        // Too few attempts to tell.
        assert!(flagged(&[n("a", 40, 20), n("c", 19, 0)], rule).is_empty());
    }
}
