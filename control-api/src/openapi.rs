//! The one list of endpoints, and the OpenAPI 3.1 document made from it. [`crate::router`] serves
//! exactly these, and [`document`] describes exactly these at `/api/openapi.json`.
//!
//! # Why the document cannot drift from the code
//! - **One list.** [`endpoints`] pairs each endpoint's [`Spec`] with its handler; the router and the
//!   document are both built from it, so an endpoint is served if and only if it is documented.
//! - **Schemas are derived from the structs the handlers use.** The list names each endpoint's
//!   request body, query and success body as Rust types. Their schemas come from
//!   `#[derive(utoipa::ToSchema)]` / `#[derive(utoipa::IntoParams)]` on those very structs, which
//!   read the same serde attributes (`rename_all`, `skip_serializing_if`, `deny_unknown_fields`,
//!   `flatten`) the handlers' (de)serialization obeys. Types of other crates that appear in a body
//!   (tiers, statuses, masked keys, routes, certificates) derive theirs behind those crates'
//!   `openapi` feature, on the types themselves.
//! - **The compiler checks that the list names the handler's own types.** `ep!` passes every
//!   handler through [`check::returns`], which only compiles when the handler's return type
//!   answers with the success type the list names ([`Reply<T>`], `(StatusCode, Reply<T>)`, with
//!   headers, or a `Result<_, ApiError>` of those; [`NoBody`] for 204s, redirects and the
//!   WebSocket), and, when the list names a body, through [`check::takes`], which only compiles
//!   when the handler's last extractor deserializes that type. A handler answering
//!   `impl IntoResponse` or a `json!` value does not compile in the list.
//! - **One error shape.** Every operation's `default` response is the `Error` component, the body
//!   [`ApiError`] answers with.
//!
//! `tests/it/openapi.rs` checks the rest from outside: every documented operation is served, and
//! real answers of the running binary validate against the schema the document gives for them.
//!
//! [`ApiError`]: crate::ApiError

use std::future::Future;

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::{
    account, admin, agents, auth, billing, channels, chat, domains, host_sessions, instances,
    skills, usage, ApiState,
};

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

/// Schemas named by the document, collected while it is built: `(component name, schema)`.
pub type Components = Vec<(String, RefOr<Schema>)>;
/// Adds a type's schema (and those it refers to) to the components; a `$ref` to it.
pub type SchemaFn = fn(&mut Components) -> RefOr<Schema>;
/// A query type's parameters.
pub type ParamsFn = fn() -> Vec<Parameter>;

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
    /// Success status and what it means.
    pub ok: (u16, &'static str),
    /// The success body's type (`None`: no JSON body), checked against the handler by `ep!`.
    pub response: Option<SchemaFn>,
    /// The JSON request body's type, checked against the handler's last extractor by `ep!`.
    pub body: Option<SchemaFn>,
    /// The query's type.
    pub query: Option<ParamsFn>,
}

/// A JSON success body of type `T`. Serialized through [`serde_json::Value`], whose objects keep
/// their keys sorted: the answers are byte for byte those of the `json!` bodies they replaced.
#[derive(Debug, Clone)]
pub struct Reply<T>(pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(value) => Json(value).into_response(),
            Err(e) => ApiError::internal("serializing a response", e).into_response(),
        }
    }
}

/// A JSON body of type `T` for programs, or, for a browser that navigated to a mailed link, a
/// redirect to the page made for people (content negotiation).
pub enum ReplyOrPage<T> {
    /// The API's answer.
    Reply(Reply<T>),
    /// Where a browser goes instead.
    Page(Response),
}

impl<T: Serialize> IntoResponse for ReplyOrPage<T> {
    fn into_response(self) -> Response {
        match self {
            Self::Reply(reply) => reply.into_response(),
            Self::Page(page) => page,
        }
    }
}

/// The success body of an endpoint that answers without JSON: a 204, a redirect, a WebSocket.
#[derive(Debug, Clone, Copy)]
pub struct NoBody;

