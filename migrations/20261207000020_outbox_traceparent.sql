-- Every message the coordinator sends carries its trace context (docs/protocol.md,
-- "Tracing"): in the body's `header.tracing`, and in a W3C `traceparent` AMQP header,
-- kept here so a message the relay sends (after a crash, or from the timer) has it too.
-- Nullable, no default: adding it rewrites no row; rows written before it are sent
-- without the header.
ALTER TABLE outbox ADD COLUMN traceparent text;
