//! The Telegram channel: input checks for the API, and the Bot API relay instances call.
//!
//! OpenClaw's Telegram channel is configured with `apiRoot = http://<meter>/telegram` and the
//! placeholder token [`crate::container_bot_token`]; it calls `<apiRoot>/bot<token>/<method>`
//! (and `<apiRoot>/file/bot<token>/<path>` for files). The relay resolves the instance from the
//! token, calls [`TelegramRelay`]'s API root with the owner's bot token instead, and passes the
//! answer back, except that in `getUpdates` answers every message from an allowed sender is
//! admitted by the quota meter first (once per `update_id`): one over quota is answered in the
//! chat with the quota's refusal and reaches the instance as an empty update, so OpenClaw's offset
//! still moves past it. Messages from anyone else pass uncounted: OpenClaw's allowlist (the
//! same senders) ignores them, so they start no turn. `setWebhook`, `logOut` and `close` are
//! refused: each would take the bot's updates away from the relay.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use uuid::Uuid;

use clawdeploy_llm_egress::{verify_instance_token, verify_member_token};
use clawdeploy_metering::quota::Admission;
use clawdeploy_metering::Meter;
use clawdeploy_store::{ChannelKind, ChannelStatus, Instance, Keyring, Store};

/// Largest request body relayed (Telegram's own upload limit is 50 MB).
const MAX_REQUEST_BYTES: usize = 50 * 1024 * 1024;
/// Largest answer relayed (a file download included).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Methods the relay refuses: each would move the bot's updates or session away from it.
const REFUSED_METHODS: [&str; 3] = ["setWebhook", "logOut", "close"];

/// Why a bot token is refused.
pub fn check_bot_token(token: &str) -> Result<(), &'static str> {
    let (id, secret) = token
        .split_once(':')
        .ok_or("a bot token looks like 123456789:AA… (the number, a colon, the secret) as @BotFather gives it")?;
    let id_ok = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    let secret_ok = (30..=100).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if id_ok && secret_ok {
        Ok(())
    } else {
        Err("a bot token looks like 123456789:AA… (the number, a colon, 30 or more letters, digits, _ or -) as @BotFather gives it")
    }
}

