//! # clawdeploy-store
//!
//! Persistence for ClawDeploy: users, sessions and tokens, instances, provider keys, usage,
//! admin tokens and the security log, on **SQLite** (the embedded default, one file under the
//! data dir) or **PostgreSQL** (several edge nodes), chosen by URL.
//!
//! ## Design choices
//!
//! - **One set of queries for both databases.** All queries go through sqlx's `Any` driver,
//!   written in the common subset of SQLite and PostgreSQL: `$1` placeholders (SQLite accepts
//!   `$NNN`), `RETURNING`, `ON CONFLICT ... DO UPDATE`, partial unique indexes. To stay inside
//!   the types `Any` carries, ids are TEXT (hyphenated UUIDs), times are BIGINT unix
//!   milliseconds (UTC), flags are nullable `*_at` timestamps or BIGINT 0/1, JSON is TEXT, and
//!   sums are `CAST(... AS BIGINT)`. Only the DDL differs (an identity column), so there are
//!   two migration directories with otherwise identical files (`migrations/sqlite`,
//!   `migrations/postgres`), embedded in the binary and applied by [`Store::migrate`] through
//!   sqlx's migrator (`_sqlx_migrations` table; an advisory lock on PostgreSQL so several edge
//!   nodes can start at once).
//! - **SQLite** files (and parent directories) are created when missing; every connection
//!   sets WAL mode, `foreign_keys = ON`, `busy_timeout = 5000` and `synchronous = NORMAL`.
//!   Writes that must be atomic are single statements (`UPDATE ... WHERE <still valid>
//!   RETURNING`) or transactions that *start* with their write, so SQLite's busy timeout
//!   applies and concurrent writers wait instead of failing.
//! - **Case-insensitive uniqueness** for emails and subdomains by storing them lower case.
//! - **Typed errors** ([`StoreError`]): `Conflict(Email | Subdomain | ...)`, `NotFound`,
//!   `TokenUnknown | TokenExpired | TokenUsed`, `RefreshTokenReuse`, so the API maps them to
//!   status codes without parsing messages.
//! - **Secrets**: tokens (sessions' refresh tokens, email tokens, admin tokens, MFA recovery
//!   codes) are stored as SHA-256 hex only ([`secrets::TokenHash`]); provider API keys and MFA
//!   secrets are sealed with AES-256-GCM under a rotatable master key ([`secrets::Keyring`]) and
//!   only the sealed text and a masked hint reach the database. Methods that need plaintext
//!   take the keyring and return [`zeroize::Zeroizing`] values. No `Debug` prints a secret.
//! - **Refresh-token rotation**: each refresh token belongs to a session; rotating marks the
//!   old one rotated and issues its successor in one transaction. Presenting a rotated token
//!   again is reuse: the session is revoked and [`StoreError::RefreshTokenReuse`] returned.
//!
//! The route table of the edge is loaded with [`Store::list_instances`]; nothing on the
//! request path reads the database.
//!
//! Migrations are append-only: never edit an applied file (sqlx checks its checksum); add a
//! `NNNN_description.sql` with the same version to both `migrations/sqlite` and
//! `migrations/postgres` (`sqlx::migrate!` embeds them; a test checks the versions agree).
//!
//! ## Tests
//!
//! `cargo test -p clawdeploy-store` runs every repository test against a temporary SQLite
//! file, and also against PostgreSQL when `CLAWDEPLOY_TEST_POSTGRES_URL` is set (each test in
//! its own schema): `CLAWDEPLOY_TEST_POSTGRES_URL=$(scripts/start-postgres.sh) cargo test -p
//! clawdeploy-store`.

#![warn(missing_docs)]

pub mod changes;
pub mod error;
pub mod models;
pub mod secrets;
pub mod time;

mod repo;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use uuid::Uuid;

pub use clawdeploy_config::Tier;
pub use error::{Conflict, Result, SecretError, StoreError};
pub use models::*;
pub use repo::accounts::normalize_email;
pub use repo::billing::{
    BillingAccount, CreditEntry, CreditKind, NewCredit, Subscription, SubscriptionState,
    SubscriptionStatus,
};
pub use repo::certs::{CertificateRecord, CustomDomain, DomainStatus};
pub use repo::host_codes::{HostCode, Redemption};
pub use repo::instances::normalize_subdomain;
pub use repo::metering::UsageSeedRow;
pub use repo::skills::{NewSkill, SkillChange, SkillSecrets};
pub use secrets::{Keyring, TokenHash};
pub use zeroize::Zeroizing;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A `sqlite:` URL: one file (or memory), one edge node.
    Sqlite,
    /// A `postgres://` or `postgresql://` URL: shared by several edge nodes.
    Postgres,
}

