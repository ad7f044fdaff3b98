//! The real OpenClaw behind the edge (slow: one OpenClaw container, about 1 GiB): the image
//! `clawdeploy image build` makes, booted by the pool through the real binary, and the
//! trusted-proxy wiring tested from both sides. Its LLM calls go through the edge's LLM meter
//! (on by default, on the instance network's gateway address) to a fake OpenAI-compatible
//! provider on the host's loopback, which no container can reach: a reply proves the meter path.
//! LLM providers cannot run here; the fake implements the documented Chat Completions protocol
//! (`POST /v1/chat/completions`, JSON or SSE `chat.completion.chunk`s ending in `data: [DONE]`, and
//! the final `usage` chunk with empty `choices` only when `stream_options.include_usage` is set).
//!
//! scripts/test.sh builds the image first; without it the test builds it (minutes on a fresh
//! machine, seconds when cached).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const PW: &str = "correct horse battery staple 9";
pub const NETWORK: &str = "clawdeploy-openclaw-test";
pub const ANSWER: &str = "Hello from the fake provider.";
/// OpenClaw's first turn prepares the workspace and can take several seconds on 2 vCPU.
const TURN_PATIENCE: Duration = Duration::from_secs(90);

/// The image under test: `CLAWDEPLOY_OPENCLAW_IMAGE`, else the default tag, built when missing.
pub async fn openclaw_image() -> String {
    let image = std::env::var("CLAWDEPLOY_OPENCLAW_IMAGE")
        .unwrap_or_else(|_| clawdeploy_pool::image::OPENCLAW_IMAGE.to_string());
    if !clawdeploy_pool::image::exists(&image).await {
        eprintln!("openclaw: building {image} (clawdeploy image build)");
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_clawdeploy"))
            .args(["image", "build", "--tag", &image])
            .status()
            .await
            .expect("run clawdeploy image build");
        assert!(status.success(), "clawdeploy image build failed");
    }
    image
}

/// Removes what a test's pool left behind (containers and volumes carry the node label).
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=clawdeploy.node={}", self.0);
        let script = format!(
            "docker ps -aq --filter {label} | xargs -r docker rm -f >/dev/null; \
             docker volume ls -q --filter {label} | xargs -r docker volume rm >/dev/null"
        );
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .status();
    }
}

/// Tokens the fake provider reports per completion (prompt + completion).
pub const TOKENS_PER_CALL: u64 = 15;

/// A fake OpenAI-compatible provider: answers [`ANSWER`] and keeps every request body and the
/// `Authorization` header it came with.
#[derive(Clone, Default)]
pub struct FakeProvider {
    requests: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    /// How long each completion takes before it answers (ms; 0: at once).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl FakeProvider {
    pub async fn start(ip: IpAddr) -> (Self, SocketAddr) {
        let provider = Self::default();
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(completions))
            .with_state(provider.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (provider, addr)
    }

    /// Makes every later completion take `delay` before it answers.
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().expect("requests").clone()
    }

    /// The `Authorization` header of every request (models and completions), in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().expect("authorizations").clone()
    }

    /// The system prompt of the last completion request.
    pub fn last_system_prompt(&self) -> String {
        let requests = self.requests();
        let last = requests.last().expect("the provider was called");
        last["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "system" || m["role"] == "developer")
            .map(|m| m["content"].to_string())
            .collect()
    }
}

fn authorization(p: &FakeProvider, headers: &HeaderMap) {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    p.authorizations.lock().expect("authorizations").push(value);
}

async fn models(State(p): State<FakeProvider>, headers: HeaderMap) -> Json<Value> {
    authorization(&p, &headers);
    Json(json!({"object":"list","data":[{"id":"default","object":"model"}]}))
}

async fn completions(
    State(p): State<FakeProvider>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    authorization(&p, &headers);
    let delay = p.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let stream = body["stream"] == true;
    let include_usage = body["stream_options"]["include_usage"] == true;
    p.requests.lock().expect("requests").push(body);
    if !stream {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"id":"c1","object":"chat.completion","created":0,"model":"default",
                "choices":[{"index":0,"message":{"role":"assistant","content":ANSWER},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}})
            .to_string(),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id":"c1","object":"chat.completion.chunk","created":0,"model":"default",
            "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
    };
    let mut body = format!(
        "data: {}\n\ndata: {}\n\n",
        chunk(json!({"role":"assistant","content":ANSWER}), Value::Null),
        chunk(json!({}), json!("stop"))
    );
    if include_usage {
        // The documented extra chunk: empty choices, the whole request's usage.
        let usage = json!({"id":"c1","object":"chat.completion.chunk","created":0,"model":"default",
            "choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":TOKENS_PER_CALL}});
        body.push_str(&format!("data: {usage}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], body)
}

/// A non-loopback address of this host (OpenClaw refuses proxied clients named as loopback,
/// so test clients reach the loopback edge from this address).
pub fn host_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket
        .connect("203.0.113.1:9")
        .expect("a default route to pick a source address");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address: {ip}"
    );
    ip
}

