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

use ccm_core::{Campaign, DialRequest, lifecycle::Dialling};
use chrono::{DateTime, Utc};

use crate::{
    call::{CallContext, Mode},
    carrier::CampaignInfo,
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
    /// What the compliance checks saw (the callee's zones and jurisdiction and why, the pack
    /// rules applied, the frequency counts), for the audit trail. Decides nothing by itself:
    /// its verdicts are `window_opens` and `capped_until`.
    pub compliance: crate::compliance::Seen,
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
    Compliance(crate::compliance::ComplianceError),
}

/// Reads the facts. Only a campaign that is dialled has its number and window read: the rule
/// looks no further for the others.
pub async fn gather(
    ctx: &CallContext,
    request: &DialRequest,
    seen: Seen<'_>,
) -> Result<Facts, CheckError> {
    let (dialling, window) = match seen {
        Seen::Pulled { mode, info } => (pulled(mode), info.window.clone()),
        Seen::Stored { mode, info } => {
            let stored = ctx
                .campaigns
                .get(request.campaign_id.to_string())
                .await
                .map_err(|e| CheckError::Campaign(e.into()))?;
            match stored.map(|doc| serde_json::from_slice::<Campaign>(&doc)) {
                // Deleted: its worker is gone; nothing of it is dialled.
                None => (Dialling::Hold, None),
                Some(Ok(campaign)) => (
                    campaign.dialling_at(Utc::now()),
                    crate::window::Window::of(&campaign),
                ),
                Some(Err(_)) => (pulled(mode), info.window.clone()),
            }
        }
    };
    let mut facts = Facts {
        now: Utc::now(),
        dialling,
        listed: None,
        window_opens: None,
        capped_until: None,
        compliance: Default::default(),
    };
    if dialling != Dialling::Dial {
        return Ok(facts);
    }
    let (listed, checked) = futures::try_join!(
        async {
            ccm_core::dnc::listed(&ctx.dnc, request.campaign_id, &request.phone_number)
                .await
                .map_err(|e| CheckError::Dnc(e.into()))
        },
        async {
            crate::compliance::check(ctx, request, window.as_deref(), facts.now)
                .await
                .map_err(CheckError::Compliance)
        },
    )?;
    facts.listed = listed.map(|list| list.refusal(&request.phone_number));
    facts.window_opens = checked.window_opens;
    facts.capped_until = checked.limited_until;
    facts.compliance = checked.seen;
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
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn facts(now: DateTime<Utc>) -> Facts {
        Facts {
            now,
            dialling: Dialling::Dial,
            listed: None,
            window_opens: None,
            capped_until: None,
            compliance: Default::default(),
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
                compliance: Default::default(),
            };
            let decision = decide(&f);
            let free = f.dialling == Dialling::Dial
                && f.listed.is_none()
                && f.window_opens.is_none()
                && f.capped_until.is_none();
            assert_eq!(decision == Decision::Place, free, "seed {seed}: {f:?}");
            if let Dialling::Drain(reason) = f.dialling {
                assert_eq!(decision, Decision::End(reason.into()), "seed {seed}");
            }
            if f.dialling == Dialling::Dial && f.listed.is_some() {
                assert!(matches!(decision, Decision::End(_)), "seed {seed}: {f:?}");
            }
            if let Decision::Defer(until) = decision {
                assert!(until >= now, "seed {seed}: {f:?}");
            }
        }
    }
}
