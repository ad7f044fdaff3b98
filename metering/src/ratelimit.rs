//! Rate limits (PRD §5.2): GCRA per client IP and per authenticated user, with governor; with
//! Redis configured, also one sliding-window limit shared by every edge node (see
//! [`crate::shared_limits`]), this node's own limiter serving as the pre-check and as the
//! fallback while Redis is unreachable.
//!
//! `per_*_per_minute` requests a minute at a steady rate, bursts up to the same number (or
//! `burst`). Memory per key is a few words; idle keys are forgotten when more than `max_keys` are
//! held (checked every few thousand requests), so a scan from many addresses cannot grow it
//! without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clawdeploy_config::RateLimitsConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::shared_limits::{SharedDecision, SharedLimits};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The per-client-IP limit (`rate_limits.per_ip_per_minute`).
    Ip,
    /// The per-user limit (`rate_limits.per_user_per_minute`): the instance's owner, or the API
    /// token's user.
    User,
}

impl Scope {
    /// `"ip"` or `"user"`: the `scope` label of `clawdeploy_rate_limited_total` and part of the
    /// Redis key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::User => "user",
        }
    }
}

/// The per-IP and per-user limiters of one edge process.
pub struct RateLimiter {
    ip: DefaultKeyedRateLimiter<IpAddr>,
    user: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
    max_keys: usize,
    checks: AtomicU64,
    /// Requests a minute allowed per client IP, as configured (quoted in the 429's message).
    pub per_ip_per_minute: u32,
    /// Requests a minute allowed per user, as configured (quoted in the 429's message).
    pub per_user_per_minute: u32,
    shared: Option<Arc<SharedLimits>>,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Quota::per_minute(rate).allow_burst(burst)
}

impl RateLimiter {
    /// Limiters for this node alone, empty; [`with_shared`](Self::with_shared) adds Redis.
    pub fn new(config: &RateLimitsConfig) -> Self {
        Self {
            ip: DefaultKeyedRateLimiter::keyed(quota(config.per_ip_per_minute, config.burst)),
            user: DefaultKeyedRateLimiter::keyed(quota(config.per_user_per_minute, config.burst)),
            clock: DefaultClock::default(),
            max_keys: config.max_keys,
            checks: AtomicU64::new(0),
            per_ip_per_minute: config.per_ip_per_minute,
            per_user_per_minute: config.per_user_per_minute,
            shared: None,
        }
    }

    /// Shares the limits with other edge nodes through Redis (run
    /// [`SharedLimits::maintain`] beside it).
    pub fn with_shared(mut self, shared: Arc<SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether requests are currently decided through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.is_shared())
    }

    async fn check_shared(&self, scope: Scope, who: &str, limit: u32) -> Result<(), Duration> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        match shared.check(scope, who, limit).await {
            SharedDecision::Refused(wait) => Err(wait),
            SharedDecision::Allowed | SharedDecision::Unavailable => Ok(()),
        }
    }

    /// One request from `ip`; `Err(wait)` when over the limit.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_ip_locally(ip)?;
        if self.shared.is_none() {
            return Ok(());
        }
        self.check_shared(Scope::Ip, &ip.to_string(), self.per_ip_per_minute)
            .await
    }

    /// One request by `user`; `Err(wait)` when over the limit.
    pub async fn check_user(&self, user: &Arc<str>) -> Result<(), Duration> {
        self.check_user_locally(user)?;
        self.check_shared(Scope::User, user, self.per_user_per_minute)
            .await
    }

    /// This node's own limit for `ip` only.
    pub fn check_ip_locally(&self, ip: IpAddr) -> Result<(), Duration> {
        self.maintain();
        self.ip
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// This node's own limit for `user` only.
    pub fn check_user_locally(&self, user: &Arc<str>) -> Result<(), Duration> {
        self.user
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Keys currently held (IPs plus users).
    pub fn keys(&self) -> usize {
        self.ip.len() + self.user.len()
    }

    fn maintain(&self) {
        if !self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            return;
        }
        if self.keys() > self.max_keys {
            self.ip.retain_recent();
            self.user.retain_recent();
            self.ip.shrink_to_fit();
            self.user.shrink_to_fit();
        }
    }

    /// Forgets keys whose limit has fully recovered (also run periodically).
    pub fn forget_idle(&self) {
        self.ip.retain_recent();
        self.user.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_429_with_a_wait() {
        let limiter = RateLimiter::new(&RateLimitsConfig {
            per_ip_per_minute: 5,
            per_user_per_minute: 3,
            burst: 0,
            max_keys: 100,
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.check_ip_locally(ip).is_ok());
        }
        let wait = limiter.check_ip_locally(ip).unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        // Another address is not affected.
        assert!(limiter
            .check_ip_locally("192.0.2.8".parse().unwrap())
            .is_ok());
        let user: Arc<str> = Arc::from("u1");
        for _ in 0..3 {
            assert!(limiter.check_user_locally(&user).is_ok());
        }
        assert!(limiter.check_user_locally(&user).is_err());
    }
}
