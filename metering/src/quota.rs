//! Message and token counters per instance and billing period (see [`crate::period`]), and the
//! quota decision.
//!
//! Counters live in memory (one small mutex per instance, so concurrent sends racing at the
//! boundary are decided one at a time) and are flushed to the store every
//! `metering.flush_interval_secs` as per-day deltas. A send is counted when it is forwarded: it
//! takes a slot ("in flight") that only an explicit refusal from the gateway gives back
//! ([`Reservation::commit`] with `false`); an answer, or no answer at all (the connection closed,
//! the reservation dropped), makes it a counted message, once per idempotency key. The limit and
//! the usage shown compare against counted plus in-flight sends, so concurrent sends can never
//! overshoot it.
//!
//! Idempotency keys are kept as 64-bit hashes of (instance, key), stable across restarts: the
//! flush writes newly counted ones to the store and a starting edge loads the current period's,
//! so a retry after a restart is not counted twice. At most [`MAX_KEYS_PER_INSTANCE`] are held
//! per instance, at least the newest half of them (the oldest are forgotten first: retries come
//! soon after the original).

use std::collections::{BTreeMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};

use clawdeploy_config::{Tier, TiersConfig};
use clawdeploy_store::time::{now_ms, rfc3339, DAY_MS};
use dashmap::DashMap;
use siphasher::sip::SipHasher13;

use crate::period::{Period, Plan};

/// Instances idle for longer than this (ms) and with nothing new are left out of Redis syncs.
pub const SYNC_ACTIVE_MS: i64 = 10 * 60 * 1000;

/// Days of counts kept per instance: the longest period (31 days) back from any day of the next.
pub const HISTORY_DAYS: i64 = 62;

/// Idempotency keys held per instance (8 bytes each plus set overhead, about 40 bytes).
pub const MAX_KEYS_PER_INSTANCE: usize = 10_000;

/// The stable hash of an idempotency key of `instance` (SipHash-1-3 under a fixed key: stored
/// hashes must match after a restart or an upgrade). A 64-bit fingerprint: finding two keys that
/// collide takes about 2^32 tries, and gains one uncounted message.
pub fn key_hash(instance: &str, key: &str) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x636c_6177_6465_706c, 0x6f79_2d6b_6579_7331);
    h.write(instance.as_bytes());
    h.write(&[0]);
    h.write(key.as_bytes());
    h.finish()
}

#[derive(Debug, Default)]
struct Usage {
    plan: Plan,
    period: Period,
    messages: u64,
    tokens: u64,
    inflight: u64,
    /// Hashes of idempotency keys counted this period: the newest, and the generation before
    /// (dropped whole when the newest fills up, instead of evicting one key per message).
    keys: KeySet,
    older_keys: KeySet,
    /// Keys counted but not yet written to the store: (hash, counted at ms).
    unflushed_keys: Vec<(u64, i64)>,
    /// Not yet written to the store: day (days since epoch) → (messages, tokens).
    unflushed: BTreeMap<i64, (u64, u64)>,
    /// Counts per day over the last [`HISTORY_DAYS`] (the store's at start, plus this node's
    /// since): a tier change mid-period sums its new period from here instead of starting at 0.
    days: BTreeMap<i64, (u64, u64)>,
    /// Not yet added to the shared (Redis) counters: (messages, tokens) of `period`.
    unsynced: (u64, u64),
    /// The tier and billing anchor the route table last gave (tier changes reach every node
    /// through it); a connection's own copy, from when it opened, may be older.
    tier: Option<(Tier, Option<i64>)>,
    /// When this node last decided or showed something for the instance (ms): only recently
    /// active instances are synced with nothing new, to learn the other nodes' counts.
    active_ms: i64,
    /// With shared counters: keys counted since the last sync, for Redis to tell which another
    /// node counted already (`None` without Redis: nothing would take them).
    unsynced_keys: Option<Vec<u64>>,
}

impl Usage {
    fn new(plan: Plan, now: i64) -> Self {
        Self {
            plan,
            period: plan.period(now),
            ..Self::default()
        }
    }

