//! Message and token counters per instance and month, and the quota decision.
//!
//! Counters live in memory (one small mutex per instance, so concurrent sends racing at the
//! boundary are decided one at a time) and are flushed to the store every
//! `metering.flush_interval_secs` as per-day deltas. A send reserves a slot before it is
//! forwarded ("in flight"); the gateway's `res` commits it (`ok: true`, counted once per
//! idempotency key) or releases it. The limit compares against counted plus in-flight sends, so
//! concurrent sends can never overshoot it.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use clawdeploy_config::TiersConfig;
use clawdeploy_store::time::{civil_from_days, days_from_civil, now_ms, rfc3339, DAY_MS};
use dashmap::DashMap;

/// A calendar month in UTC as `year * 12 + (month - 1)`.
pub fn month_index(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    y * 12 + i64::from(m) - 1
}

/// Unix ms at which the month after `month` starts.
pub fn next_month_start_ms(month: i64) -> i64 {
    let next = month + 1;
    days_from_civil(next.div_euclid(12), (next.rem_euclid(12) + 1) as u32, 1) * DAY_MS
}

/// Unix ms at which `month` starts.
pub fn month_start_ms(month: i64) -> i64 {
    days_from_civil(month.div_euclid(12), (month.rem_euclid(12) + 1) as u32, 1) * DAY_MS
}

#[derive(Debug, Default)]
struct Usage {
    month: i64,
    messages: u64,
    tokens: u64,
    inflight: u64,
    /// Hashes of idempotency keys counted this month.
    keys: HashSet<u64>,
    /// Not yet written to the store: day (days since epoch) → (messages, tokens).
    unflushed: BTreeMap<i64, (u64, u64)>,
    /// Not yet added to the shared (Redis) counters: (messages, tokens) of `month`.
    unsynced: (u64, u64),
}

impl Usage {
    fn roll(&mut self, month: i64) {
        if self.month != month {
            self.month = month;
            self.messages = 0;
            self.tokens = 0;
            self.inflight = 0;
            self.keys.clear();
            self.unsynced = (0, 0);
        }
    }
}

type Entry = Arc<Mutex<Usage>>;

fn lock(entry: &Entry) -> MutexGuard<'_, Usage> {
    // A panic while holding the lock leaves plain counters behind: keep using them.
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a send or an LLM call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub limit: u64,
    pub used: u64,
    /// RFC 3339, the start of next month (UTC).
    pub resets_at: String,
}

/// The decision on one user message.
#[derive(Debug)]
pub enum Admission {
    /// Forward it; the reservation is committed or released by the gateway's answer.
    Forward(Reservation),
    /// Forward it without counting: its idempotency key was already counted (a retry).
    Retry,
    /// Do not forward it.
    Refuse(Refusal),
}

/// One in-flight user message; released when dropped uncommitted (connection closed).
#[derive(Debug)]
pub struct Reservation {
    entry: Entry,
    month: i64,
    key: Option<u64>,
    tier: Arc<str>,
    done: bool,
}

impl Reservation {
    /// The gateway answered: `accepted` counts the message (once per idempotency key).
    pub fn commit(mut self, accepted: bool) -> bool {
        self.done = true;
        let mut usage = lock(&self.entry);
        if usage.month == self.month {
            usage.inflight = usage.inflight.saturating_sub(1);
        }
        if !accepted {
            return false;
        }
        let now = now_ms();
        usage.roll(month_index(now));
        if let Some(key) = self.key {
            if !usage.keys.insert(key) {
                return false;
            }
        }
        usage.messages += 1;
        usage.unsynced.0 += 1;
        usage.unflushed.entry(now.div_euclid(DAY_MS)).or_default().0 += 1;
        drop(usage);
        metrics::counter!("clawdeploy_messages_counted_total", "tier" => tier_label(&self.tier))
            .increment(1);
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            let mut usage = lock(&self.entry);
            if usage.month == self.month {
                usage.inflight = usage.inflight.saturating_sub(1);
            }
        }
    }
}

/// One instance's counters to write to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub instance_id: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub messages: u64,
    pub tokens: u64,
}

/// One instance's counts for the shared-counter sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDelta {
    pub instance_id: String,
    pub month: i64,
    /// New since the last sync.
    pub messages: u64,
    pub tokens: u64,
    /// This node's total when the delta was taken.
    pub known_messages: u64,
    pub known_tokens: u64,
}

/// The counters of every instance this node has seen.
#[derive(Debug)]
pub struct Meter {
    usage: DashMap<Arc<str>, Entry>,
    tiers: TiersConfig,
    key_hasher: std::collections::hash_map::RandomState,
}

