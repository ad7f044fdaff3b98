//! `/api/instances`: one OpenClaw instance per user (free and pro), its subdomain, settings and
//! lifecycle. Until the pool issue lands, nothing runs the container: an instance stays
//! `provisioning` in the store and its route answers 503 (`starting`), and responses say so.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use clawdeploy_pool::Assigned;
use clawdeploy_proxy::{Resolution, RouteKind};
use clawdeploy_store::time::rfc3339;
use clawdeploy_store::{ApiKey, Conflict, Instance, InstanceStatus, NewInstance, StoreError, Tier};

use crate::account::{self, KeyMap};
use crate::auth::{self, AuthUser, Client};
use crate::error::ApiError;
use crate::{ApiState, Reply};

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// Subdomains never given to instances.
pub const RESERVED: &[&str] = &[
    "app",
    "api",
    "admin",
    "www",
    "mail",
    "smtp",
    "imap",
    "pop",
    "ftp",
    "ns1",
    "ns2",
    "dns",
    "status",
    "docs",
    "help",
    "support",
    "billing",
    "dashboard",
    "static",
    "assets",
    "cdn",
    "ws",
    "metrics",
    "auth",
    "login",
    "signup",
    "root",
    "localhost",
    "webmail",
    "blog",
];

/// What is not wired yet, said in responses.
pub const PENDING_RUNTIME: &str = "No container runtime is configured (runtime.kind = \"none\"): \
    the instance stays provisioning and its address answers 503 until a runtime assigns a container.";

fn instance_exists(tier: Tier) -> ApiError {
    ApiError::conflict(
        "INSTANCE_EXISTS",
        format!("The {tier} tier includes one instance and you already have it: see GET /api/instances/me."),
    )
}

/// Why a subdomain label was refused (the message completes "The subdomain ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadLabel {
    /// Shorter than 3 or longer than 63 bytes.
    #[error("must be 3 to 63 characters long")]
    Length,
    /// A byte other than `a-z`, `0-9` and `-` (upper case included).
    #[error("may contain only letters a-z, digits and hyphens")]
    Characters,
    /// A leading or trailing `-`.
    #[error("must not start or end with a hyphen")]
    EdgeHyphen,
    /// `--` in positions 3–4, as in `xn--`.
    #[error("must not have hyphens in the third and fourth positions (reserved for IDNs)")]
    IdnPrefix,
}

/// An RFC 1123 label of 3–63 characters: lower-case letters, digits and inner hyphens.
pub fn check_label(label: &str) -> Result<(), BadLabel> {
    if !(3..=63).contains(&label.len()) {
        return Err(BadLabel::Length);
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(BadLabel::Characters);
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(BadLabel::EdgeHyphen);
    }
    if label.len() >= 4 && &label[2..4] == "--" {
        return Err(BadLabel::IdnPrefix);
    }
    Ok(())
}

fn random_hex4() -> Result<String, ApiError> {
    let mut b = [0u8; 2];
    getrandom::getrandom(&mut b).map_err(|e| ApiError::internal("random", e))?;
    Ok(format!("{:02x}{:02x}", b[0], b[1]))
}

/// A label from a name or an email's local part, e.g. "John Doe" → "john-doe".
fn base_label(source: &str) -> String {
    let mut out = String::new();
    for c in source.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.len() < 3 || RESERVED.contains(&out.as_str()) {
        "claw".into()
    } else {
        out
    }
}

fn is_reserved(state: &ApiState, label: &str) -> bool {
    if RESERVED.contains(&label) {
        return true;
    }
    // A host the edge already routes exactly (operator route, app domain) is not available.
    let host = format!("{label}.{}", state.routes.base_domain());
    host == state.routes.app_domain()
        || matches!(state.routes.resolve(&host), Resolution::Route(r) if r.kind != RouteKind::Instance)
}

async fn free_suggestion(state: &ApiState, base: &str) -> Result<String, ApiError> {
    let base: String = base.chars().take(58).collect();
    let base = base.trim_end_matches('-');
    for _ in 0..20 {
        let candidate = format!("{base}-{}", random_hex4()?);
        if !is_reserved(state, &candidate) && !state.store.subdomain_taken(&candidate).await? {
            return Ok(candidate);
        }
    }
    Err(ApiError::internal("subdomain", "no free suggestion found"))
}

