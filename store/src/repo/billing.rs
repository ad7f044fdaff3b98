//! Billing: Stripe customers and subscriptions, handled webhook events, grace periods after a
//! failed payment, and the append-only AI credit ledger.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::models::User;
use crate::repo::accounts::{user_from_row, USER_COLS};
use crate::time::now_ms;
use crate::{id_str, parse_col, uuid_col, Store, Tier};

/// A Stripe subscription's status, as Stripe names it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Created; its first payment is not made yet.
    Incomplete,
    /// The first payment was never made (terminal).
    IncompleteExpired,
    /// In a trial: the tier applies.
    Trialing,
    /// Paid: the tier applies.
    Active,
    /// A renewal failed and Stripe is retrying: the tier applies during the grace period.
    PastDue,
    /// Ended (terminal): the account is on free.
    Canceled,
    /// Stripe gave up retrying without cancelling: the account is on free.
    Unpaid,
    /// Paused (no payment method at the end of a trial): the account is on free.
    Paused,
}

impl SubscriptionStatus {
    /// The name as Stripe spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }

    /// Whether the subscription's tier applies (past due included: the grace period decides).
    pub fn grants_tier(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }
}

impl std::str::FromStr for SubscriptionStatus {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            other => return Err(format!("unknown subscription status {other:?}")),
        })
    }
}

/// A Stripe subscription as last applied.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The account it pays for.
    pub user_id: Uuid,
    /// Stripe's id (`sub_…`).
    pub stripe_subscription_id: String,
    /// Stripe's customer (`cus_…`).
    pub stripe_customer_id: String,
    /// The tier its price buys.
    pub tier: Tier,
    /// Stripe's status.
    pub status: SubscriptionStatus,
    /// When the current period ends (unix ms): the next charge, or the end when cancelled.
    pub current_period_end: Option<i64>,
    /// Cancelled by the customer: ends at `current_period_end`.
    pub cancel_at_period_end: bool,
    /// The `created` time (unix s) of the Stripe event this state came from.
    pub state_at: i64,
    /// When it was first seen (unix ms).
    pub created_at: i64,
}

/// A subscription's state from one Stripe event.
#[derive(Debug, Clone)]
pub struct SubscriptionState<'a> {
    /// The account (from the customer).
    pub user_id: Uuid,
    /// `sub_…`.
    pub stripe_subscription_id: &'a str,
    /// `cus_…`.
    pub stripe_customer_id: &'a str,
    /// The tier of its price.
    pub tier: Tier,
    /// Its status.
    pub status: SubscriptionStatus,
    /// End of the current period (unix ms).
    pub current_period_end: Option<i64>,
    /// Whether it ends at the period's end.
    pub cancel_at_period_end: bool,
    /// The event's `created` (unix s): an older state never replaces a newer one.
    pub state_at: i64,
}

const SUB_COLS: &str = "user_id, stripe_subscription_id, stripe_customer_id, tier, status, \
    current_period_end, cancel_at_period_end, state_at, created_at";

fn subscription_from_row(row: &AnyRow) -> Result<Subscription> {
    let status: String = row.try_get("status")?;
    Ok(Subscription {
        user_id: uuid_col(row, "user_id")?,
        stripe_subscription_id: row.try_get("stripe_subscription_id")?,
        stripe_customer_id: row
            .try_get::<Option<String>, _>("stripe_customer_id")?
            .unwrap_or_default(),
        tier: parse_col(row, "tier")?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("subscriptions.status: {e}")))?,
        current_period_end: row.try_get("current_period_end")?,
        cancel_at_period_end: row.try_get::<i64, _>("cancel_at_period_end")? != 0,
        state_at: row.try_get("state_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// What kind of change a ledger entry is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// A credit pack bought (positive).
    Purchase,
    /// Tokens an LLM call used (negative).
    Usage,
    /// Money given back (negative: the tokens leave the balance).
    Refund,
    /// An operator's correction, with who and why (either sign).
    Adjustment,
}

impl CreditKind {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Usage => "usage",
            Self::Refund => "refund",
            Self::Adjustment => "adjustment",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "purchase" => Self::Purchase,
            "usage" => Self::Usage,
            "refund" => Self::Refund,
            "adjustment" => Self::Adjustment,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "credit_ledger.kind: {other:?}"
                )))
            }
        })
    }
}

