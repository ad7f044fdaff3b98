//! A FAKE of Stripe, for the billing tests: Stripe cannot run here. It implements the endpoints
//! the platform calls, with the request and response shapes of Stripe's API reference
//! (form-encoded requests, `Authorization: Bearer <secret key>`, JSON objects with `id` and
//! `object`, lists as `{"object":"list","data":[…]}`, errors as `{"error":{"message":…}}`):
//! `POST /v1/customers`, `POST /v1/checkout/sessions`, `POST /v1/billing_portal/sessions`,
//! `GET /v1/invoices`, `GET|POST /v1/subscriptions/{id}`. Subscriptions carry the current
//! period end on their items (API versions from 2025-03-31).
//!
//! Its hosted pages stand in for Stripe's: `GET /pay/{session}` shows a "Pay" button, whose
//! `POST` completes the session the way Stripe does (a subscription and a paid invoice, or a
//! paid one-off payment), sends the signed webhook events (`Stripe-Signature: t=…,v1=…`, HMAC-SHA256
//! of `t.payload` under the endpoint's secret) to the platform, then redirects to the session's
//! `success_url`. Tests drive renewals, failed payments and cancellations through its methods,
//! which send the events Stripe sends for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};

use crate::support::{try_send, APP_DOMAIN};

pub const KEY: &str = "sk_test_fake_stripe_key";
pub const WEBHOOK_SECRET: &str = "whsec_fake_endpoint_secret";
pub const PRO_PRICE: &str = "price_fake_pro";
pub const TEAM_PRICE: &str = "price_fake_team";
const MONTH_S: i64 = 30 * 24 * 3600;

#[derive(Default)]
struct Inner {
    next: u64,
    customers: BTreeMap<String, Value>,
    sessions: BTreeMap<String, Value>,
    subscriptions: BTreeMap<String, Value>,
    invoices: Vec<Value>,
    /// Where events go: the edge's address (Host: the app domain).
    target: Option<SocketAddr>,
    /// Answers 503 to every API call (Stripe down).
    down: bool,
}

impl Inner {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_fake{}", self.next)
    }
}

