//! The instance lifecycle with the real OpenClaw (issue 24; slow: one OpenClaw container): a warm
//! member is handed over without a gateway restart and its owner's first turn finds it warm (the
//! warm-up turn never left the node), then it sleeps when idle and the edge wakes it for a held
//! HTTP request and for a WebSocket, and a scheduled job is not slept through. The provider is the
//! fake OpenAI-compatible one of `openclaw.rs` (LLM providers cannot run here), reached only
//! through the edge's LLM meter.
//!
//! With swap on the node (scripts/setup-swap.sh, run by scripts/test.sh) instances are frozen;
//! without, stopped.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::openclaw::{
    call, chat, connect_owner, openclaw_edge, openclaw_image, send_from_host, Cleanup,
    FakeProvider, ANSWER,
};
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const PATIENCE: Duration = Duration::from_secs(300);

async fn route_state(edge: &Edge, host: &str) -> Value {
    route_of(edge, host).await["state"].clone()
}

async fn wait_state(edge: &Edge, host: &str, state: &str) {
    wait_route_state(edge, host, state, PATIENCE).await;
}

fn node_swaps() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_handover_without_restart_then_sleep_wake_and_a_due_job() {
    let image = openclaw_image().await;
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("oclife{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let mode = if node_swaps() { "freeze" } else { "stop" };
    // A network of its own: each edge installs the egress rules of its network, allowing its own
    // LLM meter only, so edges running at once must not share one.
    let edge = openclaw_edge(&image, &node_id, 1, 2)
        .section("runtime", "docker_network = \"clawdeploy-lifecycle-test\"")
        .section("llm", &format!("openai_url = \"http://{provider_addr}\""))
        .section("pool", "tick_secs = 1")
        .section("pool", "idle_stop_secs = 4")
        .section("pool", &format!("sleep = \"{mode}\""))
        .start()
        .await;
    wait_idle(&edge, 1, PATIENCE).await;
    // The warm-up turn ran against the meter's stub: nothing reached the provider.
    assert!(
        provider.authorizations().is_empty(),
        "the warm-up left the node: {:?}",
        provider.authorizations()
    );

    let (token, _, _) = edge.register("lena@example.com", PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-test-lena"})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let signup = Instant::now();
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "lena"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["instance"]["status"], "running");
    let host = format!("lena.{BASE_DOMAIN}");

    // No restart after the handover: the first connection stays up through the first turn (a
    // restarting gateway closed it with 1013 "gateway starting" before).
    let (mut ws, _) = connect_owner(&edge, &host, &token).await;
    assert_eq!(chat(&mut ws, "hello").await, ANSWER);
    eprintln!(
        "openclaw-lifecycle: signup to first reply {:.2} s",
        signup.elapsed().as_secs_f64()
    );
    assert!(
        provider
            .authorizations()
            .iter()
            .all(|a| a == "Bearer sk-test-lena"),
        "{:?}",
        provider.authorizations()
    );
    // The warm-up session is gone: the owner sees only their own.
    let sessions = call(&mut ws, "s1", "sessions.list", json!({})).await;
    assert_eq!(sessions["ok"], true, "{sessions}");
    assert!(
        !sessions.to_string().contains("warm-up"),
        "the warm-up session is left: {sessions}"
    );
    ws.close(None).await.ok();
    drop(ws);

    // Idle: it sleeps. A held HTTP request wakes it and is answered by OpenClaw.
    wait_state(&edge, &host, "sleeping").await;
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.json()["instance"]["status"], "sleeping", "{}", me.text());
    let woken = Instant::now();
    let raw = format!(
        "GET /control-ui-config.json HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let resp = send_from_host(edge.addr, raw.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), edge.log_text());
    eprintln!(
        "openclaw-lifecycle: {mode} wake to the held request's answer {:.2} s",
        woken.elapsed().as_secs_f64()
    );
    assert_eq!(route_state(&edge, &host).await, "running");

    // Asleep again: a WebSocket upgrade wakes it, and the chat works at once (its suspension
    // lease was released before the upgrade was let through).
    wait_state(&edge, &host, "sleeping").await;
    let (mut ws, _) = connect_owner(&edge, &host, &token).await;
    assert_eq!(chat(&mut ws, "after a nap").await, ANSWER);

    // A job due in 45 s (more than one tick plus the 30 s wake lead): the instance sleeps, and is
    // woken before the job is due, without any request, and the job runs.
    // `cron.add` needs `operator.admin`, which owners never have (their agent schedules jobs with
    // its cron tool): the test adds it as the platform, the way the pool connects.
    ws.close(None).await.ok();
    drop(ws);
    let route = route_of(&edge, &host).await;
    let upstream: std::net::SocketAddr = route["upstream"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .expect("the instance's upstream");
    let gateway_id = route["gatewayId"].as_str().expect("a gateway identity");
    let mut ws = as_platform(upstream, gateway_id).await;
    let due_ms = clawdeploy_store::time::now_ms() + 45_000;
    let due = Instant::now() + Duration::from_secs(45);
    let at = clawdeploy_store::time::rfc3339(due_ms);
    let add = call(
        &mut ws,
        "cron1",
        "cron.add",
        json!({"name": "lifecycle-test", "schedule": {"kind": "at", "at": at},
            "sessionTarget": "main", "wakeMode": "now",
            "payload": {"kind": "systemEvent", "text": "scheduled ping"}}),
    )
    .await;
    assert_eq!(add["ok"], true, "{add}");
    ws.close(None).await.ok();
    drop(ws);
    wait_state(&edge, &host, "sleeping").await;
    let calls_before_job = provider.requests().len();
    wait_state(&edge, &host, "running").await;
    assert!(Instant::now() < due, "woken only after the job was due");
    let deadline = due + Duration::from_secs(120);
    while provider.requests().len() == calls_before_job {
        assert!(
            Instant::now() < deadline,
            "the scheduled job never ran\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A gateway connection straight to the container as the platform's identity (the edge's proof
/// header for the instance's gateway identity, `operator.admin`), as the pool makes it.
async fn as_platform(upstream: std::net::SocketAddr, gateway_id: &str) -> WebSocket {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let proof = clawdeploy_proxy::gateway_trust::proof_header(JWT_KEY.as_bytes(), gateway_id);
    let mut request = format!("ws://{upstream}/").into_client_request().unwrap();
    for (name, value) in [
        ("x-forwarded-for", "192.0.2.1"),
        (
            "x-forwarded-user",
            clawdeploy_proxy::gateway_trust::PLATFORM_USER,
        ),
        (proof.as_str(), "1"),
    ] {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let tcp = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    crate::openclaw::next_frame(&mut ws)
        .await
        .expect("challenge");
    let connect = json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,
        "client":{"id":"gateway-client","version":"test","platform":"linux","mode":"backend"},
        "role":"operator","scopes": clawdeploy_proxy::gateway_trust::PLATFORM_SCOPES}});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        connect.to_string(),
    ))
    .await
    .unwrap();
    loop {
        let frame = crate::openclaw::next_frame(&mut ws).await.expect("hello");
        if frame["id"] == "c1" {
            assert_eq!(
                frame["ok"], true,
                "the platform identity was refused: {frame}"
            );
            return ws;
        }
    }
}

/// A settings change while the owner's turn runs (OpenClaw reloads its config 0.5-1.3 s after the
/// pool rewrites it, here in the middle of a 4 s model call) does not lose the turn's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_during_a_turn_keeps_its_reply() {
    let image = openclaw_image().await;
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("ocmid{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let edge = openclaw_edge(&image, &node_id, 1, 2)
        .section("runtime", "docker_network = \"clawdeploy-midturn-test\"")
        .section("llm", &format!("openai_url = \"http://{provider_addr}\""))
        .start()
        .await;
    wait_idle(&edge, 1, PATIENCE).await;
    let (token, _, _) = edge.register("mid@example.com", PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-test-mid"})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "midturn"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let host = format!("midturn.{BASE_DOMAIN}");
    let (mut ws, _) = connect_owner(&edge, &host, &token).await;
    assert_eq!(chat(&mut ws, "first").await, ANSWER);
    provider.answer_after(Duration::from_secs(4));
    let (turn, change) = tokio::join!(chat(&mut ws, "second"), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        edge.api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({"timezone": "Europe/Paris"})),
        )
        .await
    });
    assert_eq!(change.status, 200, "{}", change.text());
    assert_eq!(turn, ANSWER);
}