async fn taken_error(state: &ApiState, label: &str) -> ApiError {
    match free_suggestion(state, label).await {
        Ok(s) => ApiError::conflict(
            "SUBDOMAIN_TAKEN",
            format!("subdomain: {label:?} is already taken; {s:?} is free."),
        )
        .with("field", json!("subdomain"))
        .with("suggestion", json!(s)),
        Err(e) => e,
    }
}

/// The public view of an instance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance's id.
    pub id: Uuid,
    /// Its label under the base domain.
    pub subdomain: String,
    /// Where it is served.
    pub url: String,
    /// Its gateway's WebSocket URL.
    pub gateway_url: String,
    /// Where it is in its lifecycle.
    pub status: InstanceStatus,
    /// The owner's plan.
    pub tier: Tier,
    /// An IANA time zone name, if set.
    pub timezone: Option<String>,
    /// The SOUL.md it runs with, if set.
    pub soul_md: Option<String>,
    /// The agent preset last applied, if any.
    pub preset: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

impl InstanceView {
    /// The view of `inst` on this platform.
    pub fn new(state: &ApiState, inst: &Instance) -> Self {
        let host = format!("{}.{}", inst.subdomain, state.routes.base_domain());
        let config = &state.ctx.config;
        Self {
            id: inst.id,
            subdomain: inst.subdomain.clone(),
            url: config.public_origin(&host),
            gateway_url: format!("{}/ws", config.public_ws_origin(&host)),
            status: inst.status,
            tier: inst.tier,
            timezone: inst.timezone.clone(),
            soul_md: inst.soul_md.clone(),
            preset: inst.preset.clone(),
            created_at: rfc3339(inst.created_at),
            updated_at: rfc3339(inst.updated_at),
        }
    }
}

/// An instance and what is pending (create, restart, restore).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceReply {
    /// The instance.
    pub instance: InstanceView,
    /// What happens next, when it is not simply running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    /// Set when no container runtime is configured: why the instance does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<&'static str>,
}

/// The body of `POST /api/instances`; every field is optional.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    subdomain: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, Option<String>>>)]
    api_keys: Option<KeyMap>,
    #[serde(default)]
    soul_md: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    /// An agent preset (`general`, `coder`…): its SOUL.md unless `soulMd` is given, its AGENTS.md
    /// and its skills.
    #[serde(default)]
    preset: Option<String>,
}

fn check_soul(soul: &str) -> Result<(), ApiError> {
    if soul.len() > 64 * 1024 {
        return Err(ApiError::invalid("soulMd", "TOO_LARGE", "at most 64 KiB"));
    }
    Ok(())
}

fn check_key_map(keys: &KeyMap) -> Result<(), ApiError> {
    for (provider, key) in keys {
        let field = format!("apiKeys.{provider}");
        if !["openai", "anthropic", "google"].contains(&provider.as_str()) {
            return Err(ApiError::invalid(
                &field,
                "INVALID_PROVIDER",
                "use openai, anthropic or google here; a custom endpoint is set with PUT /api/account/api-keys/custom",
            ));
        }
        if let Some(key) = key {
            account::check_key_format(&field, key.trim())?;
        }
    }
    Ok(())
}

/// Checks everything of a new instance that does not depend on who asks: the keys' shape, the
/// SOUL.md, the time zone, the preset, and a requested subdomain (its form, reserved names, and
/// whether it is free now). Answers the preset and the requested label.
async fn check_new(
    state: &ApiState,
    b: &CreateBody,
) -> Result<(Option<&'static clawdeploy_skills::Preset>, Option<String>), ApiError> {
    if let Some(keys) = &b.api_keys {
        check_key_map(keys)?;
    }
    if let Some(soul) = &b.soul_md {
        check_soul(soul)?;
    }
    if let Some(tz) = &b.timezone {
        account::check_timezone("timezone", tz)?;
    }
    let preset = b
        .preset
        .as_deref()
        .map(crate::skills::preset_named)
        .transpose()?;
    let Some(label) = b
        .subdomain
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
    else {
        return Ok((preset, None));
    };
    check_available(state, &label).await?;
    Ok((preset, Some(label)))
}