#[derive(Clone)]
pub struct FakeStripe {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn form(body: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn stripe_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": "invalid_request_error", "message": message}})),
    )
        .into_response()
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeStripe {
            addr: listener.local_addr().unwrap(),
            inner: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/customers", post(customers))
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/billing_portal/sessions", post(portal))
            .route("/v1/invoices", get(invoices))
            .route(
                "/v1/subscriptions/{id}",
                get(get_subscription).post(update_subscription),
            )
            .route("/pay/{session}", get(pay_page).post(pay))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// The `[billing]` and tier lines an edge using this fake needs.
    pub fn config(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "billing",
                format!("stripe_api_url = \"http://{}\"", self.addr),
            ),
            ("billing", format!("stripe_secret_key = \"{KEY}\"")),
            (
                "billing",
                format!("webhook_secrets = [\"{WEBHOOK_SECRET}\"]"),
            ),
            ("tiers.pro", format!("price_id = \"{PRO_PRICE}\"")),
            ("tiers.team", format!("price_id = \"{TEAM_PRICE}\"")),
        ]
    }

    /// Events go to the edge at `edge`.
    pub fn deliver_to(&self, edge: SocketAddr) {
        self.inner.lock().unwrap().target = Some(edge);
    }

    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    pub fn subscription(&self, id: &str) -> Value {
        self.inner.lock().unwrap().subscriptions[id].clone()
    }

    pub fn customer_count(&self) -> usize {
        self.inner.lock().unwrap().customers.len()
    }

    /// The first subscription of `customer`.
    pub fn subscription_of(&self, customer: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .subscriptions
            .values()
            .find(|s| s["customer"] == customer)
            .map(|s| s["id"].as_str().unwrap().to_string())
    }

    /// An event as Stripe sends it, `created` at `created` (unix s).
    pub fn event(&self, kind: &str, object: Value, created: i64) -> Value {
        let id = self.inner.lock().unwrap().id("evt");
        json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "livemode": false,
               "type": kind, "created": created, "data": {"object": object}})
    }

    /// Sends `event` signed as Stripe signs it now; the platform's (status, body).
    pub async fn send(&self, event: &Value) -> (u16, String) {
        let body = event.to_string();
        let signature = clawdeploy_billing::webhook::sign(body.as_bytes(), WEBHOOK_SECRET, now_s());
        self.send_signed(&body, &signature).await
    }

    /// Sends `body` with the `Stripe-Signature` header `signature` (bad ones in tests).
    pub async fn send_signed(&self, body: &str, signature: &str) -> (u16, String) {
        let target = self.inner.lock().unwrap().target.expect("deliver_to first");
        let raw = format!(
            "POST /api/billing/webhook HTTP/1.1\r\nHost: {APP_DOMAIN}\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n\
             Content-Type: application/json; charset=utf-8\r\nStripe-Signature: {signature}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = try_send(target, raw.as_bytes())
            .await
            .expect("the platform answers the webhook");
        (resp.status, resp.text())
    }

    async fn emit(&self, kind: &str, object: Value) -> (u16, String) {
        let event = self.event(kind, object, now_s());
        self.send(&event).await
    }

    fn new_invoice(inner: &mut Inner, customer: &str, sub: &str, amount: i64, paid: bool) -> Value {
        let id = inner.id("in");
        let invoice = json!({"id": id, "object": "invoice", "customer": customer,
            "status": if paid { "paid" } else { "open" }, "number": format!("FAKE-{}", inner.next),
            "amount_due": amount, "amount_paid": if paid { amount } else { 0 }, "currency": "usd",
            "created": now_s(), "hosted_invoice_url": format!("https://invoice.stripe.test/{id}"),
            "attempt_count": 1, "parent": {"subscription_details": {"subscription": sub}}});
        inner.invoices.push(invoice.clone());
        invoice
    }

    /// A renewal: the period moves on a month, a paid invoice; `invoice.paid` and
    /// `customer.subscription.updated` as Stripe sends them.
    pub async fn renew(&self, sub: &str) {
        let (invoice, subscription) = {
            let mut inner = self.inner.lock().unwrap();
            let mut s = inner.subscriptions[sub].clone();
            let end = s["items"]["data"][0]["current_period_end"]
                .as_i64()
                .unwrap()
                + MONTH_S;
            s["items"]["data"][0]["current_period_end"] = json!(end);
            s["status"] = json!("active");
            inner.subscriptions.insert(sub.to_string(), s.clone());
            let customer = s["customer"].as_str().unwrap().to_string();
            (Self::new_invoice(&mut inner, &customer, sub, 2900, true), s)
        };
        self.expect_ok(self.emit("invoice.paid", invoice).await);
        self.expect_ok(
            self.emit("customer.subscription.updated", subscription)
                .await,
        );
    }

    /// A renewal whose card is declined: `invoice.payment_failed`, then the subscription
    /// `past_due` (Stripe's Smart Retries go on).
    pub async fn fail_payment(&self, sub: &str) {
        let (invoice, subscription) = {
            let mut inner = self.inner.lock().unwrap();
            let mut s = inner.subscriptions[sub].clone();
            s["status"] = json!("past_due");
            inner.subscriptions.insert(sub.to_string(), s.clone());
            let customer = s["customer"].as_str().unwrap().to_string();
            let mut invoice = Self::new_invoice(&mut inner, &customer, sub, 2900, false);
            invoice["next_payment_attempt"] = json!(now_s() + 3 * 24 * 3600);
            (invoice, s)
        };
        self.expect_ok(self.emit("invoice.payment_failed", invoice).await);
        self.expect_ok(
            self.emit("customer.subscription.updated", subscription)
                .await,
        );
    }

    /// Stripe gives up (retries exhausted, set to cancel): `customer.subscription.deleted`.
    pub async fn end(&self, sub: &str) {
        let subscription = {
            let mut inner = self.inner.lock().unwrap();
            let mut s = inner.subscriptions[sub].clone();
            s["status"] = json!("canceled");
            inner.subscriptions.insert(sub.to_string(), s.clone());
            s
        };
        self.expect_ok(
            self.emit("customer.subscription.deleted", subscription)
                .await,
        );
    }

    fn expect_ok(&self, (status, body): (u16, String)) {
        assert_eq!(status, 200, "the platform refused a webhook: {body}");
    }

    /// Completes a Checkout Session as the customer's payment would; the redirect target.
    pub async fn complete(&self, session: &str) -> String {
        let (events, success) = {
            let mut inner = self.inner.lock().unwrap();
            let mut s = inner.sessions[session].clone();
            let customer = s["customer"].as_str().unwrap().to_string();
            let mut events = Vec::new();
            if s["mode"] == "subscription" {
                let sub_id = inner.id("sub");
                let item = inner.id("si");
                let price = s["line_items"][0]["price"].clone();
                let sub = json!({"id": sub_id, "object": "subscription", "customer": customer,
                    "status": "active", "cancel_at_period_end": false,
                    "items": {"object": "list", "data": [{"id": item, "object": "subscription_item",
                        "price": {"id": price, "object": "price"}, "current_period_end": now_s() + MONTH_S}]}});
                inner.subscriptions.insert(sub_id.clone(), sub.clone());
                let amount = if price == PRO_PRICE { 2900 } else { 7900 };
                let invoice = Self::new_invoice(&mut inner, &customer, &sub_id, amount, true);
                s["subscription"] = json!(sub_id);
                s["payment_status"] = json!("paid");
                s["amount_total"] = json!(amount);
                events.push(("customer.subscription.created", sub));
                events.push(("checkout.session.completed", s.clone()));
                events.push(("invoice.paid", invoice));
            } else {
                s["payment_status"] = json!("paid");
                s["amount_total"] = s["line_items"][0]["price_data"]["unit_amount"].clone();
                events.push(("checkout.session.completed", s.clone()));
            }
            s["status"] = json!("complete");
            inner.sessions.insert(session.to_string(), s.clone());
            (events, s["success_url"].as_str().unwrap().to_string())
        };
        for (kind, object) in events {
            self.expect_ok(self.emit(kind, object).await);
        }
        success
    }

    /// Moves a subscription to `price` or sets `cancel_at_period_end`, as `POST
    /// /v1/subscriptions/{id}` does, and sends `customer.subscription.updated`.
    async fn update(&self, id: &str, change: &BTreeMap<String, String>) -> Value {
        let sub = {
            let mut inner = self.inner.lock().unwrap();
            let mut s = inner.subscriptions[id].clone();
            if let Some(price) = change.get("items[0][price]") {
                s["items"]["data"][0]["price"]["id"] = json!(price);
            }
            if let Some(cancel) = change.get("cancel_at_period_end") {
                s["cancel_at_period_end"] = json!(cancel == "true");
            }
            inner.subscriptions.insert(id.to_string(), s.clone());
            s
        };
        // Stripe sends the event after answering; the platform must not depend on the order.
        let fake = self.clone();
        let object = sub.clone();
        tokio::spawn(async move {
            fake.emit("customer.subscription.updated", object).await;
        });
        sub
    }
}

