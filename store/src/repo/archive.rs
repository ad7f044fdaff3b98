//! Instance cancellation (PRD §4.4.3): a grace period with data kept, then the archive.

use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::models::Instance;
use crate::repo::instances::{instance_from_row, INSTANCE_COLS};
use crate::time::now_ms;
use crate::{id_str, Store};

impl Store {
    /// Marks an instance `deleting` from now (the grace period starts); idempotent.
    pub async fn schedule_instance_deletion(&self, id: Uuid) -> Result<Instance> {
        let sql = format!(
            "UPDATE instances SET status = 'deleting', deleted_at = COALESCE(deleted_at, $2), updated_at = $2 \
             WHERE id = $1 RETURNING {INSTANCE_COLS}, deleted_at"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(instance_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("instance"))
    }

    /// Undoes a scheduled deletion: the instance is `stopped` again (its owner restarts it).
    /// `None` when it was not being deleted.
    pub async fn cancel_instance_deletion(&self, id: Uuid) -> Result<Option<Instance>> {
        let sql = format!(
            "UPDATE instances SET status = 'stopped', deleted_at = NULL, updated_at = $2 \
             WHERE id = $1 AND status = 'deleting' RETURNING {INSTANCE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// When a `deleting` instance's grace period started (unix ms).
    pub async fn instance_deletion_requested_at(&self, id: Uuid) -> Result<Option<i64>> {
        let at: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT deleted_at FROM instances WHERE id = $1 AND status = 'deleting'",
        )
        .bind(id_str(id))
        .fetch_optional(&self.pool)
        .await?;
        Ok(at.flatten())
    }

    /// `deleting` instances whose grace period started before `before` (unix ms).
    pub async fn instances_due_for_archive(&self, before: i64) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE status = 'deleting' AND deleted_at IS NOT NULL \
             AND deleted_at < $1 ORDER BY deleted_at"
        );
        let rows = sqlx::query(&sql).bind(before).fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }
}
