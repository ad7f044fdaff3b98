//! The instance lifecycle behind one trait, so the pool manager does not care whether an instance
//! is a Docker container or a local process (or, later, a Kubernetes pod).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::sync::broadcast;

/// CPU, memory and process limits of one instance, from its tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Memory limit in MiB (Docker gets the same limit for memory plus swap: no swap).
    pub memory_mb: u64,
    /// CPUs, e.g. 0.5.
    pub cpus: f64,
    /// Most processes and threads the instance may run.
    pub pids: i64,
}

/// An instance's memory, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Held now, without reclaimable file cache.
    pub used_mb: u64,
    /// Its current limit.
    pub limit_mb: u64,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Unique name, also the base of its data volume's name.
    pub name: String,
    /// Docker image, or the program the process runtime runs.
    pub image: String,
    /// `uid:gid` to run as; never root.
    pub user: String,
    /// The port the instance serves inside (the gateway's 18789).
    pub port: u16,
    /// Limits at creation (an idle instance's; the tier's are applied at assignment).
    pub resources: Resources,
    /// Extra labels (Docker) or tags, beside the platform's own.
    pub labels: BTreeMap<String, String>,
    /// Environment variables (name, value), beside the runtime's own.
    pub env: Vec<(String, String)>,
    /// Written into the data directory before the first start (the idle config).
    pub files: Vec<ConfigFile>,
}

/// A file written into an instance's data directory at assignment (config, SOUL.md, ...).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Relative to the data directory, `/`-separated, no `..`.
    pub path: String,
    /// The file's bytes, written as they are.
    pub contents: Vec<u8>,
    /// Whether the instance may change it. The platform's config is not: a tenant runs code in
    /// its instance, and a config it could rewrite would undo the platform's lockdown (Docker
    /// writes such files as root, readable only).
    pub instance_writable: bool,
}

impl ConfigFile {
    /// A file the instance reads but cannot change (its gateway config).
    pub fn platform(path: &str, contents: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            contents,
            instance_writable: false,
        }
    }

    /// A file the instance owns (its workspace files).
    pub fn instance(path: &str, contents: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            contents,
            instance_writable: true,
        }
    }
}

/// A created instance, as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    /// The runtime's id (container id, or the name for processes).
    pub id: String,
    /// The platform's name for it ([`InstanceSpec::name`]).
    pub name: String,
}

/// Where an instance is in its life, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created but never started.
    Created,
    /// Running (not necessarily ready: see [`crate::ready`]).
    Running,
    /// Started once, now stopped: its exit code, if known, and whether the kernel killed it for
    /// memory.
    Exited {
        /// The exit code, if the runtime knows it.
        code: Option<i64>,
        /// Whether the kernel killed it for exceeding its memory limit (Docker only).
        oom_killed: bool,
    },
    /// The runtime does not know it (removed, or never created).
    Missing,
}

/// State and the address the edge reaches the instance at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The instance's state now.
    pub state: RunState,
    /// Where the edge reaches its port: its address on the instance network, or a loopback port;
    /// `None` unless running.
    pub address: Option<SocketAddr>,
}

/// How a sleeping instance gives its memory back (`pool.sleep`, with `auto` resolved by the
/// node's swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sleep {
    /// Stopped: all memory freed; a wake boots it again.
    Stop,
    /// Frozen, with its memory pushed out to swap; a wake thaws it.
    Freeze,
}

impl Sleep {
    /// What a sleeping instance still holds of the node's memory, in MiB, as capacity counts it:
    /// nothing when stopped; when frozen, its 96 MiB limit plus its pages compressed in zram
    /// (453 MiB per frozen OpenClaw in the density benchmark, 15 tenants:
    /// benches/results/2026-12-07-lifecycle-density.md).
    pub fn held_mb(self) -> u64 {
        match self {
            Sleep::Stop => 0,
            Sleep::Freeze => 450,
        }
    }
}

