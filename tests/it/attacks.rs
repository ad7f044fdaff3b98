//! An attacker's raw bytes against the real edge: request smuggling (CL+TE, duplicate
//! Content-Length, obs-fold, bad chunk sizes), odd path encodings and traversal, oversized headers
//! and bodies, and slow-header clients, while another tenant keeps being served.
//!
//! The upstream records every request it parses, so a request smuggled past the edge (one the edge
//! did not see as a request of its own) shows up there as an extra path.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::routing::any;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An upstream that records `METHOD path body-length` of every request it parses.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> (std::net::SocketAddr, Recorder) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let app = Router::new()
            .fallback(any(record))
            .with_state(recorder.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, recorder)
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

async fn record(State(recorder): State<Recorder>, request: Request) -> Json<serde_json::Value> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    recorder
        .seen
        .lock()
        .unwrap()
        .push(format!("{method} {path} {body}"));
    Json(serde_json::json!({ "path": path, "body": body }))
}

const VICTIM: &str = "victim.example.org";
const TARGET: &str = "target.example.org";

async fn edge_with_two_tenants(extra: &[&str]) -> (Edge, Recorder, Recorder) {
    let (target_addr, target) = Recorder::start().await;
    let (victim_addr, victim) = Recorder::start().await;
    let mut builder = EdgeBuilder::new()
        .route(TARGET, target_addr)
        .route(VICTIM, victim_addr);
    for line in extra {
        builder = builder.server(line);
    }
    (builder.start().await, target, victim)
}

