//! Signup to first reply with a warm pool (issue 4), as the brief defines it: from the
//! `POST /api/instances` request to the client receiving the final chat event of its first
//! `chat.send` through the edge. Instances are the protocol-speaking test fixture (not OpenClaw) in
//! hardened Docker containers; users are registered beforehand (registration is not part of it).
//! Also the pool's refill throughput after the claims. Not a test: figures go to
//! `benches/results/<date>-first-reply.md`.
//!
//! Run: `scripts/start-docker.sh && CLAWDEPLOY_FIXTURE_IMAGE=$(scripts/build-fixture-image.sh)
//! cargo bench --bench first_reply`

// The test suite's helpers; a bench uses only some of them.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::*;

const SIGNUPS: usize = 30;
/// The burst is as large as the warm pool, so every signup finds a warm instance.
const BURST: usize = 10;
const MIN_IDLE: u64 = 10;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn idle(edge: &Edge) -> u64 {
    let nodes = edge
        .admin("GET", "/admin/nodes", Some(ADMIN_TOKEN), None)
        .await
        .json();
    nodes["nodes"][0]["containers"]["idle"]
        .as_u64()
        .unwrap_or(0)
}

async fn wait_idle(edge: &Edge, n: u64) -> Duration {
    let started = Instant::now();
    while idle(edge).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "pool never refilled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// One signup: create the instance, open its gateway through the edge, first reply.
async fn first_reply(edge: &Edge, token: &str, subdomain: &str) -> (Duration, String) {
    let started = Instant::now();
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(token),
            Some(json!({ "subdomain": subdomain })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let status = resp.json()["instance"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A client retries while the instance is not running yet (503 with Retry-After), as the
    // dashboard does; with a warm pool it is running at once.
    let mut ws = loop {
        let tcp = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        let mut request = format!("ws://{subdomain}.{BASE_DOMAIN}/ws")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("gateway through the edge: {e}"),
        }
    };
    let text = chat_turn(&mut ws, "hello").await;
    let elapsed = started.elapsed();
    assert_eq!(text, "echo: hello");
    (elapsed, status)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = format!("bench{}", std::process::id());
    let edge = EdgeBuilder::new()
        .section("runtime", "kind = \"docker\"")
        .section("runtime", "config = \"fixture\"")
        .section("runtime", &format!("image = \"{}\"", fixture_image_name()))
        .section("runtime", "user = \"65534:65534\"")
        .section("runtime", "docker_network = \"clawdeploy-bench\"")
        .section("runtime", "publish_loopback = true")
        .section("runtime", "egress_rules = false")
        .section("pool", &format!("node_id = \"{node}\""))
        .section("pool", &format!("min_idle = {MIN_IDLE}"))
        .section("pool", "max_idle = 40")
        .section("pool", "capacity = 60")
        .section("pool", "memory_mb = 64")
        .start()
        .await;
    let mut tokens = Vec::new();
    for n in 0..SIGNUPS {
        tokens.push(
            edge.register(
                &format!("bench{n}@example.com"),
                "correct horse battery staple 9",
            )
            .await
            .0,
        );
    }
    let fill = wait_idle(&edge, MIN_IDLE).await;
    eprintln!("pool filled to {MIN_IDLE} in {fill:?}");

    // Sequential signups, each with a warm pool (waiting for the refill between them).
    let mut latencies = Vec::new();
    let mut statuses = Vec::new();
    for (n, token) in tokens.iter().enumerate().take(SIGNUPS - BURST) {
        wait_idle(&edge, MIN_IDLE).await;
        let (elapsed, status) = first_reply(&edge, token, &format!("seq-{n}")).await;
        latencies.push(elapsed);
        statuses.push(status);
    }
    // A burst: the rest at once, while the pool refills behind them.
    wait_idle(&edge, MIN_IDLE).await;
    let burst_started = Instant::now();
    let burst: Vec<_> = tokens[SIGNUPS - BURST..]
        .iter()
        .enumerate()
        .map(|(n, token)| {
            let (edge, token) = (&edge, token.clone());
            async move { first_reply(edge, &token, &format!("burst-{n}")).await }
        })
        .collect();
    let burst_results = futures_util::future::join_all(burst).await;
    let burst_total = burst_started.elapsed();
    let mut burst_latencies: Vec<Duration> = burst_results.iter().map(|(d, _)| *d).collect();
    statuses.extend(burst_results.into_iter().map(|(_, s)| s));
    let refill = wait_idle(&edge, MIN_IDLE).await;
    let refilled = BURST;

    latencies.sort();
    burst_latencies.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let running = statuses.iter().filter(|s| *s == "running").count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = format!(
        "# Signup to first reply with a warm pool\n\n\
         `cargo bench --bench first_reply` (release), one edge process, SQLite, Docker runtime with the\n\
         hardened spec, the protocol-speaking test fixture as the instance (not OpenClaw), pool\n\
         `min_idle = {MIN_IDLE}`. Measured from the `POST /api/instances` request to the final chat event of\n\
         the first `chat.send`, through the edge (`/ws`, owner's bearer token). Load average at the end:\n\
         {load}\n\
         | run | signups | median | p99 | max |\n|---|---|---|---|---|\n\
         | sequential, pool warm before each | {} | {} | {} | {} |\n\
         | burst of {} at once | {} | {} | {} | {} |\n\n\
         {running}/{SIGNUPS} signups answered `running` at once (a warm container was handed over).\n\n\
         Pool refill: the burst took {} idle containers; the pool was back to {MIN_IDLE} idle {} after the\n\
         burst's last reply ({:.1} containers/s created, started and ready). Pool filled from empty to\n\
         {MIN_IDLE} in {}. Burst wall time {}.\n",
        latencies.len(),
        ms(pct(&latencies, 0.5)),
        ms(pct(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        burst_latencies.len(),
        burst_latencies.len(),
        ms(pct(&burst_latencies, 0.5)),
        ms(pct(&burst_latencies, 0.99)),
        ms(*burst_latencies.last().unwrap_or(&Duration::ZERO)),
        refilled,
        ms(refill),
        refilled as f64 / refill.as_secs_f64().max(0.001),
        ms(fill),
        ms(burst_total),
    );
    print!("{report}");
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let path = format!(
        "{}/benches/results/{date}-first-reply.md",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::write(&path, report).expect("write results");
    eprintln!("written to {path}");
    // Remove this node's containers.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("docker ps -aq --filter name=cd-{node}- | xargs -r docker rm -f; docker volume ls -q --filter name=cd-{node}- | xargs -r docker volume rm"))
        .output();
    drop(out);
}
