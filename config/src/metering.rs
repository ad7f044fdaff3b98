//! `[metrics]`, `[metering]`, `[tiers.<tier>]`, `[rate_limits]`, `[redis]` and `[llm]`: what the
//! edge measures and limits (issue #7). Every key is documented in `docs/config.md`.

use serde::{Deserialize, Serialize};

use crate::Tier;

/// `[metrics]`: the Prometheus exposition.
///
/// The metrics exported: [Metrics](operations.md#metrics).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` (Prometheus text format) is served; empty turns the listener off
    /// (metrics are still recorded). Keep it off public interfaces.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[metering]`: OpenClaw user messages counted from the WebSocket frames the edge relays.
///
/// How messages are counted, the monthly windows and idempotency keys:
/// [Metering](metering.md#how-messages-are-counted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeteringConfig {
    /// Meter gateway WebSockets of instances: count user messages and enforce the message quota.
    pub enabled: bool,
    /// How often counts are written to the store. A crash (not a graceful stop, which writes them)
    /// loses at most this much counting.
    pub flush_interval_secs: u64,
    /// The largest client text message the edge holds while deciding whether to forward it
    /// (OpenClaw's own `maxPayload`); a larger one closes that WebSocket with 1009.
    pub max_message_bytes: usize,
    /// `details.upgradeUrl` of a quota refusal; empty means `<app origin>/billing`.
    pub upgrade_url: String,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flush_interval_secs: 10,
            max_message_bytes: 26_214_400,
            upgrade_url: String::new(),
        }
    }
}

/// One tier's quotas and instance limits. 0 means unlimited (quotas) or the pool's default
/// (limits).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// OpenClaw user messages per instance and month (free: calendar month; paid: billing period,
    /// see [Windows](metering.md#windows-per-month)).
    pub messages_per_month: u64,
    /// LLM tokens (input + output) per instance and month, windowed the same way (the LLM meter;
    /// see [The LLM meter](metering.md#the-llm-meter)).
    pub tokens_per_month: u64,
    /// Memory limit of this tier's instances, in MiB; 0: `pool.memory_mb`. Applied when an
    /// instance is assigned and when its tier changes.
    pub memory_mb: u64,
    /// CPUs of this tier's instances; 0: `pool.cpus`.
    pub cpus: f64,
    /// Seconds without traffic after which this tier's instances sleep; 0: `pool.idle_stop_secs`
    /// (see [Sleep and wake](instances.md#sleep-and-wake)).
    pub idle_stop_secs: u64,
    /// This tier's instances never sleep (e.g. a paid tier that promises an always-on assistant).
    pub never_sleep: bool,
    /// Skills an instance of this tier may have enabled at once (bundled and registry skills
    /// alike); 0: unlimited. A downgrade keeps what is installed and disables the newest past the
    /// cap (see [Skills](skills.md#tier-caps)).
    pub skills: u32,
    /// Sub-agents an instance of this tier may run at once, besides its main agent; 0: none (the
    /// main agent only). Written into the tenant's config and enforced at the edge (see
    /// [Sub-agents](skills.md#sub-agents)).
    pub subagents: u32,
    /// The Stripe price (`price_…`) a subscription to this tier is made with; empty: the tier
    /// cannot be bought by checkout (free, or given by an operator). A subscription's price
    /// names its tier (see [Billing](billing.md#the-tier-table)).
    pub price_id: String,
    /// The monthly price shown on the billing page, in cents of `billing.currency` (Stripe's
    /// price is what charges; keep the two equal).
    pub price_cents: u64,
    /// Storage of an instance's data volume, in MiB, shown with the plan; 0: not limited by
    /// the platform.
    pub storage_mb: u64,
    /// Custom domains an account of this tier may have serving; 0: none. A downgrade parks the
    /// newest past the limit (kept, not served) and an upgrade serves them again.
    pub custom_domains: u32,
    /// People who may use one account of this tier (team seats); shown with the plan.
    pub seats: u32,
    /// Messaging channels (Telegram…) an instance of this tier may have connected; 0: none (see
    /// [Channels](channels.md)).
    pub channels: u32,
}

