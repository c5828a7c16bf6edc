-- How many partitions each inbox (its consistent-hash exchange) was declared with, so
-- that a coordinator configured with fewer finds out from here, not by asking the
-- broker for a queue that should not exist (a passive declare of a missing queue
-- closes the channel, and lapin logs it as an error at every healthy start).
CREATE TABLE inbox_partitions (
    exchange    text PRIMARY KEY,
    partitions  integer NOT NULL CHECK (partitions > 0),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
