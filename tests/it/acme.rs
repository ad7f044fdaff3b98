//! ACME against a real CA: Debian's Pebble, resolving through a real BIND9 (both started by
//! scripts/test.sh, see scripts/start-pebble.sh and start-bind.sh). Pebble validates HTTP-01 on
//! one fixed port, so these tests run one at a time (nextest test group `acme`, and a file lock
//! for plain `cargo test`) with their edge's HTTP listener on that port.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use clawdeploy_certs::dns::{DnsProvider, Resolver, Rfc2136};

use crate::domains::pro_user;
use crate::instance_access::{edge_with_pool, fixture_requests, running_instance};
use crate::support::*;
use crate::tls::{client_config, connect, https_get, insecure_config, next_tls_message, peer_leaf};

/// Where the test Pebble and BIND are.
pub struct AcmeEnv {
    pub dir: String,
    pub directory_url: String,
    pub api_root: String,
    /// Root of the certificates Pebble issues (changes at each Pebble start).
    pub issuer_root: String,
    pub http_port: u16,
    pub bind: String,
    pub key_name: String,
    pub secret: String,
    _lock: std::fs::File,
}

impl AcmeEnv {
    /// `None` (the test is skipped, saying so) when the test command did not start Pebble.
    pub fn get() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok();
        let Some(dir) = var("CLAWDEPLOY_TEST_PEBBLE_DIR") else {
            eprintln!("CLAWDEPLOY_TEST_PEBBLE_DIR unset (run scripts/test.sh): ACME test skipped");
            return None;
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("clawdeploy-acme-tests.lock"))
            .expect("lock file");
        fs2::FileExt::lock_exclusive(&lock).expect("ACME test lock");
        Some(Self {
            dir: dir.clone(),
            directory_url: var("CLAWDEPLOY_TEST_PEBBLE_URL").expect("pebble url"),
            api_root: format!("{dir}/ca.pem"),
            issuer_root: std::fs::read_to_string(format!("{dir}/issuer-root.pem"))
                .expect("Pebble's issuing root"),
            http_port: var("CLAWDEPLOY_TEST_PEBBLE_HTTP_PORT")
                .expect("pebble http port")
                .parse()
                .expect("port"),
            bind: var("CLAWDEPLOY_TEST_BIND_ADDR").expect("bind addr"),
            key_name: var("CLAWDEPLOY_TEST_BIND_KEY_NAME").expect("bind key name"),
            secret: var("CLAWDEPLOY_TEST_BIND_SECRET").expect("bind secret"),
            _lock: lock,
        })
    }

    /// An edge ordering from Pebble, writing DNS-01 records to BIND.
    pub fn edge(&self, builder: EdgeBuilder, wildcard: bool) -> EdgeBuilder {
        builder
            .http_port(self.http_port)
            .section("tls", "mode = \"acme\"")
            .section(
                "acme",
                &format!("directory_url = \"{}\"", self.directory_url),
            )
            .section("acme", &format!("ca_root_file = \"{}\"", self.api_root))
            .section("acme", &format!("wildcard = {wildcard}"))
            .section("acme", "renew_check_secs = 10")
            .section("dns", "provider = \"rfc2136\"")
            .section("dns", &format!("server = \"{}\"", self.bind))
            .section("dns", &format!("zone = \"{BASE_DOMAIN}\""))
            .section("dns", &format!("tsig_key_name = \"{}\"", self.key_name))
            .section("dns", &format!("tsig_secret = \"{}\"", self.secret))
            .section("domains", "check_interval_secs = 1")
    }

    /// The DNS of a zone in BIND, written as its owner would (RFC 2136 + TSIG).
    pub fn zone(&self, zone: &str) -> Rfc2136 {
        Rfc2136::new(
            self.bind.parse().expect("bind addr"),
            zone,
            &self.key_name,
            &self.secret,
            "hmac-sha256",
        )
        .expect("rfc2136 client")
    }

    pub fn resolver(&self) -> Resolver {
        Resolver::new(self.bind.parse().expect("bind addr"))
    }
}

