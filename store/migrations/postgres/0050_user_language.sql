-- The dashboard's language preference, stored for later localisation (BCP 47 primary tag).
ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
