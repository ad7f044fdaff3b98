//! The warm pool's members: idle instances per node, claimed atomically at signup, safe under
//! concurrent signups and with several edge processes sharing one PostgreSQL.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::Result;
use crate::models::{PoolMember, PoolMemberState};
use crate::time::now_ms;
use crate::{id_str, opt_uuid_col, parse_col, uuid_col, Store};

const COLS: &str = "id, node_id, name, runtime_id, state, upstream, instance_id, created_at";

fn member_from_row(row: &AnyRow) -> Result<PoolMember> {
    Ok(PoolMember {
        id: uuid_col(row, "id")?,
        node_id: row.try_get("node_id")?,
        name: row.try_get("name")?,
        runtime_id: row.try_get("runtime_id")?,
        state: parse_col(row, "state")?,
        upstream: row.try_get("upstream")?,
        instance_id: opt_uuid_col(row, "instance_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// How many claim attempts race before giving up (each lost race means another claim won).
const CLAIM_ATTEMPTS: usize = 16;

impl Store {
    /// Records a member being created on `node_id`.
    pub async fn insert_pool_member(&self, node_id: &str, name: &str) -> Result<PoolMember> {
        let sql = format!(
            "INSERT INTO pool_members (id, node_id, name, state, created_at, updated_at) \
             VALUES ($1, $2, $3, 'creating', $4, $4) RETURNING {COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(node_id)
            .bind(name)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        member_from_row(&row)
    }

    /// Sets a member's runtime id (once the runtime created it).
    pub async fn set_pool_member_runtime_id(&self, id: Uuid, runtime_id: &str) -> Result<()> {
        sqlx::query("UPDATE pool_members SET runtime_id = $2, updated_at = $3 WHERE id = $1")
            .bind(id_str(id))
            .bind(runtime_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A created member answered ready at `upstream`: it joins the idle pool.
    pub async fn mark_pool_member_idle(&self, id: Uuid, upstream: &str) -> Result<()> {
        sqlx::query(
            "UPDATE pool_members SET state = 'idle', upstream = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id_str(id))
        .bind(upstream)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the oldest idle member of `node_id` for `instance_id`, atomically: two concurrent
    /// claims never get the same member. `None` when the node has no idle member.
    pub async fn claim_pool_member(
        &self,
        node_id: &str,
        instance_id: Uuid,
    ) -> Result<Option<PoolMember>> {
        // The re-check of `state = 'idle'` in the outer WHERE makes a lost race update no row
        // (PostgreSQL re-evaluates it after waiting for the winner's row lock; SQLite serialises
        // writers), and the loop tries the next idle member.
        let sql = format!(
            "UPDATE pool_members SET state = 'claimed', instance_id = $2, updated_at = $3 \
             WHERE id = (SELECT id FROM pool_members WHERE node_id = $1 AND state = 'idle' \
                         ORDER BY created_at, id LIMIT 1) \
               AND state = 'idle' RETURNING {COLS}"
        );
        for _ in 0..CLAIM_ATTEMPTS {
            let row = sqlx::query(&sql)
                .bind(node_id)
                .bind(id_str(instance_id))
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return member_from_row(&row).map(Some);
            }
            if self
                .count_pool_members(node_id, PoolMemberState::Idle)
                .await?
                == 0
            {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// How many members of `node_id` are in `state`.
    pub async fn count_pool_members(&self, node_id: &str, state: PoolMemberState) -> Result<i64> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM pool_members WHERE node_id = $1 AND state = $2")
            .bind(node_id)
            .bind(state.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Every member of `node_id`, oldest first.
    pub async fn list_pool_members(&self, node_id: &str) -> Result<Vec<PoolMember>> {
        let sql =
            format!("SELECT {COLS} FROM pool_members WHERE node_id = $1 ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .bind(node_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_from_row).collect()
    }

    /// The member serving `instance_id`, if any.
    pub async fn pool_member_for_instance(&self, instance_id: Uuid) -> Result<Option<PoolMember>> {
        let sql = format!("SELECT {COLS} FROM pool_members WHERE instance_id = $1");
        let row = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(member_from_row).transpose()
    }

    /// The member named `name` (its runtime name, `cd-<node>-<uuid>`), if any.
    pub async fn pool_member_by_name(&self, name: &str) -> Result<Option<PoolMember>> {
        let sql = format!("SELECT {COLS} FROM pool_members WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(member_from_row).transpose()
    }

    /// Updates a member's address (a restart may move it).
    pub async fn set_pool_member_upstream(&self, id: Uuid, upstream: &str) -> Result<()> {
        sqlx::query("UPDATE pool_members SET upstream = $2, updated_at = $3 WHERE id = $1")
            .bind(id_str(id))
            .bind(upstream)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a member; false when there was none. The caller removes its container or process.
    pub async fn delete_pool_member(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM pool_members WHERE id = $1")
            .bind(id_str(id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
