//! The record of everything the simulator was asked to do, for `GET /stats`.
//!
//! Attempts are keyed by their idempotency key (the `Idempotency-Key` header the adapters
//! send, one per call attempt). A second request with a key already placed is answered with
//! the first placement and counted in `requests`, never placed again, so a test can audit
//! that no attempt was requested, let alone placed, twice.

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::throttle::Limits;

/// Everything recorded so far.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Stats>,
}

/// One attempt placed with the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub key: String,
    pub campaign: String,
    pub to: String,
    pub external_call_id: String,
    /// Placement requests seen with this key: more than one means the dialer asked twice.
    pub requests: u32,
    /// Whether the dialer asked the carrier to hang the call up (its maximum duration was
    /// reached), and the call was still live then.
    #[serde(default)]
    pub hung_up: bool,
    /// The custom fields the placement request carried (the old contract's
    /// `custom_fields`), so a test can see what reached the carrier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The ring time the placement asked for (Twilio's `Timeout`, the http contract's
    /// `ring_timeout_secs`), when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_timeout_secs: Option<u32>,
    /// When the call was placed and when it ended at the carrier (Unix milliseconds), so an
    /// auditor can rebuild who was live at any moment (caps that change, a number's calls).
    #[serde(default)]
    pub placed_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The number the callee was shown (Twilio's `From`, the http contract's `caller_id`),
    /// when the placement named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// The carrier account it was placed on (the Twilio account sid, `http` for the old
    /// contract; empty when placed without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
}

/// Now in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Live and peak calls of one campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignStats {
    pub placed: u64,
    pub live: u64,
    pub peak: u64,
}

/// Placements and refusals of one carrier account ([`crate::throttle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    pub placed: u64,
    pub live: u64,
    pub peak: u64,
    /// Placement requests answered 429 (over the account's rate or live-call cap).
    pub throttled: u64,
}

/// The body of `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Attempts placed (distinct keys).
    pub placed: u64,
    /// Requests that repeated a key already placed.
    pub repeated_requests: u64,
    /// Requests answered 503 by the error-rate fault, nothing placed.
    pub injected_errors: u64,
    /// Requests refused with 400 by the reject-rate fault.
    pub rejected: u64,
    /// Callbacks delivered (2xx) and failed (other status or unreachable after retries).
    pub callbacks_sent: u64,
    pub callbacks_failed: u64,
    /// Hang-up requests received (for live, ended or unknown calls alike).
    #[serde(default)]
    pub hangup_requests: u64,
    /// Live calls of all campaigns now, and their peak (a dialer's trunk limit).
    pub live: u64,
    pub peak: u64,
    pub campaigns: BTreeMap<String, CampaignStats>,
    pub attempts: BTreeMap<String, Attempt>,
    /// The most live calls to one number of one campaign at any moment: 1 unless a person
    /// was rung twice at once.
    #[serde(default)]
    pub number_peak: u64,
    /// The `campaign/number` pairs that were rung twice at once (empty when all is well).
    #[serde(default)]
    pub number_overlaps: Vec<String>,
    /// Attempts placed per caller id shown (placements that named one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caller_ids: BTreeMap<String, u64>,
    /// Calls whose callee opted out (their final callback says so).
    #[serde(default)]
    pub opt_outs: u64,
    /// Placement requests answered 429 by an account's limits, all accounts.
    #[serde(default)]
    pub throttled: u64,
    /// Per carrier account.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountStats>,
    /// Calls whose callee asked to be called back (their final callback says when).
    #[serde(default)]
    pub callback_requests: u64,
    /// Live calls per `campaign/number`; internal bookkeeping for `number_peak`.
    #[serde(skip)]
    live_numbers: BTreeMap<String, u64>,
    /// Each account's placements of the last second, for its rate limit.
    #[serde(skip)]
    windows: BTreeMap<String, crate::throttle::Window>,
}