    /// Moves to the period containing `now` under `plan` (a new tier or anchor, or time), with
    /// the counts of its days.
    fn roll(&mut self, plan: Option<Plan>, now: i64) {
        let same_plan = plan.is_none_or(|p| p == self.plan);
        if same_plan && self.period.start_ms <= now && now < self.period.end_ms {
            // The common case, checked first: calendar arithmetic is a measurable part of a send.
            return;
        }
        if let Some(plan) = plan {
            self.plan = plan;
        }
        let period = self.plan.period(now);
        if self.period != period {
            if period.start_ms >= self.period.end_ms {
                // Time moved on: keys of the old period no longer matter. (After a tier change
                // they still do: a retry stays a retry.)
                self.keys.clear();
                self.older_keys.clear();
            }
            self.period = period;
            self.days = self
                .days
                .split_off(&(now.div_euclid(DAY_MS) - HISTORY_DAYS));
            (self.messages, self.tokens) = self.period_days_total();
            self.inflight = 0;
            self.unsynced = (0, 0);
            if let Some(keys) = &mut self.unsynced_keys {
                keys.clear();
            }
        }
    }

    /// The counts of the days in the current period (periods start at midnight UTC).
    fn period_days_total(&self) -> (u64, u64) {
        self.days
            .range(self.period.start_ms.div_euclid(DAY_MS)..)
            .fold((0, 0), |(m, t), (_, (dm, dt))| (m + dm, t + dt))
    }

    /// Adds counts made at `now` to the day history and to what the store has still to get.
    fn record(&mut self, now: i64, messages: u64, tokens: u64) {
        let day = now.div_euclid(DAY_MS);
        for map in [&mut self.unflushed, &mut self.days] {
            let slot = map.entry(day).or_default();
            slot.0 += messages;
            slot.1 += tokens;
        }
    }

    /// Whether a key was counted (and is still remembered).
    fn knows(&self, key: u64) -> bool {
        self.keys.contains(&key) || self.older_keys.contains(&key)
    }

    /// Remembers a counted key; false when it was already counted.
    fn remember(&mut self, key: u64) -> bool {
        if self.knows(key) {
            return false;
        }
        if self.keys.len() >= MAX_KEYS_PER_INSTANCE / 2 {
            self.older_keys = std::mem::take(&mut self.keys);
        }
        self.keys.insert(key);
        true
    }
}

/// Hashes a `u64` that is already a uniform hash (an idempotency key's [`key_hash`]) as itself.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for u64 keys; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type BuildPreHashed = std::hash::BuildHasherDefault<PreHashed>;

type KeySet = HashSet<u64, BuildPreHashed>;

type Entry = Arc<Mutex<Usage>>;

fn lock(entry: &Entry) -> MutexGuard<'_, Usage> {
    // A panic while holding the lock leaves plain counters behind: keep using them.
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

/// One instance's counters, looked up once (see [`Meter::handle`]).
#[derive(Debug, Clone)]
pub struct UsageHandle(Entry);

/// Why a send or an LLM call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The tier's limit for the period: messages for a send, tokens for an LLM call.
    pub limit: u64,
    /// What the period has used, in the same unit (for messages, in-flight sends included).
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

/// One in-flight user message; counted when dropped uncommitted (the connection closed before the
/// gateway answered: the turn may have run).
#[derive(Debug)]
pub struct Reservation {
    entry: Entry,
    period: Period,
    /// When the send was admitted (ms): its answer follows within moments, so the commit dates
    /// it by this instead of reading the clock again.
    admitted_ms: i64,
    key: Option<u64>,
    /// `clawdeploy_messages_counted_total` of the instance's tier.
    counted: &'static metrics::Counter,
    done: bool,
}

impl Reservation {
    /// The gateway answered: `accepted` counts the message (once per idempotency key), `false`
    /// (an explicit refusal) gives its slot back.
    pub fn commit(mut self, accepted: bool) -> bool {
        self.finish(accepted)
    }

    fn finish(&mut self, accepted: bool) -> bool {
        self.done = true;
        let mut usage = lock(&self.entry);
        if usage.period == self.period {
            usage.inflight = usage.inflight.saturating_sub(1);
        }
        if !accepted {
            return false;
        }
        // Never earlier than the period the counters are in (a send admitted just before a
        // period ended and answered after another send started the next one).
        let now = self.admitted_ms.max(usage.period.start_ms);
        usage.roll(None, now);
        if let Some(key) = self.key {
            if !usage.remember(key) {
                return false;
            }
            if usage.unflushed_keys.len() < MAX_KEYS_PER_INSTANCE {
                usage.unflushed_keys.push((key, now));
            }
            if let Some(keys) = &mut usage.unsynced_keys {
                if keys.len() < MAX_KEYS_PER_INSTANCE {
                    keys.push(key);
                }
            }
        }
        usage.messages += 1;
        usage.unsynced.0 += 1;
        usage.record(now, 1, 0);
        drop(usage);
        self.counted.increment(1);
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.finish(true);
        }
    }
}