/// Sends `raw` and reads whatever comes back until the edge closes or 5 s pass.
async fn exchange_raw(edge: &Edge, raw: &[u8]) -> String {
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    let _ = tcp.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Every smuggling attempt is refused with a 4xx (CL+TE is answered as the one chunked request
/// RFC 9112 says it is, and the connection closed), and never becomes a second request the edge
/// did not route. (A malformed chunk is found while the body streams, so its request line and headers
/// may already have reached the upstream, which then sees the body end in error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused() {
    let (edge, target, victim) = edge_with_two_tenants(&[]).await;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {VICTIM}\r\n\r\n");
    let attacks: Vec<(&str, String)> = vec![
        (
            "CL.TE: Content-Length and Transfer-Encoding together",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.CL: Transfer-Encoding first, Content-Length covering the smuggled request",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        ),
        (
            "duplicate Content-Length with different values",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}", smuggled.len()),
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: 0, {}\r\nConnection: close\r\n\r\n{smuggled}", smuggled.len()),
        ),
        (
            "obs-fold continuing Transfer-Encoding",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: {}\r\nTransfer-Encoding:\r\n chunked\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        ),
        (
            "obs-fold in an ordinary header",
            format!("GET / HTTP/1.1\r\nHost: {TARGET}\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: xchunked\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "whitespace before the colon of Transfer-Encoding",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "two Transfer-Encoding headers",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "non-hex chunk size",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "negative chunk size",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n-1\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "overflowing chunk size",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10000000000000000000005\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "0x-prefixed chunk size",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunk shorter than its size",
            format!("POST / HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "bare LF line endings",
            format!("POST / HTTP/1.1\nHost: {TARGET}\nTransfer-Encoding: chunked\nConnection: close\n\n0\n\n{smuggled}"),
        ),
        (
            "absolute-form target naming another tenant",
            format!("GET http://{VICTIM}/smuggled HTTP/1.1\r\nHost: {TARGET}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            format!("POST / HTTP/1.0\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
    ];
    let mut outcomes = Vec::new();
    // Each attack's own request has its own path, so a record that arrives late (the upstream
    // finishes reading a broken body after the edge has answered) is still told apart.
    let mut at_target = Vec::new();
    for (i, (name, raw)) in attacks.iter().enumerate() {
        let raw = raw.replacen(" / HTTP/1.", &format!(" /a{i} HTTP/1."), 1);
        let response = exchange_raw(&edge, raw.as_bytes()).await;
        let status = status_of(&response);
        at_target.extend(target.take());
        let at_victim = victim.take();
        outcomes.push(format!("{name}: {status} victim={at_victim:?}"));
        assert!(
            at_victim.is_empty(),
            "{name}: a request reached the other tenant: {at_victim:?}"
        );
        if name.starts_with("CL.TE") || name.starts_with("TE.CL") {
            // Pingora follows RFC 9112 §6.1/6.3: Transfer-Encoding wins, Content-Length is
            // dropped and the connection is not kept alive, so the bytes after the chunked body
            // are never read as a request: one request, one response, then the connection ends.
            assert_eq!(status, 200, "{name}: {response:?}");
            assert_eq!(
                response.matches("HTTP/1.1 ").count(),
                1,
                "{name}: {response:?}"
            );
        } else {
            assert!(
                (400..500).contains(&status),
                "{name}: not refused: {status} {response:?}"
            );
        }
    }
    // The edge still serves both tenants (and the upstream has finished with earlier requests).
    assert_eq!(edge.get(TARGET, "/last").await.status, 200);
    assert_eq!(edge.get(VICTIM, "/").await.status, 200);
    at_target.extend(target.take());
    assert!(
        victim.take().len() == 1,
        "only the last check reached the other tenant"
    );
    assert!(
        !at_target.iter().any(|r| r.contains("/smuggled")),
        "a smuggled request reached the upstream: {at_target:?}"
    );
    for (i, (name, _)) in attacks.iter().enumerate() {
        let own: Vec<&String> = at_target
            .iter()
            .filter(|r| r.split(' ').nth(1) == Some(&format!("/a{i}")))
            .collect();
        outcomes[i].push_str(&format!(" target={own:?}"));
        assert!(
            own.len() <= 1,
            "{name}: one client request became several: {own:?}"
        );
        if name.starts_with("CL.TE") || name.starts_with("TE.CL") {
            assert_eq!(own.len(), 1, "{name}");
            assert!(own[0].ends_with(" 0"), "{name}: {own:?}");
        }
    }
    eprintln!("smuggling outcomes:\n{}", outcomes.join("\n"));
}

/// A request head with a bare LF anywhere (request line, a header, the final empty line) gets 400
/// `BARE_LF_LINE_ENDING` and never reaches the upstream, which might split its lines differently;
/// the connection is closed, so a request pipelined behind it is never read either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_request_heads_get_400_and_never_reach_the_upstream() {
    let (edge, target, victim) = edge_with_two_tenants(&[]).await;
    let heads = [
        ("every line", format!("GET /lf-all HTTP/1.1\nHost: {TARGET}\nConnection: close\n\n")),
        ("the request line", format!("GET /lf-line HTTP/1.1\nHost: {TARGET}\r\nConnection: close\r\n\r\n")),
        ("one header", format!("GET /lf-header HTTP/1.1\r\nHost: {TARGET}\r\nX-A: 1\nConnection: close\r\n\r\n")),
        ("the final empty line", format!("GET /lf-end HTTP/1.1\r\nHost: {TARGET}\r\nConnection: close\r\n\n")),
        (
            "a keep-alive head with a request pipelined behind it",
            format!("GET /lf-pipelined HTTP/1.1\nHost: {TARGET}\n\nGET /after HTTP/1.1\r\nHost: {VICTIM}\r\n\r\n"),
        ),
    ];
    for (name, raw) in heads {
        let response = exchange_raw(&edge, raw.as_bytes()).await;
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{name}: {response:?}"
        );
        let parsed = parse_response(response.as_bytes()).expect("a response");
        assert_eq!(
            (parsed.status, parsed.error_code().as_str()),
            (400, "BARE_LF_LINE_ENDING"),
            "{name}: {response:?}"
        );
    }
    assert_eq!(
        target.take(),
        Vec::<String>::new(),
        "a bare-LF head reached the upstream"
    );
    assert_eq!(victim.take(), Vec::<String>::new());
    // The same request framed with CRLF is served.
    let response = exchange_raw(
        &edge,
        format!("GET /crlf HTTP/1.1\r\nHost: {TARGET}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response:?}");
}

/// Odd encodings and traversal reach the upstream byte for byte (the edge does not reinterpret
/// paths, so it cannot be tricked into a different route) or are refused; none reach another
/// tenant or the control plane, and the instance-host sign-in path matches exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_paths_and_traversal_stay_on_their_route() {
    let (edge, target, victim) = edge_with_two_tenants(&[]).await;
    let paths = [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fadmin/routes",
        "/%252e%252e/admin",
        "/%c0%ae%c0%ae/",
        "/a/./b/../../admin/routes",
        "//admin/routes",
        "/%00",
        "/a%0d%0aSet-Cookie:%20x=1",
        "/\\..\\admin",
        "/api/../admin/routes",
        "/_clawdeploy/session/../../admin/routes",
    ];
    let mut outcomes = Vec::new();
    for path in paths {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {TARGET}\r\nConnection: close\r\n\r\n");
        let response = exchange_raw(&edge, raw.as_bytes()).await;
        let status = status_of(&response);
        let seen = target.take();
        outcomes.push(format!("{path}: {status} {seen:?}"));
        assert!(victim.take().is_empty(), "{path} reached another tenant");
        match status {
            200 => assert_eq!(seen, [format!("GET {path} 0")], "{path} was rewritten"),
            400..=499 => assert!(seen.is_empty(), "{path}: refused but forwarded"),
            other => panic!("{path}: {other} {response:?}"),
        }
        assert!(
            !response.to_ascii_lowercase().contains("set-cookie: x=1"),
            "{path}: header injection"
        );
    }
    // Raw spaces and control characters in the request line: refused, or (Pingora's lenient
    // request-line parsing) forwarded percent-escaped as one request, never raw.
    for line in [
        "GET /a b HTTP/1.1",
        "GET /a\x00b HTTP/1.1",
        "GET /a\rb HTTP/1.1",
        "GET /\x7f HTTP/1.1",
        "GET /a\tb HTTP/1.1",
        "GET /a\"<script> HTTP/1.1",
    ] {
        let raw = format!("{line}\r\nHost: {TARGET}\r\nConnection: close\r\n\r\n");
        let status = status_of(&exchange_raw(&edge, raw.as_bytes()).await);
        let seen = target.take();
        outcomes.push(format!("{line:?}: {status} {seen:?}"));
        match status {
            400..=499 => assert!(seen.is_empty(), "{line:?}: refused but forwarded"),
            200 => {
                assert_eq!(seen.len(), 1, "{line:?}: {seen:?}");
                let path = seen[0].split(' ').nth(1).unwrap();
                assert!(
                    path.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'<'),
                    "{line:?} reached the upstream unescaped: {path:?}"
                );
            }
            other => panic!("{line:?}: {other}"),
        }
    }
    eprintln!("path outcomes:\n{}", outcomes.join("\n"));
}

/// Oversized headers and bodies are bounded; the other tenant keeps being served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_bounded() {
    let (edge, target, _victim) = edge_with_two_tenants(&["max_body_bytes = 1048576"]).await;
    // A declared body over the limit: 413 before a byte is forwarded.
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 << 20
    );
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut out)).await;
    let response = parse_response(&out).unwrap();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (413, "BODY_TOO_LARGE"),
        "{}",
        response.text()
    );
    assert!(target.take().is_empty());

    // A chunked body that grows past the limit is cut off; the upstream never gets all of it.
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    tcp.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {TARGET}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 4 << 20 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if tcp.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut out)).await;
    let status = status_of(&String::from_utf8_lossy(&out));
    assert!(
        status == 413 || status == 0,
        "a 4 MiB chunked body over a 1 MiB limit: {status} {:?}",
        String::from_utf8_lossy(&out)
    );
    for seen in target.take() {
        // usize::MAX: the upstream's body read failed (the edge cut the body off).
        let len: usize = seen.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            len == usize::MAX || len <= 1 << 20,
            "the upstream got a body of {len} bytes"
        );
    }
    // A body within the limit passes whole.
    let body = "x".repeat(1000);
    let raw = format!(
        "POST /small HTTP/1.1\r\nHost: {TARGET}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(edge.send(raw.as_bytes()).await.status, 200);
    let seen = target.take();
    assert!(seen.contains(&"POST /small 1000".to_string()), "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.starts_with("POST /upload") || r == "POST /small 1000"),
        "{seen:?}"
    );

    // Headers: over max_header_bytes (431), too many (400), over Pingora's buffer (4xx or closed).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {TARGET}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(70_000)
    );
    assert_eq!(edge.send(big.as_bytes()).await.status, 431);
    let mut many = format!("GET / HTTP/1.1\r\nHost: {TARGET}\r\n");
    for i in 0..400 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    assert_eq!(edge.send(many.as_bytes()).await.status, 400);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {TARGET}\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(2_000_000)
    );
    let status = status_of(&exchange_raw(&edge, huge.as_bytes()).await);
    assert!(status == 0 || (400..500).contains(&status), "{status}");
    assert!(
        target.take().iter().all(|r| r.starts_with("POST /upload")),
        "an oversized header was forwarded"
    );
    assert_eq!(edge.get(VICTIM, "/").await.status, 200);
}

