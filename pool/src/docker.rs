//! The Docker runtime, over bollard 0.21 (API negotiated down to what the engine speaks, e.g. 1.41).
//!
//! Every container is hardened: a non-root user, read-only root filesystem, all capabilities
//! dropped, `no-new-privileges`, Docker's default seccomp profile, never privileged, a pids limit,
//! CPU and memory from the tier, `--init`, a size-limited `/tmp` tmpfs and a named volume of its own
//! at `/data`. Everything it creates carries the `clawdeploy.managed=true` label, and instances
//! join one dedicated bridge network with inter-container traffic off.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, HostConfig, Mount, MountTmpfsOptions, MountType,
    NetworkCreateRequest, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, RestartContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::egress::NetworkInfo;
use crate::runtime::{
    non_root_user, safe_relative_path, ConfigFile, Inspection, InstanceRef, InstanceSpec,
    MemoryUse, Resources, RunState, Runtime, RuntimeError, RuntimeEvent, Sleep,
};

/// Label on everything the platform creates.
pub const MANAGED_LABEL: &str = "clawdeploy.managed";
/// Label holding the instance name.
pub const NAME_LABEL: &str = "clawdeploy.instance";
/// Where the instance's own volume is mounted.
pub const DATA_DIR: &str = "/data";
/// Size of the in-container `/tmp` (counted against the memory limit).
const TMP_BYTES: i64 = 64 << 20;
/// CPU weight of a new pool member while it boots and warms up: a quarter of a serving
/// instance's, so the refill a signup starts never slows that owner's first turn on a busy node
/// (OpenClaw's boot is ~15 s of CPU). Its tier's limits, and the full weight, come at assignment.
pub const WARMING_CPU_SHARES: i64 = 256;
/// CPU weight of an assigned instance (Docker's default).
pub const SERVING_CPU_SHARES: i64 = 1024;
/// The memory limit of a frozen instance, in MiB: the rest of its pages go to swap (measured
/// with OpenClaw: 96 MiB charged plus about 215 MiB of compressed pages in zram).
pub const FROZEN_LIMIT_MB: i64 = 96;

/// How the Docker runtime places instances on the network.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The dedicated bridge network instances join.
    pub network: String,
    /// Publish the instance port on 127.0.0.1 (an ephemeral port) and report that address; for
    /// tests and single-host setups where the edge is not on the instance network.
    pub publish_loopback: bool,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            network: "clawdeploy-instances".into(),
            publish_loopback: false,
        }
    }
}

/// The Docker runtime (see the module docs): one engine client and its event stream.
pub struct DockerRuntime {
    docker: Docker,
    options: DockerOptions,
    events: broadcast::Sender<RuntimeEvent>,
}

impl DockerRuntime {
    /// Connects to the local engine, negotiates the API version, creates the instance network if
    /// missing and starts following lifecycle events. Call it on the runtime that will use it.
    pub async fn connect(options: DockerOptions) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_socket_defaults()
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        Self::connect_with(docker, options).await
    }

    /// Like [`DockerRuntime::connect`], to the engine at `host` (`unix:///path/to/docker.sock`):
    /// a second engine, such as the user-namespaced one of the `userns` test.
    pub async fn connect_to(host: &str, options: DockerOptions) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_host(host)
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        Self::connect_with(docker, options).await
    }

    async fn connect_with(docker: Docker, options: DockerOptions) -> Result<Self, RuntimeError> {
        let docker = docker.negotiate_version().await.map_err(|e| {
            RuntimeError::Unavailable(format!("no Docker engine answers on its socket: {e}"))
        })?;
        let runtime = Self {
            docker,
            options,
            events: broadcast::channel(1024).0,
        };
        runtime.ensure_network().await?;
        tokio::spawn(follow_events(
            runtime.docker.clone(),
            runtime.events.clone(),
        ));
        Ok(runtime)
    }

    /// The engine client, for checks beyond the trait (tests inspect hardening with it).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The name of the bridge network instances join ([`DockerOptions::network`]).
    pub fn network(&self) -> &str {
        &self.options.network
    }

    /// The instance network's id, host bridge interface and subnet (for the egress rules).
    pub async fn network_info(&self) -> Result<NetworkInfo, RuntimeError> {
        let network = self
            .docker
            .inspect_network(&self.options.network, None)
            .await?;
        let id = network.id.unwrap_or_default();
        let bridge = network
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
            .unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>()));
        let ipv6 = network.enable_ipv6.unwrap_or(false);
        let subnet = network
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.subnet));
        Ok(NetworkInfo {
            id,
            bridge,
            subnet,
            ipv6,
        })
    }

    /// Whether a network with exactly our name exists (`name` filters match substrings).
    async fn network_exists(&self) -> Result<bool, RuntimeError> {
        let filters = HashMap::from([("name", vec![self.options.network.clone()])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        Ok(networks
            .iter()
            .any(|n| n.name.as_deref() == Some(self.options.network.as_str())))
    }

    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        if self.network_exists().await? {
            return Ok(());
        }
        // Docker accepts duplicate network names, after which the name is ambiguous: processes on
        // this host take a file lock so only one creates it.
        let lock_path =
            std::env::temp_dir().join(format!("clawdeploy-network-{}.lock", self.options.network));
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| RuntimeError::Unavailable(e.to_string()))??;
        if !self.network_exists().await? {
            let request = NetworkCreateRequest {
                name: self.options.network.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    MANAGED_LABEL.to_string(),
                    "true".to_string(),
                )])),
                // Instances never talk to each other.
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "false".to_string(),
                )])),
                ..Default::default()
            };
            self.docker.create_network(request).await?;
        }
        drop(lock);
        Ok(())
    }

    fn volume_name(name: &str) -> String {
        format!("{name}-data")
    }
}

