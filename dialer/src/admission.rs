//! Whether an attempt may be placed now: one rule, asked before the pacing wait and again
//! right before placing.
//!
//! A paced call waits for its slot between looking at its campaign, its number and the clock
//! and placing the call; a pause, a cancel, a do-not-call listing, the calling window closing
//! or another attempt to the number can all come meanwhile. So the same decision
//! ([`decide`]) is made twice: before the wait, on the worker's view of the campaign, so no
//! slot is spent on an attempt that cannot go; and after the wait, on everything read afresh
//! (the campaign's stored document included), which is the one that counts. A call that did
//! not wait is decided once, right before placing.

use ccm_core::{
    Campaign, DialRequest,
    attempt_audit::{CampaignSeen, Checks},
    call_lifecycle::End,
    consent::ConsentSeen,
    expiry::Wait,
    lifecycle::Dialling,
};
use chrono::{DateTime, Utc};

use crate::{
    call::{CallContext, Mode},
    carrier::CampaignInfo,
    window::Window,
};

/// What the decision is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub now: DateTime<Utc>,
    /// What dialers do with the campaign's calls now.
    pub dialling: Dialling,
    /// The refusal naming the do-not-call list the number is on, if any.
    pub listed: Option<String>,
    /// When the callee's calling window opens, if it is closed now.
    pub window_opens: Option<DateTime<Utc>>,
    /// When the number's frequency limits (rolling 24 h caps of the rule packs, K attempts in
    /// D local days) permit the next attempt, if they do not now.
    pub capped_until: Option<DateTime<Utc>>,
    /// The call's expiry, if it has one: a wait that outlasts it ends the call instead.
    pub expires_at: Option<DateTime<Utc>>,
    /// What each check saw, for the attempt's audit record (never decides anything).
    pub checks: Checks,
    /// What the compliance checks saw, with what counting the attempt after the pacing wait
    /// needs; its verdicts are `window_opens` and `capped_until`, its record `checks.time`,
    /// `checks.window` and `checks.rules`.
    pub compliance: crate::compliance::Seen,
    /// What the consent check saw, when the campaign requires a consent (also recorded in
    /// `checks.consent`).
    pub consent: Option<ConsentSeen>,
}

/// What to do with the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Place,
    /// Put it off until then (through `RETRIES`; the attempt keeps its number).
    Defer(DateTime<Utc>),
    /// End it `CANCELLED` with this reason, unplaced.
    End(String),
    /// End it `EXPIRED` with this reason, unplaced: past its expiry, or its wait (window,
    /// held campaign) would outlast it.
    Expire(String),
    /// End it `LIMITED` with this reason, unplaced: a frequency limit would hold its number
    /// past its expiry.
    Limit(String),
}

/// The rule. The campaign comes first: a cancelled campaign's attempt ends whatever its
/// number; a held (paused, not started) one's is put off at once, to wait in the campaign's
/// queue until it is dialled again, rather than handed back to count against `max_deliver`.
/// A call past its expiry ends `EXPIRED`, and a wait that would outlast the expiry ends it
/// instead of putting it off ([`ccm_core::expiry::instead_of_waiting`]).
pub fn decide(facts: &Facts) -> Decision {
    if let Dialling::Drain(reason) = facts.dialling {
        return Decision::End(reason.into());
    }
    if let Some(at) = facts.expires_at.filter(|at| *at <= facts.now) {
        return Decision::Expire(ccm_core::expiry::overdue(at));
    }
    if facts.dialling == Dialling::Hold {
        return wait(facts, Wait::Held, facts.now);
    }
    if let Some(refusal) = &facts.listed {
        return Decision::End(refusal.clone());
    }
    if let Some(refused) = facts.consent.as_ref().and_then(|c| c.refusal) {
        return Decision::End(refused.code().into());
    }
    if let Some(refused) = facts.consent.as_ref().and_then(|c| c.refusal) {
        return Decision::End(refused.code().into());
    }
    if let Some(opens) = facts.window_opens {
        return wait(facts, Wait::Window, opens);
    }
    if let Some(next_day) = facts.capped_until {
        return wait(facts, Wait::Frequency, next_day);
    }
    Decision::Place
}

