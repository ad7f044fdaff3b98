//! The LLM egress meter: the endpoint OpenClaw's `models.providers.<id>.baseUrl` points at.
//!
//! `/<provider>/<path>` (provider `openai`, `anthropic`, `google` or `custom`) is forwarded to the
//! provider's upstream with the user's real key injected; the container only holds a token: an
//! HMAC of its pool member's name ([`member_token`], in its config from its first boot, so
//! assignment never changes it), or of its instance id ([`instance_token`], containers configured
//! before member tokens). A member not yet assigned is answered by a local stub ([`warm_up_answer`]):
//! the pool's warm-up turn never leaves the node and is never metered. The
//! answer streams back unchanged while its token usage is read from it (JSON bodies and SSE streams:
//! OpenAI `usage`, Anthropic `usage.input_tokens`/`output_tokens`, Google `usageMetadata`), and the
//! tier's monthly token budget is enforced before each call. OpenAI streaming requests get
//! `stream_options.include_usage = true` so their usage is reported.
//!
//! # Errors
//! No crate-wide error enum: each error type is the contract of one API. [`BaseUrlError`] is why
//! [`custom_base_url`] refuses a provider's `baseUrl` (the control API shows it as that field's
//! error), and `GuardError` why the guarded connector refused a connection (answered to the
//! instance as a refused call, and counted).

#![warn(missing_docs)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora::server::ShutdownWatch;
use sha2::Sha256;

use clawdeploy_config::addresses::{is_public_unicast, IpNet};
use clawdeploy_metering::Meter;
use clawdeploy_store::{Keyring, Store};

pub mod credits;
pub mod guarded_connect;

use crate::credits::{Credits, Refusal};
use crate::guarded_connect::{guard_error, EgressPolicy, GuardError, GuardedConnector};

/// Largest request body the meter reads (to add `include_usage`); larger ones are refused.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Largest JSON (non-streamed) answer inspected for usage.
const MAX_INSPECTED_BYTES: usize = 4 * 1024 * 1024;

/// The providers the meter forwards to.
pub const PROVIDERS: [&str; 4] = ["openai", "anthropic", "google", "custom"];

/// Upstream base URLs (no trailing slash).
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// OpenAI's API base (`llm.openai_url`), the target of `/openai/…`.
    pub openai: String,
    /// Anthropic's API base (`llm.anthropic_url`), the target of `/anthropic/…`.
    pub anthropic: String,
    /// Google's Gemini API base (`llm.google_url`), the target of `/google/…`.
    pub google: String,
}

/// What a token names: `(prefix, HMAC label)`.
const INSTANCE: (&str, &[u8]) = ("cdi.", b"clawdeploy llm token\0");
const MEMBER: (&str, &[u8]) = ("cdm.", b"clawdeploy llm member token\0");

/// The per-instance token: `cdi.<instance id>.<hex HMAC-SHA256>`.
pub fn instance_token(key: &[u8], instance_id: &str) -> String {
    token(INSTANCE, key, instance_id)
}

/// The per-member token: `cdm.<member name>.<hex HMAC-SHA256>`. A member is one container for
/// its whole life, so its token never changes at assignment (a changed key makes OpenClaw rebuild
/// its provider runtime: about 2 s more on the owner's first turn, measured).
pub fn member_token(key: &[u8], member: &str) -> String {
    token(MEMBER, key, member)
}

