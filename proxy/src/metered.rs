//! The edge's hooks into `clawdeploy_metering`: rate limits in `request_filter`, the WebSocket
//! meter in the body filters, and the request metrics in `logging`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Histogram};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use clawdeploy_config::Tier;
use clawdeploy_metering::{Meter, RateLimiter, RelayTarget, Scope, WsRelay};

use crate::responses::EdgeError;
use crate::routes::{Route, RouteKind};

/// What the edge meters and limits with. Built once per process.
pub struct EdgeMetering {
    /// The node's message and token counters (shared with the LLM meter and the usage flush).
    pub meter: Arc<Meter>,
    /// The per-IP and per-user rate limits (`[rate_limits]`, shared through Redis when configured).
    pub limiter: Arc<RateLimiter>,
    /// Meter gateway WebSockets (`metering.enabled`).
    pub websockets: bool,
    /// The largest client text message held while it is decided, in bytes
    /// (`metering.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Where a quota refusal points the user (`metering.upgrade_url`, else `<app origin>/billing`).
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

    /// The relay for a WebSocket to `route`, when it is an instance's gateway; `platform`: the
    /// connection is the control API's own (it may ask for sub-agents, see
    /// [`RelayTarget::spawns_allowed`]).
    pub fn relay_for(&self, route: &Route, platform: bool) -> Option<Box<WsRelay>> {
        if !self.websockets || route.kind != RouteKind::Instance {
            return None;
        }
        let instance_id = route.instance_id.clone()?;
        Some(Box::new(WsRelay::new(RelayTarget {
            meter: self.meter.clone(),
            instance_id,
            // Every instance route carries its owner's tier (pool::routing::route_for); were one
            // ever missing, the cheapest tier's quotas apply, never more than paid for.
            tier: route.tier.unwrap_or(Tier::Free),
            billing_anchor_ms: route.billing_anchor_ms,
            max_message_bytes: self.max_message_bytes,
            upgrade_url: self.upgrade_url.clone(),
            spawns_allowed: platform,
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

/// Statuses with a cached counter handle; others are labelled by formatting the number.
const COMMON_STATUSES: [u16; 17] = [
    0, 101, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];
/// Method label values from a fixed set (bounded cardinality); the last one is "other".
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
/// Route kind labels: no route, then [`RouteKind`]'s in declaration order.
const KINDS: [&str; 4] = ["none", "instance", "control_plane", "operator"];

/// The per-request metrics, with handles registered on first use. `logging()` runs for every
/// request, and a labelled `metrics::counter!` costs a key build, a hash and a registry lookup
/// each time; a cached handle costs one atomic add.
pub struct RequestMetrics {
    /// `clawdeploy_http_requests_total` by kind × common status × method.
    requests: Box<[OnceLock<Counter>]>,
    /// `clawdeploy_http_request_duration_seconds` by kind.
    durations: [OnceLock<Histogram>; KINDS.len()],
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: (0..KINDS.len() * COMMON_STATUSES.len() * METHODS.len())
                .map(|_| OnceLock::new())
                .collect(),
            durations: Default::default(),
        }
    }
}

impl RequestMetrics {
    /// Records one finished request.
    pub fn record(
        &self,
        kind: Option<RouteKind>,
        status: u16,
        method: &http::Method,
        elapsed: Duration,
    ) {
        let k = match kind {
            None => 0,
            Some(RouteKind::Instance) => 1,
            Some(RouteKind::ControlPlane) => 2,
            Some(RouteKind::Operator) => 3,
        };
        let m = method_index(method);
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(s) => {
                let i = (k * COMMON_STATUSES.len() + s) * METHODS.len() + m;
                self.requests[i]
                    .get_or_init(|| requests_counter(k, status.to_string(), m))
                    .increment(1);
            }
            None => requests_counter(k, status.to_string(), m).increment(1),
        }
        self.durations[k]
            .get_or_init(|| {
                metrics::histogram!("clawdeploy_http_request_duration_seconds", "kind" => KINDS[k])
            })
            .record(elapsed.as_secs_f64());
    }
}

/// Records how long a request to a sleeping instance was held, by `outcome`.
pub fn record_wake_wait(elapsed: Duration, outcome: &'static str) {
    metrics::histogram!("clawdeploy_wake_wait_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

fn requests_counter(kind: usize, status: String, method: usize) -> Counter {
    metrics::counter!("clawdeploy_http_requests_total", "kind" => KINDS[kind], "status" => status, "method" => METHODS[method])
}

fn method_index(method: &http::Method) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_fixed_set_are_labelled_other() {
        assert_eq!(METHODS[method_index(&http::Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&http::Method::OPTIONS)], "OPTIONS");
        assert_eq!(METHODS[method_index(&http::Method::TRACE)], "other");
        let custom = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(METHODS[method_index(&custom)], "other");
    }
}
