//! TLS certificates of the edge (issue #6).
//!
//! - [`store`]: [`CertStore`], the rustls `ResolvesServerCert` the HTTPS listener asks during every
//!   handshake: exact name, then one-label wildcard, then a fallback certificate. Swapping a
//!   certificate in is one map write; the next handshake sees it, open connections keep theirs.
//! - [`local_ca`]: a CA generated into the data dir that signs the edge's certificates when no
//!   ACME CA is configured (the embedded default: HTTPS on localhost).
//! - [`acme`]: orders through an RFC 8555 CA with instant-acme: DNS-01 for the base domain's
//!   wildcard and apex, HTTP-01 for customers' domains ([`challenges`]).
//! - [`dns`]: DNS providers behind one trait (RFC 2136 with TSIG; [`cloudflare`]'s API) and lookups.
//! - [`renewal`]: when a certificate is renewed (ARI window, else two thirds of its lifetime).
//! - [`manager`]: ties them to the store (keys sealed), the order lock and the change broadcast.

#![warn(missing_docs)]

pub mod acme;
pub mod challenges;
pub mod cloudflare;
pub mod dns;
pub mod local_ca;
pub mod manager;
pub mod pem;
pub mod renewal;
pub mod store;

pub use challenges::Http01Challenges;
pub use manager::CertManager;
pub use store::CertStore;

/// Why a certificate operation failed: the crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or chain could not be parsed or does not match (from a file, the store or
    /// the CA).
    #[error("invalid certificate or key: {0}")]
    Invalid(String),
    /// rcgen's error is part of the message, not a `source()`: shown once by chain printers.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),
    /// The ACME CA refused or failed an account, an order or a challenge (or its credentials are
    /// unusable).
    #[error("ACME: {0}")]
    Acme(String),
    /// A DNS provider failed to publish or remove a record, or is misconfigured.
    #[error("DNS: {0}")]
    Dns(String),
    /// Reading or writing certificates, keys or the order lock in the store failed.
    #[error(transparent)]
    Store(#[from] clawdeploy_store::StoreError),
    /// A local I/O error, such as reading or writing the local CA's files in the data directory.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e)
    }
}

impl From<instant_acme::Error> for Error {
    fn from(e: instant_acme::Error) -> Self {
        Error::Acme(e.to_string())
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
