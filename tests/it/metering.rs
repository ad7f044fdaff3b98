//! Metering and limits through the real edge (issue #7): message quotas counted from the gateway
//! WebSocket (instances are the protocol-speaking fixture run by the process runtime), rate
//! limits, and the Prometheus exposition parsed by a Prometheus text-format parser.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use clawdeploy_metering::frames::{encode_frame, opcode, FrameEvent, FrameParser};

use crate::support::*;

const PW: &str = "correct horse battery staple 9";

fn node_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "m{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An edge whose pool runs the fixture gateway as local processes.
pub(crate) fn metered_edge(messages_per_month: Option<u64>) -> EdgeBuilder {
    let mut builder = EdgeBuilder::new()
        .section("runtime", "kind = \"process\"")
        .section("runtime", "config = \"fixture\"")
        .section("runtime", &format!("image = \"{}\"", fixture_bin()))
        .section("runtime", "user = \"65534:65534\"")
        .section("pool", &format!("node_id = \"{}\"", node_id()))
        .section("pool", "min_idle = 1")
        .section("pool", "capacity = 20")
        .section("pool", "memory_mb = 64")
        .section("metering", "flush_interval_secs = 1");
    if let Some(limit) = messages_per_month {
        builder = builder.section("tiers.free", &format!("messages_per_month = {limit}"));
    }
    builder
}

/// Registers a user and creates their instance; (token, host) once it is routed as running.
pub(crate) async fn user_with_instance(
    edge: &Edge,
    email: &str,
    subdomain: &str,
) -> (String, String) {
    let (token, _, _) = edge.register(email, PW).await;
    let host = instance_for(edge, &token, subdomain).await;
    (token, host)
}

/// Creates the user's instance; its host once it is routed as running.
async fn instance_for(edge: &Edge, token: &str, subdomain: &str) -> String {
    let token = token.to_string();
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": subdomain })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let host = format!("{subdomain}.{BASE_DOMAIN}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routes = edge
            .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
            .await
            .json();
        let running = routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == host && r["state"] == "running");
        if running {
            return host;
        }
        assert!(Instant::now() < deadline, "instance never ran: {routes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connected gateway session (handshake done).
pub(crate) async fn gateway(edge: &Edge, host: &str, token: &str) -> WebSocket {
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut request = format!("ws://{host}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("gateway handshake");
    let challenge = next_json(&mut ws).await;
    assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
    ws.send(Message::text(
        json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,
            "client":{"id":"gateway-client","version":"test","platform":"linux","mode":"backend"},"role":"operator"}})
        .to_string(),
    ))
    .await
    .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["ok"], true, "{hello}");
    ws
}

pub(crate) fn chat(id: &str, key: &str) -> Message {
    Message::text(
        json!({"type":"req","id": id,"method":"chat.send","params":{"sessionKey":"agent:main:main","message": format!("hello {id}"),"idempotencyKey": key}})
            .to_string(),
    )
}

/// Waits for the `res` with this id, skipping events.
pub(crate) async fn res_for(ws: &mut WebSocket, id: &str) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == "res" && frame["id"] == id {
            return frame;
        }
    }
}

