//! Repository methods, one module per area, all as inherent methods of [`crate::Store`].

pub(crate) mod accounts;
mod api_keys;
mod archive;
mod auth;
pub(crate) mod billing;
pub(crate) mod certs;
mod channels;
mod export;
pub(crate) mod host_codes;
pub(crate) mod instances;
pub(crate) mod metering;
mod ops;
pub(crate) mod outbox;
mod pool;
mod revocations;
pub(crate) mod skills;
