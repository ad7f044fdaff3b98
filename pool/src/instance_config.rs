//! The config the test fixture image reads (`config.json` in its data directory). OpenClaw's own
//! config generator implements the same [`InstanceConfig`] trait.

use async_trait::async_trait;
use serde_json::json;

use clawdeploy_store::{Instance, Tier};

use crate::manager::{InstanceConfig, PoolError};
use crate::runtime::{ConfigFile, Resources};

/// Config for the protocol-speaking test fixture (never OpenClaw): the owner the edge's
/// trusted-proxy header must name, and the SOUL.md text.
pub struct FixtureConfig {
    /// The header the edge sets with the authenticated user.
    pub user_header: String,
    /// The limits of every instance, whatever its tier.
    pub resources: Resources,
}

#[async_trait]
impl InstanceConfig for FixtureConfig {
    async fn files(&self, instance: &Instance) -> Result<Vec<ConfigFile>, PoolError> {
        let config = json!({
            "owner": instance.user_id.to_string(),
            "soul": instance.soul_md,
            "userHeader": self.user_header,
        });
        let mut files = vec![ConfigFile::platform(
            "config.json",
            config.to_string().into_bytes(),
        )];
        if let Some(soul) = &instance.soul_md {
            files.push(ConfigFile::instance(
                "workspace/SOUL.md",
                soul.clone().into_bytes(),
            ));
        }
        Ok(files)
    }

    fn resources(&self, _tier: Tier) -> Resources {
        self.resources.clone()
    }
}
