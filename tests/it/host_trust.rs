//! What the platform's own services trust on the host, attacked from the host's side: a process
//! that is not the edge (a tenant's code reaching the host through a platform service, as the LLM
//! meter once allowed) must not be taken for the edge.

use std::net::SocketAddr;

use crate::llm_meter::{public_custom_key, store_custom_base_url, user_with_key};
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
            (
                "POST",
                "/api/auth/login",
                r#"{"email":"a@example.com","password":"wrong password 1"}"#,
            ),
        ] {
            let secret = guess.map_or(String::new(), |g| format!("X-Clawdeploy-Edge: {g}\r\n"));
            let raw = format!(
                "{method} {path} HTTP/1.1\r\nHost: {app}\r\nX-Real-IP: 203.0.113.77\r\n\
                 X-Forwarded-Host: {app}\r\nX-Forwarded-Proto: https\r\n{secret}\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let resp = try_send(control, raw.as_bytes()).await.expect("an answer");
            assert_eq!(
                resp.status,
                403,
                "{method} {path} with {guess:?}: {}",
                resp.text()
            );
            assert_eq!(resp.error_code(), "EDGE_ONLY");
        }
    }
    // Through the edge: served, and a client's own copy of the edge's header is dropped.
    let raw = format!(
        "GET /healthz HTTP/1.1\r\nHost: {app}\r\nX-Clawdeploy-Edge: 0000\r\nConnection: close\r\n\r\n"
    );
    let resp = edge.send(raw.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (token, _, _) = edge
        .register("edge@example.com", "correct horse battery staple 9")
        .await;
    assert!(!token.is_empty());
}

const METER_NETWORK: &str = "clawdeploy-meter-attack-test";

/// Two fixture containers on one instance network: (runtime, [(id, published address, IP on the
/// network)], the host's address on the network).
async fn two_tenants() -> (
    clawdeploy_pool::DockerRuntime,
    Vec<(String, SocketAddr, std::net::IpAddr)>,
    std::net::IpAddr,
) {
    use clawdeploy_pool::{DockerOptions, DockerRuntime, InstanceSpec, Resources, Runtime};
    let runtime = DockerRuntime::connect(DockerOptions {
        network: METER_NETWORK.into(),
        publish_loopback: true,
    })
    .await
    .expect("Docker");
    let mut tenants = Vec::new();
    let mut gateway = None;
    for n in 0..2 {
        let spec = InstanceSpec {
            name: format!("cdtest-meterattack-{}-{n}", std::process::id()),
            image: crate::runtime::fixture_image_name(),
            user: "65534:65534".into(),
            port: 18789,
            resources: Resources {
                memory_mb: 64,
                cpus: 0.5,
                pids: 64,
            },
            labels: std::collections::BTreeMap::from([(
                "clawdeploy.test".to_string(),
                "true".to_string(),
            )]),
            env: vec![],
            files: vec![],
        };
        let created = runtime.create(&spec).await.expect("create");
        runtime.start(&created.id).await.expect("start");
        let published = crate::runtime::wait_ready(&runtime, &created.id).await;
        let endpoint = runtime
            .docker()
            .inspect_container(&created.id, None)
            .await
            .expect("inspect")
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(METER_NETWORK))
            .expect("on the network");
        gateway = endpoint.gateway.and_then(|g| g.parse().ok());
        let ip = endpoint.ip_address.expect("an IP").parse().expect("an IP");
        tenants.push((created.id, published, ip));
    }
    (runtime, tenants, gateway.expect("the network's gateway"))
}

/// Tenant A's code, running in A's container, asks the LLM meter (on the host's address on the
/// instance network, where every gateway trusts its proxy) to call tenant B's gateway as its
/// "custom provider", naming B's owner in `X-Forwarded-User`. Before the fix the meter took
/// `http://x@<B>:18789` for a public host, connected from the trusted address and passed A's
/// identity headers on: B answered as to its owner. Now the stored URL is refused, and even a
/// private address the operator allowed is not called through the instance network; B sees
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_reach_another_tenant_through_the_llm_meter() {
    use clawdeploy_pool::Runtime;
    let (runtime, tenants, gateway) = two_tenants().await;
    let (a, b) = (&tenants[0], &tenants[1]);
    let meter = SocketAddr::new(gateway, free_port());
    // Even B's own address, allowed by the operator, is never called through the instance network.
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", &format!("allow_private_custom = [\"{}\"]", b.2))
        .start()
        .await;
    let (_, _, instance_token) =
        user_with_key(&edge, "tenanta", "custom", public_custom_key()).await;
    let victim = "00000000-0000-4000-8000-00000000b0b0";
    let b_stats = || async {
        try_send(b.1, get_request("i", "/stats").as_bytes())
            .await
            .expect("B's stats")
            .json()["requests"]
            .as_u64()
            .unwrap()
    };

    for (stored, code) in [
        (format!("http://x@{}:18789", b.2), "BAD_CUSTOM_ENDPOINT"),
        (format!("http://{}:18789", b.2), "PRIVATE_UPSTREAM"),
    ] {
        store_custom_base_url(&edge, &stored).await;
        let before = b_stats().await;
        let fetch = format!(
            "/fetch?target={meter}&path=/custom/whoami&auth={instance_token}&user={victim}"
        );
        // The meter's listener is a background service: retry while it is not up yet.
        let deadline = std::time::Instant::now() + PATIENCE;
        let answer = loop {
            let answer = try_send(a.1, get_request("i", &fetch).as_bytes())
                .await
                .expect("A's fetch hook")
                .json();
            if answer["error"].is_null() || std::time::Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(answer["status"], 403, "{stored}: {answer}");
        let body = answer["body"].as_str().unwrap_or_default();
        assert!(body.contains(code), "{stored}: {body}");
        assert!(!body.contains(victim), "B answered A: {body}");
        // Only the stats call itself reached B.
        assert_eq!(b_stats().await, before + 1, "{stored}: the meter reached B");
    }
    for (id, _, _) in &tenants {
        runtime.remove(id).await.unwrap();
    }
}
