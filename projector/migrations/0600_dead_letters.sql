-- Dead letters are projected from two places that may be applied in either order: the letter
-- itself (the DLQ stream) and the operator's redrive or discard (an event of its call). Either
-- may create the row, so the letter's own columns are empty until the letter is applied.
ALTER TABLE dead_letters
    ALTER COLUMN source_stream DROP NOT NULL,
    ALTER COLUMN source_seq DROP NOT NULL,
    ALTER COLUMN subject DROP NOT NULL,
    ALTER COLUMN reason DROP NOT NULL,
    ALTER COLUMN deliveries DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL,
    -- The consumer that gave up on the message.
    ADD COLUMN consumer text,
    -- When it left the DLQ. `state` says how: `redriven` or `discarded` by an operator (from
    -- the call event the action publishes), or `removed` when the projector found it gone
    -- without such an event (expired, or a letter of no call); `open` until then.
    ADD COLUMN resolved_at timestamptz;

-- Campaign stats count a campaign's letters.
CREATE INDEX dead_letters_campaign ON dead_letters (campaign_id, state);

-- `dlq_entries_created` now counts the letters themselves, of every source stream (dial
-- messages, undecodable events, retry entries), by the UTC day they were created; a letter
-- known only by its resolution counts on the day it was resolved. `daily_metrics` keeps its
-- per-campaign count of dead-lettered calls.
CREATE OR REPLACE VIEW call_metrics_daily AS
WITH counters AS (
    SELECT day,
           sum(total_calls_initiated)::bigint       AS total_calls_initiated,
           sum(total_calls_picked)::bigint          AS total_calls_picked,
           sum(total_calls_disconnected)::bigint    AS total_calls_disconnected,
           sum(total_calls_rnr)::bigint             AS total_calls_rnr,
           sum(total_calls_failed)::bigint          AS total_calls_failed,
           sum(total_retries)::bigint               AS total_retries,
           sum(total_call_duration_seconds)::bigint AS total_call_duration_seconds
    FROM daily_metrics
    GROUP BY day
), letters AS (
    SELECT (coalesce(created_at, resolved_at) AT TIME ZONE 'UTC')::date AS day,
           count(*)::bigint AS dlq_entries_created
    FROM dead_letters
    WHERE coalesce(created_at, resolved_at) IS NOT NULL
    GROUP BY 1
), live AS (
    SELECT second, sum(started - ended) OVER (ORDER BY second) AS live_calls
    FROM call_concurrency
), peaks AS (
    SELECT (second AT TIME ZONE 'UTC')::date AS day,
           greatest(max(live_calls), 0)::bigint AS peak_concurrent_calls
    FROM live
    GROUP BY 1
), days AS (
    SELECT day FROM counters UNION SELECT day FROM letters UNION SELECT day FROM peaks
)
SELECT d.day                                      AS day,
       coalesce(c.total_calls_initiated, 0)       AS total_calls_initiated,
       coalesce(c.total_calls_picked, 0)          AS total_calls_picked,
       coalesce(c.total_calls_disconnected, 0)    AS total_calls_disconnected,
       coalesce(c.total_calls_rnr, 0)             AS total_calls_rnr,
       coalesce(c.total_calls_failed, 0)          AS total_calls_failed,
       coalesce(c.total_retries, 0)               AS total_retries,
       coalesce(p.peak_concurrent_calls, 0)       AS peak_concurrent_calls,
       coalesce(c.total_call_duration_seconds, 0) AS total_call_duration_seconds,
       coalesce(l.dlq_entries_created, 0)         AS dlq_entries_created
FROM days d
LEFT JOIN counters c ON c.day = d.day
LEFT JOIN peaks p ON p.day = d.day
LEFT JOIN letters l ON l.day = d.day;
