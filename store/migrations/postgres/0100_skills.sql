-- Skills (issue 18): where an installed skill came from, whether it is enabled (a downgrade
-- disables the newest past the tier's cap, and says why), its secret config fields sealed with
-- the master key (the `config` column keeps only the plain fields), and when it last changed.
ALTER TABLE skills_installed ADD COLUMN source TEXT NOT NULL DEFAULT 'bundled';
ALTER TABLE skills_installed ADD COLUMN enabled BIGINT NOT NULL DEFAULT 1;
ALTER TABLE skills_installed ADD COLUMN disabled_reason TEXT;
ALTER TABLE skills_installed ADD COLUMN secrets_sealed TEXT;
ALTER TABLE skills_installed ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
-- The agent preset an owner chose (coder, researcher, writer, analyst, general); NULL: none.
ALTER TABLE instances ADD COLUMN preset TEXT;
