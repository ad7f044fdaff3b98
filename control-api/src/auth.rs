//! `/api/auth`: register, login (with throttling and optional TOTP), refresh-token rotation,
//! logout, email verification, password reset and MFA setup.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use clawdeploy_proxy::browser_session::{percent_encode, request_cookies};
use clawdeploy_store::time::{now_ms, rfc3339, DAY_MS};
use clawdeploy_store::{
    secrets, EmailTokenPurpose, NewSecurityEvent, NewUser, Role, Session, StoreError, Tier,
    TokenHash, User,
};

use crate::crypto::{self, Claims, JwtError, ACCESS_TTL_SECS};
use crate::error::ApiError;
use crate::{ApiState, Reply, ReplyOrPage};

/// A refresh token (and its session) lives 30 days; each use rotates it and extends the session.
pub const REFRESH_TTL_MS: i64 = 30 * DAY_MS;
const VERIFY_TTL_MS: i64 = 2 * DAY_MS;
const RESET_TTL_MS: i64 = 3_600_000;

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// Where a request came from: the edge overwrites `X-Real-IP`, and only the edge reaches us.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `X-Real-IP`, at most 256 characters.
    pub ip: Option<String>,
    /// `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
}

impl Client {
    /// Reads the client from the headers the edge set; never fails (absent headers give `None`).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect::<String>())
        };
        Client {
            ip: get("x-real-ip"),
            user_agent: get(header::USER_AGENT.as_str()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client::from_headers(&parts.headers))
    }
}

/// The user behind a valid access token whose session is still active.
pub struct AuthUser {
    /// The account, as stored when the request arrived.
    pub user: User,
    /// The session the token belongs to (active, of this user).
    pub session: Session,
}

fn bearer_of(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "UNAUTHORIZED",
            "This endpoint needs a login: send Authorization: Bearer <token>.",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "UNAUTHORIZED",
                "The Authorization header must be of the form: Bearer <token>.",
            )
        })
}

/// Checks an access token and its session; the user it belongs to.
pub(crate) async fn authenticate(state: &ApiState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = crypto::verify_jwt(&state.ctx.jwt_key, token, now_ms() / 1000).map_err(|e| {
        let code = match e {
            JwtError::Expired => "TOKEN_EXPIRED",
            _ => "INVALID_TOKEN",
        };
        ApiError::unauthorized(code, format!("{e}; log in again."))
    })?;
    let session = state.store.get_session(claims.sid).await?;
    let Some(session) = session.filter(|s| s.is_active(now_ms()) && s.user_id == claims.sub) else {
        return Err(ApiError::unauthorized(
            "SESSION_REVOKED",
            "This session has ended (logged out, password changed or expired); log in again.",
        ));
    };
    let Some(user) = state.store.get_user(claims.sub).await? else {
        return Err(ApiError::unauthorized(
            "SESSION_REVOKED",
            "The account no longer exists.",
        ));
    };
    Ok(AuthUser { user, session })
}

/// The dashboard's session cookie names (one definition, in the edge, which also strips them).
pub use clawdeploy_proxy::browser_session::{
    DASHBOARD_COOKIE as SESSION_COOKIE, DASHBOARD_COOKIE_HTTPS as SECURE_SESSION_COOKIE,
};
/// Header a cookie-authenticated state-changing call must carry. A page on another origin cannot
/// add it without a CORS preflight, which this API never grants, so a forged form post fails.
pub const CSRF_HEADER: &str = "x-csrf-protection";

/// Whether the client reached the edge over HTTPS (the edge overwrites `X-Forwarded-Proto`).
fn came_over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https")
}

fn session_cookie_name(headers: &HeaderMap) -> &'static str {
    if came_over_https(headers) {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The value of the dashboard's session cookie, if the request carries exactly one. Two cookies
/// of that name mean one was planted from elsewhere: neither is trusted.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let name = session_cookie_name(headers);
    let mut values = request_cookies(headers)
        .filter(move |c| c.name() == name)
        .filter_map(|c| c.value_raw());
    let value = values.next()?;
    if values.next().is_some() || value.is_empty() {
        return None;
    }
    Some(value)
}

