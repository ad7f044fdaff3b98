//! The one list of endpoints. [`crate::router`] serves exactly these, and [`document`] describes
//! exactly these as OpenAPI 3.1 at `/api/openapi.json`.

use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::{account, admin, auth, chat, domains, host_sessions, instances, skills, ApiState};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials.
    Public,
    /// `Authorization: Bearer <access token>`, or the dashboard's session cookie.
    User,
    /// `Authorization: Bearer <admin token | operator's access token>`.
    Admin,
}

/// One documented endpoint.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The HTTP method, lower case (`get`, `post`…), as OpenAPI spells it.
    pub method: &'static str,
    /// The axum path, `{name}` for a path parameter (`/admin/routes/{host}`).
    pub path: &'static str,
    /// The OpenAPI tag that groups it (`auth`, `account`, `instances`, `admin`…).
    pub tag: &'static str,
    /// One line on what it does, for the document's readers.
    pub summary: &'static str,
    /// Who may call it; the handler's extractors enforce it, this only documents it.
    pub access: Access,
    /// Success status and what it returns.
    pub ok: (u16, &'static str),
    /// Request body fields (name, type, required), when the endpoint takes JSON.
    pub body: &'static [(&'static str, &'static str, bool)],
    /// Query parameters.
    pub query: &'static [&'static str],
}

type Handler = MethodRouter<ApiState>;

macro_rules! ep {
    ($method:ident $path:literal, $handler:expr, $tag:literal, $access:ident, $ok:literal $ok_text:literal, $summary:literal $(, body: [$(($f:literal, $t:literal, $r:literal)),* $(,)?])? $(, query: [$($q:literal),*])?) => {
        (
            Spec {
                method: stringify!($method),
                path: $path,
                tag: $tag,
                summary: $summary,
                access: Access::$access,
                ok: ($ok, $ok_text),
                body: &[$($(($f, $t, $r)),*)?],
                query: &[$($($q),*)?],
            },
            $method($handler),
        )
    };
}

