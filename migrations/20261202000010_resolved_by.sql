-- Who resolved a dead letter (`coordinator dead-letter resolve --by`, default the OS
-- user): every state-changing command records its operator.
ALTER TABLE dead_letters ADD COLUMN resolved_by text;
