-- Messages held back by a rate limit (docs/architecture.md, "Rate limits"): taken off
-- the inbox (acknowledged) so that other senders sharing the partition are not held up,
-- and applied from here, in id order, once their sender's bucket has refilled. A row
-- is deleted after the batch that applied it commits.
CREATE TABLE deferred_messages (
    id             bigserial   PRIMARY KEY,
    inbox_partition integer    NOT NULL,
    message_id     text        NOT NULL UNIQUE,
    sender         text        NOT NULL,
    sender_role    text        NOT NULL,
    message_type   text        NOT NULL,
    correlation_id text,
    body           bytea       NOT NULL,
    -- The AMQP routing key and properties as received (the columns of
    -- dead_letters.properties, and routing_key).
    properties     jsonb       NOT NULL,
    deferred_at    timestamptz NOT NULL
);
CREATE INDEX deferred_messages_partition ON deferred_messages (inbox_partition, id);
