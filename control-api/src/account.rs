//! `/api/account`: profile, password, provider API keys (sealed, shown masked), security log,
//! data export, deletion with a grace period; plus the background sweep of account policies.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use clawdeploy_store::time::{now_ms, rfc3339, DAY_MS};
use clawdeploy_store::{ApiKey, EmailTokenPurpose, ProfileUpdate, StoreError};

use crate::auth::{self, AuthUser, Client, PasswordChanged, UserReply};
use crate::crypto;
use crate::error::ApiError;
use crate::{ApiState, Reply};

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// Providers whose keys users can store.
pub const PROVIDERS: [&str; 4] = ["openai", "anthropic", "google", "custom"];

/// An IANA zone name such as `Europe/Berlin`, or `UTC` (the shape is checked, not the database).
pub fn check_timezone(field: &str, tz: &str) -> Result<(), ApiError> {
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && tz.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
        })
        && tz.as_bytes()[0].is_ascii_uppercase();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "INVALID_TIMEZONE",
            format!("{tz:?} is not a time zone name such as UTC or Europe/Berlin"),
        ))
    }
}

/// The shape every provider key has: 8 to 512 characters without spaces. `field` names it.
pub(crate) fn check_key_format(field: &str, key: &str) -> Result<(), ApiError> {
    if key.len() < 8 || key.len() > 512 || key.contains(char::is_whitespace) {
        return Err(ApiError::invalid(
            field,
            "INVALID_API_KEY",
            "an API key is 8 to 512 characters without spaces",
        ));
    }
    Ok(())
}

/// Checks a provider key and stores it sealed. `field` names it in errors.
pub(crate) async fn set_provider_key(
    state: &ApiState,
    user_id: uuid::Uuid,
    field: &str,
    provider: &str,
    key: &str,
    base_url: Option<&str>,
) -> Result<clawdeploy_store::ApiKey, ApiError> {
    if !PROVIDERS.contains(&provider) {
        return Err(ApiError::invalid(
            field,
            "INVALID_PROVIDER",
            format!(
                "unknown provider {provider:?}; use one of {}",
                PROVIDERS.join(", ")
            ),
        ));
    }
    let key = key.trim();
    check_key_format(field, key)?;
    match (provider, base_url) {
        ("custom", None) => return Err(ApiError::invalid(
            "baseUrl",
            "INVALID_BASE_URL",
            "a custom provider needs the endpoint's baseUrl, such as https://llm.example.com/v1",
        )),
        (_, Some(url)) if url.len() > 2048 => {
            return Err(ApiError::invalid(
                "baseUrl",
                "INVALID_BASE_URL",
                "a baseUrl is at most 2048 characters",
            ))
        }
        (_, Some(url)) => {
            let allowed = state.ctx.config.llm.allowed_private_networks();
            if let Err(e) = clawdeploy_llm_egress::custom_base_url(url, &allowed) {
                return Err(ApiError::invalid(
                    "baseUrl",
                    "INVALID_BASE_URL",
                    e.to_string(),
                ));
            }
        }
        _ => {}
    }
    Ok(state
        .store
        .upsert_api_key(user_id, provider, base_url, key, &state.ctx.keyring)
        .await?)
}

/// `GET /api/account`: the caller's profile ([`auth::UserView`]).
pub async fn me(auth: AuthUser) -> Reply<UserReply> {
    Reply(UserReply::new(&auth.user))
}

/// The body of `PATCH /api/account`: absent fields stay as they are; `null` clears `name` and
/// `avatarUrl`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileBody {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    avatar_url: Option<Option<String>>,
    #[serde(default)]
    language: Option<String>,
}

/// Dashboard languages users may choose (stored for later localisation; the pages are English).
pub const LANGUAGES: [(&str, &str); 8] = [
    ("en", "English"),
    ("de", "Deutsch"),
    ("es", "Español"),
    ("fr", "Français"),
    ("it", "Italiano"),
    ("ja", "日本語"),
    ("pt", "Português"),
    ("zh", "中文"),
];

