-- Idle instances sleep (issue 24): a `sleeping` status; `wake_at`, when the pool must wake a
-- sleeping instance for its next scheduled job; `sleep_lease`, the gateway's suspension lease a
-- frozen instance holds until it is woken (released then).
ALTER TABLE instances DROP CONSTRAINT instances_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_status_check CHECK (status IN
    ('queued', 'provisioning', 'starting', 'running', 'sleeping', 'stopped', 'crashed', 'deleting'));
ALTER TABLE instances ADD COLUMN wake_at BIGINT;
ALTER TABLE instances ADD COLUMN sleep_lease TEXT;