/// Every endpoint the control API serves.
pub fn endpoints() -> Vec<(Spec, Handler)> {
    vec![
        ep!(get "/healthz", crate::healthz, "health", Public, 200 "Alive", "Liveness"),
        ep!(get "/readyz", crate::readyz, "health", Public, 200 "Ready (503 while draining)", "Readiness"),
        ep!(get "/api/openapi.json", openapi_json, "meta", Public, 200 "This document", "The OpenAPI 3.1 description of this API"),
        // Authentication
        ep!(post "/api/auth/register", auth::register, "auth", Public, 201 "The new user, an access token and a refresh token",
            "Create an account (a verification mail is sent; the account may deploy at once)",
            body: [("email", "string", true), ("password", "string", true), ("name", "string", false), ("timezone", "string", false)]),
        ep!(post "/api/auth/login", auth::login, "auth", Public, 200 "The user, an access token and a refresh token",
            "Log in; throttled per account and per IP; mfaCode needed when MFA is on",
            body: [("email", "string", true), ("password", "string", true), ("mfaCode", "string", false)]),
        ep!(post "/api/auth/refresh", auth::refresh, "auth", Public, 200 "A new access token and a new refresh token (the old one stops working)",
            "Rotate a refresh token; reusing an old one ends the session",
            body: [("refreshToken", "string", true)]),
        ep!(post "/api/auth/logout", auth::logout, "auth", User, 204 "Session ended", "End this session (its access and refresh tokens stop working)"),
        // Browser sessions on instance hosts
        ep!(get "/api/session/handoff", host_sessions::handoff_redirect, "session", User, 303 "A redirect to <instance host>/_clawdeploy/session?code=... (the code works once, on that host, for sessions.code_ttl_secs)",
            "Hand this login over to one of your instances: next is the instance URL the dashboard's /login?next= received", query: ["next"]),
        ep!(post "/api/session/handoff", host_sessions::handoff_json, "session", User, 200 "{redirect, expiresIn}: the URL to navigate to (same as the GET's Location)",
            "The handoff as JSON, for a page that navigates itself",
            body: [("next", "string", true)]),
        ep!(get "/_clawdeploy/session", host_sessions::exchange, "session", Public, 303 "The instance host's session cookie (host-only, HttpOnly, SameSite=Lax, Secure over HTTPS) and a redirect to the next path",
            "On an instance host only (the edge passes this path to the control plane): redeem a one-time code", query: ["code"]),
        ep!(get "/api/auth/verify-email", auth::verify_email_link, "auth", Public, 200 "Verified", "The link in the verification mail", query: ["token"]),
        ep!(post "/api/auth/verify-email", auth::verify_email, "auth", Public, 200 "Verified", "Verify an email address with the mailed token",
            body: [("token", "string", true)]),
        ep!(post "/api/auth/resend-verification", auth::resend_verification, "auth", User, 202 "Mail sent", "Send a new verification link"),
        ep!(post "/api/auth/forgot-password", auth::forgot_password, "auth", Public, 202 "Accepted (the same answer whether or not the account exists)",
            "Mail a password reset link, valid one hour, single use",
            body: [("email", "string", true)]),
        ep!(get "/api/auth/reset-password", auth::reset_password_link, "auth", Public, 200 "Whether the link can still be used",
            "The link in the reset mail", query: ["token"]),
        ep!(post "/api/auth/reset-password", auth::reset_password, "auth", Public, 200 "Password changed, every session ended",
            "Set a new password with the mailed token",
            body: [("token", "string", true), ("password", "string", true)]),
        ep!(post "/api/auth/browser-session", auth::browser_session, "auth", User, 200 "The user; Set-Cookie carries the dashboard session (HttpOnly, SameSite=Lax)",
            "Turn an access token into the dashboard's session cookie; cookie-authenticated calls other than GET must send X-CSRF-Protection"),
        ep!(post "/api/auth/mfa/setup", auth::mfa_setup, "auth", User, 200 "A TOTP secret and otpauth URL", "Start TOTP setup"),
        ep!(post "/api/auth/mfa/enable", auth::mfa_enable, "auth", User, 200 "MFA on, with one-time recovery codes",
            "Turn TOTP on by proving a code", body: [("secret", "string", true), ("code", "string", true)]),
        ep!(post "/api/auth/mfa/disable", auth::mfa_disable, "auth", User, 200 "MFA off",
            "Turn TOTP off", body: [("password", "string", true), ("code", "string", true)]),
        // Account
        ep!(get "/api/account", account::me, "account", User, 200 "The user", "Your profile"),
        ep!(patch "/api/account", account::update_profile, "account", User, 200 "The updated user",
            "Update name, email (becomes unverified), timezone, language (en, de, es, fr, it, ja, pt, zh), avatar URL",
            body: [("name", "string|null", false), ("email", "string", false), ("timezone", "string", false), ("language", "string", false), ("avatarUrl", "string|null", false)]),
        ep!(delete "/api/account", account::request_deletion, "account", User, 202 "Deletion scheduled",
            "Delete the account after the grace period (30 days by default)"),
        ep!(post "/api/account/restore", account::restore, "account", User, 200 "Deletion cancelled", "Undo a pending deletion"),
        ep!(post "/api/account/password", account::change_password, "account", User, 200 "Changed; other sessions ended",
            "Change the password", body: [("currentPassword", "string", true), ("newPassword", "string", true)]),
        ep!(get "/api/account/api-keys", account::list_api_keys, "account", User, 200 "Keys, masked", "Your provider API keys (masked)"),
        ep!(put "/api/account/api-keys/{provider}", account::put_api_key, "account", User, 200 "The key, masked",
            "Set the key of openai, anthropic, google or custom (custom needs baseUrl); stored encrypted",
            body: [("key", "string", true), ("baseUrl", "string", false)]),
        ep!(delete "/api/account/api-keys/{provider}", account::delete_api_key, "account", User, 204 "Deleted", "Remove a provider key"),
        ep!(get "/api/account/security-log", account::security_log, "account", User, 200 "Events, newest first",
            "Logins (success and failure), IPs, user agents, MFA and key changes", query: ["limit", "before"]),
        ep!(get "/api/account/export", account::export, "account", User, 200 "Everything stored about you (no secrets)", "Data export (JSON)"),
        // Instances
        ep!(post "/api/instances", instances::create, "instances", User, 201 "The instance (provisioning) and what is pending",
            "Create your instance; a requested subdomain is used as given when free",
            body: [("subdomain", "string", false), ("apiKeys", "object", false), ("soulMd", "string", false), ("timezone", "string", false), ("preset", "string", false)]),
        ep!(get "/api/subdomains/{label}", instances::subdomain_availability, "instances", Public, 200 "available, and when not: reason (invalid, reserved, taken), message and a free suggestion",
            "Whether a subdomain can be had (the signup page's live check)"),
        ep!(get "/api/instances/me/chat", chat::chat, "instances", User, 101 "WebSocket: the instance gateway's frames, plus bridge.ready, bridge.error and bridge.closed events",
            "The dashboard's chat: a WebSocket bridged through the edge to your instance's gateway under your identity (same owner check and metering); cookie or bearer auth, browser Origin must be the app domain"),
        ep!(get "/api/instances/me", instances::get_me, "instances", User, 200 "Your instance with this month's usage", "Your instance"),
        ep!(get "/api/usage", crate::usage::series, "instances", User, 200 "Daily messages and tokens of your instance, oldest first",
            "Usage series for analytics (default: this month to today, UTC days)", query: ["from", "to"]),
        ep!(patch "/api/instances/me", instances::patch_me, "instances", User, 200 "Updated; says whether a restart is needed",
            "Update the subdomain, API keys, SOUL.md, timezone",
            body: [("subdomain", "string", false), ("apiKeys", "object", false), ("soulMd", "string|null", false), ("timezone", "string", false)]),
        ep!(post "/api/instances/me/restart", instances::restart, "instances", User, 202 "Restart requested", "Restart your instance"),
        ep!(delete "/api/instances/me", instances::delete_me, "instances", User, 200 "Stopped and scheduled for deletion after the grace period",
            "Cancel your instance (kept stopped for the grace period, then archived)"),
        ep!(post "/api/instances/me/restore", instances::restore_me, "instances", User, 202 "Restored and restarting",
            "Undo a cancellation within its grace period"),
        // Skills
        ep!(get "/api/skills", skills::list, "skills", User, 200 "The catalogue with what your instance has installed and enabled, the categories and your tier's cap",
            "Browse installable skills", query: ["category", "q"]),
        ep!(post "/api/skills/install", skills::install, "skills", User, 201 "The installed skill",
            "Install a skill in your instance (no restart); secret config is sealed and never shown again",
            body: [("skillId", "string", true), ("config", "object", false)]),
        ep!(patch "/api/skills/{id}", skills::change, "skills", User, 200 "The changed skill",
            "Change a skill's config (merged; a secret given is replaced) or enable/disable it",
            body: [("config", "object", false), ("enabled", "boolean", false)]),
        ep!(delete "/api/skills/{id}", skills::uninstall, "skills", User, 200 "Uninstalled", "Uninstall a skill"),
        ep!(get "/api/presets", skills::list_presets, "skills", User, 200 "The agent presets and your instance's",
            "Agent presets: a SOUL.md, an AGENTS.md and starting skills"),
        ep!(post "/api/instances/me/preset", skills::apply_preset, "skills", User, 200 "Applied: what was installed and skipped",
            "Apply an agent preset (409 SOUL_EDITED before replacing your own SOUL.md)",
            body: [("preset", "string", true), ("replaceSoul", "boolean", false)]),
        // Admin
        ep!(get "/admin/routes", admin::list_routes, "admin", Admin, 200 "Every route", "The edge's route table"),
        ep!(get "/admin/routes/{host}", admin::get_route, "admin", Admin, 200 "The route", "One route"),
        ep!(put "/admin/routes/{host}", admin::upsert_route, "admin", Admin, 200 "Replaced (201 when created)",
            "Create or replace an operator route", body: [("upstream", "string", true)]),
        ep!(delete "/admin/routes/{host}", admin::delete_route, "admin", Admin, 204 "Removed", "Remove an operator route"),
        ep!(get "/admin/nodes", admin::nodes, "admin", Admin, 200 "Edge nodes", "Edge nodes and their health"),
        ep!(get "/admin/instances", admin::instances, "admin", Admin, 200 "Instances", "Every instance", query: ["status"]),
        ep!(post "/admin/instances/migrate", admin::migrate_instance, "admin", Admin, 501 "Not implemented yet",
            "Move an instance to another node (501 until the pool issue)", body: [("instanceId", "string", true), ("targetNode", "string", true)]),
        // Custom domains (issue #6)
        ep!(post "/api/domains", domains::create, "domains", User, 201 "The domain and the DNS records to create (CNAME and TXT)",
            "Add your own domain (Pro tier and up); it is served once its records are seen and its certificate issued",
            body: [("hostname", "string", true)]),
        ep!(get "/api/domains", domains::list, "domains", User, 200 "Your domains with status (pending_dns, verifying, issuing, active, failed), reason and records",
            "Your custom domains"),
        ep!(post "/api/domains/{hostname}/verify", domains::verify, "domains", User, 202 "Checking again: the domain, now verifying (200 and unchanged when already active)",
            "Check a domain again now (after fixing its DNS, or to retry a failed one before its backoff is over)"),
        ep!(delete "/api/domains/{hostname}", domains::delete, "domains", User, 204 "Removed with its route and certificate", "Remove a custom domain"),
        ep!(get "/admin/certificates", domains::list_certificates, "admin", Admin, 200 "Certificates (no key material)", "Every certificate the edge serves"),
        ep!(post "/admin/certificates/{name}/renew", domains::renew_certificate, "admin", Admin, 200 "The renewed certificate", "Renew a certificate now"),
        ep!(get "/admin/users", admin::users, "admin", Admin, 200 "Users", "Every user", query: ["limit", "offset"]),
        ep!(put "/admin/users/{id}/tier", admin::set_tier, "admin", Admin, 200 "The user and its instances",
            "Change a user's tier (billing by hand); an unverified account cannot be upgraded", body: [("tier", "string", true)]),
        ep!(get "/admin/outbox", admin::outbox, "admin", Admin, 200 "Mails, newest first",
            "Mail kept when no SMTP relay is configured", query: ["to", "limit"]),
    ]
}

