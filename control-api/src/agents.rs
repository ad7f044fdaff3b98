//! `/api/agents`: sub-agents of the caller's instance (issue 18). A sub-agent here is a child
//! session of the main agent's (`agent:main:subagent:<id>`, `parentSessionKey` the main session,
//! `spawnDepth` 1) started with a task, which is how OpenClaw 2026.9.6 lets a client start one
//! (`sessions.create`; its model-side `sessions_spawn` tool is the other way, capped by the
//! tenant's config). The request goes through this node's edge under the owner's identity, like
//! the dashboard's chat, so the edge's owner check, message metering and sub-agent refusal apply.
//! Status is pushed to the dashboard over the chat socket (`sessions.changed` events); this API
//! lists the children and their state on demand.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use clawdeploy_store::{Instance, InstanceStatus};

use crate::auth::{self, AuthUser};
use crate::chat::{call, connect_gateway, Gateway};
use crate::instances::my_instance;
use crate::{ApiError, ApiState, Reply};

/// The main agent's session, every sub-agent's parent.
const MAIN_SESSION: &str = "agent:main:main";
/// What a sub-agent's session key contains.
const SUBAGENT_KEY: &str = ":subagent:";

/// Body of `POST /api/agents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnBody {
    /// What the sub-agent should do (1–4000 characters).
    task: String,
    /// A short name shown in the agents panel (at most 80 characters).
    label: Option<String>,
}

/// A sub-agent of the instance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// Its session key.
    pub key: String,
    /// Its label, if any.
    pub label: Option<String>,
    /// OpenClaw's state of it (`running`, `done`, …), if it says.
    pub status: Option<String>,
    /// When it last changed (unix ms), if OpenClaw says.
    pub updated_at: Option<i64>,
}

/// `GET /api/agents`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// The instance's sub-agents, as OpenClaw lists them.
    pub agents: Vec<AgentView>,
    /// Sub-agents the tier runs at once; 0: none.
    pub limit: u32,
}

/// A sub-agent started.
#[derive(Debug, Serialize, ToSchema)]
pub struct Spawned {
    /// The sub-agent.
    pub agent: AgentView,
    /// What happens next.
    pub message: &'static str,
}

fn unavailable(why: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "GATEWAY_UNAVAILABLE",
        "Your instance's gateway could not be reached; try again in a moment.",
    );
    err.cause = Some(format!("agents: {why}"));
    err.retry_after = Some(5);
    err
}

/// The owner's gateway, through this node's edge (woken if it sleeps).
async fn open(state: &ApiState, inst: &Instance, token: &str) -> Result<Gateway, ApiError> {
    if !matches!(
        inst.status,
        InstanceStatus::Running | InstanceStatus::Sleeping
    ) {
        return Err(ApiError::conflict(
            "INSTANCE_NOT_RUNNING",
            format!(
                "Your instance is {}; sub-agents run in a running instance.",
                inst.status
            ),
        ));
    }
    let host = format!("{}.{}", inst.subdomain, state.routes.base_domain());
    let (gateway, _) = connect_gateway(state, &host, token, true)
        .await
        .map_err(unavailable)?;
    Ok(gateway)
}

/// The child sessions of `sessions.list`'s answer.
fn children(list: &Value) -> Vec<AgentView> {
    list["payload"]["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let key = s["key"].as_str()?;
            key.contains(SUBAGENT_KEY).then(|| AgentView {
                key: key.to_string(),
                label: s["label"].as_str().map(str::to_string),
                status: s["status"].as_str().map(str::to_string),
                updated_at: s["updatedAt"].as_i64(),
            })
        })
        .collect()
}

fn running(agents: &[AgentView]) -> usize {
    agents
        .iter()
        .filter(|a| matches!(a.status.as_deref(), Some("running" | "started" | "queued")))
        .count()
}

