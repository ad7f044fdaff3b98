//! The message meter attacked the way issue #16 found it broken (findings 2, 3 and 4), through the
//! real edge, with the fixture as gateway (it reads binary messages as text and runs `wake` and
//! `sessions.companion.ask` like OpenClaw). Every test ends on the invariant the attacks broke:
//! the turns the gateway ran (`/stats` `runs`) are exactly the messages counted. The method table
//! is checked against the real OpenClaw image.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use clawdeploy_metering::frames::{encode_frame, opcode, FrameEvent, FrameParser};

use crate::metering::{
    chat, gateway, metered_edge, raw_gateway, read_until, res_for, usage, user_with_instance,
};
use crate::support::*;

/// Turns the instance's gateway ran (the fixture's count).
async fn runs(edge: &Edge, host: &str, token: &str) -> u64 {
    let stats = edge.get_as(host, "/stats", token).await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    stats.json()["runs"].as_u64().unwrap()
}

/// Waits until the edge has closed every gateway WebSocket (so reservations of closed connections
/// are settled), then checks the invariant: every turn the gateway ran is counted.
async fn assert_every_run_counted(edge: &Edge, host: &str, token: &str, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let scrape = crate::metering::scrape(edge.metrics_addr).await;
        let open = crate::metering::value(&scrape, "clawdeploy_websockets_open", &[]);
        let ran = runs(edge, host, token).await;
        if open == 0.0 && ran >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} WebSockets still open, {ran} of {expected} turns run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted = usage(edge, token).await["messagesThisMonth"].clone();
    assert_eq!(
        runs(edge, host, token).await,
        expected,
        "turns the gateway ran"
    );
    assert_eq!(counted, expected, "messages counted");
}

fn masked_text(text: &str, out: &mut Vec<u8>) {
    encode_frame(true, opcode::TEXT, Some([3, 1, 4, 1]), text.as_bytes(), out);
}

/// A raw gateway connection past its `connect` handshake.
async fn raw_connected(
    edge: &Edge,
    host: &str,
    token: &str,
) -> (tokio::net::TcpStream, FrameParser, Vec<u8>) {
    let mut tcp = raw_gateway(edge, host, token).await;
    let (mut parser, mut message) = (FrameParser::new(), Vec::new());
    read_until(&mut tcp, &mut parser, &mut message, |v| {
        v["event"] == "connect.challenge"
    })
    .await;
    let mut out = Vec::new();
    masked_text(
        &json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4}})
            .to_string(),
        &mut out,
    );
    tcp.write_all(&out).await.unwrap();
    read_until(&mut tcp, &mut parser, &mut message, |v| v["id"] == "c1").await;
    (tcp, parser, message)
}

/// Reads the gateway's messages until `count` answers to `id` have come (every message of each
/// read is looked at: several answers often arrive in one).
async fn answers_to(
    tcp: &mut tokio::net::TcpStream,
    parser: &mut FrameParser,
    id: &str,
    count: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    let (mut buf, mut message, mut answers) = (vec![0u8; 16 * 1024], Vec::new(), Vec::new());
    while answers.len() < count {
        let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("only {answers:?} in time"))
            .unwrap();
        assert!(n > 0, "closed after {answers:?}");
        let mut done = Vec::new();
        parser
            .feed(&buf[..n], |e| match e {
                FrameEvent::Payload { data, .. } => data.unmask_into(&mut message),
                FrameEvent::FrameEnd { .. } => done.push(std::mem::take(&mut message)),
                FrameEvent::Header { .. } => {}
            })
            .unwrap();
        answers.extend(
            done.iter()
                .filter_map(|text| serde_json::from_slice::<Value>(text).ok())
                .filter(|v| v["type"] == "res" && v["id"] == id),
        );
    }
    answers
}

/// Finding 2: OpenClaw reads binary messages as text, so a binary `chat.send` ran past the meter,
/// which held only text frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_chat_send_closes_the_connection_with_1003_and_never_runs() {
    let edge = metered_edge(Some(1)).start().await;
    let (token, host) = user_with_instance(&edge, "binary@example.com", "binary").await;
    let mut ws = gateway(&edge, &host, &token).await;
    ws.send(chat("a", "a")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a").await["ok"], true);
    let send = json!({"type":"req","id":"b","method":"chat.send",
        "params":{"sessionKey":"agent:main:main","message":"in binary","idempotencyKey":"b"}});
    ws.send(Message::binary(send.to_string().into_bytes()))
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_ne!(v["id"], "b", "the binary chat.send was answered: {v}");
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(close.code, CloseCode::Unsupported, "{close:?}");
    assert_every_run_counted(&edge, &host, &token, 1).await;
}