async fn openapi_json() -> Json<Value> {
    Json(document())
}

fn schema_of(ty: &str) -> Value {
    match ty {
        "string|null" => json!({ "type": ["string", "null"] }),
        "object" => {
            json!({ "type": "object", "additionalProperties": { "type": ["string", "null"] } })
        }
        other => json!({ "type": other }),
    }
}

/// The OpenAPI 3.1 document of [`endpoints`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for (spec, _) in endpoints() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(spec.summary));
        op.insert("tags".into(), json!([spec.tag]));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                spec.method,
                spec.path.replace(['/', '{', '}', '.', '-'], "_")
            )),
        );
        let mut params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(spec.query.iter().map(
            |name| json!({ "name": name, "in": "query", "required": *name == "token", "schema": { "type": "string" } }),
        ));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if !spec.body.is_empty() {
            let props: Map<String, Value> = spec
                .body
                .iter()
                .map(|(name, ty, _)| (name.to_string(), schema_of(ty)))
                .collect();
            let required: Vec<&str> = spec.body.iter().filter(|f| f.2).map(|f| f.0).collect();
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "properties": props, "required": required, "additionalProperties": false
                } } } }),
            );
        }
        let mut responses = Map::new();
        let ok = if spec.ok.0 == 204 {
            json!({ "description": spec.ok.1 })
        } else {
            json!({ "description": spec.ok.1, "content": { "application/json": { "schema": { "type": "object" } } } })
        };
        responses.insert(spec.ok.0.to_string(), ok);
        responses.insert(
            "default".into(),
            json!({ "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
        op.insert("responses".into(), Value::Object(responses));
        match spec.access {
            Access::Public => {
                op.insert("security".into(), json!([]));
            }
            Access::User => {
                op.insert("security".into(), json!([{ "bearerAuth": [] }]));
            }
            Access::Admin => {
                op.insert("security".into(), json!([{ "adminToken": [] }]));
            }
        }
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(spec.method.to_string(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ClawDeploy API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Accounts, authentication, instances and operator endpoints of ClawDeploy. Served on the app domain. Errors are {\"error\":{\"code\":\"SNAKE_CASE\",\"message\":\"...\"}}; validation errors name the field."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "Access token from /api/auth/login (HS256, 7 days)" },
                "adminToken": { "type": "http", "scheme": "bearer", "description": "The config's admin_token, a named admin token (clawdeploy admin create-token), or an operator's access token" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": { "type": "string", "pattern": "^[A-Z][A-Z0-9_]*$" },
                            "message": { "type": "string" },
                            "field": { "type": "string" },
                            "suggestion": { "type": "string" }
                        }
                    } }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for (spec, _) in endpoints() {
            assert!(
                seen.insert((spec.method, spec.path)),
                "{} {} twice",
                spec.method,
                spec.path
            );
        }
    }
}
