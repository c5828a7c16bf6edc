-- Agents' Ed25519 public keys (docs/security.md): a message's header.security.key_id
-- names one of its sender's keys. Two keys of an agent are valid during a rotation
-- (`coordinator agent rotate-key`); a key retired or removed with its agent is gone.
CREATE TABLE agent_keys (
    agent_id    text        NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    key_id      text        NOT NULL,
    public_key  bytea       NOT NULL CHECK (length(public_key) = 32),
    added_at    timestamptz NOT NULL DEFAULT now(),
    added_by    text        NOT NULL,
    PRIMARY KEY (agent_id, key_id)
);
