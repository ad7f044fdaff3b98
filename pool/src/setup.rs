//! Builds the node's pool from `[runtime]` and `[pool]`: the runtime, its egress rules, and the
//! manager. Call it on the runtime that will drive the pool (tokio I/O stays on its runtime).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clawdeploy_config::{Config, RuntimeKind};
use clawdeploy_store::Store;

use crate::changes::ChangeBus;
use crate::instance_config::FixtureConfig;
use crate::manager::{PoolError, PoolManager, PoolSettings};
use crate::runtime::{Resources, Runtime};
use crate::{DockerOptions, DockerRuntime, EgressRules, ProcessRuntime};

/// The pool `config` asks for, or `None` when `runtime.kind = "none"`.
pub async fn pool_from_config(
    config: &Config,
    store: Store,
    bus: Arc<ChangeBus>,
) -> Result<Option<Arc<PoolManager>>, PoolError> {
    let rt = &config.runtime;
    let runtime: Arc<dyn Runtime> = match rt.kind {
        RuntimeKind::None => return Ok(None),
        RuntimeKind::Docker => {
            let docker = DockerRuntime::connect(DockerOptions {
                network: rt.docker_network.clone(),
                publish_loopback: rt.publish_loopback,
            })
            .await?;
            if rt.egress_rules {
                let allow = rt.llm_endpoint.parse().ok().into_iter().collect();
                let rules = EgressRules::new(&docker.network_info().await?, allow);
                if let Err(e) = rules.install().await {
                    tracing::error!("instance egress rules NOT installed ({e}); set runtime.egress_rules = false to run without them");
                    return Err(e.into());
                }
            }
            Arc::new(docker)
        }
        RuntimeKind::Process => {
            let dir = if rt.process_dir.as_os_str().is_empty() {
                config.server.data_dir.join("instances")
            } else {
                rt.process_dir.clone()
            };
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
    let settings = PoolSettings {
        capacity: pool.capacity_for(mem_total_mb()),
        node_id: node_id.clone(),
        min_idle: pool.min_idle,
        max_idle: pool.max_idle,
        tick: Duration::from_secs(pool.tick_secs),
        create_concurrency: pool.create_concurrency,
        image: rt.image.clone(),
        user: rt.user.clone(),
        port: rt.port,
        idle_resources: resources.clone(),
        ready_timeout: Duration::from_secs(pool.ready_timeout_secs),
        labels: BTreeMap::from([("clawdeploy.node".to_string(), node_id)]),
        env: vec![],
    };
    tracing::info!(
        runtime = runtime.kind(),
        node = %settings.node_id,
        capacity = settings.capacity,
        min_idle = settings.min_idle,
        "instance pool configured"
    );
    // Until the OpenClaw image and its config generator land, instances get the test fixture's
    // config format (config.json with the owner and SOUL.md).
    let instance_config = Arc::new(FixtureConfig {
        user_header: clawdeploy_proxy::edge::USER_HEADER.into(),
        resources,
    });
    Ok(Some(PoolManager::new(
        runtime,
        store,
        bus,
        instance_config,
        settings,
    )))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Total memory in MiB, from /proc/meminfo (4 GiB when unknown).
fn mem_total_mb() -> u64 {
    let meminfo = std::fs::read_to_string(PathBuf::from("/proc/meminfo")).unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(4096, |kb| kb / 1024)
}
