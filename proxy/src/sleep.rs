//! Idle instances sleep and the edge wakes them (issue 24).
//!
//! - [`Activity`]: what the edge knows of each instance's traffic: requests and WebSockets in
//!   flight, and when the last one ended. The pool asks it whether an instance is idle, and puts
//!   it to sleep only through [`Activity::begin_sleep`], which cannot race a request: a request
//!   that enters while a sleep is being decided either stops the sleep or is held for the wake.
//! - [`Waker`]: the pool wakes an instance for the edge; one wake per instance, others wait on it.
//!
//! The race, in detail: [`Activity::enter`] increments the instance's in-flight count and then
//! reads its `asleep` flag; [`Activity::begin_sleep`] sets the flag and then reads the count, both
//! sequentially consistent. So at least one of them sees the other: either the sleep is abandoned,
//! or the request sees the flag and waits for [`Waker::wake`] (which waits for the sleep to finish
//! first) instead of being proxied to a container that is going to sleep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dashmap::DashMap;

/// One instance's traffic through this edge.
#[derive(Debug, Default)]
struct InstanceActivity {
    /// Requests (WebSockets for their whole life) being served now.
    in_flight: AtomicU32,
    /// Unix ms when the last request started or ended.
    last_ms: AtomicU64,
    /// The pool is putting it to sleep, or it sleeps: requests wait for a wake.
    asleep: AtomicBool,
}

/// Instance id → its traffic, shared by the edge (which records it) and the pool (which reads it).
#[derive(Debug, Default)]
pub struct Activity {
    instances: DashMap<Arc<str>, Arc<InstanceActivity>>,
}

/// Held by the edge while a request to an instance is served; its end counts as activity.
#[derive(Debug)]
pub struct ActivityGuard {
    entry: Arc<InstanceActivity>,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.entry.last_ms.store(now_ms(), Ordering::Relaxed);
        self.entry.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why an instance is not idle, or how long it has been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idleness {
    /// A request or WebSocket is in flight.
    Busy,
    /// Nothing in flight; the last request ended this long ago (never seen: since `since`).
    IdleFor(Duration),
}

impl Activity {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn entry(&self, instance_id: &str) -> Arc<InstanceActivity> {
        if let Some(entry) = self.instances.get(instance_id) {
            return entry.clone();
        }
        // `last_ms` 0: no traffic seen yet, so idleness counts from the caller's `since`.
        self.instances
            .entry(Arc::from(instance_id))
            .or_default()
            .clone()
    }

    /// A request to `instance_id` starts; whether the instance is asleep (or going to sleep), in
    /// which case the request must wait for [`Waker::wake`] before it is proxied.
    pub fn enter(&self, instance_id: &str) -> (ActivityGuard, bool) {
        let entry = self.entry(instance_id);
        entry.last_ms.store(now_ms(), Ordering::Relaxed);
        entry.in_flight.fetch_add(1, Ordering::SeqCst);
        let asleep = entry.asleep.load(Ordering::SeqCst);
        (ActivityGuard { entry }, asleep)
    }

    /// How idle `instance_id` is, as this edge sees it. An instance it never saw counts from
    /// `since` (unix ms: when it was assigned or woken), so a restarted edge does not put
    /// everything to sleep at once.
    pub fn idleness(&self, instance_id: &str, since_ms: u64) -> Idleness {
        let now = now_ms();
        match self.instances.get(instance_id) {
            Some(entry) if entry.in_flight.load(Ordering::SeqCst) > 0 => Idleness::Busy,
            Some(entry) => Idleness::IdleFor(Duration::from_millis(
                now.saturating_sub(entry.last_ms.load(Ordering::Relaxed).max(since_ms)),
            )),
            None => Idleness::IdleFor(Duration::from_millis(now.saturating_sub(since_ms))),
        }
    }

