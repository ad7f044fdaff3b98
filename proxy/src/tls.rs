//! The edge's HTTPS duties on the request path: answering ACME HTTP-01 challenges on the plain
//! listener, redirecting plain HTTP to HTTPS (when configured), and HSTS on HTTPS responses.
//! Certificates themselves are chosen during the handshake by the `certs` crate's store.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use clawdeploy_config::normalize_host;

use crate::responses::write_redirect;

/// The path prefix of RFC 8555 §8.3 HTTP-01 challenges.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Key authorizations of the ACME orders open right now, by token (async: they may be another
/// node's, looked up in the shared store).
#[async_trait::async_trait]
pub trait ChallengeResponder: Send + Sync {
    async fn key_authorization(&self, token: &str) -> Option<String>;
}

/// HTTPS settings of the request path.
#[derive(Default)]
pub struct EdgeTls {
    pub challenges: Option<Arc<dyn ChallengeResponder>>,
    /// Redirect plain HTTP to HTTPS (ACME challenges and health checks excepted).
    pub redirect_http: bool,
    /// Port of the HTTPS listener, for redirect targets (443 is left out of the URL).
    pub https_port: u16,
    /// The `Strict-Transport-Security` value for HTTPS responses.
    pub hsts: Option<HeaderValue>,
}

impl EdgeTls {
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
