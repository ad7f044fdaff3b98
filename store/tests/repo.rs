//! Every repository behaviour, run against SQLite (a temp file) and against PostgreSQL at
//! `CLAWDEPLOY_TEST_POSTGRES_URL` (each test in its own schema; unset fails, see `Db::postgres`).

use clawdeploy_store::secrets::{self, new_token, TokenHash};
use clawdeploy_store::time::{days_from_civil, now_ms, DAY_MS};
use clawdeploy_store::*;
use sqlx::Row;
use uuid::Uuid;

const PG_ENV: &str = "CLAWDEPLOY_TEST_POSTGRES_URL";

struct Db {
    store: Store,
    /// SQLite: the temp dir holding the file.
    dir: Option<tempfile::TempDir>,
    /// PostgreSQL: (admin pool, schema) to drop afterwards.
    pg: Option<(sqlx::AnyPool, String)>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        // A nested path: the parent dirs must be created.
        let url = format!("sqlite://{}/nested/dir/test.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        Db {
            store,
            dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Option<Db> {
        let Ok(base) = std::env::var(PG_ENV) else {
            // The same policy as tests/it/support.rs `service_missing`: fail, unless a local run
            // asked to skip (never under CI).
            let skip = std::env::var_os("CLAWDEPLOY_SKIP_MISSING_SERVICES").is_some()
                && std::env::var_os("CI").is_none();
            assert!(
                skip,
                "PostgreSQL ({PG_ENV}) is not configured: run scripts/test.sh (or set \
                 CLAWDEPLOY_SKIP_MISSING_SERVICES=1 to skip such tests locally)"
            );
            eprintln!("SKIPPED: PostgreSQL ({PG_ENV}) is not configured");
            return None;
        };
        sqlx::any::install_default_drivers();
        let admin = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .unwrap();
        let schema = format!("t_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        let sp: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(sp, schema, "search_path option not applied");
        store.migrate().await.unwrap();
        Some(Db {
            store,
            dir: None,
            pg: Some((admin, schema)),
        })
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.pg {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
        }
        drop(self.dir);
    }

    /// Every byte the SQLite database has on disk (main file and WAL); empty for PostgreSQL.
    fn sqlite_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(dir) = &self.dir {
            for f in ["test.db", "test.db-wal"] {
                if let Ok(b) = std::fs::read(dir.path().join("nested/dir").join(f)) {
                    out.extend(b);
                }
            }
        }
        out
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db).await;
                db.finish().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::Db::postgres().await else { return };
                super::$name(&db).await;
                db.finish().await;
            }
        }
    )*};
}

both!(
    billing_state_ledger_and_parked_domains,
    migrate_is_idempotent,
    users_crud,
    duplicate_email_conflicts,
    sessions_lifecycle,
    refresh_token_rotation_and_reuse,
    email_tokens_single_use_and_expiry,
    security_log,
    api_keys_sealed,
    api_keys_survive_key_rotation,
    mfa,
    instances_crud,
    one_instance_per_user_holds_under_concurrency,
    duplicate_subdomain_case_insensitive,
    admin_tokens,
    usage_counters,
    account_deletion,
    export_has_no_secrets,
    concurrent_writers,
    pool_claims_are_exclusive,
    custom_domain_claims_block_nobody_until_proven,
    one_claim_wins_when_nodes_prove_a_hostname_at_once,
    unproven_custom_domain_claims_expire,
    skills_installed_capped_and_sealed,
);

fn keyring() -> Keyring {
    Keyring::new("k1", &[7u8; 32]).unwrap()
}

async fn user(store: &Store, email: &str) -> User {
    store
        .create_user(&NewUser {
            email,
            password_hash: "$2b$12$abcdefghijklmnopqrstuv0123456789ABCDEFGHIJKLMNOPQRSTU",
            name: Some("Test"),
            tier: Tier::Free,
            role: Role::User,
            timezone: None,
        })
        .await
        .unwrap()
}

async fn migrate_is_idempotent(db: &Db) {
    db.store.migrate().await.unwrap();
    db.store.migrate().await.unwrap();
    db.store.ping().await.unwrap();
}

