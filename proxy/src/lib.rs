//! The ClawDeploy edge: a Pingora `ProxyHttp` that routes every request by its `Host` to a user's
//! instance, the in-process control plane, or an operator route, from an in-memory table.
//!
//! - [`routes`]: the route table (host → [`Route`]).
//! - [`edge`]: the request path as Pingora phases.
//! - [`identity`]: instance hosts admit only their owner's token, checked in memory.
//! - [`upgrade`]: WebSocket handshake checks.
//! - [`responses`]: errors and redirects the edge answers itself.
//! - [`drain`]: graceful shutdown that waits for in-flight requests.
//! - [`browser_session`]: instance hosts' browser sessions, cookie isolation and origin checks.
//! - [`live`]: open WebSockets by session, closed when their session is revoked.
//! - [`limits`]: request body limits.
//! - [`framing`]: request heads with bare-LF line endings are refused.
//! - [`sleep`]: instances' traffic, for putting idle ones to sleep, and waking them on a request.
//!
//! # Errors
//! No crate-wide error enum: nothing here propagates errors of several kinds. Each error type is
//! the contract of one public API, and its callers answer each variant differently:
//! [`EdgeError`](responses::EdgeError) is a refused request (status, code, message, answered in one
//! place), [`RouteError`] a refused route-table write (the admin API maps it to 422 or 409),
//! [`WakeError`] the outcome of the [`Waker`] seam the pool implements, `UpgradeError` and
//! [`Rejection`] refused upgrades and credentials.

#![warn(missing_docs)]

pub mod browser_session;
pub mod drain;
pub mod edge;
pub mod framing;
pub mod gateway_trust;
pub mod identity;
pub mod limits;
pub mod live;
pub mod metered;
pub mod responses;
pub mod routes;
pub mod sleep;
pub mod tls;
pub mod upgrade;

use std::sync::Arc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

pub use drain::{Drain, DrainingShutdown};
pub use edge::{EdgeProxy, EdgeSettings, CONTROL_PLANE_SECRET_HEADER};
pub use identity::{DenyAll, Identity, Rejection, TokenVerifier};
pub use metered::EdgeMetering;
pub use routes::{InstanceState, Resolution, Route, RouteError, RouteKind, RouteTable};
pub use sleep::{Activity, WakeError, Waker};
pub use tls::{ChallengeResponder, EdgeTls};

// Build-time guard: the edge needs Pingora with ClawDeploy's patch series (vendor/patches, see
// vendor/README.md). Each patch adds one of these markers to its crate's root. If this does not
// compile ("cannot find value `CLAWDEPLOY_PATCH_...`"), the build used unpatched crates.io sources:
// run `scripts/vendor-pingora.sh`, and check that the `pingora = "=X.Y.Z"` pin in Cargo.toml is
// the version the patches are for (Cargo silently ignores a [patch] whose version does not match).
const _: [&str; 3] = [
    pingora::CLAWDEPLOY_PATCH_BODY_BUFFERS,
    pingora::proxy::CLAWDEPLOY_PATCH_UPGRADE_RACE,
    pingora::proxy::CLAWDEPLOY_PATCH_HEADER_DEADLINE,
];

/// The edge's listeners: plain HTTP, and HTTPS with a certificate resolver chosen per SNI.
#[derive(Clone)]
pub struct Listeners {
    /// Plain-HTTP listen addresses (`IP:port`).
    pub http: Vec<String>,
    /// HTTPS listen addresses (`IP:port`); ignored without a `cert_resolver`.
    pub https: Vec<String>,
    /// Picks each handshake's certificate by SNI (the certificate manager's store); `None` serves
    /// no HTTPS.
    pub cert_resolver: Option<Arc<dyn pingora::tls::ResolvesServerCert>>,
}

/// Builds the Pingora service for `edge` on `listeners`.
pub fn edge_service(
    conf: &Arc<ServerConf>,
    edge: EdgeProxy,
    listeners: &Listeners,
) -> Service<pingora::proxy::HttpProxy<EdgeProxy>> {
    let mut service = pingora::proxy::http_proxy_service_with_name(conf, edge, "clawdeploy edge");
    for addr in &listeners.http {
        service.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(l4_buffers()));
    }
    if let Some(resolver) = &listeners.cert_resolver {
        for addr in &listeners.https {
            // The resolver picks the certificate, `RecordSni` keeps the SNI for `tls::check_sni`;
            // ALPN offers h2 and http/1.1.
            match pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(tls::RecordSni)) {
                Ok(mut tls) => {
                    tls.set_cert_resolver(resolver.clone());
                    tls.enable_h2();
                    service.add_listener(
                        ListenerConfig::tcp(addr.as_str())
                            .tls(tls)
                            .l4_buffer(l4_buffers()),
                    );
                }
                Err(e) => tracing::error!(%addr, "cannot set up the HTTPS listener: {e}"),
            }
        }
    }
    service
}

/// Socket buffers of every edge listener: no read buffer in front of the socket. Pingora reads
/// headers and bodies into buffers of its own, so a read buffer only adds a copy, and its default
/// 64 KiB would be held for the whole life of every connection, idle WebSockets included.
pub fn l4_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}
