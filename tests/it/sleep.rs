//! Idle instances sleep and the edge wakes them (issue 24), with the protocol-speaking fixture
//! (not OpenClaw) in Docker and as local processes: sleep after the idle time, a held HTTP request
//! or WebSocket upgrade answered by the woken instance, work that keeps an instance awake (asked of
//! its gateway, as OpenClaw's suspension handshake answers), a scheduled job woken for in time,
//! concurrent requests during a wake, and a wake storm that never overcommits the node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::instance_access::{gateway, running_instance};
use crate::openclaw::Cleanup;
use crate::runtime::chat_turn;
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const PATIENCE: Duration = Duration::from_secs(60);

fn node_id() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "s{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fixture pool whose instances sleep after `idle_secs` without traffic (ticks every second).
fn sleepy_edge(docker: bool, node: &str, idle_secs: u64) -> EdgeBuilder {
    fixture_pool_edge(docker, 0, node)
        .section("pool", "tick_secs = 1")
        .section("pool", &format!("idle_stop_secs = {idle_secs}"))
        .section("pool", "sleep = \"stop\"")
}

async fn wait_state(edge: &Edge, host: &str, state: &str) -> Value {
    wait_route_state(edge, host, state, PATIENCE).await
}

/// A user with a running instance at `<sub>.<base>`: (token, host, upstream).
async fn tenant(edge: &Edge, sub: &str) -> (String, String, SocketAddr) {
    let (token, _, _) = edge.register(&format!("{sub}@example.com"), PW).await;
    let (host, upstream) = running_instance(edge, &token, sub).await;
    (token, host, upstream)
}

/// The edge's Prometheus metrics.
async fn scrape(edge: &Edge) -> String {
    try_send(edge.metrics_addr, get_request("m", "/metrics").as_bytes())
        .await
        .unwrap()
        .text()
}

