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
use serde::Deserialize;
use serde_json::{json, Map, Value};

use clawdeploy_config::Tier;
use clawdeploy_skills::{ConfigError, FieldKind, Origin, RegistryError, Skill};
use clawdeploy_store::{
    InstalledSkill, Instance, InstanceStatus, NewSkill, SkillChange, SkillSource, StoreError,
};

use crate::auth::AuthUser;
use crate::instances::my_instance;
use crate::{ApiError, ApiState};

/// Query of `GET /api/skills`: `category` and a free-text `q` over names, descriptions, tags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueQuery {
    category: Option<String>,
    q: Option<String>,
}

/// Body of `POST /api/skills/install`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallBody {
    skill_id: String,
    #[serde(default)]
    config: Map<String, Value>,
}

/// Body of `PATCH /api/skills/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    config: Option<Map<String, Value>>,
    enabled: Option<bool>,
}

fn cap_of(state: &ApiState, tier: Tier) -> u32 {
    state.ctx.config.tiers.get(tier).skills
}

fn upgrade_url(state: &ApiState) -> String {
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

fn field_json(skill: &Skill) -> Value {
    json!(skill
        .fields
        .iter()
        .map(|f| json!({
            "name": f.name,
            "label": f.label,
            "type": match f.kind { FieldKind::Secret => "secret", FieldKind::String => "string" },
            "required": f.required,
        }))
        .collect::<Vec<_>>())
}

fn skill_json(
    skill: Option<&Skill>,
    installed: Option<&InstalledSkill>,
    tier: Tier,
    id: &str,
) -> Value {
    let mut v = match skill {
        Some(s) => json!({
            "id": s.id,
            "name": s.name,
            "description": s.description,
            "emoji": s.emoji,
            "category": s.category,
            "tags": s.tags,
            "homepage": s.homepage,
            "version": s.version,
            "source": if s.origin.from_registry() { "registry" } else { "bundled" },
            "origin": s.origin,
            "minTier": s.min_tier,
            "availableOnTier": s.min_tier <= tier,
            "fields": field_json(s),
        }),
        // Installed, but no longer offered (the operator removed it from the catalogue).
        None => json!({"id": id, "name": id, "description": "", "category": "other", "tags": [],
            "fields": [], "availableOnTier": false, "source": installed.map(|i| i.source)}),
    };
    v["installed"] = json!(installed.is_some());
    v["enabled"] = json!(installed.is_some_and(|i| i.enabled));
    if let Some(i) = installed {
        v["installedVersion"] = json!(i.version);
        v["installedAt"] = json!(i.installed_at);
        v["disabledReason"] = json!(i.disabled_reason);
        v["config"] = Value::Object(i.config.clone());
        v["secretFields"] = json!(i.secret_fields);
    }
    v
}

/// `GET /api/skills`: the catalogue with what the caller's instance has installed and enabled,
/// the tier's cap, and the categories.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
    query: Result<Query<CatalogueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
                skills.push(skill_json(Some(s), mine, inst.tier, &s.id));
            }
        }
        for i in installed
            .iter()
            .filter(|i| catalogue.get(&i.skill_id).is_none())
        {
            skills.push(skill_json(None, Some(i), inst.tier, &i.skill_id));
        }
    }
    categories.sort();
    let cap = cap_of(&state, inst.tier);
    Ok(Json(json!({
        "skills": skills,
        "categories": categories,
        "limits": {
            "tier": inst.tier,
            "skills": if cap == 0 { Value::Null } else { json!(cap) },
            "enabled": installed.iter().filter(|i| i.enabled).count(),
            "upgradeUrl": upgrade_url(&state),
        },
    })))
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

/// Writes the instance's config again (skills entries, env); false when it has no container yet
/// (it gets the config when assigned).
async fn apply(state: &ApiState, inst: &Instance) -> Result<bool, ApiError> {
    match &state.pool {
        Some(pool) => pool
            .reconfigure(inst)
            .await
            .map_err(|e| ApiError::internal("writing the instance's skills config", e)),
        None => Ok(false),
    }
}

