//! The control API: an axum app for `/api`, `/admin` and health, served inside the edge process by
//! the binary's app (`src/app.rs`) on an internal loopback listener. Clients reach it only through
//! the edge, at the app domain.
//!
//! Every endpoint is declared once, in [`openapi::endpoints`]: the router and the OpenAPI document
//! at `/api/openapi.json` are both built from that list, and the document's schemas are derived
//! from the types the handlers take and answer with (see [`openapi`] for how drift is prevented).

#![warn(missing_docs)]

pub mod account;
pub mod admin;
pub mod agents;
pub mod auth;
pub mod billing;
pub mod channels;
pub mod chat;
pub mod crypto;
pub mod domains;
pub mod edge_auth;
pub mod error;
pub mod host_sessions;
pub mod instances;
pub mod mail;
pub mod openapi;
pub mod pages;
pub mod security;
pub mod skills;
pub mod throttle;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;

use clawdeploy_config::Config;
use clawdeploy_pool::{routing, PoolManager};
use clawdeploy_proxy::{Drain, RouteTable};
use clawdeploy_store::changes::{Change, ChangeBus};
use clawdeploy_store::{Keyring, Store, Zeroizing};

pub use edge_auth::SessionVerifier;

/// `Result` with the API's error: what a handler answers when it fails.
///
/// [`ApiError`] is the crate's one error for requests; the other error types are focused
/// contracts of one API each: [`mail::MailError`] (the mailer, whose failures are logged where a
/// mail was asked for), [`crypto::JwtError`] and [`crypto::HostTokenError`] (why a token is refused,
/// mapped to error codes) and [`instances::BadLabel`] (why a subdomain is refused, shown as the
/// field's error and by the signup page's live check).
pub type Result<T, E = ApiError> = std::result::Result<T, E>;
pub use error::ApiError;
pub use openapi::{NoBody, Reply, ReplyOrPage};

/// Secrets and settings the handlers share; built once at start.
pub struct ApiContext {
    /// The validated configuration the process started with.
    pub config: Config,
    /// The bootstrap operator credential (`server.admin_token`, or the generated one).
    pub admin_token: Zeroizing<String>,
    /// The HS256 key of access tokens (`secrets.jwt_key`); host-session keys derive from it.
    pub jwt_key: Zeroizing<Vec<u8>>,
    /// Seals and opens stored secrets: provider API keys, TOTP secrets.
    pub keyring: Arc<Keyring>,
    /// Where verification and reset mails go: the SMTP relay, or the outbox.
    pub mailer: mail::Mailer,
    /// Failed logins per account and per IP (window `limits.login_window_secs`).
    pub throttle: throttle::Throttle,
    /// Bounds concurrent bcrypt work to the CPUs, so a signup spike queues instead of thrashing.
    pub hashing: tokio::sync::Semaphore,
    /// A bcrypt hash compared against when an email is unknown, so timing does not reveal it.
    pub dummy_hash: tokio::sync::OnceCell<String>,
    /// The edge's usage counters: counts not yet flushed to the store are added to usage views.
    pub meter: Option<Arc<clawdeploy_metering::Meter>>,
    /// Where the pool hands the LLM meter its listener (`llm.listen = "auto"`).
    pub llm_listener: Option<clawdeploy_llm_egress::ListenerHandoff>,
    /// What the edge sends in [`clawdeploy_proxy::CONTROL_PLANE_SECRET_HEADER`] with every request
    /// it passes here: random per process, so no other process on the host can call the control
    /// API directly (and forge the `X-Real-IP` and `X-Forwarded-*` it trusts from the edge).
    pub edge_secret: Zeroizing<String>,
    /// The skill catalogue (`GET /api/skills`), shared with the registry, which adds upstream
    /// skills to it.
    pub catalogue: Arc<std::sync::RwLock<clawdeploy_skills::Catalogue>>,
    /// The registry instances install skills from; `None` without the LLM meter (no address
    /// instances reach).
    pub registry: Option<Arc<clawdeploy_skills::Registry>>,
    /// Stripe, when `billing.stripe_secret_key` is set.
    pub stripe: Option<Arc<clawdeploy_billing::Stripe>>,
    /// Billing changes on this node one at a time (webhook deliveries, the grace sweep), so a
    /// tier worked out from an older state is never applied after a newer one.
    pub billing_lock: tokio::sync::Mutex<()>,
}

