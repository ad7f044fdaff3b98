//! `/api/billing`: plans, Stripe Checkout and the Customer Portal, Stripe's webhook, and AI
//! credits (PRD §3.6, issue 19).
//!
//! Stripe is the source of truth for what a customer pays; the platform keeps what it needs to
//! act at once. The webhook ([`webhook`]) is the only writer of subscriptions: each delivery is
//! checked ([`clawdeploy_billing::webhook::verify`]), handled once per event id, and applied in
//! the order of the subscription's own state. After every change the account's tier is worked
//! out from all its subscriptions ([`reconcile`]) and, if it differs, applied everywhere at once
//! by [`change_tier`]: quotas, skill and sub-agent caps, custom domains and the container's CPU
//! and memory (live).
//!
//! A failed payment starts a grace period (`billing.grace_period_secs`) during which the tier
//! stays while Stripe retries; when it ends unpaid, the sweep ([`sweep_forever`]) moves the
//! account to free: excess skills disabled, custom domains parked, nothing deleted. A new
//! subscription restores the tier, the skills the cap disabled and the parked domains.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use clawdeploy_billing::webhook::{self as stripe_webhook, CheckoutSession, Event, SignatureError};
use clawdeploy_billing::{OneOff, Stripe, SubscriptionChange};
use clawdeploy_config::Tier;
use clawdeploy_store::time::{now_ms, rfc3339};
use clawdeploy_store::{
    CreditEntry, CreditKind, Instance, InstanceStatus, NewCredit, StoreError, Subscription,
    SubscriptionState, SubscriptionStatus, User,
};

use crate::admin::Admin;
use crate::auth::AuthUser;
use crate::instances::InstanceView;
use crate::{ApiError, ApiState, Reply};

type JsonBody<T> = Result<Json<T>, JsonRejection>;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!("Stripe call failed: {e}");
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "BILLING_UNAVAILABLE",
        "The payment provider cannot be reached right now; nothing was changed. Try again in a minute.",
    );
    err.retry_after = Some(30);
    err
}

fn stripe_error(e: clawdeploy_billing::Error) -> ApiError {
    match e {
        clawdeploy_billing::Error::Unavailable(_) => unavailable(e),
        clawdeploy_billing::Error::Refused(message) => {
            tracing::warn!("Stripe refused a request: {message}");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "BILLING_REFUSED",
                format!("The payment provider refused the request: {message}"),
            )
        }
    }
}

/// The Stripe client, or 503 `BILLING_DISABLED` when this platform sells nothing.
fn stripe(state: &ApiState) -> Result<&Arc<Stripe>, ApiError> {
    state.ctx.stripe.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BILLING_DISABLED",
            "Payments are not set up on this platform (billing.stripe_secret_key is empty); an operator can change your plan.",
        )
    })
}

/// One tier as offered: its price and every limit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierOffer {
    /// The tier.
    pub tier: Tier,
    /// Monthly price in cents of `currency` (0: free).
    pub price_cents: u64,
    /// ISO currency, lower case.
    pub currency: String,
    /// Whether it can be bought by Checkout (it has a Stripe price).
    pub purchasable: bool,
    /// Messages per month; `null`: unlimited.
    pub messages_per_month: Option<u64>,
    /// LLM tokens per month; `null`: unlimited.
    pub tokens_per_month: Option<u64>,
    /// Skills enabled at once; `null`: unlimited.
    pub skills: Option<u32>,
    /// Sub-agents at once.
    pub subagents: u32,
    /// Storage in MiB; `null`: not limited.
    pub storage_mb: Option<u64>,
    /// Custom domains served.
    pub custom_domains: u32,
    /// People per account.
    pub seats: u32,
    /// CPUs of an instance.
    pub cpus: f64,
    /// Memory of an instance, in MiB.
    pub memory_mb: u64,
}

fn offers(state: &ApiState) -> Vec<TierOffer> {
    let config = &state.ctx.config;
    Tier::ALL
        .into_iter()
        .map(|tier| {
            let t = config.tiers.get(tier);
            let resources = state.pool.as_ref().map(|p| p.settings().resources(tier));
            TierOffer {
                tier,
                price_cents: t.price_cents,
                currency: config.billing.currency.clone(),
                purchasable: !t.price_id.is_empty() && config.billing.enabled(),
                messages_per_month: (t.messages_per_month > 0).then_some(t.messages_per_month),
                tokens_per_month: (t.tokens_per_month > 0).then_some(t.tokens_per_month),
                skills: (t.skills > 0).then_some(t.skills),
                subagents: t.subagents,
                storage_mb: (t.storage_mb > 0).then_some(t.storage_mb),
                custom_domains: t.custom_domains,
                seats: t.seats,
                cpus: resources.as_ref().map_or(t.cpus, |r| r.cpus),
                memory_mb: resources.map_or(t.memory_mb, |r| r.memory_mb),
            }
        })
        .collect()
}

/// A credit pack on sale.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackView {
    /// Its id (`POST /api/billing/credits {pack}`).
    pub id: String,
    /// Tokens it adds.
    pub tokens: u64,
    /// Its price in cents.
    pub price_cents: u64,
}