async fn users_crud(db: &Db) {
    let s = &db.store;
    let u = user(s, "  Alice@Example.COM ").await;
    assert_eq!(u.email, "alice@example.com");
    assert_eq!(u.tier, Tier::Free);
    assert_eq!(u.role, Role::User);
    assert_eq!(u.timezone, "UTC");
    assert!(!u.email_verified() && !u.mfa_enabled());
    assert!(
        !format!("{u:?}").contains("$2b$"),
        "Debug must redact the hash"
    );
    assert!(!serde_json::to_string(&u).unwrap().contains("$2b$"));

    let by_id = s.get_user(u.id).await.unwrap().unwrap();
    assert_eq!(by_id.email, u.email);
    let by_email = s
        .get_user_by_email("ALICE@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.id, u.id);
    assert!(s.get_user_by_email("nobody@x.io").await.unwrap().is_none());
    assert!(s.get_user(Uuid::new_v4()).await.unwrap().is_none());

    s.set_email_verified(u.id, true).await.unwrap();
    let v = s.get_user(u.id).await.unwrap().unwrap();
    assert!(v.email_verified());

    let upd = s
        .update_profile(
            u.id,
            &ProfileUpdate {
                language: None,
                name: Some(Some("Alice B")),
                timezone: Some("Europe/Berlin"),
                avatar_url: Some(Some("https://img.example/a.png")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(upd.name.as_deref(), Some("Alice B"));
    assert_eq!(upd.timezone, "Europe/Berlin");
    assert_eq!(upd.avatar_url.as_deref(), Some("https://img.example/a.png"));
    assert!(upd.email_verified(), "unchanged email stays verified");

    // Same email again (other case): still verified. A new one: unverified.
    let same = s
        .update_profile(
            u.id,
            &ProfileUpdate {
                language: None,
                email: Some("ALICE@example.com"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(same.email_verified());
    let moved = s
        .update_profile(
            u.id,
            &ProfileUpdate {
                language: None,
                email: Some("Alice2@Example.com"),
                avatar_url: Some(None),
                name: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.email, "alice2@example.com");
    assert!(!moved.email_verified());
    assert!(moved.avatar_url.is_none() && moved.name.is_none());
    assert_eq!(moved.timezone, "Europe/Berlin");

    s.update_password_hash(u.id, "$2b$12$new").await.unwrap();
    assert_eq!(
        s.get_user(u.id).await.unwrap().unwrap().password_hash,
        "$2b$12$new"
    );
    s.set_user_tier(u.id, Tier::Pro).await.unwrap();
    s.set_user_role(u.id, Role::Operator).await.unwrap();
    let r = s.get_user(u.id).await.unwrap().unwrap();
    assert_eq!((r.tier.as_str(), r.role), ("pro", Role::Operator));
    s.set_email_verified(u.id, false).await.unwrap();
    assert!(!s.get_user(u.id).await.unwrap().unwrap().email_verified());

    let missing = Uuid::new_v4();
    assert!(matches!(
        s.set_user_tier(missing, Tier::Pro).await,
        Err(StoreError::NotFound("user"))
    ));
    assert!(matches!(
        s.update_profile(missing, &ProfileUpdate::default()).await,
        Err(StoreError::NotFound("user"))
    ));

    user(s, "bob@example.com").await;
    let all = s.list_users(10, 0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(s.list_users(10, 1).await.unwrap().len(), 1);
}

async fn duplicate_email_conflicts(db: &Db) {
    let s = &db.store;
    let a = user(s, "dup@example.com").await;
    let err = s
        .create_user(&NewUser {
            email: "DUP@Example.com",
            password_hash: "x",
            name: None,
            tier: Tier::Free,
            role: Role::User,
            timezone: None,
        })
        .await
        .unwrap_err();
    assert!(err.is_conflict(Conflict::Email), "{err:?}");
    let b = user(s, "other@example.com").await;
    let err = s
        .update_profile(
            b.id,
            &ProfileUpdate {
                language: None,
                email: Some("Dup@example.com"),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(Conflict::Email), "{err:?}");
    assert_eq!(
        s.get_user_by_email("dup@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
}

async fn sessions_lifecycle(db: &Db) {
    let s = &db.store;
    let u = user(s, "sess@example.com").await;
    let later = now_ms() + DAY_MS;
    let s1 = s
        .create_session(u.id, later, Some("203.0.113.5"), Some("curl/8"))
        .await
        .unwrap();
    let s2 = s.create_session(u.id, later, None, None).await.unwrap();
    let s3 = s.create_session(u.id, later, None, None).await.unwrap();
    let expired = s
        .create_session(u.id, now_ms() - 1, None, None)
        .await
        .unwrap();
    assert_eq!(s1.ip.as_deref(), Some("203.0.113.5"));
    assert_eq!(s1.user_agent.as_deref(), Some("curl/8"));

    let got = s.get_session(s1.id).await.unwrap().unwrap();
    assert!(got.is_active(now_ms()));
    assert!(!s
        .get_session(expired.id)
        .await
        .unwrap()
        .unwrap()
        .is_active(now_ms()));
    assert_eq!(s.list_active_sessions(u.id).await.unwrap().len(), 3);

    assert!(s.revoke_session(s2.id).await.unwrap());
    assert!(!s.revoke_session(s2.id).await.unwrap(), "already revoked");
    assert!(!s
        .get_session(s2.id)
        .await
        .unwrap()
        .unwrap()
        .is_active(now_ms()));

    let mut revoked = s.revoke_all_sessions(u.id, Some(s1.id)).await.unwrap();
    revoked.sort();
    let mut want = vec![s3.id, expired.id];
    want.sort();
    assert_eq!(revoked, want);
    let active = s.list_active_sessions(u.id).await.unwrap();
    assert_eq!(active.iter().map(|x| x.id).collect::<Vec<_>>(), vec![s1.id]);
    assert_eq!(
        s.revoke_all_sessions(u.id, None).await.unwrap(),
        vec![s1.id]
    );
    assert!(s.list_active_sessions(u.id).await.unwrap().is_empty());

    s.touch_session(s1.id, Some(later + 1)).await.unwrap();
    assert!(matches!(
        s.create_session(Uuid::new_v4(), later, None, None).await,
        Err(StoreError::NotFound("user"))
    ));
    assert!(s.get_session(Uuid::new_v4()).await.unwrap().is_none());
}

async fn refresh_token_rotation_and_reuse(db: &Db) {
    let s = &db.store;
    let u = user(s, "refresh@example.com").await;
    let exp = now_ms() + DAY_MS;
    let sess = s.create_session(u.id, exp, None, None).await.unwrap();
    let (t0, h0) = new_token().unwrap();
    let rt0 = s.create_refresh_token(sess.id, &h0, exp).await.unwrap();
    assert_eq!((rt0.session_id, rt0.user_id), (sess.id, u.id));

    // Rotate twice.
    let h1 = TokenHash::of("second-token");
    let rt1 = s
        .rotate_refresh_token(&TokenHash::of(&t0), &h1, exp)
        .await
        .unwrap();
    assert_eq!((rt1.session_id, rt1.user_id), (sess.id, u.id));
    let old = s.get_refresh_token(&h0).await.unwrap().unwrap();
    assert!(old.rotated_at.is_some());
    assert_eq!(old.replaced_by, Some(rt1.id));
    let h2 = TokenHash::of("third-token");
    let rt2 = s.rotate_refresh_token(&h1, &h2, exp).await.unwrap();
    assert_ne!(rt2.id, rt1.id);

    // Reusing the first (rotated) token: detected, session revoked.
    let err = s
        .rotate_refresh_token(&h0, &TokenHash::of("attacker"), exp)
        .await
        .unwrap_err();
    match err {
        StoreError::RefreshTokenReuse {
            session_id,
            user_id,
        } => {
            assert_eq!((session_id, user_id), (sess.id, u.id));
        }
        other => panic!("expected reuse, got {other:?}"),
    }
    assert!(s
        .get_refresh_token(&TokenHash::of("attacker"))
        .await
        .unwrap()
        .is_none());
    assert!(s
        .get_session(sess.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    // The newest token died with its session.
    assert!(matches!(
        s.rotate_refresh_token(&h2, &TokenHash::of("x"), exp).await,
        Err(StoreError::SessionInvalid)
    ));

    // Unknown and expired tokens.
    assert!(matches!(
        s.rotate_refresh_token(&TokenHash::of("never"), &TokenHash::of("y"), exp)
            .await,
        Err(StoreError::TokenUnknown)
    ));
    let sess2 = s.create_session(u.id, exp, None, None).await.unwrap();
    let hx = TokenHash::of("expired-refresh");
    s.create_refresh_token(sess2.id, &hx, now_ms() - 1)
        .await
        .unwrap();
    assert!(matches!(
        s.rotate_refresh_token(&hx, &TokenHash::of("z"), exp).await,
        Err(StoreError::TokenExpired)
    ));
    // Refresh token of an unknown session.
    assert!(matches!(
        s.create_refresh_token(Uuid::new_v4(), &TokenHash::of("q"), exp)
            .await,
        Err(StoreError::NotFound("session"))
    ));

    // Two concurrent rotations of one token: exactly one wins.
    let sess3 = s.create_session(u.id, exp, None, None).await.unwrap();
    let hc = TokenHash::of("contended");
    s.create_refresh_token(sess3.id, &hc, exp).await.unwrap();
    let (ca, cb) = (TokenHash::of("ca"), TokenHash::of("cb"));
    let (a, b) = tokio::join!(
        s.rotate_refresh_token(&hc, &ca, exp),
        s.rotate_refresh_token(&hc, &cb, exp)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(),
        1,
        "{a:?} {b:?}"
    );

    // Purge removes what expired.
    assert!(s.purge_expired_tokens(now_ms()).await.unwrap() >= 1);
    assert!(s.get_refresh_token(&hx).await.unwrap().is_none());
}

async fn email_tokens_single_use_and_expiry(db: &Db) {
    let s = &db.store;
    let u = user(s, "mail@example.com").await;
    let (tok, hash) = new_token().unwrap();
    let et = s
        .create_email_token(
            u.id,
            EmailTokenPurpose::Verify,
            "Mail@Example.com",
            &hash,
            now_ms() + 3_600_000,
        )
        .await
        .unwrap();
    assert_eq!(et.email, "mail@example.com");
    assert!(et.used_at.is_none());

    // Wrong purpose: unknown.
    assert!(matches!(
        s.consume_email_token(&TokenHash::of(&tok), EmailTokenPurpose::Reset)
            .await,
        Err(StoreError::TokenUnknown)
    ));
    let used = s
        .consume_email_token(&TokenHash::of(&tok), EmailTokenPurpose::Verify)
        .await
        .unwrap();
    assert_eq!((used.id, used.user_id), (et.id, u.id));
    assert!(used.used_at.is_some());
    assert!(matches!(
        s.consume_email_token(&hash, EmailTokenPurpose::Verify)
            .await,
        Err(StoreError::TokenUsed)
    ));

    let expired = TokenHash::of("old-reset");
    s.create_email_token(
        u.id,
        EmailTokenPurpose::Reset,
        &u.email,
        &expired,
        now_ms() - 1,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.consume_email_token(&expired, EmailTokenPurpose::Reset)
            .await,
        Err(StoreError::TokenExpired)
    ));
    assert!(matches!(
        s.consume_email_token(&TokenHash::of("nope"), EmailTokenPurpose::Reset)
            .await,
        Err(StoreError::TokenUnknown)
    ));

    // Invalidate outstanding tokens.
    let r1 = TokenHash::of("reset-1");
    let r2 = TokenHash::of("reset-2");
    for h in [&r1, &r2] {
        s.create_email_token(
            u.id,
            EmailTokenPurpose::Reset,
            &u.email,
            h,
            now_ms() + 3_600_000,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        s.invalidate_email_tokens(u.id, EmailTokenPurpose::Reset)
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        s.consume_email_token(&r1, EmailTokenPurpose::Reset).await,
        Err(StoreError::TokenUsed)
    ));

    // Concurrent consumption: exactly one succeeds.
    let rc = TokenHash::of("race");
    s.create_email_token(
        u.id,
        EmailTokenPurpose::Reset,
        &u.email,
        &rc,
        now_ms() + 3_600_000,
    )
    .await
    .unwrap();
    let (a, b) = tokio::join!(
        s.consume_email_token(&rc, EmailTokenPurpose::Reset),
        s.consume_email_token(&rc, EmailTokenPurpose::Reset)
    );
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(), 1);

    // The database holds hashes only.
    let raw: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM email_tokens")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert!(raw.iter().all(|h| h.len() == 64 && h != &tok));
    assert!(raw.contains(&secrets::sha256_hex(&tok)));
}

async fn security_log(db: &Db) {
    let s = &db.store;
    let u = user(s, "sec@example.com").await;
    for ev in ["login_failure", "login_success", "mfa_enabled"] {
        s.append_security_event(&NewSecurityEvent {
            user_id: Some(u.id),
            event: ev,
            ip: Some("198.51.100.7"),
            user_agent: Some("Mozilla/5.0"),
            detail: Some("{\"k\":1}"),
        })
        .await
        .unwrap();
    }
    let anon = s
        .append_security_event(&NewSecurityEvent {
            event: "login_failure",
            detail: Some("unknown email"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(anon.user_id.is_none());
    let log = s.list_security_events(u.id, 10, None).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        vec!["mfa_enabled", "login_success", "login_failure"]
    );
    assert_eq!(log[0].ip.as_deref(), Some("198.51.100.7"));
    assert_eq!(log[0].user_agent.as_deref(), Some("Mozilla/5.0"));
    let page2 = s
        .list_security_events(u.id, 2, Some(log[1].id))
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].event, "login_failure");
}

const PLAIN_KEY: &str = "sk-proj-THISISTHEPLAINTEXTKEY0123456789wxyz";

async fn api_keys_sealed(db: &Db) {
    let s = &db.store;
    let kr = keyring();
    let u = user(s, "keys@example.com").await;
    let k = s
        .upsert_api_key(u.id, "openai", None, PLAIN_KEY, &kr)
        .await
        .unwrap();
    assert_eq!(k.masked, "sk-...wxyz");
    assert!(k.is_active);
    let custom = s
        .upsert_api_key(
            u.id,
            "custom",
            Some("https://llm.example/v1"),
            "abcdefghijklmnop",
            &kr,
        )
        .await
        .unwrap();
    assert_eq!(custom.base_url.as_deref(), Some("https://llm.example/v1"));

    // Only ciphertext at rest.
    let sealed: Vec<String> = sqlx::query_scalar("SELECT key_encrypted FROM api_keys")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert_eq!(sealed.len(), 2);
    for c in &sealed {
        assert!(c.starts_with("v1:k1:"), "{c}");
        assert!(!c.contains("PLAINTEXT") && !c.contains(PLAIN_KEY));
    }
    let bytes = db.sqlite_bytes();
    if !bytes.is_empty() {
        let needle = b"THISISTHEPLAINTEXTKEY";
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext in the SQLite file"
        );
    }
    let listed = s.list_api_keys(u.id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| k.provider.as_str())
            .collect::<Vec<_>>(),
        vec!["custom", "openai"]
    );
    assert!(!serde_json::to_string(&listed)
        .unwrap()
        .contains("PLAINTEXT"));
    assert!(!format!("{listed:?}").contains("PLAINTEXT"));

    let (plain, base) = s.open_api_key(u.id, "openai", &kr).await.unwrap().unwrap();
    assert_eq!((plain.as_str(), base), (PLAIN_KEY, None));

    // Upsert replaces.
    let k2 = s
        .upsert_api_key(u.id, "openai", None, "sk-another-key-000000abcd", &kr)
        .await
        .unwrap();
    assert_eq!(k2.id, k.id);
    assert_eq!(k2.masked, "sk-...abcd");
    let (plain, _) = s.open_api_key(u.id, "openai", &kr).await.unwrap().unwrap();
    assert_eq!(plain.as_str(), "sk-another-key-000000abcd");

    assert!(s.set_api_key_active(u.id, "openai", false).await.unwrap());
    assert!(s.open_api_key(u.id, "openai", &kr).await.unwrap().is_none());
    assert!(s.delete_api_key(u.id, "openai").await.unwrap());
    assert!(!s.delete_api_key(u.id, "openai").await.unwrap());
    assert_eq!(s.list_api_keys(u.id).await.unwrap().len(), 1);

    // A wrong master key cannot open it.
    let wrong = Keyring::new("k1", &[8u8; 32]).unwrap();
    assert!(matches!(
        s.open_api_key(u.id, "custom", &wrong).await,
        Err(StoreError::Secret(SecretError::Decrypt))
    ));
}

async fn api_keys_survive_key_rotation(db: &Db) {
    let s = &db.store;
    let u = user(s, "rotate@example.com").await;
    let old = Keyring::new("2025", &[1u8; 32]).unwrap();
    s.upsert_api_key(u.id, "anthropic", None, PLAIN_KEY, &old)
        .await
        .unwrap();
    s.enable_mfa(u.id, "JBSWY3DPEHPK3PXP", &[], &old)
        .await
        .unwrap();

    // Add a new current key, keep the old one: everything still opens.
    let mut kr = Keyring::new("2025", &[1u8; 32]).unwrap();
    kr.rotate_to("2026", &[2u8; 32]).unwrap();
    let (plain, _) = s
        .open_api_key(u.id, "anthropic", &kr)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.as_str(), PLAIN_KEY);
    // New writes use the new key.
    s.upsert_api_key(u.id, "google", None, "AIzaSyNEWKEY1234", &kr)
        .await
        .unwrap();
    // Re-seal, after which the old key is no longer needed.
    assert_eq!(s.reseal_secrets(&kr).await.unwrap(), 2);
    assert_eq!(s.reseal_secrets(&kr).await.unwrap(), 0);
    let only_new = Keyring::new("2026", &[2u8; 32]).unwrap();
    let (plain, _) = s
        .open_api_key(u.id, "anthropic", &only_new)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.as_str(), PLAIN_KEY);
    assert_eq!(
        s.mfa_secret(u.id, &only_new)
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        "JBSWY3DPEHPK3PXP"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT key_encrypted FROM api_keys")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert!(ids.iter().all(|c| c.starts_with("v1:2026:")));
}

async fn mfa(db: &Db) {
    let s = &db.store;
    let kr = keyring();
    let u = user(s, "mfa@example.com").await;
    assert!(s.mfa_secret(u.id, &kr).await.unwrap().is_none());
    let codes: Vec<String> = (0..3).map(|i| format!("code-{i}-abcdef")).collect();
    s.enable_mfa(u.id, "JBSWY3DPEHPK3PXP", &codes, &kr)
        .await
        .unwrap();
    assert!(s.get_user(u.id).await.unwrap().unwrap().mfa_enabled());
    assert_eq!(
        s.mfa_secret(u.id, &kr).await.unwrap().unwrap().as_str(),
        "JBSWY3DPEHPK3PXP"
    );
    let row = sqlx::query("SELECT mfa_secret, mfa_recovery_codes FROM users WHERE id = $1")
        .bind(u.id.to_string())
        .fetch_one(s.pool())
        .await
        .unwrap();
    let raw_secret: String = row.try_get("mfa_secret").unwrap();
    let raw_codes: String = row.try_get("mfa_recovery_codes").unwrap();
    assert!(!raw_secret.contains("JBSWY3DPEHPK3PXP"));
    assert!(!raw_codes.contains("code-"));

    assert_eq!(s.mfa_recovery_codes_left(u.id).await.unwrap(), 3);
    assert!(s
        .use_mfa_recovery_code(u.id, "code-1-abcdef")
        .await
        .unwrap());
    assert!(
        !s.use_mfa_recovery_code(u.id, "code-1-abcdef")
            .await
            .unwrap(),
        "single use"
    );
    assert!(!s.use_mfa_recovery_code(u.id, "wrong").await.unwrap());
    assert_eq!(s.mfa_recovery_codes_left(u.id).await.unwrap(), 2);

    s.disable_mfa(u.id).await.unwrap();
    assert!(!s.get_user(u.id).await.unwrap().unwrap().mfa_enabled());
    assert!(s.mfa_secret(u.id, &kr).await.unwrap().is_none());
    assert!(!s
        .use_mfa_recovery_code(u.id, "code-0-abcdef")
        .await
        .unwrap());
}

fn new_instance(user_id: Uuid, sub: &str) -> NewInstance<'_> {
    NewInstance {
        user_id,
        subdomain: sub,
        // Several instances per user are allowed on team (the one-instance rule has its own test).
        tier: Tier::Team,
        status: InstanceStatus::Provisioning,
        soul_md: None,
        timezone: None,
    }
}

/// Edge nodes sharing the database create concurrently: on a one-instance tier, exactly one of
/// many simultaneous creates for one user succeeds (each runs on its own pooled connection, as
/// on separate nodes); on team, a user may have several.
async fn one_instance_per_user_holds_under_concurrency(db: &Db) {
    let s = &db.store;
    let u = user(s, "one@example.com").await;
    let labels: Vec<String> = (0..8).map(|i| format!("only-{i}")).collect();
    let news: Vec<NewInstance> = labels
        .iter()
        .map(|label| NewInstance {
            tier: Tier::Free,
            ..new_instance(u.id, label)
        })
        .collect();
    let creates = news.iter().map(|new| s.create_instance(new));
    let results = futures_util::future::join_all(creates).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(e.is_conflict(Conflict::InstanceExists), "{e:?}");
        }
    }
    assert_eq!(s.list_instances_by_user(u.id).await.unwrap().len(), 1);
    // A tier with several instances is not limited.
    s.create_instance(&new_instance(u.id, "second-one"))
        .await
        .unwrap();
    // An unknown user is still "not found", not "exists".
    assert!(matches!(
        s.create_instance(&NewInstance {
            tier: Tier::Pro,
            ..new_instance(Uuid::new_v4(), "nobody-here")
        })
        .await,
        Err(StoreError::NotFound("user"))
    ));
}

async fn instances_crud(db: &Db) {
    let s = &db.store;
    let u = user(s, "inst@example.com").await;
    let i = s
        .create_instance(&new_instance(u.id, "MyBot-1a2b"))
        .await
        .unwrap();
    assert_eq!(i.subdomain, "mybot-1a2b");
    assert_eq!(i.status, InstanceStatus::Provisioning);
    assert!(i.upstream.is_none() && i.node_id.is_none());

    assert_eq!(s.get_instance(i.id).await.unwrap().unwrap().id, i.id);
    assert_eq!(
        s.get_instance_by_user(u.id).await.unwrap().unwrap().id,
        i.id
    );
    assert_eq!(
        s.get_instance_by_subdomain("MYBOT-1A2B")
            .await
            .unwrap()
            .unwrap()
            .id,
        i.id
    );
    assert!(s.subdomain_taken("mybot-1a2B").await.unwrap());
    assert!(!s.subdomain_taken("free-name").await.unwrap());

    let st = s
        .update_instance_status(i.id, InstanceStatus::Running)
        .await
        .unwrap();
    assert_eq!(st.status, InstanceStatus::Running);
    let p = s
        .set_instance_placement(
            i.id,
            &Placement {
                node_id: Some("node-a"),
                node_ip: Some("10.0.0.1"),
                container_id: Some("abc123"),
                container_ip: Some("172.18.0.5"),
                upstream: Some("172.18.0.5:18789"),
            },
        )
        .await
        .unwrap();
    assert_eq!(p.node_id.as_deref(), Some("node-a"));
    assert_eq!(p.upstream.as_deref(), Some("172.18.0.5:18789"));
    let up = s
        .update_instance_upstream(i.id, Some("127.0.0.1:20001"))
        .await
        .unwrap();
    assert_eq!(up.upstream.as_deref(), Some("127.0.0.1:20001"));
    assert_eq!(up.container_id.as_deref(), Some("abc123"));
    let soul = s
        .update_instance_soul(i.id, Some("# Soul\nBe kind."))
        .await
        .unwrap();
    assert_eq!(soul.soul_md.as_deref(), Some("# Soul\nBe kind."));
    let tz = s
        .update_instance_timezone(i.id, Some("Asia/Tokyo"))
        .await
        .unwrap();
    assert_eq!(tz.timezone.as_deref(), Some("Asia/Tokyo"));
    let tier = s.update_instance_tier(i.id, Tier::Pro).await.unwrap();
    assert_eq!(tier.tier, Tier::Pro);
    // Sleeping, with the time its next job is due; any other status clears that time.
    let asleep = s
        .set_instance_sleeping(i.id, Some(42_000), Some("lease-1"))
        .await
        .unwrap();
    assert_eq!(
        (asleep.status, asleep.wake_at, asleep.sleep_lease.as_deref()),
        (InstanceStatus::Sleeping, Some(42_000), Some("lease-1"))
    );
    assert_eq!(
        s.list_instances_by_status(InstanceStatus::Sleeping)
            .await
            .unwrap()
            .len(),
        1
    );
    let awake = s
        .update_instance_status(i.id, InstanceStatus::Running)
        .await
        .unwrap();
    assert_eq!(
        (awake.status, awake.wake_at, awake.sleep_lease),
        (InstanceStatus::Running, None, None)
    );
    s.touch_instance(i.id, 1_000).await.unwrap();
    s.touch_instance(i.id, 500).await.unwrap();
    assert_eq!(
        s.get_instance(i.id).await.unwrap().unwrap().last_active_at,
        Some(1_000)
    );
    assert!(matches!(
        s.update_instance_status(Uuid::new_v4(), InstanceStatus::Stopped)
            .await,
        Err(StoreError::NotFound("instance"))
    ));

    let u2 = user(s, "inst2@example.com").await;
    let j = s
        .create_instance(&NewInstance {
            soul_md: Some("hi"),
            timezone: Some("UTC"),
            status: InstanceStatus::Queued,
            ..new_instance(u2.id, "another-0000")
        })
        .await
        .unwrap();
    let all = s.list_instances().await.unwrap();
    assert_eq!(
        all.iter().map(|x| x.subdomain.as_str()).collect::<Vec<_>>(),
        vec!["another-0000", "mybot-1a2b"]
    );
    assert_eq!(
        s.list_instances_by_status(InstanceStatus::Queued)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.list_instances_by_user(u2.id).await.unwrap()[0].id, j.id);

    assert!(matches!(
        s.create_instance(&new_instance(Uuid::new_v4(), "orphan-0000"))
            .await,
        Err(StoreError::NotFound("user"))
    ));

    s.add_usage(i.id, now_ms(), 1, 10).await.unwrap();
    assert!(s.delete_instance(i.id).await.unwrap());
    assert!(!s.delete_instance(i.id).await.unwrap());
    assert!(s
        .get_instance_by_subdomain("mybot-1a2b")
        .await
        .unwrap()
        .is_none());
    assert!(s.get_instance_by_user(u.id).await.unwrap().is_none());
}

async fn duplicate_subdomain_case_insensitive(db: &Db) {
    let s = &db.store;
    let u = user(s, "sub@example.com").await;
    let v = user(s, "sub2@example.com").await;
    s.create_instance(&new_instance(u.id, "claw-beef"))
        .await
        .unwrap();
    let err = s
        .create_instance(&new_instance(v.id, "Claw-BEEF"))
        .await
        .unwrap_err();
    assert!(err.is_conflict(Conflict::Subdomain), "{err:?}");
    assert_eq!(s.list_instances_by_user(v.id).await.unwrap().len(), 0);
}

async fn admin_tokens(db: &Db) {
    let s = &db.store;
    let (tok, hash) = new_token().unwrap();
    let t = s.create_admin_token("ci", &hash).await.unwrap();
    assert_eq!(t.name, "ci");
    let err = s
        .create_admin_token("ci", &TokenHash::of("other"))
        .await
        .unwrap_err();
    assert!(err.is_conflict(Conflict::AdminTokenName), "{err:?}");

    let found = s
        .find_admin_token_by_hash(&TokenHash::of(&tok))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, t.id);
    assert!(found.last_used_at.is_some());
    assert!(s
        .find_admin_token_by_hash(&TokenHash::of("nope"))
        .await
        .unwrap()
        .is_none());

    assert!(s.revoke_admin_token("ci").await.unwrap());
    assert!(!s.revoke_admin_token("ci").await.unwrap());
    assert!(s.find_admin_token_by_hash(&hash).await.unwrap().is_none());
    // The name is free again once revoked.
    let t2 = s
        .create_admin_token("ci", &TokenHash::of("again"))
        .await
        .unwrap();
    let all = s.list_admin_tokens().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|x| x.id == t.id && x.revoked_at.is_some()));
    assert!(all.iter().any(|x| x.id == t2.id && x.revoked_at.is_none()));

    let raw: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM admin_tokens")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert!(!raw.contains(&tok));
}

async fn usage_counters(db: &Db) {
    let s = &db.store;
    let u = user(s, "usage@example.com").await;
    let i = s
        .create_instance(&new_instance(u.id, "usage-0001"))
        .await
        .unwrap();
    let day = |y, m, d| days_from_civil(y, m, d) * DAY_MS + 3_600_000;
    s.add_usage(i.id, day(2026, 3, 1), 2, 100).await.unwrap();
    s.add_usage(i.id, day(2026, 3, 1), 3, 50).await.unwrap();
    s.add_usage(i.id, day(2026, 3, 31), 1, 1).await.unwrap();
    s.add_usage(i.id, day(2026, 4, 1), 7, 7).await.unwrap();
    s.add_usage(i.id, day(2026, 2, 28), 9, 9).await.unwrap();

    assert_eq!(
        s.usage_month(i.id, 2026, 3).await.unwrap(),
        UsageTotals {
            messages: 6,
            tokens: 151
        }
    );
    assert_eq!(
        s.usage_month(i.id, 2026, 5).await.unwrap(),
        UsageTotals::default()
    );
    assert!(s.usage_month(i.id, 2026, 13).await.is_err());
    let days = s
        .usage_days(i.id, "2026-03-01", "2026-03-31")
        .await
        .unwrap();
    assert_eq!(days.len(), 2);
    assert_eq!(
        days[0],
        UsageDay {
            day: "2026-03-01".into(),
            messages: 5,
            tokens: 150
        }
    );

    s.add_usage(i.id, now_ms(), 4, 40).await.unwrap();
    assert_eq!(
        s.usage_this_month(i.id).await.unwrap().messages,
        4 + if time::day_string(now_ms()).starts_with("2026-03") {
            6
        } else {
            0
        }
    );
    assert!(matches!(
        s.add_usage(Uuid::new_v4(), now_ms(), 1, 1).await,
        Err(StoreError::NotFound("instance"))
    ));
}

async fn account_deletion(db: &Db) {
    let s = &db.store;
    let u = user(s, "bye@example.com").await;
    let keep = user(s, "stay@example.com").await;
    let t1 = s.request_account_deletion(u.id).await.unwrap();
    let t2 = s.request_account_deletion(u.id).await.unwrap();
    assert_eq!(t1, t2, "the first request time is kept");
    assert_eq!(
        s.get_user(u.id)
            .await
            .unwrap()
            .unwrap()
            .deletion_requested_at,
        Some(t1)
    );
    assert!(s.users_due_for_deletion(t1).await.unwrap().is_empty());
    let due = s.users_due_for_deletion(t1 + 1).await.unwrap();
    assert_eq!(due.iter().map(|x| x.id).collect::<Vec<_>>(), vec![u.id]);

    assert!(s.cancel_account_deletion(u.id).await.unwrap());
    assert!(!s.cancel_account_deletion(u.id).await.unwrap());
    assert!(s
        .users_due_for_deletion(now_ms() + 1)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.request_account_deletion(Uuid::new_v4()).await,
        Err(StoreError::NotFound("user"))
    ));

    // Hard delete cascades.
    let i = s
        .create_instance(&new_instance(u.id, "bye-0001"))
        .await
        .unwrap();
    let sess = s
        .create_session(u.id, now_ms() + DAY_MS, None, None)
        .await
        .unwrap();
    s.create_refresh_token(sess.id, &TokenHash::of("r"), now_ms() + DAY_MS)
        .await
        .unwrap();
    s.upsert_api_key(u.id, "openai", None, PLAIN_KEY, &keyring())
        .await
        .unwrap();
    s.add_usage(i.id, now_ms(), 1, 1).await.unwrap();
    s.append_security_event(&NewSecurityEvent {
        user_id: Some(u.id),
        event: "login_success",
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(s.delete_user(u.id).await.unwrap());
    assert!(!s.delete_user(u.id).await.unwrap());
    assert!(s.get_instance(i.id).await.unwrap().is_none());
    assert!(s.get_session(sess.id).await.unwrap().is_none());
    assert!(s
        .get_refresh_token(&TokenHash::of("r"))
        .await
        .unwrap()
        .is_none());
    assert!(s.list_api_keys(u.id).await.unwrap().is_empty());
    assert!(s.get_user(keep.id).await.unwrap().is_some());
}

async fn export_has_no_secrets(db: &Db) {
    let s = &db.store;
    let kr = keyring();
    let u = user(s, "export@example.com").await;
    let i = s
        .create_instance(&new_instance(u.id, "export-0001"))
        .await
        .unwrap();
    s.update_instance_soul(i.id, Some("soul text"))
        .await
        .unwrap();
    s.add_usage(i.id, now_ms(), 3, 30).await.unwrap();
    s.upsert_api_key(u.id, "openai", None, PLAIN_KEY, &kr)
        .await
        .unwrap();
    s.enable_mfa(u.id, "MFASECRETVALUE", &["recovery-one".to_string()], &kr)
        .await
        .unwrap();
    let sess = s
        .create_session(u.id, now_ms() + DAY_MS, Some("192.0.2.1"), Some("ua"))
        .await
        .unwrap();
    let (rt, rt_hash) = new_token().unwrap();
    s.create_refresh_token(sess.id, &rt_hash, now_ms() + DAY_MS)
        .await
        .unwrap();
    let (et, et_hash) = new_token().unwrap();
    s.create_email_token(
        u.id,
        EmailTokenPurpose::Verify,
        &u.email,
        &et_hash,
        now_ms() + DAY_MS,
    )
    .await
    .unwrap();
    s.append_security_event(&NewSecurityEvent {
        user_id: Some(u.id),
        event: "api_key_changed",
        detail: Some("openai"),
        ..Default::default()
    })
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO skills_installed (id, instance_id, skill_id, version, config, installed_at) \
         VALUES ($1, $2, 'weather', '1.0.0', '{\"units\":\"metric\"}', $3)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(i.id.to_string())
    .bind(now_ms())
    .execute(s.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO subscriptions (id, user_id, tier, created_at) VALUES ($1, $2, 'pro', $3)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(u.id.to_string())
    .bind(now_ms())
    .execute(s.pool())
    .await
    .unwrap();

    let v = s.export_user(u.id).await.unwrap();
    let text = serde_json::to_string(&v).unwrap();
    assert_eq!(v["user"]["email"], "export@example.com");
    assert_eq!(v["user"]["mfaEnabled"], true);
    assert_eq!(v["instances"][0]["subdomain"], "export-0001");
    assert_eq!(v["instances"][0]["soulMd"], "soul text");
    assert_eq!(v["instances"][0]["usage"][0]["messages"], 3);
    assert_eq!(v["instances"][0]["skills"][0]["config"]["units"], "metric");
    assert_eq!(v["apiKeys"][0]["masked"], "sk-...wxyz");
    assert_eq!(v["sessions"][0]["ip"], "192.0.2.1");
    assert_eq!(v["securityLog"][0]["event"], "api_key_changed");
    assert_eq!(v["subscriptions"][0]["tier"], "pro");

    let sealed: String = sqlx::query_scalar("SELECT key_encrypted FROM api_keys")
        .fetch_one(s.pool())
        .await
        .unwrap();
    for secret in [
        PLAIN_KEY,
        "THISISTHEPLAINTEXTKEY",
        sealed.as_str(),
        "$2b$12$",
        "MFASECRETVALUE",
        "recovery-one",
        &secrets::sha256_hex("recovery-one"),
        &rt,
        rt_hash.as_str(),
        &et,
        et_hash.as_str(),
    ] {
        assert!(!text.contains(secret), "export leaks {secret}");
    }
    assert!(matches!(
        s.export_user(Uuid::new_v4()).await,
        Err(StoreError::NotFound("user"))
    ));
}

async fn concurrent_writers(db: &Db) {
    let s = &db.store;
    let mut tasks = Vec::new();
    for n in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let u = user(&s, &format!("c{n}@example.com")).await;
            let sess = s
                .create_session(u.id, now_ms() + DAY_MS, None, None)
                .await
                .unwrap();
            s.create_refresh_token(sess.id, &TokenHash::of(&format!("t{n}")), now_ms() + DAY_MS)
                .await
                .unwrap();
            s.create_instance(&new_instance(u.id, &format!("c-{n:04}")))
                .await
                .unwrap();
            u.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(s.list_instances().await.unwrap().len(), 40);
}

#[tokio::test]
async fn sqlite_file_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    store.migrate().await.unwrap();
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(busy, 5000);
    store.close().await;

    // Reopen: data persists and migrate is a no-op.
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::InvalidUrl(_))
    ));
    assert!(!format!("{store:?}").contains("c.db"));
}

#[tokio::test]
async fn sqlite_in_memory() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let u = user(&store, "mem@example.com").await;
    assert!(store.get_user(u.id).await.unwrap().is_some());
}

