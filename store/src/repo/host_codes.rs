//! One-time codes that hand a dashboard login over to an instance host: created by
//! `GET /api/session/handoff`, redeemed once by `/_clawdeploy/session` on that host.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::Result;
use crate::secrets::TokenHash;
use crate::time::now_ms;
use crate::{id_str, uuid_col, Store};

/// A code as stored (its plaintext is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCode {
    /// The id of the user signed in on the dashboard.
    pub user_id: Uuid,
    /// The id of the dashboard session the code was made from; the host session ends no later.
    pub session_id: Uuid,
    /// The normalised host the code is valid on.
    pub host: String,
    /// Where the browser goes on that host once signed in (a path, with its query).
    pub next_path: String,
    /// When the code stops being accepted (unix ms; `sessions.code_ttl_secs` after it was made).
    pub expires_at: i64,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call marked the code used; the caller checks host and expiry.
    Claimed(HostCode),
    /// Used before: a replay.
    AlreadyUsed,
    /// No such code: never made, or purged an hour after it expired.
    Unknown,
}

const COLS: &str = "user_id, session_id, host, next_path, expires_at";

fn host_code_from_row(row: &AnyRow) -> Result<HostCode> {
    Ok(HostCode {
        user_id: uuid_col(row, "user_id")?,
        session_id: uuid_col(row, "session_id")?,
        host: row.try_get("host")?,
        next_path: row.try_get("next_path")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl Store {
    /// Stores a new code (and drops codes that expired more than an hour ago).
    pub async fn create_host_code(&self, hash: &TokenHash, code: &HostCode) -> Result<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM host_session_codes WHERE expires_at < $1")
            .bind(now - 3_600_000)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO host_session_codes \
             (code_hash, user_id, session_id, host, next_path, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash.as_str())
        .bind(id_str(code.user_id))
        .bind(id_str(code.session_id))
        .bind(&code.host)
        .bind(&code.next_path)
        .bind(now)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a code used, atomically: of two concurrent redemptions exactly one is `Claimed`.
    pub async fn redeem_host_code(&self, hash: &TokenHash) -> Result<Redemption> {
        let sql = format!(
            "UPDATE host_session_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
             RETURNING {COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(hash.as_str())
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(Redemption::Claimed(host_code_from_row(&row)?));
        }
        let exists = sqlx::query("SELECT 1 AS one FROM host_session_codes WHERE code_hash = $1")
            .bind(hash.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(if exists.is_some() {
            Redemption::AlreadyUsed
        } else {
            Redemption::Unknown
        })
    }
}