/// One ledger entry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditEntry {
    /// Purchase, usage, refund or adjustment.
    pub kind: CreditKind,
    /// Tokens added (positive) or taken (negative).
    pub tokens: i64,
    /// What was paid or refunded, in cents, when money moved.
    pub amount_cents: Option<i64>,
    /// The Checkout Session of a purchase.
    pub reference: Option<String>,
    /// Who made an adjustment (an operator's email or token name).
    pub actor: Option<String>,
    /// Why (adjustments), the pack bought, or the instance whose call was paid.
    pub reason: Option<String>,
    /// When (unix ms).
    pub created_at: i64,
}

/// A ledger entry to append.
#[derive(Debug, Clone, Copy)]
pub struct NewCredit<'a> {
    /// The account.
    pub user_id: Uuid,
    /// What kind.
    pub kind: CreditKind,
    /// Signed tokens.
    pub tokens: i64,
    /// Money, in cents.
    pub amount_cents: Option<i64>,
    /// A unique reference per kind (a purchase's Checkout Session): a second entry with it is
    /// not added.
    pub reference: Option<&'a str>,
    /// Who.
    pub actor: Option<&'a str>,
    /// Why.
    pub reason: Option<&'a str>,
}

/// A user's billing state.
#[derive(Debug, Clone, Default)]
pub struct BillingAccount {
    /// Stripe's customer, once one was made.
    pub stripe_customer_id: Option<String>,
    /// After a failed payment: when the paid tier ends unless a payment succeeds (unix ms).
    pub grace_until: Option<i64>,
    /// The credit balance in tokens (the ledger's sum).
    pub credit_tokens: i64,
}

