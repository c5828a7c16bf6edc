-- The coordinator's durable state. Managers read workflows, workflow_events, sla_clocks,
-- escalations, dead_letters and agents in plain SQL (PROTOCOL.md section 8); the other
-- tables are the service's own bookkeeping.

CREATE TABLE agents (
    agent_id          text PRIMARY KEY,
    agent_type        text NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    -- cli | config | heartbeat
    registered_via    text NOT NULL
);
CREATE INDEX agents_agent_type ON agents (agent_type);

CREATE TABLE workflows (
    id           text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('feature_delivery', 'emergency')),
    state        text NOT NULL,
    epic_id      text,
    title        text,
    round        integer NOT NULL DEFAULT 1,
    -- The requirements package of the requirements_ready message that started it.
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
-- "What is in state X", newest first.
CREATE INDEX workflows_state ON workflows (state, updated_at DESC);
CREATE INDEX workflows_epic ON workflows (epic_id);

CREATE TABLE workflow_events (
    workflow_id     text NOT NULL REFERENCES workflows (id),
    seq             integer NOT NULL,
    message_id      text,
    message_type    text NOT NULL,
    source_agent_id text,
    from_state      text,
    to_state        text NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    -- What the event did: clocks met/armed/cancelled, tasks sent, operator reasons.
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (workflow_id, seq)
);
CREATE INDEX workflow_events_occurred ON workflow_events (occurred_at);

CREATE TABLE sla_clocks (
    id             bigserial PRIMARY KEY,
    workflow_id    text NOT NULL REFERENCES workflows (id),
    clock          text NOT NULL,
    round          integer NOT NULL DEFAULT 1,
    owner_role     text NOT NULL,
    owner_agent_id text,
    armed_at       timestamptz NOT NULL DEFAULT now(),
    due_at         timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'armed'
                   CHECK (status IN ('armed', 'met', 'breached', 'cancelled')),
    closed_at      timestamptz,
    closed_by      text,
    UNIQUE (workflow_id, clock, round)
);
-- "What is overdue" and the timer service's next window: armed clocks by deadline.
CREATE INDEX sla_clocks_armed_due ON sla_clocks (due_at) WHERE status = 'armed';
CREATE INDEX sla_clocks_workflow ON sla_clocks (workflow_id);

CREATE TABLE escalations (
    id              bigserial PRIMARY KEY,
    workflow_id     text NOT NULL REFERENCES workflows (id),
    -- The clock that breached, or the message that raised it (engineering_blocked, …).
    clock           text NOT NULL,
    owner_role      text NOT NULL,
    level           integer NOT NULL DEFAULT 1,
    severity        text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    raised_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    message_id      text
);
CREATE INDEX escalations_open ON escalations (raised_at) WHERE acknowledged_at IS NULL;
CREATE INDEX escalations_workflow ON escalations (workflow_id);

CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    message_id      text,
    reason          text NOT NULL,
    detail          text NOT NULL,
    routing_key     text NOT NULL,
    -- The delivery exactly as received, and as JSON when it is JSON.
    body            bytea NOT NULL,
    body_json       jsonb,
    properties      jsonb NOT NULL DEFAULT '{}'::jsonb,
    source_agent_id text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_reason ON dead_letters (reason);
CREATE INDEX dead_letters_message ON dead_letters (message_id);

-- One row per inbound message id ever acted on: the deduplication key.
CREATE TABLE processed_messages (
    message_id   text PRIMARY KEY,
    -- accepted | rejected | ignored
    outcome      text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Messages committed to be sent; the relay publishes them and marks them sent.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    message_id      text NOT NULL UNIQUE,
    exchange        text NOT NULL,
    routing_key     text NOT NULL,
    message_type    text NOT NULL,
    correlation_id  text NOT NULL,
    causation_id    text,
    app_id          text NOT NULL,
    body            bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    sent_at         timestamptz
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id) WHERE sent_at IS NULL;
