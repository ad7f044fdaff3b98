//! Test support: the real `clawdeploy` binary on free loopback ports, real HTTP and WebSocket
//! upstreams, and a raw HTTP/1.1 client that sends exactly the bytes a test gives it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::routing::any;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

pub const BASE_DOMAIN: &str = "clawdeploy.test";
pub const APP_DOMAIN: &str = "app.clawdeploy.test";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Raises this process's open-file limit (inherited by the edge it spawns), for many connections.
pub fn raise_fd_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    });
}

/// A loopback port that was free a moment ago (Pingora cannot report the port of a port-0 listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Builds a config for one edge process.
#[derive(Default)]
pub struct EdgeBuilder {
    server_lines: Vec<String>,
    routes: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

impl EdgeBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra `[server]` line, e.g. `read_timeout_secs = 1`.
    pub fn server(mut self, line: &str) -> Self {
        self.server_lines.push(line.to_string());
        self
    }

    /// A static `[[routes]]` entry.
    pub fn route(mut self, host: &str, upstream: SocketAddr) -> Self {
        self.routes.push((host.to_string(), upstream.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub async fn start(self) -> Edge {
        raise_fd_limit();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut toml = format!(
            "[server]\nhttp_listen = \"127.0.0.1:{port}\"\nbase_domain = \"{BASE_DOMAIN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             data_dir = \"{}\"\nthreads = 2\nconnect_timeout_ms = 500\n",
            dir.path().join("data").display()
        );
        for line in &self.server_lines {
            toml.push_str(line);
            toml.push('\n');
        }
        for (host, upstream) in &self.routes {
            toml.push_str(&format!(
                "\n[[routes]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\n"
            ));
        }
        let config = dir.path().join("clawdeploy.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("edge.log");
        let child = Command::new(env!("CARGO_BIN_EXE_clawdeploy"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn clawdeploy");
        let mut edge = Edge {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        edge.wait_ready().await;
        edge
    }
}

/// A running edge process, killed when dropped.
pub struct Edge {
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edge {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "clawdeploy exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok(resp) =
                try_send(self.addr, get_request(APP_DOMAIN, "/healthz").as_bytes()).await
            {
                if resp.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "clawdeploy not ready in time:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Response {
        self.send(get_request(host, path).as_bytes()).await
    }

    /// Sends raw bytes and reads the response to the end of the connection.
    pub async fn send(&self, raw: &[u8]) -> Response {
        try_send(self.addr, raw)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.log_text()))
    }

    /// An admin API call on the app domain.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let mut raw =
            format!("{method} {path} HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nConnection: close\r\n");
        if let Some(token) = token {
            raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        match body {
            Some(body) => raw.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => raw.push_str("\r\n"),
        }
        self.send(raw.as_bytes()).await
    }

    /// Opens a WebSocket to `host` through the edge.
    pub async fn websocket(&self, host: &str, path: &str) -> WebSocket {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to edge");
        let (ws, response) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp)
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake through the edge failed: {e}"));
        assert_eq!(response.status(), 101);
        ws
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("edge pid") as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

pub type WebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

pub fn get_request(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub async fn try_send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(raw).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete response"))??;
    parse_response(&bytes)
}

pub fn parse_response(bytes: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what}: {:?}", String::from_utf8_lossy(bytes)),
        )
    };
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// An HTTP upstream that answers every request with JSON describing what it received, and counts
/// hits. `/hold` waits until the test calls [`HttpUpstream::release`].
pub struct HttpUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
}

struct UpstreamState {
    name: String,
    hits: AtomicUsize,
    held: Notify,
    release: Notify,
    last_headers: Mutex<HashMap<String, String>>,
}

impl HttpUpstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            held: Notify::new(),
            release: Notify::new(),
            last_headers: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .fallback(any(describe))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Headers of the last request, names lower case.
    pub fn last_headers(&self) -> HashMap<String, String> {
        self.state.last_headers.lock().expect("headers").clone()
    }

    /// Waits until a `/hold` request has arrived.
    pub async fn wait_held(&self) {
        tokio::time::timeout(PATIENCE, self.state.held.notified())
            .await
            .expect("a /hold request arrived");
    }

    /// Lets one held `/hold` request answer.
    pub fn release(&self) {
        self.state.release.notify_one();
    }
}

async fn describe(
    State(state): State<Arc<UpstreamState>>,
    request: Request,
) -> Json<serde_json::Value> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let headers: HashMap<String, String> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    *state.last_headers.lock().expect("headers") = headers.clone();
    if request.uri().path() == "/hold" {
        state.held.notify_one();
        state.release.notified().await;
    }
    Json(
        serde_json::json!({ "upstream": state.name, "path": request.uri().path(), "headers": headers }),
    )
}

/// A WebSocket upstream that echoes every data message; tungstenite answers pings and echoes close frames.
pub struct WsUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl WsUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("ws upstream addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(message)) = ws.next().await {
                        if matches!(message, Message::Text(_) | Message::Binary(_))
                            && ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }
}

/// Next data or control message, failing the test if none arrives in time.
pub async fn next_message(ws: &mut WebSocket) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a WebSocket message in time")
        .expect("the WebSocket is open")
        .expect("a valid WebSocket message")
}
