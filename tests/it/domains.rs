//! Custom domains API (issue #6): who may add one, and every bad hostname refused with a clear
//! error before anything is stored or ordered. The DNS-verified, Pebble-issued path is in
//! `acme.rs`. Squatting (issue #16): a claim blocks nobody until its DNS records prove it, the
//! first proof wins, unproven claims expire.

use std::time::{Duration, Instant};

use serde_json::json;

use clawdeploy_certs::dns::{DnsProvider, Rfc2136};

use crate::instance_access::{edge_with_pool, running_instance};
use crate::support::*;

const PW: &str = "correct horse battery staple 9";

/// A registered user with a verified email on the Pro tier: (access token, user id).
pub async fn pro_user(edge: &Edge, email: &str) -> (String, String) {
    let (token, _, id) = edge.register(email, PW).await;
    let mail = edge.last_mail(email).await;
    let link = find_link(mail["body"].as_str().expect("mail body"));
    assert_eq!(crate::tls::follow_link(edge, &link).await.status, 200);
    set_tier(edge, &id, "pro").await;
    (token, id)
}

/// Sets a user's tier through the operator API.
pub async fn set_tier(edge: &Edge, user_id: &str, tier: &str) {
    let resp = edge
        .admin(
            "PUT",
            &format!("/admin/users/{user_id}/tier"),
            Some(ADMIN_TOKEN),
            Some(&json!({ "tier": tier }).to_string()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn bad_hostnames_are_refused_with_what_to_fix() {
    let edge = EdgeBuilder::new().start().await;
    let add = |token: String, hostname: String| {
        let edge = &edge;
        async move {
            edge.api(
                "POST",
                "/api/domains",
                Some(&token),
                Some(json!({ "hostname": hostname })),
            )
            .await
        }
    };
    // Free tier: refused, with the reason.
    let (free, _, _) = edge.register("free@example.com", PW).await;
    let resp = add(free, "shop.example.com".into()).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.error_code(), "TIER_REQUIRED");
    // No login: 401.
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            None,
            Some(json!({ "hostname": "shop.example.com" })),
        )
        .await;
    assert_eq!(resp.status, 401);

    let (token, _) = pro_user(&edge, "pro@example.com").await;
    let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
    for (hostname, code, mentions) in [
        ("192.0.2.10", "INVALID_HOSTNAME", "IP address"),
        ("[2001:db8::1]", "INVALID_HOSTNAME", "IP address"),
        (BASE_DOMAIN, "RESERVED_HOSTNAME", BASE_DOMAIN),
        ("alice.clawdeploy.test", "RESERVED_HOSTNAME", BASE_DOMAIN),
        (APP_DOMAIN, "RESERVED_HOSTNAME", BASE_DOMAIN),
        ("*.example.com", "WILDCARD_NOT_ALLOWED", "wildcard"),
        (
            "xn--zzzzzzzzzzzzzzzzzzzzzzzzz.com",
            "INVALID_PUNYCODE",
            "punycode",
        ),
        ("xn--abc-.example.com", "INVALID_HOSTNAME", "label"),
        (long.as_str(), "HOSTNAME_TOO_LONG", "at most 253"),
        (
            "shop.example.com:8443",
            "INVALID_HOSTNAME",
            "without scheme, port or path",
        ),
        ("bücher.example", "INVALID_HOSTNAME", "punycode"),
        ("localhost", "INVALID_HOSTNAME", "single label"),
        ("", "INVALID_HOSTNAME", "empty"),
    ] {
        let resp = add(token.clone(), hostname.to_string()).await;
        assert_eq!(resp.status, 422, "{hostname}: {}", resp.text());
        assert_eq!(resp.error_code(), code, "{hostname}: {}", resp.text());
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(mentions), "{hostname}: {message}");
    }
    // A well-formed name still needs an instance to point at.
    let resp = add(token.clone(), "xn--bcher-kva.example".into()).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "NO_INSTANCE");
    // Unknown fields and wrong types are named.
    let resp = edge
        .api(
            "POST",
            "/api/domains",
            Some(&token),
            Some(json!({ "hostname": 5 })),
        )
        .await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    // Nothing was stored, and no certificate exists for any of these names.
    let list = edge.api("GET", "/api/domains", Some(&token), None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["domains"], json!([]));
    let certs = edge
        .admin("GET", "/admin/certificates", Some(ADMIN_TOKEN), None)
        .await
        .json();
    let names: Vec<&str> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![BASE_DOMAIN]);
    // Deleting a domain one does not have is a 404 that says so.
    let resp = edge
        .api(
            "DELETE",
            "/api/domains/shop.example.com",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status, 404);
}

