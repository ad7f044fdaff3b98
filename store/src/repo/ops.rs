//! Admin tokens, operator routes and usage counters.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{conflict_or, Conflict, Result, StoreError};
use crate::models::*;
use crate::secrets::TokenHash;
use crate::time::{day_string, now_ms};
use crate::{id_str, uuid_col, Store};

const ADMIN_COLS: &str = "id, name, created_at, revoked_at, last_used_at";

fn admin_from_row(row: &AnyRow) -> Result<AdminToken> {
    Ok(AdminToken {
        id: uuid_col(row, "id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn check_month(year: i32, month: u32) -> Result<()> {
    if (1..=12).contains(&month) && (1..=9999).contains(&year) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("month {year}-{month}")))
    }
}

impl Store {
    /// Stores a named admin token (its hash). An active token with the same name →
    /// `Conflict(AdminTokenName)`.
    pub async fn create_admin_token(&self, name: &str, token: &TokenHash) -> Result<AdminToken> {
        let sql = format!(
            "INSERT INTO admin_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {ADMIN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(name)
            .bind(token.as_str())
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| conflict_or(e, Conflict::AdminTokenName))?;
        admin_from_row(&row)
    }

    /// All admin tokens, revoked ones included, oldest first.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let sql = format!("SELECT {ADMIN_COLS} FROM admin_tokens ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(admin_from_row).collect()
    }

    /// Revokes the active admin token with this name; false when there is none.
    pub async fn revoke_admin_token(&self, name: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The active (unrevoked) admin token with this hash, recording its use.
    pub async fn find_admin_token_by_hash(&self, token: &TokenHash) -> Result<Option<AdminToken>> {
        let sql = format!(
            "UPDATE admin_tokens SET last_used_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL \
             RETURNING {ADMIN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(token.as_str())
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(admin_from_row).transpose()
    }

    /// Adds to an instance's counters for the UTC day of `at` (unix ms).
    pub async fn add_usage(
        &self,
        instance_id: Uuid,
        at: i64,
        messages: i64,
        tokens: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO usage (instance_id, day, messages, tokens) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (instance_id, day) DO UPDATE SET \
             messages = usage.messages + excluded.messages, tokens = usage.tokens + excluded.tokens",
        )
        .bind(id_str(instance_id))
        .bind(day_string(at))
        .bind(messages)
        .bind(tokens)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound("instance")
            }
            _ => StoreError::Database(e),
        })?;
        Ok(())
    }

    /// Totals for one UTC calendar month (`month` 1–12).
    pub async fn usage_month(
        &self,
        instance_id: Uuid,
        year: i32,
        month: u32,
    ) -> Result<UsageTotals> {
        check_month(year, month)?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(messages), 0) AS BIGINT) AS messages, \
             CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens \
             FROM usage WHERE instance_id = $1 AND day LIKE $2",
        )
        .bind(id_str(instance_id))
        .bind(format!("{year:04}-{month:02}-%"))
        .fetch_one(&self.pool)
        .await?;
        Ok(UsageTotals {
            messages: row.try_get("messages")?,
            tokens: row.try_get("tokens")?,
        })
    }

    /// Totals for the current UTC month.
    pub async fn usage_this_month(&self, instance_id: Uuid) -> Result<UsageTotals> {
        let day = day_string(now_ms());
        let year = day[0..4]
            .parse()
            .map_err(|_| StoreError::Invalid(day.clone()))?;
        let month = day[5..7]
            .parse()
            .map_err(|_| StoreError::Invalid(day.clone()))?;
        self.usage_month(instance_id, year, month).await
    }

    /// Daily rows between two days inclusive (`YYYY-MM-DD`), oldest first.
    pub async fn usage_days(
        &self,
        instance_id: Uuid,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<UsageDay>> {
        let rows = sqlx::query(
            "SELECT day, messages, tokens FROM usage WHERE instance_id = $1 AND day >= $2 \
             AND day <= $3 ORDER BY day",
        )
        .bind(id_str(instance_id))
        .bind(from_day)
        .bind(to_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageDay {
                    day: r.try_get("day")?,
                    messages: r.try_get("messages")?,
                    tokens: r.try_get("tokens")?,
                })
            })
            .collect()
    }

    /// Creates or replaces the stored operator route of `host` (normalised by the caller); true
    /// when it is new.
    pub async fn upsert_operator_route(&self, host: &str, upstream: &str) -> Result<bool> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO operator_routes (host, upstream, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (host) DO NOTHING",
        )
        .bind(host)
        .bind(upstream)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            sqlx::query(
                "UPDATE operator_routes SET upstream = $2, updated_at = $3 WHERE host = $1",
            )
            .bind(host)
            .bind(upstream)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(inserted)
    }

    /// Removes the stored operator route of `host`; false when there was none.
    pub async fn delete_operator_route(&self, host: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM operator_routes WHERE host = $1")
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The stored operator route of `host`: its upstream, as stored.
    pub async fn operator_route(&self, host: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT upstream FROM operator_routes WHERE host = $1")
                .bind(host)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Every stored operator route, `(host, upstream)`, by host.
    pub async fn operator_routes(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT host, upstream FROM operator_routes ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("host")?, r.try_get("upstream")?)))
            .collect()
    }
}
