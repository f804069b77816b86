//! Carrying out a campaign's `alternate_numbers` after an outcome: which of the contact's
//! numbers the next attempt dials (the decision is [`ccm_core::contact_numbers::plan`]), with
//! the number claimed for the call first, so no two numbers of one contact are ever live at
//! once and no other call reaches the number meanwhile.
//!
//! A call is known and claimed by its contact's first number for its whole life (the contact's
//! claim); an attempt on a further number also claims that number, bound to the call, before
//! its retry entry is written, and the further number of the attempt before is released then.
//! Every claim of the call is released when it ends ([`release_all`], and
//! `call_lifecycle::end_unplaced` for an attempt ended before it was placed); a claim a crash
//! or a late duplicate decision left behind is freed by the reaper once the call has ended.
//! A number on a do-not-call list, opted out, without the campaign's consent, or held by
//! another live call is skipped, and the `Retrying` reason says why.

use ccm_core::{
    CallId, Campaign, CampaignId, EventKind, OutcomeStatus, PhoneNumber,
    claims::ClaimError,
    contact_numbers::{self, Alternate, ContactNumber, plan},
    events::OutcomeSource,
    policy::Decision,
};
use chrono::{DateTime, Utc};

use crate::{Shared, history::CallHistory, outcome::OutcomeError};

/// What the next attempt does about the contact's numbers.
#[derive(Debug)]
pub(crate) enum Carried {
    /// No policy, or a contact with one number: as before.
    Unchanged,
    /// Dial `alternate` (none: the contact's first number), not before `due`; `note` says
    /// which number and what was skipped.
    Next {
        alternate: Option<Alternate>,
        due: DateTime<Utc>,
        note: String,
    },
    /// No number may be dialled again.
    End { reason: String },
}

/// The numbers of the call's contact, when it has several and the campaign a policy.
async fn numbers(
    ctx: &Shared,
    campaign: &Campaign,
    phone: &PhoneNumber,
) -> Result<Option<Vec<ContactNumber>>, OutcomeError> {
    if campaign.alternate_numbers.is_none() {
        return Ok(None);
    }
    let contact = ccm_core::contacts::get(&ctx.contacts, campaign.id, phone).await?;
    let numbers = contact_numbers::of_contact(
        phone,
        contact
            .as_ref()
            .map(|c| c.numbers.as_slice())
            .unwrap_or(&[]),
    );
    Ok((numbers.len() > 1).then_some(numbers))
}

/// The index in the contact's list of the number an attempt's `Dialing` dialled.
fn dialled_index(kind: &EventKind) -> Option<usize> {
    match kind {
        EventKind::Dialing { alternate, .. } => {
            Some(alternate.as_ref().map_or(0, |a| a.index as usize))
        }
        _ => None,
    }
}

/// Why `number` may not be dialled by a call of `campaign`, if it may not.
async fn barred(
    ctx: &Shared,
    campaign: &Campaign,
    number: &PhoneNumber,
) -> Result<Option<String>, OutcomeError> {
    let (listed, _) = ccm_core::dnc::checked(&ctx.dnc, campaign.id, number)
        .await
        .map_err(|e| OutcomeError::Check(e.into()))?;
    if let Some(reason) = listed {
        return Ok(Some(reason));
    }
    if let Some(kind) = campaign.required_consent {
        let seen = ccm_core::consent::check(&ctx.consents, number, kind)
            .await
            .map_err(|e| OutcomeError::Check(e.into()))?;
        if let Some(refusal) = seen.refusal {
            return Ok(Some(format!("{refusal:?}")));
        }
    }
    Ok(None)
}

