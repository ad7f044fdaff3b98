//! Usage totals for the edge's meter: every instance's month at start, written back in batches.

use sqlx::Row;

use crate::error::Result;
use crate::models::UsageTotals;
use crate::{parse_col, Store, Tier};

impl Store {
    /// This month's totals of every instance with usage (`month` 1–12), for seeding the meter.
    pub async fn usage_month_all(
        &self,
        year: i32,
        month: u32,
    ) -> Result<Vec<(String, UsageTotals)>> {
        let rows = sqlx::query(
            "SELECT instance_id, CAST(SUM(messages) AS BIGINT) AS messages, \
             CAST(SUM(tokens) AS BIGINT) AS tokens FROM usage WHERE day LIKE $1 GROUP BY instance_id",
        )
        .bind(format!("{year:04}-{month:02}-%"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("instance_id")?,
                    UsageTotals {
                        messages: r.try_get("messages")?,
                        tokens: r.try_get("tokens")?,
                    },
                ))
            })
            .collect()
    }
}

/// One stored day of an instance's usage with what decides its billing period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSeedRow {
    /// The instance's id (hyphenated UUID), as stored.
    pub instance_id: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// OpenClaw user messages counted that day.
    pub messages: i64,
    /// LLM tokens (input + output) counted that day.
    pub tokens: i64,
    /// The instance's tier now.
    pub tier: Tier,
    /// Start of the instance's paid billing periods (unix ms); `None`: calendar months.
    pub billing_anchor_at: Option<i64>,
}

impl Store {
    /// Every instance's daily usage since `from_day` (`YYYY-MM-DD`) with its tier and billing
    /// anchor, for seeding the meter with each instance's current billing period.
    pub async fn usage_days_since_all(&self, from_day: &str) -> Result<Vec<UsageSeedRow>> {
        let rows = sqlx::query(
            "SELECT u.instance_id, u.day, u.messages, u.tokens, i.tier, i.billing_anchor_at \
             FROM usage u JOIN instances i ON i.id = u.instance_id WHERE u.day >= $1",
        )
        .bind(from_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageSeedRow {
                    instance_id: r.try_get("instance_id")?,
                    day: r.try_get("day")?,
                    messages: r.try_get("messages")?,
                    tokens: r.try_get("tokens")?,
                    tier: parse_col(r, "tier")?,
                    billing_anchor_at: r.try_get("billing_anchor_at")?,
                })
            })
            .collect()
    }

    /// One instance's totals from `from_day` (`YYYY-MM-DD`, inclusive) on.
    pub async fn usage_since(
        &self,
        instance_id: uuid::Uuid,
        from_day: &str,
    ) -> Result<UsageTotals> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(messages), 0) AS BIGINT) AS messages, \
             CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens \
             FROM usage WHERE instance_id = $1 AND day >= $2",
        )
        .bind(crate::id_str(instance_id))
        .bind(from_day)
        .fetch_one(&self.pool)
        .await?;
        Ok(UsageTotals {
            messages: row.try_get("messages")?,
            tokens: row.try_get("tokens")?,
        })
    }

    /// Records counted idempotency keys `(instance id, key hash, counted at)`; a key already
    /// stored is kept, a deleted instance's keys are skipped. Returns the rows written.
    pub async fn add_usage_keys(&self, keys: &[(String, i64, i64)]) -> Result<usize> {
        let mut written = 0;
        for (instance_id, hash, at) in keys {
            let r = sqlx::query(
                "INSERT INTO usage_keys (instance_id, key_hash, counted_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (instance_id, key_hash) DO NOTHING",
            )
            .bind(instance_id)
            .bind(*hash)
            .bind(*at)
            .execute(&self.pool)
            .await;
            match r {
                Ok(r) => written += r.rows_affected() as usize,
                Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }

    /// Keys counted at or after `since_ms`: `(instance id, key hash, counted at)`.
    pub async fn usage_keys_since(&self, since_ms: i64) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT instance_id, key_hash, counted_at FROM usage_keys WHERE counted_at >= $1",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("instance_id")?,
                    r.try_get("key_hash")?,
                    r.try_get("counted_at")?,
                ))
            })
            .collect()
    }

    /// Forgets keys counted before `before_ms`; returns how many.
    pub async fn prune_usage_keys(&self, before_ms: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM usage_keys WHERE counted_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