/// `PATCH /api/account`: updates the profile and answers with the user. A new email address is
/// unverified until its mailed link is opened (`verificationEmailSent` says whether it went out).
pub async fn update_profile(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<ProfileBody>,
) -> Result<Reply<UserReply>, ApiError> {
    let Json(b) = body?;
    if let Some(email) = &b.email {
        if !crypto::check_email(email) {
            return Err(ApiError::invalid(
                "email",
                "INVALID_EMAIL",
                crypto::email_problem(email),
            ));
        }
    }
    if let Some(Some(name)) = &b.name {
        if name.chars().count() > 100 {
            return Err(ApiError::invalid(
                "name",
                "INVALID_NAME",
                "at most 100 characters",
            ));
        }
    }
    if let Some(tz) = &b.timezone {
        check_timezone("timezone", tz)?;
    }
    if let Some(Some(url)) = &b.avatar_url {
        if !url.starts_with("https://") || url.len() > 2048 || url.contains(char::is_whitespace) {
            return Err(ApiError::invalid(
                "avatarUrl",
                "INVALID_URL",
                "must be an https:// URL",
            ));
        }
    }
    if let Some(lang) = &b.language {
        if !LANGUAGES.iter().any(|(code, _)| code == lang) {
            return Err(ApiError::invalid(
                "language",
                "INVALID_LANGUAGE",
                format!(
                    "{lang:?} is not offered; use one of {}",
                    LANGUAGES.map(|(c, _)| c).join(", ")
                ),
            ));
        }
    }
    let update = ProfileUpdate {
        language: b.language.as_deref(),
        name: b.name.as_ref().map(|n| n.as_deref().map(str::trim)),
        email: b.email.as_deref(),
        timezone: b.timezone.as_deref(),
        avatar_url: b.avatar_url.as_ref().map(|u| u.as_deref()),
    };
    let user = state
        .store
        .update_profile(auth.user.id, &update)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::conflict(
                "EMAIL_TAKEN",
                "email: another account already uses this address.",
            )
            .with("field", json!("email")),
            other => other.into(),
        })?;
    let mut sent = None;
    if user.email != auth.user.email {
        auth::log_event(&state, Some(user.id), "email_changed", &client, None).await;
        state
            .store
            .invalidate_email_tokens(user.id, EmailTokenPurpose::Verify)
            .await?;
        sent = Some(auth::send_link(&state, &user, &user.email, EmailTokenPurpose::Verify).await);
    }
    let mut body = UserReply::new(&user);
    body.verification_email_sent = sent;
    Ok(Reply(body))
}

/// The body of `POST /api/account/password`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// `POST /api/account/password`: changes the password and ends every other session.
pub async fn change_password(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<PasswordBody>,
) -> Result<Reply<PasswordChanged>, ApiError> {
    let Json(b) = body?;
    if !auth::verify_password(&state, &b.current_password, &auth.user.password_hash).await? {
        return Err(ApiError::invalid(
            "currentPassword",
            "INVALID_CREDENTIALS",
            "the current password is wrong",
        ));
    }
    if let Err(why) = crypto::check_password(&b.new_password, &auth.user.email) {
        return Err(ApiError::invalid(
            "newPassword",
            "WEAK_PASSWORD",
            why.to_string(),
        ));
    }
    let hash = auth::hash_password(&state, &b.new_password).await?;
    state
        .store
        .update_password_hash(auth.user.id, &hash)
        .await?;
    let revoked = state
        .store
        .revoke_all_sessions(auth.user.id, Some(auth.session.id))
        .await?;
    state.revoked(&revoked).await;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "password_changed",
        &client,
        None,
    )
    .await;
    Ok(Reply(PasswordChanged {
        message: "Password changed; your other sessions were logged out.",
        sessions_revoked: revoked.len(),
    }))
}

/// The caller's provider keys, masked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeys {
    /// One per provider.
    pub api_keys: Vec<ApiKey>,
}

