-- The read model. Only the projector writes these tables; the API reads them.

CREATE TABLE campaigns (
    id                    bigint PRIMARY KEY,
    name                  text        NOT NULL,
    description           text        NOT NULL DEFAULT '',
    is_active             boolean     NOT NULL,
    state                 text        NOT NULL,
    max_concurrent_calls  integer     NOT NULL,
    max_attempts          integer     NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    -- The whole KV document and its revision: a mirror only moves forward.
    document              jsonb       NOT NULL,
    kv_revision           bigint      NOT NULL
);

CREATE TABLE phone_numbers (
    id           bigserial PRIMARY KEY,
    campaign_id  bigint      NOT NULL,
    phone_number text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, phone_number)
);

-- Current state of every call: the old system's CallLog fields, plus what ordering needs.
CREATE TABLE calls (
    call_id          uuid PRIMARY KEY,
    campaign_id      bigint      NOT NULL,
    -- Filled by whichever event carrying it is applied first (events may arrive out of order).
    phone_number     text,
    status           text        NOT NULL,
    attempt_count    integer     NOT NULL,
    max_attempts     integer,
    -- (attempt_count, phase_rank) orders states; a state replaces only an older one.
    phase_rank       smallint    NOT NULL,
    created_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    next_retry_at    timestamptz,
    total_call_time  integer     NOT NULL DEFAULT 0,
    external_call_id text,
    error_message    text,
    raw_status       text
);

CREATE INDEX calls_campaign_status ON calls (campaign_id, status);
CREATE INDEX calls_phone ON calls (phone_number);
CREATE INDEX calls_created ON calls (created_at, call_id);

-- Every message the projector applied, keyed by where it came from: applying one twice is a
-- no-op.
CREATE TABLE call_events (
    stream       text        NOT NULL,
    seq          bigint      NOT NULL,
    call_id      uuid        NOT NULL,
    campaign_id  bigint      NOT NULL,
    attempt      integer     NOT NULL,
    kind         text        NOT NULL,
    status       text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    PRIMARY KEY (stream, seq)
);

CREATE INDEX call_events_call ON call_events (call_id, occurred_at);

CREATE TABLE dead_letters (
    dlq_seq       bigint PRIMARY KEY,
    source_stream text        NOT NULL,
    source_seq    bigint      NOT NULL,
    subject       text        NOT NULL,
    call_id       uuid,
    campaign_id   bigint,
    reason        text        NOT NULL,
    deliveries    integer     NOT NULL,
    state         text        NOT NULL DEFAULT 'open',
    payload       jsonb,
    created_at    timestamptz NOT NULL
);
