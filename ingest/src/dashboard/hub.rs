//! The dashboard's one feed per ingest process: a [`Tally`] seeded from the read model and
//! kept current from JetStream, turned into at most a few frames per second for every
//! connected browser.
//!
//! On start it reads the read model, then replays the last [`REPLAY`] of `CALLS` and
//! `CALL_EVENTS` through ordered consumers (ephemeral, flow-controlled, no acks) and follows
//! them live. The replay covers the events the projector had not written yet when the
//! snapshot was read; events the snapshot already had are ignored by the tally's
//! `(attempt, rank)` rule. A projector more than [`REPLAY`] behind would leave those calls
//! in their older bucket until the feed restarts.
//!
//! Browsers never see raw events: every [`TICK`] the feed compares each campaign's row with
//! the one it sent last and broadcasts only the rows that changed, so a pipeline doing
//! thousands of calls a second still costs a browser two small messages a second.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, push::OrderedConfig},
};
use ccm_core::{CallEvent, CallId, CallStatus, CampaignId, DialRequest, subjects, topology::names};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::tally::{Bucket, Counts, Tally};
use crate::campaign_cache::CampaignCache;

/// How far back the feed replays the streams on start.
pub const REPLAY: Duration = Duration::from_secs(60);
/// How often changed rows are sent: at most this many frames per second reach a browser.
pub const TICK: Duration = Duration::from_millis(500);
/// How often queue depths and the DLQ size are read.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// What the feed reads.
#[derive(Debug, Clone)]
pub struct Sources {
    pub js: jetstream::Context,
    pub pg: sqlx::PgPool,
    pub campaigns: CampaignCache,
}

/// A message to browsers: the whole view, or the rows that changed.
#[derive(Debug, Clone)]
pub enum Frame {
    Snapshot(Arc<str>),
    Update(Arc<str>),
}

/// One campaign's line on the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: CampaignId,
    pub name: String,
    pub state: String,
    pub max_concurrent_calls: u32,
    #[serde(flatten)]
    pub counts: Counts,
    pub total: i64,
    /// Attempts placed per second, over the last seconds.
    pub calls_per_sec: f64,
    /// The dial consumer's undelivered messages: calls waiting for a slot.
    pub queue_depth: Option<u64>,
    /// The dial consumer's un-acked messages: calls on the line now.
    pub in_flight: Option<u64>,
}

/// Everything a browser needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    /// False until the read model has been read once.
    pub ready: bool,
    /// Why the feed is not following the streams, if it is not.
    pub error: Option<String>,
    pub campaigns: Vec<Row>,
    /// Letters in the DLQ stream.
    pub dlq_size: Option<u64>,
    pub calls_per_sec: f64,
    pub at: Option<DateTime<Utc>>,
}

/// Queue depths (campaign → (undelivered, un-acked)) and the DLQ size.
#[derive(Debug, Default, Clone)]
struct Gauges {
    consumers: HashMap<CampaignId, (u64, u64)>,
    dlq: Option<u64>,
}

/// What the feed shares with the stream handlers.
#[derive(Debug)]
pub struct Shared {
    view: Mutex<View>,
    frames: broadcast::Sender<Frame>,
    ready: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Self {
        Self {
            view: Mutex::new(View::default()),
            frames: broadcast::channel(16).0,
            ready: watch::channel(false).0,
        }
    }

    /// Frames from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.frames.subscribe()
    }

    /// Becomes true once the feed has read the read model.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The whole current view, as JSON.
    pub fn snapshot(&self) -> Arc<str> {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_string(&*view)
            .unwrap_or_else(|_| "{}".into())
            .into()
    }
}