/// The account's AI credits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credits {
    /// The balance in tokens (may be a little below zero after the last request in flight).
    pub balance_tokens: i64,
    /// Providers credits pay for (the platform has a key for them); calls to other providers
    /// need your own key.
    pub providers: Vec<String>,
    /// Packs on sale.
    pub packs: Vec<PackView>,
    /// The latest ledger entries, newest first.
    pub ledger: Vec<CreditEntry>,
}

/// One limit of the tier and what is used of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitUse {
    /// `messages`, `tokens`, `skills`, `subagents`, `customDomains`, `storageMb`.
    pub name: &'static str,
    /// Used now (this period for messages and tokens); `null` when not measured.
    pub used: Option<u64>,
    /// The tier's limit; `null`: unlimited.
    pub limit: Option<u64>,
}

/// `GET /api/billing`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingView {
    /// Whether payments are set up (else an operator changes plans).
    pub enabled: bool,
    /// The account's tier now.
    pub tier: Tier,
    /// The latest subscription, if any.
    pub subscription: Option<Subscription>,
    /// After a failed payment: when the paid tier ends unless the payment succeeds (RFC 3339).
    pub grace_until: Option<String>,
    /// Every tier with its price and limits.
    pub tiers: Vec<TierOffer>,
    /// AI credits.
    pub credits: Credits,
    /// Usage against every limit of the tier.
    pub limits: Vec<LimitUse>,
}

/// `GET /api/billing`: the plan, subscription, grace period, credits and usage against every
/// limit.
pub async fn overview(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<BillingView>, ApiError> {
    Ok(Reply(view_of(&state, &auth.user).await?))
}

/// What `GET /api/billing` answers (and the billing page shows) for `user`.
pub(crate) async fn view_of(state: &ApiState, user: &User) -> Result<BillingView, ApiError> {
    let account = state.store.billing_account(user.id).await?;
    let subscription = state
        .store
        .subscriptions_of(user.id)
        .await?
        .into_iter()
        .next();
    let config = &state.ctx.config;
    let packs = clawdeploy_config::billing::credit_packs(&config.credit_packs)
        .iter()
        .map(|p| PackView {
            id: p.id.clone(),
            tokens: p.tokens,
            price_cents: config.billing.pack_price_cents(p),
        })
        .collect();
    let credits = Credits {
        balance_tokens: account.credit_tokens,
        providers: ["openai", "anthropic", "google"]
            .into_iter()
            .filter(|p| config.billing.platform_key(p).is_some())
            .map(str::to_string)
            .collect(),
        packs,
        ledger: state.store.credit_ledger(user.id, 20).await?,
    };
    Ok(BillingView {
        enabled: config.billing.enabled(),
        tier: user.tier,
        subscription,
        grace_until: account
            .grace_until
            .filter(|_| user.tier.is_paid())
            .map(rfc3339),
        tiers: offers(state),
        credits,
        limits: limits(state, user).await?,
    })
}

async fn limits(state: &ApiState, user: &User) -> Result<Vec<LimitUse>, ApiError> {
    let t = state.ctx.config.tiers.get(user.tier);
    let unlimited_if_zero = |n: u64| (n > 0).then_some(n);
    let instance = state.store.get_instance_by_user(user.id).await?;
    let (messages, tokens, skills) = match &instance {
        Some(inst) => {
            let usage = crate::instances::usage_of(state, inst).await?;
            let enabled = state
                .store
                .skills_of(inst.id, &state.ctx.keyring)
                .await?
                .iter()
                .filter(|s| s.enabled)
                .count() as u64;
            (
                Some(usage.messages_this_month.max(0) as u64),
                Some(usage.tokens_this_month.max(0) as u64),
                Some(enabled),
            )
        }
        None => (None, None, None),
    };
    let domains = state
        .store
        .list_custom_domains_of(user.id)
        .await?
        .iter()
        .filter(|d| {
            !matches!(
                d.status,
                clawdeploy_store::DomainStatus::Failed | clawdeploy_store::DomainStatus::Parked
            )
        })
        .count() as u64;
    Ok(vec![
        LimitUse {
            name: "messages",
            used: messages,
            limit: unlimited_if_zero(t.messages_per_month),
        },
        LimitUse {
            name: "tokens",
            used: tokens,
            limit: unlimited_if_zero(t.tokens_per_month),
        },
        LimitUse {
            name: "skills",
            used: skills,
            limit: unlimited_if_zero(u64::from(t.skills)),
        },
        LimitUse {
            name: "subagents",
            used: None,
            limit: Some(u64::from(t.subagents)),
        },
        LimitUse {
            name: "customDomains",
            used: Some(domains),
            limit: Some(u64::from(t.custom_domains)),
        },
        LimitUse {
            name: "storageMb",
            used: None,
            limit: unlimited_if_zero(t.storage_mb),
        },
    ])
}

/// Where Stripe sends the customer back: a URL on the dashboard's own origin (never elsewhere:
/// an open redirect would lend the platform's name to phishing), or the billing page.
fn return_url(
    state: &ApiState,
    field: &str,
    given: Option<&str>,
    default_query: &str,
) -> Result<String, ApiError> {
    let origin = state.ctx.app_origin();
    match given {
        None | Some("") => Ok(format!("{origin}/billing?{default_query}")),
        Some(url) if url == origin || url.starts_with(&format!("{origin}/")) => Ok(url.to_string()),
        Some(_) => Err(ApiError::invalid(
            field,
            "INVALID_RETURN_URL",
            format!("must be a URL on {origin} (Stripe sends you back there), or left out for the billing page"),
        )),
    }
}

/// The user's Stripe customer, made on first use.
async fn customer_of(state: &ApiState, stripe: &Stripe, user: &User) -> Result<String, ApiError> {
    if let Some(customer) = state
        .store
        .billing_account(user.id)
        .await?
        .stripe_customer_id
    {
        return Ok(customer);
    }
    let made = stripe
        .create_customer(&user.email, &user.id.to_string())
        .await
        .map_err(stripe_error)?;
    // Two checkouts at once may both make one: the first recorded is kept.
    Ok(state.store.set_stripe_customer(user.id, &made).await?)
}

/// The subscription that pays for the account now (active, trialing or past due), if any.
async fn live_subscription(
    state: &ApiState,
    user_id: uuid::Uuid,
) -> Result<Option<Subscription>, ApiError> {
    Ok(state
        .store
        .subscriptions_of(user_id)
        .await?
        .into_iter()
        .find(|s| s.status.grants_tier()))
}

/// Body of `POST /api/billing/checkout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutBody {
    /// `pro` or `team`.
    tier: String,
    /// Where Stripe sends the customer after paying (on the dashboard's origin); default
    /// `/billing?checkout=success`.
    #[serde(default)]
    success_url: Option<String>,
    /// Where Stripe sends the customer who gives up; default `/billing?checkout=cancelled`.
    #[serde(default)]
    cancel_url: Option<String>,
}

