//! Idle instances sleep, and wake when they are needed (issue 24).
//!
//! - **Sleep** (every pool tick): an assigned, running instance of a tier that sleeps
//!   ([`PoolSettings::idle_stop`](crate::PoolSettings::idle_stop)) whose traffic at the edge has
//!   been quiet that long ([`Activity`]) is asked whether an agent turn runs or a scheduled job is
//!   due ([`crate::work`]). If not, the edge is told first ([`Activity::begin_sleep`], which loses
//!   no request: see [`clawdeploy_proxy::sleep`]), then the runtime stops or freezes it, and it is
//!   recorded `sleeping` with the time its next job is due.
//! - **Wake** (a request at the edge, or a job coming due): one wake per instance at a time (a
//!   per-instance lock; other callers wait on it and find it running), admitted only when the
//!   node has room (waiting for room, or taking it from the warm pool, never overcommitting), then
//!   thawed or started, readied, and routed `running` again. A wake that fails leaves the instance
//!   `crashed`, so the edge answers 503 and the dashboard says so.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use clawdeploy_proxy::sleep::{WakeError, Waker};
use clawdeploy_store::{Instance, InstanceStatus, PoolMemberState};

use crate::manager::{Error, PoolManager};
use crate::runtime::Sleep;
use crate::work::{Gateway, Suspension};

/// How long before a sleeping instance's next scheduled job it is woken: one pool tick plus a
/// wake's worst case, so the job never finds it asleep.
fn wake_lead(tick: Duration) -> Duration {
    tick + Duration::from_secs(30)
}

/// What one idle check decided (`clawdeploy_sleep_checks_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not running, or of a tier that never sleeps: nothing was asked.
    NotEligible,
    /// A request or WebSocket at the edge, or one within the idle time.
    Traffic,
    /// The gateway said work runs (an agent turn, a cron run, a pending write).
    Working,
    /// A scheduled job comes due too soon to sleep before it.
    JobDue,
    /// Put to sleep.
    Slept,
}

impl Check {
    fn outcome(self) -> Option<&'static str> {
        match self {
            Check::NotEligible => None,
            Check::Traffic => Some("traffic"),
            Check::Working => Some("working"),
            Check::JobDue => Some("job_due"),
            Check::Slept => Some("slept"),
        }
    }
}

/// Counts a wake admitted into capacity until it ends.
struct WakeSlot<'a>(&'a PoolManager);