/// Why an allowed sender is refused: Telegram user ids are positive numbers (not @names, which
/// users can change).
pub fn check_user_id(id: &str) -> Result<(), String> {
    match id.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(format!(
            "{id:?} is not a Telegram user id: use the number (ask @userinfobot), not the @name"
        )),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The Bot API relay (see the module docs); served on the LLM meter's listener by [`Self::router`].
pub struct TelegramRelay {
    store: Store,
    keyring: Arc<Keyring>,
    meter: Arc<Meter>,
    token_key: Vec<u8>,
    api_root: String,
    timeout: Duration,
    upgrade_url: String,
    client: HttpsClient,
}

impl TelegramRelay {
    /// A relay reading channels from `store` (credentials opened with `keyring`), admitting
    /// messages in `meter`, verifying instances' tokens with `token_key`, calling `api_root`
    /// (`channels.telegram_api_root`) within `timeout` per call; refusals point at `upgrade_url`.
    pub fn new(
        store: Store,
        keyring: Arc<Keyring>,
        meter: Arc<Meter>,
        token_key: Vec<u8>,
        api_root: &str,
        timeout: Duration,
        upgrade_url: String,
    ) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            store,
            keyring,
            meter,
            token_key,
            api_root: api_root.trim_end_matches('/').to_string(),
            timeout,
            upgrade_url,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `/telegram/bot<token>/<method>` and `/telegram/file/bot<token>/<path>`.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/telegram/{*rest}", axum::routing::any(relay))
            .with_state(self)
    }

    /// The instance a container token names, if it is valid and assigned.
    async fn instance_of(&self, token: &str) -> Result<Option<Instance>, Response> {
        let token = token.strip_prefix("0:").unwrap_or(token);
        let id = match verify_instance_token(&self.token_key, token) {
            Some(id) => id.parse::<Uuid>().ok(),
            None => match verify_member_token(&self.token_key, token) {
                Some(member) => match self.store.pool_member_by_name(&member).await {
                    Ok(m) => m.and_then(|m| m.instance_id),
                    Err(e) => return Err(store_error(e)),
                },
                None => None,
            },
        };
        match id {
            Some(id) => self.store.get_instance(id).await.map_err(store_error),
            None => Ok(None),
        }
    }

    /// Counts the messages of allowed senders in a `getUpdates` answer; each one over quota is
    /// emptied (its `update_id` kept) and answered in its chat. Returns the answer to relay.
    async fn meter_updates(
        &self,
        instance: &Instance,
        allow_from: &[String],
        bot_token: &str,
        answer: Bytes,
    ) -> Bytes {
        let Ok(mut body) = serde_json::from_slice::<Value>(&answer) else {
            return answer;
        };
        let Some(updates) = body["result"].as_array_mut() else {
            return answer;
        };
        let instance_id = instance.id.to_string();
        let (mut counted, mut refused) = (0u64, Vec::new());
        for update in updates.iter_mut() {
            let (Some(update_id), Some(message)) =
                (update["update_id"].as_i64(), update.get("message"))
            else {
                continue;
            };
            let sender = message["from"]["id"].as_i64().map(|id| id.to_string());
            if !sender.is_some_and(|s| allow_from.contains(&s)) {
                continue;
            }
            let chat = message["chat"]["id"].clone();
            let key = format!("telegram:{update_id}");
            match self.meter.admit(
                &instance_id,
                instance.tier,
                instance.billing_anchor_at,
                Some(&key),
            ) {
                Admission::Forward(reservation) => {
                    reservation.commit(true);
                    counted += 1;
                }
                Admission::Retry => {}
                Admission::Refuse(r) => {
                    *update = json!({ "update_id": update_id });
                    refused.push((
                        chat,
                        format!(
                            "Your assistant has used its {} messages for this month; the count resets at {}. Upgrade for more: {}",
                            r.limit, r.resets_at, self.upgrade_url
                        ),
                    ));
                }
            }
        }
        metrics::counter!("clawdeploy_channel_messages_total", "channel" => "telegram", "outcome" => "counted")
            .increment(counted);
        metrics::counter!("clawdeploy_channel_messages_total", "channel" => "telegram", "outcome" => "refused")
            .increment(refused.len() as u64);
        if counted > 0 {
            let now = clawdeploy_store::time::now_ms();
            self.record_status(instance, ChannelStatus::Connected, None, Some(now))
                .await;
        }
        for (chat_id, text) in refused {
            let url = format!("{}/bot{bot_token}/sendMessage", self.api_root);
            let payload = json!({ "chat_id": chat_id, "text": text }).to_string();
            if let Err(e) = self
                .call("POST", &url, Some("application/json"), Bytes::from(payload))
                .await
            {
                tracing::warn!(instance = %instance.id, "quota refusal not sent to the Telegram chat: {e}");
            }
        }
        Bytes::from(body.to_string())
    }

    /// Records what the relay saw of the instance's channel; a store failure only loses that.
    async fn record_status(
        &self,
        instance: &Instance,
        status: ChannelStatus,
        detail: Option<&str>,
        message_at: Option<i64>,
    ) {
        if let Err(e) = self
            .store
            .set_channel_status(
                instance.id,
                ChannelKind::Telegram,
                status,
                detail,
                message_at,
            )
            .await
        {
            tracing::warn!(instance = %instance.id, "channel status not recorded: {e}");
        }
    }

    /// One call to the Bot API: its status, content type and body.
    async fn call(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
        let mut request = http::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, content_type, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", self.timeout.as_secs()))?
    }
}

/// An answer in the Bot API's own error shape, which OpenClaw's Telegram client reads.
fn bot_error(status: StatusCode, description: &str) -> Response {
    let body = json!({ "ok": false, "error_code": status.as_u16(), "description": description });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn store_error(e: clawdeploy_store::StoreError) -> Response {
    tracing::error!("Telegram relay cannot read the store: {e}");
    bot_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable: retry in a few seconds",
    )
}

