-- Workflows as data (docs/workflows.md): workflows.kind is the name of the workflow's
-- definition (config/workflows/<name>.toml) or 'emergency', so any defined workflow may
-- be stored; the service checks kinds against its definitions, not the table. Existing
-- rows keep their kinds.
ALTER TABLE workflows DROP CONSTRAINT IF EXISTS workflows_kind_check;
