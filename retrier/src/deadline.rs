//! Calls that pass their own `expires_at` while nobody dials them.
//!
//! A running campaign's dialer ends a call past its expiry when it reaches it, and never puts
//! one off past it (`ccm_core::expiry`). A held campaign (paused, or not started) is not
//! pulled at all: its dial consumer is paused on the server, so its queued calls are seen by
//! no dialer until it resumes. This sweep ends them at their expiry instead: each round, for
//! every held campaign, it reads the campaign's dial messages not yet delivered (from its dial
//! consumer's ack floor, by subject) and ends `EXPIRED` each one past its `expires_at` whose
//! attempt still waits ([`crate::expiry::expire_if_waiting`]: one event per attempt, published
//! against the call's last event, so a dialer's `Dialing` that lands first wins). At most
//! [`crate::expiry::PER_ROUND`] messages per campaign a round; a long backlog is read on across
//! rounds ([`Cursors`]) and from its start again once read to the end.

use std::collections::HashMap;

use async_nats::jetstream::{kv, stream::RawMessageErrorKind};
use ccm_core::{Campaign, CampaignId, DialRequest, lifecycle::Dialling, subjects};
use chrono::Utc;
use futures::TryStreamExt;

use crate::{Shared, expiry::ExpiryError};

/// Where each held campaign's reading resumes (a stream sequence).
#[derive(Debug, Default)]
pub struct Cursors(HashMap<CampaignId, u64>);

/// One round over every held campaign.
pub async fn round(ctx: &Shared, cursors: &mut Cursors) -> Result<(), ExpiryError> {
    let held = held(&ctx.campaigns).await?;
    cursors.0.retain(|id, _| held.contains(id));
    for campaign in held {
        let from = cursors.0.get(&campaign).copied().unwrap_or(0);
        let next = campaign_round(ctx, campaign, from).await?;
        cursors.0.insert(campaign, next);
    }
    Ok(())
}

/// The campaigns no dialer pulls now.
async fn held(campaigns: &kv::Store) -> Result<Vec<CampaignId>, ExpiryError> {
    let read = |e: async_nats::Error| ExpiryError::Read("campaigns", e);
    let keys: Vec<String> = campaigns
        .keys()
        .await
        .map_err(|e| read(e.into()))?
        .try_collect()
        .await
        .map_err(|e| read(e.into()))?;
    let now = Utc::now();
    let mut held = Vec::new();
    for key in keys {
        let Some(doc) = campaigns
            .get(key.as_str())
            .await
            .map_err(|e| read(e.into()))?
        else {
            continue;
        };
        if let Ok(campaign) = serde_json::from_slice::<Campaign>(&doc)
            && campaign.dialling_at(now) == Dialling::Hold
        {
            held.push(campaign.id);
        }
    }
    Ok(held)
}

/// Reads up to `PER_ROUND` of `campaign`'s undelivered dial messages from `from` (0: from its
/// consumer's ack floor); returns where the next round resumes (0 at the end).
async fn campaign_round(ctx: &Shared, campaign: CampaignId, from: u64) -> Result<u64, ExpiryError> {
    let calls_stream = ccm_core::topology::names::CALLS;
    let read = |e: async_nats::Error| ExpiryError::Read(calls_stream, e);
    let stream = ctx
        .js
        .get_stream(calls_stream)
        .await
        .map_err(|e| read(e.into()))?;
    let floor = match stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&subjects::dial_consumer(
            campaign,
        ))
        .await
    {
        Ok(mut consumer) => {
            consumer
                .info()
                .await
                .map_err(|e| read(e.into()))?
                .ack_floor
                .stream_sequence
        }
        // No consumer yet (a draft never started): nothing of it was delivered.
        Err(_) => 0,
    };
    let now = Utc::now();
    let mut seq = from.max(floor + 1);
    for _ in 0..crate::expiry::PER_ROUND {
        let message = match stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subjects::dial(campaign))
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(0),
            Err(e) => return Err(read(e.into())),
        };
        seq = message.sequence + 1;
        let Ok(request) = serde_json::from_slice::<DialRequest>(&message.payload) else {
            continue;
        };
        if let Some(at) = request.expires_at.filter(|at| *at <= now) {
            let reason = format!(
                "{} (its campaign was not dialling)",
                ccm_core::expiry::overdue(at)
            );
            crate::expiry::expire_if_waiting(ctx, &request, reason).await?;
        }
    }
    Ok(seq)
}