/// Finding 2: no WebSocket extension (permessage-deflate) can be negotiated with the gateway, so
/// none can change the framing under the meter. The fixture counts the upgrades that offered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_never_offers_the_gateway_a_websocket_extension() {
    let edge = metered_edge(None).start().await;
    let (token, host) = user_with_instance(&edge, "deflate@example.com", "deflate").await;
    let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let stats = edge.get_as(&host, "/stats", &token).await.json();
    assert_eq!(stats["extensionOffers"], 0, "{stats}");
}

/// Finding 3: the gateway answers `"e\u0031"` as `"e1"`; matched by raw bytes, the sends stayed
/// unanswered and were released uncounted when the socket closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_with_escaped_ids_are_counted() {
    let edge = metered_edge(Some(2)).start().await;
    let (token, host) = user_with_instance(&edge, "escaped@example.com", "escaped").await;
    let mut ws = gateway(&edge, &host, &token).await;
    for n in 1..=2 {
        let text = format!(
            r#"{{"type":"req","id":"e\u003{n}","method":"chat.send","params":{{"sessionKey":"agent:main:main","message":"hi","idempotencyKey":"ek{n}"}}}}"#
        );
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(res_for(&mut ws, &format!("e{n}")).await["ok"], true);
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert_every_run_counted(&edge, &host, &token, 2).await;
    let mut ws = gateway(&edge, &host, &token).await;
    ws.send(chat("c", "c")).await.unwrap();
    let refused = res_for(&mut ws, "c").await;
    assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED", "{refused}");
}

/// Finding 3: several sends with one id in one write each ran, while one answer settled one
/// reservation (the others were overwritten and released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_sharing_one_id_run_once_and_the_rest_are_refused_by_the_edge() {
    let edge = metered_edge(Some(5)).start().await;
    let (token, host) = user_with_instance(&edge, "sameid@example.com", "sameid").await;
    let (mut tcp, mut parser, _) = raw_connected(&edge, &host, &token).await;
    let mut out = Vec::new();
    for key in ["s1", "s2", "s3"] {
        masked_text(
            &json!({"type":"req","id":"same","method":"chat.send",
                "params":{"sessionKey":"agent:main:main","message":"x","idempotencyKey": key}})
            .to_string(),
            &mut out,
        );
    }
    tcp.write_all(&out).await.unwrap();
    let answers = answers_to(&mut tcp, &mut parser, "same", 3).await;
    let ok = answers.iter().filter(|v| v["ok"] == true).count();
    let duplicates = answers
        .iter()
        .filter(|v| v["error"]["code"] == "DUPLICATE_REQUEST_ID")
        .count();
    assert_eq!((ok, duplicates), (1, 2), "{answers:?}");
    drop(tcp);
    assert_every_run_counted(&edge, &host, &token, 1).await;
}

/// Finding 3: an `idempotencyKey` over 64 KiB makes the answer (which echoes it as `runId`) too
/// big to inspect; skipped, the send was never settled and was released at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_is_too_big_to_inspect_is_counted() {
    let edge = metered_edge(Some(2)).start().await;
    let (token, host) = user_with_instance(&edge, "bigkey@example.com", "bigkey").await;
    let mut ws = gateway(&edge, &host, &token).await;
    ws.send(chat("big", &"k".repeat(70 * 1024))).await.unwrap();
    assert_eq!(res_for(&mut ws, "big").await["ok"], true);
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert_every_run_counted(&edge, &host, &token, 1).await;
}