async fn pool_claims_are_exclusive(db: &Db) {
    let s = &db.store;
    let mut members = Vec::new();
    for n in 0..5 {
        let m = s
            .insert_pool_member("node-a", &format!("member-{n}"))
            .await
            .unwrap();
        assert_eq!(m.state, PoolMemberState::Creating);
        s.set_pool_member_runtime_id(m.id, &format!("rt-{n}"))
            .await
            .unwrap();
        s.mark_pool_member_idle(m.id, &format!("127.0.0.1:{}", 9000 + n))
            .await
            .unwrap();
        members.push(m.id);
    }
    // A member of another node is never claimed here.
    let other = s.insert_pool_member("node-b", "member-b").await.unwrap();
    s.mark_pool_member_idle(other.id, "127.0.0.1:9999")
        .await
        .unwrap();
    assert_eq!(
        s.count_pool_members("node-a", PoolMemberState::Idle)
            .await
            .unwrap(),
        5
    );

    let mut instances = Vec::new();
    for n in 0..8 {
        let u = user(s, &format!("claim{n}@example.com")).await;
        instances.push(
            s.create_instance(&new_instance(u.id, &format!("claim-{n}")))
                .await
                .unwrap()
                .id,
        );
    }
    let claims: Vec<_> = instances
        .iter()
        .map(|&instance| {
            let store = s.clone();
            tokio::spawn(async move { store.claim_pool_member("node-a", instance).await.unwrap() })
        })
        .collect();
    let mut won = Vec::new();
    for claim in claims {
        if let Some(member) = claim.await.unwrap() {
            assert_eq!(member.state, PoolMemberState::Claimed);
            assert!(member.runtime_id.is_some() && member.upstream.is_some());
            won.push(member.id);
        }
    }
    won.sort();
    won.dedup();
    assert_eq!(won.len(), 5, "each idle member claimed exactly once");
    assert_eq!(
        s.count_pool_members("node-a", PoolMemberState::Idle)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.count_pool_members("node-b", PoolMemberState::Idle)
            .await
            .unwrap(),
        1
    );

    // Some instance won a member; it is found by its instance, moved, then removed.
    let mut claimed = None;
    for &instance in &instances {
        if let Some(member) = s.pool_member_for_instance(instance).await.unwrap() {
            claimed = Some(member);
            break;
        }
    }
    let member = claimed.expect("a claimed member");
    // Found by its name too (the LLM meter's member tokens name it).
    let by_name = s.pool_member_by_name(&member.name).await.unwrap().unwrap();
    assert_eq!(
        (by_name.id, by_name.instance_id),
        (member.id, member.instance_id)
    );
    assert!(s.pool_member_by_name("nobody").await.unwrap().is_none());
    s.set_pool_member_upstream(member.id, "127.0.0.1:7000")
        .await
        .unwrap();
    assert!(s.delete_pool_member(member.id).await.unwrap());
    assert_eq!(
        s.list_pool_members("node-a").await.unwrap().len(),
        4,
        "the deleted member is gone"
    );
}

