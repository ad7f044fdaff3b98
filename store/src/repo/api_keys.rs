//! Provider API keys: sealed at rest, shown masked, opened only for the LLM egress.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::models::ApiKey;
use crate::secrets::{mask, Keyring};
use crate::time::now_ms;
use crate::{id_str, uuid_col, Store, Zeroizing};

const API_KEY_COLS: &str =
    "id, user_id, provider, base_url, key_hint, is_active, created_at, updated_at";

pub(crate) fn api_key_from_row(row: &AnyRow) -> Result<ApiKey> {
    let active: i64 = row.try_get("is_active")?;
    Ok(ApiKey {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        provider: row.try_get("provider")?,
        base_url: row.try_get("base_url")?,
        masked: row.try_get("key_hint")?,
        is_active: active != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Sets a user's key for `provider` (one per provider; replaces an earlier one). The key
    /// is sealed under the keyring's current key; only the sealed text and a mask are stored.
    pub async fn upsert_api_key(
        &self,
        user_id: Uuid,
        provider: &str,
        base_url: Option<&str>,
        plaintext_key: &str,
        keyring: &Keyring,
    ) -> Result<ApiKey> {
        let sealed = keyring.seal_str(plaintext_key)?;
        let hint = mask(plaintext_key);
        let now = now_ms();
        let sql = format!(
            "INSERT INTO api_keys (id, user_id, provider, base_url, key_encrypted, key_hint, \
             is_active, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7) \
             ON CONFLICT (user_id, provider) DO UPDATE SET base_url = excluded.base_url, \
             key_encrypted = excluded.key_encrypted, key_hint = excluded.key_hint, \
             is_active = 1, updated_at = excluded.updated_at \
             RETURNING {API_KEY_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id_str(Uuid::new_v4()))
            .bind(id_str(user_id))
            .bind(provider)
            .bind(base_url)
            .bind(sealed)
            .bind(hint)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::NotFound("user")
                }
                _ => StoreError::Database(e),
            })?;
        api_key_from_row(&row)
    }

    /// A user's keys, masked, by provider name.
    pub async fn list_api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKey>> {
        let sql =
            format!("SELECT {API_KEY_COLS} FROM api_keys WHERE user_id = $1 ORDER BY provider");
        let rows = sqlx::query(&sql)
            .bind(id_str(user_id))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    /// Removes a user's key for `provider`; false when there was none.
    pub async fn delete_api_key(&self, user_id: Uuid, provider: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM api_keys WHERE user_id = $1 AND provider = $2")
            .bind(id_str(user_id))
            .bind(provider)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Enables or disables a key without removing it; false when there was none.
    pub async fn set_api_key_active(
        &self,
        user_id: Uuid,
        provider: &str,
        active: bool,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET is_active = $3, updated_at = $4 WHERE user_id = $1 AND provider = $2",
        )
        .bind(id_str(user_id))
        .bind(provider)
        .bind(i64::from(active))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The plaintext of an active key (for the edge to inject upstream), with its base URL.
    /// Never log or return it to a client.
    pub async fn open_api_key(
        &self,
        user_id: Uuid,
        provider: &str,
        keyring: &Keyring,
    ) -> Result<Option<(Zeroizing<String>, Option<String>)>> {
        let row = sqlx::query(
            "SELECT key_encrypted, base_url FROM api_keys WHERE user_id = $1 AND provider = $2 \
             AND is_active = 1",
        )
        .bind(id_str(user_id))
        .bind(provider)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: String = row.try_get("key_encrypted")?;
        let base_url: Option<String> = row.try_get("base_url")?;
        Ok(Some((keyring.open_str(&sealed)?, base_url)))
    }

    /// Re-seals every stored secret (provider keys, MFA secrets, certificate keys, ACME account
    /// credentials, skill secrets, channel credentials) not under the keyring's current key; run after
    /// [`Keyring::rotate_to`], then the old key can be dropped. Returns how many values were
    /// re-sealed.
    pub async fn reseal_secrets(&self, keyring: &Keyring) -> Result<u64> {
        // (table, key column, sealed column): fixed names, never input.
        const SEALED: [(&str, &str, &str); 6] = [
            ("api_keys", "id", "key_encrypted"),
            ("users", "id", "mfa_secret"),
            ("certificates", "name", "key_sealed"),
            ("acme_accounts", "directory_url", "credentials_sealed"),
            ("skills_installed", "id", "secrets_sealed"),
            // Keyed by (instance, kind): the row's own credential is unique enough to find it.
            ("channels", "token_sealed", "token_sealed"),
        ];
        let prefix = format!("v1:{}:%", keyring.current_id());
        let mut count = 0;
        for (table, id_col, col) in SEALED {
            // NULLs (no MFA, no skill secrets) are not LIKE anything: left out.
            let rows = sqlx::query(&format!(
                "SELECT {id_col} AS id, {col} AS sealed FROM {table} WHERE {col} NOT LIKE $1"
            ))
            .bind(&prefix)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let old: String = row.try_get("sealed")?;
                let new = keyring.reseal(&old)?;
                // Only if unchanged meanwhile: a concurrent write under the new key wins.
                let done = sqlx::query(&format!(
                    "UPDATE {table} SET {col} = $3 WHERE {id_col} = $1 AND {col} = $2"
                ))
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?;
                count += done.rows_affected();
            }
        }
        Ok(count)
    }
}