fn token((prefix, label): (&str, &[u8]), key: &[u8], subject: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(subject.as_bytes());
    let mut out = format!("{prefix}{subject}.");
    for b in m.finalize().into_bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn verify((prefix, label): (&str, &[u8]), key: &[u8], token: &str) -> Option<String> {
    let rest = token.strip_prefix(prefix)?;
    let (subject, hex) = rest.rsplit_once('.')?;
    if hex.len() != 64 {
        return None;
    }
    let mut given = [0u8; 32];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    m.update(label);
    m.update(subject.as_bytes());
    m.verify_slice(&given).ok()?;
    Some(subject.to_string())
}

/// The instance id of a valid instance token.
pub fn verify_instance_token(key: &[u8], token: &str) -> Option<String> {
    verify(INSTANCE, key, token)
}

/// The member name of a valid member token.
pub fn verify_member_token(key: &[u8], token: &str) -> Option<String> {
    verify(MEMBER, key, token)
}

/// Who a valid token belongs to.
enum Caller {
    /// An assigned instance (its id).
    Instance(String),
    /// A warm pool member nobody has yet: answered by [`warm_up_answer`].
    Unassigned,
}

/// What the meter answers a warm member's model call, without calling anyone: a fixed reply in
/// the OpenAI Chat Completions shape (JSON, or SSE chunks ending in `data: [DONE]` when `stream`
/// is set), so the pool's warm-up turn pays OpenClaw's first-turn costs before a user arrives.
pub fn warm_up_answer(request_body: &[u8]) -> Response {
    let streaming = serde_json::from_slice::<serde_json::Value>(request_body)
        .is_ok_and(|body| body["stream"] == true);
    let usage = serde_json::json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    if streaming {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            serde_json::json!({"id": "clawdeploy-warm-up", "object": "chat.completion.chunk",
                "created": 0, "model": "warm-up",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let last = serde_json::json!({"id": "clawdeploy-warm-up", "object": "chat.completion.chunk",
            "created": 0, "model": "warm-up", "choices": [], "usage": usage});
        let body = format!(
            "data: {}\n\ndata: {}\n\ndata: {last}\n\ndata: [DONE]\n\n",
            chunk(
                serde_json::json!({"role": "assistant", "content": "Ready."}),
                serde_json::Value::Null
            ),
            chunk(serde_json::json!({}), serde_json::json!("stop")),
        );
        return ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
    }
    let body = serde_json::json!({"id": "clawdeploy-warm-up", "object": "chat.completion",
        "created": 0, "model": "warm-up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Ready."},
            "finish_reason": "stop"}],
        "usage": usage});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Usage read from one answer: the largest input and output counts seen (Anthropic and Google
/// report cumulative counts in several events).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens: OpenAI `prompt_tokens`, Anthropic `input_tokens`, Google
    /// `promptTokenCount`.
    pub input: u64,
    /// Output tokens: OpenAI `completion_tokens`, Anthropic `output_tokens`, Google
    /// `candidatesTokenCount` plus `thoughtsTokenCount`.
    pub output: u64,
}

impl Usage {
    /// Input plus output tokens: what the call costs against the tier's monthly token budget.
    pub fn total(&self) -> u64 {
        self.input + self.output
    }

    /// Reads the usage fields of one JSON object (a whole answer or one SSE event).
    pub fn observe(&mut self, value: &serde_json::Value) {
        let get = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64());
        let mut candidates = Vec::new();
        if let Some(u) = value.get("usage") {
            candidates.push(u);
        }
        if let Some(u) = value.get("message").and_then(|m| m.get("usage")) {
            candidates.push(u); // Anthropic message_start
        }
        for u in candidates {
            let input = get(u, "prompt_tokens").or_else(|| get(u, "input_tokens"));
            let output = get(u, "completion_tokens").or_else(|| get(u, "output_tokens"));
            self.input = self.input.max(input.unwrap_or(0));
            self.output = self.output.max(output.unwrap_or(0));
        }
        if let Some(u) = value.get("usageMetadata") {
            self.input = self.input.max(get(u, "promptTokenCount").unwrap_or(0));
            self.output = self.output.max(
                get(u, "candidatesTokenCount").unwrap_or(0)
                    + get(u, "thoughtsTokenCount").unwrap_or(0),
            );
        }
    }
}

/// Incremental usage reader for an answer body (JSON or SSE).
#[derive(Debug, Default)]
pub struct UsageScanner {
    sse: bool,
    buf: Vec<u8>,
    overflow: bool,
    /// The usage seen so far (complete once [`finish`](Self::finish) has run).
    pub usage: Usage,
}

impl UsageScanner {
    /// A scanner for an answer of `content_type`: `text/event-stream` is read event by event,
    /// anything else as one JSON document of at most 4 MiB (a larger one is not inspected: its
    /// usage reads 0).
    pub fn new(content_type: &str) -> Self {
        Self {
            sse: content_type.starts_with("text/event-stream"),
            ..Self::default()
        }
    }

