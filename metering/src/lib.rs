//! Metering and limits at the edge (issue #7).
//!
//! - [`frames`]: an incremental WebSocket frame parser (public for fuzzing).
//! - [`classify`]: which OpenClaw frames are user messages and answers to them.
//! - [`quota`]: per-instance counters per billing period and the quota decision.
//! - [`period`]: calendar months and anchored billing periods.
//! - [`relay`]: metering of one proxied gateway WebSocket, both directions.
//! - [`llm`]: the LLM egress meter (key injection, token usage, token budget).
//! - [`ratelimit`]: GCRA rate limits per client IP and per user.
//! - [`shared`]: counters shared by several edge nodes through Redis.
//! - [`shared_limits`]: rate limits shared by several edge nodes through Redis.
//! - [`service`]: the Prometheus recorder and listener, and the usage flush to the store.

pub mod classify;
pub mod frames;
pub mod guarded_connect;
pub mod llm;
pub mod period;
pub mod quota;
pub mod ratelimit;
pub mod relay;
pub mod service;
pub mod shared;
pub mod shared_limits;

pub use frames::{FrameError, FrameEvent, FrameHeader, FrameParser};
pub use period::{Period, Plan};
pub use quota::{Admission, Meter, Refusal, Reservation, UsageHandle};
pub use ratelimit::{RateLimiter, Scope};
pub use relay::{RelayError, RelayTarget, WsRelay};
pub use service::{install_recorder, MetricsService, UsageFlushService};
pub use shared_limits::{SharedLimits, SharedLimitsService};
