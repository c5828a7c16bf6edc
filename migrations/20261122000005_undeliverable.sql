-- A message no queue took for outbox.undeliverable_after is given up: marked here,
-- raised once to on-call, and deleted by housekeeping after the outbox retention like
-- a sent row. The relay's pending set leaves it out.
ALTER TABLE outbox ADD COLUMN undeliverable_at timestamptz;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id)
    WHERE sent_at IS NULL AND undeliverable_at IS NULL;
CREATE INDEX outbox_undeliverable ON outbox (undeliverable_at)
    WHERE undeliverable_at IS NOT NULL;

-- A dead letter an operator set aside for good (`coordinator dead-letter resolve`).
-- Replayed and resolved dead letters are deleted after retention.dead_letters;
-- unresolved ones are kept.
ALTER TABLE dead_letters ADD COLUMN resolved_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN resolution text;
-- When management was told that the dead letter stayed unresolved (once).
ALTER TABLE dead_letters ADD COLUMN escalated_at timestamptz;
CREATE INDEX dead_letters_unescalated ON dead_letters (received_at)
    WHERE escalated_at IS NULL AND resolved_at IS NULL AND replayed_at IS NULL;

-- Every replay of a dead letter, by whom; written in the transaction that commits once
-- the broker has confirmed the re-published message.
CREATE TABLE dead_letter_replays (
    id             bigserial PRIMARY KEY,
    dead_letter_id bigint NOT NULL REFERENCES dead_letters (id) ON DELETE CASCADE,
    replayed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_by    text NOT NULL
);
CREATE INDEX dead_letter_replays_letter ON dead_letter_replays (dead_letter_id);
