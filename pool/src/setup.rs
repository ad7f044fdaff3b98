//! Builds the node's pool from `[runtime]` and `[pool]`: the runtime, its egress rules, and the
//! manager. Call it on the runtime that will drive the pool (tokio I/O stays on its runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clawdeploy_config::instances::{InstanceConfigKind, OPENCLAW_IMAGE};
use clawdeploy_config::{Config, LlmListen, RuntimeKind, SleepMode};
use clawdeploy_llm_egress::ListenerHandoff;
use clawdeploy_store::{Keyring, Store};

use crate::instance_config::FixtureConfig;
use crate::manager::{Error, InstanceConfig, PoolManager, PoolSettings};
use crate::openclaw::OpenClawConfig;
use crate::runtime::{Resources, Runtime, Sleep};
use crate::{DockerOptions, DockerRuntime, EgressRules, ProcessRuntime};
use clawdeploy_store::changes::ChangeBus;

/// The pool `config` asks for, or `None` when `runtime.kind = "none"`. With `llm.listen = "auto"`
/// and OpenClaw instances, the LLM meter's listener is bound here, on the address the chosen
/// runtime's instances reach, and handed to the meter service through `llm_meter`.
pub async fn pool_from_config(
    config: &Config,
    store: Store,
    bus: Arc<ChangeBus>,
    llm_meter: Option<&ListenerHandoff>,
    keyring: Arc<Keyring>,
    activity: Arc<clawdeploy_proxy::Activity>,
) -> Result<Option<Arc<PoolManager>>, Error> {
    let rt = &config.runtime;
    // The addresses instances see the edge's connections come from.
    let mut trusted_proxies = vec![];
    let openclaw = rt.config == InstanceConfigKind::OpenClaw;
    let docker_image = if rt.image.is_empty() && openclaw {
        OPENCLAW_IMAGE.to_string()
    } else {
        rt.image.clone()
    };
    let connect = || {
        DockerRuntime::connect(DockerOptions {
            network: rt.docker_network.clone(),
            publish_loopback: rt.publish_loopback,
        })
    };
    // `auto`: Docker with the image when both are there, else OpenClaw as local processes when
    // it is installed, else nothing (said in the log).
    let (kind, docker) = match rt.kind {
        RuntimeKind::None => return Ok(None),
        RuntimeKind::Docker => (RuntimeKind::Docker, Some(connect().await?)),
        RuntimeKind::Process => (RuntimeKind::Process, None),
        RuntimeKind::Auto => {
            let connected = connect().await;
            let image_built = match &connected {
                Ok(docker) => docker.docker().inspect_image(&docker_image).await.is_ok(),
                Err(_) => false,
            };
            match connected {
                Ok(docker) if image_built => (RuntimeKind::Docker, Some(docker)),
                _ if openclaw && crate::image::host_install_ready() => {
                    tracing::warn!(
                        "no Docker Engine with the OpenClaw image: OpenClaw runs as local processes, \
                         NOT isolated; development only"
                    );
                    (RuntimeKind::Process, None)
                }
                Err(e) => {
                    tracing::warn!(
                        "no Docker Engine answers ({e}): instances are recorded but not started. Run \
                         `clawdeploy image build` (with Docker for containers), or set [runtime] kind"
                    );
                    return Ok(None);
                }
                Ok(_) => {
                    tracing::warn!(
                        image = %docker_image,
                        "the instance image is not built: instances are recorded but not started. Run `clawdeploy image build`"
                    );
                    return Ok(None);
                }
            }
        }
    };
    let image = match kind {
        RuntimeKind::Process if rt.image.is_empty() && openclaw => {
            let launcher = crate::image::write_launcher(&config.server.data_dir.join("bin"))
                .map_err(crate::RuntimeError::from)?;
            launcher.to_string_lossy().into_owned()
        }
        _ => docker_image,
    };
    // Where the LLM meter listens: providers' baseUrl and the egress rules need the address.
    let gateway = match &docker {
        Some(docker) => network_gateways(docker).await?,
        None => vec![],
    };
    let meter_address = if openclaw {
        match config.llm.listen_mode() {
            LlmListen::Off => {
                tracing::warn!("llm.listen = \"off\": instances get the users' provider keys and LLM tokens are not counted (development only)");
                None
            }
            LlmListen::At(address) => Some(address),
            LlmListen::Auto(port) => {
                let ip = match &docker {
                    // Docker: the bridge's own address, which only the instance network routes to
                    // (and the egress rules open to instances).
                    Some(_) => gateway
                        .iter()
                        .find_map(|g| g.parse::<std::net::Ipv4Addr>().ok())
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "llm.listen = \"auto\": the Docker network {:?} has no IPv4 gateway address",
                                rt.docker_network
                            ))
                        })?,
                    // Local processes share the host's loopback.
                    None => std::net::Ipv4Addr::LOCALHOST,
                };
                let Some(handoff) = llm_meter else {
                    return Err(Error::Config(
                        "llm.listen = \"auto\" but this process runs no LLM meter".into(),
                    ));
                };
                let listener = bind_meter((ip, port).into()).await?;
                let address = listener
                    .local_addr()
                    .map_err(crate::runtime::RuntimeError::from)?;
                handoff.provide(listener);
                tracing::info!(%address, "LLM meter address for instances");
                Some(address)
            }
        }
    } else {
        None
    };
    let runtime: Arc<dyn Runtime> = match docker {
        Some(docker) => {
            if rt.egress_rules {
                // The LLM meter and any extra endpoint instances may reach.
                let allow = meter_address
                    .into_iter()
                    .chain(rt.llm_endpoint.parse().ok())
                    .collect();
                let rules = EgressRules::new(&docker.network_info().await?, allow);
                if let Err(e) = rules.install().await {
                    tracing::error!("instance egress rules NOT installed ({e}); set runtime.egress_rules = false to run without them");
                    return Err(e.into());
                }
            }
            trusted_proxies = gateway;
            Arc::new(docker)
        }
        None => {
            let dir = if rt.process_dir.as_os_str().is_empty() {
                config.server.data_dir.join("instances")
            } else {
                rt.process_dir.clone()
            };
            trusted_proxies = vec!["127.0.0.1".to_string()];
            Arc::new(ProcessRuntime::new(dir))
        }
    };
    let pool = &config.pool;
    let node_id = if pool.node_id.is_empty() {
        host_name()
    } else {
        pool.node_id.clone()
    };
    let resources = Resources {
        memory_mb: pool.memory_mb,
        cpus: pool.cpus,
        pids: pool.pids,
    };
    let mut settings = PoolSettings {
        capacity: pool.capacity_for(mem_total_mb()),
        node_id: node_id.clone(),
        min_idle: pool.min_idle,
        max_idle: pool.max_idle,
        tick: Duration::from_secs(pool.tick_secs),
        create_concurrency: pool.create_concurrency,
        image,
        user: rt.user.clone(),
        port: rt.port,
        idle_resources: resources,
        tiers: config.tiers.clone(),
        idle_stop: (pool.idle_stop_secs > 0).then(|| Duration::from_secs(pool.idle_stop_secs)),
        sleep: sleep_mode(pool.sleep, kind),
        reserve_mb: pool.reservation_mb(),
        ready_timeout: Duration::from_secs(pool.ready_timeout_secs),
        labels: BTreeMap::from([("clawdeploy.node".to_string(), node_id)]),
        env: vec![],
    };
    let user_header = clawdeploy_proxy::edge::USER_HEADER.to_string();
    let instance_config: Arc<dyn InstanceConfig> = match rt.config {
        InstanceConfigKind::Fixture => Arc::new(FixtureConfig { user_header }),
        InstanceConfigKind::OpenClaw => {
            if trusted_proxies.is_empty() {
                return Err(Error::Config(format!(
                    "the Docker network {:?} has no gateway address for OpenClaw to trust",
                    rt.docker_network
                )));
            }
            let generator = OpenClawConfig {
                user_header,
                allow_loopback: kind == RuntimeKind::Process,
                trusted_proxies,
                data_dir: if kind != RuntimeKind::Process {
                    crate::docker::DATA_DIR.into()
                } else {
                    String::new()
                },
                port: rt.port,
                origin_templates: {
                    // Pages may be loaded from either listener (and behind a TLS terminator).
                    let mut origins = vec![
                        config.origin(false, "{host}"),
                        config.origin(true, "{host}"),
                        "https://{host}".to_string(),
                    ];
                    origins.dedup();
                    origins
                },
                base_domain: config.server.base_domain.clone(),
                keys: Some((store.clone(), keyring)),
                llm_meter: meter_address.map(|address| {
                    (
                        address.to_string(),
                        config.secrets.jwt_key.as_bytes().to_vec(),
                    )
                }),
                // The edge derives the same headers from the same key (main.rs).
                gateway_proof_key: config.secrets.jwt_key.as_bytes().to_vec(),
                tiers: config.tiers.clone(),
                credit_providers: ["openai", "anthropic", "google"]
                    .into_iter()
                    .filter(|p| config.billing.platform_key(p).is_some())
                    .map(str::to_string)
                    .collect(),
            };
            // OpenClaw's own skill installer fetches from the platform's registry, served
            // beside the LLM meter (clawdeploy_skills::registry); no meter, no registry.
            if let Some(address) = meter_address {
                settings
                    .env
                    .push(("CLAWHUB_URL".into(), format!("http://{address}")));
                // Channels run when the owner connects one (a `channels` section in the config,
                // which OpenClaw applies live); the image turns them off for instances without
                // the meter, whose address serves the relay they reach the apps through.
                settings
                    .env
                    .push(("OPENCLAW_SKIP_CHANNELS".into(), "0".into()));
            }
            // The pool rewrites openclaw.json through Docker's archive upload, which replaces the
            // file (a new inode). OpenClaw's file watcher (chokidar, inotify) missed such a second
            // replacement in about half of our runs, so a custom domain's origin never applied;
            // polling the file's stat notices every replacement (one stat per 100 ms).
            settings
                .env
                .push(("CHOKIDAR_USEPOLLING".into(), "true".into()));
            Arc::new(generator)
        }
    };
    tracing::info!(
        runtime = runtime.kind(),
        node = %settings.node_id,
        capacity = settings.capacity,
        reserve_mb = settings.reserve_mb,
        sleep = ?settings.sleep,
        min_idle = settings.min_idle,
        "instance pool configured"
    );
    Ok(Some(PoolManager::new(
        runtime,
        store,
        bus,
        instance_config,
        settings,
        activity,
    )))
}

