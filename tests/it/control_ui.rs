//! OpenClaw's own Control UI through a browser session, end to end (issue #8): headless Chromium
//! over HTTPS logs in on the app domain, opens the instance host, is handed off (one-time code →
//! the host's cookie), and the real OpenClaw's Control UI loads and connects its WebSocket with no
//! manual pairing (trusted-proxy mode with device auto-approval for the owner). The same through
//! a custom domain once it is active, which must join OpenClaw's `allowedOrigins`. A cross-origin
//! WebSocket from another tenant's host, riding the owner's cookie, is refused.
//!
//! Slow: one OpenClaw container. Chromium's pages are secure contexts only over HTTPS (the Control
//! UI signs its device identity with WebCrypto), so the browser talks to the edge's TLS listener
//! and accepts the local CA's certificates; every host it asks for carries its own SNI, so this
//! also runs the SNI/Host check under a browser that coalesces HTTP/2 connections.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::domains::pro_user;
use crate::openclaw::{openclaw_image, Cleanup};
use crate::support::*;
use crate::webdriver::Browser;

const PW: &str = "correct horse battery staple 9";

/// Records what every WebSocket a page opens does, in `window.__cdWs` (installed before the
/// page's own scripts).
const WS_RECORDER: &str = r#"(() => {
  if (window.__cdWs) return;
  const log = (window.__cdWs = []);
  const Native = window.WebSocket;
  function Recorded(url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    log.push({ t: "new", url: String(url) });
    ws.addEventListener("open", () => log.push({ t: "open" }));
    ws.addEventListener("message", (e) => {
      const entry = { t: "msg" };
      try {
        const f = JSON.parse(e.data);
        Object.assign(entry, { type: f.type, ok: f.ok, event: f.event, error: f.error });
        if (f.payload) Object.assign(entry, { payloadType: f.payload.type, auth: f.payload.auth });
      } catch (_) {
        entry.raw = String(e.data).slice(0, 500);
      }
      log.push(entry);
    });
    ws.addEventListener("close", (e) => log.push({ t: "close", code: e.code, reason: e.reason }));
    return ws;
  }
  Recorded.prototype = Native.prototype;
  for (const k of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Recorded[k] = Native[k];
  window.WebSocket = Recorded;
})();"#;

