-- Idle instances sleep (issue 24): a `sleeping` status, and `wake_at`, when the pool must wake a
-- sleeping instance for its next scheduled job.
ALTER TABLE instances DROP CONSTRAINT instances_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_status_check CHECK (status IN
    ('queued', 'provisioning', 'starting', 'running', 'sleeping', 'stopped', 'crashed', 'deleting'));
ALTER TABLE instances ADD COLUMN wake_at BIGINT;