/// Whether a placement was new or repeated a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    New {
        external_call_id: String,
    },
    Repeat {
        external_call_id: String,
    },
    /// Over the account's limits: nothing placed; ask again after this many milliseconds.
    Throttled {
        retry_after_ms: u64,
    },
}

impl Ledger {
    fn with<T>(&self, f: impl FnOnce(&mut Stats) -> T) -> T {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters more than losing them, so a poisoned lock is simply taken over.
        let mut stats = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut stats)
    }

    /// Records a placement request with no account and no limits.
    pub fn place(&self, key: &str, campaign: &str, to: &str) -> Placement {
        self.place_in("", Limits::default(), key, campaign, to)
    }

    /// Records a placement request on `account`: a key already placed is a repeat (whatever
    /// the limits: nothing new is dialled), a new key over the account's `limits` is
    /// throttled, otherwise the call is live in its campaign and account.
    pub fn place_in(
        &self,
        account: &str,
        limits: Limits,
        key: &str,
        campaign: &str,
        to: &str,
    ) -> Placement {
        self.with(|stats| {
            if let Some(attempt) = stats.attempts.get_mut(key) {
                attempt.requests += 1;
                stats.repeated_requests += 1;
                return Placement::Repeat {
                    external_call_id: attempt.external_call_id.clone(),
                };
            }
            let live = stats.accounts.get(account).map_or(0, |a| a.live);
            let window = stats.windows.entry(account.to_owned()).or_default();
            if let Err(retry_after_ms) = crate::throttle::admit(window, now_ms(), live, limits) {
                stats.throttled += 1;
                stats
                    .accounts
                    .entry(account.to_owned())
                    .or_default()
                    .throttled += 1;
                return Placement::Throttled { retry_after_ms };
            }
            let external_call_id = format!("CA{}", uuid::Uuid::new_v4().simple());
            stats.attempts.insert(
                key.to_owned(),
                Attempt {
                    key: key.to_owned(),
                    campaign: campaign.to_owned(),
                    to: to.to_owned(),
                    external_call_id: external_call_id.clone(),
                    requests: 1,
                    hung_up: false,
                    fields: BTreeMap::new(),
                    ring_timeout_secs: None,
                    placed_ms: now_ms(),
                    ended_ms: None,
                    caller_id: None,
                    account: account.to_owned(),
                },
            );
            let a = stats.accounts.entry(account.to_owned()).or_default();
            a.placed += 1;
            a.live += 1;
            a.peak = a.peak.max(a.live);
            stats.placed += 1;
            stats.live += 1;
            stats.peak = stats.peak.max(stats.live);
            let c = stats.campaigns.entry(campaign.to_owned()).or_default();
            c.placed += 1;
            c.live += 1;
            c.peak = c.peak.max(c.live);
            let pair = format!("{campaign}/{to}");
            let live = stats.live_numbers.entry(pair.clone()).or_default();
            *live += 1;
            let live = *live;
            stats.number_peak = stats.number_peak.max(live);
            if live > 1 && !stats.number_overlaps.contains(&pair) {
                stats.number_overlaps.push(pair);
            }
            Placement::New { external_call_id }
        })
    }

    /// Records the ring time the placement of `key` asked for.
    pub fn set_ring_timeout(&self, key: &str, secs: Option<u32>) {
        self.with(|stats| {
            if let Some(attempt) = stats.attempts.get_mut(key) {
                attempt.ring_timeout_secs = secs;
            }
        });
    }

    /// Records the caller id the new placement under `key` showed, and counts it.
    pub fn set_caller_id(&self, key: &str, caller_id: Option<&str>) {
        let Some(caller_id) = caller_id.filter(|c| !c.is_empty()) else {
            return;
        };
        self.with(|stats| {
            if let Some(attempt) = stats.attempts.get_mut(key)
                && attempt.caller_id.is_none()
            {
                attempt.caller_id = Some(caller_id.to_owned());
                *stats.caller_ids.entry(caller_id.to_owned()).or_default() += 1;
            }
        });
    }

    /// Records the custom fields of the attempt placed under `key`.
    pub fn set_fields(&self, key: &str, fields: BTreeMap<String, String>) {
        self.with(|stats| {
            if let Some(attempt) = stats.attempts.get_mut(key) {
                attempt.fields = fields;
            }
        });
    }

    /// The call ended (its final callback is due now).
    pub fn end(&self, campaign: &str) {
        self.with(|stats| {
            if let Some(c) = stats.campaigns.get_mut(campaign) {
                c.live = c.live.saturating_sub(1);
                stats.live = stats.live.saturating_sub(1);
            }
        });
    }

    /// The attempt placed under `key` ended: it no longer counts as live in its campaign, nor
    /// for its number.
    pub fn end_attempt(&self, key: &str) {
        self.with(|stats| {
            let Some(attempt) = stats.attempts.get_mut(key) else {
                return;
            };
            if attempt.ended_ms.is_some() {
                return;
            }
            attempt.ended_ms = Some(now_ms());
            let pair = format!("{}/{}", attempt.campaign, attempt.to);
            let campaign = attempt.campaign.clone();
            let account = attempt.account.clone();
            if let Some(a) = stats.accounts.get_mut(&account) {
                a.live = a.live.saturating_sub(1);
            }
            if let Some(live) = stats.live_numbers.get_mut(&pair) {
                *live = live.saturating_sub(1);
                if *live == 0 {
                    stats.live_numbers.remove(&pair);
                }
            }
            if let Some(c) = stats.campaigns.get_mut(&campaign) {
                c.live = c.live.saturating_sub(1);
                stats.live = stats.live.saturating_sub(1);
            }
        });
    }

    /// The key of the attempt the carrier placed as `external_call_id`.
    pub fn key_of(&self, external_call_id: &str) -> Option<String> {
        self.with(|stats| {
            stats
                .attempts
                .values()
                .find(|a| a.external_call_id == external_call_id)
                .map(|a| a.key.clone())
        })
    }

    /// Records a hang-up request for the attempt under `key` (if any), marking it hung up
    /// when it was still `live`; whether the attempt exists.
    pub fn hang_up(&self, key: Option<&str>, live: bool) -> bool {
        self.with(|stats| {
            stats.hangup_requests += 1;
            let Some(attempt) = key.and_then(|k| stats.attempts.get_mut(k)) else {
                return false;
            };
            attempt.hung_up |= live;
            true
        })
    }

    pub fn count_injected_error(&self) {
        self.with(|stats| stats.injected_errors += 1);
    }

    pub fn count_rejected(&self) {
        self.with(|stats| stats.rejected += 1);
    }

    pub fn count_opt_out(&self) {
        self.with(|stats| stats.opt_outs += 1);
    }

    pub fn count_callback_request(&self) {
        self.with(|stats| stats.callback_requests += 1);
    }

    pub fn count_callback(&self, delivered: bool) {
        self.with(|stats| {
            if delivered {
                stats.callbacks_sent += 1;
            } else {
                stats.callbacks_failed += 1;
            }
        });
    }

    pub fn snapshot(&self) -> Stats {
        self.with(|stats| stats.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_per_caller_id_once_each() {
        let ledger = Ledger::default();
        for (key, from) in [
            ("c1/1", "+14155550100"),
            ("c2/1", "+14155550100"),
            ("c3/1", "+12125550100"),
        ] {
            ledger.place(key, "7", "+15550000001");
            ledger.set_caller_id(key, Some(from));
        }
        // A repeated request of a placed attempt counts nothing more.
        ledger.place("c1/1", "7", "+15550000001");
        ledger.set_caller_id("c1/1", Some("+12125550100"));
        ledger.place("c4/1", "7", "+15550000002");
        ledger.set_caller_id("c4/1", None);
        let stats = ledger.snapshot();
        assert_eq!(
            stats.caller_ids,
            BTreeMap::from([("+12125550100".into(), 1), ("+14155550100".into(), 2)])
        );
        assert_eq!(
            stats.attempts["c1/1"].caller_id.as_deref(),
            Some("+14155550100")
        );
        assert_eq!(stats.attempts["c4/1"].caller_id, None);
    }

    #[test]
    fn a_repeated_key_is_counted_not_placed() {
        let ledger = Ledger::default();
        let first = ledger.place("c1/1", "7", "+15550000001");
        let Placement::New { external_call_id } = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            ledger.place("c1/1", "7", "+15550000001"),
            Placement::Repeat { external_call_id }
        );
        ledger.place("c2/1", "7", "+15550000002");
        let stats = ledger.snapshot();
        assert_eq!((stats.placed, stats.repeated_requests), (2, 1));
        assert_eq!(stats.attempts["c1/1"].requests, 2);
        assert_eq!((stats.live, stats.peak), (2, 2));
        assert_eq!(
            stats.campaigns["7"],
            CampaignStats {
                placed: 2,
                live: 2,
                peak: 2
            }
        );
        ledger.end("7");
        ledger.end("7");
        ledger.place("c3/1", "7", "+15550000003");
        assert_eq!(ledger.snapshot().number_peak, 1);
        assert_eq!(
            ledger.snapshot().campaigns["7"],
            CampaignStats {
                placed: 3,
                live: 1,
                peak: 2
            }
        );
    }

    #[test]
    fn an_account_over_its_limits_is_throttled_but_a_repeat_is_not() {
        let ledger = Ledger::default();
        let limits = Limits {
            per_second: 2,
            max_live: 0,
        };
        let place = |key: &str| ledger.place_in("AC1", limits, key, "7", "+15550000001");
        assert!(matches!(place("c1/1"), Placement::New { .. }));
        assert!(matches!(place("c2/1"), Placement::New { .. }));
        assert!(
            matches!(place("c3/1"), Placement::Throttled { retry_after_ms } if retry_after_ms <= 1000)
        );
        assert!(
            matches!(place("c1/1"), Placement::Repeat { .. }),
            "a repeat dials nothing"
        );
        // Another account has its own limit.
        assert!(matches!(
            ledger.place_in("AC2", limits, "c4/1", "7", "+15550000004"),
            Placement::New { .. }
        ));
        ledger.end_attempt("c1/1");
        let stats = ledger.snapshot();
        assert_eq!((stats.placed, stats.throttled), (3, 1));
        assert_eq!(
            stats.accounts["AC1"],
            AccountStats {
                placed: 2,
                live: 1,
                peak: 2,
                throttled: 1
            }
        );
        assert_eq!(stats.attempts["c4/1"].account, "AC2");
    }

    #[test]
    fn a_number_rung_twice_at_once_is_recorded() {
        let ledger = Ledger::default();
        ledger.place("c1/1", "7", "+15550000001");
        ledger.end_attempt("c1/1");
        ledger.place("c1/2", "7", "+15550000001");
        let stats = ledger.snapshot();
        assert_eq!((stats.number_peak, stats.live), (1, 1));
        assert!(stats.number_overlaps.is_empty());
        ledger.place("c2/1", "7", "+15550000001");
        ledger.place("c3/1", "8", "+15550000001");
        let stats = ledger.snapshot();
        assert_eq!(stats.number_peak, 2);
        assert_eq!(stats.number_overlaps, ["7/+15550000001"]);
        assert_eq!(stats.campaigns["7"].live, 2);
    }

    #[test]
    fn an_attempt_records_when_it_was_live_and_ends_once() {
        let ledger = Ledger::default();
        ledger.place("c1/1", "7", "+15550000001");
        ledger.place("c2/1", "7", "+15550000002");
        ledger.end_attempt("c1/1");
        ledger.end_attempt("c1/1");
        let stats = ledger.snapshot();
        let first = &stats.attempts["c1/1"];
        assert!(first.placed_ms > 0);
        assert!(first.ended_ms.is_some_and(|end| end >= first.placed_ms));
        assert_eq!(stats.attempts["c2/1"].ended_ms, None);
        // Ending twice does not free a second slot.
        assert_eq!(stats.campaigns["7"].live, 1);
    }
}
