//! Campaign documents in the `campaigns` bucket: read (through the cache), create, and change
//! by compare-and-set. Both APIs and the lifecycle task go through here.
//!
//! Changes are compare-and-set updates of the document, so two concurrent edits never lose
//! one. The document is written first, then the campaign's dial consumer is brought in line
//! with it (cap, server-side pause; [`ccm_core::dial_consumer`]); a crash between the two is
//! repaired by the dialer's reconcile, never the other way round.
//!
//! Nothing here is HTTP: errors are [`StoreError`]s, which the routes turn into answers
//! (`impl From<StoreError> for AppError`) and the lifecycle task logs.

use async_nats::jetstream::kv;
use ccm_core::{Campaign, CampaignId};
use chrono::Utc;

use crate::AppState;

/// How often a change is tried again when another writer got there first.
const UPDATE_TRIES: usize = 20;

/// How often the id counter is read again when another replica moved it.
const ID_TRIES: usize = 100;

/// Why a campaign document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("campaign {0} does not exist")]
    NotFound(CampaignId),
    #[error("the campaigns bucket is unavailable")]
    Unavailable(#[source] async_nats::Error),
    #[error("the campaign's dial consumer cannot be created")]
    Consumer(#[source] ccm_core::dial_consumer::DialConsumerError),
    #[error("campaign document {key} is not valid")]
    Document {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the campaign kept changing")]
    Contended,
    #[error("campaign id allocation kept conflicting")]
    IdContended,
    #[error("the id counter gave an invalid campaign id")]
    InvalidId(#[source] ccm_core::ids::IdError),
}

fn unavailable(e: impl Into<async_nats::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

fn document(key: impl ToString) -> impl FnOnce(serde_json::Error) -> StoreError {
    let key = key.to_string();
    move |source| StoreError::Document { key, source }
}

/// The campaign document, if it exists.
pub(crate) async fn load(state: &AppState, id: CampaignId) -> Result<Option<Campaign>, StoreError> {
    if let Some(campaign) = state.campaign_cache.get(id) {
        return Ok(Some(campaign));
    }
    let entry = state
        .campaigns
        .entry(id.to_string())
        .await
        .map_err(unavailable)?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    let campaign: Campaign = serde_json::from_slice(&entry.value).map_err(document(id))?;
    state.campaign_cache.put(entry.revision, campaign.clone());
    Ok(Some(campaign))
}

/// Every campaign document, by id.
pub(crate) async fn load_all(state: &AppState) -> Result<Vec<Campaign>, StoreError> {
    use futures::TryStreamExt;
    let keys: Vec<String> = state
        .campaigns
        .keys()
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    let mut all = Vec::with_capacity(keys.len());
    for key in keys {
        let Ok(id) = key.parse::<CampaignId>() else {
            continue;
        };
        if let Some(campaign) = load(state, id).await? {
            all.push(campaign);
        }
    }
    all.sort_by_key(|c| c.id);
    Ok(all)
}

/// Allocates an id, builds the campaign with it (`build` may refuse: a route's validation),
/// creates its dial consumer and stores it.
pub(crate) async fn create<E: From<StoreError>>(
    state: &AppState,
    build: impl FnOnce(CampaignId) -> Result<Campaign, E>,
) -> Result<Campaign, E> {
    let id = next_campaign_id(&state.counters).await?;
    let campaign = build(id)?;
    // The consumer first: a campaign visible in the bucket must already have somewhere for
    // its calls to go (paused already if the campaign is held).
    state
        .dial_consumers
        .ensure(&campaign)
        .await
        .map_err(StoreError::Consumer)?;
    let bytes = serde_json::to_vec(&campaign).map_err(document(id))?;
    let revision = state
        .campaigns
        .create(id.to_string(), bytes.into())
        .await
        .map_err(unavailable)?;
    state.campaign_cache.put(revision, campaign.clone());
    Ok(campaign)
}

/// Reads the document, applies `change`, and writes it back if nobody wrote in between
/// (otherwise reads again). `change` may refuse with its own error (a route's answer).
pub(crate) async fn update<E: From<StoreError>>(
    state: &AppState,
    id: CampaignId,
    mut change: impl FnMut(&mut Campaign) -> Result<(), E>,
) -> Result<Campaign, E> {
    for _ in 0..UPDATE_TRIES {
        let entry = state
            .campaigns
            .entry(id.to_string())
            .await
            .map_err(unavailable)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(StoreError::NotFound(id).into());
        };
        let mut campaign: Campaign = serde_json::from_slice(&entry.value).map_err(document(id))?;
        change(&mut campaign)?;
        campaign.updated_at = Utc::now();
        let bytes = serde_json::to_vec(&campaign).map_err(document(id))?;
        match state
            .campaigns
            .update(id.to_string(), bytes.into(), entry.revision)
            .await
        {
            Ok(revision) => {
                state.campaign_cache.put(revision, campaign.clone());
                // The document is the truth and is written: the change stands even if the
                // consumer cannot follow now (the dialer's reconcile brings it in line).
                if let Err(e) = state.dial_consumers.reconcile(&state.campaigns, id).await {
                    tracing::warn!(%id, error = %ccm_core::telemetry::chain(&e), "dial consumer not brought in line yet");
                }
                return Ok(campaign);
            }
            Err(e) if ccm_core::nats::lost_race(&e) => continue,
            Err(e) => return Err(unavailable(e).into()),
        }
    }
    Err(StoreError::Contended.into())
}

/// Why the system could not complete a campaign.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompleteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("campaign cannot complete")]
    Transition(#[source] ccm_core::lifecycle::TransitionError),
}

/// Completes a campaign on the system's behalf (end date passed, or no call left), unless
/// it changed meanwhile so that the check no longer holds: `still` is asked again on the
/// document actually replaced.
pub(crate) async fn complete(
    state: &AppState,
    id: CampaignId,
    still: impl Fn(&Campaign) -> bool,
) -> Result<Option<Campaign>, CompleteError> {
    let mut changed = false;
    let campaign = update(state, id, |c| -> Result<(), CompleteError> {
        changed = false;
        if !still(c) {
            return Ok(());
        }
        c.apply(ccm_core::lifecycle::Action::Complete, Utc::now())
            .map_err(CompleteError::Transition)?;
        changed = true;
        Ok(())
    })
    .await?;
    Ok(changed.then_some(campaign))
}

/// Allocates the next campaign id with compare-and-set on the `counters` bucket, so several
/// ingest replicas never hand out the same id.
async fn next_campaign_id(counters: &kv::Store) -> Result<CampaignId, StoreError> {
    const KEY: &str = "campaign";
    for _ in 0..ID_TRIES {
        let entry = counters.entry(KEY).await.map_err(unavailable)?;
        let result = match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => counters.create(KEY, "1".into()).await.map(|_| 1),
            Some(entry) => {
                let current: u64 = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let next = current + 1;
                counters
                    .update(KEY, next.to_string().into(), entry.revision)
                    .await
                    .map(|_| next)
                    .map_err(kv::CreateError::from)
            }
        };
        match result {
            Ok(id) => return CampaignId::new(id).map_err(StoreError::InvalidId),
            // Another replica took this id (whichever code the server answered with); read
            // the counter again.
            Err(e) if ccm_core::nats::lost_race(&e) => continue,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(StoreError::IdContended)
}
