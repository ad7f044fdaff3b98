//! The account API through the real edge, on SQLite and on PostgreSQL: profile, provider keys
//! (never in plaintext in the database, the logs or any response), export, deletion and undo.

use serde_json::json;

use crate::both_dbs;
use crate::support::*;

const PW: &str = "securePassword123";

both_dbs!(
    profile_update_and_validation,
    provider_keys_are_sealed_and_masked,
    export_and_deletion_with_undo
);

async fn profile_update_and_validation(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, _) = edge.register("me@example.com", PW).await;
    edge.follow(&find_link(
        edge.last_mail("me@example.com").await["body"]
            .as_str()
            .unwrap(),
    ))
    .await;
    edge.register("taken@example.com", PW).await;
    let resp = edge
        .api("PATCH", "/api/account", Some(&token), Some(json!({ "name": "Me Myself", "timezone": "America/New_York", "avatarUrl": "https://example.com/a.png" })))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let user = &resp.json()["user"];
    assert_eq!(user["name"], "Me Myself");
    assert_eq!(user["timezone"], "America/New_York");
    assert_eq!(user["avatarUrl"], "https://example.com/a.png");
    assert_eq!(user["emailVerified"], true);
    for (body, field) in [
        (json!({ "email": "nope" }), "email"),
        (json!({ "timezone": "Mars Base" }), "timezone"),
        (json!({ "avatarUrl": "javascript:alert(1)" }), "avatarUrl"),
    ] {
        let resp = edge
            .api("PATCH", "/api/account", Some(&token), Some(body))
            .await;
        assert_eq!(resp.status, 422);
        assert_eq!(resp.json()["error"]["field"], field);
    }
    let dup = edge
        .api(
            "PATCH",
            "/api/account",
            Some(&token),
            Some(json!({ "email": "TAKEN@example.com" })),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.error_code(), "EMAIL_TAKEN");
    // A new address becomes unverified and gets its own link.
    let moved = edge
        .api(
            "PATCH",
            "/api/account",
            Some(&token),
            Some(json!({ "email": "new@example.com" })),
        )
        .await;
    assert_eq!(moved.status, 200);
    assert_eq!(moved.json()["user"]["emailVerified"], false);
    assert_eq!(
        edge.last_mail("new@example.com").await["to"],
        "new@example.com"
    );
}

async fn provider_keys_are_sealed_and_masked(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, _) = edge.register("keys@example.com", PW).await;
    let secrets = [
        ("openai", "sk-proj-PLAINTEXTOPENAI0001wxyz", None),
        ("anthropic", "sk-ant-api03-PLAINTEXTANTHROPIC0002", None),
        ("google", "AIzaPLAINTEXTGOOGLE00000003", None),
        (
            "custom",
            "cu-PLAINTEXTCUSTOM0004",
            Some("https://llm.example.com/v1"),
        ),
    ];
    for (provider, key, base) in secrets {
        let mut body = json!({ "key": key });
        if let Some(base) = base {
            body["baseUrl"] = json!(base);
        }
        let resp = edge
            .api(
                "PUT",
                &format!("/api/account/api-keys/{provider}"),
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(resp.status, 200, "{provider}: {}", resp.text());
        let masked = resp.json()["apiKey"]["masked"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            masked.ends_with(&key[key.len() - 4..]) && masked.contains("..."),
            "{masked}"
        );
        assert!(!resp.text().contains("PLAINTEXT"));
    }
    let custom_without_url = edge
        .api(
            "PUT",
            "/api/account/api-keys/custom",
            Some(&token),
            Some(json!({ "key": "cu-abcdefghijkl" })),
        )
        .await;
    assert_eq!(custom_without_url.status, 422);
    assert_eq!(custom_without_url.json()["error"]["field"], "baseUrl");
    let unknown = edge
        .api(
            "PUT",
            "/api/account/api-keys/cohere",
            Some(&token),
            Some(json!({ "key": "abcdefghijkl" })),
        )
        .await;
    assert_eq!(unknown.error_code(), "INVALID_PROVIDER");
    edge.api(
        "POST",
        "/api/instances",
        Some(&token),
        Some(json!({ "apiKeys": { "openai": "sk-proj-PLAINTEXTVIAINSTANCE0005" } })),
    )
    .await;

    let mut texts = vec![
        edge.api("GET", "/api/account/api-keys", Some(&token), None)
            .await
            .text(),
        edge.api("GET", "/api/instances/me", Some(&token), None)
            .await
            .text(),
        edge.api("GET", "/api/account/export", Some(&token), None)
            .await
            .text(),
        edge.api("GET", "/api/account/security-log", Some(&token), None)
            .await
            .text(),
        edge.admin("GET", "/admin/instances", Some(ADMIN_TOKEN), None)
            .await
            .text(),
    ];
    let list = edge
        .api("GET", "/api/account/api-keys", Some(&token), None)
        .await
        .json();
    assert_eq!(list["apiKeys"].as_array().unwrap().len(), 4);
    assert!(texts[0].contains("...wxyz") || texts[0].contains("...0005"));
    let deleted = edge
        .api("DELETE", "/api/account/api-keys/google", Some(&token), None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        edge.api("DELETE", "/api/account/api-keys/google", Some(&token), None)
            .await
            .status,
        404
    );
    assert!(edge
        .api("GET", "/api/account/security-log", Some(&token), None)
        .await
        .text()
        .contains("api_key_set"));

    texts.push(edge.log_text());
    for text in &texts {
        assert!(!text.contains("PLAINTEXT"), "a provider key leaked: {text}");
    }
    // The database holds only sealed values.
    match &db {
        Db::Sqlite => {
            let mut raw = Vec::new();
            for entry in std::fs::read_dir(edge.data_dir()).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("clawdeploy.db")
                {
                    raw.extend(std::fs::read(&path).unwrap());
                }
            }
            assert!(
                raw.windows(6).any(|w| w == b"v1:k1:"),
                "sealed values are in the file"
            );
            assert!(
                !raw.windows(9).any(|w| w == b"PLAINTEXT"),
                "plaintext key in the SQLite file"
            );
        }
        Db::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT provider, key_encrypted, key_hint FROM api_keys")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            assert_eq!(rows.len(), 3);
            for (provider, sealed, hint) in rows {
                assert!(sealed.starts_with("v1:k1:"), "{provider}");
                assert!(
                    !sealed.contains("PLAINTEXT") && !hint.contains("PLAINTEXT"),
                    "{provider}"
                );
            }
            // Nowhere else in the database either.
            let dump: Vec<(String,)> = sqlx::query_as(
                "SELECT row_to_json(t)::text FROM (SELECT * FROM users) t UNION ALL \
                 SELECT row_to_json(t)::text FROM (SELECT * FROM instances) t UNION ALL \
                 SELECT row_to_json(t)::text FROM (SELECT * FROM security_log) t UNION ALL \
                 SELECT row_to_json(t)::text FROM (SELECT * FROM outbox) t",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(dump.iter().all(|(row,)| !row.contains("PLAINTEXT")));
            conn.close().await.ok();
        }
    }
}

