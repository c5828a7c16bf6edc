-- The business object a workflow is about, for any workflow: the payload.data member
-- its definition names as `key` (docs/workflows.md), e.g. feature delivery's epic_id,
-- which stays in its own column too. Existing feature deliveries get theirs.
ALTER TABLE workflows ADD COLUMN business_key text;
UPDATE workflows SET business_key = epic_id WHERE kind = 'feature_delivery';
CREATE INDEX workflows_business_key ON workflows (kind, business_key);
