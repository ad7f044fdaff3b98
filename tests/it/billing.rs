//! Billing (issue 19) against a FAKE of Stripe ([`crate::stripe_fake`]: Stripe cannot run here;
//! the fake implements the documented endpoints and signs its webhooks as Stripe does), a real
//! Docker Engine for the live container resources, and the LLM meter for AI credits.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::openclaw::Cleanup;
use crate::stripe_fake::{FakeStripe, WEBHOOK_SECRET};
use crate::support::*;

const PW: &str = "correct horse battery staple 9";
const PATIENCE: Duration = Duration::from_secs(30);

fn with_fake(mut builder: EdgeBuilder, fake: &FakeStripe) -> EdgeBuilder {
    for (section, line) in fake.config() {
        builder = builder.section(section, &line);
    }
    builder
}

/// A registered, verified user: (token, user id).
async fn verified_user(edge: &Edge, email: &str) -> (String, String) {
    edge.register_verified(email, PW).await
}

async fn billing(edge: &Edge, token: &str) -> Value {
    let resp = edge.api("GET", "/api/billing", Some(token), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// Waits until `GET /api/billing` satisfies `done` (a webhook Stripe sends after answering).
async fn wait_billing(
    edge: &Edge,
    token: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = billing(edge, token).await;
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {view}\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn checkout(edge: &Edge, token: &str, body: Value) -> Response {
    edge.api("POST", "/api/billing/checkout", Some(token), Some(body))
        .await
}

/// The Checkout Session id in a checkout URL of the fake (`http://…/pay/<id>`).
fn session_of(reply: &Response) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let url = reply.json()["checkoutUrl"].as_str().unwrap().to_string();
    url.rsplit('/').next().unwrap().to_string()
}

async fn container(node: &str, format: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker inspect --format '{format}' $(docker ps -q --filter label=clawdeploy.node={node})"
        ))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn wait_mail(edge: &Edge, to: &str, subject: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mail = edge.last_mail(to).await;
        if mail["subject"]
            .as_str()
            .is_some_and(|s| s.contains(subject))
        {
            return;
        }
        assert!(Instant::now() < deadline, "no mail {subject:?}: {mail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_container(node: &str, format: &str, expected: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = container(node, format).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{format} is {now}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn enabled_skills(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["skills"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["enabled"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The PRD's flow: checkout → webhook → the tier at once, with the container's memory and CPUs
/// changed live (checked with `docker inspect`) → a renewal → a failed payment (the tier kept,
/// the owner mailed) → the grace period ends → free: the skill past the cap disabled, the
/// container shrunk, nothing deleted → Stripe ends the subscription → a new checkout restores it
/// all.
async fn the_whole_tier_lifecycle_follows_stripe(db: Db) {
    let fake = FakeStripe::start().await;
    let node = format!(
        "bill{}x{}",
        std::process::id(),
        matches!(db, Db::Postgres(_)) as u8
    );
    let _cleanup = Cleanup(node.clone());
    let edge = with_fake(fixture_pool_edge(true, 0, &node), &fake)
        .db(&db)
        .section("tiers.pro", "memory_mb = 96")
        .section("tiers.pro", "cpus = 1.5")
        .section("billing", "grace_period_secs = 5")
        .section("billing", "sweep_interval_secs = 1")
        .start()
        .await;
    fake.deliver_to(edge.addr);
    let (token, _) = verified_user(&edge, "payer@example.com").await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "payer"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    edge.wait_running(&token, PATIENCE).await;
    assert_eq!(
        container(&node, "{{.HostConfig.Memory}}").await,
        (64u64 << 20).to_string()
    );
    for skill in ["weather", "diagram-maker", "meme-maker"] {
        let installed = edge
            .api(
                "POST",
                "/api/skills/install",
                Some(&token),
                Some(json!({"skillId": skill})),
            )
            .await;
        assert_eq!(installed.status, 201, "{}", installed.text());
    }
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "free");
    assert_eq!(view["tiers"][1]["priceCents"], 2900);
    assert_eq!(view["tiers"][1]["purchasable"], true);
    assert_eq!(view["tiers"][0]["purchasable"], false);

    // Checkout: the tier applies the moment Stripe's events arrive, resources live.
    let session = session_of(&checkout(&edge, &token, json!({"tier": "pro"})).await);
    fake.complete(&session).await;
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "pro", "{view}");
    assert_eq!(view["subscription"]["status"], "active");
    assert_eq!(view["subscription"]["tier"], "pro");
    assert_eq!(
        container(&node, "{{.HostConfig.Memory}}").await,
        (96u64 << 20).to_string()
    );
    assert_eq!(
        container(&node, "{{.HostConfig.NanoCpus}}").await,
        "1500000000"
    );
    let me = edge
        .api("GET", "/api/instances/me", Some(&token), None)
        .await
        .json();
    assert_eq!(me["instance"]["tier"], "pro");
    // A fourth skill: allowed on pro.
    let fourth = edge
        .api(
            "POST",
            "/api/skills/install",
            Some(&token),
            Some(json!({"skillId": "visualize"})),
        )
        .await;
    assert_eq!(fourth.status, 201, "{}", fourth.text());
    let sub = fake
        .subscription_of(view["subscription"]["stripeCustomerId"].as_str().unwrap())
        .unwrap();

    // Renewal on the anchor date: still pro, the period moved on.
    let before = view["subscription"]["currentPeriodEnd"].as_i64().unwrap();
    fake.renew(&sub).await;
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "pro");
    assert!(
        view["subscription"]["currentPeriodEnd"].as_i64().unwrap() > before,
        "{view}"
    );
    let invoices = edge
        .api("GET", "/api/billing/invoices", Some(&token), None)
        .await;
    assert_eq!(invoices.status, 200, "{}", invoices.text());
    assert_eq!(invoices.json()["invoices"].as_array().unwrap().len(), 2);

    // A failed payment: the tier stays during the grace period, the owner is told.
    fake.fail_payment(&sub).await;
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "pro", "{view}");
    assert_eq!(view["subscription"]["status"], "past_due");
    assert!(view["graceUntil"].is_string(), "{view}");
    let mail = edge.last_mail("payer@example.com").await;
    assert!(
        mail["subject"].as_str().unwrap().contains("payment failed"),
        "{mail}"
    );

    // The grace period ends unpaid: free, the newest skill disabled (kept), the memory back.
    let view = wait_billing(&edge, &token, "downgraded", |v| v["tier"] == "free").await;
    assert!(view["graceUntil"].is_null(), "{view}");
    // The sweep moves the account first (quotas at once), then each instance: its skills, its container.
    wait_container(&node, "{{.HostConfig.Memory}}", &(64u64 << 20).to_string()).await;
    let skills = edge
        .api("GET", "/api/skills", Some(&token), None)
        .await
        .json();
    assert_eq!(
        enabled_skills(&skills),
        ["diagram-maker", "meme-maker", "weather"]
    );
    let visualize = skills["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "visualize")
        .unwrap()
        .clone();
    assert_eq!(visualize["installed"], true, "{visualize}");
    // The notice is mailed once the account has moved.
    wait_mail(&edge, "payer@example.com", "moved to free").await;

    // Stripe gives up on the old subscription; a new checkout restores everything.
    fake.end(&sub).await;
    assert_eq!(billing(&edge, &token).await["tier"], "free");
    let session = session_of(&checkout(&edge, &token, json!({"tier": "pro"})).await);
    fake.complete(&session).await;
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "pro", "{view}");
    let skills = edge
        .api("GET", "/api/skills", Some(&token), None)
        .await
        .json();
    assert_eq!(
        enabled_skills(&skills),
        ["diagram-maker", "meme-maker", "visualize", "weather"]
    );
    assert_eq!(
        container(&node, "{{.HostConfig.Memory}}").await,
        (96u64 << 20).to_string()
    );

    // Moving to team changes the subscription's price (no second checkout); cancel keeps the
    // tier until the period's end.
    let moved = checkout(&edge, &token, json!({"tier": "team"})).await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert!(moved.json()["checkoutUrl"].is_null());
    wait_billing(&edge, &token, "on team", |v| v["tier"] == "team").await;
    let cancelled = edge
        .api("POST", "/api/billing/cancel", Some(&token), Some(json!({})))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["cancelAtPeriodEnd"], true);
    let view = wait_billing(&edge, &token, "cancelling", |v| {
        v["subscription"]["cancelAtPeriodEnd"] == true
    })
    .await;
    assert_eq!(view["tier"], "team");
}

