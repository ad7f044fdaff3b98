//! The config the test fixture image reads (`config.json` in its data directory). OpenClaw's own
//! config generator implements the same [`InstanceConfig`] trait.

use async_trait::async_trait;
use serde_json::json;

use clawdeploy_store::Instance;

use crate::manager::{Error, InstanceConfig};
use crate::runtime::ConfigFile;

/// Config for the protocol-speaking test fixture (never OpenClaw): the owner the edge's
/// trusted-proxy header must name, and the SOUL.md text.
pub struct FixtureConfig {
    /// The header the edge sets with the authenticated user.
    pub user_header: String,
}

#[async_trait]
impl InstanceConfig for FixtureConfig {
    async fn files(&self, instance: &Instance, _member: &str) -> Result<Vec<ConfigFile>, Error> {
        let config = json!({
            "owner": instance.user_id.to_string(),
            "soul": instance.soul_md,
            "userHeader": self.user_header,
            "platformUser": crate::work::PLATFORM_USER,
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

    /// The fixture speaks the gateway's work questions too (`cron.status`,
    /// `gateway.suspend.*`), and admits the platform by the same user header.
    fn platform_headers(&self, _instance: &Instance) -> Option<Vec<(String, String)>> {
        Some(vec![(
            self.user_header.clone(),
            crate::work::PLATFORM_USER.to_string(),
        )])
    }
}
