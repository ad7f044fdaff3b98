//! `/api/skills`: the catalogue, and installing, configuring and removing skills in the caller's
//! instance (issue 18). The catalogue is [`clawdeploy_skills::Catalogue`]; registry skills are
//! installed by OpenClaw's own installer from the platform's registry
//! ([`clawdeploy_skills::Registry`], [`clawdeploy_pool::skills`]); bundled skills by enabling them
//! in the instance's config. Either way the instance picks the change up without a restart.
//!
//! An install completes or leaves the instance as it was: the registry fetch is checked before
//! the instance is asked, a failed or refused install removes what the instance unpacked, and the
//! store's cap check (one transaction per instance) decides races between concurrent installs.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use clawdeploy_config::Tier;
use clawdeploy_skills::{ConfigError, FieldKind, Origin, RegistryError, Skill};
use clawdeploy_store::{
    InstalledSkill, Instance, InstanceStatus, NewSkill, SkillChange, SkillSource, StoreError,
};

use crate::auth::AuthUser;
use crate::instances::{my_instance, InstanceView};
use crate::{ApiError, ApiState, Reply};

/// Query of `GET /api/skills`: `category` and a free-text `q` over names, descriptions, tags.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CatalogueQuery {
    category: Option<String>,
    q: Option<String>,
}

/// Body of `POST /api/skills/install`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallBody {
    /// The catalogue id (`GET /api/skills`).
    skill_id: String,
    /// The skill's config fields by name (strings); secret ones are sealed and never shown again.
    #[serde(default)]
    #[schema(value_type = Object)]
    config: Map<String, Value>,
}

/// Body of `PATCH /api/skills/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Fields to set (merged); `null` or "" clears one; a secret given replaces the old one.
    #[schema(value_type = Option<Object>)]
    config: Option<Map<String, Value>>,
    /// Enable or disable the skill.
    enabled: Option<bool>,
}

/// One config field a skill asks for.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldView {
    /// The environment variable it becomes in the instance.
    pub name: String,
    /// What a person is asked for.
    pub label: String,
    /// `secret` (sealed, never shown again) or `string`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Installing without it is refused.
    pub required: bool,
}

/// A catalogue skill, with the caller's instance's state of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillView {
    /// OpenClaw's name for it (a bundled skill's name or a registry slug).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// An emoji for its card.
    pub emoji: Option<String>,
    /// `productivity`, `development`, `creative`, `media`, `automation`, `community`, `other`.
    pub category: String,
    /// Search tags.
    pub tags: Vec<String>,
    /// Its home page.
    pub homepage: Option<String>,
    /// The version the catalogue offers.
    pub version: Option<String>,
    /// `bundled` (enabled in the instance's config) or `registry` (installed by OpenClaw from the
    /// platform's registry).
    pub source: &'static str,
    /// `bundled`, `curated` or `upstream`; absent when the catalogue no longer offers it.
    pub origin: Option<&'static str>,
    /// The cheapest tier that may install it.
    pub min_tier: Option<Tier>,
    /// Whether the caller's tier may install it.
    pub available_on_tier: bool,
    /// Config fields asked at install.
    pub fields: Vec<FieldView>,
    /// Installed in the caller's instance.
    pub installed: bool,
    /// Installed and enabled.
    pub enabled: bool,
    /// The version installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_version: Option<String>,
    /// When it was installed (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<i64>,
    /// Why the platform disabled it (a lower tier's cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Its plain config fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// Names of its secret fields that are set (never their values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_fields: Option<Vec<String>>,
}

/// The caller's tier's skill cap and use.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillLimits {
    /// The instance's tier.
    pub tier: Tier,
    /// Enabled skills allowed; `null`: unlimited.
    pub skills: Option<u32>,
    /// Enabled now.
    pub enabled: usize,
    /// Where to upgrade.
    pub upgrade_url: String,
}

