//! Users, MFA, account deletion and the security log.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{conflict_or, Conflict, Result, StoreError};
use crate::models::*;
use crate::secrets::{sha256_hex, Keyring};
use crate::time::now_ms;
use crate::{id_str, opt_uuid_col, parse_col, uuid_col, Store, Tier, Zeroizing};

pub(crate) const USER_COLS: &str = "id, email, password_hash, name, tier, role, \
    email_verified_at, timezone, language, avatar_url, mfa_enabled_at, deletion_requested_at, \
    created_at, updated_at";

pub(crate) fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: uuid_col(row, "id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        name: row.try_get("name")?,
        tier: parse_col(row, "tier")?,
        role: parse_col(row, "role")?,
        email_verified_at: row.try_get("email_verified_at")?,
        timezone: row.try_get("timezone")?,
        language: row.try_get("language")?,
        avatar_url: row.try_get("avatar_url")?,
        mfa_enabled_at: row.try_get("mfa_enabled_at")?,
        deletion_requested_at: row.try_get("deletion_requested_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn security_event_from_row(row: &AnyRow) -> Result<SecurityEvent> {
    Ok(SecurityEvent {
        id: row.try_get("id")?,
        user_id: opt_uuid_col(row, "user_id")?,
        event: row.try_get("event")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        detail: row.try_get("detail")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Emails are compared case-insensitively: stored trimmed and lower case.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn not_found_if_zero(rows: u64, what: &'static str) -> Result<()> {
    if rows == 0 {
        Err(StoreError::NotFound(what))
    } else {
        Ok(())
    }
}

impl Store {
    /// Creates a user. A taken email (any case) → `Conflict(Email)`.
    pub async fn create_user(&self, new: &NewUser<'_>) -> Result<User> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO users (id, email, password_hash, name, tier, role, timezone, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             RETURNING {USER_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(normalize_email(new.email))
            .bind(new.password_hash)
            .bind(new.name)
            .bind(new.tier.as_str())
            .bind(new.role.as_str())
            .bind(new.timezone.unwrap_or("UTC"))
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| conflict_or(e, Conflict::Email))?;
        user_from_row(&row)
    }

    /// A user by id.
    pub async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// A user by email (any case).
    pub async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE email = $1");
        let row = sqlx::query(&sql)
            .bind(normalize_email(email))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// All users, oldest first (operator views; paginate with `limit`/`offset`).
    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Vec<User>> {
        let sql =
            format!("SELECT {USER_COLS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2");
        let rows = sqlx::query(&sql)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Updates profile fields. A new email un-verifies the account; a taken one →
    /// `Conflict(Email)`. Unknown user → `NotFound`.
    pub async fn update_profile(&self, id: Uuid, update: &ProfileUpdate<'_>) -> Result<User> {
        let email = update.email.map(normalize_email);
        // $2/$4/$6 flag whether to set the field; a nullable field can be cleared.
        let sql = format!(
            "UPDATE users SET \
               name = CASE WHEN $2 = 1 THEN $3 ELSE name END, \
               email_verified_at = CASE WHEN $4 = 1 AND email <> $5 THEN NULL ELSE email_verified_at END, \
               email = CASE WHEN $4 = 1 THEN $5 ELSE email END, \
               timezone = COALESCE($6, timezone), \
               avatar_url = CASE WHEN $7 = 1 THEN $8 ELSE avatar_url END, \
               updated_at = $9, \
               language = COALESCE($10, language) \
             WHERE id = $1 RETURNING {USER_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .bind(i64::from(update.name.is_some()))
            .bind(update.name.flatten())
            .bind(i64::from(email.is_some()))
            .bind(email.clone().unwrap_or_default())
            .bind(update.timezone)
            .bind(i64::from(update.avatar_url.is_some()))
            .bind(update.avatar_url.flatten())
            .bind(now_ms())
            .bind(update.language)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| conflict_or(e, Conflict::Email))?;
        match row {
            Some(row) => user_from_row(&row),
            None => Err(StoreError::NotFound("user")),
        }
    }

    /// Replaces the password hash (bcrypt, made by the caller).
    pub async fn update_password_hash(&self, id: Uuid, password_hash: &str) -> Result<()> {
        let r = sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
            .bind(id_str(id))
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// Sets the tier (its quotas live in config). A change of tier starts a new billing period
    /// now (the billing anchor); the same tier keeps it.
    pub async fn set_user_tier(&self, id: Uuid, tier: Tier) -> Result<()> {
        let r = sqlx::query(
            "UPDATE users SET billing_anchor_at = CASE WHEN tier = $2 THEN billing_anchor_at \
             ELSE $3 END, tier = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id_str(id))
        .bind(tier.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// Sets the role.
    pub async fn set_user_role(&self, id: Uuid, role: Role) -> Result<()> {
        let r = sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
            .bind(id_str(id))
            .bind(role.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// Marks the email verified (keeps the first verification time) or unverified.
    pub async fn set_email_verified(&self, id: Uuid, verified: bool) -> Result<()> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE users SET email_verified_at = CASE WHEN $2 = 1 \
               THEN COALESCE(email_verified_at, $3) ELSE NULL END, updated_at = $3 WHERE id = $1",
        )
        .bind(id_str(id))
        .bind(i64::from(verified))
        .bind(now)
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// Turns MFA on: the TOTP secret is sealed under the keyring's current key; recovery
    /// codes are stored as SHA-256 hashes only. Replaces any previous MFA setup.
    pub async fn enable_mfa(
        &self,
        id: Uuid,
        totp_secret: &str,
        recovery_codes: &[String],
        keyring: &Keyring,
    ) -> Result<()> {
        let sealed = keyring.seal_str(totp_secret)?;
        let hashes = recovery_codes
            .iter()
            .map(|c| sha256_hex(c.trim()))
            .collect::<Vec<_>>()
            .join(" ");
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE users SET mfa_secret = $2, mfa_recovery_codes = $3, mfa_enabled_at = $4, \
             updated_at = $4 WHERE id = $1",
        )
        .bind(id_str(id))
        .bind(sealed)
        .bind(hashes)
        .bind(now)
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// Turns MFA off and forgets the secret and recovery codes.
    pub async fn disable_mfa(&self, id: Uuid) -> Result<()> {
        let r = sqlx::query(
            "UPDATE users SET mfa_secret = NULL, mfa_recovery_codes = NULL, \
             mfa_enabled_at = NULL, updated_at = $2 WHERE id = $1",
        )
        .bind(id_str(id))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "user")
    }

    /// The TOTP secret in plaintext (to check a code), or `None` when MFA is off.
    pub async fn mfa_secret(
        &self,
        id: Uuid,
        keyring: &Keyring,
    ) -> Result<Option<Zeroizing<String>>> {
        let sealed: Option<Option<String>> =
            sqlx::query_scalar("SELECT mfa_secret FROM users WHERE id = $1")
                .bind(id_str(id))
                .fetch_optional(&self.pool)
                .await?;
        match sealed.flatten() {
            Some(s) => Ok(Some(keyring.open_str(&s)?)),
            None => Ok(None),
        }
    }

    /// Consumes a recovery code: true (and the code is gone) when it matched an unused one.
    pub async fn use_mfa_recovery_code(&self, id: Uuid, code: &str) -> Result<bool> {
        let hash = sha256_hex(code.trim());
        // Compare-and-swap on the whole list, retried if another request changed it.
        for _ in 0..5 {
            let current: Option<Option<String>> =
                sqlx::query_scalar("SELECT mfa_recovery_codes FROM users WHERE id = $1")
                    .bind(id_str(id))
                    .fetch_optional(&self.pool)
                    .await?;
            let Some(current) = current.flatten() else {
                return Ok(false);
            };
            let codes: Vec<&str> = current.split_whitespace().collect();
            let Some(pos) = codes.iter().position(|c| *c == hash) else {
                return Ok(false);
            };
            let remaining = codes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != pos)
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
                .join(" ");
            let r = sqlx::query(
                "UPDATE users SET mfa_recovery_codes = $3, updated_at = $4 \
                 WHERE id = $1 AND mfa_recovery_codes = $2",
            )
            .bind(id_str(id))
            .bind(&current)
            .bind(remaining)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            if r.rows_affected() == 1 {
                return Ok(true);
            }
        }
        Err(StoreError::Invalid(
            "recovery code update kept racing".into(),
        ))
    }

    /// How many unused recovery codes remain.
    pub async fn mfa_recovery_codes_left(&self, id: Uuid) -> Result<usize> {
        let current: Option<Option<String>> =
            sqlx::query_scalar("SELECT mfa_recovery_codes FROM users WHERE id = $1")
                .bind(id_str(id))
                .fetch_optional(&self.pool)
                .await?;
        Ok(current
            .flatten()
            .map(|c| c.split_whitespace().count())
            .unwrap_or(0))
    }

    /// Starts the deletion grace period (keeps the first request time); returns its start.
    pub async fn request_account_deletion(&self, id: Uuid) -> Result<i64> {
        let now = now_ms();
        let at: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET deletion_requested_at = COALESCE(deletion_requested_at, $2), \
             updated_at = $2 WHERE id = $1 RETURNING deletion_requested_at",
        )
        .bind(id_str(id))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        at.ok_or(StoreError::NotFound("user"))
    }

    /// Undoes a deletion request; false when none was pending.
    pub async fn cancel_account_deletion(&self, id: Uuid) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET deletion_requested_at = NULL, updated_at = $2 \
             WHERE id = $1 AND deletion_requested_at IS NOT NULL",
        )
        .bind(id_str(id))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Users whose deletion was requested before `requested_before` (e.g. now − 30 days).
    pub async fn users_due_for_deletion(&self, requested_before: i64) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE deletion_requested_at IS NOT NULL \
             AND deletion_requested_at < $1 ORDER BY deletion_requested_at"
        );
        let rows = sqlx::query(&sql)
            .bind(requested_before)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Deletes a user and, by cascade, everything that belongs to them. False when absent.
    pub async fn delete_user(&self, id: Uuid) -> Result<bool> {
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id_str(id))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Appends a security log entry; returns it.
    pub async fn append_security_event(&self, ev: &NewSecurityEvent<'_>) -> Result<SecurityEvent> {
        let row = sqlx::query(
            "INSERT INTO security_log (user_id, event, ip, user_agent, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, user_id, event, ip, user_agent, detail, created_at",
        )
        .bind(ev.user_id.map(id_str))
        .bind(ev.event)
        .bind(ev.ip)
        .bind(ev.user_agent)
        .bind(ev.detail)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        security_event_from_row(&row)
    }

    /// A user's security log, newest first; `before_id` pages backwards.
    pub async fn list_security_events(
        &self,
        user_id: Uuid,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<SecurityEvent>> {
        let rows = sqlx::query(
            "SELECT id, user_id, event, ip, user_agent, detail, created_at FROM security_log \
             WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(id_str(user_id))
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(security_event_from_row).collect()
    }
}
