//! The edge's request path, as Pingora phases:
//!
//! `request_filter`: request id → CRLF-only head (`framing`) → header limits → Host → route lookup →
//! state check → upgrade check;
//! `upstream_peer`: the route's address with timeouts for plain HTTP or WebSocket;
//! `upstream_request_filter`: forwarding headers overwritten, client identity headers stripped;
//! `fail_to_proxy`: upstream failures become a 502 page that names the state; `logging`: access log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, OrErr, Result};

use clawdeploy_config::{normalize_host, ServerConfig};

use crate::browser_session::{self, Denied};
use crate::drain::{Drain, InflightGuard};
use crate::framing;
use crate::gateway_trust;
use crate::identity::{bearer_token, Identity, Rejection, TokenVerifier};
use crate::limits;
use crate::live::{self, LiveConnections, TunnelGuard};
use crate::metered::{self, EdgeMetering, RequestMetrics};
use crate::responses::{write_error, write_redirect, write_see_other, EdgeError};
use crate::routes::{InstanceState, Resolution, Route, RouteKind, RouteTable};
use crate::sleep::{Activity, ActivityGuard, WakeError, Waker};
use crate::tls::EdgeTls;
use crate::upgrade::{self, check_upgrade, Upgrade};

/// Request headers a client may not set: the edge is the only source of forwarding and identity
/// information its upstreams see. Prefixes are matched case-insensitively (header names are lower case).
const STRIPPED_PREFIXES: [&str; 4] = [
    "x-forwarded-",
    "x-auth-request-",
    "x-clawdeploy-",
    // OpenClaw's own proxy headers (`x-openclaw-scopes` widens an HTTP call to admin when absent,
    // and narrows it when present): only the edge sets them.
    "x-openclaw-",
];
const STRIPPED_HEADERS: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-remote-user",
    "remote-user",
    "x-user",
    "x-user-id",
    "x-authenticated-user",
    "x-client-ip",
];

/// Timeouts and limits of the request path, from `[server]`.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// How long connecting to an upstream may take before the edge answers 502
    /// (`server.connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// How long a plain HTTP exchange may wait on a silent upstream (504) or client
    /// (`server.read_timeout_secs`).
    pub read_timeout: Duration,
    /// How long an upgraded WebSocket may stay silent, both ways, before it is closed
    /// (`server.ws_idle_timeout_secs`); replaces `read_timeout` once upgraded.
    pub ws_idle_timeout: Duration,
    /// Largest request line plus headers, in bytes; larger requests get 431
    /// (`server.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes: a larger `Content-Length` gets 413, a longer chunked body is
    /// cut (`server.max_body_bytes`).
    pub max_body_bytes: u64,
    /// How long a client may take to send a whole request header, idle keep-alive included
    /// (`server.header_timeout_secs`).
    pub header_timeout: Duration,
    /// Log one `access` line per finished request (`server.access_log`).
    pub access_log: bool,
}

impl From<&ServerConfig> for EdgeSettings {
    fn from(s: &ServerConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_secs(s.read_timeout_secs),
            ws_idle_timeout: Duration::from_secs(s.ws_idle_timeout_secs),
            max_header_bytes: s.max_header_bytes,
            max_body_bytes: s.max_body_bytes,
            header_timeout: Duration::from_secs(s.header_timeout_secs),
            access_log: s.access_log,
        }
    }
}

/// How a client on the edge's own machine is named to instances (see `upstream_request_filter`).
pub const LOCAL_CLIENT: &str = "192.0.2.1";

/// The header carrying the control plane's per-process secret (see [`EdgeProxy::with_control_plane_secret`]).
pub const CONTROL_PLANE_SECRET_HEADER: &str = "x-clawdeploy-edge";

/// [`gateway_trust::OWNER_SCOPES`] as one header value (checked by a test).
const OWNER_SCOPES_VALUE: &str =
    "operator.read,operator.write,operator.approvals,operator.questions";

/// The header OpenClaw's trusted-proxy mode reads the authenticated user from.
pub const USER_HEADER: &str = "x-forwarded-user";

