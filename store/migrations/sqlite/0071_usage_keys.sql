-- Idempotency keys of counted messages, so a retry after an edge restart does not count twice.
-- key_hash: the first 8 bytes of SHA-256(instance id, key) as a signed integer; rows older than
-- the longest billing period are pruned by the usage flush.
CREATE TABLE usage_keys (
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    key_hash    BIGINT NOT NULL,
    counted_at  BIGINT NOT NULL,
    PRIMARY KEY (instance_id, key_hash)
);
CREATE INDEX usage_keys_counted_at ON usage_keys (counted_at);
