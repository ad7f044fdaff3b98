//! A real Prometheus scrapes the edge's metrics listener: Debian's `prometheus` (2.42,
//! `scripts/install-deps.sh prometheus`) run by the test on a free loopback port with a generated
//! config (1 s scrape interval) and its own temporary storage; the series are read back through
//! Prometheus's HTTP query API (`GET /api/v1/query`). `metering::` keeps checking the exposition
//! with a text-format parser.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::*;

/// How long Prometheus may take to start and to show a scraped change (interval 1 s).
const SCRAPE_PATIENCE: Duration = Duration::from_secs(30);

/// A Prometheus server of this test, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second as job `clawdeploy`.
    async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: clawdeploy\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("prometheus.log");
        let binary = std::env::var("CLAWDEPLOY_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): install it with `scripts/install-deps.sh prometheus`")
            });
        let mut prometheus = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + SCRAPE_PATIENCE;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited with {status}:\n{}",
                    prometheus.log_text()
                );
            }
            if let Ok(resp) = try_send(addr, get_request("prometheus", "/-/ready").as_bytes()).await
            {
                if resp.status == 200 {
                    return prometheus;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query's result vector (`data.result`).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let resp = try_send(self.addr, get_request("prometheus", &path).as_bytes())
            .await
            .expect("prometheus answers");
        assert_eq!(resp.status, 200, "{expr}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `expr` until its result satisfies `done`; the result.
    async fn wait_for(&self, expr: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + SCRAPE_PATIENCE;
        loop {
            let result = self.query(expr).await;
            if done(&result) {
                return result;
            }
            if Instant::now() >= deadline {
                // What the metric looks like with any labels, to show what differs.
                let name = expr.split('{').next().unwrap_or(expr);
                panic!(
                    "{expr} never matched; last result {result:?}\nall {name}: {:?}\ntargets: {}\n{}",
                    Box::pin(self.query(name)).await,
                    self.targets().await,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn targets(&self) -> String {
        try_send(
            self.addr,
            get_request("prometheus", "/api/v1/targets").as_bytes(),
        )
        .await
        .map(|r| r.text())
        .unwrap_or_default()
    }
}

/// A sample's value (`value: [time, "string"]`).
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// RFC 3986 percent-encoding of a query parameter value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_requests_latency_llm_tokens_and_open_websockets() {
    let http = HttpUpstream::start("site").await;
    let echo = WsUpstream::start().await;
    let app_host = format!("site.{BASE_DOMAIN}");
    let ws_host = format!("echo.{BASE_DOMAIN}");
    // The LLM meter at a fixed loopback address, calling the fake OpenAI-compatible provider
    // (the documented Chat Completions protocol, see openclaw.rs) on loopback.
    let (_provider, provider_addr) =
        crate::openclaw::FakeProvider::start(std::net::IpAddr::from([127, 0, 0, 1])).await;
    let meter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .route(&app_host, http.addr)
        .route(&ws_host, echo.addr)
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", "allow_private_custom = [\"127.0.0.1\"]")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(edge.get(&app_host, "/hello").await.status, 200);
    }
    // An unknown host: answered before routing (kind "none").
    assert_eq!(
        edge.get(&format!("nobody.{BASE_DOMAIN}"), "/").await.status,
        404
    );
    let ws = edge.websocket(&ws_host, "/").await;
    // One metered LLM call: 10 input and 5 output tokens for the custom provider.
    let (token, _, _) = edge
        .register("prom@example.com", "correct horse battery staple 9")
        .await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(serde_json::json!({"subdomain": "prom"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let instance_id = created.json()["instance"]["id"]
        .as_str()
        .expect("instance id")
        .to_string();
    let key = edge
        .api(
            "PUT",
            "/api/account/api-keys/custom",
            Some(&token),
            Some(serde_json::json!({"key": "sk-prom-real-key", "baseUrl": format!("http://{provider_addr}/v1")})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(meter).await.is_err() {
        assert!(Instant::now() < deadline, "the LLM meter never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = crate::llm_meter::post(
        meter,
        "/custom/chat/completions",
        Some(&clawdeploy_llm_egress::instance_token(
            JWT_KEY.as_bytes(),
            &instance_id,
        )),
        &serde_json::json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let prometheus = Prometheus::start(edge.metrics_addr).await;
    let target = edge.metrics_addr.to_string();

    // The target is up, under this job and address.
    let up = prometheus
        .wait_for("up{job=\"clawdeploy\"}", |r| {
            r.len() == 1 && sample_value(&r[0]) == 1.0
        })
        .await;
    assert_eq!(up[0]["metric"]["instance"], target.as_str(), "{up:?}");

    // Request counters with their route kind (static `[[routes]]` are "operator" routes), status
    // and method labels.
    let requests = prometheus
        .wait_for(
            "clawdeploy_http_requests_total{kind=\"operator\",status=\"200\",method=\"GET\"}",
            |r| r.len() == 1 && sample_value(&r[0]) >= 3.0,
        )
        .await;
    assert_eq!(requests[0]["metric"]["job"], "clawdeploy", "{requests:?}");
    assert_eq!(requests[0]["metric"]["instance"], target.as_str());
    let unrouted = prometheus
        .wait_for(
            "clawdeploy_http_requests_total{kind=\"none\",status=\"404\"}",
            |r| r.len() == 1,
        )
        .await;
    assert_eq!(sample_value(&unrouted[0]), 1.0, "{unrouted:?}");
    assert_eq!(unrouted[0]["metric"]["method"], "GET", "{unrouted:?}");
    // The latency histogram: buckets with `le`, and a count per route kind.
    let count = prometheus
        .wait_for(
            "clawdeploy_http_request_duration_seconds_count{kind=\"operator\"}",
            |r| r.len() == 1 && sample_value(&r[0]) >= 3.0,
        )
        .await;
    assert!(!count.is_empty());
    let buckets = prometheus
        .query("clawdeploy_http_request_duration_seconds_bucket{kind=\"operator\",le=\"+Inf\"}")
        .await;
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    assert!(sample_value(&buckets[0]) >= 3.0, "{buckets:?}");

    // LLM tokens by provider and kind.
    for (kind, tokens) in [("input", 10.0), ("output", 5.0)] {
        let expr = format!("clawdeploy_llm_tokens_total{{provider=\"custom\",kind=\"{kind}\"}}");
        let series = prometheus
            .wait_for(&expr, |r| r.len() == 1 && sample_value(&r[0]) == tokens)
            .await;
        assert_eq!(series[0]["metric"]["job"], "clawdeploy");
    }

    // The open-WebSocket gauge follows the connection: 1 while open, 0 once closed.
    prometheus
        .wait_for("clawdeploy_websockets_open", |r| {
            r.len() == 1 && sample_value(&r[0]) == 1.0
        })
        .await;
    drop(ws);
    prometheus
        .wait_for("clawdeploy_websockets_open", |r| {
            r.len() == 1 && sample_value(&r[0]) == 0.0
        })
        .await;
}