/// A user with an instance to point custom domains at.
async fn domain_user(store: &Store, name: &str) -> (User, Instance) {
    let u = user(store, &format!("{name}@example.com")).await;
    let i = store
        .create_instance(&new_instance(u.id, &format!("{name}-box")))
        .await
        .unwrap();
    (u, i)
}

/// Issue #16: an account that adds someone else's domain and never proves it blocks nobody.
async fn custom_domain_claims_block_nobody_until_proven(db: &Db) {
    let s = &db.store;
    let host = "shop.victim.example";
    let (squatter, squatter_box) = domain_user(s, "squatter").await;
    let (owner, owner_box) = domain_user(s, "owner").await;
    let squat = s
        .create_custom_domain(squatter.id, squatter_box.id, host, "squat-token")
        .await
        .unwrap();
    // The real owner can still add it, with a token of its own.
    let real = s
        .create_custom_domain(owner.id, owner_box.id, host, "owner-token")
        .await
        .unwrap();
    assert_ne!(squat.id, real.id);
    // Once per account.
    let again = s
        .create_custom_domain(squatter.id, squatter_box.id, host, "t2")
        .await
        .unwrap_err();
    assert!(again.is_conflict(Conflict::Hostname), "{again:?}");
    // Nobody owns it before a proof.
    assert!(s
        .get_custom_domain_by_hostname(host)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.get_custom_domain_of(squatter.id, host)
            .await
            .unwrap()
            .unwrap()
            .id,
        squat.id
    );

    // The owner's records are seen first: it owns the name from then on.
    let proven = s.prove_custom_domain(real.id).await.unwrap().unwrap();
    let at = proven.verified_at.expect("proven");
    assert_eq!(
        s.get_custom_domain_by_hostname(host)
            .await
            .unwrap()
            .unwrap()
            .id,
        real.id
    );
    // Proving again keeps the first time.
    let again = s.prove_custom_domain(real.id).await.unwrap().unwrap();
    assert_eq!(again.verified_at, Some(at));
    // The squatter's claim can never be proven, nor issued, nor activated.
    let err = s.prove_custom_domain(squat.id).await.unwrap_err();
    assert!(err.is_conflict(Conflict::DomainVerified), "{err:?}");
    for status in [DomainStatus::Issuing, DomainStatus::Active] {
        let err = s
            .set_custom_domain_status(squat.id, status, None)
            .await
            .unwrap_err();
        assert!(err.is_conflict(Conflict::DomainVerified), "{err:?}");
    }
    let active = s
        .set_custom_domain_status(real.id, DomainStatus::Active, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.status, DomainStatus::Active);
    assert_eq!(
        s.get_custom_domain(squat.id)
            .await
            .unwrap()
            .unwrap()
            .verified_at,
        None
    );
    // The squatter removing its claim leaves the owner's alone.
    s.delete_custom_domain(squatter.id, host)
        .await
        .unwrap()
        .unwrap();
    let owner_claim = s
        .get_custom_domain_by_hostname(host)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (owner_claim.id, owner_claim.status),
        (real.id, DomainStatus::Active)
    );
    // Until the owner removes it, nobody else's claim can be proven.
    let (late, late_box) = domain_user(s, "late").await;
    let late_claim = s
        .create_custom_domain(late.id, late_box.id, host, "late-token")
        .await
        .unwrap();
    assert!(s.prove_custom_domain(late_claim.id).await.is_err());
    s.delete_custom_domain(owner.id, host)
        .await
        .unwrap()
        .unwrap();
    assert!(s
        .prove_custom_domain(late_claim.id)
        .await
        .unwrap()
        .unwrap()
        .verified_at
        .is_some());
}