    /// Reads the next piece of the body, in the order it arrived.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.sse {
            self.buf.extend_from_slice(chunk);
            while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                self.sse_line(&line);
            }
            if self.buf.len() > MAX_INSPECTED_BYTES {
                self.buf.clear();
            }
        } else if !self.overflow {
            if self.buf.len() + chunk.len() > MAX_INSPECTED_BYTES {
                self.overflow = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii_start()) {
                self.usage.observe(&v);
            }
        }
    }

    /// The body ended: reads what was held back (the JSON document, or an SSE line without its
    /// final newline) and returns the usage.
    pub fn finish(&mut self) -> Usage {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.sse_line(&rest);
        } else if !self.overflow {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.buf) {
                self.usage.observe(&v);
            }
        }
        self.usage
    }
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>;
/// The client for user-chosen endpoints: connects only where [`EgressPolicy`] permits.
type GuardedClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Body>;

/// Shared state of the meter's listener.
pub struct LlmMeter {
    meter: Arc<Meter>,
    store: Store,
    keyring: Arc<Keyring>,
    token_key: Vec<u8>,
    upstreams: Upstreams,
    allowed_private: Vec<IpNet>,
    /// For the operator's upstreams (`llm.*_url`).
    client: HttpsClient,
    /// For users' custom endpoints.
    custom_client: GuardedClient,
    /// AI credits: the platform's keys and the calls in flight.
    credits: Arc<Credits>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"error": {"code": code, "type": code, "message": message.into()}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The token an OpenClaw provider client sends, whichever header its API uses.
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim().to_string());
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .map(str::to_string)
}

/// Why a custom provider's `baseUrl` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    /// Not a URL at all: the text as given, and the parser's reason.
    #[error("{0:?} is not a URL ({1}); write it like https://llm.example.com/v1")]
    Syntax(String, String),
    /// A scheme other than `http` or `https`.
    #[error("the URL must start with http:// or https://")]
    Scheme,
    /// A `user:password@` part.
    #[error("the URL may not carry a user name or password; put the credential in the key field")]
    Userinfo,
    /// A `#fragment`.
    #[error("the URL may not carry a #fragment")]
    Fragment,
    /// A host not written the way the URL parser reads it (`127.1`, `2130706433`, `0x7f.1`…):
    /// refused so that what is checked is what was written.
    #[error("write the host as {canonical} (it was written {written:?})")]
    NotCanonical {
        /// The host as written in the URL.
        written: String,
        /// The host as the URL parser reads it, which is what would be connected to.
        canonical: String,
    },
    /// A literal address that is neither public unicast nor in `llm.allow_private_custom` (the
    /// host, canonical).
    #[error("{0} is not a public address; the platform calls public endpoints only")]
    Private(String),
}

/// Parses a custom provider's `baseUrl` the way the meter will call it (WHATWG URL rules, as
/// browsers and Node parse): http(s) only, no userinfo, no fragment, and the host written in its
/// canonical form, so `http://127.1`, `http://2130706433` and `http://[::ffff:127.0.0.1]` are
/// refused for what they are. A literal address must be public unicast or inside `allowed`;
/// names are checked where it counts, on the address connected to ([`crate::guarded_connect`]).
pub fn custom_base_url(text: &str, allowed: &[IpNet]) -> Result<url::Url, BaseUrlError> {
    let text = text.trim();
    let url =
        url::Url::parse(text).map_err(|e| BaseUrlError::Syntax(text.into(), e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BaseUrlError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BaseUrlError::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(BaseUrlError::Fragment);
    }
    let canonical = url.host_str().unwrap_or_default().to_string();
    // The authority as written: after the scheme, up to the path, minus any port.
    let authority = text
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split(['/', '?', '#', '\\'])
        .next()
        .unwrap_or_default();
    let written = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            if authority.starts_with('[') && !host.ends_with(']') {
                authority
            } else {
                host
            }
        }
        _ => authority,
    };
    if !written.eq_ignore_ascii_case(&canonical) {
        return Err(BaseUrlError::NotCanonical {
            written: written.to_string(),
            canonical,
        });
    }
    let permitted = |ip: IpAddr| allowed.iter().any(|n| n.contains(&ip)) || is_public_unicast(ip);
    match url.host() {
        Some(url::Host::Ipv4(ip)) if !permitted(IpAddr::V4(ip)) => {
            Err(BaseUrlError::Private(canonical))
        }
        Some(url::Host::Ipv6(ip)) if !permitted(IpAddr::V6(ip)) => {
            Err(BaseUrlError::Private(canonical))
        }
        Some(url::Host::Domain(name))
            if {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            } =>
        {
            Err(BaseUrlError::Private(canonical))
        }
        _ => Ok(url),
    }
}

