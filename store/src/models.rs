//! Rows returned by the store. Times are unix milliseconds (UTC); see [`crate::time`].
//! Types that hold a secret or a hash redact it in `Debug` and never serialize it.

use clawdeploy_config::Tier;
use serde::Serialize;
use uuid::Uuid;

use crate::error::StoreError;

/// A user's role: `operator`s can use the admin pages with a normal login.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A customer: the dashboard and the API, for their own account.
    User,
    /// May also use the admin pages, with a normal login.
    Operator,
}

impl Role {
    /// The name as stored and serialized: `user` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            other => Err(StoreError::Invalid(format!("role {other:?}"))),
        }
    }
}

/// Instance status: one list for API, store and routing (see the design brief).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Waiting for room on the node (its capacity is used up); served first when room frees.
    Queued,
    /// Getting its container: claimed from the warm pool or created on demand.
    Provisioning,
    /// Its container is (re)starting: a restart, or healing after a failure.
    Starting,
    /// Ready: the only status the edge proxies to.
    Running,
    /// Put to sleep after being idle (`pool.idle_stop_secs` of its tier): its memory is given back
    /// and the edge wakes it on the next request, which it holds meanwhile.
    Sleeping,
    /// Not running, and not restarted by the pool: the account's email stayed unverified, or the
    /// instance was restored after a deletion. Its owner can restart it.
    Stopped,
    /// The pool gave up after too many restarts in a short time; it stays down until its owner
    /// restarts it.
    Crashed,
    /// Deleted by its owner: kept stopped and restorable for the grace period, then removed.
    Deleting,
}

impl InstanceStatus {
    /// Every status, in the order of an instance's life.
    pub const ALL: [InstanceStatus; 8] = [
        InstanceStatus::Queued,
        InstanceStatus::Provisioning,
        InstanceStatus::Starting,
        InstanceStatus::Running,
        InstanceStatus::Sleeping,
        InstanceStatus::Stopped,
        InstanceStatus::Crashed,
        InstanceStatus::Deleting,
    ];

    /// The name as stored, serialized and shown by the API, e.g. `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Queued => "queued",
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Starting => "starting",
            InstanceStatus::Running => "running",
            InstanceStatus::Sleeping => "sleeping",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Crashed => "crashed",
            InstanceStatus::Deleting => "deleting",
        }
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InstanceStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        InstanceStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("instance status {s:?}")))
    }
}

/// Purpose of a one-time email token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTokenPurpose {
    /// Proves the account owns the address it was sent to (at signup, or after a change).
    Verify,
    /// Lets the account set a new password without the old one.
    Reset,
}

impl EmailTokenPurpose {
    /// The name as stored: `verify` or `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailTokenPurpose::Verify => "verify",
            EmailTokenPurpose::Reset => "reset",
        }
    }
}

impl std::str::FromStr for EmailTokenPurpose {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "verify" => Ok(EmailTokenPurpose::Verify),
            "reset" => Ok(EmailTokenPurpose::Reset),
            other => Err(StoreError::Invalid(format!(
                "email token purpose {other:?}"
            ))),
        }
    }
}

/// A user. `password_hash` (bcrypt, made by the API) is redacted from `Debug` and never
/// serialized; MFA secrets and recovery codes are not loaded into this struct at all.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The user's id (UUID v4).
    pub id: Uuid,
    /// Lower case.
    pub email: String,
    /// bcrypt hash of the password.
    #[serde(skip)]
    pub password_hash: String,
    /// Display name, if the user gave one.
    pub name: Option<String>,
    /// The user's plan; its quotas are in the config (`[tiers]`).
    pub tier: Tier,
    /// Whether the user may use the admin pages.
    pub role: Role,
    /// When the current address was first verified (unix ms); `None` until then, and again
    /// after the address changes.
    pub email_verified_at: Option<i64>,
    /// An IANA time zone name such as `Europe/Berlin`; `UTC` unless the user chose one.
    pub timezone: String,
    /// Language for the dashboard (a BCP 47 primary tag such as `en`), stored for later localisation.
    pub language: String,
    /// An `https://` URL of the user's picture (the API checks the scheme).
    pub avatar_url: Option<String>,
    /// When MFA was turned on; `None` when off.
    pub mfa_enabled_at: Option<i64>,
    /// When the user asked to delete the account (unix ms; the first request, if repeated): it
    /// is deleted `limits.deletion_grace_days` later unless cancelled. `None` when not requested.
    pub deletion_requested_at: Option<i64>,
    /// When the account was created (unix ms).
    pub created_at: i64,
    /// When any column of the row last changed (unix ms).
    pub updated_at: i64,
}

