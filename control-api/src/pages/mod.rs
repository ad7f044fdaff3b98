//! The dashboard: server-rendered HTML pages on the app domain, plus one stylesheet and one
//! script compiled into the binary (no build step). Pages read through the same store and
//! handler functions as the JSON API; forms and the chat call the JSON API from `app.js` with the
//! HttpOnly session cookie (`POST /api/auth/browser-session` sets it). No inline scripts or
//! styles, so a strict Content-Security-Policy fits. Pages are `maud` templates: whatever they
//! splice is escaped at compile time.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use clawdeploy_proxy::browser_session::percent_encode;
use clawdeploy_store::time::{now_ms, rfc3339};
use clawdeploy_store::{Instance, InstanceStatus, Role, Tier};

use crate::auth::{self, AuthUser};
use crate::ApiState;

mod render;

use render::Page;

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// The page routes (merged into the API router; not part of the OpenAPI document, which
/// describes the JSON API).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(landing))
        .route("/signup", get(signup))
        .route("/login", get(login))
        .route("/forgot-password", get(forgot_password))
        .route("/reset-password", get(reset_password))
        .route("/verify-email", get(verify_email))
        .route("/login/continue", get(login_continue))
        .route("/dashboard", get(dashboard))
        .route("/settings", get(settings))
        .route("/security", get(security))
        .route("/domains", get(domains))
        .route("/channels", get(channels))
        .route("/skills", get(skills))
        .route("/operator", get(operator))
        .route("/billing", get(billing))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
}

/// The user behind the session cookie, if it is valid.
async fn signed_in(state: &ApiState, headers: &HeaderMap) -> Option<AuthUser> {
    let token = auth::session_cookie(headers)?;
    auth::authenticate(state, token).await.ok()
}

/// A page that needs a login sends the browser to `/login?next=<this page>`.
fn to_login(uri: &Uri) -> Response {
    let next = uri.path_and_query().map_or("/dashboard", |p| p.as_str());
    Redirect::to(&format!("/login?next={}", percent_encode(next))).into_response()
}

async fn landing(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let user = signed_in(&state, &headers).await;
    let free = match tier_limits(&state, Tier::Free).0 {
        Some(n) => format!("{n} messages a month"),
        None => "unlimited messages".to_string(),
    };
    let body = html! {
        section .hero {
            h1 { "OpenClaw in one click" }
            p .lead {
                "Your own OpenClaw assistant, hosted and kept running for you at "
                strong { "you." (state.routes.base_domain()) }
                ". No servers, no Docker, no setup."
            }
            p {
                @if user.is_some() {
                    a .button.primary.big href="/dashboard" { "Open your dashboard" }
                } @else {
                    a .button.primary.big href="/signup" #deploy-free { "Deploy Free" }
                }
            }
            p .muted { "Free: " (free) " with your own AI provider key. No card needed." }
        }
        section .features aria-label="What you get" {
            div .card { h2 { "Ready in seconds" } p { "A warm instance is handed to you the moment you sign up." } }
            div .card { h2 { "Only yours" } p { "Your instance answers only you; your provider keys are stored encrypted and never enter the container." } }
            div .card { h2 { "Chat anywhere" } p { "Chat from this dashboard or OpenClaw's own Control UI at your address." } }
        }
    };
    Page::new("ClawDeploy: OpenClaw in one click", "landing")
        .user(user.as_ref().map(|u| &u.user))
        .html(body)
}

/// The address field of the signup and create forms: a label, the subdomain input with the base
/// domain as its suffix, the live availability status and the field's error.
fn subdomain_field(label: &str, base: &str, pattern: Option<&str>, value: Option<&str>) -> Markup {
    html! {
        div .field {
            label for="subdomain" { (label) }
            div .suffixed {
                input #subdomain name="subdomain" type="text" value=[value] data-current=[value] autocomplete="off" autocapitalize="none" spellcheck="false" required pattern=[pattern] data-field="subdomain" aria-describedby="subdomain-status subdomain-error";
                span .suffix { "." (base) }
            }
            p .hint #subdomain-status role="status" aria-live="polite" {}
            p .field-error #subdomain-error {}
        }
    }
}

async fn signup(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to("/dashboard").into_response();
    }
    let body = html! {
        section .card.narrow {
            h1 { "Deploy your OpenClaw" }
            p .muted { "Already have an account? " a href="/login" { "Log in" } "." }
            form #signup-form method="post" novalidate {
                div .field {
                    label for="email" { "Email" }
                    input #email name="email" type="email" autocomplete="email" required data-field="email" aria-describedby="email-error";
                    p .field-error #email-error {}
                }
                div .field {
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="new-password" required minlength="10" data-field="password" aria-describedby="password-hint password-error";
                    p .hint #password-hint { "At least 10 characters; a passphrase works well." }
                    p .field-error #password-error {}
                }
                div .field {
                    label for="provider" { "AI provider" }
                    select #provider name="provider" {
                        option value="openai" { "OpenAI" }
                        option value="anthropic" { "Anthropic" }
                        option value="google" { "Google" }
                    }
                }
                div .field {
                    label for="api-key" { "Provider API key" }
                    input #api-key name="apiKey" type="password" autocomplete="off" required data-field="apiKeys" aria-describedby="api-key-hint api-key-error";
                    p .hint #api-key-hint { "Stored encrypted; your instance never sees it." }
                    p .field-error #api-key-error {}
                }
                (subdomain_field("Your address", state.routes.base_domain(), Some("[a-z0-9-]{3,63}"), None))
                div .field {
                    label for="preset" { "Your assistant" }
                    select #preset name="preset" aria-describedby="preset-hint" {
                        @for p in clawdeploy_skills::presets() {
                            option value=(p.id) { (p.name) " — " (p.summary) }
                        }
                    }
                    p .hint #preset-hint { "A starting personality and skills; change it any time on the Skills page." }
                }
                p .form-error #form-error role="alert" {}
                button type="submit" .button.primary.big #deploy { "Deploy" }
                p .hint #form-progress role="status" aria-live="polite" {}
            }
        }
    };
    Page::new("Sign up · ClawDeploy", "signup").html(body)
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: Option<String>,
    /// `done` after a password reset: the login page says so.
    #[serde(default)]
    reset: Option<String>,
}

async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = q.next.unwrap_or_default();
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to(&format!("/login/continue?next={}", percent_encode(&next)))
            .into_response();
    }
    let body = html! {
        section .card.narrow {
            h1 { "Log in" }
            @if q.reset.as_deref() == Some("done") {
                p .notice #reset-done role="status" { "Your password is changed and every session was logged out. Log in with the new password." }
            }
            p .muted { "New here? " a href="/signup" { "Deploy free" } "." }
            form #login-form method="post" data-next=(next) novalidate {
                div .field {
                    label for="email" { "Email" }
                    input #email name="email" type="email" autocomplete="username" required data-field="email";
                }
                div .field {
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required data-field="password";
                }
                div .field #mfa-field hidden {
                    label for="mfa-code" { "Authentication code" }
                    input #mfa-code name="mfaCode" type="text" inputmode="numeric" autocomplete="one-time-code" data-field="mfaCode" aria-describedby="mfa-hint";
                    p .hint #mfa-hint { "The 6-digit code from your authenticator app, or a recovery code." }
                }
                p .form-error #form-error role="alert" {}
                button type="submit" .button.primary #login-submit { "Log in" }
            }
            p .muted { a #forgot-link href="/forgot-password" { "Forgot your password?" } }
        }
    };
    Page::new("Log in · ClawDeploy", "login").html(body)
}