/// The request's access token: `Authorization: Bearer`, else the dashboard's session cookie
/// (which needs [`CSRF_HEADER`] on anything but GET and HEAD).
pub(crate) fn request_token<'a>(
    method: &axum::http::Method,
    headers: &'a HeaderMap,
) -> Result<&'a str, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer_of(headers);
    }
    let Some(token) = session_cookie(headers) else {
        return bearer_of(headers);
    };
    let safe = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    if !safe && !headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::forbidden(
            "CSRF_HEADER_MISSING",
            "A call authenticated by the dashboard's cookie must send the X-CSRF-Protection header (the dashboard's pages do); API clients send Authorization: Bearer <token> instead.",
        ));
    }
    Ok(token)
}

/// `Set-Cookie` for the dashboard session; `__Host-` and `Secure` when the client came over HTTPS.
pub fn session_set_cookie(token: &str, headers: &HeaderMap) -> String {
    let name = session_cookie_name(headers);
    let secure = if came_over_https(headers) {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={ACCESS_TTL_SECS}{secure}")
}

/// `Set-Cookie` that removes the dashboard session.
pub fn session_clear_cookie(headers: &HeaderMap) -> String {
    let name = session_cookie_name(headers);
    let secure = if came_over_https(headers) {
        "; Secure"
    } else {
        ""
    };
    format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
}

impl FromRequestParts<ApiState> for AuthUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = request_token(&parts.method, &parts.headers)?;
        authenticate(state, token).await
    }
}

/// `POST /api/auth/browser-session`: turns the caller's access token into the dashboard's
/// HttpOnly session cookie, so pages and the chat WebSocket authenticate without script access to
/// the token.
pub async fn browser_session(
    State(state): State<ApiState>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, String); 1],
        Reply<UserReply>,
    ),
    ApiError,
> {
    let token = request_token(&method, &headers)?;
    let auth = authenticate(&state, token).await?;
    let cookie = session_set_cookie(token, &headers);
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, cookie)],
        Reply(UserReply::new(&auth.user)),
    ))
}

/// The public view of a user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// The user's id.
    pub id: Uuid,
    /// The email address, lower case.
    pub email: String,
    /// Display name, if the user gave one.
    pub name: Option<String>,
    /// The plan.
    pub tier: Tier,
    /// `user` or `admin`.
    pub role: Role,
    /// Whether the current address is verified.
    pub email_verified: bool,
    /// An IANA time zone name.
    pub timezone: String,
    /// The dashboard's language (`en`, `de`…).
    pub language: String,
    /// An `https://` URL of the user's picture.
    pub avatar_url: Option<String>,
    /// Whether logins need a TOTP or recovery code.
    pub mfa_enabled: bool,
    /// When the account's deletion was asked for (RFC 3339); `null` when not.
    pub deletion_requested_at: Option<String>,
    /// When the account was created (RFC 3339).
    pub created_at: String,
}

impl UserView {
    /// The view of `user`.
    pub fn new(user: &User) -> Self {
        Self {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            tier: user.tier,
            role: user.role,
            email_verified: user.email_verified(),
            timezone: user.timezone.clone(),
            language: user.language.clone(),
            avatar_url: user.avatar_url.clone(),
            mfa_enabled: user.mfa_enabled(),
            deletion_requested_at: user.deletion_requested_at.map(rfc3339),
            created_at: rfc3339(user.created_at),
        }
    }
}

/// `{"user": ...}`: the caller's profile (`GET`/`PATCH /api/account`, the browser session).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserReply {
    /// The user.
    pub user: UserView,
    /// After an email change: whether the verification mail to the new address went out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_email_sent: Option<bool>,
}

impl UserReply {
    /// `{"user": ...}` of `user`.
    pub fn new(user: &User) -> Self {
        Self {
            user: UserView::new(user),
            verification_email_sent: None,
        }
    }
}

pub(crate) async fn log_event(
    state: &ApiState,
    user_id: Option<Uuid>,
    event: &str,
    client: &Client,
    detail: Option<&str>,
) {
    let ev = NewSecurityEvent {
        user_id,
        event,
        ip: client.ip.as_deref(),
        user_agent: client.user_agent.as_deref(),
        detail,
    };
    if let Err(e) = state.store.append_security_event(&ev).await {
        tracing::warn!("security log write failed: {e}");
    }
}

/// bcrypt off the async workers, at most one per CPU at a time.
pub(crate) async fn hash_password(state: &ApiState, password: &str) -> Result<String, ApiError> {
    let _permit = state
        .ctx
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::internal("hash semaphore", e))?;
    let password = password.to_string();
    let cost = state.ctx.config.secrets.bcrypt_cost;
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| ApiError::internal("hash task", e))?
        .map_err(|e| ApiError::internal("bcrypt", e))
}

