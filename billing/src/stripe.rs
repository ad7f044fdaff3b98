//! The Stripe endpoints the platform calls, as a thin typed client over Stripe's documented REST
//! API (form-encoded requests, JSON answers, `Authorization: Bearer <secret key>`).
//!
//! Hand-written rather than `async-stripe`: that crate generates the whole API (hundreds of
//! thousands of lines, minutes of build on this machine) for the seven calls below.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::webhook::{Invoice, List, Subscription};
use crate::Error;

/// A Checkout Session just made: where to send the customer.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    /// `cs_…`.
    pub id: String,
    /// Stripe's hosted payment page.
    pub url: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct PortalSession {
    url: String,
}

/// One-off payment line of a credit pack.
#[derive(Debug, Clone)]
pub struct OneOff<'a> {
    /// Shown on the payment page.
    pub name: &'a str,
    /// Price in cents.
    pub amount_cents: u64,
    /// ISO currency, lower case.
    pub currency: &'a str,
    /// Kept on the session and returned in its webhook.
    pub metadata: &'a [(&'a str, String)],
}

/// Stripe's API, with one secret key.
pub struct Stripe {
    base: String,
    key: String,
    timeout: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Stripe {
    /// A client of the API at `base` (`billing.stripe_api_url`) with `key`; every call gives up
    /// after `timeout`. Fails only if the platform's TLS roots cannot be loaded.
    pub fn new(base: &str, key: &str, timeout: Duration) -> Result<Self, Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| Error::Unavailable(format!("TLS setup for Stripe: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            timeout,
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, Error> {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let (uri, body) = if method == http::Method::GET {
            let sep = if encoded.is_empty() { "" } else { "?" };
            (format!("{}{path}{sep}{encoded}", self.base), Bytes::new())
        } else {
            (format!("{}{path}", self.base), Bytes::from(encoded))
        };
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", self.key))
            .map_err(|_| Error::Unavailable("the Stripe key is not a valid header".into()))?;
        auth.set_sensitive(true);
        let request = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::AUTHORIZATION, auth)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(body))
            .map_err(|e| Error::Unavailable(format!("Stripe request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Error::Unavailable(format!("Stripe unreachable: {e}")))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Unavailable(format!("Stripe's answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("Stripe did not answer within {:?}", self.timeout))
            })??;
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::Unavailable(format!("Stripe answered {status}")));
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("status {status}"));
            return Err(Error::Refused(message));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Unavailable(format!(
                "Stripe's answer to {path} is not as documented: {e}"
            ))
        })
    }

    /// `POST /v1/customers`: a customer for the platform's user (`metadata[user_id]`).
    pub async fn create_customer(&self, email: &str, user_id: &str) -> Result<String, Error> {
        let created: Created = self
            .call(
                http::Method::POST,
                "/v1/customers",
                &[
                    ("email", email.to_string()),
                    ("metadata[user_id]", user_id.to_string()),
                ],
            )
            .await?;
        Ok(created.id)
    }

    /// `POST /v1/checkout/sessions` in `subscription` mode for `price`.
    pub async fn checkout_subscription(
        &self,
        customer: &str,
        user_id: &str,
        price: &str,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<CheckoutSession, Error> {
        self.call(
            http::Method::POST,
            "/v1/checkout/sessions",
            &[
                ("mode", "subscription".into()),
                ("customer", customer.into()),
                ("client_reference_id", user_id.into()),
                ("line_items[0][price]", price.into()),
                ("line_items[0][quantity]", "1".into()),
                ("success_url", success_url.into()),
                ("cancel_url", cancel_url.into()),
            ],
        )
        .await
    }

    /// `POST /v1/checkout/sessions` in `payment` mode for one inline-priced line.
    pub async fn checkout_payment(
        &self,
        customer: &str,
        user_id: &str,
        line: &OneOff<'_>,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<CheckoutSession, Error> {
        let mut form = vec![
            ("mode", "payment".to_string()),
            ("customer", customer.into()),
            ("client_reference_id", user_id.into()),
            ("line_items[0][quantity]", "1".into()),
            ("line_items[0][price_data][currency]", line.currency.into()),
            (
                "line_items[0][price_data][unit_amount]",
                line.amount_cents.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                line.name.into(),
            ),
            ("success_url", success_url.into()),
            ("cancel_url", cancel_url.into()),
        ];
        let keys: Vec<String> = line
            .metadata
            .iter()
            .map(|(k, _)| format!("metadata[{k}]"))
            .collect();
        for (key, (_, value)) in keys.iter().zip(line.metadata) {
            form.push((key.as_str(), value.clone()));
        }
        self.call(http::Method::POST, "/v1/checkout/sessions", &form)
            .await
    }

    /// `POST /v1/billing_portal/sessions`: the Customer Portal's URL for `customer`.
    pub async fn portal(&self, customer: &str, return_url: &str) -> Result<String, Error> {
        let session: PortalSession = self
            .call(
                http::Method::POST,
                "/v1/billing_portal/sessions",
                &[
                    ("customer", customer.into()),
                    ("return_url", return_url.into()),
                ],
            )
            .await?;
        Ok(session.url)
    }

    /// `GET /v1/invoices?customer=…`: the customer's latest invoices, newest first.
    pub async fn invoices(&self, customer: &str, limit: u32) -> Result<Vec<Invoice>, Error> {
        let list: List<Invoice> = self
            .call(
                http::Method::GET,
                "/v1/invoices",
                &[("customer", customer.into()), ("limit", limit.to_string())],
            )
            .await?;
        Ok(list.data)
    }

    /// `GET /v1/subscriptions/{id}`.
    pub async fn subscription(&self, id: &str) -> Result<Subscription, Error> {
        self.call(http::Method::GET, &format!("/v1/subscriptions/{id}"), &[])
            .await
    }

    /// `POST /v1/subscriptions/{id}`: moves its item to `price` (prorated, as Stripe does by
    /// default), or sets `cancel_at_period_end`.
    pub async fn update_subscription(
        &self,
        id: &str,
        change: SubscriptionChange<'_>,
    ) -> Result<Subscription, Error> {
        let form = match change {
            SubscriptionChange::Price { item, price } => vec![
                ("items[0][id]", item.to_string()),
                ("items[0][price]", price.to_string()),
                ("cancel_at_period_end", "false".into()),
            ],
            SubscriptionChange::CancelAtPeriodEnd(cancel) => {
                vec![("cancel_at_period_end", cancel.to_string())]
            }
        };
        self.call(
            http::Method::POST,
            &format!("/v1/subscriptions/{id}"),
            &form,
        )
        .await
    }
}

/// A change to a subscription.
#[derive(Debug, Clone, Copy)]
pub enum SubscriptionChange<'a> {
    /// Its item `item` moves to `price` (another tier).
    Price {
        /// `si_…`.
        item: &'a str,
        /// `price_…`.
        price: &'a str,
    },
    /// It ends at the end of the period (`true`), or goes on (`false`).
    CancelAtPeriodEnd(bool),
}