/// Request headers passed to a provider: what its API reads besides the key. Everything else the
/// container sent (forwarding and identity headers above all, cookies, `x-openclaw-*`) stays here.
const FORWARDED_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
];

async fn forward(
    State(state): State<Arc<LlmMeter>>,
    Path((provider, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    if !PROVIDERS.contains(&provider.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_PROVIDER",
            format!("{provider:?} is not a provider; use one of {PROVIDERS:?}"),
        );
    }
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let caller = match presented_token(&parts.headers, query.as_deref()) {
        Some(t) => match verify_instance_token(&state.token_key, &t) {
            Some(id) => Some(Caller::Instance(id)),
            None => match verify_member_token(&state.token_key, &t) {
                Some(member) => match state.store.pool_member_by_name(&member).await {
                    Ok(Some(m)) => Some(match m.instance_id {
                        Some(id) => Caller::Instance(id.to_string()),
                        None => Caller::Unassigned,
                    }),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!("LLM meter cannot read the pool member: {e}");
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "STORE_UNAVAILABLE",
                            "Retry in a few seconds.",
                        );
                    }
                },
                None => None,
            },
        },
        None => None,
    };
    let instance_id = match caller {
        Some(Caller::Instance(id)) => id,
        Some(Caller::Unassigned) if provider == "openai" && rest.ends_with("chat/completions") => {
            let body = http_body_util::Limited::new(body, MAX_REQUEST_BYTES).collect().await;
            return warm_up_answer(&body.map(|b| b.to_bytes()).unwrap_or_default());
        }
        Some(Caller::Unassigned) => {
            return error(
                StatusCode::FORBIDDEN,
                "NOT_ASSIGNED",
                "This instance has no user yet; only its warm-up turn is answered.",
            )
        }
        None => {
            return error(StatusCode::UNAUTHORIZED, "INVALID_INSTANCE_TOKEN", "This endpoint serves ClawDeploy instances only; present the instance's token as the provider API key.")
        }
    };
    let Ok(instance_uuid) = instance_id.parse() else {
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_INSTANCE_TOKEN",
            "Unknown instance.",
        );
    };
    let instance = match state.store.get_instance(instance_uuid).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "INVALID_INSTANCE_TOKEN",
                "The instance no longer exists.",
            )
        }
        Err(e) => {
            tracing::error!("LLM meter cannot read the instance: {e}");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "Retry in a few seconds.",
            );
        }
    };
    if let Err(refusal) =
        state
            .meter
            .check_tokens(&instance_id, instance.tier, instance.billing_anchor_at)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOKEN_QUOTA_EXCEEDED",
            format!(
                "This instance has used its {} LLM tokens for this month ({} used); the count resets at {}. Upgrade for more.",
                refusal.limit, refusal.used, refusal.resets_at
            ),
        );
    }
    let mut credit_hold = None;
    let key = match state.store.open_api_key(instance.user_id, &provider, &state.keyring).await {
        Ok(Some(k)) => k,
        Ok(None) => match state.credits.platform_key(&provider) {
            // No key of the owner's own: the platform's, paid from the owner's credits.
            Some(platform_key) => {
                let balance = match state.store.credit_balance(instance.user_id).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("LLM meter cannot read the credit balance: {e}");
                        return error(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE", "Retry in a few seconds.");
                    }
                };
                match state.credits.admit(instance.user_id, balance) {
                    Ok(hold) => credit_hold = Some(hold),
                    Err(Refusal::Exhausted) => {
                        metrics::counter!("clawdeploy_credit_refusals_total", "reason" => "exhausted").increment(1);
                        return error(StatusCode::PAYMENT_REQUIRED, "CREDITS_EXHAUSTED", format!("Your AI credits are used up ({balance} tokens left): buy a credit pack on the billing page, or add your own {provider} key."));
                    }
                    Err(Refusal::Busy) => {
                        let mut busy = error(StatusCode::TOO_MANY_REQUESTS, "CREDITS_BUSY", format!("Your other requests in flight may use the {balance} tokens left; retry when they finish."));
                        busy.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        return busy;
                    }
                }
                (clawdeploy_store::Zeroizing::new(platform_key.to_string()), None)
            }
            None => return error(StatusCode::FAILED_DEPENDENCY, "NO_PROVIDER_KEY", format!("No active {provider} key: add one in the dashboard (PUT /api/account/api-keys/{provider}).")),
        },
        Err(e) => {
            tracing::error!("LLM meter cannot open the provider key: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE", "Retry in a few seconds.");
        }
    };
    let (secret, custom_base) = key;
    let base = match provider.as_str() {
        "openai" => state.upstreams.openai.clone(),
        "anthropic" => state.upstreams.anthropic.clone(),
        "google" => state.upstreams.google.clone(),
        _ => {
            let Some(base) = custom_base.filter(|b| !b.is_empty()) else {
                return error(
                    StatusCode::FAILED_DEPENDENCY,
                    "NO_PROVIDER_KEY",
                    "The custom provider has no endpoint URL.",
                );
            };
            match custom_base_url(&base, &state.allowed_private) {
                Ok(url) => url.as_str().trim_end_matches('/').to_string(),
                Err(e) => {
                    return error(
                        StatusCode::FORBIDDEN,
                        "BAD_CUSTOM_ENDPOINT",
                        format!("The custom provider's baseUrl is refused: {e}. Set it again in the dashboard."),
                    )
                }
            }
        }
    };
    let mut target = format!("{base}/{rest}");
    if let Some(q) = query.as_deref() {
        let kept: Vec<&str> = q.split('&').filter(|kv| !kv.starts_with("key=")).collect();
        if !kept.is_empty() {
            target.push('?');
            target.push_str(&kept.join("&"));
        }
    }
    let Ok(uri) = target.parse::<http::Uri>() else {
        return error(
            StatusCode::BAD_GATEWAY,
            "BAD_UPSTREAM",
            "The provider URL is not valid.",
        );
    };
    // OpenAI-style streaming requests are asked to report usage.
    let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                format!("Requests are limited to {MAX_REQUEST_BYTES} bytes."),
            )
        }
    };
    let bytes = if matches!(provider.as_str(), "openai" | "custom") {
        with_include_usage(bytes)
    } else {
        bytes
    };
    let request_bytes = bytes.len() as u64;
    let mut upstream = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri);
    for name in FORWARDED_HEADERS {
        for value in parts.headers.get_all(name) {
            upstream = upstream.header(name, value);
        }
    }
    let auth = match provider.as_str() {
        "anthropic" => ("x-api-key", HeaderValue::from_str(&secret)),
        "google" => ("x-goog-api-key", HeaderValue::from_str(&secret)),
        _ => (
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", secret.as_str())),
        ),
    };
    let Ok(mut auth_value) = auth.1 else {
        return error(
            StatusCode::FAILED_DEPENDENCY,
            "BAD_PROVIDER_KEY",
            "The stored key has characters a header cannot carry; set it again.",
        );
    };
    auth_value.set_sensitive(true);
    let upstream = upstream
        .header(auth.0, auth_value)
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes));
    let Ok(upstream) = upstream else {
        return error(
            StatusCode::BAD_GATEWAY,
            "BAD_UPSTREAM",
            "Cannot build the provider request.",
        );
    };
    let answered = if provider == "custom" {
        state.custom_client.request(upstream).await
    } else {
        state.client.request(upstream).await
    };
    let answer = match answered {
        Ok(a) => a,
        Err(e) if guard_error(&e).is_some_and(GuardError::is_refusal) => {
            let reason = guard_error(&e).map(ToString::to_string).unwrap_or_default();
            tracing::warn!(%provider, "LLM meter refused a custom endpoint: {reason}");
            return error(
                StatusCode::FORBIDDEN,
                "PRIVATE_UPSTREAM",
                format!("The custom endpoint was refused: {reason}. The platform calls public endpoints only."),
            );
        }
        Err(e) => {
            tracing::warn!(%provider, "LLM provider unreachable: {e}");
            return error(
                StatusCode::BAD_GATEWAY,
                "PROVIDER_UNREACHABLE",
                format!("The {provider} API could not be reached; retry."),
            );
        }
    };
    let (parts, body) = answer.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let tap = UsageTap {
        scanner: UsageScanner::new(&content_type),
        meter: state.meter.clone(),
        instance_id,
        provider: provider_label(&provider),
        done: false,
        credit: credit_hold.map(|hold| CreditCall {
            hold,
            store: state.store.clone(),
            answered: parts.status.is_success(),
            request_bytes,
            answer_bytes: 0,
        }),
    };
    let body = body.map_frame(move |frame| frame).boxed_unsync();
    let tapped = TappedBody {
        inner: body,
        tap: Mutex::new(tap),
    };
    let mut response = Response::from_parts(parts, Body::new(tapped));
    response.headers_mut().remove(header::CONNECTION);
    response
}