/// Answer of `POST /api/billing/checkout`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutReply {
    /// Stripe's payment page; `null` when an existing subscription was moved to the tier.
    pub checkout_url: Option<String>,
    /// What happens next.
    pub message: String,
}

/// `POST /api/billing/checkout`: a Checkout Session for a subscription to `tier` (its URL), or,
/// when the account already pays for another tier, that subscription moved to this tier's
/// price (prorated by Stripe; the tier follows with Stripe's webhook). 422 for an unknown or
/// unsellable tier, 409 `ALREADY_ON_TIER`, 409 `EMAIL_NOT_VERIFIED`, 503 `BILLING_UNAVAILABLE`.
pub async fn checkout(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: JsonBody<CheckoutBody>,
) -> Result<Reply<CheckoutReply>, ApiError> {
    let Json(b) = body?;
    let stripe = stripe(&state)?;
    let tier: Tier = b
        .tier
        .parse()
        .map_err(|e: clawdeploy_config::UnknownTier| {
            ApiError::invalid("tier", "INVALID_TIER", e.to_string())
        })?;
    let price = &state.ctx.config.tiers.get(tier).price_id;
    if tier == Tier::Free || price.is_empty() {
        return Err(ApiError::invalid(
            "tier",
            "TIER_NOT_FOR_SALE",
            format!("the {tier} tier is not sold by checkout; to leave a paid plan use POST /api/billing/cancel"),
        ));
    }
    let user = &auth.user;
    if user.tier == tier {
        return Err(ApiError::conflict(
            "ALREADY_ON_TIER",
            format!("You are already on the {tier} tier."),
        ));
    }
    if !user.email_verified() {
        return Err(ApiError::conflict(
            "EMAIL_NOT_VERIFIED",
            "Verify your email address before you subscribe: follow the link we sent you.",
        ));
    }
    let success = return_url(
        &state,
        "successUrl",
        b.success_url.as_deref(),
        "checkout=success",
    )?;
    let cancel = return_url(
        &state,
        "cancelUrl",
        b.cancel_url.as_deref(),
        "checkout=cancelled",
    )?;
    if let Some(live) = live_subscription(&state, user.id).await? {
        let current = stripe
            .subscription(&live.stripe_subscription_id)
            .await
            .map_err(stripe_error)?;
        let Some(item) = current.items.data.first() else {
            return Err(ApiError::internal(
                "changing a subscription's price",
                "the subscription has no item",
            ));
        };
        stripe
            .update_subscription(
                &live.stripe_subscription_id,
                SubscriptionChange::Price {
                    item: &item.id,
                    price,
                },
            )
            .await
            .map_err(stripe_error)?;
        tracing::info!(user = %user.id, %tier, "subscription moved to another tier");
        return Ok(Reply(CheckoutReply {
            checkout_url: None,
            message: format!("Your subscription moves to the {tier} tier; the change applies as soon as the payment provider confirms it (seconds)."),
        }));
    }
    let customer = customer_of(&state, stripe, user).await?;
    let session = stripe
        .checkout_subscription(&customer, &user.id.to_string(), price, &success, &cancel)
        .await
        .map_err(stripe_error)?;
    tracing::info!(user = %user.id, %tier, session = %session.id, "checkout started");
    Ok(Reply(CheckoutReply {
        checkout_url: Some(session.url),
        message: format!(
            "Pay on the payment page; the {tier} tier applies the moment the payment is confirmed."
        ),
    }))
}

/// Body of `POST /api/billing/portal`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortalBody {
    /// Where the portal's "return" link goes (on the dashboard's origin); default `/billing`.
    #[serde(default)]
    return_url: Option<String>,
}

