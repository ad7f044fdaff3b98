//! Who a request is from, checked in memory at the edge: instance hosts are private to their
//! owner. The proxy only asks a [`TokenVerifier`]; the control plane implements it (signature,
//! expiry and a revocation set fed by the change broadcast), so no request reads the database.

use std::sync::Arc;

use http::header;
use pingora::http::RequestHeader;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id (a UUID in text form): compared with the route's owner.
    pub user_id: Arc<str>,
    /// The platform session behind the credential: revoking it closes this user's open WebSockets.
    pub session_id: Arc<str>,
}

/// Why a credential was not accepted (said to the client, so it knows what to fix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No credential: no bearer token, and no session cookie for the host.
    Missing,
    /// Malformed, or signed with another key, or (a host cookie) minted for another host.
    Invalid,
    /// Well signed but past its expiry.
    Expired,
    /// Its platform session has ended (logout, password change).
    Revoked,
}

impl Rejection {
    /// The message of the 401 that refuses it: what the client should do.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "This instance is private: send Authorization: Bearer <token> with the token from logging in.",
            Self::Invalid => "The token is not valid; log in again for a new one.",
            Self::Expired => "The token has expired; refresh it or log in again.",
            Self::Revoked => "The session of this token has ended (logout or password change); log in again.",
        }
    }
}

/// Checks a bearer token; implemented by the control plane.
pub trait TokenVerifier: Send + Sync + 'static {
    /// Checks a bearer token (a platform access token) in memory: no I/O, called on the request
    /// path.
    fn verify(&self, token: &str) -> Result<Identity, Rejection>;

    /// Checks an instance host's session cookie, valid on `host` (normalised) only.
    fn verify_host_session(&self, _token: &str, _host: &str) -> Result<Identity, Rejection> {
        Err(Rejection::Invalid)
    }

    /// The registry of open WebSockets this verifier closes when their session is revoked.
    fn live_connections(&self) -> Option<Arc<crate::live::LiveConnections>> {
        None
    }
}

/// Refuses everything: instance hosts stay closed when no verifier is wired.
pub struct DenyAll;

impl TokenVerifier for DenyAll {
    fn verify(&self, _token: &str) -> Result<Identity, Rejection> {
        Err(Rejection::Invalid)
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(req: &RequestHeader) -> Option<&str> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(bearer_token(&req), None);
        req.insert_header("authorization", "Bearer abc.def")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("abc.def"));
        req.insert_header("authorization", "bearer  xyz ").unwrap();
        assert_eq!(bearer_token(&req), Some("xyz"));
        req.insert_header("authorization", "Basic abc").unwrap();
        assert_eq!(bearer_token(&req), None);
        req.insert_header("authorization", "Bearer ").unwrap();
        assert_eq!(bearer_token(&req), None);
    }
}
