-- The warm pool: idle instances per node, claimed atomically at signup.
CREATE TABLE pool_members (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    runtime_id  TEXT,                                   -- container id / process name, once created
    state       TEXT NOT NULL CHECK (state IN ('creating', 'idle', 'claimed')),
    upstream    TEXT,                                   -- host:port once ready
    instance_id TEXT UNIQUE REFERENCES instances(id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX pool_members_node_state ON pool_members (node_id, state);
