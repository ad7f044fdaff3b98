-- Billing (issue 19). A Stripe subscription per row of `subscriptions` (one writer: the webhook),
-- applied in the order of the subscription's own state: `state_at` is the `created` time (unix s)
-- of the last event applied, and an older one changes nothing.
ALTER TABLE subscriptions ADD COLUMN cancel_at_period_end BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN state_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX subscriptions_stripe_id ON subscriptions (stripe_subscription_id);
-- The account's Stripe customer, and, after a failed payment, when its paid tier ends (unix ms)
-- unless a payment succeeds first. `credit_tokens` is the sum of the account's ledger, written only
-- with a ledger entry in the same transaction.
ALTER TABLE users ADD COLUMN stripe_customer_id TEXT;
ALTER TABLE users ADD COLUMN grace_until BIGINT;
ALTER TABLE users ADD COLUMN credit_tokens BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_stripe_customer ON users (stripe_customer_id);
-- Stripe events handled, by id: a redelivered event is answered 200 and changes nothing.
CREATE TABLE billing_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
-- The AI credit ledger, append-only: purchase, usage, refund, adjustment (tokens signed: usage is
-- negative). A purchase's reference is its Checkout Session, so it is credited once.
CREATE TABLE credit_ledger (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    tokens     BIGINT NOT NULL,
    amount_cents BIGINT,
    reference  TEXT,
    actor      TEXT,
    reason     TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX credit_ledger_user ON credit_ledger (user_id, created_at);
CREATE UNIQUE INDEX credit_ledger_reference ON credit_ledger (kind, reference);
-- Skills a tier's cap disabled, so that a return to a larger tier enables them again.
ALTER TABLE skills_installed ADD COLUMN disabled_by_tier BIGINT NOT NULL DEFAULT 0;
