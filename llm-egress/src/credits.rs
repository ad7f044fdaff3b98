//! AI credits at the meter (PRD §3.6.2): an owner without a key of their own for a provider is
//! served with the platform's key while their prepaid balance lasts, and each call's tokens are
//! debited from the ledger as the meter counts them. Owners with their own key never pay for
//! tokens here.
//!
//! A call is admitted while the balance is positive and covers `billing.credit_reserve_tokens`
//! for each of the owner's credit calls already in flight, so the balance goes below zero by at
//! most the last call's tokens (its usage is only known once it has been answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clawdeploy_config::BillingConfig;
use clawdeploy_store::{CreditKind, NewCredit, Store};
use uuid::Uuid;

/// The platform's keys and the credit calls in flight per owner.
#[derive(Debug, Default)]
pub struct Credits {
    keys: HashMap<&'static str, String>,
    reserve_tokens: i64,
    in_flight: Mutex<HashMap<Uuid, i64>>,
}

/// Why a credit call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The balance is spent (or below zero after the last call).
    Exhausted,
    /// Other calls in flight may spend what is left: retry when they finish.
    Busy,
}

/// An admitted credit call: counted in flight until dropped (after its debit).
pub struct Hold {
    credits: Arc<Credits>,
    user: Uuid,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut flying = self
            .credits
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = flying.get_mut(&self.user) {
            *n -= 1;
            if *n <= 0 {
                flying.remove(&self.user);
            }
        }
    }
}

impl Credits {
    /// From `[billing]`: the platform's provider keys and the reserve per call in flight.
    pub fn new(billing: &BillingConfig) -> Self {
        let keys = ["openai", "anthropic", "google"]
            .into_iter()
            .filter_map(|p| billing.platform_key(p).map(|k| (p, k.to_string())))
            .collect();
        Self {
            keys,
            reserve_tokens: i64::try_from(billing.credit_reserve_tokens).unwrap_or(i64::MAX),
            in_flight: Mutex::default(),
        }
    }

    /// The platform's key for `provider`, if credits are sold for it.
    pub fn platform_key(&self, provider: &str) -> Option<&str> {
        self.keys.get(provider).map(String::as_str)
    }

    /// Admits one call of `user`, whose balance is `balance` tokens.
    pub fn admit(self: &Arc<Self>, user: Uuid, balance: i64) -> Result<Hold, Refusal> {
        if balance <= 0 {
            return Err(Refusal::Exhausted);
        }
        let mut flying = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = flying.entry(user).or_insert(0);
        if *n > 0 && balance < self.reserve_tokens.saturating_mul(*n + 1) {
            return Err(Refusal::Busy);
        }
        *n += 1;
        Ok(Hold {
            credits: self.clone(),
            user,
        })
    }
}

/// The tokens a credit call is charged: what the provider reported, or, when it reported nothing
/// (a stream the instance closed before the usage chunk, an answer without usage), one token per
/// 4 bytes sent and received: never nothing, or an instance could take answers for free by
/// hanging up early.
pub fn billable_tokens(reported: u64, request_bytes: u64, answer_bytes: u64) -> u64 {
    if reported > 0 {
        reported
    } else {
        request_bytes.saturating_add(answer_bytes).div_ceil(4)
    }
}

/// Debits `tokens` of a call by `instance` from its owner's ledger, then releases the hold.
/// Runs on its own task: the answer has already been streamed.
pub fn debit(store: Store, hold: Hold, instance: String, tokens: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(%instance, tokens, "no runtime to debit credits on");
        return;
    };
    runtime.spawn(async move {
        let started = std::time::Instant::now();
        let reason = format!("instance {instance}");
        let entry = NewCredit {
            user_id: hold.user,
            kind: CreditKind::Usage,
            tokens: -i64::try_from(tokens).unwrap_or(i64::MAX),
            amount_cents: None,
            reference: None,
            actor: None,
            reason: Some(&reason),
        };
        // A call that reported no usage costs nothing and leaves no entry.
        if tokens > 0 {
            if let Err(e) = store.add_credit(&entry).await {
                tracing::error!(user = %hold.user, %instance, tokens, "cannot debit credits: {e}");
            }
        }
        metrics::histogram!("clawdeploy_credit_debit_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(hold);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the tenant's side: closing the stream before the provider's usage chunk still pays.
    #[test]
    fn a_call_without_reported_usage_is_charged_by_its_bytes() {
        assert_eq!(billable_tokens(10, 4_000, 8_000), 10);
        assert_eq!(billable_tokens(0, 4_000, 8_001), 3_001);
        assert_eq!(billable_tokens(0, 0, 0), 0);
    }

    #[test]
    fn calls_are_admitted_while_the_balance_covers_those_in_flight() {
        let billing = BillingConfig {
            openai_key: "sk-platform".into(),
            credit_reserve_tokens: 100,
            ..BillingConfig::default()
        };
        let credits = Arc::new(Credits::new(&billing));
        assert_eq!(credits.platform_key("openai"), Some("sk-platform"));
        assert_eq!(credits.platform_key("google"), None);
        let user = Uuid::new_v4();
        assert_eq!(credits.admit(user, 0).err(), Some(Refusal::Exhausted));
        assert_eq!(credits.admit(user, -5).err(), Some(Refusal::Exhausted));
        // A small balance: one call at a time.
        let first = credits.admit(user, 150).unwrap();
        assert_eq!(credits.admit(user, 150).err(), Some(Refusal::Busy));
        drop(first);
        let again = credits.admit(user, 150).unwrap();
        // Enough for two in flight.
        let second = credits.admit(user, 200).unwrap();
        assert_eq!(credits.admit(user, 200).err(), Some(Refusal::Busy));
        // Another owner is not affected.
        let other = credits.admit(Uuid::new_v4(), 1).unwrap();
        drop((again, second, other));
        assert!(credits.in_flight.lock().unwrap().is_empty());
    }
}
