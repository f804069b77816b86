-- Consent records, owned by ingest (ccm_core::schema::CONSENTS). A record is never deleted:
-- a revocation fills the revoked_* columns, and an erasure replaces the number with its
-- pseudonym (`erased:<pseudonym>`) and revokes what was still valid.
CREATE TABLE IF NOT EXISTS consents (
    id            uuid        PRIMARY KEY,
    -- E.164, or `erased:<pseudonym>` after an erasure.
    phone_number  text        NOT NULL,
    -- prior_express_written | prior_express | informational | ai_voice | recording
    consent_type  text        NOT NULL,
    purpose       text,
    -- Where the consent was collected (a web form, a call, a paper form…).
    source        text        NOT NULL,
    given_at      timestamptz NOT NULL,
    -- A pointer to the evidence (a form submission id, a recording URL…), never the evidence.
    evidence_ref  text,
    -- The campaign whose contact gave it, when it was given for one.
    campaign_id   bigint,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    -- `token:<fingerprint>` of the API token that recorded it.
    recorded_by   text        NOT NULL,
    revoked_at    timestamptz,
    -- `token:<fingerprint>`, or `callee` for an opt-out during a call, or `erasure`.
    revoked_by    text,
    -- `api`, `opt_out`, `erasure`
    revoked_how   text,
    revoke_reason text
);
CREATE INDEX IF NOT EXISTS consents_number ON consents (phone_number, consent_type);
