//! `RETRIES`, the work queue of attempts due later, as other services may touch it.
//!
//! The stream is the retrier's: it alone consumes it (`retrier_retries`) and re-publishes
//! each entry to `CALLS` when due. Others go through this module: the retrier's outcome
//! decision and the dialer (an attempt outside its calling window or over its number's daily
//! cap) [`schedule`] entries; the dialer reads and purges a finished campaign's entries
//! ([`Scheduled`]); the campaign-completion decision counts them ([`count`]); a callback
//! removes the entries it replaced ([`remove_replaced`]).

use async_nats::jetstream::{
    self,
    stream::{RawMessageErrorKind, Stream},
};
use futures::TryStreamExt;

use crate::{CampaignId, RetryEntry, nats::NatsError, subjects, topology::names::RETRIES};

/// Why `RETRIES` could not be read or purged.
#[derive(Debug, thiserror::Error)]
pub enum RetriesError {
    #[error("cannot read RETRIES")]
    Read(#[source] async_nats::Error),
    #[error("cannot purge RETRIES")]
    Purge(#[source] async_nats::Error),
}

/// Schedules `entry` (on `calls.retry.<campaign>`, with its own de-duplication id, so a
/// repeated publish schedules it once).
pub async fn schedule(js: &jetstream::Context, entry: &RetryEntry) -> Result<(), NatsError> {
    crate::nats::publish_json(js, entry.subject(), &entry.msg_id(), None, entry).await?;
    Ok(())
}

/// Removes the entries of `call`'s attempt `attempt` other than the one tagged `keep`: the
/// plans a callback replaced ([`crate::callback`]). They would place nothing when due (the
/// dialer places only the latest plan), but they would hold the campaign's completion back
/// until then. Reads the campaign's entries, so it costs its backlog: callbacks are rare.
pub async fn remove_replaced(
    js: &jetstream::Context,
    campaign: CampaignId,
    call: crate::CallId,
    attempt: u32,
    keep: u64,
) -> Result<usize, RetriesError> {
    let mut scheduled = Scheduled::of(js, campaign).await?;
    let mut removed = 0;
    while let Some((seq, entry)) = scheduled.next().await? {
        if entry.request.call_id == call
            && entry.request.attempt == attempt
            && entry.request.callback != Some(keep)
        {
            scheduled.remove(seq).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// How many entries of `campaign` wait in `RETRIES`.
pub async fn count(js: &jetstream::Context, campaign: CampaignId) -> Result<u64, RetriesError> {
    let read = |e: async_nats::Error| RetriesError::Read(e);
    let stream = js.get_stream(RETRIES).await.map_err(|e| read(e.into()))?;
    let scheduled: Vec<(String, usize)> = stream
        .info_with_subjects(subjects::retry(campaign))
        .await
        .map_err(|e| read(e.into()))?
        .try_collect()
        .await
        .map_err(|e| read(e.into()))?;
    Ok(scheduled.iter().map(|(_, n)| *n as u64).sum())
}

/// A campaign's entries, read in order by subject (`STREAM.MSG.GET` with `next_by_subj`: a
/// second consumer on a work queue may not overlap the retrier's), then purged up to the
/// last one read.
#[derive(Debug)]
pub struct Scheduled {
    stream: Stream,
    subject: String,
    next: u64,
    last: Option<u64>,
}

/// Deletes the entry at `seq` from `RETRIES` (`stream`); one already gone (fired by the
/// retrier meanwhile, or deleted by another replica) is no error.
pub async fn delete(stream: &Stream, seq: u64) -> Result<(), RetriesError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(ref js)
                    if crate::nats::message_gone(js.error_code())
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(RetriesError::Purge(e.into())),
    }
}

impl Scheduled {
    /// Starts reading `campaign`'s entries.
    pub async fn of(js: &jetstream::Context, campaign: CampaignId) -> Result<Self, RetriesError> {
        let stream = js
            .get_stream(RETRIES)
            .await
            .map_err(|e| RetriesError::Read(e.into()))?;
        Ok(Self {
            stream,
            subject: subjects::retry(campaign),
            next: 1,
            last: None,
        })
    }

    /// The next entry and its sequence; `None` at the end, or at an entry that does not
    /// decode (left for the retrier, which dead-letters it; reading stops before it).
    pub async fn next(&mut self) -> Result<Option<(u64, RetryEntry)>, RetriesError> {
        let message = match self
            .stream
            .raw_message_builder()
            .sequence(self.next)
            .next_by_subject(self.subject.clone())
            .send()
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(RetriesError::Read(e.into())),
        };
        let Ok(entry) = serde_json::from_slice::<RetryEntry>(&message.payload) else {
            tracing::warn!(subject = %self.subject, seq = message.sequence,
                "undecodable retry entry kept");
            return Ok(None);
        };
        self.next = message.sequence + 1;
        Ok(Some((message.sequence, entry)))
    }

    /// Marks everything read so far as handled: [`Scheduled::purge`] removes it.
    pub fn handled(&mut self, seq: u64) {
        self.last = Some(seq);
    }

    /// Removes one entry read (an attempt ended before it came due): the others stay.
    pub async fn remove(&self, seq: u64) -> Result<(), RetriesError> {
        delete(&self.stream, seq).await
    }

    /// Purges the entries marked handled (none when nothing was).
    pub async fn purge(self) -> Result<(), RetriesError> {
        if let Some(last) = self.last {
            self.stream
                .purge()
                .filter(self.subject)
                .sequence(last + 1)
                .await
                .map_err(|e| RetriesError::Purge(e.into()))?;
        }
        Ok(())
    }
}