/// Opens `/ws` on `host` through the edge, from a non-loopback address, with extra headers.
pub async fn gateway(
    edge: &Edge,
    host: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<WebSocket, u16> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(host_address(), 0))
        .expect("bind client");
    let tcp = socket
        .connect(edge.addr)
        .await
        .expect("connect to the edge");
    let mut request = format!("ws://{host}/ws")
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    for (name, value) in extra {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    }
}

/// One raw HTTP exchange with the edge from [`host_address`].
pub async fn send_from_host(edge: SocketAddr, raw: &[u8]) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(host_address(), 0))
        .expect("bind client");
    let mut tcp = socket.connect(edge).await.expect("connect to the edge");
    tcp.write_all(raw).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut bytes))
        .await
        .expect("a response in time")
        .expect("read");
    parse_response(&bytes).expect("HTTP response")
}

/// The next JSON frame, or `Err(close reason)`.
pub async fn next_frame<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<Value, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(TURN_PATIENCE, ws.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(text.as_str()).expect("JSON frame"))
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("error: {e}")),
            None => return Err("ended".into()),
        }
    }
}

/// The handshake as a backend client: the `connect` response (ok or not).
pub async fn connect<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<Value, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let challenge = next_frame(ws).await?;
    assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
    let connect = json!({"type":"req","id":"c1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,
        "client":{"id":"gateway-client","version":"test","platform":"linux","mode":"backend"},
        "role":"operator","scopes":["operator.read","operator.write"]}});
    ws.send(Message::text(connect.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let frame = next_frame(ws).await?;
        if frame["id"] == "c1" {
            return Ok(frame);
        }
    }
}

/// One request on a connected gateway; its response.
pub async fn call(ws: &mut WebSocket, id: &str, method: &str, params: Value) -> Value {
    let req = json!({"type":"req","id":id,"method":method,"params":params});
    ws.send(Message::text(req.to_string())).await.expect("send");
    loop {
        let frame = next_frame(ws).await.expect("a response");
        if frame["id"] == id {
            return frame;
        }
    }
}

/// A `chat.send` turn: the final chat event's text.
pub async fn chat(ws: &mut WebSocket, message: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let req = json!({"type":"req","id":id,"method":"chat.send","params":{"sessionKey":"agent:main:main",
        "message":message,"idempotencyKey":uuid::Uuid::new_v4().to_string()}});
    ws.send(Message::text(req.to_string())).await.expect("send");
    loop {
        let frame = next_frame(ws).await.expect("chat frames");
        if frame["id"] == id.as_str() {
            assert_eq!(frame["ok"], true, "chat.send refused: {frame}");
        }
        if frame["event"] == "chat" {
            match frame["payload"]["state"].as_str() {
                Some("final") => {
                    return frame["payload"]["message"]["content"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["text"].as_str())
                        .collect()
                }
                Some("error") | Some("aborted") => panic!("chat failed: {frame}"),
                _ => {}
            }
        }
    }
}

/// Connects the owner through the edge. The pool routes an instance as running only once the
/// gateway admits its owner (the hot reload has applied the owner's config), so the first attempt
/// must succeed.
pub async fn connect_owner(edge: &Edge, host: &str, token: &str) -> (WebSocket, Value) {
    let mut ws = gateway(edge, host, Some(token), &[])
        .await
        .expect("the owner gets through the edge");
    match connect(&mut ws).await {
        Ok(hello) if hello["ok"] == true => (ws, hello),
        other => panic!(
            "the gateway refused its owner: {other:?}\n{}",
            edge.log_text()
        ),
    }
}

