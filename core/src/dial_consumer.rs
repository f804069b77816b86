//! A campaign's dial consumer (`dial_<campaign>` on `CALLS`): the one owner of its
//! configuration, its cap and its pause. Ingest, the dialer and tests go through here.
//!
//! The campaign's document in the `campaigns` bucket is the source of truth; the consumer is
//! derived from it ([`wanted`]): `max_ack_pending` is the campaign's concurrency cap, and a
//! campaign that is held (paused, draft, inactive, or before its `starts_at`) has its
//! consumer paused on the server (nats-server 2.11 consumer pause), so no dialer replica can
//! pull its calls, whatever that replica's cache says. A campaign waiting for its start date
//! is paused until that instant and the server resumes it by itself; any other hold lasts
//! until the campaign's end date (when its queue must be drained) or [`INDEFINITELY`].
//!
//! Writers change the document first, then call [`DialConsumers::reconcile`]; a writer that
//! dies between the two leaves a consumer that disagrees, which the dialer's periodic
//! reconcile (it follows the bucket) repairs. Reconciling reads the document afresh and
//! checks afterwards that it did not change meanwhile, so a slow writer holding an old view
//! cannot leave the consumer on it. Each write also records the document's revision in the
//! consumer's metadata ([`REVISION_KEY`]), and a document older than the one the consumer was
//! written from is never applied ([`superseded`]): without it, a writer that read the
//! document just before a cap was lowered could put the higher cap back for a round trip,
//! and the calls the server handed out meanwhile stay live over the cap for their length.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, PullConsumer, pull},
    kv,
    stream::Stream,
};
use chrono::{DateTime, TimeZone, Utc};

use crate::{
    Campaign, CampaignId, CampaignState,
    lifecycle::Dialling,
    subjects,
    topology::{Drift, Topology, consumer_differs, consumer_drift, names},
};

/// The instant a hold with no end of its own lasts until: the server wants an instant, and
/// this one is past any campaign (and within what every `async-nats` backend represents).
pub const INDEFINITELY: DateTime<Utc> = DateTime::from_timestamp_nanos(7_258_118_400_000_000_000); // 2200-01-01

/// Two pause instants this close are the same (the server keeps its own precision).
const SAME_INSTANT: Duration = Duration::from_secs(1);
/// How often a reconcile starts over when the document keeps changing under it.
const RECONCILE_ROUNDS: usize = 5;
/// The consumer's metadata key holding the revision of the document it was written from.
pub const REVISION_KEY: &str = "ccm.campaign_revision";

/// The consumer a campaign's document asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub max_ack_pending: i64,
    /// Paused until this instant; `None` to deliver.
    pub paused_until: Option<DateTime<Utc>>,
}

/// What the server has now (`paused_until` only while it is in effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actual {
    pub max_ack_pending: i64,
    pub paused_until: Option<DateTime<Utc>>,
}

/// The rule: the consumer the campaign's document asks for at `now`.
pub fn wanted(campaign: &Campaign, now: DateTime<Utc>) -> Wanted {
    let paused_until = match campaign.dialling_at(now) {
        // A drained campaign's calls must reach a dialer to end `CANCELLED`.
        Dialling::Dial | Dialling::Drain(_) => None,
        Dialling::Hold => {
            let only_waiting_to_start = campaign.state == CampaignState::Running
                && campaign.is_active
                && campaign.starts_at.is_some_and(|start| start > now);
            let until = match campaign.starts_at {
                Some(start) if only_waiting_to_start => start,
                _ => INDEFINITELY,
            };
            Some(campaign.ends_at.map_or(until, |end| end.min(until)))
        }
    };
    Wanted {
        max_ack_pending: i64::from(campaign.max_concurrent_calls.max(1)),
        paused_until,
    }
}

/// A change of the consumer's pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseStep {
    Until(DateTime<Utc>),
    Resume,
}

/// What bringing the consumer in line takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The consumer does not exist: create it (born paused if it must be).
    pub create: bool,
    /// Its editable configuration (the cap among it) differs: write it.
    pub update: bool,
    pub pause: Option<PauseStep>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The decision: from what the server has (`None`: no consumer) to what is wanted.
