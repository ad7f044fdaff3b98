-- ClawDeploy schema v1 (SQLite).
-- Portable subset: ids are TEXT (hyphenated UUIDs), times are BIGINT unix milliseconds (UTC),
-- flags are *_at timestamps or BIGINT 0/1, JSON is TEXT. See store/src/lib.rs for why.

CREATE TABLE users (
    id                    TEXT PRIMARY KEY,
    email                 TEXT NOT NULL UNIQUE,          -- stored lower case
    password_hash         TEXT NOT NULL,
    name                  TEXT,
    tier                  TEXT NOT NULL DEFAULT 'free',
    role                  TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'operator')),
    email_verified_at     BIGINT,
    timezone              TEXT NOT NULL DEFAULT 'UTC',
    avatar_url            TEXT,
    mfa_secret            TEXT,                          -- sealed (secrets::Keyring)
    mfa_recovery_codes    TEXT,                          -- space-separated sha256 hex
    mfa_enabled_at        BIGINT,
    deletion_requested_at BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

CREATE TABLE instances (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    subdomain      TEXT NOT NULL UNIQUE CHECK (subdomain = lower(subdomain)),
    status         TEXT NOT NULL DEFAULT 'provisioning' CHECK (status IN
                   ('queued', 'provisioning', 'starting', 'running', 'stopped', 'crashed', 'deleting')),
    tier           TEXT NOT NULL DEFAULT 'free',
    node_id        TEXT,
    node_ip        TEXT,
    container_id   TEXT,
    container_ip   TEXT,
    upstream       TEXT,                                 -- host:port the edge proxies to
    soul_md        TEXT,
    timezone       TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    last_active_at BIGINT,
    deleted_at     BIGINT
);
CREATE INDEX instances_user_id ON instances (user_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider      TEXT NOT NULL,
    base_url      TEXT,
    key_encrypted TEXT NOT NULL,                         -- sealed, never plaintext
    key_hint      TEXT NOT NULL,                         -- masked, e.g. sk-...abcd
    is_active     BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (user_id, provider)
);

CREATE TABLE skills_installed (
    id           TEXT PRIMARY KEY,
    instance_id  TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    skill_id     TEXT NOT NULL,
    version      TEXT NOT NULL,
    config       TEXT,                                   -- JSON text
    installed_at BIGINT NOT NULL,
    UNIQUE (instance_id, skill_id)
);

CREATE TABLE subscriptions (
    id                     TEXT PRIMARY KEY,
    user_id                TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    stripe_customer_id     TEXT,
    stripe_subscription_id TEXT,
    tier                   TEXT NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'active',
    current_period_start   BIGINT,
    current_period_end     BIGINT,
    created_at             BIGINT NOT NULL
);
CREATE INDEX subscriptions_user_id ON subscriptions (user_id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_seen_at BIGINT,
    ip           TEXT,
    user_agent   TEXT
);
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,                    -- sha256 hex
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    replaced_by TEXT
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

CREATE TABLE email_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify', 'reset')),
    email      TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,                     -- sha256 hex
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX email_tokens_user_id ON email_tokens (user_id);

CREATE TABLE security_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT REFERENCES users(id) ON DELETE CASCADE,
    event      TEXT NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    detail     TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX security_log_user_id ON security_log (user_id, id);

CREATE TABLE usage (
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    day         TEXT NOT NULL,                           -- YYYY-MM-DD, UTC
    messages    BIGINT NOT NULL DEFAULT 0,
    tokens      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, day)
);

CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,                   -- sha256 hex
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX admin_tokens_active_name ON admin_tokens (name) WHERE revoked_at IS NULL;
