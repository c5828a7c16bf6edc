-- SLA timers, warnings, escalation ladders and per-agent clocks (emergency
-- acknowledgments).

ALTER TABLE sla_clocks
    ADD COLUMN severity text NOT NULL DEFAULT 'high'
        CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    -- When the owner is warned (a fraction of the duration), and whether it was.
    ADD COLUMN warn_at timestamptz,
    ADD COLUMN warned_at timestamptz,
    -- The agent a per-agent clock is about (an emergency acknowledgment); NULL for
    -- clocks owned by a role.
    ADD COLUMN subject_agent_id text;

-- A workflow may hold one clock of a name per round, and per subject agent.
ALTER TABLE sla_clocks DROP CONSTRAINT sla_clocks_workflow_id_clock_round_key;
CREATE UNIQUE INDEX sla_clocks_identity
    ON sla_clocks (workflow_id, clock, round, coalesce(subject_agent_id, ''));

-- The timer's next window of warnings.
CREATE INDEX sla_clocks_warn_due ON sla_clocks (warn_at)
    WHERE status = 'armed' AND warned_at IS NULL;

ALTER TABLE escalations
    -- The first escalation of the chain this one belongs to (raises one level up share it).
    ADD COLUMN chain_id bigint,
    -- Whom this raise paged: the owner role, oncall, management, …
    ADD COLUMN target text,
    -- When the next level is raised if nobody acknowledges (NULL: no further step).
    ADD COLUMN next_level_at timestamptz,
    ADD COLUMN clock_id bigint REFERENCES sla_clocks (id),
    -- The agent it names (a missed emergency acknowledgment), if any.
    ADD COLUMN agent_id text;
UPDATE escalations SET chain_id = id, target = owner_role WHERE chain_id IS NULL;
ALTER TABLE escalations ALTER COLUMN chain_id SET NOT NULL, ALTER COLUMN target SET NOT NULL;
CREATE INDEX escalations_chain ON escalations (chain_id);
-- The timer's next window of ladder steps.
CREATE INDEX escalations_next_level ON escalations (next_level_at)
    WHERE acknowledged_at IS NULL AND next_level_at IS NOT NULL;
