//! The edge's HTTPS duties on the request path: answering ACME HTTP-01 challenges on the plain
//! listener, redirecting plain HTTP to HTTPS (when configured), and HSTS on HTTPS responses.
//! Certificates themselves are chosen during the handshake by the `certs` crate's store. On HTTPS,
//! [`check_sni`] refuses a request whose Host names another server than the connection's SNI,
//! which [`RecordSni`] keeps in the connection's TLS digest at the end of the handshake.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::Session;
use pingora::Result;

use clawdeploy_config::normalize_host;

use crate::responses::{write_redirect, EdgeError};

/// The path prefix of RFC 8555 §8.3 HTTP-01 challenges.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Key authorizations of the ACME orders open right now, by token (async: they may be another
/// node's, looked up in the shared store).
#[async_trait::async_trait]
pub trait ChallengeResponder: Send + Sync {
    /// The key authorization (`<token>.<account key thumbprint>`) to answer
    /// `GET /.well-known/acme-challenge/<token>` with; on `None` the request is routed like any
    /// other (most likely to a 404).
    async fn key_authorization(&self, token: &str) -> Option<String>;
}

/// HTTPS settings of the request path.
#[derive(Default)]
pub struct EdgeTls {
    /// Answers HTTP-01 challenges on the plain listener; with `None` (no certificate manager),
    /// challenge paths are routed like any other.
    pub challenges: Option<Arc<dyn ChallengeResponder>>,
    /// Redirect plain HTTP to HTTPS (ACME challenges and health checks excepted).
    pub redirect_http: bool,
    /// Port of the HTTPS listener, for redirect targets (443 is left out of the URL).
    pub https_port: u16,
    /// The `Strict-Transport-Security` value for HTTPS responses.
    pub hsts: Option<HeaderValue>,
}

impl EdgeTls {
    /// Settings with an HSTS header of `max-age=<hsts_max_age_secs>` (none when 0); `https_port` is
    /// the HTTPS listener's port.
    pub fn new(
        challenges: Option<Arc<dyn ChallengeResponder>>,
        redirect_http: bool,
        https_port: u16,
        hsts_max_age_secs: u64,
    ) -> Self {
        let hsts = (hsts_max_age_secs > 0).then(|| {
            HeaderValue::try_from(format!("max-age={hsts_max_age_secs}"))
                .unwrap_or(HeaderValue::from_static("max-age=31536000"))
        });
        Self {
            challenges,
            redirect_http,
            https_port,
            hsts,
        }
    }

    /// Answers an ACME challenge or a redirect to HTTPS; true when a response was written.
    pub async fn intercept(
        &self,
        session: &mut Session,
        tls: bool,
        request_id: &str,
    ) -> Result<bool> {
        if tls {
            return Ok(false);
        }
        let path = session.req_header().uri.path();
        if let (Some(token), Some(challenges)) =
            (path.strip_prefix(ACME_CHALLENGE_PREFIX), &self.challenges)
        {
            if let Some(key_auth) = challenges.key_authorization(token).await {
                let body = Bytes::from(key_auth);
                let mut resp = ResponseHeader::build(200, Some(4))?;
                resp.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
                resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
                resp.insert_header("x-request-id", request_id)?;
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(body), true).await?;
                return Ok(true);
            }
            // An unknown token falls through: routed (and most likely 404) like any request.
            return Ok(false);
        }
        if !self.redirect_http || matches!(path, "/healthz" | "/readyz") {
            return Ok(false);
        }
        // The dashboard's chat bridge opens each user's gateway through the plain listener from
        // this machine, with the user's token: such upgrades are not sent to HTTPS.
        let req = session.req_header();
        let bridged = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| a.ip().is_loopback())
            && req.headers.contains_key(header::AUTHORIZATION)
            && req
                .headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if bridged {
            return Ok(false);
        }
        let req = session.req_header();
        let Some(host) = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(normalize_host)
        else {
            // No usable Host: the router explains the problem.
            return Ok(false);
        };
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = if self.https_port == 443 {
            format!("https://{host}{path_and_query}")
        } else {
            format!("https://{host}:{}{path_and_query}", self.https_port)
        };
        write_redirect(session, &location, request_id).await?;
        Ok(true)
    }

    /// Adds HSTS to an HTTPS response.
    pub fn add_hsts(&self, tls: bool, resp: &mut ResponseHeader) -> Result<()> {
        if let (true, Some(hsts)) = (tls, &self.hsts) {
            resp.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        Ok(())
    }
}

