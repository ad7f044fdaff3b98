//! `[skills]`: the skill catalogue and the ClawHub-compatible registry instances install from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::addresses::{parse_network, IpNet};

/// `[skills]`: where the catalogue's registry skills come from (see
/// [Skills](skills.md#the-registry)).
///
/// The edge serves a ClawHub-compatible registry on the LLM meter's address, which instances
/// reach (their `CLAWHUB_URL`), so OpenClaw's own installer fetches every registry skill from it.
/// It serves the operator's curated skills and, when `upstream_url` is set, the allowed skills of
/// an upstream ClawHub, cached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SkillsConfig {
    /// A directory of curated skills, one sub-directory per skill named by its slug and holding
    /// its `SKILL.md` (and any other files), plus an optional `clawdeploy.toml` manifest
    /// (version, category, tags, minimum tier, config fields). Read at start and on `SIGHUP`-free
    /// reload every `reload_secs`. Empty: `<server.data_dir>/skills` (absent: no curated skills).
    pub curated_dir: PathBuf,
    /// A ClawHub registry base URL (`https://clawhub.ai`) whose allowed skills the registry
    /// proxies and caches. Empty: curated and bundled skills only.
    pub upstream_url: String,
    /// Upstream slugs instances may install (`["weather-pro", "todoist"]`); `["*"]` allows every
    /// slug not denied. Empty: none.
    pub upstream_allow: Vec<String>,
    /// Upstream slugs never served, whatever `upstream_allow` says.
    pub upstream_deny: Vec<String>,
    /// Networks the upstream may be on although they are not public unicast (a private mirror,
    /// or a test's registry on loopback). Empty: public addresses only, checked on the connected
    /// address as the LLM meter does.
    pub upstream_allow_private: Vec<String>,
    /// Largest skill archive accepted, from the curated directory or upstream, in bytes.
    pub max_archive_bytes: u64,
    /// How long one upstream request may take before the registry answers 503
    /// `REGISTRY_UNAVAILABLE`.
    pub upstream_timeout_secs: u64,
    /// How long an install may take in the instance (OpenClaw's download, unpack and scan)
    /// before the API gives up and undoes it.
    pub install_timeout_secs: u64,
}

impl Default for SkillsConfig {
    fn default() -> Self {
        Self {
            curated_dir: PathBuf::new(),
            upstream_url: String::new(),
            upstream_allow: Vec::new(),
            upstream_deny: Vec::new(),
            upstream_allow_private: Vec::new(),
            max_archive_bytes: 10 * 1024 * 1024,
            upstream_timeout_secs: 10,
            install_timeout_secs: 60,
        }
    }
}

impl SkillsConfig {
    /// `upstream_allow_private`, parsed (validated at load).
    pub fn upstream_private_nets(&self) -> Vec<IpNet> {
        self.upstream_allow_private
            .iter()
            .filter_map(|n| parse_network(n))
            .collect()
    }

    /// Whether `slug` may come from the upstream registry.
    pub fn upstream_allows(&self, slug: &str) -> bool {
        !self.upstream_url.is_empty()
            && !self.upstream_deny.iter().any(|d| d == slug)
            && self.upstream_allow.iter().any(|a| a == "*" || a == slug)
    }
}

/// Checks `[skills]`, reporting through `check(ok, key, value, allowed)`.
pub(crate) fn validate(
    skills: &SkillsConfig,
    check: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    if !skills.upstream_url.is_empty() {
        let rest = (skills.upstream_url)
            .strip_prefix("https://")
            .or_else(|| skills.upstream_url.strip_prefix("http://"));
        let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains(['@', ' ', '?', '#']));
        check(
            ok,
            "skills.upstream_url",
            &skills.upstream_url,
            "an http(s) URL such as https://clawhub.ai, or empty",
        );
    }
    for net in &skills.upstream_allow_private {
        check(
            parse_network(net).is_some(),
            "skills.upstream_allow_private",
            net,
            "CIDRs or single IP addresses, such as 10.8.0.0/16 or 127.0.0.1",
        );
    }
    check(
        (1024..=256 * 1024 * 1024).contains(&skills.max_archive_bytes),
        "skills.max_archive_bytes",
        &skills.max_archive_bytes,
        "1 KiB to 256 MiB (OpenClaw's own limit)",
    );
    check(
        (1..=120).contains(&skills.upstream_timeout_secs),
        "skills.upstream_timeout_secs",
        &skills.upstream_timeout_secs,
        "1 to 120 seconds",
    );
    check(
        (5..=600).contains(&skills.install_timeout_secs),
        "skills.install_timeout_secs",
        &skills.install_timeout_secs,
        "5 to 600 seconds",
    );
}