/// Why the feed stopped following; it starts over after a pause.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("cannot read the read model")]
    Database(#[from] sqlx::Error),
    #[error("cannot follow the streams")]
    Nats(#[source] async_nats::Error),
    #[error("the stream subscription ended")]
    Ended,
}

fn nats(e: impl Into<async_nats::Error>) -> FeedError {
    FeedError::Nats(e.into())
}

/// Starts the feed; it runs until `stop`.
pub fn start(sources: Sources, stop: CancellationToken) -> Arc<Shared> {
    let shared = Arc::new(Shared::new());
    let gauges = Arc::new(Mutex::new(Gauges::default()));
    tokio::spawn(poll_gauges(
        sources.clone(),
        shared.clone(),
        gauges.clone(),
        stop.clone(),
    ));
    tokio::spawn(run(sources, shared.clone(), gauges, stop));
    shared
}

async fn run(
    sources: Sources,
    shared: Arc<Shared>,
    gauges: Arc<Mutex<Gauges>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if let Err(e) = follow(&sources, &shared, &gauges, &stop).await {
            let message = crate::error_chain(&e);
            tracing::warn!(error = %message, "dashboard feed interrupted; starting over");
            shared.view.lock().unwrap_or_else(|e| e.into_inner()).error = Some(message);
            let _ = shared.frames.send(Frame::Snapshot(shared.snapshot()));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Either kind of message the feed follows.
enum Item {
    Dial(DialRequest),
    Event(CallEvent),
    Other,
}

async fn follow(
    sources: &Sources,
    shared: &Shared,
    gauges: &Mutex<Gauges>,
    stop: &CancellationToken,
) -> Result<(), FeedError> {
    let replay_from = Utc::now() - chrono::Duration::from_std(REPLAY).unwrap_or_default();
    let mut tally = load(&sources.pg, replay_from).await?;
    let dials = ordered(&sources.js, names::CALLS, subjects::DIAL_ALL, replay_from).await?;
    let events = ordered(&sources.js, names::CALL_EVENTS, "", replay_from).await?;
    let mut messages = futures::stream::select(dials, events);
    let mut sent: BTreeMap<CampaignId, Row> = BTreeMap::new();
    publish(shared, &tally, gauges, &sources.campaigns, &mut sent, true);
    let _ = shared.ready.send(true);
    let mut tick = tokio::time::interval(TICK);
    let mut prune = tokio::time::interval(REPLAY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            item = messages.next() => match item {
                Some(Ok(Item::Dial(request))) => tally.dial(&request),
                Some(Ok(Item::Event(event))) => tally.event(&event),
                Some(Ok(Item::Other)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(FeedError::Ended),
            },
            _ = tick.tick() => publish(shared, &tally, gauges, &sources.campaigns, &mut sent, false),
            _ = prune.tick() => {
                let now = Utc::now();
                tally.prune(now - chrono::Duration::from_std(REPLAY * 2).unwrap_or_default(), now);
            }
        }
    }
}

/// An ordered consumer over `stream` from `from`, decoded.
async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    from: DateTime<Utc>,
) -> Result<futures::stream::BoxStream<'static, Result<Item, FeedError>>, FeedError> {
    // Built from its wire form so it holds whichever date type async-nats was built with.
    let deliver_policy: DeliverPolicy = serde_json::from_value(serde_json::json!({
        "deliver_policy": "by_start_time",
        "opt_start_time": from.to_rfc3339(),
    }))
    .map_err(nats)?;
    let consumer = js
        .get_stream(stream)
        .await
        .map_err(nats)?
        .create_consumer(OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: filter.to_owned(),
            deliver_policy,
            description: Some("ccm dashboard feed".into()),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let messages = consumer.messages().await.map_err(nats)?;
    Ok(messages
        .map(|message| {
            let message = message.map_err(nats)?;
            let subject = message.subject.as_str();
            Ok(if subject.starts_with("calls.dial.") {
                serde_json::from_slice(&message.payload).map_or(Item::Other, Item::Dial)
            } else {
                serde_json::from_slice(&message.payload).map_or(Item::Other, Item::Event)
            })
        })
        .boxed())
}

/// The read model's view of every call: one by one for calls in flight, finished since
/// `replay_from` or dead-lettered (their events may still arrive), in bulk for the rest. Both
/// queries read one snapshot of the database.
async fn load(pg: &sqlx::PgPool, replay_from: DateTime<Utc>) -> Result<Tally, FeedError> {
    let mut tx = pg.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (open, ended) = (
        ccm_core::call_lifecycle::CALL_IS_OPEN_SQL,
        ccm_core::call_lifecycle::CALL_HAS_ENDED_SQL,
    );
    let followed: Vec<(uuid::Uuid, i64, String, i32, i16, DateTime<Utc>)> =
        sqlx::query_as(&format!(
            "SELECT call_id, campaign_id, status, attempt_count, phase_rank, updated_at FROM calls \
         WHERE {open} OR updated_at >= $1 OR status = 'DEAD_LETTERED'",
        ))
        .bind(replay_from)
        .fetch_all(&mut *tx)
        .await?;
    let counted: Vec<(i64, String, i16, i64)> = sqlx::query_as(&format!(
        "SELECT campaign_id, status, phase_rank, count(*) FROM calls \
         WHERE {ended} AND updated_at < $1 AND status <> 'DEAD_LETTERED' \
         GROUP BY campaign_id, status, phase_rank",
    ))
    .bind(replay_from)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut tally = Tally::default();
    let campaign = |id: i64| u64::try_from(id).ok().and_then(|c| CampaignId::new(c).ok());
    let bucket = |status: &str, rank: i16| {
        status
            .parse::<CallStatus>()
            .ok()
            .map(|s| Bucket::of(s, u8::try_from(rank).unwrap_or(0)))
    };
    for (call, id, status, attempt, rank, at) in followed {
        if let (Some(id), Some(b)) = (campaign(id), bucket(&status, rank)) {
            let key = (
                u32::try_from(attempt).unwrap_or(0),
                u8::try_from(rank).unwrap_or(0),
            );
            tally.observe(CallId::from(call), id, key, b, at);
        }
    }
    for (id, status, rank, n) in counted {
        if let (Some(id), Some(b)) = (campaign(id), bucket(&status, rank)) {
            tally.add_counted(id, b, n);
        }
    }
    Ok(tally)
}

/// Builds every row; sends the changed ones (or all of them, as a snapshot).
fn publish(
    shared: &Shared,
    tally: &Tally,
    gauges: &Mutex<Gauges>,
    campaigns: &CampaignCache,
    sent: &mut BTreeMap<CampaignId, Row>,
    snapshot: bool,
) {
    let now = Utc::now();
    let gauges = gauges.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let documents: HashMap<CampaignId, ccm_core::Campaign> =
        campaigns.all().into_iter().map(|c| (c.id, c)).collect();
    let mut ids: Vec<CampaignId> = documents.keys().copied().collect();
    ids.extend(tally.counts().keys().copied());
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    let mut rows = Vec::with_capacity(ids.len());
    let mut changed = Vec::new();
    let mut total_rate = 0.0;
    for id in ids {
        let counts = tally.counts().get(&id).copied().unwrap_or_default();
        let document = documents.get(&id);
        let consumer = gauges.consumers.get(&id);
        let rate = tally.dial_rate(id, now);
        total_rate += rate;
        let row = Row {
            id,
            name: document.map(|c| c.name.clone()).unwrap_or_default(),
            state: document.map(state_name).unwrap_or_default(),
            max_concurrent_calls: document.map_or(0, |c| c.max_concurrent_calls),
            total: counts.total(),
            counts,
            calls_per_sec: rate,
            queue_depth: consumer.map(|c| c.0),
            in_flight: consumer.map(|c| c.1),
        };
        if sent.get(&id) != Some(&row) {
            sent.insert(id, row.clone());
            changed.push(row.clone());
        }
        rows.push(row);
    }
    let previous = {
        let mut view = shared.view.lock().unwrap_or_else(|e| e.into_inner());
        let previous = (view.dlq_size, view.calls_per_sec, view.error.is_some());
        *view = View {
            ready: true,
            error: None,
            campaigns: rows,
            dlq_size: gauges.dlq,
            calls_per_sec: total_rate,
            at: Some(now),
        };
        previous
    };
    if snapshot {
        let _ = shared.frames.send(Frame::Snapshot(shared.snapshot()));
        return;
    }
    if changed.is_empty() && previous == (gauges.dlq, total_rate, false) {
        return;
    }
    let update = serde_json::json!({
        "campaigns": changed,
        "dlq_size": gauges.dlq,
        "calls_per_sec": total_rate,
        "at": now,
    });
    let _ = shared.frames.send(Frame::Update(update.to_string().into()));
}

/// The state's wire name (`active`, `paused`, `cancelled`).
fn state_name(campaign: &ccm_core::Campaign) -> String {
    serde_json::to_value(campaign.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Reads the dial consumers' depths and the DLQ size while somebody is watching.
async fn poll_gauges(
    sources: Sources,
    shared: Arc<Shared>,
    gauges: Arc<Mutex<Gauges>>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if shared.frames.receiver_count() == 0 {
            continue;
        }
        let mut next = Gauges::default();
        if let Ok(calls) = sources.js.get_stream(names::CALLS).await {
            for campaign in sources.campaigns.all() {
                if let Ok(info) = calls
                    .consumer_info(subjects::dial_consumer(campaign.id))
                    .await
                {
                    next.consumers.insert(
                        campaign.id,
                        (
                            info.num_pending,
                            u64::try_from(info.num_ack_pending).unwrap_or(0),
                        ),
                    );
                }
            }
        }
        if let Ok(mut dlq) = sources.js.get_stream(names::DLQ).await {
            next.dlq = dlq.info().await.ok().map(|i| i.state.messages);
        }
        *gauges.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }
}
