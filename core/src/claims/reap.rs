//! The claim reaper: one walk over every claim key, freeing what a crash or a lost release
//! left behind and binding what a writer published but died before binding.
//!
//! Safe on several replicas at once: every write expects the revision the walk read, so a
//! claim that changed meanwhile (released, re-claimed, redriven) is left as it now is. A
//! pending claim is never freed here (its TTL does that) and a bound one only when its
//! call's latest event in `CALL_EVENTS` is terminal. See [`super::plan::reap_step`].

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{DeliverPolicy, push},
    stream::Stream,
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use super::{
    Claims,
    plan::{Facts, Latest, ReapStep, reap_step},
    wire::{self, Phase, Record, Slot, Write, WriteError},
};
use crate::{CallEvent, CallId, CampaignId, DialRequest, subjects, topology::names};

/// Claims judged at once.
const CONCURRENCY: usize = 16;
/// Longest wait for the next message of a walk before it is abandoned.
const IDLE: Duration = Duration::from_secs(10);

/// What one walk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Keys looked at.
    pub walked: u64,
    /// Bound claims of ended calls released.
    pub released: u64,
    /// Claims of never-published calls and stale markers purged.
    pub purged: u64,
    /// Pending claims of published calls bound.
    pub bound: u64,
}

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
#[error("the claim reaper cannot read {what}")]
pub struct ReapError {
    what: &'static str,
    source: async_nats::Error,
}

fn failed(what: &'static str) -> impl FnOnce(async_nats::Error) -> ReapError {
    move |source| ReapError { what, source }
}

/// The newest event of `call`, whatever its campaign, with the time the stream stored it
/// (unix seconds). `None`: the call has no event. An event that does not decode is returned
/// as `Err` of the inner result so a caller can treat it as it must.
pub async fn latest_event(
    events: &Stream,
    call: CallId,
) -> Result<Option<(Result<CallEvent, serde_json::Error>, i64)>, async_nats::Error> {
    Ok(crate::call_log::last_of_call(events, call)
        .await?
        .map(|last| (last.event, last.stored_at.timestamp())))
}

