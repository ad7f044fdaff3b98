//! Rows returned by the store. Times are unix milliseconds (UTC); see [`crate::time`].
//! Types that hold a secret or a hash redact it in `Debug` and never serialize it.

use clawdeploy_config::Tier;
use serde::Serialize;
use uuid::Uuid;

use crate::error::StoreError;

/// A user's role: `operator`s can use the admin pages with a normal login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Operator,
}

impl Role {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Queued,
    Provisioning,
    Starting,
    Running,
    Stopped,
    Crashed,
    Deleting,
}

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 7] = [
        InstanceStatus::Queued,
        InstanceStatus::Provisioning,
        InstanceStatus::Starting,
        InstanceStatus::Running,
        InstanceStatus::Stopped,
        InstanceStatus::Crashed,
        InstanceStatus::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Queued => "queued",
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Starting => "starting",
            InstanceStatus::Running => "running",
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
    Verify,
    Reset,
}

impl EmailTokenPurpose {
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
    pub id: Uuid,
    /// Lower case.
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    pub name: Option<String>,
    pub tier: Tier,
    pub role: Role,
    pub email_verified_at: Option<i64>,
    pub timezone: String,
    /// Language for the dashboard (a BCP 47 primary tag such as `en`), stored for later localisation.
    pub language: String,
    pub avatar_url: Option<String>,
    /// When MFA was turned on; `None` when off.
    pub mfa_enabled_at: Option<i64>,
    pub deletion_requested_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl User {
    pub fn email_verified(&self) -> bool {
        self.email_verified_at.is_some()
    }
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
    pub email: &'a str,
    pub password_hash: &'a str,
    pub name: Option<&'a str>,
    pub tier: Tier,
    pub role: Role,
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
    pub name: Option<Option<&'a str>>,
    /// A new address; it becomes unverified. Duplicate → `Conflict(Email)`.
    pub email: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub avatar_url: Option<Option<&'a str>>,
    pub language: Option<&'a str>,
}

/// A login session; the JWT carries its id.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub ip: Option<String>,
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
    pub id: Uuid,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
    pub replaced_by: Option<Uuid>,
}

/// A one-time email token (only its hash is kept).
#[derive(Debug, Clone)]
pub struct EmailToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: EmailTokenPurpose,
    /// The address the token was sent to.
    pub email: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A security log entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEvent {
    pub id: i64,
    pub user_id: Option<Uuid>,
    /// e.g. `login_success`, `login_failure`, `mfa_enabled`, `api_key_changed`.
    pub event: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
}

/// Input of [`crate::Store::append_security_event`].
#[derive(Debug, Clone, Default)]
pub struct NewSecurityEvent<'a> {
    pub user_id: Option<Uuid>,
    pub event: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// A provider API key as shown to users: masked, never the key itself.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub provider: String,
    pub base_url: Option<String>,
    /// Masked key, e.g. `sk-...abcd`.
    pub masked: String,
    pub is_active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An OpenClaw instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Lower case.
    pub subdomain: String,
    pub status: InstanceStatus,
    pub tier: Tier,
    pub node_id: Option<String>,
    pub node_ip: Option<String>,
    pub container_id: Option<String>,
    pub container_ip: Option<String>,
    /// `host:port` the edge proxies to, once known.
    pub upstream: Option<String>,
    pub soul_md: Option<String>,
    pub timezone: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_active_at: Option<i64>,
    /// Start of the owner's paid billing periods (unix ms); `None`: calendar months.
    pub billing_anchor_at: Option<i64>,
}

/// Input of [`crate::Store::create_instance`].
#[derive(Debug, Clone)]
pub struct NewInstance<'a> {
    pub user_id: Uuid,
    /// Stored lower case; the API validates the label.
    pub subdomain: &'a str,
    pub tier: Tier,
    pub status: InstanceStatus,
    pub soul_md: Option<&'a str>,
    pub timezone: Option<&'a str>,
}

/// Where an instance runs; all `None` clears it.
#[derive(Debug, Clone, Default)]
pub struct Placement<'a> {
    pub node_id: Option<&'a str>,
    pub node_ip: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub container_ip: Option<&'a str>,
    pub upstream: Option<&'a str>,
}

/// Usage totals over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    pub messages: i64,
    pub tokens: i64,
}

/// One day of usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub messages: i64,
    pub tokens: i64,
}

/// A named admin token (only its hash is kept).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminToken {
    pub id: Uuid,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
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
    pub id: Uuid,
    pub node_id: String,
    pub name: String,
    pub runtime_id: Option<String>,
    pub state: PoolMemberState,
    pub upstream: Option<String>,
    pub instance_id: Option<Uuid>,
    pub created_at: i64,
}

/// A mail kept in the outbox (no SMTP relay configured).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxMail {
    pub id: i64,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: i64,
}
