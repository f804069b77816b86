-- Leases that let several ccm-webhooks replicas share the work without doing it twice.
--
-- A lease names one piece of work: `dispatch` (pulling CALL_EVENTS into the queues, which
-- must happen in one place at a time to keep each call's events in order) or
-- `lane/<endpoint>/<live|manual>` (delivering one lane of one endpoint, one message at a
-- time in queue order). A replica takes a free or expired lease with one atomic
-- INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < now(), renews the ones it holds
-- while it works, and deletes them at shutdown. A crashed replica's leases expire and are
-- taken over by another. `expires_at` is always computed by PostgreSQL's clock, so the
-- replicas' clocks do not need to agree.

CREATE TABLE webhook_leases (
    name       text        PRIMARY KEY,
    -- The replica holding it (host name and a random suffix chosen at start).
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
