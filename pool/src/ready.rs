//! Readiness: an instance is ready when its `/readyz` answers 200 (OpenClaw's and the fixture's).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `GET /readyz`; true on a 200.
pub async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Polls until ready or `timeout`; the error says for how long it was not.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if probe(addr).await {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "{addr}/readyz did not answer 200 within {} ms",
                timeout.as_millis()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
