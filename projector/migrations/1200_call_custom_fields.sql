-- The contact's custom fields (the extra columns of its CSV import), as the call's messages
-- carry them; NULL when the call has none.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS custom_fields jsonb;