/// Answer of `POST /api/billing/portal`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortalReply {
    /// Stripe's Customer Portal for this account (card, invoices, cancellation).
    pub portal_url: String,
}

/// `POST /api/billing/portal`: a Customer Portal session; 409 `NO_CUSTOMER` before the first
/// checkout.
pub async fn portal(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: JsonBody<PortalBody>,
) -> Result<Reply<PortalReply>, ApiError> {
    let Json(b) = body?;
    let stripe = stripe(&state)?;
    let back = return_url(
        &state,
        "returnUrl",
        b.return_url.as_deref(),
        "portal=closed",
    )?;
    let Some(customer) = state
        .store
        .billing_account(auth.user.id)
        .await?
        .stripe_customer_id
    else {
        return Err(ApiError::conflict(
            "NO_CUSTOMER",
            "You have not subscribed or bought credits yet: there is nothing to manage.",
        ));
    };
    let url = stripe
        .portal(&customer, &back)
        .await
        .map_err(stripe_error)?;
    Ok(Reply(PortalReply { portal_url: url }))
}

/// Body of `POST /api/billing/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelBody {
    /// `true` (default): the subscription ends at the end of the paid period; `false` undoes a
    /// cancellation before then.
    #[serde(default = "yes")]
    at_period_end: bool,
}

fn yes() -> bool {
    true
}

/// Answer of `POST /api/billing/cancel`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelReply {
    /// Whether it ends at the period's end.
    pub cancel_at_period_end: bool,
    /// When the paid period ends (RFC 3339), as Stripe says.
    pub period_end: Option<String>,
    /// What happens next.
    pub message: String,
}

/// `POST /api/billing/cancel`: cancels the subscription at the end of its paid period (the tier
/// stays until then), or undoes that. 409 `NO_SUBSCRIPTION`.
pub async fn cancel(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: JsonBody<CancelBody>,
) -> Result<Reply<CancelReply>, ApiError> {
    let Json(b) = body?;
    let stripe = stripe(&state)?;
    let Some(live) = live_subscription(&state, auth.user.id).await? else {
        return Err(ApiError::conflict(
            "NO_SUBSCRIPTION",
            "You have no paid subscription to cancel.",
        ));
    };
    let updated = stripe
        .update_subscription(
            &live.stripe_subscription_id,
            SubscriptionChange::CancelAtPeriodEnd(b.at_period_end),
        )
        .await
        .map_err(stripe_error)?;
    let period_end = updated.period_end().map(|s| rfc3339(s * 1000));
    let message = match (&period_end, b.at_period_end) {
        (Some(end), true) => format!(
            "Your {} plan ends on {end}; you keep it until then.",
            live.tier
        ),
        (None, true) => format!(
            "Your {} plan ends at the end of the paid period.",
            live.tier
        ),
        (_, false) => format!("Your {} plan goes on.", live.tier),
    };
    tracing::info!(user = %auth.user.id, at_period_end = b.at_period_end, "subscription cancellation changed");
    Ok(Reply(CancelReply {
        cancel_at_period_end: updated.cancel_at_period_end,
        period_end,
        message,
    }))
}

/// An invoice as the dashboard lists it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceView {
    /// `in_…`.
    pub id: String,
    /// The number shown to the customer.
    pub number: Option<String>,
    /// `paid`, `open`, …
    pub status: Option<String>,
    /// What was due, in cents.
    pub amount_due: i64,
    /// What was paid, in cents.
    pub amount_paid: i64,
    /// ISO currency.
    pub currency: Option<String>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Stripe's page for it.
    pub url: Option<String>,
}

/// `GET /api/billing/invoices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invoices {
    /// The latest invoices, newest first.
    pub invoices: Vec<InvoiceView>,
}

/// `GET /api/billing/invoices`: the account's latest 24 invoices, from Stripe.
pub async fn invoices(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<Invoices>, ApiError> {
    Ok(Reply(Invoices {
        invoices: invoices_of(&state, &auth.user).await?,
    }))
}

/// The latest invoices of `user`, from Stripe (none before the first checkout).
pub(crate) async fn invoices_of(
    state: &ApiState,
    user: &User,
) -> Result<Vec<InvoiceView>, ApiError> {
    let stripe = stripe(state)?;
    let Some(customer) = state
        .store
        .billing_account(user.id)
        .await?
        .stripe_customer_id
    else {
        return Ok(Vec::new());
    };
    let list = stripe.invoices(&customer, 24).await.map_err(stripe_error)?;
    Ok(list
        .into_iter()
        .map(|i| InvoiceView {
            id: i.id,
            number: i.number,
            status: i.status,
            amount_due: i.amount_due,
            amount_paid: i.amount_paid,
            currency: i.currency,
            created: rfc3339(i.created.saturating_mul(1000)),
            url: i.hosted_invoice_url,
        })
        .collect())
}

/// Body of `POST /api/billing/credits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditsBody {
    /// The pack's id (`GET /api/billing` lists them).
    pack: String,
    /// As for checkout.
    #[serde(default)]
    success_url: Option<String>,
    /// As for checkout.
    #[serde(default)]
    cancel_url: Option<String>,
}

