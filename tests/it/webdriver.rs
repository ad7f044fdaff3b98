//! A small W3C WebDriver client for headless Chromium driven by Debian's `chromedriver`
//! (scripts/test.sh installs `chromium` and `chromium-driver`). Plain HTTP/1.1 over loopback
//! with the raw client in support.rs: no extra dependencies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::support::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The chromedriver binary: `CHROMEDRIVER`, else Debian's.
fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Where screenshots go: `<target dir>/artifacts/screens` (not committed).
pub fn screens_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> → target
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("artifacts").join("screens");
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    dir
}

/// One headless Chromium session; the driver is killed when dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// `http://app.<base>:<port>`: the dashboard as the browser reaches it.
    pub app: String,
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium that resolves every test host to the edge.
    pub async fn start(edge: &Edge) -> Browser {
        Self::start_with(edge, false).await
    }

    /// Like [`Browser::start`], with the dashboard at the edge's HTTPS listener
    /// (`https://app.<base>:<tls port>`). Chromium accepts the local CA's certificates
    /// (`acceptInsecureCerts`), and its pages are secure contexts (WebCrypto, `__Host-` cookies).
    pub async fn start_https(edge: &Edge) -> Browser {
        Self::start_with(edge, true).await
    }

    /// The current page's cookies, HttpOnly ones included (WebDriver sees them all).
    pub async fn cookies(&self) -> Value {
        self.cmd("GET", "/cookie", None).await
    }

    /// Runs `source` in every document before its own scripts (Chrome DevTools Protocol through
    /// chromedriver), e.g. to record what a page's WebSockets do.
    pub async fn on_every_document(&self, source: &str) {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": source}})),
        )
        .await;
    }

    async fn start_with(edge: &Edge, https: bool) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run chromedriver ({e}): install chromium and chromium-driver (scripts/install-deps.sh does)")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(resp) = http(addr, "GET", "/status", None).await {
                if resp["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities":{"alwaysMatch":{
            "browserName":"chrome",
            "pageLoadStrategy":"normal",
            "acceptInsecureCerts": https,
            "goog:chromeOptions":{
                "binary": chromium(),
                "args":[
                    "--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage",
                    "--no-proxy-server","--window-size=1280,900","--no-first-run",
                    // Every test host (the base domain's and customers' `*.test` names).
                    "--host-resolver-rules=MAP *.test 127.0.0.1".to_string(),
                ]
            }
        }}});
        // Chromium sometimes exits while starting on a loaded machine ("session not created:
        // Chrome instance exited"): a new one is asked for, up to three times.
        let mut attempts = 0;
        let session = loop {
            attempts += 1;
            let resp = http(addr, "POST", "/session", Some(caps.clone()))
                .await
                .expect("new WebDriver session");
            match resp["value"]["sessionId"].as_str() {
                Some(id) => break id.to_string(),
                None if attempts < 3 => eprintln!("webdriver: no session, asking again: {resp}"),
                None => panic!("no session after {attempts} attempts: {resp}"),
            }
        };
        Browser {
            driver,
            addr,
            session,
            app: if https {
                format!("https://{APP_DOMAIN}:{}", edge.tls_addr.port())
            } else {
                format!("http://{APP_DOMAIN}:{}", edge.addr.port())
            },
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let resp = http(self.addr, method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if resp["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", resp["value"]);
        }
        resp["value"].clone()
    }

    async fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let path = format!("/session/{}{path}", self.session);
        let resp = http(self.addr, method, &path, body)
            .await
            .map_err(|e| json!(e))?;
        if resp["value"]["error"].is_string() {
            return Err(resp["value"].clone());
        }
        Ok(resp["value"].clone())
    }

    /// Opens a path on the app domain (or an absolute URL).
    pub async fn goto(&self, path: &str) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.app)
        };
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn find(&self, css: &str) -> Option<Element> {
        let v = self
            .try_cmd(
                "POST",
                "/element",
                Some(json!({"using":"css selector","value":css})),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(|s| Element(s.to_string()))
    }

    /// Waits for an element to exist.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("no element {css} on {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `css` exists and its text satisfies `ok`; the text.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_text_within(css, PATIENCE, ok).await
    }

    /// [`Browser::wait_text`] with its own deadline (a real OpenClaw's first turn on a busy machine).
    pub async fn wait_text_within(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Some(e) = self.find(css).await {
                if let Ok(v) = self
                    .try_cmd("GET", &format!("/element/{}/text", e.0), None)
                    .await
                {
                    last = v.as_str().unwrap_or_default().to_string();
                    if ok(&last) {
                        return last;
                    }
                }
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!(
                    "{css} never matched; last text {last:?} on {}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the page's path is `path`.
    pub async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = self.url().await;
            let here = url
                .strip_prefix(&self.app)
                .unwrap_or(&url)
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            // A dashboard page is ready once app.js has attached its handlers (a click before that
            // would submit the form natively).
            if here == path && (!url.starts_with(&self.app) || self.app_js_ready().await) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("never reached {path} (with app.js ready); at {url}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.cmd("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn enabled(&self, css: &str) -> bool {
        match self.find(css).await {
            Some(e) => self
                .try_cmd("GET", &format!("/element/{}/enabled", e.0), None)
                .await
                .is_ok_and(|v| v == true),
            None => false,
        }
    }

    pub async fn wait_enabled(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.enabled(css).await {
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("{css} never enabled on {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether app.js has attached its handlers (false while a page is still loading).
    async fn app_js_ready(&self) -> bool {
        let script = json!({"script": "return document.documentElement.dataset.ready === 'true';", "args": []});
        self.try_cmd("POST", "/execute/sync", Some(script)).await == Ok(Value::Bool(true))
    }

    /// Runs a script in the page; its return value.
    pub async fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Emulates a phone-sized viewport (`width` CSS pixels) or, with `None`, the desktop window.
    pub async fn viewport(&self, width: Option<u32>) {
        let (cmd, params) = match width {
            Some(w) => (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": w, "height": 800, "deviceScaleFactor": 1, "mobile": true}),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `<screens>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.cmd("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("base64 screenshot");
        let path = screens_dir().join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    /// Checks the page at 375 px and on the desktop: nothing overflows sideways (neither the page
    /// nor a table, card or field suffix cut off inside it), every form control has a label;
    /// saves both screenshots.
    pub async fn check_page(&self, name: &str) {
        let unlabelled = self
            .script(
                "return [...document.querySelectorAll('input,select,textarea')]\
                 .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
                 .map(e => e.id || e.name);",
            )
            .await;
        assert_eq!(
            unlabelled,
            json!([]),
            "{name}: form controls without a label"
        );
        self.screenshot(name).await;
        self.viewport(Some(375)).await;
        let overflow = self
            .script("return document.documentElement.scrollWidth - window.innerWidth;")
            .await;
        const CLIPPED: &str = "return [...document.querySelectorAll('.table-wrap, .card, .suffix, .notice')]\
             .filter(e => e.scrollWidth > e.clientWidth + 1)\
             .map(e => e.className + (e.id ? '#' + e.id : '') + ': ' + e.textContent.trim().slice(0, 40));";
        let clipped_phone = self.script(CLIPPED).await;
        self.screenshot(&format!("{name}-375px")).await;
        self.viewport(None).await;
        let clipped_desktop = self.script(CLIPPED).await;
        assert!(
            overflow.as_i64().unwrap_or(1) <= 0,
            "{name}: the page is {overflow} px wider than a 375 px screen"
        );
        assert_eq!(clipped_phone, json!([]), "{name}: cut off at 375 px");
        assert_eq!(clipped_desktop, json!([]), "{name}: cut off on the desktop");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium too (chromedriver kills its browser when the session is deleted; the
        // driver itself is killed on drop).
        let addr = self.addr;
        let path = format!("/session/{}", self.session);
        let _ = std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok(mut tcp) = std::net::TcpStream::connect(addr) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    tcp,
                    "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let mut sink = Vec::new();
                let _ = tcp.read_to_end(&mut sink);
            }
        })
        .join();
        let _ = self.driver.start_kill();
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    // chromedriver says `Connection: close` but keeps the socket open: read by Content-Length.
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(raw.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("no Content-Length")?;
                if bytes.len() >= end + 4 + len {
                    return Ok::<_, String>(bytes[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed early".into());
            }
            bytes.extend_from_slice(&buf[..n]);
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| "WebDriver did not answer in 60 s".to_string())??;
    serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))
}
