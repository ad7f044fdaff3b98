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
use crate::metering::{scrape, value};
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
    /// `None` when the test command did not start Pebble (see `support::service_missing`).
    pub fn get() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok();
        let Some(dir) = var("CLAWDEPLOY_TEST_PEBBLE_DIR") else {
            crate::support::service_missing("Pebble (CLAWDEPLOY_TEST_PEBBLE_DIR)");
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

    /// An edge ordering from Pebble, writing DNS-01 records to BIND, answering HTTP-01 on
    /// Pebble's port and checking every second.
    pub fn edge(&self, builder: EdgeBuilder, wildcard: bool) -> EdgeBuilder {
        self.edge_with(builder.http_port(self.http_port), wildcard, 10, 1)
    }

    /// An edge ordering from Pebble (its HTTP listener wherever `builder` puts it), whose
    /// scheduler runs every `renew_check_secs` / `check_interval_secs`.
    pub fn edge_with(
        &self,
        builder: EdgeBuilder,
        wildcard: bool,
        renew_check_secs: u64,
        check_interval_secs: u64,
    ) -> EdgeBuilder {
        builder
            .section("tls", "mode = \"acme\"")
            .section(
                "acme",
                &format!("directory_url = \"{}\"", self.directory_url),
            )
            .section("acme", &format!("ca_root_file = \"{}\"", self.api_root))
            .section("acme", &format!("wildcard = {wildcard}"))
            .section("acme", &format!("renew_check_secs = {renew_check_secs}"))
            .section("dns", "provider = \"rfc2136\"")
            .section("dns", &format!("server = \"{}\"", self.bind))
            .section("dns", &format!("zone = \"{BASE_DOMAIN}\""))
            .section("dns", &format!("tsig_key_name = \"{}\"", self.key_name))
            .section("dns", &format!("tsig_secret = \"{}\"", self.secret))
            .section(
                "domains",
                &format!("check_interval_secs = {check_interval_secs}"),
            )
            .section("domains", &format!("http01_port = {}", self.http_port))
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
    edge.renew_base_certificate().await;
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
    // Both orders (first issuance and renewal) are counted, and the served certificate's days
    // to expiry are exported, as the metrics listener shows them.
    let scrape = scrape(edge.metrics_addr).await;
    assert_eq!(
        value(
            &scrape,
            "clawdeploy_acme_orders_total",
            &[("outcome", "success")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "clawdeploy_acme_orders_total",
            &[("outcome", "failure")]
        ),
        0.0
    );
    let expiry = value(
        &scrape,
        "clawdeploy_cert_expiry_days",
        &[("name", BASE_DOMAIN)],
    );
    let expected = days_until(cert["notAfter"].as_i64().unwrap());
    assert!((expiry - expected).abs() < 0.01, "{expiry} vs {expected}");
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

    // An unproven claim holds nothing (squatting, issue #16; the attack is in domains.rs):
    // another account is refused only for its own reasons (here it has no instance), until the
    // owner's records prove the name (DOMAIN_TAKEN below).
    let (other, _) = pro_user(&edge, "other@example.com").await;
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&other),
            Some(json!({ "hostname": hostname })),
        )
        .await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "NO_INSTANCE");

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
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&other),
            Some(json!({ "hostname": hostname })),
        )
        .await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "DOMAIN_TAKEN");

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
    customer.remove_cname(&hostname, &instance_host).await.ok();
}

/// Days from now to a unix-ms time, as the expiry gauge counts them.
fn days_until(ms: i64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (ms - now) as f64 / 86_400_000.0
}

