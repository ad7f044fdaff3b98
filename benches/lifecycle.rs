//! The instance lifecycle with the real OpenClaw (issue 24): a browser's click on "Deploy" to the
//! rendered first reply, a frozen instance's wake to the first byte of the held request, and how
//! many tenants fit per 8 GiB with most of them asleep. Not a test: it records figures in
//! `benches/results/<date>-lifecycle-<mode>.md` (summarised in `<date>-lifecycle.md`).
//!
//! Run (as root, Docker up, zram swap on, the image built, Chromium and chromedriver installed):
//!
//! ```sh
//! export CLAWDEPLOY_OPENCLAW_IMAGE=clawdeploy-openclaw:2026.9.6
//! LIFECYCLE_BENCH=signup  cargo bench --bench lifecycle   # LIFECYCLE_SIGNUPS, default 20
//! LIFECYCLE_BENCH=wake    cargo bench --bench lifecycle   # LIFECYCLE_WAKES (50), LIFECYCLE_WS_WAKES (5)
//! LIFECYCLE_BENCH=density cargo bench --bench lifecycle   # LIFECYCLE_TENANTS (15), LIFECYCLE_AWAKE (3)
//! ```
//!
//! The provider is the fake OpenAI-compatible one of tests/it/openclaw.rs (`llm.openai_url`),
//! answering at once, so every figure is the platform's and OpenClaw's, not a model's. Owners
//! hold an OpenAI key: the warm fast path (the member already carries the owner's provider block).
//! Each run records the load average (`/proc/loadavg`) and the node's used memory beside its figures:
//! the machine is shared.

#![allow(dead_code)]

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/openclaw.rs"]
mod openclaw;

#[allow(dead_code)]
#[path = "../tests/it/webdriver.rs"]
mod webdriver;

#[allow(dead_code)]
#[path = "report.rs"]
mod report;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use openclaw::*;
use report::*;
use support::*;
use webdriver::Browser;

const PW: &str = "correct horse battery staple 9";
const PATIENCE_LONG: Duration = Duration::from_secs(600);

