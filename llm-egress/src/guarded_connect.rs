//! The connector for URLs a user chose (a custom LLM provider's `baseUrl`): it connects only to
//! public unicast addresses, checked on the address actually connected to.
//!
//! A tenant runs code in its own container, so a URL it stores is attacker input. Checking the
//! URL's text is not enough (names resolve anywhere, and an address has many spellings), so the
//! check happens here, after resolution, on each address before connecting and again on the
//! connected socket:
//! - before: the address must be public unicast ([`is_public_unicast`]) or inside a network the
//!   operator named in `llm.allow_private_custom`;
//! - and by the route: a connection that would leave through the instance network (its source
//!   address is the meter's own address there, which every instance's gateway trusts as its
//!   proxy) is refused whatever the allowlist says, and so is one to the node itself (source
//!   address = destination) unless the allowlist names it. The kernel's choice of source is
//!   read without sending anything (a UDP socket's `connect`), and checked again on the
//!   connected socket, before anything is sent.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clawdeploy_config::addresses::{is_public_unicast, IpNet};
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection for a user was not made.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// `host` resolved to `ip`, which is neither public unicast nor allowed (or is this node
    /// itself).
    #[error("{host} is {ip}, which is not a public address")]
    Refused {
        /// The host of the URL (or, for a connection to this node itself, the peer address).
        host: String,
        /// The address refused.
        ip: IpAddr,
    },
    /// The connection to this address would leave through the instance network.
    #[error("{0} went through the instance network, which the meter never calls")]
    InstanceNetwork(SocketAddr),
    // I/O errors are in the messages, so they are not a `source()` (shown once by chain printers).
    /// Resolving `host` failed.
    #[error("{host} has no address: {error}")]
    Resolve {
        /// The host of the URL.
        host: String,
        /// The resolver's error.
        error: std::io::Error,
    },
    /// The URL has no host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// Connecting to `addr`, a permitted address, failed.
    #[error("connecting to {addr}: {error}")]
    Connect {
        /// The address connected to.
        addr: SocketAddr,
        /// The socket's error.
        error: std::io::Error,
    },
    /// Connecting to this address took longer than 10 s.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

impl GuardError {
    /// True when the address itself was refused (not a network failure).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::InstanceNetwork(_))
    }
}

/// What a guarded connection may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Networks allowed although not public (`llm.allow_private_custom`).
    pub allowed: Vec<IpNet>,
    /// The node's address on the instance network (the meter's listen address there), if any.
    pub instance_side: Option<IpAddr>,
}

impl EgressPolicy {
    /// May a connection to `ip` be attempted?
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip)) || is_public_unicast(ip)
    }

    /// May an established connection be used?
    fn permits_connection(&self, local: SocketAddr, peer: SocketAddr) -> Result<(), GuardError> {
        if self.instance_side == Some(local.ip()) {
            return Err(GuardError::InstanceNetwork(peer));
        }
        if local.ip() == peer.ip() && !self.allowed.iter().any(|net| net.contains(&peer.ip())) {
            // Connected to this node itself, through one of its own public addresses.
            return Err(GuardError::Refused {
                host: peer.to_string(),
                ip: peer.ip(),
            });
        }
        Ok(())
    }
}

/// A `Service<Uri>` for hyper's client that connects only where [`EgressPolicy`] permits.
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    policy: Arc<EgressPolicy>,
}

impl GuardedConnector {
    /// A connector that resolves each host itself and connects only to addresses `policy` permits.
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = GuardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GuardError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move { connect(&policy, &uri).await.map(TokioIo::new) })
    }
}

async fn connect(policy: &EgressPolicy, uri: &Uri) -> Result<TcpStream, GuardError> {
    let host = uri.host().ok_or(GuardError::NoHost)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| GuardError::Resolve {
                host: host.to_string(),
                error,
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addresses {
        if !policy.permits(addr.ip()) {
            last = Some(GuardError::Refused {
                host: host.to_string(),
                ip: addr.ip(),
            });
            continue;
        }
        if let Some(source) = route_source(addr) {
            if let Err(e) = policy.permits_connection(SocketAddr::new(source, 0), addr) {
                last = Some(e);
                continue;
            }
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                last = Some(GuardError::Connect { addr, error });
                continue;
            }
            Err(_) => {
                last = Some(GuardError::Timeout(addr));
                continue;
            }
        };
        let checked = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(peer)) => policy.permits_connection(local, peer),
            (Err(error), _) | (_, Err(error)) => Err(GuardError::Connect { addr, error }),
        };
        match checked {
            Ok(()) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| GuardError::Resolve {
        host: host.to_string(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    }))
}

/// The source address the kernel would use to reach `addr` (`None` when it has no route): a UDP
/// socket's `connect` picks it without sending a packet.
fn route_source(addr: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(addr).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The [`GuardError`] behind a client error, if one is.
pub fn guard_error<'a>(mut error: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    loop {
        if let Some(guard) = error.downcast_ref::<GuardError>() {
            return Some(guard);
        }
        error = error.source()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn private_addresses_are_refused_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = EgressPolicy::default();
        for target in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://localhost:{port}/"),
            "http://169.254.169.254/".to_string(),
        ] {
            let refused = connect(&policy, &uri(&target)).await.unwrap_err();
            assert!(refused.is_refusal(), "{target}: {refused}");
        }
    }

    #[tokio::test]
    async fn an_allowed_network_is_reached_but_never_through_the_instance_side() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = uri(&format!("http://{}/", listener.local_addr().unwrap()));
        let mut policy = EgressPolicy {
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
            instance_side: None,
        };
        assert!(connect(&policy, &target).await.is_ok());
        // The connection leaves from 127.0.0.1: as if through the instance network's address.
        policy.instance_side = Some("127.0.0.1".parse().unwrap());
        let refused = connect(&policy, &target).await.unwrap_err();
        assert!(
            matches!(refused, GuardError::InstanceNetwork(_)),
            "{refused}"
        );
    }
}
