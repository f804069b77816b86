//! `call_audit`: the admission audit records ([`ccm_core::attempt_audit`]), one row per record
//! id. A record applied again (redelivered, replayed, republished past the duplicate window)
//! conflicts on its id and adds nothing.

use ccm_core::attempt_audit::{AttemptAudit, AuditDecision};
use sqlx::PgConnection;

/// Inserts the records (stream sequence, record, payload as published); returns how many were
/// new.
pub async fn insert(
    records: &[(u64, &AttemptAudit, &str)],
    conn: &mut PgConnection,
) -> Result<usize, sqlx::Error> {
    let mut new = 0;
    for (seq, audit, payload) in records {
        let (until, status, reason) = match &audit.decision {
            AuditDecision::Placed => (None, None, None),
            AuditDecision::Deferred { until } => (Some(*until), None, None),
            AuditDecision::Ended { status, reason } => {
                (None, Some(status.as_str()), Some(reason.as_str()))
            }
        };
        let inserted = sqlx::query(
            "INSERT INTO call_audit (audit_id, seq, call_id, campaign_id, attempt, deferrals, \
             phone_number, decided_at, dialer, decision, until_at, end_status, reason, \
             expires_at, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb) \
             ON CONFLICT (audit_id) DO NOTHING",
        )
        .bind(audit.audit_id())
        .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
        .bind(audit.call_id.as_uuid())
        .bind(audit.campaign_id.as_i64())
        .bind(i32::try_from(audit.attempt).unwrap_or(i32::MAX))
        .bind(i32::try_from(audit.deferrals).unwrap_or(i32::MAX))
        .bind(audit.phone_number.as_str())
        .bind(audit.at)
        .bind(&audit.dialer)
        .bind(audit.decision.name())
        .bind(until)
        .bind(status)
        .bind(reason)
        .bind(audit.expires_at)
        .bind(*payload)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        new += usize::try_from(inserted).unwrap_or(0);
    }
    Ok(new)
}