/// `GET /api/skills`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkillList {
    /// The catalogue (filtered), then installed skills it no longer offers.
    pub skills: Vec<SkillView>,
    /// Every category of the catalogue.
    pub categories: Vec<String>,
    /// The tier's cap.
    pub limits: SkillLimits,
}

/// A skill installed or changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkillChanged {
    /// The skill, as it is now.
    pub skill: SkillView,
    /// What happens next.
    pub message: String,
}

/// A skill uninstalled.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkillRemoved {
    /// Its id.
    pub removed: String,
    /// What happened.
    pub message: &'static str,
}

fn cap_of(state: &ApiState, tier: Tier) -> u32 {
    state.ctx.config.tiers.get(tier).skills
}

pub(crate) fn upgrade_url(state: &ApiState) -> String {
    let url = &state.ctx.config.metering.upgrade_url;
    if url.is_empty() {
        format!("{}/billing", state.ctx.app_origin())
    } else {
        url.clone()
    }
}

fn limit_error(state: &ApiState, tier: Tier, cap: u32) -> ApiError {
    ApiError::forbidden(
        "SKILL_LIMIT",
        format!(
            "The {tier} tier allows {cap} enabled skills and this instance has {cap}: disable or \
             uninstall one, or upgrade for more: {}",
            upgrade_url(state)
        ),
    )
    .with("limit", json!(cap))
    .with("upgradeUrl", json!(upgrade_url(state)))
}

fn not_installed(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "SKILL_NOT_INSTALLED",
        format!("The skill {id:?} is not installed in your instance."),
    )
}

fn config_error(e: ConfigError) -> ApiError {
    let field = match &e {
        ConfigError::Missing(f) | ConfigError::NotText(f) | ConfigError::BadText(f) => f.clone(),
        ConfigError::Unknown { field, .. } => field.clone(),
    };
    ApiError::invalid(
        &format!("config.{field}"),
        "INVALID_SKILL_CONFIG",
        e.to_string(),
    )
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound(slug) => ApiError::new(
            StatusCode::NOT_FOUND,
            "SKILL_NOT_FOUND",
            format!("The registry has no skill {slug:?}."),
        ),
        RegistryError::Unavailable(why) => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "REGISTRY_UNAVAILABLE",
                "The skill registry is unavailable; nothing was installed. Try again in a minute.",
            );
            err.cause = Some(format!("skill registry: {why}"));
            err.retry_after = Some(60);
            err
        }
        refused @ (RegistryError::Verdict { .. } | RegistryError::Archive { .. }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SKILL_REFUSED",
            format!("{refused}; nothing was installed."),
        ),
    }
}

fn skill_view(
    skill: Option<&Skill>,
    installed: Option<&InstalledSkill>,
    tier: Tier,
    id: &str,
) -> SkillView {
    let fields = skill.map_or_else(Vec::new, |s| {
        s.fields
            .iter()
            .map(|f| FieldView {
                name: f.name.clone(),
                label: f.label.clone(),
                kind: match f.kind {
                    FieldKind::Secret => "secret",
                    FieldKind::String => "string",
                },
                required: f.required,
            })
            .collect()
    });
    let source = match (skill, installed) {
        (Some(s), _) if s.origin.from_registry() => "registry",
        (None, Some(i)) if i.source == SkillSource::Registry => "registry",
        _ => "bundled",
    };
    SkillView {
        id: id.to_string(),
        // Installed, but no longer offered (the operator removed it): its id stands for it.
        name: skill.map_or_else(|| id.to_string(), |s| s.name.clone()),
        description: skill.map(|s| s.description.clone()).unwrap_or_default(),
        emoji: skill.and_then(|s| s.emoji.clone()),
        category: skill.map_or_else(|| "other".to_string(), |s| s.category.clone()),
        tags: skill.map(|s| s.tags.clone()).unwrap_or_default(),
        homepage: skill.and_then(|s| s.homepage.clone()),
        version: skill.map(|s| s.version.clone()),
        source,
        origin: skill.map(|s| match s.origin {
            Origin::Bundled => "bundled",
            Origin::Curated => "curated",
            Origin::Upstream => "upstream",
        }),
        min_tier: skill.map(|s| s.min_tier),
        available_on_tier: skill.is_some_and(|s| s.min_tier <= tier),
        fields,
        installed: installed.is_some(),
        enabled: installed.is_some_and(|i| i.enabled),
        installed_version: installed.map(|i| i.version.clone()),
        installed_at: installed.map(|i| i.installed_at),
        disabled_reason: installed.and_then(|i| i.disabled_reason.clone()),
        config: installed.map(|i| i.config.clone()),
        secret_fields: installed.map(|i| i.secret_fields.clone()),
    }
}

