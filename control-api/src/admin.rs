//! `/admin`: operator endpoints: routes, nodes, instances, users and tiers, the mail outbox.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::Query;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use clawdeploy_config::UnknownTier;
use clawdeploy_store::time::rfc3339;
use clawdeploy_store::{InstanceStatus, Role, Tier, TokenHash};

use clawdeploy_proxy::routes::{RouteEntry, RouteError};

use crate::auth::UserView;
use crate::error::ApiError;
use crate::instances::InstanceView;
use crate::{ApiState, Reply};

/// Proof that the request carries an operator credential: the config's bootstrap `admin_token`,
/// a named admin token from the store (by hash), or a user login holding the operator role.
pub struct Admin {
    /// Who: `bootstrap admin token`, `admin token <name>` or the operator's email (for the
    /// records an operator's change leaves, such as credit adjustments).
    pub who: String,
}

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
        if constant_time_eq(token.as_bytes(), state.ctx.admin_token.as_bytes()) {
            return Ok(Admin {
                who: "bootstrap admin token".into(),
            });
        }
        if token.matches('.').count() == 2 {
            // A user's access token: operators may use their normal login.
            return match crate::auth::authenticate(state, token).await {
                Ok(auth) if auth.user.role == Role::Operator => Ok(Admin {
                    who: auth.user.email,
                }),
                Ok(_) => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "This account does not have the operator role.",
                )),
                Err(e) => Err(e),
            };
        }
        if let Some(named) = state
            .store
            .find_admin_token_by_hash(&TokenHash::of(token))
            .await?
        {
            return Ok(Admin {
                who: format!("admin token {}", named.name),
            });
        }
        tracing::warn!(target: "security", "admin request with an invalid token");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "The admin token is not valid.",
        ))
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// This node's route table.
#[derive(Debug, Serialize, ToSchema)]
pub struct Routes {
    /// Every route, with its host.
    pub routes: Vec<RouteEntry>,
}

/// `GET /admin/routes`: every route in this node's table, with its host.
pub async fn list_routes(_: Admin, State(state): State<ApiState>) -> Reply<Routes> {
    Reply(Routes {
        routes: state.routes.list(),
    })
}

/// The edge nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Nodes {
    /// This node (one edge node answers for itself).
    pub nodes: Vec<Node>,
}

/// One edge node and its health.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// The node's id (its host name).
    pub id: String,
    /// The address it listens on for HTTP.
    pub ip: String,
    /// `server.http_listen`.
    pub listen: String,
    /// `healthy`, `degraded` (database unreachable) or `draining`.
    pub status: &'static str,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// Its instance routes.
    pub routes: NodeRoutes,
    /// The container runtime (`docker`, `process`), or `none`.
    pub runtime: &'static str,
    /// The pool's figures; `null` without a runtime.
    pub containers: Option<Containers>,
    /// Without a runtime: why instances do not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<&'static str>,
}

/// A node's instance routes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutes {
    /// How many.
    pub instances: u64,
    /// How many in each state (`running`, `sleeping`…).
    pub by_state: BTreeMap<String, u64>,
}

/// A node's containers, from the pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct Containers {
    /// Idle, creating and assigned together.
    pub total: usize,
    /// Warm members waiting for an owner.
    pub idle: usize,
    /// Members being created.
    pub creating: usize,
    /// Serving an owner.
    pub assigned: usize,
    /// Of those assigned, asleep.
    pub sleeping: usize,
    /// How many instances the node holds.
    pub capacity: usize,
    /// Instances waiting for room.
    pub queued: usize,
}

/// This node, from the config and the route table; container figures come with the pool.
pub async fn nodes(_: Admin, State(state): State<ApiState>) -> Result<Reply<Nodes>, ApiError> {
    let config = &state.ctx.config;
    let ip = config
        .server
        .http_listen
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut by_state = BTreeMap::new();
    let mut instance_routes = 0;
    for entry in state.routes.list() {
        if entry.route.kind == clawdeploy_proxy::RouteKind::Instance {
            instance_routes += 1;
            *by_state
                .entry(entry.route.state.as_str().to_string())
                .or_insert(0) += 1;
        }
    }
    let database = match state.store.ping().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!("database ping failed: {e}");
            "unreachable"
        }
    };
    let status = if state.drain.is_draining() {
        "draining"
    } else if database != "ok" {
        "degraded"
    } else {
        "healthy"
    };
    let mut node = Node {
        id: clawdeploy_pool::setup::host_name(),
        ip,
        listen: config.server.http_listen.clone(),
        status,
        database,
        routes: NodeRoutes {
            instances: instance_routes,
            by_state,
        },
        runtime: "none",
        containers: None,
        pending: Some(crate::instances::PENDING_RUNTIME),
    };
    if let Some(pool) = &state.pool {
        let pool_status = pool
            .node_status()
            .await
            .map_err(|e| ApiError::internal("reading the pool", e))?;
        node.id = pool_status.node_id;
        node.runtime = pool_status.runtime;
        node.pending = None;
        node.containers = Some(Containers {
            total: pool_status.idle + pool_status.creating + pool_status.assigned,
            idle: pool_status.idle,
            creating: pool_status.creating,
            assigned: pool_status.assigned,
            sleeping: pool_status.sleeping,
            capacity: pool_status.capacity,
            queued: pool_status.queued,
        });
    }
    Ok(Reply(Nodes { nodes: vec![node] }))
}