/// Binds the LLM meter's listener. The bridge address can lag the network's creation by a moment,
/// so an address not (yet) on this host is retried for a few seconds; a port in use fails at once.
async fn bind_meter(address: std::net::SocketAddr) -> Result<std::net::TcpListener, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(address) {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "the LLM meter cannot listen on {address} ({e}); set llm.port to a free port, or llm.listen"
                )))
            }
        }
    }
}

/// The instance network's gateway addresses: where the edge's connections come from, as the
/// containers see them (directly, or through Docker's loopback port publishing).
async fn network_gateways(docker: &DockerRuntime) -> Result<Vec<String>, Error> {
    let network = docker
        .docker()
        .inspect_network(docker.network(), None)
        .await
        .map_err(crate::runtime::RuntimeError::from)?;
    Ok(network
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.gateway)
        .filter(|g| !g.is_empty())
        .collect())
}

/// `pool.sleep` for this node: `auto` freezes where the runtime can (Docker) and the node has
/// swap to push frozen memory to, and stops otherwise.
fn sleep_mode(mode: SleepMode, kind: RuntimeKind) -> Sleep {
    match mode {
        SleepMode::Stop => Sleep::Stop,
        SleepMode::Freeze => Sleep::Freeze,
        SleepMode::Auto if kind != RuntimeKind::Process && swap_total_mb() > 0 => Sleep::Freeze,
        SleepMode::Auto => Sleep::Stop,
    }
}

/// Swap configured on this node, in MiB (`SwapTotal` in /proc/meminfo).
fn swap_total_mb() -> u64 {
    meminfo_mb("SwapTotal:").unwrap_or(0)
}

/// This machine's host name (the default node id).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Total memory in MiB, from /proc/meminfo (4 GiB when unknown).
fn mem_total_mb() -> u64 {
    meminfo_mb("MemTotal:").unwrap_or(4096)
}

/// One /proc/meminfo field in MiB.
fn meminfo_mb(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string(PathBuf::from("/proc/meminfo")).ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}
