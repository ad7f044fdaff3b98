//! Skills in a running instance (issue 18). OpenClaw's own installer does the installing: the
//! pool asks the instance's gateway, as the platform, for `skills.install {source: "clawhub"}`,
//! and OpenClaw fetches the archive from the platform's registry (its `CLAWHUB_URL`), checks its
//! verdict and checksum, and unpacks it into `workspace/skills/<slug>`, where its watcher picks it
//! up without a restart. Which skills are enabled, and their config, travel in the instance's
//! config (`skills.entries`, [`crate::openclaw::skills_section`]), rewritten by
//! [`PoolManager::reconfigure`]. Removing a registry skill deletes its folder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use clawdeploy_store::{Instance, InstanceStatus};

use crate::manager::{Error, PoolManager};
use crate::ready::NotReady;
use crate::work::Gateway;

/// How long to wait before asking again when OpenClaw is changing another package.
const BUSY_RETRY: Duration = Duration::from_millis(500);

impl PoolManager {
    /// The instance's lock for changes to what it runs (see `PoolManager::change_locks`).
    pub(crate) fn change_lock(&self, id: uuid::Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.change_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// The instance's gateway, connected as the platform; a sleeping instance is woken first.
    async fn platform_gateway(self: &Arc<Self>, instance: &Instance) -> Result<Gateway, Error> {
        let addr: SocketAddr = match instance.status {
            InstanceStatus::Sleeping => self.wake_instance(instance.id).await?,
            _ => instance
                .upstream
                .as_deref()
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| {
                    Error::NotReady(instance.subdomain.clone(), NotReady::NoContainer)
                })?,
        };
        let headers = self
            .config
            .platform_headers(instance)
            .ok_or_else(|| Error::Config("this instance kind has no platform identity".into()))?;
        Ok(Gateway::connect(addr, &headers).await?)
    }

    /// Installs the registry skill `slug` at `version` in the instance through OpenClaw's own
    /// installer, within `patience`; answers OpenClaw's result.
    pub async fn install_registry_skill(
        self: &Arc<Self>,
        instance: &Instance,
        slug: &str,
        version: &str,
        patience: Duration,
    ) -> Result<Value, Error> {
        let started = std::time::Instant::now();
        // One package change per instance at a time: OpenClaw refuses a second while one runs.
        let lock = self.change_lock(instance.id);
        let _one = tokio::time::timeout(patience, lock.lock())
            .await
            .map_err(|_| crate::work::WorkError::Timeout(patience))?;
        let mut gateway = self.platform_gateway(instance).await?;
        // `force`: the platform's record decides what is installed; leftovers of an earlier,
        // undone install must not block this one ("already exists").
        let params = json!({"source": "clawhub", "slug": slug, "version": version, "force": true});
        loop {
            let left = patience.saturating_sub(started.elapsed());
            match gateway
                .call_within("skills.install", params.clone(), left)
                .await
            {
                // OpenClaw changing a package on its own (the agent's installer) holds its
                // lifecycle lock for a moment: asked again, within the same patience.
                Err(crate::work::WorkError::Refused { answer, .. })
                    if answer.contains("LifecycleBusy") && left > BUSY_RETRY =>
                {
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Removes a registry skill's folder from the instance's workspace (OpenClaw's watcher drops
    /// it from the agent's skills); a sleeping instance is woken first.
    pub async fn remove_registry_skill(
        self: &Arc<Self>,
        instance: &Instance,
        slug: &str,
    ) -> Result<(), Error> {
        let lock = self.change_lock(instance.id);
        let _one = lock.lock().await;
        if instance.status == InstanceStatus::Sleeping {
            self.wake_instance(instance.id).await?;
        }
        let member = self
            .store
            .pool_member_for_instance(instance.id)
            .await?
            .and_then(|m| m.runtime_id)
            .ok_or_else(|| Error::NotReady(instance.subdomain.clone(), NotReady::NoContainer))?;
        Ok(self
            .runtime
            .remove_path(&member, &format!("workspace/skills/{slug}"))
            .await?)
    }

    /// OpenClaw's `skills.status` of the instance: every skill its agent sees, with eligibility.
    pub async fn skills_status(self: &Arc<Self>, instance: &Instance) -> Result<Value, Error> {
        let mut gateway = self.platform_gateway(instance).await?;
        Ok(gateway.call("skills.status", json!({})).await?)
    }
}
