//! The audit trail of admission decisions (`call_audit`, kept by the projector from the
//! dialer's records, `ccm_core::attempt_audit`): `GET /api/v1/calls/{id}/audit` (JSON, per
//! call) and `GET /api/v1/campaigns/{id}/audit.csv` (CSV, per campaign, streamed in keyset
//! pages so a campaign of any size is exported in bounded memory).

use axum::{
    body::Body,
    extract::{Path, State},
    http::header,
    response::Response,
};
use ccm_core::{
    CallId, CampaignId,
    attempt_audit::{AttemptAudit, AuditDecision},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    AppState,
    error::{ApiJson, AppError},
};

/// Rows read per page of the CSV export.
const PAGE: i64 = 1000;

fn read_error(e: sqlx::Error) -> AppError {
    AppError::unavailable(crate::readmodel::ReadError::Database(e))
}

/// A call's audit trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallAudit {
    #[schema(value_type = uuid::Uuid)]
    pub call_id: CallId,
    /// Each decision, oldest first, as the dialer recorded it: `decision` (`placed`,
    /// `deferred` with `until`, `ended` with `status` and `reason`), `campaign` (revision,
    /// dialling), `dnc` (lists and entry revisions), `time` (zones, why, local times),
    /// `window`, `rules` (jurisdiction, pack rules, frequency counts), `dialer`, `expires_at`.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
}

/// Every admission decision recorded for a call.
#[utoipa::path(get, path = "/api/v1/calls/{id}/audit", tag = "calls",
    params(("id" = uuid::Uuid, Path, description = "The call id")),
    responses(
        (status = 200, body = CallAudit),
        (status = 400, description = "Not a UUID", body = crate::openapi::Problem),
        (status = 404, description = "Unknown (or not yet projected) call", body = crate::openapi::Problem),
    ))]
pub(crate) async fn call(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<ApiJson<CallAudit>, AppError> {
    let id: CallId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    let records: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT record FROM call_audit WHERE call_id = $1 ORDER BY decided_at, audit_id",
    )
    .bind(id.as_uuid())
    .fetch_all(&state.pg)
    .await
    .map_err(read_error)?;
    if records.is_empty() {
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM calls WHERE call_id = $1)")
                .bind(id.as_uuid())
                .fetch_one(&state.pg)
                .await
                .map_err(read_error)?;
        if !known {
            return Err(AppError::not_found(
                "call_not_found",
                format!("call {id} is not known (yet)"),
            ));
        }
    }
    Ok(ApiJson(CallAudit {
        call_id: id,
        records,
    }))
}

/// The CSV header: one row per decision; `record` is the whole record as JSON (sections added
/// later appear there first).
pub const CSV_HEADER: &[&str] = &[
    "audit_id",
    "call_id",
    "campaign_id",
    "attempt",
    "deferrals",
    "phone_number",
    "decided_at",
    "dialer",
    "decision",
    "until",
    "end_status",
    "reason",
    "expires_at",
    "campaign_revision",
    "dialling",
    "dnc_lists",
    "zones",
    "zone_source",
    "local_time",
    "window_open",
    "window_opens_at",
    "jurisdiction",
    "rules",
    "frequency",
    "record",
];

/// Every admission decision of a campaign's calls, as CSV, oldest first.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/audit.csv", tag = "campaigns",
    params(("id" = u64, Path)),
    responses(
        (status = 429, description = "Over the token's rate limit (`rate_limited`); see `Retry-After`", body = crate::openapi::Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 200, description = "text/csv with a header row (see docs/campaigns.md for the columns)", content_type = "text/csv", body = String),
        (status = 400, body = crate::openapi::Problem),
        (status = 404, body = crate::openapi::Problem),
    ))]
pub(crate) async fn campaign_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id: CampaignId = id
        .parse()
        .map_err(|e: ccm_core::ids::IdError| AppError::bad_request("invalid_id", e.to_string()))?;
    crate::campaign_store::load(&state, id)
        .await?
        .ok_or_else(|| crate::routes::campaigns::not_found(id))?;
    let header_row = Ok::<_, std::io::Error>(bytes::Bytes::from(csv_line(
        CSV_HEADER.iter().map(|c| (*c).to_owned()),
    )));
    let pages = futures::stream::unfold(
        (
            state.pg.clone(),
            Some((None::<DateTime<Utc>>, String::new())),
        ),
        move |(pg, after)| async move {
            let (at, audit_id) = after?;
            match page(&pg, id, at, &audit_id).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|(a, at, _)| (Some(*at), a.clone()));
                    let mut chunk = String::new();
                    for (_, _, record) in &rows {
                        chunk.push_str(&csv_row(record));
                    }
                    let next = next.filter(|_| rows.len() as i64 == PAGE);
                    Some((Ok(bytes::Bytes::from(chunk)), (pg, next)))
                }
                // Mid-stream: the status is sent; ending the body early tells the client.
                Err(e) => Some((Err(std::io::Error::other(e)), (pg, None))),
            }
        },
    );
    let body = Body::from_stream(futures::StreamExt::chain(
        futures::stream::iter([header_row]),
        pages,
    ));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"campaign-{id}-audit.csv\""),
        )
        .body(body)
        .map_err(|e| AppError::unavailable(std::io::Error::other(e)))
}