/// One provider key, masked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyReply {
    /// The key as stored, masked.
    pub api_key: ApiKey,
}

/// `GET /api/account/api-keys`: the caller's provider keys, masked, by provider.
pub async fn list_api_keys(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<ApiKeys>, ApiError> {
    let keys = state.store.list_api_keys(auth.user.id).await?;
    Ok(Reply(ApiKeys { api_keys: keys }))
}

/// The body of `PUT /api/account/api-keys/{provider}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyBody {
    key: String,
    #[serde(default)]
    base_url: Option<String>,
}

/// `PUT /api/account/api-keys/{provider}`: sets (or replaces) the key of one of [`PROVIDERS`],
/// sealed with the keyring; answers with it masked.
pub async fn put_api_key(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    Path(provider): Path<String>,
    body: JsonBody<ApiKeyBody>,
) -> Result<Reply<ApiKeyReply>, ApiError> {
    let Json(b) = body?;
    let provider = provider.to_ascii_lowercase();
    let key = set_provider_key(
        &state,
        auth.user.id,
        "key",
        &provider,
        &b.key,
        b.base_url.as_deref(),
    )
    .await?;
    keys_changed(&state, auth.user.id).await?;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "api_key_set",
        &client,
        Some(&provider),
    )
    .await;
    Ok(Reply(ApiKeyReply { api_key: key }))
}

/// The owner's running instance lists its providers in its config: rewritten now (OpenClaw
/// reloads it, no restart), so a new key answers the next message and a removed one is gone.
async fn keys_changed(state: &ApiState, user_id: uuid::Uuid) -> Result<(), ApiError> {
    let Some(pool) = &state.pool else {
        return Ok(());
    };
    for inst in state.store.list_instances_by_user(user_id).await? {
        pool.reconfigure(&inst)
            .await
            .map_err(|e| ApiError::internal("updating the instance's providers", e))?;
    }
    Ok(())
}

