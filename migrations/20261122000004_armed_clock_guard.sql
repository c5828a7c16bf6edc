-- A clock is armed exactly while it has no closed_at. The service's statements say
-- "still armed" as closed_at IS NULL: said with status, they match the partial
-- indexes on armed clocks, and a generic plan made on small tables may then scan every
-- armed clock in the system instead of the few it needs (tests/plans.rs). With the
-- guard on closed_at, the unique identity index (workflow_id first) answers "the armed
-- clocks of these workflows", and the extra index is only a write per clock.
DROP INDEX IF EXISTS sla_clocks_armed_workflow;

-- Rows written before this guard existed are brought in line with it first.
UPDATE sla_clocks SET closed_at = now()
    WHERE status <> 'armed' AND closed_at IS NULL;
UPDATE sla_clocks SET closed_at = NULL
    WHERE status = 'armed' AND closed_at IS NOT NULL;
ALTER TABLE sla_clocks ADD CONSTRAINT sla_clocks_armed_is_open
    CHECK ((status = 'armed') = (closed_at IS NULL));