pub(crate) async fn verify_password(
    state: &ApiState,
    password: &str,
    hash: &str,
) -> Result<bool, ApiError> {
    let _permit = state
        .ctx
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::internal("hash semaphore", e))?;
    let password = password.to_string();
    let hash = hash.to_string();
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .map_err(|e| ApiError::internal("verify task", e))
}

/// Opens a session and issues an access token and a refresh token.
pub(crate) async fn issue_tokens(
    state: &ApiState,
    user: &User,
    client: &Client,
) -> Result<(String, String), ApiError> {
    let now = now_ms();
    let session = state
        .store
        .create_session(
            user.id,
            now + REFRESH_TTL_MS,
            client.ip.as_deref(),
            client.user_agent.as_deref(),
        )
        .await?;
    let (refresh, hash) = secrets::new_token().map_err(|e| ApiError::internal("token", e))?;
    state
        .store
        .create_refresh_token(session.id, &hash, now + REFRESH_TTL_MS)
        .await?;
    Ok((access_token(state, user.id, session.id), refresh))
}

fn access_token(state: &ApiState, user_id: Uuid, session_id: Uuid) -> String {
    let iat = now_ms() / 1000;
    crypto::sign_jwt(
        &state.ctx.jwt_key,
        &Claims {
            sub: user_id,
            sid: session_id,
            iat,
            exp: iat + ACCESS_TTL_SECS,
        },
    )
}

/// A login's answer: the user and a session's tokens (register, login, refresh).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tokens {
    /// The user.
    pub user: UserView,
    /// The access token (a JWT, `Authorization: Bearer`).
    pub token: String,
    /// The refresh token, for `POST /api/auth/refresh`.
    pub refresh_token: String,
    /// Seconds the access token is valid.
    pub expires_in: i64,
    /// On registration: whether the verification mail went out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_email_sent: Option<bool>,
}

fn auth_response(user: &User, token: String, refresh: String) -> Tokens {
    Tokens {
        user: UserView::new(user),
        token,
        refresh_token: refresh,
        expires_in: ACCESS_TTL_SECS,
        verification_email_sent: None,
    }
}

/// Sends a one-time link by mail. Failures are logged, not returned: the action that asked for
/// the mail has already happened, and the user can ask again.
pub(crate) async fn send_link(
    state: &ApiState,
    user: &User,
    email: &str,
    purpose: EmailTokenPurpose,
) -> bool {
    let (ttl, path, subject, text) = match purpose {
        EmailTokenPurpose::Verify => (
            VERIFY_TTL_MS,
            // A page for people; `GET /api/auth/verify-email?token=` stays for API clients.
            "/verify-email",
            "Confirm your ClawDeploy email address",
            "Confirm your email address by opening this link (valid 48 hours):",
        ),
        EmailTokenPurpose::Reset => (
            RESET_TTL_MS,
            // A page for people; `GET /api/auth/reset-password?token=` stays for API clients.
            "/reset-password",
            "Reset your ClawDeploy password",
            "Someone (hopefully you) asked to reset your password. Open this link within one hour \
             to choose a new one; it works once. If it was not you, ignore this mail.",
        ),
    };
    let result = async {
        let (token, hash) = secrets::new_token().map_err(|e| e.to_string())?;
        state
            .store
            .create_email_token(user.id, purpose, email, &hash, now_ms() + ttl)
            .await
            .map_err(|e| e.to_string())?;
        let link = format!("{}{path}?token={token}", state.ctx.app_origin());
        let body = format!("Hello,\n\n{text}\n\n{link}\n\n-- ClawDeploy\n");
        state
            .ctx
            .mailer
            .send(&state.store, email, subject, &body)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(user = %user.id, purpose = purpose.as_str(), "mail not sent: {e}");
            false
        }
    }
}

/// The body of `POST /api/auth/register`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterBody {
    email: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
}