/// The LLM path went through the edge's meter: the provider saw only the user's real key (the
/// meter injected it; instances hold only their meter token), and every completion's usage is
/// recorded for the instance (counted when its answer's body ends, hence the polling).
pub async fn assert_metered(edge: &Edge, token: &str, provider: &FakeProvider, real_key: &str) {
    let authorizations = provider.authorizations();
    assert!(!authorizations.is_empty(), "the provider was not called");
    let expected = format!("Bearer {real_key}");
    assert!(
        authorizations.iter().all(|a| *a == expected),
        "the provider saw {authorizations:?}, not the user's key"
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let expected = TOKENS_PER_CALL * provider.requests().len() as u64;
        let me = edge
            .api("GET", "/api/instances/me", Some(token), None)
            .await
            .json();
        let used = me["instance"]["usage"]["tokensThisMonth"].as_u64();
        if used == Some(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tokensThisMonth {used:?}, expected {expected}: {me}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The container on `node_id` holds its member's meter token as its provider key and the
/// user's real key nowhere: not in its config or data volume, its processes' environments or
/// its Docker config; its provider's `baseUrl` is the meter, not the provider.
pub async fn assert_container_holds_only_the_token(
    node_id: &str,
    real_key: &str,
    provider_addr: SocketAddr,
) {
    let container = container_of(node_id).await;
    // The member's token: its container is named after it.
    let name = tokio::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Name}}", &container])
        .output()
        .await
        .expect("docker inspect");
    let member = String::from_utf8_lossy(&name.stdout)
        .trim()
        .trim_start_matches('/')
        .to_string();
    let meter_token = clawdeploy_llm_egress::member_token(JWT_KEY.as_bytes(), &member);
    let path = format!("/data/{}", clawdeploy_pool::openclaw::CONFIG_FILE);
    let config: Value = serde_json::from_str(&exec_output(&container, &["cat", &path]).await)
        .expect("the instance's openclaw.json");
    let custom = &config["models"]["providers"]["custom"];
    assert_eq!(custom["apiKey"], meter_token.as_str(), "{config}");
    let base_url = custom["baseUrl"].as_str().unwrap_or_default();
    assert!(
        base_url.ends_with("/custom") && !base_url.contains(&provider_addr.to_string()),
        "baseUrl {base_url} is not the meter"
    );
    let found = exec_output(&container, &["grep", "-rl", real_key, "/data"]).await;
    assert!(found.trim().is_empty(), "the real key is in {found}");
    let environments = exec_output(
        &container,
        &[
            "sh",
            "-c",
            "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
        ],
    )
    .await;
    assert!(
        environments.contains("OPENCLAW_CONFIG_PATH"),
        "process environments not readable: {environments}"
    );
    assert!(
        !environments.contains(real_key),
        "the real key is in a process environment"
    );
    let inspect = tokio::process::Command::new("docker")
        .args(["inspect", &container])
        .output()
        .await
        .expect("docker inspect");
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(real_key));
}

/// Connects straight to the container (not through the edge) with `headers`; the connect answer.
pub async fn direct(upstream: SocketAddr, headers: &[(&str, &str)]) -> Result<Value, String> {
    let tcp = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("connect");
    let mut request = format!("ws://{upstream}/")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((mut ws, _)) => connect(&mut ws).await,
        Err(e) => Err(format!("handshake refused: {e}")),
    }
}

pub fn upstream_of(edge: &Edge, routes: &Value, host: &str) -> SocketAddr {
    routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["host"] == host)
        .and_then(|r| r["upstream"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no route for {host}: {routes}\n{}", edge.log_text()))
}

/// An edge whose pool runs OpenClaw in Docker, with the egress rules on: instances reach the
/// internet and the edge's LLM meter (on by default, at a free port here) and no other host
/// address. The meter may call the fake provider on loopback (`allow_private_custom`).
pub fn openclaw_edge(image: &str, node_id: &str, min_idle: usize, capacity: usize) -> EdgeBuilder {
    EdgeBuilder::new()
        .section("runtime", "kind = \"docker\"")
        .section("runtime", "config = \"openclaw\"")
        .section("runtime", &format!("image = \"{image}\""))
        .section("runtime", &format!("docker_network = \"{NETWORK}\""))
        .section("runtime", "publish_loopback = true")
        .section("runtime", "egress_rules = true")
        .section("llm", "allow_private_custom = [\"127.0.0.1\"]")
        .section("pool", &format!("node_id = \"{node_id}\""))
        .section("pool", &format!("min_idle = {min_idle}"))
        .section("pool", &format!("capacity = {capacity}"))
        .section("pool", "ready_timeout_secs = 240")
}

/// The instance's container on `node_id` (the test pools hold one).
async fn container_of(node_id: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=clawdeploy.node={node_id}"),
        ])
        .output()
        .await
        .expect("docker ps");
    let ids = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "containers of {node_id}: {ids:?}");
    ids[0].to_string()
}

