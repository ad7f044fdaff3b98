//! Revoked sessions that could still carry an unexpired access token: what every edge node keeps
//! in memory to refuse those tokens without a database read per request.

use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::time::now_ms;
use crate::Store;

impl Store {
    /// Ids and expiry (unix ms) of revoked sessions that have not expired yet.
    pub async fn list_revoked_sessions(&self) -> Result<Vec<(Uuid, i64)>> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM sessions WHERE revoked_at IS NOT NULL AND expires_at > $1",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let id = Uuid::parse_str(&id)
                    .map_err(|_| StoreError::Corrupt("sessions.id: not a uuid".into()))?;
                Ok((id, row.try_get("expires_at")?))
            })
            .collect()
    }
}
