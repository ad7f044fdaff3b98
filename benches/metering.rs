//! WebSocket relay through the edge with metering on and off (issue 7; goal: under 3% cost).
//!
//! One edge process, one instance (the protocol-speaking fixture as a local process, not OpenClaw),
//! one gateway WebSocket. Every message is a `chat.send` (the metered worst case: each is parsed,
//! reserved and committed on its `res`); the fixture answers each with a `res` and a `chat` event.
//! - throughput: 20,000 sends with 64 in flight, messages per second;
//! - latency: 2,000 sends one at a time, p50 and p99 of send → `res`.
//!
//! Rounds alternate off/on so drift on the shared machine hits both. Not a test: figures go to
//! `benches/results/<date>-metering.md`.
//!
//! Run: `cargo build --release -p clawdeploy-fixture && cargo bench --bench metering`

#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use support::*;

const THROUGHPUT_SENDS: usize = 20_000;
const WINDOW: usize = 64;
const LATENCY_SENDS: usize = 2_000;
const ROUNDS: usize = 3;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn chat(n: usize) -> Message {
    Message::text(
        json!({"type":"req","id": format!("m{n}"),"method":"chat.send",
            "params":{"sessionKey":"agent:main:main","message":"a benchmark message of ordinary length","idempotencyKey": format!("k{n}")}})
        .to_string(),
    )
}

async fn next_res(ws: &mut WebSocket) -> serde_json::Value {
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == "res" {
            return frame;
        }
    }
}

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn round(metering: bool, n: usize) -> Figures {
    let edge = EdgeBuilder::new()
        .section("runtime", "kind = \"process\"")
        .section("runtime", "config = \"fixture\"")
        .section("runtime", &format!("image = \"{}\"", fixture_bin()))
        .section("runtime", "user = \"65534:65534\"")
        .section(
            "pool",
            &format!("node_id = \"bench{}x{n}\"", std::process::id()),
        )
        .section("pool", "min_idle = 1")
        .section("pool", "memory_mb = 64")
        .section("metering", &format!("enabled = {metering}"))
        .section("tiers.free", "messages_per_month = 0")
        .server("access_log = false")
        .start()
        .await;
    let (token, _, _) = edge
        .register(
            &format!("bench{n}@example.com"),
            "correct horse battery staple 9",
        )
        .await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": format!("bench{n}")})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let host = format!("bench{n}.{BASE_DOMAIN}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if edge.get_as(&host, "/healthz", &token).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "instance never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut request = format!("ws://{host}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    next_json(&mut ws).await; // connect.challenge
    ws.send(Message::text(
        json!({"type":"req","id":"c","method":"connect","params":{"minProtocol":4,"maxProtocol":4}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_res(&mut ws).await["ok"], true);

    let start = Instant::now();
    let mut sent = 0;
    while sent < WINDOW {
        ws.send(chat(sent)).await.unwrap();
        sent += 1;
    }
    for _ in 0..THROUGHPUT_SENDS {
        let res = next_res(&mut ws).await;
        assert_eq!(res["ok"], true, "{res}");
        if sent < THROUGHPUT_SENDS {
            ws.send(chat(sent)).await.unwrap();
            sent += 1;
        }
    }
    let per_sec = THROUGHPUT_SENDS as f64 / start.elapsed().as_secs_f64();

    let mut rtts = Vec::with_capacity(LATENCY_SENDS);
    for i in 0..LATENCY_SENDS {
        let t = Instant::now();
        ws.send(chat(THROUGHPUT_SENDS + i)).await.unwrap();
        next_res(&mut ws).await;
        rtts.push(t.elapsed());
    }
    rtts.sort_unstable();
    Figures {
        per_sec,
        p50: pct(&rtts, 0.50),
        p99: pct(&rtts, 0.99),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut off = Vec::new();
    let mut on = Vec::new();
    for r in 0..ROUNDS {
        off.push(round(false, r * 2).await);
        on.push(round(true, r * 2 + 1).await);
        eprintln!(
            "round {r}: off {:.0}/s p50 {:?} p99 {:?} | on {:.0}/s p50 {:?} p99 {:?}",
            off[r].per_sec, off[r].p50, off[r].p99, on[r].per_sec, on[r].p50, on[r].p99
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut off_tp: Vec<f64> = off.iter().map(|f| f.per_sec).collect();
    let mut on_tp: Vec<f64> = on.iter().map(|f| f.per_sec).collect();
    let (off_m, on_m) = (median(&mut off_tp), median(&mut on_tp));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut off_p50: Vec<f64> = off.iter().map(|f| ms(f.p50)).collect();
    let mut on_p50: Vec<f64> = on.iter().map(|f| ms(f.p50)).collect();
    let mut off_p99: Vec<f64> = off.iter().map(|f| ms(f.p99)).collect();
    let mut on_p99: Vec<f64> = on.iter().map(|f| ms(f.p99)).collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "# WebSocket relay with metering on and off\n\n\
         `cargo bench --bench metering` (release), {cpus} CPUs shared by the client, the edge (2 proxy threads) and the fixture \
         gateway; one gateway WebSocket; every message a `chat.send` (metered worst case), answered by a `res` and a `chat` event.\n\
         Throughput: {THROUGHPUT_SENDS} sends, {WINDOW} in flight. Latency: {LATENCY_SENDS} sends one at a time (send → `res`). \
         {ROUNDS} rounds, off and on alternating; medians below.\n\n\
         | metering | sends/s | p50 | p99 |\n|---|---|---|---|\n\
         | off | {off_m:.0} | {:.3} ms | {:.3} ms |\n| on | {on_m:.0} | {:.3} ms | {:.3} ms |\n\n\
         Throughput cost: {:.1}% (goal: under 3%).\n\nRounds (off / on):\n\n",
        median(&mut off_p50),
        median(&mut off_p99),
        median(&mut on_p50),
        median(&mut on_p99),
        (1.0 - on_m / off_m) * 100.0,
    );
    for r in 0..ROUNDS {
        md.push_str(&format!(
            "- {:.0}/s, p50 {:.3} ms, p99 {:.3} ms / {:.0}/s, p50 {:.3} ms, p99 {:.3} ms\n",
            off[r].per_sec,
            ms(off[r].p50),
            ms(off[r].p99),
            on[r].per_sec,
            ms(on[r].p50),
            ms(on[r].p99)
        ));
    }
    print!("{md}");
    let day = std::env::var("BENCH_DAY").unwrap_or_else(|_| "2026-11-27".into());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/results")
        .join(format!("{day}-metering.md"));
    std::fs::write(&path, &md).expect("write results");
    eprintln!("written to {}", path.display());
}