/// `POST /api/auth/register`: creates a free, unverified account, mails the verification link and
/// answers 201 with the user and a session's tokens (the account may deploy before it verifies).
pub async fn register(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<RegisterBody>,
) -> Result<(StatusCode, Reply<Tokens>), ApiError> {
    let Json(body) = body?;
    let email = body.email.trim();
    if !crypto::check_email(email) {
        return Err(ApiError::invalid(
            "email",
            "INVALID_EMAIL",
            crypto::email_problem(email),
        ));
    }
    if let Err(why) = crypto::check_password(&body.password, email) {
        return Err(ApiError::invalid(
            "password",
            "WEAK_PASSWORD",
            why.to_string(),
        ));
    }
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 100) {
        return Err(ApiError::invalid(
            "name",
            "INVALID_NAME",
            "must be at most 100 characters",
        ));
    }
    if let Some(tz) = &body.timezone {
        crate::account::check_timezone("timezone", tz)?;
    }
    if state.store.get_user_by_email(email).await?.is_some() {
        return Err(duplicate_email());
    }
    let hash = hash_password(&state, &body.password).await?;
    let user = state
        .store
        .create_user(&NewUser {
            email,
            password_hash: &hash,
            name,
            tier: Tier::Free,
            role: Role::User,
            timezone: body.timezone.as_deref(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => duplicate_email(),
            other => other.into(),
        })?;
    log_event(&state, Some(user.id), "account_created", &client, None).await;
    let (token, refresh) = issue_tokens(&state, &user, &client).await?;
    let sent = send_link(&state, &user, &user.email, EmailTokenPurpose::Verify).await;
    let mut body = auth_response(&user, token, refresh);
    body.verification_email_sent = Some(sent);
    Ok((StatusCode::CREATED, Reply(body)))
}

fn duplicate_email() -> ApiError {
    ApiError::conflict(
        "EMAIL_TAKEN",
        "email: an account with this address already exists; log in or reset the password.",
    )
    .with("field", json!("email"))
}

/// The body of `POST /api/auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
    #[serde(default)]
    mfa_code: Option<String>,
}

fn too_many(wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs().max(1);
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
        format!("Too many failed logins; try again in {secs} seconds or reset your password."),
    );
    err.retry_after = Some(secs);
    err
}

/// `POST /api/auth/login`: the user and a new session's tokens. Failures count per account and
/// per IP (`limits.login_failures_per_*` in `limits.login_window_secs`, then 429 with
/// `Retry-After`); an account with MFA also needs `mfaCode`, a TOTP or recovery code.
pub async fn login(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<LoginBody>,
) -> Result<Reply<Tokens>, ApiError> {
    let Json(body) = body?;
    let email = clawdeploy_store::normalize_email(&body.email);
    let limits = &state.ctx.config.limits;
    let account_key = format!("account:{email}");
    let ip_key = format!("ip:{}", client.ip.as_deref().unwrap_or("-"));
    let throttle = &state.ctx.throttle;
    if let Err(wait) = throttle.check(&[
        (&account_key, limits.login_failures_per_account),
        (&ip_key, limits.login_failures_per_ip),
    ]) {
        let user = state.store.get_user_by_email(&email).await?;
        log_event(&state, user.map(|u| u.id), "login_throttled", &client, None).await;
        return Err(too_many(wait));
    }
    let user = state.store.get_user_by_email(&email).await?;
    let Some(user) = user else {
        // Same work as a real check, so timing does not tell which emails exist.
        let cost = state.ctx.config.secrets.bcrypt_cost;
        let dummy = state
            .ctx
            .dummy_hash
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(move || bcrypt::hash("not a password", cost))
                    .await
                    .map_err(|e| ApiError::internal("hash task", e))?
                    .map_err(|e| ApiError::internal("bcrypt", e))
            })
            .await?
            .clone();
        verify_password(&state, &body.password, &dummy).await?;
        throttle.fail(&[&account_key, &ip_key]);
        return Err(bad_credentials());
    };
    if !verify_password(&state, &body.password, &user.password_hash).await? {
        throttle.fail(&[&account_key, &ip_key]);
        log_event(
            &state,
            Some(user.id),
            "login_failure",
            &client,
            Some("wrong password"),
        )
        .await;
        return Err(bad_credentials());
    }
    if user.mfa_enabled() {
        let Some(code) = body
            .mfa_code
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        else {
            return Err(ApiError::unauthorized(
                "MFA_REQUIRED",
                "mfaCode: this account uses two-factor authentication; send the 6-digit code from your authenticator app (or a recovery code) as mfaCode.",
            )
            .with("field", json!("mfaCode")));
        };
        if !check_mfa(&state, &user, code).await? {
            throttle.fail(&[&account_key, &ip_key]);
            log_event(
                &state,
                Some(user.id),
                "login_failure",
                &client,
                Some("wrong MFA code"),
            )
            .await;
            return Err(ApiError::unauthorized(
                "INVALID_MFA_CODE",
                "mfaCode: the code is wrong or expired; use the current code from your authenticator app.",
            )
            .with("field", json!("mfaCode")));
        }
    }
    throttle.clear(&account_key);
    let (token, refresh) = issue_tokens(&state, &user, &client).await?;
    log_event(&state, Some(user.id), "login_success", &client, None).await;
    Ok(Reply(auth_response(&user, token, refresh)))
}

