//! Sessions, refresh tokens (rotated, reuse detected) and one-time email tokens.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::models::*;
use crate::secrets::TokenHash;
use crate::time::now_ms;
use crate::{id_str, opt_uuid_col, parse_col, uuid_col, Store};

const SESSION_COLS: &str =
    "id, user_id, created_at, expires_at, revoked_at, last_seen_at, ip, user_agent";

pub(crate) fn session_from_row(row: &AnyRow) -> Result<Session> {
    Ok(Session {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

const EMAIL_TOKEN_COLS: &str = "id, user_id, purpose, email, created_at, expires_at, used_at";

fn email_token_from_row(row: &AnyRow) -> Result<EmailToken> {
    Ok(EmailToken {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        purpose: parse_col(row, "purpose")?,
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
    })
}

impl Store {
    /// Opens a session for a user, valid until `expires_at` (unix ms).
    pub async fn create_session(
        &self,
        user_id: Uuid,
        expires_at: i64,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<Session> {
        let sql = format!(
            "INSERT INTO sessions (id, user_id, created_at, expires_at, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {SESSION_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(id_str(user_id))
            .bind(now_ms())
            .bind(expires_at)
            .bind(ip)
            .bind(user_agent)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::NotFound("user")
                }
                _ => StoreError::Database(e),
            })?;
        session_from_row(&row)
    }

    /// A session by id, whatever its state (check [`Session::is_active`]).
    pub async fn get_session(&self, id: Uuid) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id_str(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// A user's sessions that are neither revoked nor expired, newest first.
    pub async fn list_active_sessions(&self, user_id: Uuid) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 ORDER BY created_at DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(id_str(user_id))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Records activity on a session (and optionally extends it).
    pub async fn touch_session(&self, id: Uuid, new_expires_at: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET last_seen_at = $2, expires_at = COALESCE($3, expires_at) \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id_str(id))
        .bind(now_ms())
        .bind(new_expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes one session; false when it was unknown or already revoked.
    pub async fn revoke_session(&self, id: Uuid) -> Result<bool> {
        let r =
            sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id_str(id))
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Revokes every unrevoked session of a user except `except` (e.g. the current one after
    /// a password change); returns the ids revoked.
    pub async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL \
             AND id <> $3 RETURNING id",
        )
        .bind(id_str(user_id))
        .bind(now_ms())
        .bind(except.map(id_str).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|s| Uuid::parse_str(s).map_err(|_| StoreError::Corrupt("sessions.id".into())))
            .collect()
    }

    /// Stores a new refresh token (its hash) for a session.
    pub async fn create_refresh_token(
        &self,
        session_id: Uuid,
        token: &TokenHash,
        expires_at: i64,
    ) -> Result<RefreshToken> {
        let id = Uuid::new_v4();
        let now = now_ms();
        let user_id: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = $1")
                .bind(id_str(session_id))
                .fetch_optional(&self.pool)
                .await?;
        let user_id = user_id.ok_or(StoreError::NotFound("session"))?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_str(id))
        .bind(id_str(session_id))
        .bind(token.as_str())
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound("session")
            }
            _ => StoreError::Database(e),
        })?;
        Ok(RefreshToken {
            id,
            session_id,
            user_id: Uuid::parse_str(&user_id)
                .map_err(|_| StoreError::Corrupt("sessions.user_id".into()))?,
            created_at: now,
            expires_at,
            rotated_at: None,
            replaced_by: None,
        })
    }

    /// Rotates a refresh token: `old` must be current (not rotated, not expired, its session
    /// active); it is marked rotated and `new` (expiring at `new_expires_at`) replaces it, in
    /// one transaction. Errors: `TokenUnknown`, `TokenExpired`, `SessionInvalid`, and
    /// `RefreshTokenReuse` when `old` had already been rotated: the session is then revoked.
    /// Two concurrent rotations of one token count as reuse (strict, as OAuth's BCP advises).
    pub async fn rotate_refresh_token(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        new_expires_at: i64,
    ) -> Result<RefreshToken> {
        let now = now_ms();
        let new_id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        // The first statement writes, so SQLite takes its write lock (waiting on busy) before
        // reading anything.
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $2, replaced_by = $3 \
             WHERE token_hash = $1 AND rotated_at IS NULL AND expires_at > $2 \
             AND session_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL AND expires_at > $2) \
             RETURNING session_id",
        )
        .bind(old.as_str())
        .bind(now)
        .bind(id_str(new_id))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = claimed {
            let session_id = uuid_col(&row, "session_id")?;
            sqlx::query(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_str(new_id))
            .bind(id_str(session_id))
            .bind(new.as_str())
            .bind(now)
            .bind(new_expires_at)
            .execute(&mut *tx)
            .await?;
            let user_id: String = sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = $1")
                .bind(id_str(session_id))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshToken {
                id: new_id,
                session_id,
                user_id: Uuid::parse_str(&user_id)
                    .map_err(|_| StoreError::Corrupt("sessions.user_id".into()))?,
                created_at: now,
                expires_at: new_expires_at,
                rotated_at: None,
                replaced_by: None,
            });
        }
        tx.rollback().await?;

        // Not claimable: say why.
        let row = sqlx::query(
            "SELECT rt.session_id, rt.rotated_at, rt.expires_at, s.user_id, \
             s.revoked_at AS s_revoked, s.expires_at AS s_expires \
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id \
             WHERE rt.token_hash = $1",
        )
        .bind(old.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::TokenUnknown);
        };
        let session_id = uuid_col(&row, "session_id")?;
        let user_id = uuid_col(&row, "user_id")?;
        let rotated_at: Option<i64> = row.try_get("rotated_at")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let s_revoked: Option<i64> = row.try_get("s_revoked")?;
        let s_expires: i64 = row.try_get("s_expires")?;
        if rotated_at.is_some() {
            self.revoke_session(session_id).await?;
            tracing::warn!(%session_id, %user_id, "refresh token reuse detected; session revoked");
            return Err(StoreError::RefreshTokenReuse {
                session_id,
                user_id,
            });
        }
        if s_revoked.is_some() || s_expires <= now {
            return Err(StoreError::SessionInvalid);
        }
        if expires_at <= now {
            return Err(StoreError::TokenExpired);
        }
        // Claimable now (a concurrent change in between): treat as a race lost.
        Err(StoreError::TokenUnknown)
    }

    /// Looks up a refresh token by hash, whatever its state.
    pub async fn get_refresh_token(&self, token: &TokenHash) -> Result<Option<RefreshToken>> {
        let row = sqlx::query(
            "SELECT rt.id, rt.session_id, s.user_id, rt.created_at, rt.expires_at, rt.rotated_at, \
             rt.replaced_by FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id \
             WHERE rt.token_hash = $1",
        )
        .bind(token.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(RefreshToken {
                id: uuid_col(&row, "id")?,
                session_id: uuid_col(&row, "session_id")?,
                user_id: uuid_col(&row, "user_id")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                rotated_at: row.try_get("rotated_at")?,
                replaced_by: opt_uuid_col(&row, "replaced_by")?,
            })
        })
        .transpose()
    }

    /// Stores a one-time email token (its hash) for `email`, valid until `expires_at`.
    pub async fn create_email_token(
        &self,
        user_id: Uuid,
        purpose: EmailTokenPurpose,
        email: &str,
        token: &TokenHash,
        expires_at: i64,
    ) -> Result<EmailToken> {
        let sql = format!(
            "INSERT INTO email_tokens (id, user_id, purpose, email, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {EMAIL_TOKEN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(id_str(user_id))
            .bind(purpose.as_str())
            .bind(crate::repo::accounts::normalize_email(email))
            .bind(token.as_str())
            .bind(now_ms())
            .bind(expires_at)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::NotFound("user")
                }
                _ => StoreError::Database(e),
            })?;
        email_token_from_row(&row)
    }

    /// Uses a one-time email token of the given purpose, atomically: `TokenUnknown` (no such
    /// token for this purpose), `TokenUsed`, `TokenExpired`; on success it is marked used.
    pub async fn consume_email_token(
        &self,
        token: &TokenHash,
        purpose: EmailTokenPurpose,
    ) -> Result<EmailToken> {
        let now = now_ms();
        let sql = format!(
            "UPDATE email_tokens SET used_at = $3 WHERE token_hash = $1 AND purpose = $2 \
             AND used_at IS NULL AND expires_at > $3 RETURNING {EMAIL_TOKEN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(token.as_str())
            .bind(purpose.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return email_token_from_row(&row);
        }
        let sql = format!(
            "SELECT {EMAIL_TOKEN_COLS} FROM email_tokens WHERE token_hash = $1 AND purpose = $2"
        );
        let row = sqlx::query(&sql)
            .bind(token.as_str())
            .bind(purpose.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::TokenUnknown);
        };
        let t = email_token_from_row(&row)?;
        if t.used_at.is_some() {
            Err(StoreError::TokenUsed)
        } else {
            Err(StoreError::TokenExpired)
        }
    }

    /// Looks up an email token without consuming it, whatever its state.
    pub async fn peek_email_token(
        &self,
        token: &TokenHash,
        purpose: EmailTokenPurpose,
    ) -> Result<Option<EmailToken>> {
        let sql = format!(
            "SELECT {EMAIL_TOKEN_COLS} FROM email_tokens WHERE token_hash = $1 AND purpose = $2"
        );
        let row = sqlx::query(&sql)
            .bind(token.as_str())
            .bind(purpose.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(email_token_from_row).transpose()
    }

    /// Marks all unused tokens of a purpose for a user as used (e.g. after a reset, or when
    /// sending a new verification link); returns how many.
    pub async fn invalidate_email_tokens(
        &self,
        user_id: Uuid,
        purpose: EmailTokenPurpose,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE email_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 \
             AND used_at IS NULL",
        )
        .bind(id_str(user_id))
        .bind(purpose.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Deletes expired sessions' tokens and expired/used email tokens older than `before`;
    /// returns how many rows went.
    pub async fn purge_expired_tokens(&self, before: i64) -> Result<u64> {
        let a = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM email_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        let c = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected() + c.rows_affected())
    }
}
