//! Metering and limits at the edge (issue #7). The LLM egress proxy, which spends the token
//! budgets counted here, is its own crate (`llm-egress`).
//!
//! - [`frames`]: an incremental WebSocket frame parser (public for fuzzing).
//! - [`classify`]: which OpenClaw frames are user messages and answers to them.
//! - [`quota`]: per-instance counters per billing period and the quota decision.
//! - [`period`]: calendar months and anchored billing periods.
//! - [`relay`]: metering of one proxied gateway WebSocket, both directions.
//! - [`ratelimit`]: GCRA rate limits per client IP and per user.
//! - [`shared`]: counters shared by several edge nodes through Redis.
//! - [`shared_limits`]: rate limits shared by several edge nodes through Redis.
//! - [`flush`]: the usage flush to the store, and the meter's seeding from it.
//! - [`telemetry`]: the Prometheus recorder and the `/metrics` listener.
//!
//! # Errors
//! No crate-wide error enum: each error type is the contract of one public API. [`FrameError`] is
//! the frame parser's (guarded by its proptest), [`RelayError`] the relay's reason to stop (each
//! variant has its own close code), `telemetry::RecorderError` the recorder's one failure; store
//! calls answer the store's `StoreError` as they are.

#![warn(missing_docs)]

pub mod classify;
pub mod flush;
pub mod frames;
pub mod period;
pub mod quota;
pub mod ratelimit;
pub mod relay;
pub mod shared;
pub mod shared_limits;
pub mod telemetry;

pub use flush::UsageFlush;
pub use frames::{FrameError, FrameEvent, FrameHeader, FrameParser};
pub use period::{Period, Plan};
pub use quota::{Admission, Meter, Refusal, Reservation, UsageHandle};
pub use ratelimit::{RateLimiter, Scope};
pub use relay::{RelayError, RelayTarget, WsRelay};
pub use shared_limits::{SharedLimits, SharedLimitsService};
pub use telemetry::{install_recorder, MetricsService};
