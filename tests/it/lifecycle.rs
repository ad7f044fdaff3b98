//! The process as operators run it: config checking, environment overrides, graceful shutdown.

use std::process::Command;

use crate::support::*;

fn clawdeploy(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clawdeploy"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run clawdeploy")
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nbase_domain = \"example.com\"\nadmin_token = \"very-secret-admin-token\"\n",
    )
    .unwrap();
    let out = clawdeploy(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("CLAWDEPLOY_SERVER__HTTP_LISTEN", "0.0.0.0:80")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("base_domain = \"example.com\""), "{shown}");
    assert!(shown.contains("http_listen = \"0.0.0.0:80\""), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");

    let embedded = clawdeploy(&["check-config"], &[]);
    assert!(embedded.status.success());
    assert!(String::from_utf8(embedded.stdout)
        .unwrap()
        .contains("http_listen = \"127.0.0.1:8080\""));
}

#[test]
fn check_config_names_each_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nhttp_listen = \"everywhere\"\n\n[[routes]]\nhost = \"s.example.org\"\nupstream = \"db:5432\"\n").unwrap();
    let out = clawdeploy(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("CLAWDEPLOY_SERVER__GRACE_PERIOD_SECS", "soon")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("CLAWDEPLOY_SERVER__GRACE_PERIOD_SECS") && err.contains("whole number"),
        "{err}"
    );

    let out = clawdeploy(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("server.http_listen = \"everywhere\""), "{err}");
    assert!(err.contains("routes[0].upstream = \"db:5432\""), "{err}");
    assert!(err.contains("IP address and port"), "{err}");

    let missing = clawdeploy(
        &["check-config", "--config", "/nonexistent/clawdeploy.toml"],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8(missing.stderr)
        .unwrap()
        .contains("/nonexistent/clawdeploy.toml"));
}

#[tokio::test]
async fn serve_refuses_an_invalid_config_at_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_clawdeploy"))
        .args(["serve"])
        .env("CLAWDEPLOY_SERVER__BASE_DOMAIN", "Not A Domain")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("server.base_domain"));
}

#[tokio::test]
async fn environment_overrides_reach_the_running_server() {
    let edge = EdgeBuilder::new()
        .env(
            "CLAWDEPLOY_SERVER__ADMIN_TOKEN",
            "token-from-the-environment",
        )
        .start()
        .await;
    assert_eq!(
        edge.admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
            .await
            .status,
        403
    );
    assert_eq!(
        edge.admin(
            "GET",
            "/admin/routes",
            Some("token-from-the-environment"),
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let a = HttpUpstream::start("a").await;
    let mut edge = EdgeBuilder::new()
        .route("a.example.org", a.addr)
        .start()
        .await;
    let addr = edge.addr;
    let in_flight = tokio::spawn(async move {
        try_send(addr, get_request("a.example.org", "/hold").as_bytes()).await
    });
    a.wait_held().await;

    edge.signal(libc::SIGTERM);
    // While draining, the edge still answers and says it is not ready for new work (the signal
    // is handled asynchronously, so poll until the drain has begun).
    let deadline = std::time::Instant::now() + PATIENCE;
    let ready = loop {
        let ready = edge.get(APP_DOMAIN, "/readyz").await;
        if ready.status == 503 || std::time::Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert!(
        edge.child.try_wait().unwrap().is_none(),
        "exited while a request was in flight"
    );

    a.release();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(
        (resp.status, resp.json()["path"].as_str()),
        (200, Some("/hold"))
    );
    let status = tokio::time::timeout(PATIENCE, edge.child.wait())
        .await
        .expect("exited after draining")
        .unwrap();
    assert!(status.success(), "{status}\n{}", edge.log_text());
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_at_once() {
    let mut edge = EdgeBuilder::new()
        .server("grace_period_secs = 600")
        .start()
        .await;
    edge.signal(libc::SIGTERM);
    let status = tokio::time::timeout(PATIENCE, edge.child.wait())
        .await
        .expect("exited promptly")
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn json_logs_carry_one_access_line_per_request() {
    let edge = EdgeBuilder::new()
        .server("log_format = \"json\"")
        .start()
        .await;
    let resp = edge.send(format!("GET /healthz?token=secret HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nX-Request-Id: trace-me\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(resp.status, 200);
    let deadline = std::time::Instant::now() + PATIENCE;
    let line = loop {
        let log = edge.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("trace-me")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["target"], "access");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["path"], "/healthz");
    assert!(
        !line.contains("secret"),
        "query strings are not logged: {line}"
    );
}

/// `clawdeploy serve` on its embedded default (no config file) in `dir`, listening at `http_listen`,
/// with no instances and free ports for its other listeners (tests run in parallel).
fn serve_embedded(dir: &std::path::Path, http_listen: &str) -> tokio::process::Command {
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_clawdeploy"));
    serve
        .arg("serve")
        .current_dir(dir)
        .env("CLAWDEPLOY_SERVER__HTTP_LISTEN", http_listen)
        .env("CLAWDEPLOY_RUNTIME__KIND", "none")
        .env(
            "CLAWDEPLOY_TLS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "CLAWDEPLOY_METRICS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CLAWDEPLOY_LLM__PORT", "0")
        .kill_on_drop(true);
    serve
}

/// A listener address another process holds stops `serve` at once with the key to change, instead
/// of a "serving" line followed by Pingora retrying the bind forever.
#[tokio::test]
async fn serve_on_a_busy_port_fails_fast_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(PATIENCE, serve_embedded(dir.path(), &addr).output())
        .await
        .expect("serve kept running on a busy port")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("server.http_listen = {addr}"))
            && err.contains("already in use")
            && err.contains("CLAWDEPLOY_SERVER__HTTP_LISTEN"),
        "{err}"
    );
    assert!(!err.contains("clawdeploy serving"), "{err}");
}

/// The first steps of docs/operations.md (an operator route, a signup and an instance through the
/// API), run as written with bash and curl against a fresh edge on its embedded default: only the
/// ports are moved, so parallel tests do not collide.
#[tokio::test]
async fn the_documented_first_steps_run_as_written() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let running = &doc[doc.find("## Running it").unwrap()..doc.find("## Metrics").unwrap()];
    let blocks: Vec<&str> = running
        .split("```sh\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    assert_eq!(blocks.len(), 2, "the two examples of 'Running it'");
    let (port, upstream_port) = (free_port(), free_port());
    let script = blocks
        .concat()
        .replace(":8080", &format!(":{port}"))
        .replace("9001", &upstream_port.to_string());

    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
    let _edge = serve_embedded(dir.path(), &format!("127.0.0.1:{port}"))
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + PATIENCE;
    while try_send(addr, get_request("app.localhost", "/healthz").as_bytes())
        .await
        .map_or(true, |r| r.status != 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge never answered: {}",
            std::fs::read_to_string(dir.path().join("edge.log")).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run).await;
    // The example's web server runs in the background: stopped here, whatever happened.
    let _ = std::process::Command::new("pkill")
        .args(["-f", &format!("http.server {upstream_port}")])
        .status();
    let out = out.expect("the first steps hung").unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{script}\n{stdout}\n{stderr}");
    assert!(stdout.contains("\"upstream\":\"127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("proxied"), "{stdout}");
    assert!(
        stdout.contains(&format!("you.localhost:{port}")),
        "the instance's URL: {stdout}"
    );
    assert!(stdout.contains("you@example.com"), "the outbox: {stdout}");
}
