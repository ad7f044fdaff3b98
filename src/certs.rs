//! Wiring of HTTPS (issue #6): the certificate manager, its store loaded before the listener
//! starts, and the request-path hooks (ACME challenges, redirect, HSTS).

use std::sync::Arc;

use anyhow::Context;

use clawdeploy_certs::CertManager;
use clawdeploy_config::Config;
use clawdeploy_proxy::{ChallengeResponder, EdgeTls, RouteTable};
use clawdeploy_store::{Keyring, Store};

/// The manager with every stored certificate and active domain loaded from `store`, or `None`
/// when `tls.listen` is empty.
pub async fn start(
    config: &Config,
    keyring: Arc<Keyring>,
    routes: Arc<RouteTable>,
    store: &Store,
) -> anyhow::Result<Option<Arc<CertManager>>> {
    if config.tls.listen.is_empty() {
        return Ok(None);
    }
    let manager = CertManager::new(config, keyring, routes).context("[tls]")?;
    let loaded = manager.load_all(store).await?;
    if let Some(ca) = manager.local_ca() {
        tracing::info!(ca = %ca.ca_path().display(), "HTTPS certificates signed by the local CA");
    }
    tracing::info!(https = %config.tls.listen, certificates = loaded, mode = ?config.tls.mode, "HTTPS listener");
    Ok(Some(manager))
}

/// The proxy's HTTPS hooks.
pub fn edge_tls(config: &Config, manager: &Arc<CertManager>) -> EdgeTls {
    let https_port = config
        .tls
        .listen
        .parse::<std::net::SocketAddr>()
        .map_or(443, |a| a.port());
    EdgeTls::new(
        Some(manager.challenges() as Arc<dyn ChallengeResponder>),
        config.tls.redirect_http,
        https_port,
        config.tls.hsts_max_age_secs,
    )
}
