//! Signup spike (PRD §6.3): 100 concurrent `POST /api/auth/register` through the real edge, with
//! production settings (bcrypt cost 12), on SQLite and, when `CLAWDEPLOY_TEST_POSTGRES_URL` is
//! set, on PostgreSQL. Meanwhile `/healthz` is probed to show the API stays responsive (bcrypt runs
//! off the async workers). Not a test: it records figures in `benches/results/<date>-signup.md`.
//!
//! Run: `CLAWDEPLOY_TEST_POSTGRES_URL=$(scripts/start-postgres.sh) cargo bench --bench signup`

// The test suite's helpers; a bench uses only some of them.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const SIGNUPS: usize = 100;

struct Figures {
    db: &'static str,
    ok: usize,
    distinct: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
    total: Duration,
    health_median: Duration,
    health_max: Duration,
}

/// Like the tests' client, but waits up to 120 s (the PRD allows 60 s per signup).
async fn send_slow(addr: std::net::SocketAddr, raw: &[u8]) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), tcp.read_to_end(&mut bytes))
        .await
        .expect("a response within 120 s")
        .expect("read");
    parse_response(&bytes).expect("HTTP response")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn spike(db: Db, name: &'static str) -> Figures {
    let edge = Arc::new(EdgeBuilder::new().db(&db).bcrypt_cost(12).start().await);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (edge, done) = (edge.clone(), done.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let r = edge.get(APP_DOMAIN, "/healthz").await;
                assert_eq!(r.status, 200);
                lat.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            lat
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SIGNUPS {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let body = serde_json::json!({ "email": format!("bench{i}@example.com"), "password": "securePassword123" }).to_string();
            let raw = format!(
                "POST /api/auth/register HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let r = send_slow(edge.addr, raw.as_bytes()).await;
            (r.status, r.json()["user"]["id"].as_str().unwrap_or_default().to_string(), t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut ok = 0;
    for t in tasks {
        let (status, id, d) = t.await.expect("task");
        if status == 201 {
            ok += 1;
            ids.insert(id);
        }
        lat.push(d);
    }
    let total = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut health = prober.await.expect("prober");
    lat.sort();
    health.sort();
    Figures {
        db: name,
        ok,
        distinct: ids.len(),
        median: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        max: *lat.last().expect("latencies"),
        total,
        health_median: pct(&health, 0.5),
        health_max: *health.last().expect("probes"),
    }
}

#[tokio::main]
async fn main() {
    let mut results = vec![spike(Db::Sqlite, "SQLite").await];
    if let Some(pg) = Db::postgres().await {
        results.push(spike(pg, "PostgreSQL").await);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mut md = format!(
        "# Signup spike: {SIGNUPS} concurrent registrations\n\n\
         `cargo bench --bench signup` (release), {cpus} CPUs, bcrypt cost 12, one edge process, \
         requests through the edge to the control API. PRD §6.3 target: each under 60 s.\n\n\
         | database | succeeded | distinct users | median | p99 | max | total | /healthz median during spike | /healthz max |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for f in &results {
        md.push_str(&format!(
            "| {} | {}/{SIGNUPS} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.db,
            f.ok,
            f.distinct,
            ms(f.median),
            ms(f.p99),
            ms(f.max),
            ms(f.total),
            ms(f.health_median),
            ms(f.health_max)
        ));
    }
    md.push_str(
        "\nbcrypt runs in `spawn_blocking`, at most one hash per CPU at a time, so the spike queues on \
         the CPUs (total ≈ 100 × one hash ÷ CPUs) while other requests stay fast.\n",
    );
    print!("{md}");
    let day = clawdeploy_store::time::day_string(clawdeploy_store::time::now_ms());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/results")
        .join(format!("{day}-signup.md"));
    std::fs::write(&path, &md).expect("write results");
    eprintln!("written to {}", path.display());
    for f in &results {
        assert_eq!(
            (f.ok, f.distinct),
            (SIGNUPS, SIGNUPS),
            "{}: every signup succeeds",
            f.db
        );
    }
}