/// `GET /api/skills`: the catalogue with what the caller's instance has installed and enabled,
/// the tier's cap, and the categories.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    query: Result<Query<CatalogueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<SkillList>, ApiError> {
    let Query(q) = query?;
    let inst = my_instance(&state, &auth).await?;
    let installed = state.store.skills_of(inst.id, &state.ctx.keyring).await?;
    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
    let (mut skills, mut categories) = (Vec::new(), Vec::new());
    {
        let catalogue = state
            .ctx
            .catalogue
            .read()
            .map_err(|_| ApiError::internal("catalogue", "lock poisoned"))?;
        for s in catalogue.skills() {
            if !categories.contains(&s.category) {
                categories.push(s.category.clone());
            }
            let in_category = q.category.as_ref().is_none_or(|c| *c == s.category);
            let matches = needle.as_ref().is_none_or(|n| {
                s.id.contains(n.as_str())
                    || s.name.to_lowercase().contains(n.as_str())
                    || s.description.to_lowercase().contains(n.as_str())
                    || s.tags.iter().any(|t| t.contains(n.as_str()))
            });
            if in_category && matches {
                let mine = installed.iter().find(|i| i.skill_id == s.id);
                skills.push(skill_view(Some(s), mine, inst.tier, &s.id));
            }
        }
        for i in installed
            .iter()
            .filter(|i| catalogue.get(&i.skill_id).is_none())
        {
            skills.push(skill_view(None, Some(i), inst.tier, &i.skill_id));
        }
    }
    categories.sort();
    let cap = cap_of(&state, inst.tier);
    Ok(Reply(SkillList {
        skills,
        categories,
        limits: SkillLimits {
            tier: inst.tier,
            skills: (cap > 0).then_some(cap),
            enabled: installed.iter().filter(|i| i.enabled).count(),
            upgrade_url: upgrade_url(&state),
        },
    }))
}

fn catalogue_skill(state: &ApiState, id: &str) -> Result<Skill, ApiError> {
    let catalogue = state
        .ctx
        .catalogue
        .read()
        .map_err(|_| ApiError::internal("catalogue", "lock poisoned"))?;
    catalogue.get(id).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "SKILL_NOT_FOUND",
            format!("There is no skill {id:?} in the catalogue; GET /api/skills lists them."),
        )
    })
}

/// Writes the instance's config again (skills, channels); false when it has no container yet (it
/// gets the config when assigned).
pub(crate) async fn reconfigure(state: &ApiState, inst: &Instance) -> Result<bool, ApiError> {
    let Some(pool) = &state.pool else {
        return Ok(false);
    };
    // A frozen instance is woken first (tens of ms): it reads its new config at once, and a
    // paused container is not written into.
    if inst.status == InstanceStatus::Sleeping {
        pool.wake_instance(inst.id)
            .await
            .map_err(|e| ApiError::internal("waking the instance for its new config", e))?;
    }
    pool.reconfigure(inst)
        .await
        .map_err(|e| ApiError::internal("writing the instance's config", e))
}