/// Checks the key; `Some(response)` when the call must be refused.
fn refuse(fake: &FakeStripe, headers: &HeaderMap) -> Option<Response> {
    if fake.inner.lock().unwrap().down {
        return Some(stripe_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "fake Stripe is down",
        ));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {KEY}")) {
        return Some(stripe_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API Key provided",
        ));
    }
    None
}

async fn customers(State(fake): State<FakeStripe>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    let f = form(&body);
    let mut inner = fake.inner.lock().unwrap();
    let id = inner.id("cus");
    let customer = json!({"id": id, "object": "customer", "email": f.get("email"),
        "metadata": {"user_id": f.get("metadata[user_id]")}});
    inner.customers.insert(id, customer.clone());
    axum::Json(customer).into_response()
}

async fn create_session(
    State(fake): State<FakeStripe>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    let f = form(&body);
    let mut inner = fake.inner.lock().unwrap();
    let Some(customer) = f
        .get("customer")
        .filter(|c| inner.customers.contains_key(*c))
    else {
        return stripe_error(StatusCode::BAD_REQUEST, "No such customer");
    };
    let id = inner.id("cs");
    let mut metadata = serde_json::Map::new();
    for (k, v) in &f {
        if let Some(key) = k
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            metadata.insert(key.to_string(), json!(v));
        }
    }
    let line = match f.get("line_items[0][price]") {
        Some(price) => json!({"price": price, "quantity": 1}),
        None => json!({"price_data": {
            "currency": f.get("line_items[0][price_data][currency]"),
            "unit_amount": f.get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse::<i64>().ok()),
            "product_data": {"name": f.get("line_items[0][price_data][product_data][name]")}}}),
    };
    let session = json!({"id": id, "object": "checkout.session", "mode": f.get("mode"),
        "customer": customer, "client_reference_id": f.get("client_reference_id"),
        "success_url": f.get("success_url"), "cancel_url": f.get("cancel_url"),
        "metadata": metadata, "line_items": [line], "payment_status": "unpaid", "status": "open",
        "subscription": null, "amount_total": null,
        "url": format!("http://{}/pay/{id}", fake.addr)});
    inner.sessions.insert(id, session.clone());
    axum::Json(session).into_response()
}