/// `[tiers.free]`, `[tiers.pro]`, `[tiers.team]` (PRD §3.6.1); 0 means unlimited. A key left
/// out of a tier's table keeps that tier's default (setting `[tiers.pro] price_id` leaves Pro's
/// skill cap as it was).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TiersConfig {
    /// `[tiers.free]`: quotas of the free tier.
    pub free: TierConfig,
    /// `[tiers.pro]`: quotas of the Pro tier.
    pub pro: TierConfig,
    /// `[tiers.team]`: quotas of the Team tier.
    pub team: TierConfig,
}

impl Default for TiersConfig {
    fn default() -> Self {
        Self {
            free: TierConfig {
                messages_per_month: 100,
                tokens_per_month: 100_000,
                skills: 3,
                subagents: 0,
                storage_mb: 5120,
                custom_domains: 0,
                seats: 1,
                channels: 1,
                ..TierConfig::default()
            },
            pro: TierConfig {
                skills: 20,
                subagents: 5,
                price_cents: 2900,
                storage_mb: 10_240,
                custom_domains: 5,
                seats: 1,
                channels: 3,
                ..TierConfig::default()
            },
            team: TierConfig {
                skills: 0,
                subagents: 20,
                price_cents: 7900,
                storage_mb: 51_200,
                custom_domains: 20,
                seats: 5,
                channels: 5,
                ..TierConfig::default()
            },
        }
    }
}

impl<'de> Deserialize<'de> for TiersConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            #[serde(default)]
            free: Option<toml::Table>,
            #[serde(default)]
            pro: Option<toml::Table>,
            #[serde(default)]
            team: Option<toml::Table>,
        }
        // Each tier's keys over that tier's own defaults (a derived `default` would start every
        // table from zeros, i.e. unlimited).
        fn over<E: serde::de::Error>(
            base: TierConfig,
            given: Option<toml::Table>,
        ) -> Result<TierConfig, E> {
            let Some(given) = given else {
                return Ok(base);
            };
            let mut table = toml::Table::try_from(&base).map_err(E::custom)?;
            table.extend(given);
            table
                .try_into()
                .map_err(|e: toml::de::Error| E::custom(e.message()))
        }
        let given = Given::deserialize(d)?;
        let defaults = TiersConfig::default();
        Ok(TiersConfig {
            free: over::<D::Error>(defaults.free, given.free)?,
            pro: over::<D::Error>(defaults.pro, given.pro)?,
            team: over::<D::Error>(defaults.team, given.team)?,
        })
    }
}

impl TiersConfig {
    /// The quotas of `tier`.
    pub fn get(&self, tier: Tier) -> &TierConfig {
        match tier {
            Tier::Free => &self.free,
            Tier::Pro => &self.pro,
            Tier::Team => &self.team,
        }
    }

    /// The tier a Stripe price buys, if any tier is sold at `price_id`.
    pub fn by_price(&self, price_id: &str) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .find(|&t| !price_id.is_empty() && self.get(t).price_id == price_id)
    }
}

/// `[rate_limits]` (PRD §5.2): GCRA limits per client IP and per authenticated user.
///
/// What happens over a limit: [Rate limits](metering.md#rate-limits).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Requests a minute from one client IP (GCRA: a burst of this many, then one every 60/n s).
    /// Loopback clients with a valid token are limited per user only: the dashboard's chat bridge
    /// connects from this machine for every user.
    pub per_ip_per_minute: u32,
    /// Requests a minute by one user: the owner on instance hosts, the bearer token's user on the
    /// API.
    pub per_user_per_minute: u32,
    /// Requests allowed at once above the steady rate; 0 means the per-minute figure.
    pub burst: u32,
    /// Addresses plus users held before idle ones are forgotten early (bounds the limiter's
    /// memory).
    pub max_keys: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 100,
            per_user_per_minute: 1_000,
            burst: 0,
            max_keys: 100_000,
        }
    }
}

/// `[redis]`: shared counters and rate limits across edge nodes.
///
/// How counters and rate limits are shared:
/// [Redis](metering.md#redis-counters-and-limits-across-edge-nodes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`: message and token counters shared by every edge node using it.
    /// Empty: counters are per edge node (plus what the store held at start).
    pub url: String,
    /// How often each node adds its new counts to Redis and reads the all-node totals.
    pub sync_interval_ms: u64,
    /// How long a request waits for Redis's rate-limit answer; past it, or on a Redis error, this
    /// node's own limiter decides (after an error, or Redis silent for 4 × this, the node stops
    /// asking Redis until it has reconnected).
    pub rate_limit_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            sync_interval_ms: 500,
            rate_limit_timeout_ms: 25,
        }
    }
}