/// The campaign holds the attempt until `until` (e.g. more calls held than its cap): put off,
/// or ended `EXPIRED` if that is after the call's expiry.
pub fn held_until(facts: &Facts, until: DateTime<Utc>) -> Decision {
    wait(facts, Wait::Held, until)
}

/// Put off until `until`, or ended if that is after the call's expiry.
fn wait(facts: &Facts, why: Wait, until: DateTime<Utc>) -> Decision {
    match ccm_core::expiry::instead_of_waiting(why, until, facts.expires_at) {
        None => Decision::Defer(until),
        Some((End::Limited, reason)) => Decision::Limit(reason),
        Some((_, reason)) => Decision::Expire(reason),
    }
}

/// Where the campaign's state is taken from.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// The worker's view when it pulled the message.
    Pulled { mode: Mode, info: &'a CampaignInfo },
    /// The campaign's document as stored now; the pulled view if it cannot be decoded
    /// (the dialer ignores such a document everywhere).
    Stored { mode: Mode, info: &'a CampaignInfo },
}

/// Why the facts could not be read (the message is handed back and tried again).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read the campaign")]
    Campaign(#[source] async_nats::Error),
    #[error("cannot read the do-not-call lists")]
    Dnc(#[source] async_nats::Error),
    #[error(transparent)]
    Compliance(crate::compliance::ComplianceError),
    #[error(transparent)]
    Consent(ccm_core::consent::ConsentError),
}

/// Reads the facts. Only a campaign that is dialled has its number and window read: the rule
/// looks no further for the others.
pub async fn gather(
    ctx: &CallContext,
    request: &DialRequest,
    seen: Seen<'_>,
) -> Result<Facts, CheckError> {
    let (dialling, window, revision, required) = match seen {
        Seen::Pulled { mode, info } => (
            pulled(mode),
            info.window.clone(),
            Some(info.revision),
            info.required_consent,
        ),
        Seen::Stored { mode, info } => {
            let stored = ctx
                .campaigns
                .entry(request.campaign_id.to_string())
                .await
                .map_err(|e| CheckError::Campaign(e.into()))?
                .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
            let revision = stored.as_ref().map(|e| e.revision);
            match stored.map(|e| serde_json::from_slice::<Campaign>(&e.value)) {
                // Deleted: its worker is gone; nothing of it is dialled.
                None => (Dialling::Hold, None, None, None),
                Some(Ok(campaign)) => (
                    campaign.dialling_at(Utc::now()),
                    Window::of(&campaign),
                    revision,
                    campaign.required_consent,
                ),
                Some(Err(_)) => (
                    pulled(mode),
                    info.window.clone(),
                    Some(info.revision),
                    info.required_consent,
                ),
            }
        }
    };
    let mut facts = Facts {
        now: Utc::now(),
        dialling,
        listed: None,
        window_opens: None,
        capped_until: None,
        expires_at: request.expires_at,
        checks: Checks {
            campaign: CampaignSeen {
                revision,
                dialling: match dialling {
                    Dialling::Dial => "dial".into(),
                    Dialling::Hold => "hold".into(),
                    Dialling::Drain(reason) => format!("drain: {reason}"),
                },
            },
            ..Checks::default()
        },
        compliance: Default::default(),
        consent: None,
    };
    if dialling != Dialling::Dial {
        return Ok(facts);
    }
    let ((listed, dnc), checked, consent) = futures::try_join!(
        async {
            // An opted-out callee's listing ends the call as `opted_out`.
            ccm_core::dnc::checked(&ctx.dnc, request.campaign_id, request.dialled())
                .await
                .map_err(|e| CheckError::Dnc(e.into()))
        },
        async {
            crate::compliance::check(ctx, request, window.as_deref(), facts.now)
                .await
                .map_err(CheckError::Compliance)
        },
        async {
            match required {
                Some(kind) => ccm_core::consent::check(&ctx.consents, request.dialled(), kind)
                    .await
                    .map(Some)
                    .map_err(CheckError::Consent),
                None => Ok(None),
            }
        },
    )?;
    facts.listed = listed;
    facts.checks.dnc = Some(dnc);
    facts.window_opens = checked.window_opens;
    facts.capped_until = checked.limited_until;
    let has_window = window.as_ref().is_some_and(|w| w.schedule.is_some());
    facts.checks.time = crate::compliance::time_seen(&checked.seen, facts.now);
    if has_window || !checked.seen.rules.is_empty() {
        facts.checks.window = Some(ccm_core::attempt_audit::WindowSeen {
            open: checked.window_opens.is_none(),
            opens_at: checked.window_opens,
        });
    }
    facts.checks.rules = Some(crate::compliance::audited(&checked.seen))
        .filter(|r| *r != ccm_core::attempt_audit::RulesSeen::default());
    facts.compliance = checked.seen;
    facts.checks.consent = consent.clone();
    facts.consent = consent;
    Ok(facts)
}

fn pulled(mode: Mode) -> Dialling {
    match mode {
        Mode::Dial => Dialling::Dial,
        Mode::Cancel(reason) => Dialling::Drain(reason),
    }
}

#[cfg(test)]
mod tests {
    use ccm_core::consent::{ConsentState, ConsentType};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn facts(now: DateTime<Utc>) -> Facts {
        Facts {
            now,
            dialling: Dialling::Dial,
            listed: None,
            window_opens: None,
            capped_until: None,
            expires_at: None,
            checks: Checks::default(),
            compliance: Default::default(),
            consent: None,
        }
    }

    #[test]
    fn each_fact_alone_decides() {
        let now = Utc::now();
        let later = now + chrono::Duration::hours(3);
        assert_eq!(decide(&facts(now)), Decision::Place);
        let mut f = facts(now);
        f.dialling = Dialling::Drain("campaign cancelled");
        assert_eq!(decide(&f), Decision::End("campaign cancelled".into()));
        f.dialling = Dialling::Hold;
        assert_eq!(
            decide(&f),
            Decision::Defer(now),
            "paused: back to the queue"
        );
        let mut f = facts(now);
        f.listed = Some("listed".into());
        assert_eq!(decide(&f), Decision::End("listed".into()));
        let mut f = facts(now);
        f.window_opens = Some(later);
        assert_eq!(decide(&f), Decision::Defer(later));
        let mut f = facts(now);
        f.capped_until = Some(later);
        assert_eq!(decide(&f), Decision::Defer(later));
        let mut f = facts(now);
        f.consent = Some(ConsentSeen::of(ConsentType::AiVoice, None));
        assert_eq!(decide(&f), Decision::End("consent_required".into()));
        let revoked = ConsentState {
            valid: vec![],
            revoked: Some(ccm_core::consent::Revocation {
                consent_id: uuid::Uuid::now_v7(),
                at: now,
                how: "api".into(),
            }),
        };
        f.consent = Some(ConsentSeen::of(ConsentType::AiVoice, Some(&revoked)));
        assert_eq!(decide(&f), Decision::End("consent_revoked".into()));
        let valid = ConsentState {
            valid: vec![uuid::Uuid::now_v7()],
            revoked: None,
        };
        f.consent = Some(ConsentSeen::of(ConsentType::AiVoice, Some(&valid)));
        assert_eq!(
            decide(&f),
            Decision::Place,
            "a valid consent lets it through"
        );
    }

    /// Generated: whatever the facts, an attempt is placed only when none forbids it, a
    /// campaign that is over ends it, and a listed number is never deferred into a call.
    #[test]
    fn placed_only_when_nothing_forbids_it() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Utc::now();
        for _ in 0..10_000 {
            let some = |rng: &mut StdRng| {
                rng.random_bool(0.3)
                    .then(|| now + chrono::Duration::seconds(rng.random_range(1..86_400)))
            };
            let f = Facts {
                now,
                dialling: match rng.random_range(0..3) {
                    0 => Dialling::Dial,
                    1 => Dialling::Hold,
                    _ => Dialling::Drain("campaign cancelled"),
                },
                listed: rng.random_bool(0.3).then(|| "listed".to_owned()),
                window_opens: some(&mut rng),
                capped_until: some(&mut rng),
                expires_at: None,
                checks: Checks::default(),
                compliance: Default::default(),
                consent: match rng.random_range(0..3) {
                    0 => None,
                    1 => Some(ConsentSeen::of(ConsentType::PriorExpressWritten, None)),
                    _ => Some(ConsentSeen::of(
                        ConsentType::PriorExpressWritten,
                        Some(&ConsentState {
                            valid: vec![uuid::Uuid::now_v7()],
                            revoked: None,
                        }),
                    )),
                },
            };
            let decision = decide(&f);
            let consented = f.consent.as_ref().is_none_or(|c| c.refusal.is_none());
            let free = f.dialling == Dialling::Dial
                && f.listed.is_none()
                && consented
                && f.window_opens.is_none()
                && f.capped_until.is_none();
            assert_eq!(decision == Decision::Place, free, "seed {seed}: {f:?}");
            if let Dialling::Drain(reason) = f.dialling {
                assert_eq!(decision, Decision::End(reason.into()), "seed {seed}");
            }
            if f.dialling == Dialling::Dial && (f.listed.is_some() || !consented) {
                assert!(matches!(decision, Decision::End(_)), "seed {seed}: {f:?}");
            }
            if let Decision::Defer(until) = decision {
                assert!(until >= now, "seed {seed}: {f:?}");
            }
        }
    }

    /// Generated: with an expiry, a call is never placed at or after it, and a wait that
    /// outlasts it ends the call (EXPIRED for a window or a held campaign, LIMITED for the
    /// frequency cap) instead of putting it off past it; a wait that ends before it is kept.
    #[test]
    fn a_wait_past_the_expiry_ends_the_call_and_an_expired_call_is_never_placed() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let now = Utc::now();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let some = |rng: &mut StdRng, p: f64| {
                rng.random_bool(p)
                    .then(|| now + chrono::Duration::seconds(rng.random_range(1..86_400)))
            };
            let f = Facts {
                now,
                dialling: match rng.random_range(0..4) {
                    0 => Dialling::Hold,
                    1 => Dialling::Drain("campaign cancelled"),
                    _ => Dialling::Dial,
                },
                listed: rng.random_bool(0.1).then(|| "listed".to_owned()),
                window_opens: some(&mut rng, 0.4),
                capped_until: some(&mut rng, 0.4),
                expires_at: rng
                    .random_bool(0.8)
                    .then(|| now + chrono::Duration::seconds(rng.random_range(-3_600..86_400))),
                checks: Checks::default(),
                compliance: Default::default(),
                consent: None,
            };
            let decision = decide(&f);
            let past = f.expires_at.is_some_and(|e| e <= now);
            if past && !matches!(f.dialling, Dialling::Drain(_)) {
                assert!(
                    matches!(decision, Decision::Expire(_)),
                    "seed {seed}: {f:?}"
                );
            }
            if let Decision::Defer(until) = decision {
                assert!(
                    f.expires_at.is_none_or(|e| until <= e),
                    "seed {seed}: deferred past the expiry: {f:?}"
                );
            }
            if let Decision::Limit(_) = decision {
                // Only the frequency cap limits, and only once nothing else held the call.
                assert!(
                    f.capped_until.is_some() && f.window_opens.is_none(),
                    "seed {seed}: {f:?}"
                );
                assert!(f.capped_until > f.expires_at, "seed {seed}: {f:?}");
            }
            if let Decision::Expire(_) = decision
                && !past
            {
                let until = f.window_opens.unwrap_or(now);
                assert!(
                    f.expires_at.is_some_and(|e| until > e),
                    "seed {seed}: {f:?}"
                );
            }
            // Without an expiry, the rule is the one it always was.
            let unbounded = decide(&Facts {
                expires_at: None,
                ..f.clone()
            });
            if let Decision::Expire(_) | Decision::Limit(_) = decision {
                // Ended for its wait, which it would otherwise have waited; or simply past.
                assert!(
                    past || matches!(unbounded, Decision::Defer(_)),
                    "seed {seed}: {f:?}"
                );
            } else {
                assert_eq!(unbounded, decision, "seed {seed}: {f:?}");
            }
            seen.insert(std::mem::discriminant(&decision));
        }
        assert_eq!(seen.len(), 5, "seed {seed}: every decision was reached");
    }
}
