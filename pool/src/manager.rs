//! The pool manager (PRD §4.4, made faster): keeps MIN..MAX ready idle instances per node, hands
//! one to a signup in milliseconds (claim in the database, inject config, set resources, route),
//! and heals instances that die.
//!
//! - Refill: every tick and at once after each claim, up to the node's capacity, a few at a time.
//! - Assignment: an atomic claim in the store; no idle member → create on demand while capacity
//!   allows (`provisioning`, then `running`), else the instance waits as `queued` and is served
//!   first when room frees.
//! - Healing: runtime `die`/`oom` events and failed `/readyz` checks restart an instance (its
//!   route shows `starting` meanwhile) with exponential backoff; a crash loop ends as `crashed`.
//! - Sleep and wake: idle instances sleep and the edge wakes them ([`crate::sleep`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use clawdeploy_config::TiersConfig;
use clawdeploy_proxy::Activity;
use clawdeploy_store::{
    Instance, InstanceStatus, Placement, PoolMember, PoolMemberState, Store, StoreError, Tier,
};

use crate::ready::{wait_applied, wait_ready, NotReady};
use crate::runtime::{
    ConfigFile, InstanceSpec, Resources, RunState, Runtime, RuntimeError, RuntimeEvent, Sleep,
};
use clawdeploy_store::changes::{Change, ChangeBus};

/// How a node's pool behaves.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// This node's id in the store (`pool.node_id`, else the host name); pool members and instances
    /// are placed by it, and container names start `cd-<node_id>-`.
    pub node_id: String,
    /// Idle, ready instances kept warm (`pool.min_idle`), within `capacity`.
    pub min_idle: usize,
    /// Idle instances beyond this are removed (`pool.max_idle`).
    pub max_idle: usize,
    /// How often health checks and refills run (`pool.tick_secs`); a claim triggers a refill at
    /// once too.
    pub tick: Duration,
    /// Most awake instances this node runs (idle, being created and assigned), from its memory;
    /// sleeping ones count for what they hold ([`Sleep::held_mb`]).
    pub capacity: usize,
    /// Instances created at once (refill and on-demand): the signup throttle.
    pub create_concurrency: usize,
    /// The Docker image, or the program the process runtime runs.
    pub image: String,
    /// The `uid:gid` instances run as; root is refused.
    pub user: String,
    /// The port instances serve inside (the gateway's).
    pub port: u16,
    /// Limits of a warm instance, and of an assigned one whose tier sets none
    /// ([`PoolSettings::resources`]).
    pub idle_resources: Resources,
    /// The tier table: each tier's limits and idle time before sleep.
    pub tiers: TiersConfig,
    /// Idle time before an assigned instance sleeps, unless its tier says otherwise
    /// (`pool.idle_stop_secs`); `None`: never.
    pub idle_stop: Option<Duration>,
    /// How idle instances sleep (`pool.sleep`, `auto` resolved by the node's swap).
    pub sleep: Sleep,
    /// What an awake instance counts for in `capacity`, in MiB (`pool.reserve_mb`).
    pub reserve_mb: u64,
    /// How long a new or restarted instance may take to answer `/readyz`
    /// (`pool.ready_timeout_secs`).
    pub ready_timeout: Duration,
    /// Labels on every instance created (`clawdeploy.node` = `node_id`), beside the runtime's own.
    pub labels: BTreeMap<String, String>,
    /// Environment variables of every instance created (name, value).
    pub env: Vec<(String, String)>,
}

impl PoolSettings {
    /// The limits of an instance of `tier`: the tier table's, else the pool's.
    pub fn resources(&self, tier: Tier) -> Resources {
        let t = self.tiers.get(tier);
        let mut resources = self.idle_resources.clone();
        if t.memory_mb > 0 {
            resources.memory_mb = t.memory_mb;
        }
        if t.cpus > 0.0 {
            resources.cpus = t.cpus;
        }
        resources
    }

    /// How long an instance of `tier` may be idle before it sleeps; `None`: never.
    pub fn idle_stop(&self, tier: Tier) -> Option<Duration> {
        let t = self.tiers.get(tier);
        match t.idle_stop_secs {
            _ if t.never_sleep => None,
            0 => self.idle_stop,
            secs => Some(Duration::from_secs(secs)),
        }
    }
}

/// Turns an instance record into the files its container needs. The control plane knows users'
/// settings; the pool only applies them.
#[async_trait::async_trait]
pub trait InstanceConfig: Send + Sync + 'static {
    /// The files written into `instance`'s data directory at assignment to the pool member named
    /// `member`, and whenever its settings change (its gateway config, workspace files).
    async fn files(&self, instance: &Instance, member: &str) -> Result<Vec<ConfigFile>, Error>;
    /// The files a new pool member named `member` boots on, before anyone has it (OpenClaw: the
    /// locked-down idle config).
    fn boot_files(&self, _member: &str) -> Vec<ConfigFile> {
        Vec::new()
    }
    /// Prepares a ready, unassigned member at `addr` so its first user finds it warm (OpenClaw: a
    /// first turn, answered by the LLM meter's stub, then removed). Failing costs only speed.
    async fn warm_up(&self, _addr: SocketAddr, _member: &str) -> Result<(), Error> {
        Ok(())
    }
    /// The identity a gateway booted as pool member `member` knows whoever is handed it by,
    /// fixed at boot ([`Instance::gateway_id`]); `None`: the owner's user id (the runtime's config
    /// names the owner at assignment).
    fn gateway_identity(&self, _member: &str) -> Option<String> {
        None
    }
    /// How to tell that `instance` has applied the config just written; `None`: it applies at
    /// once.
    fn applied_probe(&self, _instance: &Instance) -> Option<AppliedProbe> {
        None
    }
    /// Whether the instance must restart to serve a newly active custom domain (its origins are
    /// part of the config the runtime read at start).
    fn restart_for_new_origins(&self) -> bool {
        false
    }
    /// Headers the pool connects to the instance's gateway with as the platform
    /// ([`crate::work::PLATFORM_USER`]), to ask about its work before it sleeps; `None`: it
    /// cannot be asked, and sleeps when its traffic at the edge is idle.
    fn platform_headers(&self, _instance: &Instance) -> Option<Vec<(String, String)>> {
        None
    }
}