/// The query of `GET /admin/instances`: `status`, one instance status to filter by.
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InstancesQuery {
    #[serde(default)]
    status: Option<String>,
}

/// An instance as operators see it: with its owner, node and upstream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminInstance {
    /// The public view.
    #[serde(flatten)]
    pub instance: InstanceView,
    /// The owner's id.
    pub user_id: Uuid,
    /// The node it runs on.
    pub node_id: Option<String>,
    /// Where the edge sends its traffic.
    pub upstream: Option<String>,
}

/// Instances, for operators.
#[derive(Debug, Serialize, ToSchema)]
pub struct Instances {
    /// The instances.
    pub instances: Vec<AdminInstance>,
}

/// `GET /admin/instances`: every instance (or those of one `status`), with its owner, node and
/// upstream.
pub async fn instances(
    _: Admin,
    State(state): State<ApiState>,
    query: Result<Query<InstancesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<Instances>, ApiError> {
    let Query(q) = query?;
    let list = match q.status.as_deref() {
        Some(s) => {
            let status: InstanceStatus = s.parse().map_err(|_| {
                ApiError::invalid(
                    "status",
                    "INVALID_STATUS",
                    "one of queued, provisioning, starting, running, stopped, crashed, deleting",
                )
            })?;
            state.store.list_instances_by_status(status).await?
        }
        None => state.store.list_instances().await?,
    };
    let instances = list
        .into_iter()
        .map(|inst| AdminInstance {
            instance: InstanceView::new(&state, &inst),
            user_id: inst.user_id,
            node_id: inst.node_id,
            upstream: inst.upstream,
        })
        .collect();
    Ok(Reply(Instances { instances }))
}

/// The body of `POST /admin/instances/migrate`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrateBody {
    /// The instance to move.
    pub instance_id: String,
    /// The node to move it to.
    pub target_node: String,
}

/// `POST /admin/instances/migrate`: always 501 `NOT_IMPLEMENTED`, until instances can move
/// between nodes. The body is read (so the endpoint documents it) but not used yet.
pub async fn migrate_instance(
    _: Admin,
    _body: Result<Json<MigrateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "NOT_IMPLEMENTED",
        "Moving an instance between nodes is not supported yet: it needs the pool manager and several edge nodes (pool issue).",
    )
}

/// The query of `GET /admin/users`: `limit` (1–1000, default 100) and `offset`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsersQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct Users {
    /// The users.
    pub users: Vec<UserView>,
}

/// `GET /admin/users`: a page of users.
pub async fn users(
    _: Admin,
    State(state): State<ApiState>,
    query: Result<Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<Users>, ApiError> {
    let Query(q) = query?;
    let users = state
        .store
        .list_users(
            q.limit.unwrap_or(100).clamp(1, 1000),
            q.offset.unwrap_or(0).max(0),
        )
        .await?;
    Ok(Reply(Users {
        users: users.iter().map(UserView::new).collect(),
    }))
}

/// The body of `PUT /admin/users/{id}/tier`: `tier` is `free`, `pro` or `team`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierBody {
    tier: String,
}

/// `PUT /admin/users/{id}/tier`: sets a user's tier and the tier of their instances, which every
/// edge node meters by at once. Upgrading an unverified account is refused (409).
pub async fn set_tier(
    _: Admin,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<TierBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply<TierChanged>, ApiError> {
    let Json(b) = body?;
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::invalid("id", "INVALID_ID", "not a user id (UUID)"))?;
    let new: Tier = b
        .tier
        .parse()
        .map_err(|e: UnknownTier| ApiError::invalid("tier", "INVALID_TIER", e.to_string()))?;
    let Some(user) = state.store.get_user(id).await? else {
        return Err(ApiError::not_found("There is no user with this id."));
    };
    if new > user.tier && !user.email_verified() {
        return Err(ApiError::conflict(
            "EMAIL_NOT_VERIFIED",
            "An unverified account cannot be upgraded; the user must verify their email first.",
        ));
    }
    let applied = crate::billing::change_tier(&state, id, new, "an operator").await?;
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("There is no user with this id."))?;
    tracing::info!(user = %id, tier = %new, "tier changed by an operator");
    Ok(Reply(TierChanged {
        user: UserView::new(&user),
        applied,
    }))
}

