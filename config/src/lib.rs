//! The one typed configuration of a ClawDeploy edge node.
//!
//! Loaded from TOML (`--config FILE`) over embedded defaults, then every scalar key may be overridden
//! by an environment variable `CLAWDEPLOY_<SECTION>__<KEY>` (nested tables add more `__`-separated
//! parts, e.g. `CLAWDEPLOY_TIERS__FREE__MEMORY_MB`). The result is validated once at load: each error
//! names the key, the bad value and what is allowed. Every key is documented in `docs/config.md`,
//! generated from the doc comments here (`reference`).

#![warn(missing_docs)]

pub mod addresses;
pub mod billing;
pub mod channels;
pub mod hostname;
pub mod instances;
pub mod metering;
#[cfg(test)]
mod reference;
pub mod sessions;
pub mod skills;
pub mod tier;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use billing::{BillingConfig, CreditPack};
pub use channels::ChannelsConfig;
pub use hostname::{normalize_host, validate_hostname, HostnameError};
pub use instances::{PoolConfig, RuntimeConfig, RuntimeKind, SleepMode};
pub use metering::{
    LlmConfig, LlmListen, MeteringConfig, MetricsConfig, RateLimitsConfig, RedisConfig, TierConfig,
    TiersConfig,
};
pub use sessions::SessionsConfig;
pub use skills::SkillsConfig;
pub use tier::{Tier, UnknownTier};
pub use tls::{AcmeConfig, DnsConfig, DnsProviderKind, DomainsConfig, TlsConfig, TlsMode};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CLAWDEPLOY_";

/// What replaces a secret when the config is printed.
pub const MASK: &str = "********";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, domains, timeouts and logging of the edge process.
    pub server: ServerConfig,
    /// `[database]`: where accounts and instances are stored.
    pub database: DatabaseConfig,
    /// `[secrets]`: JWT signing key, master key for provider keys, password hashing.
    pub secrets: SecretsConfig,
    /// `[smtp]`: outgoing mail; an empty host keeps mail in the outbox.
    pub smtp: SmtpConfig,
    /// `[limits]`: login throttling and account grace periods.
    pub limits: LimitsConfig,
    /// `[runtime]`: where instances run.
    pub runtime: RuntimeConfig,
    /// `[pool]`: warm instances per node.
    pub pool: PoolConfig,
    /// `[sessions]`: browser sessions on instance hosts.
    pub sessions: SessionsConfig,
    /// `[metrics]`: the Prometheus listener.
    pub metrics: MetricsConfig,
    /// `[metering]`: OpenClaw message counting and quotas at the edge.
    pub metering: MeteringConfig,
    /// `[tiers.<tier>]`: monthly quotas per tier.
    pub tiers: TiersConfig,
    /// `[rate_limits]`: requests per minute per client IP and per user.
    pub rate_limits: RateLimitsConfig,
    /// `[redis]`: shared counters and limits across edge nodes.
    pub redis: RedisConfig,
    /// `[llm]`: the LLM egress meter.
    pub llm: LlmConfig,
    /// `[skills]`: the skill catalogue and the registry instances install from.
    pub skills: SkillsConfig,
    /// `[channels]`: the messaging apps owners connect their assistants to.
    pub channels: ChannelsConfig,
    /// Static operator routes: public hosts proxied to fixed upstreams.
    pub routes: Vec<RouteConfig>,
    /// `[tls]`, `[acme]`, `[dns]`, `[domains]`: HTTPS and its certificates (see tls.rs).
    pub tls: TlsConfig,
    /// `[acme]`: the ACME CA that issues certificates when `tls.mode = "acme"`.
    pub acme: AcmeConfig,
    /// `[dns]`: the DNS provider that answers DNS-01 challenges, and the resolver records are
    /// checked with.
    pub dns: DnsConfig,
    /// `[domains]`: customers' own domains.
    pub domains: DomainsConfig,
    /// `[billing]`: Stripe subscriptions and AI credits.
    pub billing: BillingConfig,
    /// `[[credit_packs]]`: the AI credit packs on sale.
    pub credit_packs: Vec<CreditPack>,
}

