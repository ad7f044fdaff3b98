//! Messaging channels per instance: who may talk to the assistant, the channel's credential
//! sealed under the master key, and what the edge's relay last saw.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::models::{Channel, ChannelKind, ChannelStatus};
use crate::secrets::Keyring;
use crate::time::now_ms;
use crate::{id_str, parse_col, uuid_col, Store, Zeroizing};

const CHANNEL_COLS: &str = "instance_id, kind, allow_from, status, status_detail, \
    last_message_at, created_at, updated_at";

fn channel_from_row(row: &AnyRow) -> Result<Channel> {
    let allow_from: String = row.try_get("allow_from")?;
    Ok(Channel {
        instance_id: uuid_col(row, "instance_id")?,
        kind: parse_col(row, "kind")?,
        allow_from: serde_json::from_str(&allow_from)
            .map_err(|_| StoreError::Corrupt("channels.allow_from".into()))?,
        status: parse_col(row, "status")?,
        status_detail: row.try_get("status_detail")?,
        last_message_at: row.try_get("last_message_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// The channels connected to an instance, in [`ChannelKind::ALL`]'s order.
    pub async fn channels_of(&self, instance_id: Uuid) -> Result<Vec<Channel>> {
        let sql = format!("SELECT {CHANNEL_COLS} FROM channels WHERE instance_id = $1");
        let rows = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .fetch_all(&self.pool)
            .await?;
        let mut channels = rows
            .iter()
            .map(channel_from_row)
            .collect::<Result<Vec<_>>>()?;
        channels.sort_by_key(|c| ChannelKind::ALL.iter().position(|k| *k == c.kind));
        Ok(channels)
    }

    /// One channel of an instance with its credential opened: for the edge's relay only. Never
    /// log or return the credential to a client.
    pub async fn channel_with_token(
        &self,
        instance_id: Uuid,
        kind: ChannelKind,
        keyring: &Keyring,
    ) -> Result<Option<(Channel, Zeroizing<String>)>> {
        let sql = format!(
            "SELECT {CHANNEL_COLS}, token_sealed FROM channels WHERE instance_id = $1 AND kind = $2"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id_str(instance_id))
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let sealed: String = row.try_get("token_sealed")?;
        let token = keyring.open_str(&sealed)?;
        Ok(Some((channel_from_row(&row)?, token)))
    }

    /// Connects a channel, or replaces its credential and senders (status back to `pending`).
    /// An unknown instance → `NotFound("instance")`.
    pub async fn put_channel(
        &self,
        instance_id: Uuid,
        kind: ChannelKind,
        allow_from: &[String],
        token: &str,
        keyring: &Keyring,
    ) -> Result<Channel> {
        let now = now_ms();
        let allow =
            serde_json::to_string(allow_from).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sealed = keyring.seal_str(token)?;
        let updated = sqlx::query(
            "UPDATE channels SET allow_from = $3, token_sealed = $4, status = 'pending', \
             status_detail = NULL, updated_at = $5 WHERE instance_id = $1 AND kind = $2",
        )
        .bind(id_str(instance_id))
        .bind(kind.as_str())
        .bind(&allow)
        .bind(&sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO channels (instance_id, kind, allow_from, token_sealed, status, \
                 created_at, updated_at) \
                 SELECT id, $2, $3, $4, 'pending', $5, $5 FROM instances WHERE id = $1",
            )
            .bind(id_str(instance_id))
            .bind(kind.as_str())
            .bind(&allow)
            .bind(&sealed)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        self.channels_of(instance_id)
            .await?
            .into_iter()
            .find(|c| c.kind == kind)
            .ok_or(StoreError::NotFound("instance"))
    }

    /// Disconnects a channel, forgetting its credential; false if it was not connected.
    pub async fn remove_channel(&self, instance_id: Uuid, kind: ChannelKind) -> Result<bool> {
        let r = sqlx::query("DELETE FROM channels WHERE instance_id = $1 AND kind = $2")
            .bind(id_str(instance_id))
            .bind(kind.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records what the relay saw: the status (with the app's reason for an error) and, with
    /// `message_at`, when a message from an allowed sender arrived.
    pub async fn set_channel_status(
        &self,
        instance_id: Uuid,
        kind: ChannelKind,
        status: ChannelStatus,
        detail: Option<&str>,
        message_at: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE channels SET status = $3, status_detail = $4, \
             last_message_at = COALESCE($5, last_message_at), updated_at = $6 \
             WHERE instance_id = $1 AND kind = $2",
        )
        .bind(id_str(instance_id))
        .bind(kind.as_str())
        .bind(status.as_str())
        .bind(detail)
        .bind(message_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
