//! The per-instance OpenClaw config (`openclaw.json` in the instance's data directory, which the
//! image's `OPENCLAW_CONFIG_PATH` points at) and `workspace/SOUL.md`.
//!
//! Every instance gets a gateway locked down for a hosted tenant:
//! - `trusted-proxy` auth trusting only the edge's address (the Docker network's gateway, as the
//!   container sees the edge), the user header the edge sets, the edge's proof header
//!   ([`clawdeploy_proxy::gateway_trust`]), `allowUsers` = the instance's gateway identity (the
//!   name of the pool member it was handed, [`Instance::gateway_id`]) and device auto-approval for
//!   it only (no `operator.admin`), plus the platform's own identity ([`PLATFORM_USER`]), which
//!   the pool asks about work as before the instance sleeps;
//! - `controlUi.allowedOrigins` = the instance's own origins;
//! - the admin terminal and the OpenAI-compatible HTTP endpoints off, no channels, OpenClaw's own
//!   update checks off (the image also sets `OPENCLAW_CONFIG_READONLY=1`,
//!   `OPENCLAW_NO_AUTO_UPDATE=1` and `OPENCLAW_SKIP_CHANNELS=1`);
//! - the providers the user configured (`PUT /api/account/api-keys/...`), the model, the time zone.
//!
//! Before assignment a warm instance boots on [`OpenClawConfig::idle_config`]: the same lockdown,
//! already naming the identity and proof it will be handed under, so assignment never changes the
//! gateway's auth policy (OpenClaw closes every open connection when it changes). Assignment
//! overwrites the file, changing only what OpenClaw applies live, 0.5-1.3 s later (measured on
//! 2026.9.6: the origins, the model, skills; `env.vars` would restart the gateway, about 7 s, so
//! keys are never passed that way). The provider block is the same before
//! and after (the LLM meter's address and the member's token, [`member_token`]), so the provider
//! runtime OpenClaw built for the warm-up turn ([`OpenClawConfig::warm_up`]) serves the owner's
//! first turn too (1.1 s instead of about 3 s with a changed key).
//!
//! [`member_token`]: clawdeploy_llm_egress::member_token

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use clawdeploy_config::TiersConfig;
use clawdeploy_store::{
    ChannelKind, DomainStatus, InstalledSkill, Instance, Keyring, SkillSecrets, SkillSource, Store,
};

use crate::manager::{AppliedProbe, Error, InstanceConfig};
use crate::runtime::ConfigFile;

/// The config file, relative to the data directory.
pub const CONFIG_FILE: &str = "openclaw.json";
/// SOUL.md, relative to the data directory (the workspace is `<data dir>/workspace`).
pub const SOUL_FILE: &str = "workspace/SOUL.md";
/// AGENTS.md, written from the instance's agent preset.
pub const AGENTS_FILE: &str = "workspace/AGENTS.md";
/// A warm member's `ui.seamColor`, which no assigned config sets: the Control UI's config
/// (`/control-ui-config.json`) names it until the gateway has applied its owner's config
/// ([`InstanceConfig::applied_probe`]). The gateway's auth policy cannot carry that signal:
/// OpenClaw closes every open connection (4001 "gateway policy changed") when it changes.
const WARM_SEAM_COLOR: &str = "#0c0d0e";
/// Served behind the gateway's HTTP auth: the probe's path.
const APPLIED_PROBE_PATH: &str = "/control-ui-config.json";
/// An unassigned gateway's only allowed origin: never a real one (`.invalid`), but not empty, since
/// OpenClaw refuses to hot-reload a non-loopback Control UI with no allowed origin.
pub const UNASSIGNED_ORIGIN: &str = "https://unassigned.invalid";
/// The model of a warm member, and of an owner with an OpenAI key (the default).
const DEFAULT_PRIMARY: &str = "openai/gpt-5-mini";
/// The only entry of `skills.allowBundled` when the owner installed no bundled skill.
pub const NO_BUNDLED_SKILL: &str = "clawdeploy-none";
/// The owner's main session (the dashboard's chat): a warm member's warm-up turn runs in it, then
/// it is reset.
const MAIN_SESSION: &str = "agent:main:main";
/// Scopes an owner's devices are auto-approved with, and the edge caps HTTP calls to: never
/// `operator.admin`.
pub use clawdeploy_proxy::gateway_trust::OWNER_SCOPES;
use clawdeploy_proxy::gateway_trust::{PLATFORM_SCOPES, PLATFORM_USER};