/// What the container asked for: a Bot API method or a file.
#[derive(Clone, Copy)]
enum Target<'a> {
    Method(&'a str),
    File(&'a str),
}

fn parse(rest: &str) -> Option<(&str, Target<'_>)> {
    let (file, rest) = match rest.strip_prefix("file/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (token, tail) = rest.strip_prefix("bot")?.split_once('/')?;
    if file {
        let path_ok = !tail.is_empty()
            && !tail
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            && tail
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b));
        path_ok.then_some((token, Target::File(tail)))
    } else {
        let method_ok =
            !tail.is_empty() && tail.len() <= 64 && tail.bytes().all(|b| b.is_ascii_alphanumeric());
        method_ok.then_some((token, Target::Method(tail)))
    }
}

async fn relay(
    State(relay): State<Arc<TelegramRelay>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    let Some((token, target)) = parse(&rest) else {
        return bot_error(
            StatusCode::NOT_FOUND,
            "Not Found: use /telegram/bot<token>/<method>",
        );
    };
    let instance = match relay.instance_of(token).await {
        Ok(Some(instance)) => instance,
        Ok(None) => {
            return bot_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: this relay serves ClawDeploy instances with their own token",
            )
        }
        Err(response) => return response,
    };
    if let Target::Method(method) = target {
        if REFUSED_METHODS
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return bot_error(
                StatusCode::FORBIDDEN,
                &format!("Forbidden: {method} is not available to instances; the platform delivers the bot's updates"),
            );
        }
    }
    let (channel, bot_token) = match relay
        .store
        .channel_with_token(instance.id, ChannelKind::Telegram, &relay.keyring)
        .await
    {
        Ok(Some(found)) => found,
        Ok(None) => {
            return bot_error(StatusCode::NOT_FOUND, "Not Found: no Telegram bot is connected to this instance; connect one on the Channels page")
        }
        Err(e) => return store_error(e),
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return bot_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request Entity Too Large: at most 50 MB",
            )
        }
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = match target {
        Target::Method(method) => format!(
            "{}/bot{}/{method}{query}",
            relay.api_root,
            bot_token.as_str()
        ),
        Target::File(path) => format!("{}/file/bot{}/{path}", relay.api_root, bot_token.as_str()),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (status, answer_type, answer) = match relay
        .call(parts.method.as_str(), &url, content_type, body)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(instance = %instance.id, "Telegram Bot API unreachable: {e}");
            return bot_error(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: the Telegram Bot API did not answer; retrying is safe",
            );
        }
    };
    let method = match target {
        Target::Method(m) => m,
        Target::File(_) => "file",
    };
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND) && method != "file" {
        let reason = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["description"].as_str().map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        let detail = format!("Telegram refused the bot token ({reason}): check it with @BotFather and connect the bot again");
        relay
            .record_status(&instance, ChannelStatus::Error, Some(&detail), None)
            .await;
    } else if status.is_success()
        && method.eq_ignore_ascii_case("getMe")
        && channel.status != ChannelStatus::Connected
    {
        relay
            .record_status(&instance, ChannelStatus::Connected, None, None)
            .await;
    }
    let answer = if status.is_success() && method.eq_ignore_ascii_case("getUpdates") {
        relay
            .meter_updates(&instance, &channel.allow_from, &bot_token, answer)
            .await
    } else {
        answer
    };
    let mut response = Response::new(Body::from(answer));
    *response.status_mut() = status;
    if let Some(ct) = answer_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_tokens_and_user_ids_are_checked() {
        assert!(check_bot_token("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw").is_ok());
        for bad in [
            "",
            "123456789",
            "abc:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "1:short",
            "1:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDs aw",
        ] {
            assert!(check_bot_token(bad).is_err(), "{bad:?}");
        }
        assert!(check_user_id("111").is_ok());
        assert!(check_user_id("@alice")
            .unwrap_err()
            .contains("not the @name"));
        assert!(check_user_id("0").is_err());
    }

    #[test]
    fn only_methods_and_plain_file_paths_are_relayed() {
        assert!(matches!(
            parse("bot0:t/getUpdates"),
            Some(("0:t", Target::Method("getUpdates")))
        ));
        assert!(matches!(
            parse("file/bot0:t/photos/file_1.jpg"),
            Some(("0:t", Target::File("photos/file_1.jpg")))
        ));
        for bad in [
            "bot0:t/",
            "bot0:t/get/Updates",
            "bot0:t/../x",
            "file/bot0:t/../../etc/passwd",
            "file/bot0:t/a//b",
            "x/bot0:t/getMe",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
