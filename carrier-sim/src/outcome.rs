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

/// An unanswered call (no-answer, `RNR`).
pub fn unanswered() -> Drawn {
    Drawn {
        status: OutcomeStatus::Rnr,
        duration_secs: 0,
    }
}

/// The outcome of a call to `number` showing `caller_id`: answered by a callee who opts
/// out (they answer to press the digit), unanswered at a number configured so (a mobile
/// that rings out) or when the caller id is labelled as spam, else drawn from the mix.
pub fn of_call(
    config: &SimConfig,
    number: &str,
    caller_id: Option<&str>,
    opted_out: bool,
) -> Drawn {
    let spam = caller_id.is_some_and(|c| config.spam_caller_ids.iter().any(|s| s == c));
    if opted_out {
        answered(config)
    } else if spam || config.unanswered_numbers.iter().any(|n| n == number) {
        unanswered()
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

    #[test]
    fn an_opt_out_answers_and_an_unanswered_number_or_a_spam_caller_id_rings_out() {
        // Every call not singled out is answered, so any RNR comes from the two lists.
        let config = SimConfig {
            unanswered_numbers: vec!["+15557000001".into()],
            spam_caller_ids: vec!["+12127360002".into()],
            picked: 1,
            disconnected: 0,
            rnr: 0,
            failed: 0,
            ..SimConfig::default()
        };
        let cases = [
            (
                "+15557000001",
                Some("+12127360001"),
                false,
                OutcomeStatus::Rnr,
            ),
            (
                "+15557000002",
                Some("+12127360002"),
                false,
                OutcomeStatus::Rnr,
            ),
            (
                "+15557000001",
                Some("+12127360002"),
                false,
                OutcomeStatus::Rnr,
            ),
            (
                "+15557000002",
                Some("+12127360001"),
                false,
                OutcomeStatus::Picked,
            ),
            ("+15557000002", None, false, OutcomeStatus::Picked),
            // A callee who opts out answers to press the digit, whatever the lists say.
            (
                "+15557000001",
                Some("+12127360002"),
                true,
                OutcomeStatus::Picked,
            ),
        ];
        for (number, caller_id, opted_out, status) in cases {
            let drawn = of_call(&config, number, caller_id, opted_out);
            assert_eq!(drawn.status, status, "{number} from {caller_id:?}");
        }
    }
}