/// Where the verification mail's link lands: confirms the address (the link works once) and
/// says so, or says why the link does not work and what to do.
async fn verify_email(
    State(state): State<ApiState>,
    client: crate::auth::Client,
    headers: HeaderMap,
    Query(q): Query<ResetQuery>,
) -> Response {
    let user = signed_in(&state, &headers).await.map(|a| a.user);
    let (status, title, message) = match crate::auth::do_verify(&state, &q.token, &client).await {
        Ok(done) => (
            StatusCode::OK,
            "Your email address is confirmed",
            format!("Thank you: {} is confirmed. You can upgrade your plan and your instance keeps running.", done.0.email),
        ),
        Err(e) => match e.code {
            "TOKEN_USED" => (
                StatusCode::GONE,
                "This link was already used",
                "Each confirmation link works once, and this one has confirmed the address already. Nothing more to do.".to_string(),
            ),
            "TOKEN_EXPIRED" => (
                StatusCode::GONE,
                "This link has expired",
                "Confirmation links work for 48 hours, and only for the address they were sent to. Log in and send a new one from your dashboard.".to_string(),
            ),
            "INVALID_TOKEN" => (
                StatusCode::NOT_FOUND,
                "This link does not work",
                "This confirmation link is not one we sent, or it was copied only in part. Log in and send a new one from your dashboard.".to_string(),
            ),
            _ => {
                e.log_cause();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again in a moment",
                    "Your address could not be confirmed just now; open the link again in a minute.".to_string(),
                )
            }
        },
    };
    let body = html! {
        section .card.narrow {
            h1 { (title) }
            p #verify-result { (message) }
            p { a .button.primary href="/dashboard" { "Go to your dashboard" } }
        }
    };
    let mut response = Page::new(&format!("{title} · ClawDeploy"), "verify")
        .user(user.as_ref())
        .html(body);
    *response.status_mut() = status;
    response
}

/// Asks for a password reset link by mail (the same answer whether or not the account exists).
async fn forgot_password() -> Response {
    let body = html! {
        section .card.narrow {
            h1 { "Reset your password" }
            p { "Enter your account's email address. We send it a link to choose a new password; the link works once, within one hour." }
            form #forgot-form method="post" novalidate {
                div .field {
                    label for="email" { "Email" }
                    input #email name="email" type="email" autocomplete="username" required data-field="email" aria-describedby="email-error";
                    p .field-error #email-error {}
                }
                p .form-error #form-error role="alert" {}
                button type="submit" .button.primary #forgot-submit { "Send the link" }
            }
            p #forgot-status role="status" {}
            p .muted { a href="/login" { "Back to log in" } }
        }
    };
    Page::new("Reset your password · ClawDeploy", "forgot").html(body)
}

#[derive(Deserialize)]
struct ResetQuery {
    #[serde(default)]
    token: String,
}

/// Where the reset mail's link lands: a form for the new password, or, for a link that is
/// unknown, used or expired, what happened and a way to ask for a new one.
async fn reset_password(State(state): State<ApiState>, Query(q): Query<ResetQuery>) -> Response {
    use clawdeploy_store::{secrets::TokenHash, EmailTokenPurpose};
    let token = q.token.trim();
    let found = if token.is_empty() {
        Ok(None)
    } else {
        state
            .store
            .peek_email_token(&TokenHash::of(token), EmailTokenPurpose::Reset)
            .await
    };
    let unusable = |status: StatusCode, title: &str, why: &str| {
        let body = html! {
            section .card.narrow {
                h1 { (title) }
                p #reset-problem { (why) }
                p { a .button.primary href="/forgot-password" { "Ask for a new link" } " " a .button href="/login" { "Log in" } }
            }
        };
        let mut response = Page::new(&format!("{title} · ClawDeploy"), "reset").html(body);
        *response.status_mut() = status;
        response
    };
    let link = match found {
        Ok(Some(t)) => t,
        Ok(None) => return unusable(
            StatusCode::NOT_FOUND,
            "This link does not work",
            "This reset link is not one we sent, or it was copied only in part. Ask for a new one.",
        ),
        Err(e) => {
            tracing::error!("reading a reset link: {e}");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again in a moment",
                "Your reset link could not be checked just now; open it again in a minute.",
                None,
            );
        }
    };
    if link.used_at.is_some() {
        return unusable(
            StatusCode::GONE,
            "This link was already used",
            "Each reset link works once, and this one has set a password already. If that was not you, ask for a new link now.",
        );
    }
    if link.expires_at <= clawdeploy_store::time::now_ms() {
        return unusable(
            StatusCode::GONE,
            "This link has expired",
            "Reset links work for one hour. Ask for a new one; it arrives within a minute.",
        );
    }
    let body = html! {
        section .card.narrow {
            h1 { "Choose a new password" }
            p { "For " strong { (link.email) } ". Every session of this account is logged out when it changes." }
            form #reset-form method="post" data-token=(token) novalidate {
                div .field {
                    label for="password" { "New password" }
                    input #password name="password" type="password" autocomplete="new-password" required minlength="10" data-field="password" aria-describedby="password-hint password-error";
                    p .hint #password-hint { "At least 10 characters, letters and something else; a passphrase works well." }
                    p .field-error #password-error {}
                }
                p .form-error #form-error role="alert" {}
                button type="submit" .button.primary #reset-submit { "Set the new password" }
            }
        }
    };
    Page::new("Choose a new password · ClawDeploy", "reset").html(body)
}
/// After login: a path on this host is followed; an absolute URL to an instance host goes
/// through the instance host's one-time sign-in (browser sessions for instance hosts); anything
/// else goes to the dashboard (never an open redirect).
async fn login_continue(
    State(state): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<NextQuery>,
) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let next = q.next.unwrap_or_default();
    if is_local_path(&next) {
        return Redirect::to(&next).into_response();
    }
    if let Some((host, owner)) = instance_target(&state, &next) {
        if owner.as_deref() != Some(auth.user.id.to_string().as_str()) {
            return error_page(
                StatusCode::FORBIDDEN,
                "This assistant belongs to another account",
                &format!(
                    "You are logged in as {}, and {host} is not one of your assistants. Open yours \
                     from your dashboard, or log out and log in with the account it belongs to.",
                    auth.user.email
                ),
                Some(&auth.user),
            );
        }
        // The instance host's own sign-in: a one-time code for that host, exchanged there for the
        // host's session cookie (`GET /api/session/handoff` checks the caller owns it).
        return Redirect::to(&format!(
            "/api/session/handoff?next={}",
            percent_encode(&next)
        ))
        .into_response();
    }
    Redirect::to("/dashboard").into_response()
}

/// A path on this host and nothing else: no `//host` or `/\host`, and only visible ASCII, since
/// browsers drop tabs and newlines from URLs (`/\t/evil.example` would become `//evil.example`).
fn is_local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic())
}

/// The host of an absolute `http(s)://` URL when it is routed to an instance (a subdomain or a
/// custom domain), and the instance owner's id.
fn instance_target(state: &ApiState, next: &str) -> Option<(String, Option<std::sync::Arc<str>>)> {
    let rest = next
        .strip_prefix("https://")
        .or_else(|| next.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = clawdeploy_config::normalize_host(authority)?;
    match state.routes.resolve(&host) {
        clawdeploy_proxy::Resolution::Route(route)
            if route.kind == clawdeploy_proxy::RouteKind::Instance =>
        {
            Some((host, route.owner_id))
        }
        _ => None,
    }
}

/// Monthly limits of a tier from the config's tier table: (messages, LLM tokens); `None` is
/// unlimited.
fn tier_limits(state: &ApiState, tier: Tier) -> (Option<i64>, Option<i64>) {
    let t = state.ctx.config.tiers.get(tier);
    let limit = |v: u64| (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
    (limit(t.messages_per_month), limit(t.tokens_per_month))
}

fn status_text(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Queued => "Waiting for capacity: your instance starts as soon as room frees on this node.",
        InstanceStatus::Provisioning => "Preparing your instance…",
        InstanceStatus::Starting => "Starting OpenClaw…",
        InstanceStatus::Running => "Running",
        InstanceStatus::Sleeping => "Asleep after being idle: it wakes in a moment when you chat or open it.",
        InstanceStatus::Stopped => "Stopped. Restart it from Settings to chat again.",
        InstanceStatus::Crashed => "Crashed. Restart it from Settings; if it keeps crashing, check the security log and your SOUL.md.",
        InstanceStatus::Deleting => "Cancelled: kept stopped for the grace period. Restore it from Settings.",
    }
}

fn duration_text(ms: i64) -> String {
    let mins = (ms / 60_000).max(0);
    match mins {
        0 => "less than a minute".into(),
        m if m < 60 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} days", m / (24 * 60)),
    }
}