impl User {
    /// True once the current email address is verified.
    pub fn email_verified(&self) -> bool {
        self.email_verified_at.is_some()
    }
    /// True while MFA is on: a login needs a TOTP or recovery code.
    pub fn mfa_enabled(&self) -> bool {
        self.mfa_enabled_at.is_some()
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("role", &self.role)
            .field("email_verified_at", &self.email_verified_at)
            .field("timezone", &self.timezone)
            .field("avatar_url", &self.avatar_url)
            .field("mfa_enabled_at", &self.mfa_enabled_at)
            .field("deletion_requested_at", &self.deletion_requested_at)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Input of [`crate::Store::create_user`].
#[derive(Clone)]
pub struct NewUser<'a> {
    /// The address, in any case; stored trimmed and lower case.
    pub email: &'a str,
    /// bcrypt hash of the password, made by the caller.
    pub password_hash: &'a str,
    /// Display name, if the user gave one.
    pub name: Option<&'a str>,
    /// The plan the account starts on.
    pub tier: Tier,
    /// Whether the account may use the admin pages.
    pub role: Role,
    /// An IANA time zone name; `None` stores `UTC`.
    pub timezone: Option<&'a str>,
}

impl std::fmt::Debug for NewUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("role", &self.role)
            .field("timezone", &self.timezone)
            .finish()
    }
}

/// Profile fields; `None` leaves a field unchanged, `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate<'a> {
    /// A new display name; `Some(None)` removes it.
    pub name: Option<Option<&'a str>>,
    /// A new address; it becomes unverified. Duplicate → `Conflict(Email)`.
    pub email: Option<&'a str>,
    /// A new IANA time zone name.
    pub timezone: Option<&'a str>,
    /// A new picture URL (`https://`); `Some(None)` removes it.
    pub avatar_url: Option<Option<&'a str>>,
    /// A new dashboard language (BCP 47 primary tag such as `en`).
    pub language: Option<&'a str>,
}

/// A login session; the JWT carries its id.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The session's id (UUID v4), the JWT's `sid` claim.
    pub id: Uuid,
    /// The signed-in user's id.
    pub user_id: Uuid,
    /// When the user logged in (unix ms).
    pub created_at: i64,
    /// When it ends (unix ms), unless [`Store::touch_session`](crate::Store::touch_session)
    /// extends it.
    pub expires_at: i64,
    /// When it was logged out or revoked (unix ms); `None` while it stands.
    pub revoked_at: Option<i64>,
    /// Last activity (unix ms) recorded by [`Store::touch_session`](crate::Store::touch_session)
    /// (the API records each refresh); `None` until then.
    pub last_seen_at: Option<i64>,
    /// The client's IP at login, as the edge passed it (`X-Real-IP`).
    pub ip: Option<String>,
    /// The client's `User-Agent` at login (the API keeps at most 256 characters).
    pub user_agent: Option<String>,
}

impl Session {
    /// Neither revoked nor expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A stored refresh token (only its hash is kept).
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// The token's id (UUID v4); not the token, which is never stored.
    pub id: Uuid,
    /// The id of the session it renews.
    pub session_id: Uuid,
    /// That session's user id.
    pub user_id: Uuid,
    /// When it was issued (unix ms).
    pub created_at: i64,
    /// When it stops being accepted (unix ms).
    pub expires_at: i64,
    /// When it was exchanged for its successor (unix ms); presenting it again after that is reuse.
    pub rotated_at: Option<i64>,
    /// The successor's id, once rotated.
    pub replaced_by: Option<Uuid>,
}

