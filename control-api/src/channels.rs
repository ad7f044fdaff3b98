//! `/api/instances/me/channels`: the messaging apps the owner's assistant is reached through
//! (Telegram in this release). A channel's credential is sealed and never shown again; the
//! instance gets only a placeholder naming it, and reaches the app through the edge's relay
//! (see `clawdeploy_channels`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use clawdeploy_channels::telegram::{check_bot_token, check_user_id};
use clawdeploy_config::Tier;
use clawdeploy_store::{Channel, ChannelKind, ChannelStatus};

use crate::auth::AuthUser;
use crate::instances::my_instance;
use crate::skills::{reconfigure, upgrade_url};
use crate::{ApiError, ApiState, Reply};

/// Senders one channel may allow.
const MAX_ALLOWED: usize = 20;

/// One channel kind, connected or not.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    /// `telegram`.
    pub kind: ChannelKind,
    /// Whether a bot is connected.
    pub connected: bool,
    /// Who may talk to the assistant through it; nobody else is answered.
    pub allow_from: Vec<String>,
    /// What the relay last saw: `pending` (not used yet), `connected`, `error`.
    pub status: Option<ChannelStatus>,
    /// The app's reason for an `error`, with what to do.
    pub status_detail: Option<String>,
    /// When a message from an allowed sender last arrived (unix ms).
    pub last_message_at: Option<i64>,
    /// When it was connected (unix ms).
    pub connected_at: Option<i64>,
}

/// The channels of the caller's instance and the tier's limit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    /// Every kind the platform offers, connected or not.
    pub channels: Vec<ChannelView>,
    /// The instance's tier.
    pub tier: Tier,
    /// Channels the tier allows at once (0: none).
    pub limit: u32,
    /// Where to upgrade for more.
    pub upgrade_url: String,
}

/// `PUT /api/instances/me/channels/telegram`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelegramBody {
    /// The bot's token from @BotFather (`123456789:AA…`); sealed, never shown again.
    pub bot_token: String,
    /// Telegram user ids (numbers) the assistant answers; at least one, at most 20.
    pub allow_from: Vec<String>,
}

/// A channel after a change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelChanged {
    /// The channel as it is now.
    pub channel: ChannelView,
    /// What happened, for people.
    pub message: String,
}

fn view(kind: ChannelKind, channel: Option<&Channel>) -> ChannelView {
    ChannelView {
        kind,
        connected: channel.is_some(),
        allow_from: channel.map(|c| c.allow_from.clone()).unwrap_or_default(),
        status: channel.map(|c| c.status),
        status_detail: channel.and_then(|c| c.status_detail.clone()),
        last_message_at: channel.and_then(|c| c.last_message_at),
        connected_at: channel.map(|c| c.created_at),
    }
}

fn kind_of(name: &str) -> Result<ChannelKind, ApiError> {
    name.parse().map_err(|_| {
        ApiError::not_found(format!(
            "There is no channel {name:?}; this platform offers: {}.",
            ChannelKind::ALL.map(ChannelKind::as_str).join(", ")
        ))
    })
}

/// `GET /api/instances/me/channels`.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<ChannelList>, ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let connected = state.store.channels_of(inst.id).await?;
    Ok(Reply(ChannelList {
        channels: ChannelKind::ALL
            .iter()
            .map(|&k| view(k, connected.iter().find(|c| c.kind == k)))
            .collect(),
        tier: inst.tier,
        limit: state.ctx.config.tiers.get(inst.tier).channels,
        upgrade_url: upgrade_url(&state),
    }))
}

/// `PUT /api/instances/me/channels/{kind}`: connects a bot, or replaces its token and senders.
/// 422 names the field; 403 `CHANNEL_TIER`/`CHANNEL_LIMIT` with the upgrade link.
pub async fn connect(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(kind): Path<String>,
    body: Result<Json<TelegramBody>, JsonRejection>,
) -> Result<Reply<ChannelChanged>, ApiError> {
    let kind = kind_of(&kind)?;
    let Json(b) = body?;
    let token = b.bot_token.trim();
    check_bot_token(token)
        .map_err(|why| ApiError::invalid("botToken", "INVALID_BOT_TOKEN", why))?;
    let allow_from: Vec<String> = b.allow_from.iter().map(|s| s.trim().to_string()).collect();
    if allow_from.is_empty() {
        return Err(ApiError::invalid(
            "allowFrom",
            "ALLOW_FROM_REQUIRED",
            "name at least one Telegram user id (yours): the assistant answers only the people listed",
        ));
    }
    if allow_from.len() > MAX_ALLOWED {
        return Err(ApiError::invalid(
            "allowFrom",
            "TOO_MANY_SENDERS",
            format!(
                "at most {MAX_ALLOWED} people per channel ({} given)",
                allow_from.len()
            ),
        ));
    }
    for id in &allow_from {
        check_user_id(id).map_err(|why| ApiError::invalid("allowFrom", "INVALID_USER_ID", why))?;
    }
    if matches!(
        state.ctx.config.llm.listen_mode(),
        clawdeploy_config::metering::LlmListen::Off
    ) {
        return Err(ApiError::conflict(
            "CHANNELS_OFF",
            "Channels reach instances through the LLM meter, which this node runs without ([llm] listen = \"off\"); ask the operator.",
        ));
    }
    let inst = my_instance(&state, &auth).await?;
    let limit = state.ctx.config.tiers.get(inst.tier).channels;
    let connected = state.store.channels_of(inst.id).await?;
    let others = connected.iter().filter(|c| c.kind != kind).count();
    if limit as usize <= others {
        let url = upgrade_url(&state);
        let (code, message) = if limit == 0 {
            (
                "CHANNEL_TIER",
                format!(
                    "The {} plan has no messaging channels; upgrade: {url}",
                    inst.tier
                ),
            )
        } else {
            ("CHANNEL_LIMIT", format!("The {} plan allows {limit} channel(s) and {others} are connected; disconnect one or upgrade: {url}", inst.tier))
        };
        return Err(ApiError::forbidden(code, message).with("upgradeUrl", json!(url)));
    }
    let replaced = connected.iter().any(|c| c.kind == kind);
    let channel = state
        .store
        .put_channel(inst.id, kind, &allow_from, token, &state.ctx.keyring)
        .await?;
    let applied = reconfigure(&state, &inst).await?;
    tracing::info!(instance = %inst.id, channel = kind.as_str(), replaced, "channel connected");
    Ok(Reply(ChannelChanged {
        channel: view(kind, Some(&channel)),
        message: match (replaced, applied) {
            (false, true) => {
                "Connected: your assistant answers the people listed within a few seconds.".into()
            }
            (true, true) => "Updated: the new token and people apply within a few seconds.".into(),
            (_, false) => "Saved: your assistant answers on Telegram once it is running.".into(),
        },
    }))
}

/// `DELETE /api/instances/me/channels/{kind}`: disconnects it and forgets its credential.
pub async fn disconnect(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(kind): Path<String>,
) -> Result<Reply<ChannelChanged>, ApiError> {
    let kind = kind_of(&kind)?;
    let inst = my_instance(&state, &auth).await?;
    if !state.store.remove_channel(inst.id, kind).await? {
        return Err(ApiError::not_found(format!(
            "No {} bot is connected to this instance.",
            kind.as_str()
        )));
    }
    reconfigure(&state, &inst).await?;
    tracing::info!(instance = %inst.id, channel = kind.as_str(), "channel disconnected");
    Ok(Reply(ChannelChanged {
        channel: view(kind, None),
        message: "Disconnected: the token is deleted and the assistant no longer reads the bot."
            .into(),
    }))
}