    /// Marks `instance_id` asleep if nothing is in flight and it has been idle for `idle`; from
    /// then on every request to it waits for a wake. False (and nothing changed) when it is busy.
    pub fn begin_sleep(&self, instance_id: &str, idle: Duration, since_ms: u64) -> bool {
        let entry = self.entry(instance_id);
        if entry.asleep.swap(true, Ordering::SeqCst) {
            return true;
        }
        let quiet = now_ms().saturating_sub(entry.last_ms.load(Ordering::Relaxed).max(since_ms));
        if entry.in_flight.load(Ordering::SeqCst) > 0 || Duration::from_millis(quiet) < idle {
            entry.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Marks `instance_id` asleep whatever its traffic (an instance found sleeping at start).
    pub fn mark_asleep(&self, instance_id: &str) {
        self.entry(instance_id).asleep.store(true, Ordering::SeqCst);
    }

    /// `instance_id` is awake again (or its sleep was abandoned): requests go through.
    pub fn awake(&self, instance_id: &str) {
        let entry = self.entry(instance_id);
        entry.last_ms.store(now_ms(), Ordering::Relaxed);
        entry.asleep.store(false, Ordering::SeqCst);
    }

    /// Forgets a removed instance.
    pub fn forget(&self, instance_id: &str) {
        self.instances.remove(instance_id);
    }
}

/// Why a wake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// The instance is not this node's, or no longer exists.
    #[error("the instance is not on this node")]
    NotHere,
    /// The node has no room to wake it now (others are being woken or are awake); retry.
    #[error("the node has no room to wake the instance now")]
    NoRoom,
    /// It is not asleep but not serving either (being created or restarted); retry.
    #[error("the instance is {0}")]
    NotAwake(&'static str),
    /// It did not come back (it is now `crashed`, and its owner is told).
    #[error("the instance did not wake: {0}")]
    Failed(String),
}

/// Wakes sleeping instances for the edge: the pool implements it.
#[async_trait]
pub trait Waker: Send + Sync + 'static {
    /// Wakes `instance_id` (a UUID in text form) and answers the address it serves at once ready.
    /// One wake per instance runs at a time; concurrent callers wait on it, and the wake goes on
    /// if a caller gives up (a browser shown the "waking" page comes back to a woken instance).
    /// An awake instance answers at once.
    async fn wake(&self, instance_id: &str) -> Result<SocketAddr, WakeError>;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_stops_a_sleep() {
        let activity = Activity::new();
        let (guard, asleep) = activity.enter("a");
        assert!(!asleep);
        assert_eq!(activity.idleness("a", 0), Idleness::Busy);
        assert!(!activity.begin_sleep("a", Duration::ZERO, 0));
        drop(guard);
        assert!(activity.begin_sleep("a", Duration::ZERO, 0));
        // From now on requests wait for a wake.
        let (_guard, asleep) = activity.enter("a");
        assert!(asleep);
        activity.awake("a");
        let (_guard, asleep) = activity.enter("a");
        assert!(!asleep);
    }

    #[test]
    fn a_recent_request_stops_a_sleep() {
        let activity = Activity::new();
        drop(activity.enter("a").0);
        assert!(!activity.begin_sleep("a", Duration::from_secs(60), 0));
        let (_, asleep) = activity.enter("a");
        assert!(!asleep, "an abandoned sleep leaves the instance awake");
    }

    #[test]
    fn an_instance_never_seen_is_idle_since_it_was_placed() {
        let activity = Activity::new();
        let placed = now_ms() - 5_000;
        match activity.idleness("never", placed) {
            Idleness::IdleFor(d) => assert!(d >= Duration::from_secs(5), "{d:?}"),
            Idleness::Busy => panic!("busy"),
        }
        assert!(!activity.begin_sleep("never", Duration::from_secs(60), placed));
        assert!(activity.begin_sleep("never", Duration::from_secs(1), placed));
    }

    /// Requests and sleeps racing on many threads: a request either was seen by the sleep (which
    /// is abandoned) or sees the sleep (and waits for a wake); never neither.
    #[test]
    fn enter_and_begin_sleep_always_see_each_other() {
        for _ in 0..2_000 {
            let activity = Activity::new();
            let a = activity.clone();
            let request = std::thread::spawn(move || {
                let (guard, asleep) = a.enter("x");
                (guard, asleep)
            });
            let slept = activity.begin_sleep("x", Duration::ZERO, 0);
            let (_guard, saw_sleep) = request.join().unwrap();
            assert!(
                !slept || saw_sleep,
                "a request was let through to an instance going to sleep"
            );
        }
    }
}
