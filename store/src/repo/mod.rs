//! Repository methods, one module per area, all as inherent methods of [`crate::Store`].

mod accounts;
mod api_keys;
mod auth;
mod export;
mod instances;
mod ops;