/// The test BIND (scripts/start-bind.sh): its address and a writer for `zone`, as the zone's
/// owner would update it (RFC 2136 + TSIG). `None` when the test command did not start it (see
/// `support::service_missing`).
fn bind_zone(zone: &str) -> Option<(String, Rfc2136)> {
    let Ok(addr) = std::env::var("CLAWDEPLOY_TEST_BIND_ADDR") else {
        crate::support::service_missing("BIND (CLAWDEPLOY_TEST_BIND_ADDR)");
        return None;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} unset"));
    let writer = Rfc2136::new(
        addr.parse().expect("bind addr"),
        zone,
        &var("CLAWDEPLOY_TEST_BIND_KEY_NAME"),
        &var("CLAWDEPLOY_TEST_BIND_SECRET"),
        "hmac-sha256",
    )
    .expect("rfc2136 client");
    Some((addr, writer))
}

/// Adds `hostname` for the token's user; the answer.
async fn add_domain(edge: &Edge, token: &str, hostname: &str) -> Response {
    edge.api(
        "POST",
        "/api/domains",
        Some(token),
        Some(json!({ "hostname": hostname })),
    )
    .await
}

/// The token's user's claim on `hostname` as `GET /api/domains` shows it (null when none).
async fn my_domain(edge: &Edge, token: &str, hostname: &str) -> serde_json::Value {
    let list = edge.api("GET", "/api/domains", Some(token), None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    list.json()["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .find(|d| d["hostname"] == hostname)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Polls the user's claim on `hostname` until `done` (the scheduler checks every second).
async fn wait_my_domain(
    edge: &Edge,
    token: &str,
    hostname: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let domain = my_domain(edge, token, hostname).await;
        if done(&domain) {
            return domain;
        }
        assert!(
            Instant::now() < deadline,
            "{hostname} never got there: {domain}\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Squatting, from the attacker's side: account A adds the victim's domain first and never
/// proves it. Before issue #16 that claim held the name forever (`DOMAIN_TAKEN` for the real
/// owner). Now the real owner adds it anyway with a token of its own, proves it in its DNS
/// (real BIND) and goes active; A's claim can then never verify, says why, and removing it
/// leaves the owner's route and certificate alone. A second squatter, claiming after the owner,
/// does not stop another edge node started later (PostgreSQL) from routing the owner's domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatters_unproven_claim_does_not_stop_the_real_owner_and_can_never_verify() {
    let Some((bind, customer_dns)) = bind_zone("customer.test") else {
        return;
    };
    let Some(Db::Postgres(url)) = Db::postgres().await else {
        return;
    };
    let node = |builder: EdgeBuilder| {
        builder
            .database_url(&url)
            .section("dns", &format!("resolver = \"{bind}\""))
            .section("domains", "check_interval_secs = 1")
    };
    let edge = node(edge_with_pool(false, 0)).start().await;
    let pid = std::process::id();
    let hostname = format!("shop-{pid}.customer.test");

    let (squatter, _) = pro_user(&edge, "squatter@example.com").await;
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&squatter),
            Some(json!({ "subdomain": format!("squat{pid}") })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let resp = add_domain(&edge, &squatter, &hostname).await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let squat_token = resp.json()["domain"]["records"][1]["value"]
        .as_str()
        .expect("squatter's TXT value")
        .to_string();

    // The real owner is not blocked: its own claim, with its own TXT value.
    let (owner, owner_id) = pro_user(&edge, "owner@example.com").await;
    let (owner_host, _) = running_instance(&edge, &owner, &format!("owner{pid}")).await;
    let resp = add_domain(&edge, &owner, &hostname).await;
    assert_eq!(
        resp.status,
        201,
        "an unproven claim blocked the real owner: {}",
        resp.text()
    );
    let records = resp.json()["domain"]["records"].clone();
    let owner_token = records[1]["value"].as_str().expect("TXT value").to_string();
    assert_ne!(owner_token, squat_token);
    assert_eq!(
        records[1]["name"],
        format!("_clawdeploy-challenge.{hostname}")
    );
    // Another squatter races the owner, claiming after it.
    let (late, _) = pro_user(&edge, "late@example.com").await;
    let resp = edge
        .api(
            "POST",
            "/api/instances",
            Some(&late),
            Some(json!({ "subdomain": format!("late{pid}") })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let resp = add_domain(&edge, &late, &hostname).await;
    assert_eq!(resp.status, 201, "{}", resp.text());

    // Only the owner can write the domain's DNS.
    customer_dns
        .add_cname(&hostname, &owner_host)
        .await
        .expect("CNAME");
    let txt_name = format!("_clawdeploy-challenge.{hostname}");
    customer_dns
        .add_txt(&txt_name, &owner_token)
        .await
        .expect("TXT");
    wait_my_domain(&edge, &owner, &hostname, |d| d["status"] == "active").await;
    let resp = edge.get_as(&hostname, "/whoami", &owner).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["headers"]["x-forwarded-user"],
        owner_id.as_str()
    );

    // The squatter's claim is refused for good, saying why.
    let refused = wait_my_domain(&edge, &squatter, &hostname, |d| {
        d["status"] == "failed"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("verified by another account"))
    })
    .await;
    assert!(
        refused["reason"].as_str().unwrap().contains(&hostname),
        "{refused}"
    );
    assert_eq!(refused["verifiedAt"], serde_json::Value::Null, "{refused}");
    let resp = edge
        .api(
            "POST",
            &format!("/api/domains/{hostname}/verify"),
            Some(&squatter),
            None,
        )
        .await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "DOMAIN_TAKEN");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&hostname) && message.contains("verified by another account"),
        "{message}"
    );
    // A third account cannot add a name another account has proven.
    let (third, _) = pro_user(&edge, "third@example.com").await;
    let resp = add_domain(&edge, &third, &hostname).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.error_code(), "DOMAIN_TAKEN");
    assert!(
        resp.text().contains("verified by another account"),
        "{}",
        resp.text()
    );

    // The squatter removing its claim takes nothing from the owner.
    let resp = edge
        .api(
            "DELETE",
            &format!("/api/domains/{hostname}"),
            Some(&squatter),
            None,
        )
        .await;
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert_eq!(
        my_domain(&edge, &owner, &hostname).await["status"],
        "active"
    );
    let resp = edge.get_as(&hostname, "/whoami", &owner).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let stream = crate::tls::connect(
        edge.tls_addr,
        &hostname,
        crate::tls::client_config(&crate::tls::local_ca(&edge), &["http/1.1"]),
    )
    .await
    .expect("the owner's certificate is still served");
    assert_eq!(crate::tls::peer_leaf(&stream).0, vec![hostname.clone()]);

    // A node started now loads the domains from the store: the late squatter's claim, listed
    // after the owner's, must not undo the owner's route there.
    wait_my_domain(&edge, &late, &hostname, |d| d["status"] == "failed").await;
    let second = node(EdgeBuilder::new()).start().await;
    let resp = second.get_as(&hostname, "/whoami", &owner).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["headers"]["x-forwarded-user"],
        owner_id.as_str()
    );

    customer_dns.remove_cname(&hostname, &owner_host).await.ok();
    customer_dns.remove_txt(&txt_name, &owner_token).await.ok();
}

