-- The read model. Only the projector writes these tables; the API reads them. Table and
-- column names are a contract with ingest's read endpoints: add, never rename.

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
-- Every column is merged as a join (max by a key, min, or sum of new events), so applying
-- events in any order, in any batches, any number of times gives the same row. Text columns
-- that take part in comparisons use the "C" collation so that Postgres orders them exactly
-- as the projector does in memory.
CREATE TABLE calls (
    call_id          uuid PRIMARY KEY,
    campaign_id      bigint      NOT NULL,
    -- Filled by the first event carrying it (the dial message or `Dialing`).
    phone_number     text COLLATE "C",
    -- The state with the greatest (attempt_count, phase_rank, status, next_retry_at).
    status           text COLLATE "C" NOT NULL,
    attempt_count    integer     NOT NULL,
    max_attempts     integer,
    phase_rank       smallint    NOT NULL,
    -- When the call was accepted (earliest seen), last changed (latest event time), last
    -- dialled (latest `Dialing`).
    created_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    next_retry_at    timestamptz,
    -- Seconds on the line, summed over the outcomes of all attempts.
    total_call_time  integer     NOT NULL DEFAULT 0,
    -- From the latest outcome (by attempt_count * 8 + rank = outcome_key).
    external_call_id text COLLATE "C",
    raw_status       text COLLATE "C",
    outcome_key      integer     NOT NULL DEFAULT -1,
    -- The latest reason any event gave (by error_key), kept after later states without one
    -- so an operator still sees why attempt 1 failed while attempt 2 is queued.
    error_message    text COLLATE "C",
    error_key        integer     NOT NULL DEFAULT -1
);

-- Campaign stats (count by status) and filtered lists.
CREATE INDEX calls_campaign_status ON calls (campaign_id, status);
-- Lookup by callee.
CREATE INDEX calls_phone ON calls (phone_number);
-- Keyset pagination: all calls, and within one campaign.
CREATE INDEX calls_created ON calls (created_at, call_id);
CREATE INDEX calls_campaign_created ON calls (campaign_id, created_at, call_id);

-- Every message the projector applied, keyed by where it came from: applying one twice is a
-- no-op. `projected_at` is when it was written (the only column a replay may change, since a
-- replay into a fresh database writes it again); it measures projection lag.
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
    projected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);

-- A call's history.
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

CREATE INDEX dead_letters_state ON dead_letters (state, created_at);

-- Daily counters per campaign (UTC days, by event time), the old CallMetrics fields. The
-- projector adds each new event once, in the transaction that records it in `call_events`.
CREATE TABLE daily_metrics (
    day                          date   NOT NULL,
    campaign_id                  bigint NOT NULL,
    -- Dial messages of attempt 1: calls accepted.
    total_calls_initiated        bigint NOT NULL DEFAULT 0,
    -- Carrier outcomes by status.
    total_calls_picked           bigint NOT NULL DEFAULT 0,
    total_calls_disconnected     bigint NOT NULL DEFAULT 0,
    total_calls_rnr              bigint NOT NULL DEFAULT 0,
    total_calls_failed           bigint NOT NULL DEFAULT 0,
    -- `Retrying` events: further attempts scheduled.
    total_retries                bigint NOT NULL DEFAULT 0,
    total_call_duration_seconds  bigint NOT NULL DEFAULT 0,
    -- `DeadLettered` events.
    dlq_entries_created          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, campaign_id)
);

-- Calls placed (`Dialing`) and ended (outcome) per second, all campaigns: the running sum in
-- time order is the number of live calls, whose daily maximum is peak_concurrent_calls.
-- Counting per second keeps it independent of the order events are applied in.
CREATE TABLE call_concurrency (
    second   timestamptz PRIMARY KEY,
    started  bigint NOT NULL DEFAULT 0,
    ended    bigint NOT NULL DEFAULT 0
);

-- The old system's CallMetrics, one row per UTC day, all campaigns.
CREATE VIEW call_metrics_daily AS
WITH counters AS (
    SELECT day,
           sum(total_calls_initiated)::bigint       AS total_calls_initiated,
           sum(total_calls_picked)::bigint          AS total_calls_picked,
           sum(total_calls_disconnected)::bigint    AS total_calls_disconnected,
           sum(total_calls_rnr)::bigint             AS total_calls_rnr,
           sum(total_calls_failed)::bigint          AS total_calls_failed,
           sum(total_retries)::bigint               AS total_retries,
           sum(total_call_duration_seconds)::bigint AS total_call_duration_seconds,
           sum(dlq_entries_created)::bigint         AS dlq_entries_created
    FROM daily_metrics
    GROUP BY day
), live AS (
    SELECT second, sum(started - ended) OVER (ORDER BY second) AS live_calls
    FROM call_concurrency
), peaks AS (
    SELECT (second AT TIME ZONE 'UTC')::date AS day,
           greatest(max(live_calls), 0)::bigint AS peak_concurrent_calls
    FROM live
    GROUP BY 1
)
SELECT coalesce(c.day, p.day)                    AS day,
       coalesce(c.total_calls_initiated, 0)       AS total_calls_initiated,
       coalesce(c.total_calls_picked, 0)          AS total_calls_picked,
       coalesce(c.total_calls_disconnected, 0)    AS total_calls_disconnected,
       coalesce(c.total_calls_rnr, 0)             AS total_calls_rnr,
       coalesce(c.total_calls_failed, 0)          AS total_calls_failed,
       coalesce(c.total_retries, 0)               AS total_retries,
       coalesce(p.peak_concurrent_calls, 0)       AS peak_concurrent_calls,
       coalesce(c.total_call_duration_seconds, 0) AS total_call_duration_seconds,
       coalesce(c.dlq_entries_created, 0)         AS dlq_entries_created
FROM counters c
FULL JOIN peaks p ON p.day = c.day;