async fn portal(State(fake): State<FakeStripe>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    let f = form(&body);
    let customer = f.get("customer").cloned().unwrap_or_default();
    axum::Json(json!({"id": "bps_fake", "object": "billing_portal.session", "customer": customer,
        "return_url": f.get("return_url"), "url": format!("http://{}/portal/{customer}", fake.addr)}))
    .into_response()
}

async fn invoices(
    State(fake): State<FakeStripe>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    let inner = fake.inner.lock().unwrap();
    let customer = q.get("customer").cloned().unwrap_or_default();
    let data: Vec<Value> = inner
        .invoices
        .iter()
        .rev()
        .filter(|i| i["customer"] == customer.as_str())
        .cloned()
        .collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

async fn get_subscription(
    State(fake): State<FakeStripe>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    match fake.inner.lock().unwrap().subscriptions.get(&id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => stripe_error(StatusCode::NOT_FOUND, "No such subscription"),
    }
}

async fn update_subscription(
    State(fake): State<FakeStripe>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Some(r) = refuse(&fake, &headers) {
        return r;
    }
    if !fake.inner.lock().unwrap().subscriptions.contains_key(&id) {
        return stripe_error(StatusCode::NOT_FOUND, "No such subscription");
    }
    axum::Json(fake.update(&id, &form(&body)).await).into_response()
}

async fn pay_page(State(fake): State<FakeStripe>, Path(session): Path<String>) -> Response {
    let Some(s) = fake.inner.lock().unwrap().sessions.get(&session).cloned() else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    Html(format!(
        "<!doctype html><title>Fake Stripe Checkout</title><h1>Fake Stripe Checkout</h1>\
         <p id=what>{}</p><form method=post><button id=pay type=submit>Pay</button></form>",
        s["mode"]
    ))
    .into_response()
}

async fn pay(State(fake): State<FakeStripe>, Path(session): Path<String>) -> Response {
    if !fake.inner.lock().unwrap().sessions.contains_key(&session) {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    }
    let success = fake.complete(&session).await;
    Redirect::to(&success).into_response()
}
