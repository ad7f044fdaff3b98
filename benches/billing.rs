//! Billing's costs (issue 19). Not a test: it records its figures in
//! `benches/results/<date>-billing-<mode>.md`.
//!
//! ```sh
//! BILLING_BENCH=webhook cargo bench --bench billing   # BILLING_EVENTS (500) signed events
//! BILLING_BENCH=credits cargo bench --bench billing   # BILLING_CALLS (300) LLM calls
//! ```
//!
//! - `webhook`: signed Stripe events (from the tests' fake of Stripe) delivered to the real edge
//!   one after another, as Stripe delivers one endpoint's events: renewals (`invoice.paid`, a
//!   subscription update that keeps the tier) and tier changes (a subscription moved between
//!   pro and team, which rewrites the account, its instance and caps); then bursts of 50 at once.
//!   Measured at the client (HTTP round trip on loopback) and by the edge itself
//!   (`clawdeploy_billing_webhook_seconds`).
//! - `credits`: LLM calls through the meter to an instant fake provider, alternately paid from
//!   credits (the balance read, the in-flight check, the platform key) and with the owner's own
//!   key, so the difference is what credits add to a call; the ledger debit after each credit call
//!   is timed by the edge (`clawdeploy_credit_debit_seconds`).

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/stripe_fake.rs"]
mod stripe_fake;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/llm_meter.rs"]
mod llm_meter;

#[allow(dead_code)]
#[path = "report.rs"]
mod report;

use std::time::{Duration, Instant};

use serde_json::json;

use report::*;
use stripe_fake::FakeStripe;
use support::*;

const PW: &str = "correct horse battery staple 9";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_fd_limit();
    match std::env::var("BILLING_BENCH").as_deref() {
        Ok("credits") => credits().await,
        _ => webhooks().await,
    }
}

/// Sub-millisecond figures: "| label | n | median | p99 | max |".
fn row(label: &str, runs: &[Duration]) -> String {
    let mut s = runs.to_vec();
    s.sort();
    let f = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    format!(
        "| {label} | {} | {} | {} | {} |\n",
        s.len(),
        f(pct(&s, 0.5)),
        f(pct(&s, 0.99)),
        f(*s.last().unwrap_or(&Duration::ZERO))
    )
}

const HEAD: &str = "| figure | runs | median | p99 | max |\n|---|---|---|---|---|\n";

