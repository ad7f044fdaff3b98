//! Instances: the records behind the edge's route table.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{conflict_or, Conflict, Result, StoreError};
use crate::models::*;
use crate::time::now_ms;
use crate::{id_str, parse_col, uuid_col, Backend, Store, Tier};

pub(crate) const INSTANCE_COLS: &str = "id, user_id, subdomain, status, tier, node_id, node_ip, \
    container_id, container_ip, upstream, soul_md, timezone, created_at, updated_at, last_active_at, \
    billing_anchor_at, wake_at, sleep_lease, preset, gateway_id";

pub(crate) fn instance_from_row(row: &AnyRow) -> Result<Instance> {
    Ok(Instance {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        subdomain: row.try_get("subdomain")?,
        status: parse_col(row, "status")?,
        tier: parse_col(row, "tier")?,
        node_id: row.try_get("node_id")?,
        node_ip: row.try_get("node_ip")?,
        container_id: row.try_get("container_id")?,
        container_ip: row.try_get("container_ip")?,
        upstream: row.try_get("upstream")?,
        soul_md: row.try_get("soul_md")?,
        timezone: row.try_get("timezone")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_active_at: row.try_get("last_active_at")?,
        billing_anchor_at: row.try_get("billing_anchor_at")?,
        wake_at: row.try_get("wake_at")?,
        sleep_lease: row.try_get("sleep_lease")?,
        preset: row.try_get("preset")?,
        gateway_id: row.try_get("gateway_id")?,
    })
}

/// Subdomains are compared case-insensitively: stored trimmed and lower case.
pub fn normalize_subdomain(sub: &str) -> String {
    sub.trim().to_ascii_lowercase()
}