impl Meter {
    pub fn new(tiers: TiersConfig) -> Self {
        Self {
            usage: DashMap::new(),
            tiers,
            key_hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn tiers(&self) -> &TiersConfig {
        &self.tiers
    }

    fn entry(&self, instance: &str) -> Entry {
        if let Some(e) = self.usage.get(instance) {
            return e.value().clone();
        }
        self.usage
            .entry(Arc::from(instance))
            .or_insert_with(|| {
                Arc::new(Mutex::new(Usage {
                    month: month_index(now_ms()),
                    ..Usage::default()
                }))
            })
            .value()
            .clone()
    }

    /// Adds the month's totals read from the store at start (once; counts made before it are
    /// still unflushed, so adding gives the true total).
    pub fn seed(&self, instance: &str, messages: u64, tokens: u64) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(month_index(now_ms()));
        usage.messages += messages;
        usage.tokens += tokens;
    }

    /// Decides on one user message of `instance` (tier `tier`) with an optional idempotency key.
    pub fn admit(&self, instance: &str, tier: &Arc<str>, key: Option<&str>) -> Admission {
        let limit = self.tiers.get(tier).messages_per_month;
        let key = key.map(|k| self.key_hasher.hash_one(k));
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        let month = month_index(now_ms());
        usage.roll(month);
        if let Some(k) = key {
            if usage.keys.contains(&k) {
                return Admission::Retry;
            }
        }
        if limit > 0 && usage.messages + usage.inflight >= limit {
            let used = usage.messages;
            drop(usage);
            metrics::counter!("clawdeploy_quota_rejections_total", "tier" => tier_label(tier), "quota" => "messages")
                .increment(1);
            return Admission::Refuse(Refusal {
                limit,
                used,
                resets_at: rfc3339(next_month_start_ms(month)),
            });
        }
        usage.inflight += 1;
        drop(usage);
        Admission::Forward(Reservation {
            entry,
            month,
            key,
            tier: tier.clone(),
            done: false,
        })
    }

    /// Whether `instance` may make another LLM call this month.
    pub fn check_tokens(&self, instance: &str, tier: &str) -> Result<(), Refusal> {
        let limit = self.tiers.get(tier).tokens_per_month;
        if limit == 0 {
            return Ok(());
        }
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        let month = month_index(now_ms());
        usage.roll(month);
        if usage.tokens >= limit {
            let used = usage.tokens;
            drop(usage);
            metrics::counter!("clawdeploy_quota_rejections_total", "tier" => tier_label(tier), "quota" => "tokens")
                .increment(1);
            return Err(Refusal {
                limit,
                used,
                resets_at: rfc3339(next_month_start_ms(month)),
            });
        }
        Ok(())
    }

    /// Records LLM tokens used by `instance`.
    pub fn add_tokens(&self, instance: &str, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        let now = now_ms();
        usage.roll(month_index(now));
        usage.tokens += tokens;
        usage.unsynced.1 += tokens;
        usage.unflushed.entry(now.div_euclid(DAY_MS)).or_default().1 += tokens;
    }

    /// This month's (messages, tokens) as this node knows them (with Redis: all nodes' counts as
    /// of the last sync). Starts tracking the instance, so the next sync fetches its shared counts.
    pub fn usage(&self, instance: &str) -> (u64, u64) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(month_index(now_ms()));
        (usage.messages, usage.tokens)
    }

    /// Counts of this month not yet in the store: (messages, tokens).
    pub fn unflushed(&self, instance: &str) -> (u64, u64) {
        let Some(entry) = self.usage.get(instance).map(|e| e.value().clone()) else {
            return (0, 0);
        };
        let usage = lock(&entry);
        let since = month_start_ms(month_index(now_ms())).div_euclid(DAY_MS);
        usage
            .unflushed
            .range(since..)
            .fold((0, 0), |(m, t), (_, (dm, dt))| (m + dm, t + dt))
    }

    /// Takes every unflushed delta (put back with [`Meter::restore`] if the write fails).
    pub fn take_unflushed(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for item in self.usage.iter() {
            let mut usage = lock(item.value());
            for (day, (messages, tokens)) in std::mem::take(&mut usage.unflushed) {
                out.push(UsageDelta {
                    instance_id: item.key().to_string(),
                    day,
                    messages,
                    tokens,
                });
            }
        }
        out
    }

