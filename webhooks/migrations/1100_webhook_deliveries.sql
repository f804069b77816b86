-- Outbound webhooks: each endpoint's queue of messages and its delivery log.
--
-- Unlike the read model, these tables are written by ccm-webhooks (and by ingest for manual
-- redeliveries), not by the projector. They live in PostgreSQL rather than in JetStream
-- because:
-- - a dead endpoint must not hold `CALL_EVENTS` messages un-acked (they count against the
--   consumer's max_ack_pending and would end up stalling every other endpoint): the
--   deliverer copies each event into the queue of every endpoint that wants it, in one
--   statement per pulled batch, and acks the batch; an endpoint then drains its own queue at
--   its own pace, for as long as the retry horizon says;
-- - the log is read by the API with filters and keyset pagination, which SQL does well and a
--   stream does not;
-- - replaying "everything since a time" for one endpoint is one INSERT ... SELECT.
-- Messages are kept with their body so redelivery sends exactly what was sent the first time.

CREATE TABLE webhook_messages (
    id               bigserial PRIMARY KEY,
    endpoint_id      text        NOT NULL,
    -- The `webhook-id` header: the same on every attempt and every redelivery.
    msg_id           text        NOT NULL,
    event_type       text        NOT NULL,
    call_id          uuid,
    campaign_id      bigint,
    body             bytea       NOT NULL,
    -- 'live' (from the event stream) or 'manual' (redelivered through the API). Each lane has
    -- its own worker, so a large replay never holds up live events.
    lane             text        NOT NULL DEFAULT 'live',
    -- 'pending', 'delivered', 'failed' (refused, or given up after the horizon) or 'skipped'
    -- (the endpoint was disabled when the event came; kept so a replay can send it).
    state            text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- An event redelivered by JetStream is queued once per endpoint.
CREATE UNIQUE INDEX webhook_messages_live ON webhook_messages (endpoint_id, msg_id)
    WHERE lane = 'live';
CREATE INDEX webhook_messages_queue ON webhook_messages (endpoint_id, lane, id)
    WHERE state = 'pending';
CREATE INDEX webhook_messages_since ON webhook_messages (endpoint_id, created_at);

-- One row per HTTP attempt.
CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    endpoint_id  text        NOT NULL,
    -- webhook_messages.id
    message_id   bigint      NOT NULL,
    msg_id       text        NOT NULL,
    event_type   text        NOT NULL,
    call_id      uuid,
    lane         text        NOT NULL,
    -- 1 for the first attempt of the message.
    attempt      integer     NOT NULL,
    -- None when no answer came (connection refused, timeout).
    status_code  integer,
    succeeded    boolean     NOT NULL,
    latency_ms   integer     NOT NULL,
    error        text,
    at           timestamptz NOT NULL
);

CREATE INDEX webhook_attempts_log ON webhook_attempts (endpoint_id, id);