/// Idle checks that found traffic at the edge (`clawdeploy_sleep_checks_total{outcome="traffic"}`).
async fn traffic_checks(edge: &Edge) -> u64 {
    scrape(edge)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("clawdeploy_sleep_checks_total{outcome=\"traffic\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Instance routes running now, from the admin API at `addr`.
async fn awake_routes(addr: SocketAddr) -> usize {
    let raw = format!(
        "GET /admin/routes HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let routes = try_send(addr, raw.as_bytes()).await.unwrap().json();
    routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "instance" && r["state"] == "running")
        .count()
}

/// Sets the fixture's pretend work (`POST /work?<query>`), straight to the instance.
async fn fixture_work(upstream: SocketAddr, query: &str) {
    let post = format!(
        "POST /work?{query} HTTP/1.1\r\nHost: i\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        try_send(upstream, post.as_bytes()).await.unwrap().status,
        200
    );
}

/// The fixture's `/stats`, straight from the instance.
async fn fixture_stats(upstream: SocketAddr) -> Value {
    try_send(upstream, get_request("i", "/stats").as_bytes())
        .await
        .unwrap()
        .json()
}

/// How many suspension leases the fixture's gateway gave and had released.
async fn leases(upstream: SocketAddr) -> (Option<u64>, Option<u64>) {
    let stats = fixture_stats(upstream).await;
    (stats["suspensions"].as_u64(), stats["resumes"].as_u64())
}

/// A request the fixture answers with the headers it got: proof that it reached the instance.
async fn whoami(edge: &Edge, host: &str, token: &str) -> Response {
    edge.get_as(host, "/whoami", token).await
}

async fn sleeps_then_a_request_wakes_it(docker: bool) {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = sleepy_edge(docker, &node, 1).start().await;
    let (token, host, _) = tenant(&edge, "dozy").await;
    wait_state(&edge, &host, "sleeping").await;
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.json()["instance"]["status"], "sleeping", "{}", me.text());

    // An API client's request is held while the instance wakes, then answered by it.
    let resp = whoami(&edge, &host, &token).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), edge.log_text());
    assert!(resp.json()["headers"].is_object(), "{}", resp.text());
    assert_eq!(route_of(&edge, &host).await["state"], "running");

    // It sleeps again once idle, and a WebSocket upgrade wakes it the same way.
    wait_state(&edge, &host, "sleeping").await;
    let mut ws = gateway(&edge, &host, "/ws", Some(&token))
        .await
        .expect("the upgrade is held, then proxied");
    assert_eq!(
        chat_turn(&mut ws, "still there?").await,
        "echo: still there?"
    );
    // An open WebSocket is traffic: no sleep while it is open, whatever the idle time (two more
    // idle checks say so).
    let checked = traffic_checks(&edge).await;
    let deadline = Instant::now() + PATIENCE;
    while traffic_checks(&edge).await < checked + 2 {
        assert!(Instant::now() < deadline, "no idle checks");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(route_of(&edge, &host).await["state"], "running");
    drop(ws);
    wait_state(&edge, &host, "sleeping").await;

    let metrics = scrape(&edge).await;
    assert!(
        metrics.contains("clawdeploy_wake_seconds_count{outcome=\"woken\"} 2"),
        "{metrics}"
    );
    // The gauges are set every pool tick.
    let deadline = Instant::now() + PATIENCE;
    while !scrape(&edge)
        .await
        .contains("clawdeploy_instances_sleeping 1")
    {
        assert!(Instant::now() < deadline, "{}", scrape(&edge).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_an_idle_instance_sleeps_and_a_request_wakes_it() {
    sleeps_then_a_request_wakes_it(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_an_idle_instance_sleeps_and_a_request_wakes_it() {
    sleeps_then_a_request_wakes_it(false).await;
}

/// Many requests arrive while an instance sleeps: one wake serves them all, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_sleeping_instance_share_one_wake() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = sleepy_edge(true, &node, 1).start().await;
    let (token, host, _) = tenant(&edge, "crowd").await;
    for round in 1..=3 {
        wait_state(&edge, &host, "sleeping").await;
        let answers = join_all((0..20).map(|_| whoami(&edge, &host, &token))).await;
        for resp in answers {
            assert_eq!(resp.status, 200, "round {round}: {}", resp.text());
        }
        let metrics = scrape(&edge).await;
        let woken = format!("clawdeploy_wake_seconds_count{{outcome=\"woken\"}} {round}");
        assert!(metrics.contains(&woken), "round {round}: {metrics}");
    }
}

/// Work the gateway reports keeps an instance awake; a scheduled job wakes it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_work_keeps_an_instance_awake_and_a_due_job_wakes_it() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = sleepy_edge(true, &node, 1).start().await;
    let (token, host, upstream) = tenant(&edge, "worker").await;
    // A pretend agent turn for 6 s: the pool asks twice, is told busy, and does not sleep it.
    fixture_work(upstream, "busy_secs=6").await;
    let busy_until = Instant::now() + Duration::from_secs(6);
    let deadline = Instant::now() + PATIENCE;
    while fixture_stats(upstream).await["busyAnswers"].as_u64() < Some(2) {
        assert!(
            Instant::now() < deadline,
            "the pool never asked the gateway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        route_of(&edge, &host).await["state"],
        "running",
        "slept while busy"
    );
    assert_eq!(fixture_stats(upstream).await["suspensions"], 0);
    wait_state(&edge, &host, "sleeping").await;
    assert!(Instant::now() >= busy_until, "slept before its work ended");

    // Woken by a request, then given a job due in 40 s: it sleeps and is woken for the job
    // (one tick plus 30 s ahead) without any request.
    assert_eq!(whoami(&edge, &host, &token).await.status, 200);
    let upstream: SocketAddr = route_of(&edge, &host).await["upstream"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    fixture_work(upstream, "job_in_secs=40").await;
    let due = Instant::now() + Duration::from_secs(40);
    wait_state(&edge, &host, "sleeping").await;
    wait_state(&edge, &host, "running").await;
    assert!(Instant::now() < due, "woken after its job was due");
    let metrics = scrape(&edge).await;
    assert!(
        metrics.contains("clawdeploy_wake_seconds_count{outcome=\"woken\"} 2"),
        "{metrics}"
    );
}

/// Six sleeping instances on a node with room for three awake ones, all requested at once: the
/// wakes queue for room (instances go back to sleep as they idle), never more than three are
/// awake, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_storm_queues_and_never_overcommits() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = sleepy_edge(true, &node, 1)
        .section("pool", "capacity = 3")
        .start()
        .await;
    let mut tenants = Vec::new();
    for n in 0..6 {
        let t = tenant(&edge, &format!("storm{n}")).await;
        wait_state(&edge, &t.1, "sleeping").await;
        tenants.push(t);
    }
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let most_awake = {
        let watching = watching.clone();
        let addr = edge.addr;
        tokio::spawn(async move {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(awake_routes(addr).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let answers = join_all(
        tenants
            .iter()
            .map(|(token, host, _)| whoami(&edge, host, token)),
    )
    .await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    for resp in &answers {
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), edge.log_text());
    }
    let most = most_awake.await.unwrap();
    assert!(
        (1..=3).contains(&most),
        "{most} instances awake at once on a node with room for 3"
    );
}

/// A browser opening a sleeping instance whose wake takes longer than 1 s sees a "waking" page that
/// reloads itself; the wake goes on, and the reload reaches the woken instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_a_waking_page_only_while_a_slow_wake_goes_on() {
    let node = node_id();
    let edge = sleepy_edge(false, &node, 1).start().await;
    let (token, host, upstream) = tenant(&edge, "slowpoke").await;
    fixture_work(upstream, "startup_delay_ms=2500").await;
    wait_state(&edge, &host, "sleeping").await;

    let page = |token: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nAccept: text/html,*/*;q=0.8\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
    };
    let started = Instant::now();
    let waking = edge.send(page(&token).as_bytes()).await;
    let waited = started.elapsed();
    assert_eq!(waking.status, 503, "{}", waking.text());
    assert_eq!(waking.header("refresh"), Some("2"));
    assert_eq!(waking.header("retry-after"), Some("1"));
    assert!(
        waking.text().contains("Waking your assistant"),
        "{}",
        waking.text()
    );
    assert!(waited < Duration::from_millis(2_000), "held {waited:?}");

    // The wake went on without the browser: the reload finds it running.
    wait_state(&edge, &host, "running").await;
    let reloaded = edge.send(page(&token).as_bytes()).await;
    assert_ne!(reloaded.status, 503, "{}", reloaded.text());

    // A fast wake is answered without the page: the next sleep boots at once.
    let upstream: SocketAddr = route_of(&edge, &host).await["upstream"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    fixture_work(upstream, "startup_delay_ms=0").await;
    wait_state(&edge, &host, "sleeping").await;
    let direct = edge.send(page(&token).as_bytes()).await;
    assert_ne!(direct.status, 503, "{}", direct.text());
}

/// `freeze`: the container is paused with its memory limit lowered (the fixture needs no swap to
/// fit), the gateway's suspension lease is held while it sleeps and released at the wake, before
/// the held request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_frozen_instance_thaws_and_releases_its_gateway_lease() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = sleepy_edge(true, &node, 1)
        .section("pool", "sleep = \"freeze\"")
        .section("pool", "memory_mb = 256")
        .start()
        .await;
    let (token, host, upstream) = tenant(&edge, "frosty").await;
    wait_state(&edge, &host, "sleeping").await;
    let inspect = |format: &'static str| {
        let node = node.clone();
        async move {
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker inspect --format '{format}' $(docker ps -q --filter label=clawdeploy.node={node})"
                ))
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    assert_eq!(inspect("{{.State.Paused}}").await, "true");
    assert_eq!(
        inspect("{{.HostConfig.Memory}}").await,
        (96u64 << 20).to_string(),
        "frozen with its limit lowered"
    );

    let resp = whoami(&edge, &host, &token).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), edge.log_text());
    assert_eq!(inspect("{{.State.Paused}}").await, "false");
    assert_eq!(
        inspect("{{.HostConfig.Memory}}").await,
        (256u64 << 20).to_string(),
        "its limit restored"
    );
    // The same process (a thaw, not a boot) took one lease and had it released.
    assert_eq!(leases(upstream).await, (Some(1), Some(1)));
    assert_eq!(fixture_stats(upstream).await["suspended"], false);
    let mut ws = gateway(&edge, &host, "/ws", Some(&token)).await.unwrap();
    assert_eq!(chat_turn(&mut ws, "thawed?").await, "echo: thawed?");
}

/// A tenant whose instance does not come back from sleep: the held request gets 503 with
/// `Retry-After` (never hangs), the instance is `crashed`, and its owner gets a mail saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_crashes_on_wake_ends_crashed_and_its_owner_is_told() {
    let node = node_id();
    let edge = sleepy_edge(false, &node, 1)
        .section("pool", "ready_timeout_secs = 3")
        .start()
        .await;
    let (token, host, upstream) = tenant(&edge, "crashy").await;
    fixture_work(upstream, "crash_on_start=1").await;
    wait_state(&edge, &host, "sleeping").await;

    let resp = whoami(&edge, &host, &token).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.error_code(), "INSTANCE_WAKE_FAILED");
    assert_eq!(resp.header("retry-after"), Some("30"));
    wait_state(&edge, &host, "crashed").await;
    let mail = edge.last_mail("crashy@example.com").await;
    assert!(
        mail["subject"]
            .as_str()
            .unwrap_or_default()
            .contains("has stopped"),
        "{mail}"
    );
    assert!(
        mail["body"]
            .as_str()
            .unwrap_or_default()
            .contains("did not wake"),
        "{mail}"
    );
}

/// The edge restarts while an instance is frozen: its record, route and gateway lease are in the
/// store, so the new edge process wakes it on the next request, thawing the same process and
/// releasing the lease the old one took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_an_edge_restart_while_an_instance_sleeps_loses_nothing() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let builder = || {
        sleepy_edge(true, &node, 1)
            .section("pool", "sleep = \"freeze\"")
            .database_url(&url)
    };
    let mut edge = builder().start().await;
    let (token, host, upstream) = tenant(&edge, "restful").await;
    wait_state(&edge, &host, "sleeping").await;
    edge.signal(libc::SIGTERM);
    let status = tokio::time::timeout(PATIENCE, edge.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    drop(edge);

    let edge = builder().start().await;
    assert_eq!(route_of(&edge, &host).await["state"], "sleeping");
    let resp = whoami(&edge, &host, &token).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), edge.log_text());
    // The same process, its lease released.
    assert_eq!(leases(upstream).await, (Some(1), Some(1)));
}

/// Capacity counts what instances hold: a deleted instance (kept stopped for its grace period)
/// holds nothing, so on a node with room for one awake instance the next signup is served, not
/// queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_takes_no_room() {
    let node = node_id();
    let edge = sleepy_edge(false, &node, 3600)
        .section("pool", "capacity = 1")
        .start()
        .await;
    let (token, host, _) = tenant(&edge, "leaver").await;
    let deleted = edge
        .api("DELETE", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    wait_state(&edge, &host, "deleting").await;
    // Running, not queued: `tenant` waits for the route to run.
    tenant(&edge, "joiner").await;
}

/// A sleeping instance is woken only for its owner: another user's request (or none at all) is
/// refused before anything is held, and the instance stays asleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_wakes_a_sleeping_instance() {
    let node = node_id();
    let edge = sleepy_edge(false, &node, 1).start().await;
    let (_, host, _) = tenant(&edge, "sleeper").await;
    let (stranger, _, _) = edge.register("stranger@example.com", PW).await;
    wait_state(&edge, &host, "sleeping").await;
    let theirs = whoami(&edge, &host, &stranger).await;
    assert!(
        matches!(theirs.status, 401 | 403),
        "{} {}",
        theirs.status,
        theirs.text()
    );
    let anonymous = edge.get(&host, "/whoami").await;
    assert!(
        matches!(anonymous.status, 302 | 401 | 403),
        "{}",
        anonymous.status
    );
    assert_eq!(route_of(&edge, &host).await["state"], "sleeping");
    assert!(
        !scrape(&edge)
            .await
            .contains("clawdeploy_wake_seconds_count"),
        "a stranger woke it"
    );
}
