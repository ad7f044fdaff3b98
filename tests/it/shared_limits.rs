//! Two edge processes sharing a real Redis enforce ONE rate limit per client IP and per user;
//! with Redis killed both keep serving and limit on their own; with Redis back they share again.
//! Clients come from distinct loopback addresses (127.0.0.x), so each phase has a fresh IP.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::shared_counters::Redis;
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const LIMIT: usize = 10;

fn edge(url: &str, redis: &str) -> EdgeBuilder {
    EdgeBuilder::new()
        .database_url(url)
        .section("redis", &format!("url = \"{redis}\""))
        // A loaded test machine can be slower than the default 25 ms; the timeout's fallback is
        // not what this test is about.
        .section("redis", "rate_limit_timeout_ms = 1000")
        .section("rate_limits", &format!("per_ip_per_minute = {LIMIT}"))
        .section("rate_limits", &format!("per_user_per_minute = {LIMIT}"))
}

/// `GET <path>` on `host` from the loopback address `source`.
async fn get_from(edge: &Edge, source: Ipv4Addr, host: &str, path: &str) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((IpAddr::V4(source), 0).into()).unwrap();
    let mut tcp = socket.connect(edge.addr).await.unwrap();
    tcp.write_all(get_request(host, path).as_bytes())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut bytes))
        .await
        .expect("a complete response")
        .unwrap();
    parse_response(&bytes).unwrap()
}

/// The value of the `clawdeploy_rate_limits_shared` gauge on `edge`.
async fn shared(edge: &Edge) -> Option<f64> {
    let resp = try_send(
        edge.metrics_addr,
        get_request("metrics", "/metrics").as_bytes(),
    )
    .await
    .ok()?;
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix("clawdeploy_rate_limits_shared "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_shared(edge: &Edge, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while shared(edge).await != Some(want) {
        assert!(
            Instant::now() < deadline,
            "clawdeploy_rate_limits_shared never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const UNKNOWN: &str = "nothing-here.clawdeploy.test";

fn assert_limited(resp: &Response) {
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.error_code(), "RATE_LIMITED");
    let wait: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=120).contains(&wait), "Retry-After {wait}");
}

/// `n` requests from `source` on `edge`, none refused.
async fn pass(edge: &Edge, source: Ipv4Addr, n: usize) {
    for i in 0..n {
        let resp = get_from(edge, source, UNKNOWN, "/").await;
        assert_eq!(
            resp.status,
            404,
            "request {i} from {source}: {}",
            resp.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_enforce_one_rate_limit_through_redis_and_fall_back_while_it_is_down() {
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    assert!(UNKNOWN.ends_with(BASE_DOMAIN));
    let redis = Redis::start(free_port()).await;
    let a = edge(&url, &redis.url()).start().await;
    let b = edge(&url, &redis.url()).start().await;
    wait_shared(&a, 1.0).await;
    wait_shared(&b, 1.0).await;

    // Shared: 6 requests on A and 4 on B use up the address's 10; the 11th is refused on
    // either edge, although neither has seen more than 6 itself.
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    pass(&a, ip, 6).await;
    pass(&b, ip, LIMIT - 6).await;
    assert_limited(&get_from(&b, ip, UNKNOWN, "/").await);
    assert_limited(&get_from(&a, ip, UNKNOWN, "/").await);
    // Health checks stay exempt.
    assert_eq!(get_from(&a, ip, APP_DOMAIN, "/healthz").await.status, 200);
    // Another address is not affected.
    pass(&a, Ipv4Addr::new(127, 0, 0, 31), 1).await;

    // Per user (a token from this machine is limited per user only): one limit across edges.
    let email = format!("limits{}@example.com", std::process::id());
    let (token, _, _) = a.register(&email, PW).await;
    for (i, edge) in [&a, &a, &a, &a, &a, &a, &b, &b, &b, &b]
        .into_iter()
        .enumerate()
    {
        let resp = edge.api("GET", "/api/account", Some(&token), None).await;
        assert_ne!(resp.status, 429, "user request {i}: {}", resp.text());
    }
    assert_limited(&b.api("GET", "/api/account", Some(&token), None).await);

    // Redis dies: both edges keep serving, each limiting on its own (10 each).
    let port = redis.kill().await;
    let ip = Ipv4Addr::new(127, 0, 0, 22);
    pass(&a, ip, LIMIT).await;
    assert_limited(&get_from(&a, ip, UNKNOWN, "/").await);
    pass(&b, ip, LIMIT).await;
    assert_limited(&get_from(&b, ip, UNKNOWN, "/").await);
    wait_shared(&a, 0.0).await;
    wait_shared(&b, 0.0).await;

    // Redis returns: shared again.
    let _redis = Redis::start(port).await;
    wait_shared(&a, 1.0).await;
    wait_shared(&b, 1.0).await;
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    pass(&a, ip, 6).await;
    pass(&b, ip, LIMIT - 6).await;
    assert_limited(&get_from(&a, ip, UNKNOWN, "/").await);
}
