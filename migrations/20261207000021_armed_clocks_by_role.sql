-- The read API's `role` filter (GET /api/v1/workflows?role=…: whose move it is) walked
-- every workflow in id order and looked for an armed clock of that role in each: over
-- 100,000 workflows, 2 s for a role that owned two of them. Found from this index
-- instead, in workflow id order, a page reads the rows it returns. Partial, as the
-- deadline index is: a clock leaves it when it is met, breached or cancelled. It costs
-- one more index entry per clock armed (docs/performance.md, "The pages under the
-- peak"). Built without CONCURRENTLY (migrations run in a transaction): writes to
-- sla_clocks wait for it, about a second per million armed clocks.
CREATE INDEX sla_clocks_armed_role ON sla_clocks (owner_role, workflow_id) WHERE status = 'armed';
