//! The one typed configuration of a ClawDeploy edge node.
//!
//! Loaded from TOML (`--config FILE`) over embedded defaults, then every scalar key may be overridden
//! by an environment variable `CLAWDEPLOY_<SECTION>__<KEY>` (nested tables add more `__`-separated
//! parts, e.g. `CLAWDEPLOY_TIERS__FREE__MEMORY_MB`). The result is validated once at load: each error
//! names the key, the bad value and what is allowed. Every key is documented in the README.

pub mod hostname;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use hostname::{normalize_host, validate_hostname, HostnameError};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CLAWDEPLOY_";

/// What replaces a secret when the config is printed.
pub const MASK: &str = "********";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// Static operator routes: public hosts proxied to fixed upstreams.
    pub routes: Vec<RouteConfig>,
}

/// `[server]`: listeners, domains, timeouts and logging of the edge process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain HTTP listener.
    pub http_listen: String,
    /// Instances live at `<sub>.<base_domain>`.
    pub base_domain: String,
    /// The dashboard and API host; empty means `app.<base_domain>`.
    pub app_domain: String,
    /// Bootstrap operator credential for `/admin`; empty means generated into `data_dir/admin_token`.
    pub admin_token: String,
    /// Where the embedded default keeps its database and generated secrets.
    pub data_dir: PathBuf,
    /// Worker threads of the proxy; 0 means one per CPU.
    pub threads: usize,
    /// How long the edge waits to connect to an upstream before answering 502.
    pub connect_timeout_ms: u64,
    /// How long a plain HTTP exchange may wait on a silent client or upstream.
    pub read_timeout_secs: u64,
    /// How long a WebSocket may stay silent before the edge closes it.
    pub ws_idle_timeout_secs: u64,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub grace_period_secs: u64,
    /// Largest request header block accepted, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Idle upstream connections kept for reuse, per worker thread.
    pub upstream_keepalive_pool_size: usize,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Log one line per request.
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One `[[routes]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub host: String,
    /// `IP:port`; never a host name, so no DNS lookup happens on the request path.
    pub upstream: String,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `server.http_listen` or `routes[2].upstream`.
    pub key: String,
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {:?}: {}", self.key, self.value, self.allowed)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

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
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
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
    ) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
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
            return Err(ConfigError::Invalid(issues));
        }
        let config: Config = tree.try_into().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(vec![ConfigIssue {
                key: "<environment>".into(),
                value: String::new(),
                allowed: e.message().to_string(),
            }])
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key; all problems are reported at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
            (1..=1_000_000).contains(&s.upstream_keepalive_pool_size),
            "server.upstream_keepalive_pool_size",
            &s.upstream_keepalive_pool_size,
            "1 to 1000000",
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
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// The effective configuration as TOML, with secrets replaced by [`MASK`].
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.server.admin_token.is_empty() {
            shown.server.admin_token = MASK.into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

fn invalid(key: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid(vec![ConfigIssue {
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

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn issues(result: Result<Config, ConfigError>) -> Vec<ConfigIssue> {
        match result {
            Err(ConfigError::Invalid(issues)) => issues,
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
}
