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
//! The callee's zone ([`ccm_core::contacts::callee_zones`], shared with the retrier) needs the
//! contact's own zone, read from the `contacts` bucket only for campaigns that have a window.

use async_nats::jetstream::Message;
use ccm_core::{
    DialRequest, RetryEntry,
    attempt_audit::{TimeSeen, WindowSeen},
    window::Schedule,
};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::call::CallContext;

/// A campaign's calling window as the dialer applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub schedule: Schedule,
    /// The campaign's zone, for callees whose zone nothing else tells.
    pub campaign_zone: Option<String>,
}

impl Window {
    /// The campaign's window, when it has one.
    pub fn of(campaign: &ccm_core::Campaign) -> Option<std::sync::Arc<Self>> {
        Schedule::of(campaign).map(|schedule| {
            std::sync::Arc::new(Self {
                schedule,
                campaign_zone: campaign.time_zone.clone(),
            })
        })
    }
}

/// Why the window could not be checked or the attempt not put off (the message is handed
/// back and tried again).
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("cannot read the contact")]
    Contact(#[source] ccm_core::contacts::ContactReadError),
    #[error("cannot schedule the attempt")]
    Publish(#[source] ccm_core::nats::NatsError),
}

/// What checking the window found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opens {
    /// `None` for now, else the opening (or `None` if the window never opens: the attempt is
    /// then placed rather than parked for ever).
    pub opens: Option<DateTime<Utc>>,
    /// The callee's zones, why, and their local times (for the audit record).
    pub time: TimeSeen,
    pub window: WindowSeen,
}

/// When the attempt may be placed, in the callee's zones.
pub async fn opens_at(
    ctx: &CallContext,
    window: &Window,
    request: &DialRequest,
    now: DateTime<Utc>,
) -> Result<Opens, WindowError> {
    let (zones, source) = ccm_core::contacts::callee_zones_why(
        &ctx.contacts,
        request.campaign_id,
        window.campaign_zone.as_deref(),
        &request.phone_number,
    )
    .await
    .map_err(WindowError::Contact)?;
    let opens = window
        .schedule
        .next_open_in_all(&zones, now)
        .filter(|opens| *opens > now);
    Ok(Opens {
        opens,
        time: TimeSeen {
            zones: zones.iter().map(|z| z.name().to_owned()).collect(),
            source,
            local: zones
                .iter()
                .map(|z| {
                    now.with_timezone(z)
                        .to_rfc3339_opts(SecondsFormat::Secs, false)
                })
                .collect(),
        },
        window: WindowSeen {
            open: opens.is_none(),
            opens_at: opens,
        },
    })
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
        "not callable now (campaign held, calling window or daily cap); put off");
    Ok(())
}