/// Pool settings for [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Defaults: 8 for SQLite (one writer at a time anyway), 10 for PostgreSQL.
    pub max_connections: Option<u32>,
    /// How long a query waits for a free connection before it fails (an error for which
    /// [`StoreError::is_busy`] is true). Default: 10 s.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: None,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// The store: a connection pool plus the repository methods (see the crate docs).
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    // The URL may hold a password: not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The migrations of each dialect, embedded at build time from `migrations/<dialect>/` (one
/// `NNNN_description.sql` per version, the same versions in both directories).
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    }
}

/// Splits a `sqlite:` URL into its file path (None for in-memory) and query string.
fn sqlite_path(url: &str) -> Result<(Option<PathBuf>, Option<&str>)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::InvalidUrl("expected sqlite:// or postgres://".into()))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(StoreError::InvalidUrl(
            "sqlite URL without a file path".into(),
        ));
    }
    if path == ":memory:" || query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=memory")) {
        return Ok((None, query));
    }
    Ok((Some(PathBuf::from(path)), query))
}

impl Store {
    /// Opens a pool for `sqlite://path` (file and parent dirs created if missing) or
    /// `postgres://...` / `postgresql://...`. Does not migrate: call [`Store::migrate`].
    pub async fn open(url: &str) -> Result<Store> {
        Self::open_with(url, StoreOptions::default()).await
    }

    /// [`Store::open`] with pool settings.
    pub async fn open_with(url: &str, opts: StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url, max) = if url.starts_with("sqlite:") {
            let (path, query) = sqlite_path(url)?;
            let mut url = url.to_owned();
            let mut max = opts.max_connections.unwrap_or(8);
            match &path {
                Some(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|error| StoreError::CreateDir {
                            path: dir.to_path_buf(),
                            error,
                        })?;
                    }
                    let has_mode =
                        query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode=")));
                    if !has_mode {
                        url.push(if query.is_some() { '&' } else { '?' });
                        url.push_str("mode=rwc");
                    }
                }
                // Every connection to :memory: is its own database: keep one.
                None => max = 1,
            }
            (Backend::Sqlite, url, max)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (
                Backend::Postgres,
                url.to_owned(),
                opts.max_connections.unwrap_or(10),
            )
        } else {
            return Err(StoreError::InvalidUrl(
                "expected sqlite://PATH or postgres://...".into(),
            ));
        };

        let mut pool_opts = AnyPoolOptions::new()
            .max_connections(max.max(1))
            .acquire_timeout(opts.acquire_timeout);
        if backend == Backend::Sqlite {
            pool_opts = pool_opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_opts.connect(&url).await?;
        Ok(Store { pool, backend })
    }

    /// Applies the embedded migrations that are not yet applied.
    pub async fn migrate(&self) -> Result<()> {
        migrator(self.backend).run(&self.pool).await?;
        Ok(())
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool, for queries this crate does not offer (use the portable
    /// dialect described in the crate docs).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A trivial round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

// ---- row helpers shared by the repository modules ----

pub(crate) fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("{col}: not a uuid")))
}

pub(crate) fn opt_uuid_col(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("{col}: not a uuid"))))
        .transpose()
}

pub(crate) fn parse_col<T: std::str::FromStr>(row: &AnyRow, col: &str) -> Result<T> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{col}: unexpected value {s:?}")))
}

pub(crate) fn id_str(id: Uuid) -> String {
    id.hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        let (p, q) = sqlite_path("sqlite://./data/x.db").unwrap();
        assert_eq!(p.unwrap(), PathBuf::from("./data/x.db"));
        assert!(q.is_none());
        let (p, _) = sqlite_path("sqlite:///abs/x.db?mode=rwc").unwrap();
        assert_eq!(p.unwrap(), PathBuf::from("/abs/x.db"));
        assert!(sqlite_path("sqlite::memory:").unwrap().0.is_none());
        assert!(sqlite_path("sqlite://").is_err());
    }

    /// Both dialects carry the same versions, in the same order, with the same names.
    #[test]
    fn both_dialects_have_the_same_migrations() {
        let list = |m: &Migrator| {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(list(&SQLITE_MIGRATIONS), list(&POSTGRES_MIGRATIONS));
        assert!(SQLITE_MIGRATIONS.iter().count() >= 10);
    }
}