/// A provider key the user configured, opened for the instance's config.
#[derive(Clone)]
pub struct ProviderKey {
    /// `openai`, `anthropic`, `google` or `custom`.
    pub provider: String,
    /// What the container holds as the key: its member token
    /// ([`clawdeploy_llm_egress::member_token`]) when the LLM meter is on, else the user's plain
    /// key.
    pub key: String,
    /// The provider's `baseUrl`: the meter's `http://<meter>/<provider path>` when it is on, else
    /// the user's own endpoint (`custom` only); `None` or empty means the provider's default.
    pub base_url: Option<String>,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("provider", &self.provider)
            .field("key", &"<redacted>")
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// What an owner's config holds beyond the gateway's lockdown and the providers: the installed
/// skills (secrets opened) and the tier's sub-agent cap. The default (no skills, no sub-agents) is
/// a warm member's.
#[derive(Default)]
pub struct TenantExtras {
    /// Installed skills with their opened secrets.
    pub skills: Vec<(InstalledSkill, SkillSecrets)>,
    /// The tier's sub-agent cap ([`subagent_limits`]).
    pub subagents: u32,
}

/// Generates OpenClaw's config for each instance.
pub struct OpenClawConfig {
    /// The header the edge sets with the authenticated user's id.
    pub user_header: String,
    /// The addresses the gateway sees the edge's connections come from (and nothing else).
    pub trusted_proxies: Vec<String>,
    /// Trust a loopback edge (process runtime only: the edge and the gateway share the host).
    pub allow_loopback: bool,
    /// The instance's data directory as the gateway sees it (`/data` in the image); empty when
    /// it differs per instance (process runtime).
    pub data_dir: String,
    /// The gateway's port.
    pub port: u16,
    /// Origins of an instance host, with `{host}` for `<sub>.<base_domain>`.
    pub origin_templates: Vec<String>,
    /// The domain instance hosts are under (`server.base_domain`): an instance's host is
    /// `<subdomain>.<base_domain>`.
    pub base_domain: String,
    /// Where users' provider keys are read from (none: instances get no provider).
    pub keys: Option<(Store, Arc<Keyring>)>,
    /// The edge's LLM meter (`IP:port` instances reach) and the key of per-instance tokens: every
    /// provider's `baseUrl` points there and the container holds only its instance token. `None`
    /// gives instances the user's keys directly (no meter configured; development only).
    pub llm_meter: Option<(String, Vec<u8>)>,
    /// The key of the per-instance header the edge proves itself with
    /// ([`clawdeploy_proxy::gateway_trust`]); every assigned gateway requires its own.
    pub gateway_proof_key: Vec<u8>,
    /// The tier table: each instance's sub-agent cap.
    pub tiers: TiersConfig,
    /// Providers the platform sells AI credits for (`billing.<provider>_key` set): every
    /// instance gets them through the LLM meter, which serves owners without a key of their own
    /// from their credit balance.
    pub credit_providers: Vec<String>,
}

/// The `skills` section of an instance's config: only the bundled skills the owner installed and
/// enabled are visible to its agent (`allowBundled`; OpenClaw would otherwise offer every bundled
/// skill it can run), and every installed skill's entry says whether it is enabled and carries
/// its config as environment variables (secrets opened for this instance only).
pub fn skills_section(installed: &[(InstalledSkill, SkillSecrets)]) -> Value {
    let mut allow: Vec<&str> = installed
        .iter()
        .filter(|(s, _)| s.enabled && s.source == SkillSource::Bundled)
        .map(|(s, _)| s.skill_id.as_str())
        .collect();
    if allow.is_empty() {
        // OpenClaw reads an empty allowlist as none at all (every bundled skill offered, seen on
        // 2026.9.6): a name no skill has keeps them all out.
        allow.push(NO_BUNDLED_SKILL);
    }
    let mut entries = Map::new();
    for (skill, secrets) in installed {
        let mut env = Map::new();
        for (name, value) in &skill.config {
            if let Some(text) = value.as_str() {
                env.insert(name.clone(), json!(text));
            }
        }
        for (name, value) in secrets {
            env.insert(name.clone(), json!(value.as_str()));
        }
        let mut entry = json!({ "enabled": skill.enabled });
        if !env.is_empty() {
            entry["env"] = Value::Object(env);
        }
        entries.insert(skill.skill_id.clone(), entry);
    }
    json!({ "allowBundled": allow, "entries": entries })
}

/// `agents.defaults.subagents` for a tier's cap: at most `cap` sub-agents at once, none of them
/// spawning more; 0 (the main agent only) also denies the spawn tool, so the model is not offered
/// what it may not use.
pub fn subagent_limits(cap: u32) -> (Value, Option<Value>) {
    let limits = json!({
        "maxConcurrent": cap.max(1),
        "maxChildrenPerAgent": cap.max(1),
        "maxSpawnDepth": 1,
    });
    let deny = (cap == 0).then(|| json!(["sessions_spawn"]));
    (limits, deny)
}

impl OpenClawConfig {
    /// The config the warm member `member` boots on: locked down, nobody allowed but the platform,
    /// with the provider an owner most often has (OpenAI through the LLM meter, with the member's
    /// token) so that the warm-up turn prepares what the owner's first turn uses.
    pub fn idle_config(&self, member: &str) -> Value {
        let providers: Vec<ProviderKey> = self
            .llm_meter
            .as_ref()
            .map(|(endpoint, token_key)| ProviderKey {
                provider: "openai".into(),
                key: clawdeploy_llm_egress::member_token(token_key, member),
                base_url: Some(format!("http://{endpoint}/openai/v1")),
            })
            .into_iter()
            .collect();
        let mut config = self.gateway_config(
            member,
            Some(&self.proof_for(member)),
            &[UNASSIGNED_ORIGIN.to_string()],
            &providers,
            None,
            &TenantExtras::default(),
        );
        config["ui"] = json!({ "seamColor": WARM_SEAM_COLOR });
        config
    }