async fn export_and_deletion_with_undo(db: Db) {
    let edge = EdgeBuilder::new().db(&db).start().await;
    let (token, _, id) = edge.register("bye@example.com", PW).await;
    edge.api(
        "POST",
        "/api/instances",
        Some(&token),
        Some(json!({ "subdomain": "byebye" })),
    )
    .await;
    let export = edge
        .api("GET", "/api/account/export", Some(&token), None)
        .await;
    assert_eq!(export.status, 200);
    let text = export.text();
    assert!(
        text.contains("bye@example.com") && text.contains("byebye"),
        "{text}"
    );
    assert!(!text.contains("$2b$"), "no password hash in the export");

    let del = edge.api("DELETE", "/api/account", Some(&token), None).await;
    assert_eq!(del.status, 202, "{}", del.text());
    let requested = del.json()["deletionRequestedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let scheduled = del.json()["deletionScheduledAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(scheduled > requested);
    assert!(del.json()["message"].as_str().unwrap().contains("30 days"));
    let me = edge.api("GET", "/api/account", Some(&token), None).await;
    assert_eq!(me.json()["user"]["deletionRequestedAt"], requested.as_str());
    let undo = edge
        .api("POST", "/api/account/restore", Some(&token), None)
        .await;
    assert_eq!(undo.status, 200);
    let undo_again = edge
        .api("POST", "/api/account/restore", Some(&token), None)
        .await;
    assert_eq!(undo_again.status, 409);
    assert_eq!(undo_again.error_code(), "NO_DELETION_PENDING");
    let me = edge.api("GET", "/api/account", Some(&token), None).await;
    assert!(me.json()["user"]["deletionRequestedAt"].is_null());
    assert_eq!(me.json()["user"]["id"], id.as_str());
}

/// A master-key rotation: restarted with a new current key and the old one as previous, the edge
/// re-seals stored provider keys under the new key, and they still open.
#[tokio::test]
async fn provider_keys_are_resealed_after_a_master_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rotation.db");
    let url = format!("sqlite://{}", db.display());
    let token = {
        let edge = EdgeBuilder::new().database_url(&url).start().await;
        let (token, _, _) = edge.register("rotate@example.com", PW).await;
        let put = edge
            .api(
                "PUT",
                "/api/account/api-keys/openai",
                Some(&token),
                Some(json!({ "key": "sk-rotate-abcdefghijkl1234" })),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
        token
    };
    let sealed = || async {
        let conn = sqlx::SqlitePool::connect(&url).await.unwrap();
        let row: (String,) = sqlx::query_as("SELECT key_encrypted FROM api_keys")
            .fetch_one(&conn)
            .await
            .unwrap();
        conn.close().await;
        row.0
    };
    assert!(
        sealed().await.starts_with("v1:k1:"),
        "sealed under the first key"
    );

    let new_key = "bmV3LW1hc3Rlci1rZXktMDEyMzQ1Njc4OWFiY2RlZmc=";
    let edge = EdgeBuilder::new()
        .database_url(&url)
        .env("CLAWDEPLOY_SECRETS__MASTER_KEY_ID", "k2")
        .env("CLAWDEPLOY_SECRETS__MASTER_KEY", new_key)
        .env(
            "CLAWDEPLOY_SECRETS__PREVIOUS_MASTER_KEYS",
            &format!("k1:{MASTER_KEY}"),
        )
        .start()
        .await;
    let resealed = sealed().await;
    assert!(resealed.starts_with("v1:k2:"), "not re-sealed: {resealed}");
    assert!(!resealed.contains("sk-rotate"));
    let keys = edge
        .api("GET", "/api/account/api-keys", Some(&token), None)
        .await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    assert!(
        keys.text().contains("1234"),
        "the masked key still shows: {}",
        keys.text()
    );
}