fn meter(id: &str, label: &str, used: i64, limit: Option<i64>) -> Markup {
    html! {
        div .usage {
            @match limit {
                Some(limit) => {
                    label for=(id) { (label) ": " (used) " of " (limit) }
                    meter id=(id) min="0" max=(limit) low=(limit * 7 / 10) high=(limit * 9 / 10) optimum="0" value=(used) { (used) " of " (limit) }
                }
                None => p { (label) ": " (used) " (unlimited)" },
            }
        }
    }
}

async fn my_instance(state: &ApiState, auth: &AuthUser) -> Option<Instance> {
    crate::instances::my_instance(state, auth).await.ok()
}

async fn dashboard(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let Some(inst) = my_instance(&state, &auth).await else {
        let body = html! {
            h1 { "Dashboard" }
            section .card.narrow aria-labelledby="create-h" {
                h2 #create-h { "Create your instance" }
                form #create-form method="post" novalidate {
                    (subdomain_field("Your address", state.routes.base_domain(), None, None))
                    p .form-error #form-error role="alert" {}
                    button type="submit" .button.primary { "Deploy" }
                }
            }
        };
        return Page::new("Dashboard · ClawDeploy", "dashboard")
            .user(Some(&auth.user))
            .html(body);
    };
    let usage = state.store.usage_this_month(inst.id).await.ok();
    let grace = grace_banner(&state, &auth.user).await;
    let no_provider = !has_provider(&state, &auth.user).await;
    let (msg_limit, tok_limit) = tier_limits(&state, inst.tier);
    let (messages, tokens) = usage.map_or((0, 0), |u| (u.messages, u.tokens));
    let view = crate::instances::InstanceView::new(&state, &inst);
    let url = view.url.as_str();
    // A sleeping instance is woken by the edge when the chat or its host is opened.
    let running = matches!(
        inst.status,
        InstanceStatus::Running | InstanceStatus::Sleeping
    );
    let step = match inst.status {
        InstanceStatus::Queued => 1,
        InstanceStatus::Provisioning => 2,
        InstanceStatus::Starting => 3,
        InstanceStatus::Running | InstanceStatus::Sleeping => 4,
        _ => 0,
    };
    let status = inst.status.as_str();
    // Signed in to the instance host straight away (its one-time code handoff), without a second
    // login there.
    let open = format!(
        "/login/continue?next={}",
        percent_encode(&format!("{url}/"))
    );
    let body = html! {
        h1 { "Dashboard" }
        @if let Some(banner) = grace { (banner) }
        @if no_provider {
            p .notice #no-provider role="alert" {
                "Your assistant has no AI provider yet, so it cannot answer: add your API key in "
                a href="/settings#keys-h" { "Settings → AI providers" }
                @if state.ctx.config.billing.enabled() && ["openai", "anthropic", "google"].iter().any(|p| state.ctx.config.billing.platform_key(p).is_some()) {
                    ", or buy AI credits on the " a href="/billing" { "billing page" }
                }
                "."
            }
        }
        @if !auth.user.email_verified() {
            p .notice role="note" {
                "Confirm your email address: we sent a link to " (auth.user.email)
                ". Unconfirmed accounts are stopped after "
                (state.ctx.config.limits.unverified_grace_days) " days."
            }
        }
        div .grid #instance data-status=(status) data-subdomain=(inst.subdomain) {
            section .card aria-labelledby="status-h" {
                h2 #status-h { "Your instance" }
                p { a href=(open) target="_blank" rel="noopener" { (inst.subdomain) "." (state.routes.base_domain()) } }
                p { "Status: " strong #status-text class={ "status status-" (status) } { (status_text(inst.status)) } }
                @if running {
                    p {
                        "Running since " span #uptime { (when(inst.updated_at)) }
                        " (" (duration_text(now_ms() - inst.updated_at)) " ago; last started or reconfigured)."
                    }
                }
                div #progress hidden[running || step == 0] {
                    label for="progress-bar" { "Getting your instance ready" }
                    progress #progress-bar max="4" value=(step) { (step) " of 4" }
                    ol .steps {
                        li data-step="1" { "Reserved" }
                        li data-step="2" { "Prepared" }
                        li data-step="3" { "Starting OpenClaw" }
                        li data-step="4" { "Ready to chat" }
                    }
                }
                p { a .button href=(open) target="_blank" rel="noopener" #control-ui { "Open OpenClaw's Control UI" } }
            }
            section .card aria-labelledby="usage-h" {
                h2 #usage-h { "Usage this month" }
                (meter("usage-messages", "Messages", messages, msg_limit))
                (meter("usage-tokens", "AI tokens", tokens, tok_limit))
                p .muted {
                    "Plan: " (inst.tier) " (" a href="/billing" { "plans and limits" }
                    "). Messages reset on the first of the month (UTC)."
                }
            }
            section .card.wide.chat aria-labelledby="chat-h" {
                h2 #chat-h { "Chat" }
                p #chat-status .chat-status role="status" aria-live="polite" {
                    @if running { "Connecting…" } @else { "The chat connects when your instance is running." }
                }
                ol #chat-log .chat-log aria-label="Conversation" aria-live="polite" {}
                form #chat-form method="post" .chat-form {
                    label for="chat-input" { "Message" }
                    textarea #chat-input name="message" rows="2" required {}
                    button type="submit" .button.primary #chat-send disabled { "Send" }
                }
            }
            section .card aria-labelledby="skills-h" {
                h2 #skills-h { "Skills" }
                div #skills { p .muted { "Shown once the chat is connected." } }
                p { a href="/skills" { "Install and manage skills" } }
            }
            section .card aria-labelledby="sessions-h" {
                h2 #sessions-h { "Sessions and sub-agents" }
                div #sessions { p .muted { "Shown once the chat is connected." } }
                form #agent-form novalidate {
                    div .field {
                        label for="agent-task" { "Give a sub-agent a task" }
                        input #agent-task name="task" type="text" autocomplete="off" data-field="task" aria-describedby="agent-task-error" placeholder="Research flights to Lisbon in May";
                        p .field-error #agent-task-error {}
                    }
                    div .field {
                        label for="agent-label" { "Name (optional)" }
                        input #agent-label name="label" type="text" autocomplete="off" data-field="label" aria-describedby="agent-label-error";
                        p .field-error #agent-label-error {}
                    }
                    p .form-error #agent-error role="alert" {}
                    button type="submit" .button.small { "Start sub-agent" }
                }
            }
        }
    };
    Page::new("Dashboard · ClawDeploy", "dashboard")
        .user(Some(&auth.user))
        .html(body)
}

const TIMEZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
];