/// Two nodes seeing two accounts' records at the same moment: the database lets exactly one
/// claim become the owner (the partial unique index), never two.
async fn one_claim_wins_when_nodes_prove_a_hostname_at_once(db: &Db) {
    let s = &db.store;
    let mut claims = Vec::new();
    for n in 0..6 {
        let (u, i) = domain_user(s, &format!("racer{n}")).await;
        for round in 0..4 {
            let host = format!("race{round}.example.net");
            let c = s
                .create_custom_domain(u.id, i.id, &host, &format!("t{n}"))
                .await
                .unwrap();
            claims.push((round, c.id));
        }
    }
    for round in 0..4 {
        let mut tasks = Vec::new();
        for (_, id) in claims.iter().filter(|(r, _)| *r == round) {
            let (s, id) = (s.clone(), *id);
            tasks.push(tokio::spawn(async move {
                // Half the racers go straight to active, as a node finishing an order would.
                if round % 2 == 0 {
                    s.prove_custom_domain(id).await.map(|_| ())
                } else {
                    s.set_custom_domain_status(id, DomainStatus::Active, None)
                        .await
                        .map(|_| ())
                }
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => won += 1,
                Err(e) => assert!(e.is_conflict(Conflict::DomainVerified), "{e:?}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
        let host = format!("race{round}.example.net");
        let proven: Vec<_> = s
            .list_custom_domains()
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.hostname == host && d.verified_at.is_some())
            .collect();
        assert_eq!(proven.len(), 1, "{proven:?}");
    }
}

/// Claims never proven are removed once older than the TTL; proven ones stay, however old.
async fn unproven_custom_domain_claims_expire(db: &Db) {
    let s = &db.store;
    let (a, a_box) = domain_user(s, "stale").await;
    let (b, b_box) = domain_user(s, "proven").await;
    let stale = s
        .create_custom_domain(a.id, a_box.id, "old.example.com", "a")
        .await
        .unwrap();
    let owned = s
        .create_custom_domain(b.id, b_box.id, "mine.example.com", "b")
        .await
        .unwrap();
    s.prove_custom_domain(owned.id).await.unwrap().unwrap();
    let fresh = s
        .create_custom_domain(b.id, b_box.id, "old.example.com", "b2")
        .await
        .unwrap();
    let eight_days_ago = now_ms() - 8 * DAY_MS;
    for id in [stale.id, owned.id] {
        sqlx::query("UPDATE custom_domains SET created_at = $1 WHERE id = $2")
            .bind(eight_days_ago)
            .bind(id.to_string())
            .execute(s.pool())
            .await
            .unwrap();
    }
    let expired = s
        .expire_custom_domain_claims(now_ms() - 7 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![stale.id]
    );
    assert!(s.get_custom_domain(stale.id).await.unwrap().is_none());
    assert!(s.get_custom_domain(owned.id).await.unwrap().is_some());
    assert!(s.get_custom_domain(fresh.id).await.unwrap().is_some());
    // Nothing more to expire.
    assert!(s
        .expire_custom_domain_claims(now_ms() - 7 * DAY_MS)
        .await
        .unwrap()
        .is_empty());
}

/// Installed skills: the tier's cap holds under concurrent installs, secrets are sealed (never in
/// the row in clear) and merged on change, a downgrade disables the newest past the cap, and a
/// key rotation re-seals them.
async fn skills_installed_capped_and_sealed(db: &Db) {
    let s = &db.store;
    let k = keyring();
    let u = user(s, "skills@example.com").await;
    let i = s
        .create_instance(&new_instance(u.id, "skills-0001"))
        .await
        .unwrap();
    let plain: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"units": "metric"})).unwrap();
    let secret = std::collections::BTreeMap::from([(
        "NOTION_API_KEY".to_string(),
        "secret_notion_value_123".to_string(),
    )]);
    let none = std::collections::BTreeMap::new();
    // Eight concurrent installs against a cap of 3: exactly 3 succeed.
    let ids: Vec<String> = (0..8).map(|n| format!("skill-{n}")).collect();
    let news: Vec<NewSkill> = ids
        .iter()
        .map(|id| NewSkill {
            instance_id: i.id,
            skill_id: id,
            version: "1.0.0",
            source: SkillSource::Registry,
            config: &plain,
            secrets: if id == "skill-0" { &secret } else { &none },
            cap: 3,
        })
        .collect();
    let results = futures_util::future::join_all(news.iter().map(|n| s.install_skill(n, &k))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    StoreError::LimitReached {
                        what: "skills",
                        cap: 3
                    }
                ),
                "{e:?}"
            );
        }
    }
    let installed = s.skills_of(i.id, &k).await.unwrap();
    assert_eq!(installed.len(), 3);
    let first = installed[0].skill_id.clone();
    // Installed twice: a conflict, not a second row.
    let again = NewSkill {
        cap: 0,
        ..*news.iter().find(|n| n.skill_id == first).unwrap()
    };
    assert!(s
        .install_skill(&again, &k)
        .await
        .unwrap_err()
        .is_conflict(Conflict::Skill));

    // A secret is sealed: not in the row, in clear or otherwise recognisable.
    let with_secret = NewSkill {
        skill_id: "notion",
        source: SkillSource::Bundled,
        secrets: &secret,
        cap: 0,
        ..news[0]
    };
    let notion = s.install_skill(&with_secret, &k).await.unwrap();
    assert_eq!(notion.secret_fields, vec!["NOTION_API_KEY".to_string()]);
    let raw: Vec<String> =
        sqlx::query_scalar("SELECT COALESCE(secrets_sealed, '') || config FROM skills_installed")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert!(
        raw.iter().all(|r| !r.contains("secret_notion_value")),
        "{raw:?}"
    );
    let opened = s.skills_with_secrets(i.id, &k).await.unwrap();
    let (_, secrets) = opened
        .iter()
        .find(|(sk, _)| sk.skill_id == "notion")
        .unwrap();
    assert_eq!(
        secrets["NOTION_API_KEY"].as_str(),
        "secret_notion_value_123"
    );

    // A change merges: a new secret replaces, an empty one removes; config null removes a field.
    let rotated = std::collections::BTreeMap::from([
        ("NOTION_API_KEY".to_string(), "secret_rotated".to_string()),
        ("EXTRA".to_string(), "x".to_string()),
    ]);
    let units_off: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({"units": null, "lang": "fr"})).unwrap();
    let changed = s
        .update_skill(
            i.id,
            "notion",
            &SkillChange {
                secrets: Some(&rotated),
                config: Some(&units_off),
                ..Default::default()
            },
            &k,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed.secret_fields,
        vec!["EXTRA".to_string(), "NOTION_API_KEY".to_string()]
    );
    assert_eq!(
        serde_json::Value::Object(changed.config),
        serde_json::json!({"lang": "fr"})
    );
    let drop_extra = std::collections::BTreeMap::from([("EXTRA".to_string(), String::new())]);
    let changed = s
        .update_skill(
            i.id,
            "notion",
            &SkillChange {
                secrets: Some(&drop_extra),
                ..Default::default()
            },
            &k,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.secret_fields, vec!["NOTION_API_KEY".to_string()]);
    assert!(s
        .update_skill(i.id, "nope", &SkillChange::default(), &k)
        .await
        .unwrap()
        .is_none());

    // A downgrade to 2: the two newest are disabled, with the reason; enabling one again past
    // the cap is refused.
    let disabled = s
        .cap_skills(i.id, 2, "tier free allows 2 skills")
        .await
        .unwrap();
    assert_eq!(disabled.len(), 2);
    assert_eq!(disabled[0], "notion", "newest first");
    let all = s.skills_of(i.id, &k).await.unwrap();
    assert_eq!(all.iter().filter(|sk| sk.enabled).count(), 2);
    let off = all.iter().find(|sk| sk.skill_id == "notion").unwrap();
    assert_eq!(
        off.disabled_reason.as_deref(),
        Some("tier free allows 2 skills")
    );
    let enable = SkillChange {
        enabled: Some(true),
        cap: 2,
        ..Default::default()
    };
    assert!(matches!(
        s.update_skill(i.id, "notion", &enable, &k).await,
        Err(StoreError::LimitReached { cap: 2, .. })
    ));
    // Removing one makes room; enabling clears the reason.
    assert!(s.remove_skill(i.id, &first).await.unwrap());
    assert!(!s.remove_skill(i.id, &first).await.unwrap());
    let on = s
        .update_skill(i.id, "notion", &enable, &k)
        .await
        .unwrap()
        .unwrap();
    assert!(on.enabled && on.disabled_reason.is_none());

    // Rotation re-seals skill secrets; they still open under the new keyring.
    let mut rotated_ring = keyring();
    rotated_ring.rotate_to("k2", &[7u8; 32]).unwrap();
    assert!(s.reseal_secrets(&rotated_ring).await.unwrap() >= 1);
    let opened = s.skills_with_secrets(i.id, &rotated_ring).await.unwrap();
    let (_, secrets) = opened
        .iter()
        .find(|(sk, _)| sk.skill_id == "notion")
        .unwrap();
    assert_eq!(secrets["NOTION_API_KEY"].as_str(), "secret_rotated");
}

