-- Custom domain retries (issue #6): when the wait for DNS records began (pending_dns times out
-- from there into failed), failures since the last success or re-check, and when a failed
-- domain is checked again (backoff; 0 = at the next pass).
ALTER TABLE custom_domains ADD COLUMN pending_since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE custom_domains ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE custom_domains ADD COLUMN next_check_at BIGINT NOT NULL DEFAULT 0;
UPDATE custom_domains SET pending_since = created_at;

-- HTTP-01 key authorizations of open orders (and of the platform's own reachability probes),
-- so that whichever edge node the CA's validation request reaches can answer it. Not secret
-- (the CA fetches it over plain HTTP), scoped to one order and deleted when it ends.
CREATE TABLE acme_challenges (
    token             TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    name              TEXT NOT NULL,   -- the certificate or domain the order is for
    expires_at        BIGINT NOT NULL
);
