//! Typed errors of the store.

use uuid::Uuid;

/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Another user already has this email address (compared case-insensitively).
    Email,
    /// Another instance already has this subdomain (compared case-insensitively).
    Subdomain,
    /// The user's tier allows one instance and the user already has it.
    InstanceExists,
    /// An active admin token already has this name.
    AdminTokenName,
    /// This user already added this custom domain.
    Hostname,
    /// Another account has proven it owns this custom domain (at most one owner per hostname).
    DomainVerified,
    /// This skill is already installed in this instance.
    Skill,
    /// A unique rule not covered above (the message names the constraint when the database does).
    Other,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::Email => "email already registered",
            Conflict::Subdomain => "subdomain already taken",
            Conflict::InstanceExists => "the user already has an instance",
            Conflict::AdminTokenName => "an active admin token already has this name",
            Conflict::Hostname => "custom domain already added",
            Conflict::DomainVerified => "custom domain verified by another account",
            Conflict::Skill => "skill already installed",
            Conflict::Other => "unique constraint violated",
        })
    }
}

/// Errors from [`crate::secrets`].
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A master key is not 32 bytes, or, given as text, not base64.
    #[error("master key must be 32 bytes (base64 of 32 random bytes)")]
    BadKey,
    /// A master key's id is not 1-32 characters of `[A-Za-z0-9_-]`, or a previous key reuses
    /// the current key's id.
    #[error("key id must be 1-32 characters of [A-Za-z0-9_-]")]
    BadKeyId,
    /// A sealed value (or a token hash) is not in the format this crate writes.
    #[error("sealed value is malformed")]
    Malformed,
    /// A sealed value names a key id the keyring does not hold (a retired key, or another
    /// deployment's); the id is given.
    #[error("sealed value uses unknown key id {0:?}")]
    UnknownKey(String),
    /// AES-GCM rejected a sealed value: the key is wrong or the value was altered.
    #[error("sealed value failed authentication (wrong key or tampered)")]
    Decrypt,
    /// AES-GCM failed to seal a value.
    #[error("encryption failed")]
    Encrypt,
    /// A sealed value opened, but its plaintext is not the UTF-8 text expected.
    #[error("sealed value is not UTF-8")]
    NotUtf8,
    /// The operating system's random number generator failed (no key, nonce or token made).
    #[error("random number generator failed")]
    Random,
}

/// Errors returned by [`crate::Store`] methods.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write broke a uniqueness rule.
    #[error("{0}")]
    Conflict(Conflict),
    /// The row a write needs is missing; names what, e.g. `"user"` or `"session"`.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// No stored token has this hash (for this purpose), or a concurrent use won the race.
    #[error("token unknown")]
    TokenUnknown,
    /// The token is past its `expires_at`.
    #[error("token expired")]
    TokenExpired,
    /// The one-time token was used (or invalidated) before.
    #[error("token already used")]
    TokenUsed,
    /// A refresh token that had already been rotated was presented again. The session it
    /// belongs to has been revoked as a precaution (the token was probably stolen).
    #[error("refresh token reuse detected; session revoked")]
    RefreshTokenReuse {
        /// The session revoked.
        session_id: Uuid,
        /// The session's user, for the security log.
        user_id: Uuid,
    },
    /// A per-tier cap stops the write: `what` names the capped thing (`"skills"`), `cap` the
    /// tier's number.
    #[error("{what} limit of {cap} reached")]
    LimitReached {
        /// What is capped.
        what: &'static str,
        /// The cap.
        cap: u32,
    },
    /// The refresh token's session was revoked or has expired.
    #[error("session revoked or expired")]
    SessionInvalid,
    /// The database URL is neither `sqlite:` with a path (or `:memory:`) nor `postgres://`; says
    /// what was expected.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// An argument the store cannot take, e.g. a month outside 1–12; names it.
    #[error("invalid value: {0}")]
    Invalid(String),
    /// Sealing or opening a secret failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database refused or failed a query, or no connection was free in time (see
    /// [`StoreError::is_busy`]). sqlx's messages say what failed: shown as they are.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed, e.g. an applied file was edited.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value this crate cannot have written (not a UUID, an unknown status); names
    /// the column.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Creating the SQLite file's directory failed. The I/O error is part of the message, not a
    /// `source()`, so that a printer of the error chain shows it once.
    #[error("cannot create the database directory {}: {error}", path.display())]
    CreateDir {
        /// The directory that could not be created.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl StoreError {
    /// True for a uniqueness conflict of the given kind.
    pub fn is_conflict(&self, kind: Conflict) -> bool {
        matches!(self, StoreError::Conflict(k) if *k == kind)
    }

    /// True when every database connection stayed busy past the pool's acquire timeout: worth
    /// retrying in a moment, not a fault.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut))
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Maps a unique violation to `Conflict(kind)`, anything else to `Database`.
pub(crate) fn conflict_or(err: sqlx::Error, kind: Conflict) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            return StoreError::Conflict(kind);
        }
    }
    StoreError::Database(err)
}