/// A subdomain someone may take now: well-formed, not reserved, not taken (the last two with a
/// free suggestion).
async fn check_available(state: &ApiState, label: &str) -> Result<(), ApiError> {
    if let Err(why) = check_label(label) {
        return Err(ApiError::invalid(
            "subdomain",
            "INVALID_SUBDOMAIN",
            why.to_string(),
        ));
    }
    if is_reserved(state, label) {
        let suggestion = free_suggestion(state, label).await?;
        return Err(ApiError::invalid(
            "subdomain",
            "SUBDOMAIN_RESERVED",
            format!("{label:?} is reserved; {suggestion:?} is free"),
        )
        .with("suggestion", json!(suggestion)));
    }
    if state.store.subdomain_taken(label).await? {
        return Err(taken_error(state, label).await);
    }
    Ok(())
}

/// What `POST /api/instances/check` answers when everything would be accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckReply {
    /// Always true (a problem is an error naming its field).
    pub ok: bool,
}

/// `POST /api/instances/check`: the checks of `POST /api/instances` that need no account, so the
/// signup page finds a taken subdomain or a malformed key before it creates the account (no
/// account is left behind by a form that fails). The subdomain is free now, not reserved.
pub async fn check(
    State(state): State<ApiState>,
    body: JsonBody<CreateBody>,
) -> Result<Reply<CheckReply>, ApiError> {
    let Json(b) = body?;
    check_new(&state, &b).await?;
    Ok(Reply(CheckReply { ok: true }))
}

async fn apply_keys(
    state: &ApiState,
    auth: &AuthUser,
    client: &Client,
    keys: &KeyMap,
) -> Result<(), ApiError> {
    for (provider, key) in keys {
        let field = format!("apiKeys.{provider}");
        match key {
            Some(key) => {
                account::set_provider_key(state, auth.user.id, &field, provider, key, None).await?;
                auth::log_event(
                    state,
                    Some(auth.user.id),
                    "api_key_set",
                    client,
                    Some(provider),
                )
                .await;
            }
            None => {
                if state.store.delete_api_key(auth.user.id, provider).await? {
                    auth::log_event(
                        state,
                        Some(auth.user.id),
                        "api_key_deleted",
                        client,
                        Some(provider),
                    )
                    .await;
                }
            }
        }
    }
    Ok(())
}

/// `POST /api/instances`: creates the caller's instance, routes it on every edge node and asks the
/// pool for a container; 201 with the instance. Without a requested subdomain, one is made from the
/// name or the email. 409 when the tier's one instance exists or the subdomain is taken.
pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<CreateBody>,
) -> Result<(StatusCode, Reply<InstanceReply>), ApiError> {
    let Json(b) = body?;
    let user = &auth.user;
    // Answered before the label is checked; the store decides for good (concurrent creates on
    // several nodes) when the instance is inserted.
    if user.tier.one_instance()
        && !state
            .store
            .list_instances_by_user(user.id)
            .await?
            .is_empty()
    {
        return Err(instance_exists(user.tier));
    }
    let (preset, requested) = check_new(&state, &b).await?;
    let label = match requested {
        Some(label) => label,
        None => {
            let source = user
                .name
                .clone()
                .unwrap_or_else(|| user.email.split('@').next().unwrap_or("claw").to_string());
            free_suggestion(&state, &base_label(&source)).await?
        }
    };
    let inst = state
        .store
        .create_instance(&NewInstance {
            user_id: user.id,
            subdomain: &label,
            tier: user.tier,
            status: InstanceStatus::Provisioning,
            soul_md: b.soul_md.as_deref().or(preset.map(|p| p.soul.as_str())),
            timezone: b.timezone.as_deref().or(Some(user.timezone.as_str())),
        })
        .await;
    let inst = match inst {
        Ok(inst) => inst,
        Err(StoreError::Conflict(Conflict::InstanceExists)) => {
            return Err(instance_exists(user.tier))
        }
        Err(StoreError::Conflict(_)) => return Err(taken_error(&state, &label).await),
        Err(e) => return Err(e.into()),
    };
    if let Some(keys) = &b.api_keys {
        if let Err(e) = apply_keys(&state, &auth, &client, keys).await {
            // Keep create atomic from the client's view.
            let _ = state.store.delete_instance(inst.id).await;
            return Err(e);
        }
    }
    // The preset and its skills are recorded before assignment, which writes them in.
    let inst = match preset {
        Some(preset) => {
            let inst = state
                .store
                .set_instance_preset(inst.id, &preset.id, None)
                .await?;
            crate::skills::install_preset_skills(&state, &inst, preset).await?;
            inst
        }
        None => inst,
    };
    // The route exists at once (503 with Retry-After until a container runs), then the pool hands
    // over a warm container: the instance is usually running when this returns.
    state.instance_changed(inst.id, &inst.subdomain).await;
    let assigned = match &state.pool {
        Some(pool) => match pool.assign(&inst).await {
            Ok(assigned) => Some(assigned),
            Err(e) => {
                tracing::error!(instance = %inst.id, "assignment failed: {e}");
                None
            }
        },
        None => None,
    };
    let inst = state.store.get_instance(inst.id).await?.unwrap_or(inst);
    // This edge routes the outcome before answering, so the next request gets through.
    state.instance_changed(inst.id, &inst.subdomain).await;
    auth::log_event(
        &state,
        Some(user.id),
        "instance_created",
        &client,
        Some(&inst.subdomain),
    )
    .await;
    tracing::info!(instance = %inst.id, subdomain = %inst.subdomain, status = inst.status.as_str(), "instance created");
    let mut body = InstanceReply {
        instance: InstanceView::new(&state, &inst),
        message: None,
        pending: None,
    };
    match assigned {
        Some(Assigned::Running(_)) => {}
        Some(Assigned::Provisioning) => {
            body.message = Some("No warm instance was free: a new one is being created; it answers within a minute.");
        }
        Some(Assigned::Queued) => {
            body.message = Some("This node is at capacity: your instance is queued and starts as soon as room frees.");
        }
        None if state.pool.is_some() => {
            body.message = Some(
                "The instance could not be started; retry with POST /api/instances/me/restart.",
            );
        }
        None => body.pending = Some(PENDING_RUNTIME),
    }
    Ok((StatusCode::CREATED, Reply(body)))
}