/// `[llm]`: the LLM egress meter instances' providers point at.
///
/// What the LLM meter does, how a custom `baseUrl` is checked, and which headers reach a provider:
/// [The LLM meter](metering.md#the-llm-meter).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Where the meter listens. `auto`: with Docker, the instance network's gateway address (the
    /// host's address on that bridge, e.g. `172.18.0.1`, which only containers on the network route
    /// to; the egress rules open exactly that address and port to instances), with local processes
    /// `127.0.0.1`; at `port`. The pool binds it once it knows its runtime, so with `runtime.kind =
    /// "none"` there is no meter; a port in use stops the pool (logged) rather than hand out real
    /// keys. `IP:port`: exactly there (must be reachable from the instances). `off` (or empty): no
    /// meter; instances get the users' keys directly and LLM tokens are not counted (development
    /// only). With `auto` the meter is set up for `runtime.config = "openclaw"` pools only (the
    /// fixture calls no provider). Whatever the address, a request without a valid instance token
    /// gets 401 and never reaches a provider.
    pub listen: String,
    /// The meter's port with `listen = "auto"`. 0 picks a free port at each start (tests: parallel
    /// edges on one network); instances configured before a restart keep the old address until
    /// their config is written again, so production keeps a fixed port.
    pub port: u16,
    /// OpenAI upstream.
    pub openai_url: String,
    /// Anthropic upstream.
    pub anthropic_url: String,
    /// Google upstream.
    pub google_url: String,
    /// Networks a user's custom endpoint may connect to although they are not public unicast, as
    /// CIDRs or single addresses (`["10.8.0.0/16", "192.168.1.20"]`): a private deployment's own
    /// LLM server, or a test's fake provider. Empty: custom endpoints reach public addresses only.
    pub allow_private_custom: Vec<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            listen: "auto".into(),
            port: 9480,
            openai_url: "https://api.openai.com".into(),
            anthropic_url: "https://api.anthropic.com".into(),
            google_url: "https://generativelanguage.googleapis.com".into(),
            allow_private_custom: Vec::new(),
        }
    }
}

/// Where the LLM meter listens, from `llm.listen` and `llm.port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmListen {
    /// No meter.
    Off,
    /// On the address instances reach (chosen with the runtime), at this port.
    Auto(u16),
    /// Exactly here.
    At(std::net::SocketAddr),
}

impl LlmConfig {
    /// `allow_private_custom` as networks; invalid entries (refused by validation) are left out.
    pub fn allowed_private_networks(&self) -> Vec<crate::addresses::IpNet> {
        self.allow_private_custom
            .iter()
            .filter_map(|n| crate::addresses::parse_network(n))
            .collect()
    }

    /// The listen mode; an invalid `listen` (refused by validation) reads as `Off`.
    pub fn listen_mode(&self) -> LlmListen {
        match self.listen.trim() {
            "auto" => LlmListen::Auto(self.port),
            "" | "off" => LlmListen::Off,
            addr => addr.parse().map_or(LlmListen::Off, LlmListen::At),
        }
    }
}

pub(crate) fn validate_llm(
    llm: &LlmConfig,
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    issue(
        matches!(llm.listen.trim(), "auto" | "off" | "")
            || llm.listen.parse::<std::net::SocketAddr>().is_ok(),
        "llm.listen",
        &llm.listen,
        "\"auto\" (the instance network's gateway address, or loopback for local processes), an IP address and port only instances reach, or \"off\" for no LLM meter",
    );
    for network in &llm.allow_private_custom {
        issue(
            crate::addresses::parse_network(network).is_some(),
            "llm.allow_private_custom",
            network,
            "a list of networks as CIDRs or addresses, such as [\"10.8.0.0/16\", \"192.168.1.20\"]",
        );
    }
    for (key, url) in [
        ("llm.openai_url", &llm.openai_url),
        ("llm.anthropic_url", &llm.anthropic_url),
        ("llm.google_url", &llm.google_url),
    ] {
        issue(
            (url.starts_with("https://") || url.starts_with("http://")) && !url.ends_with('/'),
            key,
            url,
            "an http(s) URL without a trailing slash, such as https://api.openai.com",
        );
    }
}