/// `DELETE /api/account/api-keys/{provider}`: removes the key; 204, or 404 when there is none.
pub async fn delete_api_key(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    Path(provider): Path<String>,
) -> Result<StatusCode, ApiError> {
    let provider = provider.to_ascii_lowercase();
    if !state.store.delete_api_key(auth.user.id, &provider).await? {
        return Err(ApiError::not_found(format!("There is no {provider} key.")));
    }
    keys_changed(&state, auth.user.id).await?;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "api_key_deleted",
        &client,
        Some(&provider),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /api/account/security-log`: `limit` (1–200, default 50) and `before`, an
/// event id to page back from.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    before: Option<i64>,
}

/// One entry of the security log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventView {
    /// The event's id (`before` pages back from it).
    pub id: i64,
    /// What happened: `login_success`, `login_failure`, `mfa_enabled`…
    pub event: String,
    /// The client's address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// More about it, e.g. why a login failed.
    pub detail: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// The caller's security log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityLog {
    /// The events.
    pub events: Vec<SecurityEventView>,
}

/// `GET /api/account/security-log`: the caller's security events, newest first.
pub async fn security_log(
    State(state): State<ApiState>,
    auth: AuthUser,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<SecurityLog>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let events = state
        .store
        .list_security_events(auth.user.id, limit, q.before)
        .await?;
    let events = events
        .into_iter()
        .map(|e| SecurityEventView {
            id: e.id,
            event: e.event,
            ip: e.ip,
            user_agent: e.user_agent,
            detail: e.detail,
            at: rfc3339(e.created_at),
        })
        .collect();
    Ok(Reply(SecurityLog { events }))
}

/// Everything stored about the caller, as the store exports it (no secrets, keys masked).
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct Export(pub Value);

/// `GET /api/account/export`: everything stored about the caller, as one JSON document; secrets
/// and hashes left out, provider keys masked.
pub async fn export(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<Reply<Export>, ApiError> {
    let data = state.store.export_user(auth.user.id).await?;
    auth::log_event(&state, Some(auth.user.id), "data_exported", &client, None).await;
    Ok(Reply(Export(data)))
}

/// A scheduled deletion of the account.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionScheduled {
    /// When it was asked for (RFC 3339).
    pub deletion_requested_at: String,
    /// When the account goes (RFC 3339).
    pub deletion_scheduled_at: String,
    /// How to keep it.
    pub message: String,
}

impl DeletionScheduled {
    fn new(state: &ApiState, requested_at: i64) -> Self {
        let days = i64::from(state.ctx.config.limits.deletion_grace_days);
        Self {
            deletion_requested_at: rfc3339(requested_at),
            deletion_scheduled_at: rfc3339(requested_at + days * DAY_MS),
            message: format!("The account and its instance will be deleted after {days} days; to keep it, click \"Keep my account\" on any dashboard page (or POST /api/account/restore) before then."),
        }
    }
}

/// A cancelled deletion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Restored {
    /// Always `true`.
    pub restored: bool,
}

/// `DELETE /api/account`: schedules the account's deletion after `limits.deletion_grace_days`;
/// 202 with the dates. The hourly [`sweep`] deletes it then.
pub async fn request_deletion(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<(StatusCode, Reply<DeletionScheduled>), ApiError> {
    let at = state.store.request_account_deletion(auth.user.id).await?;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "deletion_requested",
        &client,
        None,
    )
    .await;
    Ok((
        StatusCode::ACCEPTED,
        Reply(DeletionScheduled::new(&state, at)),
    ))
}

/// `POST /api/account/restore`: cancels a pending deletion; 409 when none is pending.
pub async fn restore(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<Reply<Restored>, ApiError> {
    if !state.store.cancel_account_deletion(auth.user.id).await? {
        return Err(ApiError::conflict(
            "NO_DELETION_PENDING",
            "No deletion of this account is pending.",
        ));
    }
    auth::log_event(
        &state,
        Some(auth.user.id),
        "deletion_cancelled",
        &client,
        None,
    )
    .await;
    Ok(Reply(Restored { restored: true }))
}

/// One pass of the account policies: deletes accounts past their grace period (and their
/// routes), and stops instances of accounts unverified past `unverified_grace_days`.
pub async fn sweep(state: &ApiState) -> Result<(), StoreError> {
    let limits = &state.ctx.config.limits;
    let now = now_ms();
    let due = now - i64::from(limits.deletion_grace_days) * DAY_MS;
    for user in state.store.users_due_for_deletion(due).await? {
        let instances = state.store.list_instances_by_user(user.id).await?;
        for inst in &instances {
            if let Some(pool) = &state.pool {
                if let Err(e) = pool.release(inst.id).await {
                    tracing::error!(instance = %inst.id, "cannot remove the container: {e}");
                }
            }
        }
        state.store.delete_user(user.id).await?;
        // Published once the instances are gone from the store, so no node reloads them.
        for inst in &instances {
            state.instance_changed(inst.id, &inst.subdomain).await;
        }
        tracing::info!(user = %user.id, "account deleted after its grace period");
    }
    let unverified = now - i64::from(limits.unverified_grace_days) * DAY_MS;
    for inst in state.store.stop_unverified_instances(unverified).await? {
        state.instance_changed(inst.id, &inst.subdomain).await;
        if let Some(pool) = &state.pool {
            if let Err(e) = pool.stop(&inst).await {
                tracing::error!(instance = %inst.id, "cannot stop the container: {e}");
            }
        }
        tracing::info!(instance = %inst.id, "instance stopped: account email unverified");
    }
    crate::instances::archive_due(state).await
}

/// Runs [`sweep`] at start and then hourly.
pub async fn sweep_forever(state: ApiState) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&state).await {
            tracing::warn!("account sweep failed: {e}");
        }
    }
}

/// Key → value map of provider keys in request bodies (`{"openai": "sk-..."}`).
pub type KeyMap = BTreeMap<String, Option<String>>;