/// `POST /api/billing/credits`: a one-off Checkout payment for a credit pack (its URL); the
/// tokens are credited when Stripe confirms the payment. 422 `UNKNOWN_PACK`.
pub async fn buy_credits(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: JsonBody<CreditsBody>,
) -> Result<Reply<CheckoutReply>, ApiError> {
    let Json(b) = body?;
    let stripe = stripe(&state)?;
    let config = &state.ctx.config;
    let packs = clawdeploy_config::billing::credit_packs(&config.credit_packs);
    let Some(pack) = packs.iter().find(|p| p.id == b.pack) else {
        let ids: Vec<&str> = packs.iter().map(|p| p.id.as_str()).collect();
        return Err(ApiError::invalid(
            "pack",
            "UNKNOWN_PACK",
            format!("no credit pack {:?}; choose one of {ids:?}", b.pack),
        ));
    };
    if !auth.user.email_verified() {
        return Err(ApiError::conflict(
            "EMAIL_NOT_VERIFIED",
            "Verify your email address before you buy credits: follow the link we sent you.",
        ));
    }
    let success = return_url(
        &state,
        "successUrl",
        b.success_url.as_deref(),
        "credits=success",
    )?;
    let cancel = return_url(
        &state,
        "cancelUrl",
        b.cancel_url.as_deref(),
        "credits=cancelled",
    )?;
    let customer = customer_of(&state, stripe, &auth.user).await?;
    let name = format!("ClawDeploy AI credits: {} tokens", pack.tokens);
    let metadata = [
        ("pack", pack.id.clone()),
        ("tokens", pack.tokens.to_string()),
    ];
    let line = OneOff {
        name: &name,
        amount_cents: config.billing.pack_price_cents(pack),
        currency: &config.billing.currency,
        metadata: &metadata,
    };
    let session = stripe
        .checkout_payment(
            &customer,
            &auth.user.id.to_string(),
            &line,
            &success,
            &cancel,
        )
        .await
        .map_err(stripe_error)?;
    Ok(Reply(CheckoutReply {
        checkout_url: Some(session.url),
        message: format!(
            "Pay on the payment page; {} tokens are credited the moment the payment is confirmed.",
            pack.tokens
        ),
    }))
}

/// Answer of `POST /api/billing/webhook`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReply {
    /// Always true: the event was received (and handled, or recognised as handled before).
    pub received: bool,
    /// What it did, for Stripe's delivery log.
    pub outcome: String,
}

/// `POST /api/billing/webhook`: Stripe's events. 400 for a missing, bad or stale signature or an
/// unreadable event (nothing changes); 200 for a handled, repeated, ignored or unknown-customer
/// event; 5xx only when the platform failed, so that Stripe delivers it again.
pub async fn webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Reply<WebhookReply>, ApiError> {
    let started = std::time::Instant::now();
    let billing = &state.ctx.config.billing;
    if billing.webhook_secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BILLING_DISABLED",
            "This platform has no webhook secret (billing.webhook_secrets): it accepts no Stripe events.",
        ));
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now_s = now_ms() / 1000;
    if let Err(e) = stripe_webhook::verify(
        signature,
        &body,
        &billing.webhook_secrets,
        billing.webhook_tolerance_secs,
        now_s,
    ) {
        tracing::warn!(target: "security", "Stripe webhook refused: {e}");
        metrics::counter!("clawdeploy_billing_webhooks_total", "outcome" => "refused").increment(1);
        let code = match e {
            SignatureError::Stale { .. } => "STALE_SIGNATURE",
            _ => "INVALID_SIGNATURE",
        };
        return Err(ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string()));
    }
    let event: Event = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_EVENT",
            format!("The body is not a Stripe event: {e}"),
        )
    })?;
    // One delivery at a time on this node (a tier worked out from an older state must not land
    // after a newer one); between nodes the store's ordered upsert decides.
    let outcome = {
        let _one = state.ctx.billing_lock.lock().await;
        if state.store.billing_event_seen(&event.id).await? {
            return Ok(Reply(WebhookReply {
                received: true,
                outcome: "already handled".into(),
            }));
        }
        let outcome = handle(&state, &event).await?;
        state
            .store
            .record_billing_event(&event.id, &event.kind, &outcome)
            .await?;
        outcome
    };
    metrics::counter!("clawdeploy_billing_webhooks_total", "outcome" => "handled").increment(1);
    metrics::histogram!("clawdeploy_billing_webhook_seconds")
        .record(started.elapsed().as_secs_f64());
    tracing::info!(event = %event.id, kind = %event.kind, %outcome, "Stripe event handled");
    Ok(Reply(WebhookReply {
        received: true,
        outcome,
    }))
}

fn object<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, ApiError> {
    serde_json::from_value(event.data.object.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_EVENT",
            format!("{}'s object is not as Stripe documents it: {e}", event.kind),
        )
    })
}