/// `config_differs` is whether any editable field other than the pause differs.
pub fn plan(wanted: &Wanted, actual: Option<&Actual>, config_differs: bool) -> Plan {
    let Some(actual) = actual else {
        return Plan {
            create: true,
            ..Plan::default()
        };
    };
    let pause = match (wanted.paused_until, actual.paused_until) {
        (None, None) => None,
        (None, Some(_)) => Some(PauseStep::Resume),
        (Some(w), Some(a)) if same_instant(w, a) => None,
        (Some(w), _) => Some(PauseStep::Until(w)),
    };
    Plan {
        create: false,
        update: config_differs || wanted.max_ack_pending != actual.max_ack_pending,
        pause,
    }
}

/// Whether a document of `revision` is older than the one the consumer was last written from
/// (`written_from`): then applying it would undo a newer change, and it is left alone. A
/// creation's document has no revision yet, and a consumer written before revisions were
/// recorded has none: neither is judged.
pub fn superseded(revision: Option<u64>, written_from: Option<u64>) -> bool {
    matches!((revision, written_from), (Some(mine), Some(theirs)) if mine < theirs)
}

/// Whether the consumer should be written to record `revision` even if nothing else changed,
/// so that a later, older document is recognised as such (a pause alone changes no field).
pub fn records_newer(revision: Option<u64>, written_from: Option<u64>) -> bool {
    match (revision, written_from) {
        (Some(mine), Some(theirs)) => mine > theirs,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn same_instant(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs().to_std().is_ok_and(|d| d < SAME_INSTANT)
}

/// What went wrong reaching the consumer or the document.
#[derive(Debug, thiserror::Error)]
pub enum DialConsumerError {
    #[error("cannot {action} dial consumer {consumer}")]
    Consumer {
        action: &'static str,
        consumer: String,
        source: async_nats::Error,
    },
    #[error("cannot read campaign {0}")]
    Document(CampaignId, #[source] async_nats::Error),
    #[error("the pause instant {0} is out of range")]
    Instant(DateTime<Utc>),
}

/// What a dial consumer was last written with, as a listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub max_ack_pending: i64,
    /// The document revision recorded with the write ([`REVISION_KEY`]), if any.
    pub revision: Option<u64>,
    /// Paused on the server now.
    pub paused: bool,
    /// Calls of the campaign are queued or held by a dialer ([`Work::any`]).
    pub has_work: bool,
    /// Dial messages not yet delivered to any dialer (`num_pending`).
    pub queued: u64,
}

impl Written {
    /// Whether the consumer disagrees with a document of `revision`, `cap` and hold that
    /// this follower applied: written from an older document, or its cap or pause changed
    /// behind it.
    pub fn disagrees_with(&self, revision: u64, cap: u32, held: bool) -> bool {
        self.revision.is_none_or(|r| r < revision)
            || self.max_ack_pending != i64::from(cap.max(1))
            || self.paused != held
    }
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub plan: Plan,
    /// Differences the server cannot apply in place (a filter, a policy); left alone.
    pub drift: Vec<Drift>,
}

/// The dial consumers of all campaigns.
#[derive(Debug, Clone)]
pub struct DialConsumers {
    calls: Stream<()>,
    template: pull::Config,
}

impl DialConsumers {
    /// No request is made: the stream is addressed by name.
    pub async fn new(js: &jetstream::Context, topology: &Topology) -> Self {
        let calls = js
            .get_stream_no_info(names::CALLS)
            .await
            .expect("CALLS is a valid stream name");
        Self {
            calls,
            template: topology.dial_template().clone(),
        }
    }

    /// The campaign's consumer configuration as the document asks for it at `now`.
    pub fn config(&self, campaign: &Campaign, now: DateTime<Utc>) -> pull::Config {
        config(&self.template, campaign, now)
    }

    /// The revision of the document the consumer was last written from, from its metadata.
    fn written_from(info: &consumer::Info) -> Option<u64> {
        info.config
            .metadata
            .get(REVISION_KEY)
            .and_then(|r| r.parse().ok())
    }

    /// Brings the consumer in line with `campaign` as given (creation, where the document
    /// is not written yet).
    pub async fn ensure(&self, campaign: &Campaign) -> Result<Applied, DialConsumerError> {
        self.apply(campaign, None).await
    }

    /// Brings the consumer in line with `campaign`, the document's `revision` in the
    /// `campaigns` bucket.
    pub async fn ensure_revision(
        &self,
        campaign: &Campaign,
        revision: u64,
    ) -> Result<Applied, DialConsumerError> {
        self.apply(campaign, Some(revision)).await
    }

    async fn apply(
        &self,
        campaign: &Campaign,
        revision: Option<u64>,
    ) -> Result<Applied, DialConsumerError> {
        let now = Utc::now();
        let name = subjects::dial_consumer(campaign.id);
        let mut config = self.config(campaign, now);
        let info = match self.calls.consumer_info(&name).await {
            Ok(info) => Some(info),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => None,
            Err(e) => return Err(fail("read", &name, e)),
        };
        let written_from = info.as_ref().and_then(Self::written_from);
        if superseded(revision, written_from) {
            // A newer document is already applied; its writer (or the next reconcile) owns it.
            return Ok(Applied::default());
        }
        if let Some(info) = &info {
            // Keep what an operator put there (the server sets its own `_nats.` keys).
            config.metadata.extend(
                info.config
                    .metadata
                    .iter()
                    .filter(|(k, _)| !k.starts_with("_nats."))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        if let Some(revision) = revision.or(written_from) {
            config
                .metadata
                .insert(REVISION_KEY.into(), revision.to_string());
        }
        let object = format!("consumer {}/{name}", names::CALLS);
        let drift = info
            .as_ref()
            .map(|i| consumer_drift(&object, &config, &i.config))
            .unwrap_or_default();
        let actual = info.as_ref().map(actual);
        let differs = info
            .as_ref()
            .is_some_and(|i| consumer_differs(&config, &i.config));
        let mut plan = plan(&wanted(campaign, now), actual.as_ref(), differs);
        plan.update |= info.is_some() && records_newer(revision, written_from);
        if !drift.is_empty() {
            // Only the pause may still be applied: the configuration is the operator's now.
            plan.update = false;
        }
        if plan.create || plan.update {
            // The wanted pause rides along, so an update never resumes a held campaign.
            self.calls
                .create_consumer(config)
                .await
                .map_err(|e| fail("write", &name, e))?;
        }
        match plan.pause {
            Some(PauseStep::Until(until)) => {
                let until = to_nats(until)?;
                self.calls
                    .pause_consumer(&name, until)
                    .await
                    .map_err(|e| fail("pause", &name, e))?;
            }
            Some(PauseStep::Resume) => {
                self.calls
                    .resume_consumer(&name)
                    .await
                    .map_err(|e| fail("resume", &name, e))?;
            }
            None => {}
        }
        Ok(Applied { plan, drift })
    }

    /// Brings the consumer in line with the campaign's stored document, read afresh (never
    /// a caller's possibly stale copy). Stops when the document read after the change is
    /// the one applied. `None`: the campaign is gone (or its document undecodable).
    pub async fn reconcile(
        &self,
        campaigns: &kv::Store,
        id: CampaignId,
    ) -> Result<Option<Applied>, DialConsumerError> {
        let read = |e: kv::EntryError| DialConsumerError::Document(id, e.into());
        let mut entry = campaigns.entry(id.to_string()).await.map_err(read)?;
        let mut applied = None;
        for _ in 0..RECONCILE_ROUNDS {
            let Some(current) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Ok(applied);
            };
            let Ok(campaign) = serde_json::from_slice::<Campaign>(&current.value) else {
                // An undecodable document is ignored everywhere.
                return Ok(applied);
            };
            applied = Some(self.ensure_revision(&campaign, current.revision).await?);
            entry = campaigns.entry(id.to_string()).await.map_err(read)?;
            if entry.as_ref().map(|e| e.revision) == Some(current.revision) {
                break;
            }
        }
        Ok(applied)
    }

    /// The consumer to pull the campaign's calls from.
    pub async fn consumer(&self, id: CampaignId) -> Result<PullConsumer, DialConsumerError> {
        let name = subjects::dial_consumer(id);
        self.calls
            .get_consumer(&name)
            .await
            .map_err(|e| fail("open", &name, e))
    }

    /// Every dial consumer's cap and the document revision it was last written from, in one
    /// listing (paged by the server): what a follower of the documents compares them with
    /// to find a consumer that disagrees, without a request per campaign.
    pub async fn written(
        &self,
    ) -> Result<std::collections::HashMap<CampaignId, Written>, DialConsumerError> {
        use futures::TryStreamExt as _;
        let fail_list = |e: async_nats::Error| DialConsumerError::Consumer {
            action: "list",
            consumer: "dial_*".into(),
            source: e,
        };
        let infos: Vec<consumer::Info> = self
            .calls
            .consumers()
            .map_err(|e| fail_list(e.into()))
            .try_collect()
            .await?;
        Ok(infos
            .into_iter()
            .filter_map(|info| {
                let id = subjects::dial_consumer_campaign(&info.name)?;
                Some((
                    id,
                    Written {
                        max_ack_pending: info.config.max_ack_pending,
                        revision: Self::written_from(&info),
                        paused: info.paused,
                        has_work: has_work(&info),
                        queued: info.num_pending,
                    },
                ))
            })
            .collect())
    }

    /// How many of the campaign's messages are held now (delivered, not yet acknowledged),
    /// by every replica together: the count the cap bounds.
    pub async fn held(&self, id: CampaignId) -> Result<u64, DialConsumerError> {
        let info = self.info(id).await?;
        Ok(u64::try_from(info.num_ack_pending).unwrap_or(0))
    }

    /// The campaign's calls queued and held now, by every replica together: one read.
    pub async fn work(&self, id: CampaignId) -> Result<Work, DialConsumerError> {
        Ok(Work::of(&self.info(id).await?))
    }

    /// The campaign's consumer as the server has it now.
    async fn info(&self, id: CampaignId) -> Result<consumer::Info, DialConsumerError> {
        let name = subjects::dial_consumer(id);
        self.calls
            .consumer_info(&name)
            .await
            .map_err(|e| fail("read", &name, e))
    }

    /// Removes the consumer of a deleted campaign, unless calls still wait on it (removing
    /// it then would strand them; they stay until an operator acts). Returns the calls
    /// still queued when it was kept.
    pub async fn remove_if_idle(&self, id: CampaignId) -> Result<u64, DialConsumerError> {
        let name = subjects::dial_consumer(id);
        let info = self.info(id).await?;
        let queued = info.num_pending + info.num_ack_pending as u64;
        if queued == 0 {
            self.calls
                .delete_consumer(&name)
                .await
                .map_err(|e| fail("delete", &name, e))?;
        }
        Ok(queued)
    }
}

/// A campaign's calls on its consumer, as one read shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Not yet delivered to any dialer (`num_pending`).
    pub queued: u64,
    /// Delivered and not yet acknowledged (`num_ack_pending`): a call live on any replica, a
    /// message handed back with a delay (a NAK with a delay stays ack-pending until it is
    /// redelivered), one whose holder died (ack-pending until AckWait sends it again). The
    /// last two come back only to a pull.
    pub held: u64,
}

impl Work {
    fn of(info: &consumer::Info) -> Self {
        Self {
            queued: info.num_pending,
            held: u64::try_from(info.num_ack_pending).unwrap_or(0),
        }
    }

    /// The rule of a campaign with work: anything queued or held.
    pub fn any(&self) -> bool {
        self.queued > 0 || self.held > 0
    }
}

fn has_work(info: &consumer::Info) -> bool {
    Work::of(info).any()
}

/// `template` filled in for `campaign` at `now`.
fn config(template: &pull::Config, campaign: &Campaign, now: DateTime<Utc>) -> pull::Config {
    let wanted = wanted(campaign, now);
    let mut config = template.clone();
    config.durable_name = Some(subjects::dial_consumer(campaign.id));
    config.filter_subject = subjects::dial(campaign.id);
    config.max_ack_pending = wanted.max_ack_pending;
    config.pause_until = wanted.paused_until.and_then(|t| to_nats(t).ok());
    config
}

fn fail(
    action: &'static str,
    consumer: &str,
    e: impl Into<async_nats::Error>,
) -> DialConsumerError {
    DialConsumerError::Consumer {
        action,
        consumer: consumer.to_owned(),
        source: e.into(),
    }
}

fn actual(info: &consumer::Info) -> Actual {
    let paused_until = info.paused.then(|| {
        info.config
            .pause_until
            .and_then(|t| from_nats(&t))
            .unwrap_or(INDEFINITELY)
    });
    Actual {
        max_ack_pending: info.config.max_ack_pending,
        paused_until,
    }
}

fn to_nats(t: DateTime<Utc>) -> Result<async_nats::datetime::DateTime, DialConsumerError> {
    t.timestamp_nanos_opt()
        .and_then(|n| async_nats::datetime::from_nanos(i128::from(n)).ok())
        .ok_or(DialConsumerError::Instant(t))
}

fn from_nats(t: &async_nats::datetime::DateTime) -> Option<DateTime<Utc>> {
    let nanos = i64::try_from(t.unix_timestamp_nanos()).ok()?;
    Some(Utc.timestamp_nanos(nanos))
}

#[cfg(test)]
mod tests;
