//! `[billing]`: Stripe subscriptions for the paid tiers and prepaid AI credits (PRD §3.6). Every
//! key is documented in `docs/config.md`; how the pieces fit: [Billing](billing.md).

use serde::{Deserialize, Serialize};

/// `[billing]`: payments through Stripe's REST API.
///
/// With an empty `stripe_secret_key` nothing is sold: the billing page shows the plans, and
/// operators change tiers by hand (`PUT /admin/users/{id}/tier`). The Stripe prices of the tiers
/// are `tiers.<tier>.price_id`. How to set up Stripe: [Billing](billing.md#setting-up-stripe).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// Stripe's API base URL. Tests point it at a local fake of the endpoints used.
    pub stripe_api_url: String,
    /// The Stripe secret key (`sk_live_…`, `sk_test_…` or a restricted `rk_…` key); empty turns
    /// billing off. Masked by `check-config`, never logged; set it through
    /// `CLAWDEPLOY_BILLING__STRIPE_SECRET_KEY` rather than a file.
    pub stripe_secret_key: String,
    /// Signing secrets (`whsec_…`) of the webhook endpoint `https://<app>/api/billing/webhook`;
    /// an event signed with any of them is accepted, so a secret is rotated by adding the new
    /// one, then removing the old one once Stripe signs with the new. Masked like the key.
    pub webhook_secrets: Vec<String>,
    /// How old a webhook's signature timestamp may be, in seconds (Stripe's libraries use 300):
    /// older deliveries are refused as replays.
    pub webhook_tolerance_secs: u64,
    /// How long one Stripe API call may take before the API answers 503 `BILLING_UNAVAILABLE`.
    pub stripe_timeout_secs: u64,
    /// After a failed payment, how long a paid account keeps its tier (while Stripe retries the
    /// card) before it moves to free. 604800: 7 days.
    pub grace_period_secs: u64,
    /// How often accounts whose grace period ended are moved to free.
    pub sweep_interval_secs: u64,
    /// ISO currency of prices and credit packs, lower case (`usd`).
    pub currency: String,
    /// What one million tokens cost the platform at its provider, in cents: credit packs are
    /// priced from it with `credit_markup_percent`.
    pub credit_cost_cents_per_million: u64,
    /// The markup on credits over their cost (the PRD's 20 %). Users with their own key are never
    /// charged for tokens.
    pub credit_markup_percent: u64,
    /// Credits one user's requests may run at once without enough balance for all of them
    /// (tokens): a request is admitted while the balance covers this many tokens for each
    /// request already in flight, so the balance goes negative by at most one request.
    pub credit_reserve_tokens: u64,
    /// The platform's OpenAI key, which credit users' calls to OpenAI are made with; empty:
    /// OpenAI is not sold as credits. Masked like the Stripe key.
    pub openai_key: String,
    /// The platform's Anthropic key for credit users (as `openai_key`).
    pub anthropic_key: String,
    /// The platform's Google (Gemini) key for credit users (as `openai_key`).
    pub google_key: String,
}

/// `[[credit_packs]]`: a pack of prepaid AI credits (tokens) bought by a one-off Checkout
/// payment, priced from `billing.credit_cost_cents_per_million` with the markup. None configured:
/// the PRD's two packs, `1m` (1,000,000 tokens) and `2_5m` (2,500,000 tokens, 20 % off).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreditPack {
    /// The pack's id in the API (`POST /api/billing/credits {pack}`): lower-case letters,
    /// digits, `-` and `_`.
    pub id: String,
    /// Tokens the pack adds to the balance.
    pub tokens: u64,
    /// Discount on the marked-up price, in percent (bulk packs).
    #[serde(default)]
    pub discount_percent: u64,
}

impl BillingConfig {
    /// Whether payments are on (a Stripe key is configured).
    pub fn enabled(&self) -> bool {
        !self.stripe_secret_key.is_empty()
    }

    /// A pack's price in cents: its tokens at cost, plus the markup, less its discount; never
    /// below 50 (Stripe's smallest charge in most currencies).
    pub fn pack_price_cents(&self, pack: &CreditPack) -> u64 {
        let cost = pack.tokens as u128 * self.credit_cost_cents_per_million as u128;
        let marked = cost * (100 + self.credit_markup_percent as u128) / 100;
        let discounted = marked * (100 - pack.discount_percent.min(100) as u128) / 100;
        let cents = discounted.div_ceil(1_000_000);
        u64::try_from(cents).unwrap_or(u64::MAX).max(50)
    }

    /// The platform's key for `provider` (`openai`, `anthropic`, `google`), if credits are sold
    /// for it.
    pub fn platform_key(&self, provider: &str) -> Option<&str> {
        let key = match provider {
            "openai" => &self.openai_key,
            "anthropic" => &self.anthropic_key,
            "google" => &self.google_key,
            _ => return None,
        };
        Some(key.as_str()).filter(|k| !k.is_empty())
    }
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            stripe_api_url: "https://api.stripe.com".into(),
            stripe_secret_key: String::new(),
            webhook_secrets: Vec::new(),
            webhook_tolerance_secs: 300,
            stripe_timeout_secs: 10,
            grace_period_secs: 7 * 24 * 3600,
            sweep_interval_secs: 60,
            currency: "usd".into(),
            // $10 for 1M tokens after the 20 % markup (the PRD's example).
            credit_cost_cents_per_million: 833,
            credit_markup_percent: 20,
            credit_reserve_tokens: 32_000,
            openai_key: String::new(),
            anthropic_key: String::new(),
            google_key: String::new(),
        }
    }
}

