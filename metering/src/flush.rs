//! The task that keeps the meter's counts in the store, and the seeding of the meter from the
//! store at start.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;

use clawdeploy_store::time::{day_string, days_from_civil, now_ms, DAY_MS};
use clawdeploy_store::{Store, StoreError};

use crate::period::Plan;
use crate::quota::{Meter, UsageDelta};

/// Writes the meter's counts back to the store every interval (the binary seeds the meter with
/// [`seed_from_store`] before it serves the first request). Runs on the app's runtime with the
/// app's store ([`UsageFlush::run`]).
pub struct UsageFlush {
    meter: Arc<Meter>,
    interval: Duration,
    /// Redis URL and sync interval, to share counters with other edge nodes.
    redis: Option<(String, Duration)>,
}

impl UsageFlush {
    /// Flushes `meter` every `interval`.
    pub fn new(meter: Arc<Meter>, interval: Duration) -> Self {
        Self {
            meter,
            interval,
            redis: None,
        }
    }

    /// Shares the counters with other edge nodes through Redis.
    pub fn with_redis(mut self, url: String, interval: Duration) -> Self {
        self.redis = Some((url, interval));
        self
    }
}

/// Stored days loaded at start: the current period's, and enough before it for a tier change
/// to sum its new period (the longest is 31 days). Keys from before the period are ignored.
const LOOKBACK_MS: i64 = crate::quota::HISTORY_DAYS * DAY_MS;

/// Idempotency keys are kept in the store this long, then pruned by the flush.
const KEY_RETENTION_MS: i64 = 62 * DAY_MS;

/// Unix ms of a `YYYY-MM-DD` day.
fn day_ms(day: &str) -> Option<i64> {
    let mut parts = day.splitn(3, '-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    Some(days_from_civil(y, m, d) * DAY_MS)
}

/// Adds each instance's stored totals of its current billing period, and the idempotency keys
/// counted in it, to the meter (once, at start).
pub async fn seed_from_store(meter: &Meter, store: &Store) -> Result<usize, StoreError> {
    let now = now_ms();
    let rows = store
        .usage_days_since_all(&day_string(now - LOOKBACK_MS))
        .await?;
    // Per instance: its plan, and (day, messages, tokens) rows.
    type Days = (Plan, Vec<(i64, u64, u64)>);
    let mut days: HashMap<String, Days> = HashMap::new();
    for row in &rows {
        let Some(day) = day_ms(&row.day) else {
            continue;
        };
        let plan = Plan::new(row.tier, row.billing_anchor_at);
        days.entry(row.instance_id.clone())
            .or_insert((plan, Vec::new()))
            .1
            .push((
                day.div_euclid(DAY_MS),
                u64::try_from(row.messages).unwrap_or(0),
                u64::try_from(row.tokens).unwrap_or(0),
            ));
    }
    for (instance, (plan, days)) in &days {
        meter.seed_days(instance, *plan, days.iter().copied());
    }
    let mut keys: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
    for (instance, hash, at) in store.usage_keys_since(now - LOOKBACK_MS).await? {
        keys.entry(instance).or_default().push((hash as u64, at));
    }
    for (instance, keys) in keys {
        meter.seed_keys(&instance, keys);
    }
    Ok(days.len())
}

/// What a flush has taken from the meter and not yet written. Handed back when the flush ends
/// or is dropped midway (its task cancelled at shutdown), so the binary's final flush still
/// writes it. The one count write in progress at a cancellation is not handed back: it may have
/// committed, and counting it twice would be worse than the documented loss. Keys are always
/// handed back: writing one twice is harmless, losing one lets a retry count again.
struct Unwritten<'a> {
    meter: &'a Meter,
    deltas: VecDeque<UsageDelta>,
    failed: Vec<UsageDelta>,
    keys: Vec<(String, u64, i64)>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        let deltas = self.deltas.drain(..).chain(self.failed.drain(..)).collect();
        self.meter.restore(deltas);
        self.meter.restore_keys(std::mem::take(&mut self.keys));
    }
}

