//! The mail outbox and the sweeps of account policies.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::Result;
use crate::models::*;
use crate::repo::instances::{instance_from_row, INSTANCE_COLS};
use crate::time::now_ms;
use crate::Store;

fn mail_from_row(row: &AnyRow) -> Result<OutboxMail> {
    Ok(OutboxMail {
        id: row.try_get("id")?,
        to: row.try_get("to_addr")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Keeps a mail in the outbox.
    pub async fn push_outbox(&self, to: &str, subject: &str, body: &str) -> Result<OutboxMail> {
        let row = sqlx::query(
            "INSERT INTO outbox (to_addr, subject, body, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, to_addr, subject, body, created_at",
        )
        .bind(to)
        .bind(subject)
        .bind(body)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        mail_from_row(&row)
    }

    /// The newest `limit` mails of the outbox, newest first, optionally only to one address.
    pub async fn list_outbox(&self, to: Option<&str>, limit: i64) -> Result<Vec<OutboxMail>> {
        let rows = sqlx::query(
            "SELECT id, to_addr, subject, body, created_at FROM outbox \
             WHERE ($1 IS NULL OR to_addr = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mail_from_row).collect()
    }

    /// Marks `stopped` the instances of accounts created before `created_before` whose email is
    /// still unverified; returns the instances changed.
    pub async fn stop_unverified_instances(&self, created_before: i64) -> Result<Vec<Instance>> {
        let sql = format!(
            "UPDATE instances SET status = 'stopped', updated_at = $2 \
             WHERE status IN ('queued', 'provisioning', 'starting', 'running') \
             AND user_id IN (SELECT id FROM users WHERE email_verified_at IS NULL AND created_at < $1) \
             RETURNING {INSTANCE_COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(created_before)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }
}