/// Polls `GET /api/domains` until the first domain satisfies `done`; every status seen.
async fn wait_domain(
    edge: &Edge,
    token: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let list = edge
            .api("GET", "/api/domains", Some(token), None)
            .await
            .json();
        let domain = list["domains"][0].clone();
        let status = domain["status"].as_str().unwrap_or_default().to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if done(&domain) {
            return (domain, seen);
        }
        assert!(
            Instant::now() < deadline,
            "domain not there in {within:?}: {domain} (seen {seen:?})\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two edge nodes on one PostgreSQL. The order runs on node A; Pebble's validation (and the
/// platform's own reachability probe before it) can only reach node B's HTTP listener, which
/// answers from the shared store. On the way: `pending_dns` times out into `failed` with what
/// to fix and a retry time, the owner's re-check goes through `verifying`, and both nodes
/// export the certificate's days to expiry; a failed order is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_ordered_on_one_node_is_validated_through_another_after_timing_out_in_dns() {
    let Some(env) = AcmeEnv::get() else { return };
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    // Node B listens on Pebble's HTTP-01 port; its scheduler runs once at start and then not
    // for a day, so it never orders anything in this test.
    let node_b = env
        .edge_with(
            EdgeBuilder::new()
                .database_url(&url)
                .http_port(env.http_port),
            false,
            86_400,
            86_400,
        )
        .start()
        .await;
    // Node A runs the instance and every check; its own HTTP listener is elsewhere.
    let node_a = env
        .edge_with(edge_with_pool(false, 0).database_url(&url), false, 10, 1)
        .section("domains", "pending_dns_timeout_secs = 2")
        .section("domains", "retry_base_secs = 3600")
        .start()
        .await;
    let (token, _) = pro_user(&node_a, "two-nodes@example.com").await;
    // A real HTTPS setup links to https in its mails.
    let mail = node_a.last_mail("two-nodes@example.com").await;
    assert!(
        find_link(mail["body"].as_str().unwrap()).starts_with(&format!("https://{APP_DOMAIN}:")),
        "{mail}"
    );
    let sub = format!("two{}", std::process::id());
    let (instance_host, _) = running_instance(&node_a, &token, &sub).await;
    let hostname = format!("two-{}.customer.test", std::process::id());
    let resp = node_a
        .api(
            "POST",
            "/api/domains",
            Some(&token),
            Some(json!({ "hostname": hostname })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let txt_value = resp.json()["domain"]["records"][1]["value"]
        .as_str()
        .unwrap()
        .to_string();

    // No records within domains.pending_dns_timeout_secs: failed, saying what is missing, how
    // to ask again, and when the platform retries by itself (the backoff).
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (failed, seen) = wait_domain(&node_a, &token, PATIENCE, |d| d["status"] == "failed").await;
    assert_eq!(
        seen.first().map(String::as_str),
        Some("pending_dns"),
        "{seen:?}"
    );
    let reason = failed["reason"].as_str().unwrap();
    for needle in [
        "CNAME",
        instance_host.as_str(),
        txt_value.as_str(),
        &format!("POST /api/domains/{hostname}/verify"),
    ] {
        assert!(reason.contains(needle), "{needle:?} missing from {reason}");
    }
    assert_eq!(failed["failedAttempts"], 1, "{failed}");
    let next = failed["nextCheckAt"].as_i64().expect("a retry time");
    assert!(next >= asked + 3_500_000, "retry too soon: {failed}");
    assert!(
        !std::fs::read_to_string(format!("{}/pebble.log", env.dir))
            .unwrap_or_default()
            .contains(&hostname),
        "Pebble saw an order for an unverified domain"
    );

    // The owner creates the records and asks for a check now (the backoff would wait an hour).
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
    let resp = node_a
        .api(
            "POST",
            &format!("/api/domains/{hostname}/verify"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_eq!(resp.json()["domain"]["status"], "verifying");
    assert_eq!(resp.json()["domain"]["reason"], serde_json::Value::Null);
    let (active, seen) = wait_domain(&node_a, &token, Duration::from_secs(90), |d| {
        assert_ne!(d["status"], "failed", "{d}");
        d["status"] == "active"
    })
    .await;
    eprintln!(
        "ISSUANCE custom domain, two nodes (order on A, HTTP-01 answered by B): re-check to active {} ms",
        started.elapsed().as_millis()
    );
    assert!(!seen.contains(&"pending_dns".to_string()), "{seen:?}");
    assert_eq!(active["failedAttempts"], 0);
    assert_eq!(active["nextCheckAt"], serde_json::Value::Null);
    // A ordered; B never did, but answered the challenge from the store (A's listener is not
    // where Pebble looks).
    assert!(node_a.log_text().contains("certificate issued"));
    let b_log = node_b.log_text();
    assert!(!b_log.contains("certificate issued"), "{b_log}");
    assert!(
        b_log.contains("answered another node's ACME challenge"),
        "{b_log}"
    );
    // Once the order is over, B answers none of the tokens it answered during it, nor a
    // made-up one: nobody gets a key authorization that no open order asked for.
    let answered: Vec<String> = b_log
        .lines()
        .filter(|l| l.contains("answered another node's ACME challenge"))
        .flat_map(|l| {
            l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .filter(|w| w.len() >= 22)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    // Pebble's tokens (43 characters) and the platform's own probe (32).
    assert!(
        !answered.is_empty() && answered.iter().all(|t| t.len() == 43 || t.len() == 32),
        "{answered:?}\n{b_log}"
    );
    for token in answered
        .iter()
        .map(String::as_str)
        .chain(["LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"])
    {
        let resp = node_b
            .get(&hostname, &format!("/.well-known/acme-challenge/{token}"))
            .await;
        assert_ne!(resp.status, 200, "{token}: {}", resp.text());
    }
    // B serves the certificate too (from the store, after the change broadcast).
    wait_for_pebble_certificate(&node_b, &env, &hostname, PATIENCE).await;
    // Challenges do not outlive their order.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM acme_challenges")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
    pool.close().await;

    // The metrics listener of each node: the days to expiry of this certificate; the order
    // outcome on the node that ordered.
    let certs = node_a
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let cert = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == hostname.as_str())
        .expect("the domain's certificate")
        .clone();
    let expected = days_until(cert["notAfter"].as_i64().unwrap());
    for node in [&node_a, &node_b] {
        let scrape = scrape(node.metrics_addr).await;
        let days = value(
            &scrape,
            "clawdeploy_cert_expiry_days",
            &[("name", &hostname)],
        );
        assert!((days - expected).abs() < 0.01, "{days} vs {expected}");
    }
    let scrape_a = scrape(node_a.metrics_addr).await;
    assert_eq!(
        value(
            &scrape_a,
            "clawdeploy_acme_orders_total",
            &[("outcome", "success")]
        ),
        1.0
    );
    // A failed order is counted as one: with node B gone, nothing answers where Pebble looks.
    let mut node_b = node_b;
    node_b.child.kill().await.expect("stop node B");
    let resp = node_a
        .admin(
            "POST",
            &format!("/admin/certificates/{hostname}/renew"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.error_code(), "RENEWAL_FAILED");
    let scrape_a = scrape(node_a.metrics_addr).await;
    assert_eq!(
        value(
            &scrape_a,
            "clawdeploy_acme_orders_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape_a,
            "clawdeploy_acme_orders_total",
            &[("outcome", "success")]
        ),
        1.0
    );
    customer.remove_cname(&hostname, &instance_host).await.ok();
}
