use chrono::Duration;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::config::StreamSettings;

fn campaign(state: CampaignState) -> Campaign {
    let now = Utc::now();
    Campaign {
        id: CampaignId::new(12).expect("valid"),
        name: "c".into(),
        description: String::new(),
        is_active: true,
        state,
        max_concurrent_calls: 20,
        max_attempts: 1,
        retry_policy: None,
        created_at: now,
        updated_at: now,
        time_zone: None,
        calling_window: None,
        calling_hours: None,
        blackout_dates: Vec::new(),
        max_call_duration_secs: None,
        starts_at: None,
        ends_at: None,
        complete_when_empty: false,
        answering_machine: Default::default(),
        max_calls_per_second: None,
        purpose: Default::default(),
        ring_timeout_secs: None,
        required_consent: None,
        opt_out_list: Default::default(),
        caller_id_pool: None,
        carrier_weight: None,
        alternate_numbers: None,
        ended_at: None,
    }
}

#[test]
fn the_config_is_the_template_with_the_campaign_filled_in() {
    let topology = Topology::load(&StreamSettings::default()).expect("loads");
    let now = Utc::now();
    let config = config(
        topology.dial_template(),
        &campaign(CampaignState::Running),
        now,
    );
    assert_eq!(config.durable_name.as_deref(), Some("dial_12"));
    assert_eq!(config.filter_subject, "calls.dial.12");
    assert_eq!(config.max_ack_pending, 20);
    assert_eq!(config.pause_until, None);
    assert!(
        !serde_json::to_string(&config)
            .expect("json")
            .contains("{campaign}")
    );
    let held = super::config(
        topology.dial_template(),
        &campaign(CampaignState::Paused),
        now,
    );
    assert_eq!(
        held.pause_until.as_ref().and_then(from_nats),
        Some(INDEFINITELY)
    );
}

#[test]
fn a_held_campaign_is_paused_a_dialled_or_drained_one_is_not() {
    let now = Utc::now();
    let running = campaign(CampaignState::Running);
    assert_eq!(
        wanted(&running, now),
        Wanted {
            max_ack_pending: 20,
            paused_until: None
        }
    );
    for state in [CampaignState::Paused, CampaignState::Draft] {
        assert_eq!(
            wanted(&campaign(state), now).paused_until,
            Some(INDEFINITELY)
        );
    }
    let mut inactive = running.clone();
    inactive.is_active = false;
    assert_eq!(wanted(&inactive, now).paused_until, Some(INDEFINITELY));
    for state in [CampaignState::Cancelled, CampaignState::Completed] {
        assert_eq!(wanted(&campaign(state), now).paused_until, None);
    }
}

#[test]
fn a_campaign_waiting_for_its_start_is_paused_until_then_and_a_hold_ends_with_the_campaign() {
    let now = Utc::now();
    let start = now + Duration::seconds(30);
    let end = now + Duration::hours(2);
    let mut waiting = campaign(CampaignState::Running);
    waiting.starts_at = Some(start);
    assert_eq!(wanted(&waiting, now).paused_until, Some(start));
    assert_eq!(wanted(&waiting, start).paused_until, None);
    // Paused as well as not started: held until resumed, not until the start.
    let mut paused = waiting.clone();
    paused.state = CampaignState::Paused;
    assert_eq!(wanted(&paused, now).paused_until, Some(INDEFINITELY));
    // The end date drains the queue, so no hold outlasts it.
    paused.ends_at = Some(end);
    assert_eq!(wanted(&paused, now).paused_until, Some(end));
    assert_eq!(wanted(&paused, end).paused_until, None);
}

#[test]
fn the_cap_is_at_least_one() {
    let mut c = campaign(CampaignState::Running);
    c.max_concurrent_calls = 0;
    assert_eq!(wanted(&c, Utc::now()).max_ack_pending, 1);
}