fn host_config(spec: &InstanceSpec, options: &DockerOptions) -> HostConfig {
    let port_key = format!("{}/tcp", spec.port);
    HostConfig {
        memory: Some((spec.resources.memory_mb as i64) << 20),
        memory_swap: Some((spec.resources.memory_mb as i64) << 20),
        nano_cpus: Some((spec.resources.cpus * 1e9) as i64),
        cpu_shares: Some(WARMING_CPU_SHARES),
        pids_limit: Some(spec.resources.pids),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        privileged: Some(false),
        init: Some(true),
        network_mode: Some(options.network.clone()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        mounts: Some(vec![
            Mount {
                target: Some(DATA_DIR.into()),
                source: Some(DockerRuntime::volume_name(&spec.name)),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
            Mount {
                target: Some("/tmp".into()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(TMP_BYTES),
                    mode: Some(0o1777),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        port_bindings: options.publish_loopback.then(|| {
            HashMap::from([(
                port_key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])
        }),
        ..Default::default()
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceRef, RuntimeError> {
        non_root_user(&spec.user)?;
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(MANAGED_LABEL.into(), "true".into());
        labels.insert(NAME_LABEL.into(), spec.name.clone());
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(Self::volume_name(&spec.name)),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(spec.user.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(vec![format!("{}/tcp", spec.port)]),
            labels: Some(labels),
            stop_timeout: Some(5),
            host_config: Some(host_config(spec, &self.options)),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&spec.name)
                        .build(),
                ),
                body,
            )
            .await;
        let created = match created {
            Ok(created) => self
                .upload(&created.id, &spec.user, &spec.files)
                .await
                .map(|()| created),
            Err(e) => Err(e.into()),
        };
        match created {
            Ok(created) => Ok(InstanceRef {
                id: created.id,
                name: spec.name.clone(),
            }),
            Err(e) => {
                // Leave nothing behind on failure.
                let _ = self
                    .docker
                    .remove_volume(
                        &Self::volume_name(&spec.name),
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
                Err(e)
            }
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| not_found(e, id))
    }

    async fn assign(&self, id: &str, files: &[ConfigFile]) -> Result<(), RuntimeError> {
        let inspected = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| not_found(e, id))?;
        let user = inspected.config.and_then(|c| c.user).unwrap_or_default();
        self.upload(id, &user, files).await
    }

    async fn remove_path(&self, id: &str, path: &str) -> Result<(), RuntimeError> {
        let path = safe_relative_path(path)?;
        let inspected = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| not_found(e, id))?;
        let user = inspected.config.and_then(|c| c.user).unwrap_or_default();
        // The instance's own user removes what it owns; `--` so no path reads as an option.
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::exec::CreateExecOptions {
                    cmd: Some(vec![
                        "rm".to_string(),
                        "-rf".to_string(),
                        "--".to_string(),
                        format!("{DATA_DIR}/{path}"),
                    ]),
                    user: Some(user),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| not_found(e, id))?;
        if let bollard::exec::StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while output.next().await.is_some() {}
        }
        match self.docker.inspect_exec(&exec.id).await?.exit_code {
            Some(0) => Ok(()),
            code => Err(RuntimeError::Refused(format!(
                "removing {path} in the instance exited with {code:?}"
            ))),
        }
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        // A frozen (sleeping) container cannot handle SIGTERM: thawed first (409: not paused).
        let _ = self.docker.unpause_container(id).await;
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptionsBuilder::default().t(5).build()),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(not_found(e, id)),
        }
    }

    async fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .restart_container(
                id,
                Some(RestartContainerOptionsBuilder::default().t(5).build()),
            )
            .await
            .map_err(|e| not_found(e, id))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let name = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| {
                c.config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(NAME_LABEL).cloned())
            });
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(name) = name {
            match self
                .docker
                .remove_volume(
                    &Self::volume_name(&name),
                    Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
                )
                .await
            {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Inspection, RuntimeError> {
        let inspected = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Ok(Inspection {
                    state: RunState::Missing,
                    address: None,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let state = inspected.state.unwrap_or_default();
        let run_state = if state.running == Some(true) {
            RunState::Running
        } else if state
            .started_at
            .as_deref()
            .is_none_or(|s| s.starts_with("0001-"))
        {
            RunState::Created
        } else {
            RunState::Exited {
                code: state.exit_code,
                oom_killed: state.oom_killed == Some(true),
            }
        };
        let port = inspected
            .config
            .and_then(|c| c.exposed_ports)
            .and_then(|ports| {
                ports
                    .first()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
            });
        let settings = inspected.network_settings.unwrap_or_default();
        let address = if run_state != RunState::Running {
            None
        } else if self.options.publish_loopback {
            port.and_then(|port| {
                let bindings = settings
                    .ports
                    .as_ref()?
                    .get(&format!("{port}/tcp"))?
                    .as_ref()?;
                let host_port = bindings.first()?.host_port.as_ref()?.parse::<u16>().ok()?;
                Some(SocketAddr::from(([127, 0, 0, 1], host_port)))
            })
        } else {
            let ip = settings
                .networks
                .as_ref()
                .and_then(|n| n.get(&self.options.network))
                .and_then(|e| e.ip_address.as_ref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port))
        };
        Ok(Inspection {
            state: run_state,
            address,
        })
    }

    async fn update_resources(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        let bytes = (resources.memory_mb as i64) << 20;
        let update = ContainerUpdateBody {
            memory: Some(bytes),
            memory_swap: Some(bytes),
            nano_cpus: Some((resources.cpus * 1e9) as i64),
            cpu_shares: Some(SERVING_CPU_SHARES),
            pids_limit: Some(resources.pids),
            ..Default::default()
        };
        self.docker
            .update_container(id, update)
            .await
            .map_err(|e| not_found(e, id))
    }

    /// Docker's one-shot stats, less inactive file pages (what `docker stats` shows): the
    /// kernel drops those under a lower limit, anonymous memory it cannot.
    async fn memory(&self, id: &str) -> Result<Option<MemoryUse>, RuntimeError> {
        let options = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let Some(stats) = self.docker.stats(id, Some(options)).next().await else {
            return Ok(None);
        };
        let memory = stats.map_err(|e| not_found(e, id))?.memory_stats;
        let Some(memory) = memory else {
            return Ok(None);
        };
        let inactive = memory
            .stats
            .as_ref()
            .and_then(|s| {
                s.get("total_inactive_file")
                    .or_else(|| s.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Ok(match (memory.usage, memory.limit) {
            (Some(usage), Some(limit)) => Some(MemoryUse {
                used_mb: usage.saturating_sub(inactive) >> 20,
                limit_mb: limit >> 20,
            }),
            _ => None,
        })
    }

    /// `Freeze`: the container is paused (cgroup freezer: no CPU, and nothing touches its memory
    /// back in) and its memory limit lowered to [`FROZEN_LIMIT_MB`], which makes the kernel push
    /// its pages out to swap before the call returns (cgroup v1 reclaims synchronously on a lowered
    /// `memory.limit_in_bytes`); memory plus swap stays capped at its limit. The kernel may refuse
    /// a limit it cannot reclaim down to in one pass (EBUSY, seen at 64 MiB): a second, larger one
    /// is tried. Without swap nothing can be pushed out: the container is thawed and the error
    /// returned, so the pool stops it instead.
    async fn sleep(&self, id: &str, how: Sleep) -> Result<(), RuntimeError> {
        if how == Sleep::Stop {
            return self.stop(id).await;
        }
        let limit = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| not_found(e, id))?
            .host_config
            .and_then(|h| h.memory_swap.or(h.memory))
            .filter(|bytes| *bytes > 0)
            .ok_or_else(|| RuntimeError::Refused(format!("container {id} has no memory limit")))?;
        self.docker
            .pause_container(id)
            .await
            .map_err(|e| not_found(e, id))?;
        let mut squeezed = Ok(());
        // An instance limited to less than the frozen limit has nothing to push out.
        for bytes in [FROZEN_LIMIT_MB << 20, (2 * FROZEN_LIMIT_MB) << 20]
            .into_iter()
            .filter(|bytes| *bytes < limit)
        {
            let squeeze = ContainerUpdateBody {
                memory: Some(bytes),
                memory_swap: Some(limit),
                ..Default::default()
            };
            squeezed = self
                .docker
                .update_container(id, squeeze)
                .await
                .map_err(|e| not_found(e, id));
            if squeezed.is_ok() {
                break;
            }
        }
        if squeezed.is_err() {
            let _ = self.docker.unpause_container(id).await;
        }
        squeezed
    }

    /// A frozen container gets its limits back (no swap again; its swapped pages come back as
    /// they are touched) and is thawed; a stopped one is started.
    async fn wake(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        let state = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| not_found(e, id))?
            .state
            .unwrap_or_default();
        if state.running != Some(true) {
            return self.start(id).await;
        }
        if state.paused != Some(true) {
            return Ok(());
        }
        // Memory plus swap capped at the limit again, so an awake tenant cannot grow into swap;
        // what it holds in swap now is at most what it held before, within that limit.
        let bytes = (resources.memory_mb as i64) << 20;
        let restore = ContainerUpdateBody {
            memory: Some(bytes),
            memory_swap: Some(bytes),
            ..Default::default()
        };
        self.docker
            .update_container(id, restore)
            .await
            .map_err(|e| not_found(e, id))?;
        self.docker
            .unpause_container(id)
            .await
            .map_err(|e| not_found(e, id))
    }

    async fn export_data(&self, id: &str) -> Result<Vec<u8>, RuntimeError> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(DATA_DIR)
            .build();
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            archive.extend_from_slice(&chunk.map_err(|e| not_found(e, id))?);
        }
        Ok(archive)
    }

    async fn list(&self) -> Result<Vec<InstanceRef>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{MANAGED_LABEL}=true")])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let name = c.labels.as_ref()?.get(NAME_LABEL)?.clone();
                Some(InstanceRef { id: c.id?, name })
            })
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

fn not_found(e: bollard::errors::Error, id: &str) -> RuntimeError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(id.to_string()),
        e => e.into(),
    }
}

