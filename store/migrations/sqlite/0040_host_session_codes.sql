-- One-time codes that hand a dashboard login over to one instance host (the host's own session
-- cookie): stored hashed, bound to the host, short-lived, and marked used on first redemption.
CREATE TABLE host_session_codes (
    code_hash  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    host       TEXT NOT NULL,
    next_path  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX host_session_codes_expires_at ON host_session_codes (expires_at);