pub(crate) fn validate(
    metrics: &MetricsConfig,
    metering: &MeteringConfig,
    tiers: &TiersConfig,
    rate_limits: &RateLimitsConfig,
    redis: &RedisConfig,
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    issue(
        metrics.listen.is_empty() || metrics.listen.parse::<std::net::SocketAddr>().is_ok(),
        "metrics.listen",
        &metrics.listen,
        "an IP address and port such as 127.0.0.1:9464, or empty for no listener",
    );
    issue(
        (1..=3600).contains(&metering.flush_interval_secs),
        "metering.flush_interval_secs",
        &metering.flush_interval_secs,
        "1 to 3600 seconds",
    );
    issue(
        (1024..=268_435_456).contains(&metering.max_message_bytes),
        "metering.max_message_bytes",
        &metering.max_message_bytes,
        "1024 to 268435456 bytes",
    );
    issue(
        metering.upgrade_url.is_empty()
            || metering.upgrade_url.starts_with("https://")
            || metering.upgrade_url.starts_with("http://"),
        "metering.upgrade_url",
        &metering.upgrade_url,
        "an http(s) URL, or empty for <app origin>/billing",
    );
    for (name, tier) in [
        ("free", &tiers.free),
        ("pro", &tiers.pro),
        ("team", &tiers.team),
    ] {
        issue(
            tier.messages_per_month <= 1_000_000_000,
            &format!("tiers.{name}.messages_per_month"),
            &tier.messages_per_month,
            "0 (unlimited) to 1000000000",
        );
        issue(
            tier.tokens_per_month <= 1_000_000_000_000,
            &format!("tiers.{name}.tokens_per_month"),
            &tier.tokens_per_month,
            "0 (unlimited) to 1000000000000",
        );
    }
    issue(
        (1..=10_000_000).contains(&rate_limits.per_ip_per_minute),
        "rate_limits.per_ip_per_minute",
        &rate_limits.per_ip_per_minute,
        "1 to 10000000",
    );
    issue(
        (1..=10_000_000).contains(&rate_limits.per_user_per_minute),
        "rate_limits.per_user_per_minute",
        &rate_limits.per_user_per_minute,
        "1 to 10000000",
    );
    issue(
        rate_limits.burst <= 10_000_000,
        "rate_limits.burst",
        &rate_limits.burst,
        "0 to 10000000",
    );
    issue(
        (100..=100_000_000).contains(&rate_limits.max_keys),
        "rate_limits.max_keys",
        &rate_limits.max_keys,
        "100 to 100000000",
    );
    issue(
        (50..=60_000).contains(&redis.sync_interval_ms),
        "redis.sync_interval_ms",
        &redis.sync_interval_ms,
        "50 to 60000 milliseconds",
    );
    issue(
        (1..=1_000).contains(&redis.rate_limit_timeout_ms),
        "redis.rate_limit_timeout_ms",
        &redis.rate_limit_timeout_ms,
        "1 to 1000 milliseconds",
    );
    issue(
        redis.url.is_empty()
            || redis.url.starts_with("redis://")
            || redis.url.starts_with("rediss://"),
        "redis.url",
        &redis.url,
        "redis://host:port[/db], or empty for counters in this process only",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Error};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_toml_with_env(
            text,
            std::path::Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_llm_meter_is_on_by_default_and_can_be_placed_or_turned_off() {
        let default = load("", &[]).unwrap();
        assert_eq!(default.llm.listen_mode(), LlmListen::Auto(9480));
        let tests = load("[llm]\nport = 0\n", &[]).unwrap();
        assert_eq!(tests.llm.listen_mode(), LlmListen::Auto(0));
        let fixed = load("", &[("CLAWDEPLOY_LLM__LISTEN", "10.0.0.1:9000")]).unwrap();
        assert_eq!(
            fixed.llm.listen_mode(),
            LlmListen::At("10.0.0.1:9000".parse().unwrap())
        );
        for off in ["off", ""] {
            let config = load(&format!("[llm]\nlisten = \"{off}\"\n"), &[]).unwrap();
            assert_eq!(config.llm.listen_mode(), LlmListen::Off);
        }
        let Err(Error::Invalid(issues)) = load("[llm]\nlisten = \"gateway:9480\"\n", &[]) else {
            panic!("an address that is no IP:port must be refused");
        };
        assert_eq!(issues[0].key, "llm.listen");
        assert_eq!(issues[0].value, "gateway:9480");
        assert!(issues[0].allowed.contains("auto"), "{}", issues[0].allowed);
    }
}
