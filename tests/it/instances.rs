//! The instance API through the real edge, on SQLite and on PostgreSQL: subdomains, one instance
//! per user, the route inserted at once, settings, restart and delete, and routes loaded at start.

use serde_json::json;

use crate::both_dbs;
use crate::support::*;

const PW: &str = "securePassword123";

both_dbs!(
    create_with_requested_subdomain_routes_at_once,
    subdomain_rules_and_conflicts,
    generated_subdomain_and_one_instance_per_user,
    patch_restart_and_delete,
);

async fn create_with_requested_subdomain_routes_at_once(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, _) = edge.register("john@example.com", PW).await;
    assert_eq!(
        edge.api("GET", "/api/instances/me", Some(&token), None)
            .await
            .status,
        404
    );
    let resp = edge
        .api("POST", "/api/instances", Some(&token), Some(json!({ "subdomain": "John", "apiKeys": { "openai": "sk-live-abcdefghijklmnop1234" } })))
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let inst = &resp.json()["instance"];
    assert_eq!(
        inst["subdomain"], "john",
        "used as given (lower case) when free"
    );
    assert_eq!(inst["status"], "provisioning");
    let port = edge.addr.port();
    assert_eq!(inst["url"], format!("http://john.{BASE_DOMAIN}:{port}"));
    assert_eq!(
        inst["gatewayUrl"],
        format!("ws://john.{BASE_DOMAIN}:{port}/ws")
    );
    assert!(resp.json()["pending"].as_str().unwrap().contains("runtime"));
    assert!(!resp.text().contains("abcdefghijklmnop1234"));

    // The route exists at once and answers 503 with Retry-After until a container runs.
    // Instance hosts are private: nothing without the owner's token.
    assert_eq!(
        edge.get(&format!("john.{BASE_DOMAIN}"), "/").await.status,
        401
    );
    let routed = edge
        .get_as(&format!("john.{BASE_DOMAIN}"), "/", &token)
        .await;
    assert_eq!(routed.status, 503, "{}", routed.text());
    assert!(routed.header("retry-after").is_some());
    let routes = edge
        .admin("GET", "/admin/routes", Some(ADMIN_TOKEN), None)
        .await;
    let entry = routes.json()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == format!("john.{BASE_DOMAIN}"))
        .cloned()
        .expect("instance route");
    assert_eq!(entry["kind"], "instance");
    assert_eq!(entry["state"], "provisioning");
    assert_eq!(entry["instanceId"], inst["id"]);

    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.status, 200);
    let me = me.json();
    assert_eq!(me["instance"]["id"], inst["id"]);
    assert_eq!(me["instance"]["usage"]["messagesThisMonth"], 0);
    assert_eq!(me["instance"]["usage"]["tokensThisMonth"], 0);
    assert_eq!(me["instance"]["apiKeys"][0]["masked"], "sk-...1234");
}

async fn subdomain_rules_and_conflicts(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (a, _, _) = edge.register("a@example.com", PW).await;
    let (b, _, _) = edge.register("b@example.com", PW).await;
    for (sub, code) in [
        ("ab", "INVALID_SUBDOMAIN"),
        ("-abc", "INVALID_SUBDOMAIN"),
        ("abc-", "INVALID_SUBDOMAIN"),
        ("a_b_c", "INVALID_SUBDOMAIN"),
        ("a.b.c", "INVALID_SUBDOMAIN"),
        (&"x".repeat(64), "INVALID_SUBDOMAIN"),
        ("admin", "SUBDOMAIN_RESERVED"),
        ("App", "SUBDOMAIN_RESERVED"),
        ("www", "SUBDOMAIN_RESERVED"),
        ("mail", "SUBDOMAIN_RESERVED"),
        ("api", "SUBDOMAIN_RESERVED"),
    ] {
        let resp = edge
            .api(
                "POST",
                "/api/instances",
                Some(&a),
                Some(json!({ "subdomain": sub })),
            )
            .await;
        assert_eq!(resp.status, 422, "{sub}: {}", resp.text());
        assert_eq!(resp.error_code(), code, "{sub}");
        assert_eq!(resp.json()["error"]["field"], "subdomain");
    }
    let bad_key = edge
        .api(
            "POST",
            "/api/instances",
            Some(&a),
            Some(json!({ "apiKeys": { "cohere": "abcdefghijkl" } })),
        )
        .await;
    assert_eq!(bad_key.status, 422);
    assert_eq!(bad_key.json()["error"]["field"], "apiKeys.cohere");

    let mine = edge
        .api(
            "POST",
            "/api/instances",
            Some(&a),
            Some(json!({ "subdomain": "taken" })),
        )
        .await;
    assert_eq!(mine.status, 201, "{}", mine.text());
    let dup = edge
        .api(
            "POST",
            "/api/instances",
            Some(&b),
            Some(json!({ "subdomain": "TAKEN" })),
        )
        .await;
    assert_eq!(dup.status, 409, "case-insensitive: {}", dup.text());
    assert_eq!(dup.error_code(), "SUBDOMAIN_TAKEN");
    let suggestion = dup.json()["error"]["suggestion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        suggestion.starts_with("taken-") && suggestion.len() == "taken-".len() + 4,
        "{suggestion}"
    );
    assert!(dup.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&suggestion));
    let taken_suggestion = edge
        .api(
            "POST",
            "/api/instances",
            Some(&b),
            Some(json!({ "subdomain": suggestion })),
        )
        .await;
    assert_eq!(
        taken_suggestion.status,
        201,
        "the suggestion was free: {}",
        taken_suggestion.text()
    );
}