/// The tenant's code (a tool OpenClaw runs, as the container's user) cannot change the
/// platform's config in any way: not write, replace, move, delete or chmod it. (`/data` itself is
/// a mount point; `mv` across file systems would copy it and then delete what the tenant owns,
/// its own state, so that is not tried here.)
async fn assert_config_is_read_only_to_the_tenant(node_id: &str) {
    let container = container_of(node_id).await;
    let path = format!("/data/{}", clawdeploy_pool::openclaw::CONFIG_FILE);
    let before = exec_output(&container, &["cat", &path]).await;
    assert!(before.contains("trusted-proxy"), "{before}");
    let attempts = [
        format!("echo '{{}}' > {path}"),
        format!("echo '{{}}' >> {path}"),
        format!("rm -f {path}"),
        format!("mv {path} /data/state/moved.json"),
        format!("echo '{{}}' > {path}.new && mv {path}.new {path}"),
        format!("chmod 0666 {path}"),
    ];
    for attempt in &attempts {
        let status = tokio::process::Command::new("docker")
            .args(["exec", &container, "sh", "-c", attempt])
            .output()
            .await
            .expect("docker exec")
            .status;
        assert!(!status.success(), "the tenant could run `{attempt}`");
    }
    assert_eq!(exec_output(&container, &["cat", &path]).await, before);
    assert_eq!(exec_output(&container, &["id", "-u"]).await.trim(), "1000");
    // Its own state and workspace stay writable (checked without writing: OpenClaw notices a
    // changed workspace and refuses the session's next send).
    for dir in ["/data/state", "/data/workspace"] {
        let status = tokio::process::Command::new("docker")
            .args(["exec", &container, "test", "-w", dir])
            .output()
            .await
            .expect("docker exec")
            .status;
        assert!(status.success(), "{dir} is not writable by the instance");
    }
}