/// Finding 3: sends whose connection closes before the gateway's answers reach the edge ran and
/// were released uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_socket_right_after_sending_keeps_the_sends_counted() {
    let edge = metered_edge(Some(5)).start().await;
    let (token, host) = user_with_instance(&edge, "hangup@example.com", "hangup").await;
    let (mut tcp, _, _) = raw_connected(&edge, &host, &token).await;
    let mut out = Vec::new();
    for n in 1..=2 {
        masked_text(
            &json!({"type":"req","id": format!("h{n}"),"method":"chat.send",
                "params":{"sessionKey":"agent:main:main","message":"x","idempotencyKey": format!("hk{n}")}})
            .to_string(),
            &mut out,
        );
    }
    encode_frame(
        true,
        opcode::CLOSE,
        Some([1, 1, 1, 1]),
        &1000u16.to_be_bytes(),
        &mut out,
    );
    tcp.write_all(&out).await.unwrap();
    drop(tcp);
    assert_every_run_counted(&edge, &host, &token, 2).await;
}

/// Finding 4: `wake` (with text) and `sessions.companion.ask` start model runs, which ran
/// uncounted at 100/100 because the meter knew only five methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_and_companion_asks_count_like_chat_sends() {
    let edge = metered_edge(Some(2)).start().await;
    let (token, host) = user_with_instance(&edge, "wake@example.com", "wake").await;
    let mut ws = gateway(&edge, &host, &token).await;
    let wake = |id: &str| {
        Message::text(
            json!({"type":"req","id": id,"method":"wake","params":{"mode":"now","text":"run now"}})
                .to_string(),
        )
    };
    ws.send(wake("w1")).await.unwrap();
    assert_eq!(res_for(&mut ws, "w1").await["ok"], true);
    ws.send(Message::text(
        json!({"type":"req","id":"q1","method":"sessions.companion.ask",
            "params":{"sessionKey":"agent:main:main","question":"what now?"}})
        .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(res_for(&mut ws, "q1").await["ok"], true);
    for (id, message) in [("w2", wake("w2")), ("c1", chat("c1", "c1"))] {
        ws.send(message).await.unwrap();
        let refused = res_for(&mut ws, id).await;
        assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED", "{refused}");
    }
    drop(ws);
    assert_every_run_counted(&edge, &host, &token, 2).await;
}

/// Finding 4: a method the meter does not know counts until it is classified (the gateway's
/// `ok:false` for a method it does not know refunds it), while the methods the dashboard and the
/// Control UI read with stay free at the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_count_until_classified_and_read_only_methods_stay_free() {
    let edge = metered_edge(Some(1)).start().await;
    let (token, host) = user_with_instance(&edge, "unknown@example.com", "unknown").await;
    let mut ws = gateway(&edge, &host, &token).await;
    let req = |id: &str, method: &str| {
        Message::text(json!({"type":"req","id": id,"method": method,"params":{}}).to_string())
    };
    // The fixture does not know it either: ok:false, refunded.
    ws.send(req("u1", "sessions.brandNew")).await.unwrap();
    let answer = res_for(&mut ws, "u1").await;
    assert_eq!(answer["error"]["code"], "UNKNOWN_METHOD", "{answer}");
    assert_eq!(usage(&edge, &token).await["messagesThisMonth"], 0);
    ws.send(chat("a", "a")).await.unwrap();
    assert_eq!(res_for(&mut ws, "a").await["ok"], true);
    ws.send(req("u2", "sessions.brandNew")).await.unwrap();
    let refused = res_for(&mut ws, "u2").await;
    assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED", "{refused}");
    for method in [
        "health",
        "chat.history",
        "sessions.list",
        "models.list",
        "config.get",
        "sessions.create",
    ] {
        ws.send(req(method, method)).await.unwrap();
        let answer = res_for(&mut ws, method).await;
        assert_ne!(answer["error"]["code"], "QUOTA_EXCEEDED", "{answer}");
    }
    drop(ws);
    assert_every_run_counted(&edge, &host, &token, 1).await;
}

