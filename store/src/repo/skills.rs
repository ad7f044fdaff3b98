//! Installed skills per instance: which, from where, enabled or not, with their config. Secret
//! config fields are sealed together under the master key, as one JSON object; the API lists
//! their names only.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Conflict, Result, StoreError};
use crate::models::{InstalledSkill, SkillSource};
use crate::secrets::Keyring;
use crate::time::now_ms;
use crate::{id_str, parse_col, Store, Zeroizing};

const SKILL_COLS: &str = "skill_id, version, source, enabled, disabled_reason, config, \
    secrets_sealed, installed_at, updated_at";

/// Secret config values of one skill, opened: field name → value.
pub type SkillSecrets = BTreeMap<String, Zeroizing<String>>;

/// What a new installation holds.
#[derive(Debug, Clone, Copy)]
pub struct NewSkill<'a> {
    /// The instance it is installed in.
    pub instance_id: Uuid,
    /// The catalogue id (the bundled skill's name, or the registry slug).
    pub skill_id: &'a str,
    /// The version installed.
    pub version: &'a str,
    /// Where it came from.
    pub source: SkillSource,
    /// Plain config fields.
    pub config: &'a Map<String, Value>,
    /// Secret config fields, sealed before they are stored.
    pub secrets: &'a BTreeMap<String, String>,
    /// Skills the instance may have enabled at once, this one included; 0: unlimited.
    pub cap: u32,
}

/// A change to an installed skill; `None` leaves a part as it is.
#[derive(Debug, Default)]
pub struct SkillChange<'a> {
    /// Plain config fields to set (merged over the stored ones; `null` removes a field).
    pub config: Option<&'a Map<String, Value>>,
    /// Secret fields to set (merged over the stored ones; an empty value removes one).
    pub secrets: Option<&'a BTreeMap<String, String>>,
    /// Enable or disable it.
    pub enabled: Option<bool>,
    /// The tier's cap, checked when the change enables the skill; 0: unlimited.
    pub cap: u32,
}

fn open_secrets(sealed: Option<&str>, keyring: &Keyring) -> Result<BTreeMap<String, String>> {
    let Some(sealed) = sealed.filter(|s| !s.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let opened = keyring.open_str(sealed)?;
    serde_json::from_str(&opened)
        .map_err(|_| StoreError::Corrupt("skills_installed.secrets_sealed".into()))
}

fn seal_secrets(secrets: &BTreeMap<String, String>, keyring: &Keyring) -> Result<Option<String>> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let text = Zeroizing::new(
        serde_json::to_string(secrets).map_err(|e| StoreError::Invalid(e.to_string()))?,
    );
    Ok(Some(keyring.seal_str(&text)?))
}

fn skill_from_row(row: &AnyRow, keyring: &Keyring) -> Result<(InstalledSkill, SkillSecrets)> {
    let config: Option<String> = row.try_get("config")?;
    let config = match config.as_deref() {
        None | Some("") => Map::new(),
        Some(text) => serde_json::from_str(text)
            .map_err(|_| StoreError::Corrupt("skills_installed.config".into()))?,
    };
    let sealed: Option<String> = row.try_get("secrets_sealed")?;
    let secrets: SkillSecrets = open_secrets(sealed.as_deref(), keyring)?
        .into_iter()
        .map(|(k, v)| (k, Zeroizing::new(v)))
        .collect();
    let enabled: i64 = row.try_get("enabled")?;
    Ok((
        InstalledSkill {
            skill_id: row.try_get("skill_id")?,
            version: row.try_get("version")?,
            source: parse_col(row, "source")?,
            enabled: enabled != 0,
            disabled_reason: row.try_get("disabled_reason")?,
            config,
            secret_fields: secrets.keys().cloned().collect(),
            installed_at: row.try_get("installed_at")?,
            updated_at: row.try_get("updated_at")?,
        },
        secrets,
    ))
}

