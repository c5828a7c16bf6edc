-- Set-based batches and several coordinators sharing the inbox (issue 6).

-- Which coordinator instance applied a message: shows how the work was shared, and
-- where to look when something went wrong.
ALTER TABLE processed_messages ADD COLUMN processed_by text;

-- A batch reads the armed clocks of the workflows it locked. Without this index the
-- planner combines the workflow index with the whole armed-by-deadline index, whose
-- size is every armed clock in the system.
CREATE INDEX sla_clocks_armed_workflow ON sla_clocks (workflow_id) WHERE status = 'armed';
-- Lookups by workflow use the unique identity index (workflow_id first); a second
-- index on the same column only costs a write per clock.
DROP INDEX sla_clocks_workflow;