impl ApiContext {
    /// The context for `config`, with no meter, no LLM listener and an empty edge secret (which
    /// refuses every request until the caller sets it). Fails when `[smtp]` is unusable, e.g. a bad
    /// sender address.
    pub fn new(
        config: Config,
        admin_token: String,
        jwt_key: Vec<u8>,
        keyring: Arc<Keyring>,
    ) -> Result<Self, mail::MailError> {
        let from = if config.smtp.from.is_empty() {
            format!("ClawDeploy <no-reply@{}>", config.server.app_domain())
        } else {
            config.smtp.from.clone()
        };
        let mailer = mail::Mailer::new(&config.smtp, &from)?;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let billing = &config.billing;
        let stripe = if billing.enabled() {
            match clawdeploy_billing::Stripe::new(
                &billing.stripe_api_url,
                &billing.stripe_secret_key,
                Duration::from_secs(billing.stripe_timeout_secs),
            ) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::error!("billing is off: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            stripe,
            billing_lock: tokio::sync::Mutex::new(()),
            throttle: throttle::Throttle::new(Duration::from_secs(config.limits.login_window_secs)),
            config,
            admin_token: Zeroizing::new(admin_token),
            jwt_key: Zeroizing::new(jwt_key),
            keyring,
            mailer,
            hashing: tokio::sync::Semaphore::new(cpus),
            dummy_hash: tokio::sync::OnceCell::new(),
            meter: None,
            llm_listener: None,
            edge_secret: Zeroizing::new(String::new()),
            catalogue: Arc::new(std::sync::RwLock::new(
                clawdeploy_skills::Catalogue::bundled().unwrap_or_default(),
            )),
            registry: None,
        })
    }

    /// `http://app.<base>:<port>`: where links in mails point.
    pub fn app_origin(&self) -> String {
        self.config.public_origin(&self.config.server.app_domain())
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// This edge's route table, shared with the proxy.
    pub routes: Arc<RouteTable>,
    /// The process's shutdown state: `/readyz` answers 503 once it drains.
    pub drain: Arc<Drain>,
    /// The database.
    pub store: Store,
    /// Secrets and settings.
    pub ctx: Arc<ApiContext>,
    /// Route changes and revocations to every edge node.
    pub bus: Arc<ChangeBus>,
    /// The node's instance pool; `None` when `runtime.kind = "none"`.
    pub pool: Option<Arc<PoolManager>>,
    /// The edge's in-memory token check, told of revocations at once.
    pub verifier: Arc<SessionVerifier>,
    /// Certificates and custom domains; `None` when no HTTPS is served.
    pub certs: Option<Arc<clawdeploy_certs::CertManager>>,
}

impl ApiState {
    /// Tells this edge at once, and every other through the broadcast, that sessions ended.
    pub async fn revoked(&self, sessions: &[uuid::Uuid]) {
        for &session_id in sessions {
            self.verifier.revoke(session_id);
            if let Err(e) = self
                .bus
                .publish(Change::SessionRevoked { session_id })
                .await
            {
                tracing::error!("cannot broadcast a session revocation: {e}");
            }
        }
    }

    /// An instance's route changed (created, renamed, started, stopped) or it is gone: routes it
    /// as the store says, here before returning and on every other edge node through the
    /// broadcast. `subdomain` is the name the route had before the change (for a rename, the old
    /// one), so every node knows what to remove.
    pub async fn instance_changed(&self, id: uuid::Uuid, subdomain: &str) {
        let change = Change::Instance {
            id,
            subdomain: subdomain.to_string(),
        };
        if let Err(e) = routing::publish(&self.store, &self.routes, &self.bus, change).await {
            tracing::error!(instance = %id, "cannot route an instance change: {e}");
        }
    }
}

/// The whole API, built from [`openapi::endpoints`].
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    let mut by_path: Vec<(&'static str, axum::routing::MethodRouter<ApiState>)> = Vec::new();
    for (spec, handler) in openapi::endpoints() {
        match by_path.iter_mut().find(|(p, _)| *p == spec.path) {
            Some((_, existing)) => {
                let merged = std::mem::take(existing).merge(handler);
                *existing = merged;
            }
            None => by_path.push((spec.path, handler)),
        }
    }
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .merge(pages::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(security::headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge_only,
        ))
        .with_state(state)
}

/// Refuses a request that did not come through this process's edge (see
/// [`ApiContext::edge_secret`]); an empty secret refuses everything.
async fn edge_only(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let expected = state.ctx.edge_secret.as_bytes();
    let presented = request
        .headers()
        .get(clawdeploy_proxy::CONTROL_PLANE_SECRET_HEADER)
        .map(|v| v.as_bytes());
    match presented {
        Some(given) if !expected.is_empty() && crypto::ct_eq(given, expected) => {
            next.run(request).await
        }
        _ => ApiError::forbidden(
            "EDGE_ONLY",
            "The control API is served through the edge only: call it at the app domain.",
        )
        .into_response(),
    }
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (alive), `ready`, or `draining` (with a 503).
    pub status: &'static str,
}

pub(crate) async fn healthz() -> Reply<Health> {
    Reply(Health { status: "ok" })
}

/// Ready while serving; 503 once draining, so a load balancer stops sending new work.
pub(crate) async fn readyz(State(state): State<ApiState>) -> (StatusCode, Reply<Health>) {
    if state.drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Reply(Health { status: "draining" }),
        )
    } else {
        (StatusCode::OK, Reply(Health { status: "ready" }))
    }
}

async fn not_found(
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if pages::wants_html(&headers, &uri) {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "Page not found",
            "There is no page at this address. Check the link, or go to your dashboard.",
            None,
        );
    }
    ApiError::not_found("No such endpoint; the API is described at /api/openapi.json.")
        .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "This endpoint does not accept that method.",
    )
}