/// A one-time email token (only its hash is kept).
#[derive(Debug, Clone)]
pub struct EmailToken {
    /// The token's id (UUID v4); not the token, which is never stored.
    pub id: Uuid,
    /// The id of the account the link acts on.
    pub user_id: Uuid,
    /// What the link does.
    pub purpose: EmailTokenPurpose,
    /// The address the token was sent to.
    pub email: String,
    /// When it was issued (unix ms).
    pub created_at: i64,
    /// When it stops being accepted (unix ms).
    pub expires_at: i64,
    /// When it was used, or invalidated by a newer link (unix ms); `None` while usable.
    pub used_at: Option<i64>,
}

/// A security log entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEvent {
    /// Increasing with each entry (a database identity); pages of the log are cut by it.
    pub id: i64,
    /// The id of the account concerned; `None` when no account was identified.
    pub user_id: Option<Uuid>,
    /// e.g. `login_success`, `login_failure`, `mfa_enabled`, `api_key_changed`.
    pub event: String,
    /// The client's IP, as the edge passed it (`X-Real-IP`).
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// Free text for the user, e.g. `wrong password`.
    pub detail: Option<String>,
    /// When it happened (unix ms).
    pub created_at: i64,
}

/// Input of [`crate::Store::append_security_event`].
#[derive(Debug, Clone, Default)]
pub struct NewSecurityEvent<'a> {
    /// The id of the account concerned, if one was identified.
    pub user_id: Option<Uuid>,
    /// What happened, in `snake_case`: see [`SecurityEvent::event`].
    pub event: &'a str,
    /// The client's IP.
    pub ip: Option<&'a str>,
    /// The client's `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// Free text for the user.
    pub detail: Option<&'a str>,
}

/// A provider API key as shown to users: masked, never the key itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// The key's id (UUID v4).
    pub id: Uuid,
    /// The owning user's id.
    pub user_id: Uuid,
    /// `openai`, `anthropic`, `google` or `custom`; one key per user and provider.
    pub provider: String,
    /// The endpoint calls go to instead of the provider's own (required for `custom`).
    pub base_url: Option<String>,
    /// Masked key, e.g. `sk-...abcd`.
    pub masked: String,
    /// A disabled key is kept but not used.
    pub is_active: bool,
    /// When it was first stored (unix ms).
    pub created_at: i64,
    /// When it was last replaced, enabled or disabled (unix ms).
    pub updated_at: i64,
}

/// An OpenClaw instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The instance's id (UUID v4).
    pub id: Uuid,
    /// The owning user's id.
    pub user_id: Uuid,
    /// Lower case.
    pub subdomain: String,
    /// Where it is in its life; the edge routes only `running`.
    pub status: InstanceStatus,
    /// A copy of the owner's tier, changed with it (the meter reads it from here).
    pub tier: Tier,
    /// The node it runs on (`pool.node_id`); `None` until placed.
    pub node_id: Option<String>,
    /// That node's IP address; the pool does not set it yet.
    pub node_ip: Option<String>,
    /// The runtime's id of what runs it: a Docker container id, or the process name.
    pub container_id: Option<String>,
    /// The IP address the container listens on.
    pub container_ip: Option<String>,
    /// `host:port` the edge proxies to, once known.
    pub upstream: Option<String>,
    /// The owner's SOUL.md for the OpenClaw agent, written into its workspace.
    pub soul_md: Option<String>,
    /// An IANA time zone name for the agent; `None`: OpenClaw's default.
    pub timezone: Option<String>,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// When any column of the row last changed (unix ms).
    pub updated_at: i64,
    /// Last activity (unix ms) recorded by
    /// [`Store::touch_instance`](crate::Store::touch_instance); `None` until then.
    pub last_active_at: Option<i64>,
    /// Start of the owner's paid billing periods (unix ms); `None`: calendar months.
    pub billing_anchor_at: Option<i64>,
    /// When the pool must wake this sleeping instance for its next scheduled job (unix ms);
    /// `None`: only a request wakes it.
    pub wake_at: Option<i64>,
    /// The gateway's suspension lease a frozen instance holds (OpenClaw's
    /// `gateway.suspend.prepare`), released when it is woken; `None` unless frozen.
    pub sleep_lease: Option<String>,
    /// The agent preset last applied (`coder`, `writer`…); `None`: none.
    pub preset: Option<String>,
    /// The identity the instance's gateway knows its owner by, and keys the edge's proof header
    /// with (`clawdeploy_proxy::gateway_trust`): the name of the pool member it was handed,
    /// fixed when that member booted. `None`: the owner's user id and the instance id (instances
    /// handed over before this existed, and runtimes that take no identity).
    pub gateway_id: Option<String>,
}