/// How the pool tells that an instance has applied its new config
/// ([`InstanceConfig::applied_probe`]): `GET path` with `headers` answers 200 without `gone` in
/// its body.
pub struct AppliedProbe {
    /// The path asked for.
    pub path: &'static str,
    /// The headers sent (the identity the gateway admits, the edge's proof).
    pub headers: Vec<(String, String)>,
    /// Text the answer holds until the new config is applied.
    pub gone: &'static str,
}

/// Told when an instance ends `crashed` (a failed wake, a crash loop), so its owner hears of
/// it: the app mails them.
#[async_trait::async_trait]
pub trait CrashNotice: Send + Sync + 'static {
    /// `instance` is now `crashed`, for `reason`.
    async fn crashed(&self, instance: &Instance, reason: &str);
}

/// Why a pool operation failed: the crate's error.
///
/// Two focused errors stay apart: [`RuntimeError`], the error of the [`crate::Runtime`] trait (a
/// seam each runtime implements: Docker, local processes, test fakes), and
/// [`crate::work::WorkError`], the gateway client's; both are sources of a variant here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store query failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A runtime operation (Docker or the process runtime) failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// `.1` is in the message, so it is not a `source()` (chain printers show it once).
    #[error("instance {0} is not ready: {1}")]
    NotReady(String, NotReady),
    /// The instance's config could not be made, or the pool is misconfigured or shut down.
    #[error("config: {0}")]
    Config(String),
    /// The instance's gateway could not be asked about its work.
    #[error(transparent)]
    Work(#[from] crate::work::WorkError),
    /// A sleeping instance the platform had to act on did not wake.
    #[error(transparent)]
    Wake(#[from] clawdeploy_proxy::sleep::WakeError),
    /// `clawdeploy image build` could not run its build script. The I/O error is part of the
    /// message, not a `source()`: shown once by chain printers.
    #[error("cannot run the image build: {0}")]
    ImageIo(std::io::Error),
    /// The image build script ran and exited unsuccessfully, with this status.
    #[error("the image build failed ({0}); its progress above says where")]
    ImageFailed(std::process::ExitStatus),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an assignment achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Routed and serving.
    Running(SocketAddr),
    /// Being created on demand; flips to running when ready.
    Provisioning,
    /// The node is full; waits for room.
    Queued,
}

/// The node as `/admin/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// This node's id in the store.
    pub node_id: String,
    /// The runtime's kind: `docker` or `process`.
    pub runtime: &'static str,
    /// Most awake instances this node runs (idle, being created, assigned and awake).
    pub capacity: usize,
    /// Warm instances waiting for a user.
    pub idle: usize,
    /// Instances being created (refill or on demand).
    pub creating: usize,
    /// Instances serving a user.
    pub assigned: usize,
    /// Of the assigned, those asleep ([`crate::sleep`]).
    pub sleeping: usize,
    /// Instances waiting for room (all nodes' `queued` instances: the queue is not per node).
    pub queued: usize,
}

/// Restart bookkeeping per instance, for backoff and crash-loop detection.
#[derive(Debug, Default, Clone)]
struct Restarts {
    recent: Vec<Instant>,
}

/// A lower memory limit is applied live only while the instance uses less than this share of
/// it (the kernel would otherwise reclaim hard, or on cgroup v2 kill the instance).
pub const SHRINK_HEADROOM: f64 = 0.8;

/// What a tier change did to an instance's container.
#[derive(Debug, Clone, PartialEq)]
pub enum Resize {
    /// The tier's limits apply now, live.
    Applied(Resources),
    /// They apply at the next start, for the reason given.
    AtNextStart(String),
}

const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(600);
const CRASH_LOOP_LIMIT: usize = 5;

/// A node's pool of instances: warm members, assignment, healing (see the module docs). One per
/// node, shared as an `Arc`.
pub struct PoolManager {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) store: Store,
    bus: Arc<ChangeBus>,
    pub(crate) config: Arc<dyn InstanceConfig>,
    pub(crate) settings: PoolSettings,
    refill: Notify,
    creating: Semaphore,
    restarts: Mutex<HashMap<Uuid, Restarts>>,
    /// Consecutive failed health checks per assigned instance.
    health_failures: Mutex<HashMap<Uuid, u32>>,
    /// Instances being healed, so an event and a health check do not restart one twice.
    healing: Mutex<std::collections::HashSet<Uuid>>,
    /// Instances' traffic at this node's edge: who is idle, and the sleep/request race's flag.
    pub(crate) activity: Arc<Activity>,
    /// One lock per instance that sleeps or wakes: a wake waits for a sleep in progress, and
    /// concurrent wakes of one instance run once.
    pub(crate) lifecycle_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// One change to what an instance runs at a time: its config written (the last write is made
    /// from the latest settings, and concurrent writes of one file do not collide), a skill
    /// installed or removed (OpenClaw refuses a second package change while one runs,
    /// `ClawPackageLifecycleBusyError`).
    pub(crate) change_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes admitted but not yet `running`: counted in capacity so concurrent wakes cannot
    /// overcommit the node.
    pub(crate) waking: AtomicUsize,
    /// Taken to admit a wake (check room, count it), one at a time.
    pub(crate) admission: tokio::sync::Mutex<()>,
    /// Signalled when capacity frees (a sleep, a removal), for wakes waiting for room.
    pub(crate) room_freed: Notify,
    /// Who is told of crashes ([`PoolManager::notify_crashes`]).
    crash_notice: std::sync::OnceLock<Arc<dyn CrashNotice>>,
}

