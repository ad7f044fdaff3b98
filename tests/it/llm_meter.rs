//! The LLM egress meter against a fake OpenAI-compatible provider (LLM providers cannot run here;
//! the fake implements the documented Chat Completions protocol: JSON answers with `usage`, and SSE
//! streams that end with a `usage` chunk when `stream_options.include_usage` is set, then `[DONE]`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::support::*;

const PW: &str = "correct horse battery staple 9";

/// What the fake provider received: (authorization header, request JSON, all headers).
type Seen = Arc<Mutex<Vec<(String, Value, HeaderMap)>>>;

const JSON_ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;

fn sse_answer(include_usage: bool) -> String {
    let mut out = String::new();
    for word in ["streamed", " answer"] {
        out.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"c2","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content": word}}]})
        ));
    }
    if include_usage {
        out.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"c2","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}})
        ));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push((auth, request.clone(), headers));
    if request["stream"] == true {
        let usage = request["stream_options"]["include_usage"] == true;
        ([("content-type", "text/event-stream")], sse_answer(usage)).into_response()
    } else {
        ([("content-type", "application/json")], JSON_ANSWER).into_response()
    }
}

pub async fn fake_provider() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// An edge whose LLM meter listens on a free loopback port and calls the fake provider for
/// OpenAI: (edge, meter address, what the provider saw).
async fn openai_meter_edge() -> (Edge, SocketAddr, Seen) {
    let (provider, seen) = fake_provider().await;
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", &format!("openai_url = \"http://{provider}\""))
        .start()
        .await;
    (edge, meter, seen)
}

/// A raw HTTP/1.1 POST to the meter; the response.
pub async fn post(meter: SocketAddr, path: &str, token: Option<&str>, body: &Value) -> Response {
    let body = body.to_string();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: meter\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    try_send(meter, raw.as_bytes())
        .await
        .expect("the meter answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_meter_injects_the_key_streams_unchanged_counts_tokens_and_enforces_the_budget() {
    let (provider, seen) = fake_provider().await;
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", &format!("openai_url = \"http://{provider}\""))
        .section("llm", "allow_private_custom = [\"127.0.0.1\"]")
        .section("tiers.free", "tokens_per_month = 30")
        .start()
        .await;
    let (token, instance_id, instance_token) = user_with_key(
        &edge,
        "llm",
        "custom",
        json!({"key": "sk-real-custom", "baseUrl": format!("http://{provider}/v1")}),
    )
    .await;
    let resp = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-real-openai"})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let chat = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
    wait_listening(meter).await;

    // No token, a forged one, and the user's own key are refused, and nothing reaches the provider.
    let missing = post(meter, "/custom/chat/completions", None, &chat).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert_eq!(missing.error_code(), "INVALID_INSTANCE_TOKEN");
    let forged = clawdeploy_llm_egress::instance_token(b"another key", &instance_id);
    assert_eq!(
        post(meter, "/custom/chat/completions", Some(&forged), &chat)
            .await
            .status,
        401
    );
    assert_eq!(
        post(
            meter,
            "/custom/chat/completions",
            Some("sk-real-custom"),
            &chat
        )
        .await
        .status,
        401
    );
    assert!(seen.lock().unwrap().is_empty());

    // A JSON answer: the real key injected upstream, the answer unchanged, 10 tokens.
    let answer = post(
        meter,
        "/custom/chat/completions",
        Some(&instance_token),
        &chat,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), JSON_ANSWER);
    assert_eq!(seen.lock().unwrap()[0].0, "Bearer sk-real-custom");

    // A streamed answer through the OpenAI route: usage requested, the stream unchanged, 15 tokens.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let answer = post(
        meter,
        "/openai/v1/chat/completions",
        Some(&instance_token),
        &streamed,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(answer.text(), sse_answer(true));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].0, "Bearer sk-real-openai");
        assert_eq!(seen[1].1["stream_options"]["include_usage"], true);
    }
    let usage = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await
        .json();
    assert_eq!(usage["instance"]["usage"]["tokensThisMonth"], 25, "{usage}");

    // 25 of 30 used: one more call passes (to 35), the next is refused before the provider.
    assert_eq!(
        post(
            meter,
            "/custom/chat/completions",
            Some(&instance_token),
            &chat
        )
        .await
        .status,
        200
    );
    let refused = post(
        meter,
        "/custom/chat/completions",
        Some(&instance_token),
        &chat,
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "TOKEN_QUOTA_EXCEEDED");
    assert_eq!(seen.lock().unwrap().len(), 3);
    let usage = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await
        .json();
    assert_eq!(usage["instance"]["usage"]["tokensThisMonth"], 35, "{usage}");
}