async fn handle(state: &ApiState, event: &Event) -> Result<String, ApiError> {
    match event.kind.as_str() {
        "checkout.session.completed" => checkout_completed(state, event, object(event)?).await,
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            subscription_changed(state, event.created, object(event)?).await
        }
        "invoice.paid" => {
            let invoice: stripe_webhook::Invoice = object(event)?;
            let Some(user) = user_of_customer(state, invoice.customer.as_deref()).await? else {
                return Ok("unknown customer: ignored".into());
            };
            state.store.clear_grace(user.id).await?;
            reconcile(state, &user, "invoice paid").await?;
            Ok(format!(
                "paid {} cents; no grace period",
                invoice.amount_paid
            ))
        }
        "invoice.payment_failed" => {
            let invoice: stripe_webhook::Invoice = object(event)?;
            let Some(user) = user_of_customer(state, invoice.customer.as_deref()).await? else {
                return Ok("unknown customer: ignored".into());
            };
            let until = start_grace(state, &user).await?;
            Ok(format!(
                "payment failed (attempt {}); paid tier kept until {}",
                invoice.attempt_count,
                rfc3339(until)
            ))
        }
        _ => Ok("not an event the platform acts on: ignored".into()),
    }
}

async fn user_of_customer(
    state: &ApiState,
    customer: Option<&str>,
) -> Result<Option<User>, ApiError> {
    let Some(customer) = customer else {
        return Ok(None);
    };
    let user = state.store.user_by_stripe_customer(customer).await?;
    if user.is_none() {
        tracing::warn!(%customer, "Stripe event for a customer no account has");
    }
    Ok(user)
}

/// Starts the account's grace period if none runs, and mails the owner the first time.
async fn start_grace(state: &ApiState, user: &User) -> Result<i64, ApiError> {
    let grace_ms = (state.ctx.config.billing.grace_period_secs as i64).saturating_mul(1000);
    let proposed = now_ms().saturating_add(grace_ms);
    let until = state.store.start_grace(user.id, proposed).await?;
    if until == proposed && user.tier.is_paid() {
        let body = format!(
            "Hello,\n\nthe payment for your ClawDeploy {tier} plan failed. Your card will be tried again; you keep the {tier} plan until {end}. \
             After that, without a payment, your account moves to the free plan (nothing is deleted: extra skills are disabled and custom domains paused until you subscribe again).\n\n\
             Update your card: {origin}/billing\n",
            tier = user.tier,
            end = rfc3339(until),
            origin = state.ctx.app_origin(),
        );
        notify(state, user, "Your ClawDeploy payment failed", &body).await;
    }
    Ok(until)
}

/// Mails the account's owner (a failure is logged: the change it tells of has been made).
async fn notify(state: &ApiState, user: &User, subject: &str, body: &str) {
    if let Err(e) = state
        .ctx
        .mailer
        .send(&state.store, &user.email, subject, body)
        .await
    {
        tracing::warn!(user = %user.id, subject, "cannot mail a billing notice: {e}");
    }
}

async fn checkout_completed(
    state: &ApiState,
    event: &Event,
    session: CheckoutSession,
) -> Result<String, ApiError> {
    let by_reference = match session
        .client_reference_id
        .as_deref()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
    {
        Some(id) => state.store.get_user(id).await?,
        None => None,
    };
    let user = match by_reference {
        Some(u) => Some(u),
        None => user_of_customer(state, session.customer.as_deref()).await?,
    };
    let Some(user) = user else {
        return Ok("unknown customer: ignored".into());
    };
    if let Some(customer) = &session.customer {
        state.store.set_stripe_customer(user.id, customer).await?;
    }
    match session.mode.as_str() {
        "subscription" => {
            let Some(id) = session.subscription.as_deref() else {
                return Ok("subscription checkout without a subscription: ignored".into());
            };
            // The session names the subscription only: its state comes from Stripe, so the tier
            // applies now whichever of this and `customer.subscription.created` comes first.
            let stripe = stripe(state)?;
            let subscription = stripe.subscription(id).await.map_err(stripe_error)?;
            subscription_changed(state, event.created, subscription).await
        }
        "payment" if session.payment_status.as_deref() == Some("paid") => {
            let tokens: i64 = session
                .metadata
                .get("tokens")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if tokens <= 0 {
                return Ok("payment without credit tokens: ignored".into());
            }
            let pack = session.metadata.get("pack").map(String::as_str);
            let credited = state
                .store
                .add_credit(&NewCredit {
                    user_id: user.id,
                    kind: CreditKind::Purchase,
                    tokens,
                    amount_cents: session.amount_total,
                    reference: Some(&session.id),
                    actor: None,
                    reason: pack,
                })
                .await?;
            Ok(match credited {
                Some(balance) => {
                    tracing::info!(user = %user.id, tokens, balance, "credits bought");
                    format!("credited {tokens} tokens; balance {balance}")
                }
                None => "credits of this session were already added".into(),
            })
        }
        _ => Ok("checkout not paid yet: ignored".into()),
    }
}

