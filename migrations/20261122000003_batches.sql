-- Set-based batches and several coordinators sharing the inbox (issue 6).

-- Which coordinator instance applied a message: shows how the work was shared, and
-- where to look when something went wrong.
ALTER TABLE processed_messages ADD COLUMN processed_by text;
