//! Signup to first reply through the real edge, and owner-only access to instance hosts, tested
//! from the attacker's side. Instances are the protocol-speaking test fixture (not OpenClaw) run by
//! the process runtime, and by Docker in one test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::openclaw::Cleanup;
use crate::runtime::chat_turn;
use crate::support::*;

const PW: &str = "correct horse battery staple 9";

fn node_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "e{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An edge whose pool runs the fixture as local processes (or in Docker).
pub(crate) fn edge_with_pool(docker: bool, min_idle: usize) -> EdgeBuilder {
    fixture_pool_edge(docker, min_idle, &node_id())
}

/// Creates an instance and waits until it is routed as running; (subdomain, upstream).
pub(crate) async fn running_instance(
    edge: &Edge,
    token: &str,
    subdomain: &str,
) -> (String, SocketAddr) {
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(token),
            Some(json!({ "subdomain": subdomain })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routes = edge
            .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
            .await
            .json();
        let route = routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == format!("{subdomain}.{BASE_DOMAIN}"))
            .cloned();
        if let Some(route) = route.filter(|r| r["state"] == "running") {
            return (
                format!("{subdomain}.{BASE_DOMAIN}"),
                route["upstream"].as_str().unwrap().parse().unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "instance never ran: {routes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests the fixture has seen, asked directly (not through the edge).
pub(crate) async fn fixture_requests(upstream: SocketAddr) -> u64 {
    let stats = try_send(upstream, get_request("i", "/stats").as_bytes())
        .await
        .unwrap()
        .json();
    // Minus this /stats request itself.
    stats["requests"].as_u64().unwrap() - 1
}

pub(crate) async fn gateway(
    edge: &Edge,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<WebSocket, u16> {
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_to_first_reply_through_the_edge_with_a_warm_pool() {
    let edge = edge_with_pool(false, 1).start().await;
    wait_idle(&edge, 1, Duration::from_secs(60)).await;
    let (token, _, _) = edge.register("alice@example.com", PW).await;
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": "alice" })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    // A warm instance was handed over: running when the signup call returns.
    assert_eq!(
        resp.json()["instance"]["status"],
        "running",
        "{}",
        resp.text()
    );
    assert!(resp.json()["pending"].is_null());

    let mut ws = gateway(&edge, &format!("alice.{BASE_DOMAIN}"), "/ws", Some(&token))
        .await
        .expect("owner gets through");
    assert_eq!(chat_turn(&mut ws, "hello").await, "echo: hello");
    ws.close(None).await.ok();

    // GET /api/instances/me says running too, and the pool refills.
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await
        .json();
    assert_eq!(me["instance"]["status"], "running");
    wait_idle(&edge, 1, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_on_docker_reaches_a_hardened_container_through_the_edge() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = fixture_pool_edge(true, 1, &node).start().await;
    wait_idle(&edge, 1, Duration::from_secs(60)).await;
    let (token, _, _) = edge.register("dora@example.com", PW).await;
    let (host, _) = running_instance(&edge, &token, "dora").await;
    let mut ws = gateway(&edge, &host, "/ws", Some(&token))
        .await
        .expect("owner gets through");
    assert_eq!(
        chat_turn(&mut ws, "in a container").await,
        "echo: in a container"
    );
    // Deleting the instance stops its container (kept for the grace period).
    assert_eq!(
        edge.api("DELETE", "/api/instances/me", Some(&token), None)
            .await
            .status,
        200
    );
    assert_eq!(edge.get_as(&host, "/", &token).await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_reaches_an_instance_and_the_container_sees_nothing_else() {
    let edge = edge_with_pool(false, 0).start().await;
    let (alice, _, alice_id) = edge.register("owner@example.com", PW).await;
    let (mallory, _, _) = edge.register("mallory@example.com", PW).await;
    let (host, upstream) = running_instance(&edge, &alice, "owned").await;
    let seen = fixture_requests(upstream).await;

    // No token, a garbage token, a token signed with another key, another user's token.
    assert_eq!(edge.get(&host, "/whoami").await.status, 401);
    assert_eq!(edge.get_as(&host, "/whoami", "not-a-jwt").await.status, 401);
    let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJzaWQiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJpYXQiOjAsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJl";
    assert_eq!(edge.get_as(&host, "/whoami", forged).await.status, 401);
    let other = edge.get_as(&host, "/whoami", &mallory).await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (403, "FORBIDDEN")
    );
    // Nor over WebSocket, at /ws or at /.
    assert_eq!(gateway(&edge, &host, "/ws", None).await.err(), Some(401));
    assert_eq!(
        gateway(&edge, &host, "/", Some(&mallory)).await.err(),
        Some(403)
    );
    // A forged identity header with another user's token changes nothing.
    let spoof = format!(
        "GET /whoami HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {mallory}\r\nX-Forwarded-User: {alice_id}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(edge.send(spoof.as_bytes()).await.status, 403);
    // Only the previous /stats call was added.
    assert_eq!(
        fixture_requests(upstream).await,
        seen + 1,
        "a refused request reached the container"
    );

    // The owner's request arrives with the edge's identity header, not the client's, and without
    // the platform's credentials.
    // Nor OpenClaw's scope header (absent, OpenClaw grants an HTTP call admin; the edge always
    // sends the owner's), nor a proof header of the client's making.
    let own = format!(
        "GET /whoami HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice}\r\nX-Forwarded-User: admin\r\n\
         X-OpenClaw-Scopes: operator.admin\r\nX-Clawdeploy-Proof-0123: 1\r\n\
         Cookie: clawdeploy_session=platform; app=1\r\nConnection: close\r\n\r\n"
    );
    let whoami = edge.send(own.as_bytes()).await;
    assert_eq!(whoami.status, 200, "{}", whoami.text());
    let headers = &whoami.json()["headers"];
    assert_eq!(headers["x-forwarded-user"], alice_id);
    // A client on the edge's own machine is named by a documentation address (OpenClaw refuses
    // proxied loopback clients).
    assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
    assert!(
        headers.get("authorization").is_none(),
        "the platform token reached the container: {headers}"
    );
    assert_eq!(
        headers["x-openclaw-scopes"],
        "operator.read,operator.write,operator.approvals,operator.questions"
    );
    let instance_id = edge
        .api("GET", "/api/instances/me", Some(&alice), None)
        .await
        .json()["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let proofs: Vec<&String> = headers
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-clawdeploy-proof-"))
        .collect();
    assert_eq!(
        proofs,
        [&clawdeploy_proxy::gateway_trust::proof_header(
            JWT_KEY.as_bytes(),
            &instance_id
        )],
        "the gateway gets exactly the edge's proof for this instance: {headers}"
    );
    // The instance's own cookies pass; the platform's never do.
    assert_eq!(
        headers["cookie"], "app=1",
        "platform cookies reached the container: {headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_token_at_the_edge_at_once() {
    let edge = edge_with_pool(false, 0).start().await;
    let (token, _, _) = edge.register("leaving@example.com", PW).await;
    let (host, _) = running_instance(&edge, &token, "leaving").await;
    assert_eq!(edge.get_as(&host, "/healthz", &token).await.status, 200);
    assert_eq!(
        edge.api("POST", "/api/auth/logout", Some(&token), None)
            .await
            .status,
        204
    );
    let after = edge.get_as(&host, "/healthz", &token).await;
    assert_eq!(after.status, 401);
    assert!(
        after.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended"),
        "{}",
        after.text()
    );
}

/// Two edge processes sharing PostgreSQL: an instance created through one is served by the other,
/// and a logout through one is refused by the other, through the change broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edge_serves_route_changes_and_revocations_of_the_first() {
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    let first = edge_with_pool(false, 0).database_url(&url).start().await;
    let second = EdgeBuilder::new().database_url(&url).start().await;
    let (token, _, _) = first.register("shared@example.com", PW).await;
    let (host, _) = running_instance(&first, &token, "shared").await;

    let deadline = Instant::now() + PATIENCE;
    loop {
        let resp = second.get_as(&host, "/healthz", &token).await;
        if resp.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second edge never routed the instance: {} {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        first
            .api("POST", "/api/auth/logout", Some(&token), None)
            .await
            .status,
        204
    );
    let deadline = Instant::now() + PATIENCE;
    while second.get_as(&host, "/healthz", &token).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the second edge still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The owner's messages still work after logging in again, on both edges.
    let login = first.login("shared@example.com", PW).await.json();
    let token = login["token"].as_str().unwrap().to_string();
    let mut ws = gateway(&second, &host, "/ws", Some(&token))
        .await
        .expect("owner through the second edge");
    let text = chat_turn(&mut ws, "via the second edge").await;
    assert_eq!(text, "echo: via the second edge");
    let _ = ws.send(Message::Close(None)).await;
}

/// An account still unverified past its grace period has its instance stopped (container stopped,
/// route answering "stopped") until it verifies and restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_account_past_its_grace_is_stopped_until_verified() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("grace.db").display());
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let (token, host, upstream, mail) = {
        let edge = fixture_pool_edge(true, 0, &node)
            .database_url(&url)
            .start()
            .await;
        let (token, _, _) = edge.register("late@example.com", PW).await;
        let (host, upstream) = running_instance(&edge, &token, "late").await;
        assert_eq!(edge.get_as(&host, "/healthz", &token).await.status, 200);
        (
            token,
            host,
            upstream,
            edge.last_mail("late@example.com").await,
        )
    };
    // Eight days pass (the account's creation is moved back in the database); the same node
    // restarts and its sweep at start stops the instance.
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE users SET created_at = created_at - 8 * 86400000")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let edge = fixture_pool_edge(true, 0, &node)
        .database_url(&url)
        .start()
        .await;
    let deadline = Instant::now() + PATIENCE;
    let stopped = loop {
        let resp = edge.get_as(&host, "/healthz", &token).await;
        if resp.status == 503 || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (stopped.status, stopped.error_code().as_str()),
        (503, "INSTANCE_STOPPED"),
        "{}",
        stopped.text()
    );
    // The container itself is stopped, not just hidden (the stop follows the route change).
    let deadline = Instant::now() + PATIENCE;
    while try_send(upstream, get_request("i", "/readyz").as_bytes())
        .await
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "the container still serves");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restart = edge
        .api("POST", "/api/instances/me/restart", Some(&token), None)
        .await;
    assert_eq!(
        (restart.status, restart.error_code().as_str()),
        (403, "EMAIL_NOT_VERIFIED")
    );

    let link = find_link(mail["body"].as_str().unwrap());
    let verified = edge
        .get(
            APP_DOMAIN,
            &format!("/api/auth/verify-email?token={}", link_token(&link)),
        )
        .await;
    assert_eq!(verified.status, 200, "{}", verified.text());
    assert_eq!(
        edge.api("POST", "/api/instances/me/restart", Some(&token), None)
            .await
            .status,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while edge.get_as(&host, "/healthz", &token).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the instance did not come back after verification"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        edge.api("DELETE", "/api/instances/me", Some(&token), None)
            .await
            .status,
        200
    );
}

/// A restart its owner asked for is no crash: the container's `die` event is read as the restart's
/// own (logged at debug), with no "instance died" warning and no healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_restart_is_not_logged_as_a_death() {
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge = fixture_pool_edge(true, 0, &node)
        .env("RUST_LOG", "info,clawdeploy_pool=debug")
        .start()
        .await;
    let (token, _, _) = edge.register("restart@example.com", PW).await;
    let (host, _) = running_instance(&edge, &token, "restarted").await;
    let restart = edge
        .api("POST", "/api/instances/me/restart", Some(&token), None)
        .await;
    assert_eq!(restart.status, 202, "{}", restart.text());
    edge.wait_running(&token, Duration::from_secs(60)).await;
    assert_eq!(edge.get_as(&host, "/healthz", &token).await.status, 200);
    // The die event has been read once either debug line is there.
    let deadline = Instant::now() + PATIENCE;
    while !["instance stopped on purpose", "instance restarted"]
        .iter()
        .any(|line| edge.log_text().contains(line))
    {
        assert!(
            Instant::now() < deadline,
            "the restart's die event was never read:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = edge.log_text();
    assert!(!log.contains("instance died"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

/// Cancellation (PRD §4.4.3): kept stopped with its data through the grace period, restorable;
/// afterwards its data volume is exported to the archive and container, route and record go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_instance_is_archived_after_its_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cancel.db").display());
    let archive = dir.path().join("archive");
    let node = node_id();
    let _cleanup = Cleanup(node.clone());
    let edge_for = |node: &str| {
        fixture_pool_edge(true, 0, node)
            .database_url(&url)
            .section("pool", &format!("archive_dir = \"{}\"", archive.display()))
    };
    let (token, host, user_id) = {
        let edge = edge_for(&node).start().await;
        let (token, _, user_id) = edge.register("cancel@example.com", PW).await;
        let (host, _) = running_instance(&edge, &token, "cancelme").await;
        assert_eq!(
            edge.api("DELETE", "/api/instances/me", Some(&token), None)
                .await
                .status,
            200
        );
        (token, host, user_id)
    };
    // Eight days pass; the node restarts and its sweep archives the instance.
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE instances SET deleted_at = deleted_at - 8 * 86400000")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let edge = edge_for(&node).start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await
        .status
        != 404
    {
        assert!(
            Instant::now() < deadline,
            "never archived:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        edge.get_as(&host, "/", &token).await.status,
        404,
        "route left behind"
    );
    let files: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let tar = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "tar"))
        .expect("a data archive");
    let bytes = std::fs::read(tar).unwrap();
    let mut entries = tar::Archive::new(bytes.as_slice());
    let mut config = String::new();
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("config.json") {
            std::io::Read::read_to_string(&mut entry, &mut config).unwrap();
        }
    }
    assert!(
        config.contains(&user_id),
        "the archive holds the instance's data: {config:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "json")),
        "the record is archived"
    );
    // Its container and volume are gone.
    let leftover = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=cd-{node}-")])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "container left behind");
}
