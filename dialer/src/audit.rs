//! The audit record of an admission decision ([`ccm_core::attempt_audit`]), published before
//! the decision is carried out: an attempt is never placed, put off or ended without its
//! record stored in `CALL_EVENTS`, from where the projector keeps it in PostgreSQL. A failed
//! publish hands the message back, so the decision is made (and recorded) again.

use async_nats::jetstream::Message;
use ccm_core::{
    CallStatus, DialRequest,
    attempt_audit::{AttemptAudit, AuditDecision},
};

use crate::{
    admission::{Decision, Facts},
    call::CallContext,
};

/// What `decision` is, as the record states it.
pub fn decision(decision: &Decision) -> AuditDecision {
    let ended = |status, reason: &String| AuditDecision::Ended {
        status,
        reason: reason.clone(),
    };
    match decision {
        Decision::Place => AuditDecision::Placed,
        Decision::Defer(until) => AuditDecision::Deferred { until: *until },
        Decision::End(reason) => ended(CallStatus::Cancelled, reason),
        Decision::Expire(reason) => ended(CallStatus::Expired, reason),
        Decision::Limit(reason) => ended(CallStatus::Limited, reason),
    }
}

/// The record of `decision`, made on `facts`, for `request` as delivered by `message`.
pub fn record(
    ctx: &CallContext,
    request: &DialRequest,
    message: &Message,
    facts: &Facts,
    made: &Decision,
) -> AttemptAudit {
    AttemptAudit::of(
        request,
        crate::window::deferrals_of(message),
        &ctx.replica,
        decision(made),
        facts.checks.clone(),
        facts.now,
    )
}

/// Publishes the record (de-duplicated by its id: a redelivery deciding the same adds none).
pub async fn publish(
    ctx: &CallContext,
    record: &AttemptAudit,
) -> Result<(), ccm_core::nats::NatsError> {
    ccm_core::nats::publish_json(&ctx.js, record.subject(), &record.audit_id(), None, record)
        .await
        .map(|_| ())
}

/// This replica's name in audit records: the host and the process.
pub fn replica() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{host}:{}", std::process::id())
}