/// `POST /api/skills/install`: installs a catalogue skill with its config. 201 with the skill;
/// 404 `SKILL_NOT_FOUND`, 403 `SKILL_TIER` / `SKILL_LIMIT`, 409 `SKILL_INSTALLED`, 422
/// `INVALID_SKILL_CONFIG` (naming the field) or `SKILL_REFUSED` (its verdict or archive), 503
/// `REGISTRY_UNAVAILABLE` — and then nothing was installed.
pub async fn install(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: Result<Json<InstallBody>, JsonRejection>,
) -> Result<(StatusCode, Reply<SkillChanged>), ApiError> {
    let Json(b) = body?;
    let inst = my_instance(&state, &auth).await?;
    let skill = catalogue_skill(&state, &b.skill_id)?;
    if skill.min_tier > inst.tier {
        return Err(ApiError::forbidden(
            "SKILL_TIER",
            format!(
                "{} needs the {} tier (this instance is on {}); upgrade: {}",
                skill.name,
                skill.min_tier,
                inst.tier,
                upgrade_url(&state)
            ),
        )
        .with("upgradeUrl", json!(upgrade_url(&state))));
    }
    let split = skill.split_config(&b.config, true).map_err(config_error)?;
    let keyring = &state.ctx.keyring;
    let installed = state.store.skills_of(inst.id, keyring).await?;
    if installed.iter().any(|i| i.skill_id == skill.id) {
        return Err(ApiError::conflict(
            "SKILL_INSTALLED",
            format!(
                "{} is already installed; change its config with PATCH /api/skills/{}.",
                skill.name, skill.id
            ),
        ));
    }
    let cap = cap_of(&state, inst.tier);
    if cap > 0 && installed.iter().filter(|i| i.enabled).count() >= cap as usize {
        return Err(limit_error(&state, inst.tier, cap));
    }
    let started = std::time::Instant::now();
    let (source, version) = if skill.origin.from_registry() {
        (
            SkillSource::Registry,
            install_from_registry(&state, &inst, &skill).await?,
        )
    } else {
        (SkillSource::Bundled, skill.version.clone())
    };
    let plain: Map<String, Value> = split
        .plain
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    let new = NewSkill {
        instance_id: inst.id,
        skill_id: &skill.id,
        version: &version,
        source,
        config: &plain,
        secrets: &split.secrets,
        cap,
    };
    let recorded = match state.store.install_skill(&new, keyring).await {
        Ok(r) => r,
        Err(e) => {
            // Another install won the race (or the store failed): undo the instance's side.
            if source == SkillSource::Registry {
                remove_files(&state, &inst, &skill.id).await;
            }
            return Err(match e {
                StoreError::LimitReached { cap, .. } => limit_error(&state, inst.tier, cap),
                e if e.is_conflict(clawdeploy_store::Conflict::Skill) => ApiError::conflict(
                    "SKILL_INSTALLED",
                    format!("{} is already installed.", skill.name),
                ),
                e => e.into(),
            });
        }
    };
    if let Err(e) = reconfigure(&state, &inst).await {
        let _ = state.store.remove_skill(inst.id, &skill.id).await;
        if source == SkillSource::Registry {
            remove_files(&state, &inst, &skill.id).await;
        }
        return Err(e);
    }
    let origin = match skill.origin {
        Origin::Bundled => "bundled",
        Origin::Curated => "curated",
        Origin::Upstream => "upstream",
    };
    metrics::histogram!("clawdeploy_skill_install_seconds", "origin" => origin)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(instance = %inst.id, skill = %skill.id, %version, origin, ms = started.elapsed().as_millis() as u64, "skill installed");
    Ok((
        StatusCode::CREATED,
        Reply(SkillChanged {
            skill: skill_view(Some(&skill), Some(&recorded), inst.tier, &skill.id),
            message: format!(
                "{} is installed; your assistant can use it from its next message.",
                skill.name
            ),
        }),
    ))
}

