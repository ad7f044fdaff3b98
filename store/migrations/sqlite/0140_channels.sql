-- Messaging channels an owner connected their instance to (issue 22): one row per instance and
-- kind, the senders allowed to talk to the assistant (JSON list), the channel's credential sealed
-- with the master key (never readable back), and what the edge's relay last saw.
CREATE TABLE channels (
    instance_id     TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    allow_from      TEXT NOT NULL,
    token_sealed    TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_detail   TEXT,
    last_message_at BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (instance_id, kind)
);
