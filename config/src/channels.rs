//! `[channels]`: the messaging apps owners connect their assistants to (Telegram in this release).

use serde::{Deserialize, Serialize};

/// `[channels]`: how the edge reaches the messaging apps owners connect (see
/// [Channels](channels.md)).
///
/// An instance never holds a channel's credentials: its OpenClaw calls the Telegram Bot API
/// through the edge's relay on the LLM meter's address with a token naming the instance, and the
/// relay calls `telegram_api_root` with the owner's bot token, counting each message from an
/// allowed sender against the tier's quota.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// The Telegram Bot API the relay calls (`https://api.telegram.org`, or a local Bot API
    /// server).
    pub telegram_api_root: String,
    /// How long one relayed Bot API call may take, in seconds; OpenClaw long-polls `getUpdates`
    /// for up to 30 s, so at least 35.
    pub telegram_timeout_secs: u64,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            telegram_api_root: "https://api.telegram.org".into(),
            telegram_timeout_secs: 50,
        }
    }
}

pub(crate) fn validate(
    channels: &ChannelsConfig,
    check: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    let root = &channels.telegram_api_root;
    let rest = root
        .strip_prefix("https://")
        .or_else(|| root.strip_prefix("http://"));
    check(
        rest.is_some_and(|r| !r.is_empty() && !r.contains(['@', ' ', '?', '#'])),
        "channels.telegram_api_root",
        root,
        "an http(s) URL such as https://api.telegram.org",
    );
    check(
        (35..=600).contains(&channels.telegram_timeout_secs),
        "channels.telegram_timeout_secs",
        &channels.telegram_timeout_secs,
        "35 to 600 (OpenClaw long-polls for 30 s)",
    );
}