/// Polls until `sni` is served with a certificate chaining to Pebble's root; the elapsed time.
async fn wait_for_pebble_certificate(
    edge: &Edge,
    env: &AcmeEnv,
    sni: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(stream) = connect(
            edge.tls_addr,
            sni,
            client_config(&env.issuer_root, &["http/1.1"]),
        )
        .await
        {
            let (_, _, issuer) = peer_leaf(&stream);
            assert!(issuer.contains("Pebble"), "{issuer}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no Pebble certificate for {sni} in {within:?}:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn wildcard_and_apex_are_issued_by_dns01_through_bind_and_stored_sealed() {
    let Some(env) = AcmeEnv::get() else { return };
    let echo = WsUpstream::start().await;
    let started = Instant::now();
    let edge = env
        .edge(
            EdgeBuilder::new().route("echo.clawdeploy.test", echo.addr),
            true,
        )
        .start()
        .await;
    let elapsed =
        wait_for_pebble_certificate(&edge, &env, APP_DOMAIN, Duration::from_secs(90)).await;
    eprintln!(
        "ISSUANCE wildcard+apex by DNS-01 (Pebble + BIND): {} ms after the edge answered, {} ms from spawn",
        elapsed.as_millis(),
        started.elapsed().as_millis()
    );
    let stream = connect(
        edge.tls_addr,
        "anyone.clawdeploy.test",
        client_config(&env.issuer_root, &[]),
    )
    .await
    .expect("any subdomain verifies");
    let (names, _, _) = peer_leaf(&stream);
    assert!(
        names.contains(&format!("*.{BASE_DOMAIN}")) && names.contains(&BASE_DOMAIN.to_string()),
        "{names:?}"
    );
    connect(
        edge.tls_addr,
        BASE_DOMAIN,
        client_config(&env.issuer_root, &[]),
    )
    .await
    .expect("the apex verifies");
    let resp = https_get(
        edge.tls_addr,
        APP_DOMAIN,
        APP_DOMAIN,
        "/healthz",
        client_config(&env.issuer_root, &[]),
    )
    .await;
    assert_eq!(resp.status, 200);
    // The DNS-01 records are gone once the order is done.
    let left = env
        .resolver()
        .txt(&format!("_acme-challenge.{BASE_DOMAIN}"))
        .await
        .expect("lookup");
    assert!(left.is_empty(), "{left:?}");
    // The private key is sealed in the store, the chain is not secret.
    let db = format!(
        "sqlite://{}",
        edge.data_dir().join("clawdeploy.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db)
        .await
        .expect("open the edge's database");
    let (chain, sealed): (String, String) =
        sqlx::query_as("SELECT chain_pem, key_sealed FROM certificates WHERE name = $1")
            .bind(BASE_DOMAIN)
            .fetch_one(&pool)
            .await
            .expect("stored certificate");
    assert!(chain.contains("BEGIN CERTIFICATE"));
    assert!(
        !sealed.contains("PRIVATE KEY") && !sealed.contains("BEGIN"),
        "key stored in clear"
    );
    let account: String = sqlx::query_scalar("SELECT credentials_sealed FROM acme_accounts")
        .fetch_one(&pool)
        .await
        .expect("stored account");
    assert!(
        !account.contains("key_pkcs8"),
        "account key stored in clear"
    );
    pool.close().await;

    // A renewal (a new DNS-01 order) swaps the served certificate while a WebSocket opened
    // before it, under the old certificate, stays open.
    let stream = connect(
        edge.tls_addr,
        "echo.clawdeploy.test",
        client_config(&env.issuer_root, &["http/1.1"]),
    )
    .await
    .expect("handshake");
    let before = peer_leaf(&stream).1;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://echo.clawdeploy.test/", stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(
        next_tls_message(&mut ws).await,
        Message::Text("before".into())
    );
    let renew_started = Instant::now();
    let resp = edge
        .admin(
            "POST",
            &format!("/admin/certificates/{BASE_DOMAIN}/renew"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    eprintln!(
        "ISSUANCE renewal of wildcard+apex by DNS-01: {} ms",
        renew_started.elapsed().as_millis()
    );
    let after = connect(
        edge.tls_addr,
        "echo.clawdeploy.test",
        client_config(&env.issuer_root, &[]),
    )
    .await
    .expect("handshake after renewal");
    assert_ne!(before, peer_leaf(&after).1, "a new certificate is served");
    ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(
        next_tls_message(&mut ws).await,
        Message::Text("after".into())
    );
    let certs = edge
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let cert = &certs["certificates"][0];
    assert_eq!(cert["issuer"], "acme");
    // No ARI at Pebble 2.4: renewal at two thirds of the lifetime.
    let (nb, na, at) = (
        cert["notBefore"].as_i64().unwrap(),
        cert["notAfter"].as_i64().unwrap(),
        cert["renewAt"].as_i64().unwrap(),
    );
    assert_eq!(at, nb + (na - nb) * 2 / 3, "{cert}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_domain_is_verified_in_dns_issued_by_http01_and_routed_to_its_instance() {
    let Some(env) = AcmeEnv::get() else { return };
    let edge = env.edge(edge_with_pool(false, 0), false).start().await;
    let (token, owner_id) = pro_user(&edge, "owner@example.com").await;
    let sub = format!("shop{}", std::process::id());
    let (instance_host, upstream) = running_instance(&edge, &token, &sub).await;
    let hostname = format!("www-{}.customer.test", std::process::id());

    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&token),
            Some(json!({ "hostname": hostname.to_uppercase() })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let domain = resp.json()["domain"].clone();
    assert_eq!(domain["hostname"], hostname.as_str());
    assert_eq!(domain["status"], "pending_dns");
    let records = domain["records"].as_array().unwrap().clone();
    assert_eq!(
        records[0],
        json!({ "type": "CNAME", "name": hostname, "value": instance_host })
    );
    assert_eq!(records[1]["type"], "TXT");
    assert_eq!(
        records[1]["name"],
        format!("_clawdeploy-challenge.{hostname}")
    );
    let txt_value = records[1]["value"].as_str().unwrap().to_string();

    // Someone else cannot take the same name.
    let (other, _) = pro_user(&edge, "other@example.com").await;
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&other),
            Some(json!({ "hostname": hostname })),
        )
        .await;
    assert_eq!(resp.status, 409);
    assert_eq!(resp.error_code(), "DOMAIN_TAKEN");

    // Without its DNS records the domain stays pending, says what is missing, and no
    // certificate is ever ordered for it.
    let deadline = Instant::now() + PATIENCE;
    let reason = loop {
        let list = edge
            .api("GET", "/api/domains", Some(&token), None)
            .await
            .json();
        if let Some(reason) = list["domains"][0]["reason"].as_str() {
            break reason.to_string();
        }
        assert!(Instant::now() < deadline, "no reason shown: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("CNAME") && reason.contains(&txt_value),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // three check intervals, nothing may happen
    let list = edge
        .api("GET", "/api/domains", Some(&token), None)
        .await
        .json();
    assert_eq!(list["domains"][0]["status"], "pending_dns");
    assert!(
        !std::fs::read_to_string(format!("{}/pebble.log", env.dir))
            .unwrap_or_default()
            .contains(&hostname),
        "Pebble saw an order for an unverified domain"
    );
    let certs = edge
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    assert!(!certs.to_string().contains(&hostname), "{certs}");

    // The platform's own name resolves (its wildcard A in production); then the customer
    // creates the records in their DNS (BIND).
    env.zone(BASE_DOMAIN)
        .add_a(&instance_host, std::net::Ipv4Addr::LOCALHOST)
        .await
        .expect("A");
    let customer = env.zone("customer.test");
    customer
        .add_cname(&hostname, &instance_host)
        .await
        .expect("CNAME");
    customer
        .add_txt(&format!("_clawdeploy-challenge.{hostname}"), &txt_value)
        .await
        .expect("TXT");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let list = edge
            .api("GET", "/api/domains", Some(&token), None)
            .await
            .json();
        let status = list["domains"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status == "active" {
            break;
        }
        assert_ne!(status, "failed", "{list}\n{}", edge.log_text());
        assert!(
            Instant::now() < deadline,
            "never active: {list}\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "ISSUANCE custom domain by HTTP-01 (Pebble), DNS records created to active: {} ms",
        started.elapsed().as_millis()
    );

    // Served under its own name with a Pebble certificate, routed to the owner's instance.
    let stream = connect(
        edge.tls_addr,
        &hostname,
        client_config(&env.issuer_root, &["http/1.1"]),
    )
    .await
    .expect("the custom domain verifies");
    assert_eq!(peer_leaf(&stream).0, vec![hostname.clone()]);
    drop(stream);
    let before = fixture_requests(upstream).await;
    let mut stream = connect(
        edge.tls_addr,
        &hostname,
        client_config(&env.issuer_root, &["http/1.1"]),
    )
    .await
    .expect("handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET /whoami HTTP/1.1\r\nHost: {hostname}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    let resp = parse_response(&bytes).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = &resp.json()["headers"];
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["x-forwarded-host"], hostname.as_str(), "{seen}");
    assert_eq!(seen["x-forwarded-user"], owner_id.as_str(), "{seen}");
    assert!(fixture_requests(upstream).await > before);
    // Only the owner: another user's token is refused on the custom domain too.
    let mut stream = connect(
        edge.tls_addr,
        &hostname,
        client_config(&env.issuer_root, &[]),
    )
    .await
    .unwrap();
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {hostname}\r\nAuthorization: Bearer {other}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    assert_eq!(parse_response(&bytes).unwrap().status, 403);

    // Delete: route and certificate are gone; the name gets the fallback and a 404.
    let resp = edge
        .api(
            "DELETE",
            &format!("/api/domains/{hostname}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert!(connect(
        edge.tls_addr,
        &hostname,
        client_config(&env.issuer_root, &[])
    )
    .await
    .is_err());
    let resp = https_get(edge.tls_addr, &hostname, &hostname, "/", insecure_config()).await;
    assert_eq!(resp.status, 404);
    customer
        .delete_rrset(&hostname, hickory_rtype_cname())
        .await
        .ok();
}

fn hickory_rtype_cname() -> clawdeploy_certs::dns::RecordType {
    clawdeploy_certs::dns::RecordType::CNAME
}