async fn subscription_changed(
    state: &ApiState,
    state_at: i64,
    sub: stripe_webhook::Subscription,
) -> Result<String, ApiError> {
    let Some(user) = user_of_customer(state, Some(&sub.customer)).await? else {
        return Ok("unknown customer: ignored".into());
    };
    let status: SubscriptionStatus = match sub.status.parse() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(subscription = %sub.id, "{e}");
            return Ok(format!("{e}: ignored"));
        }
    };
    let config = &state.ctx.config;
    let Some(tier) = sub.price_id().and_then(|p| config.tiers.by_price(p)) else {
        tracing::warn!(subscription = %sub.id, price = ?sub.price_id(), "a subscription's price is no tier's tiers.<tier>.price_id");
        return Ok("price of no tier: ignored".into());
    };
    let applied = state
        .store
        .apply_subscription(&SubscriptionState {
            user_id: user.id,
            stripe_subscription_id: &sub.id,
            stripe_customer_id: &sub.customer,
            tier,
            status,
            current_period_end: sub.period_end().map(|s| s.saturating_mul(1000)),
            cancel_at_period_end: sub.cancel_at_period_end,
            state_at,
        })
        .await?;
    if applied.is_none() {
        return Ok("older than the subscription's recorded state: ignored".into());
    }
    let subs = state.store.subscriptions_of(user.id).await?;
    if status == SubscriptionStatus::PastDue {
        start_grace(state, &user).await?;
    } else if !subs.iter().any(|s| s.status == SubscriptionStatus::PastDue) {
        state.store.clear_grace(user.id).await?;
    }
    let now = reconcile(state, &user, "subscription changed").await?;
    Ok(format!(
        "subscription {} {}; account on {now}",
        sub.id,
        status.as_str()
    ))
}

/// Works out the account's tier from its subscriptions (active and trialing ones grant theirs;
/// a past-due one only during the grace period) and applies it if it changed. The tier now.
pub(crate) async fn reconcile(
    state: &ApiState,
    user: &User,
    cause: &str,
) -> Result<Tier, ApiError> {
    let grace = state.store.billing_account(user.id).await?.grace_until;
    let now = now_ms();
    let wanted = state
        .store
        .subscriptions_of(user.id)
        .await?
        .iter()
        .filter(|s| match s.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => true,
            SubscriptionStatus::PastDue => grace.is_some_and(|g| g > now),
            _ => false,
        })
        .map(|s| s.tier)
        .max()
        .unwrap_or(Tier::Free);
    // Refresh: an earlier event of this delivery may have changed it.
    let current = state
        .store
        .get_user(user.id)
        .await?
        .map_or(user.tier, |u| u.tier);
    if wanted != current {
        change_tier(state, user.id, wanted, cause).await?;
    }
    Ok(wanted)
}

/// What a tier change did.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierApplied {
    /// The account's instances, on the new tier.
    pub instances: Vec<InstanceView>,
    /// Skills disabled because the new tier's cap is lower (newest first; they stay installed).
    pub skills_disabled: Vec<String>,
    /// Skills enabled again because the new tier's cap allows them (a return to a paid tier).
    pub skills_restored: Vec<String>,
    /// Custom domains parked (kept, not served) past the new tier's limit.
    pub domains_parked: Vec<String>,
    /// Custom domains served again.
    pub domains_restored: Vec<String>,
    /// What happened to each instance's CPU and memory limits.
    pub resources: Vec<String>,
}

/// Moves an account to `tier` and applies it at once everywhere: quotas (every edge meters by
/// the tier in its route table), skill and sub-agent caps (the config is rewritten live),
/// custom domains (parked past the limit, or served again), and the containers' CPU and memory
/// (live; a lower memory limit the instance cannot fit in now waits for its next restart).
pub(crate) async fn change_tier(
    state: &ApiState,
    user_id: uuid::Uuid,
    tier: Tier,
    cause: &str,
) -> Result<TierApplied, ApiError> {
    state.store.set_user_tier(user_id, tier).await?;
    let mut applied = TierApplied::default();
    for inst in state.store.list_instances_by_user(user_id).await? {
        let inst = state.store.update_instance_tier(inst.id, tier).await?;
        state.instance_changed(inst.id, &inst.subdomain).await;
        let (disabled, restored) = crate::skills::follow_tier(state, &inst).await?;
        applied.skills_disabled.extend(disabled);
        applied.skills_restored.extend(restored);
        applied.resources.push(resize(state, &inst).await);
        applied.instances.push(InstanceView::new(state, &inst));
    }
    let allowed = state.ctx.config.tiers.get(tier).custom_domains;
    let reason = format!(
        "The {tier} tier serves {allowed} custom domain(s); this one is kept and served again when your plan allows it."
    );
    applied.domains_parked = state
        .store
        .park_custom_domains(user_id, allowed, &reason)
        .await?;
    applied.domains_restored = state
        .store
        .unpark_custom_domains(user_id, allowed)
        .await?
        .into_iter()
        .map(|d| d.hostname)
        .collect();
    for hostname in applied
        .domains_parked
        .iter()
        .chain(&applied.domains_restored)
    {
        if let Err(e) = state
            .bus
            .publish(clawdeploy_store::changes::Change::Domain {
                hostname: hostname.clone(),
            })
            .await
        {
            tracing::error!("cannot broadcast a domain change: {e}");
        }
    }
    tracing::info!(user = %user_id, %tier, cause, parked = ?applied.domains_parked, restored = ?applied.domains_restored, "tier changed");
    Ok(applied)
}

async fn resize(state: &ApiState, inst: &Instance) -> String {
    let Some(pool) = &state.pool else {
        return format!("{}: no instance runtime on this node", inst.subdomain);
    };
    if matches!(
        inst.status,
        InstanceStatus::Deleting | InstanceStatus::Stopped | InstanceStatus::Queued
    ) {
        return format!("{}: applies when it starts", inst.subdomain);
    }
    match pool.resize(inst).await {
        Ok(clawdeploy_pool::Resize::Applied(r)) => format!(
            "{}: {} CPU, {} MiB, applied live",
            inst.subdomain, r.cpus, r.memory_mb
        ),
        Ok(clawdeploy_pool::Resize::AtNextStart(why)) => format!("{}: {why}", inst.subdomain),
        Err(e) => {
            tracing::warn!(instance = %inst.id, "cannot apply the tier's resources: {e}");
            format!("{}: applies at its next restart ({e})", inst.subdomain)
        }
    }
}