/// `[server]`: listeners, domains, timeouts and logging of the edge process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain HTTP listener, `IP:port`. Production uses `0.0.0.0:80`.
    pub http_listen: String,
    /// Instances live at `<sub>.<base_domain>`. The bare domain redirects to the app domain.
    pub base_domain: String,
    /// Host of the dashboard and the API (`/api`, `/admin`, `/healthz`, `/readyz`). In production,
    /// put it on a different registrable domain from `base_domain` (as GitHub Pages does), so a
    /// tenant's page can never touch the dashboard's cookies. Empty means `app.<base_domain>`.
    pub app_domain: String,
    /// The bootstrap operator credential for `/admin` (`Authorization: Bearer …`), at least 16
    /// characters. If empty, 32 random bytes are generated into `<data_dir>/admin_token` (mode
    /// 0600) on first start and reused after that.
    pub admin_token: String,
    /// Where the embedded default keeps its database and generated secrets.
    pub data_dir: PathBuf,
    /// Proxy worker threads. 0 means one per CPU.
    pub threads: usize,
    /// How long the edge waits to connect to an upstream before answering 502.
    pub connect_timeout_ms: u64,
    /// How long a plain HTTP exchange may wait on a silent upstream or client. The edge answers 504
    /// when the upstream stays silent.
    pub read_timeout_secs: u64,
    /// How long an upgraded WebSocket may stay silent before the edge closes it. This is separate
    /// from `read_timeout_secs`, so long-lived gateway sessions are not cut (pingora#255).
    pub ws_idle_timeout_secs: u64,
    /// On SIGTERM, the longest in-flight requests and WebSockets get to finish. The edge exits as
    /// soon as nothing is in flight.
    pub grace_period_secs: u64,
    /// Largest request line plus headers. Larger requests get 431. Pingora refuses anything over 1
    /// MiB, or over 256 headers, with 400.
    pub max_header_bytes: usize,
    /// Largest request body (64 MiB). A larger `Content-Length` gets 413 `BODY_TOO_LARGE` before
    /// anything is forwarded; a chunked body that grows past it is cut off (413 if no response has
    /// started). WebSocket traffic is not counted.
    pub max_body_bytes: u64,
    /// A client must send a whole request header within this time, counted from when the edge
    /// starts waiting for it (so it also ends a kept-alive connection idle that long); otherwise it
    /// is disconnected. Bounds slow-header (slowloris) clients, whose buffers
    /// `max_header_bytes`/Pingora's 1 MiB cap bound too.
    pub header_timeout_secs: u64,
    /// Idle upstream connections kept for reuse, per worker thread.
    pub upstream_keepalive_pool_size: usize,
    /// `text` or `json` (one JSON object per line, on stderr). `RUST_LOG` sets the level; the
    /// default is `info`.
    pub log_format: LogFormat,
    /// One `access` line per request: request id, client, method, host, path (never the query
    /// string), status, route kind, duration.
    pub access_log: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen: "127.0.0.1:8080".into(),
            base_domain: "localhost".into(),
            app_domain: String::new(),
            admin_token: String::new(),
            data_dir: PathBuf::from("data"),
            threads: 0,
            connect_timeout_ms: 2_000,
            read_timeout_secs: 60,
            ws_idle_timeout_secs: 3_600,
            grace_period_secs: 10,
            max_header_bytes: 32 * 1024,
            max_body_bytes: 64 << 20,
            header_timeout_secs: 30,
            upstream_keepalive_pool_size: 1024,
            log_format: LogFormat::Text,
            access_log: true,
        }
    }
}

impl ServerConfig {
    /// The dashboard host: `app_domain`, or `app.<base_domain>` when unset.
    pub fn app_domain(&self) -> String {
        if self.app_domain.is_empty() {
            format!("app.{}", self.base_domain)
        } else {
            self.app_domain.clone()
        }
    }

    /// The worker thread count, resolving 0 to the number of CPUs.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// How log lines are written to stderr (`server.log_format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, tracing-subscriber's default format.
    Text,
    /// One JSON object per line, the event's fields flattened into it.
    Json,
}

/// `[database]`: where accounts and instances are stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (one edge node; WAL mode, the file and its directory are created) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (several edge nodes). The password is masked by
    /// `check-config`. Empty means `sqlite://<data_dir>/clawdeploy.db`.
    pub url: String,
    /// Pool size; 0 means 8 for SQLite, 10 for PostgreSQL.
    pub max_connections: u32,
}

/// `[secrets]`: JWT signing key, master key for provider keys, password hashing. Empty keys are
/// generated on first start into the data dir (mode 0600).
///
/// All four secrets are masked by `check-config` and never logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// HS256 key signing access tokens, at least 32 characters. If empty, 32 random bytes (hex) are
    /// generated into `<data_dir>/jwt_key` (mode 0600) on first start. Changing it logs everyone
    /// out.
    pub jwt_key: String,
    /// Base64 of 32 random bytes (`openssl rand -base64 32`). AES-256-GCM key sealing provider API
    /// keys and MFA secrets. If empty, generated into `<data_dir>/master_key` (mode 0600).
    pub master_key: String,
    /// Id stored with every value sealed under `master_key` (1–32 of `A-Z a-z 0-9 _ -`).
    pub master_key_id: String,
    /// Older keys that can still open values: `id:base64,id:base64`. To rotate: move the current
    /// key here under its id, set a new `master_key` with a new `master_key_id`; values are
    /// re-sealed under the new key (`Store::reseal_secrets`), then the old key can go.
    pub previous_master_keys: String,
    /// bcrypt cost of password hashes. The PRD asks for 12; 4–11 exist only so tests run fast.
    pub bcrypt_cost: u32,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            jwt_key: String::new(),
            master_key: String::new(),
            master_key_id: "k1".into(),
            previous_master_keys: String::new(),
            bcrypt_cost: 12,
        }
    }
}

