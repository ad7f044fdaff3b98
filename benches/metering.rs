//! WebSocket relay through the edge with metering on and off (issue 7; goal: under 3% cost).
//!
//! One edge process, one instance (the protocol-speaking fixture as a local process, not OpenClaw),
//! one gateway WebSocket. Every message is a `chat.send` (the metered worst case: each is parsed,
//! reserved and committed on its `res`); the fixture answers each with a `res` and a `chat` event.
//! - throughput: 20,000 sends with 64 in flight, messages per second;
//! - latency: 2,000 sends one at a time, p50 and p99 of send → `res`.
//!
//! - the meter alone, in this process: nanoseconds per send for the same frames through
//!   `WsRelay` (what metering adds) and through the bare frame parser (what the edge does
//!   without metering), set against the edge's CPU time per send. On a shared 2-CPU machine the
//!   end-to-end throughput varies by ±10% between identical rounds, more than the cost measured;
//!   this figure does not.
//!
//! Rounds alternate off/on so drift on the shared machine hits both. Not a test: figures go to
//! `benches/results/<date>-metering.md`.
//!
//! Run: `cargo build --release -p clawdeploy-fixture && cargo bench --bench metering`

// The test suite's helpers; a bench uses only some of them.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use support::*;

const THROUGHPUT_SENDS: usize = 100_000;
const WINDOW: usize = 64;
const LATENCY_SENDS: usize = 2_000;
const ROUNDS: usize = 7;

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

/// CPU time (user + system) the process `pid` has used so far, all threads.
#[allow(unsafe_code)] // sysconf below; see its SAFETY comment
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Frames of sends `range` as the edge sees them: the client's masked `chat.send`, then the
/// gateway's `res` and `chat` event (OpenClaw's shapes, `type` first).
fn send_frames(range: std::ops::Range<usize>) -> (Vec<bytes::Bytes>, Vec<bytes::Bytes>) {
    use clawdeploy_metering::frames::{encode_frame, opcode};
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for i in range {
        let mut up = Vec::new();
        let text = format!(
            r#"{{"type":"req","id":"m{i}","method":"chat.send","params":{{"sessionKey":"agent:main:main","message":"a benchmark message of ordinary length","idempotencyKey":"k{i}"}}}}"#
        );
        encode_frame(
            true,
            opcode::TEXT,
            Some([7, 1, 9, i as u8]),
            text.as_bytes(),
            &mut up,
        );
        let mut down = Vec::new();
        let res = format!(
            r#"{{"type":"res","id":"m{i}","ok":true,"payload":{{"runId":"k{i}","status":"started"}}}}"#
        );
        encode_frame(true, opcode::TEXT, None, res.as_bytes(), &mut down);
        let event = format!(
            r#"{{"type":"event","event":"chat","payload":{{"message":{{"content":[{{"text":"echo: a benchmark message of ordinary length","type":"text"}}],"role":"assistant"}},"runId":"k{i}","sessionKey":"agent:main:main","state":"final","stopReason":"stop"}},"seq":{i}}}"#
        );
        encode_frame(true, opcode::TEXT, None, event.as_bytes(), &mut down);
        client.push(up.into());
        server.push(down.into());
    }
    (client, server)
}

/// Nanoseconds per send: (through the meter, through the bare frame parser), best of 5 runs.
/// Frames are made in batches of 1,000 just before they are timed, so they are in the CPU's
/// cache as bytes just read from a socket would be.
fn meter_alone() -> (f64, f64) {
    use clawdeploy_metering::{FrameParser, Meter, RelayTarget, WsRelay};
    use std::sync::Arc;
    const BATCH: usize = 1_000;
    const LAG: usize = 8;
    const SENDS: usize = 200_000;
    let mut tiers = clawdeploy_config::TiersConfig::default();
    tiers.free.messages_per_month = 0;
    let meter = Arc::new(Meter::new(tiers));
    let (mut metered, mut parsed) = (f64::MAX, f64::MAX);
    for run in 0..5 {
        let mut relay = WsRelay::new(RelayTarget {
            meter: meter.clone(),
            instance_id: Arc::from(format!("bench{run}")),
            tier: clawdeploy_config::Tier::Free,
            billing_anchor_ms: None,
            max_message_bytes: 1 << 20,
            upgrade_url: Arc::from("https://example.com/billing"),
            spawns_allowed: false,
        });
        // Metering off: the edge parses the gateway's frames for message boundaries only.
        let mut parser = FrameParser::new();
        let (mut relay_time, mut parser_time) = (Duration::ZERO, Duration::ZERO);
        for batch in (0..SENDS).step_by(BATCH) {
            let (client, server) = send_frames(batch..batch + BATCH);
            let start = Instant::now();
            for down in &server {
                parser
                    .feed(down, |e| {
                        std::hint::black_box(e);
                    })
                    .unwrap();
            }
            parser_time += start.elapsed();
            // Answers lag LAG sends behind, so sends are always in flight and every gateway
            // message is examined, as with 64 in flight end to end.
            let start = Instant::now();
            for i in 0..BATCH + LAG {
                if let Some(up) = client.get(i) {
                    std::hint::black_box(relay.client_chunk(up.clone()).unwrap());
                }
                if let Some(down) = i.checked_sub(LAG).and_then(|j| server.get(j)) {
                    std::hint::black_box(relay.server_chunk(down.clone()).unwrap());
                }
            }
            relay_time += start.elapsed();
        }
        assert_eq!(relay.in_flight(), 0, "every send answered");
        metered = metered.min(relay_time.as_nanos() as f64 / SENDS as f64);
        parsed = parsed.min(parser_time.as_nanos() as f64 / SENDS as f64);
    }
    (metered, parsed)
}