    /// The warm-up turn: as the platform, one chat turn in the owner's main session
    /// ([`MAIN_SESSION`], the dashboard's chat) — the LLM meter's stub answers its model calls —
    /// then that session reset to an empty transcript and the old one deleted, so the owner never
    /// sees it. OpenClaw's first turn opens and checks its agent database, loads its tool catalogue
    /// and builds the provider runtime (5-7 s on 2 vCPU, measured); the main session's own first
    /// turn also creates the session, so warming that one leaves the owner a warm turn.
    async fn warm_up_turn(&self, addr: std::net::SocketAddr, member: &str) -> Result<(), Error> {
        let headers = vec![
            (self.user_header.clone(), PLATFORM_USER.to_string()),
            (self.proof_for(member), "1".into()),
        ];
        let mut gateway = crate::work::Gateway::connect(addr, &headers).await?;
        gateway
            .chat(MAIN_SESSION, "Warm-up: reply with one word.")
            .await?;
        gateway
            .call(
                "sessions.reset",
                json!({"key": MAIN_SESSION, "reason": "reset"}),
            )
            .await?;
        // Whatever the reset archived (the warm-up's transcript) goes too.
        let sessions = gateway
            .call("sessions.list", json!({"includeArchived": true}))
            .await
            .unwrap_or_default();
        for s in sessions["sessions"].as_array().into_iter().flatten() {
            if s["key"] != MAIN_SESSION && s["archived"] == true {
                if let Some(key) = s["key"].as_str() {
                    gateway
                        .call(
                            "sessions.delete",
                            json!({"key": key, "archivedOnly": true, "deleteTranscript": true}),
                        )
                        .await
                        .ok();
                }
            }
        }
        Ok(())
    }

    /// Who `instance`'s gateway knows its owner as, and the header the edge proves itself to
    /// that gateway with: its gateway identity and the proof keyed with it, or (handed over before
    /// gateway identities) the owner's id and the proof keyed with the instance id.
    pub fn owner_identity(&self, instance: &Instance) -> (String, String) {
        match &instance.gateway_id {
            Some(id) => (id.clone(), self.proof_for(id)),
            None => (
                instance.user_id.to_string(),
                self.proof_for(&instance.id.to_string()),
            ),
        }
    }

    fn proof_for(&self, key_id: &str) -> String {
        clawdeploy_proxy::gateway_trust::proof_header(&self.gateway_proof_key, key_id)
    }

    /// The full config for `owner` with `origins`, `providers` and `timezone`; the gateway admits
    /// proxied requests only with the `proof` header ([`Self::owner_identity`]).
    pub fn gateway_config(
        &self,
        owner: &str,
        proof: Option<&str>,
        origins: &[String],
        providers: &[ProviderKey],
        timezone: Option<&str>,
        extras: &TenantExtras,
    ) -> Value {
        let mut trusted_proxy = json!({
            "userHeader": self.user_header,
            "allowUsers": [owner, PLATFORM_USER],
            "deviceAutoApprove": { "enabled": true, "scopes": OWNER_SCOPES },
        });
        if let Some(proof) = proof {
            trusted_proxy["requiredHeaders"] = json!([proof]);
        }
        if self.allow_loopback {
            trusted_proxy["allowLoopback"] = json!(true);
        }
        // Without a data dir (process runtime) the gateway's OPENCLAW_WORKSPACE_DIR applies.
        let mut defaults = json!({});
        if !self.data_dir.is_empty() {
            defaults["workspace"] = json!(format!("{}/workspace", self.data_dir));
        }
        if let Some(tz) = timezone.filter(|tz| !tz.is_empty()) {
            defaults["userTimezone"] = json!(tz);
        }
        // OpenClaw's recurring heartbeat turn (every 30 min by default) has no channel to reach the
        // owner here (channels are off), would spend their tokens, and would wake every sleeping
        // instance twice an hour.
        defaults["heartbeat"] = json!({ "every": "0m" });
        // No utility model: OpenClaw otherwise makes a second LLM call beside the owner's turns
        // (an "Activity recap" after each turn and at a fresh session's first one, on the owner's
        // key or credits) and, in a fresh session, prepares it on the turn's critical path: the
        // owner's first turn after the pool's warm-up and reset took 1.3-2.1 s with it and
        // 0.8-0.9 s without (measured on 2026.9.6, /work/lab-turn). Chat, tools, skills and memory
        // do not use it; the Control UI's Activity recaps go.
        defaults["utilityModel"] = json!("");
        let mut config = json!({
            "gateway": {
                "mode": "local",
                "port": self.port,
                "bind": "lan",
                "trustedProxies": self.trusted_proxies,
                // Device-less clients (the gateway protocol's backend clients) get the owner's
                // scopes for their session only; devices are auto-approved with the same.
                "auth": {
                    "mode": "trusted-proxy",
                    "trustedProxy": trusted_proxy,
                    "identityScopes": { owner: OWNER_SCOPES, PLATFORM_USER: PLATFORM_SCOPES },
                },
                "controlUi": { "allowedOrigins": origins },
                "terminal": { "enabled": false },
                "http": { "endpoints": {
                    "chatCompletions": { "enabled": false },
                    "responses": { "enabled": false },
                } },
                "reload": { "mode": "hybrid" },
            },
            "update": { "checkOnStart": false, "auto": { "enabled": false } },
            "agents": { "defaults": defaults },
        });
        let (subagents, deny) = subagent_limits(extras.subagents);
        config["agents"]["defaults"]["subagents"] = subagents;
        if let Some(deny) = deny {
            config["tools"] = json!({ "deny": deny });
        }
        config["skills"] = skills_section(&extras.skills);
        let (models, primary) = provider_settings(providers);
        if let Some(primary) = primary {
            config["agents"]["defaults"]["model"] = json!({ "primary": primary });
        }
        if !models.is_empty() {
            config["models"] = json!({ "mode": "merge", "providers": models });
        }
        config
    }

