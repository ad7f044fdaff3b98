//! The control API: an axum app for `/api`, `/admin` and health, run inside the edge process as a
//! Pingora background service on an internal loopback listener. Clients reach it only through the
//! edge, at the app domain.

pub mod admin;
pub mod error;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use clawdeploy_proxy::{Drain, RouteTable};

pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub routes: Arc<RouteTable>,
    pub admin_token: Arc<str>,
    pub drain: Arc<Drain>,
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(admin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready while serving; 503 once draining, so a load balancer stops sending new work.
async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "draining" })),
        )
    } else {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint; the API is described at /api/openapi.json.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "This endpoint does not accept that method.",
    )
}

/// The API as a Pingora background service on a listener bound before the server starts (so its
/// address, possibly an ephemeral port, is known to the route table).
pub struct ControlApiService {
    listener: Mutex<Option<std::net::TcpListener>>,
    router: Router,
}

impl ControlApiService {
    pub fn new(listener: std::net::TcpListener, router: Router) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            router,
        }
    }
}

#[async_trait]
impl BackgroundService for ControlApiService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            tracing::error!("control API started twice");
            return;
        };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("control API listener unusable: {e}");
                return;
            }
        };
        let serve = axum::serve(listener, self.router.clone()).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!("control API stopped: {e}");
        }
    }
}
