//! Stripe webhook deliveries: the `Stripe-Signature` check and the event objects the platform
//! reads.
//!
//! Stripe signs `"{t}.{payload}"` with HMAC-SHA256 under the endpoint's secret and sends
//! `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>…][,v0=…]` (several `v1` while Stripe rolls a
//! secret). A delivery is genuine when any `v1` matches under any configured secret and `t` is
//! within the tolerance of now (older: a replay).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or one without `t=` or `v1=`.
    #[error("the Stripe-Signature header is missing or malformed (expected t=<unix time>,v1=<hex signature>)")]
    Malformed,
    /// `t` is further from now than the tolerance.
    #[error("the signature's timestamp is {age_secs} s from now, more than the {tolerance_secs} s allowed: a replayed or delayed delivery")]
    Stale {
        /// Seconds between `t` and now.
        age_secs: i64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// No `v1` matches under any configured secret.
    #[error("no v1 signature matches a configured webhook secret (billing.webhook_secrets)")]
    Mismatch,
}

fn mac(secret: &str, t: &str, payload: &[u8]) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(t.as_bytes());
    m.update(b".");
    m.update(payload);
    m
}

/// The `Stripe-Signature` header Stripe sends for `payload` at `t` (unix s) under `secret`.
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let t = t.to_string();
    let digest = mac(secret, &t, payload).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Checks a delivery: `header` is its `Stripe-Signature`, `payload` the raw body, `secrets` the
/// endpoint's secrets (any may match), `now` the current unix time in seconds.
pub fn verify(
    header: &str,
    payload: &[u8],
    secrets: &[String],
    tolerance_secs: u64,
    now: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let (Some(t), false) = (t, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let at: i64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    let age = now.saturating_sub(at);
    if age.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Stale {
            age_secs: age,
            tolerance_secs,
        });
    }
    let given: Vec<Vec<u8>> = signatures.iter().filter_map(|s| hex(s)).collect();
    for secret in secrets {
        let expected = mac(secret, t, payload).finalize().into_bytes();
        if given
            .iter()
            .any(|g| bool::from(g.as_slice().ct_eq(expected.as_slice())))
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

/// A Stripe event (`evt_…`) as delivered: its object is read by the handler of its type.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// `evt_…`: deliveries of one event share it (the idempotency key).
    pub id: String,
    /// Such as `customer.subscription.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When Stripe created the event (unix s): orders a subscription's states.
    pub created: i64,
    /// `{object: …}`.
    pub data: EventData,
}

/// An event's payload.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    /// The object the event is about, as of the event.
    pub object: Value,
}

/// A Checkout Session (`cs_…`), from `checkout.session.completed`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    /// `cs_…`.
    pub id: String,
    /// `subscription` or `payment`.
    pub mode: String,
    /// `cus_…`.
    pub customer: Option<String>,
    /// The platform's user id, set when the session was made.
    pub client_reference_id: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    pub payment_status: Option<String>,
    /// What was charged, in cents.
    pub amount_total: Option<i64>,
    /// `sub_…` in subscription mode.
    pub subscription: Option<String>,
    /// The platform's own keys (`pack`, `tokens` for credits).
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A subscription (`sub_…`), from `customer.subscription.*` events and the API.
#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: String,
    /// Stripe's status (`active`, `past_due`, `canceled`, …).
    pub status: String,
    /// Ends at the end of its period.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// End of the current period (unix s); API versions from 2025-03-31 carry it per item.
    pub current_period_end: Option<i64>,
    /// Its items: the first one's price names the tier.
    pub items: List<SubscriptionItem>,
}

impl Subscription {
    /// The first item's price (`price_…`).
    pub fn price_id(&self) -> Option<&str> {
        self.items.data.first().map(|i| i.price.id.as_str())
    }

    /// End of the current period (unix s), wherever the API version puts it.
    pub fn period_end(&self) -> Option<i64> {
        self.current_period_end
            .or_else(|| self.items.data.first().and_then(|i| i.current_period_end))
    }
}

/// Stripe's list envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    /// The items.
    pub data: Vec<T>,
}

/// One item of a subscription.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    /// `si_…`.
    pub id: String,
    /// Its price.
    pub price: Price,
    /// End of its period (unix s; API versions from 2025-03-31).
    pub current_period_end: Option<i64>,
}

/// A price (`price_…`).
#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    /// `price_…`.
    pub id: String,
}

/// An invoice (`in_…`), from `invoice.*` events and the API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Invoice {
    /// `in_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: Option<String>,
    /// `draft`, `open`, `paid`, `uncollectible` or `void`.
    pub status: Option<String>,
    /// The invoice number shown to the customer.
    pub number: Option<String>,
    /// What is due, in cents.
    #[serde(default)]
    pub amount_due: i64,
    /// What was paid, in cents.
    #[serde(default)]
    pub amount_paid: i64,
    /// ISO currency, lower case.
    pub currency: Option<String>,
    /// When it was made (unix s).
    pub created: i64,
    /// Stripe's page for the invoice.
    pub hosted_invoice_url: Option<String>,
    /// Payment attempts so far (`invoice.payment_failed`).
    #[serde(default)]
    pub attempt_count: i64,
    /// When Stripe retries the payment next (unix s), if it will.
    pub next_payment_attempt: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn a_signature_made_by_stripe_verifies_and_a_changed_byte_does_not() {
        let payload = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let header = sign(payload, SECRET, 1_700_000_000);
        let secrets = vec![SECRET.to_string()];
        assert_eq!(
            verify(&header, payload, &secrets, 300, 1_700_000_100),
            Ok(())
        );
        let mut changed = payload.to_vec();
        changed[5] = b'X';
        assert_eq!(
            verify(&header, &changed, &secrets, 300, 1_700_000_100),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(&header, payload, &secrets, 300, 1_700_000_301),
            Err(SignatureError::Stale { age_secs: 301, .. })
        ));
        for bad in ["", "t=1700000000", "v1=00", "t=abc,v1=00"] {
            assert_eq!(
                verify(bad, payload, &secrets, 300, 1_700_000_000),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    /// Stripe sends one `v1` per active secret while it rolls one; either configured secret
    /// verifies, so rotation needs no downtime.
    #[test]
    fn several_signatures_and_several_secrets_rotate() {
        let payload = b"{}";
        let old = sign(payload, "whsec_old", 10);
        let new = sign(payload, "whsec_new", 10);
        let both = format!("{},{}", old, new.trim_start_matches("t=10,"));
        let only_new = vec!["whsec_new".to_string()];
        let both_secrets = vec!["whsec_gone".to_string(), "whsec_old".to_string()];
        assert_eq!(verify(&both, payload, &only_new, 300, 10), Ok(()));
        assert_eq!(verify(&old, payload, &both_secrets, 300, 10), Ok(()));
        assert_eq!(
            verify(&old, payload, &only_new, 300, 10),
            Err(SignatureError::Mismatch)
        );
    }

    /// API versions from 2025-03-31 moved the period end onto the items.
    #[test]
    fn the_period_end_is_read_from_either_place() {
        let s: Subscription = serde_json::from_value(serde_json::json!({
            "id": "sub_1", "customer": "cus_1", "status": "active",
            "items": {"data": [{"id": "si_1", "price": {"id": "price_pro"}, "current_period_end": 99}]}
        }))
        .unwrap();
        assert_eq!(
            (s.price_id(), s.period_end()),
            (Some("price_pro"), Some(99))
        );
    }
}