impl Store {
    /// Creates an instance. A taken subdomain (any case) → `Conflict(Subdomain)`; an unknown
    /// user → `NotFound("user")`; on a tier with one instance ([`Tier::one_instance`]), a user who
    /// already has an instance → `Conflict(InstanceExists)`. The check and the insert are one transaction holding the
    /// user's row (PostgreSQL: `FOR UPDATE`; SQLite serializes writers), so concurrent creates
    /// on several edge nodes cannot both pass it.
    pub async fn create_instance(&self, new: &NewInstance<'_>) -> Result<Instance> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(id_str(new.user_id))
                .fetch_optional(&mut *tx)
                .await?;
        }
        let sql = format!(
            "INSERT INTO instances (id, user_id, subdomain, status, tier, soul_md, timezone, \
             created_at, updated_at, billing_anchor_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8, billing_anchor_at FROM users \
             WHERE id = $2 AND NOT ($9 AND EXISTS (SELECT 1 FROM instances WHERE user_id = $2)) \
             RETURNING {INSTANCE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(id_str(new.user_id))
            .bind(normalize_subdomain(new.subdomain))
            .bind(new.status.as_str())
            .bind(new.tier.as_str())
            .bind(new.soul_md)
            .bind(new.timezone)
            .bind(now)
            .bind(new.tier.one_instance())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, Conflict::Subdomain))?;
        let Some(row) = row else {
            let user_exists = sqlx::query("SELECT 1 FROM users WHERE id = $1")
                .bind(id_str(new.user_id))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return Err(if user_exists {
                StoreError::Conflict(Conflict::InstanceExists)
            } else {
                StoreError::NotFound("user")
            });
        };
        let instance = instance_from_row(&row)?;
        tx.commit().await?;
        Ok(instance)
    }

    /// An instance by id.
    pub async fn get_instance(&self, id: Uuid) -> Result<Option<Instance>> {
        let sql = format!("SELECT {INSTANCE_COLS} FROM instances WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// A user's first (oldest) instance — the one on free and pro.
    pub async fn get_instance_by_user(&self, user_id: Uuid) -> Result<Option<Instance>> {
        Ok(self
            .list_instances_by_user(user_id)
            .await?
            .into_iter()
            .next())
    }

    /// All of a user's instances, oldest first.
    pub async fn list_instances_by_user(&self, user_id: Uuid) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(id_str(user_id))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// An instance by subdomain (any case).
    pub async fn get_instance_by_subdomain(&self, subdomain: &str) -> Result<Option<Instance>> {
        let sql = format!("SELECT {INSTANCE_COLS} FROM instances WHERE subdomain = $1");
        let row = sqlx::query(&sql)
            .bind(normalize_subdomain(subdomain))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// True when the subdomain (any case) is taken.
    pub async fn subdomain_taken(&self, subdomain: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE subdomain = $1")
            .bind(normalize_subdomain(subdomain))
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Every instance (to build the edge's route table at start), by subdomain.
    pub async fn list_instances(&self) -> Result<Vec<Instance>> {
        let sql = format!("SELECT {INSTANCE_COLS} FROM instances ORDER BY subdomain");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// Instances with one of the given statuses.
    pub async fn list_instances_by_status(&self, status: InstanceStatus) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE status = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn update_instance(
        &self,
        id: Uuid,
        set: &str,
        binds: Vec<Option<String>>,
    ) -> Result<Instance> {
        // `set` uses $3.. for `binds`; $1 is the id, $2 the time.
        let sql = format!(
            "UPDATE instances SET {set}, updated_at = $2 WHERE id = $1 RETURNING {INSTANCE_COLS}"
        );
        let mut q = sqlx::query(&sql).bind(id_str(id)).bind(now_ms());
        for b in binds {
            q = q.bind(b);
        }
        match q.fetch_optional(&self.pool).await? {
            Some(row) => instance_from_row(&row),
            None => Err(StoreError::NotFound("instance")),
        }
    }

    /// Sets the status (and clears `wake_at` and `sleep_lease`, which only a sleeping instance
    /// has).
    pub async fn update_instance_status(
        &self,
        id: Uuid,
        status: InstanceStatus,
    ) -> Result<Instance> {
        self.update_instance(
            id,
            "status = $3, wake_at = NULL, sleep_lease = NULL",
            vec![Some(status.as_str().to_owned())],
        )
        .await
    }

    /// Marks the instance `sleeping`, to be woken by the pool at `wake_at` (unix ms) for a
    /// scheduled job, or only by a request (`None`), holding its gateway's suspension `lease`
    /// (frozen instances) until then.
    pub async fn set_instance_sleeping(
        &self,
        id: Uuid,
        wake_at: Option<i64>,
        lease: Option<&str>,
    ) -> Result<Instance> {
        let sql = format!(
            "UPDATE instances SET status = 'sleeping', wake_at = $3, sleep_lease = $4, \
             updated_at = $2 WHERE id = $1 RETURNING {INSTANCE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .bind(now_ms())
            .bind(wake_at)
            .bind(lease)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => instance_from_row(&row),
            None => Err(StoreError::NotFound("instance")),
        }
    }

    /// Sets where the instance runs and the address the edge proxies to.
    pub async fn set_instance_placement(&self, id: Uuid, p: &Placement<'_>) -> Result<Instance> {
        let own = |v: Option<&str>| v.map(str::to_owned);
        self.update_instance(
            id,
            "node_id = $3, node_ip = $4, container_id = $5, container_ip = $6, upstream = $7",
            vec![
                own(p.node_id),
                own(p.node_ip),
                own(p.container_id),
                own(p.container_ip),
                own(p.upstream),
            ],
        )
        .await
    }

    /// Sets the identity the instance's gateway knows its owner by ([`Instance::gateway_id`]).
    pub async fn set_instance_gateway_id(&self, id: Uuid, gateway_id: &str) -> Result<Instance> {
        self.update_instance(id, "gateway_id = $3", vec![Some(gateway_id.to_owned())])
            .await
    }

    /// Sets only the upstream address (`host:port`), or clears it.
    pub async fn update_instance_upstream(
        &self,
        id: Uuid,
        upstream: Option<&str>,
    ) -> Result<Instance> {
        self.update_instance(id, "upstream = $3", vec![upstream.map(str::to_owned)])
            .await
    }

    /// Sets or clears SOUL.md.
    pub async fn update_instance_soul(&self, id: Uuid, soul_md: Option<&str>) -> Result<Instance> {
        self.update_instance(id, "soul_md = $3", vec![soul_md.map(str::to_owned)])
            .await
    }

    /// Applies an agent preset: records it and sets the SOUL.md it brings (`None` keeps the
    /// current one, which the owner chose to keep).
    pub async fn set_instance_preset(
        &self,
        id: Uuid,
        preset: &str,
        soul_md: Option<&str>,
    ) -> Result<Instance> {
        match soul_md {
            Some(soul) => {
                self.update_instance(
                    id,
                    "preset = $3, soul_md = $4",
                    vec![Some(preset.to_owned()), Some(soul.to_owned())],
                )
                .await
            }
            None => {
                self.update_instance(id, "preset = $3", vec![Some(preset.to_owned())])
                    .await
            }
        }
    }

    /// Moves the instance to another subdomain (stored lower case). A taken one (any case) →
    /// `Conflict(Subdomain)`.
    pub async fn update_instance_subdomain(&self, id: Uuid, subdomain: &str) -> Result<Instance> {
        let sql = format!(
            "UPDATE instances SET subdomain = $3, updated_at = $2 WHERE id = $1 RETURNING {INSTANCE_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .bind(now_ms())
            .bind(normalize_subdomain(subdomain))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| conflict_or(e, Conflict::Subdomain))?;
        match row {
            Some(row) => instance_from_row(&row),
            None => Err(StoreError::NotFound("instance")),
        }
    }

    /// Sets or clears the instance's timezone (IANA name).
    pub async fn update_instance_timezone(
        &self,
        id: Uuid,
        timezone: Option<&str>,
    ) -> Result<Instance> {
        self.update_instance(id, "timezone = $3", vec![timezone.map(str::to_owned)])
            .await
    }

    /// Sets the tier (resources follow in the pool), with the owner's billing anchor.
    pub async fn update_instance_tier(&self, id: Uuid, tier: Tier) -> Result<Instance> {
        self.update_instance(
            id,
            "tier = $3, billing_anchor_at = \
             (SELECT billing_anchor_at FROM users WHERE users.id = instances.user_id)",
            vec![Some(tier.as_str().to_owned())],
        )
        .await
    }

    /// Records activity (not on the hot path: the meters batch this).
    pub async fn touch_instance(&self, id: Uuid, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET last_active_at = $2 WHERE id = $1 \
             AND (last_active_at IS NULL OR last_active_at < $2)",
        )
        .bind(id_str(id))
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes an instance record (and its skills and usage); false when absent.
    pub async fn delete_instance(&self, id: Uuid) -> Result<bool> {
        let r = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id_str(id))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