/// Where an installed skill came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SkillSource {
    /// Shipped with OpenClaw; installing it enables it in the instance's config.
    Bundled,
    /// From the platform's ClawHub-compatible registry (curated, or an allowed upstream skill);
    /// OpenClaw's installer fetched it into the instance's workspace.
    Registry,
}

impl SkillSource {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SkillSource::Bundled => "bundled",
            SkillSource::Registry => "registry",
        }
    }
}

impl std::str::FromStr for SkillSource {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "bundled" => Ok(SkillSource::Bundled),
            "registry" => Ok(SkillSource::Registry),
            _ => Err(StoreError::Invalid(format!("skill source {s:?}"))),
        }
    }
}

/// A skill installed in an instance (`skills_installed`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledSkill {
    /// The catalogue id: a bundled skill's name or a registry slug.
    pub skill_id: String,
    /// The version installed (`bundled` skills: OpenClaw's version).
    pub version: String,
    /// Where it came from.
    pub source: SkillSource,
    /// Whether the instance's agent may use it.
    pub enabled: bool,
    /// Why the platform disabled it (a downgrade past the tier's cap); `None` when enabled or
    /// disabled by the owner.
    pub disabled_reason: Option<String>,
    /// Plain config fields.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Names of the secret config fields set (their values are sealed and never shown).
    pub secret_fields: Vec<String>,
    /// When it was installed (unix ms).
    pub installed_at: i64,
    /// When it last changed (unix ms).
    pub updated_at: i64,
}

/// Input of [`crate::Store::create_instance`].
#[derive(Debug, Clone)]
pub struct NewInstance<'a> {
    /// The owning user's id.
    pub user_id: Uuid,
    /// Stored lower case; the API validates the label.
    pub subdomain: &'a str,
    /// The owner's tier; on a tier with one instance, a second one is refused.
    pub tier: Tier,
    /// The first status, usually `provisioning`.
    pub status: InstanceStatus,
    /// The agent's SOUL.md.
    pub soul_md: Option<&'a str>,
    /// An IANA time zone name for the agent.
    pub timezone: Option<&'a str>,
}

/// Where an instance runs; all `None` clears it.
#[derive(Debug, Clone, Default)]
pub struct Placement<'a> {
    /// See [`Instance::node_id`].
    pub node_id: Option<&'a str>,
    /// See [`Instance::node_ip`].
    pub node_ip: Option<&'a str>,
    /// See [`Instance::container_id`].
    pub container_id: Option<&'a str>,
    /// See [`Instance::container_ip`].
    pub container_ip: Option<&'a str>,
    /// See [`Instance::upstream`].
    pub upstream: Option<&'a str>,
}

/// Usage totals over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// OpenClaw user messages counted by the edge's meter.
    pub messages: i64,
    /// LLM tokens (input + output) counted by the LLM meter.
    pub tokens: i64,
}

/// One day of usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// OpenClaw user messages counted that day.
    pub messages: i64,
    /// LLM tokens (input + output) counted that day.
    pub tokens: i64,
}