impl SecretsConfig {
    /// `previous_master_keys` as (id, base64 key) pairs; `None` when malformed.
    pub fn previous_keys(&self) -> Option<Vec<(String, String)>> {
        self.previous_master_keys
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (id, key) = p.split_once(':')?;
                let ok_id = !id.is_empty()
                    && id.len() <= 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                (ok_id && !key.is_empty()).then(|| (id.to_string(), key.to_string()))
            })
            .collect()
    }
}

/// `[smtp]`: outgoing mail; an empty host keeps mail in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// SMTP relay (IP or DNS name). Empty: outgoing mail (verification and reset links) is kept in
    /// the database's outbox and listed by `GET /admin/outbox`, so a fresh install works without a
    /// mail server.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// SMTP AUTH credentials, both or neither (with `password`): the user name.
    pub username: String,
    /// SMTP AUTH credentials, both or neither (with `username`): the password. The password is
    /// masked.
    pub password: String,
    /// Sender address, bare or `Name <address>`. Empty means `ClawDeploy <no-reply@<app domain>>`.
    pub from: String,
    /// How long to wait for the relay (1–300).
    pub timeout_secs: u64,
    /// `starttls` (upgrade the connection, usually port 587), `tls` (TLS from the first byte,
    /// usually 465), or `none` (plain SMTP, for a relay on this host; credentials with `none` are
    /// refused unless the relay is on loopback). Certificates are checked against the Mozilla roots
    /// (webpki-roots).
    pub tls: SmtpTls,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Connect in plain text, then upgrade with `STARTTLS` (usually port 587).
    Starttls,
    /// TLS from the first byte (implicit TLS, usually port 465).
    Tls,
    /// Plain SMTP, unencrypted: only for a relay on this host (credentials are refused unless the
    /// relay is on loopback).
    None,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 25,
            username: String::new(),
            password: String::new(),
            from: String::new(),
            timeout_secs: 10,
            tls: SmtpTls::Starttls,
        }
    }
}

/// `[limits]`: login throttling and account grace periods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Failed logins (wrong password or MFA code) of one account within `login_window_secs`, after
    /// which its logins get 429 with `Retry-After`, even with the right password. A successful
    /// login or a password reset clears it.
    pub login_failures_per_account: u32,
    /// The same per client IP address (the edge's `X-Real-IP`).
    pub login_failures_per_ip: u32,
    /// The throttling window. Counters are in memory, per edge node.
    pub login_window_secs: u64,
    /// An account whose email is still unverified after this many days has its instance stopped
    /// until it verifies (checked at start and hourly).
    pub unverified_grace_days: u32,
    /// Days between `DELETE /api/account` and the deletion; `POST /api/account/restore` undoes it
    /// until then.
    pub deletion_grace_days: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            login_failures_per_account: 5,
            login_failures_per_ip: 20,
            login_window_secs: 900,
            unverified_grace_days: 7,
            deletion_grace_days: 30,
        }
    }
}

impl Config {
    /// The database URL: `database.url`, or the SQLite file under the data dir.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}",
                self.server.data_dir.join("clawdeploy.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    /// The origin (scheme, host and port) under which the edge serves `host`, e.g.
    /// `http://app.localhost:8080`: where links in mails and the API's URLs point. `https` with
    /// the HTTPS listener's port (omitted when 443) when the edge serves HTTPS for real: publicly
    /// trusted certificates (`tls.mode = "acme"`) or plain HTTP redirected to HTTPS. The embedded
    /// development default (local CA, no redirect) keeps `http` and the plain listener's port
    /// (omitted when 80), since browsers do not trust the local CA unless told to.
    pub fn public_origin(&self, host: &str) -> String {
        self.origin(self.serves_https_publicly(), host)
    }

    /// The origin of `host` on the HTTPS listener (`https`) or the plain one (`http`).
    pub fn origin(&self, https: bool, host: &str) -> String {
        let (scheme, listen, default_port) = if https && !self.tls.listen.is_empty() {
            ("https", &self.tls.listen, 443)
        } else {
            ("http", &self.server.http_listen, 80)
        };
        let port = listen
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(default_port);
        if port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }

    /// Whether users reach the edge over HTTPS (see [`Config::public_origin`]).
    pub fn serves_https_publicly(&self) -> bool {
        !self.tls.listen.is_empty() && (self.tls.mode == TlsMode::Acme || self.tls.redirect_http)
    }

    /// The WebSocket origin matching [`Config::public_origin`] (`ws://` while only plain HTTP is served).
    pub fn public_ws_origin(&self, host: &str) -> String {
        let origin = self.public_origin(host);
        match origin.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", origin.trim_start_matches("http://")),
        }
    }
}

