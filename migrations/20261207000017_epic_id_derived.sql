-- The coordinator writes each workflow's key generically: key_name is the payload.data
-- member its definition names as `key` (feature delivery's epic_id, a code review's
-- change_id, a custom definition's own), business_key its value. epic_id stays for the
-- managers' queries written against it, now derived from those two, so no code has to
-- know which definitions are about epics.
ALTER TABLE workflows ADD COLUMN key_name text;

-- Rows written before: where epic_id was set, that is their key (migration 16 filled
-- business_key for feature deliveries only; design and launch handoffs get theirs here).
UPDATE workflows SET key_name = 'epic_id', business_key = coalesce(business_key, epic_id)
 WHERE epic_id IS NOT NULL AND (business_key IS NULL OR business_key = epic_id);

-- A workflow whose definition is keyed on something else but whose start message also
-- carried an epic_id loses it from this column only: `data->>'epic_id'` still holds it.
ALTER TABLE workflows DROP COLUMN epic_id;
ALTER TABLE workflows ADD COLUMN epic_id text
    GENERATED ALWAYS AS (CASE WHEN key_name = 'epic_id' THEN business_key END) STORED;
CREATE INDEX workflows_epic ON workflows (epic_id);
