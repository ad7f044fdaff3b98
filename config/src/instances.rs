//! `[runtime]` and `[pool]`: where instances run and how many are kept warm.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which runtime runs instances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// No runtime: instances are recorded and routed, and stay `provisioning`.
    None,
    /// Docker when a Docker Engine answers (and, for OpenClaw, its image is built), else none:
    /// the embedded default.
    Auto,
    /// Hardened containers on the local Docker Engine.
    Docker,
    /// Local child processes: NOT isolated, development only.
    Process,
}

/// How an idle instance sleeps (`pool.sleep`); see [Sleep and wake](instances.md#sleep-and-wake).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SleepMode {
    /// `freeze` when the node has swap, else `stop`.
    Auto,
    /// The container is stopped: all its memory is freed, and a wake boots it again.
    Stop,
    /// The container is frozen and its memory pushed out to swap (zram on a node without a swap
    /// disk): a wake thaws it in well under a second; the node holds its compressed pages.
    Freeze,
}

/// What instances run: the config format the pool writes into them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstanceConfigKind {
    /// The real OpenClaw gateway (`clawdeploy image build`), with a locked-down tenant config.
    OpenClaw,
    /// The protocol-speaking test fixture (tests and benchmarks only).
    Fixture,
}

/// The OpenClaw image `clawdeploy image build` makes, used when `runtime.image` is empty.
pub const OPENCLAW_IMAGE: &str = "clawdeploy-openclaw:2026.9.6";

/// `[runtime]`: where instances run, and what: the real OpenClaw gateway (`config = "openclaw"`,
/// the image `clawdeploy image build` makes), or the test fixture (`tests/fixture`, a small program
/// speaking the subset of the gateway protocol the platform uses, for tests and benchmarks; never
/// presented as OpenClaw).
///
/// How containers are hardened: [Container hardening](instances.md#container-hardening).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `auto` (the embedded default): Docker when a Docker Engine answers and the instance image is
    /// built; else, with `config = "openclaw"`, local processes when `clawdeploy image build` has
    /// installed OpenClaw's pinned Node and package; else like `none`, with a log line saying what
    /// to do. `docker`: hardened containers on the local Docker Engine (an error at start when it
    /// does not answer). `process`: local child processes on loopback ports, NOT isolated,
    /// development only (logged at start): OpenClaw through `scripts/openclaw-process.sh` (embedded
    /// in the binary), or the program in `image`. `none`: instances are recorded and routed but
    /// stay `provisioning`.
    pub kind: RuntimeKind,
    /// What instances run, and so which config the pool writes into them: `openclaw` (the real
    /// gateway, with the locked-down tenant config under [OpenClaw
    /// instances](instances.md#the-tenant-config)) or `fixture` (the test program).
    pub config: InstanceConfigKind,
    /// The Docker image (`docker`) or program path (`process`). Empty with `config = "openclaw"` on
    /// Docker means `clawdeploy-openclaw:2026.9.6`, the image `clawdeploy image build` makes;
    /// otherwise required unless `kind = "none"`.
    pub image: String,
    /// `uid:gid` instances run as; root is refused.
    pub user: String,
    /// The port the instance serves inside (the OpenClaw gateway's).
    pub port: u16,
    /// The dedicated bridge network instances join, created with inter-container traffic off.
    pub docker_network: String,
    /// Publish each instance port on 127.0.0.1 and route there, for tests and single-host setups
    /// where the edge is not on the instance network. Otherwise the edge routes to the container's
    /// address on the network.
    pub publish_loopback: bool,
    /// Install the instance network's egress rules at start (Docker; needs root): instances reach
    /// public unicast addresses, the edge's LLM meter and `llm_endpoint`, and nothing else: not the
    /// IANA special-purpose ranges (the same list as `[llm]`'s public unicast: private, CGNAT,
    /// cloud metadata at 169.254.0.0/16, documentation, benchmarking, multicast, reserved), not
    /// other instances (the instance subnet), not the node's own addresses and subnets (read from
    /// its interfaces when the rules are installed), nor the host's own services; DNS to the node's
    /// resolvers passes on port 53. IPv4 only: a network with IPv6 enabled is refused. Chains
    /// `CLAWDEPLOY-E-<net>` (from `DOCKER-USER`) and `CLAWDEPLOY-I-<net>` (from `INPUT`).
    pub egress_rules: bool,
    /// One more `IP:port` on this host or a private network that instances may reach besides the
    /// internet and the LLM meter (which is allowed on its own); empty for none.
    pub llm_endpoint: String,
    /// Where the process runtime keeps instance data; empty means `<data_dir>/instances`.
    pub process_dir: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: RuntimeKind::Auto,
            config: InstanceConfigKind::OpenClaw,
            image: String::new(),
            user: "1000:1000".into(),
            port: 18789,
            docker_network: "clawdeploy-instances".into(),
            publish_loopback: false,
            egress_rules: true,
            llm_endpoint: String::new(),
            process_dir: PathBuf::new(),
        }
    }
}