#[test]
fn the_plan_changes_only_what_differs() {
    let now = Utc::now();
    let w = |cap, paused_until| Wanted {
        max_ack_pending: cap,
        paused_until,
    };
    let a = |cap, paused_until| Actual {
        max_ack_pending: cap,
        paused_until,
    };
    assert!(plan(&w(5, None), None, false).create);
    assert!(plan(&w(5, None), Some(&a(5, None)), false).is_empty());
    assert!(plan(&w(5, None), Some(&a(5, None)), true).update);
    assert_eq!(
        plan(&w(7, None), Some(&a(5, None)), false),
        Plan {
            create: false,
            update: true,
            pause: None
        }
    );
    let later = now + Duration::seconds(10);
    assert_eq!(
        plan(&w(5, Some(later)), Some(&a(5, None)), false).pause,
        Some(PauseStep::Until(later))
    );
    assert_eq!(
        plan(&w(5, None), Some(&a(5, Some(later))), false).pause,
        Some(PauseStep::Resume)
    );
    // The server's own rounding of the instant is no difference.
    let rounded = later + Duration::milliseconds(300);
    assert!(plan(&w(5, Some(later)), Some(&a(5, Some(rounded))), false).is_empty());
    assert_eq!(
        plan(&w(5, Some(INDEFINITELY)), Some(&a(5, Some(later))), false).pause,
        Some(PauseStep::Until(INDEFINITELY))
    );
}

/// Applying a plan to what the server has gives what was wanted, from any state.
#[test]
fn applying_the_plan_reaches_the_wanted_state_from_any_state() {
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let instant = |rng: &mut StdRng| match rng.random_range(0..3) {
        0 => None,
        1 => Some(INDEFINITELY),
        _ => Some(now + Duration::seconds(rng.random_range(1..100))),
    };
    for _ in 0..1_000 {
        let w = Wanted {
            max_ack_pending: rng.random_range(1..50),
            paused_until: instant(&mut rng),
        };
        let before = rng.random_bool(0.9).then(|| Actual {
            max_ack_pending: rng.random_range(1..50),
            paused_until: instant(&mut rng),
        });
        let p = plan(&w, before.as_ref(), false);
        let after = match before {
            None => Actual {
                max_ack_pending: w.max_ack_pending,
                paused_until: w.paused_until,
            },
            Some(mut a) => {
                if p.update {
                    a.max_ack_pending = w.max_ack_pending;
                }
                match p.pause {
                    Some(PauseStep::Until(t)) => a.paused_until = Some(t),
                    Some(PauseStep::Resume) => a.paused_until = None,
                    None => {}
                }
                a
            }
        };
        assert!(
            plan(&w, Some(&after), false).is_empty(),
            "seed {seed}: {w:?} from {before:?}"
        );
    }
}

#[test]
fn instants_survive_the_trip_through_the_client() {
    let now = Utc::now();
    for t in [now, INDEFINITELY] {
        let back = from_nats(&to_nats(t).expect("in range")).expect("back");
        assert_eq!(back, t);
    }
    assert_eq!(INDEFINITELY.to_rfc3339(), "2200-01-01T00:00:00+00:00");
}

/// Generated over revisions: a document older than the consumer's is never applied, a newer
/// one is always recorded, and documents or consumers without a revision are not judged.
#[test]
fn only_a_document_older_than_the_consumers_is_superseded() {
    let seed = rand::random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..500 {
        let mine = rng.random_bool(0.8).then(|| rng.random_range(0..20u64));
        let theirs = rng.random_bool(0.8).then(|| rng.random_range(0..20u64));
        let old = superseded(mine, theirs);
        let newer = records_newer(mine, theirs);
        assert!(!(old && newer), "seed {seed}: {mine:?} {theirs:?}");
        match (mine, theirs) {
            (Some(m), Some(t)) => {
                assert_eq!(old, m < t, "seed {seed}");
                assert_eq!(newer, m > t, "seed {seed}");
            }
            (Some(_), None) => assert!(newer && !old, "seed {seed}"),
            (None, _) => assert!(!old && !newer, "seed {seed}"),
        }
    }
}
