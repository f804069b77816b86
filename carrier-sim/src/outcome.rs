//! The outcome of a simulated call, drawn from the configured mix.

use ccm_core::OutcomeStatus;
use rand::Rng;

use crate::SimConfig;

/// What happened to a simulated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    pub status: OutcomeStatus,
    /// Talk time reported to the callback: zero unless answered.
    pub duration_secs: u32,
}

/// Draws an outcome with the configured weights (all zero: every call answered).
pub fn draw(config: &SimConfig) -> Drawn {
    let weights = [
        (OutcomeStatus::Picked, config.picked),
        (OutcomeStatus::Disconnected, config.disconnected),
        (OutcomeStatus::Rnr, config.rnr),
        (OutcomeStatus::Failed, config.failed),
    ];
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut rng = rand::rng();
    let mut status = OutcomeStatus::Picked;
    if total > 0 {
        let mut pick = rng.random_range(0..total);
        for (candidate, weight) in weights {
            if pick < weight {
                status = candidate;
                break;
            }
            pick -= weight;
        }
    }
    let duration_secs = match status {
        OutcomeStatus::Picked => rng.random_range(5..=180),
        _ => 0,
    };
    Drawn {
        status,
        duration_secs,
    }
}

/// The outcome of a call to `number`: answered by a callee who opts out, unanswered at a
/// number configured so, else drawn from the mix.
pub fn of_number(config: &SimConfig, number: &str, opted_out: bool) -> Drawn {
    if opted_out {
        answered(config)
    } else if config.unanswered_numbers.iter().any(|n| n == number) {
        Drawn {
            status: OutcomeStatus::Rnr,
            duration_secs: 0,
        }
    } else {
        draw(config)
    }
}

/// An answered call (a callee who opts out answers to press the digit).
pub fn answered(_config: &SimConfig) -> Drawn {
    Drawn {
        status: OutcomeStatus::Picked,
        duration_secs: rand::rng().random_range(5..=60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_its_weights() {
        let config = SimConfig {
            picked: 1,
            disconnected: 0,
            rnr: 1,
            failed: 0,
            ..SimConfig::default()
        };
        let mut picked = 0;
        for _ in 0..2000 {
            let drawn = draw(&config);
            assert!(matches!(
                drawn.status,
                OutcomeStatus::Picked | OutcomeStatus::Rnr
            ));
            if drawn.status == OutcomeStatus::Picked {
                picked += 1;
                assert!(drawn.duration_secs >= 5);
            } else {
                assert_eq!(drawn.duration_secs, 0);
            }
        }
        assert!((800..1200).contains(&picked), "{picked}");
    }
}
