//! The consent records: PostgreSQL rows (this service's migration set, `migrations/`), and the
//! `consents` bucket the checks read ([`ccm_core::consent`]).
//!
//! The rows are the record (who gave which consent, when, with what evidence; who revoked it,
//! when and how); a row is never deleted. The bucket holds, per number and type, what a check
//! needs, computed from the rows. Every change to a number's consents of one type runs under
//! a transaction-scoped advisory lock on that key, and the bucket is written while the lock is
//! held, so two replicas never write it from different views of the rows:
//!
//! - a grant commits its row first, then writes the bucket: should the bucket write fail, the
//!   consent exists but calls are still refused (the safe side) until the next change or a
//!   retried grant;
//! - a revocation writes the bucket before it commits: should the commit fail, the number is
//!   suppressed anyway and the client's retry records it; should the bucket write fail, the
//!   revocation is rolled back and answered 503, so a revocation the API confirmed is in force.

use ccm_core::{
    PhoneNumber,
    consent::{self, ConsentState, ConsentType, Revocation},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;

/// A consent record as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ConsentRecord {
    pub id: Uuid,
    pub phone_number: String,
    /// `prior_express_written`, `prior_express`, `informational`, `ai_voice`, `recording`.
    #[serde(rename = "type")]
    pub consent_type: String,
    pub purpose: Option<String>,
    pub source: String,
    pub given_at: DateTime<Utc>,
    pub evidence_ref: Option<String>,
    pub campaign_id: Option<i64>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// `api`, `opt_out` (the callee asked during a call), `erasure`.
    pub revoked_how: Option<String>,
    pub revoke_reason: Option<String>,
}

/// A consent to record.
#[derive(Debug, Clone)]
pub struct NewConsent {
    pub phone: PhoneNumber,
    pub kind: ConsentType,
    pub purpose: Option<String>,
    pub source: String,
    pub given_at: DateTime<Utc>,
    pub evidence_ref: Option<String>,
    pub campaign_id: Option<i64>,
    pub recorded_by: String,
}