/// One instance's counters to write to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The instance the counts belong to (its id, a UUID in text form).
    pub instance_id: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Messages counted that day.
    pub messages: u64,
    /// LLM tokens (input plus output) counted that day.
    pub tokens: u64,
}

/// One instance's counts for the shared-counter sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDelta {
    /// The instance the counts belong to (its id, a UUID in text form).
    pub instance_id: String,
    /// Start (ms) of the period the counts belong to.
    pub period_start_ms: i64,
    /// New since the last sync.
    pub messages: u64,
    /// LLM tokens new since the last sync.
    pub tokens: u64,
    /// This node's total when the delta was taken.
    pub known_messages: u64,
    /// This node's token total for the period when the delta was taken.
    pub known_tokens: u64,
    /// Idempotency keys of the new messages (those without a key are not listed).
    pub keys: Vec<u64>,
}

/// The counters of every instance this node has seen.
#[derive(Debug)]
pub struct Meter {
    usage: DashMap<Arc<str>, Entry>,
    tiers: TiersConfig,
    /// Counters are shared through Redis: keep each sync's keys.
    shared: bool,
}

impl Meter {
    /// An empty meter whose limits come from `tiers`; counts stay on this node (see
    /// [`Meter::shared`]).
    pub fn new(tiers: TiersConfig) -> Self {
        Self {
            usage: DashMap::new(),
            tiers,
            shared: false,
        }
    }