    /// The instance's origins: each template with each of its hostnames.
    pub fn origins(&self, hostnames: &[String]) -> Vec<String> {
        hostnames
            .iter()
            .flat_map(|host| {
                self.origin_templates
                    .iter()
                    .map(move |t| t.replace("{host}", host))
            })
            .collect()
    }

    /// `<sub>.<base_domain>` and the instance's active custom domains: the hosts the edge routes
    /// to it, so the Control UI loaded from any of them may open the gateway's WebSocket. The pool
    /// writes the config again when a domain becomes active or is removed (`follow_domains`).
    async fn hostnames(&self, instance: &Instance) -> Result<Vec<String>, Error> {
        let mut hosts = vec![format!("{}.{}", instance.subdomain, self.base_domain)];
        if let Some((store, _)) = &self.keys {
            hosts.extend(
                store
                    .list_custom_domains_of(instance.user_id)
                    .await?
                    .into_iter()
                    .filter(|d| d.instance_id == instance.id && d.status == DomainStatus::Active)
                    .map(|d| d.hostname),
            );
        }
        Ok(hosts)
    }

    /// The `channels` section for the channels the owner connected (none without the LLM meter,
    /// whose address serves the relay): OpenClaw's Telegram channel calls the edge's Bot API
    /// relay with a placeholder token naming the member, which the relay swaps for the owner's
    /// bot token; only the listed senders are answered, and groups are off.
    async fn channels_section(
        &self,
        instance: &Instance,
        member: &str,
    ) -> Result<Option<Value>, Error> {
        let (Some((store, _)), Some((endpoint, token_key))) = (&self.keys, &self.llm_meter) else {
            return Ok(None);
        };
        let mut section = Map::new();
        for channel in store.channels_of(instance.id).await? {
            match channel.kind {
                ChannelKind::Telegram => {
                    let token = clawdeploy_llm_egress::member_token(token_key, member);
                    section.insert(
                        "telegram".into(),
                        json!({
                            "enabled": true,
                            "botToken": clawdeploy_channels::container_bot_token(&token),
                            "apiRoot": format!("http://{endpoint}/telegram"),
                            "dmPolicy": "allowlist",
                            "allowFrom": channel.allow_from,
                            "groupPolicy": "disabled",
                        }),
                    );
                }
            }
        }
        Ok((!section.is_empty()).then_some(Value::Object(section)))
    }

    async fn provider_keys(
        &self,
        instance: &Instance,
        member: &str,
    ) -> Result<Vec<ProviderKey>, Error> {
        let Some((store, keyring)) = &self.keys else {
            return Ok(vec![]);
        };
        let mut keys = Vec::new();
        for key in store.list_api_keys(instance.user_id).await? {
            if !key.is_active {
                continue;
            }
            if let Some((plain, base_url)) = store
                .open_api_key(instance.user_id, &key.provider, keyring)
                .await?
            {
                keys.push(match &self.llm_meter {
                    Some((endpoint, token_key)) => {
                        // The real key stays on the edge, which injects it upstream.
                        let path = meter_path(&key.provider);
                        let usable =
                            key.provider != "custom" || base_url.is_some_and(|u| !u.is_empty());
                        ProviderKey {
                            base_url: usable.then(|| format!("http://{endpoint}/{path}")),
                            key: clawdeploy_llm_egress::member_token(token_key, member),
                            provider: key.provider,
                        }
                    }
                    None => ProviderKey {
                        provider: key.provider,
                        key: plain.to_string(),
                        base_url,
                    },
                });
            }
        }
        // Credits: a provider the owner has no key for is still configured, through the meter,
        // which pays for its calls from the owner's credit balance (402 when it is empty).
        if let Some((endpoint, token_key)) = &self.llm_meter {
            for provider in &self.credit_providers {
                if keys.iter().any(|k| &k.provider == provider) {
                    continue;
                }
                keys.push(ProviderKey {
                    base_url: Some(format!("http://{endpoint}/{}", meter_path(provider))),
                    key: clawdeploy_llm_egress::member_token(token_key, member),
                    provider: provider.clone(),
                });
            }
        }
        Ok(keys)
    }
}

/// The meter's path prefix for a provider (its API base as OpenClaw expects it).
fn meter_path(provider: &str) -> &'static str {
    match provider {
        "openai" => "openai/v1",
        "anthropic" => "anthropic",
        "google" => "google/v1beta",
        _ => "custom",
    }
}