/// Slow-header clients hold no more than their bounded buffers, are dropped once they stall past
/// the header timeout, and never slow other tenants down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_do_not_starve_other_tenants() {
    raise_fd_limit();
    let (edge, _target, victim) = edge_with_two_tenants(&["header_timeout_secs = 2"]).await;
    // 300 connections that dribble a header, one byte at a time.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
        tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {TARGET}\r\nX-Slow: ").as_bytes())
            .await
            .unwrap();
        slow.push(tcp);
    }
    let started = Instant::now();
    // Meanwhile the other tenant is served, promptly, many times over.
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(edge.get(VICTIM, "/").await.status, 200);
        worst = worst.max(t.elapsed());
        for tcp in slow.iter_mut().take(20) {
            let _ = tcp.write_all(b"a").await;
        }
    }
    eprintln!("slowest of 50 requests beside 300 slow-header clients: {worst:?}");
    assert_eq!(victim.take().len(), 50);
    // Keep dribbling: the edge drops them at the header deadline even though bytes keep coming.
    let deadline = started + Duration::from_secs(15);
    let mut open = slow.len();
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for tcp in &mut slow {
            let mut buf = [0u8; 256];
            let closed =
                match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => true,
                    Ok(Ok(_)) => true, // an error response: the edge answered and closes
                    Err(_) => false,
                };
            if !closed {
                open += 1;
                let _ = tcp.write_all(b"a").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(open, 0, "{open} slow-header clients still open after 15 s");
    eprintln!(
        "all slow-header clients dropped after {:?}",
        started.elapsed()
    );
    assert_eq!(edge.get(VICTIM, "/").await.status, 200);
}