/// Moves accounts whose grace period ended unpaid to the free tier, every
/// `billing.sweep_interval_secs`.
pub async fn sweep_forever(state: ApiState) {
    let every = Duration::from_secs(state.ctx.config.billing.sweep_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&state).await {
            tracing::warn!("billing sweep failed: {e:?}");
        }
    }
}

/// One pass of [`sweep_forever`].
pub async fn sweep(state: &ApiState) -> Result<(), ApiError> {
    let _one = state.ctx.billing_lock.lock().await;
    for id in state.store.users_past_grace(now_ms()).await? {
        let Some(user) = state.store.get_user(id).await? else {
            continue;
        };
        if !user.tier.is_paid() {
            continue;
        }
        if reconcile(state, &user, "grace period ended unpaid").await? == Tier::Free {
            let body = format!(
                "Hello,\n\nthe payment for your ClawDeploy {tier} plan did not go through before the grace period ended, so your account is on the free plan now. \
                 Nothing was deleted: skills past the free plan's limit are disabled and custom domains paused. Subscribe again to get them back: {origin}/billing\n",
                tier = user.tier,
                origin = state.ctx.app_origin(),
            );
            notify(state, &user, "Your ClawDeploy plan moved to free", &body).await;
        }
    }
    Ok(())
}

/// `GET /admin/billing/subscriptions` query: `limit` (1–500, default 100).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsQuery {
    limit: Option<u32>,
}

/// Every subscription (operators).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    /// Newest first.
    pub subscriptions: Vec<Subscription>,
}

/// `GET /admin/billing/subscriptions`: every subscription, newest first.
pub async fn admin_subscriptions(
    _: Admin,
    State(state): State<ApiState>,
    query: Result<Query<SubscriptionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Reply<SubscriptionList>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "INVALID_LIMIT",
            "between 1 and 500",
        ));
    }
    Ok(Reply(SubscriptionList {
        subscriptions: state.store.list_subscriptions(limit).await?,
    }))
}

/// A user's credit ledger (operators).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// The balance in tokens.
    pub balance_tokens: i64,
    /// Entries, newest first (the latest 500).
    pub entries: Vec<CreditEntry>,
}

async fn ledger_of(state: &ApiState, id: &str) -> Result<(uuid::Uuid, Ledger), ApiError> {
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::invalid("id", "INVALID_ID", "not a user id (UUID)"))?;
    let balance = match state.store.credit_balance(id).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::not_found("There is no user with this id."))
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        id,
        Ledger {
            balance_tokens: balance,
            entries: state.store.credit_ledger(id, 500).await?,
        },
    ))
}

/// `GET /admin/users/{id}/credits`: a user's credit balance and ledger.
pub async fn admin_ledger(
    _: Admin,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Reply<Ledger>, ApiError> {
    Ok(Reply(ledger_of(&state, &id).await?.1))
}

/// Body of `POST /admin/users/{id}/credits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdjustBody {
    /// Tokens to add (positive) or take (negative); not 0.
    tokens: i64,
    /// Why, for the ledger (required).
    reason: String,
    /// `adjustment` (default) or `refund` (money went back: tokens must be negative).
    #[serde(default)]
    kind: Option<String>,
}

/// `POST /admin/users/{id}/credits`: an operator's adjustment or refund, recorded with who and
/// why; 201 with the ledger.
pub async fn admin_adjust(
    admin: Admin,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: JsonBody<AdjustBody>,
) -> Result<(StatusCode, Reply<Ledger>), ApiError> {
    let Json(b) = body?;
    let kind = match b.kind.as_deref() {
        None | Some("adjustment") => CreditKind::Adjustment,
        Some("refund") if b.tokens < 0 => CreditKind::Refund,
        Some("refund") => {
            return Err(ApiError::invalid(
                "tokens",
                "INVALID_TOKENS",
                "a refund takes tokens away: give a negative number",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "kind",
                "INVALID_KIND",
                format!("{other:?}: use adjustment or refund"),
            ))
        }
    };
    if b.tokens == 0 {
        return Err(ApiError::invalid(
            "tokens",
            "INVALID_TOKENS",
            "must not be 0",
        ));
    }
    let reason = b.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::invalid(
            "reason",
            "INVALID_REASON",
            "say why, in 1 to 500 characters",
        ));
    }
    let (user_id, _) = ledger_of(&state, &id).await?;
    state
        .store
        .add_credit(&NewCredit {
            user_id,
            kind,
            tokens: b.tokens,
            amount_cents: None,
            reference: None,
            actor: Some(&admin.who),
            reason: Some(reason),
        })
        .await?;
    tracing::info!(user = %user_id, tokens = b.tokens, who = %admin.who, reason, "credits adjusted by an operator");
    Ok((StatusCode::CREATED, Reply(ledger_of(&state, &id).await?.1)))
}
