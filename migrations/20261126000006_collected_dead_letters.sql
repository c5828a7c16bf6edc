-- What the broker dead-lettered is collected once, even when the collector stops
-- between its commit and its ack: the redelivered copy carries the same x-death
-- entry, so it has the same key and the second insert does nothing.
ALTER TABLE dead_letters ADD COLUMN collected_key text;
CREATE UNIQUE INDEX dead_letters_collected_key ON dead_letters (collected_key)
    WHERE collected_key IS NOT NULL;