impl Drop for WakeSlot<'_> {
    fn drop(&mut self) {
        self.0.waking.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PoolManager {
    /// The lock one instance's sleep, wake, restart and healing take in turn.
    pub(crate) fn lifecycle_lock(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.lifecycle_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// Puts every idle instance of this node to sleep (see the module docs).
    pub(crate) async fn sleep_idle(self: &Arc<Self>) {
        let members = match self.store.list_pool_members(&self.settings.node_id).await {
            Ok(members) => members,
            Err(e) => return tracing::warn!("cannot list pool members to sleep idle ones: {e}"),
        };
        for member in members {
            let (PoolMemberState::Claimed, Some(id), Some(runtime_id)) = (
                member.state,
                member.instance_id,
                member.runtime_id.as_deref(),
            ) else {
                continue;
            };
            match self.sleep_if_idle(id, runtime_id).await {
                Ok(check) => {
                    if let Some(outcome) = check.outcome() {
                        metrics::counter!("clawdeploy_sleep_checks_total", "outcome" => outcome)
                            .increment(1);
                    }
                    if check == Check::Slept {
                        tracing::info!(instance = %id, "idle instance put to sleep");
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %id, "cannot put an idle instance to sleep: {e}")
                }
            }
        }
    }

    /// Sleeps `id` if it is running, idle long enough and has no work; what was decided.
    async fn sleep_if_idle(&self, id: Uuid, runtime_id: &str) -> Result<Check, Error> {
        let Some(instance) = self.store.get_instance(id).await? else {
            return Ok(Check::NotEligible);
        };
        let Some(idle) = self.settings.idle_stop(instance.tier) else {
            return Ok(Check::NotEligible);
        };
        let key = id.to_string();
        let since = instance.updated_at.max(0) as u64;
        let quiet = |activity: &clawdeploy_proxy::Activity| match activity.idleness(&key, since) {
            clawdeploy_proxy::sleep::Idleness::IdleFor(d) => d >= idle,
            clawdeploy_proxy::sleep::Idleness::Busy => false,
        };
        if instance.status != InstanceStatus::Running {
            return Ok(Check::NotEligible);
        }
        if !quiet(&self.activity) {
            return Ok(Check::Traffic);
        }
        let Some(addr) = instance
            .upstream
            .as_deref()
            .and_then(|u| u.parse::<SocketAddr>().ok())
        else {
            return Ok(Check::NotEligible);
        };
        // Never guessed: an instance whose gateway cannot be asked stays awake.
        let mut gateway = match self.config.platform_headers(&instance) {
            Some(headers) => Some(Gateway::connect(addr, &headers).await?),
            None => None,
        };
        let next_job_at_ms = match gateway.as_mut() {
            Some(gateway) => gateway.next_job_at_ms().await?,
            None => None,
        };
        let now = clawdeploy_store::time::now_ms();
        let lead = wake_lead(self.settings.tick).as_millis() as i64;
        if next_job_at_ms.is_some_and(|due| due - now <= lead) {
            return Ok(Check::JobDue);
        }
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        // Re-read under the lock: a restart or a wake may have happened meanwhile.
        let current = self.store.get_instance(id).await?;
        if current.is_none_or(|i| {
            i.status != InstanceStatus::Running || i.updated_at != instance.updated_at
        }) {
            return Ok(Check::NotEligible);
        }
        if !self.activity.begin_sleep(&key, idle, since) {
            return Ok(Check::Traffic);
        }
        // From here requests wait at the edge; the gateway fences its own work until resumed.
        let mut lease = None;
        if let Some(gateway) = gateway.as_mut() {
            match gateway
                .prepare_suspend(&format!("clawdeploy-sleep-{id}-{now}"))
                .await
            {
                Ok(Suspension::Ready(suspension)) => lease = Some(suspension),
                Ok(Suspension::Busy(reason)) => {
                    self.activity.awake(&key);
                    tracing::debug!(instance = %id, %reason, "idle at the edge, but its gateway is busy");
                    return Ok(Check::Working);
                }
                Err(e) => {
                    self.activity.awake(&key);
                    return Err(e.into());
                }
            }
        }
        drop(gateway);
        let how = self.settings.sleep;
        let slept = match self.runtime.sleep(runtime_id, how).await {
            Err(e) if how == Sleep::Freeze => {
                tracing::warn!(instance = %id, "cannot freeze ({e}); stopping it instead");
                self.runtime
                    .sleep(runtime_id, Sleep::Stop)
                    .await
                    .map(|()| Sleep::Stop)
            }
            other => other.map(|()| how),
        };
        let how = match slept {
            Ok(how) => how,
            Err(e) => {
                if let Some(lease) = &lease {
                    self.resume_gateway(&instance, addr, lease).await;
                }
                self.activity.awake(&key);
                return Err(e.into());
            }
        };
        // A stopped gateway's lease ends with its process; a frozen one's is released at the wake.
        let lease = lease.filter(|_| how == Sleep::Freeze);
        let wake_at = next_job_at_ms.map(|due| due - lead);
        self.store
            .set_instance_sleeping(id, wake_at, lease.as_deref())
            .await?;
        self.announce(&instance).await?;
        self.room_freed.notify_waiters();
        Ok(Check::Slept)
    }

    /// Wakes the sleeping instances whose next scheduled job comes due.
    pub(crate) async fn wake_scheduled(self: &Arc<Self>) {
        let now = clawdeploy_store::time::now_ms();
        let due = match self.sleeping_here().await {
            Ok(sleeping) => sleeping
                .into_iter()
                .filter(|i| i.wake_at.is_some_and(|at| at <= now)),
            Err(e) => return tracing::warn!("cannot list sleeping instances: {e}"),
        };
        for instance in due {
            let pool = self.clone();
            tokio::spawn(async move {
                match pool.wake_instance(instance.id).await {
                    Ok(_) => tracing::info!(instance = %instance.id, "woken for a scheduled job"),
                    Err(e) => tracing::warn!(instance = %instance.id, "scheduled wake failed: {e}"),
                }
            });
        }
    }

    /// Wakes `id` and answers the address it serves at (see the module docs). The wake runs in its
    /// own task: it completes even if the caller stops waiting.
    pub async fn wake_instance(self: &Arc<Self>, id: Uuid) -> Result<SocketAddr, WakeError> {
        let pool = self.clone();
        tokio::spawn(async move { pool.wake_locked(id).await })
            .await
            .unwrap_or_else(|e| Err(WakeError::Failed(format!("the wake task failed: {e}"))))
    }

    async fn wake_locked(&self, id: Uuid) -> Result<SocketAddr, WakeError> {
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let failed = |e: Error| WakeError::Failed(e.to_string());
        let instance = self
            .store
            .get_instance(id)
            .await
            .map_err(|e| failed(e.into()))?
            .ok_or(WakeError::NotHere)?;
        let key = id.to_string();
        match instance.status {
            InstanceStatus::Sleeping => {}
            InstanceStatus::Running => {
                // Woken by an earlier caller (or its sleep was abandoned).
                self.activity.awake(&key);
                return instance
                    .upstream
                    .as_deref()
                    .and_then(|u| u.parse().ok())
                    .ok_or(WakeError::NotAwake("running without an address"));
            }
            InstanceStatus::Queued | InstanceStatus::Provisioning | InstanceStatus::Starting => {
                return Err(WakeError::NotAwake(instance.status.as_str()))
            }
            InstanceStatus::Stopped | InstanceStatus::Crashed | InstanceStatus::Deleting => {
                self.activity.awake(&key);
                return Err(WakeError::Failed(format!(
                    "the instance is {}",
                    instance.status
                )));
            }
        }
        if instance.node_id.as_deref() != Some(self.settings.node_id.as_str()) {
            return Err(WakeError::NotHere);
        }
        let _slot = self.admit_wake().await?;
        let started = Instant::now();
        let woken = self.thaw(&instance).await;
        let outcome = if woken.is_ok() { "woken" } else { "failed" };
        metrics::histogram!("clawdeploy_wake_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match woken {
            Ok(addr) => {
                self.activity.awake(&key);
                tracing::info!(instance = %id, %addr, ms = started.elapsed().as_millis() as u64, "instance woken");
                Ok(addr)
            }
            Err(e) => {
                tracing::error!(instance = %id, "wake failed; the instance is now crashed: {e}");
                self.crashed(&instance, &format!("it did not wake up ({e})"))
                    .await;
                self.activity.awake(&key);
                Err(failed(e))
            }
        }
    }

    /// Thaws or starts a sleeping instance's container, waits until it serves, routes it.
    async fn thaw(&self, instance: &Instance) -> Result<SocketAddr, Error> {
        let member = self
            .store
            .pool_member_for_instance(instance.id)
            .await?
            .ok_or_else(|| {
                Error::NotReady(
                    instance.subdomain.clone(),
                    crate::ready::NotReady::NoContainer,
                )
            })?;
        let runtime_id = member.runtime_id.clone().unwrap_or_default();
        self.runtime
            .wake(&runtime_id, &self.settings.resources(instance.tier))
            .await?;
        // A started container may have a new address; a thawed one keeps its own.
        let addr = self.address_of(&runtime_id).await?;
        // A thawed gateway answers `/readyz` 503 until its lease is released.
        if let Some(lease) = &instance.sleep_lease {
            self.resume_gateway(instance, addr, lease).await;
        }
        self.serve_again(instance, &member, &runtime_id, addr).await
    }

    /// Releases the gateway's suspension `lease` (after a thaw, or an abandoned sleep): until then
    /// it fences every method and answers `/readyz` 503. A just-thawed gateway may take a moment
    /// to accept connections, so connecting is retried for a few seconds. If it still fails, the
    /// lease ends by itself two minutes after it was taken.
    async fn resume_gateway(&self, instance: &Instance, addr: SocketAddr, lease: &str) {
        let Some(headers) = self.config.platform_headers(instance) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let resumed = loop {
            match Gateway::connect(addr, &headers).await {
                Ok(mut gateway) => break gateway.resume(lease).await,
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Err(e) = resumed {
            tracing::warn!(instance = %instance.id, "cannot release the gateway's suspension lease: {e}");
        }
    }

    /// Admits one wake into capacity, waiting for room up to the ready timeout. Warm members
    /// (idle or being created) do not count: a person waiting beats a future signup, and the
    /// next maintenance removes idle members until the node is within budget again. What the
    /// sleeping instance itself holds is freed by its wake.
    async fn admit_wake(&self) -> Result<WakeSlot<'_>, WakeError> {
        let deadline = Instant::now() + self.settings.ready_timeout;
        loop {
            let freed = self.room_freed.notified();
            {
                let _admitting = self.admission.lock().await;
                let members = self
                    .store
                    .list_pool_members(&self.settings.node_id)
                    .await
                    .map_err(|e| WakeError::Failed(e.to_string()))?;
                let left = self
                    .budget_left_mb(&members, false)
                    .await
                    .map_err(|e| WakeError::Failed(e.to_string()))?;
                let needed = self.settings.reserve_mb as i64 - self.settings.sleep.held_mb() as i64;
                if left >= needed {
                    self.waking.fetch_add(1, Ordering::SeqCst);
                    return Ok(WakeSlot(self));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, freed).await.is_err() {
                return Err(WakeError::NoRoom);
            }
        }
    }
}

/// The edge's waker: this node's pool, once the app has made it (the edge is built first).
/// Until then, or on a node without a pool, a wake fails as [`WakeError::NotHere`].
#[derive(Default)]
pub struct PoolWaker(std::sync::OnceLock<Arc<PoolManager>>);

impl PoolWaker {
    /// A waker with no pool yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Wakes instances with `pool` from now on.
    pub fn set(&self, pool: Arc<PoolManager>) {
        let _ = self.0.set(pool);
    }
}

#[async_trait]
impl Waker for PoolWaker {
    async fn wake(&self, instance_id: &str) -> Result<SocketAddr, WakeError> {
        let pool = self.0.get().ok_or(WakeError::NotHere)?;
        let id = Uuid::parse_str(instance_id).map_err(|_| WakeError::NotHere)?;
        pool.wake_instance(id).await
    }
}