/// `docker exec <container> <argv>`: its stdout (the instance's own user and view).
pub async fn exec_output(container: &str, argv: &[&str]) -> String {
    let out = tokio::process::Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(argv)
        .output()
        .await
        .expect("docker exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_behind_the_edge_chats_refuses_strangers_and_reloads_its_soul() {
    let image = openclaw_image().await;
    // On the host's loopback: only the edge's LLM meter can call it, never a container.
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let node_id = format!("octest{}", std::process::id());
    let _cleanup = Cleanup(node_id.clone());
    let edge = openclaw_edge(&image, &node_id, 1, 1).start().await;
    let boot = std::time::Instant::now();
    wait_idle(&edge, 1, Duration::from_secs(300)).await;
    eprintln!(
        "openclaw: warm instance ready after {:.1} s",
        boot.elapsed().as_secs_f64()
    );

    let (token, _, _) = edge.register("olivia@example.com", PW).await;
    let (bob_token, _, _) = edge.register("bob@example.com", PW).await;
    let bob_id = jwt_claims(&bob_token)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/custom",
            Some(&token),
            Some(json!({"key":"sk-test-olivia","baseUrl":format!("http://{provider_addr}/v1")})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());

    // Signup to first reply, through the edge at /ws.
    let signup = std::time::Instant::now();
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain":"olivia","soulMd":"SOUL-MARKER-ONE: answer briefly."})),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(
        resp.json()["instance"]["status"],
        "running",
        "{}",
        resp.text()
    );
    let host = format!("olivia.{BASE_DOMAIN}");
    let (mut ws, hello) = connect_owner(&edge, &host, &token).await;
    assert_eq!(
        hello["payload"]["auth"]["method"], "trusted-proxy",
        "{hello}"
    );
    let scopes = hello["payload"]["auth"]["scopes"].to_string();
    assert!(
        scopes.contains("operator.write") && !scopes.contains("operator.admin"),
        "{scopes}"
    );
    assert_eq!(chat(&mut ws, "hello").await, ANSWER);
    // A browser on the edge's own machine (the embedded default) gets through too.
    {
        let tcp = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("loopback connect");
        let mut request = format!("ws://{host}/ws")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (mut local, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("the owner gets through from loopback");
        let hello = connect(&mut local).await;
        assert!(
            matches!(&hello, Ok(h) if h["ok"] == true),
            "loopback owner refused: {hello:?}"
        );
    }
    eprintln!(
        "openclaw: signup to first reply {:.2} s",
        signup.elapsed().as_secs_f64()
    );
    // The provider got the user's key and the SOUL.md.
    let first = provider.requests();
    assert!(!first.is_empty());
    assert!(
        provider.last_system_prompt().contains("SOUL-MARKER-ONE"),
        "SOUL.md not in the system prompt"
    );
    assert_metered(&edge, &token, &provider, "sk-test-olivia").await;
    assert_container_holds_only_the_token(&node_id, "sk-test-olivia", provider_addr).await;
    assert_config_is_read_only_to_the_tenant(&node_id).await;

    // Locked down: no admin scope (config writes refused), terminal off.
    let patch = call(
        &mut ws,
        "p1",
        "config.patch",
        json!({"raw":"{\"gateway\":{\"terminal\":{\"enabled\":true}}}"}),
    )
    .await;
    assert_eq!(patch["ok"], false, "{patch}");
    assert!(
        patch["error"].to_string().contains("operator.admin"),
        "{patch}"
    );
    let terminal = call(&mut ws, "t1", "terminal.open", json!({})).await;
    assert_eq!(terminal["ok"], false, "{terminal}");
    // The OpenAI-compatible HTTP endpoints are off, even for the owner.
    for path in ["/v1/chat/completions", "/v1/responses"] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let resp = send_from_host(edge.addr, raw.as_bytes()).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
    }

    // A SOUL.md change reaches the next turn, without a restart.
    let patched = edge
        .api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({"soulMd":"SOUL-MARKER-TWO: answer in one word."})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(
        patched.json()["restartRequired"],
        false,
        "{}",
        patched.text()
    );
    assert_eq!(chat(&mut ws, "again").await, ANSWER);
    let prompt = provider.last_system_prompt();
    assert!(prompt.contains("SOUL-MARKER-TWO"), "new SOUL.md not used");
    assert!(
        !prompt.contains("SOUL-MARKER-ONE"),
        "old SOUL.md still used"
    );
    // A key added in Settings is in the running instance's providers when the API answers.
    let added = edge
        .api(
            "PUT",
            "/api/account/api-keys/anthropic",
            Some(&token),
            Some(json!({"key":"sk-ant-test-olivia-0123456789"})),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let container = container_of(&node_id).await;
    let path = format!("/data/{}", clawdeploy_pool::openclaw::CONFIG_FILE);
    let config: Value = serde_json::from_str(&exec_output(&container, &["cat", &path]).await)
        .expect("the instance's openclaw.json");
    assert!(
        config["models"]["providers"]["anthropic"].is_object(),
        "{config}"
    );
    ws.close(None).await.ok();

    // A forged identity header never reaches the gateway: the edge overwrites it with the
    // gateway identity (had Bob's id reached it, allowUsers would refuse the connection).
    let mut ws = gateway(
        &edge,
        &host,
        Some(&token),
        &[("x-forwarded-user", &bob_id), ("x-remote-user", &bob_id)],
    )
    .await
    .expect("the owner gets through");
    assert_eq!(connect(&mut ws).await.expect("connect")["ok"], true);
    ws.close(None).await.ok();
    // Without the owner's token the edge refuses, whatever identity headers the client sends.
    assert!(gateway(&edge, &host, None, &[("x-forwarded-user", "x")])
        .await
        .is_err());
    assert!(
        gateway(&edge, &host, Some(&bob_token), &[("x-forwarded-user", "x")])
            .await
            .is_err()
    );

    // Straight to the container (from the trusted address, as any host process could), the
    // gateway itself refuses connections without the owner's identity.
    let routes = edge
        .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let upstream = upstream_of(&edge, &routes, &host);
    // The gateway knows the owner by the instance's gateway identity, fixed when its pool member
    // booted; the edge keys the proof with it.
    let gateway_id = routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["host"] == host)
        .and_then(|r| r["gatewayId"].as_str())
        .expect("the route's gateway identity")
        .to_string();
    let xff = ("x-forwarded-for", "192.0.2.1");
    let owner_id = jwt_claims(&token)["sub"].as_str().unwrap().to_string();
    let proof = clawdeploy_proxy::gateway_trust::proof_header(JWT_KEY.as_bytes(), &gateway_id);
    // Naming the owner is not enough (any host process could, from the trusted address): the
    // gateway also wants the per-instance proof only the edge can name.
    for headers in [
        vec![],
        vec![xff],
        vec![xff, ("x-forwarded-user", bob_id.as_str())],
        vec![xff, ("x-forwarded-user", owner_id.as_str())],
        vec![xff, ("x-forwarded-user", gateway_id.as_str())],
        vec![
            xff,
            ("x-forwarded-user", gateway_id.as_str()),
            ("x-clawdeploy-proof-00000000000000000000000000000000", "1"),
        ],
        // The right proof with another identity than the gateway's, the owner's user id included.
        vec![
            xff,
            ("x-forwarded-user", owner_id.as_str()),
            (proof.as_str(), "1"),
        ],
        vec![
            xff,
            ("x-forwarded-user", bob_id.as_str()),
            (proof.as_str(), "1"),
        ],
        // The platform's own identity (operator.admin) needs the proof like any other.
        vec![
            xff,
            (
                "x-forwarded-user",
                clawdeploy_proxy::gateway_trust::PLATFORM_USER,
            ),
        ],
    ] {
        let answer = direct(upstream, &headers).await;
        assert!(
            answer.as_ref().map_or(true, |a| a["ok"] != true),
            "gateway admitted {headers:?}: {answer:?}"
        );
    }
    let with_proof = [
        xff,
        ("x-forwarded-user", gateway_id.as_str()),
        (proof.as_str(), "1"),
    ];
    assert_eq!(
        direct(upstream, &with_proof).await.expect("connect")["ok"],
        true,
        "the edge's own headers must still be admitted"
    );
    // The same over HTTP: the owner's transcript through `/tools/invoke` (the finding read
    // another tenant's `sessions_history` this way, through the LLM meter).
    let body = r#"{"tool":"sessions_list","args":{}}"#;
    let invoke = |extra: &str| {
        format!(
            "POST /tools/invoke HTTP/1.1\r\nHost: {upstream}\r\nX-Forwarded-For: 192.0.2.1\r\n\
             X-Forwarded-User: {gateway_id}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let forged = try_send(upstream, invoke("").as_bytes())
        .await
        .expect("an answer");
    assert_eq!(forged.status, 401, "{}", forged.text());
    let edge_like = try_send(
        upstream,
        invoke(&format!(
            "{proof}: 1\r\nX-OpenClaw-Scopes: {}\r\n",
            clawdeploy_proxy::gateway_trust::owner_scopes_value()
        ))
        .as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(edge_like.status, 200, "{}", edge_like.text());

    // Deleting the instance removes its container.
    assert_eq!(
        edge.api("DELETE", "/api/instances/me", Some(&token), None)
            .await
            .status,
        200
    );
}

/// Without Docker, the process runtime runs the same pinned OpenClaw directly with its pinned Node
/// (development only, not isolated): signup and a chat through the edge work the same way, with
/// the LLM meter on loopback between OpenClaw and the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_as_a_local_process_chats_through_the_edge() {
    if !clawdeploy_pool::image::host_install_ready() {
        // `clawdeploy image build` installs Node and OpenClaw in its cache on the way.
        openclaw_image().await;
    }
    assert!(
        clawdeploy_pool::image::host_install_ready(),
        "OpenClaw not installed for the process runtime"
    );
    let (provider, provider_addr) = FakeProvider::start(IpAddr::from([127, 0, 0, 1])).await;
    let edge = EdgeBuilder::new()
        .section("runtime", "kind = \"process\"")
        .section("runtime", "config = \"openclaw\"")
        .section(
            "pool",
            &format!("node_id = \"ocproc{}\"", std::process::id()),
        )
        .section("pool", "min_idle = 1")
        .section("pool", "capacity = 2")
        .section("pool", "ready_timeout_secs = 240")
        .section("llm", "allow_private_custom = [\"127.0.0.1\"]")
        .start()
        .await;
    wait_idle(&edge, 1, Duration::from_secs(300)).await;
    let (token, _, _) = edge.register("local@example.com", PW).await;
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/custom",
            Some(&token),
            Some(json!({"key":"sk-test-local","baseUrl":format!("http://{provider_addr}/v1")})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain":"local"})),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(
        resp.json()["instance"]["status"],
        "running",
        "{}",
        resp.text()
    );
    let (mut ws, _) = connect_owner(&edge, &format!("local.{BASE_DOMAIN}"), &token).await;
    assert_eq!(chat(&mut ws, "hello").await, ANSWER);
    assert_metered(&edge, &token, &provider, "sk-test-local").await;
}
