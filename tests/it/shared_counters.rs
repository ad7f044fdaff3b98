//! Two edge processes sharing PostgreSQL and a real Redis (Debian's redis-server, started by the
//! test on its own port so killing it disturbs nothing else) enforce one message quota; with Redis
//! killed mid-test traffic keeps flowing, and the counts reconcile once it is back; a retry sent
//! to the other edge is counted once.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const PW: &str = "correct horse battery staple 9";

/// A redis-server of this test's own, without persistence (a restart loses its data).
pub(crate) struct Redis {
    child: tokio::process::Child,
    port: u16,
}

impl Redis {
    pub(crate) async fn start(port: u16) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/start-redis.sh installs it)");
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

fn node_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "r{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn edge(url: &str, redis: &str, pool: bool) -> EdgeBuilder {
    let mut b = EdgeBuilder::new()
        .database_url(url)
        .section("redis", &format!("url = \"{redis}\""))
        .section("redis", "sync_interval_ms = 100")
        .section("tiers.free", "messages_per_month = 10")
        // Counts reach the other edge through Redis only, not through the store.
        .section("metering", "flush_interval_secs = 3600");
    if pool {
        b = b
            .section("runtime", "kind = \"process\"")
            .section("runtime", "config = \"fixture\"")
            .section("runtime", &format!("image = \"{}\"", fixture_bin()))
            .section("runtime", "user = \"65534:65534\"")
            .section("pool", &format!("node_id = \"{}\"", node_id()))
            .section("pool", "min_idle = 1")
            .section("pool", "memory_mb = 64");
    }
    b
}

async fn gateway(edge: &Edge, host: &str, token: &str) -> WebSocket {
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut request = format!("ws://{host}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    next_json(&mut ws).await;
    ws.send(Message::text(
        json!({"type":"req","id":"c","method":"connect","params":{"minProtocol":4,"maxProtocol":4}}).to_string(),
    ))
    .await
    .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["ok"], true, "{hello}");
    ws
}

async fn send(ws: &mut WebSocket, id: &str) -> Value {
    ws.send(Message::text(
        json!({"type":"req","id": id,"method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey": id}}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == "res" && frame["id"] == id {
            return frame;
        }
    }
}

/// Polls `GET /api/instances/me` on `edge` until it shows `n` messages.
async fn wait_count(edge: &Edge, token: &str, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let me = edge
            .api("GET", "/api/instances/me", Some(token), None)
            .await
            .json();
        if me["instance"]["usage"]["messagesThisMonth"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "never reached {n}: {me}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_share_one_quota_through_redis_and_reconcile_after_an_outage() {
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    let redis = Redis::start(free_port()).await;
    let first = edge(&url, &redis.url(), true).start().await;
    let second = edge(&url, &redis.url(), false).start().await;
    let (token, _, _) = first
        .register(&format!("{}@example.com", node_id()), PW)
        .await;
    let sub = node_id();
    let created = first
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": sub})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let host = format!("{sub}.{BASE_DOMAIN}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.get_as(&host, "/healthz", &token).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the second edge never routed the instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a = gateway(&first, &host, &token).await;
    let mut b = gateway(&second, &host, &token).await;

    // One quota of 10 across both edges: 4 through each, each seeing the other's.
    for i in 0..4 {
        assert_eq!(send(&mut a, &format!("a{i}")).await["ok"], true);
    }
    wait_count(&second, &token, 4).await;
    for i in 0..4 {
        assert_eq!(send(&mut b, &format!("b{i}")).await["ok"], true);
    }
    wait_count(&first, &token, 8).await;
    // A retry of a message the first edge counted, sent through the second within one sync
    // interval (its keys are per node): the second forwards and counts it, and the sync takes it
    // back, so both settle on 8.
    assert_eq!(send(&mut b, "a0").await["ok"], true);
    wait_count(&second, &token, 8).await;
    wait_count(&first, &token, 8).await;

    // Redis dies (losing its data): traffic keeps flowing, each edge counting alone.
    let port = redis.kill().await;
    assert_eq!(send(&mut a, "a-outage").await["ok"], true);
    assert_eq!(send(&mut b, "b-outage").await["ok"], true);
    // Redis returns empty: both edges reconcile to the true total, 10, and both refuse the 11th.
    let _redis = Redis::start(port).await;
    wait_count(&first, &token, 10).await;
    wait_count(&second, &token, 10).await;
    assert_eq!(
        send(&mut a, "a-over").await["error"]["code"],
        "QUOTA_EXCEEDED"
    );
    assert_eq!(
        send(&mut b, "b-over").await["error"]["code"],
        "QUOTA_EXCEEDED"
    );
}
