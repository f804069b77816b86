//! A callee's opt-out heard during a call (Twilio's `<Gather>` digits, the old contract's and
//! the http adapter's `opt_out: true`).
//!
//! In this order, before the call's outcome is published:
//!
//! 1. the number goes on the do-not-call list the campaign names (`opt_out_list`: the global
//!    list by default), its entry marked as an opt-out with the call it came from. From then
//!    on ingest refuses the number, and every dialer, about to place any queued or due call to
//!    it, ends that call `CANCELLED` with reason `opted_out` ([`ccm_core::dnc::checked`]):
//!    the retries scheduled in `RETRIES` are ended at once (read by campaign, their entries
//!    removed), and any the read model did not know yet when it comes due, by that check;
//! 2. every valid consent of the number is revoked (`revoked_how = opt_out`, by `callee`);
//! 3. `contact.opted_out` is queued for the subscribed webhook endpoints, once per attempt.
//!
//! Each step is idempotent, so a callback the carrier sends again repeats nothing. Step 1 must
//! succeed for the callback to be taken; should 2 or 3 fail, the outcome is still published and
//! the callback answered 503, for the carrier to send it again.

use ccm_core::{
    CallId, CampaignId, PhoneNumber,
    dnc::{DncEntry, OptOut},
    webhook_queue::Target,
    webhooks::{CONTACT_OPTED_OUT, Subscription},
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;

use crate::{AppState, consent_store};

/// The attempt the callee opted out during.
#[derive(Debug, Clone)]
pub struct Heard {
    pub call_id: CallId,
    pub campaign_id: CampaignId,
    pub attempt: u32,
    pub phone: PhoneNumber,
    /// `digits` or `callback`.
    pub via: &'static str,
}

/// Why the opt-out was not (fully) recorded.
#[derive(Debug, thiserror::Error)]
pub enum OptOutError {
    #[error("cannot put the number on the do-not-call list")]
    Listing(#[source] async_nats::Error),
    #[error("the number is listed, but its consents could not be revoked")]
    Consents(#[source] consent_store::StoreError),
    #[error("the number is listed, but contact.opted_out could not be queued")]
    Webhook(#[source] async_nats::Error),
}

impl OptOutError {
    /// Whether the number is listed already (the call's outcome may be published).
    pub fn listed(&self) -> bool {
        !matches!(self, Self::Listing(_))
    }
}

/// Why the number's scheduled retries could not all be ended at once.
#[derive(Debug, thiserror::Error)]
pub enum ScheduledError {
    #[error("cannot read the read model")]
    ReadModel(#[source] sqlx::Error),
    #[error(transparent)]
    Retries(#[from] ccm_core::retries::RetriesError),
    #[error("cannot publish the Cancelled event")]
    Publish(#[source] ccm_core::nats::NatsError),
}

/// Step 1b: ends `phone`'s attempts waiting in `RETRIES`, in the campaigns `list` covers,
/// `CANCELLED` with reason `opted_out`, and removes their entries. The read model names the
/// campaigns to read (those with a call to the number retrying); an entry it does not know
/// yet still ends when it comes due, by the dialer's check.
async fn end_scheduled(
    state: &AppState,
    phone: &PhoneNumber,
    list: ccm_core::dnc::DncList,
) -> Result<usize, ScheduledError> {
    let only = match list {
        ccm_core::dnc::DncList::Global => None,
        ccm_core::dnc::DncList::Campaign(id) => Some(id.as_i64()),
    };
    let campaigns: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT campaign_id FROM calls WHERE phone_number = $1 AND status = 'RETRYING' \
         AND ($2::bigint IS NULL OR campaign_id = $2)",
    )
    .bind(phone.as_str())
    .bind(only)
    .fetch_all(&state.pg)
    .await
    .map_err(ScheduledError::ReadModel)?;
    let mut ended = 0;
    for campaign in campaigns
        .into_iter()
        .filter_map(|c| u64::try_from(c).ok().and_then(|c| CampaignId::new(c).ok()))
    {
        let mut scheduled = ccm_core::retries::Scheduled::of(&state.js, campaign).await?;
        while let Some((seq, entry)) = scheduled.next().await? {
            if entry.request.phone_number != *phone {
                continue;
            }
            let cancelled = ccm_core::EventKind::Cancelled {
                reason: ccm_core::dnc::OPTED_OUT.into(),
            };
            ccm_core::call_lifecycle::end_unplaced(
                &state.js,
                &state.claims,
                &entry.request,
                cancelled,
            )
            .await
            .map_err(ScheduledError::Publish)?;
            scheduled.remove(seq).await?;
            ended += 1;
        }
    }
    Ok(ended)
}

/// Records the opt-out (see the module's docs).
pub async fn record(state: &AppState, heard: &Heard) -> Result<(), OptOutError> {
    let campaign = crate::campaign_store::load(state, heard.campaign_id)
        .await
        .map_err(|e| OptOutError::Listing(e.to_string().into()))?;
    let list = campaign
        .as_ref()
        .map_or(ccm_core::dnc::DncList::Global, |c| {
            c.opt_out_list.list(heard.campaign_id)
        });
    let entry = DncEntry {
        added_at: Utc::now(),
        reason: Some(format!("opted out during call {}", heard.call_id)),
        opted_out: Some(OptOut {
            call_id: heard.call_id,
            campaign_id: heard.campaign_id,
            attempt: heard.attempt,
            via: heard.via.into(),
        }),
    };
    let value = serde_json::to_vec(&entry).map_err(|e| OptOutError::Listing(e.into()))?;
    let revision = state
        .dnc
        .put(list.key(&heard.phone), value.into())
        .await
        .map_err(|e| OptOutError::Listing(e.into()))?;
    state.dnc_cache.record(list, &heard.phone, true, revision);
    ccm_core::metrics::counter!("ccm_ingest_opt_outs_total").increment(1);
    tracing::info!(call = %heard.call_id, campaign = %heard.campaign_id, ?list, "callee opted out; number listed");
    // Retries already scheduled end now rather than when they come due (a failure here
    // leaves them to end then, as the listing guarantees).
    match end_scheduled(state, &heard.phone, list).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            ended = n,
            "the number's scheduled retries ended as opted out"
        ),
        Err(e) => {
            tracing::warn!(error = %ccm_core::telemetry::chain(&e), "scheduled retries left to end when due")
        }
    }

    let revoked = consent_store::revoke_all(
        state,
        &heard.phone,
        &consent_store::Revoke {
            by: "callee".into(),
            how: "opt_out",
            reason: Some(format!("opted out during call {}", heard.call_id)),
        },
    )
    .await
    .map_err(OptOutError::Consents)?;

    let body = json!({
        "type": CONTACT_OPTED_OUT,
        "version": 1,
        "timestamp": entry.added_at,
        "data": {
            "phone_number": heard.phone.as_str(),
            "campaign_id": heard.campaign_id,
            "call_id": heard.call_id,
            "attempt": heard.attempt,
            "via": heard.via,
            "do_not_call": list,
            "consents_revoked": revoked.iter().map(|r| r.id).collect::<Vec<_>>(),
        }
    });
    let targets = targets(state, heard.campaign_id).await?;
    ccm_core::webhook_queue::notify(
        &state.pg,
        &targets,
        &format!("{CONTACT_OPTED_OUT}/{}/{}", heard.call_id, heard.attempt),
        CONTACT_OPTED_OUT,
        Some(heard.call_id.as_uuid()),
        heard.campaign_id.as_i64(),
        body.to_string().as_bytes(),
    )
    .await
    .map_err(|e| OptOutError::Webhook(e.into()))?;
    Ok(())
}

/// The subscriptions that asked for `contact.opted_out` of `campaign`.
async fn targets(state: &AppState, campaign: CampaignId) -> Result<Vec<Target>, OptOutError> {
    let mut keys = state
        .webhooks
        .keys()
        .await
        .map_err(|e| OptOutError::Webhook(e.into()))?;
    let mut targets = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| OptOutError::Webhook(e.into()))?;
        let Some(value) = state
            .webhooks
            .get(&key)
            .await
            .map_err(|e| OptOutError::Webhook(e.into()))?
        else {
            continue;
        };
        let Ok(sub) = serde_json::from_slice::<Subscription>(&value) else {
            continue;
        };
        let wanted = sub.events.iter().any(|e| e == CONTACT_OPTED_OUT)
            && (sub.campaign_ids.is_empty() || sub.campaign_ids.contains(&campaign));
        if wanted {
            targets.push(Target {
                endpoint_id: sub.id,
                enabled: sub.enabled,
            });
        }
    }
    Ok(targets)
}

/// The number `call` was dialled at: the attempt's `Dialing` event (the call's last event
/// until its outcome is decided), else the read model's row.
pub async fn number_of(
    state: &AppState,
    campaign: CampaignId,
    call: CallId,
) -> Result<Option<PhoneNumber>, async_nats::Error> {
    let events = state
        .js
        .get_stream(ccm_core::topology::names::CALL_EVENTS)
        .await?;
    let last = ccm_core::call_log::last_on(&events, ccm_core::subjects::event(campaign, call))
        .await?
        .and_then(|l| l.decoded());
    if let Some(ccm_core::CallEvent {
        kind:
            ccm_core::EventKind::Dialing {
                phone_number,
                alternate,
                ..
            },
        ..
    }) = last
    {
        // The number the callee answered on: a contact's further number when one was dialled.
        return Ok(Some(alternate.map_or(phone_number, |a| a.number)));
    }
    let row: Option<String> =
        sqlx::query_scalar("SELECT phone_number FROM calls WHERE call_id = $1")
            .bind(call.as_uuid())
            .fetch_optional(&state.pg)
            .await?;
    Ok(row.and_then(|n| PhoneNumber::parse(&n, ccm_core::phone::PhoneRule::Lenient).ok()))
}