impl Store {
    /// The user's Stripe customer, grace period and credit balance.
    pub async fn billing_account(&self, user_id: Uuid) -> Result<BillingAccount> {
        let row = sqlx::query(
            "SELECT stripe_customer_id, grace_until, credit_tokens FROM users WHERE id = $1",
        )
        .bind(id_str(user_id))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("user"))?;
        Ok(BillingAccount {
            stripe_customer_id: row.try_get("stripe_customer_id")?,
            grace_until: row.try_get("grace_until")?,
            credit_tokens: row.try_get("credit_tokens")?,
        })
    }

    /// Records the user's Stripe customer; keeps one already recorded (a race between two
    /// checkouts) and answers the one stored.
    pub async fn set_stripe_customer(&self, user_id: Uuid, customer: &str) -> Result<String> {
        sqlx::query(
            "UPDATE users SET stripe_customer_id = COALESCE(stripe_customer_id, $2) WHERE id = $1",
        )
        .bind(id_str(user_id))
        .bind(customer)
        .execute(&self.pool)
        .await?;
        self.billing_account(user_id)
            .await?
            .stripe_customer_id
            .ok_or(StoreError::NotFound("user"))
    }

    /// The user a Stripe customer belongs to.
    pub async fn user_by_stripe_customer(&self, customer: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE stripe_customer_id = $1"
        ))
        .bind(customer)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Whether a Stripe event was already handled.
    pub async fn billing_event_seen(&self, event_id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM billing_events WHERE id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Records a handled Stripe event and what came of it (a second record of it is ignored).
    pub async fn record_billing_event(
        &self,
        event_id: &str,
        kind: &str,
        outcome: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO billing_events (id, type, outcome, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(event_id)
        .bind(kind)
        .bind(outcome)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Applies a subscription's state unless the stored one is newer (a later `state_at`) or
    /// already ended (`canceled` is final in Stripe); answers the row when it was applied. One
    /// statement, so two deliveries at once apply in the order of the subscription's own state.
    pub async fn apply_subscription(
        &self,
        s: &SubscriptionState<'_>,
    ) -> Result<Option<Subscription>> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO subscriptions (id, user_id, stripe_customer_id, stripe_subscription_id, \
             tier, status, current_period_end, cancel_at_period_end, state_at, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (stripe_subscription_id) DO UPDATE SET tier = excluded.tier, \
             status = excluded.status, current_period_end = excluded.current_period_end, \
             cancel_at_period_end = excluded.cancel_at_period_end, state_at = excluded.state_at, \
             updated_at = excluded.updated_at \
             WHERE subscriptions.state_at <= excluded.state_at \
             AND subscriptions.status <> 'canceled' RETURNING {SUB_COLS}"
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(id_str(s.user_id))
        .bind(s.stripe_customer_id)
        .bind(s.stripe_subscription_id)
        .bind(s.tier.as_str())
        .bind(s.status.as_str())
        .bind(s.current_period_end)
        .bind(i64::from(s.cancel_at_period_end))
        .bind(s.state_at)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    /// The user's subscriptions, newest first.
    pub async fn subscriptions_of(&self, user_id: Uuid) -> Result<Vec<Subscription>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM subscriptions WHERE user_id = $1 \
             ORDER BY created_at DESC, state_at DESC"
        ))
        .bind(id_str(user_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    /// Every subscription, newest first (operators).
    pub async fn list_subscriptions(&self, limit: u32) -> Result<Vec<Subscription>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM subscriptions ORDER BY created_at DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    /// Starts the user's grace period, ending at `until` (unix ms), unless one is running;
    /// answers when the running one ends.
    pub async fn start_grace(&self, user_id: Uuid, until: i64) -> Result<i64> {
        sqlx::query("UPDATE users SET grace_until = COALESCE(grace_until, $2) WHERE id = $1")
            .bind(id_str(user_id))
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(self
            .billing_account(user_id)
            .await?
            .grace_until
            .unwrap_or(until))
    }

    /// Ends the user's grace period (a payment succeeded, or the account moved to free).
    pub async fn clear_grace(&self, user_id: Uuid) -> Result<()> {
        sqlx::query("UPDATE users SET grace_until = NULL WHERE id = $1")
            .bind(id_str(user_id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Users whose grace period ended before `now` (unix ms).
    pub async fn users_past_grace(&self, now: i64) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM users WHERE grace_until IS NOT NULL AND grace_until <= $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|id| {
                Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("users.id: {id:?}")))
            })
            .collect()
    }

    /// Appends a ledger entry and moves the balance by its tokens, in one transaction; answers
    /// the new balance, or `None` when an entry of this kind with this reference exists (it was
    /// already counted).
    pub async fn add_credit(&self, entry: &NewCredit<'_>) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        // The user's row first: on SQLite this takes the write lock before any read.
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET credit_tokens = credit_tokens + $2 WHERE id = $1 \
             RETURNING credit_tokens",
        )
        .bind(id_str(entry.user_id))
        .bind(entry.tokens)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(balance) = balance else {
            return Err(StoreError::NotFound("user"));
        };
        let inserted = sqlx::query(
            "INSERT INTO credit_ledger (id, user_id, kind, tokens, amount_cents, reference, \
             actor, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (kind, reference) DO NOTHING",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(id_str(entry.user_id))
        .bind(entry.kind.as_str())
        .bind(entry.tokens)
        .bind(entry.amount_cents)
        .bind(entry.reference)
        .bind(entry.actor)
        .bind(entry.reason)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(balance))
    }

    /// The user's credit balance in tokens.
    pub async fn credit_balance(&self, user_id: Uuid) -> Result<i64> {
        Ok(self.billing_account(user_id).await?.credit_tokens)
    }

    /// The user's ledger, newest first.
    pub async fn credit_ledger(&self, user_id: Uuid, limit: u32) -> Result<Vec<CreditEntry>> {
        let rows = sqlx::query(
            "SELECT kind, tokens, amount_cents, reference, actor, reason, created_at \
             FROM credit_ledger WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2",
        )
        .bind(id_str(user_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(CreditEntry {
                    kind: CreditKind::parse(&kind)?,
                    tokens: row.try_get("tokens")?,
                    amount_cents: row.try_get("amount_cents")?,
                    reference: row.try_get("reference")?,
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }
}
