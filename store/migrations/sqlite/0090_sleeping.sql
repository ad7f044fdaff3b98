-- Idle instances sleep (issue 24): a `sleeping` status; `wake_at`, when the pool must wake a
-- sleeping instance for its next scheduled job; `sleep_lease`, the gateway's suspension lease a
-- frozen instance holds until it is woken (released then).
ALTER TABLE instances ADD COLUMN wake_at BIGINT;
ALTER TABLE instances ADD COLUMN sleep_lease TEXT;
-- SQLite cannot alter a CHECK constraint, and rebuilding the table would need foreign keys off,
-- which a migration (always one transaction here) cannot do: dropping the old table would
-- cascade. So the stored definition is edited, the documented way for a constraint that only
-- widens (https://www.sqlite.org/lang_altertable.html#otheralter); RESET reloads the schema on
-- this connection, and the ALTER above bumped the schema version for the others.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, '''running'', ''stopped''', '''running'', ''sleeping'', ''stopped''')
WHERE type = 'table' AND name = 'instances';
PRAGMA writable_schema = RESET;
