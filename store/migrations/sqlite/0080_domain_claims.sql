-- Custom domain claims (issue #16): a claim blocks nobody until it is proven. Several accounts
-- may each hold an unproven claim on one hostname (each with its own TXT token); the first whose
-- DNS records are seen sets verified_at and owns the name, and at most one claim per hostname
-- can ever have verified_at set (custom_domains_owner). Unproven claims expire
-- (domains.unverified_ttl_secs). SQLite cannot drop the column's UNIQUE, so the table is rebuilt.
CREATE TABLE custom_domains_claims (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    instance_id   TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    hostname      TEXT NOT NULL CHECK (hostname = lower(hostname)),
    token         TEXT NOT NULL,
    status        TEXT NOT NULL,          -- pending_dns, verifying, issuing, active, failed
    reason        TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    verified_at   BIGINT,                 -- when this account's records proved it owns the name
    pending_since BIGINT NOT NULL DEFAULT 0,
    attempts      BIGINT NOT NULL DEFAULT 0,
    next_check_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO custom_domains_claims (id, user_id, instance_id, hostname, token, status, reason,
    created_at, updated_at, verified_at, pending_since, attempts, next_check_at)
SELECT id, user_id, instance_id, hostname, token, status, reason,
    created_at, updated_at, verified_at, pending_since, attempts, next_check_at
FROM custom_domains;
DROP TABLE custom_domains;
ALTER TABLE custom_domains_claims RENAME TO custom_domains;
CREATE INDEX custom_domains_user ON custom_domains (user_id);
CREATE INDEX custom_domains_instance ON custom_domains (instance_id);
-- One claim per account and hostname; also the index of lookups by hostname.
CREATE UNIQUE INDEX custom_domains_claim ON custom_domains (hostname, user_id);
-- At most one owner per hostname, whatever the nodes verifying at once.
CREATE UNIQUE INDEX custom_domains_owner ON custom_domains (hostname) WHERE verified_at IS NOT NULL;
