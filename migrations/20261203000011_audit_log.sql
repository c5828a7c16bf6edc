-- The tamper-evident audit log (docs/security.md): every message the inbox accepts or
-- refuses and every operator command, one hash chain per writer (an inbox partition,
-- the operator's commands, the anchors that tie the chains together), each row
-- carrying the hash of the row before it. audit_heads holds each chain's last row; the
-- batch that appends locks it, so a chain has one writer at a time and the partitions
-- never wait for each other.
CREATE TABLE audit_log (
    chain      text        NOT NULL,
    seq        bigint      NOT NULL,
    at         timestamptz NOT NULL,
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text        NOT NULL,
    result     text        NOT NULL,
    context    jsonb       NOT NULL,
    metadata   jsonb       NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_heads (
    chain  text   PRIMARY KEY,
    seq    bigint NOT NULL,
    hash   bytea  NOT NULL
);