/// Writes the meter's unflushed counts and idempotency keys to the store; failed rows are kept
/// for the next flush.
pub async fn flush(meter: &Meter, store: &Store) -> usize {
    let mut unwritten = Unwritten {
        meter,
        deltas: meter.take_unflushed().into(),
        failed: Vec::new(),
        keys: Vec::new(),
    };
    let mut written = 0;
    while let Some(d) = unwritten.deltas.pop_front() {
        let Ok(id) = d.instance_id.parse() else {
            continue;
        };
        let result = store
            .add_usage(
                id,
                d.day * DAY_MS,
                i64::try_from(d.messages).unwrap_or(i64::MAX),
                i64::try_from(d.tokens).unwrap_or(i64::MAX),
            )
            .await;
        match result {
            Ok(()) => written += 1,
            // The instance is gone: its usage went with it.
            Err(StoreError::NotFound(_)) => meter.forget(&d.instance_id),
            Err(e) => {
                tracing::warn!(instance = %d.instance_id, "cannot write usage, retrying at the next flush: {e}");
                metrics::counter!("clawdeploy_usage_flush_failures_total").increment(1);
                unwritten.failed.push(d);
            }
        }
    }
    unwritten.keys = meter.take_unflushed_keys();
    if !unwritten.keys.is_empty() {
        // Stored as the signed integer with the same bits.
        let rows: Vec<(String, i64, i64)> = unwritten
            .keys
            .iter()
            .map(|(instance, hash, at)| (instance.clone(), *hash as i64, *at))
            .collect();
        match store.add_usage_keys(&rows).await {
            Ok(_) => unwritten.keys.clear(),
            Err(e) => {
                tracing::warn!("cannot write idempotency keys, retrying at the next flush: {e}");
                metrics::counter!("clawdeploy_usage_flush_failures_total").increment(1);
            }
        }
    }
    drop(unwritten);
    if let Err(e) = store.prune_usage_keys(now_ms() - KEY_RETENTION_MS).await {
        tracing::debug!("cannot prune old idempotency keys: {e}");
    }
    written
}

impl UsageFlush {
    /// Flushes to `store` every interval until `shutdown`, and (with Redis) syncs the shared
    /// counters.
    pub async fn run(self, store: Store, mut shutdown: ShutdownWatch) {
        if let Some((url, interval)) = &self.redis {
            tokio::spawn(crate::shared::sync_forever(
                self.meter.clone(),
                url.clone(),
                *interval,
                shutdown.clone(),
            ));
        }
        // The first flush one interval after start, not at once: the counts loaded at start
        // have nothing to write, and an immediate flush could still be running when a quick
        // shutdown cancels this task, losing the keys it had taken (seen in tests).
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    flush(&self.meter, &store).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        // The last counts are written by the binary once Pingora's runtimes have stopped (a
        // task here would be cancelled at its first await).
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Admission;
    use clawdeploy_config::TiersConfig;

    /// Pingora's shutdown drops the flush task wherever it is waiting; what the flush had taken
    /// must still be in the meter for the binary's final flush.
    #[tokio::test]
    async fn what_a_flush_cancelled_midway_had_taken_is_handed_back() {
        let path = std::env::temp_dir().join(format!("cd-flush-{}.db", std::process::id()));
        let url = format!("sqlite://{}", path.display());
        let one_connection = clawdeploy_store::StoreOptions {
            max_connections: Some(1),
            ..Default::default()
        };
        let store = Store::open_with(&url, one_connection).await.unwrap();
        store.migrate().await.unwrap();
        // The store's only connection is held, so every write waits for it (as for a busy
        // database: the flush is stuck at an await when it is dropped).
        let held = store.pool().acquire().await.unwrap();

        let meter = Meter::new(TiersConfig::default());
        let instance = "0b7e7c4e-4f63-4a57-9a0e-3c1f2d6b8a90";
        let Admission::Forward(send) =
            meter.admit(instance, clawdeploy_config::Tier::Free, None, Some("k1"))
        else {
            panic!("refused");
        };
        assert!(send.commit(true));
        let counts = meter.take_unflushed();
        assert_eq!(counts.len(), 1);
        // Only the key is left to write: the flush waits on it and is dropped, as at shutdown.
        let flushing = tokio::time::timeout(Duration::from_millis(200), flush(&meter, &store));
        assert!(flushing.await.is_err(), "the write should have waited");
        assert_eq!(meter.take_unflushed_keys().len(), 1, "the key was lost");
        // The count whose write was in progress is not handed back (it may have committed).
        meter.restore(counts);
        let flushing = tokio::time::timeout(Duration::from_millis(200), flush(&meter, &store));
        assert!(flushing.await.is_err());
        assert!(meter.take_unflushed().is_empty());

        drop(held);
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