/// The registry half of an install: the skill fetched and checked by the registry, then OpenClaw's
/// installer asked (and its files removed again if it fails). Answers the version installed.
async fn install_from_registry(
    state: &ApiState,
    inst: &Instance,
    skill: &Skill,
) -> Result<String, ApiError> {
    let (Some(registry), Some(pool)) = (&state.ctx.registry, &state.pool) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REGISTRY_UNAVAILABLE",
            "This node serves no skill registry (it needs the LLM meter and a container runtime); bundled skills still install.",
        ));
    };
    if !matches!(
        inst.status,
        InstanceStatus::Running | InstanceStatus::Sleeping
    ) {
        return Err(ApiError::conflict(
            "INSTANCE_NOT_RUNNING",
            format!("Your instance is {}; registry skills install into a running instance. Start it and try again.", inst.status),
        ));
    }
    let version = registry.prepare(&skill.id).await.map_err(registry_error)?;
    let patience = Duration::from_secs(state.ctx.config.skills.install_timeout_secs);
    if let Err(e) = pool
        .install_registry_skill(inst, &skill.id, &version, patience)
        .await
    {
        remove_files(state, inst, &skill.id).await;
        let mut err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "SKILL_INSTALL_FAILED",
            format!(
                "Your instance could not install {}: {e}. Nothing was installed.",
                skill.name
            ),
        );
        err.cause = Some(format!("skills.install {}: {e}", skill.id));
        return Err(err);
    }
    Ok(version)
}

async fn remove_files(state: &ApiState, inst: &Instance, slug: &str) {
    if let Some(pool) = &state.pool {
        if let Err(e) = pool.remove_registry_skill(inst, slug).await {
            tracing::error!(instance = %inst.id, skill = %slug, "cannot remove a skill's files: {e}");
        }
    }
}