/// Who revoked, how, and why.
#[derive(Debug, Clone)]
pub struct Revoke {
    pub by: String,
    pub how: &'static str,
    pub reason: Option<String>,
}

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach the consent records")]
    Database(#[from] sqlx::Error),
    #[error("cannot write the consents bucket")]
    Bucket(#[source] async_nats::Error),
    #[error("a stored consent has an unknown type {0:?}")]
    UnknownType(String),
}

const COLUMNS: &str = "id, phone_number, consent_type, purpose, source, given_at, evidence_ref,
    campaign_id, recorded_at, recorded_by, revoked_at, revoked_by, revoked_how, revoke_reason";

/// Records a consent, then makes it count for the checks.
pub async fn grant(state: &AppState, new: NewConsent) -> Result<ConsentRecord, StoreError> {
    let record: ConsentRecord = sqlx::query_as(&format!(
        "INSERT INTO consents (id, phone_number, consent_type, purpose, source, given_at,
             evidence_ref, campaign_id, recorded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.phone.as_str())
    .bind(new.kind.as_str())
    .bind(&new.purpose)
    .bind(&new.source)
    .bind(new.given_at)
    .bind(&new.evidence_ref)
    .bind(new.campaign_id)
    .bind(&new.recorded_by)
    .fetch_one(&state.pg)
    .await?;
    let mut tx = state.pg.begin().await?;
    sync(state, &mut tx, &new.phone, new.kind).await?;
    tx.commit().await?;
    Ok(record)
}

/// Revokes one consent (a revoked one keeps its first revocation); `None`: no such consent.
pub async fn revoke(
    state: &AppState,
    id: Uuid,
    how: &Revoke,
) -> Result<Option<ConsentRecord>, StoreError> {
    let found: Option<(String, String)> =
        sqlx::query_as("SELECT phone_number, consent_type FROM consents WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pg)
            .await?;
    let Some((number, kind)) = found else {
        return Ok(None);
    };
    let kind = ConsentType::parse(&kind).ok_or(StoreError::UnknownType(kind))?;
    let mut tx = state.pg.begin().await?;
    lock(&mut tx, &number, kind).await?;
    let record: ConsentRecord = sqlx::query_as(&format!(
        "UPDATE consents SET revoked_at = COALESCE(revoked_at, now()),
             revoked_by = COALESCE(revoked_by, $2), revoked_how = COALESCE(revoked_how, $3),
             revoke_reason = CASE WHEN revoked_at IS NULL THEN $4 ELSE revoke_reason END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&how.by)
    .bind(how.how)
    .bind(&how.reason)
    .fetch_one(&mut *tx)
    .await?;
    // An erased record's number is a pseudonym: nothing in the bucket names it any more.
    if let Ok(phone) = PhoneNumber::parse(&number, ccm_core::phone::PhoneRule::Lenient) {
        sync(state, &mut tx, &phone, kind).await?;
    }
    tx.commit().await?;
    Ok(Some(record))
}

/// Revokes every valid consent of `phone` (an opt-out, an erasure); answers the records
/// revoked now.
pub async fn revoke_all(
    state: &AppState,
    phone: &PhoneNumber,
    how: &Revoke,
) -> Result<Vec<ConsentRecord>, StoreError> {
    // Before ingest's migrations ran there is no record to revoke (an opt-out heard then
    // must not fail for it).
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('consents') IS NOT NULL")
        .fetch_one(&state.pg)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut revoked = Vec::new();
    for kind in ConsentType::ALL {
        let mut tx = state.pg.begin().await?;
        lock(&mut tx, phone.as_str(), kind).await?;
        let now: Vec<ConsentRecord> = sqlx::query_as(&format!(
            "UPDATE consents SET revoked_at = now(), revoked_by = $3, revoked_how = $4,
                 revoke_reason = $5
             WHERE phone_number = $1 AND consent_type = $2 AND revoked_at IS NULL
             RETURNING {COLUMNS}"
        ))
        .bind(phone.as_str())
        .bind(kind.as_str())
        .bind(&how.by)
        .bind(how.how)
        .bind(&how.reason)
        .fetch_all(&mut *tx)
        .await?;
        if now.is_empty() {
            continue;
        }
        sync(state, &mut tx, phone, kind).await?;
        tx.commit().await?;
        revoked.extend(now);
    }
    Ok(revoked)
}

/// Every consent record of `number` (E.164, or an erased record's `erased:<pseudonym>`),
/// revoked ones included, oldest first.
pub async fn list(state: &AppState, number: &str) -> Result<Vec<ConsentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM consents WHERE phone_number = $1 ORDER BY given_at, id"
    ))
    .bind(number)
    .fetch_all(&state.pg)
    .await
}

/// Serialises changes to one number's consents of one type across replicas, until the
/// transaction ends.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    number: &str,
    kind: ConsentType,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 2110))")
        .bind(format!("consent/{number}/{}", kind.as_str()))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Writes the bucket's state of `phone`'s consents of type `kind` from the rows as this
/// transaction sees them, holding the key's lock.
async fn sync(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    phone: &PhoneNumber,
    kind: ConsentType,
) -> Result<(), StoreError> {
    lock(tx, phone.as_str(), kind).await?;
    let valid: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM consents WHERE phone_number = $1 AND consent_type = $2
             AND revoked_at IS NULL ORDER BY given_at, id",
    )
    .bind(phone.as_str())
    .bind(kind.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let revoked: Option<(Uuid, DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "SELECT id, revoked_at, revoked_how FROM consents
         WHERE phone_number = $1 AND consent_type = $2 AND revoked_at IS NOT NULL
         ORDER BY revoked_at DESC, id DESC LIMIT 1",
    )
    .bind(phone.as_str())
    .bind(kind.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let value = ConsentState {
        valid,
        revoked: revoked.map(|(consent_id, at, how)| Revocation {
            consent_id,
            at,
            how: how.unwrap_or_else(|| "api".into()),
        }),
    };
    let body = serde_json::to_vec(&value).map_err(|e| StoreError::Bucket(e.into()))?;
    state
        .consents
        .put(consent::key(phone, kind), body.into())
        .await
        .map_err(|e| StoreError::Bucket(e.into()))?;
    Ok(())
}

/// Applies this service's migrations (when `provision` is on), retrying while PostgreSQL is
/// away: ingest takes calls without it, only the consent routes answer 503 meanwhile.
pub async fn migrate(state: AppState, stop: CancellationToken) {
    if !state.provision {
        return;
    }
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match ccm_core::schema::CONSENTS.run(&state.pg).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot apply the consent migrations yet");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(10));
    }
}