/// The edge proxy: one per process, shared by every worker thread.
pub struct EdgeProxy {
    routes: Arc<RouteTable>,
    settings: EdgeSettings,
    drain: Arc<Drain>,
    verifier: Arc<dyn TokenVerifier>,
    /// Open WebSockets by session, closed on revocation (see [`crate::live`]).
    live: Option<Arc<LiveConnections>>,
    request_ids: RequestIds,
    metering: Option<Arc<EdgeMetering>>,
    request_metrics: RequestMetrics,
    tls: EdgeTls,
    /// Sent to the control plane with every request passed to it, which refuses requests without.
    control_plane_secret: Option<HeaderValue>,
    /// The key of each instance's proof header (see [`crate::gateway_trust`]).
    gateway_proof_key: Option<Arc<[u8]>>,
    /// Instances' traffic, and who wakes a sleeping one (see [`crate::sleep`]); `None`: no
    /// instance ever sleeps, and a sleeping route is answered 503.
    sleep: Option<(Arc<Activity>, Arc<dyn Waker>)>,
}

impl EdgeProxy {
    /// The edge over `routes`, with `settings`, counting requests in `drain`, and checking instance
    /// hosts' tokens with `verifier`; metering, TLS, the control-plane secret and the gateway proof
    /// key are added by the `with_*` builders. Sets Pingora's process-wide request-header deadline
    /// from `settings.header_timeout`.
    pub fn new(
        routes: Arc<RouteTable>,
        settings: EdgeSettings,
        drain: Arc<Drain>,
        verifier: Arc<dyn TokenVerifier>,
    ) -> Self {
        // Slow-header clients: a deadline for the whole header (patched pingora-proxy).
        pingora::proxy::set_request_header_timeout(Some(settings.header_timeout));
        Self {
            live: verifier.live_connections(),
            routes,
            settings,
            drain,
            verifier,
            request_ids: RequestIds::new(),
            metering: None,
            request_metrics: RequestMetrics::default(),
            tls: EdgeTls::default(),
            control_plane_secret: None,
            gateway_proof_key: None,
            sleep: None,
        }
    }

    /// Records instances' traffic in `activity` and holds a request to a sleeping instance while
    /// `waker` wakes it (see [`crate::sleep`]).
    pub fn with_sleep(mut self, activity: Arc<Activity>, waker: Arc<dyn Waker>) -> Self {
        self.sleep = Some((activity, waker));
        self
    }

    /// The key of the per-instance header each gateway requires of its proxy
    /// ([`crate::gateway_trust::proof_header`]); the pool writes the same into each config.
    pub fn with_gateway_proof_key(mut self, key: &[u8]) -> Self {
        self.gateway_proof_key = Some(key.into());
        self
    }

    /// The secret the control plane requires of every request (it listens on loopback, where
    /// other processes could otherwise call it and forge the forwarding headers it trusts).
    pub fn with_control_plane_secret(mut self, secret: &str) -> Self {
        self.control_plane_secret = HeaderValue::try_from(secret).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        self
    }

    /// ACME challenges, HTTPS redirect and HSTS (see [`crate::tls`]).
    pub fn with_tls(mut self, tls: EdgeTls) -> Self {
        self.tls = tls;
        self
    }

    /// Rate limits, message quotas and the WebSocket meter (see `metered`).
    pub fn with_metering(mut self, metering: Arc<EdgeMetering>) -> Self {
        self.metering = Some(metering);
        self
    }
}

