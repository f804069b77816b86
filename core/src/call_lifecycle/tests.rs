use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::*;
use crate::events::OutcomeSource;

/// `phase_rank < N` or `phase_rank >= N`, read back as a predicate on a rank.
fn sql_predicate(sql: &str) -> impl Fn(u8) -> bool {
    let (op, n) = sql
        .strip_prefix("phase_rank ")
        .and_then(|rest| rest.split_once(' '))
        .expect("phase_rank <op> <n>");
    let n: u8 = n.parse().expect("a rank");
    let less = match op {
        "<" => true,
        ">=" => false,
        other => panic!("unexpected operator {other}"),
    };
    move |rank| (rank < n) == less
}

#[test]
fn the_sql_tests_say_what_is_open_says_for_every_state() {
    let open = sql_predicate(CALL_IS_OPEN_SQL);
    let ended = sql_predicate(CALL_HAS_ENDED_SQL);
    for state in CallState::ALL {
        assert_eq!(open(state.rank()), state.is_open(), "{state:?}");
        assert_eq!(ended(state.rank()), state.is_terminal(), "{state:?}");
    }
}

#[test]
fn a_failed_attempt_and_a_failed_call_show_the_same_word_and_differ_in_the_phase() {
    let attempt = CallState::Outcome(OutcomeStatus::Failed);
    let call = CallState::Ended(End::Failed);
    assert_eq!(attempt.status(), CallStatus::Failed);
    assert_eq!(call.status(), CallStatus::Failed);
    assert!(attempt.is_open() && call.is_terminal());
    assert_eq!(
        CallState::stored(CallStatus::Failed, attempt.rank()),
        Some(attempt)
    );
    assert_eq!(
        CallState::stored(CallStatus::Failed, call.rank()),
        Some(call)
    );
}

#[test]
fn every_state_is_read_back_from_its_row() {
    for state in CallState::ALL {
        assert_eq!(CallState::stored(state.status(), state.rank()), Some(state));
    }
    assert_eq!(
        CallState::stored(CallStatus::Initiated, 1),
        Some(CallState::Queued)
    );
    assert_eq!(CallState::stored(CallStatus::Completed, 3), None);
}

#[test]
fn every_event_puts_its_call_in_the_state_its_kind_names() {
    let outcome = EventKind::Outcome {
        status: OutcomeStatus::Rnr,
        source: OutcomeSource::Carrier,
        raw_status: None,
        duration_secs: None,
        external_call_id: None,
        reason: None,
        callback: None,
    };
    assert_eq!(
        CallState::of(&outcome),
        CallState::Outcome(OutcomeStatus::Rnr)
    );
    assert_eq!(
        CallState::of(&EventKind::Completed),
        CallState::Ended(End::Completed)
    );
    let failed = EventKind::Failed { reason: "x".into() };
    assert_eq!(failed.status(), CallStatus::Failed);
    assert!(failed.is_terminal() && !outcome.is_terminal());
}

/// Every allowed move goes forward by `(attempt, rank)` or stays level between two ends, so
/// the projector's fold (keep the later state) ends where the call ended, in any order.
#[test]
fn every_allowed_move_goes_forward_or_stays_among_the_ends() {
    for from in CallState::ALL {
        for to in CallState::ALL {
            for next in [1, 2] {
                if from.may_move_to(1, to, next) {
                    assert!(
                        to.supersedes(next, from, 1) || (from.is_terminal() && to.is_terminal()),
                        "{from:?} -> {to:?} (attempt {next})"
                    );
                }
            }
        }
    }
    assert!(!CallState::Ended(End::Completed).may_move_to(1, CallState::Queued, 2));
}

/// One call's history: a walk through the allowed moves from the first queued attempt,
/// stopped at a random point (an open call) or when nothing may follow.
fn history(rng: &mut StdRng) -> Vec<(u32, CallState)> {
    let mut path = vec![(1, CallState::Queued)];
    loop {
        let (attempt, state) = *path.last().expect("not empty");
        let next: Vec<(u32, CallState)> = CallState::ALL
            .into_iter()
            .flat_map(|to| [(attempt, to), (attempt + 1, to)])
            .filter(|(n, to)| *n <= 4 && state.may_move_to(attempt, *to, *n))
            .collect();
        if next.is_empty() || rng.random_bool(0.15) {
            return path;
        }
        path.push(next[rng.random_range(0..next.len())]);
    }
}

/// What the read model stores for a call after folding its events in any order: the state
/// that no other supersedes, kept as `(status, phase_rank)`.
fn fold(events: &[(u32, CallState)]) -> (CallStatus, u8) {
    let mut row: Option<(u32, CallState)> = None;
    for &(attempt, state) in events {
        if row.is_none_or(|(a, s)| state.supersedes(attempt, s, a)) {
            row = Some((attempt, state));
        }
    }
    let (_, state) = row.expect("at least the queued attempt");
    (state.status(), state.rank())
}

#[test]
fn generated_campaigns_finish_exactly_when_every_call_has_ended() {
    let seed: u64 = std::env::var("CCM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with CCM_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let open_sql = sql_predicate(CALL_IS_OPEN_SQL);
    for round in 0..2_000 {
        let calls: Vec<Vec<(u32, CallState)>> = (0..rng.random_range(0..6))
            .map(|_| history(&mut rng))
            .collect();
        let mut progress = CampaignProgress::default();
        for path in &calls {
            let &(_, now) = path.last().expect("not empty");
            // Where the call is held besides the read model: a dialer holds its message
            // until the outcome is published; a retry waits in RETRIES until queued.
            match now {
                CallState::Queued | CallState::Processing => progress.dialling += 1,
                CallState::Retrying => progress.scheduled += 1,
                _ => {}
            }
            let mut delivered = path.clone();
            delivered.shuffle(&mut rng);
            let (status, rank) = fold(&delivered);
            assert!(CallState::stored(status, rank).is_some(), "seed {seed}");
            if open_sql(rank) {
                progress.open += 1;
            }
        }
        let every_call_ended = calls
            .iter()
            .all(|path| path.last().is_some_and(|(_, s)| s.is_terminal()));
        assert_eq!(
            campaign_finished(&progress),
            every_call_ended,
            "seed {seed}, round {round}: {calls:?} gave {progress:?}"
        );
    }
}

#[test]
fn a_campaign_with_anything_in_the_pipeline_is_not_finished() {
    assert!(campaign_finished(&CampaignProgress::default()));
    for progress in [
        CampaignProgress {
            dialling: 1,
            ..Default::default()
        },
        CampaignProgress {
            scheduled: 1,
            ..Default::default()
        },
        CampaignProgress {
            read_model_behind: true,
            ..Default::default()
        },
        CampaignProgress {
            open: 1,
            ..Default::default()
        },
    ] {
        assert!(!campaign_finished(&progress), "{progress:?}");
    }
}