fn provider_label(provider: &str) -> &'static str {
    match provider {
        "openai" => "openai",
        "anthropic" => "anthropic",
        "google" => "google",
        _ => "custom",
    }
}

/// Sets `stream_options.include_usage` on a streaming chat request (JSON object with `stream: true`).
fn with_include_usage(body: Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    if v.get("stream").and_then(|s| s.as_bool()) != Some(true) {
        return body;
    }
    let Some(obj) = v.as_object_mut() else {
        return body;
    };
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

struct UsageTap {
    scanner: UsageScanner,
    meter: Arc<Meter>,
    instance_id: String,
    provider: &'static str,
    done: bool,
    /// A call paid from credits: debited from the owner's ledger when it ends.
    credit: Option<CreditCall>,
}

/// What a credit call's debit needs: its hold, the store, and the bytes sent and received (the
/// charge when the provider reports no usage, [`credits::billable_tokens`]).
struct CreditCall {
    hold: credits::Hold,
    store: Store,
    /// The provider answered 2xx: an answer worth paying for (an error costs nothing).
    answered: bool,
    request_bytes: u64,
    answer_bytes: u64,
}

impl UsageTap {
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let usage = self.scanner.finish();
        self.meter.add_tokens(&self.instance_id, usage.total());
        if let Some(call) = self.credit.take() {
            let tokens = if call.answered {
                credits::billable_tokens(usage.total(), call.request_bytes, call.answer_bytes)
            } else {
                usage.total()
            };
            credits::debit(call.store, call.hold, self.instance_id.clone(), tokens);
        }
        metrics::counter!("clawdeploy_llm_tokens_total", "provider" => self.provider, "kind" => "input").increment(usage.input);
        metrics::counter!("clawdeploy_llm_tokens_total", "provider" => self.provider, "kind" => "output").increment(usage.output);
    }
}

