//! Routing by Host through the real edge: static and admin-API routes, isolation, unknown hosts,
//! the app domain, forwarding headers and upstream failures.

use crate::support::*;

#[tokio::test]
async fn routes_by_host_in_every_spelling() {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    for host in [
        "a.example.org",
        "A.Example.ORG",
        "a.example.org.",
        "a.example.org:8080",
        "A.EXAMPLE.ORG.:80",
    ] {
        let resp = edge.get(host, "/hello").await;
        assert_eq!(resp.status, 200, "Host: {host}");
        assert_eq!(resp.json()["upstream"], "a", "Host: {host}");
        assert_eq!(resp.json()["path"], "/hello");
    }
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn a_host_never_reaches_another_hosts_upstream() {
    let a = HttpUpstream::start("a").await;
    let b = HttpUpstream::start("b").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .route("b.example.org", b.addr)
        .start()
        .await;
    for _ in 0..20 {
        assert_eq!(edge.get("a.example.org", "/").await.json()["upstream"], "a");
    }
    assert_eq!((a.hits(), b.hits()), (20, 0));
    // Near misses of A's name are unknown hosts, answered by the edge itself.
    for host in [
        "x.a.example.org",
        "aa.example.org",
        "example.org",
        "a.example.org.evil.test",
        "b.example.org.a.example.org",
    ] {
        let resp = edge.get(host, "/").await;
        assert_eq!(resp.status, 404, "Host: {host}");
        assert_eq!(resp.error_code(), "UNKNOWN_HOST");
    }
    assert_eq!((a.hits(), b.hits()), (20, 0));
}

#[tokio::test]
async fn unknown_host_gets_json_or_html_404_and_reaches_no_upstream() {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    let json = edge.get("nobody.clawdeploy.test", "/").await;
    assert_eq!(json.status, 404);
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.error_code(), "UNKNOWN_HOST");
    assert!(json.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody.clawdeploy.test"));

    let html = edge
        .send(b"GET / HTTP/1.1\r\nHost: nobody.clawdeploy.test\r\nAccept: text/html,*/*\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(html.status, 404);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text().contains("<h1>404 Not Found</h1>"));
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn app_domain_serves_the_control_api_and_base_domain_redirects_there() {
    let edge = EdgeBuilder::new().start().await;
    let health = edge.get(APP_DOMAIN, "/healthz").await;
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = edge.get("APP.clawdeploy.test:443", "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );

    let redirect = edge.get("clawdeploy.test:8080", "/pricing?plan=pro").await;
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.header("location"),
        Some("http://app.clawdeploy.test:8080/pricing?plan=pro")
    );

    let missing = edge.get(APP_DOMAIN, "/no/such/endpoint").await;
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "NOT_FOUND")
    );
}

#[tokio::test]
async fn admin_api_routes_apply_to_the_next_request() {
    let a = HttpUpstream::start("a").await;
    let b = HttpUpstream::start("b").await;
    let edge = EdgeBuilder::new().start().await;
    assert_eq!(edge.get("status.example.org", "/").await.status, 404);

    let body = format!(r#"{{"upstream":"{}"}}"#, a.addr);
    let created = edge
        .admin(
            "PUT",
            "/admin/routes/Status.Example.org",
            Some(ADMIN_TOKEN),
            Some(&body),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["host"], "status.example.org");
    assert_eq!(created.json()["kind"], "operator");
    assert_eq!(
        edge.get("status.example.org", "/").await.json()["upstream"],
        "a"
    );

    let body = format!(r#"{{"upstream":"{}"}}"#, b.addr);
    let replaced = edge
        .admin(
            "PUT",
            "/admin/routes/status.example.org",
            Some(ADMIN_TOKEN),
            Some(&body),
        )
        .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(
        edge.get("status.example.org", "/").await.json()["upstream"],
        "b"
    );

    let listed = edge
        .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let hosts: Vec<&str> = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, [APP_DOMAIN, "status.example.org"]);

    let deleted = edge
        .admin(
            "DELETE",
            "/admin/routes/status.example.org",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(edge.get("status.example.org", "/").await.status, 404);
    let again = edge
        .admin(
            "DELETE",
            "/admin/routes/status.example.org",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (404, "NOT_FOUND")
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

/// A route the config file sets is the file's: the admin API says where to change it. A route
/// set through the API is replaced at run time, for the next request.
#[tokio::test]
async fn api_routes_change_at_run_time_and_config_routes_stay_the_files() {
    let a = HttpUpstream::start("a").await;
    let b = HttpUpstream::start("b").await;
    let edge = EdgeBuilder::new()
        .route("svc.example.org", a.addr)
        .start()
        .await;
    let to = |upstream: std::net::SocketAddr| format!(r#"{{"upstream":"{upstream}"}}"#);
    let configured = edge
        .admin(
            "PUT",
            "/admin/routes/svc.example.org",
            Some(ADMIN_TOKEN),
            Some(&to(b.addr)),
        )
        .await;
    assert_eq!(
        (configured.status, configured.error_code().as_str()),
        (409, "CONFIGURED_ROUTE")
    );
    assert!(
        configured.text().contains("[[routes]]"),
        "{}",
        configured.text()
    );
    assert_eq!(
        edge.get("svc.example.org", "/").await.json()["upstream"],
        "a"
    );
    for (upstream, status, name) in [(a.addr, 201, "a"), (b.addr, 200, "b")] {
        let resp = edge
            .admin(
                "PUT",
                "/admin/routes/api.example.org",
                Some(ADMIN_TOKEN),
                Some(&to(upstream)),
            )
            .await;
        assert_eq!(resp.status, status, "{}", resp.text());
        assert_eq!(
            edge.get("api.example.org", "/").await.json()["upstream"],
            name
        );
    }
}

/// Routes set through `/admin/routes` are kept in the store: they survive a restart and reach a
/// second edge on the same PostgreSQL through the change broadcast, deletions too (40 of 40 were
/// missing from the second edge before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_routes_survive_a_restart_and_reach_every_edge() {
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    let a = HttpUpstream::start("a").await;
    let first = EdgeBuilder::new().database_url(&url).start().await;
    let second = EdgeBuilder::new().database_url(&url).start().await;
    let hosts: Vec<String> = (0..40).map(|i| format!("r{i}.example.org")).collect();
    for host in &hosts {
        let resp = first
            .admin(
                "PUT",
                &format!("/admin/routes/{host}"),
                Some(ADMIN_TOKEN),
                Some(&format!(r#"{{"upstream":"{}"}}"#, a.addr)),
            )
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text());
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    for host in &hosts {
        while second.get(host, "/").await.status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "{host} never reached the second edge"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let deleted = first
        .admin(
            "DELETE",
            "/admin/routes/r0.example.org",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    while second.get("r0.example.org", "/").await.status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the deletion never reached the second edge"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(first);
    drop(second);
    let restarted = EdgeBuilder::new().database_url(&url).start().await;
    assert_eq!(restarted.get("r0.example.org", "/").await.status, 404);
    for host in &hosts[1..] {
        let resp = restarted.get(host, "/").await;
        assert_eq!(
            (resp.status, resp.json()["upstream"].clone()),
            (200, "a".into()),
            "{host}"
        );
    }
}

#[tokio::test]
async fn forwarding_headers_are_overwritten_and_identity_headers_stripped() {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    let resp = edge
        .send(
            b"GET / HTTP/1.1\r\nHost: A.example.org:8080\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: victim.example.org\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
              X-Forwarded-User: admin@victim.example\r\nX-Forwarded-Email: admin@victim.example\r\nX-Remote-User: admin\r\n\
              X-Auth-Request-User: admin\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(resp.status, 200);
    let seen = a.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "A.example.org:8080");
    for stripped in [
        "forwarded",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-remote-user",
        "x-auth-request-user",
    ] {
        assert!(
            !seen.contains_key(stripped),
            "{stripped} reached the upstream: {seen:?}"
        );
    }
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    let resp = edge.send(b"GET / HTTP/1.1\r\nHost: a.example.org\r\nX-Request-Id: req-123\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.header("x-request-id"), Some("req-123"));
    assert_eq!(a.last_headers()["x-request-id"], "req-123");

    let generated = edge.get("a.example.org", "/").await;
    let id = generated
        .header("x-request-id")
        .expect("generated id")
        .to_string();
    assert!(id.len() >= 16, "{id}");
    assert_eq!(a.last_headers()["x-request-id"], id);
    // A hostile id (header injection attempt, too long) is replaced.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a.example.org\r\nX-Request-Id: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(200)
    );
    assert_ne!(
        edge.send(long.as_bytes())
            .await
            .header("x-request-id")
            .map(str::len),
        Some(200)
    );
    // Errors the edge answers itself carry the id too.
    assert!(edge
        .get("nobody.example.org", "/")
        .await
        .header("x-request-id")
        .is_some());
}

#[tokio::test]
async fn refused_upstream_gets_a_502_page_naming_the_state() {
    let closed = free_port();
    let edge = EdgeBuilder::new()
        .route("down.example.org", ([127, 0, 0, 1], closed).into())
        .start()
        .await;
    let resp = edge.get("down.example.org", "/").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.error_code(), "UPSTREAM_UNAVAILABLE");
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{}",
        resp.text()
    );
    // The edge keeps serving.
    assert_eq!(edge.get(APP_DOMAIN, "/healthz").await.status, 200);
}

#[tokio::test]
async fn silent_upstream_times_out_at_the_connect_timeout_never_hangs() {
    // A listener with a backlog of 0 whose queue is filled, so new connection attempts get no answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let edge = EdgeBuilder::new()
        .route("slow.example.org", addr)
        .start()
        .await;
    let started = std::time::Instant::now();
    let resp = edge.get("slow.example.org", "/").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500 ms"),
        "{}",
        resp.text()
    );
    assert!(started.elapsed() < PATIENCE);
    drop(listener);
}

#[tokio::test]
async fn slow_upstream_answer_gets_504_after_the_read_timeout() {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .server("read_timeout_secs = 1")
        .route("a.example.org", a.addr)
        .start()
        .await;
    let resp = edge.get("a.example.org", "/hold").await;
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (504, "UPSTREAM_TIMEOUT")
    );
    a.release();
}
