-- Versioned workflow definitions (docs/workflows.md, "Versions"): every definition the
-- service has run, by the SHA-256 of its file, and the one each workflow started with,
-- so that a workflow keeps its definition when the file is edited. Workflows started
-- before this migration have none and follow the definition of their kind read at start.
CREATE TABLE workflow_definitions (
    hash          text PRIMARY KEY,
    name          text NOT NULL,
    version       integer NOT NULL,
    source        text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_definitions_name ON workflow_definitions (name, first_seen_at);

ALTER TABLE workflows
    ADD COLUMN definition_version integer,
    ADD COLUMN definition_hash text;