pub(crate) async fn usage(edge: &Edge, token: &str) -> Value {
    let me = edge
        .api("GET", "/api/instances/me", Some(token), None)
        .await;
    assert_eq!(me.status, 200, "{}", me.text());
    me.json()["instance"]["usage"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hundredth_message_passes_and_the_hundred_and_first_is_refused() {
    let edge = metered_edge(None).start().await;
    let (token, host) = user_with_instance(&edge, "quota@example.com", "quota").await;
    let mut ws = gateway(&edge, &host, &token).await;
    for n in 1..=100 {
        let id = format!("m{n}");
        ws.send(chat(&id, &format!("k{n}"))).await.unwrap();
        let res = res_for(&mut ws, &id).await;
        assert_eq!(res["ok"], true, "message {n}: {res}");
    }
    ws.send(chat("m101", "k101")).await.unwrap();
    let refused = res_for(&mut ws, "m101").await;
    assert_eq!(refused["ok"], false, "{refused}");
    let error = &refused["error"];
    assert_eq!(error["code"], "QUOTA_EXCEEDED", "{refused}");
    assert_eq!(error["details"]["limit"], 100);
    assert_eq!(error["details"]["used"], 100);
    assert!(error["details"]["resetsAt"]
        .as_str()
        .unwrap()
        .ends_with("-01T00:00:00.000Z"));
    assert!(error["details"]["upgradeUrl"]
        .as_str()
        .unwrap()
        .starts_with("http://app."));
    // The connection stays open for everything else.
    ws.send(Message::text(
        json!({"type":"req","id":"h1","method":"health"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(res_for(&mut ws, "h1").await["ok"], true);
    // A retry of an accepted message is forwarded, not counted again.
    ws.send(chat("m1-again", "k1")).await.unwrap();
    assert_eq!(res_for(&mut ws, "m1-again").await["ok"], true);
    let usage = usage(&edge, &token).await;
    assert_eq!(usage["messagesThisMonth"], 100, "{usage}");
    assert_eq!(usage["messagesPerMonth"], 100, "{usage}");
}

/// From the attacker's side: spellings the gateway reads as a user message (escaped keys and
/// values, a repeated key whose last value wins) are counted like the plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_messages_spelled_to_dodge_the_meter_are_counted() {
    let edge = metered_edge(Some(2)).start().await;
    let (token, host) = user_with_instance(&edge, "dodge@example.com", "dodge").await;
    let mut ws = gateway(&edge, &host, &token).await;
    for (id, text) in [
        (
            "d1",
            r#"{"type":"req","id":"d1","meth\u006fd":"chat\u002esend","params":{"sessionKey":"agent:main:main","m\u0065ssage":"hi","message":"hi","idempotencyKey":"d1"}}"#,
        ),
        (
            "d2",
            r#"{"type":"req","id":"d2","method":"chat.history","method":"chat.send","params":{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"d2"}}"#,
        ),
    ] {
        ws.send(Message::text(text)).await.unwrap();
        // The gateway (the fixture parses like JSON.parse: last key wins) ran it as a chat.send.
        assert_eq!(res_for(&mut ws, id).await["ok"], true, "{text}");
    }
    ws.send(chat("d3", "d3")).await.unwrap();
    let refused = res_for(&mut ws, "d3").await;
    assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED", "{refused}");
    assert_eq!(refused["error"]["details"]["used"], 2, "{refused}");
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_racing_at_the_boundary_never_overshoot() {
    let edge = metered_edge(Some(5)).start().await;
    let (token, host) = user_with_instance(&edge, "race@example.com", "race").await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(gateway(&edge, &host, &token).await);
    }
    // Every socket sends 4 messages at once, without waiting for answers.
    for (s, ws) in sockets.iter_mut().enumerate() {
        for n in 0..4 {
            ws.send(chat(&format!("s{s}m{n}"), &format!("s{s}k{n}")))
                .await
                .unwrap();
        }
    }
    let mut accepted = 0;
    let mut refused = 0;
    let mut early = std::collections::HashMap::new();
    for (s, ws) in sockets.iter_mut().enumerate() {
        for n in 0..4 {
            let res = match early.remove(&format!("s{s}m{n}")) {
                Some(res) => res,
                None => loop {
                    // Answers may come out of order: the edge's refusals overtake the gateway's.
                    let frame = next_json(ws).await;
                    if frame["type"] != "res" {
                        continue;
                    }
                    let id = frame["id"].as_str().unwrap().to_string();
                    if id == format!("s{s}m{n}") {
                        break frame;
                    }
                    early.insert(id, frame);
                },
            };
            if res["ok"] == true {
                accepted += 1;
            } else {
                assert_eq!(res["error"]["code"], "QUOTA_EXCEEDED", "{res}");
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (5, 7));
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_once_and_refused_answers_do_not_count() {
    let edge = metered_edge(Some(3)).start().await;
    let (token, host) = user_with_instance(&edge, "retry@example.com", "retry").await;
    let mut ws = gateway(&edge, &host, &token).await;
    ws.send(chat("a", "same-key")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a").await["ok"], true);
    ws.send(chat("a-retry", "same-key")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a-retry").await["ok"], true);
    // The fixture answers sessions.send with ok:false: a user message the gateway refused.
    ws.send(Message::text(
        json!({"type":"req","id":"s1","method":"sessions.send","params":{"key":"agent:main:main","message":"x","idempotencyKey":"other"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(res_for(&mut ws, "s1").await["ok"], false);
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 1);
    for id in ["b", "c"] {
        ws.send(chat(id, id)).await.unwrap();
        assert_eq!(res_for(&mut ws, id).await["ok"], true);
    }
    ws.send(chat("d", "d")).await.unwrap();
    assert_eq!(
        res_for(&mut ws, "d").await["error"]["code"],
        "QUOTA_EXCEEDED"
    );
    // The daily series: today holds the three counted messages.
    let series = edge.api("GET", "/api/usage", Some(&token), None).await;
    assert_eq!(series.status, 200, "{}", series.text());
    let days = series.json()["days"].as_array().unwrap().clone();
    assert_eq!(days.last().unwrap()["messages"], 3, "{days:?}");
    assert_eq!(
        days.iter()
            .map(|d| d["messages"].as_i64().unwrap())
            .sum::<i64>(),
        3
    );
    let bad = edge
        .api("GET", "/api/usage?from=2026-02-30", Some(&token), None)
        .await;
    assert_eq!(bad.error_code(), "INVALID_DATE", "{}", bad.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let mut edge = metered_edge(Some(10)).database_url(&url).start().await;
    let (token, host) = user_with_instance(&edge, "restart@example.com", "restart").await;
    let mut ws = gateway(&edge, &host, &token).await;
    for id in ["a", "b", "c"] {
        ws.send(chat(id, id)).await.unwrap();
        assert_eq!(res_for(&mut ws, id).await["ok"], true);
    }
    drop(ws);
    // A graceful stop writes what the last flush has not.
    edge.signal(libc::SIGTERM);
    let status = tokio::time::timeout(PATIENCE, edge.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(
        edge.log_text()
            .contains("usage counters flushed at shutdown"),
        "{}",
        edge.log_text()
    );
    drop(edge);
    let second = EdgeBuilder::new().database_url(&url).start().await;
    let login = second.login("restart@example.com", PW).await;
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["token"].as_str().unwrap().to_string();
    assert_eq!(usage(&second, &token).await["messagesThisMonth"], 3);
}

/// A raw client: the upgrade by hand, then frames written in pieces.
pub(crate) async fn raw_gateway(edge: &Edge, host: &str, token: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Reads server text messages until one satisfies `want`.
pub(crate) async fn read_until(
    tcp: &mut tokio::net::TcpStream,
    parser: &mut FrameParser,
    message: &mut Vec<u8>,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf))
            .await
            .expect("a frame in time")
            .unwrap();
        assert!(n > 0, "closed");
        let mut done = Vec::new();
        parser
            .feed(&buf[..n], |e| match e {
                FrameEvent::Payload { data, .. } => data.unmask_into(message),
                FrameEvent::FrameEnd { .. } => done.push(std::mem::take(message)),
                FrameEvent::Header { .. } => {}
            })
            .unwrap();
        for text in done {
            if let Ok(v) = serde_json::from_slice::<Value>(&text) {
                if want(&v) {
                    return v;
                }
            }
        }
    }
}

/// Writes `bytes` a few bytes at a time, so the edge sees them in many reads.
pub(crate) async fn write_in_pieces(tcp: &mut tokio::net::TcpStream, bytes: &[u8]) {
    for (i, piece) in bytes.chunks(3).enumerate() {
        tcp.write_all(piece).await.unwrap();
        tcp.flush().await.unwrap();
        if i % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_masked_frames_split_across_reads_are_counted() {
    let edge = metered_edge(Some(2)).start().await;
    let (token, host) = user_with_instance(&edge, "frag@example.com", "frag").await;
    let mut tcp = raw_gateway(&edge, &host, &token).await;
    let (mut parser, mut message) = (FrameParser::new(), Vec::new());
    read_until(&mut tcp, &mut parser, &mut message, |v| {
        v["event"] == "connect.challenge"
    })
    .await;
    let mut out = Vec::new();
    let connect = json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4}}).to_string();
    encode_frame(
        true,
        opcode::TEXT,
        Some([1, 2, 3, 4]),
        connect.as_bytes(),
        &mut out,
    );
    write_in_pieces(&mut tcp, &out).await;
    read_until(&mut tcp, &mut parser, &mut message, |v| v["id"] == "c1").await;
    // Each send is three fragments with a ping between them, masked, written 3 bytes at a time.
    for n in 1..=3 {
        let text = json!({"type":"req","id": format!("f{n}"),"method":"chat.send",
            "params":{"sessionKey":"agent:main:main","message":"fragmented","idempotencyKey": format!("fk{n}")}})
        .to_string();
        let bytes = text.as_bytes();
        let (a, rest) = bytes.split_at(10);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut out = Vec::new();
        encode_frame(false, opcode::TEXT, Some([9, 8, 7, n]), a, &mut out);
        encode_frame(true, opcode::PING, Some([5, 5, 5, 5]), b"p", &mut out);
        encode_frame(false, opcode::CONTINUATION, Some([1, 1, 2, 2]), b, &mut out);
        encode_frame(true, opcode::CONTINUATION, Some([3, 0, 3, 0]), c, &mut out);
        write_in_pieces(&mut tcp, &out).await;
        let id = format!("f{n}");
        let res = read_until(&mut tcp, &mut parser, &mut message, |v| {
            v["type"] == "res" && v["id"] == id.as_str()
        })
        .await;
        if n <= 2 {
            assert_eq!(res["ok"], true, "{res}");
        } else {
            assert_eq!(res["error"]["code"], "QUOTA_EXCEEDED", "{res}");
        }
    }
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 2);
}

/// Samples of one metric from the exposition, parsed by a Prometheus text-format parser.
pub(crate) async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let resp = try_send(addr, get_request("metrics", "/metrics").as_bytes())
        .await
        .expect("metrics listener answers");
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

pub(crate) fn value(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_everything_shows_in_the_metrics() {
    let edge = EdgeBuilder::new()
        .section("rate_limits", "per_ip_per_minute = 5")
        .start()
        .await;
    // wait_ready's health checks are exempt: the five requests are all this test's.
    for _ in 0..5 {
        let resp = edge.get(APP_DOMAIN, "/api/openapi.json").await;
        assert_eq!(resp.status, 200);
    }
    let limited = edge.get(APP_DOMAIN, "/api/openapi.json").await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.error_code(), "RATE_LIMITED");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=13).contains(&retry_after), "{retry_after}");
    // Health checks stay exempt.
    assert_eq!(edge.get(APP_DOMAIN, "/healthz").await.status, 200);

    let scrape = scrape(edge.metrics_addr).await;
    assert_eq!(
        value(&scrape, "clawdeploy_rate_limited_total", &[("scope", "ip")]),
        1.0
    );
    assert!(
        value(
            &scrape,
            "clawdeploy_http_requests_total",
            &[
                ("kind", "control_plane"),
                ("status", "200"),
                ("method", "GET")
            ]
        ) >= 5.0
    );
    assert_eq!(
        value(
            &scrape,
            "clawdeploy_http_requests_total",
            &[("kind", "none"), ("status", "429")]
        ),
        1.0
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "clawdeploy_http_request_duration_seconds"
                && s.labels.get("kind") == Some("control_plane")
        })
        .expect("latency histogram");
    assert!(
        matches!(histogram.value, prometheus_parse::Value::Histogram(_)),
        "{histogram:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_websocket_traffic_shows_in_the_metrics() {
    let edge = metered_edge(Some(1)).start().await;
    let (token, host) = user_with_instance(&edge, "metrics@example.com", "metered").await;
    let mut ws = gateway(&edge, &host, &token).await;
    ws.send(chat("a", "a")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a").await["ok"], true);
    ws.send(chat("b", "b")).await.unwrap();
    assert_eq!(res_for(&mut ws, "b").await["ok"], false);
    let scrape = scrape(edge.metrics_addr).await;
    assert_eq!(
        value(
            &scrape,
            "clawdeploy_messages_counted_total",
            &[("tier", "free")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "clawdeploy_quota_rejections_total",
            &[("tier", "free"), ("quota", "messages")]
        ),
        1.0
    );
    assert_eq!(value(&scrape, "clawdeploy_websockets_open", &[]), 1.0);
    assert!(
        value(
            &scrape,
            "clawdeploy_ws_frames_total",
            &[("direction", "up")]
        ) >= 3.0
    );
    assert!(
        value(
            &scrape,
            "clawdeploy_ws_bytes_total",
            &[("direction", "down")]
        ) > 0.0
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape_now(&edge).await, "clawdeploy_websockets_open", &[]) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the open WebSocket gauge never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape_now(edge: &Edge) -> prometheus_parse::Scrape {
    scrape(edge.metrics_addr).await
}

/// Waits until `edge` routes `host` to a running instance.
async fn wait_routed(edge: &Edge, host: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while edge.get_as(host, "/healthz", token).await.status != 200 {
        assert!(Instant::now() < deadline, "{host} never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_edge_restart_is_not_counted_twice() {
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    // The pool's edge keeps the instance running; the other edge, restarted, carries the traffic
    // and writes counts and keys to the store only at shutdown.
    let owner = metered_edge(Some(10)).database_url(&url).start().await;
    let email = format!("{}@example.com", node_id());
    let sub = node_id();
    let (token, host) = user_with_instance(&owner, &email, &sub).await;
    let restarted = || {
        EdgeBuilder::new()
            .database_url(&url)
            .section("tiers.free", "messages_per_month = 10")
            .section("metering", "flush_interval_secs = 3600")
    };
    let mut edge = restarted().start().await;
    wait_routed(&edge, &host, &token).await;
    let mut ws = gateway(&edge, &host, &token).await;
    for (id, key) in [("a", "k1"), ("b", "k2")] {
        ws.send(chat(id, key)).await.unwrap();
        assert_eq!(res_for(&mut ws, id).await["ok"], true);
    }
    drop(ws);
    edge.signal(libc::SIGTERM);
    tokio::time::timeout(PATIENCE, edge.child.wait())
        .await
        .unwrap()
        .unwrap();
    // Kept for the failure message: this test has failed intermittently in full runs (see
    // .config/nextest.toml), and the logs of both processes are what tells why.
    let first_log = edge.log_text();
    drop(edge);

    let edge = restarted().start().await;
    wait_routed(&edge, &host, &token).await;
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 2);
    let mut ws = gateway(&edge, &host, &token).await;
    // The client retries `k1` (say its connection dropped before the answer): forwarded, not
    // counted again.
    ws.send(chat("a-retry", "k1")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a-retry").await["ok"], true);
    assert_eq!(
        usage(&edge, &token).await["messagesThisMonth"],
        2,
        "the retry was counted again.\nfirst edge's log:\n{first_log}\nrestarted edge's log:\n{}",
        edge.log_text()
    );
    ws.send(chat("c", "k3")).await.unwrap();
    assert_eq!(res_for(&mut ws, "c").await["ok"], true);
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 3);
}

/// `YYYY-MM-DD` of the same day next month (clamped to its length), from the calendar alone.
fn next_billing_day(y: i64, m: u32, d: u32) -> String {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let leap = (ny % 4 == 0 && ny % 100 != 0) || ny % 400 == 0;
    let len = match nm {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    format!("{ny:04}-{nm:02}-{:02}", d.min(len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_tier_counts_per_billing_period_from_the_day_it_was_bought() {
    use clawdeploy_store::time::{civil_from_days, now_ms, DAY_MS};
    let edge = metered_edge(Some(3))
        .section("tiers.pro", "messages_per_month = 2")
        .start()
        .await;
    let email = format!("{}@example.com", node_id());
    let (token, user_id) = crate::domains::pro_user(&edge, &email).await;
    let (y, m, d) = civil_from_days(now_ms().div_euclid(DAY_MS));
    let today = format!("{y:04}-{m:02}-{d:02}T00:00:00.000Z");
    let resets = format!("{}T00:00:00.000Z", next_billing_day(y, m, d));
    let host = instance_for(&edge, &token, &node_id()).await;
    let mut ws = gateway(&edge, &host, &token).await;
    for id in ["p1", "p2"] {
        ws.send(chat(id, id)).await.unwrap();
        assert_eq!(res_for(&mut ws, id).await["ok"], true);
    }
    ws.send(chat("p3", "p3")).await.unwrap();
    let refused = res_for(&mut ws, "p3").await;
    assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED", "{refused}");
    let details = &refused["error"]["details"];
    assert_eq!(details["limit"], 2, "{refused}");
    assert_eq!(details["used"], 2, "{refused}");
    // The period runs from the day the tier was bought to the same day next month, not to the
    // calendar month's end.
    assert_eq!(details["resetsAt"], resets.as_str(), "{refused}");
    let paid = usage(&edge, &token).await;
    assert_eq!(paid["messagesThisMonth"], 2, "{paid}");
    assert_eq!(paid["messagesPerMonth"], 2, "{paid}");
    assert_eq!(paid["periodStart"], today.as_str(), "{paid}");
    assert_eq!(paid["resetsAt"], resets.as_str(), "{paid}");
    let series = edge
        .api("GET", "/api/usage", Some(&token), None)
        .await
        .json();
    assert_eq!(series["resetsAt"], resets.as_str(), "{series}");

    // Back to the free tier mid-month: its calendar month already holds today's 2 messages (not
    // a fresh count, as if the tier change had started over), so 1 more of its 3 passes.
    crate::domains::set_tier(&edge, &user_id, "free").await;
    let deadline = Instant::now() + PATIENCE;
    while usage(&edge, &token).await["messagesPerMonth"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the tier change never reached the edge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 2);
    // The WebSocket opened under the paid tier meters by the new one.
    ws.send(chat("f1", "f1")).await.unwrap();
    let f1 = res_for(&mut ws, "f1").await;
    assert_eq!(f1["ok"], true, "{f1}");
    ws.send(chat("f2", "f2")).await.unwrap();
    let refused = res_for(&mut ws, "f2").await;
    assert_eq!(refused["error"]["details"]["used"], 3, "{refused}");
}
