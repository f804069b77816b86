-- The number the call's latest placed attempt showed, chosen from its campaign's caller-id
-- pool (NULL: the carrier adapter's own `from`), and that attempt's number, which decides
-- between two events' ids whatever order they are folded in.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS caller_id text;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS caller_id_attempt int4 NOT NULL DEFAULT -1;
