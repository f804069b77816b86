-- The facts the counters (`calls.total_call_time`, `daily_metrics`, `call_concurrency`) have
-- counted, one per (call, attempt, kind): a fact published again under another Nats-Msg-Id
-- (beyond the server's duplicate window, it is a new stream message and a new `call_events`
-- row) is recorded in `call_events` but counted once. `seq` is the message that counted.
CREATE TABLE counted_facts (
    call_id  uuid    NOT NULL,
    attempt  integer NOT NULL,
    kind     text    NOT NULL,
    seq      bigint  NOT NULL,
    PRIMARY KEY (call_id, attempt, kind)
);

-- The facts already counted before this table existed: the first message of each.
INSERT INTO counted_facts (call_id, attempt, kind, seq)
SELECT DISTINCT ON (call_id, attempt, kind) call_id, attempt, kind, seq
FROM call_events
WHERE kind IN ('queued', 'dialing', 'outcome', 'retrying', 'dead_lettered')
ORDER BY call_id, attempt, kind, seq;