/// Lifecycle events, as the runtime reports them (Docker's arrive within ~50-200 ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The instance with this runtime id started.
    Started {
        /// The runtime's id of the instance ([`InstanceRef::id`]).
        id: String,
    },
    /// The instance exited (or was killed), with its exit code if the runtime reports one.
    Died {
        /// The runtime's id of the instance ([`InstanceRef::id`]).
        id: String,
        /// Its exit code, if the runtime reports one.
        exit_code: Option<i64>,
    },
    /// The instance hit its memory limit (Docker's `oom` event); the manager only logs it, a `Died`
    /// follows if it was killed.
    OutOfMemory {
        /// The runtime's id of the instance ([`InstanceRef::id`]).
        id: String,
    },
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No instance has this runtime id.
    #[error("instance {0} does not exist")]
    NotFound(String),
    /// The request itself is refused (a root user, a path outside the data directory, an unsafe
    /// network…): retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The runtime cannot be reached or used (no Docker engine on its socket…).
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
    // bollard's messages name Docker ("Docker responded with status code ..."): shown as they are.
    /// The Docker engine answered with an error.
    #[error(transparent)]
    Docker(#[from] bollard::errors::Error),
    /// A local I/O error (process runtime, data directories).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One instance lifecycle, implemented by each runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `docker`, `process`, ...
    fn kind(&self) -> &'static str;
    /// Creates a stopped instance with its own empty data volume.
    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceRef, RuntimeError>;
    /// Starts a created or stopped instance.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Injects a user's config into a running (or stopped) instance: files in its data directory.
    async fn assign(&self, id: &str, files: &[ConfigFile]) -> Result<(), RuntimeError>;
    /// Removes a file or folder (recursively) from a running instance's data directory, as the
    /// instance's own user; `path` is relative to the data directory (an uninstalled skill's
    /// folder). Absent is fine.
    async fn remove_path(&self, id: &str, path: &str) -> Result<(), RuntimeError>;
    /// Stops the instance (Docker gives it 5 s after SIGTERM); already stopped is not an error.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops and starts the instance, keeping its data.
    async fn restart(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes the instance and its data.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// The instance's state and address; an instance the runtime does not know is
    /// [`RunState::Missing`], not an error.
    async fn inspect(&self, id: &str) -> Result<Inspection, RuntimeError>;
    /// Puts a running instance to sleep `how`, keeping its data. A runtime that cannot freeze
    /// refuses [`Sleep::Freeze`].
    async fn sleep(&self, id: &str, how: Sleep) -> Result<(), RuntimeError> {
        match how {
            Sleep::Stop => self.stop(id).await,
            Sleep::Freeze => Err(RuntimeError::Refused(format!(
                "the {} runtime cannot freeze instances; set pool.sleep = \"stop\"",
                self.kind()
            ))),
        }
    }
    /// Wakes a sleeping instance, however it sleeps (stopped: started; frozen: thawed with
    /// `resources` as its limits again); a running one is left as it is.
    async fn wake(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        let _ = resources;
        match self.inspect(id).await?.state {
            RunState::Running => Ok(()),
            RunState::Missing => Err(RuntimeError::NotFound(id.to_string())),
            RunState::Created | RunState::Exited { .. } => self.start(id).await,
        }
    }
    /// Applies new limits to a running instance, without a restart where the runtime can.
    async fn update_resources(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError>;
    /// The memory the instance holds now and its limit; `None` when the runtime cannot tell
    /// (then a lower limit waits for the next start).
    async fn memory(&self, id: &str) -> Result<Option<MemoryUse>, RuntimeError> {
        let _ = id;
        Ok(None)
    }
    /// The instance's data directory as a tar archive (for the archive after a cancellation).
    async fn export_data(&self, id: &str) -> Result<Vec<u8>, RuntimeError>;
    /// Every instance this runtime manages for the platform (for reconciling after a restart).
    async fn list(&self) -> Result<Vec<InstanceRef>, RuntimeError>;
    /// Lifecycle events from now on.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
}

/// Checks a config file path: relative, no `..`, no empty parts.
pub(crate) fn safe_relative_path(path: &str) -> Result<&str, RuntimeError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(path)
    } else {
        Err(RuntimeError::Refused(format!(
            "config file path {path:?} must be relative, without '..'"
        )))
    }
}

/// Checks that a `uid:gid` is not root.
pub(crate) fn non_root_user(user: &str) -> Result<(), RuntimeError> {
    let uid = user.split(':').next().unwrap_or_default();
    if uid.is_empty() || uid == "0" || uid == "root" {
        Err(RuntimeError::Refused(format!(
            "instances never run as root (user {user:?})"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_paths_stay_inside_the_data_dir() {
        assert!(safe_relative_path("config.json").is_ok());
        assert!(safe_relative_path("workspace/SOUL.md").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_is_refused() {
        assert!(non_root_user("65534:65534").is_ok());
        assert!(non_root_user("1000").is_ok());
        for bad in ["", "0", "0:0", "root", "root:root"] {
            assert!(non_root_user(bad).is_err(), "{bad}");
        }
    }
}