async fn settings(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let user = &auth.user;
    let inst = my_instance(&state, &auth).await;
    let keys = state.store.list_api_keys(user.id).await.unwrap_or_default();
    let body = html! {
        h1 { "Settings" }
        div .grid {
            @match &inst {
                Some(inst) => {
                    section .card aria-labelledby="instance-h" {
                        h2 #instance-h { "Instance" }
                        form #subdomain-form method="post" novalidate {
                            (subdomain_field("Address", state.routes.base_domain(), None, Some(&inst.subdomain)))
                            button type="submit" .button { "Change address" }
                        }
                        p { "Status: " strong #instance-status { (status_word(inst.status)) } }
                        p .form-error #instance-error role="alert" {}
                        p .hint #instance-result role="status" aria-live="polite" {}
                        p { button type="button" .button #restart { "Restart instance" } }
                    }
                    section .card.wide aria-labelledby="soul-h" {
                        h2 #soul-h { "SOUL.md" }
                        form #soul-form method="post" {
                            label for="soul" { "Your assistant's personality and standing instructions (Markdown, up to 64 KiB)" }
                            textarea #soul name="soulMd" rows="10" data-field="soulMd" { (inst.soul_md.as_deref().unwrap_or_default()) }
                            p .form-error #soul-error role="alert" {}
                            p .hint #soul-result role="status" aria-live="polite" {}
                            button type="submit" .button.primary #soul-save { "Save SOUL.md" }
                        }
                    }
                }
                None => section .card {
                    h2 { "Instance" }
                    p { "You have no instance yet: " a href="/dashboard" { "create it on the dashboard" } "." }
                },
            }
            section .card aria-labelledby="prefs-h" {
                h2 #prefs-h { "Preferences" }
                form #prefs-form method="post" {
                    div .field {
                        label for="timezone" { "Time zone" }
                        input #timezone name="timezone" type="text" list="timezones" value=(user.timezone) autocomplete="off" required data-field="timezone";
                        datalist #timezones {
                            @for tz in TIMEZONES { option value=(tz) {} }
                        }
                    }
                    div .field {
                        label for="language" { "Language" }
                        select #language name="language" data-field="language" aria-describedby="language-hint" {
                            @for (code, name) in crate::account::LANGUAGES {
                                option value=(code) lang=(code) selected[code == user.language] { (name) }
                            }
                        }
                        p .hint #language-hint { "Saved for when the dashboard and your assistant's defaults are translated; pages are in English for now." }
                    }
                    p .form-error #prefs-error role="alert" {}
                    p .hint #prefs-result role="status" aria-live="polite" {}
                    button type="submit" .button.primary { "Save preferences" }
                }
            }
            section .card aria-labelledby="keys-h" {
                h2 #keys-h { "AI providers" }
                table .table {
                    caption .visually-hidden { "Your provider keys" }
                    thead { tr { th scope="col" { "Provider" } th scope="col" { "Key" } th scope="col" { span .visually-hidden { "Actions" } } } }
                    tbody {
                        @if keys.is_empty() {
                            tr { td colspan="3" { "No provider keys yet." } }
                        }
                        @for k in &keys {
                            tr {
                                th scope="row" { (k.provider) }
                                td {
                                    code { (k.masked) }
                                    @if let Some(base_url) = &k.base_url { " " span .muted { (base_url) } }
                                }
                                td { button type="button" .button.danger.small data-delete-key=(k.provider) { "Remove " span .visually-hidden { "the " (k.provider) " key" } } }
                            }
                        }
                    }
                }
                form #key-form method="post" {
                    div .field {
                        label for="key-provider" { "Provider" }
                        select #key-provider name="provider" {
                            option value="openai" { "OpenAI" }
                            option value="anthropic" { "Anthropic" }
                            option value="google" { "Google" }
                            option value="custom" { "Custom (OpenAI-compatible)" }
                        }
                    }
                    div .field { label for="key-value" { "API key" } input #key-value name="key" type="password" autocomplete="off" required data-field="key"; }
                    div .field { label for="key-base-url" { "Base URL (custom provider only)" } input #key-base-url name="baseUrl" type="url" autocomplete="off" data-field="baseUrl"; }
                    p .form-error #key-error role="alert" {}
                    button type="submit" .button.primary { "Save key" }
                }
            }
            section .card aria-labelledby="mfa-h" {
                h2 #mfa-h { "Two-factor authentication" }
                @if user.mfa_enabled() {
                    p { "Two-factor authentication is " strong { "on" } "." }
                    form #mfa-disable-form method="post" {
                        div .field { label for="mfa-disable-password" { "Password" } input #mfa-disable-password name="password" type="password" autocomplete="current-password" required data-field="password"; }
                        div .field { label for="mfa-disable-code" { "Current code" } input #mfa-disable-code name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required data-field="code"; }
                        p .form-error #mfa-error role="alert" {}
                        button type="submit" .button.danger { "Turn off two-factor authentication" }
                    }
                } @else {
                    p #mfa-state { "Two-factor authentication is " strong { "off" } "." }
                    button type="button" .button #mfa-setup { "Set up an authenticator app" }
                    div #mfa-enroll hidden {
                        p { "Scan this code with your authenticator app, then enter the code it shows. On a phone, open the link instead; or type the secret." }
                        div #mfa-qr .qr role="img" aria-label="QR code of your authenticator secret" {}
                        p { "Secret: " code #mfa-secret {} }
                        p { a #mfa-uri { "Open in an authenticator app" } }
                        form #mfa-enable-form method="post" {
                            div .field { label for="mfa-enable-code" { "Code from the app" } input #mfa-enable-code name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required data-field="code"; }
                            button type="submit" .button.primary { "Turn on" }
                        }
                    }
                    p .form-error #mfa-error role="alert" {}
                    div #mfa-done hidden {
                        p role="status" { "Keep these recovery codes somewhere safe; each works once, and they are shown only now:" }
                        ul #mfa-codes .codes {}
                        a .button #mfa-download download="clawdeploy-recovery-codes.txt" { "Download the codes" }
                    }
                }
            }
            section .card aria-labelledby="data-h" {
                h2 #data-h { "Your data" }
                p { a .button href="/api/account/export" download="clawdeploy-export.json" { "Export my data (JSON)" } }
                h3 { "Delete account" }
                @match user.deletion_requested_at {
                    Some(at) => p #deletion-when {
                        "You asked to delete your account on " (local_time(at)) "; it is deleted "
                        (state.ctx.config.limits.deletion_grace_days) " days after that. "
                        button type="button" .button data-restore-account { "Keep my account" }
                    },
                    None => {
                        p {
                            "Your account and instance are deleted "
                            (state.ctx.config.limits.deletion_grace_days)
                            " days after you ask; until then you can change your mind."
                        }
                        form #delete-form method="post" {
                            div .field { label for="delete-confirm" { "Type DELETE to confirm" } input #delete-confirm name="confirm" type="text" autocomplete="off" required; }
                            button type="submit" .button.danger { "Delete my account" }
                        }
                    }
                }
                p .form-error #delete-error role="alert" {}
                p .hint #delete-result role="status" aria-live="polite" {}
            }
        }
    };
    Page::new("Settings · ClawDeploy", "settings")
        .user(Some(user))
        .html(body)
}

