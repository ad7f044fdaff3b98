//! Messaging channels (issue 22), Telegram: the API, the edge's Bot API relay and its metering,
//! against `FakeTelegram`, a **fake** of the Telegram Bot API on loopback (the real one cannot be
//! reached here) implementing the methods OpenClaw calls (`getMe`, `deleteWebhook`,
//! `getUpdates` with offsets and long polling, `sendMessage`, `sendChatAction`, the command
//! menu), as documented at <https://core.telegram.org/bots/api>. The last test runs the real
//! OpenClaw.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::openclaw::{openclaw_edge, openclaw_image, Cleanup, FakeProvider, ANSWER};
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const BOT_TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const OWNER: i64 = 111;
const STRANGER: i64 = 222;

/// A fake of the Telegram Bot API: the updates it holds, and every call it got.
#[derive(Clone, Default)]
pub struct FakeTelegram {
    updates: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl FakeTelegram {
    pub async fn start(ip: IpAddr) -> (Self, SocketAddr) {
        let fake = Self::default();
        let app = axum::Router::new()
            .route(
                "/{bot}/{method}",
                axum::routing::post(bot_method).get(bot_method),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, addr)
    }

    /// A private message from `from` to the bot.
    pub fn message(&self, from: i64, text: &str) {
        let mut updates = self.updates.lock().unwrap();
        let id = updates.len() as i64 + 1;
        updates.push(json!({"update_id": id, "message": {
            "message_id": id, "date": 1_765_000_000,
            "from": {"id": from, "is_bot": false, "first_name": "User"},
            "chat": {"id": from, "type": "private", "first_name": "User"},
            "text": text}}));
        drop(updates);
        self.arrived.notify_waiters();
    }

    /// (token, method, body) of every call, in order.
    pub fn calls(&self) -> Vec<(String, String, Value)> {
        self.calls.lock().unwrap().clone()
    }

    /// The texts sent to `chat` with `sendMessage`.
    pub fn sent_to(&self, chat: i64) -> Vec<String> {
        self.calls()
            .into_iter()
            // OpenClaw sends the chat id as a string, the relay as a number: both are allowed.
            .filter(|(_, m, b)| {
                m == "sendMessage" && b["chat_id"].to_string().trim_matches('"') == chat.to_string()
            })
            .map(|(_, _, b)| b["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

async fn bot_method(
    State(fake): State<FakeTelegram>,
    Path((bot, method)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> (axum::http::StatusCode, Json<Value>) {
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    let token = bot.strip_prefix("bot").unwrap_or_default().to_string();
    fake.calls
        .lock()
        .unwrap()
        .push((token.clone(), method.clone(), body.clone()));
    if token != BOT_TOKEN {
        // As Telegram answers a revoked or unknown token: HTTP 401 with the error object.
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
        );
    }
    let result = match method.as_str() {
        "getMe" => {
            json!({"id": 123456789, "is_bot": true, "first_name": "Test", "username": "test_bot"})
        }
        "getUpdates" => {
            let offset = body["offset"].as_i64().unwrap_or(0);
            let wait = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0).min(25));
            let deadline = Instant::now() + wait;
            loop {
                let arrived = fake.arrived.notified();
                let pending: Vec<Value> = fake
                    .updates
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|u| u["update_id"].as_i64() >= Some(offset))
                    .take(body["limit"].as_u64().unwrap_or(100) as usize)
                    .cloned()
                    .collect();
                if !pending.is_empty() || Instant::now() >= deadline {
                    break json!(pending);
                }
                let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
            }
        }
        "sendMessage" => json!({"message_id": 1, "date": 1_765_000_000,
            "chat": {"id": body["chat_id"], "type": "private"}, "text": body["text"]}),
        _ => json!(true),
    };
    (
        axum::http::StatusCode::OK,
        Json(json!({"ok": true, "result": result})),
    )
}

/// `PUT /api/instances/me/channels/telegram` with `bot_token`, answering only the owner.
async fn connect_bot(edge: &Edge, token: &str, bot_token: &str) -> Response {
    let body = json!({"botToken": bot_token, "allowFrom": [OWNER.to_string()]});
    edge.api(
        "PUT",
        "/api/instances/me/channels/telegram",
        Some(token),
        Some(body),
    )
    .await
}

/// The caller's Telegram channel as `GET /api/instances/me/channels` lists it.
async fn telegram_channel(edge: &Edge, token: &str) -> Value {
    edge.api("GET", "/api/instances/me/channels", Some(token), None)
        .await
        .json()["channels"][0]
        .clone()
}

/// One Bot API call through the edge's relay as an instance makes it: the answer.
async fn relay(meter: SocketAddr, token: &str, method: &str, body: &Value) -> Response {
    crate::llm_meter::post(meter, &format!("/telegram/bot{token}/{method}"), None, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_through_the_relay_keeps_the_token_and_counts_every_allowed_message() {
    let (telegram, api) = FakeTelegram::start(IpAddr::from([127, 0, 0, 1])).await;
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("channels", &format!("telegram_api_root = \"http://{api}\""))
        .start()
        .await;
    let (token, _, _) = edge.register("tg@example.com", PW).await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "tgbox"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let instance_id = created.json()["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = "/api/instances/me/channels/telegram";

    // Bad input: each field named, nothing stored.
    for (body, field, code) in [
        (
            json!({"botToken": "12345", "allowFrom": ["111"]}),
            "botToken",
            "INVALID_BOT_TOKEN",
        ),
        (
            json!({"botToken": BOT_TOKEN, "allowFrom": []}),
            "allowFrom",
            "ALLOW_FROM_REQUIRED",
        ),
        (
            json!({"botToken": BOT_TOKEN, "allowFrom": ["@alice"]}),
            "allowFrom",
            "INVALID_USER_ID",
        ),
    ] {
        let refused = edge.api("PUT", path, Some(&token), Some(body)).await;
        assert_eq!(refused.status, 422, "{}", refused.text());
        assert_eq!(refused.json()["error"]["code"], code, "{}", refused.text());
        assert_eq!(
            refused.json()["error"]["field"],
            field,
            "{}",
            refused.text()
        );
    }
    let unknown = edge
        .api(
            "PUT",
            "/api/instances/me/channels/fax",
            Some(&token),
            Some(json!({"botToken": BOT_TOKEN, "allowFrom": ["111"]})),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let listed = telegram_channel(&edge, &token).await;
    assert_eq!(listed["connected"], false, "{listed}");

    let connected = connect_bot(&edge, &token, BOT_TOKEN).await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    assert_eq!(connected.json()["channel"]["status"], "pending");
    let listed = telegram_channel(&edge, &token).await;
    assert_eq!(listed["connected"], true);
    assert!(
        !listed.to_string().contains("AAHdqTcv"),
        "the token came back: {listed}"
    );

    // The instance's side: its placeholder token, never the bot's.
    let container = format!(
        "0:{}",
        clawdeploy_llm_egress::instance_token(JWT_KEY.as_bytes(), &instance_id)
    );
    let me = relay(meter, &container, "getMe", &json!({})).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["result"]["username"], "test_bot");
    assert!(telegram.calls().iter().all(|(t, _, _)| t == BOT_TOKEN));
    let listed = telegram_channel(&edge, &token).await;
    assert_eq!(listed["status"], "connected", "{listed}");
    // A token Telegram refuses (revoked at @BotFather): the channel says so and what to do.
    let revoked = connect_bot(&edge, &token, "987654321:AAHrevokedrevokedrevokedrevoked00").await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(
        relay(meter, &container, "getMe", &json!({})).await.status,
        401
    );
    let listed = telegram_channel(&edge, &token).await;
    assert_eq!(listed["status"], "error", "{listed}");
    let detail = listed["statusDetail"].to_string();
    assert!(
        detail.contains("Telegram refused the bot token") && detail.contains("@BotFather"),
        "{detail}"
    );
    let again = connect_bot(&edge, &token, BOT_TOKEN).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["channel"]["status"], "pending");

    // Nobody else's token, and nothing that would take the bot's updates away from the relay.
    assert_eq!(
        relay(meter, "0:cdi.forged.00", "getMe", &json!({}))
            .await
            .status,
        401
    );
    let hook = relay(
        meter,
        &container,
        "setWebhook",
        &json!({"url": "https://evil.example/hook"}),
    )
    .await;
    assert_eq!(hook.status, 403, "{}", hook.text());
    assert!(telegram.calls().iter().all(|(_, m, _)| m != "setWebhook"));

    // 101 messages from the owner on the free tier (100 a month), one from a stranger.
    for n in 0..101 {
        telegram.message(OWNER, &format!("message {n}"));
    }
    telegram.message(STRANGER, "let me in");
    let (mut delivered, mut emptied, mut offset) = (Vec::new(), Vec::new(), 0);
    while offset < 102 {
        let got = relay(
            meter,
            &container,
            "getUpdates",
            &json!({"offset": offset, "timeout": 0, "limit": 40}),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
        for update in got.json()["result"].as_array().unwrap() {
            let id = update["update_id"].as_i64().unwrap();
            match update.get("message") {
                Some(m) => delivered.push((id, m["from"]["id"].as_i64().unwrap())),
                None => emptied.push(id),
            }
            offset = id + 1;
        }
    }
    let from_owner = delivered.iter().filter(|(_, f)| *f == OWNER).count();
    assert_eq!(from_owner, 100, "the first 100 reach the instance");
    assert!(
        delivered.contains(&(102, STRANGER)),
        "the stranger's passes, for OpenClaw's allowlist"
    );
    assert_eq!(emptied, [101], "the 101st is held back, its update_id kept");
    let refusals = telegram.sent_to(OWNER);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains("100 messages"), "{}", refusals[0]);
    assert!(telegram.sent_to(STRANGER).is_empty());
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(
        me.json()["instance"]["usage"]["messagesThisMonth"],
        100,
        "{}",
        me.text()
    );

    // The same updates again (an offset not confirmed): nothing is counted twice.
    let again = relay(
        meter,
        &container,
        "getUpdates",
        &json!({"offset": 1, "limit": 5}),
    )
    .await;
    assert_eq!(again.json()["result"].as_array().unwrap().len(), 5);
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.json()["instance"]["usage"]["messagesThisMonth"], 100);

    // Disconnected: the token is gone and the relay serves the instance nothing.
    let gone = edge.api("DELETE", path, Some(&token), None).await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(
        relay(meter, &container, "getMe", &json!({})).await.status,
        404
    );
    assert_eq!(
        edge.api("DELETE", path, Some(&token), None).await.status,
        404
    );
}

/// A free plan's one channel, and a plan without channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_channels_is_told_where_to_upgrade() {
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("tiers.free", "channels = 0")
        .start()
        .await;
    let (token, _, _) = edge.register("nochannel@example.com", PW).await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "nochan"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let refused = connect_bot(&edge, &token, BOT_TOKEN).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "CHANNEL_TIER");
    assert!(
        refused.json()["error"]["upgradeUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/billing")),
        "{}",
        refused.text()
    );
}

/// The real OpenClaw's Telegram channel through the relay: the owner's message is answered by
/// the assistant, a stranger's is ignored by OpenClaw's allowlist, and only the owner's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_answers_its_owner_on_telegram_and_ignores_strangers() {
    let image = openclaw_image().await;
    // Both fakes listen where the edge reaches them (loopback); instances reach only the edge.
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let (telegram, api) = FakeTelegram::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("octg{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let edge = openclaw_edge(&image, &node_id, 1, 2)
        .section("runtime", "docker_network = \"clawdeploy-channels-test\"")
        .section("llm", &format!("openai_url = \"http://{provider_addr}\""))
        .section("channels", &format!("telegram_api_root = \"http://{api}\""))
        .start()
        .await;
    let (token, _, _) = edge.register("tgowner@example.com", PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-test-tg"})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "tgowner"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let connected = connect_bot(&edge, &token, BOT_TOKEN).await;
    assert_eq!(connected.status, 200, "{}", connected.text());

    telegram.message(STRANGER, "hello from a stranger");
    telegram.message(OWNER, "hello from the owner");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !telegram.sent_to(OWNER).iter().any(|t| t.contains(ANSWER)) {
        assert!(
            Instant::now() < deadline,
            "no answer on Telegram; calls: {:?}\n{}",
            telegram
                .calls()
                .iter()
                .map(|(_, m, b)| format!("{m} {b}"))
                .collect::<Vec<_>>(),
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        telegram.sent_to(STRANGER).is_empty(),
        "{:?}",
        telegram.sent_to(STRANGER)
    );
    assert!(
        telegram.calls().iter().all(|(t, _, _)| t == BOT_TOKEN),
        "a call reached Telegram without the owner's token"
    );
    assert!(provider
        .authorizations()
        .iter()
        .all(|a| a == "Bearer sk-test-tg"));
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(
        me.json()["instance"]["usage"]["messagesThisMonth"],
        1,
        "{}",
        me.text()
    );
    let listed = telegram_channel(&edge, &token).await;
    assert_eq!(listed["status"], "connected", "{listed}");
    assert!(listed["lastMessageAt"].is_i64());
}