fn schema_ref<T: ToSchema>(components: &mut Components) -> RefOr<Schema> {
    components.push((T::name().into_owned(), T::schema()));
    T::schemas(components);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn query_params<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

/// Compile-time checks that an endpoint's [`Spec`] names its handler's own types.
pub mod check {
    use super::*;

    /// What a handler answers with, as a success body type.
    pub trait Answer {
        /// The success body's type: `T` of [`Reply<T>`], or [`NoBody`].
        type Body;
    }
    impl<T> Answer for Reply<T> {
        type Body = T;
    }
    impl<T> Answer for (StatusCode, Reply<T>) {
        type Body = T;
    }
    impl<T> Answer for super::ReplyOrPage<T> {
        type Body = T;
    }
    impl<T, V, const N: usize> Answer for ([(HeaderName, V); N], Reply<T>) {
        type Body = T;
    }
    impl<T, V, const N: usize> Answer for (StatusCode, [(HeaderName, V); N], Reply<T>) {
        type Body = T;
    }
    impl Answer for StatusCode {
        type Body = NoBody;
    }
    impl<V, const N: usize> Answer for (StatusCode, [(HeaderName, V); N]) {
        type Body = NoBody;
    }
    /// A redirect or a WebSocket upgrade, built by hand.
    impl Answer for Response {
        type Body = NoBody;
    }
    /// An endpoint that only ever fails (`501` until implemented).
    impl Answer for ApiError {
        type Body = NoBody;
    }
    impl<A: Answer> Answer for Result<A, ApiError> {
        type Body = A::Body;
    }

    /// An async function's arguments (`Args`) and output: a handler's extractors and answer.
    pub trait HandlerFn<Args> {
        /// What the handler returns.
        type Output;
    }
    /// The last of a handler's arguments: the one that may read the body.
    pub trait LastArg {
        /// Its type.
        type Last;
    }
    macro_rules! handler_fn {
        ($($arg:ident),*) => {
            impl<F, Fut, $($arg,)*> HandlerFn<($($arg,)*)> for F
            where
                F: FnOnce($($arg),*) -> Fut,
                Fut: Future,
            {
                type Output = Fut::Output;
            }
        };
    }
    macro_rules! last_arg {
        ($($arg:ident),* ; $last:ident) => {
            impl<$($arg,)* $last> LastArg for ($($arg,)* $last,) {
                type Last = $last;
            }
        };
    }
    handler_fn!();
    handler_fn!(A);
    handler_fn!(A, B);
    handler_fn!(A, B, C);
    handler_fn!(A, B, C, D);
    handler_fn!(A, B, C, D, E);
    handler_fn!(A, B, C, D, E, G);
    last_arg!(; A);
    last_arg!(A; B);
    last_arg!(A, B; C);
    last_arg!(A, B, C; D);
    last_arg!(A, B, C, D; E);
    last_arg!(A, B, C, D, E; G);

    /// Compiles only when `handler` answers with the success body `R`.
    pub fn returns<R, Args, H>(_handler: &H)
    where
        H: HandlerFn<Args>,
        H::Output: Answer<Body = R>,
    {
    }

    /// Compiles only when `handler`'s last extractor is the JSON body `B`.
    pub fn takes<B, Args, H>(_handler: &H)
    where
        H: HandlerFn<Args>,
        Args: LastArg<Last = Result<Json<B>, JsonRejection>>,
    {
    }
}

type Handler = MethodRouter<ApiState>;

/// One endpoint of the list: `method "path", handler, "tag", Access, "summary",` then optionally
/// `body: BodyType,` and `query: QueryType,`, then `ok: status => SuccessType, "what it means"`
/// (`ok: status, "..."` when the answer has no JSON body). The types are checked against the
/// handler's signature (see [`check`]).
macro_rules! ep {
    (@ty) => { NoBody };
    (@ty $t:ty) => { $t };
    (@schema) => { None };
    (@schema $t:ty) => { Some(schema_ref::<$t> as SchemaFn) };
    (@params) => { None };
    (@params $t:ty) => { Some(query_params::<$t> as ParamsFn) };
    ($method:ident $path:literal, $handler:expr, $tag:literal, $access:ident, $summary:literal,
     $(body: $body:ty,)? $(query: $query:ty,)? ok: $code:literal $(=> $ok:ty)?, $text:literal) => {{
        let handler = $handler;
        check::returns::<ep!(@ty $($ok)?), _, _>(&handler);
        $(check::takes::<$body, _, _>(&handler);)?
        (
            Spec {
                method: stringify!($method),
                path: $path,
                tag: $tag,
                summary: $summary,
                access: Access::$access,
                ok: ($code, $text),
                response: ep!(@schema $($ok)?),
                body: ep!(@schema $($body)?),
                query: ep!(@params $($query)?),
            },
            $method(handler),
        )
    }};
}

/// Every endpoint the control API serves.
pub fn endpoints() -> Vec<(Spec, Handler)> {
    vec![
        ep!(get "/healthz", crate::healthz, "health", Public, "Liveness", ok: 200 => crate::Health, "Alive"),
        ep!(get "/readyz", crate::readyz, "health", Public, "Readiness", ok: 200 => crate::Health, "Ready (503 while draining)"),
        ep!(get "/api/openapi.json", openapi_json, "meta", Public, "The OpenAPI 3.1 description of this API", ok: 200 => Document, "This document"),
        // Authentication
        ep!(post "/api/auth/register", auth::register, "auth", Public,
            "Create an account (a verification mail is sent; the account may deploy at once)",
            body: auth::RegisterBody, ok: 201 => auth::Tokens, "The new user, an access token and a refresh token"),
        ep!(post "/api/auth/login", auth::login, "auth", Public,
            "Log in; throttled per account and per IP; mfaCode needed when MFA is on",
            body: auth::LoginBody, ok: 200 => auth::Tokens, "The user, an access token and a refresh token"),
        ep!(post "/api/auth/refresh", auth::refresh, "auth", Public,
            "Rotate a refresh token; reusing an old one ends the session",
            body: auth::RefreshBody, ok: 200 => auth::Tokens, "A new access token and a new refresh token (the old one stops working)"),
        ep!(post "/api/auth/logout", auth::logout, "auth", User, "End this session (its access and refresh tokens stop working)",
            ok: 204, "Session ended"),
        // Browser sessions on instance hosts
        ep!(get "/api/session/handoff", host_sessions::handoff_redirect, "session", User,
            "Hand this login over to one of your instances: next is the instance URL the dashboard's /login?next= received",
            query: host_sessions::HandoffQuery,
            ok: 303, "A redirect to <instance host>/_clawdeploy/session?code=... (the code works once, on that host, for sessions.code_ttl_secs)"),
        ep!(post "/api/session/handoff", host_sessions::handoff_json, "session", User, "The handoff as JSON, for a page that navigates itself",
            body: host_sessions::HandoffBody, ok: 200 => host_sessions::Handoff, "The URL to navigate to (same as the GET's Location)"),
        ep!(get "/_clawdeploy/session", host_sessions::exchange, "session", Public,
            "On an instance host only (the edge passes this path to the control plane): redeem a one-time code",
            query: host_sessions::ExchangeQuery,
            ok: 303, "The instance host's session cookie (host-only, HttpOnly, SameSite=Lax, Secure over HTTPS) and a redirect to the next path"),
        ep!(get "/api/auth/verify-email", auth::verify_email_link, "auth", Public, "The link in the verification mail",
            query: auth::TokenQuery, ok: 200 => auth::Verified, "Verified"),
        ep!(post "/api/auth/verify-email", auth::verify_email, "auth", Public, "Verify an email address with the mailed token",
            body: auth::TokenQuery, ok: 200 => auth::Verified, "Verified"),
        ep!(post "/api/auth/resend-verification", auth::resend_verification, "auth", User, "Send a new verification link",
            ok: 202 => auth::VerificationSent, "Mail sent"),
        ep!(post "/api/auth/forgot-password", auth::forgot_password, "auth", Public, "Mail a password reset link, valid one hour, single use",
            body: auth::ForgotBody, ok: 202 => auth::Notice, "Accepted (the same answer whether or not the account exists)"),
        ep!(get "/api/auth/reset-password", auth::reset_password_link, "auth", Public, "The link in the reset mail",
            query: auth::TokenQuery, ok: 200 => auth::ResetLink, "Whether the link can still be used"),
        ep!(post "/api/auth/reset-password", auth::reset_password, "auth", Public, "Set a new password with the mailed token",
            body: auth::ResetBody, ok: 200 => auth::PasswordChanged, "Password changed, every session ended"),
        ep!(post "/api/auth/browser-session", auth::browser_session, "auth", User,
            "Turn an access token into the dashboard's session cookie; cookie-authenticated calls other than GET must send X-CSRF-Protection",
            ok: 200 => auth::UserReply, "The user; Set-Cookie carries the dashboard session (HttpOnly, SameSite=Lax)"),
        ep!(post "/api/auth/mfa/setup", auth::mfa_setup, "auth", User, "Start TOTP setup",
            ok: 200 => auth::MfaSetup, "A TOTP secret and otpauth URL"),
        ep!(post "/api/auth/mfa/enable", auth::mfa_enable, "auth", User, "Turn TOTP on by proving a code",
            body: auth::MfaEnableBody, ok: 200 => auth::MfaEnabled, "MFA on, with one-time recovery codes"),
        ep!(post "/api/auth/mfa/disable", auth::mfa_disable, "auth", User, "Turn TOTP off",
            body: auth::MfaDisableBody, ok: 200 => auth::MfaDisabled, "MFA off"),
        // Account
        ep!(get "/api/account", account::me, "account", User, "Your profile", ok: 200 => auth::UserReply, "The user"),
        ep!(patch "/api/account", account::update_profile, "account", User,
            "Update name, email (becomes unverified), timezone, language (en, de, es, fr, it, ja, pt, zh), avatar URL",
            body: account::ProfileBody, ok: 200 => auth::UserReply, "The updated user"),
        ep!(delete "/api/account", account::request_deletion, "account", User,
            "Delete the account after the grace period (30 days by default)",
            ok: 202 => account::DeletionScheduled, "Deletion scheduled"),
        ep!(post "/api/account/restore", account::restore, "account", User, "Undo a pending deletion",
            ok: 200 => account::Restored, "Deletion cancelled"),
        ep!(post "/api/account/password", account::change_password, "account", User, "Change the password",
            body: account::PasswordBody, ok: 200 => auth::PasswordChanged, "Changed; other sessions ended"),
        ep!(get "/api/account/api-keys", account::list_api_keys, "account", User, "Your provider API keys (masked)",
            ok: 200 => account::ApiKeys, "Keys, masked"),
        ep!(put "/api/account/api-keys/{provider}", account::put_api_key, "account", User,
            "Set the key of openai, anthropic, google or custom (custom needs baseUrl); stored encrypted",
            body: account::ApiKeyBody, ok: 200 => account::ApiKeyReply, "The key, masked"),
        ep!(delete "/api/account/api-keys/{provider}", account::delete_api_key, "account", User, "Remove a provider key",
            ok: 204, "Deleted"),
        ep!(get "/api/account/security-log", account::security_log, "account", User,
            "Logins (success and failure), IPs, user agents, MFA and key changes",
            query: account::LogQuery, ok: 200 => account::SecurityLog, "Events, newest first"),
        ep!(get "/api/account/export", account::export, "account", User, "Data export (JSON)",
            ok: 200 => account::Export, "Everything stored about you (no secrets)"),
        // Instances
        ep!(post "/api/instances", instances::create, "instances", User,
            "Create your instance; a requested subdomain is used as given when free",
            body: instances::CreateBody, ok: 201 => instances::InstanceReply, "The instance (provisioning) and what is pending"),
        ep!(post "/api/instances/check", instances::check, "instances", Public,
            "Check a new instance's subdomain, keys and preset before signing up (nothing is created)",
            body: instances::CreateBody, ok: 200 => instances::CheckReply, "Everything would be accepted"),
        ep!(get "/api/subdomains/{label}", instances::subdomain_availability, "instances", Public,
            "Whether a subdomain can be had (the signup page's live check)",
            ok: 200 => instances::Availability, "available, and when not: reason (invalid, reserved, taken), message and a free suggestion"),
        ep!(get "/api/instances/me/chat", chat::chat, "instances", User,
            "The dashboard's chat: a WebSocket bridged through the edge to your instance's gateway under your identity (same owner check and metering); cookie or bearer auth, browser Origin must be the app domain",
            ok: 101, "WebSocket: the instance gateway's frames, plus bridge.ready, bridge.error and bridge.closed events"),
        ep!(get "/api/instances/me", instances::get_me, "instances", User, "Your instance",
            ok: 200 => instances::MyInstanceReply, "Your instance with this month's usage"),
        ep!(get "/api/usage", usage::series, "instances", User,
            "Usage series for analytics (default: this month to today, UTC days)",
            query: usage::UsageQuery, ok: 200 => usage::UsageSeries, "Daily messages and tokens of your instance, oldest first"),
        ep!(patch "/api/instances/me", instances::patch_me, "instances", User, "Update the subdomain, API keys, SOUL.md, timezone",
            body: instances::PatchBody, ok: 200 => instances::Patched, "Updated; says whether a restart is needed"),
        ep!(post "/api/instances/me/restart", instances::restart, "instances", User, "Restart your instance",
            ok: 202 => instances::InstanceReply, "Restart requested"),
        ep!(delete "/api/instances/me", instances::delete_me, "instances", User,
            "Cancel your instance (kept stopped for the grace period, then archived)",
            ok: 200 => instances::Cancelled, "Stopped and scheduled for deletion after the grace period"),
        ep!(post "/api/instances/me/restore", instances::restore_me, "instances", User, "Undo a cancellation within its grace period",
            ok: 202 => instances::InstanceReply, "Restored and restarting"),
        // Skills and agents
        // Billing
        ep!(get "/api/billing", billing::overview, "billing", User,
            "Your plan, subscription, grace period, AI credits and usage against every limit",
            ok: 200 => billing::BillingView, "Plan and billing"),
        ep!(post "/api/billing/checkout", billing::checkout, "billing", User,
            "Subscribe to a tier (a Stripe Checkout URL), or move your subscription to another tier",
            body: billing::CheckoutBody, ok: 200 => billing::CheckoutReply, "Where to pay, or what changes"),
        ep!(post "/api/billing/portal", billing::portal, "billing", User, "Open Stripe's Customer Portal",
            body: billing::PortalBody, ok: 200 => billing::PortalReply, "The portal's URL"),
        ep!(post "/api/billing/cancel", billing::cancel, "billing", User,
            "Cancel your subscription at the end of the paid period, or undo that",
            body: billing::CancelBody, ok: 200 => billing::CancelReply, "When the plan ends"),
        ep!(get "/api/billing/invoices", billing::invoices, "billing", User, "Your invoices, from Stripe",
            ok: 200 => billing::Invoices, "Newest first"),
        ep!(post "/api/billing/credits", billing::buy_credits, "billing", User, "Buy an AI credit pack (a Stripe Checkout URL)",
            body: billing::CreditsBody, ok: 200 => billing::CheckoutReply, "Where to pay"),
        ep!(post "/api/billing/webhook", billing::webhook, "billing", Public,
            "Stripe's events, signed (Stripe-Signature); idempotent per event id",
            ok: 200 => billing::WebhookReply, "Received"),
        ep!(get "/api/skills", skills::list, "skills", User, "Browse installable skills",
            query: skills::CatalogueQuery,
            ok: 200 => skills::SkillList, "The catalogue with what your instance has installed and enabled, the categories and your tier's cap"),
        ep!(post "/api/skills/install", skills::install, "skills", User,
            "Install a skill in your instance (no restart); secret config is sealed and never shown again",
            body: skills::InstallBody, ok: 201 => skills::SkillChanged, "The installed skill"),
        ep!(patch "/api/skills/{id}", skills::change, "skills", User,
            "Change a skill's config (merged; a secret given is replaced) or enable/disable it",
            body: skills::ChangeBody, ok: 200 => skills::SkillChanged, "The changed skill"),
        ep!(delete "/api/skills/{id}", skills::uninstall, "skills", User, "Uninstall a skill",
            ok: 200 => skills::SkillRemoved, "Uninstalled"),
        ep!(get "/api/agents", agents::list, "skills", User, "Your instance's sub-agents and your tier's limit",
            ok: 200 => agents::AgentList, "Sub-agents as OpenClaw lists them"),
        ep!(post "/api/agents", agents::spawn, "skills", User,
            "Start a sub-agent on a task (a child session of the main agent; counted as a message)",
            body: agents::SpawnBody, ok: 202 => agents::Spawned, "Started"),
        ep!(get "/api/presets", skills::list_presets, "skills", User, "Agent presets: a SOUL.md, an AGENTS.md and starting skills",
            ok: 200 => skills::PresetList, "The agent presets and your instance's"),
        ep!(post "/api/instances/me/preset", skills::apply_preset, "skills", User,
            "Apply an agent preset (409 SOUL_EDITED before replacing your own SOUL.md)",
            body: skills::PresetBody, ok: 200 => skills::PresetApplied, "Applied: what was installed and skipped"),
        // Channels
        ep!(get "/api/instances/me/channels", channels::list, "channels", User,
            "The messaging channels your assistant can be reached through, connected or not, and your plan's limit",
            ok: 200 => channels::ChannelList, "Every channel kind"),
        ep!(put "/api/instances/me/channels/{kind}", channels::connect, "channels", User,
            "Connect a Telegram bot (or replace its token and the people it answers); the token is sealed and never shown again",
            body: channels::TelegramBody, ok: 200 => channels::ChannelChanged, "Connected"),
        ep!(delete "/api/instances/me/channels/{kind}", channels::disconnect, "channels", User,
            "Disconnect a channel and delete its token",
            ok: 200 => channels::ChannelChanged, "Disconnected"),
        // Admin
        ep!(get "/admin/routes", admin::list_routes, "admin", Admin, "The edge's route table", ok: 200 => admin::Routes, "Every route"),
        ep!(get "/admin/routes/{host}", admin::get_route, "admin", Admin, "One route",
            ok: 200 => clawdeploy_proxy::routes::RouteEntry, "The route"),
        ep!(put "/admin/routes/{host}", admin::upsert_route, "admin", Admin, "Create or replace an operator route",
            body: admin::UpsertRoute, ok: 200 => clawdeploy_proxy::routes::RouteEntry, "Replaced (201 when created)"),
        ep!(delete "/admin/routes/{host}", admin::delete_route, "admin", Admin, "Remove an operator route", ok: 204, "Removed"),
        ep!(get "/admin/nodes", admin::nodes, "admin", Admin, "Edge nodes and their health", ok: 200 => admin::Nodes, "Edge nodes"),
        ep!(get "/admin/instances", admin::instances, "admin", Admin, "Every instance",
            query: admin::InstancesQuery, ok: 200 => admin::Instances, "Instances"),
        ep!(post "/admin/instances/migrate", admin::migrate_instance, "admin", Admin,
            "Move an instance to another node (501 until the pool issue)",
            body: admin::MigrateBody, ok: 501, "Not implemented yet"),
        // Custom domains (issue #6)
        ep!(post "/api/domains", domains::create, "domains", User,
            "Add your own domain (Pro tier and up); it is served once its records are seen and its certificate issued",
            body: domains::DomainBody, ok: 201 => domains::DomainReply, "The domain and the DNS records to create (CNAME and TXT)"),
        ep!(get "/api/domains", domains::list, "domains", User, "Your custom domains",
            ok: 200 => domains::Domains, "Your domains with status (pending_dns, verifying, issuing, active, failed), reason and records"),
        ep!(post "/api/domains/{hostname}/verify", domains::verify, "domains", User,
            "Check a domain again now (after fixing its DNS, or to retry a failed one before its backoff is over)",
            ok: 202 => domains::DomainReply, "Checking again: the domain, now verifying (200 and unchanged when already active)"),
        ep!(delete "/api/domains/{hostname}", domains::delete, "domains", User, "Remove a custom domain",
            ok: 204, "Removed with its route and certificate"),
        ep!(get "/admin/certificates", domains::list_certificates, "admin", Admin, "Every certificate the edge serves",
            ok: 200 => domains::Certificates, "Certificates (no key material)"),
        ep!(post "/admin/certificates/{name}/renew", domains::renew_certificate, "admin", Admin, "Renew a certificate now",
            ok: 200 => domains::CertificateReply, "The renewed certificate"),
        ep!(get "/admin/users", admin::users, "admin", Admin, "Every user",
            query: admin::UsersQuery, ok: 200 => admin::Users, "Users"),
        ep!(put "/admin/users/{id}/tier", admin::set_tier, "admin", Admin,
            "Change a user's tier (billing by hand); an unverified account cannot be upgraded",
            body: admin::TierBody, ok: 200 => admin::TierChanged, "The user and its instances"),
        ep!(get "/admin/billing/subscriptions", billing::admin_subscriptions, "admin", Admin, "Every Stripe subscription",
            query: billing::SubscriptionsQuery, ok: 200 => billing::SubscriptionList, "Subscriptions, newest first"),
        ep!(get "/admin/users/{id}/credits", billing::admin_ledger, "admin", Admin, "A user's AI credit balance and ledger",
            ok: 200 => billing::Ledger, "Balance and entries, newest first"),
        ep!(post "/admin/users/{id}/credits", billing::admin_adjust, "admin", Admin,
            "Adjust or refund a user's AI credits (recorded with who and why)",
            body: billing::AdjustBody, ok: 201 => billing::Ledger, "The new balance and ledger"),
        ep!(get "/admin/outbox", admin::outbox, "admin", Admin, "Mail kept when no SMTP relay is configured",
            query: admin::OutboxQuery, ok: 200 => admin::Outbox, "Mails, newest first"),
    ]
}

/// The OpenAPI document as served: an object.
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct Document(pub Value);

async fn openapi_json() -> Reply<Document> {
    Reply(Document(document()))
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The OpenAPI 3.1 document of [`endpoints`].
pub fn document() -> Value {
    let mut components = Components::new();
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
        if let Some(query) = spec.query {
            params.extend(query().iter().map(to_json));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = spec.body {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": to_json(&body(&mut components)) } } }),
            );
        }
        let mut responses = Map::new();
        let ok = match spec.response {
            Some(schema) => json!({
                "description": spec.ok.1,
                "content": { "application/json": { "schema": to_json(&schema(&mut components)) } }
            }),
            None => json!({ "description": spec.ok.1 }),
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
    let mut schemas: Map<String, Value> = components
        .iter()
        .map(|(name, schema)| (name.clone(), to_json(schema)))
        .collect();
    schemas.insert("Error".into(), error_schema());
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
            "schemas": schemas,
        }
    })
}

/// The body every error answers with: what [`ApiError`]'s `IntoResponse` writes.
fn error_schema() -> Value {
    json!({
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

    /// Every `$ref` of the document names a schema it carries, and two types never share a name.
    #[test]
    fn every_reference_resolves_and_names_are_unique() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        let mut components = Components::new();
        for (spec, _) in endpoints() {
            for f in [spec.body, spec.response].into_iter().flatten() {
                f(&mut components);
            }
        }
        for (name, schema) in &components {
            for (other, other_schema) in &components {
                assert!(
                    name != other || schema == other_schema,
                    "two types are named {name}"
                );
            }
        }
    }
}