/// A name of this machine that resolves to a loopback address (Debian's /etc/hosts names the
/// host itself), other than `localhost`, which the URL check refuses by name.
fn loopback_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_string();
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80))
        .map(Iterator::collect)
        .unwrap_or_default();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()),
        "this test needs the host name {name:?} to resolve to loopback (/etc/hosts); it resolves to {resolved:?}"
    );
    name
}

/// A new user with an instance and a `provider` key (`key` is the PUT body) on `edge`: the user's
/// session token, the instance's id and its meter token.
pub async fn user_with_key(
    edge: &Edge,
    subdomain: &str,
    provider: &str,
    key: Value,
) -> (String, String, String) {
    let (token, _, _) = edge.register(&format!("{subdomain}@example.com"), PW).await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": subdomain })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let instance_id = created.json()["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let put = edge
        .api(
            "PUT",
            &format!("/api/account/api-keys/{provider}"),
            Some(&token),
            Some(key),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let instance_token = clawdeploy_llm_egress::instance_token(JWT_KEY.as_bytes(), &instance_id);
    (token, instance_id, instance_token)
}

/// Writes `url` as the stored custom `baseUrl` straight into the edge's SQLite store, as a row
/// written before the URL check (or by any path around it) would hold it.
pub async fn store_custom_base_url(edge: &Edge, url: &str) {
    let db = format!(
        "sqlite://{}",
        edge.data_dir().join("clawdeploy.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("UPDATE api_keys SET base_url = ? WHERE provider = 'custom'")
        .bind(url)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// A public custom endpoint (the PUT's check passes; tests then rewrite it in the store).
pub fn public_custom_key() -> Value {
    json!({"key": "sk-user-12345678", "baseUrl": "https://llm.example.com/v1"})
}

/// Waits for the meter's listener (a background service).
pub async fn wait_listening(meter: SocketAddr) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(meter).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the LLM meter never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A custom `baseUrl` that spells a private host some other way than its canonical address —
/// userinfo, short or numeric IPv4, IPv4-mapped IPv6 — is refused when it is set, with a message
/// naming what is wrong; so are private hosts written plainly. (Before the fix all but the plain
/// ones were stored, and the meter then called the private address from the host.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_endpoints_that_spell_a_private_host_are_refused_when_set() {
    let edge = EdgeBuilder::new().start().await;
    let (token, _, _) = edge.register("spell@example.com", PW).await;
    for (base_url, says) in [
        ("http://x@127.0.0.1:9/v1", "user name"),
        ("http://x@llm.example.com/v1", "user name"),
        ("http://127.1:9/v1", "127.0.0.1"),
        ("http://2130706433:9/v1", "127.0.0.1"),
        ("http://0x7f.1/v1", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]:9/v1", "[::ffff:7f00:1]"),
        ("http://[::ffff:7f00:1]:9/v1", "not a public address"),
        ("http://127.0.0.1:9/v1", "not a public address"),
        ("http://172.17.0.1:18789/v1", "not a public address"),
        ("http://169.254.169.254/latest", "not a public address"),
        ("http://198.18.0.1/v1", "not a public address"),
        ("http://localhost:9/v1", "not a public address"),
    ] {
        let resp = edge
            .api(
                "PUT",
                "/api/account/api-keys/custom",
                Some(&token),
                Some(json!({"key": "sk-attacker-1234", "baseUrl": base_url})),
            )
            .await;
        assert_eq!(resp.status, 422, "{base_url} was accepted: {}", resp.text());
        assert_eq!(resp.error_code(), "INVALID_BASE_URL", "{base_url}");
        assert!(
            resp.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{base_url}: {}",
            resp.text()
        );
    }
    let keys = edge
        .api("GET", "/api/account/api-keys", Some(&token), None)
        .await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    assert!(
        !keys.text().contains("sk-attacker"),
        "a refused key was stored: {}",
        keys.text()
    );
    let public = edge
        .api(
            "PUT",
            "/api/account/api-keys/custom",
            Some(&token),
            Some(json!({"key": "sk-user-12345678", "baseUrl": "https://llm.example.com/v1"})),
        )
        .await;
    assert_eq!(public.status, 200, "{}", public.text());
}

/// A private address already in the store (written before this check existed, or by any path
/// around it) is never connected to: the meter parses the URL again and its connector checks the
/// address it would connect to. The listener behind the private address sees no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_never_connects_to_a_private_address_from_the_store() {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let connections = connections.clone();
        async move {
            while target.accept().await.is_ok() {
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .start()
        .await;
    let (_, _, instance_token) =
        user_with_key(&edge, "stored", "custom", public_custom_key()).await;
    let chat = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
    wait_listening(meter).await;

    for (stored, code) in [
        (
            format!("http://127.1:{}/v1", target_addr.port()),
            "BAD_CUSTOM_ENDPOINT",
        ),
        (format!("http://x@{target_addr}/v1"), "BAD_CUSTOM_ENDPOINT"),
        (
            format!("http://[::ffff:127.0.0.1]:{}/v1", target_addr.port()),
            "BAD_CUSTOM_ENDPOINT",
        ),
        (format!("http://{target_addr}/v1"), "BAD_CUSTOM_ENDPOINT"),
        // A name is resolved by the connector, which refuses the loopback address it finds.
        (
            format!("http://{}:{}/v1", loopback_name(), target_addr.port()),
            "PRIVATE_UPSTREAM",
        ),
    ] {
        store_custom_base_url(&edge, &stored).await;
        let refused = post(
            meter,
            "/custom/chat/completions",
            Some(&instance_token),
            &chat,
        )
        .await;
        assert_eq!(refused.status, 403, "{stored}: {}", refused.text());
        assert_eq!(refused.error_code(), code, "{stored}: {}", refused.text());
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the meter connected to a private address"
    );
}

/// The meter passes providers only the headers their APIs read: a container's forwarding and
/// identity headers (with which it impersonated another tenant to that tenant's gateway), its
/// cookies and `x-openclaw-*` headers never leave the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_forwards_only_provider_headers() {
    let (edge, meter, seen) = openai_meter_edge().await;
    let (_, _, instance_token) =
        user_with_key(&edge, "headers", "openai", json!({"key": "sk-real-openai"})).await;
    wait_listening(meter).await;

    let body =
        json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let raw = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nHost: meter\r\nAuthorization: Bearer {instance_token}\r\n\
         Content-Type: application/json\r\nOpenAI-Beta: assistants=v2\r\n\
         X-Forwarded-User: 00000000-0000-0000-0000-000000000001\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\nX-OpenClaw-Scopes: operator.admin\r\n\
         Cookie: clawdeploy_session=stolen\r\nX-Custom: anything\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = try_send(meter, raw.as_bytes())
        .await
        .expect("the meter answers");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = seen.lock().unwrap();
    let headers = &seen[0].2;
    for name in [
        "x-forwarded-user",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-openclaw-scopes",
        "cookie",
        "x-custom",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the provider: {headers:?}"
        );
    }
    assert_eq!(headers["openai-beta"], "assistants=v2");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["authorization"], "Bearer sk-real-openai");
}

/// A warm pool member's token (in its config from its first boot): while nobody has the member,
/// its model calls are answered by the meter's stub (the warm-up turn), never forwarded nor
/// counted; once the member serves an instance, the same token is that instance's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_token_gets_the_warm_up_stub_until_assigned_then_is_its_instances() {
    let (edge, meter, seen) = openai_meter_edge().await;
    let (_token, instance_id, _) =
        user_with_key(&edge, "warm", "openai", json!({"key": "sk-real-openai"})).await;
    let db = format!(
        "sqlite://{}",
        edge.data_dir().join("clawdeploy.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query(
        "INSERT INTO pool_members (id, node_id, name, state, created_at, updated_at) \
         VALUES ('6a0c1f9e-1b7c-4d43-9b7e-2f4f1c9d0a11', 'n', 'cd-n-warm', 'idle', 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let member = clawdeploy_llm_egress::member_token(JWT_KEY.as_bytes(), "cd-n-warm");
    wait_listening(meter).await;

    let chat = json!({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "warm up"}]});
    let stub = post(meter, "/openai/v1/chat/completions", Some(&member), &chat).await;
    assert_eq!(stub.status, 200, "{}", stub.text());
    assert_eq!(stub.json()["choices"][0]["message"]["content"], "Ready.");
    let streamed = post(
        meter,
        "/openai/v1/chat/completions",
        Some(&member),
        &json!({"model": "gpt-5-mini", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert!(
        streamed.text().trim_end().ends_with("data: [DONE]"),
        "{}",
        streamed.text()
    );
    let other = post(meter, "/openai/v1/embeddings", Some(&member), &chat).await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (403, "NOT_ASSIGNED")
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "a warm-up call left the node"
    );
    // A forged member token is refused like any other.
    let forged = clawdeploy_llm_egress::member_token(b"another key", "cd-n-warm");
    assert_eq!(
        post(meter, "/openai/v1/chat/completions", Some(&forged), &chat)
            .await
            .status,
        401
    );

    // Assigned: the same token now calls the provider with the owner's key.
    sqlx::query(
        "UPDATE pool_members SET state = 'claimed', instance_id = ? WHERE name = 'cd-n-warm'",
    )
    .bind(&instance_id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let forwarded = post(meter, "/openai/v1/chat/completions", Some(&member), &chat).await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.text());
    assert_eq!(
        forwarded.json()["choices"][0]["message"]["content"],
        "hi there"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "Bearer sk-real-openai");
}
