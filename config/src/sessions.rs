//! `[sessions]`: browser sessions on instance hosts (the one-time code handoff from the dashboard
//! and the host-only session cookie it is exchanged for).

use serde::{Deserialize, Serialize};

/// `[sessions]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// How long a one-time handoff code stays redeemable, in seconds.
    pub code_ttl_secs: u64,
    /// How long an instance host's session cookie lives, in seconds (never beyond the dashboard
    /// session that created it; logout and password changes end it at once).
    pub host_session_ttl_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            code_ttl_secs: 60,
            host_session_ttl_secs: 12 * 3600,
        }
    }
}

/// Checks `[sessions]`, reporting through `check(ok, key, value, allowed)`.
pub(crate) fn validate(
    sessions: &SessionsConfig,
    check: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    check(
        (1..=600).contains(&sessions.code_ttl_secs),
        "sessions.code_ttl_secs",
        &sessions.code_ttl_secs,
        "1 to 600 seconds (60 by default: a code is used within a redirect)",
    );
    check(
        (60..=30 * 86_400).contains(&sessions.host_session_ttl_secs),
        "sessions.host_session_ttl_secs",
        &sessions.host_session_ttl_secs,
        "60 seconds to 30 days",
    );
}
