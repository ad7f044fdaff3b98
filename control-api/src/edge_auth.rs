//! The edge's check of access tokens on instance hosts, in memory: the HS256 signature and expiry
//! of the JWT, then a set of revoked sessions kept current by the change broadcast (loaded at start
//! and after every gap). No request reads the database.

use std::sync::Arc;

use dashmap::DashMap;
use uuid::Uuid;

use clawdeploy_proxy::live::LiveConnections;
use clawdeploy_proxy::{Identity, Rejection, TokenVerifier};
use clawdeploy_store::changes::Change;
use clawdeploy_store::{Store, StoreError, Zeroizing};

use crate::crypto::{host_session_key, verify_host_token, verify_jwt, HostTokenError, JwtError};

/// The edge's [`TokenVerifier`]: access tokens and instance hosts' session cookies, checked
/// against the JWT key and the revoked sessions. One per process, shared by the edge and the API.
pub struct SessionVerifier {
    jwt_key: Zeroizing<Vec<u8>>,
    /// Signs and checks instance hosts' session cookies (derived from the JWT key).
    host_key: Zeroizing<[u8; 32]>,
    /// Revoked session id → its expiry (unix ms), after which its tokens are expired anyway.
    revoked: DashMap<Uuid, i64>,
    /// Open WebSockets by session: closed when their session is revoked.
    live: Arc<LiveConnections>,
}

impl SessionVerifier {
    /// A verifier for `jwt_key` with no revoked sessions yet: [`reload`](Self::reload) before
    /// serving.
    pub fn new(jwt_key: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            host_key: Zeroizing::new(host_session_key(&jwt_key)),
            jwt_key: Zeroizing::new(jwt_key),
            revoked: DashMap::new(),
            live: LiveConnections::new(),
        })
    }

    /// The key host-session cookies are signed with.
    pub fn host_key(&self) -> &[u8] {
        &self.host_key[..]
    }

    /// Refuses the session's tokens and cookies from now on and closes its open WebSockets.
    pub fn revoke(&self, session_id: Uuid) {
        // Tokens live at most 7 days; keep the entry that long.
        let until = clawdeploy_store::time::now_ms() + crate::crypto::ACCESS_TTL_SECS * 1000;
        self.revoked.insert(session_id, until);
        let closed = self.live.close_session(&session_id.to_string());
        if closed > 0 {
            tracing::info!(session = %session_id, closed, "closed the WebSockets of a revoked session");
        }
    }

    /// Reloads the revoked set from the store (at start and after a gap in the broadcast).
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let now = clawdeploy_store::time::now_ms();
        self.revoked.retain(|_, until| *until > now);
        for (id, until) in store.list_revoked_sessions().await? {
            self.revoked.insert(id, until);
        }
        // Revocations missed during a gap in the broadcast still close their WebSockets.
        self.live
            .close_where(|sid| Uuid::parse_str(sid).is_ok_and(|id| self.revoked.contains_key(&id)));
        Ok(())
    }

    /// Follows the change broadcast: revocations and resyncs.
    pub async fn follow(
        self: Arc<Self>,
        store: Store,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
    ) {
        loop {
            match changes.recv().await {
                Ok(Change::SessionRevoked { session_id }) => self.revoke(session_id),
                Ok(Change::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.reload(&store).await {
                        tracing::warn!("cannot reload revoked sessions: {e}");
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

impl TokenVerifier for SessionVerifier {
    fn verify(&self, token: &str) -> Result<Identity, Rejection> {
        let now = clawdeploy_store::time::now_ms() / 1000;
        let claims = verify_jwt(&self.jwt_key, token, now).map_err(|e| match e {
            JwtError::Expired => Rejection::Expired,
            _ => Rejection::Invalid,
        })?;
        if self.revoked.contains_key(&claims.sid) {
            return Err(Rejection::Revoked);
        }
        Ok(Identity {
            user_id: Arc::from(claims.sub.to_string()),
            session_id: Arc::from(claims.sid.to_string()),
        })
    }

    fn verify_host_session(&self, token: &str, host: &str) -> Result<Identity, Rejection> {
        let now = clawdeploy_store::time::now_ms() / 1000;
        let claims = verify_host_token(self.host_key(), token, host, now).map_err(|e| match e {
            HostTokenError::Jwt(JwtError::Expired) => Rejection::Expired,
            _ => Rejection::Invalid,
        })?;
        if self.revoked.contains_key(&claims.sid) {
            return Err(Rejection::Revoked);
        }
        Ok(Identity {
            user_id: Arc::from(claims.sub.to_string()),
            session_id: Arc::from(claims.sid.to_string()),
        })
    }

    fn live_connections(&self) -> Option<Arc<LiveConnections>> {
        Some(self.live.clone())
    }
}
