//! Message and token counters per instance and billing period (see [`crate::period`]), and the
//! quota decision.
//!
//! Counters live in memory (one small mutex per instance, so concurrent sends racing at the
//! boundary are decided one at a time) and are flushed to the store every
//! `metering.flush_interval_secs` as per-day deltas. A send reserves a slot before it is
//! forwarded ("in flight"); the gateway's `res` commits it (`ok: true`, counted once per
//! idempotency key) or releases it. The limit compares against counted plus in-flight sends, so
//! concurrent sends can never overshoot it.
//!
//! Idempotency keys are kept as 64-bit hashes of (instance, key), stable across restarts: the
//! flush writes newly counted ones to the store and a starting edge loads the current period's,
//! so a retry after a restart is not counted twice. At most [`MAX_KEYS_PER_INSTANCE`] are held
//! per instance (the oldest are forgotten first: retries come soon after the original).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use clawdeploy_config::TiersConfig;
use clawdeploy_store::time::{now_ms, rfc3339, DAY_MS};
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::period::{Period, Plan};

/// Idempotency keys held per instance (8 bytes each plus set overhead, about 40 bytes).
pub const MAX_KEYS_PER_INSTANCE: usize = 10_000;

/// The stable hash of an idempotency key of `instance` (the first 8 bytes of SHA-256).
pub fn key_hash(instance: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[derive(Debug, Default)]
struct Usage {
    plan: Plan,
    period: Period,
    messages: u64,
    tokens: u64,
    inflight: u64,
    /// Hashes of idempotency keys counted this period, oldest first in `key_order`.
    keys: HashSet<u64>,
    key_order: VecDeque<u64>,
    /// Keys counted but not yet written to the store: (hash, counted at ms).
    unflushed_keys: Vec<(u64, i64)>,
    /// Not yet written to the store: day (days since epoch) → (messages, tokens).
    unflushed: BTreeMap<i64, (u64, u64)>,
    /// Not yet added to the shared (Redis) counters: (messages, tokens) of `period`.
    unsynced: (u64, u64),
}

impl Usage {
    fn new(plan: Plan, now: i64) -> Self {
        Self {
            plan,
            period: plan.period(now),
            ..Self::default()
        }
    }

    /// Moves to the period containing `now` under `plan` (a new tier or anchor starts over).
    fn roll(&mut self, plan: Option<Plan>, now: i64) {
        if let Some(plan) = plan {
            self.plan = plan;
        }
        let period = self.plan.period(now);
        if self.period != period {
            self.period = period;
            self.messages = 0;
            self.tokens = 0;
            self.inflight = 0;
            self.keys.clear();
            self.key_order.clear();
            self.unsynced = (0, 0);
        }
    }

    /// Remembers a counted key; false when it was already counted.
    fn remember(&mut self, key: u64) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.key_order.push_back(key);
        if self.key_order.len() > MAX_KEYS_PER_INSTANCE {
            if let Some(old) = self.key_order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
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
    /// RFC 3339, the end of the current period (next month's start for the free tier).
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
    period: Period,
    key: Option<u64>,
    tier: Arc<str>,
    done: bool,
}

impl Reservation {
    /// The gateway answered: `accepted` counts the message (once per idempotency key).
    pub fn commit(mut self, accepted: bool) -> bool {
        self.done = true;
        let mut usage = lock(&self.entry);
        if usage.period == self.period {
            usage.inflight = usage.inflight.saturating_sub(1);
        }
        if !accepted {
            return false;
        }
        let now = now_ms();
        usage.roll(None, now);
        if let Some(key) = self.key {
            if !usage.remember(key) {
                return false;
            }
            if usage.unflushed_keys.len() < MAX_KEYS_PER_INSTANCE {
                usage.unflushed_keys.push((key, now));
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
            if usage.period == self.period {
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
    /// Start (ms) of the period the counts belong to.
    pub period_start_ms: i64,
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
}

impl Meter {
    pub fn new(tiers: TiersConfig) -> Self {
        Self {
            usage: DashMap::new(),
            tiers,
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
            .or_insert_with(|| Arc::new(Mutex::new(Usage::new(Plan::CALENDAR, now_ms()))))
            .value()
            .clone()
    }

    /// Adds the current period's totals read from the store at start (once; counts made before
    /// it are still unflushed, so adding gives the true total).
    pub fn seed(&self, instance: &str, plan: Plan, messages: u64, tokens: u64) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(Some(plan), now_ms());
        usage.messages += messages;
        usage.tokens += tokens;
    }

    /// Adds idempotency keys counted before a restart: (hash, counted at ms); those from before
    /// the current period are ignored.
    pub fn seed_keys(&self, instance: &str, keys: impl IntoIterator<Item = (u64, i64)>) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(None, now_ms());
        let start = usage.period.start_ms;
        for (hash, at) in keys {
            if at >= start {
                usage.remember(hash);
            }
        }
    }

    /// Decides on one user message of `instance` (tier `tier`, billing anchor `anchor_ms`) with
    /// an optional idempotency key.
    pub fn admit(
        &self,
        instance: &str,
        tier: &Arc<str>,
        anchor_ms: Option<i64>,
        key: Option<&str>,
    ) -> Admission {
        let limit = self.tiers.get(tier).messages_per_month;
        let key = key.map(|k| key_hash(instance, k));
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(Some(Plan::new(tier, anchor_ms)), now_ms());
        let period = usage.period;
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
                resets_at: rfc3339(period.end_ms),
            });
        }
        usage.inflight += 1;
        drop(usage);
        Admission::Forward(Reservation {
            entry,
            period,
            key,
            tier: tier.clone(),
            done: false,
        })
    }

    /// Whether `instance` may make another LLM call this period.
    pub fn check_tokens(
        &self,
        instance: &str,
        tier: &str,
        anchor_ms: Option<i64>,
    ) -> Result<(), Refusal> {
        let limit = self.tiers.get(tier).tokens_per_month;
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(Some(Plan::new(tier, anchor_ms)), now_ms());
        if limit == 0 {
            return Ok(());
        }
        if usage.tokens >= limit {
            let used = usage.tokens;
            let usage_end = usage.period.end_ms;
            drop(usage);
            metrics::counter!("clawdeploy_quota_rejections_total", "tier" => tier_label(tier), "quota" => "tokens")
                .increment(1);
            return Err(Refusal {
                limit,
                used,
                resets_at: rfc3339(usage_end),
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
        usage.roll(None, now);
        usage.tokens += tokens;
        usage.unsynced.1 += tokens;
        usage.unflushed.entry(now.div_euclid(DAY_MS)).or_default().1 += tokens;
    }

    /// This period's (messages, tokens) of `instance` under `plan` as this node knows them (with
    /// Redis: all nodes' counts as of the last sync). Starts tracking the instance, so the next
    /// sync fetches its shared counts.
    pub fn usage(&self, instance: &str, plan: Plan) -> (u64, u64) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(Some(plan), now_ms());
        (usage.messages, usage.tokens)
    }

    /// Counts since `since_ms` (a period start: whole UTC days) not yet in the store.
    pub fn unflushed_since(&self, instance: &str, since_ms: i64) -> (u64, u64) {
        let Some(entry) = self.usage.get(instance).map(|e| e.value().clone()) else {
            return (0, 0);
        };
        let usage = lock(&entry);
        usage
            .unflushed
            .range(since_ms.div_euclid(DAY_MS)..)
            .fold((0, 0), |(m, t), (_, (dm, dt))| (m + dm, t + dt))
    }

    /// Takes the idempotency keys counted since the last flush: (instance, hash, counted at).
    pub fn take_unflushed_keys(&self) -> Vec<(String, u64, i64)> {
        let mut out = Vec::new();
        for item in self.usage.iter() {
            let mut usage = lock(item.value());
            for (hash, at) in std::mem::take(&mut usage.unflushed_keys) {
                out.push((item.key().to_string(), hash, at));
            }
        }
        out
    }

    /// Puts keys back after a failed write.
    pub fn restore_keys(&self, keys: Vec<(String, u64, i64)>) {
        for (instance, hash, at) in keys {
            let entry = self.entry(&instance);
            let mut usage = lock(&entry);
            if usage.unflushed_keys.len() < MAX_KEYS_PER_INSTANCE {
                usage.unflushed_keys.push((hash, at));
            }
        }
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

    /// For the shared-counter sync: every tracked instance's period, counts not yet added to the
    /// shared counters (taken), and the total this node knows.
    pub fn take_unsynced(&self) -> Vec<SyncDelta> {
        let now = now_ms();
        self.usage
            .iter()
            .map(|item| {
                let mut usage = lock(item.value());
                usage.roll(None, now);
                let (messages, tokens) = std::mem::take(&mut usage.unsynced);
                SyncDelta {
                    instance_id: item.key().to_string(),
                    period_start_ms: usage.period.start_ms,
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
        if usage.period.start_ms == d.period_start_ms {
            usage.unsynced.0 += d.messages;
            usage.unsynced.1 += d.tokens;
        }
    }

    /// Sets the shared totals after a sync; counts made since the delta was taken stay on top.
    pub fn apply_shared(&self, d: &SyncDelta, messages: u64, tokens: u64) {
        let entry = self.entry(&d.instance_id);
        let mut usage = lock(&entry);
        if usage.period.start_ms == d.period_start_ms {
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
        let Admission::Forward(a) = m.admit("i", &free, None, Some("k1")) else {
            panic!()
        };
        let Admission::Forward(b) = m.admit("i", &free, None, Some("k2")) else {
            panic!()
        };
        assert!(matches!(
            m.admit("i", &free, None, Some("k3")),
            Admission::Refuse(_)
        ));
        assert!(!b.commit(false));
        let Admission::Forward(c) = m.admit("i", &free, None, Some("k3")) else {
            panic!()
        };
        assert!(a.commit(true));
        assert!(c.commit(true));
        assert_eq!(m.usage("i", Plan::CALENDAR), (2, 0));
        match m.admit("i", &free, None, Some("k4")) {
            Admission::Refuse(r) => {
                assert_eq!((r.limit, r.used), (2, 2));
                assert!(r.resets_at.ends_with("-01T00:00:00.000Z"));
            }
            other => panic!("{other:?}"),
        }
        // A retry of a counted key goes through uncounted.
        assert!(matches!(
            m.admit("i", &free, None, Some("k1")),
            Admission::Retry
        ));
    }

    #[test]
    fn dropped_reservations_are_released_and_keys_count_once() {
        let m = meter(1);
        let free: Arc<str> = Arc::from("free");
        let Admission::Forward(a) = m.admit("i", &free, None, Some("k")) else {
            panic!()
        };
        drop(a);
        let Admission::Forward(a) = m.admit("i", &free, None, Some("k")) else {
            panic!()
        };
        let Admission::Forward(b) = m.admit("j", &free, None, None) else {
            panic!()
        };
        assert!(a.commit(true));
        assert!(b.commit(true));
        assert_eq!(m.usage("i", Plan::CALENDAR), (1, 0));
        assert_eq!(m.unflushed_since("i", this_month()), (1, 0));
        let deltas = m.take_unflushed();
        assert_eq!(deltas.len(), 2);
        assert_eq!(m.unflushed_since("i", this_month()), (0, 0));
        m.restore(deltas);
        assert_eq!(m.unflushed_since("i", this_month()), (1, 0));
    }

    fn this_month() -> i64 {
        crate::period::calendar_month(now_ms()).start_ms
    }

    #[test]
    fn counted_keys_survive_a_restart_through_their_stable_hashes() {
        let free: Arc<str> = Arc::from("free");
        let before = meter(10);
        let Admission::Forward(a) = before.admit("i", &free, None, Some("k1")) else {
            panic!()
        };
        assert!(a.commit(true));
        let keys = before.take_unflushed_keys();
        assert_eq!(
            keys,
            vec![("i".to_string(), key_hash("i", "k1"), keys[0].2)]
        );
        assert!(before.take_unflushed_keys().is_empty());
        // A new process: the stored keys are loaded, so the retry is not counted.
        let after = meter(10);
        after.seed_keys("i", keys.iter().map(|(_, h, at)| (*h, *at)));
        assert!(matches!(
            after.admit("i", &free, None, Some("k1")),
            Admission::Retry
        ));
        // Keys from before the current period are ignored; another instance's key is its own.
        after.seed_keys("j", [(key_hash("j", "old"), this_month() - 1)]);
        assert!(matches!(
            after.admit("j", &free, None, Some("old")),
            Admission::Forward(_)
        ));
        assert_ne!(key_hash("i", "k1"), key_hash("j", "k1"));
    }

    #[test]
    fn keys_per_instance_are_bounded() {
        let mut usage = Usage::default();
        for k in 0..(MAX_KEYS_PER_INSTANCE as u64 + 5) {
            assert!(usage.remember(k));
        }
        assert_eq!(usage.keys.len(), MAX_KEYS_PER_INSTANCE);
        assert_eq!(usage.key_order.len(), MAX_KEYS_PER_INSTANCE);
        // The oldest went first.
        assert!(usage.remember(0));
        assert!(!usage.remember(MAX_KEYS_PER_INSTANCE as u64 + 4));
    }

    #[test]
    fn a_paid_tier_resets_at_the_end_of_its_billing_period() {
        let mut tiers = TiersConfig::default();
        tiers.pro.messages_per_month = 1;
        let m = Meter::new(tiers);
        let pro: Arc<str> = Arc::from("pro");
        let anchor = now_ms() - 3 * DAY_MS;
        let period = Plan::new("pro", Some(anchor)).period(now_ms());
        let Admission::Forward(a) = m.admit("p", &pro, Some(anchor), Some("k")) else {
            panic!()
        };
        assert!(a.commit(true));
        match m.admit("p", &pro, Some(anchor), Some("k2")) {
            Admission::Refuse(r) => assert_eq!(r.resets_at, rfc3339(period.end_ms)),
            other => panic!("{other:?}"),
        }
        // A new anchor (a change of tier) starts a new period.
        assert!(matches!(
            m.admit("p", &pro, Some(now_ms()), Some("k2")),
            Admission::Forward(_)
        ));
    }
}