fn bad_credentials() -> ApiError {
    ApiError::unauthorized("INVALID_CREDENTIALS", "The email or password is wrong.")
}

/// A TOTP code or an unused recovery code.
pub(crate) async fn check_mfa(state: &ApiState, user: &User, code: &str) -> Result<bool, ApiError> {
    let Some(secret) = state.store.mfa_secret(user.id, &state.ctx.keyring).await? else {
        return Ok(false);
    };
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    if crypto::verify_totp(&secret, code, now) {
        return Ok(true);
    }
    if code.len() > 6 {
        return Ok(state
            .store
            .use_mfa_recovery_code(user.id, &code.to_ascii_lowercase())
            .await?);
    }
    Ok(false)
}

/// The body of `POST /api/auth/refresh`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/auth/refresh`: swaps a refresh token for a new access token and a new refresh
/// token, and extends the session to [`REFRESH_TTL_MS`] from now. Presenting an already rotated
/// token ends the session, as the token may have leaked.
pub async fn refresh(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<RefreshBody>,
) -> Result<Reply<Tokens>, ApiError> {
    let Json(body) = body?;
    let old = TokenHash::of(body.refresh_token.trim());
    let (new, new_hash) = secrets::new_token().map_err(|e| ApiError::internal("token", e))?;
    let expires = now_ms() + REFRESH_TTL_MS;
    let rotated = match state
        .store
        .rotate_refresh_token(&old, &new_hash, expires)
        .await
    {
        Ok(rt) => rt,
        Err(StoreError::RefreshTokenReuse {
            user_id,
            session_id,
        }) => {
            state.revoked(&[session_id]).await;
            log_event(&state, Some(user_id), "refresh_token_reuse", &client, None).await;
            return Err(ApiError::unauthorized(
                "REFRESH_TOKEN_REUSED",
                "refreshToken: this refresh token was already used, so the session was ended as a precaution; log in again.",
            ));
        }
        Err(StoreError::TokenUnknown)
        | Err(StoreError::TokenExpired)
        | Err(StoreError::SessionInvalid) => {
            return Err(ApiError::unauthorized(
                "INVALID_REFRESH_TOKEN",
                "refreshToken: unknown, expired or from an ended session; log in again.",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state
        .store
        .touch_session(rotated.session_id, Some(expires))
        .await?;
    let Some(user) = state.store.get_user(rotated.user_id).await? else {
        return Err(ApiError::unauthorized(
            "INVALID_REFRESH_TOKEN",
            "The account no longer exists.",
        ));
    };
    let token = access_token(&state, user.id, rotated.session_id);
    Ok(Reply(auth_response(&user, token, new)))
}

/// `POST /api/auth/logout`: ends the caller's session on every edge node at once and clears the
/// dashboard cookie; 204.
pub async fn logout(
    State(state): State<ApiState>,
    headers: HeaderMap,
    auth: AuthUser,
    client: Client,
) -> Result<(StatusCode, [(header::HeaderName, String); 1]), ApiError> {
    state.store.revoke_session(auth.session.id).await?;
    state.revoked(&[auth.session.id]).await;
    log_event(&state, Some(auth.user.id), "logout", &client, None).await;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_clear_cookie(&headers))],
    ))
}

/// A mailed token: the query of the links in mails, and the body of `POST /api/auth/verify-email`.
#[derive(Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    token: String,
}

fn token_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TokenUnknown => ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TOKEN",
            "token: this link is not valid; ask for a new one.",
        ),
        StoreError::TokenExpired => ApiError::new(
            StatusCode::GONE,
            "TOKEN_EXPIRED",
            "token: this link has expired; ask for a new one.",
        ),
        StoreError::TokenUsed => ApiError::new(
            StatusCode::GONE,
            "TOKEN_USED",
            "token: this link was already used; each link works once.",
        ),
        other => other.into(),
    }
}

/// The answer of a verified email address.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    /// Always `true`.
    pub verified: bool,
    /// The address verified.
    pub email: String,
}