/// Masks the password of a URL such as `postgres://user:pass@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `[[routes]]`: static operator routes: public hosts proxied to fixed upstreams, such as a status
/// page or a docs site. They are never private to an instance.
///
/// ```toml
/// [[routes]]
/// host = "status.example.com"
/// upstream = "10.0.0.5:8080"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A DNS name. It is normalised (lower case, no port, no trailing dot) and must not be
    /// `base_domain` or the app domain.
    pub host: String,
    /// `IP:port`. Host names are refused, so no DNS lookup ever happens on the request path.
    pub upstream: String,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `server.http_listen` or `routes[2].upstream`.
    pub key: String,
    /// The value found, as given (a secret shows as [`MASK`]); empty when the problem is not one
    /// value.
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {:?}: {}", self.key, self.value, self.allowed)
    }
}

/// Why a configuration could not be loaded: the crate's error.
///
/// Two focused errors stay apart, as the error types of public APIs whose callers use them on
/// their own: [`HostnameError`] of [`validate_hostname`] (its message becomes a config issue or an
/// API field error) and [`UnknownTier`], `Tier`'s `FromStr` error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read. The I/O error is in the message, so it is not a
    /// `source()` (chain printers show it once).
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file, as given with `--config`.
        path: PathBuf,
        /// Why reading failed.
        error: std::io::Error,
    },
    /// The config file is not TOML, or holds an unknown key or a value of the wrong type.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file the text came from (`<embedded defaults>` without `--config`).
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// Values that are not allowed, in the file or in environment overrides: every problem
    /// found, at least one.
    #[error("{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn format_issues(issues: &[ConfigIssue]) -> String {
    let mut out = format!(
        "invalid configuration ({} problem{}):",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        out.push_str("\n  - ");
        out.push_str(&issue.to_string());
    }
    out
}