/// `PATCH /api/skills/{id}`: changes an installed skill's config (merged; a secret given is
/// replaced and sealed anew, `null` or "" clears a field) and/or enables or disables it.
pub async fn change(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(id): Path<String>,
    body: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<Reply<SkillChanged>, ApiError> {
    let Json(b) = body?;
    let inst = my_instance(&state, &auth).await?;
    let skill = state
        .ctx
        .catalogue
        .read()
        .ok()
        .and_then(|c| c.get(&id).cloned());
    let split = match (&b.config, &skill) {
        (Some(config), Some(skill)) => Some(skill.split_config(config, false).map_err(config_error)?),
        (Some(config), None) if !config.is_empty() => {
            return Err(ApiError::invalid("config", "INVALID_SKILL_CONFIG", "this skill is no longer in the catalogue; it can only be enabled, disabled or uninstalled"))
        }
        _ => None,
    };
    if b.enabled == Some(true) {
        if let Some(s) = skill.as_ref().filter(|s| s.min_tier > inst.tier) {
            return Err(ApiError::forbidden(
                "SKILL_TIER",
                format!(
                    "{} needs the {} tier; upgrade: {}",
                    s.name,
                    s.min_tier,
                    upgrade_url(&state)
                ),
            ));
        }
    }
    let cap = cap_of(&state, inst.tier);
    let change = SkillChange {
        config: split.as_ref().map(|s| &s.plain),
        secrets: split.as_ref().map(|s| &s.secrets),
        enabled: b.enabled,
        cap,
    };
    let updated = match state
        .store
        .update_skill(inst.id, &id, &change, &state.ctx.keyring)
        .await
    {
        Ok(Some(u)) => u,
        Ok(None) => return Err(not_installed(&id)),
        Err(StoreError::LimitReached { cap, .. }) => {
            return Err(limit_error(&state, inst.tier, cap))
        }
        Err(e) => return Err(e.into()),
    };
    reconfigure(&state, &inst).await?;
    Ok(Reply(SkillChanged {
        skill: skill_view(skill.as_ref(), Some(&updated), inst.tier, &id),
        message: "Saved; your assistant uses the new settings from its next message.".into(),
    }))
}

/// `DELETE /api/skills/{id}`: uninstalls a skill (a registry skill's files are removed from the
/// workspace; its sealed config is deleted).
pub async fn uninstall(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Reply<SkillRemoved>, ApiError> {
    let inst = my_instance(&state, &auth).await?;
    let installed = state.store.skills_of(inst.id, &state.ctx.keyring).await?;
    let Some(skill) = installed.iter().find(|i| i.skill_id == id) else {
        return Err(not_installed(&id));
    };
    if skill.source == SkillSource::Registry {
        if let Some(pool) = &state.pool {
            pool.remove_registry_skill(&inst, &id)
                .await
                .map_err(|e| ApiError::internal("removing a skill's files", e))?;
        }
    }
    state.store.remove_skill(inst.id, &id).await?;
    reconfigure(&state, &inst).await?;
    tracing::info!(instance = %inst.id, skill = %id, "skill uninstalled");
    Ok(Reply(SkillRemoved {
        removed: id,
        message: "Uninstalled.",
    }))
}

/// After a tier change: disables the newest enabled skills past the new tier's cap (they stay
/// installed), enables again those an earlier, lower cap disabled as far as the new cap allows,
/// and rewrites the instance's config (skills and the sub-agent cap). Answers the ids disabled
/// and the ids enabled again.
pub async fn follow_tier(
    state: &ApiState,
    inst: &Instance,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let cap = cap_of(state, inst.tier);
    let reason = format!("the {} tier allows {cap} enabled skills", inst.tier);
    let disabled = state.store.cap_skills(inst.id, cap, &reason).await?;
    let restored = state.store.restore_capped_skills(inst.id, cap).await?;
    reconfigure(state, inst).await?;
    if !disabled.is_empty() || !restored.is_empty() {
        tracing::info!(instance = %inst.id, ?disabled, ?restored, "skills follow the tier's cap");
    }
    Ok((disabled, restored))
}

/// Records a preset's skills for an instance (bundled skills the tier allows, up to its cap;
/// already installed ones are kept). The caller applies the config. Answers what was installed
/// and what was skipped, with why.
pub(crate) async fn install_preset_skills(
    state: &ApiState,
    inst: &Instance,
    preset: &clawdeploy_skills::Preset,
) -> Result<(Vec<String>, Vec<SkippedSkill>), ApiError> {
    let cap = cap_of(state, inst.tier);
    let (mut installed, mut skipped) = (Vec::new(), Vec::new());
    let skip = |id: &str, reason: String| SkippedSkill {
        skill_id: id.to_string(),
        reason,
    };
    let none = Map::new();
    let no_secrets = std::collections::BTreeMap::new();
    for id in &preset.skills {
        let Ok(skill) = catalogue_skill(state, id) else {
            skipped.push(skip(id, "not in the catalogue".into()));
            continue;
        };
        if skill.min_tier > inst.tier {
            skipped.push(skip(id, format!("needs the {} tier", skill.min_tier)));
            continue;
        }
        let new = NewSkill {
            instance_id: inst.id,
            skill_id: &skill.id,
            version: &skill.version,
            source: SkillSource::Bundled,
            config: &none,
            secrets: &no_secrets,
            cap,
        };
        match state.store.install_skill(&new, &state.ctx.keyring).await {
            Ok(_) => installed.push(skill.id.clone()),
            Err(StoreError::LimitReached { cap, .. }) => skipped.push(skip(
                id,
                format!("the {} tier allows {cap} enabled skills", inst.tier),
            )),
            Err(e) if e.is_conflict(clawdeploy_store::Conflict::Skill) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((installed, skipped))
}

/// The preset named `id`, or 422 `INVALID_PRESET` listing the valid ones.
pub(crate) fn preset_named(id: &str) -> Result<&'static clawdeploy_skills::Preset, ApiError> {
    clawdeploy_skills::preset(id).ok_or_else(|| {
        let ids: Vec<&str> = clawdeploy_skills::presets()
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        ApiError::invalid(
            "preset",
            "INVALID_PRESET",
            format!("{id:?} is not a preset; choose one of {}", ids.join(", ")),
        )
    })
}

/// A preset's skill that was not installed, and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedSkill {
    /// The skill.
    pub skill_id: String,
    /// Why (the tier, its cap).
    pub reason: String,
}

/// An agent preset.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresetView {
    /// `general`, `coder`, `researcher`, `writer`, `analyst`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One sentence.
    pub summary: String,
    /// The bundled skills it installs.
    pub skills: Vec<String>,
    /// Its SOUL.md.
    pub soul_md: String,
    /// Its AGENTS.md.
    pub agents_md: String,
}

/// `GET /api/presets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresetList {
    /// Every preset.
    pub presets: Vec<PresetView>,
    /// The caller's instance's preset, if any.
    pub current: Option<String>,
}

