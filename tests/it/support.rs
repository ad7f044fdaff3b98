//! Test support: the real `clawdeploy` binary on free loopback ports, real HTTP and WebSocket
//! upstreams, and a raw HTTP/1.1 client that sends exactly the bytes a test gives it.

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
/// The JWT signing key of test edges, so tests can forge tokens (expired, tampered, alg:none).
pub const JWT_KEY: &str = "test-jwt-signing-key-0123456789abcdef0123456789";
/// The master key of test edges (base64 of 32 bytes).
pub const MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY=";

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Raises this process's open-file limit (inherited by the edge it spawns), for many connections.
#[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
pub fn raise_fd_limit() {
    static ONCE: Once = Once::new();
    // SAFETY: getrlimit/setrlimit read and write a local struct for this process only.
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
/// Picked at random below the kernel's ephemeral range (32768–60999): a port from that range can
/// be taken by any outgoing connection or port-0 listener of a parallel test before the edge
/// binds it, which made edges fail to start now and then with "Address already in use".
/// Never the same port twice in one test process: an edge's HTTP, HTTPS and metrics listeners are
/// picked one after another, and a port that was free for the first pick is free for the next
/// (two listeners of one edge on one port made Pingora abort at start, seen once in CI).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = 10_000 + (uuid::Uuid::new_v4().as_u128() % 22_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Builds a config for one edge process.
#[derive(Default)]
pub struct EdgeBuilder {
    server_lines: Vec<String>,
    routes: Vec<(String, String)>,
    env: Vec<(String, String)>,
    /// Extra sections, e.g. ("limits", "login_failures_per_account = 3").
    sections: Vec<(String, String)>,
    database_url: Option<String>,
    /// A fixed HTTP port (ACME tests: Pebble's httpPort); else a free one.
    http_port: Option<u16>,
    bcrypt_cost: Option<u32>,
}

/// Which database a test runs against.
#[derive(Debug, Clone)]
pub enum Db {
    /// A file in the edge's own data dir.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres(String),
}

impl Db {
    /// A fresh PostgreSQL database on `CLAWDEPLOY_TEST_POSTGRES_URL` (the role has CREATEDB);
    /// unset, see [`service_missing`].
    pub async fn postgres() -> Option<Db> {
        use sqlx::Connection;
        let Ok(base) = std::env::var("CLAWDEPLOY_TEST_POSTGRES_URL") else {
            service_missing("PostgreSQL (CLAWDEPLOY_TEST_POSTGRES_URL)");
            return None;
        };
        let name = format!("cdtest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        conn.close().await.ok();
        let (prefix, _) = base.rsplit_once('/').expect("database URL with a path");
        Some(Db::Postgres(format!("{prefix}/{name}")))
    }
}

/// A test's service (PostgreSQL, Pebble, BIND) is not configured. The test fails, naming it,
/// unless a local run asked to skip such tests with `CLAWDEPLOY_SKIP_MISSING_SERVICES=1`; then
/// it prints `SKIPPED: ...` (`cargo nextest run --success-output final` lists them) and the
/// caller returns. Under CI (`CI` set) a missing service always fails.
pub fn service_missing(what: &str) {
    let skip = std::env::var_os("CLAWDEPLOY_SKIP_MISSING_SERVICES").is_some()
        && std::env::var_os("CI").is_none();
    assert!(
        skip,
        "{what} is not configured: run scripts/test.sh, which starts every service the tests \
         need (or set CLAWDEPLOY_SKIP_MISSING_SERVICES=1 to skip such tests locally)"
    );
    eprintln!("SKIPPED: {what} is not configured");
}

/// Runs `async fn name(db: Db)` once on SQLite and once on PostgreSQL (see [`service_missing`]
/// when `CLAWDEPLOY_TEST_POSTGRES_URL` is unset; `scripts/test.sh` always sets it).
#[macro_export]
macro_rules! both_dbs {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::support::Db::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    if let Some(db) = $crate::support::Db::postgres().await {
                        super::$name(db).await
                    }
                }
            }
        )*
    };
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

    /// A line in another section, e.g. `.section("limits", "login_window_secs = 60")`; a key set
    /// again replaces its earlier value.
    pub fn section(mut self, section: &str, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_string();
        self.sections
            .retain(|(s, l)| s != section || key(l) != key(line));
        self.sections.push((section.to_string(), line.to_string()));
        self
    }

    /// The database: SQLite in the data dir, or a PostgreSQL URL.
    pub fn db(mut self, db: &Db) -> Self {
        if let Db::Postgres(url) = db {
            self.database_url = Some(url.clone());
        }
        self
    }

    /// An explicit database URL (e.g. a SQLite file shared by two edges in turn).
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_string());
        self
    }

    /// bcrypt cost; tests default to 4 (the minimum) for speed, production uses 12 (the signup
    /// bench measures with it).
    #[allow(dead_code)] // only benches/signup.rs sets it
    pub fn bcrypt_cost(mut self, cost: u32) -> Self {
        self.bcrypt_cost = Some(cost);
        self
    }

    /// A fixed port for the plain HTTP listener (Pebble validates HTTP-01 on one known port).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    pub async fn start(self) -> Edge {
        raise_fd_limit();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = self.http_port.unwrap_or_else(free_port);
        let mut toml = format!(
            "[server]\nhttp_listen = \"127.0.0.1:{port}\"\nbase_domain = \"{BASE_DOMAIN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             data_dir = \"{}\"\nthreads = 2\nconnect_timeout_ms = 500\n",
            dir.path().join("data").display()
        );
        for line in &self.server_lines {
            toml.push_str(line);
            toml.push('\n');
        }
        if let Some(url) = &self.database_url {
            toml.push_str(&format!("\n[database]\nurl = \"{url}\"\n"));
        }
        toml.push_str(&format!(
            "\n[secrets]\njwt_key = \"{JWT_KEY}\"\nmaster_key = \"{MASTER_KEY}\"\nbcrypt_cost = {}\n",
            self.bcrypt_cost.unwrap_or(4)
        ));
        // Test edges start no instances unless a test asks for a runtime (the embedded default,
        // `auto`, would use this machine's Docker Engine).
        let mut section_lines = self.sections.clone();
        // Every test edge serves HTTPS on its own free port (the embedded default's 8443 would
        // be shared by parallel edges), unless the test chose the listener.
        let tls_port = free_port();
        if !section_lines
            .iter()
            .any(|(s, l)| s == "tls" && l.trim_start().starts_with("listen"))
        {
            section_lines.push(("tls".into(), format!("listen = \"127.0.0.1:{tls_port}\"")));
        }
        if !section_lines
            .iter()
            .any(|(s, l)| s == "runtime" && l.trim_start().starts_with("kind"))
        {
            section_lines.push(("runtime".into(), "kind = \"none\"".into()));
        }
        // Each edge gets its own metrics port. Test edges serve many requests from 127.0.0.1, so
        // they raise the per-IP and per-user limits unless a test sets them (the code stays on).
        let metrics_port = free_port();
        if !section_lines
            .iter()
            .any(|(s, l)| s == "metrics" && l.trim_start().starts_with("listen"))
        {
            section_lines.push((
                "metrics".into(),
                format!("listen = \"127.0.0.1:{metrics_port}\""),
            ));
        }
        // The LLM meter (on with OpenClaw instances) on a free port of its address, so parallel
        // edges on one instance network do not collide on the default 9480.
        if !section_lines.iter().any(|(s, l)| {
            s == "llm"
                && ["port", "listen"]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
        }) {
            section_lines.push(("llm".into(), "port = 0".into()));
        }
        for (key, value) in [
            ("per_ip_per_minute", "1000000"),
            ("per_user_per_minute", "1000000"),
        ] {
            if !section_lines
                .iter()
                .any(|(s, l)| s == "rate_limits" && l.trim_start().starts_with(key))
            {
                section_lines.push(("rate_limits".into(), format!("{key} = {value}")));
            }
        }
        let mut sections: Vec<&str> = section_lines.iter().map(|(s, _)| s.as_str()).collect();
        sections.sort_unstable();
        sections.dedup();
        for section in sections {
            toml.push_str(&format!("\n[{section}]\n"));
            for (s, line) in &section_lines {
                if s == section {
                    toml.push_str(line);
                    toml.push('\n');
                }
            }
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
        // The dashboard host the readiness check asks for (a test may move the base domain).
        let app_domain = self
            .env
            .iter()
            .find(|(k, _)| k == "CLAWDEPLOY_SERVER__BASE_DOMAIN")
            .map_or(APP_DOMAIN.to_string(), |(_, base)| format!("app.{base}"));
        let mut edge = Edge {
            child,
            app_domain,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            log,
            config,
            _dir: dir,
        };
        edge.wait_ready().await;
        edge
    }
}