pub(crate) async fn do_verify(
    state: &ApiState,
    token: &str,
    client: &Client,
) -> Result<Reply<Verified>, ApiError> {
    let t = state
        .store
        .consume_email_token(&TokenHash::of(token.trim()), EmailTokenPurpose::Verify)
        .await
        .map_err(token_error)?;
    let Some(user) = state.store.get_user(t.user_id).await? else {
        return Err(ApiError::not_found("The account no longer exists."));
    };
    if user.email != t.email {
        return Err(ApiError::new(
            StatusCode::GONE,
            "TOKEN_EXPIRED",
            "token: the account's email address changed since this link was sent; use the newest link.",
        ));
    }
    state.store.set_email_verified(user.id, true).await?;
    log_event(state, Some(user.id), "email_verified", client, None).await;
    Ok(Reply(Verified {
        verified: true,
        email: user.email,
    }))
}

/// The link in the verification mail.
pub async fn verify_email_link(
    State(state): State<ApiState>,
    client: Client,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ReplyOrPage<Verified>, ApiError> {
    let Query(q) = query?;
    if let Some(page) = crate::pages::link_page(&headers, "/verify-email", &q.token) {
        return Ok(ReplyOrPage::Page(page));
    }
    Ok(ReplyOrPage::Reply(
        do_verify(&state, &q.token, &client).await?,
    ))
}

/// `POST /api/auth/verify-email`: marks the address verified with the mailed token (once, and
/// only while the account still has that address).
pub async fn verify_email(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<TokenQuery>,
) -> Result<Reply<Verified>, ApiError> {
    let Json(b) = body?;
    do_verify(&state, &b.token, &client).await
}

/// `{"verificationEmailSent": bool}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSent {
    /// Whether the mail went out (false: the relay failed; ask again).
    pub verification_email_sent: bool,
}

/// `POST /api/auth/resend-verification`: voids the earlier links and mails a new one; 202, or 409
/// when already verified.
pub async fn resend_verification(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<(StatusCode, Reply<VerificationSent>), ApiError> {
    if auth.user.email_verified() {
        return Err(ApiError::conflict(
            "ALREADY_VERIFIED",
            "This email address is already verified.",
        ));
    }
    state
        .store
        .invalidate_email_tokens(auth.user.id, EmailTokenPurpose::Verify)
        .await?;
    let sent = send_link(
        &state,
        &auth.user,
        &auth.user.email,
        EmailTokenPurpose::Verify,
    )
    .await;
    Ok((
        StatusCode::ACCEPTED,
        Reply(VerificationSent {
            verification_email_sent: sent,
        }),
    ))
}

/// The body of `POST /api/auth/forgot-password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    email: String,
}

/// `POST /api/auth/forgot-password`: mails a reset link (one hour, single use) if the account
/// exists; 202 either way.
pub async fn forgot_password(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<ForgotBody>,
) -> Result<(StatusCode, Reply<Notice>), ApiError> {
    let Json(b) = body?;
    if !crypto::check_email(&b.email) {
        return Err(ApiError::invalid(
            "email",
            "INVALID_EMAIL",
            "not a valid email address, such as you@example.com",
        ));
    }
    if let Some(user) = state.store.get_user_by_email(&b.email).await? {
        state
            .store
            .invalidate_email_tokens(user.id, EmailTokenPurpose::Reset)
            .await?;
        send_link(&state, &user, &user.email, EmailTokenPurpose::Reset).await;
        log_event(
            &state,
            Some(user.id),
            "password_reset_requested",
            &client,
            None,
        )
        .await;
    }
    // The same answer either way, so this cannot be used to find accounts.
    Ok((
        StatusCode::ACCEPTED,
        Reply(Notice {
            message: "If an account exists for this address, a reset link valid for one hour is on its way.",
        }),
    ))
}

/// `{"message": ...}`: what happened, for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct Notice {
    /// What happened.
    pub message: &'static str,
}

/// What the link in the reset mail answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetLink {
    /// Always `true` (an unusable link is an error).
    pub valid: bool,
    /// The account's address.
    pub email: String,
    /// When the link stops working (RFC 3339).
    pub expires_at: String,
    /// What to do next.
    pub next: &'static str,
}