async fn security(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let events = state
        .store
        .list_security_events(auth.user.id, 100, None)
        .await
        .unwrap_or_default();
    let body = html! {
        h1 { "Security log" }
        p .muted { "Sign-ins (successful and failed), key and two-factor changes, exports and deletions on your account, newest first. Something you do not recognise? Change your password in Settings and turn on two-factor authentication." }
        div .table-wrap {
            table .table #security-log {
                caption .visually-hidden { "Security events" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "IP address" } th scope="col" { "Browser" } th scope="col" { "Detail" } } }
                tbody {
                    @for e in &events {
                        @let ua = e.user_agent.as_deref().unwrap_or("");
                        tr {
                            td { (local_time(e.created_at)) }
                            td { (event_text(&e.event)) }
                            td { (e.ip.as_deref().unwrap_or("")) }
                            td title=(ua) { (browser_text(ua)) }
                            td { (e.detail.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Page::new("Security log · ClawDeploy", "security")
        .user(Some(&auth.user))
        .html(body)
}

/// `domains.unverified_ttl_secs` in words: whole days or hours, else seconds.
fn ttl_text(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs.is_multiple_of(86_400) {
        plural(secs / 86_400, "day")
    } else if secs.is_multiple_of(3_600) {
        plural(secs / 3_600, "hour")
    } else {
        plural(secs, "second")
    }
}

async fn domains(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let inst = my_instance(&state, &auth).await;
    let target = inst
        .as_ref()
        .map(|i| format!("{}.{}", i.subdomain, state.routes.base_domain()))
        .unwrap_or_else(|| format!("<your subdomain>.{}", state.routes.base_domain()));
    // The user's domains with their status and the records still to create (issue #6).
    let domains = state
        .store
        .list_custom_domains_of(auth.user.id)
        .await
        .unwrap_or_default();
    let ttl = ttl_text(state.ctx.config.domains.unverified_ttl_secs);
    let body = html! {
        h1 { "Custom domains" }
        section .card.wide aria-labelledby="records-h" {
            h2 #records-h { "Use your own domain" }
            p { "Point a domain you own at your instance with this DNS record at your DNS provider:" }
            div .table-wrap {
                table .table {
                    caption .visually-hidden { "DNS record to create" }
                    thead { tr { th scope="col" { "Type" } th scope="col" { "Name" } th scope="col" { "Value" } } }
                    tbody { tr { td { "CNAME" } td { "your domain (e.g. " code { "claw.example.com" } ")" } td { code { (target) } } } }
                }
            }
            @let allowed = state.ctx.config.tiers.get(auth.user.tier).custom_domains;
            p .notice role="note" {
                @if allowed == 0 {
                    "Your " (auth.user.tier) " plan has no custom domains: " a #domains-upgrade href="/billing" { "see the plans" } ". "
                } @else {
                    "Your " (auth.user.tier) " plan serves up to " (allowed) " custom domains. "
                }
                "A domain is served over HTTPS, with its own certificate, once its CNAME and TXT records are seen. The TXT value is yours alone: whoever's records are seen first owns the domain, and a domain whose records are not seen within "
                (ttl) " is removed. Your instance is reachable at " strong { (target) } "."
            }
            form #domain-form method="post" novalidate {
                div .field {
                    label for="hostname" { "Domain" }
                    input #hostname name="hostname" type="text" autocomplete="off" autocapitalize="none" spellcheck="false" placeholder="claw.example.com" required data-field="hostname" aria-describedby="hostname-error";
                    p .field-error #hostname-error {}
                }
                p .form-error #domain-error role="alert" {}
                button type="submit" .button.primary { "Add domain" }
            }
            @if !domains.is_empty() {
                div .table-wrap {
                    table .table {
                        caption { "Your domains" }
                        thead { tr { th scope="col" { "Domain" } th scope="col" { "Status" } th scope="col" { "Records" } th scope="col" { "What to fix" } th scope="col" { span .visually-hidden { "Actions" } } } }
                        tbody {
                            @for d in &domains {
                                @let host = &d.hostname;
                                tr {
                                    td { code { (host) } }
                                    td { (domain_status_text(d.status)) }
                                    td {
                                        "CNAME " code { (host) } " → " code { (target) } br;
                                        "TXT " code { "_clawdeploy-challenge." (host) } " = " code { (d.token) }
                                    }
                                    td { (d.reason.as_deref().unwrap_or("")) }
                                    td {
                                        // Not yet active: the owner may ask for a check now (after
                                        // fixing DNS, or before a failed domain's backoff is over).
                                        @if d.status != clawdeploy_store::DomainStatus::Active {
                                            button type="button" .button.small data-verify-domain=(host) { "Check again " span .visually-hidden { (host) } }
                                            " "
                                        }
                                        button type="button" .button.danger.small data-delete-domain=(host) { "Remove " span .visually-hidden { (host) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Page::new("Custom domains · ClawDeploy", "domains")
        .user(Some(&auth.user))
        .html(body)
}

/// The Channels page: Telegram's status, the steps to connect a bot, the form (`PUT
/// /api/instances/me/channels/telegram`) and disconnecting it.
async fn channels(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let inst = my_instance(&state, &auth).await;
    let telegram = match &inst {
        Some(i) => state
            .store
            .channels_of(i.id)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.kind == clawdeploy_store::ChannelKind::Telegram),
        None => None,
    };
    let allowed = state.ctx.config.tiers.get(auth.user.tier).channels;
    let body = html! {
        h1 { "Channels" }
        section .card.wide aria-labelledby="telegram-h" {
            h2 #telegram-h { "Telegram" }
            p #telegram-status role="status" {
                @match &telegram {
                    None => "Not connected.",
                    Some(c) => @match c.status {
                        clawdeploy_store::ChannelStatus::Pending => "Connected; waiting for your assistant to reach Telegram.",
                        clawdeploy_store::ChannelStatus::Connected => {
                            "Connected. "
                            @if let Some(at) = c.last_message_at { "Last message " (local_time(at)) "." }
                        }
                        clawdeploy_store::ChannelStatus::Error => {
                            "Not working: " (c.status_detail.as_deref().unwrap_or("Telegram refused the bot."))
                        }
                    },
                }
            }
            @if inst.is_none() {
                p .notice role="note" { "Create your assistant first: " a href="/dashboard" { "Dashboard" } "." }
            } @else if allowed == 0 {
                p .notice role="note" {
                    "Your " (auth.user.tier) " plan has no messaging channels: " a #channels-upgrade href="/billing" { "see the plans" } "."
                }
            } @else {
                ol .steps {
                    li { "In Telegram, send " code { "/newbot" } " to " a href="https://t.me/BotFather" { "@BotFather" } " and copy the token it gives you." }
                    li { "Find your own Telegram user id (a number): " a href="https://t.me/userinfobot" { "@userinfobot" } " tells you." }
                    li { "Connect below, then write to your bot. It answers only the people you list; each message counts like a chat message." }
                }
                form #telegram-form method="post" novalidate {
                    div .field {
                        label for="bot-token" { "Bot token" }
                        input #bot-token name="botToken" type="password" autocomplete="off" required data-field="botToken" aria-describedby="bot-token-hint bot-token-error";
                        p .hint #bot-token-hint { "Stored encrypted; never shown again, and your instance never sees it." }
                        p .field-error #bot-token-error {}
                    }
                    div .field {
                        label for="allow-from" { "Telegram user ids it answers" }
                        input #allow-from name="allowFrom" type="text" inputmode="numeric" autocomplete="off" required data-field="allowFrom" aria-describedby="allow-from-hint allow-from-error"
                            value=(telegram.as_ref().map(|c| c.allow_from.join(", ")).unwrap_or_default());
                        p .hint #allow-from-hint { "Numbers, separated by commas." }
                        p .field-error #allow-from-error {}
                    }
                    p .form-error #telegram-error role="alert" {}
                    button type="submit" .button.primary { @if telegram.is_some() { "Save" } @else { "Connect" } }
                    @if telegram.is_some() {
                        " "
                        button type="button" .button.danger #telegram-disconnect { "Disconnect" }
                    }
                }
            }
        }
    };
    Page::new("Channels · ClawDeploy", "channels")
        .user(Some(&auth.user))
        .html(body)
}

/// The Skills page: the catalogue by category with what the instance has installed, the tier's
/// cap, an install form per skill (its config fields; secrets in password inputs), enable,
/// disable and uninstall, and the agent preset chooser. The actions call `/api/skills` and
/// `/api/instances/me/preset`.
async fn skills(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let inst = my_instance(&state, &auth).await;
    let installed = match &inst {
        Some(i) => state
            .store
            .skills_of(i.id, &state.ctx.keyring)
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let tier = inst.as_ref().map_or(auth.user.tier, |i| i.tier);
    let cap = state.ctx.config.tiers.get(tier).skills;
    let enabled = installed.iter().filter(|i| i.enabled).count();
    let catalogue: Vec<clawdeploy_skills::Skill> = state
        .ctx
        .catalogue
        .read()
        .map(|c| c.skills().cloned().collect())
        .unwrap_or_default();
    let mut categories: Vec<&str> = catalogue.iter().map(|s| s.category.as_str()).collect();
    categories.sort_unstable();
    categories.dedup();
    let body = html! {
        h1 { "Skills" }
        @if inst.is_none() {
            p .notice role="note" { "Create your instance on the " a href="/dashboard" { "dashboard" } " first: skills are installed into it." }
        } @else {
            section .card.wide aria-labelledby="preset-h" {
                h2 #preset-h { "Your assistant" }
                p .muted { "A preset sets your assistant's personality (SOUL.md), how it works (AGENTS.md) and installs its starting skills. Your own SOUL.md is never replaced without asking." }
                form #preset-form novalidate {
                    div .field {
                        label for="preset" { "Preset" }
                        select #preset name="preset" {
                            @for p in clawdeploy_skills::presets() {
                                option value=(p.id) selected[inst.as_ref().and_then(|i| i.preset.as_deref()) == Some(p.id.as_str())] { (p.name) " — " (p.summary) }
                            }
                        }
                    }
                    p .form-error #preset-error role="alert" {}
                    p .hint #preset-status role="status" aria-live="polite" {}
                    button type="submit" .button.primary { "Apply preset" }
                }
            }
            section .card.wide aria-labelledby="skills-h" {
                h2 #skills-h { "Skills" }
                p #skills-limit {
                    @if cap == 0 {
                        (enabled) " enabled · the " (tier) " plan has no limit."
                    } @else {
                        (enabled) " of " (cap) " enabled on the " (tier) " plan. "
                        a href="/billing" { "More skills with a paid plan" } "."
                    }
                }
                div .field {
                    label for="skill-search" { "Search skills" }
                    input #skill-search type="search" autocomplete="off" placeholder="notes, weather, diagrams…";
                }
                p .form-error #skills-error role="alert" {}
                @for category in &categories {
                    section .skill-category data-category=(category) aria-label=(category) {
                        h3 { (category) }
                        ul .skill-list {
                            @for skill in catalogue.iter().filter(|s| s.category == *category) {
                                @let mine = installed.iter().find(|i| i.skill_id == skill.id);
                                @let available = skill.min_tier <= tier;
                                li .skill data-skill=(skill.id) data-search=(format!("{} {} {} {}", skill.id, skill.name, skill.description, skill.tags.join(" ")).to_lowercase()) {
                                    div .skill-head {
                                        strong { span aria-hidden="true" { (skill.emoji.as_deref().unwrap_or("")) } " " (skill.name) }
                                        @match mine {
                                            Some(m) if m.enabled => { " " span .badge.on { "enabled" } }
                                            Some(_) => { " " span .badge { "disabled" } }
                                            None if !available => { " " span .badge { (skill.min_tier) " plan" } }
                                            None => {}
                                        }
                                    }
                                    p .muted { (skill.description) }
                                    @if let Some(reason) = mine.and_then(|m| m.disabled_reason.as_deref()) {
                                        p .hint { "Disabled: " (reason) "." }
                                    }
                                    @match mine {
                                        Some(m) => {
                                            @if m.enabled {
                                                button type="button" .button.small data-skill-enable="false" data-id=(skill.id) { "Disable " span .visually-hidden { (skill.name) } }
                                            } @else {
                                                button type="button" .button.small data-skill-enable="true" data-id=(skill.id) { "Enable " span .visually-hidden { (skill.name) } }
                                            }
                                            " "
                                            button type="button" .button.danger.small data-skill-uninstall=(skill.id) { "Uninstall " span .visually-hidden { (skill.name) } }
                                        }
                                        None if available => {
                                            form .skill-install data-install=(skill.id) novalidate {
                                                @for f in &skill.fields {
                                                    @let id = format!("cfg-{}-{}", skill.id, f.name);
                                                    div .field {
                                                        label for=(id) { (f.label) @if f.required { " (required)" } }
                                                        input id=(id) name=(f.name) type=(if f.kind == clawdeploy_skills::FieldKind::Secret { "password" } else { "text" }) autocomplete="off" data-field=(format!("config.{}", f.name)) aria-describedby=(format!("{id}-error"));
                                                        p .field-error id=(format!("{id}-error")) {}
                                                    }
                                                }
                                                p .form-error role="alert" {}
                                                button type="submit" .button.primary.small { "Install " span .visually-hidden { (skill.name) } }
                                            }
                                        }
                                        None => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Page::new("Skills · ClawDeploy", "skills")
        .user(Some(&auth.user))
        .html(body)
}

/// Plan and billing (issue 19): the plan with its subscription, upgrade buttons (Stripe
/// Checkout), the Customer Portal, cancellation, usage against every limit, AI credits and
/// invoices. The chat's quota refusal links here (`metering.upgrade_url` defaults to
/// `<app>/billing`). The buttons call the billing API (app.js `billingPage`).
async fn billing(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let view = match crate::billing::view_of(&state, &auth.user).await {
        Ok(v) => v,
        Err(e) => {
            e.log_cause();
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Billing is unavailable",
                "Your plan could not be read just now; reload the page in a moment.",
                Some(&auth.user),
            );
        }
    };
    // Invoices come from Stripe: the rest of the page works without them.
    let invoices = if view.enabled {
        crate::billing::invoices_of(&state, &auth.user).await.ok()
    } else {
        Some(Vec::new())
    };
    let query = uri.query().unwrap_or_default();
    let money = |cents: u64| format!("${}.{:02}", cents / 100, cents % 100);
    let count = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    let live = view
        .subscription
        .as_ref()
        .filter(|s| s.status.grants_tier());
    let body = html! {
        h1 { "Plan and billing" }
        @if let Some(until) = &view.grace_until {
            p .notice #grace-banner role="alert" {
                "Your last payment failed. You keep the " (view.tier) " plan until " (until.replacen('T', " ", 1).get(..16).unwrap_or(until)) " UTC"
                " while the card is tried again; update it in the billing portal to keep your plan."
            }
        }
        @if query.contains("checkout=success") {
            p .notice #checkout-result role="status" { "Thank you: your payment went through. Your plan is below." }
        }
        @if query.contains("credits=success") {
            p .notice #checkout-result role="status" { "Thank you: your credits are added below." }
        }
        p .form-error #billing-error role="alert" {}
        section .card aria-labelledby="current-h" {
            h2 #current-h { "Your plan" }
            p { "Plan: " strong #current-plan { (view.tier) } }
            @if let Some(sub) = live {
                p #subscription-status {
                    "Subscription " (sub.status.as_str().replace('_', " "))
                    @if let Some(end) = sub.current_period_end {
                        @if sub.cancel_at_period_end { ", ends on " } @else { ", renews on " }
                        (when(end))
                    }
                }
                @if sub.cancel_at_period_end {
                    button type="button" .button #resume { "Keep my plan" }
                } @else {
                    button type="button" .button.danger #cancel { "Cancel at the end of the period" }
                }
            }
            @if view.enabled && (live.is_some() || !view.credits.ledger.is_empty()) {
                " " button type="button" .button #portal { "Manage payment and invoices" }
            }
            @if !view.enabled {
                p .notice role="note" { "Online payment is not set up on this server: ask its operator to change your plan. Your instance keeps its data and address when the plan changes." }
            }
        }
        section .card aria-labelledby="usage-h" {
            h2 #usage-h { "Usage against your plan" }
            ul #limits {
                @for limit in &view.limits {
                    li data-limit=(limit.name) {
                        (limit_label(limit.name)) ": "
                        @match limit.used { Some(u) => { (u) " of " } None => {} }
                        (count(limit.limit))
                    }
                }
            }
        }
        section .card.wide aria-labelledby="plans-h" {
            h2 #plans-h { "Plans" }
            div .table-wrap {
                table .table #plans {
                    caption .visually-hidden { "Price and limits per plan" }
                    thead { tr {
                        th scope="col" { "Plan" } th scope="col" { "Price a month" } th scope="col" { "Messages a month" }
                        th scope="col" { "AI tokens a month" } th scope="col" { "Skills" } th scope="col" { "Sub-agents" }
                        th scope="col" { "Storage" } th scope="col" { "Custom domains" } th scope="col" { "Seats" }
                        th scope="col" { "CPU, memory" } th scope="col" { span .visually-hidden { "Change" } }
                    } }
                    tbody {
                        @for offer in &view.tiers {
                            tr data-tier=(offer.tier) {
                                th scope="row" { (offer.tier) @if offer.tier == view.tier { " (your plan)" } }
                                td { @if offer.price_cents == 0 { "free" } @else { (money(offer.price_cents)) } }
                                td { (count(offer.messages_per_month)) }
                                td { (count(offer.tokens_per_month)) }
                                td { (count(offer.skills.map(u64::from))) }
                                td { (offer.subagents) }
                                td { (offer.storage_mb.map_or("not limited".to_string(), |mb| format!("{} GB", mb / 1024))) }
                                td { (offer.custom_domains) }
                                td { (offer.seats) }
                                td { (offer.cpus) " CPU, " (offer.memory_mb) " MiB" }
                                td {
                                    @if offer.purchasable && offer.tier != view.tier {
                                        button type="button" .button.primary.small data-checkout=(offer.tier) {
                                            @if offer.tier > view.tier { "Upgrade to " } @else { "Switch to " } (offer.tier)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if live.is_some() && view.tier.is_paid() {
                p { "To move to the free plan, cancel: you keep your plan until the end of the paid period, then skills past the free limit are disabled and custom domains paused (nothing is deleted)." }
            }
        }
        section .card aria-labelledby="credits-h" {
            h2 #credits-h { "AI credits" }
            p { "Balance: " strong #credit-balance { (view.credits.balance_tokens) } " tokens" }
            @if view.credits.providers.is_empty() {
                p { "This server sells no AI credits: add your own provider key in settings." }
            } @else {
                p { "Credits pay for " (view.credits.providers.join(", ")) " when you have not added your own key (your own key is never charged by us)." }
                @if view.enabled {
                    ul .packs {
                        @for pack in &view.credits.packs {
                            li { button type="button" .button.small data-credits=(pack.id) {
                                "Buy " (pack.tokens) " tokens for " (money(pack.price_cents))
                            } }
                        }
                    }
                }
            }
            @if !view.credits.ledger.is_empty() {
                div .table-wrap {
                    table .table #ledger {
                        caption { "Latest credit entries" }
                        thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Tokens" } } }
                        tbody {
                            @for entry in &view.credits.ledger {
                                tr {
                                    td { (when(entry.created_at)) }
                                    td { (serde_json::to_value(entry.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                                    td { (entry.tokens) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section .card aria-labelledby="invoices-h" {
            h2 #invoices-h { "Invoices" }
            @match &invoices {
                None => p { "Invoices cannot be loaded from the payment provider right now." },
                Some(list) if list.is_empty() => p { "No invoices yet." },
                Some(list) => {
                    ul #invoices {
                        @for inv in list {
                            li {
                                (inv.created.get(..10).unwrap_or(&inv.created)) " · " (money(inv.amount_due.max(0) as u64)) " · " (inv.status.as_deref().unwrap_or(""))
                                @if let Some(url) = &inv.url { " · " a href=(url) rel="noopener" { "view" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Page::new("Plan and billing · ClawDeploy", "billing")
        .user(Some(&auth.user))
        .html(body)
}

/// Whether the owner's instance can reach a model: a provider key of their own, or AI credits the
/// platform sells with a positive balance.
async fn has_provider(state: &ApiState, user: &clawdeploy_store::User) -> bool {
    let keys = state.store.list_api_keys(user.id).await.unwrap_or_default();
    if keys.iter().any(|k| k.is_active) {
        return true;
    }
    let billing = &state.ctx.config.billing;
    let credits_sold = ["openai", "anthropic", "google"]
        .iter()
        .any(|p| billing.platform_key(p).is_some());
    credits_sold
        && state
            .store
            .credit_balance(user.id)
            .await
            .is_ok_and(|balance| balance > 0)
}

/// After a failed payment, while the paid plan holds: where to fix it.
async fn grace_banner(state: &ApiState, user: &clawdeploy_store::User) -> Option<Markup> {
    let until = state
        .store
        .billing_account(user.id)
        .await
        .ok()?
        .grace_until?;
    user.tier.is_paid().then(|| {
        html! {
            p .notice #grace-banner role="alert" {
                "Your last payment failed. You keep the " (user.tier) " plan until "
                (when(until)) ": "
                a href="/billing" { "update your payment details" } "."
            }
        }
    })
}

/// A time for people: `2026-12-14 21:15 UTC`.
fn when(ms: i64) -> String {
    let stamp = clawdeploy_store::time::rfc3339(ms).replacen('T', " ", 1);
    format!("{} UTC", stamp.get(..16).unwrap_or(&stamp))
}

/// A `<time>` that `app.js` shows in the reader's own time zone (UTC until it runs).
fn local_time(ms: i64) -> Markup {
    html! { time datetime=(rfc3339(ms)) data-local { (when(ms)) } }
}

/// An instance status as one word for people.
fn status_word(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Queued => "Waiting for room",
        InstanceStatus::Provisioning => "Preparing",
        InstanceStatus::Starting => "Starting",
        InstanceStatus::Running => "Running",
        InstanceStatus::Sleeping => "Asleep",
        InstanceStatus::Stopped => "Stopped",
        InstanceStatus::Crashed => "Crashed",
        InstanceStatus::Deleting => "Cancelled",
    }
}

fn domain_status_text(status: clawdeploy_store::DomainStatus) -> &'static str {
    use clawdeploy_store::DomainStatus as D;
    match status {
        D::PendingDns => "Waiting for your DNS records",
        D::Verifying => "Checking your DNS records",
        D::Issuing => "Getting its certificate",
        D::Active => "Active",
        D::Failed => "Failed: see what to fix",
        D::Parked => "Paused: your plan allows fewer domains",
    }
}

/// A security event's stored name (`login_failed`) for people.
fn event_text(event: &str) -> String {
    let known = match event {
        "account_created" => "Account created",
        "login_success" => "Logged in",
        "login_failure" => "Failed login",
        "login_throttled" => "Login attempts paused (too many failures)",
        "logout" => "Logged out",
        "refresh_token_reuse" => "A stolen sign-in was blocked (all sessions ended)",
        "password_changed" => "Password changed",
        "password_reset_requested" => "Password reset requested",
        "password_reset" => "Password reset",
        "email_changed" => "Email address changed",
        "email_verified" => "Email address confirmed",
        "mfa_enabled" => "Two-factor authentication turned on",
        "mfa_disabled" => "Two-factor authentication turned off",
        "api_key_set" => "AI provider key saved",
        "api_key_deleted" => "AI provider key removed",
        "instance_created" => "Assistant created",
        "instance_restart" => "Assistant restarted",
        "instance_deleted" => "Assistant cancelled",
        "instance_restored" => "Assistant restored",
        "instance_sign_in" => "Opened your assistant",
        "subdomain_changed" => "Address changed",
        "data_exported" => "Data exported",
        "deletion_requested" => "Account deletion requested",
        "deletion_cancelled" => "Account deletion cancelled",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    let words = event.replace('_', " ");
    let mut chars = words.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A browser's `User-Agent` as "Firefox on Linux" (the whole string is the cell's tooltip).
fn browser_text(ua: &str) -> String {
    if ua.is_empty() {
        return String::new();
    }
    let has = |s: &str| ua.contains(s);
    let browser = if has("Edg/") {
        "Edge"
    } else if has("Firefox/") {
        "Firefox"
    } else if has("Chrome/") || has("Chromium/") {
        "Chrome"
    } else if has("Safari/") {
        "Safari"
    } else if ua.starts_with("curl/") {
        return "curl".to_string();
    } else {
        "A program"
    };
    let os = if has("Android") {
        "Android"
    } else if has("iPhone") || has("iPad") {
        "iOS"
    } else if has("Windows") {
        "Windows"
    } else if has("Mac OS X") {
        "macOS"
    } else if has("Linux") || has("X11") {
        "Linux"
    } else {
        return browser.to_string();
    };
    format!("{browser} on {os}")
}

fn limit_label(name: &str) -> &'static str {
    match name {
        "messages" => "Messages this month",
        "tokens" => "AI tokens this month",
        "skills" => "Skills enabled",
        "subagents" => "Sub-agents at once",
        "customDomains" => "Custom domains",
        _ => "Storage (MiB)",
    }
}

/// A table of JSON rows: one column per (JSON pointer, title); strings as they are, null empty,
/// anything else as JSON.
fn json_table(caption: &str, rows: &[Value], columns: &[(&str, &str)]) -> Markup {
    let cell = |row: &Value, pointer: &str| match row.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    html! {
        div .table-wrap {
            table .table {
                caption { (caption) }
                thead { tr { @for (_, title) in columns { th scope="col" { (title) } } } }
                tbody {
                    @for row in rows {
                        tr { @for (pointer, _) in columns { td { (cell(row, pointer)) } } }
                    }
                }
            }
        }
    }
}

async fn operator(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    if auth.user.role != Role::Operator {
        return error_page(
            StatusCode::FORBIDDEN,
            "Operators only",
            "This page is for operators of this ClawDeploy server. Your account does not have the operator role.",
            Some(&auth.user),
        );
    }
    let admin = || crate::admin::Admin {
        who: auth.user.email.clone(),
    };
    // The tables read the rows as the admin API answers them (JSON pointers into each row).
    fn rows<T: serde::Serialize>(items: &[T]) -> Vec<serde_json::Value> {
        items
            .iter()
            .filter_map(|item| serde_json::to_value(item).ok())
            .collect()
    }
    let node_rows = crate::admin::nodes(admin(), State(state.clone()))
        .await
        .map(|r| rows(&r.0.nodes))
        .unwrap_or_default();
    let inst_rows = crate::admin::instances(
        admin(),
        State(state.clone()),
        Ok(Query(crate::admin::InstancesQuery::default())),
    )
    .await
    .map(|r| rows(&r.0.instances))
    .unwrap_or_default();
    let sub_rows = crate::billing::admin_subscriptions(
        admin(),
        State(state.clone()),
        Ok(Query(crate::billing::SubscriptionsQuery::default())),
    )
    .await
    .map(|r| rows(&r.0.subscriptions))
    .unwrap_or_default();
    let body = html! {
        h1 { "Operator" }
        section .card.wide {
            h2 { "Nodes" }
            (json_table(
                "Edge nodes",
                &node_rows,
                &[("/id", "Node"), ("/listen", "Listen"), ("/status", "Status"), ("/database", "Database"), ("/routes/instances", "Instance routes")]
            ))
        }
        section .card.wide {
            h2 { "Pool" }
            (json_table(
                "Containers per node",
                &node_rows,
                &[("/id", "Node"), ("/runtime", "Runtime"), ("/containers/idle", "Idle"), ("/containers/creating", "Creating"), ("/containers/assigned", "Assigned"), ("/containers/queued", "Queued"), ("/containers/capacity", "Capacity")]
            ))
        }
        section .card.wide {
            h2 { "Instances (" (inst_rows.len()) ")" }
            (json_table(
                "Every instance",
                &inst_rows,
                &[("/subdomain", "Subdomain"), ("/status", "Status"), ("/tier", "Tier"), ("/nodeId", "Node"), ("/upstream", "Upstream"), ("/userId", "User"), ("/createdAt", "Created")]
            ))
        }
        section .card.wide {
            h2 { "Subscriptions (" (sub_rows.len()) ")" }
            (json_table(
                "Stripe subscriptions, newest first (a user's credit ledger: GET /admin/users/{id}/credits)",
                &sub_rows,
                &[("/userId", "User"), ("/tier", "Tier"), ("/status", "Status"), ("/cancelAtPeriodEnd", "Cancelling"), ("/currentPeriodEnd", "Period end"), ("/stripeSubscriptionId", "Stripe id")]
            ))
        }
    };
    Page::new("Operator · ClawDeploy", "operator")
        .user(Some(&auth.user))
        .html(body)
}

/// An HTML error page that says what happened and what to do.
pub fn error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    user: Option<&clawdeploy_store::User>,
) -> Response {
    let body = html! {
        section .card.narrow {
            h1 { (title) }
            p { (message) }
            p { a .button href="/dashboard" { "Go to your dashboard" } " " a .button href="/" { "Home" } }
        }
    };
    let mut response = Page::new(&format!("{title} · ClawDeploy"), "error")
        .user(user)
        .html(body);
    *response.status_mut() = status;
    response
}

/// A mailed link of the API (`/api/auth/verify-email?token=`, as mails sent before the pages
/// existed carry) opened by a browser: its page, where the token is used and the outcome said.
pub fn link_page(headers: &HeaderMap, page: &str, token: &str) -> Option<Response> {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    html.then(|| Redirect::to(&format!("{page}?token={}", percent_encode(token))).into_response())
}

/// An error answered to a browser that navigated here (it accepts HTML) as a page saying what
/// happened; to anything else as the API's JSON.
pub fn error_for(headers: &HeaderMap, e: crate::error::ApiError) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !html {
        return e.into_response();
    }
    e.log_cause();
    let title = match e.status {
        StatusCode::BAD_REQUEST => "This link does not work",
        StatusCode::UNAUTHORIZED => "Please log in again",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        s if s.is_server_error() => "Something went wrong on our side",
        _ => "That did not work",
    };
    error_page(e.status, title, &e.message, None)
}

/// Whether a request prefers HTML (a browser navigating), for the fallback's error page.
pub fn wants_html(headers: &HeaderMap, uri: &Uri) -> bool {
    let path = uri.path();
    !path.starts_with("/api/")
        && !path.starts_with("/admin")
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_this_host_are_followed_after_login() {
        for ok in ["/dashboard", "/settings?tab=keys", "/a/b%20c"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "evil.example",
            "/caf\u{e9}",
            "",
        ] {
            assert!(!is_local_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(5_000), "less than a minute");
        assert_eq!(duration_text(90 * 60_000), "1 h 30 min");
    }

    #[test]
    fn people_read_words_not_stored_names() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(browser_text(chrome), "Chrome on Linux");
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(browser_text(iphone), "Safari on iOS");
        assert_eq!(browser_text("curl/7.88.1"), "curl");
        assert_eq!(browser_text(""), "");
        assert_eq!(event_text("login_failure"), "Failed login");
        assert_eq!(event_text("something_new"), "Something new");
    }
}