/// Issue #19: subscriptions apply in the order of their own state (canceled is final), a
/// purchase is credited once, the balance is the ledger's sum, grace periods keep their first
/// end, domains park past a limit and come back, tier-disabled skills are restored.
async fn billing_state_ledger_and_parked_domains(db: &Db) {
    let s = &db.store;
    let (u, i) = domain_user(s, "payer").await;
    assert_eq!(s.set_stripe_customer(u.id, "cus_1").await.unwrap(), "cus_1");
    // A second customer made by a concurrent checkout does not replace the first.
    assert_eq!(s.set_stripe_customer(u.id, "cus_2").await.unwrap(), "cus_1");
    assert_eq!(
        s.user_by_stripe_customer("cus_1")
            .await
            .unwrap()
            .unwrap()
            .id,
        u.id
    );
    assert!(s.user_by_stripe_customer("cus_2").await.unwrap().is_none());

    let state = |status, at| SubscriptionState {
        user_id: u.id,
        stripe_subscription_id: "sub_1",
        stripe_customer_id: "cus_1",
        tier: Tier::Pro,
        status,
        current_period_end: Some(1_000),
        cancel_at_period_end: false,
        state_at: at,
    };
    assert!(s
        .apply_subscription(&state(SubscriptionStatus::Active, 10))
        .await
        .unwrap()
        .is_some());
    // Older: ignored. Same time: applied (arrival order within a second).
    assert!(s
        .apply_subscription(&state(SubscriptionStatus::PastDue, 9))
        .await
        .unwrap()
        .is_none());
    let same = s
        .apply_subscription(&state(SubscriptionStatus::PastDue, 10))
        .await
        .unwrap();
    assert_eq!(same.unwrap().status, SubscriptionStatus::PastDue);
    assert!(s
        .apply_subscription(&state(SubscriptionStatus::Canceled, 11))
        .await
        .unwrap()
        .is_some());
    // Canceled is final, even for a later state.
    assert!(s
        .apply_subscription(&state(SubscriptionStatus::Active, 12))
        .await
        .unwrap()
        .is_none());
    let subs = s.subscriptions_of(u.id).await.unwrap();
    assert_eq!(
        (subs.len(), subs[0].status),
        (1, SubscriptionStatus::Canceled)
    );

    // Events: seen once recorded.
    assert!(!s.billing_event_seen("evt_1").await.unwrap());
    s.record_billing_event("evt_1", "invoice.paid", "ok")
        .await
        .unwrap();
    s.record_billing_event("evt_1", "invoice.paid", "again")
        .await
        .unwrap();
    assert!(s.billing_event_seen("evt_1").await.unwrap());

    // Grace: the first end holds until cleared.
    assert_eq!(s.start_grace(u.id, 500).await.unwrap(), 500);
    assert_eq!(s.start_grace(u.id, 900).await.unwrap(), 500);
    assert_eq!(s.users_past_grace(499).await.unwrap(), Vec::<Uuid>::new());
    assert_eq!(s.users_past_grace(500).await.unwrap(), vec![u.id]);
    s.clear_grace(u.id).await.unwrap();
    assert!(s.billing_account(u.id).await.unwrap().grace_until.is_none());

    // The ledger: a purchase once per session, usage below zero allowed, the sum is the balance.
    let purchase = NewCredit {
        user_id: u.id,
        kind: CreditKind::Purchase,
        tokens: 1_000,
        amount_cents: Some(1_000),
        reference: Some("cs_1"),
        actor: None,
        reason: Some("1m"),
    };
    assert_eq!(s.add_credit(&purchase).await.unwrap(), Some(1_000));
    assert_eq!(s.add_credit(&purchase).await.unwrap(), None);
    let usage = |tokens| NewCredit {
        user_id: u.id,
        kind: CreditKind::Usage,
        tokens,
        amount_cents: None,
        reference: None,
        actor: None,
        reason: Some("instance x"),
    };
    let debit = vec![usage(-150); 10];
    let debits = futures_util::future::join_all(debit.iter().map(|d| s.add_credit(d))).await;
    assert!(debits.iter().all(|d| d.is_ok()), "{debits:?}");
    assert_eq!(s.credit_balance(u.id).await.unwrap(), -500);
    let ledger = s.credit_ledger(u.id, 100).await.unwrap();
    assert_eq!(ledger.len(), 11);
    assert_eq!(ledger.iter().map(|e| e.tokens).sum::<i64>(), -500);

    // Domains: two proven and one pending; a limit of 1 parks the newer two; back at 5.
    let mut ids = Vec::new();
    for (n, host) in ["a.example.org", "b.example.org", "c.example.org"]
        .iter()
        .enumerate()
    {
        let d = s
            .create_custom_domain(u.id, i.id, host, &format!("t{n}"))
            .await
            .unwrap();
        ids.push(d.id);
    }
    s.set_custom_domain_status(ids[0], DomainStatus::Active, None)
        .await
        .unwrap();
    s.set_custom_domain_status(ids[1], DomainStatus::Active, None)
        .await
        .unwrap();
    let parked = s
        .park_custom_domains(u.id, 1, "the free tier")
        .await
        .unwrap();
    assert_eq!(parked, ["b.example.org", "c.example.org"]);
    assert!(s
        .park_custom_domains(u.id, 1, "again")
        .await
        .unwrap()
        .is_empty());
    let back = s.unpark_custom_domains(u.id, 5).await.unwrap();
    let states: Vec<(String, DomainStatus)> =
        back.into_iter().map(|d| (d.hostname, d.status)).collect();
    assert_eq!(
        states,
        [
            ("b.example.org".to_string(), DomainStatus::Active),
            ("c.example.org".to_string(), DomainStatus::PendingDns),
        ]
    );

    // Skills: a cap of 1 disables the newer; the owner's own disable is not undone by a restore.
    let none = std::collections::BTreeMap::new();
    let plain = serde_json::Map::new();
    for id in ["first", "second", "third"] {
        s.install_skill(
            &NewSkill {
                instance_id: i.id,
                skill_id: id,
                version: "1",
                source: SkillSource::Bundled,
                config: &plain,
                secrets: &none,
                cap: 0,
            },
            &keyring(),
        )
        .await
        .unwrap();
    }
    let change = SkillChange {
        enabled: Some(false),
        ..SkillChange::default()
    };
    s.update_skill(i.id, "first", &change, &keyring())
        .await
        .unwrap();
    assert_eq!(s.cap_skills(i.id, 1, "free").await.unwrap(), ["third"]);
    assert!(s.restore_capped_skills(i.id, 1).await.unwrap().is_empty());
    assert_eq!(s.restore_capped_skills(i.id, 0).await.unwrap(), ["third"]);
    let enabled: Vec<String> = s
        .skills_of(i.id, &keyring())
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.enabled)
        .map(|k| k.skill_id)
        .collect();
    assert_eq!(enabled, ["second", "third"]);
}