impl Claims {
    /// Walks every claim key once and frees, binds or keeps each.
    pub async fn reap(&self) -> Result<Reaped, ReapError> {
        let js = &self.js;
        let events = js
            .get_stream(names::CALL_EVENTS)
            .await
            .map_err(|e| failed("CALL_EVENTS")(e.into()))?;
        let calls = js
            .get_stream(names::CALLS)
            .await
            .map_err(|e| failed("CALLS")(e.into()))?;
        let records = self.walk().await?;
        let mut reaped = Reaped {
            walked: records.len() as u64,
            ..Reaped::default()
        };
        let steps: Vec<ReapStep> = futures::stream::iter(records)
            .map(|(record, expires)| {
                let (events, calls) = (&events, &calls);
                async move { self.judge(events, calls, &record, expires).await }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for step in steps {
            match step {
                ReapStep::Release { .. } => reaped.released += 1,
                ReapStep::Purge => reaped.purged += 1,
                ReapStep::Bind => reaped.bound += 1,
                _ => {}
            }
        }
        Ok(reaped)
    }

    /// The last message of every claim key, with whether it carries a TTL.
    async fn walk(&self) -> Result<Vec<(Record, bool)>, ReapError> {
        let prefix = wire::subject("");
        let consumer = self
            .bucket
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("{prefix}>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("the claims")(e.into()))?;
        let mut records = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(records);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed("the claims")(e.into()))?;
        loop {
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(failed("the claims")(e.into())),
                Ok(None) => break,
                Err(e) => return Err(failed("the claims")(e.into())),
            };
            let info = message.info().map_err(failed("the claims"))?;
            let (revision, at, pending) = (
                info.stream_sequence,
                info.published.unix_timestamp(),
                info.pending,
            );
            let key = message
                .subject
                .as_str()
                .strip_prefix(&prefix)
                .unwrap_or_default()
                .to_owned();
            let headers = message.headers.clone().unwrap_or_default();
            let expires = headers.get("Nats-TTL").is_some();
            records.push((
                Record::of(key, revision, at, &headers, &message.payload),
                expires,
            ));
            if pending == 0 {
                break;
            }
        }
        Ok(records)
    }

    /// Gathers what the plan asks for about one key, then carries its decision out.
    async fn judge(
        &self,
        events: &Stream,
        calls: &Stream,
        record: &Record,
        expires: bool,
    ) -> Result<ReapStep, ReapError> {
        let pending_ttl = i64::try_from(self.settings.pending_ttl.as_secs()).unwrap_or(i64::MAX);
        let window = self.settings.window_secs();
        let mut facts = Facts::default();
        loop {
            let now = Utc::now().timestamp();
            let step = reap_step(record, expires, facts, now, pending_ttl, window);
            let Slot::Held {
                call, campaign, at, ..
            } = &record.slot
            else {
                return self.carry_out(record, step, now).await;
            };
            let Ok(id) = call.parse::<CallId>() else {
                tracing::warn!(key = %record.key, "a claim holds no call id; left alone");
                return Ok(ReapStep::Keep);
            };
            match step {
                ReapStep::ReadLatest => {
                    let latest = latest_event(events, id)
                        .await
                        .map_err(failed("CALL_EVENTS"))?;
                    facts.latest = Some(latest.map(|(event, at)| Latest {
                        // An event that does not decode is taken as live: never free on doubt.
                        terminal: event.is_ok_and(|e| e.kind.is_terminal()),
                        at,
                    }));
                }
                ReapStep::SearchCalls => {
                    let horizon = *at + pending_ttl;
                    facts.in_calls =
                        Some(published(self, calls, *campaign, id, *at, horizon).await?);
                }
                step => return self.carry_out(record, step, now).await,
            }
        }
    }

    async fn carry_out(
        &self,
        record: &Record,
        step: ReapStep,
        now: i64,
    ) -> Result<ReapStep, ReapError> {
        let write = match (step, &record.slot) {
            (ReapStep::Bind, Slot::Held { call, campaign, .. }) => Some((
                Write::Hold {
                    call: call.clone(),
                    phase: Phase::Bound,
                    campaign: *campaign,
                },
                None,
            )),
            (ReapStep::Release { ended }, Slot::Held { call, .. }) => {
                let left = ended + self.settings.window_secs() - now;
                Some(match u64::try_from(left) {
                    Ok(ttl) if ttl > 0 => (
                        Write::Release {
                            call: call.clone(),
                            ended,
                        },
                        Some(Duration::from_secs(ttl)),
                    ),
                    _ => (Write::Purge, Some(Duration::from_secs(1))),
                })
            }
            (ReapStep::Purge, _) => Some((Write::Purge, Some(Duration::from_secs(1)))),
            _ => None,
        };
        let Some((change, ttl)) = write else {
            return Ok(ReapStep::Keep);
        };
        match wire::write(&self.js, &record.key, &change, record.revision, ttl).await {
            Ok(_) => {
                tracing::info!(key = %record.key, ?step, "claim reaped");
                Ok(step)
            }
            // Changed since the walk read it: its new state is someone else's decision.
            Err(WriteError::Conflict) => Ok(ReapStep::Keep),
            Err(e) => Err(failed("the claims")(e.into())),
        }
    }
}

/// Whether `CALLS` holds a dial message of `call` stored between `from` and `to` (unix
/// seconds, widened by a little clock skew): a publish follows its claim within the pending
/// TTL, so nothing outside that span can be it.
async fn published(
    claims: &Claims,
    calls: &Stream,
    campaign: Option<CampaignId>,
    call: CallId,
    from: i64,
    to: i64,
) -> Result<bool, ReapError> {
    let skew = 2;
    let start = time::OffsetDateTime::from_unix_timestamp(from - skew)
        .map_err(|e| failed("CALLS")(e.into()))?;
    let consumer = calls
        .create_consumer(push::OrderedConfig {
            deliver_subject: claims.js.client().new_inbox(),
            filter_subject: campaign.map_or_else(|| subjects::DIAL_ALL.to_owned(), subjects::dial),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(|e| failed("CALLS")(e.into()))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(false);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed("CALLS")(e.into()))?;
    loop {
        let message = match tokio::time::timeout(IDLE, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(failed("CALLS")(e.into())),
            Ok(None) => return Ok(false),
            Err(e) => return Err(failed("CALLS")(e.into())),
        };
        let info = message.info().map_err(failed("CALLS"))?;
        if info.published.unix_timestamp() > to + skew {
            return Ok(false);
        }
        let pending = info.pending;
        if serde_json::from_slice::<DialRequest>(&message.payload).is_ok_and(|r| r.call_id == call)
        {
            return Ok(true);
        }
        if pending == 0 {
            return Ok(false);
        }
    }
}
