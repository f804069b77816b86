//! The claim decisions over generated states (seeded; `CCM_SEED` replays a run).

use super::plan::*;
use super::wire::{Phase, Record, Slot};

/// xorshift64*: enough randomness for generated cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn seed() -> u64 {
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("seed {seed} (CCM_SEED={seed} replays it)");
    seed
}

fn record(rng: &mut Rng, now: i64) -> Record {
    let calls = ["a", "b"];
    let at = now - rng.below(400) as i64;
    let slot = match rng.below(4) {
        0 => Slot::Free,
        1 => Slot::Purged,
        2 => Slot::Released {
            call: Some(rng.pick(&calls).to_owned()).filter(|_| rng.below(4) > 0),
            ended: at,
        },
        _ => Slot::Held {
            call: rng.pick(&calls).to_owned(),
            phase: rng.pick(&[Phase::Pending, Phase::Bound, Phase::Legacy]),
            campaign: None,
            at,
        },
    };
    Record {
        key: "k".into(),
        revision: rng.below(5),
        slot,
    }
}

#[test]
fn generated_claim_states_never_free_a_live_call_nor_take_another_calls_number() {
    let mut rng = Rng(seed());
    let now = 1_000_000;
    for _ in 0..20_000 {
        let record = record(&mut rng, now);
        let (ttl, window) = (rng.pick(&[4, 120]), rng.pick(&[0, 60, 300]));
        let latest = match rng.below(3) {
            0 => None,
            1 => Some(None),
            _ => Some(Some(Latest {
                terminal: rng.below(2) == 0,
                at: now - rng.below(400) as i64,
            })),
        };
        let in_calls = rng.pick(&[None, Some(true), Some(false)]);
        let facts = Facts { latest, in_calls };
        let step = reap_step(&record, rng.below(2) == 0, facts, now, ttl, window);
        let terminal = matches!(latest, Some(Some(l)) if l.terminal);
        if let Slot::Held { phase, .. } = &record.slot {
            let frees = matches!(step, ReapStep::Release { .. } | ReapStep::Purge);
            let ended_since = matches!((latest, &record.slot), (Some(Some(l)), Slot::Held { at, .. }) if l.terminal && l.at > *at);
            assert!(
                !(frees && *phase == Phase::Pending && !ended_since),
                "a pending claim is freed only by its TTL or an end after it: {record:?} {facts:?} -> {step:?}"
            );
            assert!(
                !(frees && *phase == Phase::Bound && !terminal),
                "a bound claim is freed only when its call ended: {record:?} {facts:?} -> {step:?}"
            );
            assert!(
                !(matches!(step, ReapStep::Purge) && in_calls != Some(false)),
                "a claim is purged only when its call was never published: {record:?} {facts:?}"
            );
            if matches!(step, ReapStep::Bind) {
                let live = matches!(latest, Some(Some(l)) if !l.terminal);
                assert!(
                    live || in_calls == Some(true),
                    "bound without proof: {record:?} {facts:?}"
                );
            }
        }
        let call = rng.pick(&["a", "b"]);
        let claim = claim_step(&record, call, now, window);
        if let Slot::Held { call: by, .. } = &record.slot {
            assert_eq!(
                by != call,
                claim == ClaimStep::InProgress,
                "{record:?} claimed by {call}"
            );
        }
        if let Slot::Released { call: by, ended } = &record.slot
            && by.as_deref() != Some(call)
            && window > 0
            && now - ended < window
        {
            assert_eq!(claim, ClaimStep::WithinWindow, "{record:?}");
        }
        let release = release_step(&record, call, now - 10, now, window);
        assert_eq!(
            release == ReleaseStep::Skip,
            !record.held_by(call),
            "{record:?} released by {call}"
        );
        if let ReleaseStep::Mark { ttl_secs } = release {
            assert!(
                ttl_secs as i64 <= window,
                "a marker outlives its window: {ttl_secs}"
            );
        }
    }
}

/// The server's limit marker of an expired pending claim (no `KV-Operation`, no value) frees
/// the number: read as a plain give-back, never as a claim held by nobody.
#[test]
fn a_limit_marker_frees_the_number() {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Marker-Reason", "MaxAge");
    headers.insert("Nats-TTL", "60");
    let record = Record::of("15558000001".into(), 9, 1_700_000_000, &headers, b"");
    assert_eq!(record.slot, Slot::Purged);
    assert_eq!(
        claim_step(&record, "any-call", 1_700_000_001, 60),
        ClaimStep::Take
    );
}