/// A running edge process, killed when dropped.
pub struct Edge {
    pub child: Child,
    app_domain: String,
    pub addr: SocketAddr,
    /// The metrics listener (unless the test set `[metrics] listen` itself).
    pub metrics_addr: SocketAddr,
    /// The HTTPS listener (unless the test set `[tls] listen` itself).
    pub tls_addr: SocketAddr,
    log: PathBuf,
    config: PathBuf,
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
            if let Ok(resp) = try_send(
                self.addr,
                get_request(&self.app_domain, "/healthz").as_bytes(),
            )
            .await
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

    /// Renews the base domain's certificate now (`POST /admin/certificates/<base>/renew`).
    pub async fn renew_base_certificate(&self) {
        let resp = self
            .admin(
                "POST",
                &format!("/admin/certificates/{BASE_DOMAIN}/renew"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(resp.status, 200, "renew: {}", resp.text());
    }

    /// Waits until the token's user has a running instance (`GET /api/instances/me`).
    pub async fn wait_running(&self, token: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let me = self
                .api("GET", "/api/instances/me", Some(token), None)
                .await;
            if me.status == 200 && me.json()["instance"]["status"] == "running" {
                return;
            }
            assert!(Instant::now() < deadline, "never running: {}", me.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The edge's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Runs `clawdeploy <args> --config <this edge's config>`; (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_clawdeploy"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .await
            .expect("run clawdeploy");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A JSON API call on the app domain (`token` as `Authorization: Bearer`).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Response {
        let body = body.map(|b| b.to_string());
        self.admin(method, path, token, body.as_deref()).await
    }

    /// Registers a user; (access token, refresh token, user id).
    pub async fn register(&self, email: &str, password: &str) -> (String, String, String) {
        let resp = self
            .api(
                "POST",
                "/api/auth/register",
                None,
                Some(serde_json::json!({ "email": email, "password": password, "name": "Test User" })),
            )
            .await;
        assert_eq!(resp.status, 201, "register {email}: {}", resp.text());
        let j = resp.json();
        (
            j["token"].as_str().expect("token").to_string(),
            j["refreshToken"].as_str().expect("refresh").to_string(),
            j["user"]["id"].as_str().expect("id").to_string(),
        )
    }

    /// Registers a user and follows the verification mail's token at the API; (access token,
    /// user id).
    pub async fn register_verified(&self, email: &str, password: &str) -> (String, String) {
        let (token, _, id) = self.register(email, password).await;
        let mail = self.last_mail(email).await;
        let link = find_link(mail["body"].as_str().expect("mail body"));
        let verified = self
            .get(
                APP_DOMAIN,
                &format!("/api/auth/verify-email?token={}", link_token(&link)),
            )
            .await;
        assert_eq!(verified.status, 200, "{}", verified.text());
        (token, id)
    }

    /// Logs in; the response.
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.api(
            "POST",
            "/api/auth/login",
            None,
            Some(serde_json::json!({ "email": email, "password": password })),
        )
        .await
    }

    /// The newest outbox mail to `to` (`GET /admin/outbox`).
    pub async fn last_mail(&self, to: &str) -> serde_json::Value {
        let resp = self
            .admin(
                "GET",
                &format!("/admin/outbox?to={to}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["mails"][0].clone()
    }

    /// Follows a link from a mail (`http://host:port/path?query`) through this edge.
    pub async fn follow(&self, link: &str) -> Response {
        let rest = link.strip_prefix("http://").expect("http link");
        let (host_port, path) = rest.split_at(rest.find('/').expect("path in link"));
        let host = host_port.split(':').next().unwrap_or(host_port);
        self.get(host, path).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with `Host: host`.
    /// `GET path` at `host` with `Authorization: Bearer token`.
    pub async fn get_as(&self, host: &str, path: &str, token: &str) -> Response {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        self.send(raw.as_bytes()).await
    }

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
        // Like browsers and OpenClaw's own clients: small frames go out at once.
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (ws, response) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp)
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake through the edge failed: {e}"));
        assert_eq!(response.status(), 101);
        ws
    }

    #[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("edge pid") as i32;
        // SAFETY: kill(2) sends a signal to our own child; no memory is involved.
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

/// The first `http://...` link in a text.
pub fn find_link(text: &str) -> String {
    let start = text
        .find("http://")
        .or_else(|| text.find("https://"))
        .expect("a link in the mail");
    text[start..]
        .split_whitespace()
        .next()
        .expect("link")
        .to_string()
}

/// The token query parameter of a link.
pub fn link_token(link: &str) -> String {
    link.split("token=")
        .nth(1)
        .expect("token= in link")
        .to_string()
}

/// An HS256 JWT with any header and claims, signed with `key` (for forging test tokens).
pub fn forge_jwt(key: &[u8], header: &serde_json::Value, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
}

/// The claims part of a JWT, decoded.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).expect("claims");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("json claims")
}

/// The current TOTP code of a base32 secret (RFC 6238: SHA-1, 6 digits, 30 s).
pub fn totp_now(secret_b32: &str) -> String {
    use hmac::Mac;
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .expect("base32 secret");
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        / 30;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&secret).expect("key");
    mac.update(&step.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let o = usize::from(d[19] & 0x0f);
    let bin = (u32::from(d[o]) & 0x7f) << 24
        | u32::from(d[o + 1]) << 16
        | u32::from(d[o + 2]) << 8
        | u32::from(d[o + 3]);
    format!("{:06}", bin % 1_000_000)
}

/// The fixture image `scripts/build-fixture-image.sh` builds (scripts/test.sh runs it).
pub fn fixture_image_name() -> String {
    std::env::var("CLAWDEPLOY_FIXTURE_IMAGE").unwrap_or_else(|_| "clawdeploy-fixture:test".into())
}

/// The fixture binary (`cargo build -p clawdeploy-fixture`; scripts/test.sh builds it).
pub fn fixture_bin() -> String {
    if let Ok(path) = std::env::var("CLAWDEPLOY_FIXTURE_BIN") {
        return path;
    }
    // target/<profile>/deps/it-<hash> → target/<profile>/clawdeploy-fixture
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("clawdeploy-fixture"));
    match path {
        Some(path) if path.exists() => path.to_string_lossy().into_owned(),
        _ => panic!("the fixture binary is not built: run `cargo build -p clawdeploy-fixture` (scripts/test.sh does)"),
    }
}

/// The gateway protocol subset, as a client: returns the text of the final chat event.
pub async fn chat_turn(ws: &mut WebSocket, message: &str) -> String {
    let challenge = next_json(ws).await;
    assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
    let connect = serde_json::json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,
        "client":{"id":"gateway-client","version":"test","platform":"linux","mode":"backend"},"role":"operator","scopes":["operator.write"]}});
    ws.send(Message::text(connect.to_string()))
        .await
        .expect("send connect");
    let hello = next_json(ws).await;
    assert_eq!(hello["ok"], true, "{hello}");
    let send = serde_json::json!({"type":"req","id":"m1","method":"chat.send","params":{"sessionKey":"agent:main:main","message": message,"idempotencyKey":"k1"}});
    ws.send(Message::text(send.to_string()))
        .await
        .expect("send chat");
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == "res" {
            assert_eq!(frame["ok"], true, "{frame}");
        }
        if frame["event"] == "chat" && frame["payload"]["state"] == "final" {
            return frame["payload"]["message"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
    }
}