/// Starts a transaction's writes by locking the instance's row (false: no such instance), so that
/// a count and the write it allows cannot interleave with another node's: a row lock on
/// PostgreSQL, and on SQLite the database's write lock taken by the first statement (a read
/// first would fail with `SQLITE_BUSY_SNAPSHOT` once another writer commits).
async fn lock_instance(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance_id: Uuid,
) -> Result<bool> {
    let r = sqlx::query("UPDATE instances SET updated_at = updated_at WHERE id = $1")
        .bind(id_str(instance_id))
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

impl Store {
    /// The skills installed in an instance, oldest first, with the names (never the values) of
    /// their secret fields.
    pub async fn skills_of(
        &self,
        instance_id: Uuid,
        keyring: &Keyring,
    ) -> Result<Vec<InstalledSkill>> {
        Ok(self
            .skills_with_secrets(instance_id, keyring)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// The skills installed in an instance, oldest first, with their secret values opened: for
    /// the instance's config only. Never log or return them to a client.
    pub async fn skills_with_secrets(
        &self,
        instance_id: Uuid,
        keyring: &Keyring,
    ) -> Result<Vec<(InstalledSkill, SkillSecrets)>> {
        let sql = format!(
            "SELECT {SKILL_COLS} FROM skills_installed WHERE instance_id = $1 \
             ORDER BY installed_at, skill_id"
        );
        let rows = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| skill_from_row(r, keyring)).collect()
    }

    /// Records an installation, enabled. Already installed → `Conflict(Skill)`; the instance at
    /// its cap of enabled skills → `LimitReached`; an unknown instance → `NotFound("instance")`.
    /// The count and the insert are one transaction holding the instance's row
    /// ([`lock_instance`]), so concurrent installs, on any node, cannot pass the cap.
    pub async fn install_skill(
        &self,
        new: &NewSkill<'_>,
        keyring: &Keyring,
    ) -> Result<InstalledSkill> {
        let sealed = seal_secrets(new.secrets, keyring)?;
        let config =
            serde_json::to_string(new.config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        if !lock_instance(&mut tx, new.instance_id).await? {
            return Err(StoreError::NotFound("instance"));
        }
        let enabled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM skills_installed WHERE instance_id = $1 AND enabled = 1",
        )
        .bind(id_str(new.instance_id))
        .fetch_one(&mut *tx)
        .await?;
        if new.cap > 0 && enabled >= i64::from(new.cap) {
            return Err(StoreError::LimitReached {
                what: "skills",
                cap: new.cap,
            });
        }
        let sql = format!(
            "INSERT INTO skills_installed (id, instance_id, skill_id, version, source, enabled, \
             config, secrets_sealed, installed_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $8) RETURNING {SKILL_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(id_str(new.instance_id))
            .bind(new.skill_id)
            .bind(new.version)
            .bind(new.source.as_str())
            .bind(config)
            .bind(sealed)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| crate::error::conflict_or(e, Conflict::Skill))?;
        let (skill, _) = skill_from_row(&row, keyring)?;
        tx.commit().await?;
        Ok(skill)
    }

    /// Changes an installed skill; `Ok(None)` when it is not installed. Enabling it past the cap
    /// → `LimitReached` (checked in the same transaction as the write).
    pub async fn update_skill(
        &self,
        instance_id: Uuid,
        skill_id: &str,
        change: &SkillChange<'_>,
        keyring: &Keyring,
    ) -> Result<Option<InstalledSkill>> {
        let mut tx = self.pool.begin().await?;
        lock_instance(&mut tx, instance_id).await?;
        let sql = format!(
            "SELECT {SKILL_COLS} FROM skills_installed WHERE instance_id = $1 AND skill_id = $2"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .bind(skill_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let (mut skill, secrets) = skill_from_row(&row, keyring)?;
        if let Some(config) = change.config {
            for (k, v) in config {
                if v.is_null() {
                    skill.config.remove(k);
                } else {
                    skill.config.insert(k.clone(), v.clone());
                }
            }
        }
        let mut secrets: BTreeMap<String, String> = secrets
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        if let Some(new) = change.secrets {
            for (k, v) in new {
                if v.is_empty() {
                    secrets.remove(k);
                } else {
                    secrets.insert(k.clone(), v.clone());
                }
            }
        }
        if change.enabled == Some(true) && !skill.enabled && change.cap > 0 {
            let enabled: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM skills_installed WHERE instance_id = $1 AND enabled = 1",
            )
            .bind(id_str(instance_id))
            .fetch_one(&mut *tx)
            .await?;
            if enabled >= i64::from(change.cap) {
                return Err(StoreError::LimitReached {
                    what: "skills",
                    cap: change.cap,
                });
            }
        }
        let enabled = change.enabled.unwrap_or(skill.enabled);
        // A skill enabled again loses the reason it was disabled for.
        let reason = if enabled {
            None
        } else {
            skill.disabled_reason.clone()
        };
        let sealed = seal_secrets(&secrets, keyring)?;
        secrets.values_mut().for_each(zeroize::Zeroize::zeroize);
        let config =
            serde_json::to_string(&skill.config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sql = format!(
            "UPDATE skills_installed SET config = $3, secrets_sealed = $4, enabled = $5, \
             disabled_reason = $6, updated_at = $7, disabled_by_tier = 0 \
             WHERE instance_id = $1 AND skill_id = $2 RETURNING {SKILL_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .bind(skill_id)
            .bind(config)
            .bind(sealed)
            .bind(i64::from(enabled))
            .bind(reason)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let (skill, _) = skill_from_row(&row, keyring)?;
        tx.commit().await?;
        Ok(Some(skill))
    }

    /// Removes an installed skill (its sealed secrets with it); false when it was not installed.
    pub async fn remove_skill(&self, instance_id: Uuid, skill_id: &str) -> Result<bool> {
        let r =
            sqlx::query("DELETE FROM skills_installed WHERE instance_id = $1 AND skill_id = $2")
                .bind(id_str(instance_id))
                .bind(skill_id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Disables the newest enabled skills of an instance past `cap` (after a downgrade), with
    /// `reason`; returns the ids disabled, newest first. `cap` 0: unlimited, nothing changes.
    pub async fn cap_skills(
        &self,
        instance_id: Uuid,
        cap: u32,
        reason: &str,
    ) -> Result<Vec<String>> {
        if cap == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        lock_instance(&mut tx, instance_id).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT skill_id FROM skills_installed WHERE instance_id = $1 AND enabled = 1 \
             ORDER BY installed_at DESC, skill_id DESC",
        )
        .bind(id_str(instance_id))
        .fetch_all(&mut *tx)
        .await?;
        let excess = ids.len().saturating_sub(cap as usize);
        let disabled: Vec<String> = ids.into_iter().take(excess).collect();
        let now = now_ms();
        for id in &disabled {
            sqlx::query(
                "UPDATE skills_installed SET enabled = 0, disabled_reason = $3, updated_at = $4, \
                 disabled_by_tier = 1 WHERE instance_id = $1 AND skill_id = $2",
            )
            .bind(id_str(instance_id))
            .bind(id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(disabled)
    }

    /// Enables again the skills a tier's cap disabled ([`Store::cap_skills`]), oldest first,
    /// while the instance stays within `cap` (0: unlimited); the ids enabled. Skills the owner
    /// disabled stay disabled.
    pub async fn restore_capped_skills(&self, instance_id: Uuid, cap: u32) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        lock_instance(&mut tx, instance_id).await?;
        let enabled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM skills_installed WHERE instance_id = $1 AND enabled = 1",
        )
        .bind(id_str(instance_id))
        .fetch_one(&mut *tx)
        .await?;
        let capped: Vec<String> = sqlx::query_scalar(
            "SELECT skill_id FROM skills_installed WHERE instance_id = $1 AND enabled = 0 \
             AND disabled_by_tier = 1 ORDER BY installed_at, skill_id",
        )
        .bind(id_str(instance_id))
        .fetch_all(&mut *tx)
        .await?;
        let room = if cap == 0 {
            capped.len()
        } else {
            (cap as usize).saturating_sub(enabled as usize)
        };
        let restored: Vec<String> = capped.into_iter().take(room).collect();
        let now = now_ms();
        for id in &restored {
            sqlx::query(
                "UPDATE skills_installed SET enabled = 1, disabled_reason = NULL, \
                 disabled_by_tier = 0, updated_at = $3 WHERE instance_id = $1 AND skill_id = $2",
            )
            .bind(id_str(instance_id))
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(restored)
    }
}