/// Whether a subdomain can be had.
#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    /// The label asked about, normalised.
    pub subdomain: String,
    /// Whether it can be had.
    pub available: bool,
    /// When available: the host it gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When not: `invalid`, `reserved` or `taken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For people.
    pub message: String,
    /// When reserved or taken: a free label like it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// `GET /api/subdomains/{label}`: whether a subdomain can be had, for the signup page's live
/// check. The same checks as [`create`]; a taken or reserved label comes with a free suggestion.
pub async fn subdomain_availability(
    State(state): State<ApiState>,
    axum::extract::Path(label): axum::extract::Path<String>,
) -> Result<Reply<Availability>, ApiError> {
    let label = label.trim().to_ascii_lowercase();
    let host = format!("{label}.{}", state.routes.base_domain());
    if let Err(why) = check_label(&label) {
        return Ok(Reply(Availability {
            subdomain: label,
            available: false,
            host: None,
            reason: Some("invalid"),
            message: format!("A subdomain {why}."),
            suggestion: None,
        }));
    }
    let (reason, message) = if is_reserved(&state, &label) {
        ("reserved", format!("{host} is reserved."))
    } else if state.store.subdomain_taken(&label).await? {
        ("taken", format!("{host} is already taken."))
    } else {
        return Ok(Reply(Availability {
            subdomain: label,
            available: true,
            message: format!("{host} is available."),
            host: Some(host),
            reason: None,
            suggestion: None,
        }));
    };
    let suggestion = free_suggestion(&state, &label).await?;
    Ok(Reply(Availability {
        subdomain: label,
        available: false,
        host: None,
        reason: Some(reason),
        message: format!(
            "{message} {suggestion}.{} is free.",
            state.routes.base_domain()
        ),
        suggestion: Some(suggestion),
    }))
}

pub(crate) async fn my_instance(state: &ApiState, auth: &AuthUser) -> Result<Instance, ApiError> {
    state
        .store
        .list_instances_by_user(auth.user.id)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::not_found("You have no instance yet: create one with POST /api/instances.")
        })
}

/// This period's usage of an instance against its tier's quotas.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Messages counted this period (the name says month: free tiers count per calendar month).
    pub messages_this_month: i64,
    /// LLM tokens counted this period.
    pub tokens_this_month: i64,
    /// The tier's message quota; `null` when unlimited.
    pub messages_per_month: Option<u64>,
    /// The tier's token budget; `null` when unlimited.
    pub tokens_per_month: Option<u64>,
    /// When the period began (RFC 3339).
    pub period_start: String,
    /// When the counts start again (RFC 3339).
    pub resets_at: String,
}

