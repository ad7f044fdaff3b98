//! Graceful shutdown: on SIGTERM the edge stops keeping connections alive, waits for in-flight
//! requests to finish (at most the grace period), and only then lets Pingora close the listeners.
//!
//! Pingora's own SIGTERM handling sleeps the whole grace period even when nothing is in flight and
//! then cancels whatever still runs; counting requests lets an idle edge exit at once and a busy one
//! finish its work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// Requests in flight and whether the edge is draining.
#[derive(Debug, Default)]
pub struct Drain {
    inflight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Held by a request while it is in flight.
#[derive(Debug)]
pub struct InflightGuard(Arc<Drain>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Nothing in flight, not draining; shared by the edge, the control API and the shutdown watch.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts a request as in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// True once [`drain`](Self::drain) has started (it never stops): the edge stops keep-alive and
    /// `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining and waits until nothing is in flight or `grace` has passed; returns what is
    /// still in flight.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let wait_idle = async {
            loop {
                let notified = self.idle.notified();
                if self.inflight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait_idle).await;
        self.inflight()
    }
}

/// Pingora's shutdown signal source, with a drain before a graceful terminate.
///
/// SIGTERM drains then terminates; SIGINT exits at once; SIGQUIT is Pingora's graceful upgrade.
pub struct DrainingShutdown {
    /// The edge's in-flight count, drained on SIGTERM.
    pub drain: Arc<Drain>,
    /// The longest SIGTERM waits for in-flight requests (`server.grace_period_secs`) before closing
    /// them.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(inflight = self.drain.inflight(), grace_secs = self.grace.as_secs(), "SIGTERM: draining in-flight requests");
                let left = self.drain.drain(self.grace).await;
                if left > 0 {
                    tracing::warn!(cut = left, "grace period over; closing requests still in flight");
                } else {
                    tracing::info!("drained; shutting down");
                }
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_returns_when_the_last_request_ends() {
        let drain = Drain::new();
        let guard = drain.enter();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        drop(guard);
        assert_eq!(waiter.await.unwrap(), 0);
        assert!(drain.is_draining());
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let drain = Drain::new();
        let _guard = drain.enter();
        assert_eq!(drain.drain(Duration::from_millis(10)).await, 1);
    }
}
