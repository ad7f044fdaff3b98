//! The edge's hooks into `clawdeploy_metering`: rate limits in `request_filter`, the WebSocket
//! meter in the body filters, and the request metrics in `logging`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use clawdeploy_metering::{Meter, RateLimiter, RelayTarget, Scope, WsRelay};

use crate::responses::EdgeError;
use crate::routes::{Route, RouteKind};

/// What the edge meters and limits with. Built once per process.
pub struct EdgeMetering {
    pub meter: Arc<Meter>,
    pub limiter: Arc<RateLimiter>,
    /// Meter gateway WebSockets (`metering.enabled`).
    pub websockets: bool,
    pub max_message_bytes: usize,
    pub upgrade_url: Arc<str>,
}

impl EdgeMetering {
    /// The 429 for a request over a rate limit.
    pub fn too_many(&self, scope: Scope, wait: Duration) -> EdgeError {
        metrics::counter!("clawdeploy_rate_limited_total", "scope" => scope.as_str()).increment(1);
        let (what, limit) = match scope {
            Scope::Ip => ("from your address", self.limiter.per_ip_per_minute),
            Scope::User => ("for your account", self.limiter.per_user_per_minute),
        };
        let secs = wait.as_secs().max(1);
        EdgeError::new(
            429,
            "RATE_LIMITED",
            format!("Too many requests {what} (at most {limit} a minute); retry in {secs} s."),
        )
        .retry_after(secs)
    }

    /// The relay for a WebSocket to `route`, when it is an instance's gateway.
    pub fn relay_for(&self, route: &Route) -> Option<Box<WsRelay>> {
        if !self.websockets || route.kind != RouteKind::Instance {
            return None;
        }
        let instance_id = route.instance_id.clone()?;
        Some(Box::new(WsRelay::new(RelayTarget {
            meter: self.meter.clone(),
            instance_id,
            tier: route.tier.clone().unwrap_or_else(|| Arc::from("free")),
            max_message_bytes: self.max_message_bytes,
            upgrade_url: self.upgrade_url.clone(),
        })))
    }
}

/// Paths never rate limited: ACME challenges and health checks.
pub fn exempt_from_rate_limits(path: &str) -> bool {
    path.starts_with("/.well-known/acme-challenge/")
        || matches!(path, "/healthz" | "/readyz" | "/livez")
}

/// Client → gateway bytes through the meter; refusals are answered to the client here when the
/// gateway's stream is between messages (else they follow in the response filter).
pub async fn client_body(
    session: &mut Session,
    relay: &mut WsRelay,
    body: &mut Option<Bytes>,
) -> Result<()> {
    if let Some(chunk) = body.take() {
        match relay.client_chunk(chunk) {
            Ok(out) => *body = Some(out),
            Err(e) => {
                tracing::info!("gateway WebSocket closed by the edge: {e}");
                let _ = session
                    .write_response_body(Some(Bytes::from(e.close_frame())), true)
                    .await;
                return Err(Error::explain(ErrorType::ReadError, e.to_string()));
            }
        }
    }
    for frame in relay.take_injections_if_at_boundary() {
        session
            .write_response_body(Some(Bytes::from(frame)), false)
            .await?;
    }
    Ok(())
}

/// Gateway → client bytes through the meter.
pub fn server_body(relay: &mut WsRelay, body: &mut Option<Bytes>) -> Result<()> {
    if let Some(chunk) = body.take() {
        match relay.server_chunk(chunk) {
            Ok(out) => *body = Some(out),
            Err(e) => {
                tracing::warn!("gateway WebSocket closed by the edge: {e}");
                *body = Some(Bytes::from(e.close_frame()));
                return Err(Error::explain(ErrorType::ReadError, e.to_string()));
            }
        }
    }
    Ok(())
}

/// Status label values without formatting the common ones.
pub fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow;
    Cow::Borrowed(match status {
        0 => "0",
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return Cow::Owned(other.to_string()),
    })
}

/// Method label values from a fixed set (bounded cardinality).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
