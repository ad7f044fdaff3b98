//! The change broadcast: route changes and revocations reach every edge process sharing the
//! database. PostgreSQL carries them with LISTEN/NOTIFY; with SQLite (one node) they stay in
//! process. A gap in the channel (a reconnect) becomes [`Change::Resync`], after which a node
//! reloads from the store, so nothing is lost while the channel was down.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{Backend, Store, StoreError};

/// The PostgreSQL channel.
pub const CHANNEL: &str = "clawdeploy_changes";

/// One change every edge process must apply; sent as JSON tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// An instance's route changed (or it was deleted): reload it from the store.
    Instance {
        /// The instance's id.
        id: Uuid,
        /// The subdomain its route had before the change (the old one after a rename), so that
        /// route is removed.
        subdomain: String,
    },
    /// A session was revoked (logout, password change): refuse its token from now on.
    SessionRevoked {
        /// The session's id (the tokens' `sid`).
        session_id: Uuid,
    },
    /// A certificate was stored, renewed or removed: reload it from the store.
    Certificate {
        /// The certificate's primary name (see [`CertificateRecord`](crate::CertificateRecord)).
        name: String,
    },
    /// A custom domain's route changed (activated or removed): reload it from the store.
    Domain {
        /// The custom domain, lower case.
        hostname: String,
    },
    /// An operator route (`/admin/routes`) was set or removed: reload it from the store.
    OperatorRoute {
        /// The route's host, normalised.
        host: String,
    },
    /// The channel had a gap: reload everything.
    Resync,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: Uuid,
    change: Change,
}

/// Publishes changes and fans them out to this process's subscribers.
pub struct ChangeBus {
    store: Store,
    database_url: String,
    origin: Uuid,
    local: broadcast::Sender<Change>,
}

impl ChangeBus {
    /// A bus over `store`. On PostgreSQL, [`ChangeBus::listen`] connects to `database_url` (the
    /// store's URL) to receive the other processes' changes.
    pub fn new(store: Store, database_url: &str) -> Arc<Self> {
        Arc::new(Self {
            store,
            database_url: database_url.to_string(),
            origin: Uuid::new_v4(),
            local: broadcast::channel(4096).0,
        })
    }

    /// Applies to this process at once and, on PostgreSQL, notifies the other edge processes.
    pub async fn publish(&self, change: Change) -> Result<(), StoreError> {
        let _ = self.local.send(change.clone());
        if self.store.backend() == Backend::Postgres {
            let payload = serde_json::to_string(&Envelope {
                origin: self.origin,
                change,
            })
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(self.store.pool())
                .await?;
        }
        Ok(())
    }

    /// Changes from now on, from this process and (on PostgreSQL) from the others.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.local.subscribe()
    }

    /// On PostgreSQL, follows the channel until `shutdown` fires, reconnecting with a resync
    /// after every gap. Returns at once on SQLite.
    pub async fn listen(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.store.backend() != Backend::Postgres {
            return;
        }
        loop {
            let mut listener = match PgListener::connect(&self.database_url).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => listener,
                    Err(e) => {
                        tracing::warn!("cannot LISTEN on {CHANNEL}: {e}");
                        if wait_or_shutdown(&mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!("change broadcast: cannot connect: {e}");
                    if wait_or_shutdown(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            // Whatever happened while not listening is reloaded.
            let _ = self.local.send(Change::Resync);
            loop {
                let next = tokio::select! {
                    next = listener.try_recv() => next,
                    _ = shutdown.changed() => return,
                };
                match next {
                    Ok(Some(notification)) => {
                        match serde_json::from_str::<Envelope>(notification.payload()) {
                            Ok(envelope) if envelope.origin != self.origin => {
                                let _ = self.local.send(envelope.change);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("ignoring a malformed change notification: {e}")
                            }
                        }
                    }
                    // The connection was lost and re-established: notifications may be missing.
                    Ok(None) => {
                        tracing::warn!("change broadcast reconnected; resyncing");
                        let _ = self.local.send(Change::Resync);
                    }
                    Err(e) => {
                        tracing::warn!("change broadcast interrupted: {e}");
                        break;
                    }
                }
            }
            if wait_or_shutdown(&mut shutdown).await {
                return;
            }
        }
    }
}

/// Waits before a reconnect; true when shutting down.
async fn wait_or_shutdown(shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(500)) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