/// Default models per provider (the API has no model choice yet): `custom` is any
/// OpenAI-compatible endpoint, asked for the model `default`.
pub fn default_model(provider: &str) -> Option<&'static str> {
    match provider {
        "custom" => Some("custom/default"),
        "openai" => Some(DEFAULT_PRIMARY),
        "anthropic" => Some("anthropic/claude-sonnet-4-5"),
        "google" => Some("google/gemini-2.5-flash"),
        _ => None,
    }
}

/// `models.providers` and the primary model for the user's keys. A custom endpoint wins the
/// primary model, then OpenAI, Anthropic, Google. Keys are never passed as `env.vars`: a change
/// there restarts the gateway (and, set, it overrides a provider's `apiKey`).
fn provider_settings(providers: &[ProviderKey]) -> (Map<String, Value>, Option<&'static str>) {
    let mut models = Map::new();
    let mut primary = None;
    for provider in ["custom", "openai", "anthropic", "google"] {
        let Some(key) = providers.iter().find(|p| p.provider == provider) else {
            continue;
        };
        let base_url = key.base_url.as_deref().filter(|u| !u.is_empty());
        match (provider, base_url) {
            ("custom", None) => continue, // a custom provider without an endpoint is unusable
            ("custom", Some(url)) => {
                models.insert(
                    "custom".into(),
                    json!({
                        "baseUrl": url,
                        "apiKey": key.key,
                        "api": "openai-completions",
                        "models": [{ "id": "default", "name": "Custom model" }],
                    }),
                );
            }
            (_, url) => {
                let (api, public_url) = match provider {
                    "openai" => ("openai-completions", "https://api.openai.com/v1"),
                    "anthropic" => ("anthropic-messages", "https://api.anthropic.com"),
                    _ => (
                        "google-generative-ai",
                        "https://generativelanguage.googleapis.com/v1beta",
                    ),
                };
                models.insert(
                    provider.into(),
                    json!({ "baseUrl": url.unwrap_or(public_url), "apiKey": key.key, "api": api, "models": [] }),
                );
            }
        }
        if primary.is_none() {
            primary = default_model(provider);
        }
    }
    (models, primary)
}