/// What the OpenClaw image's gateway calls (node, inside the container, no network): the core
/// method table from its dist files (every method, advertised or not) and hello-ok's
/// `features.methods` from a gateway booted with its default plugins (the methods they add).
const METHOD_PROBE: &str = r#"
const fs = require("fs"), path = require("path"), vm = require("vm");
const WebSocket = require("/opt/openclaw/node_modules/ws");
const dist = "/opt/openclaw/node_modules/openclaw/dist";
const core = [];
for (const f of fs.readdirSync(dist).filter((f) => f.endsWith(".mjs"))) {
  const src = fs.readFileSync(path.join(dist, f), "utf8");
  const marker = "const CORE_GATEWAY_METHOD_SPECS = ";
  const start = src.indexOf(marker + "[");
  if (start < 0) continue;
  const end = src.indexOf("\n];", start);
  const specs = vm.runInNewContext("(" + src.slice(start + marker.length, end + 2) + ")", {
    CONTROL_PLANE_WRITE: { controlPlaneWrite: true },
  });
  for (const s of specs) core.push(s[0]);
}
function hello() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket("ws://127.0.0.1:18799/");
    ws.on("error", reject);
    ws.on("close", () => reject(new Error("closed")));
    ws.on("message", (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.type === "event" && msg.event === "connect.challenge") {
        ws.send(JSON.stringify({ type: "req", id: "c1", method: "connect", params: {
          minProtocol: 4, maxProtocol: 4, role: "operator", scopes: ["operator.read"],
          client: { id: "cli", version: "0.0.1", platform: "linux", mode: "cli" },
          auth: { token: process.env.PROBE_TOKEN } } }));
      } else if (msg.type === "res" && msg.id === "c1") {
        ws.removeAllListeners("close");
        ws.close();
        msg.ok ? resolve(msg.payload.features.methods) : reject(new Error(JSON.stringify(msg.error)));
      }
    });
  });
}
(async () => {
  const deadline = Date.now() + 150000;
  for (;;) {
    try {
      console.log(JSON.stringify({ core, hello: await hello() }));
      process.exit(0);
    } catch (e) {
      if (Date.now() > deadline) { console.error("no hello-ok: " + e); process.exit(1); }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
})();
"#;

/// Finding 4: the meter's method table ([`clawdeploy_metering::classify::METHODS`]) is exactly
/// the pinned OpenClaw's: an upgrade that adds a method fails here until it is classified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openclaw_method_is_classified() {
    let image = crate::openclaw::openclaw_image().await;
    let script = "set -e; export OPENCLAW_STATE_DIR=/tmp/oc OPENCLAW_CONFIG_PATH=/tmp/oc/openclaw.json HOME=/tmp/oc; \
        mkdir -p /tmp/oc; \
        printf '{\"gateway\":{\"mode\":\"local\",\"bind\":\"loopback\",\"port\":18799,\"auth\":{\"mode\":\"token\",\"token\":\"%s\"}}}' \"$PROBE_TOKEN\" > /tmp/oc/openclaw.json; \
        openclaw gateway run > /tmp/oc/gateway.log 2>&1 & \
        cat > /tmp/oc/probe.js; node /tmp/oc/probe.js || { tail -30 /tmp/oc/gateway.log >&2; exit 1; }";
    let mut child = tokio::process::Command::new("docker")
        .args(["run", "--rm", "-i", "--network", "none"])
        .args(["-e", "PROBE_TOKEN=method-table-probe-0123456789abcdef"])
        .args(["--entrypoint", "sh", &image, "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run docker");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(METHOD_PROBE.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("the OpenClaw method probe finished")
        .unwrap();
    assert!(
        output.status.success(),
        "the OpenClaw method probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut openclaw: Vec<&str> = ["core", "hello"]
        .iter()
        .flat_map(|k| found[k].as_array().unwrap().iter())
        .map(|m| m.as_str().unwrap())
        .collect();
    openclaw.sort_unstable();
    openclaw.dedup();
    assert!(openclaw.len() > 400, "{found}");
    let table: Vec<&str> = clawdeploy_metering::classify::METHODS
        .iter()
        .map(|(m, _)| *m)
        .collect();
    let unclassified: Vec<&&str> = openclaw.iter().filter(|m| !table.contains(m)).collect();
    assert!(
        unclassified.is_empty(),
        "OpenClaw has methods the meter has not classified (until then they count as turns): \
         {unclassified:?}; add them to metering/src/classify/methods.rs"
    );
    let gone: Vec<&&str> = table.iter().filter(|m| !openclaw.contains(m)).collect();
    assert!(
        gone.is_empty(),
        "the meter's table has methods OpenClaw no longer has: {gone:?}"
    );
}
