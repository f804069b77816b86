//! How a call's personal data is anonymised in the read model: one rule, used by the erasure
//! of a number (ingest, `POST /api/v1/subjects/{phone}/erase`) and by the retention job (the
//! projector, `projector.retention_days`). See `docs/privacy.md`.
//!
//! A call keeps its id, campaign, status, attempt count and times, so campaign figures and
//! the "has this campaign a call left" decisions do not change; it loses the number, the
//! contact's custom fields, the carrier's call id and the error text (a do-not-call refusal
//! names the number). Its history keeps each event's kind, status and times, and only the
//! payload fields listed in [`KEPT_EVENT_FIELDS`]: a list of what is kept, not of what is
//! removed, so a field added to an event later is dropped until someone decides otherwise.

/// The payload fields of a call event that carry no personal data.
pub const KEPT_EVENT_FIELDS: &[&str] = &[
    "type",
    "call_id",
    "campaign_id",
    "attempt",
    "max_attempts",
    "at",
    "created_at",
    "queued_at",
    "status",
    "source",
    "duration_secs",
];

/// Anonymises the calls whose ids are `$1` (`uuid[]`); touches only rows that still hold
/// something, so the row count is what was anonymised.
pub const ANONYMISE_CALLS_SQL: &str = "UPDATE calls SET phone_number = NULL, \
     custom_fields = NULL, external_call_id = NULL, error_message = NULL \
     WHERE call_id = ANY($1) AND (phone_number IS NOT NULL OR custom_fields IS NOT NULL \
     OR external_call_id IS NOT NULL OR error_message IS NOT NULL)";

/// Anonymises the admission audit records of the calls whose ids are `$1` (`uuid[]`): they
/// keep the decision and what each check saw (lists and revisions, zones, counts), which is
/// the proof a call was allowed, and lose the number, also where a reason names it (a
/// do-not-call refusal does: "+1… is on the global do-not-call list").
pub const ANONYMISE_AUDIT_SQL: &str = "UPDATE call_audit SET phone_number = NULL, \
     reason = replace(reason, phone_number, '(erased)'), \
     record = CASE WHEN record->'decision' ? 'reason' \
         THEN jsonb_set(record - 'phone_number', '{decision,reason}', \
             to_jsonb(replace(record->'decision'->>'reason', phone_number, '(erased)'))) \
         ELSE record - 'phone_number' END \
     WHERE call_id = ANY($1) AND phone_number IS NOT NULL";

/// Anonymises the histories of the calls whose ids are `$1` (`uuid[]`).
pub fn anonymise_events_sql() -> String {
    let fields = KEPT_EVENT_FIELDS
        .iter()
        .map(|f| format!("'{f}', payload->'{f}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE call_events SET payload = jsonb_strip_nulls(jsonb_build_object({fields}, \
         'anonymised', true)) WHERE call_id = ANY($1) AND NOT payload ? 'anonymised'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_rule_keeps_only_the_listed_fields() {
        let sql = anonymise_events_sql();
        assert!(sql.contains("'status', payload->'status'"));
        assert!(!sql.contains("phone_number"));
        assert!(!sql.contains("custom_fields"));
    }
}
