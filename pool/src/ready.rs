//! Readiness: an instance is ready when its `/readyz` answers 200 (OpenClaw's and the fixture's).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::manager::AppliedProbe;

/// The client the probe names in `X-Forwarded-For`: a documentation address (RFC 5737). OpenClaw
/// in trusted-proxy mode refuses every request from the proxy's address (the probe comes from
/// there too) unless it names a non-loopback client (`proxy_attribution_required`), `/readyz`
/// included.
const PROBE_CLIENT: &str = "192.0.2.1";

/// One `GET /readyz`; true on a 200.
pub async fn probe(addr: SocketAddr) -> bool {
    get(addr, "/readyz", &[]).await.is_some()
}

/// One `GET path` with `headers`: the body of a 200, `None` for anything else.
async fn get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Option<Vec<u8>> {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let mut lines = String::new();
        for (name, value) in headers {
            lines.push_str(&format!("{name}: {value}\r\n"));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: instance\r\nX-Forwarded-For: {PROBE_CLIENT}\r\n{lines}Connection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.ok()?;
        let ok = response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200");
        ok.then_some(response)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// An instance that did not become ready in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Its health path never answered 200.
    #[error("{addr}/readyz did not answer 200 within {} ms", .waited.as_millis())]
    Health {
        /// The instance's address.
        addr: SocketAddr,
        /// How long it was tried.
        waited: Duration,
    },
    /// It never applied its new config ([`crate::manager::AppliedProbe`]).
    #[error("{addr}{path} did not show the new config applied within {} ms", .waited.as_millis())]
    NotApplied {
        /// The instance's address.
        addr: SocketAddr,
        /// The probe's path.
        path: String,
        /// How long it was tried.
        waited: Duration,
    },
    /// A warm member without a container id.
    #[error("no runtime id")]
    NoRuntimeId,
    /// Every container created for this assignment was claimed by another.
    #[error("every new container was taken")]
    AllTaken,
    /// The runtime reports no address for the container (its state as the runtime said it).
    #[error("no address ({0})")]
    NoAddress(String),
    /// The instance has no container assigned.
    #[error("no container assigned")]
    NoContainer,
    /// The instance's container no longer exists.
    #[error("container is gone")]
    ContainerGone,
}

/// Polls until ready or `timeout`; the error says for how long it was not.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<(), NotReady> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if probe(addr).await {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(NotReady::Health {
                addr,
                waited: timeout,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Polls until the instance shows its new config applied ([`AppliedProbe`]) or `timeout` passes.
pub async fn wait_applied(
    addr: SocketAddr,
    probe: &AppliedProbe,
    timeout: Duration,
) -> Result<(), NotReady> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(body) = get(addr, probe.path, &probe.headers).await {
            let marker = probe.gone.as_bytes();
            if !body.windows(marker.len()).any(|w| w == marker) {
                return Ok(());
            }
        }
        if started.elapsed() >= timeout {
            return Err(NotReady::NotApplied {
                addr,
                path: probe.path.to_string(),
                waited: timeout,
            });
        }
        tokio::time::sleep(pause).await;
        // A signup waits on this (OpenClaw applies a new config 0.5-1.3 s after it is written):
        // probes stay 50 ms apart, not 250, so the owner is let in within 50 ms of the reload.
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