pub(crate) fn validate(
    billing: &BillingConfig,
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    let url = &billing.stripe_api_url;
    issue(
        (url.starts_with("https://") || url.starts_with("http://")) && !url.ends_with('/'),
        "billing.stripe_api_url",
        url,
        "an http(s) URL without a trailing slash, such as https://api.stripe.com",
    );
    let key = &billing.stripe_secret_key;
    issue(
        key.is_empty() || ["sk_", "rk_"].iter().any(|p| key.starts_with(p)),
        "billing.stripe_secret_key",
        &crate::MASK,
        "a Stripe secret key (sk_live_…, sk_test_… or rk_…), or empty to turn billing off",
    );
    issue(
        !billing.enabled() || !billing.webhook_secrets.is_empty(),
        "billing.webhook_secrets",
        &"[]",
        "at least one webhook signing secret (whsec_…) when billing.stripe_secret_key is set: without it no payment would ever reach an account",
    );
    for secret in &billing.webhook_secrets {
        issue(
            secret.starts_with("whsec_") && secret.len() > 10,
            "billing.webhook_secrets",
            &crate::MASK,
            "webhook signing secrets as Stripe shows them (whsec_…)",
        );
    }
    issue(
        (1..=3600).contains(&billing.webhook_tolerance_secs),
        "billing.webhook_tolerance_secs",
        &billing.webhook_tolerance_secs,
        "1 to 3600 seconds",
    );
    issue(
        (1..=120).contains(&billing.stripe_timeout_secs),
        "billing.stripe_timeout_secs",
        &billing.stripe_timeout_secs,
        "1 to 120 seconds",
    );
    issue(
        (1..=86_400).contains(&billing.sweep_interval_secs),
        "billing.sweep_interval_secs",
        &billing.sweep_interval_secs,
        "1 to 86400 seconds",
    );
    issue(
        billing.currency.len() == 3 && billing.currency.bytes().all(|b| b.is_ascii_lowercase()),
        "billing.currency",
        &billing.currency,
        "a three-letter ISO currency code in lower case, such as usd or eur",
    );
    issue(
        billing.credit_markup_percent <= 1000,
        "billing.credit_markup_percent",
        &billing.credit_markup_percent,
        "0 to 1000 percent",
    );
}

/// The packs on sale: `configured`, or the PRD's two when none is.
pub fn credit_packs(configured: &[CreditPack]) -> Vec<CreditPack> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    vec![
        CreditPack {
            id: "1m".into(),
            tokens: 1_000_000,
            discount_percent: 0,
        },
        CreditPack {
            id: "2_5m".into(),
            tokens: 2_500_000,
            discount_percent: 20,
        },
    ]
}

pub(crate) fn validate_packs(
    packs: &[CreditPack],
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    let mut seen = std::collections::BTreeSet::new();
    for pack in packs {
        issue(
            !pack.id.is_empty()
                && pack.id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                })
                && seen.insert(pack.id.clone()),
            "credit_packs.id",
            &pack.id,
            "a unique id of lower-case letters, digits, - and _",
        );
        issue(
            pack.tokens > 0 && pack.discount_percent < 100,
            "credit_packs.tokens",
            &pack.tokens,
            "more than 0 tokens, with a discount_percent below 100",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_priced_from_cost_with_the_markup() {
        let billing = BillingConfig::default();
        let packs = credit_packs(&[]);
        // The PRD's examples: $10 for 1M tokens, $20 for 2.5M (bulk discount).
        assert_eq!(billing.pack_price_cents(&packs[0]), 1000);
        assert_eq!(billing.pack_price_cents(&packs[1]), 2000);
        let tiny = CreditPack {
            id: "t".into(),
            tokens: 1,
            discount_percent: 0,
        };
        assert_eq!(billing.pack_price_cents(&tiny), 50);
    }

    /// A tier's table sets only the keys it names: the rest keep that tier's defaults.
    #[test]
    fn a_tier_table_overrides_only_its_keys() {
        let config = crate::Config::from_toml_with_env(
            "[tiers.pro]\nprice_id = \"price_123\"\nmemory_mb = 4096\n",
            std::path::Path::new("t.toml"),
            Vec::new(),
        )
        .unwrap();
        let pro = &config.tiers.pro;
        assert_eq!((pro.price_id.as_str(), pro.memory_mb), ("price_123", 4096));
        assert_eq!((pro.skills, pro.subagents, pro.price_cents), (20, 5, 2900));
        assert_eq!(config.tiers.by_price("price_123"), Some(crate::Tier::Pro));
        assert_eq!(config.tiers.by_price(""), None);
        assert_eq!(config.tiers.free.skills, 3);
        let unknown = crate::Config::from_toml_with_env(
            "[tiers.pro]\nprise_id = \"x\"\n",
            std::path::Path::new("t.toml"),
            Vec::new(),
        );
        assert!(unknown.unwrap_err().to_string().contains("prise_id"));
    }
}
