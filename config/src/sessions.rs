//! `[sessions]`: browser sessions on instance hosts (the one-time code handoff from the dashboard
//! and the host-only session cookie it is exchanged for).

use serde::{Deserialize, Serialize};

/// `[sessions]`: browser sessions on instance hosts (see [Browser sessions on instance
/// hosts](http.md#browser-sessions-on-instance-hosts)).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// How long a one-time sign-in code from `GET /api/session/handoff` can be redeemed on its
    /// instance host (1–600). Each code works once, on the one host it was issued for.
    pub code_ttl_secs: u64,
    /// Lifetime of an instance host's session cookie (60 s – 30 days), never beyond the dashboard
    /// session that issued it. Logout, a password change or reset end it at once.
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
