-- Who used each message id (header.source.agent_id): the same id from another sender
-- is refused as duplicate_id_conflict instead of being taken for a duplicate. Rows
-- claimed before this migration have none and are judged as duplicates, as before.
ALTER TABLE processed_messages ADD COLUMN sender text;
