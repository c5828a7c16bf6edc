-- Set-based batches and several coordinators sharing the inbox (issue 6).

-- Which coordinator instance applied a message: shows how the work was shared, and
-- where to look when something went wrong.
ALTER TABLE processed_messages ADD COLUMN processed_by text;

-- Lookups by workflow use the unique identity index (workflow_id first); a second
-- index on the same column only costs a write per clock.
DROP INDEX sla_clocks_workflow;

-- A clock is armed exactly while it has no closed_at. The service's statements say
-- "still armed" as closed_at IS NULL: said with status, they match the partial
-- indexes on armed clocks, and a plan made on small tables may then scan every armed
-- clock in the system instead of the few it needs (tests/plans.rs).
ALTER TABLE sla_clocks ADD CONSTRAINT sla_clocks_armed_is_open
    CHECK ((status = 'armed') = (closed_at IS NULL));
