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

use std::sync::Arc;

use ccm_core::{Campaign, DialRequest, consent::ConsentSeen, lifecycle::Dialling};
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
    /// When the number's daily attempt count starts again, if today's is used up.
    pub capped_until: Option<DateTime<Utc>>,
    /// What the consent check saw, when the campaign requires a consent.
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
}

/// The rule. The campaign comes first: a cancelled campaign's attempt ends whatever its
/// number; a held (paused, not started) one's is put off at once, to wait in the campaign's
/// queue until it is dialled again, rather than handed back to count against `max_deliver`.
pub fn decide(facts: &Facts) -> Decision {
    match facts.dialling {
        Dialling::Drain(reason) => return Decision::End(reason.into()),
        Dialling::Hold => return Decision::Defer(facts.now),
        Dialling::Dial => {}
    }
    if let Some(refusal) = &facts.listed {
        return Decision::End(refusal.clone());
    }
    if let Some(refused) = facts.consent.as_ref().and_then(|c| c.refusal) {
        return Decision::End(refused.code().into());
    }
    if let Some(opens) = facts.window_opens {
        return Decision::Defer(opens);
    }
    if let Some(next_day) = facts.capped_until {
        return Decision::Defer(next_day);
    }
    Decision::Place
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
    Window(crate::window::WindowError),
    #[error(transparent)]
    Frequency(crate::frequency::CapError),
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
    let (dialling, window, required) = match seen {
        Seen::Pulled { mode, info } => (pulled(mode), info.window.clone(), info.required_consent),
        Seen::Stored { mode, info } => {
            let stored = ctx
                .campaigns
                .get(request.campaign_id.to_string())
                .await
                .map_err(|e| CheckError::Campaign(e.into()))?;
            match stored.map(|doc| serde_json::from_slice::<Campaign>(&doc)) {
                // Deleted: its worker is gone; nothing of it is dialled.
                None => (Dialling::Hold, None, None),
                Some(Ok(campaign)) => (
                    campaign.dialling_at(Utc::now()),
                    Window::of(&campaign),
                    campaign.required_consent,
                ),
                Some(Err(_)) => (pulled(mode), info.window.clone(), info.required_consent),
            }
        }
    };
    let mut facts = Facts {
        now: Utc::now(),
        dialling,
        listed: None,
        window_opens: None,
        capped_until: None,
        consent: None,
    };
    if dialling != Dialling::Dial {
        return Ok(facts);
    }
    let (listed, window_opens, capped_until, consent) = futures::try_join!(
        async {
            // An opted-out callee's listing ends the call as `opted_out`.
            ccm_core::dnc::refusal(&ctx.dnc, request.campaign_id, &request.phone_number)
                .await
                .map_err(|e| CheckError::Dnc(e.into()))
        },
        opens(ctx, request, window, facts.now),
        async {
            ctx.frequency
                .peek(&request.phone_number, facts.now)
                .await
                .map_err(CheckError::Frequency)
        },
        async {
            match required {
                Some(kind) => ccm_core::consent::check(&ctx.consents, &request.phone_number, kind)
                    .await
                    .map(Some)
                    .map_err(CheckError::Consent),
                None => Ok(None),
            }
        },
    )?;
    facts.listed = listed;
    facts.window_opens = window_opens;
    facts.capped_until = capped_until;
    facts.consent = consent;
    Ok(facts)
}

fn pulled(mode: Mode) -> Dialling {
    match mode {
        Mode::Dial => Dialling::Dial,
        Mode::Cancel(reason) => Dialling::Drain(reason),
    }
}

async fn opens(
    ctx: &CallContext,
    request: &DialRequest,
    window: Option<Arc<Window>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, CheckError> {
    match window {
        Some(window) => crate::window::opens_at(ctx, &window, request, now)
            .await
            .map_err(CheckError::Window),
        None => Ok(None),
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
}