/// `POST /api/skills/install`: installs a catalogue skill with its config. 201 with the skill;
/// 404 `SKILL_NOT_FOUND`, 403 `SKILL_TIER` / `SKILL_LIMIT`, 409 `SKILL_INSTALLED`, 422
/// `INVALID_SKILL_CONFIG` (naming the field) or `SKILL_REFUSED` (its verdict or archive), 503
/// `REGISTRY_UNAVAILABLE` — and then nothing was installed.
pub async fn install(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: Result<Json<InstallBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    if let Err(e) = apply(&state, &inst).await {
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
        Json(json!({
            "skill": skill_json(Some(&skill), Some(&recorded), inst.tier, &skill.id),
            "message": format!("{} is installed; your assistant can use it from its next message.", skill.name),
        })),
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
) -> Result<Json<Value>, ApiError> {
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
    apply(&state, &inst).await?;
    Ok(Json(json!({
        "skill": skill_json(skill.as_ref(), Some(&updated), inst.tier, &id),
        "message": "Saved; your assistant uses the new settings from its next message.",
    })))
}

/// `DELETE /api/skills/{id}`: uninstalls a skill (a registry skill's files are removed from the
/// workspace; its sealed config is deleted).
pub async fn uninstall(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    apply(&state, &inst).await?;
    tracing::info!(instance = %inst.id, skill = %id, "skill uninstalled");
    Ok(Json(json!({ "removed": id, "message": "Uninstalled." })))
}

/// After a tier change: disables the newest enabled skills past the new tier's cap (they stay
/// installed) and rewrites the instance's config (skills and the sub-agent cap). Answers the ids
/// disabled.
pub async fn follow_tier(state: &ApiState, inst: &Instance) -> Result<Vec<String>, ApiError> {
    let cap = cap_of(state, inst.tier);
    let reason = format!("the {} tier allows {cap} enabled skills", inst.tier);
    let disabled = state.store.cap_skills(inst.id, cap, &reason).await?;
    apply(state, inst).await?;
    if !disabled.is_empty() {
        tracing::info!(instance = %inst.id, ?disabled, "skills disabled past the tier's cap");
    }
    Ok(disabled)
}

/// Records a preset's skills for an instance (bundled skills the tier allows, up to its cap;
/// already installed ones are kept). The caller applies the config. Answers what was installed
/// and what was skipped, with why.
pub(crate) async fn install_preset_skills(
    state: &ApiState,
    inst: &Instance,
    preset: &clawdeploy_skills::Preset,
) -> Result<(Vec<String>, Vec<Value>), ApiError> {
    let cap = cap_of(state, inst.tier);
    let (mut installed, mut skipped) = (Vec::new(), Vec::new());
    let none = Map::new();
    let no_secrets = std::collections::BTreeMap::new();
    for id in &preset.skills {
        let Ok(skill) = catalogue_skill(state, id) else {
            skipped.push(json!({"skillId": id, "reason": "not in the catalogue"}));
            continue;
        };
        if skill.min_tier > inst.tier {
            skipped.push(
                json!({"skillId": id, "reason": format!("needs the {} tier", skill.min_tier)}),
            );
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
            Err(StoreError::LimitReached { cap, .. }) => skipped.push(json!({"skillId": id,
                "reason": format!("the {} tier allows {cap} enabled skills", inst.tier)})),
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

/// `GET /api/presets`: the agent presets, and the one the caller's instance has.
pub async fn list_presets(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let current = my_instance(&state, &auth).await.ok().and_then(|i| i.preset);
    let presets: Vec<Value> = clawdeploy_skills::presets()
        .iter()
        .map(|p| {
            json!({"id": p.id, "name": p.name, "summary": p.summary, "skills": p.skills,
            "soulMd": p.soul, "agentsMd": p.agents})
        })
        .collect();
    Ok(Json(json!({ "presets": presets, "current": current })))
}

/// Body of `POST /api/instances/me/preset`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresetBody {
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
) -> Result<Json<Value>, ApiError> {
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
    apply(&state, &inst).await?;
    Ok(Json(json!({
        "preset": preset.id,
        "soulReplaced": replace,
        "skillsInstalled": installed,
        "skillsSkipped": skipped,
        "instance": crate::instances::instance_json(&state, &inst),
        "message": format!("The {} preset is applied; your assistant uses it from its next message.", preset.name),
    })))
}
