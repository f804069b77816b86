//! The calling window at dial time: an attempt whose callee may not be called now is put off
//! until the window opens.
//!
//! The attempt goes to `RETRIES` due at the opening ([`RetryEntry::window_deferral`] numbers
//! the deferrals, so each re-publication has its own de-duplication id), and only then is the
//! dial message acknowledged: a crash in between leaves the message to be redelivered and
//! deferred again under the same ids, never lost. No lifecycle event is published: the call
//! stays `QUEUED` (it is waiting), and its next `Dialing` is of the same attempt. First
//! attempts and retries pass through here alike, so retries honour the window too.
//!
//! When the callee may be called (the campaign's window intersected with the rule packs, and
//! the frequency limits) is [`crate::compliance::check`]'s.

use async_nats::jetstream::Message;
use ccm_core::{DialRequest, RetryEntry, window::Schedule};
use chrono::{DateTime, Utc};

use crate::call::CallContext;

/// A campaign's calling window as the dialer applies it, with what picks the callee's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The campaign's own hours; `None` when it may call at any time (rule packs may still
    /// restrict it, [`crate::compliance`]).
    pub schedule: Option<Schedule>,
    /// The campaign's zone, for callees whose zone nothing else tells.
    pub campaign_zone: Option<String>,
    /// Which pack rules apply (telemarketing or informational).
    pub purpose: ccm_core::campaign::Purpose,
}

impl Window {
    /// The campaign's window (every campaign has one since rule packs: it may be open always).
    pub fn of(campaign: &ccm_core::Campaign) -> Option<std::sync::Arc<Self>> {
        Some(std::sync::Arc::new(Self {
            schedule: Schedule::of(campaign),
            campaign_zone: campaign.time_zone.clone(),
            purpose: campaign.purpose,
        }))
    }
}

/// Why the attempt could not be put off (the message is handed back and tried again).
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("cannot schedule the attempt")]
    Publish(#[source] ccm_core::nats::NatsError),
}

/// How many times the attempt carried by `message` was put off before (0: never).
pub fn deferrals_of(message: &Message) -> u32 {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|id| RetryEntry::deferrals_in(id.as_str()))
        .unwrap_or(0)
}

/// Parks the attempt in `RETRIES` until `due` (its window opens, the daily attempt cap of its
/// number resets, or at once when its campaign is held); the caller then acknowledges the
/// message.
pub async fn defer(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    due: DateTime<Utc>,
) -> Result<(), WindowError> {
    let delivered_as = deferrals_of(message);
    let entry = RetryEntry {
        due_at: due,
        request: DialRequest {
            queued_at: due,
            ..request.clone()
        },
        window_deferral: Some(delivered_as + 1),
    };
    ccm_core::retries::schedule(&ctx.js, &entry)
        .await
        .map_err(WindowError::Publish)?;
    tracing::info!(call = %request.call_id, attempt = request.attempt, %due,
        "not callable now (campaign held, calling window, calling rules or frequency limit); put off");
    Ok(())
}
