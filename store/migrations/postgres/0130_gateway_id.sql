-- The identity an instance's OpenClaw gateway knows its owner by (issue 24): the name of the pool
-- member it was handed, fixed when that member booted, so a warm gateway already admits whoever
-- is handed it and a signup waits for no config reload. NULL for instances handed over before it
-- (their gateways know the owner by user id).
ALTER TABLE instances ADD COLUMN gateway_id TEXT;
