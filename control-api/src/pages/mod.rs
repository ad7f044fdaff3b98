//! The dashboard: server-rendered HTML pages on the app domain, plus one stylesheet and one
//! script compiled into the binary (no build step). Pages read through the same store and
//! handler functions as the JSON API; forms and the chat call the JSON API from `app.js` with the
//! HttpOnly session cookie (`POST /api/auth/browser-session` sets it). No inline scripts or
//! styles, so a strict Content-Security-Policy fits.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::Value;

use clawdeploy_proxy::browser_session::percent_encode;
use clawdeploy_store::time::{now_ms, rfc3339};
use clawdeploy_store::{Instance, InstanceStatus, Role, Tier};

use crate::auth::{self, AuthUser};
use crate::ApiState;

mod render;

use render::{esc, Page};

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// The page routes (merged into the API router; not part of the OpenAPI document, which
/// describes the JSON API).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(landing))
        .route("/signup", get(signup))
        .route("/login", get(login))
        .route("/login/continue", get(login_continue))
        .route("/dashboard", get(dashboard))
        .route("/settings", get(settings))
        .route("/security", get(security))
        .route("/domains", get(domains))
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
    let base = esc(state.routes.base_domain());
    let cta = if user.is_some() {
        r#"<a class="button primary big" href="/dashboard">Open your dashboard</a>"#
    } else {
        r#"<a class="button primary big" href="/signup" id="deploy-free">Deploy Free</a>"#
    };
    let free = match tier_limits(&state, Tier::Free).0 {
        Some(n) => format!("{n} messages a month"),
        None => "unlimited messages".to_string(),
    };
    let body = format!(
        r#"<section class="hero">
  <h1>OpenClaw in one click</h1>
  <p class="lead">Your own OpenClaw assistant, hosted and kept running for you at <strong>you.{base}</strong>. No servers, no Docker, no setup.</p>
  <p>{cta}</p>
  <p class="muted">Free: {free} with your own AI provider key. No card needed.</p>
</section>
<section class="features" aria-label="What you get">
  <div class="card"><h2>Ready in seconds</h2><p>A warm instance is handed to you the moment you sign up.</p></div>
  <div class="card"><h2>Only yours</h2><p>Your instance answers only you; your provider keys are stored encrypted and never enter the container.</p></div>
  <div class="card"><h2>Chat anywhere</h2><p>Chat from this dashboard or OpenClaw's own Control UI at your address.</p></div>
</section>"#
    );
    Page::new("ClawDeploy: OpenClaw in one click", "landing")
        .user(user.as_ref().map(|u| &u.user))
        .html(body)
}