/// `GET /api/agents`: the instance's sub-agents and the tier's limit.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    method: Method,
    headers: HeaderMap,
) -> Result<Reply<AgentList>, ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let token = auth::request_token(&method, &headers)?.to_string();
    let mut gateway = open(&state, &inst, &token).await?;
    let sessions = call(&mut gateway, "agents-list", "sessions.list", json!({}))
        .await
        .map_err(unavailable)?;
    let _ = gateway.close(None).await;
    Ok(Reply(AgentList {
        agents: children(&sessions),
        limit: state.ctx.config.tiers.get(inst.tier).subagents,
    }))
}

/// `POST /api/agents`: starts a sub-agent on a task. 202 with it; 403 `SUBAGENT_LIMIT` on a tier
/// without sub-agents or with its cap running; the edge's refusals (`QUOTA_EXCEEDED`: a task is a
/// message) are passed on with their code.
pub async fn spawn(
    State(state): State<ApiState>,
    auth: AuthUser,
    method: Method,
    headers: HeaderMap,
    body: Result<Json<SpawnBody>, JsonRejection>,
) -> Result<(StatusCode, Reply<Spawned>), ApiError> {
    let Json(b) = body?;
    let task = b.task.trim();
    if task.is_empty() || task.chars().count() > 4000 {
        return Err(ApiError::invalid(
            "task",
            "INVALID_TASK",
            "1 to 4000 characters of what the sub-agent should do",
        ));
    }
    let label = b.label.as_deref().map(str::trim).filter(|l| !l.is_empty());
    if label.is_some_and(|l| l.chars().count() > 80 || l.chars().any(char::is_control)) {
        return Err(ApiError::invalid(
            "label",
            "INVALID_LABEL",
            "at most 80 characters, no control characters",
        ));
    }
    let inst = my_instance(&state, &auth).await?;
    let cap = state.ctx.config.tiers.get(inst.tier).subagents;
    let limit = |running: usize| {
        ApiError::forbidden(
            "SUBAGENT_LIMIT",
            if cap == 0 {
                format!("The {} tier runs the main agent only; sub-agents come with a paid tier.", inst.tier)
            } else {
                format!("The {} tier runs {cap} sub-agents at once and {running} are running; wait for one to finish.", inst.tier)
            },
        )
        .with("limit", json!(cap))
    };
    if cap == 0 {
        return Err(limit(0));
    }
    let token = auth::request_token(&method, &headers)?.to_string();
    let mut gateway = open(&state, &inst, &token).await?;
    let sessions = call(&mut gateway, "agents-list", "sessions.list", json!({}))
        .await
        .map_err(unavailable)?;
    let busy = running(&children(&sessions));
    if busy >= cap as usize {
        return Err(limit(busy));
    }
    let key = format!("agent:main:subagent:{}", uuid::Uuid::new_v4());
    let mut params = json!({"key": key, "parentSessionKey": MAIN_SESSION, "spawnDepth": 1, "task": task,
        "idempotencyKey": uuid::Uuid::new_v4().to_string()});
    if let Some(label) = label {
        params["label"] = json!(label);
    }
    let answer = call(&mut gateway, "agents-spawn", "sessions.create", params)
        .await
        .map_err(unavailable)?;
    let _ = gateway.close(None).await;
    if answer["ok"] != true {
        let code = answer["error"]["code"].as_str().unwrap_or("SPAWN_REFUSED");
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("The instance refused the sub-agent.");
        let status = match code {
            "QUOTA_EXCEEDED" => StatusCode::TOO_MANY_REQUESTS,
            "SUBAGENT_LIMIT" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_GATEWAY,
        };
        let code: &'static str = match code {
            "QUOTA_EXCEEDED" => "QUOTA_EXCEEDED",
            "SUBAGENT_LIMIT" => "SUBAGENT_LIMIT",
            _ => "SPAWN_REFUSED",
        };
        return Err(ApiError::new(status, code, message.to_string()));
    }
    tracing::info!(instance = %inst.id, %key, "sub-agent started");
    Ok((
        StatusCode::ACCEPTED,
        Reply(Spawned {
            agent: AgentView {
                key,
                label: label.map(str::to_string),
                status: answer["payload"]["status"].as_str().map(str::to_string),
                updated_at: None,
            },
            message: "The sub-agent is working; its progress shows in the agents panel.",
        }),
    ))
}
