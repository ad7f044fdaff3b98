//! HTTP-01 key authorizations of the orders open right now, answered by the edge's HTTP listener.

use dashmap::DashMap;

use clawdeploy_proxy::ChallengeResponder;

/// Token → key authorization. Only tokens of this node's open orders are in it, and each is
/// removed when its order ends, so the proxy never answers a challenge nobody asked for.
#[derive(Debug, Default)]
pub struct Http01Challenges {
    tokens: DashMap<String, String>,
}

impl Http01Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens.remove(token);
    }
}

impl ChallengeResponder for Http01Challenges {
    fn key_authorization(&self, token: &str) -> Option<String> {
        self.tokens.get(token).map(|v| v.value().clone())
    }
}
