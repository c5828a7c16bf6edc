-- The communication-health report (docs/sql.md, "The communication-health report";
-- `coordinator report`). Each message received now records its type and its sender's
-- role, so volume and protocol adherence can be read per orchestrator and type. Rows
-- claimed before this migration have neither and count as `unknown`.
ALTER TABLE processed_messages ADD COLUMN message_type text, ADD COLUMN sender_role text;

-- Every message received (claimed for processing; a duplicate is not), by whom and of
-- what type, and what became of it: accepted, observed (valid, no workflow moved) or
-- rejected. Kept for retention.processed_messages (30 d).
CREATE VIEW report_received AS
SELECT processed_at AS at,
       coalesce(sender_role, 'unknown') AS orchestrator,
       coalesce(message_type, 'unknown') AS message_type,
       outcome
  FROM processed_messages;

-- Every message the coordinator sent (the outbox, kept for retention.outbox, 7 d):
-- delivered (confirmed by the broker at the first try), retried (confirmed after more
-- tries), failed (given up after outbox.undeliverable_after) or pending, and its
-- delivery latency: committed → recorded as confirmed (sent_at is written within
-- outbox.settle_interval of the broker's confirm).
CREATE VIEW report_deliveries AS
SELECT created_at AS at, message_type, routing_key,
       CASE WHEN routing_key LIKE 'task.%' THEN substr(routing_key, 6) END AS role,
       correlation_id,
       extract(epoch FROM sent_at - created_at)::float8 AS latency_seconds,
       CASE WHEN sent_at IS NOT NULL AND attempts <= 1 THEN 'delivered'
            WHEN sent_at IS NOT NULL THEN 'retried'
            WHEN undeliverable_at IS NOT NULL THEN 'failed'
            ELSE 'pending' END AS result
  FROM outbox;

-- Handoffs: the tasks the coordinator sent a role for a workflow (its SLA notices
-- aside), with the workflow's kind.
CREATE VIEW report_handoffs AS
SELECT d.at, w.kind, d.role, d.message_type AS task, d.correlation_id AS workflow_id,
       d.result, d.latency_seconds
  FROM report_deliveries d JOIN workflows w ON w.id = d.correlation_id
 WHERE d.role IS NOT NULL AND d.message_type NOT IN ('sla_warning', 'sla_breached');

-- SLA clocks closed by being met or breached (a cancelled clock is neither), when.
CREATE VIEW report_sla AS
SELECT closed_at AS at, owner_role AS role, clock, status = 'met' AS met_on_time
  FROM sla_clocks
 WHERE status IN ('met', 'breached');

-- Agents' messages the coordinator refused (the dead letters it wrote, not those the
-- broker dead-lettered), by the role the routing key claims and the reason.
CREATE VIEW report_refusals AS
SELECT received_at AS at, split_part(routing_key, '.', 1) AS orchestrator, reason
  FROM dead_letters
 WHERE NOT (properties ? 'x_death');

-- No index on sla_clocks.closed_at for report_sla: a BRIN index there doubled
-- PostgreSQL's CPU per message in the closed loop (every clock closed or armed is a new
-- row version whose range summary it widened). The report reads the window's clocks
-- as the analytic query it is; the dashboard's chart is computed every few minutes.
-- (No index on workflows.updated_at for the read API: every applied message updates its
-- workflow, and one more index there, its inserts all at the right edge, cost the
-- closed loop 14 % of its throughput. The API pages workflows by id instead.)