/// Waits until the page's gateway WebSocket got `hello-ok` (the connect was accepted): its
/// payload. `Err` at once on a refusal (a `res` with `ok:false`, or a 1008 close), or at the end.
async fn wait_for_hello(browser: &Browser, within: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    loop {
        let log = browser
            .script("return JSON.stringify(window.__cdWs || []);")
            .await;
        let log: Vec<Value> =
            serde_json::from_str(log.as_str().unwrap_or("[]")).unwrap_or_default();
        for entry in &log {
            if entry["t"] == "msg" && entry["type"] == "res" {
                if entry["payloadType"] == "hello-ok" {
                    return Ok(entry.clone());
                }
                if entry["ok"] == false {
                    return Err(format!("the gateway refused the Control UI: {entry}"));
                }
            }
            if entry["t"] == "close" && entry["code"] == 1008 {
                return Err(format!("the gateway closed the WebSocket: {entry}"));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no hello-ok within {within:?}; url {}, WebSocket log {log:?}",
                browser.url().await
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `origin` + `/` in the browser and waits until it is back there (after the login handoff).
async fn open_instance(browser: &Browser, origin: &str) {
    browser.goto(&format!("{origin}/")).await;
    wait_at(browser, origin).await;
}

/// Waits until the browser is on a page of `origin`.
async fn wait_at(browser: &Browser, origin: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let url = browser.url().await;
        if url.starts_with(&format!("{origin}/")) {
            return;
        }
        if Instant::now() >= deadline {
            let page = browser.script("return document.body.innerText;").await;
            panic!("never reached {origin}: {url}\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket handshake to `host`'s gateway over TLS with `cookie` and `origin`; the status.
async fn handshake_status(edge: &Edge, host: &str, cookie: &str, origin: &str) -> u16 {
    let stream = crate::tls::connect(edge.tls_addr, host, crate::tls::insecure_config())
        .await
        .expect("TLS handshake");
    let url = format!("wss://{host}:{}/", edge.tls_addr.port());
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_ui_connects_through_a_cookie_session_without_pairing() {
    use clawdeploy_pool::{DockerOptions, DockerRuntime};
    // PostgreSQL: the custom domain's activation is announced on its change broadcast.
    let Some(db) = Db::postgres().await else {
        return;
    };
    // A network of its own: egress rules are per network.
    const NETWORK: &str = "clawdeploy-controlui-test";
    let image = openclaw_image().await;
    DockerRuntime::connect(DockerOptions {
        network: NETWORK.into(),
        publish_loopback: true,
    })
    .await
    .expect("Docker engine (scripts/start-docker.sh)");
    let node = format!("ocui{}", std::process::id());
    let _cleanup = Cleanup(node.clone());
    let edge = EdgeBuilder::new()
        .db(&db)
        .section("runtime", "kind = \"docker\"")
        .section("runtime", "config = \"openclaw\"")
        .section("runtime", &format!("image = \"{image}\""))
        .section("runtime", &format!("docker_network = \"{NETWORK}\""))
        .section("runtime", "publish_loopback = true")
        .section("runtime", "egress_rules = true")
        .section("pool", &format!("node_id = \"{node}\""))
        .section("pool", "min_idle = 1")
        .section("pool", "capacity = 1")
        .section("pool", "ready_timeout_secs = 240")
        .start()
        .await;
    wait_idle(&edge, 1, Duration::from_secs(300)).await;
    let email = "control-ui@example.com";
    let (token, _) = pro_user(&edge, email).await;
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain":"ctlui"})),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    edge.wait_running(&token, Duration::from_secs(120)).await;
    // Another tenant (queued: the pool holds one container) whose host is a route of its own.
    let (mallory, _, _) = edge.register("ctl-evil@example.com", PW).await;
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&mallory),
            Some(json!({"subdomain":"ctlevil"})),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());

    let port = edge.tls_addr.port();
    let host = format!("ctlui.{BASE_DOMAIN}");
    let origin = format!("https://{host}:{port}");
    let browser = Browser::start_https(&edge).await;
    browser.on_every_document(WS_RECORDER).await;

    // The instance host sends the browser to the dashboard's login, and back after it.
    browser.goto(&format!("{origin}/")).await;
    browser.wait_path("/login").await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&format!("https://{APP_DOMAIN}:{port}/login?next=")),
        "{}",
        browser.url().await
    );
    browser.type_into("#email", email).await;
    browser.type_into("#password", PW).await;
    browser.click("#login-submit").await;
    wait_at(&browser, &origin).await;
    let started = Instant::now();
    let hello = wait_for_hello(&browser, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| {
            let log = edge.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{e}\nedge log (last lines, newest first):\n{}",
                tail.join("\n")
            )
        });
    eprintln!(
        "Control UI connected {:?} after landing on {origin}",
        started.elapsed()
    );
    // Auto-approved as the owner, with the owner's scopes and never operator.admin.
    let scopes = hello["auth"]["scopes"].to_string();
    eprintln!("Control UI hello-ok auth: {}", hello["auth"]);
    assert!(scopes.contains("operator.write"), "{hello}");
    assert!(!scopes.contains("operator.admin"), "{hello}");
    browser.screenshot("20-control-ui-subdomain").await;

    // The host's own cookie (HttpOnly, read through WebDriver) on a WebSocket from another
    // tenant's page, or from the dashboard, is refused by the edge; from its own origin it is not.
    let cookies = browser.cookies().await;
    let cookie = cookies
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["name"].as_str().unwrap(),
                c["value"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    assert!(!cookie.is_empty(), "no cookie on {host}");
    for other in [
        format!("https://ctlevil.{BASE_DOMAIN}:{port}"),
        format!("https://{APP_DOMAIN}:{port}"),
    ] {
        assert_eq!(
            handshake_status(&edge, &host, &cookie, &other).await,
            403,
            "{other}"
        );
    }
    assert_eq!(handshake_status(&edge, &host, &cookie, &origin).await, 101);

    // A custom domain. Creation goes through the API; DNS verification and issuance (covered
    // against BIND and Pebble in acme.rs) are skipped: the test marks it active in the store and
    // announces that on the change broadcast, as the certificate manager does when issuance ends.
    let domain = format!("ui-{}.customer.test", std::process::id());
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&token),
            Some(json!({ "hostname": domain })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let Db::Postgres(url) = &db else {
        unreachable!()
    };
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("test database");
        sqlx::query("UPDATE custom_domains SET status = 'active', verified_at = updated_at WHERE hostname = $1")
            .bind(&domain)
            .execute(&mut conn)
            .await
            .expect("activate the domain");
        let change = json!({
            "origin": uuid::Uuid::new_v4().to_string(),
            "change": { "kind": "domain", "hostname": domain },
        });
        sqlx::query("SELECT pg_notify('clawdeploy_changes', $1)")
            .bind(change.to_string())
            .execute(&mut conn)
            .await
            .expect("announce the domain");
        conn.close().await.ok();
    }
    // The node running the instance writes its config again and restarts it.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !edge
        .log_text()
        .contains("custom domain changed: instance config written again")
    {
        assert!(
            Instant::now() < deadline,
            "the instance's config was not written again:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // In the browser, at the custom domain: handed off again (a host has its own cookie), and the
    // Control UI connects from that origin.
    // The instance restarts on the new config; a page opened while it starts is opened again.
    let custom_origin = format!("https://{domain}:{port}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut attempts = 0;
    let hello = loop {
        attempts += 1;
        open_instance(&browser, &custom_origin).await;
        match wait_for_hello(&browser, Duration::from_secs(30)).await {
            Ok(hello) => break hello,
            Err(e) if Instant::now() >= deadline => {
                let config = std::process::Command::new("sh")
                    .args(["-c", &format!("docker ps -q --filter label=clawdeploy.node={node} | head -1 | xargs -r -I{{}} docker logs --tail 60 {{}} 2>&1")])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let log = edge.log_text();
                let domain_lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("custom domain") || l.contains("reload"))
                    .collect();
                panic!(
                    "custom domain: {e}\ninstance config: {config}\n{}",
                    domain_lines.join("\n")
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("Control UI connected at the custom domain (attempts: {attempts})");
    assert!(!hello["auth"]["scopes"]
        .to_string()
        .contains("operator.admin"));
    browser.screenshot("21-control-ui-custom-domain").await;
}