struct Figures {
    per_sec: f64,
    /// The edge's CPU time per send in the throughput run, in microseconds.
    cpu_us: f64,
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
    tcp.set_nodelay(true).unwrap();
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

    let edge_pid = edge.child.id().expect("edge pid");
    eprintln!("metering {metering}: edge pid {edge_pid}");
    let cpu_before = cpu_time(edge_pid);
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
    let cpu_us = (cpu_time(edge_pid) - cpu_before).as_secs_f64() * 1e6 / THROUGHPUT_SENDS as f64;

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
        cpu_us,
        p50: pct(&rtts, 0.50),
        p99: pct(&rtts, 0.99),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (meter_ns, parser_ns) = meter_alone();
    eprintln!("meter alone: {meter_ns:.0} ns per send (bare frame parser: {parser_ns:.0} ns)");
    if std::env::var_os("METER_ALONE").is_some() {
        return; // for profiling the meter: `METER_ALONE=1 perf record …`
    }
    let mut off = Vec::new();
    let mut on = Vec::new();
    for r in 0..ROUNDS {
        off.push(round(false, r * 2).await);
        on.push(round(true, r * 2 + 1).await);
        eprintln!(
            "round {r}: off {:.0}/s {:.2} µs p50 {:?} p99 {:?} | on {:.0}/s {:.2} µs p50 {:?} p99 {:?}",
            off[r].per_sec, off[r].cpu_us, off[r].p50, off[r].p99, on[r].per_sec, on[r].cpu_us, on[r].p50, on[r].p99
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut off_tp: Vec<f64> = off.iter().map(|f| f.per_sec).collect();
    let mut on_tp: Vec<f64> = on.iter().map(|f| f.per_sec).collect();
    let (off_m, on_m) = (median(&mut off_tp), median(&mut on_tp));
    let mut off_cpu: Vec<f64> = off.iter().map(|f| f.cpu_us).collect();
    let mut on_cpu: Vec<f64> = on.iter().map(|f| f.cpu_us).collect();
    let (off_c, on_c) = (median(&mut off_cpu), median(&mut on_cpu));
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
         | metering | sends/s | edge CPU per send | p50 | p99 |\n|---|---|---|---|---|\n\
         | off | {off_m:.0} | {off_c:.2} µs | {:.3} ms | {:.3} ms |\n| on | {on_m:.0} | {on_c:.2} µs | {:.3} ms | {:.3} ms |\n\n\
         Throughput cost: {:.1}%; edge CPU cost: {:.1}% (goal: under 3%).\n\n\
         The meter alone, in process (best of 5 runs of 200,000 sends): {meter_ns:.0} ns per send through `WsRelay`, \
         {parser_ns:.0} ns through the bare frame parser the edge runs without metering; the difference is \
         **{:.1}% of the edge's CPU time per send with metering off**.\n\nRounds (off / on):\n\n",
        median(&mut off_p50),
        median(&mut off_p99),
        median(&mut on_p50),
        median(&mut on_p99),
        (1.0 - on_m / off_m) * 100.0,
        (on_c / off_c - 1.0) * 100.0,
        (meter_ns - parser_ns) / (off_c * 1000.0) * 100.0,
    );
    for r in 0..ROUNDS {
        md.push_str(&format!(
            "- {:.0}/s, {:.2} µs, p50 {:.3} ms, p99 {:.3} ms / {:.0}/s, {:.2} µs, p50 {:.3} ms, p99 {:.3} ms\n",
            off[r].per_sec,
            off[r].cpu_us,
            ms(off[r].p50),
            ms(off[r].p99),
            on[r].per_sec,
            on[r].cpu_us,
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