impl Config {
    /// Loads the embedded defaults, the optional file, then the environment overrides, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|error| Error::Read {
                path: path.to_path_buf(),
                error,
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, path.unwrap_or(Path::new("<embedded defaults>")), env)
    }

    /// Parses TOML text over the defaults, applies overrides from `env`, and validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let parse_error = |e: toml::de::Error| Error::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        let from_file: Config = toml::from_str(text).map_err(parse_error)?;
        // Round-trip through a TOML tree holding every key, so an override can be parsed by the
        // type of the key it replaces.
        let mut tree = toml::Table::try_from(&from_file)
            .map_err(|e| invalid("<config>", "", &e.to_string()))?;
        let mut issues = Vec::new();
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                if rest.contains("__") {
                    if let Err(issue) = apply_override(&mut tree, &name, rest, &value) {
                        issues.push(issue);
                    }
                }
            }
        }
        if !issues.is_empty() {
            return Err(Error::Invalid(issues));
        }
        let config: Config = tree.try_into().map_err(|e: toml::de::Error| {
            Error::Invalid(vec![ConfigIssue {
                key: "<environment>".into(),
                value: String::new(),
                allowed: e.message().to_string(),
            }])
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key; all problems are reported at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut issues = Vec::new();
        let mut check = |ok: bool, key: &str, value: &dyn std::fmt::Display, allowed: &str| {
            if !ok {
                issues.push(ConfigIssue {
                    key: key.into(),
                    value: value.to_string(),
                    allowed: allowed.into(),
                });
            }
        };
        let s = &self.server;
        check(
            s.http_listen.parse::<SocketAddr>().is_ok(),
            "server.http_listen",
            &s.http_listen,
            "an IP address and port, such as 127.0.0.1:8080 or 0.0.0.0:80",
        );
        check(
            validate_hostname(&s.base_domain).is_ok(),
            "server.base_domain",
            &s.base_domain,
            "a lower-case DNS name such as example.com (no scheme, port or trailing dot)",
        );
        if !s.app_domain.is_empty() {
            check(
                validate_hostname(&s.app_domain).is_ok() && s.app_domain != s.base_domain,
                "server.app_domain",
                &s.app_domain,
                "a lower-case DNS name other than server.base_domain, or empty for app.<base_domain>",
            );
        }
        check(
            s.admin_token.is_empty() || s.admin_token.len() >= 16,
            "server.admin_token",
            &MASK,
            "at least 16 characters, or empty to generate one into <data_dir>/admin_token",
        );
        check(
            s.threads <= 256,
            "server.threads",
            &s.threads,
            "0 (one per CPU) to 256",
        );
        check(
            (1..=60_000).contains(&s.connect_timeout_ms),
            "server.connect_timeout_ms",
            &s.connect_timeout_ms,
            "1 to 60000 milliseconds",
        );
        check(
            (1..=86_400).contains(&s.read_timeout_secs),
            "server.read_timeout_secs",
            &s.read_timeout_secs,
            "1 to 86400 seconds",
        );
        check(
            (1..=7 * 86_400).contains(&s.ws_idle_timeout_secs),
            "server.ws_idle_timeout_secs",
            &s.ws_idle_timeout_secs,
            "1 to 604800 seconds",
        );
        check(
            s.grace_period_secs <= 3_600,
            "server.grace_period_secs",
            &s.grace_period_secs,
            "0 to 3600 seconds",
        );
        check(
            (1024..=1_048_575).contains(&s.max_header_bytes),
            "server.max_header_bytes",
            &s.max_header_bytes,
            "1024 to 1048575 bytes",
        );
        check(
            s.max_body_bytes >= 1024,
            "server.max_body_bytes",
            &s.max_body_bytes,
            "at least 1024 bytes (67108864, 64 MiB, by default)",
        );
        check(
            (1..=3600).contains(&s.header_timeout_secs),
            "server.header_timeout_secs",
            &s.header_timeout_secs,
            "1 to 3600 seconds",
        );
        check(
            (1..=1_000_000).contains(&s.upstream_keepalive_pool_size),
            "server.upstream_keepalive_pool_size",
            &s.upstream_keepalive_pool_size,
            "1 to 1000000",
        );
        let db_url = &self.database.url;
        check(
            db_url.is_empty()
                || (db_url.starts_with("sqlite:") && db_url.len() > "sqlite://".len())
                || db_url.starts_with("postgres://")
                || db_url.starts_with("postgresql://"),
            "database.url",
            &mask_url_password(db_url),
            "sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DB, or empty for sqlite://<data_dir>/clawdeploy.db",
        );
        check(
            self.database.max_connections <= 1000,
            "database.max_connections",
            &self.database.max_connections,
            "0 (the default: 8 for SQLite, 10 for PostgreSQL) to 1000",
        );
        let sec = &self.secrets;
        check(
            sec.jwt_key.is_empty() || sec.jwt_key.len() >= 32,
            "secrets.jwt_key",
            &MASK,
            "at least 32 characters, or empty to generate one into <data_dir>/jwt_key",
        );
        check(
            sec.master_key.is_empty() || is_base64_key(&sec.master_key),
            "secrets.master_key",
            &MASK,
            "base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`), or empty to generate one into <data_dir>/master_key",
        );
        let id_ok = |id: &str| {
            !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        check(
            id_ok(&sec.master_key_id),
            "secrets.master_key_id",
            &sec.master_key_id,
            "1 to 32 characters of A-Z a-z 0-9 _ -",
        );
        match sec.previous_keys() {
            Some(keys) => check(
                keys.iter()
                    .all(|(id, key)| is_base64_key(key) && *id != sec.master_key_id),
                "secrets.previous_master_keys",
                &MASK,
                "comma-separated id:base64 pairs of 32-byte keys, ids other than secrets.master_key_id",
            ),
            None => check(
                false,
                "secrets.previous_master_keys",
                &MASK,
                "comma-separated id:base64 pairs, such as old1:BASE64,old2:BASE64",
            ),
        }
        check(
            (4..=16).contains(&sec.bcrypt_cost),
            "secrets.bcrypt_cost",
            &sec.bcrypt_cost,
            "4 to 16 (12 in production, as the PRD asks; lower only for tests)",
        );
        let smtp = &self.smtp;
        if !smtp.host.is_empty() {
            check(
                smtp.host.parse::<std::net::IpAddr>().is_ok()
                    || validate_hostname(&smtp.host).is_ok(),
                "smtp.host",
                &smtp.host,
                "an IP address or DNS name of the SMTP relay, or empty to keep mail in the outbox",
            );
            check(smtp.port != 0, "smtp.port", &smtp.port, "1 to 65535");
        }
        let loopback_relay = smtp.host == "localhost"
            || smtp
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        check(
            smtp.tls != SmtpTls::None || smtp.username.is_empty() || loopback_relay,
            "smtp.tls",
            &"none",
            "starttls or tls when smtp.username is set: credentials are never sent in plain text to another host",
        );
        check(
            smtp.username.is_empty() == smtp.password.is_empty(),
            "smtp.username",
            &smtp.username,
            "set together with smtp.password (both or neither)",
        );
        check(
            smtp.from.is_empty() || is_mailbox(&smtp.from),
            "smtp.from",
            &smtp.from,
            "an address such as no-reply@example.com or ClawDeploy <no-reply@example.com>",
        );
        check(
            (1..=300).contains(&smtp.timeout_secs),
            "smtp.timeout_secs",
            &smtp.timeout_secs,
            "1 to 300 seconds",
        );
        let lim = &self.limits;
        check(
            (1..=1000).contains(&lim.login_failures_per_account),
            "limits.login_failures_per_account",
            &lim.login_failures_per_account,
            "1 to 1000",
        );
        check(
            (1..=100_000).contains(&lim.login_failures_per_ip),
            "limits.login_failures_per_ip",
            &lim.login_failures_per_ip,
            "1 to 100000",
        );
        check(
            (1..=86_400).contains(&lim.login_window_secs),
            "limits.login_window_secs",
            &lim.login_window_secs,
            "1 to 86400 seconds",
        );
        check(
            (1..=365).contains(&lim.unverified_grace_days),
            "limits.unverified_grace_days",
            &lim.unverified_grace_days,
            "1 to 365 days",
        );
        check(
            (1..=365).contains(&lim.deletion_grace_days),
            "limits.deletion_grace_days",
            &lim.deletion_grace_days,
            "1 to 365 days",
        );
        let app_domain = s.app_domain();
        let mut seen = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}].host");
            match normalize_host(&route.host) {
                Some(host) if validate_hostname(&host).is_ok() => {
                    check(
                        host != s.base_domain && host != app_domain,
                        &key,
                        &route.host,
                        "a host other than server.base_domain and the app domain, which the edge serves itself",
                    );
                    check(
                        seen.insert(host),
                        &key,
                        &route.host,
                        "a host not already used by another [[routes]] entry",
                    );
                }
                _ => check(
                    false,
                    &key,
                    &route.host,
                    "a DNS name such as status.example.com",
                ),
            }
            check(
                route.upstream.parse::<SocketAddr>().is_ok(),
                &format!("routes[{i}].upstream"),
                &route.upstream,
                "an IP address and port such as 127.0.0.1:9001 (host names are not resolved)",
            );
        }
        instances::validate(&self.runtime, &self.pool, &mut check);
        // Two listeners on one address: Pingora would share one socket between them and abort.
        let listeners = [
            ("server.http_listen", &self.server.http_listen),
            ("tls.listen", &self.tls.listen),
            ("metrics.listen", &self.metrics.listen),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let taken = listeners[..i]
                .iter()
                .find(|(_, other)| !addr.is_empty() && other == addr);
            if let Some((other_key, _)) = taken {
                check(
                    false,
                    key,
                    addr,
                    &format!(
                        "an address other than {other_key}'s: each listener needs its own port"
                    ),
                );
            }
        }
        sessions::validate(&self.sessions, &mut check);
        skills::validate(&self.skills, &mut check);
        channels::validate(&self.channels, &mut check);
        metering::validate(
            &self.metrics,
            &self.metering,
            &self.tiers,
            &self.rate_limits,
            &self.redis,
            &mut check,
        );
        metering::validate_llm(&self.llm, &mut check);
        billing::validate(&self.billing, &mut check);
        billing::validate_packs(&self.credit_packs, &mut check);
        tls::validate(&self.tls, &self.acme, &self.dns, &self.domains, &mut check);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(issues))
        }
    }

    /// The effective configuration as TOML, with secrets replaced by [`MASK`].
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [
            &mut shown.server.admin_token,
            &mut shown.secrets.jwt_key,
            &mut shown.secrets.master_key,
            &mut shown.secrets.previous_master_keys,
            &mut shown.smtp.password,
            &mut shown.acme.eab_hmac_key,
            &mut shown.dns.tsig_secret,
            &mut shown.dns.cloudflare_api_token,
            &mut shown.billing.stripe_secret_key,
            &mut shown.billing.openai_key,
            &mut shown.billing.anthropic_key,
            &mut shown.billing.google_key,
        ]
        .into_iter()
        .chain(&mut shown.billing.webhook_secrets)
        {
            if !secret.is_empty() {
                *secret = MASK.into();
            }
        }
        shown.database.url = mask_url_password(&shown.database.url);
        shown.redis.url = mask_url_password(&shown.redis.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// True for base64 (standard or URL-safe, padding optional) of exactly 32 bytes.
fn is_base64_key(s: &str) -> bool {
    let t = s.trim().trim_end_matches('=');
    let valid = t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b));
    valid && t.len() == 43
}