async fn wait_state(edge: &Edge, host: &str, state: &str, within: Duration) {
    wait_route_state(edge, host, state, within).await;
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The edge's `clawdeploy_wake*` metric lines.
async fn wake_metrics(edge: &Edge) -> String {
    let resp = try_send(
        edge.metrics_addr,
        get_request("127.0.0.1", "/metrics").as_bytes(),
    )
    .await;
    resp.map(|r| {
        r.text()
            .lines()
            .filter(|l| {
                l.starts_with("clawdeploy_wake") && (l.contains("_sum") || l.contains("_count"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// An owner with an OpenAI key (the fake behind `llm.openai_url`) and a running instance.
async fn tenant(edge: &Edge, name: &str) -> (String, String) {
    let (token, _, _) = edge.register(&format!("{name}@example.com"), PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": format!("sk-test-{name}")})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": name })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    (token, format!("{name}.{BASE_DOMAIN}"))
}

fn lifecycle_edge(
    image: &str,
    node_id: &str,
    min_idle: usize,
    capacity: usize,
    provider: SocketAddr,
) -> EdgeBuilder {
    // `openclaw_edge` (tests/it/openclaw.rs) on the bench's own network.
    openclaw_edge(image, node_id, min_idle, capacity)
        .section("runtime", &format!("docker_network = \"{BENCH_NETWORK}\""))
        .section("llm", &format!("openai_url = \"http://{provider}\""))
        .section("pool", "tick_secs = 1")
}

/// The bench's own instance network: the egress rules are per bridge, and an edge installing
/// them flushes the chains another edge on the same network installed (the test suite's
/// `clawdeploy-openclaw-test`, which a concurrent test run uses), refusing this edge's LLM meter.
const BENCH_NETWORK: &str = "clawdeploy-lifecycle-bench";

/// Keeps the edge's log when the bench panics (the edge's temp dir goes with it).
fn keep_log_on_panic(edge: &Edge, mode: &str) {
    let log = edge.data_dir().parent().map(|d| d.join("edge.log"));
    let keep = std::path::PathBuf::from(format!(
        "/tmp/lifecycle-{mode}-edge-{}.log",
        std::process::id()
    ));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(log) = &log {
            let _ = std::fs::copy(log, &keep);
            eprintln!("lifecycle bench: edge log kept in {}", keep.display());
        }
        previous(info);
    }));
}

/// Removes the bench's instance network (dropped after `Cleanup` removed the containers).
struct NetworkCleanup;

impl Drop for NetworkCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", BENCH_NETWORK])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = std::env::var("LIFECYCLE_BENCH").unwrap_or_else(|_| "signup".into());
    let image = openclaw_image().await;
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("lcbench{}", std::process::id());
    let _network = NetworkCleanup;
    let _cleanup = Cleanup(node_id.clone());
    match mode.as_str() {
        "signup" => signup(&image, &node_id, provider_addr, &provider).await,
        "wake" => wake(&image, &node_id, provider_addr).await,
        "density" => density(&image, &node_id, provider_addr).await,
        other => panic!("LIFECYCLE_BENCH={other}: signup, wake or density"),
    }
    drop(provider);
}

// --- 1. click on Deploy → rendered first reply -------------------------------------------------

async fn signup(image: &str, node_id: &str, provider: SocketAddr, fake: &FakeProvider) {
    let n = env_usize("LIFECYCLE_SIGNUPS", 20);
    // bcrypt at the production default (12), not the test suites' 4: the click registers the account.
    // Capacity for every signup: a deleted instance keeps its slot (its stopped container stays
    // `assigned` through the 7-day grace period), so a small capacity stops the pool's refill.
    let edge = lifecycle_edge(image, node_id, 1, n + 3, provider)
        .bcrypt_cost(12)
        .start()
        .await;
    keep_log_on_panic(&edge, "signup");
    let mut rows = String::new();
    let (mut total, mut to_dash, mut to_enabled, mut send_to_reply, mut second_turn) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut provider_called = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let refill = Instant::now();
        wait_idle(&edge, 1, PATIENCE_LONG).await;
        let refill = refill.elapsed();
        let browser = Browser::start(&edge).await;
        let sub = format!("click{i}");
        let email = format!("{sub}@example.com");
        browser.goto("/signup").await;
        browser.wait_path("/signup").await;
        browser.type_into("#email", &email).await;
        browser.type_into("#password", PW).await;
        browser.click("#provider option[value=openai]").await;
        browser
            .type_into("#api-key", &format!("sk-test-{sub}-0123456789"))
            .await;
        browser.type_into("#subdomain", &sub).await;
        browser
            .wait_text("#subdomain-status", |t| t.contains("available"))
            .await;
        let (load_before, used_before) = (load(), used_mib());

        let log_mark = edge.log_text().len();
        let clicked = Instant::now();
        browser.click("#deploy").await;
        browser.wait_path("/dashboard").await;
        let dash = clicked.elapsed();
        browser.wait_enabled("#chat-send").await;
        let enabled = clicked.elapsed();
        browser.type_into("#chat-input", "hello").await;
        let sent = Instant::now();
        // When the turn's first completion request reaches the provider (OpenClaw's own work
        // before the model call, versus the answer's way back to the page).
        let reached = {
            let fake = fake.clone();
            let before = fake.requests().len();
            tokio::spawn(async move {
                while fake.requests().len() == before {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Instant::now()
            })
        };
        browser.click("#chat-send").await;
        let reply = browser
            .wait_text_within("#chat-log li.final", Duration::from_secs(180), |t| {
                !t.is_empty()
            })
            .await;
        let elapsed = clicked.elapsed();
        let turn = sent.elapsed();
        let to_provider = reached
            .await
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(sent));
        assert_eq!(reply, ANSWER, "{}", tail(&edge.log_text(), 40));
        // Where the platform's part went: every request of this signup, as the edge timed it.
        for line in edge.log_text()[log_mark..]
            .lines()
            .filter(|l| l.contains("instance handed over"))
        {
            eprintln!(
                "    {}",
                line.split(" clawdeploy_pool").nth(1).unwrap_or(line)
            );
        }
        for line in edge.log_text()[log_mark..]
            .lines()
            .filter(|l| l.contains(" access:"))
        {
            let field = |name: &str| {
                line.split(&format!(" {name}="))
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or("")
                    .to_string()
            };
            eprintln!(
                "    {} {} {} {} {} ms",
                line.split(' ').next().unwrap_or(""),
                field("method"),
                field("path"),
                field("status"),
                field("duration_ms")
            );
        }
        // A second turn in the same page: the first turn's own cost, against a warm one.
        browser.type_into("#chat-input", "again").await;
        let again = Instant::now();
        browser.click("#chat-send").await;
        let deadline = Instant::now() + Duration::from_secs(180);
        while browser
            .script("return document.querySelectorAll('#chat-log li.final').length;")
            .await
            .as_u64()
            .unwrap_or(0)
            < 2
        {
            assert!(Instant::now() < deadline, "no second reply");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = again.elapsed();
        eprintln!(
            "lifecycle signup {i}: click→reply {} (dashboard {}, chat enabled {}, send→reply {}), load {load_before}",
            ms(elapsed),
            ms(dash),
            ms(enabled),
            ms(turn)
        );
        // What the API holds, and the instance goes away so the next signup has room.
        let login = edge.login(&email, PW).await.json();
        let token = login["token"].as_str().expect("token").to_string();
        let me = edge
            .api("GET", "/api/instances/me", Some(&token), None)
            .await
            .json();
        let status = me["instance"]["status"].as_str().unwrap_or("?").to_string();
        let deleted = edge
            .api("DELETE", "/api/instances/me", Some(&token), None)
            .await;
        assert_eq!(deleted.status, 200, "{}", deleted.text());
        drop(browser);
        let _ = writeln!(
            rows,
            "| {i} | {} | {} | {} | {} | {} | {} | {:.1} s | {load_before} | {:.1} GiB | {status} |",
            ms(elapsed),
            ms(dash),
            ms(enabled),
            ms(turn),
            ms(to_provider),
            ms(second),
            refill.as_secs_f64(),
            used_before / 1024.0
        );
        total.push(elapsed);
        to_dash.push(dash);
        to_enabled.push(enabled);
        send_to_reply.push(turn);
        provider_called.push(to_provider);
        second_turn.push(second);
    }
    let report = format!(
        "# Click on Deploy to rendered first reply, real OpenClaw ({date})\n\n\
         `LIFECYCLE_BENCH=signup cargo bench --bench lifecycle`: image `{image}`, {n} signups in headless \
         Chromium (chromedriver, `tests/it/webdriver.rs`), one at a time, each with a fresh browser and a warm \
         pool member idle before the click (`min_idle = 1`, `capacity = signups + 3`; the instance is deleted \
         after its reply, which keeps its slot: see the summary). The signup form carries an OpenAI key; the edge's `llm.openai_url` is the fake provider on \
         loopback (answers at once), so the owner takes the warm fast path. bcrypt cost 12 (production). \
         Wall time {wall:.0} s. Load at the end: {load_end}.\n\n\
         The figure is measured by the bench process around WebDriver commands, as the dashboard journey \
         test does: from the click on `#deploy` (form already filled, subdomain checked) to `#chat-log li.final` \
         holding the reply; between, the page registers the account, opens a browser session, creates the \
         instance, loads `/dashboard`, its chat bridge connects (`#chat-send` enabled), the bench types \
         \"hello\" (one WebDriver call, ~20-60 ms) and clicks send. Each wait polls WebDriver every 20-25 ms, \
         so every figure carries up to ~50 ms of polling.\n\n\
         {SUMMARY_HEAD}{s1}{s2}{s3}{s4}{s6}{s5}\n\
         ## Every run\n\n\
         | # | click→reply | click→/dashboard ready | click→chat enabled | send→reply | send→provider called | 2nd turn send→reply | pool refill wait | load (1/5/15 min) before | node used | status after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n{rows}",
        date = date(),
        wall = started.elapsed().as_secs_f64(),
        load_end = load(),
        s1 = summary_row("click → rendered reply", &total),
        s2 = summary_row("click → /dashboard (app.js ready)", &to_dash),
        s3 = summary_row("click → chat enabled", &to_enabled),
        s4 = summary_row("send → rendered reply (first turn)", &send_to_reply),
        s5 = summary_row("second turn: send → rendered reply", &second_turn),
        s6 = summary_row("send → provider called (first turn)", &provider_called),
    );
    write_result("lifecycle", "signup", &report);
}

// --- 2. wake of a frozen instance → first byte of the held request -----------------------------

/// Sends `raw` from the host's non-loopback address; (time to the first response byte, time to
/// the end, status).
async fn timed_request(edge: SocketAddr, raw: &[u8]) -> (Duration, Duration, u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(host_address(), 0))
        .expect("bind client");
    let t = Instant::now();
    let mut tcp = socket.connect(edge).await.expect("connect to the edge");
    tcp.set_nodelay(true).ok();
    tcp.write_all(raw).await.expect("write");
    let mut bytes = vec![0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(120), tcp.read(&mut bytes))
        .await
        .expect("a first byte in 120 s")
        .expect("read");
    let first = t.elapsed();
    bytes.truncate(n);
    tcp.read_to_end(&mut bytes).await.expect("read");
    let all = t.elapsed();
    let resp = parse_response(&bytes).expect("HTTP response");
    (first, all, resp.status, resp.text())
}

async fn wake(image: &str, node_id: &str, provider: SocketAddr) {
    let wakes = env_usize("LIFECYCLE_WAKES", 50);
    let ws_wakes = env_usize("LIFECYCLE_WS_WAKES", 5);
    let idle = env_usize("LIFECYCLE_IDLE_SECS", 2);
    let edge = lifecycle_edge(image, node_id, 1, 3, provider)
        .section("pool", &format!("idle_stop_secs = {idle}"))
        .section("pool", "sleep = \"freeze\"")
        .start()
        .await;
    keep_log_on_panic(&edge, "wake");
    wait_idle(&edge, 1, PATIENCE_LONG).await;
    let (token, host) = tenant(&edge, "sleeper").await;
    let (mut ws, _) = connect_owner(&edge, &host, &token).await;
    assert_eq!(chat(&mut ws, "hello").await, ANSWER);
    ws.close(None).await.ok();
    drop(ws);
    // The pool's replacement member booted (its boot would load the first wakes).
    wait_idle(&edge, 1, PATIENCE_LONG).await;
    let raw = format!(
        "GET /control-ui-config.json HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    // The same request to the awake instance: the baseline without a wake.
    let mut awake = Vec::new();
    for _ in 0..5 {
        let (first, _, status, _) = timed_request(edge.addr, raw.as_bytes()).await;
        assert_eq!(status, 200);
        awake.push(first);
    }

    let started = Instant::now();
    let mut rows = String::new();
    let (mut firsts, mut alls, mut asleep_for) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..wakes {
        wait_state(&edge, &host, "sleeping", PATIENCE_LONG).await;
        let slept = Instant::now();
        // Asleep for a while (1-3 s): its pages pushed to zram, as after a real idle period.
        tokio::time::sleep(Duration::from_millis(1000 + (i as u64 * 397) % 2000)).await;
        let (l, z) = (load(), zram());
        let (first, all, status, body) = timed_request(edge.addr, raw.as_bytes()).await;
        assert_eq!(status, 200, "{body}\n{}", tail(&edge.log_text(), 60));
        let _ = writeln!(
            rows,
            "| {i} | {} | {} | {:.1} s | {l} | {:.0} MiB |",
            ms(first),
            ms(all),
            slept.elapsed().as_secs_f64() - all.as_secs_f64(),
            z.2
        );
        eprintln!("lifecycle wake {i}: first byte {} (load {l})", ms(first));
        firsts.push(first);
        alls.push(all);
        asleep_for.push(slept.elapsed() - all);
    }
    let http_metrics = wake_metrics(&edge).await;

    // WebSocket wakes: upgrade, OpenClaw's connect handshake, then a chat turn.
    let mut ws_rows = String::new();
    let (mut upgrades, mut hellos, mut replies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ws_wakes {
        wait_state(&edge, &host, "sleeping", PATIENCE_LONG).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let l = load();
        let t = Instant::now();
        let mut ws = gateway(&edge, &host, Some(&token), &[])
            .await
            .expect("upgrade through the edge");
        let upgraded = t.elapsed();
        let hello = connect(&mut ws).await.expect("connect");
        assert_eq!(hello["ok"], true, "{hello}");
        let hello_at = t.elapsed();
        assert_eq!(chat(&mut ws, "after a nap").await, ANSWER);
        let reply_at = t.elapsed();
        ws.close(None).await.ok();
        drop(ws);
        let _ = writeln!(
            ws_rows,
            "| {i} | {} | {} | {} | {l} |",
            ms(upgraded),
            ms(hello_at),
            ms(reply_at)
        );
        eprintln!(
            "lifecycle ws wake {i}: upgrade {} hello {} reply {}",
            ms(upgraded),
            ms(hello_at),
            ms(reply_at)
        );
        upgrades.push(upgraded);
        hellos.push(hello_at);
        replies.push(reply_at);
    }
    let report = format!(
        "# Wake of a frozen OpenClaw to the held request's first byte ({date})\n\n\
         `LIFECYCLE_BENCH=wake cargo bench --bench lifecycle`: image `{image}`, one tenant (OpenAI key, one \
         chat turn first), `pool.sleep = \"freeze\"`, `idle_stop_secs = {idle}`, `tick_secs = 1`, zram swap; \
         a warm member idle beside it (`min_idle = 1`). For each wake: wait until `/admin/routes` says \
         `sleeping`, wait 1-3 s more, then `GET /control-ui-config.json` with the owner's bearer token and \
         `Accept: application/json` through the edge from the host's non-loopback address (a new TCP \
         connection each time, `Connection: close`). The figure runs from before `connect()` to the first \
         response byte (the whole response is a few hundred bytes, see the second column). Wall time \
         {wall:.0} s. Load at the end: {load_end}.\n\n\
         {SUMMARY_HEAD}{s1}{s2}{s0}\n\
         WebSocket wakes ({ws_wakes}; from before `connect()`):\n\n\
         {SUMMARY_HEAD}{w1}{w2}{w3}\n\
         The edge's own wake metrics after the HTTP wakes:\n\n```\n{http_metrics}\n```\n\n\
         ## Every HTTP wake\n\n\
         | # | first byte | whole response | asleep before | load (1/5/15) | zram mem_used_total |\n|---|---|---|---|---|---|\n{rows}\n\
         ## Every WebSocket wake\n\n\
         | # | upgrade (101) | connect answered | first chat reply | load |\n|---|---|---|---|---|\n{ws_rows}",
        date = date(),
        wall = started.elapsed().as_secs_f64(),
        load_end = load(),
        s1 = summary_row("wake → first byte", &firsts),
        s2 = summary_row("wake → whole response", &alls),
        s0 = summary_row("same request, awake (no wake)", &awake),
        w1 = summary_row("ws wake → 101", &upgrades),
        w2 = summary_row("ws wake → connect answered", &hellos),
        w3 = summary_row("ws wake → first chat reply", &replies),
    );
    write_result("lifecycle", "wake", &report);
}

// --- 3. density -----------------------------------------------------------------------------

/// One container's memory (cgroup v1): (usage, rss, cache, swap) in MiB.
fn cgroup_memory(id: &str) -> (f64, f64, f64, f64) {
    let dir = format!("/sys/fs/cgroup/memory/docker/{id}");
    let usage = std::fs::read_to_string(format!("{dir}/memory.usage_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1048576.0;
    let stat = std::fs::read_to_string(format!("{dir}/memory.stat")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1048576.0
    };
    (
        usage,
        field("total_rss"),
        field("total_cache"),
        field("total_swap"),
    )
}

/// The node's containers: published loopback port → full container id.
fn containers_by_port(node_id: &str) -> HashMap<u16, String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--no-trunc",
            "--filter",
            &format!("label=clawdeploy.node={node_id}"),
            "--format",
            "{{.ID}}\t{{.Ports}}",
        ])
        .output()
        .expect("docker ps");
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(2, '\t');
        let id = parts.next().unwrap_or_default().to_string();
        let ports = parts.next().unwrap_or_default();
        // "127.0.0.1:32771->18789/tcp"
        for p in ports.split(',') {
            if let Some(port) = p
                .trim()
                .split("->")
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                map.insert(port, id.clone());
            }
        }
    }
    map
}

fn all_containers(node_id: &str) -> Vec<String> {
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
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// One chat turn of a chatting tenant on its open WebSocket; when the socket was closed under it,
/// the drop is recorded and the owner reconnects (the turn is retried on the new socket).
async fn chatter_turn(
    edge: &Edge,
    host: &str,
    token: &str,
    ws: &mut Option<WebSocket>,
    message: &'static str,
    drops: &mut String,
    started: &Instant,
) {
    let mut socket = ws.take().expect("socket");
    let turn = tokio::spawn(async move {
        let answer = chat(&mut socket, message).await;
        (socket, answer)
    });
    let socket = match turn.await {
        Ok((socket, answer)) => {
            assert_eq!(answer, ANSWER);
            socket
        }
        Err(e) => {
            let _ = writeln!(
                drops,
                "- {host} at {:.0} s: {e}",
                started.elapsed().as_secs_f64()
            );
            let (mut socket, _) = connect_owner(edge, host, token).await;
            assert_eq!(chat(&mut socket, message).await, ANSWER);
            socket
        }
    };
    *ws = Some(socket);
}

async fn density(image: &str, node_id: &str, provider: SocketAddr) {
    let tenants = env_usize("LIFECYCLE_TENANTS", 15);
    let awake_n = env_usize("LIFECYCLE_AWAKE", 3).min(tenants);
    let idle = env_usize("LIFECYCLE_IDLE_SECS", 10);
    let ceiling_mib = env_usize("LIFECYCLE_MAX_USED_MIB", 17 * 1024) as f64;
    let started = Instant::now();
    let (load0, used0, zram0) = (load(), used_mib(), zram());
    // `reserve_mb` as default; capacity high enough for all awake at once (never reached: they sleep).
    let edge = lifecycle_edge(image, node_id, 2, tenants + 2, provider)
        .section("pool", &format!("idle_stop_secs = {idle}"))
        .section("pool", "sleep = \"freeze\"")
        .start()
        .await;
    keep_log_on_panic(&edge, "density");
    let mut chatters = Vec::new();
    let mut drops = String::new();
    let mut hosts = Vec::new();
    let mut log = String::new();
    for i in 0..tenants {
        // Stay under the ceiling: wait for sleepers to freeze before the next signup.
        let wait_mem = Instant::now();
        while used_mib() > ceiling_mib {
            assert!(
                wait_mem.elapsed() < Duration::from_secs(300),
                "node memory stays above {ceiling_mib} MiB"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        wait_idle(&edge, 1, PATIENCE_LONG).await;
        let name = format!("dense{i}");
        let (token, host) = tenant(&edge, &name).await;
        let (mut ws, _) = connect_owner(&edge, &host, &token).await;
        assert_eq!(chat(&mut ws, "hello").await, ANSWER);
        let _ = writeln!(
            log,
            "- tenant {i} created at {:.0} s, node used {:.1} GiB, load {}",
            started.elapsed().as_secs_f64(),
            used_mib() / 1024.0,
            load()
        );
        eprintln!(
            "lifecycle density: tenant {i} up, used {:.1} GiB",
            used_mib() / 1024.0
        );
        if i < awake_n {
            chatters.push((Some(ws), host.clone(), token.clone()));
        } else {
            ws.close(None).await.ok();
        }
        // The chatting few keep talking.
        for (ws, host, token) in chatters.iter_mut() {
            chatter_turn(&edge, host, token, ws, "still here", &mut drops, &started).await;
        }
        hosts.push((host, token, i < awake_n));
    }
    // All but the chatting few asleep.
    for (host, _, awake) in &hosts {
        if !awake {
            wait_state(&edge, host, "sleeping", PATIENCE_LONG).await;
        }
    }
    // Settle: frozen pages pushed out, the pool's last member warm.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for (ws, host, token) in chatters.iter_mut() {
        chatter_turn(&edge, host, token, ws, "one more", &mut drops, &started).await;
    }
    let (load1, used1, zram1) = (load(), used_mib(), zram());
    let by_port = containers_by_port(node_id);
    let mut rows = String::new();
    let (mut sleeping, mut awake) = (Vec::new(), Vec::new());
    let mut tenant_ids = Vec::new();
    for (host, _, _) in &hosts {
        let r = route_of(&edge, host).await;
        let state = r["state"].as_str().unwrap_or("?").to_string();
        let port = r["upstream"]
            .as_str()
            .and_then(|u| u.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or(0);
        let id = by_port.get(&port).cloned().unwrap_or_default();
        let (usage, rss, cache, swap) = cgroup_memory(&id);
        let _ = writeln!(
            rows,
            "| {host} | {state} | {} | {usage:.0} | {rss:.0} | {cache:.0} | {swap:.0} |",
            &id.get(..12).unwrap_or("?")
        );
        if state == "sleeping" {
            sleeping.push((usage, swap));
        } else {
            awake.push(usage);
        }
        tenant_ids.push(id);
    }
    // The rest of the node's containers: warm members.
    let mut warm = Vec::new();
    for id in all_containers(node_id) {
        if !tenant_ids.contains(&id) {
            let (usage, rss, cache, swap) = cgroup_memory(&id);
            let _ = writeln!(
                rows,
                "| (warm member) | idle | {} | {usage:.0} | {rss:.0} | {cache:.0} | {swap:.0} |",
                &id[..12]
            );
            warm.push(usage);
        }
    }
    // Every awake tenant answers.
    let mut answered = 0;
    for (ws, host, token) in chatters.iter_mut() {
        chatter_turn(
            &edge,
            host,
            token,
            ws,
            "are you there",
            &mut drops,
            &started,
        )
        .await;
        answered += 1;
    }
    let sleep_usage: f64 = sleeping.iter().map(|s| s.0).sum();
    let sleep_swap: f64 = sleeping.iter().map(|s| s.1).sum();
    // zram holds swap of every process on the node; the tenants' share of its memory is their
    // swapped bytes times its compression ratio (mem_used_total / orig_data_size).
    let ratio = if zram1.0 > 0.0 {
        zram1.2 / zram1.0
    } else {
        0.0
    };
    let sleep_zram = sleep_swap * ratio;
    let per_sleeping = if sleeping.is_empty() {
        0.0
    } else {
        (sleep_usage + sleep_zram) / sleeping.len() as f64
    };
    let per_awake = if awake.is_empty() {
        0.0
    } else {
        awake.iter().sum::<f64>() / awake.len() as f64
    };
    let mix_awake = awake.len() as f64 / (awake.len() + sleeping.len()).max(1) as f64;
    let per_tenant_mix = mix_awake * per_awake + (1.0 - mix_awake) * per_sleeping;
    let per_8g_mix = 8192.0 / per_tenant_mix;
    let per_8g_asleep = 8192.0 / per_sleeping.max(1.0);
    // The platform's own budget (docs/instances.md "Capacity"): each awake instance counts
    // `reserve_mb` (1280), a frozen one what it holds.
    let report = format!(
        "# Density: tenants per 8 GiB with most asleep ({date})\n\n\
         `LIFECYCLE_BENCH=density cargo bench --bench lifecycle`: image `{image}`, {tenants} tenants created one \
         at a time from a warm pool (`min_idle = 2`, `capacity = {cap}`, `reserve_mb` default), each with an \
         OpenAI key (the fake provider) and one chat turn; the first {awake_n} keep their WebSocket open and \
         chat after every later signup and at the end (\"awake, chatting\"); the rest close and sleep \
         (`sleep = \"freeze\"`, `idle_stop_secs = {idle}`). After all the others were `sleeping`, 30 s to settle, \
         then each tenant's container is read from cgroup v1 (`memory.usage_in_bytes`, `memory.stat` \
         total_rss/total_cache/total_swap), and zram's `mm_stat`. Wall time {wall:.0} s.\n\n\
         Load before: {load0}; at the measurement: {load1}. Node used (MemTotal − MemAvailable): {used0:.0} MiB \
         before, {used1:.0} MiB at the measurement (the machine is shared). zram (orig / compressed / \
         mem_used_total, MiB): before {z0a:.0} / {z0b:.0} / {z0c:.0}, at the measurement {z1a:.0} / {z1b:.0} / \
         {z1c:.0}.\n\n\
         ## Result\n\n\
         | | tenants | MiB each |\n|---|---|---|\n\
         | sleeping (frozen): cgroup usage | {ns} | {su:.0} |\n\
         | sleeping: swapped out (uncompressed) | {ns} | {ss:.0} |\n\
         | sleeping: zram share (swap × {ratio:.3}) | {ns} | {sz:.0} |\n\
         | **sleeping total** (usage + zram share) | {ns} | **{per_sleeping:.0}** |\n\
         | **awake, chatting** (cgroup usage) | {na} | **{per_awake:.0}** |\n\
         | warm pool members (not tenants) | {nw} | {pw:.0} |\n\n\
         Awake tenants answering a chat turn at the measurement: {answered}/{na}.\n\n\
         Per 8 GiB (8192 MiB) of node memory, tenants' memory only (no edge, no warm members, no OS): \
         with this mix ({na} awake of {nt}, {per_tenant_mix:.0} MiB per tenant on average) **{per_8g_mix:.0} \
         tenants**; all asleep {per_8g_asleep:.0}; all awake {per_8g_awake:.0}.\n\n\
         ## Every container (MiB)\n\n\
         | tenant | state | container | usage | rss | cache | swap |\n|---|---|---|---|---|---|---|\n{rows}\n\
         ## Signups\n\n{log}\n\
         ## Chatters' WebSockets closed under them (reconnected, the turn retried)\n\n{drops}",
        date = date(),
        cap = tenants + 2,
        wall = started.elapsed().as_secs_f64(),
        z0a = zram0.0,
        z0b = zram0.1,
        z0c = zram0.2,
        z1a = zram1.0,
        z1b = zram1.1,
        z1c = zram1.2,
        ns = sleeping.len(),
        na = awake.len(),
        nt = awake.len() + sleeping.len(),
        nw = warm.len(),
        su = sleep_usage / sleeping.len().max(1) as f64,
        ss = sleep_swap / sleeping.len().max(1) as f64,
        sz = sleep_zram / sleeping.len().max(1) as f64,
        pw = warm.iter().sum::<f64>() / warm.len().max(1) as f64,
        per_8g_awake = 8192.0 / per_awake.max(1.0),
    );
    write_result("lifecycle", "density", &report);
    drop(chatters);
}