impl Drop for UsageTap {
    // A client that stops reading early still pays for what the provider reported so far.
    fn drop(&mut self) {
        self.finish();
    }
}

/// The provider's answer body, passed through unchanged while usage is read from it.
struct TappedBody {
    inner: http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>,
    tap: Mutex<UsageTap>,
}

impl http_body::Body for TappedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let tap = self.tap.get_mut().unwrap_or_else(|p| p.into_inner());
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    tap.scanner.feed(data);
                    if let Some(call) = &mut tap.credit {
                        call.answer_bytes += data.len() as u64;
                    }
                }
            }
            std::task::Poll::Ready(None) => tap.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Where the meter's listener comes from.
pub enum MeterListen {
    /// Bind this address (`llm.listen = "IP:port"`), retrying while it does not exist yet.
    Bind(String),
    /// A listener bound by the pool on the address its instances reach (`llm.listen = "auto"`):
    /// only the pool knows which runtime, and so which address, it ended up with.
    Handoff(ListenerHandoff),
}

/// Hands the meter's bound listener from the pool (which picks the address) to the meter service
/// (which serves it on its own runtime). Cloning shares the one slot.
#[derive(Clone, Default)]
pub struct ListenerHandoff {
    slot: Arc<(Mutex<Option<std::net::TcpListener>>, tokio::sync::Notify)>,
}

impl ListenerHandoff {
    /// An empty slot (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the meter its listener (a later one replaces one not yet taken).
    pub fn provide(&self, listener: std::net::TcpListener) {
        if let Ok(mut slot) = self.slot.0.lock() {
            *slot = Some(listener);
        }
        self.slot.1.notify_one();
    }

    /// Waits for the listener.
    pub async fn take(&self) -> std::net::TcpListener {
        loop {
            // The permit of a notify_one before this wait is kept, so no provide is missed.
            let notified = self.slot.1.notified();
            if let Some(listener) = self.slot.0.lock().ok().and_then(|mut s| s.take()) {
                return listener;
            }
            notified.await;
        }
    }
}

/// The meter's listener, run on the app's runtime with the app's store ([`LlmMeterService::run`]);
/// its HTTP clients are its own.
pub struct LlmMeterService {
    listen: MeterListen,
    meter: Arc<Meter>,
    keyring: Arc<Keyring>,
    token_key: Vec<u8>,
    upstreams: Upstreams,
    allowed_private: Vec<IpNet>,
    routes: Vec<ExtraRoutes>,
    credits: Arc<Credits>,
}