/// A preset applied.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresetApplied {
    /// The preset.
    pub preset: String,
    /// Whether the SOUL.md is now the preset's.
    pub soul_replaced: bool,
    /// Skills it installed.
    pub skills_installed: Vec<String>,
    /// Skills it did not, and why.
    pub skills_skipped: Vec<SkippedSkill>,
    /// The instance, as it is now.
    pub instance: InstanceView,
    /// What happens next.
    pub message: String,
}

/// `GET /api/presets`: the agent presets, and the one the caller's instance has.
pub async fn list_presets(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<PresetList>, ApiError> {
    let current = my_instance(&state, &auth).await.ok().and_then(|i| i.preset);
    let presets = clawdeploy_skills::presets()
        .iter()
        .map(|p| PresetView {
            id: p.id.clone(),
            name: p.name.clone(),
            summary: p.summary.clone(),
            skills: p.skills.clone(),
            soul_md: p.soul.clone(),
            agents_md: p.agents.clone(),
        })
        .collect();
    Ok(Reply(PresetList { presets, current }))
}

/// Body of `POST /api/instances/me/preset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresetBody {
    /// The preset's id.
    preset: String,
    /// Whether the preset's SOUL.md replaces one the owner wrote: absent asks (409
    /// `SOUL_EDITED` when it would replace the owner's text), false keeps it.
    replace_soul: Option<bool>,
}

/// `POST /api/instances/me/preset`: applies an agent preset: its SOUL.md (never over the owner's
/// own without `replaceSoul: true`), its AGENTS.md and its skills (within the tier).
pub async fn apply_preset(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: Result<Json<PresetBody>, JsonRejection>,
) -> Result<Reply<PresetApplied>, ApiError> {
    let Json(b) = body?;
    let preset = preset_named(&b.preset)?;
    let inst = my_instance(&state, &auth).await?;
    // The owner's own SOUL.md is one that is neither empty nor the text of a preset.
    let own_soul = inst.soul_md.as_deref().filter(|s| {
        !s.trim().is_empty() && !clawdeploy_skills::presets().iter().any(|p| p.soul == *s)
    });
    let replace = match (own_soul, b.replace_soul) {
        (None, _) => true,
        (Some(_), Some(replace)) => replace,
        (Some(_), None) => {
            return Err(ApiError::conflict(
                "SOUL_EDITED",
                format!(
                    "Your SOUL.md has your own text. Send replaceSoul: true to replace it with the {} preset's, or replaceSoul: false to keep it and apply the rest.",
                    preset.name
                ),
            ))
        }
    };
    let inst = state
        .store
        .set_instance_preset(inst.id, &preset.id, replace.then_some(preset.soul.as_str()))
        .await?;
    let (installed, skipped) = install_preset_skills(&state, &inst, preset).await?;
    reconfigure(&state, &inst).await?;
    Ok(Reply(PresetApplied {
        preset: preset.id.clone(),
        soul_replaced: replace,
        skills_installed: installed,
        skills_skipped: skipped,
        instance: InstanceView::new(&state, &inst),
        message: format!(
            "The {} preset is applied; your assistant uses it from its next message.",
            preset.name
        ),
    }))
}
