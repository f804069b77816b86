//! The audit log: every API request that may change something (anything but a read), with
//! who made it, what, when, from where and how it ended, in the `AUDIT` stream
//! (`audit.<role>`, kept 400 days). An admin token reads it with `GET /api/v1/audit`.
//!
//! A record is written after the handler answered, by a task of its own, so a request never
//! waits for it; a record that cannot be stored (NATS down) is counted in
//! `ccm_ingest_audit_failures_total` and logged with the record itself, so it is not lost
//! silently. Reads are not recorded: they change nothing, and would outnumber the rest.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderMap, StatusCode},
};
use ccm_core::{access::Role, metrics::counter, topology::names};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    auth::Identity,
    error::{ApiJson, ApiQuery, AppError},
};

/// One recorded request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    /// Its sequence in the stream (set when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub at: DateTime<Utc>,
    /// The token's fingerprint (never the token).
    pub token: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub method: String,
    /// The route template (`/api/v1/campaigns/{id}/pause`).
    pub route: String,
    /// The path as requested.
    pub path: String,
    pub status: u16,
    /// The client's address: the first `X-Forwarded-For` hop when a proxy sets it, else the
    /// connection's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// What the request was, taken before the handler consumes it.
pub(crate) struct Pending {
    method: String,
    route: String,
    path: String,
    from: Option<String>,
}

impl Pending {
    pub(crate) fn of(request: &Request) -> Self {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let path = pseudonymised(&route, request.uri().path())
            .chars()
            .take(512)
            .collect();
        Self {
            method: request.method().to_string(),
            route,
            path,
            from: forwarded_for(request.headers()).or(peer),
        }
    }

    /// Writes the record of the finished request in the background.
    pub(crate) fn finish(self, state: &AppState, identity: Identity, status: StatusCode) {
        let record = Record {
            seq: None,
            at: Utc::now(),
            token: hex::encode(identity.id.as_bytes()),
            role: identity.role,
            method: self.method,
            route: self.route,
            path: self.path,
            status: status.as_u16(),
            from: self.from,
        };
        let js = state.js.clone();
        tokio::spawn(async move {
            let subject = format!("audit.{}", record.role.as_str());
            let stored = match serde_json::to_vec(&record) {
                Ok(body) => match js.publish(subject, body.into()).await {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                counter!("ccm_ingest_audit_failures_total").increment(1);
                tracing::error!(error = %e, ?record, "audit record not stored");
            }
        });
    }
}

/// `path` with each segment that the route template names `{phone}` replaced by the number's
/// pseudonym (`subject:<16 hex digits>`, [`crate::erase::fingerprint`]): the audit log is
/// kept 400 days and must not hold the numbers of people who asked to be erased.
fn pseudonymised(route: &str, path: &str) -> String {
    if !route.contains("{phone}") {
        return path.to_owned();
    }
    let template: Vec<&str> = route.split('/').collect();
    path.split('/')
        .enumerate()
        .map(|(i, segment)| {
            if template.get(i) != Some(&"{phone}") {
                return segment.to_owned();
            }
            let decoded = segment
                .replace("%2B", "+")
                .replace("%2b", "+")
                .replace("%20", " ");
            match decoded.parse::<ccm_core::PhoneNumber>() {
                Ok(phone) => format!("subject:{}", crate::erase::fingerprint(&phone)),
                Err(_) => "subject:invalid".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().chars().take(64).collect::<String>())
        .filter(|v| !v.is_empty())
}

/// `after` and `limit` of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this sequence (0: from the oldest kept).
    pub after: Option<u64>,
    /// At most this many (1-1000, default 100).
    pub limit: Option<usize>,
}

/// The audit log, oldest first, from `after`.
#[utoipa::path(get, path = "/api/v1/audit", tag = "tokens", params(AuditQuery),
    responses(
        (status = 200, body = Vec<Record>),
        (status = 400, description = "A limit out of range, or a malformed query", body = crate::openapi::Problem),
        (status = 403, description = "Only an admin token may read the audit log"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<ApiJson<Vec<Record>>, AppError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request(
            "invalid_limit",
            "limit must be 1 to 1000",
        ));
    }
    let stream = state
        .js
        .get_stream(names::AUDIT)
        .await
        .map_err(AppError::unavailable)?;
    let mut next = query.after.unwrap_or(0).saturating_add(1);
    let mut records = Vec::new();
    while records.len() < limit {
        let message = match stream
            .direct_get_next_for_subject("audit.>", Some(next))
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                break;
            }
            Err(e) => return Err(AppError::unavailable(e)),
        };
        next = message.sequence.saturating_add(1);
        if let Ok(mut record) = serde_json::from_slice::<Record>(&message.payload) {
            record.seq = Some(message.sequence);
            records.push(record);
        }
    }
    Ok(ApiJson(records))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_number_in_a_path_is_recorded_by_its_pseudonym() {
        let path = super::pseudonymised(
            "/api/v1/subjects/{phone}/erase",
            "/api/v1/subjects/%2B14155552671/erase",
        );
        let phone = "+14155552671".parse().expect("phone");
        assert_eq!(
            path,
            format!(
                "/api/v1/subjects/subject:{}/erase",
                crate::erase::fingerprint(&phone)
            )
        );
        assert_eq!(
            super::pseudonymised("/api/v1/campaigns/{id}", "/api/v1/campaigns/7"),
            "/api/v1/campaigns/7"
        );
    }
}