/// `[pool]`: warm instances per node.
///
/// How a signup gets its instance: [The warm pool](instances.md#the-warm-pool).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// This node's id in the store; pool members and instances are placed per node. Empty means the
    /// host name.
    pub node_id: String,
    /// Idle, ready instances kept warm. The pool refills at once after every claim.
    pub min_idle: usize,
    /// Idle instances beyond this are removed.
    pub max_idle: usize,
    /// Health checks (`GET /readyz` of every idle and assigned instance) and refills run this
    /// often.
    pub tick_secs: u64,
    /// Most instances on this node (idle, being created and assigned); 0 means 80% of the node's
    /// memory divided by `memory_mb`. A signup beyond it waits as `queued` and is served first when
    /// room frees — the node is never overcommitted.
    pub capacity: usize,
    /// Instances created at once (refill and on-demand): the signup throttle.
    pub create_concurrency: usize,
    /// How long a new or restarted instance may take to answer `/readyz`.
    pub ready_timeout_secs: u64,
    /// Memory limit per instance (tiers may set their own: `tiers.<tier>.memory_mb`). OpenClaw
    /// needs about 825 MiB at ready and about 1 GiB after a few turns, and a 1 GiB cap has been
    /// reported to kill it at boot, hence 2 GiB.
    pub memory_mb: u64,
    /// Memory an awake instance is counted for in the node's capacity, in MiB (below its limit:
    /// most instances never reach it); 0 means `memory_mb`. Sleeping instances count for what they
    /// hold ([Capacity](instances.md#capacity)).
    pub reserve_mb: u64,
    /// Seconds without traffic (no request, no open WebSocket, no agent turn running, no scheduled
    /// job due) after which an assigned instance sleeps; 0: never. Tiers may set their own
    /// (`tiers.<tier>.idle_stop_secs`).
    pub idle_stop_secs: u64,
    /// How an idle instance sleeps: `auto`, `stop` or `freeze` (see [`SleepMode`]).
    pub sleep: SleepMode,
    /// CPUs per instance.
    pub cpus: f64,
    /// Most processes and threads per instance.
    pub pids: i64,
    /// Days a deleted (cancelled) instance is kept, stopped with its data and restorable, before it
    /// is archived (PRD §4.4.3).
    pub cancel_grace_days: u32,
    /// Where archived instances go: `<subdomain>-<id>.tar` (their data volume) and
    /// `<subdomain>-<id>.json` (their record). Empty means `<data_dir>/archive`.
    pub archive_dir: PathBuf,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            min_idle: 5,
            max_idle: 20,
            tick_secs: 30,
            capacity: 0,
            create_concurrency: 4,
            ready_timeout_secs: 60,
            memory_mb: 2048,
            reserve_mb: 1280,
            idle_stop_secs: 1800,
            sleep: SleepMode::Auto,
            cpus: 1.0,
            pids: 512,
            cancel_grace_days: 7,
            archive_dir: PathBuf::new(),
        }
    }
}

impl PoolConfig {
    /// The node's budget of awake instances: `capacity`, or 80% of `mem_total_mb` over the
    /// reservation ([`Self::reservation_mb`]).
    pub fn capacity_for(&self, mem_total_mb: u64) -> usize {
        if self.capacity > 0 {
            self.capacity
        } else {
            (mem_total_mb * 8 / 10 / self.reservation_mb().max(1)) as usize
        }
    }

    /// What an awake instance is counted for: `reserve_mb`, or `memory_mb` when it is 0.
    pub fn reservation_mb(&self) -> u64 {
        if self.reserve_mb > 0 {
            self.reserve_mb.min(self.memory_mb)
        } else {
            self.memory_mb
        }
    }
}

/// Checks both sections; pushes (key, value, allowed) for each problem.
pub(crate) fn validate(
    runtime: &RuntimeConfig,
    pool: &PoolConfig,
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    issue(
        runtime.kind == RuntimeKind::None
            || !runtime.image.is_empty()
            || runtime.config == InstanceConfigKind::OpenClaw,
        "runtime.image",
        &runtime.image,
        "a Docker image (docker) or a program path (process); empty only with config = \"openclaw\" (its image, or its launcher for processes)",
    );
    let uid = runtime.user.split(':').next().unwrap_or_default();
    issue(
        !uid.is_empty() && uid != "0" && uid != "root",
        "runtime.user",
        &runtime.user,
        "a non-root uid:gid such as 1000:1000",
    );
    issue(
        runtime.port > 0,
        "runtime.port",
        &runtime.port,
        "1 to 65535",
    );
    issue(
        !runtime.docker_network.is_empty(),
        "runtime.docker_network",
        &runtime.docker_network,
        "a Docker network name",
    );
    issue(
        runtime.llm_endpoint.is_empty()
            || runtime.llm_endpoint.parse::<std::net::SocketAddr>().is_ok(),
        "runtime.llm_endpoint",
        &runtime.llm_endpoint,
        "an IP address and port, or empty",
    );
    issue(
        pool.min_idle <= pool.max_idle,
        "pool.min_idle",
        &pool.min_idle,
        "at most pool.max_idle",
    );
    issue(
        pool.max_idle <= 1000,
        "pool.max_idle",
        &pool.max_idle,
        "0 to 1000",
    );
    issue(
        (1..=3600).contains(&pool.tick_secs),
        "pool.tick_secs",
        &pool.tick_secs,
        "1 to 3600 seconds",
    );
    issue(
        (1..=64).contains(&pool.create_concurrency),
        "pool.create_concurrency",
        &pool.create_concurrency,
        "1 to 64",
    );
    issue(
        (1..=3600).contains(&pool.ready_timeout_secs),
        "pool.ready_timeout_secs",
        &pool.ready_timeout_secs,
        "1 to 3600 seconds",
    );
    issue(
        pool.memory_mb >= 16,
        "pool.memory_mb",
        &pool.memory_mb,
        "at least 16 (OpenClaw needs about 2048)",
    );
    issue(
        pool.cpus > 0.0 && pool.cpus <= 64.0,
        "pool.cpus",
        &pool.cpus,
        "more than 0, at most 64",
    );
    issue(pool.pids >= 16, "pool.pids", &pool.pids, "at least 16");
    issue(
        pool.cancel_grace_days <= 365,
        "pool.cancel_grace_days",
        &pool.cancel_grace_days,
        "0 to 365 days",
    );
}