/// One page after `(at, audit_id)`.
async fn page(
    pg: &PgPool,
    campaign: CampaignId,
    at: Option<DateTime<Utc>>,
    audit_id: &str,
) -> Result<Vec<(String, DateTime<Utc>, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT audit_id, decided_at, record FROM call_audit WHERE campaign_id = $1 \
         AND ($2::timestamptz IS NULL OR (decided_at, audit_id) > ($2, $3)) \
         ORDER BY decided_at, audit_id LIMIT $4",
    )
    .bind(campaign.as_i64())
    .bind(at)
    .bind(audit_id)
    .bind(PAGE)
    .fetch_all(pg)
    .await
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One CSV row of a stored record (a record that no longer decodes still gives its JSON).
fn csv_row(record: &serde_json::Value) -> String {
    let Ok(a) = serde_json::from_value::<AttemptAudit>(record.clone()) else {
        let mut cells = vec![String::new(); CSV_HEADER.len() - 1];
        cells.push(record.to_string());
        return csv_line(cells);
    };
    let (until, status, reason) = match &a.decision {
        AuditDecision::Placed => (String::new(), String::new(), String::new()),
        AuditDecision::Deferred { until } => (stamp(*until), String::new(), String::new()),
        AuditDecision::Ended { status, reason } => {
            (String::new(), status.as_str().to_owned(), reason.clone())
        }
    };
    let c = &a.checks;
    let dnc = c.dnc.as_ref().map_or_else(String::new, |d| {
        d.lists
            .iter()
            .map(|l| {
                let rev = l.revision.map_or("-".to_owned(), |r| r.to_string());
                let listed = if l.listed { "listed" } else { "clear" };
                format!("{}@{rev}:{listed}", l.list)
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    let time = c.time.as_ref();
    let window = c.window.as_ref();
    let rules = c.rules.as_ref();
    let opt = |v: Option<String>| v.unwrap_or_default();
    csv_line([
        a.audit_id(),
        a.call_id.to_string(),
        a.campaign_id.to_string(),
        a.attempt.to_string(),
        a.deferrals.to_string(),
        // Absent once the call was anonymised (erase, retention).
        record
            .get("phone_number")
            .and_then(|p| p.as_str())
            .unwrap_or_default()
            .to_owned(),
        stamp(a.at),
        a.dialer.clone(),
        a.decision.name().to_owned(),
        until,
        status,
        reason,
        opt(a.expires_at.map(stamp)),
        opt(c.campaign.revision.map(|r| r.to_string())),
        c.campaign.dialling.clone(),
        dnc,
        opt(time.map(|t| t.zones.join(" "))),
        opt(time
            .and_then(|t| serde_json::to_value(t.source).ok())
            .and_then(|v| v.as_str().map(str::to_owned))),
        opt(time.map(|t| t.local.join(" "))),
        opt(window.map(|w| w.open.to_string())),
        opt(window.and_then(|w| w.opens_at).map(stamp)),
        // `US-FL` (several when the area code spans them), or `CA` when only the country
        // is known.
        opt(rules.and_then(|r| r.jurisdiction.as_ref()).map(|j| {
            if j.subdivisions.is_empty() {
                j.country.clone()
            } else {
                j.subdivisions.join(" ")
            }
        })),
        opt(rules.map(|r| r.rules.join(" "))),
        // Each limit as `<over>:<seen>/<limit>`, e.g. `1d:1/1 24h:0/3`.
        opt(rules.map(|r| {
            r.counts
                .iter()
                .map(|c| format!("{}:{}/{}", c.over, c.seen, c.limit))
                .collect::<Vec<_>>()
                .join(" ")
        })),
        record.to_string(),
    ])
}

/// A CSV line (RFC 4180: a cell with a comma, quote or line break is quoted, quotes doubled).
fn csv_line(cells: impl IntoIterator<Item = String>) -> String {
    let mut line = cells
        .into_iter()
        .map(|cell| {
            if cell.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", cell.replace('"', "\"\""))
            } else {
                cell
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_only_when_they_must_be() {
        let line = csv_line(["a".into(), "b,c".into(), "say \"hi\"".into(), "x\ny".into()]);
        assert_eq!(line, "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"\r\n");
    }
}
