//! Signup to first reply with the real OpenClaw and a warm pool, and OpenClaw's memory at ready
//! and after turns. Not a test: it records figures in `benches/results/<date>-openclaw.md`.
//!
//! "Signup to first reply" is the brief's: from the `POST /api/instances` request to the client
//! receiving the final chat event of its first `chat.send` through the edge (at `/ws`), against a
//! fake OpenAI-compatible provider on loopback behind the edge's LLM meter (so the figure is the
//! platform's and OpenClaw's, not a model's).
//!
//! Run (as root, Docker up, the image built): `cargo bench --bench openclaw`
//! (`OPENCLAW_BENCH_SIGNUPS`, default 3; each warm instance takes about 1 GiB).

#![allow(dead_code)]

// The test suite's helpers; a bench uses only some of them.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[path = "../tests/it/openclaw.rs"]
mod openclaw;

use std::time::{Duration, Instant};

use serde_json::json;

use openclaw::*;
use support::*;

const TURNS: usize = 5;

/// Memory of the node's containers (cgroup v1 or v2), MiB: (name, usage, peak).
fn container_memory(node_id: &str) -> Vec<(String, f64, f64)> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=clawdeploy.node={node_id}"),
        ])
        .output()
        .expect("docker ps");
    let mib = |path: String| -> f64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map_or(f64::NAN, |b| b / 1048576.0)
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|id| {
            let v1 = format!("/sys/fs/cgroup/memory/docker/{id}");
            let (usage, peak) = if std::path::Path::new(&v1).exists() {
                (
                    mib(format!("{v1}/memory.usage_in_bytes")),
                    mib(format!("{v1}/memory.max_usage_in_bytes")),
                )
            } else {
                let v2 = format!("/sys/fs/cgroup/system.slice/docker-{id}.scope");
                (
                    mib(format!("{v2}/memory.current")),
                    mib(format!("{v2}/memory.peak")),
                )
            };
            (id.chars().take(12).collect(), usage, peak)
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let signups: usize = std::env::var("OPENCLAW_BENCH_SIGNUPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
        .max(1);
    let image = openclaw_image().await;
    let (_provider, provider_addr) =
        FakeProvider::start(std::net::IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("ocbench{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let edge = openclaw_edge(&image, &node_id, signups, signups)
        .start()
        .await;
    let boot = Instant::now();
    wait_idle(&edge, signups as u64, Duration::from_secs(600)).await;
    let pool_ready = boot.elapsed();
    eprintln!(
        "openclaw bench: {signups} warm instances ready after {:.1} s",
        pool_ready.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_ready = container_memory(&node_id);

    let mut firsts = Vec::new();
    let mut later_turns = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..signups {
        let (token, _, _) = edge
            .register(
                &format!("bench{i}@example.com"),
                "correct horse battery staple 9",
            )
            .await;
        let key = edge
            .api(
                "PUT",
                "/api/account/api-keys/custom",
                Some(&token),
                Some(json!({"key":"sk-bench","baseUrl":format!("http://{provider_addr}/v1")})),
            )
            .await;
        assert_eq!(key.status, 200, "{}", key.text());
        let sub = format!("bench{i}");
        let t = Instant::now();
        let resp = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({ "subdomain": sub })),
            )
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text());
        let host = format!("{sub}.{BASE_DOMAIN}");
        let (mut ws, _) = connect_owner(&edge, &host, &token).await;
        assert_eq!(chat(&mut ws, "hello").await, ANSWER);
        firsts.push(t.elapsed());
        eprintln!(
            "openclaw bench: signup {i} to first reply {:.2} s",
            t.elapsed().as_secs_f64()
        );
        sockets.push(ws);
    }
    for _ in 1..TURNS {
        for ws in sockets.iter_mut() {
            let t = Instant::now();
            assert_eq!(chat(ws, "and again").await, ANSWER);
            later_turns.push(t.elapsed());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = container_memory(&node_id);

    let mut sorted = firsts.clone();
    sorted.sort();
    later_turns.sort();
    let fmt = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mem_rows = |rows: &[(String, f64, f64)]| -> String {
        rows.iter()
            .map(|(id, usage, peak)| format!("| {id} | {usage:.0} MiB | {peak:.0} MiB |\n"))
            .collect()
    };
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let report = format!(
        "# OpenClaw: signup to first reply, memory ({date})\n\n\
         `cargo bench --bench openclaw`: image `{image}`, {signups} signups on a warm pool of {signups} \
         (Docker, hardened containers, 2 GiB limit, 1 CPU each), a fake OpenAI-compatible provider on \
         loopback behind the edge's LLM meter (egress rules on), {cpus} CPUs.\n\n\
         Pool of {signups} warm from the edge's start: {pool}.\n\n\
         ## Signup to first reply\n\n\
         From `POST /api/instances` to the final chat event of the first `chat.send` through the edge.\n\n\
         | signups | median | p99 | max | each |\n|---|---|---|---|---|\n| {signups} | {median} | {p99} | {max} | {each} |\n\n\
         Later turns ({n} turns): median {tmed}, max {tmax}.\n\n\
         ## Memory per container (cgroup: usage now, peak since start)\n\n\
         At ready, before assignment:\n\n| container | usage | peak |\n|---|---|---|\n{ready}\n\
         After {TURNS} turns each:\n\n| container | usage | peak |\n|---|---|---|\n{after}",
        pool = fmt(pool_ready),
        median = fmt(pct(&sorted, 0.5)),
        p99 = fmt(pct(&sorted, 0.99)),
        max = fmt(*sorted.last().unwrap_or(&Duration::ZERO)),
        each = firsts.iter().map(|d| fmt(*d)).collect::<Vec<_>>().join(", "),
        n = later_turns.len(),
        tmed = fmt(pct(&later_turns, 0.5)),
        tmax = fmt(*later_turns.last().unwrap_or(&Duration::ZERO)),
        ready = mem_rows(&at_ready),
        after = mem_rows(&after),
    );
    print!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).expect("results dir");
    std::fs::write(dir.join(format!("{date}-openclaw.md")), report).expect("write results");
    drop(sockets);
    drop(edge);
}
