//! The carrier account's rate as a pure decision (AIMD): each placement takes the next slot
//! at the current rate; a 429 cuts the rate (multiplicative decrease) and holds it for
//! `cut_every`; each second after that without a 429 gives back
//! `increase_per_second` (additive increase), up to the configured maximum.
//!
//! Why AIMD: the carrier's real limit is not known exactly (Twilio's CPS is per account and
//! may change, other tenants of a shared account use some) and only shows as 429s; AIMD
//! finds it from below, backs off hard when it overshoots and shares it fairly between
//! competing senders, as TCP does. Several 429s answered for one overshoot (calls already on
//! their way) cut once: a cut counts only `cut_every` after the last one.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// A campaign taking the account's slots lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub weight: u32,
    /// Its last reservation.
    pub seen: Micros,
    /// Its next free slot.
    pub slot: Micros,
}

/// How long a campaign that reserved nothing still counts in the shares.
const ACTIVE: Micros = 5_000_000;

/// The shared state of one account, as stored.
///
/// The account's rate is divided between the campaigns reserving slots lately in proportion
/// to their weights; each takes slots on its own schedule at its share. A campaign alone
/// has the whole rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRate {
    /// The campaigns reserving lately, by id.
    #[serde(default)]
    pub campaigns: BTreeMap<String, Share>,
    /// Calls per second now.
    pub rate: f64,
    /// When the rate was last cut.
    pub cut_at: Micros,
    /// Up to when the increase has been counted.
    pub grown_at: Micros,
    /// The latest end of a `Retry-After` the carrier asked for: the throttled calls wait
    /// until then, the others go at the (cut) rate.
    pub paused_until: Micros,
    /// 429s seen, all time (for the metrics and the dashboard).
    #[serde(default)]
    pub throttled: u64,
}

/// The rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    pub max: f64,
    pub min: f64,
    pub decrease: f64,
    pub increase_per_second: f64,
    pub cut_every: Duration,
}

impl Aimd {
    pub fn of(config: &ccm_core::config::CarrierAccountConfig) -> Option<Self> {
        (config.max_calls_per_second > 0.0).then(|| Self {
            max: config.max_calls_per_second,
            min: config.min_calls_per_second.min(config.max_calls_per_second),
            decrease: config.decrease_factor,
            increase_per_second: config.increase_per_second,
            cut_every: Duration::from_millis(config.cut_every_ms),
        })
    }

    /// The state of an account never seen (or whose record expired): at its maximum rate.
    fn fresh(&self, now: Micros) -> AccountRate {
        AccountRate {
            campaigns: BTreeMap::new(),
            rate: self.max,
            cut_at: Micros::MIN,
            grown_at: now,
            paused_until: 0,
            throttled: 0,
        }
    }

    /// The rate grown by the time passed since it was last counted.
    fn grown(&self, mut s: AccountRate, now: Micros) -> AccountRate {
        if now > s.grown_at {
            let secs = (now - s.grown_at) as f64 / 1e6;
            s.rate = (s.rate + self.increase_per_second * secs).min(self.max);
            s.grown_at = now;
        }
        // A maximum lowered by configuration applies at once.
        s.rate = s.rate.clamp(self.min, self.max);
        s
    }

    /// Takes the next slot of `campaign` (of `weight`) at `now`: when the call may go, and
    /// the state to store.
    pub fn reserve(
        &self,
        stored: Option<AccountRate>,
        now: Micros,
        campaign: &str,
        weight: u32,
    ) -> (Micros, AccountRate) {
        let mut s = self.grown(stored.unwrap_or_else(|| self.fresh(now)), now);
        s.campaigns
            .retain(|id, share| id == campaign || now.saturating_sub(share.seen) < ACTIVE);
        let share = s.campaigns.entry(campaign.to_owned()).or_insert(Share {
            weight,
            seen: now,
            slot: now,
        });
        share.weight = weight.max(1);
        share.seen = now;
        let total: u32 = s.campaigns.values().map(|c| c.weight).sum();
        let share = s.campaigns.get_mut(campaign).expect("inserted above");
        let rate = s.rate * f64::from(share.weight) / f64::from(total.max(1));
        let start = share.slot.max(now);
        share.slot = start + ((1e6 / rate).round() as i64).max(1);
        (start, s)
    }

