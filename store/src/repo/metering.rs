//! Usage totals for the edge's meter: every instance's month at start, written back in batches.

use sqlx::Row;

use crate::error::Result;
use crate::models::UsageTotals;
use crate::Store;

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
