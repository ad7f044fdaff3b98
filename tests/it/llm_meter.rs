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

/// What the fake provider received: (authorization header, request JSON).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

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
    seen.lock().unwrap().push((auth, request.clone()));
    if request["stream"] == true {
        let usage = request["stream_options"]["include_usage"] == true;
        ([("content-type", "text/event-stream")], sse_answer(usage)).into_response()
    } else {
        ([("content-type", "application/json")], JSON_ANSWER).into_response()
    }
}

async fn fake_provider() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
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
        .section("llm", "allow_private_custom = true")
        .section("tiers.free", "tokens_per_month = 30")
        .start()
        .await;
    let (token, _, _) = edge.register("llm@example.com", PW).await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "llm"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let instance_id = created.json()["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (provider_name, key, base) in [
        (
            "custom",
            "sk-real-custom",
            Some(format!("http://{provider}/v1")),
        ),
        ("openai", "sk-real-openai", None),
    ] {
        let mut body = json!({"key": key});
        if let Some(base) = base {
            body["baseUrl"] = json!(base);
        }
        let resp = edge
            .api(
                "PUT",
                &format!("/api/account/api-keys/{provider_name}"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let instance_token = clawdeploy_metering::llm::instance_token(JWT_KEY.as_bytes(), &instance_id);
    let chat = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});

    // Wait for the meter's listener (a background service).
    let deadline = std::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(meter).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the LLM meter never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // No token, a forged one, and the user's own key are refused, and nothing reaches the provider.
    let missing = post(meter, "/custom/chat/completions", None, &chat).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert_eq!(missing.error_code(), "INVALID_INSTANCE_TOKEN");
    let forged = clawdeploy_metering::llm::instance_token(b"another key", &instance_id);
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