/// Routes served beside the meter, built with the app's store when the meter runs.
type ExtraRoutes = Box<dyn FnOnce(&Store) -> axum::Router + Send>;

impl LlmMeterService {
    /// Serves on `listen`: verifies instance tokens against `token_key` (HMACs by
    /// [`instance_token`]), counts tokens in `meter`, unseals users' provider keys with `keyring`,
    /// forwards to `upstreams`, and lets custom endpoints reach the private networks in
    /// `allowed_private` (none by default).
    pub fn new(
        listen: MeterListen,
        meter: Arc<Meter>,
        keyring: Arc<Keyring>,
        token_key: Vec<u8>,
        upstreams: Upstreams,
        allowed_private: Vec<IpNet>,
    ) -> Self {
        Self {
            listen,
            meter,
            keyring,
            token_key,
            upstreams,
            allowed_private,
            routes: Vec::new(),
            credits: Arc::default(),
        }
    }

    /// Serves owners without a key of their own from their AI credits, with the platform's keys
    /// in `credits` (none by default: such owners get 424 `NO_PROVIDER_KEY`).
    pub fn with_credits(mut self, credits: Credits) -> Self {
        self.credits = Arc::new(credits);
        self
    }

    /// Also serves the routes `build` makes with the app's store on the meter's listener, which
    /// instances reach and the egress rules open (the skill registry, the channels' relay); the
    /// meter's own paths start with a provider name.
    pub fn with_routes(
        mut self,
        build: impl FnOnce(&Store) -> axum::Router + Send + 'static,
    ) -> Self {
        self.routes.push(Box::new(build));
        self
    }
}