/// Decides and prepares the next attempt's number after `outcome` (attempt `attempt` of
/// `call`, ended `status` from `source`); `due` is when the retry policy would place it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn carry(
    ctx: &Shared,
    campaign: &Campaign,
    call: CallId,
    attempt: u32,
    phone: &PhoneNumber,
    history: &CallHistory,
    (status, source): (OutcomeStatus, OutcomeSource),
    due: DateTime<Utc>,
) -> Result<Carried, OutcomeError> {
    let Some(policy) = &campaign.alternate_numbers else {
        return Ok(Carried::Unchanged);
    };
    let Some(numbers) = numbers(ctx, campaign, phone).await? else {
        return Ok(Carried::Unchanged);
    };
    let attempts: Vec<plan::Attempt> = history
        .events
        .iter()
        .filter_map(|e| {
            dialled_index(&e.kind).map(|number| plan::Attempt {
                number: number.min(numbers.len() - 1),
                at: e.at,
            })
        })
        .collect();
    let current = history
        .events
        .iter()
        .rev()
        .find(|e| e.attempt == attempt)
        .and_then(|e| dialled_index(&e.kind))
        .unwrap_or(0)
        .min(numbers.len() - 1);
    let mut skipped: Vec<(usize, String)> = Vec::new();
    let mut barred_flags = vec![false; numbers.len()];
    for (i, n) in numbers.iter().enumerate() {
        if let Some(why) = barred(ctx, campaign, &n.number).await? {
            barred_flags[i] = true;
            skipped.push((i, why));
        }
    }
    let zones = ccm_core::contacts::callee_zones(
        &ctx.contacts,
        campaign.id,
        campaign.time_zone.as_deref(),
        phone,
    )
    .await?;
    // Never empty (UTC at worst); the days, and so the limits, run in the first zone.
    let Some(&zone) = zones.first() else {
        return Ok(Carried::Unchanged);
    };
    // Each round either dials or bars one more number (one another call holds): at most one
    // round per number.
    for _ in 0..=numbers.len() {
        let decided = plan::next(&plan::Situation {
            policy,
            barred: &barred_flags,
            current,
            advance: policy.advances(status, source),
            attempts: &attempts,
            zone,
            due,
        });
        let (index, due) = match decided {
            plan::Next::Exhausted { reason } => {
                return Ok(Carried::End {
                    reason: with_skipped(reason, &numbers, &skipped),
                });
            }
            plan::Next::Dial { index } => (index, due),
            plan::Next::Tomorrow { index, not_before } => (index, due.max(not_before)),
        };
        if index != 0 {
            // The contact's first number is the call's own claim, held all along.
            let number = &numbers[index].number;
            let mut claimed = ctx.claims.claim(ctx.scope, campaign.id, number, call).await;
            if matches!(claimed, Err(ClaimError::InProgress)) {
                // A lost compare-and-set may have been lost to this very call (the outcome
                // decided twice at once): asked again, a claim the call holds is renewed.
                claimed = ctx.claims.claim(ctx.scope, campaign.id, number, call).await;
            }
            match claimed {
                Ok(claim) => ctx.claims.bind(&claim).await.map_err(|e| match e {
                    ClaimError::Unavailable(e) => OutcomeError::Check(e),
                    other => OutcomeError::Check(other.into()),
                })?,
                Err(ClaimError::Unavailable(e)) => return Err(OutcomeError::Check(e)),
                Err(refused) => {
                    barred_flags[index] = true;
                    skipped.push((index, refused.to_string()));
                    continue;
                }
            }
        }
        // A further number dialled before and left now is released: the call holds its
        // contact's first number and at most the one further number it is about to dial.
        let mut released: Vec<&PhoneNumber> = Vec::new();
        for e in &history.events {
            if let EventKind::Dialing {
                alternate: Some(a), ..
            } = &e.kind
                && a.number != numbers[index].number
                && !released.contains(&&a.number)
            {
                ctx.claims
                    .release(campaign.id, &a.number, call, Utc::now())
                    .await;
                released.push(&a.number);
            }
        }
        let n = &numbers[index];
        let note = with_skipped(
            format!("next number: {} ({})", n.label, n.number),
            &numbers,
            &skipped,
        );
        return Ok(Carried::Next {
            alternate: (index != 0).then(|| Alternate {
                index: index as u32,
                number: n.number.clone(),
                label: n.label.clone(),
            }),
            due,
            note,
        });
    }
    Ok(Carried::End {
        reason: with_skipped(
            "no number of the contact can be claimed".into(),
            &numbers,
            &skipped,
        ),
    })
}

