-- Paid tiers count usage per billing period starting at the billing anchor: the time the user got
-- the tier (unix ms). Instances carry a copy, as they carry the tier. NULL: calendar months.
ALTER TABLE users ADD COLUMN billing_anchor_at BIGINT;
ALTER TABLE instances ADD COLUMN billing_anchor_at BIGINT;