/// A user's new tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierChanged {
    /// The user, on the new tier.
    pub user: UserView,
    /// What followed the tier, at once.
    #[serde(flatten)]
    pub applied: crate::billing::TierApplied,
}

/// The query of `GET /admin/outbox`: `to`, one recipient, and `limit` (1–500, default 50).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// One mail of the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct Mail {
    /// Its id.
    pub id: i64,
    /// The recipient.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// When it was kept (RFC 3339).
    pub at: String,
}

/// The mail outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct Outbox {
    /// `outbox` (mails kept here) or `smtp` (sent; the outbox holds older ones).
    pub mode: &'static str,
    /// The mails, newest first.
    pub mails: Vec<Mail>,
}

/// Mails kept because no SMTP relay is configured, newest first.
pub async fn outbox(
    _: Admin,
    State(state): State<ApiState>,
    query: Result<Query<OutboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<Outbox>, ApiError> {
    let Query(q) = query?;
    let to = q.to.as_deref().map(clawdeploy_store::normalize_email);
    let mails = state
        .store
        .list_outbox(to.as_deref(), q.limit.unwrap_or(50).clamp(1, 500))
        .await?;
    let mails = mails
        .into_iter()
        .map(|m| Mail {
            id: m.id,
            to: m.to,
            subject: m.subject,
            body: m.body,
            at: rfc3339(m.created_at),
        })
        .collect();
    Ok(Reply(Outbox {
        mode: state.ctx.mailer.kind(),
        mails,
    }))
}

/// `GET /admin/routes/{host}`: one route of this node's table.
pub async fn get_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
) -> Result<Reply<RouteEntry>, ApiError> {
    let host = state.routes.operator_host(&host).map_err(route_error)?;
    state
        .routes
        .list()
        .into_iter()
        .find(|entry| entry.host == host)
        .map(Reply)
        .ok_or_else(|| ApiError::not_found(format!("There is no route for {host}.")))
}

/// The body of `PUT /admin/routes/{host}`: `upstream`, an `IP:port` (host names are not resolved).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRoute {
    upstream: String,
}

/// `PUT /admin/routes/{host}`: creates (201) or replaces (200) an operator route, kept in the
/// store and sent to every edge sharing it (the same change path as instance routes). Hosts of
/// instances, of the platform itself and of the config file's `[[routes]]` are refused.
pub async fn upsert_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
    body: Result<Json<UpsertRoute>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Reply<RouteEntry>), ApiError> {
    let Json(body) = body?;
    let upstream: SocketAddr = body.upstream.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_UPSTREAM",
            format!("upstream {:?} must be an IP address and port such as 127.0.0.1:9001; host names are not resolved.", body.upstream),
        )
    })?;
    let host = state.routes.check_operator(&host).map_err(route_error)?;
    let created = state
        .store
        .upsert_operator_route(&host, &upstream.to_string())
        .await?;
    operator_route_changed(&state, &host).await?;
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
    Ok((status, Reply(entry)))
}

/// `DELETE /admin/routes/{host}`: removes an operator route from the store and from every edge;
/// 204.
pub async fn delete_route(
    _: Admin,
    State(state): State<ApiState>,
    Path(host): Path<String>,
) -> Result<StatusCode, ApiError> {
    let host = state.routes.check_operator(&host).map_err(route_error)?;
    if !state.store.delete_operator_route(&host).await? {
        return Err(ApiError::not_found(format!(
            "There is no operator route for {host}."
        )));
    }
    operator_route_changed(&state, &host).await?;
    tracing::info!(%host, "operator route deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Routes `host` as the store now says, here before answering and on the other edges through the
/// change broadcast.
async fn operator_route_changed(state: &ApiState, host: &str) -> Result<(), ApiError> {
    let change = clawdeploy_store::changes::Change::OperatorRoute {
        host: host.to_string(),
    };
    clawdeploy_pool::routing::publish(&state.store, &state.routes, &state.bus, change)
        .await
        .map_err(ApiError::from)
}

fn route_error(e: RouteError) -> ApiError {
    let (status, code) = match e {
        RouteError::InvalidHost(_) => (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_HOST"),
        RouteError::ReservedHost(_) => (StatusCode::CONFLICT, "RESERVED_HOST"),
        RouteError::NotOperatorRoute(_) => (StatusCode::CONFLICT, "NOT_OPERATOR_ROUTE"),
        RouteError::ConfiguredRoute(_) => (StatusCode::CONFLICT, "CONFIGURED_ROUTE"),
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
