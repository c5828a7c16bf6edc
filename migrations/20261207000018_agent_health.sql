-- What an agent's heartbeats say about it (the source documents' heartbeat payload),
-- kept from its latest heartbeat, and when it went stale: no heartbeat for
-- heartbeats.missed intervals. stale_since guards the one agent_stale escalation per
-- silence; the next heartbeat clears it.
ALTER TABLE agents
    ADD COLUMN status             text,
    ADD COLUMN load               double precision,
    ADD COLUMN available_capacity double precision,
    ADD COLUMN active_tasks       integer,
    ADD COLUMN queued_tasks       integer,
    ADD COLUMN capabilities       text[],
    ADD COLUMN resource_usage     jsonb,
    ADD COLUMN last_activity_at   timestamptz,
    ADD COLUMN stale_since        timestamptz;

-- The stale check looks only at agents that have sent a heartbeat and are not stale yet.
CREATE INDEX agents_heartbeat_watch ON agents (last_heartbeat_at)
    WHERE stale_since IS NULL AND last_heartbeat_at IS NOT NULL;