pub async fn next_json(ws: &mut WebSocket) -> serde_json::Value {
    loop {
        match next_message(ws).await {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON frame"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Waits until the edge's node reports at least `n` idle instances (`GET /admin/nodes`).
pub async fn wait_idle(edge: &Edge, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let nodes = edge
            .admin("GET", "/admin/nodes", Some(ADMIN_TOKEN), None)
            .await
            .json();
        if nodes["nodes"][0]["containers"]["idle"]
            .as_u64()
            .unwrap_or(0)
            >= n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool not filled: {nodes}\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An edge whose pool runs the fixture (`tests/fixture`), as local processes or in Docker on the
/// shared test network, on pool node `node`.
pub fn fixture_pool_edge(docker: bool, min_idle: usize, node: &str) -> EdgeBuilder {
    let (kind, image) = if docker {
        ("docker", fixture_image_name())
    } else {
        ("process", fixture_bin())
    };
    let mut builder = EdgeBuilder::new()
        .section("runtime", &format!("kind = \"{kind}\""))
        .section("runtime", "config = \"fixture\"")
        .section("runtime", &format!("image = \"{image}\""))
        .section("runtime", "user = \"65534:65534\"")
        .section("pool", &format!("node_id = \"{node}\""))
        .section("pool", &format!("min_idle = {min_idle}"))
        .section("pool", "capacity = 20")
        .section("pool", "memory_mb = 64");
    if docker {
        builder = builder
            .section("runtime", "docker_network = \"clawdeploy-test\"")
            .section("runtime", "publish_loopback = true")
            .section("runtime", "egress_rules = false");
    }
    builder
}

/// The route of `host` in the edge's table (`GET /admin/routes`), `null` when there is none.
pub async fn route_of(edge: &Edge, host: &str) -> serde_json::Value {
    let routes = edge
        .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
        .await
        .json();
    routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["host"] == host)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the route of `host` is in `state`; the route.
pub async fn wait_route_state(
    edge: &Edge,
    host: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let route = route_of(edge, host).await;
        if route["state"] == state {
            return route;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never {state}: {route}\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