    /// Puts deltas back after a failed write.
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        for d in deltas {
            let entry = self.entry(&d.instance_id);
            let mut usage = lock(&entry);
            let slot = usage.unflushed.entry(d.day).or_default();
            slot.0 += d.messages;
            slot.1 += d.tokens;
        }
    }

    /// For the shared-counter sync: every tracked instance's month, counts not yet added to the
    /// shared counters (taken), and the total this node knows.
    pub fn take_unsynced(&self) -> Vec<SyncDelta> {
        let month = month_index(now_ms());
        self.usage
            .iter()
            .map(|item| {
                let mut usage = lock(item.value());
                usage.roll(month);
                let (messages, tokens) = std::mem::take(&mut usage.unsynced);
                SyncDelta {
                    instance_id: item.key().to_string(),
                    month,
                    messages,
                    tokens,
                    known_messages: usage.messages,
                    known_tokens: usage.tokens,
                }
            })
            .collect()
    }

    /// Puts a delta back after a failed sync.
    pub fn restore_unsynced(&self, d: &SyncDelta) {
        let entry = self.entry(&d.instance_id);
        let mut usage = lock(&entry);
        if usage.month == d.month {
            usage.unsynced.0 += d.messages;
            usage.unsynced.1 += d.tokens;
        }
    }

    /// Sets the shared totals after a sync; counts made since the delta was taken stay on top.
    pub fn apply_shared(&self, d: &SyncDelta, messages: u64, tokens: u64) {
        let entry = self.entry(&d.instance_id);
        let mut usage = lock(&entry);
        if usage.month == d.month {
            usage.messages = messages + usage.unsynced.0;
            usage.tokens = tokens + usage.unsynced.1;
        }
    }

    /// Forgets an instance (deleted).
    pub fn forget(&self, instance: &str) {
        self.usage.remove(instance);
    }
}

/// Tier label values from a fixed set (bounded metric cardinality).
pub fn tier_label(tier: &str) -> &'static str {
    match tier {
        "free" => "free",
        "pro" => "pro",
        "team" => "team",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(limit: u64) -> Meter {
        let mut tiers = TiersConfig::default();
        tiers.free.messages_per_month = limit;
        Meter::new(tiers)
    }

    #[test]
    fn the_limit_counts_sends_in_flight() {
        let m = meter(2);
        let free: Arc<str> = Arc::from("free");
        let Admission::Forward(a) = m.admit("i", &free, Some("k1")) else {
            panic!()
        };
        let Admission::Forward(b) = m.admit("i", &free, Some("k2")) else {
            panic!()
        };
        assert!(matches!(
            m.admit("i", &free, Some("k3")),
            Admission::Refuse(_)
        ));
        assert!(!b.commit(false));
        let Admission::Forward(c) = m.admit("i", &free, Some("k3")) else {
            panic!()
        };
        assert!(a.commit(true));
        assert!(c.commit(true));
        assert_eq!(m.usage("i"), (2, 0));
        match m.admit("i", &free, Some("k4")) {
            Admission::Refuse(r) => {
                assert_eq!((r.limit, r.used), (2, 2));
                assert!(r.resets_at.ends_with("-01T00:00:00.000Z"));
            }
            other => panic!("{other:?}"),
        }
        // A retry of a counted key goes through uncounted.
        assert!(matches!(m.admit("i", &free, Some("k1")), Admission::Retry));
    }

    #[test]
    fn dropped_reservations_are_released_and_keys_count_once() {
        let m = meter(1);
        let free: Arc<str> = Arc::from("free");
        let Admission::Forward(a) = m.admit("i", &free, Some("k")) else {
            panic!()
        };
        drop(a);
        let Admission::Forward(a) = m.admit("i", &free, Some("k")) else {
            panic!()
        };
        let Admission::Forward(b) = m.admit("j", &free, None) else {
            panic!()
        };
        assert!(a.commit(true));
        assert!(b.commit(true));
        assert_eq!(m.usage("i"), (1, 0));
        assert_eq!(m.unflushed("i"), (1, 0));
        let deltas = m.take_unflushed();
        assert_eq!(deltas.len(), 2);
        assert_eq!(m.unflushed("i"), (0, 0));
        m.restore(deltas);
        assert_eq!(m.unflushed("i"), (1, 0));
    }

    #[test]
    fn month_boundaries() {
        // 2026-11-27 → 2026-12-01.
        let ms = days_from_civil(2026, 11, 27) * DAY_MS + 5;
        let month = month_index(ms);
        assert_eq!(
            rfc3339(next_month_start_ms(month)),
            "2026-12-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339(month_start_ms(month)), "2026-11-01T00:00:00.000Z");
        let dec = days_from_civil(2026, 12, 3) * DAY_MS;
        assert_eq!(
            rfc3339(next_month_start_ms(month_index(dec))),
            "2027-01-01T00:00:00.000Z"
        );
    }
}