/// `<name>_sum / <name>_count` from the edge's Prometheus text, in ms (all labels summed).
async fn mean_ms(edge: &Edge, name: &str) -> (f64, f64) {
    let resp = try_send(
        edge.metrics_addr,
        b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("metrics");
    let text = resp.text();
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (sum, count) = (total("_sum"), total("_count"));
    (
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        count,
    )
}

async fn verified(edge: &Edge, email: &str) -> String {
    edge.register_verified(email, PW).await.0
}

async fn webhooks() {
    let n = env_usize("BILLING_EVENTS", 500);
    let fake = FakeStripe::start().await;
    let mut builder = EdgeBuilder::new();
    for (section, line) in fake.config() {
        builder = builder.section(section, &line);
    }
    let edge = builder.start().await;
    fake.deliver_to(edge.addr);
    let token = verified(&edge, "bench@example.com").await;
    let created = edge
        .api(
            "POST",
            "/api/instances",
            Some(&token),
            Some(json!({"subdomain": "payer"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let checkout = edge
        .api(
            "POST",
            "/api/billing/checkout",
            Some(&token),
            Some(json!({"tier": "pro"})),
        )
        .await;
    let url = checkout.json()["checkoutUrl"].as_str().unwrap().to_string();
    fake.complete(url.rsplit('/').next().unwrap()).await;
    let view = edge
        .api("GET", "/api/billing", Some(&token), None)
        .await
        .json();
    let sub_id = fake
        .subscription_of(view["subscription"]["stripeCustomerId"].as_str().unwrap())
        .unwrap();
    let base = fake.subscription(&sub_id);
    let mut created = 2_000_000_000i64; // later than anything the checkout recorded
    let (mut renewals, mut changes) = (Vec::new(), Vec::new());
    let load_before = load();
    let started = Instant::now();
    for i in 0..n {
        created += 1;
        let mut sub = base.clone();
        let changing = i % 2 == 1;
        if changing {
            let price = if (i / 2).is_multiple_of(2) {
                stripe_fake::TEAM_PRICE
            } else {
                stripe_fake::PRO_PRICE
            };
            sub["items"]["data"][0]["price"]["id"] = json!(price);
        }
        sub["items"]["data"][0]["current_period_end"] = json!(created + 30 * 86_400);
        let event = fake.event("customer.subscription.updated", sub, created);
        let t = Instant::now();
        let (status, body) = fake.send(&event).await;
        assert_eq!(status, 200, "{body}");
        if changing {
            changes.push(t.elapsed())
        } else {
            renewals.push(t.elapsed())
        }
    }
    let sequential = started.elapsed();
    // The last event moved the account (an odd index changes the tier): it applied.
    let last = if ((n - 1) / 2).is_multiple_of(2) {
        "team"
    } else {
        "pro"
    };
    let view = edge
        .api("GET", "/api/billing", Some(&token), None)
        .await
        .json();
    assert_eq!(view["tier"], last, "{view}");
    assert_eq!(
        edge.api("GET", "/api/instances/me", Some(&token), None)
            .await
            .json()["instance"]["tier"],
        last
    );
    let (edge_mean, edge_count) = mean_ms(&edge, "clawdeploy_billing_webhook_seconds").await;
    // Bursts: 50 deliveries at once (Stripe retries a backlog after an outage).
    let mut burst = Vec::new();
    for _ in 0..4 {
        let events: Vec<_> = (0..50)
            .map(|_| {
                created += 1;
                let mut sub = base.clone();
                sub["items"]["data"][0]["current_period_end"] = json!(created + 30 * 86_400);
                fake.event("customer.subscription.updated", sub, created)
            })
            .collect();
        let sent = events.iter().map(|e| async {
            let t = Instant::now();
            let (status, body) = fake.send(e).await;
            assert_eq!(status, 200, "{body}");
            t.elapsed()
        });
        burst.extend(futures_util::future::join_all(sent).await);
    }
    let mut report = format!(
        "# Stripe webhook handling ({})\n\n`BILLING_BENCH=webhook cargo bench --bench billing` (release build): the real edge on SQLite \
         (embedded default store), one instance but no instance runtime (a tier change rewrites the account, the instance's tier, route and skill caps; no container to resize: `runtime.kind = \"none\"`), \
         signed `customer.subscription.updated` events from the tests' Stripe fake over loopback HTTP/1.1, a new connection each. \
         2 CPUs, load before: {load_before}, after: {}.\n\n{HEAD}",
        date(),
        load()
    );
    report.push_str(&row(
        "renewal-style update (tier kept), sequential",
        &renewals,
    ));
    report.push_str(&row("tier change pro ↔ team, sequential", &changes));
    report.push_str(&row("50 at once (4 bursts), each delivery", &burst));
    report.push_str(&format!(
        "\n{n} sequential deliveries took {:.2} s ({:.0} events/s). The edge's own \
         `clawdeploy_billing_webhook_seconds` (signature check to answer, store writes included): mean {edge_mean:.2} ms over {edge_count:.0} events \
         (the checkout's three included).\n",
        sequential.as_secs_f64(),
        n as f64 / sequential.as_secs_f64()
    ));
    write_result("billing", "webhook", &report);
}

async fn credits() {
    let n = env_usize("BILLING_CALLS", 300);
    let (provider, _seen) = llm_meter::fake_provider().await;
    let meter = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = EdgeBuilder::new()
        .section("llm", &format!("listen = \"{meter}\""))
        .section("llm", &format!("openai_url = \"http://{provider}\""))
        .section("billing", "openai_key = \"sk-platform-key\"")
        .start()
        .await;
    // Two owners: one paying with credits, one with their own key.
    let mut tokens = Vec::new();
    for (email, sub) in [
        ("credit@example.com", "creditor"),
        ("byok@example.com", "byoker"),
    ] {
        let token = verified(&edge, email).await;
        let created = edge
            .api(
                "POST",
                "/api/instances",
                Some(&token),
                Some(json!({"subdomain": sub})),
            )
            .await;
        let id = created.json()["instance"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        tokens.push((token, id));
    }
    let user_id = edge
        .api("GET", "/api/account", Some(&tokens[0].0), None)
        .await
        .json()["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let grant = edge
        .admin(
            "POST",
            &format!("/admin/users/{user_id}/credits"),
            Some(ADMIN_TOKEN),
            Some(r#"{"tokens": 100000000, "reason": "bench"}"#),
        )
        .await;
    assert_eq!(grant.status, 201, "{}", grant.text());
    let own = edge
        .api(
            "PUT",
            "/api/account/api-keys/openai",
            Some(&tokens[1].0),
            Some(json!({"key": "sk-own-key-1234"})),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    llm_meter::wait_listening(meter).await;
    let chat = json!({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]});
    let instance_tokens: Vec<String> = tokens
        .iter()
        .map(|(_, id)| clawdeploy_llm_egress::instance_token(JWT_KEY.as_bytes(), id))
        .collect();
    let (mut credit, mut byok) = (Vec::new(), Vec::new());
    let load_before = load();
    for i in 0..n * 2 {
        let who = i % 2;
        let t = Instant::now();
        let resp = llm_meter::post(
            meter,
            "/openai/v1/chat/completions",
            Some(&instance_tokens[who]),
            &chat,
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        if who == 0 {
            credit.push(t.elapsed())
        } else {
            byok.push(t.elapsed())
        }
    }
    let (debit_mean, debits) = mean_ms(&edge, "clawdeploy_credit_debit_seconds").await;
    let mut report = format!(
        "# AI credits at the LLM meter ({})\n\n`BILLING_BENCH=credits cargo bench --bench billing` (release build): the real edge on SQLite, \
         its LLM meter on loopback in front of an instant fake OpenAI-compatible provider (JSON answer, 10 tokens), one call at a time, \
         alternating an owner paying with credits and an owner with their own key; a new connection per call. 2 CPUs, load before: \
         {load_before}, after: {}.\n\n{HEAD}",
        date(),
        load()
    );
    report.push_str(&row(
        "call paid from credits (balance read, admit, platform key)",
        &credit,
    ));
    report.push_str(&row("call with the owner's own key", &byok));
    let median = |v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        pct(&s, 0.5)
    };
    report.push_str(&format!(
        "\nCredits add {:.2} ms to the median call on the request path. The ledger debit (one transaction: the balance update and the \
         ledger row) runs after the answer has been streamed, on its own task: mean {debit_mean:.2} ms over {debits:.0} debits \
         (`clawdeploy_credit_debit_seconds`).\n",
        (median(&credit).as_secs_f64() - median(&byok).as_secs_f64()) * 1000.0
    ));
    write_result("billing", "credits", &report);
}