/// The link in the reset mail: says whether the token can still be used (without using it).
pub async fn reset_password_link(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ReplyOrPage<ResetLink>, ApiError> {
    let Query(q) = query?;
    if let Some(page) = crate::pages::link_page(&headers, "/reset-password", &q.token) {
        return Ok(ReplyOrPage::Page(page));
    }
    let t = state
        .store
        .peek_email_token(&TokenHash::of(q.token.trim()), EmailTokenPurpose::Reset)
        .await?
        .ok_or(StoreError::TokenUnknown)
        .map_err(token_error)?;
    if t.used_at.is_some() {
        return Err(token_error(StoreError::TokenUsed));
    }
    if t.expires_at <= now_ms() {
        return Err(token_error(StoreError::TokenExpired));
    }
    Ok(ReplyOrPage::Reply(Reply(ResetLink {
        valid: true,
        email: t.email,
        expires_at: rfc3339(t.expires_at),
        next: "POST this path with {\"token\": ..., \"password\": ...} to set the new password",
    })))
}

/// The body of `POST /api/auth/reset-password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    token: String,
    password: String,
}

/// `POST /api/auth/reset-password`: sets the new password with the mailed token and ends every
/// session; the mail having arrived, the address counts as verified if the account still has it.
pub async fn reset_password(
    State(state): State<ApiState>,
    client: Client,
    body: JsonBody<ResetBody>,
) -> Result<Reply<PasswordChanged>, ApiError> {
    let Json(b) = body?;
    let hash = TokenHash::of(b.token.trim());
    let peek = state
        .store
        .peek_email_token(&hash, EmailTokenPurpose::Reset)
        .await?
        .ok_or_else(|| token_error(StoreError::TokenUnknown))?;
    if let Err(why) = crypto::check_password(&b.password, &peek.email) {
        return Err(ApiError::invalid(
            "password",
            "WEAK_PASSWORD",
            why.to_string(),
        ));
    }
    let t = state
        .store
        .consume_email_token(&hash, EmailTokenPurpose::Reset)
        .await
        .map_err(token_error)?;
    let new_hash = hash_password(&state, &b.password).await?;
    state
        .store
        .update_password_hash(t.user_id, &new_hash)
        .await?;
    let revoked = state.store.revoke_all_sessions(t.user_id, None).await?;
    state.revoked(&revoked).await;
    if let Some(user) = state.store.get_user(t.user_id).await? {
        if user.email == t.email && !user.email_verified() {
            state.store.set_email_verified(user.id, true).await?;
        }
    }
    state.ctx.throttle.clear(&format!("account:{}", t.email));
    log_event(
        &state,
        Some(t.user_id),
        "password_reset",
        &client,
        Some(&format!("{} sessions revoked", revoked.len())),
    )
    .await;
    Ok(Reply(PasswordChanged {
        message: "Password changed; every session was logged out. Log in with the new password.",
        sessions_revoked: revoked.len(),
    }))
}

/// A changed password (reset or changed by its owner).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChanged {
    /// What happened to the sessions.
    pub message: &'static str,
    /// How many sessions were ended.
    pub sessions_revoked: usize,
}

/// Step 1 of MFA: what to put in the authenticator app.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaSetup {
    /// The TOTP secret, base32.
    pub secret: String,
    /// The `otpauth://` URL of a QR code.
    pub otpauth_url: String,
    /// That URL as a QR code, an SVG document, for an authenticator app to scan.
    pub qr_svg: String,
    /// What to do next.
    pub next: &'static str,
}

/// Step 1 of MFA: a fresh secret for the authenticator app (nothing stored yet).
pub async fn mfa_setup(auth: AuthUser) -> Result<Reply<MfaSetup>, ApiError> {
    if auth.user.mfa_enabled() {
        return Err(ApiError::conflict(
            "MFA_ALREADY_ENABLED",
            "Two-factor authentication is already on; disable it first to set up a new device.",
        ));
    }
    let secret = crypto::new_totp_secret().map_err(|e| ApiError::internal("random", e))?;
    let issuer = "ClawDeploy";
    // Key Uri Format: the label (issuer:account) is percent-encoded; the secret is base32.
    let uri = format!(
        "otpauth://totp/{issuer}:{}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits=6&period=30",
        percent_encode(&auth.user.email)
    );
    let qr_svg = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| ApiError::internal("the 2FA QR code", e))?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(Reply(MfaSetup {
        secret,
        otpauth_url: uri,
        qr_svg,
        next: "POST /api/auth/mfa/enable with {\"secret\": ..., \"code\": ...} using a code from the app",
    }))
}

