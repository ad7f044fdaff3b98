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
            Conflict::Other => "unique constraint violated",
        })
    }
}

/// Errors from [`crate::secrets`].
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key must be 32 bytes (base64 of 32 random bytes)")]
    BadKey,
    #[error("key id must be 1-32 characters of [A-Za-z0-9_-]")]
    BadKeyId,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value uses unknown key id {0:?}")]
    UnknownKey(String),
    #[error("sealed value failed authentication (wrong key or tampered)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("sealed value is not UTF-8")]
    NotUtf8,
    #[error("random number generator failed")]
    Random,
}

/// Errors returned by [`crate::Store`] methods.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(Conflict),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("token unknown")]
    TokenUnknown,
    #[error("token expired")]
    TokenExpired,
    #[error("token already used")]
    TokenUsed,
    /// A refresh token that had already been rotated was presented again. The session it
    /// belongs to has been revoked as a precaution (the token was probably stolen).
    #[error("refresh token reuse detected; session revoked")]
    RefreshTokenReuse { session_id: Uuid, user_id: Uuid },
    #[error("session revoked or expired")]
    SessionInvalid,
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    // sqlx's messages say what failed ("error returned from database: ...", "pool timed out
    // ..."): shown as they are, and the error stays the source for chain printers.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Creating the SQLite file's directory failed. The I/O error is part of the message, not a
    /// `source()`, so that a printer of the error chain shows it once.
    #[error("cannot create the database directory {}: {error}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
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
