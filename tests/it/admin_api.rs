//! Operator endpoints through the real edge, on SQLite and on PostgreSQL: credentials (bootstrap
//! token, named tokens from `clawdeploy admin create-token`, operator logins), nodes, instances,
//! tiers, the outbox and the 501 of instance migration.

use serde_json::json;

use crate::both_dbs;
use crate::support::*;

const PW: &str = "securePassword123";

both_dbs!(admin_credentials, nodes_instances_tiers_and_migrate);

async fn admin_credentials(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (user_token, _, _) = edge.register("op@example.com", PW).await;
    assert_eq!(
        edge.admin("GET", "/admin/nodes", None, None).await.status,
        401
    );
    assert_eq!(
        edge.admin("GET", "/admin/nodes", Some("wrong-token-wrong-token"), None)
            .await
            .status,
        403
    );
    let plain_user = edge
        .admin("GET", "/admin/nodes", Some(&user_token), None)
        .await;
    assert_eq!(plain_user.status, 403, "a user without the operator role");

    // A named token: printed once, stored hashed, works, then revoked.
    let (code, stdout, stderr) = edge.cli(&["admin", "create-token", "ci-bot"]).await;
    assert_eq!(code, 0, "{stderr}");
    let named = stdout.trim().to_string();
    assert!(named.len() >= 40, "{stdout}");
    assert_eq!(
        edge.admin("GET", "/admin/nodes", Some(&named), None)
            .await
            .status,
        200
    );
    let (code, _, stderr) = edge.cli(&["admin", "create-token", "ci-bot"]).await;
    assert_ne!(code, 0, "duplicate active name refused");
    assert!(stderr.contains("ci-bot"), "{stderr}");
    if let Db::Sqlite = db {
        let raw = std::fs::read_dir(edge.data_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("clawdeploy.db"))
            .flat_map(|e| std::fs::read(e.path()).unwrap())
            .collect::<Vec<u8>>();
        assert!(
            !raw.windows(named.len()).any(|w| w == named.as_bytes()),
            "only the hash is stored"
        );
    }
    let (code, _, stderr) = edge.cli(&["admin", "revoke-token", "ci-bot"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        edge.admin("GET", "/admin/nodes", Some(&named), None)
            .await
            .status,
        403
    );

    // The operator role: a normal login opens the admin pages.
    let (code, _, stderr) = edge.cli(&["admin", "grant", "OP@example.com"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        edge.admin("GET", "/admin/nodes", Some(&user_token), None)
            .await
            .status,
        200
    );
    let (code, _, stderr) = edge.cli(&["admin", "grant", "ghost@example.com"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("ghost@example.com"));
    let (code, stdout, _) = edge.cli(&["migrate"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("migrations applied"));
}

async fn nodes_instances_tiers_and_migrate(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, user_id) = edge.register("tier@example.com", PW).await;
    edge.api(
        "POST",
        "/api/instances",
        Some(&token),
        Some(json!({ "subdomain": "tiered" })),
    )
    .await;

    let nodes = edge
        .admin("GET", "/admin/nodes", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(nodes.status, 200);
    let node = &nodes.json()["nodes"][0];
    assert_eq!(node["status"], "healthy");
    assert_eq!(node["ip"], "127.0.0.1");
    assert_eq!(node["routes"]["instances"], 1);
    assert!(node["pending"].as_str().unwrap().contains("runtime"));

    let list = edge
        .admin("GET", "/admin/instances", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(list.json()["instances"][0]["subdomain"], "tiered");
    assert_eq!(list.json()["instances"][0]["userId"], user_id.as_str());
    let by_status = edge
        .admin(
            "GET",
            "/admin/instances?status=running",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(by_status.json()["instances"].as_array().unwrap().len(), 0);
    let bad_status = edge
        .admin(
            "GET",
            "/admin/instances?status=sleepy",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(bad_status.status, 422);

    let migrate = edge
        .admin(
            "POST",
            "/admin/instances/migrate",
            Some(ADMIN_TOKEN),
            Some(r#"{"instanceId":"x","targetNode":"2.3.4.5"}"#),
        )
        .await;
    assert_eq!(migrate.status, 501);
    assert_eq!(migrate.error_code(), "NOT_IMPLEMENTED");

    let path = format!("/admin/users/{user_id}/tier");
    let unverified = edge
        .admin("PUT", &path, Some(ADMIN_TOKEN), Some(r#"{"tier":"pro"}"#))
        .await;
    assert_eq!(
        unverified.status, 409,
        "an unverified account cannot upgrade"
    );
    assert_eq!(unverified.error_code(), "EMAIL_NOT_VERIFIED");
    edge.follow(&find_link(
        edge.last_mail("tier@example.com").await["body"]
            .as_str()
            .unwrap(),
    ))
    .await;
    let pro = edge
        .admin("PUT", &path, Some(ADMIN_TOKEN), Some(r#"{"tier":"pro"}"#))
        .await;
    assert_eq!(pro.status, 200, "{}", pro.text());
    assert_eq!(pro.json()["user"]["tier"], "pro");
    assert_eq!(pro.json()["instances"][0]["tier"], "pro");
    // Applied at once: the answer says what happened to the container's limits.
    assert_eq!(
        pro.json()["resources"].as_array().unwrap().len(),
        1,
        "{}",
        pro.text()
    );
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await;
    assert_eq!(me.json()["instance"]["tier"], "pro");
    let bad = edge
        .admin("PUT", &path, Some(ADMIN_TOKEN), Some(r#"{"tier":"gold"}"#))
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["error"]["field"], "tier");
    let nobody = edge
        .admin(
            "PUT",
            "/admin/users/00000000-0000-0000-0000-000000000000/tier",
            Some(ADMIN_TOKEN),
            Some(r#"{"tier":"pro"}"#),
        )
        .await;
    assert_eq!(nobody.status, 404);

    let outbox = edge
        .admin("GET", "/admin/outbox", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(outbox.json()["mode"], "outbox");
    assert!(!outbox.json()["mails"].as_array().unwrap().is_empty());
}