/// The body of `POST /api/auth/mfa/enable`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaEnableBody {
    secret: String,
    code: String,
}

/// `POST /api/auth/mfa/enable`, step 2 of MFA: stores the secret from [`mfa_setup`] once a code
/// from it matches, and answers with ten recovery codes, shown this once.
pub async fn mfa_enable(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<MfaEnableBody>,
) -> Result<Reply<MfaEnabled>, ApiError> {
    let Json(b) = body?;
    let secret = b.secret.trim().to_ascii_uppercase();
    if data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .map_or(true, |s| s.len() < 16)
    {
        return Err(ApiError::invalid(
            "secret",
            "INVALID_SECRET",
            "use the secret returned by POST /api/auth/mfa/setup",
        ));
    }
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    if !crypto::verify_totp(&secret, &b.code, now) {
        return Err(ApiError::invalid(
            "code",
            "INVALID_MFA_CODE",
            "the code does not match; enter the current 6-digit code from your authenticator app",
        ));
    }
    let codes = crypto::new_recovery_codes().map_err(|e| ApiError::internal("random", e))?;
    state
        .store
        .enable_mfa(auth.user.id, &secret, &codes, &state.ctx.keyring)
        .await?;
    log_event(&state, Some(auth.user.id), "mfa_enabled", &client, None).await;
    Ok(Reply(MfaEnabled {
        mfa_enabled: true,
        recovery_codes: codes,
        message: "Keep these recovery codes somewhere safe: each one works once if you lose your device. They are not shown again.",
    }))
}

/// MFA turned on, with the recovery codes shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaEnabled {
    /// Always `true`.
    pub mfa_enabled: bool,
    /// Ten one-time recovery codes.
    pub recovery_codes: Vec<String>,
    /// To keep them safe.
    pub message: &'static str,
}

/// MFA turned off.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaDisabled {
    /// Always `false`.
    pub mfa_enabled: bool,
}

/// The body of `POST /api/auth/mfa/disable`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaDisableBody {
    password: String,
    code: String,
}

/// `POST /api/auth/mfa/disable`: turns TOTP off; needs the password and a current TOTP or
/// recovery code.
pub async fn mfa_disable(
    State(state): State<ApiState>,
    auth: AuthUser,
    client: Client,
    body: JsonBody<MfaDisableBody>,
) -> Result<Reply<MfaDisabled>, ApiError> {
    let Json(b) = body?;
    if !auth.user.mfa_enabled() {
        return Err(ApiError::conflict(
            "MFA_NOT_ENABLED",
            "Two-factor authentication is off.",
        ));
    }
    if !verify_password(&state, &b.password, &auth.user.password_hash).await? {
        return Err(ApiError::invalid(
            "password",
            "INVALID_CREDENTIALS",
            "the password is wrong",
        ));
    }
    if !check_mfa(&state, &auth.user, b.code.trim()).await? {
        return Err(ApiError::invalid(
            "code",
            "INVALID_MFA_CODE",
            "the code is wrong or expired",
        ));
    }
    state.store.disable_mfa(auth.user.id).await?;
    log_event(&state, Some(auth.user.id), "mfa_disabled", &client, None).await;
    Ok(Reply(MfaDisabled { mfa_enabled: false }))
}

#[cfg(test)]
mod cookie_tests {
    use super::*;

    fn headers(proto: &str, cookies: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", proto.parse().unwrap());
        h.insert(header::COOKIE, cookies.parse().unwrap());
        h
    }

    #[test]
    fn over_https_only_the_host_prefixed_cookie_counts() {
        let h = headers("https", "cd_session=planted; __Host-cd_session=mine");
        assert_eq!(session_cookie(&h), Some("mine"));
        assert_eq!(
            session_cookie(&headers("https", "cd_session=planted")),
            None
        );
        assert!(session_set_cookie("t", &h).starts_with("__Host-cd_session=t; Path=/;"));
        assert!(session_set_cookie("t", &h).ends_with("; Secure"));
        assert_eq!(
            session_cookie(&headers("http", "cd_session=dev")),
            Some("dev")
        );
    }

    #[test]
    fn two_session_cookies_of_one_name_sign_nobody_in() {
        let h = headers("http", "cd_session=planted; other=1; cd_session=mine");
        assert_eq!(session_cookie(&h), None);
        let h = headers("https", "__Host-cd_session=a; __Host-cd_session=b");
        assert_eq!(session_cookie(&h), None);
    }
}
