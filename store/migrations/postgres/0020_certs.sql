-- Certificates the edge serves (issue #6): chain in clear, private key sealed by the Keyring.
CREATE TABLE certificates (
    name        TEXT PRIMARY KEY,       -- primary name: the base domain (wildcard + apex) or a custom hostname
    domains     TEXT NOT NULL,          -- JSON array of the names the certificate covers
    chain_pem   TEXT NOT NULL,
    key_sealed  TEXT NOT NULL,          -- PKCS#8 PEM sealed with AES-256-GCM (secrets::Keyring)
    issuer      TEXT NOT NULL,          -- 'acme' or 'local-ca'
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    renew_at    BIGINT NOT NULL,        -- when the scheduler orders a successor (ARI or 2/3 of the lifetime)
    failures    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  BIGINT NOT NULL
);

-- One ACME account per CA directory; credentials (the account key) sealed.
CREATE TABLE acme_accounts (
    directory_url      TEXT PRIMARY KEY,
    credentials_sealed TEXT NOT NULL,
    created_at         BIGINT NOT NULL
);

-- So that one node at a time orders a given name (expiring: a crashed holder does not block).
CREATE TABLE cert_locks (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Customers' own domains and their verification lifecycle.
CREATE TABLE custom_domains (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    hostname    TEXT NOT NULL UNIQUE CHECK (hostname = lower(hostname)),
    token       TEXT NOT NULL,
    status      TEXT NOT NULL,          -- pending_dns, verifying, issuing, active, failed
    reason      TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    verified_at BIGINT
);
CREATE INDEX custom_domains_user ON custom_domains (user_id);
CREATE INDEX custom_domains_instance ON custom_domains (instance_id);