/// Claims never proven are removed `domains.unverified_ttl_secs` after they were added (the
/// claim's creation time is moved back in the store instead of waiting); a younger claim on the
/// same name stays, and the expired account may add the name again with a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_claim_is_removed_once_older_than_the_unverified_ttl() {
    let edge = EdgeBuilder::new()
        .section("domains", "check_interval_secs = 1")
        .section("domains", "unverified_ttl_secs = 3600")
        // A resolver that is not there: no record is ever seen.
        .section("dns", "resolver = \"127.0.0.1:9\"")
        .start()
        .await;
    let hostname = "claimed.example.com";
    let mut tokens = Vec::new();
    for name in ["stale", "recent"] {
        let (token, _) = pro_user(&edge, &format!("{name}@example.com")).await;
        let resp = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({ "subdomain": format!("{name}box") })),
            )
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text());
        let resp = add_domain(&edge, &token, hostname).await;
        assert_eq!(resp.status, 201, "{}", resp.text());
        tokens.push(token);
    }
    let (stale, recent) = (&tokens[0], &tokens[1]);
    let stale_txt = my_domain(&edge, stale, hostname).await["records"][1]["value"].clone();

    // Added two hours ago, and half an hour ago.
    let db = format!(
        "sqlite://{}",
        edge.data_dir().join("clawdeploy.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db)
        .await
        .expect("open the edge's database");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (email, age_ms) in [
        ("stale@example.com", 7_200_000),
        ("recent@example.com", 1_800_000),
    ] {
        let done = sqlx::query(
            "UPDATE custom_domains SET created_at = $1 \
             WHERE user_id = (SELECT id FROM users WHERE email = $2)",
        )
        .bind(now - age_ms)
        .bind(email)
        .execute(&pool)
        .await
        .expect("move the claim back");
        assert_eq!(done.rows_affected(), 1);
    }
    pool.close().await;

    wait_my_domain(&edge, stale, hostname, |d| d.is_null()).await;
    assert_eq!(
        my_domain(&edge, recent, hostname).await["hostname"],
        hostname
    );
    // Gone for good, so the account may start again, with a new token.
    let resp = add_domain(&edge, stale, hostname).await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_ne!(resp.json()["domain"]["records"][1]["value"], stale_txt);

    // The dashboard's Domains page says so.
    let resp = edge
        .api("POST", "/api/auth/browser-session", Some(stale), None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let cookie = resp.header("set-cookie").expect("Set-Cookie").to_string();
    let cookie = cookie.split(';').next().unwrap_or_default();
    let raw = format!(
        "GET /domains HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    let page = try_send(edge.addr, raw.as_bytes()).await.expect("page");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text()
            .contains("a domain whose records are not seen within 1 hour is removed"),
        "{}",
        page.text()
    );
}