/// One HTTP/2 request on `client`: (status, body text).
async fn h2_request(
    client: &h2::client::SendRequest<tokio_tungstenite::tungstenite::Bytes>,
    authority: &str,
    host_header: Option<&str>,
    token: &str,
) -> (u16, String) {
    let mut request = http::Request::builder()
        .uri(format!("https://{authority}/healthz"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(host) = host_header {
        request = request.header("host", host);
    }
    let request = request.body(()).unwrap();
    let (response, _) = client
        .clone()
        .ready()
        .await
        .expect("h2 connection ready")
        .send_request(request, true)
        .expect("h2 send");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an h2 response in time")
        .expect("an h2 response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Raw HTTP/1.1 bytes over TLS with `sni` (an IP address sends none); the response.
async fn https_send(
    addr: std::net::SocketAddr,
    sni: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    raw: &str,
) -> Response {
    let mut stream = crate::tls::connect(addr, sni, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {sni}: {e}"));
    stream.write_all(raw.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await;
    parse_response(&bytes).expect("an HTTP response")
}

/// An HTTPS connection opened for one tenant (TLS SNI of the attacker's host, a certificate that
/// verifies: the wildcard covers both) carrying a request for another tenant, by `Host` over
/// HTTP/1.1 and by `:authority` (or a `Host` that disagrees with it) over HTTP/2: 421 Misdirected
/// Request before routing, whoever's token it carries, so the victim's instance never sees it.
/// The same connection keeps serving its own host (what a coalescing browser retries), matching
/// SNI/Host works, and a client without SNI may only name IP literals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_of_one_tenant_with_the_host_of_another_is_misdirected() {
    use crate::instance_access::{edge_with_pool, fixture_requests, running_instance};
    use crate::tls::{client_config, insecure_config, local_ca, wait_for_certificate};
    const PW: &str = "correct horse battery staple 9";

    let edge = edge_with_pool(false, 0).start().await;
    let (mallory, _, _) = edge.register("sni-evil@example.com", PW).await;
    let (alice, _, _) = edge.register("sni-victim@example.com", PW).await;
    let (mhost, _) = running_instance(&edge, &mallory, "snievil").await;
    let (ahost, alice_upstream) = running_instance(&edge, &alice, "snivictim").await;
    let ca = local_ca(&edge);
    wait_for_certificate(&edge, &mhost, &ca).await;
    let h1 = || client_config(&ca, &["http/1.1"]);
    // `extra` ends the head; without a `Connection` header of its own it closes the connection.
    let get = |host: &str, token: &str, extra: &str| {
        let connection = if extra.contains("Connection:") {
            ""
        } else {
            "Connection: close\r\n"
        };
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{extra}{connection}\r\n")
    };
    let seen = fixture_requests(alice_upstream).await;

    // HTTP/1.1 on mallory's connection, for alice's host: with mallory's token, with alice's
    // (a browser that coalesced), as a browser navigation and as a WebSocket upgrade.
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (token, extra) in [
        (&mallory, ""),
        (&alice, ""),
        (&alice, "Accept: text/html\r\n"),
        (&alice, upgrade),
    ] {
        let raw = get(&ahost, token, extra);
        let resp = https_send(edge.tls_addr, &mhost, h1(), &raw).await;
        assert_eq!(resp.status, 421, "{extra:?}: {}", resp.text());
        if extra.contains("text/html") {
            assert!(
                resp.text().contains("421 Misdirected Request") && resp.text().contains(&ahost),
                "{}",
                resp.text()
            );
        } else {
            assert_eq!(resp.error_code(), "MISDIRECTED_REQUEST", "{}", resp.text());
            let message = resp.json()["error"]["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                message.contains(&ahost) && message.contains(&mhost),
                "{message}"
            );
        }
    }
    // A client without SNI (connected by IP) naming a tenant is refused the same way.
    let resp = https_send(
        edge.tls_addr,
        "127.0.0.1",
        insecure_config(),
        &get(&ahost, &alice, ""),
    )
    .await;
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (421, "MISDIRECTED_REQUEST")
    );
    // Matching SNI and Host work, also when the Host differs only by case, port or trailing dot.
    let resp = https_send(edge.tls_addr, &ahost, h1(), &get(&ahost, &alice, "")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let odd = format!("{}.:{}", ahost.to_uppercase(), edge.tls_addr.port());
    let resp = https_send(edge.tls_addr, &ahost, h1(), &get(&odd, &alice, "")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // HTTP/2 on a connection opened for mallory's host.
    let stream = crate::tls::connect(edge.tls_addr, &mhost, client_config(&ca, &["h2"]))
        .await
        .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    assert_eq!(h2_request(&client, &mhost, None, &mallory).await.0, 200);
    for token in [&mallory, &alice] {
        let (status, body) = h2_request(&client, &ahost, None, token).await;
        assert_eq!(status, 421, "{body}");
        assert!(
            body.contains("MISDIRECTED_REQUEST") && body.contains(&ahost),
            "{body}"
        );
    }
    // :authority matches the SNI and a Host header names the victim: Pingora refuses the
    // conflicting authority fields itself (RFC 9113 §8.3.1, a bodiless 400) before any filter.
    let (status, body) = h2_request(&client, &mhost, Some(&ahost), &alice).await;
    assert_eq!(status, 400, "{body}");
    // The connection still serves its own host: a browser retries the 421s on a new one.
    assert_eq!(h2_request(&client, &mhost, None, &mallory).await.0, 200);
    let stream = crate::tls::connect(edge.tls_addr, &ahost, client_config(&ca, &["h2"]))
        .await
        .expect("TLS handshake");
    let (own, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    assert_eq!(h2_request(&own, &ahost, None, &alice).await.0, 200);

    // Alice's instance saw her three own requests (and the first /stats), none of the attacks.
    assert_eq!(fixture_requests(alice_upstream).await, seen + 1 + 3);
}