    /// A meter whose counts are shared with other nodes (see [`crate::shared`]): each sync
    /// carries the idempotency keys counted since the last, so a retry counted on two nodes
    /// within one sync interval counts once in the shared total.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// The tier table the meter's limits come from.
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
                let mut usage = Usage::new(Plan::CALENDAR, now_ms());
                usage.unsynced_keys = self.shared.then(Vec::new);
                Arc::new(Mutex::new(usage))
            })
            .value()
            .clone()
    }

    /// Adds the per-day counts read from the store at start: (days since epoch, messages,
    /// tokens), once. Counts made before it are still unflushed, so adding gives the true total.
    pub fn seed_days(
        &self,
        instance: &str,
        plan: Plan,
        days: impl IntoIterator<Item = (i64, u64, u64)>,
    ) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        usage.roll(Some(plan), now_ms());
        for (day, messages, tokens) in days {
            let slot = usage.days.entry(day).or_default();
            slot.0 += messages;
            slot.1 += tokens;
        }
        // Everything counted here since start went into `days` too: the sum is the true total.
        (usage.messages, usage.tokens) = usage.period_days_total();
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

    /// The counters of `instance`, for a caller that decides many messages (a WebSocket relay):
    /// one lookup instead of one per message.
    pub fn handle(&self, instance: &str) -> UsageHandle {
        UsageHandle(self.entry(instance))
    }

    /// Records an instance's current tier and billing anchor (from the route table) for
    /// connections already open; instances this node has not metered yet are left alone.
    pub fn update_tier(&self, instance: &str, tier: Tier, anchor_ms: Option<i64>) {
        if let Some(entry) = self.usage.get(instance) {
            lock(entry.value()).tier = Some((tier, anchor_ms));
        }
    }

    /// Decides on one user message of `instance` (tier `tier`, billing anchor `anchor_ms`, unless
    /// the route table has told a newer one) with an optional idempotency key.
    pub fn admit(
        &self,
        instance: &str,
        tier: Tier,
        anchor_ms: Option<i64>,
        key: Option<&str>,
    ) -> Admission {
        self.admit_to(&self.handle(instance), instance, tier, anchor_ms, key)
    }

    /// [`Meter::admit`] with the instance's counters already looked up.
    pub fn admit_to(
        &self,
        handle: &UsageHandle,
        instance: &str,
        tier: Tier,
        anchor_ms: Option<i64>,
        key: Option<&str>,
    ) -> Admission {
        let key = key.map(|k| key_hash(instance, k));
        let entry = handle.0.clone();
        let mut usage = lock(&entry);
        let (plan, limit, label) = {
            let (tier, anchor_ms) = usage.tier.unwrap_or((tier, anchor_ms));
            let limit = self.tiers.get(tier).messages_per_month;
            (Plan::new(tier, anchor_ms), limit, tier.as_str())
        };
        let now = now_ms();
        usage.roll(Some(plan), now);
        usage.active_ms = now;
        let period = usage.period;
        if let Some(k) = key {
            if usage.knows(k) {
                return Admission::Retry;
            }
        }
        if limit > 0 && usage.messages + usage.inflight >= limit {
            let used = usage.messages + usage.inflight;
            drop(usage);
            metrics::counter!("clawdeploy_quota_rejections_total", "tier" => label, "quota" => "messages")
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
            admitted_ms: now,
            key,
            counted: messages_counted(tier),
            done: false,
        })
    }

    /// Whether `instance` may make another LLM call this period.
    pub fn check_tokens(
        &self,
        instance: &str,
        tier: Tier,
        anchor_ms: Option<i64>,
    ) -> Result<(), Refusal> {
        let limit = self.tiers.get(tier).tokens_per_month;
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        let now = now_ms();
        usage.roll(Some(Plan::new(tier, anchor_ms)), now);
        usage.active_ms = now;
        if limit == 0 {
            return Ok(());
        }
        if usage.tokens >= limit {
            let used = usage.tokens;
            let usage_end = usage.period.end_ms;
            drop(usage);
            metrics::counter!("clawdeploy_quota_rejections_total", "tier" => tier.as_str(), "quota" => "tokens")
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
        usage.record(now, 0, tokens);
    }

    /// This period's (messages, tokens) of `instance` under `plan` as this node knows them (with
    /// Redis: all nodes' counts as of the last sync), messages in flight included (they count
    /// unless the gateway refuses them). Starts tracking the instance, so the next sync fetches
    /// its shared counts.
    pub fn usage(&self, instance: &str, plan: Plan) -> (u64, u64) {
        let entry = self.entry(instance);
        let mut usage = lock(&entry);
        let now = now_ms();
        usage.roll(Some(plan), now);
        usage.active_ms = now;
        (usage.messages + usage.inflight, usage.tokens)
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

    /// For the shared-counter sync: the period, counts not yet added to the shared counters
    /// (taken) and the total this node knows, of every instance with new counts or active within
    /// [`SYNC_ACTIVE_MS`] (a node does not fetch totals it has no use for: with thousands of
    /// instances, most are idle).
    pub fn take_unsynced(&self) -> Vec<SyncDelta> {
        let now = now_ms();
        self.usage
            .iter()
            .filter_map(|item| {
                let mut usage = lock(item.value());
                let has_new = usage.unsynced != (0, 0)
                    || usage.unsynced_keys.as_ref().is_some_and(|k| !k.is_empty());
                if !has_new && now - usage.active_ms > SYNC_ACTIVE_MS {
                    return None;
                }
                usage.roll(None, now);
                let (messages, tokens) = std::mem::take(&mut usage.unsynced);
                Some(SyncDelta {
                    instance_id: item.key().to_string(),
                    period_start_ms: usage.period.start_ms,
                    messages,
                    tokens,
                    known_messages: usage.messages,
                    known_tokens: usage.tokens,
                    keys: usage
                        .unsynced_keys
                        .as_mut()
                        .map(std::mem::take)
                        .unwrap_or_default(),
                })
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
            if let Some(keys) = &mut usage.unsynced_keys {
                keys.extend_from_slice(&d.keys);
            }
        }
    }

    /// Sets the shared totals after a sync; counts made since the delta was taken stay on top.
    /// `duplicates` of the delta's messages were retries another node had counted: they are
    /// taken back from what this node has still to write to the store.
    pub fn apply_shared(&self, d: &SyncDelta, messages: u64, tokens: u64, duplicates: u64) {
        let entry = self.entry(&d.instance_id);
        let mut usage = lock(&entry);
        if usage.period.start_ms == d.period_start_ms {
            usage.messages = messages + usage.unsynced.0;
            usage.tokens = tokens + usage.unsynced.1;
        }
        let usage = &mut *usage;
        for map in [&mut usage.unflushed, &mut usage.days] {
            let mut left = duplicates;
            for (messages, _) in map.values_mut().rev() {
                let taken = left.min(*messages);
                *messages -= taken;
                left -= taken;
            }
        }
    }

    /// Forgets an instance (deleted).
    pub fn forget(&self, instance: &str) {
        self.usage.remove(instance);
    }
}

/// The `clawdeploy_messages_counted_total` counter of `tier` (handles made once: a registry lookup
/// per counted message would cost more than the counting).
fn messages_counted(tier: Tier) -> &'static metrics::Counter {
    static COUNTERS: std::sync::OnceLock<[metrics::Counter; 3]> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        Tier::ALL
            .map(|t| metrics::counter!("clawdeploy_messages_counted_total", "tier" => t.as_str()))
    });
    &counters[tier as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored hashes must not change between releases: these are the values the hand-written
    /// SipHash-1-3 this crate used before `siphasher` gave (checked equal when it was replaced).
    #[test]
    fn key_hashes_are_stable() {
        assert_eq!(
            key_hash("0b7e7c4e-4f63-4a57-9a0e-3c1f2d6b8a90", "k1"),
            0x00eb_2385_c9bb_d6ba
        );
        assert_eq!(key_hash("", ""), 0xc170_7316_e202_ce22);
        assert_eq!(
            key_hash("a", "bcdefghijklmnopqrstuvwxyz0123456789"),
            0x191a_e17e_ef52_9cf8
        );
    }

    fn meter(limit: u64) -> Meter {
        let mut tiers = TiersConfig::default();
        tiers.free.messages_per_month = limit;
        Meter::new(tiers)
    }

    #[test]
    fn the_limit_counts_sends_in_flight() {
        let m = meter(2);
        let free = Tier::Free;
        let Admission::Forward(a) = m.admit("i", free, None, Some("k1")) else {
            panic!()
        };
        let Admission::Forward(b) = m.admit("i", free, None, Some("k2")) else {
            panic!()
        };
        assert!(matches!(
            m.admit("i", free, None, Some("k3")),
            Admission::Refuse(_)
        ));
        assert!(!b.commit(false));
        let Admission::Forward(c) = m.admit("i", free, None, Some("k3")) else {
            panic!()
        };
        assert!(a.commit(true));
        assert!(c.commit(true));
        assert_eq!(m.usage("i", Plan::CALENDAR), (2, 0));
        match m.admit("i", free, None, Some("k4")) {
            Admission::Refuse(r) => {
                assert_eq!((r.limit, r.used), (2, 2));
                assert!(r.resets_at.ends_with("-01T00:00:00.000Z"));
            }
            other => panic!("{other:?}"),
        }
        // A retry of a counted key goes through uncounted.
        assert!(matches!(
            m.admit("i", free, None, Some("k1")),
            Admission::Retry
        ));
    }

    #[test]
    fn dropped_reservations_are_counted_refusals_are_not_and_keys_count_once() {
        let m = meter(2);
        let free = Tier::Free;
        // Dropped unanswered (the connection closed): the turn may have run, so it counts, and
        // its key with it.
        let Admission::Forward(a) = m.admit("i", free, None, Some("k")) else {
            panic!()
        };
        assert_eq!(
            m.usage("i", Plan::CALENDAR),
            (1, 0),
            "counted when forwarded"
        );
        drop(a);
        assert_eq!(m.usage("i", Plan::CALENDAR), (1, 0));
        assert!(matches!(
            m.admit("i", free, None, Some("k")),
            Admission::Retry
        ));
        // An explicit refusal gives the slot back.
        let Admission::Forward(r) = m.admit("i", free, None, Some("r")) else {
            panic!()
        };
        assert!(!r.commit(false));
        let Admission::Forward(b) = m.admit("j", free, None, None) else {
            panic!()
        };
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
        let free = Tier::Free;
        let before = meter(10);
        let Admission::Forward(a) = before.admit("i", free, None, Some("k1")) else {
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
            after.admit("i", free, None, Some("k1")),
            Admission::Retry
        ));
        // Keys from before the current period are ignored; another instance's key is its own.
        after.seed_keys("j", [(key_hash("j", "old"), this_month() - 1)]);
        assert!(matches!(
            after.admit("j", free, None, Some("old")),
            Admission::Forward(_)
        ));
        assert_ne!(key_hash("i", "k1"), key_hash("j", "k1"));
    }

    #[test]
    fn a_retry_another_node_counted_is_taken_back_from_the_store_delta() {
        let m = Meter::new(TiersConfig::default()).shared();
        let free = Tier::Free;
        for key in ["k1", "k2"] {
            let Admission::Forward(r) = m.admit("i", free, None, Some(key)) else {
                panic!("refused");
            };
            assert!(r.commit(true));
        }
        let delta = m.take_unsynced().pop().unwrap();
        assert_eq!(delta.keys, vec![key_hash("i", "k1"), key_hash("i", "k2")]);
        // Redis answers: k1 was counted elsewhere; the shared total is 1 plus the other node's.
        m.apply_shared(&delta, 5, 0, 1);
        assert_eq!(m.usage("i", Plan::CALENDAR).0, 5);
        let to_write: u64 = m.take_unflushed().iter().map(|d| d.messages).sum();
        assert_eq!(to_write, 1);
        // Without Redis no keys are kept for syncs.
        let alone = Meter::new(TiersConfig::default());
        let Admission::Forward(r) = alone.admit("i", free, None, Some("k")) else {
            panic!("refused");
        };
        r.commit(true);
        assert!(alone.take_unsynced()[0].keys.is_empty());
    }

    #[test]
    fn idle_instances_with_nothing_new_are_left_out_of_syncs() {
        let m = Meter::new(TiersConfig::default()).shared();
        let free = Tier::Free;
        for instance in ["busy", "idle", "idle-with-counts"] {
            let Admission::Forward(r) = m.admit(instance, free, None, None) else {
                panic!("refused");
            };
            r.commit(true);
        }
        let synced = |m: &Meter| {
            let mut ids: Vec<String> = m
                .take_unsynced()
                .into_iter()
                .map(|d| d.instance_id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(synced(&m).len(), 3);
        // An hour later for two of them; one still has a count to add.
        for instance in ["idle", "idle-with-counts"] {
            lock(&m.entry(instance)).active_ms -= 3_600_000;
        }
        m.add_tokens("idle-with-counts", 5);
        assert_eq!(synced(&m), ["busy", "idle-with-counts"]);
        // Activity (a user message, a usage read) brings an instance back.
        m.usage("idle", Plan::CALENDAR);
        assert_eq!(synced(&m), ["busy", "idle"]);
    }

    #[test]
    fn keys_per_instance_are_bounded() {
        let mut usage = Usage::default();
        for k in 0..(MAX_KEYS_PER_INSTANCE as u64 + 5) {
            assert!(usage.remember(k));
        }
        assert!(usage.keys.len() + usage.older_keys.len() <= MAX_KEYS_PER_INSTANCE);
        // The oldest went first; at least the newest half are known.
        assert!(usage.remember(0));
        for k in (MAX_KEYS_PER_INSTANCE / 2) as u64..(MAX_KEYS_PER_INSTANCE as u64 + 5) {
            assert!(!usage.remember(k), "key {k} forgotten too early");
        }
    }

    #[test]
    fn a_paid_tier_resets_at_the_end_of_its_billing_period_and_a_tier_change_keeps_the_count() {
        let mut tiers = TiersConfig::default();
        tiers.pro.messages_per_month = 1;
        let m = Meter::new(tiers);
        let pro = Tier::Pro;
        let anchor = now_ms() - 3 * DAY_MS;
        let period = Plan::new(Tier::Pro, Some(anchor)).period(now_ms());
        let Admission::Forward(a) = m.admit("p", pro, Some(anchor), Some("k")) else {
            panic!()
        };
        assert!(a.commit(true));
        match m.admit("p", pro, Some(anchor), Some("k2")) {
            Admission::Refuse(r) => assert_eq!(r.resets_at, rfc3339(period.end_ms)),
            other => panic!("{other:?}"),
        }
        // A change of tier mid-period counts the new period's days, as a restart would: the
        // free tier's calendar month holds today's message.
        assert_eq!(m.usage("p", Plan::CALENDAR).0, 1);
        assert!(matches!(
            m.admit("p", Tier::Free, None, Some("k2")),
            Admission::Forward(_)
        ));
        // Back on the paid tier, after its period has ended: a new period, empty.
        let entry = m.entry("p");
        let mut usage = lock(&entry);
        usage.roll(Some(Plan::new(Tier::Pro, Some(anchor))), period.end_ms);
        assert_eq!((usage.messages, usage.keys.len()), (0, 0));
    }
}