/// A bare address or `Name <address>`, loosely checked.
fn is_mailbox(s: &str) -> bool {
    let addr = match (s.find('<'), s.strip_suffix('>')) {
        (Some(i), Some(rest)) => &rest[i + 1..],
        (None, None) => s,
        _ => return false,
    };
    match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !local.contains(char::is_whitespace)
                && validate_hostname(domain).is_ok()
        }
        None => false,
    }
}

fn invalid(key: &str, value: &str, allowed: &str) -> Error {
    Error::Invalid(vec![ConfigIssue {
        key: key.into(),
        value: value.into(),
        allowed: allowed.into(),
    }])
}

/// Sets the key named by an environment variable, parsing its value by the type of the key it replaces.
fn apply_override(
    tree: &mut toml::Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigIssue> {
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let issue = |allowed: String| ConfigIssue {
        key: var.to_string(),
        value: value.to_string(),
        allowed,
    };
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| issue("CLAWDEPLOY_<SECTION>__<KEY>".into()))?;
    let mut table = tree;
    for part in parents {
        table = match table.get_mut(part) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(issue(format!(
                    "a known config section; there is no section {part:?}"
                )))
            }
        };
    }
    let new_value = match table.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| issue("a whole number".into()))?,
        ),
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(value.trim().parse().map_err(|_| issue("a number".into()))?)
        }
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match value.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(issue("true or false".into())),
        }),
        Some(_) => {
            return Err(issue(
                "a scalar key; tables and arrays are set in the config file".into(),
            ))
        }
        None => {
            return Err(issue(format!(
                "a known config key; there is no key {last:?} in this section"
            )))
        }
    };
    table.insert(last.clone(), new_value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_toml_with_env(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn issues(result: Result<Config, Error>) -> Vec<ConfigIssue> {
        match result {
            Err(Error::Invalid(issues)) => issues,
            other => panic!("expected validation issues, got {other:?}"),
        }
    }

    #[test]
    fn embedded_defaults_match_the_brief() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.http_listen, "127.0.0.1:8080");
        assert_eq!(config.server.base_domain, "localhost");
        assert_eq!(config.server.app_domain(), "app.localhost");
        assert_eq!(config.server.connect_timeout_ms, 2_000);
        assert_eq!(config.server.ws_idle_timeout_secs, 3_600);
        assert_eq!(config.server.grace_period_secs, 10);
    }

    #[test]
    fn env_overrides_by_type() {
        let config = load(
            "[server]\nbase_domain = \"example.com\"\n",
            &[
                ("CLAWDEPLOY_SERVER__HTTP_LISTEN", "0.0.0.0:80"),
                ("CLAWDEPLOY_SERVER__CONNECT_TIMEOUT_MS", "500"),
                ("CLAWDEPLOY_SERVER__ACCESS_LOG", "false"),
                ("CLAWDEPLOY_SERVER__ADMIN_TOKEN", "1234567890123456"),
                ("CLAWDEPLOY_UNRELATED", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.http_listen, "0.0.0.0:80");
        assert_eq!(config.server.connect_timeout_ms, 500);
        assert!(!config.server.access_log);
        assert_eq!(
            config.server.admin_token, "1234567890123456",
            "a numeric string stays a string"
        );
        assert_eq!(config.server.app_domain(), "app.example.com");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let found = issues(load(
            "[server]\nhttp_listen = \"127.0.0.1:8080\"\n[tls]\nlisten = \"127.0.0.1:8080\"\n",
            &[],
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "tls.listen");
        assert!(found[0].allowed.contains("server.http_listen"), "{found:?}");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let found = issues(load(
            "",
            &[("CLAWDEPLOY_SERVER__CONNECT_TIMEOUT_MS", "soon")],
        ));
        assert_eq!(found[0].key, "CLAWDEPLOY_SERVER__CONNECT_TIMEOUT_MS");
        assert_eq!(found[0].value, "soon");
        let found = issues(load(
            "",
            &[
                ("CLAWDEPLOY_SERVER__NO_SUCH_KEY", "1"),
                ("CLAWDEPLOY_NOPE__X", "1"),
            ],
        ));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn validation_names_key_value_and_what_is_allowed() {
        let found = issues(load(
            "[server]\nhttp_listen = \"localhost:80\"\nbase_domain = \"Example.com\"\nconnect_timeout_ms = 0\n\n\
             [[routes]]\nhost = \"status.example.com\"\nupstream = \"backend:9000\"\n\n\
             [[routes]]\nhost = \"STATUS.example.com\"\nupstream = \"127.0.0.1:9000\"\n",
            &[],
        ));
        let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.http_listen",
                "server.base_domain",
                "server.connect_timeout_ms",
                "routes[0].upstream",
                "routes[1].host"
            ]
        );
        assert_eq!(found[0].value, "localhost:80");
        assert!(found[0].allowed.contains("IP address and port"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load("[server]\nhttp_lsten = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("http_lsten"), "{err}");
    }

    #[test]
    fn new_sections_validate_and_override() {
        let config = load(
            "",
            &[
                ("CLAWDEPLOY_DATABASE__URL", "postgres://u:pw@127.0.0.1/db"),
                ("CLAWDEPLOY_LIMITS__LOGIN_FAILURES_PER_ACCOUNT", "3"),
                ("CLAWDEPLOY_SMTP__HOST", "127.0.0.1"),
                ("CLAWDEPLOY_SMTP__PORT", "2525"),
                ("CLAWDEPLOY_SECRETS__BCRYPT_COST", "4"),
            ],
        )
        .unwrap();
        assert_eq!(config.database_url(), "postgres://u:pw@127.0.0.1/db");
        assert_eq!(config.limits.login_failures_per_account, 3);
        assert_eq!(config.smtp.port, 2525);
        assert_eq!(config.secrets.bcrypt_cost, 4);
        let shown = config.to_masked_toml();
        assert!(!shown.contains(":pw@"), "{shown}");

        let default = load("", &[]).unwrap();
        assert_eq!(default.database_url(), "sqlite://data/clawdeploy.db");
        assert_eq!(
            default.public_origin("app.localhost"),
            "http://app.localhost:8080"
        );
        assert_eq!(
            default.public_ws_origin("a.localhost"),
            "ws://a.localhost:8080"
        );
        // A real HTTPS setup: links and URLs are https, on the HTTPS port (443 left out).
        let acme = load(
            "[tls]\nmode = \"acme\"\nlisten = \"0.0.0.0:443\"\n[acme]\nwildcard = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(acme.public_origin("app.x.test"), "https://app.x.test");
        assert_eq!(acme.public_ws_origin("a.x.test"), "wss://a.x.test");
        let redirected = load("[tls]\nredirect_http = true\n", &[]).unwrap();
        assert_eq!(
            redirected.public_origin("app.localhost"),
            "https://app.localhost:8443"
        );
        let no_https = load(
            "[tls]\nmode = \"acme\"\nlisten = \"\"\n[acme]\nwildcard = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            no_https.public_origin("app.localhost"),
            "http://app.localhost:8080"
        );

        let found = issues(load(
            "[database]\nurl = \"mysql://x\"\n[secrets]\njwt_key = \"short\"\nmaster_key = \"nope\"\n\
             previous_master_keys = \"broken\"\nbcrypt_cost = 40\n[smtp]\nfrom = \"not an address\"\n\
             [limits]\nlogin_window_secs = 0\n",
            &[],
        ));
        let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "database.url",
                "secrets.jwt_key",
                "secrets.master_key",
                "secrets.previous_master_keys",
                "secrets.bcrypt_cost",
                "smtp.from",
                "limits.login_window_secs"
            ]
        );
        assert!(found.iter().all(|i| !i.value.contains("short")));
        assert!(load(
            "[secrets]\nmaster_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
             previous_master_keys = \"old:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=\"\n",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let config = load(
            "[server]\nadmin_token = \"super-secret-admin-token\"\n",
            &[],
        )
        .unwrap();
        let shown = config.to_masked_toml();
        assert!(!shown.contains("super-secret"));
        assert!(shown.contains(MASK));
    }

    #[test]
    fn smtp_credentials_never_travel_in_plain_text_to_another_host() {
        let plain = "[smtp]\nhost = \"mail.example.com\"\nusername = \"u\"\npassword = \"p\"\ntls = \"none\"\n";
        let found = issues(load(plain, &[]));
        assert!(found.iter().any(|i| i.key == "smtp.tls"), "{found:?}");
        let loopback =
            "[smtp]\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"\ntls = \"none\"\n";
        assert!(load(loopback, &[]).is_ok());
        let starttls =
            "[smtp]\nhost = \"mail.example.com\"\nport = 587\nusername = \"u\"\npassword = \"p\"\n";
        assert_eq!(
            load(starttls, &[]).unwrap().smtp.tls,
            SmtpTls::Starttls,
            "STARTTLS by default"
        );
    }
}
