//! Malformed and hostile input: each gets a clear 4xx, nothing reaches an upstream, and the edge
//! keeps serving everyone else.

use crate::support::*;

async fn edge_with_upstream() -> (Edge, HttpUpstream) {
    let a = HttpUpstream::start("a").await;
    let edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    (edge, a)
}

#[tokio::test]
async fn missing_duplicate_and_malformed_hosts_get_400() {
    let (edge, a) = edge_with_upstream().await;
    // Pingora itself refuses a request with two Host headers, with a bodiless 400, before any filter.
    let duplicate = edge.send(b"GET / HTTP/1.1\r\nHost: a.example.org\r\nHost: b.example.org\r\nConnection: close\r\n\r\n").await;
    assert_eq!(duplicate.status, 400);
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "MISSING_HOST",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "MISSING_HOST"),
        (
            b"GET / HTTP/1.1\r\nHost: a.example.org/evil\r\nConnection: close\r\n\r\n",
            "INVALID_HOST",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.example.org:http\r\nConnection: close\r\n\r\n",
            "INVALID_HOST",
        ),
    ];
    for (raw, code) in cases {
        let resp = edge.send(raw).await;
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, code),
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(resp.json()["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(a.hits(), 0);
    assert_eq!(edge.get("a.example.org", "/").await.status, 200);
}

#[tokio::test]
async fn oversized_and_garbled_requests_are_refused() {
    let (edge, a) = edge_with_upstream().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.example.org\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(40_000)
    );
    let resp = edge.send(big.as_bytes()).await;
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (431, "HEADERS_TOO_LARGE")
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.example.org\r\n");
    for i in 0..300 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    assert_eq!(edge.send(many.as_bytes()).await.status, 400);

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.example.org\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(1_100_000)
    );
    if let Ok(resp) = try_send(edge.addr, huge.as_bytes()).await {
        assert!((400..500).contains(&resp.status), "status {}", resp.status);
    }

    assert_eq!(edge.send(b"HELLO THERE\r\n\r\n").await.status, 400);
    assert_eq!(a.hits(), 0);
    assert_eq!(edge.get("a.example.org", "/").await.status, 200);
}

#[tokio::test]
async fn malformed_websocket_upgrades_get_a_clear_4xx() {
    let (edge, a) = edge_with_upstream().await;
    let handshake = |method: &str, extra: &str| {
        format!(
            "{method} /ws HTTP/1.1\r\nHost: a.example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
    };
    let no_key = edge
        .send(handshake("GET", "Sec-WebSocket-Version: 13\r\n").as_bytes())
        .await;
    assert_eq!(
        (no_key.status, no_key.error_code().as_str()),
        (400, "BAD_UPGRADE_REQUEST")
    );

    let bad_key = edge
        .send(
            handshake(
                "GET",
                "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(bad_key.status, 400);

    let old_version = edge
        .send(
            handshake(
                "GET",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(old_version.status, 426);
    assert_eq!(old_version.header("sec-websocket-version"), Some("13"));

    let post = edge
        .send(handshake("POST", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n").as_bytes())
        .await;
    assert_eq!(post.status, 400);
    assert_eq!(a.hits(), 0);
    assert_eq!(edge.get("a.example.org", "/").await.status, 200);
}

#[tokio::test]
async fn admin_api_refuses_missing_wrong_and_malformed_credentials() {
    let edge = EdgeBuilder::new().start().await;
    let none = edge.admin("GET", "/admin/routes", None, None).await;
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (401, "UNAUTHORIZED")
    );
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));

    let wrong = edge
        .admin(
            "GET",
            "/admin/routes",
            Some("not-the-admin-token-at-all"),
            None,
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (403, "FORBIDDEN")
    );

    let basic = edge
        .send(format!("GET /admin/routes HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert_eq!(basic.status, 401);

    let put = edge
        .admin(
            "PUT",
            "/admin/routes/x.example.org",
            None,
            Some(r#"{"upstream":"127.0.0.1:1"}"#),
        )
        .await;
    assert_eq!(put.status, 401);
    // Nothing was created by the refused call.
    assert_eq!(edge.get("x.example.org", "/").await.status, 404);
}

#[tokio::test]
async fn admin_api_names_what_is_wrong_with_a_route() {
    let edge = EdgeBuilder::new().start().await;
    let edge = &edge;
    let put = |host: &'static str, body: &'static str| async move {
        edge.admin(
            "PUT",
            &format!("/admin/routes/{host}"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await
    };
    let cases = [
        (
            put("x.example.org", r#"{"upstream":"localhost:80"}"#).await,
            422,
            "INVALID_UPSTREAM",
        ),
        (
            put("x.example.org", r#"{"upstream":"#).await,
            400,
            "INVALID_JSON",
        ),
        (
            put("x.example.org", r#"{"upstream":"127.0.0.1:1","extra":1}"#).await,
            422,
            "VALIDATION_ERROR",
        ),
        (put("x.example.org", r#"{}"#).await, 422, "VALIDATION_ERROR"),
        (
            put("bad_host!", r#"{"upstream":"127.0.0.1:1"}"#).await,
            422,
            "INVALID_HOST",
        ),
        (
            put("127.0.0.1", r#"{"upstream":"127.0.0.1:1"}"#).await,
            422,
            "INVALID_HOST",
        ),
        (
            put("app.clawdeploy.test", r#"{"upstream":"127.0.0.1:1"}"#).await,
            409,
            "RESERVED_HOST",
        ),
        (
            put("clawdeploy.test", r#"{"upstream":"127.0.0.1:1"}"#).await,
            409,
            "RESERVED_HOST",
        ),
    ];
    for (resp, status, code) in cases {
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (status, code),
            "{}",
            resp.text()
        );
    }
    let no_type = edge
        .send(
            format!("PUT /admin/routes/x.example.org HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await;
    assert_eq!(
        (no_type.status, no_type.error_code().as_str()),
        (415, "UNSUPPORTED_MEDIA_TYPE")
    );
    // The control plane's own route survived every attempt.
    assert_eq!(edge.get(APP_DOMAIN, "/healthz").await.status, 200);
}
