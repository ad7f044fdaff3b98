//! Rate limits shared by several edge nodes through Redis.
//!
//! A request first passes the node's own GCRA limiter ([`crate::ratelimit`]): over the limit on
//! one node alone means over it everywhere, and costs no round trip. Then one script call
//! (`EVALSHA`, one round trip on the node's multiplexed connection) decides on a sliding window
//! of one minute approximated from two fixed-window counters, `…:<minute>` and `…:<minute - 1>`:
//! `previous × (share of the window not yet elapsed) + current`. An accepted request increments
//! the current counter (keys expire after two windows); a refused one counts nowhere, so a client
//! hammering a limit is not locked out longer. The approximation assumes requests were spread
//! evenly over the previous minute; it is exact at window boundaries and never lets more than
//! the limit through in one fixed minute.
//!
//! Redis never stalls a request for long: an answer must come within
//! `redis.rate_limit_timeout_ms`, else the node's own decision stands for that request. A Redis
//! error drops the connection; a background task pings it every [`RECONNECT_INTERVAL`] (dropping
//! it when Redis does not answer within `4 × timeout`, at least 500 ms) and reconnects. Without a
//! connection every request is decided locally, without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clawdeploy_store::time::now_ms;
use pingora::server::ShutdownWatch;

use crate::ratelimit::Scope;

/// The window of `per_*_per_minute`.
const WINDOW_MS: i64 = 60_000;

/// How often the background task reconnects, or pings a live connection.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// KEYS: current and previous window's counter. ARGV: limit, ms elapsed in the current window,
/// window ms. Returns {1, 0} (counted) or {0, ms to wait}.
const WINDOW_SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
if prev * (window - elapsed) / window + cur + 1 <= limit then
  redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  return {1, 0}
end
local wait
if cur + 1 > limit then
  -- Into the next window, until this one's weight has fallen far enough.
  wait = window - elapsed + math.ceil(window * (cur + 1 - limit) / cur)
else
  wait = math.ceil(window - elapsed - (limit - cur - 1) * window / prev)
end
return {0, wait}
";

/// The shared half of the rate limiter: a Redis connection while Redis answers.
pub struct SharedLimits {
    url: String,
    timeout: Duration,
    conn: RwLock<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
    up: AtomicBool,
}

/// The shared decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    /// Under the shared limit, and counted in Redis.
    Allowed,
    /// Over the shared limit; retry after this long.
    Refused(Duration),
    /// Redis is down or did not answer in time: the node's own decision stands.
    Unavailable,
}

impl SharedLimits {
    /// Limits through the Redis at `url` (`redis://…`), each answer awaited at most `timeout`; not
    /// connected until [`maintain`](Self::maintain) connects, so every request is decided locally
    /// until then.
    pub fn new(url: String, timeout: Duration) -> Self {
        Self {
            url,
            timeout,
            conn: RwLock::new(None),
            script: redis::Script::new(WINDOW_SCRIPT),
            up: AtomicBool::new(false),
        }
    }

    /// Whether requests are currently decided through Redis.
    pub fn is_shared(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        if !self.is_shared() {
            return None;
        }
        self.conn.read().ok()?.clone()
    }

    fn set_connection(&self, conn: Option<redis::aio::MultiplexedConnection>) {
        let up = conn.is_some();
        if let Ok(mut slot) = self.conn.write() {
            *slot = conn;
        }
        let was = self.up.swap(up, Ordering::Relaxed);
        metrics::gauge!("clawdeploy_rate_limits_shared").set(if up { 1.0 } else { 0.0 });
        match (was, up) {
            (false, true) => tracing::info!("rate limits shared through Redis"),
            (true, false) => {
                tracing::warn!("Redis did not answer: rate limits are per node until it returns")
            }
            _ => {}
        }
    }

    /// One request of `scope` by `who` against `limit` a minute.
    pub async fn check(&self, scope: Scope, who: &str, limit: u32) -> SharedDecision {
        let Some(mut conn) = self.connection() else {
            return SharedDecision::Unavailable;
        };
        let now = now_ms();
        let window = now.div_euclid(WINDOW_MS);
        let prefix = format!("clawdeploy:rl:{}:{who}:", scope.as_str());
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{prefix}{window}"))
            .key(format!("{prefix}{}", window - 1))
            .arg(limit)
            .arg(now - window * WINDOW_MS)
            .arg(WINDOW_MS);
        let answer: Result<redis::RedisResult<(i64, i64)>, _> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok((1, _))) => SharedDecision::Allowed,
            Ok(Ok((_, wait_ms))) => {
                SharedDecision::Refused(Duration::from_millis(wait_ms.max(1) as u64))
            }
            Ok(Err(e)) => {
                tracing::debug!("rate-limit script failed: {e}");
                metrics::counter!("clawdeploy_rate_limit_fallbacks_total").increment(1);
                if self.is_shared() {
                    self.set_connection(None);
                }
                SharedDecision::Unavailable
            }
            // Slow, not failed: this request is decided locally; the connection stays unless
            // the background ping finds Redis hung (within `4 × timeout`, at least 500 ms).
            Err(_) => {
                metrics::counter!("clawdeploy_rate_limit_fallbacks_total").increment(1);
                SharedDecision::Unavailable
            }
        }
    }

    /// Keeps a connection while Redis answers, reconnecting every [`RECONNECT_INTERVAL`].
    pub async fn maintain(&self, mut shutdown: ShutdownWatch) {
        let client = match redis::Client::open(self.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("redis.url is not usable, rate limits stay per node: {e}");
                return;
            }
        };
        metrics::gauge!("clawdeploy_rate_limits_shared").set(0.0);
        let mut tick = tokio::time::interval(RECONNECT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A slow Redis is treated as down: checks would only time out.
        let patience = RECONNECT_INTERVAL.max(self.timeout * 4);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let current = self.connection();
            let alive = match current {
                Some(mut conn) => tokio::time::timeout(
                    patience,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                None => false,
            };
            if alive {
                continue;
            }
            if self.is_shared() {
                self.set_connection(None);
            }
            let connected =
                tokio::time::timeout(patience, client.get_multiplexed_async_connection()).await;
            if let Ok(Ok(mut conn)) = connected {
                // Load the script now, so checks need one round trip from the first request.
                let loaded = tokio::time::timeout(
                    patience,
                    self.script.prepare_invoke().load_async(&mut conn),
                )
                .await;
                if matches!(loaded, Ok(Ok(_))) {
                    self.set_connection(Some(conn));
                }
            }
        }
    }
}

/// Runs [`SharedLimits::maintain`] as a Pingora background service.
pub struct SharedLimitsService(pub Arc<SharedLimits>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SharedLimitsService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.maintain(shutdown).await;
    }
}

/// The edge's rate limiter from `[rate_limits]`, shared through `[redis]` when a URL is set; the
/// service keeps its Redis connection (add it to the server).
pub fn build(
    limits: &clawdeploy_config::RateLimitsConfig,
    redis: &clawdeploy_config::RedisConfig,
) -> (crate::RateLimiter, Option<SharedLimitsService>) {
    let limiter = crate::RateLimiter::new(limits);
    if redis.url.is_empty() {
        return (limiter, None);
    }
    let shared = Arc::new(SharedLimits::new(
        redis.url.clone(),
        Duration::from_millis(redis.rate_limit_timeout_ms),
    ));
    (
        limiter.with_shared(shared.clone()),
        Some(SharedLimitsService(shared)),
    )
}
