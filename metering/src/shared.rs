//! Message and token counters shared by several edge nodes through Redis.
//!
//! Every node keeps counting in memory (the request path never waits for Redis) and, every
//! `interval`, adds what it counted since the last sync to `clawdeploy:usage:<period start ms>:<instance>:*`
//! with `INCRBY`, which answers the all-node total; that total becomes the node's view. While Redis
//! is unreachable nodes count locally and keep their deltas; when it returns they are added, so
//! nothing is lost. If Redis lost its data (a restart without persistence), a node whose own view
//! is larger than the shared total raises the total to it (atomically, in one script), so the
//! total is the largest node view plus the others' new counts. Quotas across nodes are as exact as
//! the sync interval: sends on different nodes within one interval can pass the limit by that
//! much. Only instances with new counts or recent activity on the node are synced
//! ([`crate::quota::SYNC_ACTIVE_MS`]). Sends in flight stay per node. Each sync carries the idempotency keys counted since the
//! last into a per-period set, so a retry counted on two nodes within one interval is counted
//! once in the total (each node's own view holds it until the next sync).

use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;

use crate::quota::{Meter, SyncDelta};

fn key(d: &SyncDelta, what: &str) -> String {
    format!(
        "clawdeploy:usage:{}:{}:{what}",
        d.period_start_ms, d.instance_id
    )
}

/// Keys expire well after their period ends.
const KEY_TTL_SECS: u64 = 70 * 24 * 3600;

/// For each instance (three keys: messages, tokens, the period's idempotency keys): adds the
/// delta's keys to the set, and the messages less those another node had added already (retries
/// counted on two nodes); answers the totals and that number of duplicates. A total below what
/// the node knows (Redis lost its data) is raised to it, atomically, so two nodes reconciling at
/// once cannot both add their counts.
const SYNC_SCRIPT: &str = r"
local ttl = ARGV[#ARGV]
local out = {}
local a = 1
for i = 1, #KEYS, 3 do
  local keys = tonumber(ARGV[a + 4])
  local duplicates = 0
  for j = 1, keys do
    if redis.call('SADD', KEYS[i + 2], ARGV[a + 4 + j]) == 0 then
      duplicates = duplicates + 1
    end
  end
  local deltas = {tonumber(ARGV[a]) - duplicates, tonumber(ARGV[a + 2])}
  local known = {tonumber(ARGV[a + 1]) - duplicates, tonumber(ARGV[a + 3])}
  for n = 1, 2 do
    local v = redis.call('INCRBY', KEYS[i + n - 1], deltas[n])
    if v < known[n] then
      redis.call('SET', KEYS[i + n - 1], known[n])
      v = known[n]
    end
    out[#out + 1] = v
  end
  out[#out + 1] = duplicates
  for n = 0, 2 do
    redis.call('EXPIRE', KEYS[i + n], ttl)
  end
  a = a + 5 + keys
end
return out
";

async fn sync_once(
    meter: &Meter,
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<()> {
    let deltas = meter.take_unsynced();
    if deltas.is_empty() {
        return Ok(());
    }
    let script = redis::Script::new(SYNC_SCRIPT);
    let mut invocation = script.prepare_invoke();
    for d in &deltas {
        invocation
            .key(key(d, "messages"))
            .key(key(d, "tokens"))
            .key(key(d, "keys"))
            .arg(d.messages)
            .arg(d.known_messages)
            .arg(d.tokens)
            .arg(d.known_tokens)
            .arg(d.keys.len());
        for k in &d.keys {
            invocation.arg(*k);
        }
    }
    invocation.arg(KEY_TTL_SECS);
    let totals: Vec<u64> = match invocation.invoke_async(conn).await {
        Ok(t) => t,
        Err(e) => {
            for d in &deltas {
                meter.restore_unsynced(d);
            }
            return Err(e);
        }
    };
    for (d, out) in deltas.iter().zip(totals.chunks(3)) {
        let at = |i: usize| out.get(i).copied().unwrap_or(0);
        meter.apply_shared(d, at(0), at(1), at(2));
    }
    Ok(())
}

/// Syncs the meter with Redis every `interval` until shutdown, reconnecting as needed.
pub async fn sync_forever(
    meter: Arc<Meter>,
    url: String,
    interval: Duration,
    mut shutdown: ShutdownWatch,
) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("redis.url is not usable, counters stay per node: {e}");
            return;
        }
    };
    let up = metrics::gauge!("clawdeploy_redis_up");
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_down = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if conn.is_none() {
            match tokio::time::timeout(
                interval.max(Duration::from_secs(1)),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(Ok(c)) => {
                    if was_down {
                        tracing::info!("Redis is back: adding the counts made meanwhile");
                    }
                    conn = Some(c);
                }
                Ok(Err(e)) => {
                    if !was_down {
                        tracing::warn!("Redis unreachable, counting locally until it returns: {e}");
                    }
                    was_down = true;
                    up.set(0.0);
                    continue;
                }
                Err(_) => {
                    was_down = true;
                    up.set(0.0);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match tokio::time::timeout(interval.max(Duration::from_secs(1)), sync_once(&meter, c)).await
        {
            Ok(Ok(())) => {
                was_down = false;
                up.set(1.0);
            }
            Ok(Err(e)) => {
                if !was_down {
                    tracing::warn!("Redis sync failed, counting locally until it returns: {e}");
                }
                was_down = true;
                up.set(0.0);
                conn = None;
            }
            Err(_) => {
                was_down = true;
                up.set(0.0);
                conn = None;
            }
        }
    }
}
