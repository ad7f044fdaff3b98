//! `/admin`: operator endpoints, authenticated by the bootstrap admin token.

use std::net::SocketAddr;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use clawdeploy_proxy::routes::{RouteEntry, RouteError};

use crate::error::ApiError;
use crate::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/admin/routes", get(list_routes))
        .route(
            "/admin/routes/{host}",
            get(get_route).put(upsert_route).delete(delete_route),
        )
}

/// Proof that the request carries a valid admin token.
pub struct Admin;

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "This endpoint needs an admin token: send Authorization: Bearer <admin token>.",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "The Authorization header must be of the form: Bearer <admin token>.",
            ));
        };
        if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
            Ok(Admin)
        } else {
            tracing::warn!(target: "security", "admin request with an invalid token");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "The admin token is not valid.",
            ))
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn list_routes(_: Admin, State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "routes": state.routes.list() }))
}

async fn get_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
) -> Result<Json<RouteEntry>, ApiError> {
    let host = state.routes.operator_host(&host).map_err(route_error)?;
    state
        .routes
        .list()
        .into_iter()
        .find(|entry| entry.host == host)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("There is no route for {host}.")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertRoute {
    upstream: String,
}

async fn upsert_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
    body: Result<Json<UpsertRoute>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let upstream: SocketAddr = body.upstream.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_UPSTREAM",
            format!("upstream {:?} must be an IP address and port such as 127.0.0.1:9001; host names are not resolved.", body.upstream),
        )
    })?;
    let (host, created) = state
        .routes
        .upsert_operator(&host, upstream)
        .map_err(route_error)?;
    tracing::info!(%host, %upstream, created, "operator route set");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let entry = RouteEntry {
        host,
        route: clawdeploy_proxy::Route::operator(upstream),
    };
    Ok((status, Json(entry)))
}

async fn delete_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state.routes.remove_operator(&host).map_err(route_error)? {
        Some(_) => {
            tracing::info!(%host, "operator route deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!(
            "There is no operator route for {host}."
        ))),
    }
}

fn route_error(e: RouteError) -> ApiError {
    let (status, code) = match e {
        RouteError::InvalidHost(_) => (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_HOST"),
        RouteError::ReservedHost(_) => (StatusCode::CONFLICT, "RESERVED_HOST"),
        RouteError::NotOperatorRoute(_) => (StatusCode::CONFLICT, "NOT_OPERATOR_ROUTE"),
    };
    ApiError::new(status, code, e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_tokens() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
