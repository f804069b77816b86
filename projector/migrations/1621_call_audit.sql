-- The audit trail of admission decisions (`ccm_core::attempt_audit`): one row per decision the
-- dialer acted on (placed, deferred, ended), with what each check saw. Keyed by the record's
-- id, so a redelivered or republished record adds no row. `record` holds the whole record as
-- published: sections added later (consent, rules, …) are kept without a migration.
-- `phone_number` is NULL once the call is anonymised (erase, retention).
CREATE TABLE IF NOT EXISTS call_audit (
    audit_id     text        PRIMARY KEY,
    seq          bigint      NOT NULL,
    call_id      uuid        NOT NULL,
    campaign_id  bigint      NOT NULL,
    attempt      integer     NOT NULL,
    deferrals    integer     NOT NULL,
    phone_number text,
    decided_at   timestamptz NOT NULL,
    dialer       text        NOT NULL,
    decision     text        NOT NULL,
    until_at     timestamptz,
    end_status   text,
    reason       text,
    expires_at   timestamptz,
    record       jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS call_audit_call ON call_audit (call_id, decided_at);
CREATE INDEX IF NOT EXISTS call_audit_campaign ON call_audit (campaign_id, decided_at, audit_id);
CREATE INDEX IF NOT EXISTS call_audit_phone ON call_audit (phone_number);
