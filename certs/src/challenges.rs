//! HTTP-01 key authorizations of the orders open right now, answered by the edge's HTTP listener
//! of every node: the CA's validation request may reach any of them.
//!
//! The ordering node keeps its tokens in memory (answered with no I/O) and writes them to the
//! shared store before it tells the CA to validate; another node that gets a token it does not
//! know looks it up there. Each token is scoped to its order (expiring with the order lock) and
//! deleted when the order ends, so no node answers a challenge nobody asked for.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use tokio::sync::Semaphore;

use clawdeploy_proxy::ChallengeResponder;
use clawdeploy_store::Store;

use crate::Error;

/// Store lookups in flight at most: ACME challenge paths skip the per-IP limit (the CA must get
/// through), so a flood of made-up tokens is capped here instead; over the cap a token is
/// treated as unknown.
const MAX_LOOKUPS: usize = 16;

/// Token → key authorization.
#[derive(Debug)]
pub struct Http01Challenges {
    local: DashMap<String, String>,
    store: OnceLock<Store>,
    lookups: Arc<Semaphore>,
}

impl Default for Http01Challenges {
    fn default() -> Self {
        Self {
            local: DashMap::new(),
            store: OnceLock::new(),
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
        }
    }
}

/// RFC 8555 §8.1: tokens are base64url (at least 128 bits: 22 characters); anything else is
/// answered without a store lookup.
fn plausible_token(token: &str) -> bool {
    (22..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Http01Challenges {
    /// Shares tokens through `store` from now on.
    pub fn share_through(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Serves `token` here and, once stored, on every node until `expires_at` (unix ms).
    pub async fn insert(
        &self,
        token: &str,
        key_authorization: &str,
        name: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        self.local
            .insert(token.to_string(), key_authorization.to_string());
        if let Some(store) = self.store.get() {
            store
                .put_acme_challenge(token, key_authorization, name, expires_at)
                .await?;
        }
        Ok(())
    }

    /// Stops serving `token`, here and in the store (a failed delete is logged: the stored token
    /// expires with its order).
    pub async fn remove(&self, token: &str) {
        self.local.remove(token);
        if let Some(store) = self.store.get() {
            if let Err(e) = store.delete_acme_challenge(token).await {
                // It expires with its order anyway.
                tracing::warn!("cannot delete an ACME challenge from the store: {e}");
            }
        }
    }
}

#[async_trait::async_trait]
impl ChallengeResponder for Http01Challenges {
    async fn key_authorization(&self, token: &str) -> Option<String> {
        if let Some(local) = self.local.get(token) {
            return Some(local.value().clone());
        }
        if !plausible_token(token) {
            return None;
        }
        let store = self.store.get()?;
        let _permit = self.lookups.clone().try_acquire_owned().ok()?;
        match store.get_acme_challenge(token).await {
            Ok(Some(key_auth)) => {
                tracing::info!(token, "answered another node's ACME challenge");
                Some(key_auth)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("ACME challenge lookup failed: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_base64url_tokens_are_looked_up() {
        assert!(plausible_token(
            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
        ));
        assert!(!plausible_token("short"));
        assert!(!plausible_token("../../etc/passwd-aaaaaaaaaaaaaaaaaaaa"));
        assert!(!plausible_token(&"a".repeat(129)));
    }
}