/// The HTTPS listeners' end-of-handshake callback: keeps the server name the client sent (SNI,
/// rustls' `TlsRef::server_name`) in the connection's TLS digest. Pingora stores what
/// `handshake_complete_callback` returns in `SslDigest::extension`, and the digest reaches HTTP/1
/// and HTTP/2 filters alike ([`sni`]).
pub struct RecordSni;

/// The SNI of a connection, as [`RecordSni`] stored it.
struct ServerName(String);

#[async_trait::async_trait]
impl TlsAccept for RecordSni {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let name = tls.server_name()?;
        Some(Arc::new(ServerName(name.to_owned())))
    }
}

/// The SNI the client sent on this connection (HTTP/1 and HTTP/2 alike), recorded by
/// [`RecordSni`]; `None` on plain HTTP and when the client sent none.
pub fn sni(session: &Session) -> Option<&str> {
    let name = session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ServerName>()?;
    Some(&name.0)
}

/// On an HTTPS connection, every name the request gives for its server (`Host`, and the URI's
/// authority: HTTP/2's `:authority` or an absolute-form target) must be the name the connection
/// was opened for (the TLS SNI), else 421 Misdirected Request (RFC 9110 §15.5.20).
///
/// Browsers reuse an HTTP/2 connection for every host its certificate covers (RFC 9113 §9.1.1),
/// so one opened for `a.<base>` under the wildcard certificate may carry a request for `b.<base>`;
/// a 421 makes them retry that request on a connection of its own, so this refusal never breaks a
/// browser, while a client that asks for one tenant's certificate cannot talk to another tenant.
///
/// Without SNI (a client that connected to an IP address, which RFC 6066 forbids to name in SNI)
/// only a request for an IP-literal host is accepted: a DNS name must be asked for in the handshake.
pub fn check_sni<'a>(
    sni: Option<&str>,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), EdgeError> {
    let sni = sni.map(|s| normalize_host(s).unwrap_or_default());
    for raw in names {
        let Some(name) = normalize_host(raw) else {
            return Err(EdgeError::new(
                400,
                "INVALID_HOST",
                "The Host header is not a valid host name; send a DNS name, optionally with a port.",
            ));
        };
        match &sni {
            Some(sni) if *sni == name => {}
            Some(sni) => {
                return Err(EdgeError::new(
                    421,
                    "MISDIRECTED_REQUEST",
                    format!(
                        "This connection was opened for {sni} (TLS server name), but the request is for {name}. Send it on a new connection opened for {name}."
                    ),
                ))
            }
            None if is_ip_literal(&name) => {}
            None => {
                return Err(EdgeError::new(
                    421,
                    "MISDIRECTED_REQUEST",
                    format!(
                        "This connection named no server (no TLS server name), but the request is for {name}. Connect again with the server name {name} (SNI)."
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_must_name_the_connections_server() {
        let ok = |sni: Option<&str>, names: &[&str]| check_sni(sni, names.iter().copied());
        assert!(ok(Some("a.example.com"), &["a.example.com"]).is_ok());
        // Case, a port and a trailing dot do not matter.
        assert!(ok(
            Some("A.Example.com"),
            &["a.example.com.:8443", "a.EXAMPLE.com"]
        )
        .is_ok());
        let e = ok(Some("a.example.com"), &["b.example.com"]).unwrap_err();
        assert_eq!((e.status, e.code), (421, "MISDIRECTED_REQUEST"));
        assert!(e.message.contains("b.example.com"), "{}", e.message);
        // HTTP/2: a Host header that disagrees with a matching :authority is refused too.
        assert_eq!(
            ok(Some("a.example.com"), &["a.example.com", "b.example.com"])
                .unwrap_err()
                .status,
            421
        );
        // Without SNI only IP-literal hosts.
        assert!(ok(None, &["127.0.0.1:8443"]).is_ok());
        assert!(ok(None, &["[::1]:8443"]).is_ok());
        assert_eq!(ok(None, &["a.example.com"]).unwrap_err().status, 421);
        assert_eq!(ok(Some("a.example.com"), &["a b"]).unwrap_err().status, 400);
    }
}