/// Per-request state.
pub struct EdgeCtx {
    started: Instant,
    request_id: String,
    /// The `Host` header as sent (for `X-Forwarded-Host` and redirects).
    raw_host: String,
    /// Normalised host, the route table key.
    host: String,
    route: Option<Route>,
    /// The owner, on an instance host.
    identity: Option<Identity>,
    /// The bearer token's verification, done at most once per request (`None`: not yet).
    bearer: Option<Option<Result<Identity, Rejection>>>,
    websocket: bool,
    /// Keeps an owner's WebSocket registered for closing on revocation while it is open.
    tunnel: Option<TunnelGuard>,
    /// A one-time code exchange on an instance host, passed to the control plane.
    session_exchange: bool,
    /// The meter of a gateway WebSocket, once upgraded.
    relay: Option<Box<clawdeploy_metering::WsRelay>>,
    /// The upstream answered 101: the body filters carry WebSocket frames.
    upgraded: bool,
    /// Frame boundaries of a registered tunnel's gateway stream when no meter parses it, so a
    /// revocation's close frame is never inserted inside a frame.
    server_frames: Option<clawdeploy_metering::FrameParser>,
    /// Request body bytes forwarded so far (bounded by `max_body_bytes`).
    body_bytes: u64,
    /// Counts this request as the instance's traffic until it ends (see [`crate::sleep`]).
    activity: Option<ActivityGuard>,
    _inflight: InflightGuard,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            started: Instant::now(),
            request_id: String::new(),
            raw_host: String::new(),
            host: String::new(),
            route: None,
            identity: None,
            bearer: None,
            websocket: false,
            tunnel: None,
            session_exchange: false,
            relay: None,
            upgraded: false,
            server_frames: None,
            body_bytes: 0,
            activity: None,
            _inflight: self.drain.enter(),
        }
    }

    /// No downstream modules. Pingora's default adds a response-compression module at level 0
    /// (disabled), which still cost a context allocation and a call per phase on every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<bool> {
        ctx.request_id = self.request_ids.take_or_generate(session.req_header());
        if let Err(error) = framing::check_line_endings(session) {
            write_error(session, &error, &ctx.request_id).await?;
            return Ok(true);
        }
        if self.drain.is_draining() {
            session.set_keepalive(None);
        }
        if self
            .tls
            .intercept(session, is_tls(session), &ctx.request_id)
            .await?
        {
            return Ok(true);
        }
        if let Some(error) = self.rate_limit_ip(session, ctx).await {
            write_error(session, &error, &ctx.request_id).await?;
            return Ok(true);
        }
        match self.route_request(session, ctx) {
            Ok(Routed::Proxy) => {
                if let Some(error) = self.rate_limit_user(session, ctx).await {
                    write_error(session, &error, &ctx.request_id).await?;
                    return Ok(true);
                }
                if let Some(error) = self.hold_for_wake(session, ctx).await {
                    write_error(session, &error, &ctx.request_id).await?;
                    return Ok(true);
                }
                if ctx.websocket {
                    if ctx.route.as_ref().map(|r| r.kind) == Some(RouteKind::Instance) {
                        upgrade::strip_extensions(session.req_header_mut());
                    }
                    if let (Some(m), Some(route)) = (&self.metering, &ctx.route) {
                        // The control API's own connection (`/api/agents`) proves itself with the
                        // per-process secret, which the edge strips before the instance sees it.
                        let platform = self.control_plane_secret.as_ref().is_some_and(|secret| {
                            session
                                .req_header()
                                .headers
                                .get(CONTROL_PLANE_SECRET_HEADER)
                                == Some(secret)
                        });
                        ctx.relay = m.relay_for(route, platform);
                    }
                }
                Ok(false)
            }
            Ok(Routed::RedirectToApp) => {
                let location = self.app_url(session, ctx);
                write_redirect(session, &location, &ctx.request_id).await?;
                Ok(true)
            }
            Ok(Routed::Login) => {
                let location = browser_session::login_url(
                    is_tls(session),
                    self.routes.app_domain(),
                    &ctx.raw_host,
                    session
                        .req_header()
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str()),
                );
                write_see_other(session, 302, &location, &ctx.request_id).await?;
                Ok(true)
            }
            Err(error) => {
                write_error(session, &error, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no route selected"))?;
        let mut peer = HttpPeer::new(route.upstream, false, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.settings.connect_timeout);
        options.total_connection_timeout = Some(self.settings.connect_timeout);
        options.idle_timeout = Some(Duration::from_secs(60));
        if ctx.websocket {
            // Long-lived gateway sessions must not hit the plain-HTTP read timeout (pingora#255):
            // both sides get the WebSocket idle timeout instead.
            options.read_timeout = Some(self.settings.ws_idle_timeout);
            options.write_timeout = Some(self.settings.ws_idle_timeout);
            session.set_read_timeout(Some(self.settings.ws_idle_timeout));
        } else {
            options.read_timeout = Some(self.settings.read_timeout);
            options.write_timeout = Some(self.settings.read_timeout);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        let stripped: Vec<String> = upstream
            .headers
            .keys()
            .map(|name| name.as_str())
            .filter(|name| {
                STRIPPED_PREFIXES.iter().any(|p| name.starts_with(p))
                    || STRIPPED_HEADERS.contains(name)
            })
            .map(str::to_string)
            .collect();
        for name in stripped {
            upstream.remove_header(&name);
        }
        // One value for both headers; `HeaderValue`s share their bytes when cloned.
        let client_ip = match client_ip(session) {
            // OpenClaw's trusted-proxy mode refuses a proxied client named as loopback; a browser
            // on the edge's own machine (the embedded default) is named by a documentation
            // address instead (RFC 5737) on instance hosts.
            Some(ip) if ip.is_loopback() && ctx.identity.is_some() => {
                HeaderValue::from_static(LOCAL_CLIENT)
            }
            Some(ip) => HeaderValue::try_from(ip.to_string())
                .explain_err(ErrorType::InvalidHTTPHeader, |_| "client address")?,
            None => HeaderValue::from_static(""),
        };
        let proto = if is_tls(session) {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        };
        upstream.insert_header("x-forwarded-for", client_ip.clone())?;
        upstream.insert_header("x-real-ip", client_ip)?;
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-host", &ctx.raw_host)?;
        upstream.insert_header("x-request-id", &ctx.request_id)?;
        if let (Some(secret), Some(RouteKind::ControlPlane)) = (
            &self.control_plane_secret,
            ctx.route.as_ref().map(|r| r.kind),
        ) {
            upstream.insert_header(CONTROL_PLANE_SECRET_HEADER, secret.clone())?;
        }
        if ctx.session_exchange {
            // The control plane needs only the code and the host (X-Forwarded-Host).
            upstream.remove_header(&header::AUTHORIZATION);
            upstream.remove_header(&header::COOKIE);
        }
        if let Some(identity) = &ctx.identity {
            // The container sees who the owner is, never the platform's credentials.
            upstream.remove_header(&header::AUTHORIZATION);
            browser_session::strip_platform_cookies(upstream);
            // The gateway knows the owner by the instance's gateway identity where it has one
            // (the owner check above let only the owner this far).
            let gateway_id = ctx.route.as_ref().and_then(|r| r.gateway_id.as_deref());
            upstream.insert_header(USER_HEADER, gateway_id.unwrap_or(&identity.user_id))?;
            upstream.insert_header(
                gateway_trust::SCOPES_HEADER,
                HeaderValue::from_static(OWNER_SCOPES_VALUE),
            )?;
            if let (Some(key), Some(proof_id)) = (
                &self.gateway_proof_key,
                gateway_id.or(ctx.route.as_ref().and_then(|r| r.instance_id.as_deref())),
            ) {
                upstream.insert_header(
                    gateway_trust::proof_header(key, proof_id),
                    HeaderValue::from_static("1"),
                )?;
            }
            // The PRD's gatewayUrl is `/ws`; the gateway serves its WebSocket at `/`.
            if upstream.uri.path() == "/ws" {
                let target = match upstream.uri.query() {
                    Some(query) => format!("/?{query}"),
                    None => "/".to_string(),
                };
                if let Ok(uri) = target.parse::<http::Uri>() {
                    upstream.set_uri(uri);
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", &ctx.request_id)?;
        self.tls.add_hsts(is_tls(session), resp)?;
        if ctx.identity.is_some() {
            let dropped = browser_session::filter_set_cookies(resp, &ctx.host);
            if dropped > 0 {
                tracing::warn!(request_id = %ctx.request_id, host = %ctx.host, dropped, "dropped Set-Cookie for another domain or a platform cookie from an instance");
            }
        }
        if ctx.websocket && resp.status.as_u16() == 101 {
            ctx.upgraded = true;
            metrics::gauge!("clawdeploy_websockets_open").increment(1.0);
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        if let (true, Some(identity), Some(live)) = (ctx.websocket, &ctx.identity, &self.live) {
            ctx.tunnel = live.register(identity.session_id.clone(), fd);
            if ctx.tunnel.is_some() && ctx.relay.is_none() {
                ctx.server_frames = Some(clawdeploy_metering::FrameParser::new());
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        if !ctx.websocket {
            limits::count_body(&mut ctx.body_bytes, body, self.settings.max_body_bytes)?;
        }
        if let Some(relay) = ctx.relay.as_deref_mut() {
            if ctx.upgraded {
                metered::client_body(session, relay, body).await?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<Option<Duration>> {
        if !ctx.upgraded {
            return Ok(None);
        }
        let unparsable = match (
            ctx.relay.as_deref_mut(),
            ctx.server_frames.as_mut(),
            body.as_ref(),
        ) {
            (Some(relay), _, _) => {
                metered::server_body(relay, body)?;
                false
            }
            (None, Some(frames), Some(chunk)) => frames.feed(chunk, |_| {}).is_err(),
            _ => false,
        };
        if unparsable {
            // Not WebSocket framing: never insert a frame into it.
            ctx.server_frames = None;
        }
        if end_of_stream && ctx.tunnel.as_ref().is_some_and(TunnelGuard::revoked) {
            live::end_with_close_frame(ctx.relay.as_deref(), ctx.server_frames.as_ref(), body);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut EdgeCtx,
    ) -> FailToProxy {
        let error = match self.describe_failure(e, ctx) {
            Some(error) if session.response_written().is_none() => error,
            // The connection is gone or a response has started: nothing more can be sent.
            _ => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
        };
        if let Err(write_err) = write_error(session, &error, &ctx.request_id).await {
            tracing::debug!(request_id = %ctx.request_id, "cannot write error response: {write_err}");
        }
        FailToProxy {
            error_code: error.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut EdgeCtx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let kind = ctx.route.as_ref().map(|r| r.kind);
        self.request_metrics
            .record(kind, status, &req.method, ctx.started.elapsed());
        let kind = kind.map_or("none", RouteKind::as_str);
        if let Some(e) = e.filter(|e| e.esource() == &ErrorSource::Upstream) {
            metrics::counter!("clawdeploy_upstream_errors_total", "kind" => kind, "error" => e.etype().as_str()).increment(1);
        }
        if ctx.upgraded {
            metrics::gauge!("clawdeploy_websockets_open").decrement(1.0);
        }
        if !self.settings.access_log {
            return;
        }
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            client = %client_ip(session).map(|ip| ip.to_string()).unwrap_or_default(),
            method = %req.method,
            host = %ctx.host,
            path = %req.uri.path(),
            status,
            kind,
            websocket = ctx.websocket,
            duration_ms = ctx.started.elapsed().as_millis() as u64,
            error = e.map(|e| e.etype().as_str()),
        );
    }
}

impl EdgeProxy {
    /// The per-IP limit; ACME challenges, health checks and authenticated loopback clients are
    /// exempt.
    async fn rate_limit_ip(&self, session: &Session, ctx: &mut EdgeCtx) -> Option<EdgeError> {
        let m = self.metering.as_ref()?;
        if metered::exempt_from_rate_limits(session.req_header().uri.path()) {
            return None;
        }
        let ip = client_ip(session)?;
        // The dashboard's chat bridge connects to every user's gateway from this machine with
        // that user's token: such requests are limited per user, not all under one loopback IP.
        if ip.is_loopback() && matches!(self.bearer(session, ctx), Some(Ok(_))) {
            return None;
        }
        let wait = m.limiter.check_ip(ip).await.err()?;
        Some(m.too_many(clawdeploy_metering::Scope::Ip, wait))
    }

    /// The per-user limit: the owner on instance hosts, the bearer token's user on the API.
    async fn rate_limit_user(&self, session: &Session, ctx: &mut EdgeCtx) -> Option<EdgeError> {
        let m = self.metering.as_ref()?;
        let user = match &ctx.identity {
            Some(identity) => identity.user_id.clone(),
            None => self.bearer(session, ctx)?.ok()?.user_id,
        };
        let wait = m.limiter.check_user(&user).await.err()?;
        Some(m.too_many(clawdeploy_metering::Scope::User, wait))
    }

    /// The request's bearer token checked by the verifier, once per request.
    fn bearer(&self, session: &Session, ctx: &mut EdgeCtx) -> Option<Result<Identity, Rejection>> {
        ctx.bearer
            .get_or_insert_with(|| {
                bearer_token(session.req_header()).map(|token| self.verifier.verify(token))
            })
            .clone()
    }
}

enum Routed {
    Proxy,
    RedirectToApp,
    /// A browser without a session on an instance host: to the dashboard's login.
    Login,
}

impl EdgeProxy {
    /// Counts a request to an instance as its traffic and, when the instance sleeps (or is going
    /// to sleep), holds the request while it wakes, then sends it to the woken address. A browser
    /// opening a page is answered a "waking" page that reloads itself if the wake passes 1 s (the
    /// wake goes on); other clients and WebSocket upgrades are held up to `read_timeout`. A wake
    /// that fails or cannot start answers 503 with `Retry-After`.
    async fn hold_for_wake(&self, session: &Session, ctx: &mut EdgeCtx) -> Option<EdgeError> {
        let (activity, waker) = self.sleep.as_ref()?;
        let route = ctx.route.as_mut()?;
        if route.kind != RouteKind::Instance || ctx.session_exchange {
            return None;
        }
        let id = route.instance_id.clone()?;
        let (guard, asleep) = activity.enter(&id);
        ctx.activity = Some(guard);
        if !asleep && route.state != InstanceState::Sleeping {
            return None;
        }
        let page = !ctx.websocket
            && session.req_header().method == http::Method::GET
            && crate::responses::wants_html(session.req_header());
        let patience = if page {
            Duration::from_secs(1)
        } else {
            self.settings.read_timeout
        };
        let started = Instant::now();
        let woken = tokio::time::timeout(patience, waker.wake(&id)).await;
        metered::record_wake_wait(
            started.elapsed(),
            woken
                .as_ref()
                .map_or("pending", |r| if r.is_ok() { "woken" } else { "failed" }),
        );
        match woken {
            Ok(Ok(upstream)) => {
                route.upstream = upstream;
                route.state = InstanceState::Running;
                None
            }
            Ok(Err(WakeError::NoRoom | WakeError::NotAwake(_))) | Err(_) if page => Some(
                EdgeError::new(
                    503,
                    "INSTANCE_WAKING",
                    format!("Waking your assistant at {}: it was asleep after being idle. This page reloads by itself in a moment.", ctx.host),
                )
                .retry_after(1)
                .header("refresh", "2"),
            ),
            Ok(Err(WakeError::NoRoom | WakeError::NotAwake(_))) | Err(_) => Some(
                EdgeError::new(
                    503,
                    "INSTANCE_WAKING",
                    format!("The instance at {} is waking up after being idle; retry in a few seconds.", ctx.host),
                )
                .retry_after(2),
            ),
            Ok(Err(e)) => {
                tracing::warn!(instance = %id, host = %ctx.host, "wake failed: {e}");
                Some(
                    EdgeError::new(
                        503,
                        "INSTANCE_WAKE_FAILED",
                        format!("The instance at {} could not be woken ({e}); its owner can restart it from the dashboard.", ctx.host),
                    )
                    .retry_after(30),
                )
            }
        }
    }

    /// Validates the request and picks its route, or says why not.
    fn route_request(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<Routed, EdgeError> {
        let req = session.req_header();
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes + display_len(&req.uri) > self.settings.max_header_bytes {
            return Err(EdgeError::new(
                431,
                "HEADERS_TOO_LARGE",
                format!(
                    "The request line and headers are larger than the {} bytes this edge accepts; send fewer or smaller headers.",
                    self.settings.max_header_bytes
                ),
            ));
        }
        limits::check_declared_body(req, self.settings.max_body_bytes)?;
        let mut hosts = req.headers.get_all(header::HOST).iter();
        let raw_host = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().ok().map(str::to_string),
            (Some(_), Some(_)) => {
                return Err(EdgeError::new(
                    400,
                    "DUPLICATE_HOST",
                    "The request has more than one Host header; send exactly one.",
                ))
            }
            (None, _) => req.uri.authority().map(|a| a.as_str().to_string()),
        };
        let Some(raw_host) = raw_host else {
            return Err(EdgeError::new(
                400,
                "MISSING_HOST",
                format!(
                    "The request has no Host header; send Host: <name>.{}",
                    self.routes.base_domain()
                ),
            ));
        };
        let Some(host) = normalize_host(&raw_host) else {
            return Err(EdgeError::new(
                400,
                "INVALID_HOST",
                "The Host header is not a valid host name; send a DNS name, optionally with a port.",
            ));
        };
        ctx.raw_host = raw_host;
        ctx.host = host;
        if is_tls(session) {
            // Before routing: a request for another host than the TLS server name gets 421.
            let req = session.req_header();
            let authority = req.uri.authority().map(|a| a.as_str());
            let names = std::iter::once(ctx.raw_host.as_str()).chain(authority);
            crate::tls::check_sni(crate::tls::sni(session), names)?;
        }

        let route = match self.routes.resolve(&ctx.host) {
            Resolution::Route(route) => route,
            Resolution::RedirectToApp => return Ok(Routed::RedirectToApp),
            Resolution::Unknown => {
                return Err(EdgeError::new(
                    404,
                    "UNKNOWN_HOST",
                    format!(
                        "Nothing is served at {}. Check the address, or create an instance at {}.",
                        ctx.host,
                        self.routes.app_domain()
                    ),
                ))
            }
        };
        let mut by_cookie = false;
        if route.kind == RouteKind::Instance {
            if session.req_header().uri.path() == browser_session::SESSION_PATH {
                return self.session_exchange(ctx);
            }
            let tls = is_tls(session);
            let bearer = self.bearer(session, ctx);
            match browser_session::owner_only(
                &*self.verifier,
                bearer,
                session.req_header(),
                &route,
                &ctx.host,
                tls,
            ) {
                Ok(access) => {
                    ctx.identity = Some(access.identity);
                    by_cookie = access.by_cookie;
                }
                Err(Denied::Login) => return Ok(Routed::Login),
                Err(Denied::Error(error)) => return Err(error),
            }
        }
        if let Some(error) = state_error(&route, &ctx.host, self.sleep.is_some()) {
            return Err(error);
        }
        let upgrade = check_upgrade(session.req_header());
        if route.kind == RouteKind::Instance {
            browser_session::check_origin(
                &self.routes,
                session.req_header(),
                &route,
                matches!(upgrade, Ok(Upgrade::WebSocket)),
                by_cookie,
            )?;
        }
        match upgrade {
            Ok(Upgrade::WebSocket) => ctx.websocket = true,
            Ok(Upgrade::None) => {
                // An upgrade we do not proxy (e.g. h2c) is ignored: the request goes on as HTTP/1.1.
                session.req_header_mut().remove_header(&header::UPGRADE);
            }
            Err(refused) => {
                let mut error =
                    EdgeError::new(refused.status, "BAD_UPGRADE_REQUEST", refused.message);
                if refused.status == 426 {
                    error = error.header("sec-websocket-version", "13");
                }
                return Err(error);
            }
        }
        ctx.route = Some(route);
        Ok(Routed::Proxy)
    }

    /// Sends `/_clawdeploy/session` on an instance host to the control plane (which redeems the
    /// one-time code and sets the host's cookie); the instance never sees it.
    fn session_exchange(&self, ctx: &mut EdgeCtx) -> Result<Routed, EdgeError> {
        match self.routes.resolve(self.routes.app_domain()) {
            Resolution::Route(control) if control.kind == RouteKind::ControlPlane => {
                ctx.session_exchange = true;
                ctx.route = Some(control);
                Ok(Routed::Proxy)
            }
            _ => Err(EdgeError::new(
                503,
                "CONTROL_PLANE_UNAVAILABLE",
                "Sign-in to instances is unavailable on this edge node; retry in a few seconds.",
            )),
        }
    }

    /// `<scheme>://<app_domain>[:port]<path>` for the bare base domain's redirect.
    fn app_url(&self, session: &Session, ctx: &EdgeCtx) -> String {
        let scheme = if is_tls(session) { "https" } else { "http" };
        let port = ctx
            .raw_host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or("", |(_, p)| p);
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let app = self.routes.app_domain();
        if port.is_empty() {
            format!("{scheme}://{app}{path}")
        } else {
            format!("{scheme}://{app}:{port}{path}")
        }
    }

    /// The error page for a failed proxy attempt, or `None` when nothing should be written.
    fn describe_failure(&self, e: &Error, ctx: &EdgeCtx) -> Option<EdgeError> {
        if let Some(error) = limits::describe(e, self.settings.max_body_bytes) {
            return Some(error);
        }
        if let ErrorType::HTTPStatus(code) = e.etype() {
            return Some(EdgeError::new(
                *code,
                "EDGE_ERROR",
                format!("The request failed with status {code}."),
            ));
        }
        match e.esource() {
            ErrorSource::Upstream => {
                let (status, code, what) = match e.etype() {
                    ErrorType::ConnectTimedout => (
                        502,
                        "UPSTREAM_UNAVAILABLE",
                        format!(
                            "did not accept a connection within {} ms",
                            self.settings.connect_timeout.as_millis()
                        ),
                    ),
                    ErrorType::ConnectRefused => (
                        502,
                        "UPSTREAM_UNAVAILABLE",
                        "refused the connection".to_string(),
                    ),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => (
                        504,
                        "UPSTREAM_TIMEOUT",
                        format!(
                            "did not answer within {} s",
                            self.settings.read_timeout.as_secs()
                        ),
                    ),
                    other => (
                        502,
                        "UPSTREAM_UNAVAILABLE",
                        format!("failed ({})", other.as_str()),
                    ),
                };
                let who = match ctx.route.as_ref() {
                    Some(Route {
                        kind: RouteKind::Instance,
                        state,
                        ..
                    }) => {
                        format!("The instance at {} (state: {})", ctx.host, state.as_str())
                    }
                    Some(Route {
                        kind: RouteKind::ControlPlane,
                        ..
                    }) => "The ClawDeploy control plane".to_string(),
                    Some(Route {
                        kind: RouteKind::Operator,
                        ..
                    })
                    | None => format!("The service behind {}", ctx.host),
                };
                Some(EdgeError::new(status, code, format!("{who} {what}. Retry in a few seconds; if this persists, contact the operator.")))
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
                _ => Some(EdgeError::new(
                    400,
                    "BAD_REQUEST",
                    "The request could not be read; check its framing and headers.",
                )),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(EdgeError::new(
                500,
                "EDGE_ERROR",
                "The edge failed to handle this request; retry, and report it if it persists.",
            )),
        }
    }
}

/// A route that exists but must not be proxied right now. A sleeping instance is woken when the
/// edge can (`can_wake`, see [`EdgeProxy::hold_for_wake`]).
fn state_error(route: &Route, host: &str, can_wake: bool) -> Option<EdgeError> {
    let message = match route.state {
        InstanceState::Running => return None,
        InstanceState::Sleeping if can_wake => return None,
        InstanceState::Sleeping => {
            return Some(
                EdgeError::new(503, "INSTANCE_SLEEPING", format!("The instance at {host} is asleep and this edge node cannot wake it; retry in a few seconds."))
                    .retry_after(5),
            )
        }
        InstanceState::Queued => {
            return Some(
                EdgeError::new(503, "INSTANCE_QUEUED", format!("The instance at {host} is waiting for capacity; it starts as soon as room frees."))
                    .retry_after(10),
            )
        }
        InstanceState::Provisioning | InstanceState::Starting => {
            return Some(
                EdgeError::new(503, "INSTANCE_STARTING", format!("The instance at {host} is starting; retry in a few seconds."))
                    .retry_after(2),
            )
        }
        InstanceState::Stopped => ("INSTANCE_STOPPED", format!("The instance at {host} is stopped. Its owner can start it from the dashboard.")),
        InstanceState::Crashed => (
            "INSTANCE_CRASHED",
            format!("The instance at {host} has crashed and is being looked at; its owner can restart it from the dashboard."),
        ),
        InstanceState::Deleting => ("INSTANCE_DELETING", format!("The instance at {host} is being deleted.")),
    };
    Some(EdgeError::new(503, message.0, message.1))
}

/// The length of `value`'s `Display` form, counted without building the string.
fn display_len(value: &impl std::fmt::Display) -> usize {
    struct Counter(usize);
    impl std::fmt::Write for Counter {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = std::fmt::write(&mut counter, format_args!("{value}"));
    counter.0
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(SocketAddr::ip)
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Request ids: the client's when it is a sane token, else a process-unique one.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::BuildHasher;
        // RandomState is seeded from the OS: a cheap per-process random prefix.
        let prefix = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    fn take_or_generate(&self, req: &RequestHeader) -> String {
        if let Some(id) = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            if (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                return id.to_string();
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Same text as `format!("{:016x}{n:08x}", prefix)`, without the formatting machinery.
        let mut id = String::with_capacity(32);
        push_hex(&mut id, self.prefix, 16);
        push_hex(&mut id, n, 8);
        id
    }
}

/// Appends `value` in lower-case hex, zero-padded to at least `width` digits.
fn push_hex(out: &mut String, value: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - value.leading_zeros() as usize).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scopes_header_names_the_owner_scopes() {
        assert_eq!(OWNER_SCOPES_VALUE, gateway_trust::owner_scopes_value());
    }

    #[test]
    fn hex_request_ids_match_the_formatted_ones() {
        for (prefix, n) in [
            (0u64, 0u64),
            (1, 1),
            (u64::MAX, u64::MAX),
            (0xdead_beef, 0xffff_ffff),
            (0x0123_4567_89ab_cdef, 0x1_0000_0000),
        ] {
            let mut id = String::new();
            push_hex(&mut id, prefix, 16);
            push_hex(&mut id, n, 8);
            assert_eq!(id, format!("{prefix:016x}{n:08x}"));
        }
    }

    #[test]
    fn display_len_counts_without_allocating_the_string() {
        for uri in ["/", "/a?b=c", "http://example.com:8080/x?y", "*"] {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(display_len(&uri), uri.to_string().len());
        }
    }
}