/// The caller's instance with its usage and provider keys.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MyInstance {
    /// The instance.
    #[serde(flatten)]
    pub instance: InstanceView,
    /// This period's usage.
    pub usage: Usage,
    /// The owner's provider keys, masked.
    pub api_keys: Vec<ApiKey>,
}

/// `{"instance": ...}` of `GET /api/instances/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyInstanceReply {
    /// The instance with its usage and keys.
    pub instance: MyInstance,
}

/// This period's usage of `inst` against its tier's quotas, counts not yet flushed (and, with
/// Redis, other nodes' counts) included.
pub(crate) async fn usage_of(state: &ApiState, inst: &Instance) -> Result<Usage, ApiError> {
    // Paid tiers count per billing period from the owner's anchor, free per calendar month.
    let plan = clawdeploy_metering::Plan::new(inst.tier, inst.billing_anchor_at);
    let period = plan.period(clawdeploy_store::time::now_ms());
    let usage = state
        .store
        .usage_since(
            inst.id,
            &clawdeploy_store::time::day_string(period.start_ms),
        )
        .await?;
    // Counts made since the last flush are in the meter only.
    let (messages, tokens) = state.ctx.meter.as_ref().map_or((0, 0), |m| {
        m.unflushed_since(&inst.id.to_string(), period.start_ms)
    });
    // With Redis the meter also knows other nodes' counts not yet in the store.
    let (shared_messages, shared_tokens) = state
        .ctx
        .meter
        .as_ref()
        .map_or((0, 0), |m| m.usage(&inst.id.to_string(), plan));
    let limits = state.ctx.config.tiers.get(inst.tier);
    let usage = Usage {
        messages_this_month: usage
            .messages
            .saturating_add(i64::try_from(messages).unwrap_or(i64::MAX))
            .max(i64::try_from(shared_messages).unwrap_or(i64::MAX)),
        tokens_this_month: usage
            .tokens
            .saturating_add(i64::try_from(tokens).unwrap_or(i64::MAX))
            .max(i64::try_from(shared_tokens).unwrap_or(i64::MAX)),
        messages_per_month: (limits.messages_per_month > 0).then_some(limits.messages_per_month),
        tokens_per_month: (limits.tokens_per_month > 0).then_some(limits.tokens_per_month),
        period_start: rfc3339(period.start_ms),
        resets_at: rfc3339(period.end_ms),
    };
    Ok(usage)
}

/// `GET /api/instances/me`: the caller's instance, its provider keys (masked) and this period's
/// usage against the tier's quotas, including counts the meter has not flushed yet.
pub async fn get_me(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<MyInstanceReply>, ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let usage = usage_of(&state, &inst).await?;
    let api_keys = state.store.list_api_keys(auth.user.id).await?;
    Ok(Reply(MyInstanceReply {
        instance: MyInstance {
            instance: InstanceView::new(&state, &inst),
            usage,
            api_keys,
        },
    }))
}

/// The body of `PATCH /api/instances/me`: absent fields stay as they are; at least one is needed.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    subdomain: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, Option<String>>>)]
    api_keys: Option<KeyMap>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    soul_md: Option<Option<String>>,
    #[serde(default)]
    timezone: Option<String>,
}

