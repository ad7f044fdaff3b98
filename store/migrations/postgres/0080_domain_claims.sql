-- Custom domain claims (issue #16): a claim blocks nobody until it is proven. Several accounts
-- may each hold an unproven claim on one hostname (each with its own TXT token); the first whose
-- DNS records are seen sets verified_at and owns the name, and at most one claim per hostname
-- can ever have verified_at set (custom_domains_owner). Unproven claims expire
-- (domains.unverified_ttl_secs).
ALTER TABLE custom_domains DROP CONSTRAINT custom_domains_hostname_key;
-- One claim per account and hostname; also the index of lookups by hostname.
CREATE UNIQUE INDEX custom_domains_claim ON custom_domains (hostname, user_id);
-- At most one owner per hostname, whatever the nodes verifying at once.
CREATE UNIQUE INDEX custom_domains_owner ON custom_domains (hostname) WHERE verified_at IS NOT NULL;
