//! The data export of one user (GDPR-style): everything about them, no secrets or hashes.

use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::time::rfc3339;
use crate::{id_str, Store};

fn ts(v: Option<i64>) -> Value {
    v.map(|ms| Value::String(rfc3339(ms)))
        .unwrap_or(Value::Null)
}

impl Store {
    /// Everything stored about a user as JSON (camelCase, RFC 3339 times). Leaves out the
    /// password hash, MFA secret and recovery codes, token hashes and sealed API keys (keys
    /// appear masked). `NotFound("user")` when absent.
    pub async fn export_user(&self, user_id: Uuid) -> Result<Value> {
        let user = self
            .get_user(user_id)
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        let uid = id_str(user_id);

        let mut instances = Vec::new();
        for inst in self.list_instances_by_user(user_id).await? {
            let usage = sqlx::query(
                "SELECT day, messages, tokens FROM usage WHERE instance_id = $1 ORDER BY day",
            )
            .bind(id_str(inst.id))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| -> Result<Value> {
                Ok(json!({
                    "day": r.try_get::<String, _>("day")?,
                    "messages": r.try_get::<i64, _>("messages")?,
                    "tokens": r.try_get::<i64, _>("tokens")?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
            let skills = sqlx::query(
                "SELECT skill_id, version, config, installed_at FROM skills_installed \
                 WHERE instance_id = $1 ORDER BY installed_at",
            )
            .bind(id_str(inst.id))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| -> Result<Value> {
                let config: Option<String> = r.try_get("config")?;
                Ok(json!({
                    "skillId": r.try_get::<String, _>("skill_id")?,
                    "version": r.try_get::<String, _>("version")?,
                    "config": config.and_then(|c| serde_json::from_str::<Value>(&c).ok()),
                    "installedAt": ts(Some(r.try_get("installed_at")?)),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
            instances.push(json!({
                "id": inst.id,
                "subdomain": inst.subdomain,
                "status": inst.status,
                "tier": inst.tier,
                "soulMd": inst.soul_md,
                "timezone": inst.timezone,
                "createdAt": ts(Some(inst.created_at)),
                "lastActiveAt": ts(inst.last_active_at),
                "usage": usage,
                "skills": skills,
            }));
        }

        let api_keys: Vec<Value> = self
            .list_api_keys(user_id)
            .await?
            .into_iter()
            .map(|k| {
                json!({
                    "provider": k.provider,
                    "baseUrl": k.base_url,
                    "masked": k.masked,
                    "isActive": k.is_active,
                    "createdAt": ts(Some(k.created_at)),
                    "updatedAt": ts(Some(k.updated_at)),
                })
            })
            .collect();

        let sessions = sqlx::query(
            "SELECT id, created_at, expires_at, revoked_at, last_seen_at, ip, user_agent \
             FROM sessions WHERE user_id = $1 ORDER BY created_at",
        )
        .bind(&uid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| -> Result<Value> {
            Ok(json!({
                "id": r.try_get::<String, _>("id")?,
                "createdAt": ts(Some(r.try_get("created_at")?)),
                "expiresAt": ts(Some(r.try_get("expires_at")?)),
                "revokedAt": ts(r.try_get("revoked_at")?),
                "lastSeenAt": ts(r.try_get("last_seen_at")?),
                "ip": r.try_get::<Option<String>, _>("ip")?,
                "userAgent": r.try_get::<Option<String>, _>("user_agent")?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;

        let security_log = sqlx::query(
            "SELECT event, ip, user_agent, detail, created_at FROM security_log \
             WHERE user_id = $1 ORDER BY id",
        )
        .bind(&uid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| -> Result<Value> {
            Ok(json!({
                "event": r.try_get::<String, _>("event")?,
                "ip": r.try_get::<Option<String>, _>("ip")?,
                "userAgent": r.try_get::<Option<String>, _>("user_agent")?,
                "detail": r.try_get::<Option<String>, _>("detail")?,
                "at": ts(Some(r.try_get("created_at")?)),
            }))
        })
        .collect::<Result<Vec<_>>>()?;

        let subscriptions = sqlx::query(
            "SELECT tier, status, stripe_customer_id, stripe_subscription_id, \
             current_period_start, current_period_end, created_at FROM subscriptions \
             WHERE user_id = $1 ORDER BY created_at",
        )
        .bind(&uid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| -> Result<Value> {
            Ok(json!({
                "tier": r.try_get::<String, _>("tier")?,
                "status": r.try_get::<String, _>("status")?,
                "stripeCustomerId": r.try_get::<Option<String>, _>("stripe_customer_id")?,
                "stripeSubscriptionId": r.try_get::<Option<String>, _>("stripe_subscription_id")?,
                "currentPeriodStart": ts(r.try_get("current_period_start")?),
                "currentPeriodEnd": ts(r.try_get("current_period_end")?),
                "createdAt": ts(Some(r.try_get("created_at")?)),
            }))
        })
        .collect::<Result<Vec<_>>>()?;

        Ok(json!({
            "exportFormat": 1,
            "user": {
                "id": user.id,
                "email": user.email,
                "name": user.name,
                "tier": user.tier,
                "role": user.role,
                "emailVerified": user.email_verified(),
                "emailVerifiedAt": ts(user.email_verified_at),
                "timezone": user.timezone,
                "language": user.language,
                "avatarUrl": user.avatar_url,
                "mfaEnabled": user.mfa_enabled(),
                "deletionRequestedAt": ts(user.deletion_requested_at),
                "createdAt": ts(Some(user.created_at)),
                "updatedAt": ts(Some(user.updated_at)),
            },
            "instances": instances,
            "apiKeys": api_keys,
            "sessions": sessions,
            "securityLog": security_log,
            "subscriptions": subscriptions,
        }))
    }
}
