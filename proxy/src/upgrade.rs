//! Checks of WebSocket upgrade requests (RFC 6455 §4.2.1), so a malformed handshake gets a clear
//! 4xx from the edge instead of a confusing answer from whatever sits behind it.

use http::{header, Method, Version};
use pingora::http::RequestHeader;

/// What kind of request this is, as far as upgrades go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade asked for (or one we ignore, such as `h2c`, whose header is removed).
    None,
    /// A well-formed WebSocket handshake.
    WebSocket,
}

/// Why a WebSocket handshake is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeError {
    /// 400 for a malformed handshake, 426 for a `Sec-WebSocket-Version` other than 13.
    pub status: u16,
    /// Which part of the handshake is wrong and how to fix it (the error's message).
    pub message: &'static str,
}

const fn refuse(status: u16, message: &'static str) -> Result<Upgrade, UpgradeError> {
    Err(UpgradeError { status, message })
}

/// Classifies a request; a WebSocket handshake must be complete and well formed.
pub fn check_upgrade(req: &RequestHeader) -> Result<Upgrade, UpgradeError> {
    let Some(upgrade) = req.headers.get(header::UPGRADE) else {
        return Ok(Upgrade::None);
    };
    let wants_websocket = upgrade
        .to_str()
        .map(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
        .unwrap_or(false);
    if !wants_websocket {
        return Ok(Upgrade::None);
    }
    if req.method != Method::GET {
        return refuse(400, "a WebSocket handshake must use GET");
    }
    if req.version != Version::HTTP_11 {
        return refuse(400, "a WebSocket handshake must use HTTP/1.1");
    }
    let connection_upgrade = req.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    });
    if !connection_upgrade {
        return refuse(
            400,
            "a WebSocket handshake needs the header Connection: Upgrade",
        );
    }
    let key_ok = req
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| is_websocket_key(k.as_bytes()))
        .unwrap_or(false);
    if !key_ok {
        return refuse(
            400,
            "a WebSocket handshake needs Sec-WebSocket-Key: 16 random bytes in base64",
        );
    }
    if req
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return refuse(
            426,
            "only WebSocket version 13 is supported: send Sec-WebSocket-Version: 13",
        );
    }
    Ok(Upgrade::WebSocket)
}

/// Removes the WebSocket extension offer from an upgrade to an instance's gateway: nothing may
/// change the framing under the edge's message meter (permessage-deflate would hide every message
/// from it). OpenClaw's gateway negotiates no extension anyway (`perMessageDeflate: false`).
pub fn strip_extensions(req: &mut RequestHeader) {
    req.remove_header(&header::SEC_WEBSOCKET_EXTENSIONS);
}

/// 16 bytes in base64: 22 symbols then `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn accepts_a_well_formed_handshake() {
        assert_eq!(
            check_upgrade(&request("GET", &GOOD)),
            Ok(Upgrade::WebSocket)
        );
        assert_eq!(check_upgrade(&request("GET", &[])), Ok(Upgrade::None));
        assert_eq!(
            check_upgrade(&request("GET", &[("upgrade", "h2c")])),
            Ok(Upgrade::None)
        );
    }

    #[test]
    fn extension_offers_are_removed() {
        let mut offer = GOOD.to_vec();
        offer.push((
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ));
        let mut req = request("GET", &offer);
        strip_extensions(&mut req);
        assert!(req.headers.get("sec-websocket-extensions").is_none());
        assert_eq!(check_upgrade(&req), Ok(Upgrade::WebSocket));
    }

    #[test]
    fn refuses_malformed_handshakes() {
        assert_eq!(
            check_upgrade(&request("POST", &GOOD)).unwrap_err().status,
            400
        );
        let without = |skip: &str| -> Vec<(&str, &str)> {
            GOOD.iter().copied().filter(|(n, _)| *n != skip).collect()
        };
        assert_eq!(
            check_upgrade(&request("GET", &without("connection")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check_upgrade(&request("GET", &without("sec-websocket-key")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check_upgrade(&request("GET", &without("sec-websocket-version")))
                .unwrap_err()
                .status,
            426
        );
        let mut bad_key = without("sec-websocket-key");
        bad_key.push(("sec-websocket-key", "not-a-key"));
        assert_eq!(
            check_upgrade(&request("GET", &bad_key)).unwrap_err().status,
            400
        );
    }
}
