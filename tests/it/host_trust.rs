//! What the platform's own services trust on the host, attacked from the host's side: a process
//! that is not the edge (a tenant's code reaching the host through a platform service, as the LLM
//! meter once allowed) must not be taken for the edge.

use std::net::SocketAddr;

use crate::support::*;

/// The control API's loopback listener, from the edge's log.
fn control_api_address(edge: &Edge) -> SocketAddr {
    let log = edge.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("control API listening"))
        .unwrap_or_else(|| panic!("the edge logs its control API listener:\n{log}"));
    let at = line.find("listen=").expect("listen= in the log line") + "listen=".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .parse()
        .expect("an address")
}

/// A process on the host that calls the control API's listener directly, with the forwarding
/// headers the control API takes from the edge (`X-Real-IP` feeds the login throttle and the
/// security log), is refused before any handler runs; through the edge the same calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_refuses_requests_that_bypass_the_edge() {
    let edge = EdgeBuilder::new().start().await;
    let control = control_api_address(&edge);
    let app = format!("app.{BASE_DOMAIN}");
    for guess in [None, Some("0000"), Some("")] {
        for (method, path, body) in [
            ("GET", "/healthz", ""),
            ("GET", "/api/openapi.json", ""),
            ("POST", "/api/auth/login", r#"{"email":"a@example.com","password":"wrong password 1"}"#),
        ] {
            let secret = guess.map_or(String::new(), |g| format!("X-Clawdeploy-Edge: {g}\r\n"));
            let raw = format!(
                "{method} {path} HTTP/1.1\r\nHost: {app}\r\nX-Real-IP: 203.0.113.77\r\n\
                 X-Forwarded-Host: {app}\r\nX-Forwarded-Proto: https\r\n{secret}\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let resp = try_send(control, raw.as_bytes()).await.expect("an answer");
            assert_eq!(resp.status, 403, "{method} {path} with {guess:?}: {}", resp.text());
            assert_eq!(resp.error_code(), "EDGE_ONLY");
        }
    }
    // Through the edge: served, and a client's own copy of the edge's header is dropped.
    let raw = format!(
        "GET /healthz HTTP/1.1\r\nHost: {app}\r\nX-Clawdeploy-Edge: 0000\r\nConnection: close\r\n\r\n"
    );
    let resp = edge.send(raw.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (token, _, _) = edge.register("edge@example.com", "correct horse battery staple 9").await;
    assert!(!token.is_empty());
}