async fn signup(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to("/dashboard").into_response();
    }
    let base = esc(state.routes.base_domain());
    let body = format!(
        r#"<section class="card narrow">
<h1>Deploy your OpenClaw</h1>
<p class="muted">Already have an account? <a href="/login">Log in</a>.</p>
<form id="signup-form" novalidate>
  <div class="field"><label for="email">Email</label>
    <input id="email" name="email" type="email" autocomplete="email" required data-field="email" aria-describedby="email-error">
    <p class="field-error" id="email-error"></p></div>
  <div class="field"><label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="new-password" required minlength="10" data-field="password" aria-describedby="password-hint password-error">
    <p class="hint" id="password-hint">At least 10 characters; a passphrase works well.</p>
    <p class="field-error" id="password-error"></p></div>
  <div class="field"><label for="provider">AI provider</label>
    <select id="provider" name="provider">
      <option value="openai">OpenAI</option><option value="anthropic">Anthropic</option><option value="google">Google</option>
    </select></div>
  <div class="field"><label for="api-key">Provider API key</label>
    <input id="api-key" name="apiKey" type="password" autocomplete="off" required data-field="apiKeys" aria-describedby="api-key-hint api-key-error">
    <p class="hint" id="api-key-hint">Stored encrypted; your instance never sees it.</p>
    <p class="field-error" id="api-key-error"></p></div>
  <div class="field"><label for="subdomain">Your address</label>
    <div class="suffixed"><input id="subdomain" name="subdomain" type="text" autocomplete="off" autocapitalize="none" spellcheck="false" required pattern="[a-z0-9-]{{3,63}}" data-field="subdomain" aria-describedby="subdomain-status subdomain-error"><span class="suffix">.{base}</span></div>
    <p class="hint" id="subdomain-status" role="status" aria-live="polite"></p>
    <p class="field-error" id="subdomain-error"></p></div>
  <p class="form-error" id="form-error" role="alert"></p>
  <button type="submit" class="button primary big" id="deploy">Deploy</button>
  <p class="hint" id="form-progress" role="status" aria-live="polite"></p>
</form>
</section>"#
    );
    Page::new("Sign up · ClawDeploy", "signup").html(body)
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: Option<String>,
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
    let body = format!(
        r#"<section class="card narrow">
<h1>Log in</h1>
<p class="muted">New here? <a href="/signup">Deploy free</a>.</p>
<form id="login-form" data-next="{next}" novalidate>
  <div class="field"><label for="email">Email</label>
    <input id="email" name="email" type="email" autocomplete="username" required data-field="email"></div>
  <div class="field"><label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required data-field="password"></div>
  <div class="field" id="mfa-field" hidden><label for="mfa-code">Authentication code</label>
    <input id="mfa-code" name="mfaCode" type="text" inputmode="numeric" autocomplete="one-time-code" data-field="mfaCode" aria-describedby="mfa-hint">
    <p class="hint" id="mfa-hint">The 6-digit code from your authenticator app, or a recovery code.</p></div>
  <p class="form-error" id="form-error" role="alert"></p>
  <button type="submit" class="button primary" id="login-submit">Log in</button>
</form>
</section>"#,
        next = esc(&next)
    );
    Page::new("Log in · ClawDeploy", "login").html(body)
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
    if signed_in(&state, &headers).await.is_none() {
        return to_login(&uri);
    }
    let next = q.next.unwrap_or_default();
    if is_local_path(&next) {
        return Redirect::to(&next).into_response();
    }
    if instance_target(&state, &next).is_some() {
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
/// custom domain).
fn instance_target(state: &ApiState, next: &str) -> Option<String> {
    let rest = next
        .strip_prefix("https://")
        .or_else(|| next.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = clawdeploy_config::normalize_host(authority)?;
    match state.routes.resolve(&host) {
        clawdeploy_proxy::Resolution::Route(route)
            if route.kind == clawdeploy_proxy::RouteKind::Instance =>
        {
            Some(host)
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

fn meter(id: &str, label: &str, used: i64, limit: Option<i64>) -> String {
    match limit {
        Some(limit) => format!(
            r#"<div class="usage"><label for="{id}">{label}: {used} of {limit}</label><meter id="{id}" min="0" max="{limit}" low="{low}" high="{high}" optimum="0" value="{used}">{used} of {limit}</meter></div>"#,
            low = limit * 7 / 10,
            high = limit * 9 / 10,
        ),
        None => format!(r#"<div class="usage"><p>{label}: {used} (unlimited)</p></div>"#),
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
        let base = esc(state.routes.base_domain());
        let body = format!(
            r#"<h1>Dashboard</h1>
<section class="card narrow" aria-labelledby="create-h">
<h2 id="create-h">Create your instance</h2>
<form id="create-form" novalidate>
  <div class="field"><label for="subdomain">Your address</label>
    <div class="suffixed"><input id="subdomain" name="subdomain" type="text" autocomplete="off" autocapitalize="none" spellcheck="false" required data-field="subdomain" aria-describedby="subdomain-status subdomain-error"><span class="suffix">.{base}</span></div>
    <p class="hint" id="subdomain-status" role="status" aria-live="polite"></p>
    <p class="field-error" id="subdomain-error"></p></div>
  <p class="form-error" id="form-error" role="alert"></p>
  <button type="submit" class="button primary">Deploy</button>
</form></section>"#
        );
        return Page::new("Dashboard · ClawDeploy", "dashboard")
            .user(Some(&auth.user))
            .html(body);
    };
    let usage = state.store.usage_this_month(inst.id).await.ok();
    let (msg_limit, tok_limit) = tier_limits(&state, inst.tier);
    let (messages, tokens) = usage.map_or((0, 0), |u| (u.messages, u.tokens));
    let view = crate::instances::instance_json(&state, &inst);
    let url = view["url"].as_str().unwrap_or_default().to_string();
    let running = inst.status == InstanceStatus::Running;
    let uptime = if running {
        format!(
            r#"<p>Up for at least <span id="uptime">{}</span> (last started or reconfigured at {}).</p>"#,
            duration_text(now_ms() - inst.updated_at),
            esc(&rfc3339(inst.updated_at))
        )
    } else {
        String::new()
    };
    let verify = if auth.user.email_verified() {
        String::new()
    } else {
        format!(
            r#"<p class="notice" role="note">Confirm your email address: we sent a link to {}. Unconfirmed accounts are stopped after {} days.</p>"#,
            esc(&auth.user.email),
            state.ctx.config.limits.unverified_grace_days
        )
    };
    let step = match inst.status {
        InstanceStatus::Queued => 1,
        InstanceStatus::Provisioning => 2,
        InstanceStatus::Starting => 3,
        InstanceStatus::Running => 4,
        _ => 0,
    };
    let progress_hidden = if running || step == 0 { " hidden" } else { "" };
    let body = format!(
        r#"<h1>Dashboard</h1>
{verify}
<div class="grid" id="instance" data-status="{status}" data-subdomain="{sub}">
<section class="card" aria-labelledby="status-h">
  <h2 id="status-h">Your instance</h2>
  <p><a href="{open}" target="_blank" rel="noopener">{host}</a></p>
  <p>Status: <strong id="status-text" class="status status-{status}">{status_text}</strong></p>
  {uptime}
  <div id="progress"{progress_hidden}>
    <label for="progress-bar">Getting your instance ready</label>
    <progress id="progress-bar" max="4" value="{step}">{step} of 4</progress>
    <ol class="steps">
      <li data-step="1">Reserved</li><li data-step="2">Prepared</li><li data-step="3">Starting OpenClaw</li><li data-step="4">Ready to chat</li>
    </ol>
  </div>
  <p><a class="button" href="{open}" target="_blank" rel="noopener" id="control-ui">Open OpenClaw's Control UI</a></p>
</section>
<section class="card" aria-labelledby="usage-h">
  <h2 id="usage-h">Usage this month</h2>
  {msg_meter}
  {tok_meter}
  <p class="muted">Plan: {tier} (<a href="/billing">plans and limits</a>). Messages reset on the first of the month (UTC).</p>
</section>
<section class="card wide chat" aria-labelledby="chat-h">
  <h2 id="chat-h">Chat</h2>
  <p id="chat-status" class="chat-status" role="status" aria-live="polite">{chat_status}</p>
  <ol id="chat-log" class="chat-log" aria-label="Conversation" aria-live="polite"></ol>
  <form id="chat-form" class="chat-form">
    <label for="chat-input">Message</label>
    <textarea id="chat-input" name="message" rows="2" required></textarea>
    <button type="submit" class="button primary" id="chat-send" disabled>Send</button>
  </form>
</section>
<section class="card" aria-labelledby="skills-h">
  <h2 id="skills-h">Skills</h2>
  <div id="skills"><p class="muted">Shown once the chat is connected.</p></div>
</section>
<section class="card" aria-labelledby="sessions-h">
  <h2 id="sessions-h">Sessions and sub-agents</h2>
  <div id="sessions"><p class="muted">Shown once the chat is connected.</p></div>
</section>
</div>"#,
        status = inst.status.as_str(),
        sub = esc(&inst.subdomain),
        // Signed in to the instance host straight away (its one-time code handoff), without a
        // second login there.
        open = esc(&format!(
            "/login/continue?next={}",
            percent_encode(&format!("{url}/"))
        )),
        host = esc(&format!(
            "{}.{}",
            inst.subdomain,
            state.routes.base_domain()
        )),
        status_text = status_text(inst.status),
        msg_meter = meter("usage-messages", "Messages", messages, msg_limit),
        tok_meter = meter("usage-tokens", "AI tokens", tokens, tok_limit),
        tier = inst.tier,
        chat_status = if running {
            "Connecting…"
        } else {
            "The chat connects when your instance is running."
        },
    );
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
    let key_rows: String = if keys.is_empty() {
        r#"<tr><td colspan="3">No provider keys yet.</td></tr>"#.into()
    } else {
        keys.iter()
            .map(|k| {
                format!(
                    r#"<tr><th scope="row">{p}</th><td><code>{m}</code>{b}</td><td><button type="button" class="button danger small" data-delete-key="{p}">Remove <span class="visually-hidden">the {p} key</span></button></td></tr>"#,
                    p = esc(&k.provider),
                    m = esc(&k.masked),
                    b = k
                        .base_url
                        .as_deref()
                        .map(|u| format!(" <span class=\"muted\">{}</span>", esc(u)))
                        .unwrap_or_default()
                )
            })
            .collect()
    };
    let tz_options: String = TIMEZONES
        .iter()
        .map(|tz| format!(r#"<option value="{tz}"></option>"#))
        .collect();
    let lang_options: String = crate::account::LANGUAGES
        .iter()
        .map(|(code, name)| {
            let selected = if *code == user.language {
                " selected"
            } else {
                ""
            };
            format!(r#"<option value="{code}" lang="{code}"{selected}>{name}</option>"#)
        })
        .collect();
    let instance_section = match &inst {
        Some(inst) => format!(
            r#"<section class="card" aria-labelledby="instance-h">
  <h2 id="instance-h">Instance</h2>
  <form id="subdomain-form" novalidate>
    <div class="field"><label for="subdomain">Address</label>
      <div class="suffixed"><input id="subdomain" name="subdomain" type="text" value="{sub}" data-current="{sub}" autocomplete="off" autocapitalize="none" spellcheck="false" required data-field="subdomain" aria-describedby="subdomain-status subdomain-error"><span class="suffix">.{base}</span></div>
      <p class="hint" id="subdomain-status" role="status" aria-live="polite"></p>
      <p class="field-error" id="subdomain-error"></p></div>
    <button type="submit" class="button">Change address</button>
  </form>
  <p>Status: <strong>{status}</strong></p>
  <p class="form-error" id="instance-error" role="alert"></p>
  <p class="hint" id="instance-result" role="status" aria-live="polite"></p>
  <p><button type="button" class="button" id="restart">Restart instance</button></p>
</section>
<section class="card wide" aria-labelledby="soul-h">
  <h2 id="soul-h">SOUL.md</h2>
  <form id="soul-form">
    <label for="soul">Your assistant's personality and standing instructions (Markdown, up to 64 KiB)</label>
    <textarea id="soul" name="soulMd" rows="10" data-field="soulMd">{soul}</textarea>
    <p class="form-error" id="soul-error" role="alert"></p>
    <p class="hint" id="soul-result" role="status" aria-live="polite"></p>
    <button type="submit" class="button primary" id="soul-save">Save SOUL.md</button>
  </form>
</section>"#,
            sub = esc(&inst.subdomain),
            base = esc(state.routes.base_domain()),
            status = inst.status.as_str(),
            soul = esc(inst.soul_md.as_deref().unwrap_or_default()),
        ),
        None => r#"<section class="card"><h2>Instance</h2><p>You have no instance yet: <a href="/dashboard">create it on the dashboard</a>.</p></section>"#.into(),
    };
    let mfa = if user.mfa_enabled() {
        r#"<p>Two-factor authentication is <strong>on</strong>.</p>
<form id="mfa-disable-form">
  <div class="field"><label for="mfa-disable-password">Password</label><input id="mfa-disable-password" name="password" type="password" autocomplete="current-password" required data-field="password"></div>
  <div class="field"><label for="mfa-disable-code">Current code</label><input id="mfa-disable-code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required data-field="code"></div>
  <p class="form-error" id="mfa-error" role="alert"></p>
  <button type="submit" class="button danger">Turn off two-factor authentication</button>
</form>"#.to_string()
    } else {
        r#"<p>Two-factor authentication is <strong>off</strong>.</p>
<button type="button" class="button" id="mfa-setup">Set up an authenticator app</button>
<div id="mfa-enroll" hidden>
  <p>Add this secret to your authenticator app (or open the link on your phone), then enter the code it shows.</p>
  <p>Secret: <code id="mfa-secret"></code></p>
  <p><a id="mfa-uri">otpauth link</a></p>
  <form id="mfa-enable-form">
    <div class="field"><label for="mfa-enable-code">Code from the app</label><input id="mfa-enable-code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required data-field="code"></div>
    <button type="submit" class="button primary">Turn on</button>
  </form>
</div>
<p class="form-error" id="mfa-error" role="alert"></p>
<div id="mfa-done" hidden><p role="status">Two-factor authentication is on. Keep these recovery codes somewhere safe; each works once:</p><ul id="mfa-codes" class="codes"></ul></div>"#.to_string()
    };
    let deletion = match user.deletion_requested_at {
        Some(at) => format!(
            r#"<p>Deletion requested on {}. <button type="button" class="button" id="restore-account">Keep my account</button></p>"#,
            esc(&rfc3339(at))
        ),
        None => format!(
            r#"<p>Your account and instance are deleted {} days after you ask; until then you can change your mind.</p>
<form id="delete-form">
  <div class="field"><label for="delete-confirm">Type DELETE to confirm</label><input id="delete-confirm" name="confirm" type="text" autocomplete="off" required></div>
  <button type="submit" class="button danger">Delete my account</button>
</form>"#,
            state.ctx.config.limits.deletion_grace_days
        ),
    };
    let body = format!(
        r#"<h1>Settings</h1>
<div class="grid">
{instance_section}
<section class="card" aria-labelledby="prefs-h">
  <h2 id="prefs-h">Preferences</h2>
  <form id="prefs-form">
    <div class="field"><label for="timezone">Time zone</label>
      <input id="timezone" name="timezone" type="text" list="timezones" value="{tz}" autocomplete="off" required data-field="timezone">
      <datalist id="timezones">{tz_options}</datalist></div>
    <div class="field"><label for="language">Language</label>
      <select id="language" name="language" data-field="language" aria-describedby="language-hint">{lang_options}</select>
      <p class="hint" id="language-hint">Saved for when the dashboard and your assistant's defaults are translated; pages are in English for now.</p></div>
    <p class="form-error" id="prefs-error" role="alert"></p>
    <p class="hint" id="prefs-result" role="status" aria-live="polite"></p>
    <button type="submit" class="button primary">Save preferences</button>
  </form>
</section>
<section class="card" aria-labelledby="keys-h">
  <h2 id="keys-h">AI providers</h2>
  <table class="table"><caption class="visually-hidden">Your provider keys</caption>
    <thead><tr><th scope="col">Provider</th><th scope="col">Key</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>{key_rows}</tbody></table>
  <form id="key-form">
    <div class="field"><label for="key-provider">Provider</label>
      <select id="key-provider" name="provider"><option value="openai">OpenAI</option><option value="anthropic">Anthropic</option><option value="google">Google</option><option value="custom">Custom (OpenAI-compatible)</option></select></div>
    <div class="field"><label for="key-value">API key</label><input id="key-value" name="key" type="password" autocomplete="off" required data-field="key"></div>
    <div class="field"><label for="key-base-url">Base URL (custom provider only)</label><input id="key-base-url" name="baseUrl" type="url" autocomplete="off" data-field="baseUrl"></div>
    <p class="form-error" id="key-error" role="alert"></p>
    <button type="submit" class="button primary">Save key</button>
  </form>
</section>
<section class="card" aria-labelledby="mfa-h">
  <h2 id="mfa-h">Two-factor authentication</h2>
  {mfa}
</section>
<section class="card" aria-labelledby="data-h">
  <h2 id="data-h">Your data</h2>
  <p><a class="button" href="/api/account/export" download="clawdeploy-export.json">Export my data (JSON)</a></p>
  <h3>Delete account</h3>
  {deletion}
  <p class="form-error" id="delete-error" role="alert"></p>
  <p class="hint" id="delete-result" role="status" aria-live="polite"></p>
</section>
</div>"#,
        tz = esc(&user.timezone),
    );
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
    let rows: String = events
        .iter()
        .map(|e| {
            format!(
                "<tr><td><time datetime=\"{at}\">{at}</time></td><td>{ev}</td><td>{ip}</td><td class=\"ua\">{ua}</td><td>{detail}</td></tr>",
                at = esc(&rfc3339(e.created_at)),
                ev = esc(&e.event.replace('_', " ")),
                ip = esc(e.ip.as_deref().unwrap_or("")),
                ua = esc(e.user_agent.as_deref().unwrap_or("")),
                detail = esc(e.detail.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let body = format!(
        r#"<h1>Security log</h1>
<p class="muted">Sign-ins (successful and failed), key and two-factor changes, exports and deletions on your account, newest first. Something you do not recognise? Change your password in Settings and turn on two-factor authentication.</p>
<div class="table-wrap"><table class="table" id="security-log">
<caption class="visually-hidden">Security events</caption>
<thead><tr><th scope="col">When (UTC)</th><th scope="col">Event</th><th scope="col">IP address</th><th scope="col">Browser</th><th scope="col">Detail</th></tr></thead>
<tbody>{rows}</tbody></table></div>"#
    );
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
    let rows: String = state
        .store
        .list_custom_domains_of(auth.user.id)
        .await
        .unwrap_or_default()
        .iter()
        .map(|d| {
            format!(
                "<tr><td><code>{host}</code></td><td>{status}</td><td>CNAME <code>{host}</code> → <code>{target}</code><br>TXT <code>_clawdeploy-challenge.{host}</code> = <code>{token}</code></td><td>{reason}</td><td>{recheck}<button type=\"button\" class=\"button danger small\" data-delete-domain=\"{host}\">Remove <span class=\"visually-hidden\">{host}</span></button></td></tr>",
                // Not yet active: the owner may ask for a check now (after fixing DNS, or
                // before a failed domain's backoff is over).
                recheck = if d.status == clawdeploy_store::DomainStatus::Active {
                    String::new()
                } else {
                    format!(
                        "<button type=\"button\" class=\"button small\" data-verify-domain=\"{host}\">Check again <span class=\"visually-hidden\">{host}</span></button> ",
                        host = esc(&d.hostname)
                    )
                },
                host = esc(&d.hostname),
                status = esc(d.status.as_str()),
                target = esc(&target),
                token = esc(&d.token),
                reason = esc(d.reason.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let list = if rows.is_empty() {
        String::new()
    } else {
        format!(
            r#"<div class="table-wrap"><table class="table"><caption>Your domains</caption>
<thead><tr><th scope="col">Domain</th><th scope="col">Status</th><th scope="col">Records</th><th scope="col">What to fix</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
<tbody>{rows}</tbody></table></div>"#
        )
    };
    let body = format!(
        r#"<h1>Custom domains</h1>
<section class="card wide" aria-labelledby="records-h">
<h2 id="records-h">Use your own domain</h2>
<p>Point a domain you own at your instance with this DNS record at your DNS provider:</p>
<div class="table-wrap"><table class="table"><caption class="visually-hidden">DNS record to create</caption>
<thead><tr><th scope="col">Type</th><th scope="col">Name</th><th scope="col">Value</th></tr></thead>
<tbody><tr><td>CNAME</td><td>your domain (e.g. <code>claw.example.com</code>)</td><td><code>{target}</code></td></tr></tbody></table></div>
<p class="notice" role="note">Custom domains come with the Pro tier and up. A domain is served over HTTPS, with its own certificate, once its CNAME and TXT records are seen. The TXT value is yours alone: whoever's records are seen first owns the domain, and a domain whose records are not seen within {ttl} is removed. Your instance is reachable at <strong>{target}</strong>.</p>
<form id="domain-form" novalidate>
  <div class="field"><label for="hostname">Domain</label>
    <input id="hostname" name="hostname" type="text" autocomplete="off" autocapitalize="none" spellcheck="false" placeholder="claw.example.com" required data-field="hostname" aria-describedby="hostname-error">
    <p class="field-error" id="hostname-error"></p></div>
  <p class="form-error" id="domain-error" role="alert"></p>
  <button type="submit" class="button primary">Add domain</button>
</form>
{list}
</section>"#,
        target = esc(&target),
        ttl = esc(&ttl_text(state.ctx.config.domains.unverified_ttl_secs)),
    );
    Page::new("Custom domains · ClawDeploy", "domains")
        .user(Some(&auth.user))
        .html(body)
}

/// Plans and limits; where the chat's quota refusal links to (`metering.upgrade_url` defaults to
/// `<app>/billing`). Payment is later work: upgrades are made by an operator.
async fn billing(State(state): State<ApiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(auth) = signed_in(&state, &headers).await else {
        return to_login(&uri);
    };
    let rows: String = Tier::ALL
        .into_iter()
        .map(|tier| {
            let (messages, tokens) = tier_limits(&state, tier);
            let show = |v: Option<i64>| v.map_or("unlimited".to_string(), |v| v.to_string());
            let current = if tier == auth.user.tier {
                " (your plan)"
            } else {
                ""
            };
            format!(
                "<tr><th scope=\"row\">{tier}{current}</th><td>{}</td><td>{}</td></tr>",
                show(messages),
                show(tokens)
            )
        })
        .collect();
    let body = format!(
        r#"<h1>Plan and billing</h1>
<section class="card wide" aria-labelledby="plans-h">
<h2 id="plans-h">Plans</h2>
<div class="table-wrap"><table class="table"><caption class="visually-hidden">Monthly limits per plan</caption>
<thead><tr><th scope="col">Plan</th><th scope="col">Messages a month</th><th scope="col">AI tokens a month</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<p class="notice" role="note">Online payment is not available yet. To upgrade, ask the operator of this ClawDeploy server; your instance keeps its data and address when the plan changes. Message counts reset on the first of each month (UTC).</p>
</section>"#
    );
    Page::new("Plan and billing · ClawDeploy", "billing")
        .user(Some(&auth.user))
        .html(body)
}

fn json_table(caption: &str, rows: &[Value], columns: &[(&str, &str)]) -> String {
    let head: String = columns
        .iter()
        .map(|(_, title)| format!("<th scope=\"col\">{}</th>", esc(title)))
        .collect();
    let body: String = rows
        .iter()
        .map(|row| {
            let cells: String = columns
                .iter()
                .map(|(pointer, _)| {
                    let v = row.pointer(pointer).cloned().unwrap_or(Value::Null);
                    let text = match v {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    format!("<td>{}</td>", esc(&text))
                })
                .collect();
            format!("<tr>{cells}</tr>")
        })
        .collect();
    format!(
        r#"<div class="table-wrap"><table class="table"><caption>{}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"#,
        esc(caption)
    )
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
    let admin = || crate::admin::Admin;
    let nodes = crate::admin::nodes(admin(), State(state.clone()))
        .await
        .map(|j| j.0)
        .unwrap_or_default();
    let instances = crate::admin::instances(
        admin(),
        State(state.clone()),
        Ok(Query(crate::admin::InstancesQuery::default())),
    )
    .await
    .map(|j| j.0)
    .unwrap_or_default();
    let node_rows = nodes["nodes"].as_array().cloned().unwrap_or_default();
    let inst_rows = instances["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let body = format!(
        "<h1>Operator</h1><section class=\"card wide\"><h2>Nodes</h2>{}</section><section class=\"card wide\"><h2>Pool</h2>{}</section><section class=\"card wide\"><h2>Instances ({})</h2>{}</section>",
        json_table(
            "Edge nodes",
            &node_rows,
            &[("/id", "Node"), ("/listen", "Listen"), ("/status", "Status"), ("/database", "Database"), ("/routes/instances", "Instance routes")]
        ),
        json_table(
            "Containers per node",
            &node_rows,
            &[("/id", "Node"), ("/runtime", "Runtime"), ("/containers/idle", "Idle"), ("/containers/creating", "Creating"), ("/containers/assigned", "Assigned"), ("/containers/queued", "Queued"), ("/containers/capacity", "Capacity")]
        ),
        inst_rows.len(),
        json_table(
            "Every instance",
            &inst_rows,
            &[("/subdomain", "Subdomain"), ("/status", "Status"), ("/tier", "Tier"), ("/nodeId", "Node"), ("/upstream", "Upstream"), ("/userId", "User"), ("/createdAt", "Created")]
        ),
    );
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
    let body = format!(
        r#"<section class="card narrow"><h1>{}</h1><p>{}</p><p><a class="button" href="/dashboard">Go to your dashboard</a> <a class="button" href="/">Home</a></p></section>"#,
        esc(title),
        esc(message)
    );
    let mut response = Page::new(&format!("{title} · ClawDeploy"), "error")
        .user(user)
        .html(body);
    *response.status_mut() = status;
    response
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
}