/// `PATCH /api/instances/me`: changes the subdomain, provider keys, SOUL.md or time zone;
/// `restartRequired` says whether the running instance picks the change up by itself.
pub async fn patch_me(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<PatchBody>,
) -> Result<Reply<Patched>, ApiError> {
    let Json(b) = body?;
    let mut inst = my_instance(&state, &auth).await?;
    if b.subdomain.is_none() && b.api_keys.is_none() && b.soul_md.is_none() && b.timezone.is_none()
    {
        return Err(ApiError::invalid(
            "body",
            "NOTHING_TO_UPDATE",
            "send at least one of subdomain, apiKeys, soulMd, timezone",
        ));
    }
    let new_label = match b
        .subdomain
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
    {
        Some(label) if label != inst.subdomain => {
            check_available(&state, &label).await?;
            Some(label)
        }
        _ => None,
    };
    if let Some(keys) = &b.api_keys {
        check_key_map(keys)?;
    }
    if let Some(Some(soul)) = &b.soul_md {
        check_soul(soul)?;
    }
    if let Some(tz) = &b.timezone {
        account::check_timezone("timezone", tz)?;
    }
    let mut restart = false;
    let mut changed = Vec::new();
    if let Some(label) = &new_label {
        let old = inst.subdomain.clone();
        inst = match state.store.update_instance_subdomain(inst.id, label).await {
            Ok(inst) => inst,
            Err(StoreError::Conflict(_)) => return Err(taken_error(&state, label).await),
            Err(e) => return Err(e.into()),
        };
        // Told with the old name, so every node knows what to remove.
        state.instance_changed(inst.id, &old).await;
        auth::log_event(
            &state,
            Some(auth.user.id),
            "subdomain_changed",
            &client,
            Some(&format!("{old} -> {}", inst.subdomain)),
        )
        .await;
        // OpenClaw's allowed origins name the host.
        restart = true;
        changed.push("subdomain");
    }
    if let Some(keys) = &b.api_keys {
        apply_keys(&state, &auth, &client, keys).await?;
        changed.push("apiKeys");
    }
    if let Some(soul) = &b.soul_md {
        inst = state
            .store
            .update_instance_soul(inst.id, soul.as_deref())
            .await?;
        restart = true;
        changed.push("soulMd");
    }
    if let Some(tz) = &b.timezone {
        inst = state
            .store
            .update_instance_timezone(inst.id, Some(tz))
            .await?;
        restart = true;
        changed.push("timezone");
    }
    if restart {
        if let Some(pool) = &state.pool {
            // The new config is written into the running instance, which reads it on its next
            // turn: no restart.
            restart = !pool
                .reconfigure(&inst)
                .await
                .map_err(|e| ApiError::internal("updating the instance's config", e))?;
        }
    }
    let message = if restart {
        "Instance updated, restart required: the address, SOUL.md and the time zone are read when OpenClaw starts."
    } else if changed.iter().any(|c| *c != "apiKeys") {
        "Instance updated: the new settings apply from the next message, no restart needed."
    } else {
        "Instance updated; no restart needed: the edge injects provider keys into each LLM request."
    };
    Ok(Reply(Patched {
        message,
        restart_required: restart,
        changed,
        instance: InstanceView::new(&state, &inst),
    }))
}

/// What `PATCH /api/instances/me` changed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Patched {
    /// For people: whether and why a restart is needed.
    pub message: &'static str,
    /// Whether the running instance needs a restart to pick the change up.
    pub restart_required: bool,
    /// The fields changed: `subdomain`, `apiKeys`, `soulMd`, `timezone`.
    pub changed: Vec<&'static str>,
    /// The instance as it is now.
    pub instance: InstanceView,
}

/// `POST /api/instances/me/restart`: restarts the instance in the background and answers 202 at
/// once; its route flips back to running when it is ready. Refused (403) for an account unverified
/// past `limits.unverified_grace_days`.
pub async fn restart(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<(StatusCode, Reply<InstanceReply>), ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let grace =
        i64::from(state.ctx.config.limits.unverified_grace_days) * clawdeploy_store::time::DAY_MS;
    if !auth.user.email_verified()
        && clawdeploy_store::time::now_ms() - auth.user.created_at > grace
    {
        return Err(ApiError::forbidden(
            "EMAIL_NOT_VERIFIED",
            "Verify your email address to start this instance again (see POST /api/auth/resend-verification).",
        ));
    }
    let inst = match inst.status {
        InstanceStatus::Running
        | InstanceStatus::Sleeping
        | InstanceStatus::Stopped
        | InstanceStatus::Crashed => {
            let inst = state
                .store
                .update_instance_status(inst.id, InstanceStatus::Starting)
                .await?;
            state.instance_changed(inst.id, &inst.subdomain).await;
            inst
        }
        _ => inst,
    };
    if let Some(pool) = state.pool.clone() {
        let target = inst.clone();
        // Readiness can take a while: the response says `starting`, the route flips when ready.
        tokio::spawn(async move {
            let result = match pool.restart(&target).await {
                Err(clawdeploy_pool::Error::NotReady(..)) => pool.assign(&target).await.map(|_| ()),
                other => other.map(|_| ()),
            };
            if let Err(e) = result {
                tracing::error!(instance = %target.id, "restart failed: {e}");
            }
        });
    }
    auth::log_event(
        &state,
        Some(auth.user.id),
        "instance_restart",
        &client,
        None,
    )
    .await;
    let body = InstanceReply {
        instance: InstanceView::new(&state, &inst),
        message: Some("Restart requested: the instance answers again once its status is running again (OpenClaw takes about 30 s to start)."),
        pending: state.pool.is_none().then_some(PENDING_RUNTIME),
    };
    Ok((StatusCode::ACCEPTED, Reply(body)))
}