fn with_skipped(text: String, numbers: &[ContactNumber], skipped: &[(usize, String)]) -> String {
    if skipped.is_empty() {
        return text;
    }
    let list: Vec<String> = skipped
        .iter()
        .map(|(i, why)| format!("{} skipped: {why}", numbers[*i].label))
        .collect();
    format!("{text} ({})", list.join("; "))
}

/// Releases the claims the call holds on its contact's further numbers: those its attempts
/// dialled and, when the campaign has the policy, every further number of the contact (one
/// claimed for an attempt that never came to be dialled). Its first number's claim is released
/// by the caller, as for any call; a claim left behind (a decision after the end) is freed by
/// the reaper. Only claims holding this call's id are touched.
pub(crate) async fn release_all(
    ctx: &Shared,
    campaign: Option<&Campaign>,
    (campaign_id, phone): (CampaignId, &PhoneNumber),
    call: CallId,
    history: &CallHistory,
    ended: DateTime<Utc>,
) -> Result<(), OutcomeError> {
    let mut numbers: Vec<PhoneNumber> = Vec::new();
    if let Some(campaign) = campaign.filter(|c| c.alternate_numbers.is_some())
        && let Some(list) = self::numbers(ctx, campaign, phone).await?
    {
        numbers.extend(list.into_iter().skip(1).map(|n| n.number));
    }
    for e in &history.events {
        if let EventKind::Dialing {
            alternate: Some(a), ..
        } = &e.kind
            && !numbers.contains(&a.number)
        {
            numbers.push(a.number.clone());
        }
    }
    for number in &numbers {
        ctx.claims.release(campaign_id, number, call, ended).await;
    }
    Ok(())
}

/// The retry policy's `decision` for attempt `attempt` of `call`, with the contact's numbers
/// applied: a retry dials the number the plan picks (at the latest of the policy's time and
/// the limits' reset); an outcome the campaign advances on moves to the next number even when
/// the policy would not retry it, while the call has attempts left; a contact with no number
/// left ends the call with the plan's reason. Answered calls and calls without a policy or
/// with one number are left as decided.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply(
    ctx: &Shared,
    campaign: Option<&Campaign>,
    phone: Option<&PhoneNumber>,
    call: CallId,
    attempt: u32,
    max_attempts: u32,
    history: &CallHistory,
    outcome: (OutcomeStatus, OutcomeSource, DateTime<Utc>),
    decision: Decision,
) -> Result<(Decision, Option<Alternate>), OutcomeError> {
    let (Some(campaign), Some(phone)) = (campaign, phone) else {
        return Ok((decision, None));
    };
    let Some(policy) = &campaign.alternate_numbers else {
        return Ok((decision, None));
    };
    let (status, source, at) = outcome;
    let due = match &decision {
        Decision::Complete => return Ok((decision, None)),
        Decision::Retry { at, .. } => *at,
        Decision::Fail { .. } if attempt < max_attempts && policy.advances(status, source) => at,
        Decision::Fail { .. } => return Ok((decision, None)),
    };
    let carried = carry(
        ctx,
        campaign,
        call,
        attempt,
        phone,
        history,
        (status, source),
        due,
    )
    .await?;
    Ok(match carried {
        Carried::Unchanged => (decision, None),
        Carried::End { reason } => (Decision::Fail { reason }, None),
        Carried::Next {
            alternate,
            due,
            note,
        } => {
            let reason = match decision {
                Decision::Retry { reason, .. } => format!("{reason}; {note}"),
                _ => format!(
                    "{} advances to the contact's next number; {note}",
                    status.as_str()
                ),
            };
            (Decision::Retry { at: due, reason }, alternate)
        }
    })
}