/// A named admin token (only its hash is kept).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminToken {
    /// The token's id (UUID v4); not the token, which is never stored.
    pub id: Uuid,
    /// The operator's label for it; unique among unrevoked tokens.
    pub name: String,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// When it was revoked (unix ms); `None` while it is accepted.
    pub revoked_at: Option<i64>,
    /// When it was last accepted (unix ms); `None` if never.
    pub last_used_at: Option<i64>,
}

/// Where a warm-pool member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMemberState {
    /// Being created and started; not yet ready.
    Creating,
    /// Running, ready, unclaimed.
    Idle,
    /// Serving an instance.
    Claimed,
}

impl PoolMemberState {
    /// The name as stored and serialized: `creating`, `idle` or `claimed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Idle => "idle",
            Self::Claimed => "claimed",
        }
    }
}

impl std::str::FromStr for PoolMemberState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "creating" => Ok(Self::Creating),
            "idle" => Ok(Self::Idle),
            "claimed" => Ok(Self::Claimed),
            other => Err(StoreError::Corrupt(format!("pool member state {other:?}"))),
        }
    }
}

/// One warm-pool member (a container or process the pool created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMember {
    /// The member's id (UUID v4).
    pub id: Uuid,
    /// The node that created it and runs it (`pool.node_id`).
    pub node_id: String,
    /// The name given to the runtime, `cd-<node_id>-<uuid without hyphens>`; unique.
    pub name: String,
    /// The runtime's id (Docker container id, or the process name), once created.
    pub runtime_id: Option<String>,
    /// Where it is in its life.
    pub state: PoolMemberState,
    /// `IP:port` of its gateway, once ready.
    pub upstream: Option<String>,
    /// The id of the instance it serves, once claimed (cleared if that instance is deleted).
    pub instance_id: Option<Uuid>,
    /// When the pool started creating it (unix ms).
    pub created_at: i64,
}

/// A mail kept in the outbox (no SMTP relay configured).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxMail {
    /// Increasing with each mail (a database identity).
    pub id: i64,
    /// The recipient's address.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body, verification or reset links included.
    pub body: String,
    /// When the mail was kept (unix ms).
    pub created_at: i64,
}

/// A messaging app an instance can be reached through.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A Telegram bot (OpenClaw's built-in channel), through the edge's Bot API relay.
    Telegram,
}

impl ChannelKind {
    /// Every kind, in the order the API lists them.
    pub const ALL: [ChannelKind; 1] = [ChannelKind::Telegram];

    /// The lower-case name (`telegram`), as in the API's paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Telegram => "telegram",
        }
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "telegram" => Ok(ChannelKind::Telegram),
            _ => Err(StoreError::Invalid(format!("channel kind {s:?}"))),
        }
    }
}

/// What the edge's relay last saw of a channel.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelStatus {
    /// Connected by the owner; the instance has not reached the app through it yet.
    Pending,
    /// The app accepted the credential on the instance's last call.
    Connected,
    /// The app refused the credential or failed; `status_detail` says how.
    Error,
}

impl ChannelStatus {
    /// The lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Pending => "pending",
            ChannelStatus::Connected => "connected",
            ChannelStatus::Error => "error",
        }
    }
}

impl std::str::FromStr for ChannelStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(ChannelStatus::Pending),
            "connected" => Ok(ChannelStatus::Connected),
            "error" => Ok(ChannelStatus::Error),
            _ => Err(StoreError::Invalid(format!("channel status {s:?}"))),
        }
    }
}

/// A channel connected to an instance (`channels`); its credential is sealed apart.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    /// The instance it reaches.
    pub instance_id: Uuid,
    /// Which app.
    pub kind: ChannelKind,
    /// The senders allowed to talk to the assistant (Telegram: numeric user ids); nobody else.
    pub allow_from: Vec<String>,
    /// What the relay last saw.
    pub status: ChannelStatus,
    /// The app's reason for an error status.
    pub status_detail: Option<String>,
    /// When a message from an allowed sender last arrived (unix ms).
    pub last_message_at: Option<i64>,
    /// When it was connected (unix ms).
    pub created_at: i64,
    /// When it last changed (unix ms).
    pub updated_at: i64,
}