/// Cancels the instance (PRD §4.4.3): it stops at once and is kept, with its data, for
/// `pool.cancel_grace_days`; `POST /api/instances/me/restore` undoes it until then. After the grace
/// period its data is exported to the archive and the container, route and record go away.
pub async fn delete_me(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<Reply<Cancelled>, ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let inst = state.store.schedule_instance_deletion(inst.id).await?;
    state.instance_changed(inst.id, &inst.subdomain).await;
    if let Some(pool) = &state.pool {
        pool.stop(&inst)
            .await
            .map_err(|e| ApiError::internal("stopping the instance's container", e))?;
    }
    let grace_days = state.ctx.config.pool.cancel_grace_days;
    let requested = state
        .store
        .instance_deletion_requested_at(inst.id)
        .await?
        .unwrap_or_else(clawdeploy_store::time::now_ms);
    let deletion_at = requested + i64::from(grace_days) * clawdeploy_store::time::DAY_MS;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "instance_deleted",
        &client,
        Some(&inst.subdomain),
    )
    .await;
    tracing::info!(instance = %inst.id, grace_days, "instance cancelled; archived after its grace period");
    Ok(Reply(Cancelled {
        deleted: false,
        scheduled: true,
        subdomain: inst.subdomain.clone(),
        deletion_at: rfc3339(deletion_at),
        message: format!(
            "Your instance is stopped and kept with its data for {grace_days} days, then exported to the archive and deleted. \
             POST /api/instances/me/restore brings it back until then."
        ),
        instance: InstanceView::new(&state, &inst),
    }))
}

/// A cancelled instance, kept for its grace period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// Always `false`: it is kept until `deletionAt`.
    pub deleted: bool,
    /// Always `true`.
    pub scheduled: bool,
    /// Its label.
    pub subdomain: String,
    /// When it is archived and deleted (RFC 3339).
    pub deletion_at: String,
    /// For people: how to get it back.
    pub message: String,
    /// The instance, stopped.
    pub instance: InstanceView,
}

/// Undoes a cancellation within its grace period and starts the instance again.
pub async fn restore_me(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
) -> Result<(StatusCode, Reply<InstanceReply>), ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let Some(inst) = state.store.cancel_instance_deletion(inst.id).await? else {
        return Err(ApiError::conflict(
            "NOT_DELETING",
            "This instance is not scheduled for deletion; there is nothing to restore.",
        ));
    };
    state.instance_changed(inst.id, &inst.subdomain).await;
    auth::log_event(
        &state,
        Some(auth.user.id),
        "instance_restored",
        &client,
        Some(&inst.subdomain),
    )
    .await;
    restart(State(state), auth, client).await
}

/// Archives instances whose cancellation grace period is over: data exported, container, route
/// and record removed. Part of the hourly sweep.
pub async fn archive_due(state: &ApiState) -> Result<(), StoreError> {
    let config = &state.ctx.config;
    let before = clawdeploy_store::time::now_ms()
        - i64::from(config.pool.cancel_grace_days) * clawdeploy_store::time::DAY_MS;
    let archive_dir = if config.pool.archive_dir.as_os_str().is_empty() {
        config.server.data_dir.join("archive")
    } else {
        config.pool.archive_dir.clone()
    };
    for inst in state.store.instances_due_for_archive(before).await? {
        if let Some(pool) = &state.pool {
            match pool.archive(&inst, &archive_dir).await {
                Ok(path) => {
                    tracing::info!(instance = %inst.id, archive = ?path, "instance archived")
                }
                Err(e) => {
                    // Kept for the next sweep rather than losing its data.
                    tracing::error!(instance = %inst.id, "cannot archive the instance: {e}");
                    continue;
                }
            }
        }
        state.store.delete_instance(inst.id).await?;
        state.instance_changed(inst.id, &inst.subdomain).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_label("john").is_ok());
        assert!(check_label("a1-b2").is_ok());
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a_b",
            "ABC",
            "xn--abc",
            &"a".repeat(64),
        ] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
        assert_eq!(base_label("John Doe"), "john-doe");
        assert_eq!(base_label("x"), "claw");
        assert_eq!(base_label("admin"), "claw");
    }
}