impl DockerRuntime {
    /// Writes `files` into the container's data volume (a created or running container), owned
    /// by `user` (`uid:gid`) where the instance may write them, else by root.
    async fn upload(&self, id: &str, user: &str, files: &[ConfigFile]) -> Result<(), RuntimeError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut ids = user.split(':').map(|p| p.parse::<u64>().unwrap_or(65534));
        let uid = ids.next().unwrap_or(65534);
        let gid = ids.next().unwrap_or(uid);
        let archive = tar_archive(files, uid, gid)?;
        self.docker
            .upload_to_container(
                id,
                Some(
                    UploadToContainerOptionsBuilder::default()
                        .path(DATA_DIR)
                        .build(),
                ),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| not_found(e, id))
    }
}

/// A tar of `files` (with their parent directories, owned by the instance's user): the files the
/// instance may write owned by it (mode 0640), the others by root (0644, readable only).
fn tar_archive(files: &[ConfigFile], uid: u64, gid: u64) -> Result<Vec<u8>, RuntimeError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let path = safe_relative_path(&file.path)?;
        let mut parent = String::new();
        for part in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent = if parent.is_empty() {
                part.to_string()
            } else {
                format!("{parent}/{part}")
            };
            if dirs.insert(parent.clone()) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o750);
                header.set_uid(uid);
                header.set_gid(gid);
                header.set_size(0);
                builder.append_data(&mut header, format!("{parent}/"), std::io::empty())?;
            }
        }
        let mut header = tar::Header::new_gnu();
        if file.instance_writable {
            header.set_mode(0o640);
            header.set_uid(uid);
            header.set_gid(gid);
        } else {
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
        }
        header.set_size(file.contents.len() as u64);
        builder.append_data(&mut header, path, file.contents.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

/// Forwards the engine's start/die/oom events for platform containers, reconnecting after gaps
/// from the last event seen so none is lost while the stream was down.
async fn follow_events(docker: Docker, events: broadcast::Sender<RuntimeEvent>) {
    let mut since: Option<String> = None;
    loop {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["start".into(), "die".into(), "oom".into()]),
            ("label", vec![format!("{MANAGED_LABEL}=true")]),
        ]);
        let mut builder = EventsOptionsBuilder::default().filters(&filters);
        if let Some(since) = &since {
            builder = builder.since(since);
        }
        let mut stream = docker.events(Some(builder.build()));
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { break };
            if let Some(time) = event.time {
                since = Some(time.to_string());
            }
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id else { continue };
            let attributes = actor.attributes.unwrap_or_default();
            let forwarded = match event.action.as_deref() {
                Some("start") => RuntimeEvent::Started { id },
                Some("die") => RuntimeEvent::Died {
                    id,
                    exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                },
                Some("oom") => RuntimeEvent::OutOfMemory { id },
                _ => continue,
            };
            // No receiver yet is fine: nobody is watching.
            let _ = events.send(forwarded);
        }
        tracing::warn!("docker event stream ended; reconnecting");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
