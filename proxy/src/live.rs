//! Open WebSockets on instance hosts, by the platform session that authenticated them, so that a
//! revocation (logout, password change) closes them at once instead of at the next request.
//!
//! Pingora owns the proxied sockets and offers no handle to end a tunnel from outside, so the
//! registry keeps each tunnel's upstream socket descriptor with its kernel socket cookie
//! (`SO_COOKIE`, unique per socket until reboot). Closing shuts that socket down after checking the
//! cookie, so a descriptor number reused by another connection is never touched; Pingora then sees
//! the upstream end and tears the tunnel down, closing the browser's connection too. Before that,
//! the tunnel is marked revoked, so the edge's response filter ends the browser's side with a
//! WebSocket close frame ([`REVOKED_CLOSE_CODE`], "session revoked") instead of a bare TCP close.

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use pingora::protocols::SocketDigest;

/// The close code sent to a browser whose WebSocket ends because its session was revoked
/// (RFC 6455 §7.4.1: 1008, policy violation).
pub const REVOKED_CLOSE_CODE: u16 = 1008;
/// The close reason sent with [`REVOKED_CLOSE_CODE`].
pub const REVOKED_CLOSE_REASON: &str = "session revoked";

struct Tunnel {
    id: u64,
    fd: RawFd,
    socket_cookie: u64,
    revoked: Arc<AtomicBool>,
}

/// Session id → its open tunnels.
#[derive(Default)]
pub struct LiveConnections {
    by_session: DashMap<Arc<str>, Vec<Tunnel>>,
    next_id: AtomicU64,
}

impl LiveConnections {
    /// An empty registry, shared by the edge (which registers tunnels) and the token verifier
    /// (which closes them).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers the upstream socket `fd` of a WebSocket tunnel of `session_id`; the tunnel stays
    /// registered until the returned guard drops (at the end of the request).
    pub fn register(self: &Arc<Self>, session_id: Arc<str>, fd: RawFd) -> Option<TunnelGuard> {
        let socket_cookie = SocketDigest::from_raw_fd(fd).socket_cookie().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(AtomicBool::new(false));
        self.by_session
            .entry(session_id.clone())
            .or_default()
            .push(Tunnel {
                id,
                fd,
                socket_cookie,
                revoked: revoked.clone(),
            });
        Some(TunnelGuard {
            registry: self.clone(),
            session_id,
            id,
            revoked,
        })
    }

    /// Closes every open tunnel of `session_id`; how many were closed.
    pub fn close_session(&self, session_id: &str) -> usize {
        let Some((_, tunnels)) = self.by_session.remove(session_id) else {
            return 0;
        };
        tunnels.iter().filter(|t| shutdown(t)).count()
    }

    /// Closes the tunnels of every session `is_revoked` names (after a resync of revocations).
    pub fn close_where(&self, is_revoked: impl Fn(&str) -> bool) -> usize {
        let sessions: Vec<Arc<str>> = self
            .by_session
            .iter()
            .filter(|e| is_revoked(e.key()))
            .map(|e| e.key().clone())
            .collect();
        sessions.iter().map(|s| self.close_session(s)).sum()
    }

    /// Open tunnels, for metrics and tests.
    pub fn open(&self) -> usize {
        self.by_session.iter().map(|e| e.value().len()).sum()
    }

    fn remove(&self, session_id: &str, id: u64) {
        if let Some(mut tunnels) = self.by_session.get_mut(session_id) {
            tunnels.retain(|t| t.id != id);
        }
        self.by_session.remove_if(session_id, |_, t| t.is_empty());
    }
}

/// Shuts the tunnel's upstream socket down if the descriptor still names the same socket.
#[allow(unsafe_code)] // the unsafe call below: see its SAFETY comment
fn shutdown(tunnel: &Tunnel) -> bool {
    match SocketDigest::from_raw_fd(tunnel.fd).socket_cookie() {
        Ok(cookie) if cookie == tunnel.socket_cookie => {
            // Marked first: the response filter that sees the upstream end reads it.
            tunnel.revoked.store(true, Ordering::Release);
            // SAFETY: shutdown(2) on a descriptor only changes the state of the socket it names,
            // which the cookie check above proved to be this tunnel's; it never frees memory.
            unsafe { libc::shutdown(tunnel.fd, libc::SHUT_RDWR) == 0 }
        }
        _ => false,
    }
}

/// Ends a revoked tunnel's last body chunk to the browser with a close frame (1008, "session
/// revoked") when the gateway's stream is between frames (known from the meter or the edge's own
/// frame parser); inside a frame, or with no parser, the connection just closes.
pub fn end_with_close_frame(
    relay: Option<&clawdeploy_metering::WsRelay>,
    frames: Option<&clawdeploy_metering::FrameParser>,
    body: &mut Option<bytes::Bytes>,
) {
    let between_frames = match (relay, frames) {
        (Some(relay), _) => relay.server_at_frame_boundary(),
        (None, Some(frames)) => frames.at_frame_boundary(),
        (None, None) => false,
    };
    if !between_frames {
        tracing::info!("revoked WebSocket closed mid-frame, without a close frame");
        return;
    }
    let close = clawdeploy_metering::frames::close_frame(REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON);
    *body = Some(match body.take() {
        Some(chunk) => [chunk.as_ref(), close.as_slice()].concat().into(),
        None => close.into(),
    });
}

/// Removes its tunnel from the registry when the request ends.
pub struct TunnelGuard {
    registry: Arc<LiveConnections>,
    session_id: Arc<str>,
    id: u64,
    revoked: Arc<AtomicBool>,
}

impl TunnelGuard {
    /// True once the tunnel's session was revoked and its upstream socket shut down.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.session_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn closing_a_session_shuts_its_sockets_and_forgets_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let live = LiveConnections::new();
        let guard = live.register(Arc::from("s1"), client.as_raw_fd()).unwrap();
        assert_eq!(live.open(), 1);
        assert_eq!(live.close_session("other"), 0);
        assert!(!guard.revoked());
        assert_eq!(live.close_session("s1"), 1);
        assert!(guard.revoked());
        // The peer sees the end of the stream.
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0);
        assert_eq!(live.open(), 0);
        drop(guard);
        assert_eq!(live.open(), 0);
    }

    #[test]
    fn a_reused_descriptor_is_not_touched() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let first = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _first_server = listener.accept().unwrap();
        let live = LiveConnections::new();
        let _guard = live.register(Arc::from("s1"), first.as_raw_fd()).unwrap();
        let fd = first.as_raw_fd();
        drop(first);
        // A new socket most likely gets the same descriptor number; its cookie differs.
        let second = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(live.close_session("s1"), 0, "fd {fd} was reused and shut");
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert!(
            server.read(&mut buf).is_err(),
            "the second socket was closed"
        );
        drop(second);
    }
}