async fn generated_subdomain_and_one_instance_per_user(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, _) = edge.register("gen@example.com", PW).await;
    let resp = edge
        .api("POST", "/api/instances", Some(&token), Some(json!({})))
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let sub = resp.json()["instance"]["subdomain"]
        .as_str()
        .unwrap()
        .to_string();
    // The registered name is "Test User": <name>-<4 hex>.
    let (name, hex) = sub.rsplit_once('-').unwrap();
    assert_eq!(name, "test-user");
    assert!(
        hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sub}"
    );
    let second = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": "second" })),
        )
        .await;
    assert_eq!(second.status, 409);
    assert_eq!(second.error_code(), "INSTANCE_EXISTS");
    assert_eq!(
        edge.api("POST", "/api/instances", None, Some(json!({})))
            .await
            .status,
        401
    );
}

async fn patch_restart_and_delete(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, _) = edge.register("patch@example.com", PW).await;
    assert_eq!(
        edge.api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({ "timezone": "UTC" }))
        )
        .await
        .status,
        404
    );
    edge.api(
        "POST",
        "/api/instances",
        Some(&token),
        Some(json!({ "subdomain": "patchme" })),
    )
    .await;

    let keys = edge
        .api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({ "apiKeys": { "anthropic": "sk-ant-api03-secretsecret9876" } })),
        )
        .await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    assert_eq!(keys.json()["restartRequired"], false);
    assert!(!keys.text().contains("secretsecret9876"));
    let soul = edge
        .api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({ "soulMd": "# Be kind", "timezone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(soul.status, 200);
    assert_eq!(soul.json()["restartRequired"], true);
    assert!(soul.json()["message"]
        .as_str()
        .unwrap()
        .contains("restart required"));
    assert_eq!(soul.json()["instance"]["soulMd"], "# Be kind");
    assert_eq!(soul.json()["instance"]["timezone"], "Europe/Berlin");
    let bad_tz = edge
        .api(
            "PATCH",
            "/api/instances/me",
            Some(&token),
            Some(json!({ "timezone": "not a zone" })),
        )
        .await;
    assert_eq!(bad_tz.status, 422);
    assert_eq!(bad_tz.json()["error"]["field"], "timezone");
    let empty = edge
        .api("PATCH", "/api/instances/me", Some(&token), Some(json!({})))
        .await;
    assert_eq!(empty.status, 422);

    let restart = edge
        .api("POST", "/api/instances/me/restart", Some(&token), None)
        .await;
    assert_eq!(restart.status, 202, "{}", restart.text());
    assert!(restart.json()["pending"].is_string());

    // Deleting cancels: stopped, kept for the grace period, restorable.
    let del = edge
        .api("DELETE", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(del.json()["scheduled"], true);
    assert!(del.json()["deletionAt"].is_string());
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.json()["instance"]["status"], "deleting");
    let host = format!("patchme.{BASE_DOMAIN}");
    let deleting = edge.get_as(&host, "/", &token).await;
    assert_eq!(
        (deleting.status, deleting.error_code().as_str()),
        (503, "INSTANCE_DELETING")
    );
    // Another instance is refused meanwhile; restoring brings this one back.
    let again = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({ "subdomain": "other" })),
        )
        .await;
    assert_eq!(again.status, 409);
    let restored = edge
        .api("POST", "/api/instances/me/restore", Some(&token), None)
        .await;
    assert_eq!(restored.status, 202, "{}", restored.text());
    let twice = edge
        .api("POST", "/api/instances/me/restore", Some(&token), None)
        .await;
    assert_eq!(
        (twice.status, twice.error_code().as_str()),
        (409, "NOT_DELETING")
    );
}

/// `serve` loads the route table from the instances table at start (and migrations are idempotent).
#[tokio::test]
async fn routes_are_loaded_from_the_store_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let token;
    {
        let edge = EdgeBuilder::new().database_url(&url).start().await;
        token = edge.register("persist@example.com", PW).await.0;
        let resp = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({ "subdomain": "persist" })),
            )
            .await;
        assert_eq!(resp.status, 201);
    }
    let edge = EdgeBuilder::new().database_url(&url).start().await;
    let routed = edge
        .get_as(&format!("persist.{BASE_DOMAIN}"), "/", &token)
        .await;
    assert_eq!(
        routed.status,
        503,
        "route loaded at start: {}",
        routed.text()
    );
    // Same JWT key and database: the old session still works.
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["instance"]["subdomain"], "persist");
}

/// Concurrent creates by one free user: exactly one instance, the others 409.
#[tokio::test]
async fn concurrent_creates_by_one_user_make_one_instance() {
    let edge = std::sync::Arc::new(EdgeBuilder::new().start().await);
    let (token, _, _) = edge.register("racer@example.com", PW).await;
    let creates: Vec<_> = (0..6)
        .map(|n| {
            let (edge, token) = (edge.clone(), token.clone());
            tokio::spawn(async move {
                edge.api(
                    "POST",
                    "/api/instances",
                    Some(&token),
                    Some(json!({ "subdomain": format!("racer-{n}") })),
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for create in creates {
        statuses.push(create.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409]);
}