/// Bad and replayed deliveries change nothing; events apply in the subscription's own order;
/// checkout refuses what it cannot sell; Stripe down is a clean 503.
async fn webhooks_are_verified_idempotent_and_ordered(db: Db) {
    let fake = FakeStripe::start().await;
    let edge = with_fake(EdgeBuilder::new(), &fake).db(&db).start().await;
    fake.deliver_to(edge.addr);
    let (token, user_id) = verified_user(&edge, "orders@example.com").await;

    // Refusals of checkout: current tier, unknown tier, free, a foreign return URL.
    for (body, status, code) in [
        (json!({"tier": "free"}), 422, "TIER_NOT_FOR_SALE"),
        (json!({"tier": "gold"}), 422, "INVALID_TIER"),
        (
            json!({"tier": "pro", "successUrl": "https://evil.example/"}),
            422,
            "INVALID_RETURN_URL",
        ),
        (json!({"tier": "pro", "extra": 1}), 422, ""),
    ] {
        let resp = checkout(&edge, &token, body.clone()).await;
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
        if !code.is_empty() {
            assert_eq!(resp.error_code(), code, "{body}");
        }
    }
    // Stripe down: 503, and no customer was half made.
    fake.set_down(true);
    let down = checkout(&edge, &token, json!({"tier": "pro"})).await;
    assert_eq!(
        (down.status, down.error_code().as_str()),
        (503, "BILLING_UNAVAILABLE"),
        "{}",
        down.text()
    );
    assert_eq!(down.header("retry-after"), Some("30"));
    fake.set_down(false);
    assert_eq!(fake.customer_count(), 0);

    // A real checkout creates the customer; the subscription event below names it.
    let session = session_of(&checkout(&edge, &token, json!({"tier": "pro"})).await);
    assert_eq!(fake.customer_count(), 1);
    fake.complete(&session).await;
    let view = billing(&edge, &token).await;
    assert_eq!(view["tier"], "pro");
    let customer = view["subscription"]["stripeCustomerId"]
        .as_str()
        .unwrap()
        .to_string();
    let sub_id = fake.subscription_of(&customer).unwrap();
    let active = fake.subscription(&sub_id);

    // Bad signatures: 400 and nothing changes.
    let mut canceled = active.clone();
    canceled["status"] = json!("canceled");
    let event = fake.event("customer.subscription.deleted", canceled.clone(), now_s());
    let body = event.to_string();
    let now = now_s();
    let good = clawdeploy_billing::webhook::sign(body.as_bytes(), WEBHOOK_SECRET, now);
    for (signature, code) in [
        (String::new(), "INVALID_SIGNATURE"),
        (
            clawdeploy_billing::webhook::sign(body.as_bytes(), "whsec_wrong", now),
            "INVALID_SIGNATURE",
        ),
        (
            clawdeploy_billing::webhook::sign(body.as_bytes(), WEBHOOK_SECRET, now - 301),
            "STALE_SIGNATURE",
        ),
        (good.replace("v1=", "v1=0"), "INVALID_SIGNATURE"),
    ] {
        let (status, text) = fake.send_signed(&body, &signature).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(code), "{text}");
    }
    let (status, text) = fake
        .send_signed(&body.replace("canceled", "cancelled"), &good)
        .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(billing(&edge, &token).await["tier"], "pro");

    // Out of order: a newer state, then an older one arriving late, which changes nothing.
    let t = now_s();
    let mut renewed = active.clone();
    renewed["items"]["data"][0]["current_period_end"] = json!(t + 90 * 86_400);
    let newer = fake.event("customer.subscription.updated", renewed, t + 10);
    let mut lapsed = active.clone();
    lapsed["status"] = json!("unpaid");
    let older = fake.event("customer.subscription.updated", lapsed, t + 5);
    assert_eq!(fake.send(&newer).await.0, 200);
    let (status, text) = fake.send(&older).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("older than"), "{text}");
    let view = billing(&edge, &token).await;
    assert_eq!(
        (
            view["tier"].as_str(),
            view["subscription"]["status"].as_str()
        ),
        (Some("pro"), Some("active"))
    );

    // Two deliveries at once for the same subscription apply in the subscription's order.
    let mut past_due = active.clone();
    past_due["status"] = json!("past_due");
    let a = fake.event("customer.subscription.updated", past_due, t + 20);
    let mut back = active.clone();
    back["status"] = json!("active");
    let b = fake.event("customer.subscription.updated", back, t + 30);
    let (ra, rb) = tokio::join!(fake.send(&a), fake.send(&b));
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    assert_eq!(
        billing(&edge, &token).await["subscription"]["status"],
        "active"
    );

    // A replay: 200, no second effect. A deletion delivered twice ends pro once.
    let deleted = fake.event("customer.subscription.deleted", canceled, t + 40);
    let first = fake.send(&deleted).await;
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(billing(&edge, &token).await["tier"], "free");
    let replay = fake.send(&deleted).await;
    assert_eq!(replay.0, 200);
    assert!(replay.1.contains("already handled"), "{replay:?}");

    // An unknown customer's event: 200, ignored, logged.
    let mut stranger = active.clone();
    stranger["customer"] = json!("cus_nobody");
    let (status, text) = fake
        .send(&fake.event("customer.subscription.updated", stranger, t + 50))
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("unknown customer"), "{text}");
    // Not JSON at all, well signed: 400.
    let junk = "not json";
    let signed = clawdeploy_billing::webhook::sign(junk.as_bytes(), WEBHOOK_SECRET, now_s());
    assert_eq!(fake.send_signed(junk, &signed).await.0, 400);

    // Operators see the subscription.
    let subs = edge
        .admin(
            "GET",
            "/admin/billing/subscriptions",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(subs.status, 200, "{}", subs.text());
    assert_eq!(subs.json()["subscriptions"][0]["userId"], user_id.as_str());
    assert_eq!(subs.json()["subscriptions"][0]["status"], "canceled");
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Credits: a keyless owner's calls are refused with 402 until a pack is bought, then made with
/// the platform's key and debited by the tokens the meter counts, down to 402 again; an owner's
/// own key is never charged; operators adjust with who and why.
async fn credits_pay_for_a_keyless_owner_until_exhausted(db: Db) {
    let fake = FakeStripe::start().await;
    let (provider, seen) = crate::llm_meter::fake_provider().await;
    let meter = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = with_fake(EdgeBuilder::new(), &fake)
        .db(&db)
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", &format!("openai_url = \"http://{provider}\""))
        .section("billing", "openai_key = \"sk-platform-key\"")
        .section("[credit_packs]", "id = \"tiny\"")
        .section("[credit_packs]", "tokens = 25")
        .start()
        .await;
    fake.deliver_to(edge.addr);
    let (token, user_id) = verified_user(&edge, "credits@example.com").await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "spender"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let instance_id = created.json()["instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let instance_token = clawdeploy_llm_egress::instance_token(JWT_KEY.as_bytes(), &instance_id);
    let chat = json!({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]});
    crate::llm_meter::wait_listening(meter).await;
    let call = || {
        crate::llm_meter::post(
            meter,
            "/openai/v1/chat/completions",
            Some(&instance_token),
            &chat,
        )
    };

    let view = billing(&edge, &token).await;
    assert_eq!(view["credits"]["balanceTokens"], 0);
    assert_eq!(view["credits"]["providers"], json!(["openai"]));
    assert_eq!(view["credits"]["packs"][0]["id"], "tiny");
    let broke = call().await;
    assert_eq!(
        (broke.status, broke.error_code().as_str()),
        (402, "CREDITS_EXHAUSTED"),
        "{}",
        broke.text()
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the provider was called without credits"
    );

    // Unknown pack: 422. Buying one: the tokens arrive with Stripe's event.
    let unknown = edge
        .api(
            "POST",
            "/api/billing/credits",
            Some(&token),
            Some(json!({"pack": "huge"})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (422, "UNKNOWN_PACK")
    );
    let bought = edge
        .api(
            "POST",
            "/api/billing/credits",
            Some(&token),
            Some(json!({"pack": "tiny"})),
        )
        .await;
    let session = session_of(&bought);
    fake.complete(&session).await;
    assert_eq!(billing(&edge, &token).await["credits"]["balanceTokens"], 25);

    // Each call uses 10 tokens (the fake's usage), paid with the platform's key.
    let mut balances = Vec::new();
    for _ in 0..3 {
        let resp = call().await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let expected = 25 - 10 * (balances.len() as i64 + 1);
        let view = wait_billing(&edge, &token, "debited", |v| {
            v["credits"]["balanceTokens"] == expected
        })
        .await;
        balances.push(view["credits"]["balanceTokens"].as_i64().unwrap());
    }
    assert_eq!(
        balances,
        [15, 5, -5],
        "the last call may take the balance below zero, once"
    );
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(auth, _, _)| auth == "Bearer sk-platform-key"));
    let exhausted = call().await;
    assert_eq!(
        (exhausted.status, exhausted.error_code().as_str()),
        (402, "CREDITS_EXHAUSTED")
    );
    let ledger = billing(&edge, &token).await["credits"]["ledger"].clone();
    let kinds: Vec<&str> = ledger
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["usage", "usage", "usage", "purchase"]);

    // The owner's own key: never charged.
    let own = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&token),
            Some(json!({"key": "sk-own-key-1234"})),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(call().await.status, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap().0,
        "Bearer sk-own-key-1234"
    );
    assert_eq!(billing(&edge, &token).await["credits"]["balanceTokens"], -5);

    // An operator's adjustment, with who and why.
    let path = format!("/admin/users/{user_id}/credits");
    let missing_reason = edge
        .admin(
            "POST",
            &path,
            Some(ADMIN_TOKEN),
            Some(r#"{"tokens": 100, "reason": " "}"#),
        )
        .await;
    assert_eq!(
        (missing_reason.status, missing_reason.error_code().as_str()),
        (422, "INVALID_REASON")
    );
    let adjusted = edge
        .admin(
            "POST",
            &path,
            Some(ADMIN_TOKEN),
            Some(r#"{"tokens": 100, "reason": "support ticket 42"}"#),
        )
        .await;
    assert_eq!(adjusted.status, 201, "{}", adjusted.text());
    let ledger = adjusted.json();
    assert_eq!(ledger["balanceTokens"], 95);
    assert_eq!(ledger["entries"][0]["actor"], "bootstrap admin token");
    assert_eq!(ledger["entries"][0]["reason"], "support ticket 42");
}

/// The billing page in Chromium: upgrade through (the fake's) Checkout, back on the page with
/// the new plan; a credit pack the same way; a failed payment shows the grace banner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_page_upgrades_buys_credits_and_warns_in_the_browser() {
    use crate::webdriver::Browser;
    let fake = FakeStripe::start().await;
    let edge = with_fake(EdgeBuilder::new(), &fake)
        .section("billing", "openai_key = \"sk-platform-key\"")
        .start()
        .await;
    fake.deliver_to(edge.addr);
    let (token, _) = verified_user(&edge, "browser-payer@example.com").await;
    let browser = Browser::start(&edge).await;
    browser.goto("/login").await;
    browser
        .type_into("#email", "browser-payer@example.com")
        .await;
    browser.type_into("#password", PW).await;
    browser.click("#login-submit").await;
    browser.wait_path("/dashboard").await;
    browser.click("nav a[href='/billing']").await;
    browser.wait_path("/billing").await;
    assert_eq!(
        browser.wait_text("#current-plan", |t| !t.is_empty()).await,
        "free"
    );
    let plans = browser.wait_text("#plans", |t| !t.is_empty()).await;
    assert!(
        plans.contains("$29.00") && plans.contains("$79.00"),
        "{plans}"
    );

    browser.click("[data-checkout='pro']").await;
    browser
        .wait_text("h1", |t| t == "Fake Stripe Checkout")
        .await;
    browser.click("#pay").await;
    browser.wait_path("/billing").await;
    assert_eq!(
        browser.wait_text("#current-plan", |t| !t.is_empty()).await,
        "pro"
    );
    let status = browser
        .wait_text("#subscription-status", |t| !t.is_empty())
        .await;
    assert!(
        status.contains("active") && status.contains("renews on"),
        "{status}"
    );
    assert!(browser.find("#checkout-result").await.is_some());
    let invoices = browser.wait_text("#invoices", |t| !t.is_empty()).await;
    assert!(
        invoices.contains("$29.00") && invoices.contains("paid"),
        "{invoices}"
    );
    browser.check_page("14-billing-pro").await;

    browser.click("[data-credits='1m']").await;
    browser
        .wait_text("h1", |t| t == "Fake Stripe Checkout")
        .await;
    browser.click("#pay").await;
    browser.wait_path("/billing").await;
    assert_eq!(
        browser
            .wait_text("#credit-balance", |t| !t.is_empty())
            .await,
        "1000000"
    );

    // A failed renewal: the banner says until when the plan holds and where to fix it.
    let view = billing(&edge, &token).await;
    let sub = fake
        .subscription_of(view["subscription"]["stripeCustomerId"].as_str().unwrap())
        .unwrap();
    fake.fail_payment(&sub).await;
    browser.goto("/billing").await;
    let banner = browser.wait_text("#grace-banner", |t| !t.is_empty()).await;
    assert!(
        banner.contains("payment failed") && banner.contains("pro"),
        "{banner}"
    );
    browser.check_page("15-billing-grace").await;
}

crate::both_dbs!(
    the_whole_tier_lifecycle_follows_stripe,
    webhooks_are_verified_idempotent_and_ordered,
    credits_pay_for_a_keyless_owner_until_exhausted,
);
