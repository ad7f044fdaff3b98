//! Payments for ClawDeploy: a thin client of the Stripe endpoints the platform uses
//! ([`stripe::Stripe`]) and the webhook's signature check and event objects ([`webhook`]).
//!
//! What the platform does with an event (tiers, grace periods, credits) is the control API's
//! (`control-api/src/billing.rs`); this crate only speaks Stripe's protocol.

#![warn(missing_docs)]

pub mod stripe;
pub mod webhook;

pub use stripe::{CheckoutSession, OneOff, Stripe, SubscriptionChange};

/// Why a Stripe call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Stripe could not be reached, timed out, answered 5xx/429 or something undocumented: the
    /// API answers 503 `BILLING_UNAVAILABLE` and nothing was changed.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe refused the request (4xx), with its message.
    #[error("Stripe refused the request: {0}")]
    Refused(String),
}