impl PoolManager {
    /// A manager for this node's instances on `runtime`, recorded in `store`, announcing instance
    /// changes on `bus`, reading their traffic at the edge from `activity`; nothing runs until
    /// [`run`](Self::run).
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Store,
        bus: Arc<ChangeBus>,
        config: Arc<dyn InstanceConfig>,
        settings: PoolSettings,
        activity: Arc<Activity>,
    ) -> Arc<Self> {
        let creating = Semaphore::new(settings.create_concurrency.max(1));
        Arc::new(Self {
            runtime,
            store,
            bus,
            config,
            settings,
            refill: Notify::new(),
            creating,
            restarts: Mutex::default(),
            health_failures: Mutex::default(),
            healing: Mutex::default(),
            activity,
            lifecycle_locks: Mutex::default(),
            change_locks: Mutex::default(),
            waking: AtomicUsize::new(0),
            admission: tokio::sync::Mutex::new(()),
            room_freed: Notify::new(),
            crash_notice: std::sync::OnceLock::new(),
        })
    }

    /// Tells `notice` of every instance that ends `crashed` from now on.
    pub fn notify_crashes(&self, notice: Arc<dyn CrashNotice>) {
        let _ = self.crash_notice.set(notice);
    }

    /// Marks `instance` crashed and tells its owner (when a notice is set).
    pub(crate) async fn crashed(&self, instance: &Instance, reason: &str) {
        if let Err(e) = self.set_status(instance, InstanceStatus::Crashed).await {
            tracing::error!(instance = %instance.id, "cannot mark the instance crashed: {e}");
        }
        if let Some(notice) = self.crash_notice.get() {
            notice.crashed(instance, reason).await;
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Runs until `shutdown`: reconcile, then refill/health on every tick or claim, and heal on
    /// runtime events.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut events = self.runtime.events();
        let mut changes = self.bus.subscribe();
        if let Err(e) = self.reconcile().await {
            tracing::error!("pool reconcile failed: {e}");
        }
        let mut tick = tokio::time::interval(self.settings.tick);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.check_health().await;
                    self.maintain().await;
                    self.sleep_idle().await;
                    self.wake_scheduled().await;
                }
                _ = self.refill.notified() => self.maintain().await,
                event = events.recv() => match event {
                    Ok(RuntimeEvent::Died { id, exit_code }) => self.clone().on_died(id, exit_code).await,
                    Ok(RuntimeEvent::OutOfMemory { id }) => tracing::warn!(runtime_id = %id, "instance killed: out of memory"),
                    Ok(RuntimeEvent::Started { .. }) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "runtime events lagged; checking every instance");
                        self.check_health().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                change = changes.recv() => {
                    // Other changes are the route table's; `self.bus` keeps the sender alive.
                    if let Ok(Change::Domain { hostname }) = change {
                        self.domain_changed(&hostname).await;
                    }
                }
            }
        }
    }

    /// A custom domain became active or was removed: the config of the instance it names is
    /// written again (if its container is on this node), so OpenClaw's `allowedOrigins` follow
    /// the hosts the edge routes to it.
    ///
    /// An activation also restarts that instance when its config kind asks for it (OpenClaw: its
    /// live reload of a rewritten config was missed or deferred in some of our runs on a loaded
    /// machine), because a domain the owner just added must work. A removed domain's record is gone, so every
    /// instance on this node is rewritten without a restart: until its next start a stale origin
    /// only stays in the list, and the edge no longer routes that host nor accepts its origin.
    async fn domain_changed(&self, hostname: &str) {
        let rewritten: Result<usize, Error> = async {
            let domain = self.store.get_custom_domain_by_hostname(hostname).await?;
            let activated = domain
                .as_ref()
                .is_some_and(|d| d.status == clawdeploy_store::DomainStatus::Active)
                && self.config.restart_for_new_origins();
            let target = domain.map(|d| d.instance_id);
            let mut rewritten = 0;
            for member in self.store.list_pool_members(&self.settings.node_id).await? {
                let Some(id) = member.instance_id else {
                    continue;
                };
                if target.is_some_and(|t| t != id) {
                    continue;
                }
                if let Some(instance) = self.store.get_instance(id).await? {
                    if self.reconfigure(&instance).await? {
                        rewritten += 1;
                        if activated {
                            self.restart(&instance).await?;
                        }
                    }
                }
            }
            Ok(rewritten)
        }
        .await;
        match rewritten {
            Ok(instances) => {
                tracing::info!(%hostname, instances, "custom domain changed: instance config written again")
            }
            Err(e) => {
                tracing::warn!(%hostname, "cannot update instance origins for a custom domain: {e}")
            }
        }
    }

    /// Asks for an immediate refill (after a claim).
    pub fn wake(&self) {
        self.refill.notify_one();
    }

    /// This node's members by state, from the store, for `/admin/nodes`.
    pub async fn node_status(&self) -> Result<NodeStatus, Error> {
        let members = self.store.list_pool_members(&self.settings.node_id).await?;
        let count = |state| members.iter().filter(|m| m.state == state).count();
        let queued = self
            .store
            .list_instances_by_status(InstanceStatus::Queued)
            .await?
            .len();
        Ok(NodeStatus {
            node_id: self.settings.node_id.clone(),
            runtime: self.runtime.kind(),
            capacity: self.settings.capacity,
            idle: count(PoolMemberState::Idle),
            creating: count(PoolMemberState::Creating),
            assigned: count(PoolMemberState::Claimed),
            sleeping: self.sleeping_here().await?.len(),
            queued,
        })
    }

    /// Gives `instance` a running container: a warm one when there is one.
    pub async fn assign(self: &Arc<Self>, instance: &Instance) -> Result<Assigned, Error> {
        while let Some(member) = self
            .store
            .claim_pool_member(&self.settings.node_id, instance.id)
            .await?
        {
            self.wake();
            match self.hand_over(instance, &member).await {
                Ok(addr) => return Ok(Assigned::Running(addr)),
                Err(e) => {
                    // A member that cannot take the config is discarded; try the next one.
                    tracing::warn!(member = %member.name, "claimed member failed at hand-over: {e}");
                    self.discard(&member).await;
                }
            }
        }
        if self.room().await? > 0 {
            self.set_status(instance, InstanceStatus::Provisioning)
                .await?;
            let (pool, instance) = (self.clone(), instance.clone());
            tokio::spawn(async move { pool.provision(instance).await });
            Ok(Assigned::Provisioning)
        } else {
            tracing::info!(instance = %instance.id, capacity = self.settings.capacity, "node full: instance queued");
            self.set_status(instance, InstanceStatus::Queued).await?;
            Ok(Assigned::Queued)
        }
    }

    /// Injects config and resources into a claimed member and routes the instance to it.
    async fn hand_over(
        &self,
        instance: &Instance,
        member: &PoolMember,
    ) -> Result<SocketAddr, Error> {
        let runtime_id = member
            .runtime_id
            .as_deref()
            .ok_or_else(|| Error::NotReady(member.name.clone(), NotReady::NoRuntimeId))?;
        let started = std::time::Instant::now();
        // The gateway knows its owner by the identity the member booted with, so the config below
        // leaves its auth policy as it was (a change would close its open connections).
        let handed;
        let instance = match self.config.gateway_identity(&member.name) {
            Some(id) => {
                handed = self.store.set_instance_gateway_id(instance.id, &id).await?;
                &handed
            }
            None => instance,
        };
        let files = self.config.files(instance, &member.name).await?;
        let resources = self.settings.resources(instance.tier);
        // Config and resources are independent: both Docker calls at once.
        let (assigned, resized) = tokio::join!(
            self.runtime.assign(runtime_id, &files),
            self.runtime.update_resources(runtime_id, &resources)
        );
        assigned?;
        resized?;
        let written = started.elapsed();
        let addr = match member
            .upstream
            .as_deref()
            .and_then(|u| u.parse::<SocketAddr>().ok())
        {
            Some(addr) => addr,
            None => self.address_of(runtime_id).await?,
        };
        // Routed as running only once the instance has applied the owner's config. Routing
        // before (the warm gateway already admits the owner) took the handover from about 1 s to
        // 0.07 s, but OpenClaw 2026.9.6 aborts a turn whose model catalogue is being prepared when
        // a reload lands (`PreparedModelCatalogConfigReplacedError`, and the client never gets a
        // reply): that hit the owner's first turn in 2 of 4 release-build signups.
        let probe = self.config.applied_probe(instance);
        if let Some(probe) = &probe {
            wait_applied(addr, probe, self.settings.ready_timeout)
                .await
                .map_err(|e| Error::NotReady(instance.subdomain.clone(), e))?;
        }
        self.place(instance, runtime_id, addr, InstanceStatus::Running)
            .await?;
        // What a signup waits for: writing the config, then the instance applying it.
        tracing::info!(
            instance = %instance.id,
            member = %member.name,
            config_written_ms = written.as_millis() as u64,
            handed_over_ms = started.elapsed().as_millis() as u64,
            "instance handed over"
        );
        Ok(addr)
    }

    /// Creates a container for `instance` on demand (pool empty), then routes it.
    async fn provision(self: Arc<Self>, instance: Instance) {
        let result = async {
            // The new member joins the idle pool; claim one (a concurrent signup may take it,
            // then the next one is made).
            for _ in 0..3 {
                self.create_member().await?;
                if let Some(member) = self
                    .store
                    .claim_pool_member(&self.settings.node_id, instance.id)
                    .await?
                {
                    return self.hand_over(&instance, &member).await;
                }
            }
            Err(Error::NotReady(
                instance.subdomain.clone(),
                NotReady::AllTaken,
            ))
        }
        .await;
        match result {
            Ok(addr) => {
                tracing::info!(instance = %instance.id, %addr, "instance provisioned on demand")
            }
            Err(e) => {
                tracing::error!(instance = %instance.id, "on-demand provisioning failed: {e}");
                let _ = self.set_status(&instance, InstanceStatus::Crashed).await;
            }
        }
    }

    /// Creates, starts and readies one member; it is `idle` when this returns.
    async fn create_member(&self) -> Result<PoolMember, Error> {
        let _permit = self
            .creating
            .acquire()
            .await
            .map_err(|_| Error::Config("pool shut down".into()))?;
        let name = format!("cd-{}-{}", self.settings.node_id, Uuid::new_v4().simple());
        let member = self
            .store
            .insert_pool_member(&self.settings.node_id, &name)
            .await?;
        let result = async {
            let spec = InstanceSpec {
                name: name.clone(),
                image: self.settings.image.clone(),
                user: self.settings.user.clone(),
                port: self.settings.port,
                resources: self.settings.idle_resources.clone(),
                labels: self.settings.labels.clone(),
                env: self.settings.env.clone(),
                files: self.config.boot_files(&name),
            };
            let created = self.runtime.create(&spec).await?;
            self.store
                .set_pool_member_runtime_id(member.id, &created.id)
                .await?;
            self.runtime.start(&created.id).await?;
            let addr = self.address_of(&created.id).await?;
            wait_ready(addr, self.settings.ready_timeout)
                .await
                .map_err(|e| Error::NotReady(name.clone(), e))?;
            let warming = Instant::now();
            match self.config.warm_up(addr, &name).await {
                Ok(()) => tracing::debug!(member = %name, ms = warming.elapsed().as_millis() as u64, "member warmed up"),
                Err(e) => tracing::warn!(member = %name, "warm-up failed (its first user waits longer): {e}"),
            }
            self.store
                .mark_pool_member_idle(member.id, &addr.to_string())
                .await?;
            Ok::<_, Error>((created.id, addr))
        }
        .await;
        match result {
            Ok((runtime_id, addr)) => Ok(PoolMember {
                runtime_id: Some(runtime_id),
                upstream: Some(addr.to_string()),
                state: PoolMemberState::Idle,
                ..member
            }),
            Err(e) => {
                let member = self
                    .store
                    .list_pool_members(&self.settings.node_id)
                    .await?
                    .into_iter()
                    .find(|m| m.id == member.id);
                if let Some(member) = member {
                    self.discard(&member).await;
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn address_of(&self, runtime_id: &str) -> Result<SocketAddr, Error> {
        let inspection = self.runtime.inspect(runtime_id).await?;
        inspection.address.ok_or_else(|| {
            Error::NotReady(
                runtime_id.to_string(),
                NotReady::NoAddress(format!("{:?}", inspection.state)),
            )
        })
    }

    /// Awake instances this node can still take (signups, refills): `capacity` less the awake
    /// members (idle, creating, assigned and awake), the wakes under way, and what sleeping
    /// instances hold.
    pub(crate) async fn room(&self) -> Result<usize, Error> {
        let members = self.store.list_pool_members(&self.settings.node_id).await?;
        Ok(self.budget_left_mb(&members, true).await?.max(0) as usize
            / self.settings.reserve_mb.max(1) as usize)
    }

    /// MiB of the node's budget (`capacity` × `reserve_mb`) left, negative when over it. With
    /// `warm` false, warm members (idle or being created) are not counted: a wake takes their
    /// room, and the next maintenance removes idle ones until the node is within budget again.
    pub(crate) async fn budget_left_mb(
        &self,
        members: &[PoolMember],
        warm: bool,
    ) -> Result<i64, StoreError> {
        // Assigned instances hold memory by their status: awake ones their reservation, sleeping
        // ones what they keep; stopped, crashed and deleted ones (their containers exited) none.
        let statuses: HashMap<Uuid, InstanceStatus> = self
            .store
            .list_instances()
            .await?
            .into_iter()
            .filter(|i| i.node_id.as_deref() == Some(self.settings.node_id.as_str()))
            .map(|i| (i.id, i.status))
            .collect();
        let holds = |m: &&PoolMember| match m.instance_id.and_then(|id| statuses.get(&id)) {
            Some(InstanceStatus::Stopped | InstanceStatus::Crashed | InstanceStatus::Deleting) => {
                None
            }
            Some(InstanceStatus::Sleeping) => Some(false),
            _ => Some(true),
        };
        let assigned = members
            .iter()
            .filter(|m| m.state == PoolMemberState::Claimed);
        let sleeping = assigned.clone().filter(|m| holds(m) == Some(false)).count() as i64;
        let awake_assigned = assigned.filter(|m| holds(m) == Some(true)).count() as i64;
        let warm_members = if warm {
            members
                .iter()
                .filter(|m| m.state != PoolMemberState::Claimed)
                .count() as i64
        } else {
            0
        };
        let reserve = self.settings.reserve_mb.max(1) as i64;
        let awake = awake_assigned
            + warm_members
            + self.waking.load(std::sync::atomic::Ordering::SeqCst) as i64;
        let used = awake * reserve + sleeping * self.settings.sleep.held_mb() as i64;
        Ok(self.settings.capacity as i64 * reserve - used)
    }

    /// This node's sleeping instances.
    pub(crate) async fn sleeping_here(&self) -> Result<Vec<Instance>, StoreError> {
        Ok(self
            .store
            .list_instances_by_status(InstanceStatus::Sleeping)
            .await?
            .into_iter()
            .filter(|i| i.node_id.as_deref() == Some(self.settings.node_id.as_str()))
            .collect())
    }

    /// Records where an instance runs and routes it, here and on every edge node.
    pub(crate) async fn place(
        &self,
        instance: &Instance,
        runtime_id: &str,
        addr: SocketAddr,
        status: InstanceStatus,
    ) -> Result<(), Error> {
        let upstream = addr.to_string();
        let ip = addr.ip().to_string();
        self.store
            .set_instance_placement(
                instance.id,
                &Placement {
                    node_id: Some(&self.settings.node_id),
                    node_ip: None,
                    container_id: Some(runtime_id),
                    container_ip: Some(&ip),
                    upstream: Some(&upstream),
                },
            )
            .await?;
        self.set_status(instance, status).await
    }

    pub(crate) async fn set_status(
        &self,
        instance: &Instance,
        status: InstanceStatus,
    ) -> Result<(), Error> {
        self.store
            .update_instance_status(instance.id, status)
            .await?;
        self.announce(instance).await
    }

    /// Tells every edge node (this one included) that `instance`'s record changed.
    pub(crate) async fn announce(&self, instance: &Instance) -> Result<(), Error> {
        self.bus
            .publish(Change::Instance {
                id: instance.id,
                subdomain: instance.subdomain.clone(),
            })
            .await?;
        Ok(())
    }

    /// Removes a member and its container or process.
    pub(crate) async fn discard(&self, member: &PoolMember) {
        if let Some(runtime_id) = &member.runtime_id {
            if let Err(e) = self.runtime.remove(runtime_id).await {
                tracing::warn!(member = %member.name, "cannot remove: {e}");
            }
        }
        let _ = self.store.delete_pool_member(member.id).await;
        if let Some(id) = member.instance_id {
            self.activity.forget(&id.to_string());
        }
        self.room_freed.notify_waiters();
    }

    /// Releases an instance's container (instance deleted or cancelled after its grace).
    pub async fn release(&self, instance_id: Uuid) -> Result<(), Error> {
        if let Some(member) = self.store.pool_member_for_instance(instance_id).await? {
            self.discard(&member).await;
        }
        self.wake();
        Ok(())
    }

    /// Exports an instance's data to `archive_dir/<subdomain>-<id>.tar` (with its record beside it as
    /// JSON), then removes its container and volume. Returns the archive's path, or `None` when the
    /// instance never had a container.
    pub async fn archive(
        &self,
        instance: &Instance,
        archive_dir: &std::path::Path,
    ) -> Result<Option<std::path::PathBuf>, Error> {
        tokio::fs::create_dir_all(archive_dir)
            .await
            .map_err(RuntimeError::from)?;
        let base = archive_dir.join(format!("{}-{}", instance.subdomain, instance.id));
        let record =
            serde_json::to_vec_pretty(instance).map_err(|e| Error::Config(e.to_string()))?;
        tokio::fs::write(base.with_extension("json"), record)
            .await
            .map_err(RuntimeError::from)?;
        let Some(member) = self.store.pool_member_for_instance(instance.id).await? else {
            return Ok(None);
        };
        let Some(runtime_id) = member.runtime_id.clone() else {
            return Ok(None);
        };
        let archive = self.runtime.export_data(&runtime_id).await?;
        let path = base.with_extension("tar");
        tokio::fs::write(&path, archive)
            .await
            .map_err(RuntimeError::from)?;
        self.discard(&member).await;
        self.wake();
        Ok(Some(path))
    }

    /// Stops an instance's container, keeping it and its data (the owner can restart it).
    pub async fn stop(&self, instance: &Instance) -> Result<(), Error> {
        if let Some(runtime_id) = self
            .store
            .pool_member_for_instance(instance.id)
            .await?
            .and_then(|m| m.runtime_id)
        {
            self.runtime.stop(&runtime_id).await?;
        }
        Ok(())
    }

    /// Writes an instance's config again (settings changed); its runtime reads it without a restart.
    /// False when the instance has no container yet (it gets the new config when assigned).
    pub async fn reconfigure(&self, instance: &Instance) -> Result<bool, Error> {
        let Some(member) = self.store.pool_member_for_instance(instance.id).await? else {
            return Ok(false);
        };
        let Some(runtime_id) = member.runtime_id else {
            return Ok(false);
        };
        let lock = self.change_lock(instance.id);
        let _one = lock.lock().await;
        let files = self.config.files(instance, &member.name).await?;
        self.runtime.assign(&runtime_id, &files).await?;
        Ok(true)
    }

    /// Applies the tier's CPU and memory limits to an instance's running container without a
    /// restart (a tier change). A lower memory limit is applied only if the instance uses less
    /// than [`SHRINK_HEADROOM`] of it now; otherwise it waits for the next start, which applies
    /// the tier's limits anyway. A sleeping instance gets them when it wakes.
    pub async fn resize(&self, instance: &Instance) -> Result<Resize, Error> {
        let Some(runtime_id) = self
            .store
            .pool_member_for_instance(instance.id)
            .await?
            .and_then(|m| m.runtime_id)
        else {
            return Ok(Resize::AtNextStart(
                "the instance has no container yet".into(),
            ));
        };
        if instance.status == InstanceStatus::Sleeping {
            return Ok(Resize::AtNextStart(
                "the instance is asleep; it wakes with the new limits".into(),
            ));
        }
        let lock = self.lifecycle_lock(instance.id);
        let _held = lock.lock().await;
        let resources = self.settings.resources(instance.tier);
        if let Some(memory) = self.runtime.memory(&runtime_id).await? {
            let shrinking = resources.memory_mb < memory.limit_mb;
            if shrinking && memory.used_mb as f64 > resources.memory_mb as f64 * SHRINK_HEADROOM {
                // CPU and process limits need no room: those apply now; memory keeps its limit.
                let now = Resources {
                    memory_mb: memory.limit_mb,
                    ..resources.clone()
                };
                self.runtime.update_resources(&runtime_id, &now).await?;
                return Ok(Resize::AtNextStart(format!(
                    "the instance uses {} MiB, too much to lower its memory limit to {} MiB live; that applies at its next restart",
                    memory.used_mb, resources.memory_mb
                )));
            }
        }
        self.runtime
            .update_resources(&runtime_id, &resources)
            .await?;
        Ok(Resize::Applied(resources))
    }

    /// Restarts an instance's container (API restart, a newly active domain), re-routing to its
    /// new address; waits for a sleep or wake of the instance in progress.
    pub async fn restart(&self, instance: &Instance) -> Result<SocketAddr, Error> {
        let lock = self.lifecycle_lock(instance.id);
        let _held = lock.lock().await;
        self.restart_now(instance).await
    }

    /// [`Self::restart`], for a caller holding the instance's lifecycle lock.
    async fn restart_now(&self, instance: &Instance) -> Result<SocketAddr, Error> {
        let member = self
            .store
            .pool_member_for_instance(instance.id)
            .await?
            .ok_or_else(|| Error::NotReady(instance.subdomain.clone(), NotReady::NoContainer))?;
        let runtime_id = member.runtime_id.clone().unwrap_or_default();
        self.set_status(instance, InstanceStatus::Starting).await?;
        match self.runtime.inspect(&runtime_id).await?.state {
            RunState::Running => {
                // A frozen (sleeping) instance is thawed first: a paused container cannot restart.
                self.runtime
                    .wake(&runtime_id, &self.settings.resources(instance.tier))
                    .await?;
                self.runtime.restart(&runtime_id).await?
            }
            RunState::Missing => {
                return Err(Error::NotReady(
                    instance.subdomain.clone(),
                    NotReady::ContainerGone,
                ))
            }
            _ => self.runtime.start(&runtime_id).await?,
        }
        // A fresh start holds little: the tier's limits (a shrink a tier change deferred) fit.
        self.runtime
            .update_resources(&runtime_id, &self.settings.resources(instance.tier))
            .await?;
        let addr = self.address_of(&runtime_id).await?;
        self.serve_again(instance, &member, &runtime_id, addr).await
    }

    /// Waits until a restarted or woken instance at `addr` is ready, then records its address and
    /// routes it `running` again.
    pub(crate) async fn serve_again(
        &self,
        instance: &Instance,
        member: &PoolMember,
        runtime_id: &str,
        addr: SocketAddr,
    ) -> Result<SocketAddr, Error> {
        wait_ready(addr, self.settings.ready_timeout)
            .await
            .map_err(|e| Error::NotReady(instance.subdomain.clone(), e))?;
        if member.upstream.as_deref() != Some(addr.to_string().as_str()) {
            self.store
                .set_pool_member_upstream(member.id, &addr.to_string())
                .await?;
        }
        self.place(instance, runtime_id, addr, InstanceStatus::Running)
            .await?;
        Ok(addr)
    }

    /// Fills the pool to `min_idle` (within capacity), trims it to `max_idle`, serves the queue.
    async fn maintain(self: &Arc<Self>) {
        let result = async {
            let members = self.store.list_pool_members(&self.settings.node_id).await?;
            let idle: Vec<&PoolMember> = members
                .iter()
                .filter(|m| m.state == PoolMemberState::Idle)
                .collect();
            let creating = members
                .iter()
                .filter(|m| m.state == PoolMemberState::Creating)
                .count();
            let assigned = members
                .iter()
                .filter(|m| m.state == PoolMemberState::Claimed)
                .count();
            // Per tick, for the dashboard (`clawdeploy_pool_instances{state}`).
            for (state, n) in [
                ("idle", idle.len()),
                ("creating", creating),
                ("assigned", assigned),
            ] {
                metrics::gauge!("clawdeploy_pool_instances", "state" => state).set(n as f64);
            }
            let sleeping = self.sleeping_here().await?.len();
            metrics::gauge!("clawdeploy_instances_sleeping").set(sleeping as f64);
            metrics::gauge!("clawdeploy_instances_awake")
                .set(assigned.saturating_sub(sleeping) as f64);
            let left = self.budget_left_mb(&members, true).await?;
            let reserve = self.settings.reserve_mb.max(1) as i64;
            // Over budget (wakes took warm members' room): idle members go first.
            let excess = if left < 0 { (-left + reserve - 1) / reserve } else { 0 };
            for member in idle.iter().take(excess as usize) {
                tracing::info!(member = %member.name, "node over budget after wakes: removing a warm member");
                self.discard(member).await;
            }
            let idle: Vec<&PoolMember> = idle.into_iter().skip(excess as usize).collect();
            let room = (left.max(0) / reserve) as usize;

            // Queued instances first: they are people waiting.
            let mut queued = self
                .store
                .list_instances_by_status(InstanceStatus::Queued)
                .await?;
            queued.sort_by_key(|i| i.created_at);
            let mut room = room;
            for instance in queued {
                if let Some(member) = self
                    .store
                    .claim_pool_member(&self.settings.node_id, instance.id)
                    .await?
                {
                    if let Err(e) = self.hand_over(&instance, &member).await {
                        tracing::warn!("queued instance hand-over failed: {e}");
                        self.discard(&member).await;
                    }
                } else if room > 0 {
                    room -= 1;
                    self.set_status(&instance, InstanceStatus::Provisioning)
                        .await?;
                    tokio::spawn(self.clone().provision(instance));
                }
            }

            let wanted = self
                .settings
                .min_idle
                .saturating_sub(idle.len() + creating)
                .min(room);
            for _ in 0..wanted {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.create_member().await {
                        tracing::warn!("pool refill failed: {e}");
                    }
                });
            }
            for member in idle.iter().skip(self.settings.max_idle) {
                self.discard(member).await;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!("pool maintenance failed: {e}");
        }
    }

    /// `/readyz` of every idle member and running instance; failures are healed.
    async fn check_health(self: &Arc<Self>) {
        let Ok(members) = self.store.list_pool_members(&self.settings.node_id).await else {
            return;
        };
        // Sleeping instances are stopped or frozen: not probed (a frozen one never answers).
        let sleeping: std::collections::HashSet<Uuid> = match self.sleeping_here().await {
            Ok(instances) => instances.into_iter().map(|i| i.id).collect(),
            Err(_) => return,
        };
        for member in members {
            if member.instance_id.is_some_and(|id| sleeping.contains(&id)) {
                continue;
            }
            let Some(addr) = member
                .upstream
                .as_deref()
                .and_then(|u| u.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if member.state == PoolMemberState::Creating {
                continue;
            }
            if wait_ready(addr, Duration::from_secs(2)).await.is_ok() {
                if let Some(id) = member.instance_id {
                    self.health_failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
                continue;
            }
            match (member.state, member.instance_id) {
                (PoolMemberState::Claimed, Some(instance_id)) => {
                    // Only an instance still running at the probed address is unhealthy: one
                    // being restarted (after a die event) is `starting` or has moved.
                    // Two failed checks in a row, so one slow answer on a busy node does not
                    // restart a healthy instance (a crash is reported at once by its die event).
                    let failures = {
                        let mut failures = self
                            .health_failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let n = failures.entry(instance_id).or_insert(0);
                        *n += 1;
                        *n
                    };
                    if failures < 2 {
                        continue;
                    }
                    let upstream = addr.to_string();
                    let current = self.store.get_instance(instance_id).await.ok().flatten();
                    if current.is_some_and(|i| {
                        i.status == InstanceStatus::Running
                            && i.upstream.as_deref() == Some(upstream.as_str())
                    }) {
                        tracing::warn!(instance = %instance_id, "instance failed its health check");
                        tokio::spawn(self.clone().heal(instance_id));
                    }
                }
                _ => {
                    tracing::warn!(member = %member.name, "idle member failed its health check; replacing it");
                    self.discard(&member).await;
                    self.wake();
                }
            }
        }
    }

    async fn on_died(self: Arc<Self>, runtime_id: String, exit_code: Option<i64>) {
        let Ok(members) = self.store.list_pool_members(&self.settings.node_id).await else {
            return;
        };
        let Some(member) = members
            .into_iter()
            .find(|m| m.runtime_id.as_deref() == Some(runtime_id.as_str()))
        else {
            return;
        };
        match (member.state, member.instance_id) {
            (PoolMemberState::Claimed, Some(instance_id)) => {
                // Stopped or restarted on purpose (a sleep, a cancellation, an unverified
                // account, a restart its owner asked for): its own `die` event, nothing to heal
                // (heal checks again, under the instance's lock).
                let status = self
                    .store
                    .get_instance(instance_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|i| i.status);
                if matches!(
                    status,
                    Some(
                        InstanceStatus::Stopped
                            | InstanceStatus::Deleting
                            | InstanceStatus::Sleeping
                            | InstanceStatus::Crashed
                            | InstanceStatus::Starting
                    )
                ) {
                    return tracing::debug!(instance = %instance_id, ?exit_code, "instance stopped on purpose");
                }
                // A restart that finished before this event was read: the container runs again.
                if self
                    .runtime
                    .inspect(&runtime_id)
                    .await
                    .is_ok_and(|i| i.state == RunState::Running)
                {
                    return tracing::debug!(instance = %instance_id, ?exit_code, "instance restarted");
                }
                tracing::warn!(instance = %instance_id, ?exit_code, "instance died; restarting it");
                tokio::spawn(self.heal(instance_id));
            }
            (PoolMemberState::Idle, _) => {
                tracing::warn!(member = %member.name, ?exit_code, "idle member died; replacing it");
                self.discard(&member).await;
                self.wake();
            }
            // A member still being created is handled by its creator.
            _ => {}
        }
    }

    /// Restarts a dead or unhealthy instance with exponential backoff; a crash loop ends as
    /// `crashed` (its owner can restart it).
    async fn heal(self: Arc<Self>, instance_id: Uuid) {
        if !self
            .healing
            .lock()
            .map(|mut h| h.insert(instance_id))
            .unwrap_or(false)
        {
            return;
        }
        // After a sleep or wake in progress (a stopped instance's own `die` event comes here while
        // it is being put to sleep): the status read below is then the settled one.
        let lock = self.lifecycle_lock(instance_id);
        let held = lock.lock().await;
        let outcome = async {
            let Some(instance) = self.store.get_instance(instance_id).await? else { return Ok(()) };
            // Stopped on purpose, or being (re)started right now (its own `die` event comes here
            // too): nothing to heal.
            // A sleeping one was stopped or frozen on purpose (a wake starts it); a crashed one stays
            // down until its owner restarts it.
            if matches!(instance.status, InstanceStatus::Stopped | InstanceStatus::Deleting | InstanceStatus::Starting | InstanceStatus::Sleeping | InstanceStatus::Crashed) {
                return Ok(());
            }
            // A late event or check about an instance that is serving again.
            if let Some(addr) = instance.upstream.as_deref().and_then(|u| u.parse::<SocketAddr>().ok()) {
                if crate::ready::probe(addr).await {
                    return Ok(());
                }
            }
            let attempts = {
                let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
                let entry = restarts.entry(instance_id).or_default();
                entry.recent.retain(|t| t.elapsed() < CRASH_LOOP_WINDOW);
                entry.recent.push(Instant::now());
                entry.recent.len()
            };
            if attempts > CRASH_LOOP_LIMIT {
                tracing::error!(instance = %instance_id, "crash loop: giving up until its owner restarts it");
                self.crashed(&instance, &format!("it stopped {CRASH_LOOP_LIMIT} times within {} minutes", CRASH_LOOP_WINDOW.as_secs() / 60)).await;
                return Ok(());
            }
            // 0 s, 1 s, 2 s, 4 s, 8 s between attempts.
            let backoff = Duration::from_secs(if attempts <= 1 { 0 } else { 1 << (attempts - 2).min(4) });
            self.set_status(&instance, InstanceStatus::Starting).await?;
            tokio::time::sleep(backoff).await;
            self.restart_now(&instance).await.map(|addr| tracing::info!(instance = %instance_id, %addr, "instance healed"))
        }
        .await;
        if let Err(e) = outcome {
            tracing::error!(instance = %instance_id, "healing failed: {e}");
            if let Ok(Some(instance)) = self.store.get_instance(instance_id).await {
                self.crashed(&instance, &format!("it could not be restarted ({e})"))
                    .await;
            }
        }
        drop(held);
        if let Ok(mut healing) = self.healing.lock() {
            healing.remove(&instance_id);
        }
    }

    /// After a restart of the edge: members whose container is gone are dropped (their instances
    /// re-provisioned), containers nobody knows are removed.
    async fn reconcile(self: &Arc<Self>) -> Result<(), Error> {
        let members = self.store.list_pool_members(&self.settings.node_id).await?;
        let known: std::collections::HashSet<String> = members
            .iter()
            .filter_map(|m| m.runtime_id.clone())
            .collect();
        for orphan in self.runtime.list().await? {
            if !known.contains(&orphan.id)
                && orphan
                    .name
                    .starts_with(&format!("cd-{}-", self.settings.node_id))
            {
                tracing::info!(name = %orphan.name, "removing an instance container no pool member owns");
                let _ = self.runtime.remove(&orphan.id).await;
            }
        }
        for member in members {
            let state = match &member.runtime_id {
                Some(id) => self.runtime.inspect(id).await?.state,
                None => RunState::Missing,
            };
            match (state, member.state, member.instance_id) {
                (RunState::Missing, _, Some(instance_id))
                | (RunState::Created, _, Some(instance_id)) => {
                    let _ = self.store.delete_pool_member(member.id).await;
                    if let Some(instance) = self.store.get_instance(instance_id).await? {
                        tracing::warn!(instance = %instance_id, "instance container lost; provisioning a new one");
                        self.set_status(&instance, InstanceStatus::Provisioning)
                            .await?;
                        tokio::spawn(self.clone().provision(instance));
                    }
                }
                (RunState::Missing, _, None) | (_, PoolMemberState::Creating, None) => {
                    self.discard(&member).await
                }
                (RunState::Exited { .. }, PoolMemberState::Claimed, Some(instance_id)) => {
                    tokio::spawn(self.clone().heal(instance_id));
                }
                (RunState::Exited { .. }, _, None) => self.discard(&member).await,
                _ => {}
            }
        }
        Ok(())
    }
}