impl LlmMeterService {
    /// Listens (binding, or waiting for the pool's listener) and serves until `shutdown`.
    pub async fn run(self, store: Store, mut shutdown: ShutdownWatch) {
        let listener = match self.listen {
            MeterListen::Bind(address) => loop {
                // The instance network's address may appear only once the pool has created it.
                match tokio::net::TcpListener::bind(&address).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(listen = %address, "LLM meter cannot listen yet, retrying: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            },
            MeterListen::Handoff(handoff) => {
                let bound = tokio::select! {
                    l = handoff.take() => l,
                    _ = shutdown.changed() => return,
                };
                match bound
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(bound))
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("LLM meter listener unusable: {e}");
                        return;
                    }
                }
            }
        };
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        tracing::info!(listen = %address, "LLM meter listening");
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        // The meter's address on the instance network (`auto` with Docker): every gateway there
        // trusts connections from it, so no user-chosen connection may leave from it.
        let instance_side = listener
            .local_addr()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        let custom_connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector::new(EgressPolicy {
                allowed: self.allowed_private.clone(),
                instance_side,
            }));
        let custom_client = Client::builder(TokioExecutor::new()).build(custom_connector);
        let extra: Vec<axum::Router> = self.routes.into_iter().map(|build| build(&store)).collect();
        let state = Arc::new(LlmMeter {
            meter: self.meter.clone(),
            store,
            keyring: self.keyring.clone(),
            token_key: self.token_key.clone(),
            upstreams: self.upstreams.clone(),
            allowed_private: self.allowed_private.clone(),
            client,
            custom_client,
            credits: self.credits.clone(),
        });
        let mut app = axum::Router::new()
            .route("/{provider}/{*rest}", axum::routing::any(forward))
            .with_state(state);
        for routes in extra {
            app = app.merge(routes);
        }
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!("LLM meter stopped: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_instance_and_key() {
        let t = instance_token(b"k1", "abc");
        assert_eq!(verify_instance_token(b"k1", &t).as_deref(), Some("abc"));
        // Member tokens are their own kind: neither verifies as the other.
        let m = member_token(b"k1", "cd-node-1");
        assert_eq!(verify_member_token(b"k1", &m).as_deref(), Some("cd-node-1"));
        assert_eq!(verify_instance_token(b"k1", &m), None);
        assert_eq!(verify_member_token(b"k1", &t), None);
        assert_eq!(verify_member_token(b"k2", &m), None);
        assert_eq!(verify_instance_token(b"k2", &t), None);
        assert_eq!(verify_instance_token(b"k1", &t.replace("abc", "abd")), None);
        assert_eq!(verify_instance_token(b"k1", "sk-real-key"), None);
    }

    #[test]
    fn usage_from_json_and_sse() {
        let mut s = UsageScanner::new("application/json");
        s.feed(br#"{"choices":[],"usage":{"prompt_tokens":12,"#);
        s.feed(br#""completion_tokens":30,"total_tokens":42}}"#);
        assert_eq!(
            s.finish(),
            Usage {
                input: 12,
                output: 30
            }
        );
        // OpenAI stream with include_usage, split mid-line.
        let mut s = UsageScanner::new("text/event-stream");
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\nda");
        s.feed(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n");
        assert_eq!(s.finish().total(), 12);
        // Anthropic: input in message_start, cumulative output in message_delta.
        let mut s = UsageScanner::new("text/event-stream; charset=utf-8");
        s.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n");
        s.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n");
        assert_eq!(
            s.finish(),
            Usage {
                input: 20,
                output: 15
            }
        );
        // Google: cumulative usageMetadata.
        let mut s = UsageScanner::new("text/event-stream");
        s.feed(b"data: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":2}}\r\n\r\n");
        s.feed(b"data: {\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":9}}\r\n\r\n");
        assert_eq!(
            s.finish(),
            Usage {
                input: 8,
                output: 9
            }
        );
    }

    #[test]
    fn streaming_requests_ask_for_usage() {
        let out = with_include_usage(Bytes::from_static(br#"{"model":"m","stream":true}"#));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let plain = Bytes::from_static(br#"{"model":"m"}"#);
        assert_eq!(with_include_usage(plain.clone()), plain);
    }

    #[tokio::test]
    async fn the_handoff_delivers_a_listener_provided_before_or_during_the_wait() {
        let handoff = ListenerHandoff::new();
        let early = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let early_addr = early.local_addr().unwrap();
        handoff.provide(early);
        assert_eq!(handoff.take().await.local_addr().unwrap(), early_addr);
        let waiting = tokio::spawn({
            let handoff = handoff.clone();
            async move { handoff.take().await.local_addr().unwrap() }
        });
        tokio::task::yield_now().await;
        let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let late_addr = late.local_addr().unwrap();
        handoff.provide(late);
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting meter gets its listener")
            .unwrap();
        assert_eq!(taken, late_addr);
    }

    #[test]
    fn custom_base_urls_refuse_every_spelling_of_a_private_host() {
        let none: &[IpNet] = &[];
        for (url, want) in [
            ("http://x@127.0.0.1:9/v1", BaseUrlError::Userinfo),
            ("http://x:y@llm.example.com/v1", BaseUrlError::Userinfo),
            ("ftp://llm.example.com", BaseUrlError::Scheme),
            ("https://llm.example.com/v1#x", BaseUrlError::Fragment),
        ] {
            assert_eq!(custom_base_url(url, none), Err(want), "{url}");
        }
        for url in [
            "http://127.1/v1",
            "http://2130706433/v1",
            "http://0x7f000001/v1",
            "http://[::ffff:127.0.0.1]:8080/v1",
        ] {
            assert!(
                matches!(
                    custom_base_url(url, none),
                    Err(BaseUrlError::NotCanonical { .. })
                ),
                "{url}: {:?}",
                custom_base_url(url, none)
            );
        }
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://10.1.2.3/v1",
            "http://169.254.169.254/latest",
            "http://[::1]:80/",
            "http://[::ffff:7f00:1]/",
            "http://localhost:9/v1",
            "http://api.localhost/v1",
            "http://localhost./v1",
        ] {
            assert!(
                matches!(custom_base_url(url, none), Err(BaseUrlError::Private(_))),
                "{url}: {:?}",
                custom_base_url(url, none)
            );
        }
        for url in [
            "https://llm.example.com/v1",
            "https://llm.example.com:8443/v1?x=1",
            "http://8.8.8.8/v1",
            "http://[2606:4700::1111]/",
            "https://LLM.Example.com/v1",
        ] {
            assert!(custom_base_url(url, none).is_ok(), "{url}");
        }
        let allowed = ["127.0.0.0/8".parse().unwrap()];
        assert!(custom_base_url("http://127.0.0.1:8080/v1", &allowed).is_ok());
        assert!(custom_base_url("http://127.1/v1", &allowed).is_err());
    }
}