#[async_trait]
impl InstanceConfig for OpenClawConfig {
    async fn files(&self, instance: &Instance, member: &str) -> Result<Vec<ConfigFile>, Error> {
        let providers = self.provider_keys(instance, member).await?;
        let skills = match &self.keys {
            Some((store, keyring)) => store.skills_with_secrets(instance.id, keyring).await?,
            None => Vec::new(),
        };
        let extras = TenantExtras {
            skills,
            subagents: self.tiers.get(instance.tier).subagents,
        };
        let (owner, proof) = self.owner_identity(instance);
        let mut config = self.gateway_config(
            &owner,
            Some(&proof),
            &self.origins(&self.hostnames(instance).await?),
            &providers,
            instance.timezone.as_deref(),
            &extras,
        );
        if let Some(channels) = self.channels_section(instance, member).await? {
            config["channels"] = channels;
        }
        let contents = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::Config(format!("openclaw.json: {e}")))?;
        let mut files = vec![ConfigFile::platform(CONFIG_FILE, contents)];
        if let Some(soul) = &instance.soul_md {
            files.push(ConfigFile::instance(SOUL_FILE, soul.clone().into_bytes()));
        }
        if let Some(preset) = instance
            .preset
            .as_deref()
            .and_then(clawdeploy_skills::preset)
        {
            files.push(ConfigFile::instance(
                AGENTS_FILE,
                preset.agents.clone().into_bytes(),
            ));
        }
        Ok(files)
    }

    /// The platform identity, allowed `operator.admin` for the suspension handshake only the
    /// pool performs ([`crate::work`]).
    fn platform_headers(&self, instance: &Instance) -> Option<Vec<(String, String)>> {
        Some(vec![
            (self.user_header.clone(), PLATFORM_USER.to_string()),
            (self.owner_identity(instance).1, "1".into()),
            (
                clawdeploy_proxy::gateway_trust::SCOPES_HEADER.into(),
                PLATFORM_SCOPES.join(","),
            ),
        ])
    }

    /// The member's gateway knows whoever is handed it by the member's name from boot, so the
    /// handover never changes its auth policy (OpenClaw closes every open connection when that
    /// changes).
    fn gateway_identity(&self, member: &str) -> Option<String> {
        Some(member.to_string())
    }

    /// The new config is applied once the Control UI's config no longer names
    /// [`WARM_SEAM_COLOR`] (0.5-1.3 s after the write on 2026.9.6: chokidar's 200 ms
    /// write-stability wait, a fixed 300 ms debounce, then the apply).
    fn applied_probe(&self, instance: &Instance) -> Option<AppliedProbe> {
        let (owner, proof) = self.owner_identity(instance);
        Some(AppliedProbe {
            path: APPLIED_PROBE_PATH,
            headers: vec![
                (self.user_header.clone(), owner),
                (proof, "1".into()),
                (
                    clawdeploy_proxy::gateway_trust::SCOPES_HEADER.into(),
                    clawdeploy_proxy::gateway_trust::owner_scopes_value(),
                ),
            ],
            gone: WARM_SEAM_COLOR,
        })
    }

    /// OpenClaw's live reload of a rewritten config was missed or deferred in some runs; a
    /// domain the owner just added must work, so the gateway restarts on it.
    fn restart_for_new_origins(&self) -> bool {
        true
    }

    fn boot_files(&self, member: &str) -> Vec<ConfigFile> {
        vec![ConfigFile::platform(
            CONFIG_FILE,
            self.idle_config(member).to_string().into_bytes(),
        )]
    }

    /// Only with the LLM meter, whose stub answers the warm-up's model calls (without it the
    /// turn would call a real provider, with no key).
    async fn warm_up(&self, addr: std::net::SocketAddr, member: &str) -> Result<(), Error> {
        if self.llm_meter.is_none() {
            return Ok(());
        }
        self.warm_up_turn(addr, member).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the LLM meter configured, every provider points at the meter and the container
    /// holds only its instance token, never the user's key.
    #[tokio::test]
    async fn with_the_llm_meter_instances_hold_only_their_token() {
        use clawdeploy_store::{InstanceStatus, NewInstance, NewUser, Role, Tier};
        let dir = std::env::temp_dir().join(format!("clawdeploy-llm-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.join("t.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let key = clawdeploy_store::secrets::generate_key_base64().unwrap();
        let keyring = Keyring::from_base64("k1", &key).unwrap();
        let user = store
            .create_user(&NewUser {
                email: "llm@example.com",
                password_hash: "x",
                name: None,
                tier: Tier::Free,
                role: Role::User,
                timezone: None,
            })
            .await
            .unwrap();
        store
            .upsert_api_key(user.id, "openai", None, "sk-real-openai", &keyring)
            .await
            .unwrap();
        store
            .upsert_api_key(
                user.id,
                "custom",
                Some("https://llm.example/v1"),
                "sk-real-custom",
                &keyring,
            )
            .await
            .unwrap();
        let instance = store
            .create_instance(&NewInstance {
                user_id: user.id,
                subdomain: "llmbox",
                tier: Tier::Free,
                status: InstanceStatus::Provisioning,
                soul_md: None,
                timezone: None,
            })
            .await
            .unwrap();
        let mut generator = generator();
        generator.keys = Some((store.clone(), Arc::new(keyring)));
        generator.llm_meter = Some(("172.18.0.1:9480".into(), b"token key".to_vec()));
        let files = generator.files(&instance, MEMBER).await.unwrap();
        let text = String::from_utf8(files[0].contents.clone()).unwrap();
        assert!(!text.contains("sk-real"), "{text}");
        let config: Value = serde_json::from_str(&text).unwrap();
        let token = clawdeploy_llm_egress::member_token(b"token key", MEMBER);
        let providers = &config["models"]["providers"];
        assert_eq!(
            providers["openai"]["baseUrl"],
            "http://172.18.0.1:9480/openai/v1"
        );
        assert_eq!(providers["openai"]["apiKey"], token.as_str());
        assert_eq!(
            providers["custom"]["baseUrl"],
            "http://172.18.0.1:9480/custom"
        );
        assert_eq!(providers["custom"]["apiKey"], token.as_str());

        // A custom domain joins the Control UI's allowed origins once it is active, not before;
        // another user's active domain never does.
        let origins = |files: &[ConfigFile]| {
            let c: Value = serde_json::from_slice(&files[0].contents).unwrap();
            c["gateway"]["controlUi"]["allowedOrigins"].clone()
        };
        let domain = store
            .create_custom_domain(user.id, instance.id, "shop.example.org", "t")
            .await
            .unwrap();
        let other = store
            .create_user(&NewUser {
                email: "other@example.com",
                password_hash: "x",
                name: None,
                tier: Tier::Free,
                role: Role::User,
                timezone: None,
            })
            .await
            .unwrap();
        let their_instance = store
            .create_instance(&NewInstance {
                user_id: other.id,
                subdomain: "evilbox",
                tier: Tier::Free,
                status: InstanceStatus::Running,
                soul_md: None,
                timezone: None,
            })
            .await
            .unwrap();
        let theirs = store
            .create_custom_domain(other.id, their_instance.id, "evil.example.net", "t")
            .await
            .unwrap();
        store
            .set_custom_domain_status(theirs.id, DomainStatus::Active, None)
            .await
            .unwrap();
        let own = json!([
            "http://llmbox.example.test:8080",
            "https://llmbox.example.test"
        ]);
        assert_eq!(
            origins(&generator.files(&instance, MEMBER).await.unwrap()),
            own
        );
        store
            .set_custom_domain_status(domain.id, DomainStatus::Active, None)
            .await
            .unwrap();
        assert_eq!(
            origins(&generator.files(&instance, MEMBER).await.unwrap()),
            json!([
                "http://llmbox.example.test:8080",
                "https://llmbox.example.test",
                "http://shop.example.org:8080",
                "https://shop.example.org"
            ])
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    const MEMBER: &str = "cd-node-0123";

    fn generator() -> OpenClawConfig {
        OpenClawConfig {
            user_header: "x-forwarded-user".into(),
            trusted_proxies: vec!["172.18.0.1".into()],
            allow_loopback: false,
            data_dir: "/data".into(),
            port: 18789,
            origin_templates: vec!["http://{host}:8080".into(), "https://{host}".into()],
            base_domain: "example.test".into(),
            gateway_proof_key: b"proof key".to_vec(),
            keys: None,
            llm_meter: None,
            tiers: TiersConfig::default(),
            credit_providers: Vec::new(),
        }
    }

    fn instance() -> Instance {
        Instance {
            id: uuid::Uuid::new_v4(),
            user_id: uuid::Uuid::new_v4(),
            subdomain: "alice".into(),
            status: clawdeploy_store::InstanceStatus::Running,
            tier: clawdeploy_store::Tier::Free,
            node_id: None,
            node_ip: None,
            container_id: None,
            container_ip: None,
            upstream: None,
            soul_md: Some("Be brief.".into()),
            timezone: Some("Europe/Paris".into()),
            created_at: 0,
            updated_at: 0,
            last_active_at: None,
            billing_anchor_at: None,
            wake_at: None,
            sleep_lease: None,
            preset: None,
            gateway_id: None,
        }
    }

    #[tokio::test]
    async fn an_instance_gets_a_locked_down_trusted_proxy_gateway() {
        let gen = generator();
        let mut inst = instance();
        inst.gateway_id = Some(MEMBER.into());
        let files = gen.files(&inst, MEMBER).await.unwrap();
        assert_eq!(files[0].path, "openclaw.json");
        let c: Value = serde_json::from_slice(&files[0].contents).unwrap();
        let g = &c["gateway"];
        assert_eq!(g["mode"], "local");
        assert_eq!(g["bind"], "lan");
        assert_eq!(g["trustedProxies"], json!(["172.18.0.1"]));
        assert_eq!(g["auth"]["mode"], "trusted-proxy");
        let tp = &g["auth"]["trustedProxy"];
        assert_eq!(tp["userHeader"], "x-forwarded-user");
        // The owner by the gateway identity, and the platform identity the pool asks about work
        // as: the warm config's, so the handover changes no auth policy (OpenClaw would close
        // every open connection).
        assert_eq!(tp["allowUsers"], json!([MEMBER, PLATFORM_USER]));
        assert_eq!(
            c["gateway"]["auth"],
            gen.idle_config(MEMBER)["gateway"]["auth"]
        );
        assert!(c.get("ui").is_none());
        assert_eq!(
            g["auth"]["identityScopes"],
            json!({ MEMBER: OWNER_SCOPES, PLATFORM_USER: PLATFORM_SCOPES })
        );
        assert_eq!(tp["deviceAutoApprove"]["enabled"], true);
        assert!(!tp["deviceAutoApprove"]["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("operator.admin")));
        assert!(tp.get("allowLoopback").is_none());
        assert_eq!(
            tp["requiredHeaders"],
            json!([clawdeploy_proxy::gateway_trust::proof_header(
                b"proof key",
                MEMBER
            )])
        );
        assert_eq!(
            g["controlUi"]["allowedOrigins"],
            json!([
                "http://alice.example.test:8080",
                "https://alice.example.test"
            ])
        );
        assert_eq!(g["terminal"]["enabled"], false);
        assert_eq!(g["http"]["endpoints"]["chatCompletions"]["enabled"], false);
        assert_eq!(g["http"]["endpoints"]["responses"]["enabled"], false);
        assert_eq!(c["update"]["checkOnStart"], false);
        assert!(c.get("channels").is_none());
        assert_eq!(c["agents"]["defaults"]["workspace"], "/data/workspace");
        assert_eq!(c["agents"]["defaults"]["userTimezone"], "Europe/Paris");
        assert_eq!(files[1].path, "workspace/SOUL.md");
        assert_eq!(files[1].contents, b"Be brief.");

        // Handed over before gateway identities: the owner's id, the proof of the instance id.
        inst.gateway_id = None;
        let c: Value =
            serde_json::from_slice(&gen.files(&inst, MEMBER).await.unwrap()[0].contents).unwrap();
        let tp = &c["gateway"]["auth"]["trustedProxy"];
        assert_eq!(tp["allowUsers"][0], inst.user_id.to_string());
        assert_eq!(
            tp["requiredHeaders"],
            json!([gen.proof_for(&inst.id.to_string())])
        );
    }

    #[test]
    fn an_idle_gateway_admits_only_its_own_identity_and_the_platform_with_its_proof() {
        let gen = generator();
        let c = gen.idle_config(MEMBER);
        let tp = &c["gateway"]["auth"]["trustedProxy"];
        assert_eq!(tp["allowUsers"], json!([MEMBER, PLATFORM_USER]));
        assert_eq!(tp["requiredHeaders"], json!([gen.proof_for(MEMBER)]));
        assert!(uuid::Uuid::parse_str(PLATFORM_USER).is_err());
        assert_eq!(
            c["gateway"]["controlUi"]["allowedOrigins"],
            json!([UNASSIGNED_ORIGIN])
        );
        // Without the LLM meter a warm member has no provider (and no warm-up).
        assert!(c.get("models").is_none());
        assert_eq!(c["agents"]["defaults"]["heartbeat"]["every"], "0m");
        assert_eq!(c["agents"]["defaults"]["utilityModel"], "");
    }

    /// The idle config already holds what the owner's config will (the meter's OpenAI provider
    /// with the member's token, the default model), so assignment changes nothing OpenClaw must
    /// restart or rebuild for, and no key is ever passed as `env.vars` (a restart).
    #[tokio::test]
    async fn assignment_changes_only_what_openclaw_applies_live() {
        let mut generator = generator();
        generator.llm_meter = Some(("172.18.0.1:9480".into(), b"token key".to_vec()));
        let idle = generator.idle_config(MEMBER);
        let token = clawdeploy_llm_egress::member_token(b"token key", MEMBER);
        let openai = json!({"baseUrl": "http://172.18.0.1:9480/openai/v1", "apiKey": token,
            "api": "openai-completions", "models": []});
        assert_eq!(idle["models"]["providers"]["openai"], openai);
        assert_eq!(
            idle["agents"]["defaults"]["model"]["primary"],
            DEFAULT_PRIMARY
        );
        let owner = ProviderKey {
            provider: "openai".into(),
            key: token.clone(),
            base_url: Some("http://172.18.0.1:9480/openai/v1".into()),
        };
        let config = generator.gateway_config(
            MEMBER,
            Some(&generator.proof_for(MEMBER)),
            &["https://alice.example.test".into()],
            &[owner],
            Some("Europe/Paris"),
            &TenantExtras::default(),
        );
        assert_eq!(config["models"], idle["models"]);
        assert_eq!(
            config["agents"]["defaults"]["model"],
            idle["agents"]["defaults"]["model"]
        );
        assert!(config.get("env").is_none() && idle.get("env").is_none());
        // The gateway's auth policy is the warm one's: open connections stay open.
        assert_eq!(config["gateway"]["auth"], idle["gateway"]["auth"]);
        // Applied once the warm marker is gone from the Control UI's config, asked as the owner
        // with the instance's proof.
        let mut inst = instance();
        inst.gateway_id = Some(MEMBER.into());
        let probe = generator.applied_probe(&inst).expect("a probe");
        assert_eq!(idle["ui"]["seamColor"], probe.gone);
        assert!(config.get("ui").is_none());
        assert_eq!(
            probe.headers[..2],
            [
                ("x-forwarded-user".to_string(), MEMBER.to_string()),
                (generator.proof_for(MEMBER), "1".into())
            ]
        );
    }

    #[test]
    fn providers_become_models_and_env() {
        let keys = [
            ProviderKey {
                provider: "openai".into(),
                key: "sk-openai".into(),
                base_url: None,
            },
            ProviderKey {
                provider: "custom".into(),
                key: "sk-custom".into(),
                base_url: Some("http://172.18.0.1:9000/v1".into()),
            },
        ];
        let c = generator().gateway_config("u", None, &[], &keys, None, &TenantExtras::default());
        let custom = &c["models"]["providers"]["custom"];
        assert_eq!(custom["baseUrl"], "http://172.18.0.1:9000/v1");
        assert_eq!(custom["apiKey"], "sk-custom");
        assert_eq!(custom["api"], "openai-completions");
        assert_eq!(
            c["agents"]["defaults"]["model"]["primary"],
            "custom/default"
        );
        // Without the meter a provider gets its public API and the plain key, never env.vars.
        let openai = &c["models"]["providers"]["openai"];
        assert_eq!(openai["baseUrl"], "https://api.openai.com/v1");
        assert_eq!(openai["apiKey"], "sk-openai");
        assert!(c.get("env").is_none());
        assert!(!format!("{:?}", keys[0]).contains("sk-openai"));
    }

    #[test]
    fn a_process_gateway_trusts_the_loopback_edge() {
        let mut gen = generator();
        gen.allow_loopback = true;
        let c = gen.idle_config(MEMBER);
        assert_eq!(c["gateway"]["auth"]["trustedProxy"]["allowLoopback"], true);
    }
}