    /// The carrier answered 429 at `now`, asking to wait `retry_after` (the throttled call
    /// waits that long; the account goes on at the cut rate): the state to store.
    pub fn throttled(
        &self,
        stored: Option<AccountRate>,
        now: Micros,
        retry_after: Duration,
    ) -> AccountRate {
        let mut s = self.grown(stored.unwrap_or_else(|| self.fresh(now)), now);
        s.throttled += 1;
        let cut_every = micros(self.cut_every);
        if now.saturating_sub(s.cut_at) >= cut_every {
            s.rate = (s.rate * self.decrease).max(self.min);
            s.cut_at = now;
        }
        s.paused_until = s.paused_until.max(now + micros(retry_after));
        // No growth until the overload's other answers are in: growing through them would
        // overshoot again at once.
        s.grown_at = s.grown_at.max(s.cut_at.saturating_add(cut_every));
        s
    }
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn rules() -> Aimd {
        Aimd {
            max: 20.0,
            min: 0.5,
            decrease: 0.5,
            increase_per_second: 1.0,
            cut_every: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_429_halves_the_rate_once_per_overload() {
        let aimd = rules();
        let (_, s) = aimd.reserve(None, 0, "1", 1);
        assert_eq!(s.rate, 20.0);
        let s = aimd.throttled(Some(s), 10_000, Duration::from_secs(1));
        assert_eq!(s.campaigns["1"].slot, 50_000);
        assert_eq!((s.rate, s.paused_until, s.throttled), (10.0, 1_010_000, 1));
        // Three more answered for calls already on their way: no further cut.
        let s = (0..3).fold(s, |s, i| {
            aimd.throttled(Some(s), 20_000 + i, Duration::from_secs(1))
        });
        assert_eq!((s.rate, s.throttled, s.paused_until), (10.0, 4, 1_020_002));
        // The throttled calls wait for their `Retry-After`, the others go at the cut rate.
        let (start, s) = aimd.reserve(Some(s), 60_000, "1", 1);
        assert_eq!(start, 60_000);
        assert_eq!(s.campaigns["1"].slot, 160_000, "spaced at the cut rate");
    }

    #[test]
    fn the_rate_grows_back_by_the_increase_per_second_up_to_the_maximum() {
        let aimd = rules();
        let s = aimd.throttled(None, 0, Duration::ZERO);
        assert_eq!(s.rate, 10.0);
        // Held for `cut_every` after the cut, then one call per second more each second.
        let (_, s) = aimd.reserve(Some(s), 900_000, "1", 1);
        assert_eq!(s.rate, 10.0);
        let (_, s) = aimd.reserve(Some(s), 5_000_000, "1", 1);
        assert!((s.rate - 14.0).abs() < 1e-9, "{}", s.rate);
        let (_, s) = aimd.reserve(Some(s), 100_000_000, "1", 1);
        assert_eq!(s.rate, 20.0);
    }

    /// Against a carrier that allows `limit` calls per second (sliding window) and answers
    /// 429 over it, callers always wanting more converge: after a while the placed rate stays
    /// between 70 % of the limit and the limit, and 429s are a small share of requests
    /// (with an increase of a tenth of the limit per second, as docs/configuration.md
    /// advises).
    #[test]
    fn against_a_limited_carrier_the_placed_rate_converges_below_the_limit() {
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..20 {
            let limit = rng.random_range(2..30) as usize;
            let aimd = Aimd {
                max: (limit * rng.random_range(1..4)) as f64,
                min: 0.5,
                decrease: 0.7,
                increase_per_second: limit as f64 / 10.0,
                cut_every: Duration::from_secs(1),
            };
            let mut state: Option<AccountRate> = None;
            let mut accepted: Vec<Micros> = Vec::new();
            let mut refused = 0usize;
            let mut requests = 0usize;
            let mut now = 0;
            let end = 60_000_000;
            loop {
                let (at, s) = aimd.reserve(state, now, "1", 1);
                state = Some(s);
                // Network jitter between the slot and the carrier.
                let arrives = at + rng.random_range(0..20_000);
                if arrives > end {
                    break;
                }
                now = arrives;
                requests += usize::from(arrives > end / 2);
                let recent = accepted
                    .iter()
                    .rev()
                    .take_while(|t| arrives - **t < 1_000_000)
                    .count();
                if recent >= limit {
                    refused += usize::from(arrives > end / 2);
                    state = Some(aimd.throttled(state, arrives, Duration::from_secs(1)));
                } else {
                    accepted.push(arrives);
                }
            }
            // The second half of the run: converged.
            let placed = accepted.iter().filter(|t| **t > end / 2).count() as f64 / 30.0;
            let share = refused as f64 / requests.max(1) as f64;
            assert!(
                placed <= limit as f64 && placed >= 0.7 * limit as f64,
                "seed {seed}: limit {limit}, max {}, placed {placed}/s",
                aimd.max
            );
            println!("limit {limit}: placed {placed:.2}/s, 429 share {share:.3}");
            // About one 429 per sawtooth cycle: 13 % at 2 calls/s, 3 % at 10, 1 % at 28.
            assert!(
                share < 0.35 / limit as f64,
                "seed {seed}: limit {limit}: 429 share {share}"
            );
        }
    }

    /// Campaigns reserving at once share the rate by their weights, whatever their order and
    /// weights; one left alone gets the whole rate.
    #[test]
    fn saturating_campaigns_share_the_rate_by_their_weights() {
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let aimd = rules();
        for _ in 0..50 {
            let weights: Vec<u32> = (0..rng.random_range(2..5))
                .map(|_| rng.random_range(1..10))
                .collect();
            let mut state: Option<AccountRate> = None;
            let mut placed = vec![0u32; weights.len()];
            // Each campaign always has a call waiting for its next slot.
            let mut next: Vec<Micros> = vec![0; weights.len()];
            let end = 30_000_000;
            loop {
                let (i, now) = next
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (i, *t))
                    .min_by_key(|(i, t)| (*t, *i))
                    .expect("campaigns");
                let (at, s) = aimd.reserve(state, now, &i.to_string(), weights[i]);
                state = Some(s);
                if at > end {
                    break;
                }
                placed[i] += 1;
                next[i] = at;
            }
            let total: u32 = weights.iter().sum();
            let all: u32 = placed.iter().sum();
            assert!(
                (f64::from(all) / 30.0 - aimd.max).abs() < 0.5,
                "seed {seed}: {all} in 30 s"
            );
            for (w, p) in weights.iter().zip(&placed) {
                let want = f64::from(*w) / f64::from(total) * f64::from(all);
                assert!(
                    (f64::from(*p) - want).abs() <= want * 0.05 + 2.0,
                    "seed {seed}: weights {weights:?}, placed {placed:?}"
                );
            }
        }
        // Alone, a campaign of weight 1 takes the whole rate once the others are gone.
        let (_, s) = aimd.reserve(None, 0, "a", 3);
        let (_, s) = aimd.reserve(Some(s), 0, "b", 1);
        let (_, s) = aimd.reserve(Some(s), 10_000_000, "b", 1);
        let (start, s) = aimd.reserve(Some(s), 10_000_000, "b", 1);
        assert_eq!(s.campaigns.len(), 1);
        assert_eq!(s.campaigns["b"].slot - start, 50_000);
    }
}
